import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { containerConfig, failure, hostLeftovers, podConfig } from '../helpers/cri.js';

// A full disk under berth's root: a small tmpfs mounted as the root of a real berth. What does not fit is
// RESOURCE_EXHAUSTED naming the path, nothing half-made is recorded, berth keeps serving, and the same call
// succeeds once space is freed.

let registry: Registry;
let busybox: PushedImage;
let zeros: PushedImage;
let small: PushedImage;

const MiB = 1024 * 1024;

test.before(async () => {
  registry = await startRegistry();
  busybox = await pushImage(registry, 'berth/busybox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
  // 24 MiB unpacked, a few KiB on the wire: the pull itself is quick, the unpack is what needs the space.
  zeros = await pushImage(registry, 'berth/zeros', 'v1', { layers: [await layer([{ type: 'file', path: 'data/zeros', content: new Uint8Array(24 * MiB) }])] });
  small = await pushImage(registry, 'berth/small', 'v1', { layers: [await layer([{ type: 'file', path: 'hello.txt', content: 'hello\n' }])] });
});
test.after.always(async () => {
  await registry?.stop();
});

interface DiskEnv {
  berth: BerthProcess;
  cgroups: string[];
  /** A file on the same tmpfs taking up space berth then lacks; `free` removes it. */
  fill(bytes?: number): Promise<void>;
  free(): Promise<void>;
}

/** A berth whose root is a tmpfs of `sizeMiB`; teardown removes its pods, unmounts the tmpfs and checks the host. */
async function diskEnv(t: ExecutionContext, sizeMiB: number): Promise<DiskEnv> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-test-'));
  const root = path.join(dir, 'root');
  await fs.mkdir(root, { mode: 0o700 });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0700`, 'berth-test-disk', root]);
  const filler = path.join(root, 'filler');
  let berth: BerthProcess | undefined;
  const cgroups: string[] = [];
  t.teardown(async () => {
    await fs.rm(filler, { force: true });
    if (berth) {
      const pods = await berth.runtime.ListPodSandbox({}).catch(() => ({ items: [] }));
      for (const pod of pods.items) await berth.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
      await berth.stop();
    }
    execFileSync('umount', [root]);
    // Every pod berth began, a failed one included, logged its id: its cgroup must be gone too.
    const begun = new Set(berth?.logs.flatMap((line) => /"pod":"([0-9a-f]{64})"/.exec(line)?.[1] ?? []));
    if (berth) await berth.cleanup();
    else await fs.rm(dir, { recursive: true, force: true });
    const left = await hostLeftovers(dir, [...cgroups, ...[...begun].map((id) => `/berth-pod-${id.slice(0, 16)}`)]);
    if (left.length > 0) throw new Error(`left behind:\n${left.join('\n')}`);
  });
  berth = await startBerth({ dir, config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  return {
    berth,
    cgroups,
    async fill(bytes) {
      // Up to `bytes`, or until the tmpfs says no more: then not even one page is left for a record.
      const handle = await fs.open(filler, 'a');
      const chunk = Buffer.alloc(bytes === undefined ? MiB : Math.min(MiB, bytes));
      let written = 0;
      try {
        for (const size of [MiB, 4096]) {
          while (bytes === undefined || written < bytes) {
            try {
              written += (await handle.write(chunk, 0, Math.min(size, chunk.length))).bytesWritten;
            } catch (err) {
              if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
              break;
            }
          }
        }
      } finally {
        await handle.close();
      }
    },
    free: () => fs.rm(filler, { force: true }),
  };
}

async function storeEntries(berth: BerthProcess): Promise<{ layers: string[]; images: string[] }> {
  const store = path.join(berth.root, 'images');
  return { layers: (await fs.readdir(path.join(store, 'layers'))).sort(), images: (await fs.readdir(path.join(store, 'images'))).sort() };
}

const hex = (digest: string) => digest.replace(/^sha256:/, '');

test('a pull that does not fit is RESOURCE_EXHAUSTED naming the path; no partial layer or image is recorded; berth serves on; the pull succeeds once space is freed', async (t) => {
  const env = await diskEnv(t, 40);
  const { berth } = env;
  await berth.images.PullImage({ image: { image: busybox.ref } });
  const before = await storeEntries(berth);
  t.deepEqual(before, { layers: [hex(busybox.layers[0].diffId)], images: [`${hex(busybox.imageId)}.json`] });
  await env.fill(24 * MiB); // leaves about 14 MiB: less than the 24 MiB layer

  const err = await failure(berth.images.PullImage({ image: { image: zeros.ref } }));
  t.is(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
  t.true(err.details.includes(berth.root), `names the path under berth's root: ${err.details}`);
  t.regex(err.details, /no space left on (the )?(device|filesystem)/i);
  t.true(err.details.includes(zeros.ref), 'names the image');

  // Nothing half-made: no staging directory, no layer, no record; the image is not listed.
  t.deepEqual(await storeEntries(berth), before);
  t.deepEqual((await berth.images.ListImages({})).images.map((i) => i.id), [busybox.imageId]);
  t.is((await berth.images.ImageStatus({ image: { image: zeros.ref } })).image, null);
  // berth serves on: other RPCs answer, and a pull that fits succeeds.
  t.is((await berth.runtime.Version({ version: '' })).runtime_name, 'berth');
  t.is((await berth.images.PullImage({ image: { image: small.ref } })).image_ref, small.imageId);

  await env.free();
  t.is((await berth.images.PullImage({ image: { image: zeros.ref } })).image_ref, zeros.imageId);
  t.deepEqual((await berth.images.ListImages({})).images.map((i) => i.id).sort(), [busybox.imageId, small.imageId, zeros.imageId].sort());
  const unpacked = await fs.stat(path.join(berth.root, 'images', 'layers', hex(zeros.layers[0].diffId), 'fs', 'data', 'zeros'));
  t.is(unpacked.size, 24 * MiB);
});

test('on a disk with no page left, PullImage, CreateContainer and RunPodSandbox are RESOURCE_EXHAUSTED naming the path, leave nothing, and succeed once space is freed', async (t) => {
  const env = await diskEnv(t, 32);
  const { berth } = env;
  await berth.images.PullImage({ image: { image: busybox.ref } });
  const pod = podConfig();
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
  env.cgroups.push(JSON.parse(status.info.info).cgroup.path);
  const storeBefore = await storeEntries(berth);
  const rootBefore = (await fs.readdir(berth.root)).sort();
  await env.fill();

  const pullErr = await failure(berth.images.PullImage({ image: { image: small.ref } }));
  t.is(pullErr.code, grpc.status.RESOURCE_EXHAUSTED, pullErr.details);
  t.true(pullErr.details.includes(berth.root), pullErr.details);
  t.deepEqual(await storeEntries(berth), storeBefore);

  const config = containerConfig(busybox.ref, { command: ['sleep', '600'] });
  const createErr = await failure(berth.runtime.CreateContainer({ pod_sandbox_id, config, sandbox_config: pod }));
  t.is(createErr.code, grpc.status.RESOURCE_EXHAUSTED, createErr.details);
  t.true(createErr.details.includes(berth.root), createErr.details);
  t.deepEqual((await berth.runtime.ListContainers({})).containers, []);
  t.deepEqual((await fs.readdir(berth.root)).filter((n) => n !== 'filler').sort(), rootBefore);
  t.deepEqual(await containerDirs(berth), [], 'no container directory is left');
  t.is((await berth.runtime.PodSandboxStatus({ pod_sandbox_id })).status?.state, 'SANDBOX_READY');

  const podErr = await failure(berth.runtime.RunPodSandbox({ config: podConfig() }));
  t.is(podErr.code, grpc.status.RESOURCE_EXHAUSTED, podErr.details);
  t.true(podErr.details.includes(berth.root), podErr.details);
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items.map((p) => p.id), [pod_sandbox_id]);
  t.deepEqual((await fs.readdir(path.join(berth.root, 'sandboxes'))), [pod_sandbox_id], 'no directory of the failed pod');

  await env.free();
  const { container_id } = await berth.runtime.CreateContainer({ pod_sandbox_id, config, sandbox_config: pod });
  await berth.runtime.StartContainer({ container_id });
  t.is((await berth.runtime.ContainerStatus({ container_id })).status?.state, 'CONTAINER_RUNNING');
  t.is((await berth.images.PullImage({ image: { image: small.ref } })).image_ref, small.imageId);
  await berth.runtime.StopPodSandbox({ pod_sandbox_id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id });
});

/** Whatever berth keeps per container under its root (bundles: upper and work directories). */
async function containerDirs(berth: BerthProcess): Promise<string[]> {
  const dir = path.join(berth.root, 'containers');
  return fs.readdir(dir).catch(() => []);
}

test('on a full disk, a running pod and its container can still be stopped and removed (how an operator frees space)', async (t) => {
  const env = await diskEnv(t, 32);
  const { berth } = env;
  await berth.images.PullImage({ image: { image: busybox.ref } });
  const pod = podConfig();
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
  env.cgroups.push(JSON.parse(status.info.info).cgroup.path);
  const { container_id } = await berth.runtime.CreateContainer({
    pod_sandbox_id,
    config: containerConfig(busybox.ref, { command: ['sleep', '600'] }),
    sandbox_config: pod,
  });
  await berth.runtime.StartContainer({ container_id });
  await env.fill();

  // berth gives up its space reserve to record the exit and the teardown. (The monitor itself cannot write
  // exit.json on a full disk: berth waits 10 s after SIGKILL, then reports the exit as unknown.)
  const deadline = () => ({ deadline: Date.now() + 30000 });
  await berth.runtime.StopContainer({ container_id, timeout: 1 }, deadline());
  t.is((await berth.runtime.ContainerStatus({ container_id })).status?.state, 'CONTAINER_EXITED');
  await berth.runtime.RemoveContainer({ container_id }, deadline());
  await berth.runtime.StopPodSandbox({ pod_sandbox_id }, deadline());
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id }, deadline());
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, []);
  t.deepEqual((await berth.runtime.ListContainers({})).containers, []);
  t.deepEqual(await containerDirs(berth), []);
  // The removals freed space, and berth took its reserve back.
  await env.free();
  await berth.images.RemoveImage({ image: { image: busybox.ref } });
  t.is((await fs.stat(path.join(berth.root, '.space-reserve'))).size, 1024 * 1024);
});
