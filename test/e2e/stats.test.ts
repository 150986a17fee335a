import test, { ExecutionContext } from 'ava';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { cleanUpAndCheck, containerConfig, failure, podConfig } from '../helpers/cri.js';
import { waitFor } from '../helpers/util.js';
import { discoverCgroups } from '../../src/kernel/cgroups.js';
import { CgroupStatsReader } from '../../src/kernel/cgroup-stats.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';
import type { ContainerStats__Output } from '../../src/gen/runtime/v1/ContainerStats.js';
import type { PodSandboxStats__Output } from '../../src/gen/runtime/v1/PodSandboxStats.js';

// The stats RPCs against real containers: memory a container allocates, CPU it burns, bytes it writes into its
// writable layer and bytes two pods send each other all show up in what berth answers.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/statsbox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

const MiB = 1024 * 1024;
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

interface Env {
  berth: BerthProcess;
  pod(): Promise<{ id: string; ip: string }>;
  run(podId: string, script: string, overrides?: Partial<ContainerConfig>): Promise<string>;
  exec(containerId: string, script: string): Promise<string>;
  containerStats(id: string): Promise<ContainerStats__Output>;
  podStats(id: string): Promise<PodSandboxStats__Output>;
  cgroupOf(containerId: string): Promise<string>;
}

async function env(t: ExecutionContext): Promise<Env> {
  // The writable-layer walk every second, so that the test waits for a walk, not for a sleep of its own.
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n[runtime]\nwritable_layer_interval_seconds = 1\n` });
  const logDir = path.join(berth.dir, 'logs');
  const cgroups: string[] = [];
  const e: Env = {
    berth,
    async pod() {
      const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: logDir }) });
      const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      cgroups.push(JSON.parse(status.info.info).cgroup.path);
      return { id: pod_sandbox_id, ip: status.status!.network!.ip };
    },
    async run(podId, script, overrides = {}) {
      const { container_id } = await berth.runtime.CreateContainer({
        pod_sandbox_id: podId,
        config: containerConfig(image.ref, { command: ['/bin/sh', '-c', script], log_path: `${Math.random().toString(36).slice(2)}.log`, ...overrides }),
        sandbox_config: podConfig({ log_directory: logDir }),
      });
      await berth.runtime.StartContainer({ container_id });
      return container_id;
    },
    async exec(containerId, script) {
      const r = await berth.runtime.ExecSync({ container_id: containerId, cmd: ['/bin/sh', '-c', script], timeout: 30 });
      if (r.exit_code !== 0) throw new Error(`${script}: exit ${r.exit_code}: ${r.stderr.toString()}`);
      return r.stdout.toString();
    },
    async containerStats(id) {
      return (await berth.runtime.ContainerStats({ container_id: id })).stats!;
    },
    async podStats(id) {
      const list = await berth.runtime.ListPodSandboxStats({ filter: { id } });
      if (list.stats.length !== 1) throw new Error(`ListPodSandboxStats for ${id}: ${list.stats.length} entries`);
      return list.stats[0];
    },
    async cgroupOf(containerId) {
      const s = await berth.runtime.ContainerStatus({ container_id: containerId, verbose: true });
      return JSON.parse(s.info.info).cgroup.path;
    },
  };
  await berth.images.PullImage({ image: { image: image.ref } });
  cleanUpAndCheck(t, berth, cgroups);
  return e;
}

function collect<T>(stream: grpc.ClientReadableStream<T>): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const got: T[] = [];
    stream.on('data', (m: T) => got.push(m));
    stream.on('error', reject);
    stream.on('end', () => resolve(got));
  });
}

const value = (v: { value: string } | null | undefined) => (v ? Number(v.value) : NaN);
const within = (actual: number, expected: number, tolerance: number) => Math.abs(actual - expected) <= expected * tolerance;

test('40 MiB a container allocates show in ContainerStats, ListPodSandboxStats and ListPodSandboxMetrics within 10 %; the Stream RPCs send the List items', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  const id = await e.run(pod.id, SLEEPER);
  const before = await e.containerStats(id);
  const podBefore = await e.podStats(pod.id);
  // The pod's /dev/shm is a tmpfs: pages written there are charged to the writer's memory cgroup and stay.
  await e.exec(id, 'dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 2>/dev/null');
  const after = await e.containerStats(id);
  const podAfter = await e.podStats(pod.id);

  const grown = value(after.memory?.working_set_bytes) - value(before.memory?.working_set_bytes);
  t.true(within(grown, 40 * MiB, 0.1), `container working set grew by ${grown} bytes`);
  const usageGrown = value(after.memory?.usage_bytes) - value(before.memory?.usage_bytes);
  t.true(within(usageGrown, 40 * MiB, 0.1), `container usage grew by ${usageGrown} bytes`);
  const podGrown = value(podAfter.linux?.memory?.working_set_bytes) - value(podBefore.linux?.memory?.working_set_bytes);
  t.true(within(podGrown, 40 * MiB, 0.1), `pod working set grew by ${podGrown} bytes`);
  const inPod = podAfter.linux!.containers.find((c) => c.attributes?.id === id)!;
  t.true(within(value(inPod.memory?.working_set_bytes) - value(before.memory?.working_set_bytes), 40 * MiB, 0.1));
  t.is(after.attributes?.id, id);
  t.is(podAfter.attributes?.metadata?.namespace, 'default');
  t.true(value(podAfter.linux?.process?.process_count) >= 1);
  // No limit: available_bytes is absent rather than a made-up number.
  t.is(after.memory?.available_bytes, null);

  // CRI 1.37's streaming twins send the same items as the List RPCs.
  const streamed = (await collect(e.berth.rawRuntime.StreamContainerStats({ filter: { pod_sandbox_id: pod.id } }))).flatMap((p) => p.container_stats);
  t.deepEqual(streamed.map((s) => s.attributes?.id), [id]);
  const pods = (await collect(e.berth.rawRuntime.StreamPodSandboxStats({}))).flatMap((p) => p.pod_sandbox_stats);
  t.deepEqual(pods.map((p) => p.attributes?.id), [pod.id]);
  const metrics = (await collect(e.berth.rawRuntime.StreamPodSandboxMetrics({}))).flatMap((p) => p.pod_sandbox_metrics);
  const listed = await e.berth.runtime.ListPodSandboxMetrics({});
  t.deepEqual(metrics.map((m) => m.pod_sandbox_id), listed.pod_metrics.map((m) => m.pod_sandbox_id));
  const ws = listed.pod_metrics[0].container_metrics[0].metrics.find((m) => m.name === 'container_memory_working_set_bytes');
  t.true(within(Number(ws?.value?.value), value(after.memory?.working_set_bytes), 0.1), 'ListPodSandboxMetrics has the working set');
  const descriptors = (await e.berth.runtime.ListMetricDescriptors({})).descriptors;
  t.deepEqual(descriptors.find((d) => d.name === ws?.name)?.label_keys.length, ws?.label_values.length);
});

test('a CPU burner shows at least 0.5 s of CPU and a non-zero usage_nano_cores; a quota shows throttling and PSI', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  const burner = await e.run(pod.id, 'while :; do :; done');
  // Under load the burner may get less than a core: wait for the CPU time rather than for wall time.
  const stats = await waitFor('0.5 s of CPU', async () => {
    const s = await e.containerStats(burner);
    return value(s.cpu?.usage_core_nano_seconds) >= 0.5e9 && s;
  }, { timeoutMs: 60000, intervalMs: 200 });
  t.true(value(stats.cpu?.usage_core_nano_seconds) >= 0.5e9);
  const rated = await waitFor('a usage_nano_cores', async () => {
    const s = await e.containerStats(burner);
    return value(s.cpu?.usage_nano_cores) > 0 && s;
  }, { timeoutMs: 10000, intervalMs: 100 });
  t.true(value(rated.cpu?.usage_nano_cores) > 0 && value(rated.cpu?.usage_nano_cores) <= 2.2e9, `nano cores ${rated.cpu?.usage_nano_cores?.value}`);
  const listed = await e.berth.runtime.ListContainerStats({ filter: { pod_sandbox_id: pod.id } });
  t.deepEqual(listed.stats.map((s) => s.attributes?.id), [burner]);

  // A tenth of a core: the burner is throttled, and the kernel counts the stall in cpu.pressure where it has one.
  const limited = await e.run(pod.id, 'while :; do :; done', { linux: { resources: { cpu_period: '100000', cpu_quota: '10000' } } });
  const cgroup = await e.cgroupOf(limited);
  const reader = new CgroupStatsReader(discoverCgroups());
  const sample = await waitFor('throttling', async () => {
    const s = await reader.read(cgroup);
    return (s?.cpu?.throttledNanoSeconds ?? 0n) > 0n && s;
  }, { timeoutMs: 30000, intervalMs: 200 });
  t.is(sample && sample.cpu?.limitCores, 0.1);
  const layout = discoverCgroups();
  const pressureFile = layout.unified && path.join(layout.unified.mountPoint, cgroup, 'cpu.pressure');
  if (pressureFile && existsSync(pressureFile)) {
    const psi = await waitFor('cpu pressure in ContainerStats', async () => {
      const s = await e.containerStats(limited);
      return value(s.cpu?.psi?.Some ? { value: s.cpu.psi.Some.Total } : undefined) > 0 && s;
    }, { timeoutMs: 30000, intervalMs: 200 });
    t.true(Number(psi.cpu!.psi!.Some!.Total) > 0);
    t.truthy(psi.memory?.psi?.Some, 'memory pressure is reported too');
    t.truthy(psi.io?.psi?.Some, 'io pressure is reported too');
  } else {
    t.log('this host has no cgroup2 pressure files for the container: PSI not checked');
  }
});

test('a file written into the writable layer raises used_bytes and inodes_used after the walk', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  const id = await e.run(pod.id, SLEEPER);
  const first = await waitFor('a first walk', async () => {
    const s = await e.containerStats(id);
    return s.writable_layer?.used_bytes && s;
  }, { timeoutMs: 20000, intervalMs: 200 });
  t.is(first.writable_layer?.fs_id?.mountpoint, path.join(e.berth.root, 'containers'));
  await e.exec(id, 'dd if=/dev/urandom of=/root/blob bs=1M count=8 2>/dev/null && sync');
  const grown = await waitFor('the walk to see 8 MiB more', async () => {
    const s = await e.containerStats(id);
    return value(s.writable_layer?.used_bytes) - value(first.writable_layer?.used_bytes) >= 8 * MiB && s;
  }, { timeoutMs: 20000, intervalMs: 200 });
  t.true(value(grown.writable_layer?.inodes_used) > value(first.writable_layer?.inodes_used));
});

test('pod network bytes grow after traffic between two pods', async (t) => {
  const e = await env(t);
  const server = await e.pod();
  const client = await e.pod();
  await e.run(server.id, 'mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1k count=512 2>/dev/null && exec busybox httpd -f -p 80 -h /tmp/www');
  const getter = await e.run(client.id, SLEEPER);
  const eth0 = (s: PodSandboxStats__Output) => s.linux?.network?.interfaces.find((i) => i.name === 'eth0');
  const serverBefore = eth0(await e.podStats(server.id));
  const clientBefore = eth0(await e.podStats(client.id));
  t.truthy(serverBefore, 'the server pod reports eth0');
  t.is((await e.podStats(server.id)).linux?.network?.default_interface?.name, 'eth0');
  t.falsy((await e.podStats(server.id)).linux?.network?.interfaces.some((i) => i.name === 'lo'));
  await waitFor('the server to answer', () => e.exec(getter, `wget -q -O /dev/null http://${server.ip}/big`).then(() => true, () => false), { timeoutMs: 20000, intervalMs: 200 });
  const serverAfter = eth0(await e.podStats(server.id));
  const clientAfter = eth0(await e.podStats(client.id));
  t.true(value(serverAfter?.tx_bytes) - value(serverBefore?.tx_bytes) >= 512 * 1024, 'server sent the file');
  t.true(value(clientAfter?.rx_bytes) - value(clientBefore?.rx_bytes) >= 512 * 1024, 'client received the file');
  t.is(value(clientAfter?.rx_errors), 0);
});

test('a stopped pod whose network counters were read loses its veth: stats keep no file of its namespace open', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  const status = await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: pod.id, verbose: true });
  const sysDir = path.join(path.dirname(JSON.parse(status.info.info).namespaces.network), 'sys');
  // The host end of the pod's veth: the interface whose index is eth0's peer index (iflink) in the pod.
  const peerIndex = (await fs.readFile(path.join(sysDir, 'class/net/eth0/iflink'), 'utf8')).trim();
  let hostEnd: string | undefined;
  for (const name of await fs.readdir('/sys/class/net')) {
    const index = await fs.readFile(path.join('/sys/class/net', name, 'ifindex'), 'utf8').catch(() => '');
    if (index.trim() === peerIndex) hostEnd = name;
  }
  t.truthy(hostEnd, `a host interface has index ${peerIndex}`);
  // Reading the counters (twice: the second read goes through the files kept open) ...
  t.is((await e.podStats(pod.id)).linux?.network?.default_interface?.name, 'eth0');
  t.is((await e.podStats(pod.id)).linux?.network?.default_interface?.name, 'eth0');
  // ... must not keep the namespace alive once the pod stops: the kernel destroys the veth with the namespace.
  // (Kernels whose sysfs holds only a passive reference to its namespace, as this host's, destroy it even while
  // such a file is open; berth lets go of the pod's files at StopPodSandbox for the others.)
  await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: pod.id });
  const gone = async () => {
    const index = await fs.readFile(path.join('/sys/class/net', hostEnd!, 'ifindex'), 'utf8').catch(() => undefined);
    return index?.trim() !== peerIndex;
  };
  await waitFor(`host veth ${hostEnd} to go with the stopped pod's namespace`, gone, { timeoutMs: 10_000, intervalMs: 50 });
  t.true(await gone());
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
});

test('stats of an unknown id are NOT_FOUND; an exited container keeps its last known values', async (t) => {
  const e = await env(t);
  t.is((await failure(e.berth.runtime.ContainerStats({ container_id: 'f00dfeed' }))).code, grpc.status.NOT_FOUND);
  t.is((await failure(e.berth.runtime.PodSandboxStats({ pod_sandbox_id: 'f00dfeed' }))).code, grpc.status.NOT_FOUND);
  t.is((await failure(e.berth.runtime.ContainerStats({ container_id: '' }))).code, grpc.status.INVALID_ARGUMENT);
  const pod = await e.pod();
  const id = await e.run(pod.id, SLEEPER);
  const running = await e.containerStats(id);
  await e.berth.runtime.StopContainer({ container_id: id, timeout: '10' });
  // berth keeps an exited container's cgroup until RemoveContainer; take it away as an outside hand could.
  const cgroup = await e.cgroupOf(id);
  for (const h of discoverCgroups().hierarchies) await fs.rmdir(path.join(h.mountPoint, cgroup)).catch(() => undefined);
  const exited = await e.containerStats(id);
  t.is(exited.memory?.usage_bytes?.value, running.memory?.usage_bytes?.value);
  t.is(exited.cpu?.usage_core_nano_seconds?.value !== undefined, true);
  await e.berth.waitForLog((l) => l.msg === 'cgroup is gone: stats repeat its last known values' && l.containerId === id, 5000);
  const listed = await e.berth.runtime.ListContainerStats({});
  t.true(listed.stats.some((s) => s.attributes?.id === id), 'exited containers are listed');
});
