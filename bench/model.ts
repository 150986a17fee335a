// What a bench run measured, and the figures derived from it that tables, JSON and targets share. Pure.

import type { InsideSamples } from './inside.js';
import type { MemUsage } from './procfs.js';
import { mean, summarize } from './stats.js';

export type { MemUsage } from './procfs.js';

export interface PullResult {
  /** PullImage after RemoveImage, ms. */
  cold: number[];
  /** PullImage of an image already present, ms. */
  warm: number[];
  /** true: the layer files were checked gone before every cold pull; false: some were still there; null: not checked. */
  coldVerified: boolean | null;
  notes: string[];
}

export interface ConcurrentResult {
  /** Pods started at the same instant. */
  pods: number;
  /** Until the last container ran (or its pod failed), ms. */
  wallMs: number;
  /** Each successful pod: start instant → its container RUNNING, ms. */
  perPodMs: number[];
  /** Per step (RunPodSandbox, CreateContainer, StartContainer, until RUNNING): each successful pod's time in it, ms. */
  stages?: Record<string, number[]>;
  /** CPU time the runtime daemon used until all ran (utime + stime, its own threads only), ms. */
  daemonCpuMs?: number;
  /** Removing them all at once afterwards (StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox), ms. */
  teardownMs: number;
  failures: string[];
}

export interface PodMemory {
  podId: string;
  /** The runtime's processes for this pod. */
  pids: number[];
  /** e.g. "berth-shim ×1" */
  processes: string;
  rssKiB: number;
  pssKiB: number;
}

export interface MemoryResult {
  /** Pods asked for. */
  pods: number;
  /** Pods that ran when measured. */
  running?: number;
  daemonPid?: number;
  /** How the daemon pid was found, or why not. */
  daemonNote?: string;
  /** Daemon usage when the run started (berth: just after it started serving). */
  atStart?: MemUsage;
  /** Daemon usage with no pods, before the pods were started. */
  idle?: MemUsage;
  /** Daemon usage with `running` pods. */
  withPods?: MemUsage;
  memAvailableBeforeKiB?: number;
  memAvailableAfterKiB?: number;
  perPod: PodMemory[];
  notes: string[];
}

/** One runtime's measurements. */
export interface RuntimeRun {
  /** Short name used in column headers ('berth', 'containerd', …). */
  label: string;
  /** CRI endpoint measured, e.g. 'unix:///run/containerd/containerd.sock'. */
  endpoint: string;
  /** From the Version RPC, when it answered. */
  runtimeName?: string;
  runtimeVersion?: string;
  /** Image reference everything ran. */
  image: string;
  /** Sequential cycles: row (RPC or composite step) → samples in ms. Rows appear in the report in insertion order. */
  samples: Record<string, number[]>;
  pull?: PullResult;
  concurrent: ConcurrentResult[];
  memory?: MemoryResult;
  /** berth only: its own timed log lines from the measured sequential cycles (the warm-up excluded). */
  inside?: InsideSamples;
  /** Phases that failed, with their error. */
  errors: string[];
  /** Host paths this run used (berth's temporary dir), for leak checks. */
  scratch?: Record<string, string>;
}

export interface HostInfo {
  node: string;
  os: string;
  arch: string;
  cpus: number;
  cpuModel: string;
  memTotalMiB?: number;
}

export interface BenchResult {
  startedAt: string;
  finishedAt: string;
  /** Lifecycle cycles run against each runtime. */
  cycles: number;
  host: HostInfo;
  /** runs[0] is berth; a second run is the runtime it is compared with. */
  runs: RuntimeRun[];
}

export interface MemorySummary {
  /** Mean over the measured pods of the runtime-owned RSS/PSS, KiB. */
  perPodRssKiB: number;
  perPodPssKiB: number;
  perPodRssMaxKiB: number;
  perPodPssMaxKiB: number;
  /** The most common process description across pods ('' when none). */
  processes: string;
  /** (MemAvailable before − after) / pods running, KiB; NaN when unknown. */
  memAvailableDropPerPodKiB: number;
}

export function memorySummary(m: MemoryResult): MemorySummary {
  const rss = m.perPod.map((p) => p.rssKiB);
  const pss = m.perPod.map((p) => p.pssKiB);
  const counts = new Map<string, number>();
  for (const p of m.perPod) counts.set(p.processes, (counts.get(p.processes) ?? 0) + 1);
  const processes = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? '';
  const running = m.running ?? m.perPod.length;
  const drop =
    m.memAvailableBeforeKiB !== undefined && m.memAvailableAfterKiB !== undefined && running > 0
      ? (m.memAvailableBeforeKiB - m.memAvailableAfterKiB) / running
      : NaN;
  return {
    perPodRssKiB: mean(rss),
    perPodPssKiB: mean(pss),
    perPodRssMaxKiB: rss.length ? Math.max(...rss) : NaN,
    perPodPssMaxKiB: pss.length ? Math.max(...pss) : NaN,
    processes,
    memAvailableDropPerPodKiB: drop,
  };
}

export interface Metric {
  /** Stable key, also the row name in the comparison table. */
  name: string;
  unit: 'ms' | 'MiB';
  value: number;
}

const mib = (kib: number | undefined) => (kib === undefined ? NaN : kib / 1024);

/** The headline figures of a run beyond the per-RPC rows, for the side-by-side comparison. */
export function headlineMetrics(run: RuntimeRun): Metric[] {
  const out: Metric[] = [];
  if (run.pull) {
    out.push({ name: 'PullImage cold (median)', unit: 'ms', value: summarize(run.pull.cold).median });
    out.push({ name: 'PullImage warm (median)', unit: 'ms', value: summarize(run.pull.warm).median });
  }
  for (const c of run.concurrent) {
    const s = summarize(c.perPodMs);
    out.push({ name: `${c.pods} pods at once: all running`, unit: 'ms', value: c.failures.length ? NaN : c.wallMs });
    out.push({ name: `${c.pods} pods at once: per-pod p50`, unit: 'ms', value: s.median });
    out.push({ name: `${c.pods} pods at once: per-pod p95`, unit: 'ms', value: s.p95 });
    out.push({ name: `${c.pods} pods at once: teardown`, unit: 'ms', value: c.teardownMs });
  }
  const m = run.memory;
  if (m) {
    const s = memorySummary(m);
    out.push({ name: 'daemon RSS idle', unit: 'MiB', value: mib(m.idle?.rssKiB) });
    out.push({ name: 'daemon PSS idle', unit: 'MiB', value: mib(m.idle?.pssKiB) });
    out.push({ name: `daemon RSS with ${m.pods} pods`, unit: 'MiB', value: mib(m.withPods?.rssKiB) });
    out.push({ name: `daemon PSS with ${m.pods} pods`, unit: 'MiB', value: mib(m.withPods?.pssKiB) });
    out.push({ name: 'runtime-owned RSS per pod', unit: 'MiB', value: mib(s.perPodRssKiB) });
    out.push({ name: 'runtime-owned PSS per pod', unit: 'MiB', value: mib(s.perPodPssKiB) });
    out.push({ name: 'host MemAvailable drop per pod', unit: 'MiB', value: mib(s.memAvailableDropPerPodKiB) });
  }
  return out;
}
