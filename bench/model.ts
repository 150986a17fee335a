// What a bench run measured, and the figures derived from it that tables, JSON and targets share. Pure.

import type { InsideSamples } from './inside.js';
import type { MemUsage } from './procfs.js';
import { mean, summarize, type Summary } from './stats.js';

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

/** Pod starts without and during cold pulls of the large image (pull-under-load phase). */
export interface PullLoadResult {
  /** Sequential pod starts → RUNNING with no pull going on, ms. */
  idle: number[];
  /** The same, each one entirely within a cold pull of the large image, ms. */
  loaded: number[];
  /** Version RPC round trips issued every 25 ms during the idle and the loaded starts, ms. */
  idleProbe: number[];
  loadedProbe: number[];
  /** Cold pulls it took, and each one's duration, ms. */
  pulls: number;
  pullMs: number[];
}

/** The large multi-layer image of the pull phases, and its cold pulls. */
export interface BigPullResult extends PullResult {
  image: string;
  layers: number;
  /** Compressed bytes of its layers, MiB. */
  mib: number;
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

/** Rows of the relist table, in its order; keys of RelistResult.calls. */
export const RELIST_CALLS = [
  'relist: ListPodSandbox + ListContainers together',
  'ListPodSandbox {} (in the relist)',
  'ListContainers {} (in the relist)',
  'ListContainers {io.kubernetes.pod.uid} (one pod)',
  'ListPodSandbox {state: SANDBOX_READY}',
  'PodSandboxStatus + ContainerStatus (one pod)',
  'ListContainerStats {}',
  'ListPodSandboxStats {}',
] as const;
/** The stats lists kubelet's summary API sends (every 10-15 s), whose daemon CPU is measured per call. */
export const STATS_CALLS = ['ListContainerStats {}', 'ListPodSandboxStats {}'] as const satisfies readonly RelistCall[];
export type StatsCall = (typeof STATS_CALLS)[number];
export type RelistCall = (typeof RELIST_CALLS)[number];
export const RELIST: RelistCall = RELIST_CALLS[0];

export interface RelistResult {
  /** Pods asked for. */
  pods: number;
  /** Pods running while the lists were timed: what every list had to return. */
  running: number;
  /** Relists in the CPU window (daemonCpuMs covers exactly these). */
  relists: number;
  /** Per call, ms. The two "in the relist" rows: each call's own time within the pair issued together. */
  calls: Record<RelistCall, number[]>;
  /** CPU time the daemon used over the relists (utime + stime of the process), ms. */
  daemonCpuMs?: number;
  /** Untimed relists before the timed ones. */
  warmup?: number;
  /** The first of the warm-up relists and the daemon CPU they used, ms: what a freshly started daemon pays. */
  cold?: { relists: number; daemonCpuMs: number };
  /** CPU time the daemon used per stats list call (utime + stime over all its samples / samples), ms. */
  statsCpuPerCallMs?: Partial<Record<StatsCall, number>>;
  /** The most items an unfiltered list returned (the bench's pods and any others the runtime holds). */
  listed: { sandboxes: number; containers: number };
  /** A list that missed a running bench pod, or a filtered one that returned a wrong item (first few). */
  mismatches: string[];
  /** Pods that failed to start, and what cleanup could not remove. */
  failures: string[];
}

export function emptyRelistCalls(): Record<RelistCall, number[]> {
  return Object.fromEntries(RELIST_CALLS.map((c) => [c, []])) as unknown as Record<RelistCall, number[]>;
}

export interface RelistSummary {
  relist: Summary;
  /** daemonCpuMs / relists; NaN when unknown. */
  cpuPerRelistMs: number;
  /** Every list returned every running pod, and the filtered ones nothing else. */
  countsMatched: boolean;
}

export function relistSummary(r: RelistResult): RelistSummary {
  return {
    relist: summarize(r.calls[RELIST] ?? []),
    cpuPerRelistMs: r.daemonCpuMs !== undefined && r.relists > 0 ? r.daemonCpuMs / r.relists : NaN,
    countsMatched: r.mismatches.length === 0 && r.running > 0 && r.listed.sandboxes >= r.running && r.listed.containers >= r.running,
  };
}

/** Why a relist phase failed, one line each; empty when it did not. */
export function relistProblems(r: RelistResult): string[] {
  const out: string[] = [];
  if (r.running < r.pods) out.push(`${r.pods - r.running} of ${r.pods} pods did not start${r.failures[0] ? `: ${r.failures[0]}` : ''}`);
  if (r.mismatches.length) out.push(`${r.mismatches.length === MAX_MISMATCHES ? `${MAX_MISMATCHES}+` : r.mismatches.length} wrong list results, first: ${r.mismatches[0]}`);
  const cleanup = r.failures.filter((f) => f.startsWith('cleanup: '));
  if (cleanup.length) out.push(`${cleanup.length} pods not removed, first: ${cleanup[0]}`);
  return out;
}

/** Mismatches kept: a broken list repeats the same error on every sample. */
export const MAX_MISMATCHES = 10;

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

/** Exec and port-forward through the runtime's streaming server, over SPDY/3.1 as kubelet's proxy and crictl use it. */
export interface StreamingResult {
  /** Exec RPC issued → its URL returned, ms. */
  execRpc: number[];
  /** Exec RPC issued → the first stdout byte of `echo` on the upgraded connection, ms. */
  firstByte: number[];
  /** Exec RPC issued → the session's exit status read, ms. */
  execDone: number[];
  /** Bytes moved per port-forward measurement, MiB. */
  forwardMiB: number;
  /** Client → pod through one forwarded connection (until the pod acknowledged every byte), MiB/s. */
  uploadMiBps: number[];
  /** Pod → client through one forwarded connection (until EOF), MiB/s. */
  downloadMiBps: number[];
  /** The daemon's CPU over the timed uploads / MiB moved, ms; undefined when the daemon is unknown. */
  uploadCpuMsPerMiB?: number;
  /** The same over the timed downloads. */
  downloadCpuMsPerMiB?: number;
  failures: string[];
}

/** GET /metrics with the relist phase's pods running (berth's Prometheus endpoint). */
export interface ScrapeResult {
  /** Pods running while scraping. */
  pods: number;
  /** Wall time per scrape, ms. */
  wallMs: number[];
  /** The daemon's CPU over the timed scrapes / scrapes, ms; undefined when the daemon is unknown. */
  cpuPerScrapeMs?: number;
  /** Size of the last scrape. */
  bytes: number;
  /** Samples (non-comment lines) in the last scrape. */
  samples: number;
  /** Running bench containers that had a series (container_id label) in the last scrape. */
  containersSeen: number;
  failures: string[];
  /** Set instead of measurements when the runtime has no such endpoint. */
  unavailable?: string;
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
  bigPull?: BigPullResult;
  pullLoad?: PullLoadResult;
  concurrent: ConcurrentResult[];
  memory?: MemoryResult;
  /** Lists with many pods running, as kubelet's PLEG relists them. */
  relist?: RelistResult;
  streaming?: StreamingResult;
  scrape?: ScrapeResult;
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
  /** MiB/s is the one where more is better. */
  unit: 'ms' | 'MiB' | 'MiB/s';
  value: number;
  /** Shown instead of a missing value: why this runtime has none. */
  note?: string;
}

/** Median bytes moved per second through one forwarded connection, each direction. */
export function streamingSummary(s: StreamingResult): { firstByte: Summary; execRpc: Summary; execDone: Summary; uploadMiBps: number; downloadMiBps: number } {
  return {
    firstByte: summarize(s.firstByte),
    execRpc: summarize(s.execRpc),
    execDone: summarize(s.execDone),
    uploadMiBps: summarize(s.uploadMiBps).median,
    downloadMiBps: summarize(s.downloadMiBps).median,
  };
}

const mib = (kib: number | undefined) => (kib === undefined ? NaN : kib / 1024);

/** The headline figures of a run beyond the per-RPC rows, for the side-by-side comparison. */
export function headlineMetrics(run: RuntimeRun): Metric[] {
  const out: Metric[] = [];
  if (run.pull) {
    out.push({ name: 'PullImage cold (median)', unit: 'ms', value: summarize(run.pull.cold).median });
    out.push({ name: 'PullImage warm (median)', unit: 'ms', value: summarize(run.pull.warm).median });
  }
  if (run.bigPull) {
    const b = run.bigPull;
    out.push({ name: `PullImage cold, ${b.layers}-layer ${b.mib.toFixed(0)} MiB gzip image (median)`, unit: 'ms', value: summarize(b.cold).median });
  }
  if (run.pullLoad) {
    const l = run.pullLoad;
    out.push({ name: 'pod start → RUNNING without a pull (p95)', unit: 'ms', value: summarize(l.idle).p95 });
    out.push({ name: 'pod start → RUNNING during a cold pull (p95)', unit: 'ms', value: summarize(l.loaded).p95 });
    out.push({ name: 'Version RPC without a pull (max)', unit: 'ms', value: summarize(l.idleProbe).max });
    out.push({ name: 'Version RPC during a cold pull (p95)', unit: 'ms', value: summarize(l.loadedProbe).p95 });
    out.push({ name: 'Version RPC during a cold pull (max)', unit: 'ms', value: summarize(l.loadedProbe).max });
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
  if (run.relist) {
    const s = relistSummary(run.relist);
    out.push({ name: `relist with ${run.relist.pods} pods (median)`, unit: 'ms', value: s.relist.median });
    out.push({ name: `daemon CPU per relist with ${run.relist.pods} pods`, unit: 'ms', value: s.cpuPerRelistMs });
    const cold = run.relist.cold;
    if (cold) out.push({ name: `daemon CPU per relist with ${run.relist.pods} pods, the first ${cold.relists} of the phase`, unit: 'ms', value: cold.daemonCpuMs / cold.relists });
    for (const call of STATS_CALLS) {
      const samples = run.relist.calls[call] ?? [];
      if (samples.length === 0) continue;
      out.push({ name: `${call} with ${run.relist.pods} pods (median)`, unit: 'ms', value: summarize(samples).median });
      out.push({ name: `daemon CPU per ${call} with ${run.relist.pods} pods`, unit: 'ms', value: run.relist.statsCpuPerCallMs?.[call] ?? NaN });
    }
  }
  if (run.streaming) {
    const s = streamingSummary(run.streaming);
    out.push({ name: 'Exec → first stdout byte of echo (median)', unit: 'ms', value: s.firstByte.median });
    out.push({ name: 'Exec → first stdout byte of echo (p95)', unit: 'ms', value: s.firstByte.p95 });
    out.push({ name: `port-forward upload, one connection (${run.streaming.forwardMiB} MiB)`, unit: 'MiB/s', value: s.uploadMiBps });
    out.push({ name: `port-forward download, one connection (${run.streaming.forwardMiB} MiB)`, unit: 'MiB/s', value: s.downloadMiBps });
  }
  if (run.scrape) {
    const x = run.scrape;
    const note = x.unavailable;
    out.push({ name: `/metrics scrape with ${x.pods} pods (median)`, unit: 'ms', value: note ? NaN : summarize(x.wallMs).median, ...(note ? { note } : {}) });
    out.push({ name: `daemon CPU per /metrics scrape with ${x.pods} pods`, unit: 'ms', value: note ? NaN : (x.cpuPerScrapeMs ?? NaN), ...(note ? { note } : {}) });
  }
  return out;
}
