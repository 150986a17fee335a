// The bench's measurements beyond the sequential cycles: PullImage cold and warm, many pods started at once, and
// memory (the daemon's, the runtime's per pod, the host's). Driven over CRI only, from this process.

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { containerConfig, podConfig } from '../test/helpers/cri.js';
import { waitFor } from '../test/helpers/util.js';
import type { CriClient } from './cri-client.js';
import { CONTAINER_COMMAND, Interrupted, STOP_TIMEOUT_S } from './lifecycle.js';
import {
  describeProcesses,
  processTable,
  readCpuMs,
  readMemAvailable,
  runtimeOwnedProcesses,
  sumMemUsage,
  type MemUsage,
} from './procfs.js';
import { emptyRelistCalls, MAX_MISMATCHES, RELIST, STATS_CALLS, type StatsCall, type ConcurrentResult, type MemoryResult, type PodMemory, type PullLoadResult, type PullResult, type RelistCall, type RelistResult } from './model.js';
import { nsToMs, summarize } from './stats.js';

const RUNNING_TIMEOUT_MS = 60_000;
const POLL_MS = 10;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const since = (t0: bigint) => nsToMs(process.hrtime.bigint() - t0);
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

function check(signal?: AbortSignal): void {
  if (signal?.aborted) throw new Interrupted();
}

// ---------------------------------------------------------------------------------------------------------------
// PullImage

/** Names (hex digests) of files or directories at most `depth` levels below `root` that are in `names`. */
export async function findNamed(root: string, names: ReadonlySet<string>, depth: number): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string, left: number): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const full = path.join(dir, e.name);
      if (names.has(e.name) || [...names].some((n) => e.name.startsWith(n) || e.name.includes(`-${n}`))) found.push(full);
      else if (left > 1 && e.isDirectory()) await walk(full, left - 1);
    }
  };
  await walk(root, depth);
  return found;
}

export interface PullOptions {
  cold: number;
  warm: number;
  /** Hex digests (compressed digests and diff ids) of the image's layers, when known: checked gone before a cold pull. */
  layerHexes?: string[];
  signal?: AbortSignal;
}

/**
 * Cold pulls: RemoveImage, check that the image and its layer files are gone, then a timed PullImage. Warm pulls:
 * PullImage of the image already present. Leaves the image present.
 */
export async function measurePull(cri: CriClient, image: string, opts: PullOptions): Promise<PullResult> {
  const result: PullResult = { cold: [], warm: [], coldVerified: null, notes: [] };
  const pull = async (): Promise<number> => {
    check(opts.signal);
    const t0 = process.hrtime.bigint();
    await cri.images.PullImage({ image: { image } });
    return since(t0);
  };
  // Where the layers live on disk: the parent of the image filesystem the runtime reports (berth: <root>/images,
  // containerd: its root with io.containerd.content.v1.content and the overlayfs snapshotter below it).
  let fsRoot: string | undefined;
  try {
    const info = await cri.images.ImageFsInfo({});
    const mp = info.image_filesystems[0]?.fs_id?.mountpoint;
    if (mp) fsRoot = path.dirname(mp);
  } catch (err) {
    result.notes.push(`ImageFsInfo failed: ${message(err)}`);
  }
  const names = new Set(opts.layerHexes ?? []);
  const verdicts: boolean[] = [];
  for (let i = 0; i < opts.cold; i++) {
    check(opts.signal);
    const present = (await cri.images.ImageStatus({ image: { image } })).image;
    if (present) await cri.images.RemoveImage({ image: { image } });
    const still = (await cri.images.ImageStatus({ image: { image } })).image;
    if (still) throw new Error(`${image} is still listed after RemoveImage`);
    if (names.size > 0 && fsRoot) {
      const left = await findNamed(fsRoot, names, 4);
      verdicts.push(left.length === 0);
      if (left.length > 0 && i === 0) result.notes.push(`layer files still on disk after RemoveImage: ${left.slice(0, 3).join(', ')}${left.length > 3 ? ', …' : ''}`);
    }
    result.cold.push(await pull());
  }
  if (verdicts.length > 0) result.coldVerified = verdicts.every(Boolean);
  else if (opts.cold > 0) result.notes.push(names.size === 0 ? 'layer digests unknown: cold pulls not checked on disk' : 'image filesystem unknown: cold pulls not checked on disk');
  if (opts.cold === 0 || result.cold.length === 0) {
    const present = (await cri.images.ImageStatus({ image: { image } })).image;
    if (!present) await pull();
  }
  for (let i = 0; i < opts.warm; i++) result.warm.push(await pull());
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// pods

export interface StartedPod {
  podId: string;
  /** Its io.kubernetes.pod.uid label, on the sandbox and its container. */
  uid: string;
  containerId?: string;
  /** RunPodSandbox issued → container RUNNING, ms. */
  ms: number;
  /** Each step's own time, ms. */
  stages: Record<Stage, number>;
}

export const STAGES = ['RunPodSandbox', 'CreateContainer', 'StartContainer', 'until RUNNING'] as const;
export type Stage = (typeof STAGES)[number];

/** Pods this run created and has not removed yet. */
export type PodSet = Set<string>;

function benchPodConfig(cgroupParentOf?: (uid: string) => string) {
  const config = podConfig();
  config.labels = { ...config.labels, app: 'berth-bench' };
  if (cgroupParentOf) config.linux = { ...config.linux, cgroup_parent: cgroupParentOf(config.metadata!.uid!) };
  return config;
}

/** RunPodSandbox + CreateContainer + StartContainer, then ContainerStatus until RUNNING. */
export async function startPod(
  cri: CriClient,
  image: string,
  pods: PodSet,
  signal?: AbortSignal,
  t0 = process.hrtime.bigint(),
  command: string[] = CONTAINER_COMMAND,
  cgroupParentOf?: (uid: string) => string,
): Promise<StartedPod> {
  check(signal);
  const stages = {} as Record<Stage, number>;
  let mark = process.hrtime.bigint();
  const stage = (name: Stage) => {
    const now = process.hrtime.bigint();
    stages[name] = nsToMs(now - mark);
    mark = now;
  };
  const sandboxConfig = benchPodConfig(cgroupParentOf);
  const { pod_sandbox_id: podId } = await cri.runtime.RunPodSandbox({ config: sandboxConfig });
  pods.add(podId);
  stage('RunPodSandbox');
  check(signal);
  const config = containerConfig(image, { command });
  // kubelet labels each container with its pod's identity, and selects the pod's containers by that uid.
  const uid = sandboxConfig.metadata!.uid!;
  config.labels = {
    ...config.labels,
    'io.kubernetes.pod.uid': uid,
    'io.kubernetes.pod.name': sandboxConfig.metadata!.name!,
    'io.kubernetes.pod.namespace': sandboxConfig.metadata!.namespace!,
  };
  const { container_id: containerId } = await cri.runtime.CreateContainer({ pod_sandbox_id: podId, config, sandbox_config: sandboxConfig });
  stage('CreateContainer');
  check(signal);
  await cri.runtime.StartContainer({ container_id: containerId });
  stage('StartContainer');
  const running = async () => {
    const { status } = await cri.runtime.ContainerStatus({ container_id: containerId });
    if (status?.state === 'CONTAINER_RUNNING') return true;
    if (status?.state === 'CONTAINER_EXITED' || status?.state === 'CONTAINER_UNKNOWN') {
      throw new Error(`container ${containerId} is ${status.state}: exit ${status.exit_code}, ${status.reason} ${status.message}`);
    }
    check(signal);
    return false;
  };
  await waitFor(`container ${containerId} to be RUNNING`, running, { timeoutMs: RUNNING_TIMEOUT_MS, intervalMs: POLL_MS });
  stage('until RUNNING');
  return { podId, uid, containerId, ms: since(t0), stages };
}

/** What kubelet does to a pod: stop and remove its containers, then stop and remove the sandbox. */
export async function removePod(cri: CriClient, podId: string, pods: PodSet): Promise<void> {
  const { containers } = await cri.runtime.ListContainers({ filter: { pod_sandbox_id: podId } });
  for (const c of containers) {
    await cri.runtime.StopContainer({ container_id: c.id, timeout: STOP_TIMEOUT_S });
    await cri.runtime.RemoveContainer({ container_id: c.id });
  }
  await cri.runtime.StopPodSandbox({ pod_sandbox_id: podId });
  await cri.runtime.RemovePodSandbox({ pod_sandbox_id: podId });
  pods.delete(podId);
}

/** Removes every pod in `pods`, at most `limit` at a time; returns the errors met (a failed pod is retried once). */
export async function removePods(cri: CriClient, pods: PodSet, limit = Infinity): Promise<string[]> {
  const errors: string[] = [];
  await mapLimit([...pods], limit, (id) =>
    removePod(cri, id, pods).catch(async () => {
      await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }).catch(() => undefined);
      await cri.runtime
        .RemovePodSandbox({ pod_sandbox_id: id })
        .then(() => pods.delete(id))
        .catch((err) => void errors.push(`pod ${id}: ${message(err)}`));
    }),
  );
  return errors;
}

/** Runs fn over items with at most `limit` in flight; results in input order (settled). */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const out: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      try {
        out[i] = { status: 'fulfilled', value: await fn(items[i]!, i) };
      } catch (reason) {
        out[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/** The pods that started; the others' errors go to `failures`. An interruption ends the phase. */
function startedPods(settled: PromiseSettledResult<StartedPod>[], failures: string[], prefix = ''): StartedPod[] {
  const started: StartedPod[] = [];
  for (const s of settled) {
    if (s.status === 'fulfilled') started.push(s.value);
    else if (s.reason instanceof Interrupted) throw s.reason;
    else failures.push(`${prefix}${message(s.reason)}`);
  }
  return started;
}

/**
 * `count` pods started at the same instant: wall time until every container runs and each pod's own time; then
 * all of them removed at once (timed separately as teardown).
 */
export async function measureConcurrent(cri: CriClient, image: string, count: number, signal?: AbortSignal, daemonPid?: number): Promise<ConcurrentResult> {
  const pods: PodSet = new Set();
  const cpu0 = daemonPid ? await readCpuMs(daemonPid) : NaN;
  const result: ConcurrentResult = { pods: count, wallMs: NaN, perPodMs: [], stages: Object.fromEntries(STAGES.map((s) => [s, []])), teardownMs: NaN, failures: [] };
  try {
    const t0 = process.hrtime.bigint();
    const settled = await Promise.allSettled(Array.from({ length: count }, () => startPod(cri, image, pods, signal, t0)));
    result.wallMs = since(t0);
    if (daemonPid) result.daemonCpuMs = (await readCpuMs(daemonPid)) - cpu0;
    for (const pod of startedPods(settled, result.failures)) {
      result.perPodMs.push(pod.ms);
      for (const st of STAGES) result.stages![st]!.push(pod.stages[st]);
    }
    const t1 = process.hrtime.bigint();
    const errors = await removePods(cri, pods);
    result.teardownMs = since(t1);
    result.failures.push(...errors.map((e) => `teardown: ${e}`));
  } finally {
    if (pods.size) await removePods(cri, pods);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// memory

const parseInfo = (info: Record<string, string> | undefined): Record<string, unknown> => {
  try {
    return info?.info ? (JSON.parse(info.info) as Record<string, unknown>) : {};
  } catch {
    return {};
  }
};
const pidField = (o: Record<string, unknown>, key: string): number[] => (typeof o[key] === 'number' && (o[key] as number) > 0 ? [o[key] as number] : []);

export interface MemoryOptions {
  /** The runtime daemon, when known. */
  daemonPid?: number;
  pods: number;
  /** Pause after the pods run before measuring, ms. */
  settleMs?: number;
  signal?: AbortSignal;
}

/** Median of a few MemAvailable readings 100 ms apart: the host's other activity jitters single readings. */
async function memAvailableSettled(readings = 5): Promise<number> {
  const values: number[] = [];
  for (let i = 0; i < readings; i++) {
    if (i) await sleep(100);
    values.push(await readMemAvailable());
  }
  return summarize(values).median;
}

/** The daemon's memory now (undefined when its pid is unknown or gone). */
export async function measureDaemon(pid: number | undefined): Promise<MemUsage | undefined> {
  if (pid === undefined) return undefined;
  const u = await sumMemUsage([pid]);
  return u.gone.length ? undefined : { rssKiB: u.rssKiB, pssKiB: u.pssKiB, anonKiB: u.anonKiB };
}

/**
 * Idle memory, then `pods` pods running: the daemon's RSS/PSS, per pod the summed RSS/PSS of the processes the runtime
 * runs for it (runtimeOwnedProcesses), and the drop of the host's MemAvailable. The pods are removed afterwards.
 */
export async function measureMemory(cri: CriClient, image: string, opts: MemoryOptions): Promise<MemoryResult> {
  const settleMs = opts.settleMs ?? 3000;
  const result: MemoryResult = { pods: opts.pods, daemonPid: opts.daemonPid, perPod: [], notes: [] };
  const pods: PodSet = new Set();
  try {
    await sleep(settleMs);
    result.idle = await measureDaemon(opts.daemonPid);
    result.memAvailableBeforeKiB = await memAvailableSettled();
    const settled = await mapLimit(Array.from({ length: opts.pods }), 8, () => startPod(cri, image, pods, opts.signal));
    const started = startedPods(settled, result.notes, 'pod failed to start: ');
    result.running = started.length;
    check(opts.signal);
    await sleep(settleMs);
    result.memAvailableAfterKiB = await memAvailableSettled();
    result.withPods = await measureDaemon(opts.daemonPid);

    const procs = await processTable();
    const exclude = [process.pid, ...(opts.daemonPid ? [opts.daemonPid] : [])];
    for (const pod of started) {
      const podInfo = parseInfo((await cri.runtime.PodSandboxStatus({ pod_sandbox_id: pod.podId, verbose: true })).info);
      const ownPids = [...pidField(podInfo, 'initPid'), ...pidField(podInfo, 'pid')];
      const workloadPids: number[] = [];
      const containerIds: string[] = [];
      const { containers } = await cri.runtime.ListContainers({ filter: { pod_sandbox_id: pod.podId } });
      for (const c of containers) {
        containerIds.push(c.id);
        const info = parseInfo((await cri.runtime.ContainerStatus({ container_id: c.id, verbose: true })).info);
        ownPids.push(...pidField(info, 'monitorPid'));
        workloadPids.push(...pidField(info, 'pid'));
      }
      const owned = runtimeOwnedProcesses(procs, { podId: pod.podId, containerIds, ownPids, workloadPids, excludePids: exclude });
      const usage = await sumMemUsage(owned.map((p) => p.pid));
      const entry: PodMemory = {
        podId: pod.podId,
        pids: owned.map((p) => p.pid),
        processes: describeProcesses(owned),
        rssKiB: usage.rssKiB,
        pssKiB: usage.pssKiB,
      };
      result.perPod.push(entry);
    }
    if (result.perPod.some((p) => p.pids.length === 0)) result.notes.push('no runtime process found for some pods');
  } finally {
    const errors = await removePods(cri, pods);
    for (const e of errors) result.notes.push(`cleanup: ${e}`);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// relist

/** Warm-up relists whose daemon CPU is reported apart: what the first relists after a start cost. */
const COLD_RELISTS = 20;

export interface RelistOptions {
  pods: number;
  /** Relists timed, and as many rounds of the per-pod calls. */
  samples: number;
  daemonPid?: number;
  /** Pods starting at once: enough to start 100 quickly, few enough not to be a concurrency test. */
  startLimit?: number;
  /** Pause after the pods run before timing anything, ms. */
  settleMs?: number;
  /**
   * Relists before the timed ones (kubelet relists every second: a runtime up for 17 minutes has answered 1000).
   * A JIT-compiled daemon pays its compilation in the first few hundred; the first COLD_RELISTS of them are
   * measured apart (at the clock tick's resolution: 20 relists are a few ticks), so the report has both.
   */
  warmup?: number;
  signal?: AbortSignal;
  /** More measurements with the pods running (the /metrics scrape), after the lists; before the pods are removed. */
  whileRunning?(started: StartedPod[]): Promise<void>;
}

/**
 * `pods` pods running, then what kubelet asks of the runtime about them every second: its PLEG's relist
 * (ListPodSandbox and ListContainers, unfiltered), and a pod's status (its containers by uid label, the ready
 * sandboxes, PodSandboxStatus and ContainerStatus). Every list is checked to hold every running pod. The pods are
 * removed afterwards, whatever happened.
 */
export async function measureRelist(cri: CriClient, image: string, opts: RelistOptions): Promise<RelistResult> {
  // The daemon's own post-burst work (berth compacts its heap 1 s after the last start) must not land in the CPU window.
  const settleMs = opts.settleMs ?? 2000;
  const limit = opts.startLimit ?? 8;
  const calls = emptyRelistCalls();
  const result: RelistResult = { pods: opts.pods, running: 0, relists: 0, calls, listed: { sandboxes: 0, containers: 0 }, mismatches: [], failures: [] };
  const mismatch = (what: string) => {
    if (result.mismatches.length < MAX_MISMATCHES) result.mismatches.push(what);
  };
  const timed = async <T>(row: RelistCall, fn: () => Promise<T>, t0 = process.hrtime.bigint()): Promise<T> => {
    const res = await fn();
    calls[row].push(since(t0));
    return res;
  };
  const pods: PodSet = new Set();
  // Each pod in a cgroup of its own under one parent, as kubelet gives them (/kubepods/<qos>/pod<uid>): what a pod's
  // stats are read from, and what containerd needs to answer ListPodSandboxStats at all.
  const cgroupRoot = `/berth-bench-relist-${process.pid}`;
  try {
    const settled = await mapLimit(Array.from({ length: opts.pods }), limit, () =>
      startPod(cri, image, pods, opts.signal, undefined, undefined, (uid) => `${cgroupRoot}/pod${uid}`),
    );
    const started = startedPods(settled, result.failures, 'pod failed to start: ');
    result.running = started.length;
    if (started.length === 0) return result;
    check(opts.signal);
    await sleep(settleMs);
    const podIds = new Set(started.map((p) => p.podId));
    const containerIds = new Set(started.map((p) => p.containerId!));
    const missing = (what: string, want: ReadonlySet<string>, got: readonly { id: string }[]) => {
      const ids = new Set(got.map((x) => x.id));
      const absent = [...want].filter((id) => !ids.has(id));
      if (absent.length) mismatch(`${what} returned ${got.length} items without ${absent.length} of the ${want.size} running: ${absent[0]!.slice(0, 12)}…`);
    };

    // Untimed, as the sequential cycles' warm-up: kubelet relists every second, so the first relist's one-off cost is not what a node pays.
    await Promise.all([cri.runtime.ListPodSandbox({}), cri.runtime.ListContainers({})]);
    const warmup = opts.warmup ?? 0;
    const relistOnce = () => Promise.all([cri.runtime.ListPodSandbox({}), cri.runtime.ListContainers({})]);
    const cold = Math.min(COLD_RELISTS, warmup);
    const coldCpu0 = opts.daemonPid ? await readCpuMs(opts.daemonPid) : NaN;
    for (let i = 0; i < cold; i++) await relistOnce();
    if (opts.daemonPid && cold > 0) result.cold = { relists: cold, daemonCpuMs: (await readCpuMs(opts.daemonPid)) - coldCpu0 };
    for (let i = cold; i < warmup; i++) {
      if (i % 100 === 0) check(opts.signal);
      await relistOnce();
    }
    result.warmup = warmup;
    const cpu0 = opts.daemonPid ? await readCpuMs(opts.daemonPid) : NaN;
    for (let i = 0; i < opts.samples; i++) {
      check(opts.signal);
      const t0 = process.hrtime.bigint();
      const [{ items }, { containers }] = await Promise.all([
        timed('ListPodSandbox {} (in the relist)', () => cri.runtime.ListPodSandbox({}), t0),
        timed('ListContainers {} (in the relist)', () => cri.runtime.ListContainers({}), t0),
      ]);
      calls[RELIST].push(since(t0));
      result.relists++;
      result.listed.sandboxes = Math.max(result.listed.sandboxes, items.length);
      result.listed.containers = Math.max(result.listed.containers, containers.length);
      missing('ListPodSandbox {}', podIds, items);
      missing('ListContainers {}', containerIds, containers);
    }
    if (opts.daemonPid) result.daemonCpuMs = (await readCpuMs(opts.daemonPid)) - cpu0;

    for (let i = 0; i < opts.samples; i++) {
      check(opts.signal);
      const pod = started[i % started.length]!;
      const { containers } = await timed('ListContainers {io.kubernetes.pod.uid} (one pod)', () =>
        cri.runtime.ListContainers({ filter: { label_selector: { 'io.kubernetes.pod.uid': pod.uid } } }),
      );
      if (containers.length !== 1 || containers[0]!.id !== pod.containerId) {
        mismatch(`ListContainers {io.kubernetes.pod.uid: ${pod.uid}} returned [${containers.map((c) => c.id.slice(0, 12)).join(', ')}], not ${pod.containerId!.slice(0, 12)}`);
      }
      const { items } = await timed('ListPodSandbox {state: SANDBOX_READY}', () => cri.runtime.ListPodSandbox({ filter: { state: { state: 'SANDBOX_READY' } } }));
      missing('ListPodSandbox {state: SANDBOX_READY}', podIds, items);
      const notReady = items.filter((p) => p.state !== 'SANDBOX_READY');
      if (notReady.length) mismatch(`ListPodSandbox {state: SANDBOX_READY} returned ${notReady.length} sandboxes in another state: ${notReady[0]!.id.slice(0, 12)} ${notReady[0]!.state}`);
      const [sandbox, container] = await timed('PodSandboxStatus + ContainerStatus (one pod)', async () => [
        await cri.runtime.PodSandboxStatus({ pod_sandbox_id: pod.podId }),
        await cri.runtime.ContainerStatus({ container_id: pod.containerId! }),
      ] as const);
      if (sandbox.status?.state !== 'SANDBOX_READY') mismatch(`PodSandboxStatus of ${pod.podId.slice(0, 12)}: ${sandbox.status?.state}`);
      if (container.status?.state !== 'CONTAINER_RUNNING') mismatch(`ContainerStatus of ${pod.containerId!.slice(0, 12)}: ${container.status?.state}`);
    }

    // kubelet's summary API: every container's and every pod's stats in one call each.
    const statsCalls: Record<StatsCall, () => Promise<{ id: string }[]>> = {
      'ListContainerStats {}': async () => (await cri.runtime.ListContainerStats({})).stats.map((s) => ({ id: s.attributes?.id ?? '' })),
      'ListPodSandboxStats {}': async () => (await cri.runtime.ListPodSandboxStats({})).stats.map((s) => ({ id: s.attributes?.id ?? '' })),
    };
    result.statsCpuPerCallMs = {};
    for (const call of STATS_CALLS) {
      // A runtime that cannot answer (containerd 1.6's ListPodSandboxStats without a pod cgroup_parent) loses
      // this row, not the phase.
      try {
        await statsCalls[call](); // untimed: the first sample of each cgroup has no rate yet
      } catch (err) {
        result.failures.push(`${call}: ${(err as Error).message}`);
        continue;
      }
      const cpuStart = opts.daemonPid ? await readCpuMs(opts.daemonPid) : NaN;
      for (let i = 0; i < opts.samples; i++) {
        check(opts.signal);
        const got = await timed(call, statsCalls[call]);
        missing(call, call === 'ListContainerStats {}' ? containerIds : podIds, got);
      }
      if (opts.daemonPid) result.statsCpuPerCallMs[call] = ((await readCpuMs(opts.daemonPid)) - cpuStart) / opts.samples;
    }
    check(opts.signal);
    await opts.whileRunning?.(started);
  } finally {
    for (const e of await removePods(cri, pods, limit)) result.failures.push(`cleanup: ${e}`);
    // The pod cgroups kubelet would remove: a runtime leaves the parents it did not make (or made only implicitly).
    for (const e of await removeCgroupTree(cgroupRoot)) result.failures.push(`cleanup: ${e}`);
  }
  return result;
}

/** Removes `rel` and the empty cgroups below it in every mounted cgroup hierarchy; what could not be removed, named. */
async function removeCgroupTree(rel: string): Promise<string[]> {
  const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => ['cgroup', 'cgroup2'].includes(f[f.indexOf('-') + 1] ?? ''))
    .map((f) => f[4]!);
  const failures: string[] = [];
  const removeDir = async (dir: string): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch {
      return; // not made in this hierarchy, or gone already
    }
    for (const e of entries) if (e.isDirectory()) await removeDir(path.join(dir, e.name));
    // A cgroup directory's files go with it: rmdir, not rm.
    await fs.rmdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') failures.push(`rmdir ${dir}: ${err.code}`);
    });
  };
  for (const mount of mounts) await removeDir(path.join(mount, rel));
  return failures;
}

// ---------------------------------------------------------------------------------------------------------------
// pod starts while a large image is pulled

export interface PullLoadOptions {
  /** Sequential pod starts measured each way (without a pull, during pulls). */
  starts: number;
  signal?: AbortSignal;
}

/** One Version RPC every PROBE_INTERVAL_MS while pods start: how long the daemon takes to answer anything. */
const PROBE_INTERVAL_MS = 25;
/** Pulls that end before one pod start fits in them, in a row, before the phase gives up. */
const MAX_EMPTY_PULLS = 3;

function startProbe(cri: CriClient): { stop(): Promise<number[]> } {
  const samples: number[] = [];
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const t0 = process.hrtime.bigint();
      await cri.runtime.Version({ version: 'v1' });
      samples.push(since(t0));
      await sleep(PROBE_INTERVAL_MS);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return samples;
    },
  };
}

/**
 * Sequential pod starts (RunPodSandbox + CreateContainer + StartContainer until RUNNING, each pod removed untimed
 * before the next) without a pull, then the same while `bigImage` is being pulled cold (RemoveImage, PullImage,
 * again when it finished): a start counts only if the pull was in flight from its first RPC to RUNNING. A Version
 * RPC probe runs alongside both, which shows a stalled event loop even where the pod starts hide it.
 */
export async function measurePullUnderLoad(cri: CriClient, podImage: string, bigImage: string, opts: PullLoadOptions): Promise<PullLoadResult> {
  const pods: PodSet = new Set();
  const result: PullLoadResult = { idle: [], loaded: [], idleProbe: [], loadedProbe: [], pulls: 0, pullMs: [] };
  try {
    let probe = startProbe(cri);
    for (let i = 0; i < opts.starts; i++) {
      const p = await startPod(cri, podImage, pods, opts.signal);
      result.idle.push(p.ms);
      await removePod(cri, p.podId, pods);
    }
    result.idleProbe = await probe.stop();

    probe = startProbe(cri);
    let empty = 0;
    try {
      while (result.loaded.length < opts.starts) {
        check(opts.signal);
        if ((await cri.images.ImageStatus({ image: { image: bigImage } })).image) await cri.images.RemoveImage({ image: { image: bigImage } });
        let done = false;
        const t0 = process.hrtime.bigint();
        const pulling = cri.images.PullImage({ image: { image: bigImage } }).then(
          () => {
            done = true;
            result.pullMs.push(since(t0));
          },
          (err: unknown) => {
            done = true;
            throw err;
          },
        );
        result.pulls++;
        const before = result.loaded.length;
        try {
          while (!done && result.loaded.length < opts.starts) {
            const p = await startPod(cri, podImage, pods, opts.signal);
            if (!done) result.loaded.push(p.ms);
            await removePod(cri, p.podId, pods);
          }
        } finally {
          await pulling;
        }
        empty = result.loaded.length === before ? empty + 1 : 0;
        if (empty >= MAX_EMPTY_PULLS) throw new Error(`${MAX_EMPTY_PULLS} pulls of ${bigImage} in a row finished before a pod start did`);
      }
    } finally {
      result.loadedProbe = await probe.stop();
    }
    return result;
  } finally {
    if (pods.size) await removePods(cri, pods);
  }
}
