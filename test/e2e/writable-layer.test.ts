import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { containerConfig, failure, hostLeftovers, podConfig } from '../helpers/cri.js';
import { waitFor } from '../helpers/util.js';
import { removeTestNet, testNet } from './network-helpers.js';
import { MNT_DETACH, mount, umount2 } from '../../src/kernel/libc.js';

// Size-limited writable layers for real. berth's root is a tmpfs the test mounts, so that the node's free space
// (statfs of berth's root) moves only with what this test's berth does, not with the other tests of the machine.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/wlbox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

const MiB = 1024 * 1024;
const LIMIT_ANNOTATION = 'writable-layer.berth.io/container.limited';
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

async function freeBytes(dir: string): Promise<number> {
  const s = await fs.statfs(dir);
  return s.bavail * s.bsize;
}

async function loopsUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of await fs.readdir('/sys/block')) {
    const backing = await fs.readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '');
    if (backing.startsWith(dir)) out.push(`/dev/${name} -> ${backing.trim()}`);
  }
  return out;
}

async function berthOnTmpfs(t: ExecutionContext, extraConfig = ''): Promise<{ berth: BerthProcess; root: string; cgroups: string[]; pods: string[] }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-wl-'));
  const root = path.join(dir, 'root');
  await fs.mkdir(root);
  mount('tmpfs', root, 'tmpfs', 0, 'size=256m,mode=0700');
  const net = testNet();
  const berth = await startBerth({ dir, config: `[registry]\ninsecure = ["${registry.host}"]\n${net.toml()}\n[runtime]\n${extraConfig}\n` });
  const env = { berth, root, cgroups: [] as string[], pods: [] as string[] };
  t.teardown(async () => {
    // berth.cleanup() would delete the directory with the tmpfs still mounted in it: its steps, with the unmount between.
    for (const pod of (await berth.runtime.ListPodSandbox({})).items) await berth.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
    await berth.stop();
    const loops = await loopsUnder(root);
    await removeTestNet(net);
    // The tmpfs may be mounted more than once there (berth's own doing, or propagation): until it is no mount point.
    for (let i = 0; i < 8; i++) {
      try {
        umount2(root, MNT_DETACH);
      } catch {
        break;
      }
    }
    const left = [...loops, ...(await hostLeftovers(dir, env.cgroups, env.pods))];
    await fs.rm(dir, { recursive: true, force: true });
    if (left.length > 0) throw new Error(`test left host objects behind:\n${left.join('\n')}`);
  });
  await berth.images.PullImage({ image: { image: image.ref } });
  return env;
}

test('a 16 MiB writable layer: writing 32 MiB fails with ENOSPC, the node loses at most the limit + 1 MiB meanwhile and gets it back after removal; nothing is left', async (t) => {
  const env = await berthOnTmpfs(t);
  const { berth, root } = env;
  const config = podConfig({ log_directory: path.join(berth.dir, 'logs'), annotations: { [LIMIT_ANNOTATION]: '16Mi' } });
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config });
  env.pods.push(pod_sandbox_id);
  const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
  env.cgroups.push(JSON.parse(status.info.info).cgroup.path);
  const before = await freeBytes(root);

  const create = async (name: string) => {
    const { container_id } = await berth.runtime.CreateContainer({
      pod_sandbox_id,
      config: containerConfig(image.ref, { metadata: { name, attempt: 0 }, command: ['/bin/sh', '-c', SLEEPER], log_path: `${name}.log` }),
      sandbox_config: config,
    });
    await berth.runtime.StartContainer({ container_id });
    return container_id;
  };
  const limited = await create('limited');
  const other = await create('other');
  const exec = async (id: string, cmd: string) => {
    const r = await berth.runtime.ExecSync({ container_id: id, cmd: ['/bin/sh', '-c', cmd], timeout: 60 });
    return { out: `${r.stdout.toString()}${r.stderr.toString()}`, code: r.exit_code };
  };

  const write = await exec(limited, 'dd if=/dev/zero of=/big bs=1048576 count=32; echo "rc=$?"; sync');
  t.regex(write.out, /No space left on device|Disk quota exceeded/);
  t.notRegex(write.out, /rc=0/);
  const written = Number((await exec(limited, 'wc -c < /big')).out.trim());
  t.true(written > 8 * MiB && written <= 16 * MiB, `the container wrote ${written} bytes before ENOSPC`);
  const during = await freeBytes(root);
  t.log(`node free space: ${(before - during) / MiB} MiB less while the layer is full (limit 16 MiB)`);
  t.true(before - during <= 17 * MiB, `node lost ${before - during} bytes`);
  // The other container of the pod is not limited by it.
  t.is((await exec(other, 'dd if=/dev/zero of=/fine bs=1048576 count=20 2>/dev/null && wc -c < /fine')).out.trim(), String(20 * MiB));
  t.is((await exec(other, 'rm /fine')).code, 0);

  const imageFile = path.join(root, 'writable-layers', `${limited}.img`);
  t.true(await fs.access(imageFile).then(() => true, () => false), 'the image is named after the container');
  t.is((await loopsUnder(root)).length, 1);

  await berth.runtime.StopContainer({ container_id: limited, timeout: 5 });
  await berth.runtime.RemoveContainer({ container_id: limited });
  t.false(await fs.access(imageFile).then(() => true, () => false), 'the image is deleted');
  t.false((await fs.readFile('/proc/self/mountinfo', 'utf8')).includes(limited), 'the layer is unmounted');
  // The loop device lets go of the (deleted) image once the container's mount namespace is gone.
  await waitFor('the loop device to detach', async () => (await loopsUnder(root)).length === 0, { timeoutMs: 10_000, intervalMs: 50 });
  await waitFor('free space to come back', async () => (await freeBytes(root)) >= before - MiB, { timeoutMs: 10_000, intervalMs: 50 }).catch(() => undefined);
  const after = await freeBytes(root);
  t.log(`node free space after removal: ${(before - after) / MiB} MiB below where it was`);
  t.true(after >= before - MiB, `free space back: ${before - after} bytes still used`);
});

test('writable-layer annotations: bad values are INVALID_ARGUMENT naming the annotation at RunPodSandbox; the node limit is a ceiling', async (t) => {
  const env = await berthOnTmpfs(t, 'writable_layer_max_bytes = 33554432');
  const { berth } = env;
  const perContainer = 'writable-layer.berth.io/container.app';
  for (const [key, value, why] of [
    [LIMIT_ANNOTATION, '10Xi', /not a quantity/],
    [LIMIT_ANNOTATION, '-1Mi', /negative/],
    [perContainer, '1Mi', /below/],
    [LIMIT_ANNOTATION, '64Mi', /above this node's limit/],
    [perContainer, '0', /0 \(no limit\)/],
  ] as const) {
    const config = podConfig({ log_directory: path.join(berth.dir, 'logs'), annotations: { [key]: value } });
    const err = await failure(berth.runtime.RunPodSandbox({ config }));
    t.is(err.code, grpc.status.INVALID_ARGUMENT, value);
    t.true(err.details.includes(`config.annotations["${key}"]`), err.details);
    t.regex(err.details, why);
  }
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, [], 'no pod was made');
  t.deepEqual(await loopsUnder(env.root), []);
});
