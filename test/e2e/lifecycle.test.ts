import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { containerConfig, hostLeftovers, podConfig } from '../helpers/cri.js';
import { waitFor } from '../helpers/util.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// Pods and containers for real: a berth process, images from a loopback registry, containers that run busybox.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/busybox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

interface Env {
  berth: BerthProcess;
  logDir: string;
  cgroups: string[];
  pod(overrides?: Partial<PodSandboxConfig>): Promise<string>;
  container(podId: string, podOverrides: Partial<PodSandboxConfig>, overrides: Partial<ContainerConfig>, start?: boolean): Promise<string>;
  cgroupOf(containerId: string): Promise<string>;
}

/** A berth with the image pulled; on teardown, removes every pod and checks the host is as it was. */
async function env(t: ExecutionContext): Promise<Env> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const cgroups: string[] = [];
  const e: Env = {
    berth,
    logDir: path.join(berth.dir, 'logs'),
    cgroups,
    async pod(overrides = {}) {
      const { pod_sandbox_id } = await e.berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: e.logDir, ...overrides }) });
      const status = await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      cgroups.push(JSON.parse(status.info.info).cgroup.path);
      return pod_sandbox_id;
    },
    async container(podId, podOverrides, overrides, start = true) {
      const { container_id } = await e.berth.runtime.CreateContainer({
        pod_sandbox_id: podId,
        config: containerConfig(image.ref, { log_path: `${Math.random().toString(36).slice(2)}.log`, ...overrides }),
        sandbox_config: podConfig({ log_directory: e.logDir, ...podOverrides }),
      });
      if (start) await e.berth.runtime.StartContainer({ container_id });
      return container_id;
    },
    async cgroupOf(containerId) {
      const s = await e.berth.runtime.ContainerStatus({ container_id: containerId, verbose: true });
      return JSON.parse(s.info.info).cgroup.path;
    },
  };
  await berth.images.PullImage({ image: { image: image.ref } });
  t.teardown(async () => {
    await e.berth.cleanup();
    const left = await hostLeftovers(berth.dir, cgroups);
    if (left.length > 0) throw new Error(`test left host objects behind:\n${left.join('\n')}`);
  });
  return e;
}

const sh = (script: string) => ({ command: ['/bin/sh', '-c', script] });
const TERM_FRIENDLY = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

async function status(e: Env, id: string) {
  return (await e.berth.runtime.ContainerStatus({ container_id: id })).status!;
}

async function exited(e: Env, id: string, timeoutMs = 15000) {
  return waitFor(`container ${id} to exit`, async () => {
    const s = await status(e, id);
    return s.state === 'CONTAINER_EXITED' ? s : undefined;
  }, { timeoutMs });
}

test('a pod with two containers runs, reports, stops and is removed, labels and annotations handed back exactly', async (t) => {
  const e = await env(t);
  const labels = { 'io.kubernetes.pod.uid': 'uid-two', tier: 'web' };
  const annotations = { 'a/b': 'c', empty: '' };
  const podId = await e.pod({ labels, annotations });
  const a = await e.container(podId, {}, { ...sh(TERM_FRIENDLY), labels: { which: 'a' }, annotations: { note: 'x' } });
  const b = await e.container(podId, {}, sh('echo done; exit 3'));
  const podStatus = (await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: podId })).status!;
  t.is(podStatus.state, 'SANDBOX_READY');
  t.deepEqual(podStatus.labels, labels);
  t.deepEqual(podStatus.annotations, annotations);

  const sa = await status(e, a);
  t.is(sa.state, 'CONTAINER_RUNNING');
  t.deepEqual(sa.labels, { which: 'a' });
  t.deepEqual(sa.annotations, { note: 'x' });
  t.is(sa.image?.image, image.ref);
  t.is(sa.image_id, image.imageId);
  t.true(sa.image_ref.includes(image.manifestDigest));
  t.true(BigInt(sa.started_at) >= BigInt(sa.created_at));

  const sb = await exited(e, b);
  t.is(sb.exit_code, 3);
  t.is(sb.reason, 'Error');
  t.true(BigInt(sb.finished_at) > 0n);

  const byPod = await e.berth.runtime.ListContainers({ filter: { pod_sandbox_id: podId } });
  t.is(byPod.containers.length, 2, 'exited containers stay listed until removed');
  const running = await e.berth.runtime.ListContainers({ filter: { state: { state: 'CONTAINER_RUNNING' } } });
  t.deepEqual(running.containers.map((c) => c.id), [a]);
  const byUid = await e.berth.runtime.ListPodSandbox({ filter: { label_selector: { 'io.kubernetes.pod.uid': 'uid-two' } } });
  t.deepEqual(byUid.items.map((p) => p.id), [podId]);

  const t0 = Date.now();
  await e.berth.runtime.StopContainer({ container_id: a, timeout: 10 });
  t.true(Date.now() - t0 < 5000, 'a process that exits on SIGTERM stops without waiting for the timeout');
  t.is((await status(e, a)).exit_code, 0);
  await e.berth.runtime.StopContainer({ container_id: a, timeout: 10 });
  await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: podId });
  await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: podId });
  t.is((await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: podId })).status?.state, 'SANDBOX_NOTREADY');
  await e.berth.runtime.RemoveContainer({ container_id: b });
  await e.berth.runtime.RemoveContainer({ container_id: b });
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: podId });
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: podId });
  t.deepEqual((await e.berth.runtime.ListPodSandbox({})).items, []);
  t.deepEqual((await e.berth.runtime.ListContainers({})).containers, []);
  // CRI (cri-api's api.proto): Stop and Remove are idempotent and "must not return an error" once the object is
  // gone; kubelet repeats them after restarts. So ids that are gone, or never were (a UUID, as critest sends), succeed.
  for (const gone of [a, b, randomUUID()]) {
    await e.berth.runtime.StopContainer({ container_id: gone, timeout: 0 });
    await e.berth.runtime.RemoveContainer({ container_id: gone });
  }
  for (const gone of [podId, randomUUID()]) {
    await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: gone });
    await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: gone });
  }
});

async function logLines(file: string): Promise<{ time: string; stream: string; tag: string; text: string }[]> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((line) => {
    const m = /^(\S+) (stdout|stderr) ([PF]) (.*)$/.exec(line);
    if (!m) throw new Error(`not a CRI log line: ${line.slice(0, 100)}`);
    return { time: m[1], stream: m[2], tag: m[3], text: m[4] };
  });
}

test('logs are in CRI format: stdout and stderr apart, long lines split into P…F, reopened after a rename', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const script = 'echo out; echo err >&2; head -c 40000 /dev/zero | tr "\\0" x; echo; while :; do echo tick; sleep 1; done';
  const id = await e.container(podId, {}, sh(script));
  const logPath = (await status(e, id)).log_path;
  t.true(logPath.startsWith(e.logDir));
  const lines = await waitFor('log lines', async () => {
    const l = await logLines(logPath);
    return l.some((x) => x.text === 'tick') ? l : undefined;
  });
  t.true(lines.every((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$/.test(l.time)));
  t.deepEqual(lines.find((l) => l.text === 'out'), { ...lines.find((l) => l.text === 'out')!, stream: 'stdout', tag: 'F' });
  t.is(lines.find((l) => l.text === 'err')?.stream, 'stderr');
  const long = lines.filter((l) => /^x+$/.test(l.text));
  t.true(long.length >= 3);
  t.true(long.slice(0, -1).every((l) => l.tag === 'P'));
  t.is(long[long.length - 1].tag, 'F');
  t.is(long.map((l) => l.text).join('').length, 40000);

  await fs.rename(logPath, `${logPath}.1`);
  await e.berth.runtime.ReopenContainerLog({ container_id: id });
  const fresh = await waitFor('ticks in the reopened log', async () => {
    const l = await logLines(logPath);
    return l.some((x) => x.text === 'tick') ? l : undefined;
  });
  t.true(fresh.every((l) => l.text === 'tick'));
});

test('ExecSync returns stdout and stderr apart with the exit code, and honours its timeout', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const id = await e.container(podId, {}, sh(TERM_FRIENDLY));
  const r = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'echo to-out; echo to-err >&2; exit 5'], timeout: 10 });
  t.is(r.stdout.toString(), 'to-out\n');
  t.is(r.stderr.toString(), 'to-err\n');
  t.is(r.exit_code, 5);
  const t0 = Date.now();
  const err = await t.throwsAsync(e.berth.runtime.ExecSync({ container_id: id, cmd: ['sleep', '30'], timeout: 1 })) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.DEADLINE_EXCEEDED);
  t.true(Date.now() - t0 < 10000);
  const left = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'ps -o args | grep -c "^sleep 30"'], timeout: 10 });
  t.is(left.stdout.toString().trim(), '0', 'the timed-out command is gone when ExecSync returns');
  const missing = await t.throwsAsync(e.berth.runtime.ExecSync({ container_id: 'nope', cmd: ['true'], timeout: 1 })) as unknown as grpc.ServiceError;
  t.is(missing.code, grpc.status.NOT_FOUND);
});

test('StopContainer escalates to SIGKILL for a process that ignores SIGTERM', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const id = await e.container(podId, {}, sh("trap '' TERM; while :; do sleep 1; done"));
  const t0 = Date.now();
  await e.berth.runtime.StopContainer({ container_id: id, timeout: 1 });
  const elapsed = Date.now() - t0;
  t.true(elapsed >= 1000 && elapsed < 8000, `took ${elapsed}ms`);
  const s = await status(e, id);
  t.is(s.state, 'CONTAINER_EXITED');
  t.is(s.exit_code, 137);
});

test('a process allocating past its memory limit is OOM-killed and ContainerStatus says OOMKilled', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const id = await e.container(podId, {}, {
    command: ['/bin/busybox', 'tail', '/dev/zero'],
    linux: { resources: { memory_limit_in_bytes: String(32 << 20) } },
  });
  const s = await exited(e, id, 30000);
  t.is(s.reason, 'OOMKilled');
  t.is(s.exit_code, 137);
});

test('cpu quota is in place and throttling is counted; a hugepage limit lands in hugetlb', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const id = await e.container(podId, {}, {
    ...sh('while :; do :; done'),
    linux: {
      resources: {
        cpu_quota: '10000',
        cpu_period: '100000',
        cpu_shares: '256',
        hugepage_limits: [{ page_size: '2MB', limit: String(4 << 20) }],
      },
    },
  });
  const cg = await e.cgroupOf(id);
  t.is((await fs.readFile(`/sys/fs/cgroup/cpu${cg}/cpu.cfs_quota_us`, 'utf8')).trim(), '10000');
  t.is((await fs.readFile(`/sys/fs/cgroup/cpu${cg}/cpu.shares`, 'utf8')).trim(), '256');
  await waitFor('throttling', async () => {
    const stat = await fs.readFile(`/sys/fs/cgroup/cpu${cg}/cpu.stat`, 'utf8');
    return Number(/nr_throttled (\d+)/.exec(stat)?.[1]) > 0;
  });
  const hugetlb = (await fs.readFile(`/sys/fs/cgroup/unified${cg}/hugetlb.2MB.max`, 'utf8')).trim();
  t.is(hugetlb, String(4 << 20));
  await e.berth.runtime.StopContainer({ container_id: id, timeout: 0 });
});

test('UpdateContainerResources raises a memory limit live', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const id = await e.container(podId, {}, { ...sh(TERM_FRIENDLY), linux: { resources: { memory_limit_in_bytes: String(32 << 20) } } });
  const cg = await e.cgroupOf(id);
  const limit = () => fs.readFile(`/sys/fs/cgroup/memory${cg}/memory.limit_in_bytes`, 'utf8').then((s) => Number(s));
  t.is(await limit(), 32 << 20);
  await e.berth.runtime.UpdateContainerResources({ container_id: id, linux: { memory_limit_in_bytes: String(96 << 20) } });
  t.is(await limit(), 96 << 20);
  t.is((await status(e, id)).resources?.linux?.memory_limit_in_bytes, String(96 << 20));
});

async function psIn(e: Env, id: string): Promise<string> {
  const r = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['ps', '-o', 'pid,args'], timeout: 10 });
  return r.stdout.toString();
}

test('PID namespaces: private per container, shared by the pod, or the target container', async (t) => {
  const e = await env(t);
  const privatePod = await e.pod();
  const p1 = await e.container(privatePod, {}, sh('sleep 1001'));
  const p2 = await e.container(privatePod, {}, sh('sleep 1002'));
  const ps1 = await psIn(e, p1);
  t.regex(ps1, /^\s*1 sleep 1001/m);
  t.notRegex(ps1, /sleep 1002/);

  const shared = { linux: { security_context: { namespace_options: { network: 'POD' as const, pid: 'POD' as const, ipc: 'POD' as const } } } };
  const sharedPod = await e.pod(shared);
  const s1 = await e.container(sharedPod, shared, { ...sh('sleep 2001'), linux: { security_context: { namespace_options: { pid: 'POD', network: 'POD', ipc: 'POD' } } } });
  const s2 = await e.container(sharedPod, shared, { ...sh('sleep 2002'), linux: { security_context: { namespace_options: { pid: 'POD', network: 'POD', ipc: 'POD' } } } });
  const ps2 = await psIn(e, s2);
  t.regex(ps2, /sleep 2001/);
  t.regex(ps2, /sleep 2002/);
  t.notRegex(ps2, /^\s*1 sleep/m, 'pid 1 is the pod init, not a container');
  void s1;

  const target = await e.container(privatePod, {}, {
    ...sh('sleep 3001'),
    linux: { security_context: { namespace_options: { pid: 'TARGET', target_id: p2, network: 'POD', ipc: 'POD' } } },
  });
  const ps3 = await psIn(e, target);
  t.regex(ps3, /sleep 1002/);
  t.regex(ps3, /sleep 3001/);
});

test('restarting berth keeps a running container running, and an exit that happened meanwhile is reported', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const id = await e.container(podId, {}, sh('while [ ! -f /tmp/go ]; do sleep 1; done; exit 7'));
  const before = await e.berth.runtime.ContainerStatus({ container_id: id, verbose: true });
  const pid = JSON.parse(before.info.info).pid as number;
  e.berth = await e.berth.restart();
  t.is((await status(e, id)).state, 'CONTAINER_RUNNING');
  await e.berth.stop();
  t.true(await fs.access(`/proc/${pid}`).then(() => true, () => false), 'container process survived berth stopping');
  await fs.writeFile(`/proc/${pid}/root/tmp/go`, '');
  await waitFor('container exit', async () => !(await fs.access(`/proc/${pid}`).then(() => true, () => false)));
  e.berth = await startBerth({ dir: e.berth.dir, config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const s = await status(e, id);
  t.is(s.state, 'CONTAINER_EXITED');
  t.is(s.exit_code, 7);
  t.is((await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: podId })).status?.state, 'SANDBOX_READY');
});

test('bad input: unknown sandbox, absent image, relative mount path; nothing half-made left', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as unknown as grpc.ServiceError);
  const unknown = await code(e.berth.runtime.CreateContainer({ pod_sandbox_id: 'f'.repeat(64), config: containerConfig(image.ref, sh('true')) }));
  t.is(unknown.code, grpc.status.NOT_FOUND);
  t.regex(unknown.details, /pod sandbox/);
  const noImage = await code(e.berth.runtime.CreateContainer({ pod_sandbox_id: podId, config: containerConfig(`${registry.host}/berth/absent:v1`, sh('true')) }));
  t.is(noImage.code, grpc.status.NOT_FOUND);
  t.regex(noImage.details, /absent/);
  const relative = await code(e.berth.runtime.CreateContainer({
    pod_sandbox_id: podId,
    config: containerConfig(image.ref, { ...sh('true'), mounts: [{ container_path: 'relative/path', host_path: e.berth.dir }] }),
  }));
  t.is(relative.code, grpc.status.INVALID_ARGUMENT);
  t.regex(relative.details, /container_path/);
  t.deepEqual((await e.berth.runtime.ListContainers({})).containers, []);
  t.deepEqual(await fs.readdir(path.join(e.berth.root, 'containers')), []);
  const statusMissing = await code(e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: 'nope' }));
  t.is(statusMissing.code, grpc.status.NOT_FOUND);
  const startMissing = await code(e.berth.runtime.StartContainer({ container_id: 'nope' }));
  t.is(startMissing.code, grpc.status.NOT_FOUND);
});

test('bind mounts: a directory read-write, a single file read-only, a missing host path created', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const dir = path.join(e.berth.dir, 'vol');
  await fs.mkdir(dir);
  const file = path.join(e.berth.dir, 'termination-log');
  await fs.writeFile(file, 'seed\n');
  const missing = path.join(e.berth.dir, 'created-by-berth');
  const id = await e.container(podId, {}, {
    ...sh('echo written > /vol/out; cat /dev/termination-log; echo x >> /dev/termination-log || echo ro-ok; ls -d /made; ' + TERM_FRIENDLY),
    mounts: [
      { container_path: '/vol', host_path: dir },
      { container_path: '/dev/termination-log', host_path: file, readonly: true },
      { container_path: '/made', host_path: missing },
    ],
  });
  await waitFor('file written through the mount', () => fs.readFile(path.join(dir, 'out'), 'utf8').catch(() => undefined));
  t.is(await fs.readFile(path.join(dir, 'out'), 'utf8'), 'written\n');
  const logPath = (await status(e, id)).log_path;
  const text = await waitFor('ro-ok in the log', async () => {
    const s = await fs.readFile(logPath, 'utf8').catch(() => '');
    return s.includes('ro-ok') ? s : undefined;
  });
  t.regex(text, /seed/);
  t.is(await fs.readFile(file, 'utf8'), 'seed\n');
  t.true((await fs.stat(missing)).isDirectory());
});

test('a missing cgroup parent is created, shared by later pods, and removed with the last of them', async (t) => {
  const e = await env(t);
  const top = `/berth-kubepods-${Math.random().toString(36).slice(2, 8)}`;
  const parentA = `${top}/burstable/poda`;
  const parentB = `${top}/burstable/podb`;
  const podA = await e.pod({ linux: { cgroup_parent: parentA } });
  const podB = await e.pod({ linux: { cgroup_parent: parentB } });
  const c = await e.container(podA, { linux: { cgroup_parent: parentA } }, sh(TERM_FRIENDLY));
  t.true((await e.cgroupOf(c)).startsWith(`${parentA}/`));
  const exists = (p: string) => fs.access(`/sys/fs/cgroup/memory${p}`).then(() => true, () => false);
  t.true(await exists(parentA));
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: podA });
  t.false(await exists(parentA));
  t.true(await exists(`${top}/burstable`), 'still used by the second pod');
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: podB });
  t.false(await exists(top));
  e.cgroups.push(top);
});

test('OomScoreAdj up to 1000 is applied; a value below berth\'s own is raised to it, not refused', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const high = await e.container(podId, {}, { ...sh(TERM_FRIENDLY), linux: { resources: { oom_score_adj: '1000' } } });
  const read = async (id: string) => (await e.berth.runtime.ExecSync({ container_id: id, cmd: ['cat', '/proc/1/oom_score_adj'], timeout: 5 })).stdout.toString().trim();
  t.is(await read(high), '1000');
  const own = Number((await fs.readFile(`/proc/${e.berth.child.pid}/oom_score_adj`, 'utf8')).trim());
  const low = await e.container(podId, {}, { ...sh(TERM_FRIENDLY), linux: { resources: { oom_score_adj: String(Math.max(-1000, own - 500)) } } });
  t.true(Number(await read(low)) >= own);
});

test('removing an image keeps the layers under a container\'s rootfs until that container is removed', async (t) => {
  const e = await env(t);
  const podId = await e.pod();
  const id = await e.container(podId, {}, sh(TERM_FRIENDLY));
  const layerDir = path.join(e.berth.root, 'images', 'layers', image.layers[0].diffId.slice(7));
  await e.berth.images.RemoveImage({ image: { image: image.ref } });
  t.is((await e.berth.images.ImageStatus({ image: { image: image.ref } })).image, null);
  t.true(await fs.access(layerDir).then(() => true, () => false), 'layer kept while the container exists');
  t.is((await e.berth.runtime.ExecSync({ container_id: id, cmd: ['echo', 'still-here'], timeout: 5 })).stdout.toString(), 'still-here\n');
  await e.berth.runtime.StopContainer({ container_id: id, timeout: 5 });
  await e.berth.runtime.RemoveContainer({ container_id: id });
  t.false(await fs.access(layerDir).then(() => true, () => false), 'layer deleted with the last container');
});
