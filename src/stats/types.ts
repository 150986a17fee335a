import type { SampleParts } from '../kernel/cgroup-stats.js';
// What berth reads of a container's and a pod's resource use, in domain terms: the CRI stats RPCs, kubelet's
// CRI-only metrics and the Prometheus endpoint are three renderings of these records. Cumulative counters that
// can outgrow 2^53 (nanoseconds of CPU, bytes moved) are bigint; gauges are numbers.

export interface CpuUsage {
  /** Unix nanoseconds when the counters were read. */
  timestampNs: bigint;
  usageCoreNanoSeconds: bigint;
  /** Rate since the previous sample of the same cgroup; absent on the first sample. */
  usageNanoCores?: number;
  throttledNanoSeconds?: bigint;
  /** The CFS quota in cores (quota/period); absent without a quota. */
  limitCores?: number;
}

export interface MemoryUsage {
  timestampNs: bigint;
  usageBytes: number;
  /** usage minus inactive_file (cAdvisor's definition), never below 0. */
  workingSetBytes: number;
  rssBytes: number;
  /** limit minus working set; absent without a limit. */
  availableBytes?: number;
  limitBytes?: number;
  pageFaults: number;
  majorPageFaults: number;
  /** Absent when not asked for (UsageParts.oomKills). */
  oomKills?: number;
}

export interface PidsUsage {
  current: number;
  limit?: number;
}

export interface PressureLine {
  avg10: number;
  avg60: number;
  avg300: number;
  totalMicroseconds: bigint;
}

/** A cgroup2 pressure file: `some` always, `full` where the kernel has it. */
export interface Pressure {
  some: PressureLine;
  full?: PressureLine;
}

export interface IoUsage {
  timestampNs: bigint;
  readBytes: bigint;
  writeBytes: bigint;
}

export interface FilesystemUsage {
  timestampNs: bigint;
  /** The filesystem's mount point (the writable layer's, for a container). */
  mountpoint: string;
  usedBytes: number;
  inodesUsed: number;
}

export interface InterfaceUsage {
  name: string;
  rxBytes: bigint;
  rxErrors: bigint;
  txBytes: bigint;
  txErrors: bigint;
}

export interface NetworkUsage {
  timestampNs: bigint;
  /** The pod's default interface (eth0) first. */
  interfaces: InterfaceUsage[];
}

export interface Identity {
  id: string;
  name: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface PodRef {
  podSandboxId: string;
  name: string;
  namespace: string;
  uid: string;
}

export interface ContainerUsage {
  container: Identity;
  pod: PodRef;
  /** Restarts kubelet has recorded (the CRI attempt number). */
  attempt: number;
  cpu?: CpuUsage;
  memory?: MemoryUsage;
  pids?: PidsUsage;
  io?: IoUsage;
  writableLayer?: FilesystemUsage;
  psi?: { cpu?: Pressure; memory?: Pressure; io?: Pressure };
}

export interface PodUsage {
  pod: Identity & { namespace: string; uid: string };
  cpu?: CpuUsage;
  memory?: MemoryUsage;
  pids?: PidsUsage;
  io?: IoUsage;
  network?: NetworkUsage;
  psi?: { cpu?: Pressure; memory?: Pressure; io?: Pressure };
  containers: ContainerUsage[];
}

/**
 * What a reader renders beyond CPU time and memory usage: the parts of a cgroup reading (each is files read per
 * cgroup, hundreds of cgroups per list), so each rendering asks for its own; absent parts are absent from the
 * records. Omitted: everything.
 */
export type UsageParts = SampleParts;

/** Reads usage when asked (a scrape, an RPC); nothing here runs on a timer without a reader. */
export interface UsageSource {
  containers(filter?: { containerId?: string; podSandboxId?: string; labels?: Record<string, string> }, parts?: UsageParts): Promise<ContainerUsage[]>;
  /** `containerParts` (by default `parts`): what is read of the pods' containers. */
  pods(filter?: { podSandboxId?: string; labels?: Record<string, string> }, parts?: UsageParts, containerParts?: UsageParts): Promise<PodUsage[]>;
}
