// Container and pod usage as domain records (types.ts): what the cgroups, the pod's network namespace and the
// writable-layer walk say, joined to the pods' and containers' identities. Reads happen when asked; the only
// state kept is the previous CPU sample of each container and pod (for usage_nano_cores, as containerd keeps
// it) and the last sample read, which stands in once a container's cgroup is gone (an exited container).
import { notFound } from '../errors.js';
import type { Logger } from '../log.js';
import type { CgroupSample } from '../kernel/cgroup-stats.js';
import type { InterfaceCounters } from '../kernel/netdev-stats.js';
import type { CachedLayerUsage } from './writable-layers.js';
import type { ContainerUsage, CpuUsage, Identity, MemoryUsage, PodRef, PodUsage, Pressure, UsageParts, UsageSource } from './types.js';

/** A container as the stats need it; the wiring maps the container service's records to this. */
export interface StatsContainer {
  id: string;
  podSandboxId: string;
  name: string;
  attempt: number;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  cgroupPath: string;
}

export interface StatsPod {
  id: string;
  name: string;
  namespace: string;
  uid: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  cgroupPath: string;
  /** The sysfs of the pod's network namespace; absent for a host-network pod. */
  netSysDir?: string;
}

/** The narrow ports the service reads through: records from the services, numbers from the adapters. */
export interface StatsPorts {
  containers(): StatsContainer[];
  pods(): StatsPod[];
  /** By full id or unique prefix; undefined when none. */
  findContainer(id: string): StatsContainer | undefined;
  findPod(id: string): StatsPod | undefined;
  /** Without parts: everything the cgroup tells. */
  readCgroup(cgPath: string, parts?: UsageParts): Promise<CgroupSample | undefined>;
  readInterfaces(sysDir: string): Promise<InterfaceCounters[] | undefined>;
  writableLayer(containerId: string): CachedLayerUsage | undefined;
  /**
   * The adapters keep the files of a cgroup and of a pod's sysfs open between reads: called with what a container or
   * pod that no longer exists was read from.
   */
  release?(readFrom: ReadFrom): void;
  /** A directory on the filesystem that holds the writable layers (kubelet asks cAdvisor about its filesystem). */
  layerMountpoint: string;
  log: Logger;
  /** Unix nanoseconds. */
  now?: () => bigint;
}

export interface ReadFrom {
  cgroupPath: string;
  netSysDir?: string;
}

interface Remembered {
  sample: CgroupSample;
  timestampNs: bigint;
  /** CPU baseline of usage_nano_cores and the rate last computed from it. */
  cpuAt?: { timestampNs: bigint; usage: bigint };
  nanoCores?: number;
  warnedGone?: boolean;
}

// Two reads closer than this (kubelet's summary and eviction manager asking at once) keep the previous rate
// rather than dividing a few microseconds of CPU by a few microseconds of wall time.
const MIN_RATE_WINDOW_NS = 10_000_000n;

export interface ContainerFilter {
  containerId?: string;
  podSandboxId?: string;
  labels?: Record<string, string>;
}

export class StatsService implements UsageSource {
  private readonly memory = new Map<string, Remembered>();
  /** What each container and pod was read from, to be released once it is gone. */
  private readonly readFrom = new Map<string, ReadFrom>();
  private readonly now: () => bigint;

  constructor(private readonly ports: StatsPorts) {
    this.now = ports.now ?? wallClockNs();
  }

  /** One container's usage; NOT_FOUND for an id that matches none. */
  async container(id: string, parts?: UsageParts): Promise<ContainerUsage> {
    const c = this.ports.findContainer(id);
    if (!c) throw notFound(`container "${id}" not found`);
    const pod = this.ports.findPod(c.podSandboxId);
    return this.containerUsage(c, pod, parts);
  }

  /**
   * One pod's usage with its containers'; NOT_FOUND for an id that matches none. `containerParts` (by default
   * `parts`) is what is read of its containers' cgroups.
   */
  async pod(id: string, parts?: UsageParts, containerParts = parts): Promise<PodUsage> {
    const p = this.ports.findPod(id);
    if (!p) throw notFound(`pod sandbox "${id}" not found`);
    return this.podUsage(p, this.ports.containers().filter((c) => c.podSandboxId === p.id), parts, containerParts);
  }

  async containers(filter: ContainerFilter = {}, parts?: UsageParts): Promise<ContainerUsage[]> {
    const all = this.ports.containers();
    const pods = new Map(this.ports.pods().map((p) => [p.id, p]));
    this.forgetAllBut([...all.map((c) => c.id), ...pods.keys()]);
    const chosen = all.filter(
      (c) =>
        (!filter.containerId || c.id.startsWith(filter.containerId)) &&
        (!filter.podSandboxId || c.podSandboxId.startsWith(filter.podSandboxId)) &&
        labelsMatch(c.labels, filter.labels),
    );
    return mapYielding(chosen, (c) => this.containerUsage(c, pods.get(c.podSandboxId), parts));
  }

  async pods(filter: { podSandboxId?: string; labels?: Record<string, string> } = {}, parts?: UsageParts, containerParts = parts): Promise<PodUsage[]> {
    const pods = this.ports.pods();
    const containers = this.ports.containers();
    this.forgetAllBut([...containers.map((c) => c.id), ...pods.map((p) => p.id)]);
    const chosen = pods.filter((p) => (!filter.podSandboxId || p.id.startsWith(filter.podSandboxId)) && labelsMatch(p.labels, filter.labels));
    const byPod = new Map<string, StatsContainer[]>();
    for (const c of containers) byPod.set(c.podSandboxId, [...(byPod.get(c.podSandboxId) ?? []), c]);
    return mapYielding(chosen, (p) => this.podUsage(p, byPod.get(p.id) ?? [], parts, containerParts));
  }

  private async containerUsage(c: StatsContainer, pod: StatsPod | undefined, parts: UsageParts | undefined): Promise<ContainerUsage> {
    const { sample, timestampNs, nanoCores } = await this.sample(c.id, c.cgroupPath, parts, { containerId: c.id, podSandboxId: c.podSandboxId });
    const layer = this.ports.writableLayer(c.id);
    const podRef: PodRef = { podSandboxId: c.podSandboxId, name: pod?.name ?? '', namespace: pod?.namespace ?? '', uid: pod?.uid ?? '' };
    return {
      container: { id: c.id, name: c.name, labels: c.labels, annotations: c.annotations },
      pod: podRef,
      attempt: c.attempt,
      ...usageParts(sample, timestampNs, nanoCores),
      ...(layer
        ? {
            writableLayer: {
              timestampNs: layer.timestampNs,
              mountpoint: this.ports.layerMountpoint,
              usedBytes: layer.usedBytes,
              inodesUsed: layer.inodesUsed,
            },
          }
        : {}),
    };
  }

  private async podUsage(p: StatsPod, containers: StatsContainer[], parts: UsageParts | undefined, containerParts: UsageParts | undefined): Promise<PodUsage> {
    const [own, interfaces, containerUsage] = await Promise.all([
      this.sample(p.id, p.cgroupPath, parts, { podSandboxId: p.id }, p.netSysDir),
      p.netSysDir ? this.ports.readInterfaces(p.netSysDir).catch((err) => {
        this.ports.log.warn('cannot read the pod network counters', { podSandboxId: p.id, err });
        return undefined;
      }) : undefined,
      Promise.all(containers.map((c) => this.containerUsage(c, p, containerParts))),
    ]);
    const identity: Identity & { namespace: string; uid: string } = {
      id: p.id, name: p.name, labels: p.labels, annotations: p.annotations, namespace: p.namespace, uid: p.uid,
    };
    return {
      pod: identity,
      ...usageParts(own.sample, own.timestampNs, own.nanoCores),
      ...(interfaces ? { network: { timestampNs: this.now(), interfaces } } : {}),
      containers: containerUsage,
    };
  }

  /** Reads the cgroup; a vanished one answers with the last sample read (and says so once in the log). */
  private async sample(
    key: string,
    cgPath: string,
    parts: UsageParts | undefined,
    ids: Record<string, string>,
    netSysDir?: string,
  ): Promise<{ sample: CgroupSample; timestampNs: bigint; nanoCores?: number }> {
    const from = this.readFrom.get(key);
    if (!from || from.cgroupPath !== cgPath || from.netSysDir !== netSysDir) {
      if (from) this.ports.release?.(from);
      this.readFrom.set(key, { cgroupPath: cgPath, ...(netSysDir ? { netSysDir } : {}) });
    }
    let read: CgroupSample | undefined;
    try {
      read = await this.ports.readCgroup(cgPath, parts);
    } catch (err) {
      this.ports.log.warn('cannot read cgroup statistics', { ...ids, cgroup: cgPath, err });
    }
    const known = this.memory.get(key);
    if (!read) {
      if (known && !known.warnedGone) {
        known.warnedGone = true;
        this.ports.log.warn('cgroup is gone: stats repeat its last known values', { ...ids, cgroup: cgPath });
      }
      return known ? { sample: known.sample, timestampNs: known.timestampNs, nanoCores: known.nanoCores } : { sample: {}, timestampNs: this.now() };
    }
    const timestampNs = this.now();
    const entry: Remembered = known ?? { sample: read, timestampNs };
    entry.sample = read;
    entry.timestampNs = timestampNs;
    entry.warnedGone = false;
    if (read.cpu) {
      const prev = entry.cpuAt;
      if (!prev || timestampNs - prev.timestampNs >= MIN_RATE_WINDOW_NS) {
        if (prev && read.cpu.usageNanoSeconds >= prev.usage) entry.nanoCores = nanoCoresBetween(prev, { timestampNs, usage: read.cpu.usageNanoSeconds });
        entry.cpuAt = { timestampNs, usage: read.cpu.usageNanoSeconds };
      }
    }
    this.memory.set(key, entry);
    return { sample: read, timestampNs, nanoCores: entry.nanoCores };
  }

  /**
   * Lets go of the files read for a container or pod (its last known values stay): call when a pod stops, so that
   * no descriptor keeps its network namespace's sysfs (and with it the namespace and its veth) alive after the
   * namespace is unpinned, and when a container or pod is removed. A later read opens what still exists.
   */
  release(id: string): void {
    const from = this.readFrom.get(id);
    if (!from) return;
    this.readFrom.delete(id);
    this.ports.release?.(from);
  }

  /** Drops what is remembered of containers and pods that no longer exist. */
  private forgetAllBut(ids: string[]): void {
    const live = new Set(ids);
    for (const key of this.memory.keys()) if (!live.has(key)) this.memory.delete(key);
    for (const [key, from] of this.readFrom) {
      if (live.has(key)) continue;
      this.readFrom.delete(key);
      this.ports.release?.(from);
    }
  }
}

/** Unix nanoseconds at millisecond resolution; the readings of one millisecond share one bigint. */
function wallClockNs(): () => bigint {
  let ms = -1;
  let ns = 0n;
  return () => {
    const now = Date.now();
    if (now !== ms) {
      ms = now;
      ns = BigInt(now) * 1_000_000n;
    }
    return ns;
  };
}

// The adapters read cgroupfs synchronously (microseconds a file): let other work in between every few cgroups.
const YIELD_EVERY = 8;

async function mapYielding<T, R>(items: T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i++) {
    if (i > 0 && i % YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
    out.push(await fn(items[i]));
  }
  return out;
}

/** CPU cores used on average between two samples, in billionths of a core (containerd's usage_nano_cores). */
export function nanoCoresBetween(prev: { timestampNs: bigint; usage: bigint }, next: { timestampNs: bigint; usage: bigint }): number | undefined {
  const elapsed = next.timestampNs - prev.timestampNs;
  if (elapsed <= 0n || next.usage < prev.usage) return undefined;
  return Number(((next.usage - prev.usage) * 1_000_000_000n) / elapsed);
}

function labelsMatch(labels: Record<string, string>, wanted: Record<string, string> | undefined): boolean {
  return Object.entries(wanted ?? {}).every(([k, v]) => labels[k] === v);
}

function usageParts(s: CgroupSample, timestampNs: bigint, nanoCores: number | undefined): Pick<ContainerUsage, 'cpu' | 'memory' | 'pids' | 'io' | 'psi'> {
  const out: Pick<ContainerUsage, 'cpu' | 'memory' | 'pids' | 'io' | 'psi'> = {};
  if (s.cpu) {
    const cpu: CpuUsage = { timestampNs, usageCoreNanoSeconds: s.cpu.usageNanoSeconds };
    if (nanoCores !== undefined) cpu.usageNanoCores = nanoCores;
    if (s.cpu.throttledNanoSeconds !== undefined) cpu.throttledNanoSeconds = s.cpu.throttledNanoSeconds;
    if (s.cpu.limitCores !== undefined) cpu.limitCores = s.cpu.limitCores;
    out.cpu = cpu;
  }
  if (s.memory) {
    const m = s.memory;
    const memory: MemoryUsage = {
      timestampNs,
      usageBytes: m.usageBytes,
      workingSetBytes: m.workingSetBytes,
      rssBytes: m.rssBytes,
      pageFaults: m.pageFaults,
      majorPageFaults: m.majorPageFaults,
    };
    if (m.oomKills !== undefined) memory.oomKills = m.oomKills;
    if (m.limitBytes !== undefined) {
      memory.limitBytes = m.limitBytes;
      memory.availableBytes = Math.max(0, m.limitBytes - m.workingSetBytes);
    }
    out.memory = memory;
  }
  // Each reading is a fresh object, never changed once made: the records share its parts (a remembered sample
  // of a vanished cgroup too).
  if (s.pids) out.pids = s.pids;
  if (s.io) out.io = { timestampNs, readBytes: s.io.readBytes, writeBytes: s.io.writeBytes };
  if (s.psi) out.psi = s.psi as { cpu?: Pressure; memory?: Pressure; io?: Pressure };
  return out;
}
