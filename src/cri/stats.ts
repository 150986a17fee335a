import type { RuntimeServiceHandlers } from '../gen/runtime/v1/RuntimeService.js';
import type { ContainerStats } from '../gen/runtime/v1/ContainerStats.js';
import type { PodSandboxStats } from '../gen/runtime/v1/PodSandboxStats.js';
import type { CpuUsage as CpuProto } from '../gen/runtime/v1/CpuUsage.js';
import type { MemoryUsage as MemoryProto } from '../gen/runtime/v1/MemoryUsage.js';
import type { NetworkInterfaceUsage } from '../gen/runtime/v1/NetworkInterfaceUsage.js';
import type { Logger } from '../log.js';
import type { StatsService } from '../stats/service.js';
import type { PsiStats } from '../gen/runtime/v1/PsiStats.js';
import type { IoUsage as IoProto } from '../gen/runtime/v1/IoUsage.js';
import type { ContainerUsage, CpuUsage, MemoryUsage, PodUsage, Pressure, PressureLine, UsageParts } from '../stats/types.js';
import { handlerFactory, requireId, RpcObserver } from './grpc.js';
import { metricDescriptors, podMetrics } from './stats-metrics.js';
import { pagedStream } from './paging.js';

// The stats RPCs: the stats service's domain records rendered as CRI messages. Optional counters kubelet reads as
// "unknown" when absent stay absent (a UInt64Value is a pointer there), never a made-up 0.

// A uint64 handed to protobufjs as a string is parsed into a Long digit by digit; a number below 2^53 is
// written directly (a fifth of a 100-container ListContainerStats's encoding time).
const wire64 = (v: bigint): number | string => (v <= MAX_SAFE ? Number(v) : String(v));
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const u64 = (v: number | bigint | undefined) =>
  v === undefined ? undefined : { value: typeof v === 'number' ? Math.max(0, Math.round(v)) : wire64(v) };

type PsiOf = ContainerUsage['psi'];

// Every message below is built with all of its fields, absent ones undefined (protobufjs skips those as it skips
// missing ones): one object shape per message type. Optional parts spread in or left out gave each message several
// shapes, and the renderers went megamorphic; a 100-pod ListPodSandboxStats spent most of its JS time in them.

let lastTimestampNs: bigint | undefined;
let lastTimestamp = '';

/**
 * An int64 timestamp as protobufjs takes it without loss. The stats clock has millisecond resolution, so the
 * readings of a list share a few values: each is converted to decimal once (a bigint's toString is not cheap).
 */
function timestamp(ns: bigint): string {
  if (ns !== lastTimestampNs) {
    lastTimestampNs = ns;
    lastTimestamp = String(ns);
  }
  return lastTimestamp;
}

// The kernel counts stall time in microseconds; the CRI's PsiData.Total is nanoseconds.
const psiLine = (l: PressureLine) => ({ Total: wire64(l.totalMicroseconds * 1000n), Avg10: l.avg10, Avg60: l.avg60, Avg300: l.avg300 });

/** Absent where the kernel has no pressure file for the cgroup (no cgroup2 directory, or PSI off). */
function psiProto(p: Pressure | undefined): PsiStats | undefined {
  return p && { Some: psiLine(p.some), Full: p.full ? psiLine(p.full) : undefined };
}

function cpuProto(cpu: CpuUsage | undefined, psi: PsiOf): CpuProto | undefined {
  if (!cpu) return undefined;
  return {
    timestamp: timestamp(cpu.timestampNs),
    usage_core_nano_seconds: u64(cpu.usageCoreNanoSeconds),
    usage_nano_cores: u64(cpu.usageNanoCores),
    psi: psiProto(psi?.cpu),
  };
}

function ioProto(u: Pick<ContainerUsage, 'io' | 'psi' | 'cpu' | 'memory'>): IoProto | undefined {
  if (!u.psi?.io) return undefined;
  return { timestamp: timestamp(u.io?.timestampNs ?? u.cpu?.timestampNs ?? u.memory?.timestampNs ?? 0n), psi: psiProto(u.psi.io) };
}

function memoryProto(m: MemoryUsage | undefined, psi: PsiOf): MemoryProto | undefined {
  if (!m) return undefined;
  return {
    timestamp: timestamp(m.timestampNs),
    working_set_bytes: u64(m.workingSetBytes),
    available_bytes: u64(m.availableBytes),
    usage_bytes: u64(m.usageBytes),
    rss_bytes: u64(m.rssBytes),
    page_faults: u64(m.pageFaults),
    major_page_faults: u64(m.majorPageFaults),
    psi: psiProto(psi?.memory),
  };
}

export function containerStatsToProto(c: ContainerUsage, attempt = c.attempt): ContainerStats {
  const layer = c.writableLayer;
  return {
    attributes: {
      id: c.container.id,
      metadata: { name: c.container.name, attempt },
      labels: c.container.labels,
      annotations: c.container.annotations,
    },
    cpu: cpuProto(c.cpu, c.psi),
    memory: memoryProto(c.memory, c.psi),
    writable_layer: layer && {
      timestamp: timestamp(layer.timestampNs),
      fs_id: { mountpoint: layer.mountpoint },
      used_bytes: u64(layer.usedBytes),
      inodes_used: u64(layer.inodesUsed),
    },
    io: ioProto(c),
  };
}

type InterfaceUsage = NonNullable<PodUsage['network']>['interfaces'][number];

const interfaceProto = (i: InterfaceUsage): NetworkInterfaceUsage => ({
  name: i.name,
  rx_bytes: u64(i.rxBytes),
  rx_errors: u64(i.rxErrors),
  tx_bytes: u64(i.txBytes),
  tx_errors: u64(i.txErrors),
});

export function podStatsToProto(p: PodUsage, attempt: number): PodSandboxStats {
  const network = p.network;
  const first = network?.interfaces[0];
  const linux: NonNullable<PodSandboxStats['linux']> = {
    cpu: cpuProto(p.cpu, p.psi),
    memory: memoryProto(p.memory, p.psi),
    network: network && {
      timestamp: timestamp(network.timestampNs),
      default_interface: first && interfaceProto(first),
      interfaces: network.interfaces.map(interfaceProto),
    },
    process: p.pids && { timestamp: timestamp(p.cpu?.timestampNs ?? p.memory?.timestampNs ?? 0n), process_count: u64(p.pids.current) },
    containers: p.containers.map((c) => containerStatsToProto(c)),
    io: ioProto(p),
  };
  return {
    attributes: {
      id: p.pod.id,
      metadata: { name: p.pod.name, uid: p.pod.uid, namespace: p.pod.namespace, attempt },
      labels: p.pod.labels,
      annotations: p.pod.annotations,
    },
    linux,
  };
}

/**
 * What the CRI stats messages carry beyond CPU time and memory usage: the memory limit (available_bytes), the
 * pod's process count and PSI. Throttling, quotas, the OOM count and block I/O bytes have no field there, and
 * reading them for 200 cgroups per call was most of a ListPodSandboxStats.
 */
export const CRI_STATS_PARTS: UsageParts = { memoryLimit: true, pids: true, psi: true };
/** A ContainerStats has no process count: its pids.current is not read. */
export const CRI_CONTAINER_STATS_PARTS: UsageParts = { memoryLimit: true, psi: true };

/** What the metric labels need beyond the usage records (kubelet's cAdvisor labels name the image). */
export interface StatsLookups {
  podAttempt(podSandboxId: string): number;
  imageOf(containerId: string): string;
}

export function statsHandlers(stats: StatsService, lookups: StatsLookups, log: Logger, observe?: RpcObserver): Partial<RuntimeServiceHandlers> {
  const h = handlerFactory(log, observe);
  const pod = (p: PodUsage) => podStatsToProto(p, lookups.podAttempt(p.pod.id));
  type ContainerStatsFilter = { id?: string; pod_sandbox_id?: string; label_selector?: Record<string, string> } | null | undefined;
  type PodStatsFilter = { id?: string; label_selector?: Record<string, string> } | null | undefined;
  // The List RPCs and their CRI 1.37 streaming twins send the same items.
  const listContainerStats = async (f: ContainerStatsFilter) =>
    (await stats.containers({ containerId: f?.id || undefined, podSandboxId: f?.pod_sandbox_id || undefined, labels: f?.label_selector }, CRI_CONTAINER_STATS_PARTS)).map((c) => containerStatsToProto(c));
  const listPodStats = async (f: PodStatsFilter) =>
    (await stats.pods({ podSandboxId: f?.id || undefined, labels: f?.label_selector }, CRI_STATS_PARTS, CRI_CONTAINER_STATS_PARTS)).map(pod);
  // cAdvisor's series include block I/O and the OOM count: everything is read.
  const listPodMetrics = async () => (await stats.pods()).map((p) => podMetrics(p, lookups.imageOf));
  return {
    ContainerStats: h('ContainerStats', async (req) => {
      const usage = await stats.container(requireId(req.container_id, 'container_id', 'ContainerStats'), CRI_CONTAINER_STATS_PARTS);
      return { stats: containerStatsToProto(usage) };
    }),
    ListContainerStats: h('ListContainerStats', async (req) => ({ stats: await listContainerStats(req.filter) })),
    StreamContainerStats: pagedStream('StreamContainerStats', log, (req) => listContainerStats(req.filter), (container_stats) => ({ container_stats }), observe),
    PodSandboxStats: h('PodSandboxStats', async (req) => {
      const usage = await stats.pod(requireId(req.pod_sandbox_id, 'pod_sandbox_id', 'PodSandboxStats'), CRI_STATS_PARTS, CRI_CONTAINER_STATS_PARTS);
      return { stats: pod(usage) };
    }),
    ListPodSandboxStats: h('ListPodSandboxStats', async (req) => ({ stats: await listPodStats(req.filter) })),
    StreamPodSandboxStats: pagedStream('StreamPodSandboxStats', log, (req) => listPodStats(req.filter), (pod_sandbox_stats) => ({ pod_sandbox_stats }), observe),
    ListMetricDescriptors: h('ListMetricDescriptors', async () => ({ descriptors: metricDescriptors() })),
    ListPodSandboxMetrics: h('ListPodSandboxMetrics', async () => ({ pod_metrics: await listPodMetrics() })),
    StreamPodSandboxMetrics: pagedStream('StreamPodSandboxMetrics', log, () => listPodMetrics(), (pod_sandbox_metrics) => ({ pod_sandbox_metrics }), observe),
  };
}
