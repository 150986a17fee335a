import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { cleanUpAndCheck, containerConfig, failure, podConfig } from '../helpers/cri.js';
import { waitFor } from '../helpers/util.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';

// What Kubernetes 1.37's CRI added, for real: the streaming list RPCs, stop_signal, mount_options,
// UpdatePodSandboxResources and the checkpoint RPCs berth declines.

let registry: Registry;
let image: PushedImage;
/** An image whose STOPSIGNAL is SIGUSR2: berth must send it when the CRI config names none. */
let usr2Image: PushedImage;
let dataImage: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  const layers = [await busyboxLayer()];
  image = await pushImage(registry, 'berth/busybox', 'v1', { layers, config: { Cmd: ['sh'] } });
  usr2Image = await pushImage(registry, 'berth/busybox-usr2', 'v1', { layers, config: { Cmd: ['sh'], StopSignal: 'SIGUSR2' } });
  // An image volume's content: two layers, the upper one deleting a file of the lower, symlinks that would leave
  // the image if they were resolved on the host.
  dataImage = await pushImage(registry, 'berth/data', 'v1', {
    layers: [
      await layer([
        { type: 'dir', path: 'data' }, { type: 'file', path: 'data/a.txt', content: 'from layer 1\n' },
        { type: 'file', path: 'data/gone.txt', content: 'deleted above\n' }, { type: 'dir', path: 'etc' },
        { type: 'file', path: 'etc/marker', content: 'the image\'s etc\n' },
      ]),
      await layer([
        { type: 'file', path: 'data/b.txt', content: 'from layer 2\n' }, { type: 'whiteout', path: 'data/gone.txt' },
        { type: 'symlink', path: 'escape', target: '../../../../../etc' }, { type: 'symlink', path: 'data/abs', target: '/etc' },
      ]),
    ],
    config: {},
  });
});
test.after.always(async () => {
  await registry?.stop();
});

interface Env {
  berth: BerthProcess;
  logDir: string;
  pod(overrides?: Partial<PodSandboxConfig>): Promise<string>;
  container(podId: string, overrides: Partial<ContainerConfig>, ref?: string): Promise<string>;
}

async function env(t: ExecutionContext): Promise<Env> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const cgroups: string[] = [];
  const logDir = path.join(berth.dir, 'logs');
  const e: Env = {
    berth,
    logDir,
    async pod(overrides = {}) {
      const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: logDir, ...overrides }) });
      const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      cgroups.push(JSON.parse(status.info.info).cgroup.path);
      return pod_sandbox_id;
    },
    async container(podId, overrides, ref = image.ref) {
      const { container_id } = await berth.runtime.CreateContainer({
        pod_sandbox_id: podId,
        config: containerConfig(ref, { log_path: `${Math.random().toString(36).slice(2)}.log`, ...overrides }),
        sandbox_config: podConfig({ log_directory: logDir }),
      });
      await berth.runtime.StartContainer({ container_id });
      return container_id;
    },
  };
  await berth.images.PullImage({ image: { image: image.ref } });
  await berth.images.PullImage({ image: { image: usr2Image.ref } });
  await berth.images.PullImage({ image: { image: dataImage.ref } });
  cleanUpAndCheck(t, berth, cgroups);
  return e;
}

const sh = (script: string) => ({ command: ['/bin/sh', '-c', script] });

/** Collects every message of a server stream; rejects with the stream's error status. */
function collect<T>(stream: grpc.ClientReadableStream<T>): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const got: T[] = [];
    stream.on('data', (m: T) => got.push(m));
    stream.on('error', reject);
    stream.on('end', () => resolve(got));
  });
}

test('the Stream list RPCs send the same items as ListPodSandbox, ListContainers and ListImages, filters included', async (t) => {
  const e = await env(t);
  const podA = await e.pod({ labels: { app: 'a' } });
  const podB = await e.pod({ labels: { app: 'b' } });
  const running = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";
  await e.container(podA, sh(running));
  await e.container(podB, sh(running));
  const byId = <T extends { id: string }>(items: T[]) => [...items].sort((x, y) => x.id.localeCompare(y.id));

  const pods = await collect(e.berth.rawRuntime.StreamPodSandboxes({}));
  t.true(pods.every((m) => m.pod_sandboxes.length > 0), 'no empty page');
  t.deepEqual(byId(pods.flatMap((m) => m.pod_sandboxes)), byId((await e.berth.runtime.ListPodSandbox({})).items));
  const onlyB = await collect(e.berth.rawRuntime.StreamPodSandboxes({ filter: { label_selector: { app: 'b' } } }));
  t.deepEqual(onlyB.flatMap((m) => m.pod_sandboxes.map((p) => p.id)), [podB]);

  const containers = await collect(e.berth.rawRuntime.StreamContainers({}));
  t.deepEqual(byId(containers.flatMap((m) => m.containers)), byId((await e.berth.runtime.ListContainers({})).containers));
  const inA = await collect(e.berth.rawRuntime.StreamContainers({ filter: { pod_sandbox_id: podA } }));
  t.deepEqual(inA.flatMap((m) => m.containers.map((c) => c.pod_sandbox_id)), [podA]);

  const images = await collect(e.berth.rawImages.StreamImages({}));
  t.deepEqual(byId(images.flatMap((m) => m.images)), byId((await e.berth.images.ListImages({})).images));
  t.is(images.flatMap((m) => m.images).length, 3, 'busybox, busybox-usr2 and data');

  const none = await collect(e.berth.rawRuntime.StreamContainers({ filter: { id: 'ffff' } }));
  t.deepEqual(none, [], 'nothing matches: the stream ends with no message');
  const bad = await collect(e.berth.rawRuntime.StreamContainers({ filter: { state: { state: 9 as never } } })).catch((err: grpc.ServiceError) => err);
  t.is((bad as grpc.ServiceError).code, grpc.status.INVALID_ARGUMENT);
  t.regex((bad as grpc.ServiceError).details, /^filter\.state\.state/);
});

test('stop_signal: StopContainer sends the config\'s signal, else the image\'s STOPSIGNAL, and ContainerStatus names it', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  // Each signal has its own exit code, so the exit says which one arrived; TERM would end it with 15.
  const script = "trap 'exit 41' USR1; trap 'exit 42' USR2; trap 'exit 15' TERM; while :; do sleep 1 & wait; done";
  const fromConfig = await e.container(podId, { ...sh(script), stop_signal: 'SIGNAL_SIGUSR1' });
  const fromImage = await e.container(podId, sh(script), usr2Image.ref);
  const byDefault = await e.container(podId, sh(script));
  const status = async (id: string) => (await e.berth.runtime.ContainerStatus({ container_id: id })).status!;
  t.is((await status(fromConfig)).stop_signal, 'SIGNAL_SIGUSR1');
  t.is((await status(fromImage)).stop_signal, 'SIGNAL_SIGUSR2');
  t.is((await status(byDefault)).stop_signal, 'SIGNAL_SIGTERM');
  // The traps must be set before the signal comes: the shell has run its first `wait` once a sleep child exists.
  await waitFor('the shells to reach their loops', async () => {
    const r = await Promise.all([fromConfig, fromImage, byDefault].map((id) => e.berth.runtime.ExecSync({ container_id: id, cmd: ['/bin/sh', '-c', 'pgrep sleep || ps'], timeout: '5' })));
    return r.every((x) => x.exit_code === 0 && x.stdout.length > 0);
  }, { timeoutMs: 15000 });
  for (const [id, code] of [[fromConfig, 41], [fromImage, 42], [byDefault, 15]] as const) {
    await e.berth.runtime.StopContainer({ container_id: id, timeout: '20' });
    const s = await status(id);
    t.is(s.state, 'CONTAINER_EXITED');
    t.is(s.exit_code, code, `${id} stopped by the wrong signal`);
  }
  const err = await failure(e.berth.runtime.CreateContainer({
    pod_sandbox_id: podId,
    config: containerConfig(image.ref, { stop_signal: 200 as never }),
    sandbox_config: podConfig({ log_directory: e.logDir }),
  }));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  t.regex(err.details, /^config\.stop_signal 200/);
});

test('mount_options: a noexec volume cannot run a program; a flag that would lift a restriction is refused naming it', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const volume = path.join(e.berth.dir, 'vol');
  await fs.mkdir(volume);
  await fs.writeFile(path.join(volume, 'hello'), '#!/bin/sh\necho hello\n', { mode: 0o755 });
  const mounts = [{ container_path: '/noexec', host_path: volume, mount_options: ['noexec', 'nodev'] }, { container_path: '/exec', host_path: volume }];
  const id = await e.container(podId, { ...sh('sleep 3600'), mounts });
  const run = (p: string) => e.berth.runtime.ExecSync({ container_id: id, cmd: [p], timeout: '10' });
  t.is((await run('/exec/hello')).stdout.toString(), 'hello\n', 'the same file runs from a mount without noexec');
  const denied = await run('/noexec/hello');
  t.not(denied.exit_code, 0);
  const mountinfo = (await e.berth.runtime.ExecSync({ container_id: id, cmd: ['cat', '/proc/self/mountinfo'], timeout: '10' })).stdout.toString();
  // Field 6 of mountinfo: the mount's own options.
  t.regex(mountinfo.split('\n').find((l) => l.split(' ')[4] === '/noexec')?.split(' ')[5] ?? '', /(^|,)noexec(,|$)/);
  t.deepEqual((await e.berth.runtime.ContainerStatus({ container_id: id })).status!.mounts.find((m) => m.container_path === '/noexec')?.mount_options, ['noexec', 'nodev']);
  const err = await failure(e.berth.runtime.CreateContainer({
    pod_sandbox_id: podId,
    config: containerConfig(image.ref, { mounts: [{ container_path: '/v', host_path: volume, mount_options: ['suid'] }] }),
    sandbox_config: podConfig({ log_directory: e.logDir }),
  }));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  t.regex(err.details, /^config\.mounts\[0\]\.mount_options\[0\] "suid"/);
});

test('UpdatePodSandboxResources is recorded and shown by verbose PodSandboxStatus; an unknown pod is NOT_FOUND', async (t) => {
  const e = await env(t);
  const podId = await e.pod({ linux: { resources: { cpu_shares: '256', memory_limit_in_bytes: String(64 << 20) } } });
  const recorded = async () => JSON.parse((await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: podId, verbose: true })).info.info).podResources;
  t.like(await recorded(), { resources: { cpuShares: 256, memoryLimitBytes: 64 << 20 }, updatedAt: 0 });
  await e.berth.runtime.UpdatePodSandboxResources({
    pod_sandbox_id: podId,
    resources: { cpu_shares: '512', cpu_quota: '50000', cpu_period: '100000', memory_limit_in_bytes: String(128 << 20) },
    overhead: { cpu_shares: '10' },
  });
  const after = await recorded();
  t.like(after, { resources: { cpuShares: 512, cpuQuota: 50000, cpuPeriod: 100000, memoryLimitBytes: 128 << 20 }, overhead: { cpuShares: 10 } });
  t.true(after.updatedAt > 0);
  const err = await failure(e.berth.runtime.UpdatePodSandboxResources({ pod_sandbox_id: 'f00d', resources: {} }));
  t.is(err.code, grpc.status.NOT_FOUND);
  const empty = await failure(e.berth.runtime.UpdatePodSandboxResources({ pod_sandbox_id: '' }));
  t.is(empty.code, grpc.status.INVALID_ARGUMENT);
  t.regex(empty.details, /^pod_sandbox_id is empty/);
});

test('CheckpointContainer, CheckpointPod and RestorePod are UNIMPLEMENTED saying why', async (t) => {
  const e = await env(t);
  for (const call of [
    e.berth.runtime.CheckpointContainer({ container_id: 'x' }),
    e.berth.runtime.CheckpointPod({ pod_sandbox_id: 'x' }),
    e.berth.runtime.RestorePod({ checkpoint_path: '/x' }),
  ]) {
    const err = await failure(call);
    t.is(err.code, grpc.status.UNIMPLEMENTED);
    t.regex(err.details, /does not checkpoint or restore containers: that needs CRIU/);
  }
});

test('user_namespaces_host_network: a user-namespaced pod on the host network runs, in the host netns, as an unprivileged host uid', async (t) => {
  const e = await env(t);
  const status = await e.berth.runtime.Status({});
  t.is(status.features?.user_namespaces_host_network, status.runtime_handlers[0].features?.user_namespaces);
  t.true(status.features?.mount_options);
  if (!status.features?.user_namespaces_host_network) return t.log('no user namespaces on this kernel: nothing more to check');
  const userns = { mode: 'POD' as const, uids: [{ container_id: 0, host_id: 300000, length: 65536 }], gids: [{ container_id: 0, host_id: 300000, length: 65536 }] };
  const nsopts = { network: 'NODE' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const, userns_options: userns };
  const podId = await e.pod({ linux: { security_context: { namespace_options: nsopts } } });
  const id = await e.container(podId, { command: ['sleep', '1000'], linux: { security_context: { namespace_options: nsopts } } });
  const inside = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'readlink /proc/self/ns/net; id -u; ls /sys/class/net'], timeout: '10' });
  const [netns, uid, ...ifaces] = inside.stdout.toString().trim().split('\n');
  t.is(inside.exit_code, 0, inside.stderr.toString());
  t.is(netns, await fs.readlink('/proc/self/ns/net'));
  t.is(uid, '0');
  t.true(ifaces.includes('lo'));
  const pid = JSON.parse((await e.berth.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info).pid as number;
  t.is(/Uid:\s+(\d+)/.exec(await fs.readFile(`/proc/${pid}/status`, 'utf8'))![1], '300000');
});

test('AppArmor on a kernel without it: RuntimeDefault and Unconfined run; a Localhost profile is FAILED_PRECONDITION naming the field, nothing made', async (t) => {
  const e = await env(t);
  const apparmorHere = await fs.readFile('/sys/module/apparmor/parameters/enabled', 'utf8').then((s) => s.trim() === 'Y', () => false);
  if (apparmorHere) return t.pass('this kernel has AppArmor: the unit tests cover its table');
  const podId = await e.pod();
  const runDefault = await e.container(podId, { command: ['sleep', '1000'], linux: { security_context: { apparmor: { profile_type: 'RuntimeDefault' } } } });
  const runOpen = await e.container(podId, { command: ['sleep', '1000'], linux: { security_context: { apparmor: { profile_type: 'Unconfined' } } } });
  for (const id of [runDefault, runOpen]) t.is((await e.berth.runtime.ContainerStatus({ container_id: id })).status!.state, 'CONTAINER_RUNNING');
  const before = (await e.berth.runtime.ListContainers({})).containers.length;
  const err = await failure(e.berth.runtime.CreateContainer({
    pod_sandbox_id: podId,
    config: containerConfig(image.ref, { linux: { security_context: { apparmor: { profile_type: 'Localhost', localhost_ref: 'k8s-apparmor-example-deny-write' } } } }),
    sandbox_config: podConfig({ log_directory: e.logDir }),
  }));
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.regex(err.details, /^config\.linux\.security_context\.apparmor\.localhost_ref: AppArmor profile "k8s-apparmor-example-deny-write" was asked for, but this node's kernel has no AppArmor/);
  t.is((await e.berth.runtime.ListContainers({})).containers.length, before);
});

test('user_specified_image: what the pod spec named is echoed in ContainerStatus and ListContainers beside the resolved image', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const imageId = (await e.berth.images.ImageStatus({ image: { image: image.ref } })).image!.id;
  const id = await e.container(podId, { command: ['sleep', '1000'], image: { image: imageId, user_specified_image: image.ref } }, imageId);
  const status = (await e.berth.runtime.ContainerStatus({ container_id: id })).status!;
  t.is(status.image?.user_specified_image, image.ref);
  t.is(status.image?.image, imageId);
  const listed = (await e.berth.runtime.ListContainers({ filter: { id } })).containers[0];
  t.is(listed.image?.user_specified_image, image.ref);
});

test('image volumes: an image from the store mounted read-only, whole or a sub path, symlinks resolved inside the image', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const dataId = (await e.berth.images.ImageStatus({ image: { image: dataImage.ref } })).image!.id;
  const busyboxId = (await e.berth.images.ImageStatus({ image: { image: image.ref } })).image!.id;
  const vol = (container_path: string, ref: string, image_sub_path = '') => ({ container_path, image: { image: ref }, image_sub_path, readonly: true });
  const id = await e.container(podId, {
    command: ['sleep', '1000'],
    mounts: [
      vol('/whole', dataId), vol('/sub', dataId, 'data'), vol('/escape', dataId, 'escape'), vol('/abs', dataId, 'data/abs'),
      vol('/file', dataId, 'data/a.txt'), vol('/single', busyboxId, 'bin'),
    ],
  });
  const sh = async (script: string) => {
    const r = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['/bin/sh', '-c', script], timeout: '10' });
    return { out: r.stdout.toString(), err: r.stderr.toString(), code: r.exit_code };
  };
  t.is((await sh('cat /whole/data/a.txt /whole/data/b.txt')).out, 'from layer 1\nfrom layer 2\n');
  t.is((await sh('ls /sub')).out, 'a.txt\nabs\nb.txt\n', 'the whiteout of the upper layer hides gone.txt');
  t.is((await sh('cat /escape/marker')).out, "the image's etc\n", 'a relative symlink climbing out stops at the image root');
  t.is((await sh('cat /abs/marker')).out, "the image's etc\n", 'an absolute symlink is the image\'s path');
  t.is((await sh('cat /file')).out, 'from layer 1\n', 'a file as sub path');
  t.regex((await sh('ls /single')).out, /\bbusybox\b/, 'a single-layer image');
  const write = await sh('touch /whole/new 2>&1; echo rc=$?');
  t.regex(write.out, /Read-only file system[\s\S]*rc=1/);
  const status = (await e.berth.runtime.ContainerStatus({ container_id: id })).status!;
  const sub = status.mounts.find((m) => m.container_path === '/sub')!;
  t.is(sub.image?.image, dataId);
  t.is(sub.image?.image_ref, dataId);
  t.is(sub.image_sub_path, 'data');
  t.true(sub.readonly);

  const create = (mounts: unknown[]) => failure(e.berth.runtime.CreateContainer({
    pod_sandbox_id: podId,
    config: containerConfig(image.ref, { mounts: mounts as never }),
    sandbox_config: podConfig({ log_directory: e.logDir }),
  }));
  const missing = await create([vol('/x', dataId, 'data/gone.txt')]);
  t.is(missing.code, grpc.status.NOT_FOUND);
  t.regex(missing.details, /^config\.mounts\[0\]\.image_sub_path "data\/gone\.txt" does not exist in image/);
  const notPulled = await create([vol('/ok', dataId), vol('/x', `${registry.host}/berth/never-pulled:v1`)]);
  t.is(notPulled.code, grpc.status.NOT_FOUND);
  t.regex(notPulled.details, /^config\.mounts\[1\]\.image ".*never-pulled:v1" not found: pull it first/);
  const climbing = await create([vol('/x', dataId, '../../etc')]);
  t.is(climbing.code, grpc.status.INVALID_ARGUMENT);
  t.regex(climbing.details, /^config\.mounts\[0\]\.image_sub_path/);
  t.is((await e.berth.runtime.ListContainers({})).containers.length, 1, 'no refused container was made');
});

test('image volumes in a user-namespaced pod: the layers are id-mapped, files show the image\'s owners inside', async (t) => {
  const e = await env(t);
  if (!(await e.berth.runtime.Status({})).runtime_handlers[0].features?.user_namespaces) return t.pass('no user namespaces here');
  const userns = { mode: 'POD' as const, uids: [{ container_id: 0, host_id: 400000, length: 65536 }], gids: [{ container_id: 0, host_id: 400000, length: 65536 }] };
  const nsopts = { network: 'POD' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const, userns_options: userns };
  const podId = await e.pod({ linux: { security_context: { namespace_options: nsopts } } });
  const dataId = (await e.berth.images.ImageStatus({ image: { image: dataImage.ref } })).image!.id;
  const id = await e.container(podId, {
    command: ['sleep', '1000'],
    linux: { security_context: { namespace_options: nsopts } },
    mounts: [{ container_path: '/vol', image: { image: dataId }, image_sub_path: 'data' }],
  });
  const r = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['/bin/sh', '-c', 'stat -c %u:%g /vol/a.txt; cat /vol/b.txt'], timeout: '10' });
  t.is(r.stdout.toString(), '0:0\nfrom layer 2\n', r.stderr.toString());
});
