// The targets, evaluated against one runtime's measurements. Reported by the bench, never asserted. Pure.

import { memorySummary, relistSummary, STATS_CALLS, streamingSummary, type RuntimeRun } from './model.js';
import { summarize } from './stats.js';

export type Unit = 'ms' | 'MiB' | 'MiB/s';

export interface TargetResult {
  id: string;
  /** What is measured, as the table shows it. */
  name: string;
  /** The target: value ≤ limit (value ≥ limit when atLeast). */
  limit: number;
  atLeast?: boolean;
  unit: Unit;
  /** Measured value; null when this run did not measure it. */
  value: number | null;
  /** value ≤ limit; null when not measured, or measured where the target does not apply (value set, basis says why). */
  met: boolean | null;
  /** How the value was obtained, or why it is missing. */
  basis: string;
}

interface Measured {
  value: number | null;
  basis: string;
  /** false: the value is shown but says nothing about the target (e.g. measured with fewer pods than it names). */
  evaluated?: boolean;
}

const finite = (v: number | undefined): number | null => (v !== undefined && Number.isFinite(v) ? v : null);

function medianOf(run: RuntimeRun, row: string): Measured {
  const s = run.samples[row] ?? [];
  const v = finite(summarize(s).median);
  return { value: v, basis: v === null ? `no ${row} samples` : `median of ${s.length}` };
}

/** What a resource control adds to pod start: its row's median less plain pod start's. */
function overPlain(run: RuntimeRun, row: string): Measured {
  const plain = medianOf(run, 'from scratch → RUNNING');
  const on = medianOf(run, row);
  if (plain.value === null || on.value === null) return { value: null, basis: on.value === null ? on.basis : plain.basis };
  return { value: on.value - plain.value, basis: `${on.basis}, less plain's ${plain.basis}` };
}

/** Pods that the "all running" target counts. */
export const CONCURRENT_TARGET_PODS = 20;
/** Pods the memory targets are stated for. */
export const MEMORY_TARGET_PODS = 30;
/** Pods the relist target is stated for (kubelet relists every second; the node runs 100 pods). */
export const RELIST_TARGET_PODS = 100;
/** A relist every second must cost well under a tenth of that second. */
const RELIST_LIMIT_MS = 100;
/** Pods the /metrics scrape target is stated for. */
export const SCRAPE_TARGET_PODS = 100;

function perPodMiB(run: RuntimeRun, key: 'perPodRssKiB' | 'perPodPssKiB'): Measured {
  const kib = run.memory && memorySummary(run.memory)[key];
  const v = finite(kib !== undefined ? kib / 1024 : undefined);
  return { value: v, basis: v === null ? 'not measured' : `mean over ${run.memory!.perPod.length} pods` };
}

interface TargetDef {
  id: string;
  name: string;
  limit: number;
  unit: Unit;
  measure(run: RuntimeRun): Measured;
}

export const TARGETS: readonly TargetDef[] = [
  { id: 'fromScratch', name: 'pod + container from scratch → RUNNING (median)', limit: 60, unit: 'ms', measure: (r) => medianOf(r, 'from scratch → RUNNING') },
  { id: 'blkioClassAdds', name: 'pod start with a blkio class, added to plain pod start (median)', limit: 5, unit: 'ms', measure: (r) => overPlain(r, 'from scratch → RUNNING, blkio class') },
  { id: 'writableLayerCost', name: 'writable-layer limit: from scratch → RUNNING over plain (median difference)', limit: 5, unit: 'ms', measure: (r) => overPlain(r, 'from scratch → RUNNING, writable-layer limit') },
  { id: 'bandwidthCost', name: 'bandwidth annotations: from scratch → RUNNING over plain (median difference)', limit: 5, unit: 'ms', measure: (r) => overPlain(r, 'from scratch → RUNNING, bandwidth annotations') },
  { id: 'RunPodSandbox', name: 'RunPodSandbox (median)', limit: 30, unit: 'ms', measure: (r) => medianOf(r, 'RunPodSandbox') },
  { id: 'StartContainer', name: 'StartContainer (median)', limit: 15, unit: 'ms', measure: (r) => medianOf(r, 'StartContainer') },
  { id: 'StopContainer', name: 'StopContainer, process exits on SIGTERM (median)', limit: 15, unit: 'ms', measure: (r) => medianOf(r, 'StopContainer') },
  { id: 'StopPodSandbox', name: 'StopPodSandbox (median)', limit: 20, unit: 'ms', measure: (r) => medianOf(r, 'StopPodSandbox') },
  { id: 'podRss', name: 'runtime-owned RSS per pod (mean)', limit: 1, unit: 'MiB', measure: (r) => perPodMiB(r, 'perPodRssKiB') },
  { id: 'podPss', name: 'runtime-owned PSS per pod (mean)', limit: 0.3, unit: 'MiB', measure: (r) => perPodMiB(r, 'perPodPssKiB') },
  {
    id: 'daemonRss',
    name: `runtime daemon RSS with ${MEMORY_TARGET_PODS} pods`,
    limit: 80,
    unit: 'MiB',
    measure: (r) => {
      const m = r.memory;
      const v = finite(m?.withPods ? m.withPods.rssKiB / 1024 : undefined);
      if (v === null || !m) return { value: null, basis: 'not measured' };
      if (m.running === MEMORY_TARGET_PODS) return { value: v, basis: `${m.running} pods running` };
      // The daemon's memory grows with its pods: a reading with another count says nothing about this target.
      return { value: v, basis: `measured with ${m.running ?? m.pods} pods, not ${MEMORY_TARGET_PODS}`, evaluated: false };
    },
  },
  {
    id: 'concurrent20',
    name: `${CONCURRENT_TARGET_PODS} pods started at once, all running`,
    limit: 2000,
    unit: 'ms',
    measure: (r) => {
      const c = r.concurrent.find((x) => x.pods === CONCURRENT_TARGET_PODS);
      if (!c) return { value: null, basis: `not measured (no ${CONCURRENT_TARGET_PODS}-pod run)` };
      if (c.failures.length > 0 || c.perPodMs.length < c.pods) return { value: null, basis: `${c.failures.length} of ${c.pods} pods failed` };
      return { value: finite(c.wallMs), basis: 'wall time' };
    },
  },
  {
    id: 'relist100',
    name: `relist (ListPodSandbox + ListContainers) with ${RELIST_TARGET_PODS} pods, median`,
    limit: RELIST_LIMIT_MS,
    unit: 'ms',
    measure: (r) => {
      const x = r.relist;
      if (!x) return { value: null, basis: 'not measured' };
      const s = relistSummary(x);
      const v = finite(s.relist.median);
      if (v === null) return { value: null, basis: x.running ? 'no relist samples' : `none of ${x.pods} pods started` };
      if (!s.countsMatched) return { value: v, basis: 'lists did not return every pod', evaluated: false };
      const basis = `median of ${s.relist.n}, ${x.running} pods`;
      if (x.running < RELIST_TARGET_PODS) return { value: v, basis: `measured with ${x.running} pods, not ${RELIST_TARGET_PODS}`, evaluated: false };
      // More pods than the target names only proves it when the limit is met anyway.
      if (x.running > RELIST_TARGET_PODS && v > RELIST_LIMIT_MS) return { value: v, basis: `${basis}, more than ${RELIST_TARGET_PODS}`, evaluated: false };
      return { value: v, basis };
    },
  },
  {
    id: 'execFirstByte',
    name: 'Exec → first stdout byte of echo, over SPDY (median)',
    limit: 15,
    unit: 'ms',
    measure: (r) => {
      if (!r.streaming) return { value: null, basis: 'not measured' };
      const s = streamingSummary(r.streaming).firstByte;
      const v = finite(s.median);
      return { value: v, basis: v === null ? 'no exec samples' : `median of ${s.n}` };
    },
  },
  {
    id: 'metricsScrapeCpu',
    name: `daemon CPU per /metrics scrape with ${SCRAPE_TARGET_PODS} pods`,
    limit: 50,
    unit: 'ms',
    measure: (r) => {
      const x = r.scrape;
      if (!x) return { value: null, basis: 'not measured' };
      if (x.unavailable) return { value: null, basis: x.unavailable };
      const v = finite(x.cpuPerScrapeMs);
      if (v === null) return { value: null, basis: x.wallMs.length ? 'daemon CPU unknown' : 'no scrapes' };
      const basis = `mean of ${x.wallMs.length} scrapes, ${x.pods} pods`;
      if (x.containersSeen < x.pods) return { value: v, basis: `${basis}; only ${x.containersSeen} containers in the scrape`, evaluated: false };
      if (x.pods < SCRAPE_TARGET_PODS) return { value: v, basis: `measured with ${x.pods} pods, not ${SCRAPE_TARGET_PODS}`, evaluated: false };
      return { value: v, basis };
    },
  },
];

interface RelativeDef {
  id: string;
  name: string;
  unit: Unit;
  /** More is better (throughput): the target is value ≥ the other's. */
  atLeast: boolean;
  value(run: RuntimeRun): number | null;
}

/** The issues' goals stated against the other runtime of the same run. */
export const RELATIVE_TARGETS: readonly RelativeDef[] = [
  { id: 'forwardUpload', name: 'port-forward upload, one connection (median)', unit: 'MiB/s', atLeast: true, value: (r) => (r.streaming ? finite(streamingSummary(r.streaming).uploadMiBps) : null) },
  { id: 'forwardDownload', name: 'port-forward download, one connection (median)', unit: 'MiB/s', atLeast: true, value: (r) => (r.streaming ? finite(streamingSummary(r.streaming).downloadMiBps) : null) },
  ...STATS_CALLS.map(
    (call): RelativeDef => ({
      id: `${call.split(' ')[0]}`,
      name: `${call} with the relist pods (median)`,
      unit: 'ms',
      atLeast: false,
      value: (r) => (r.relist ? finite(summarize(r.relist.calls[call] ?? []).median) : null),
    }),
  ),
];

/** base against other for each relative target: met when base is at least as good; null when either is missing. */
export function evaluateRelativeTargets(base: RuntimeRun, other: RuntimeRun): TargetResult[] {
  return RELATIVE_TARGETS.map((t) => {
    const value = t.value(base);
    const limit = t.value(other);
    const pods = base.relist && other.relist && base.relist.running !== other.relist.running && t.unit === 'ms';
    const met = value === null || limit === null || pods ? null : t.atLeast ? value >= limit : value <= limit;
    const basis =
      limit === null ? `${other.label} not measured` : value === null ? 'not measured' : pods ? `different pod counts (${base.relist!.running} vs ${other.relist!.running})` : `against ${other.label}'s in the same run`;
    return { id: t.id, name: t.name, limit: limit ?? NaN, atLeast: t.atLeast, unit: t.unit, value, met, basis };
  });
}

export function evaluateTargets(run: RuntimeRun): TargetResult[] {
  return TARGETS.map((t) => {
    const { value, basis, evaluated = true } = t.measure(run);
    return { id: t.id, name: t.name, limit: t.limit, unit: t.unit, value, met: value === null || !evaluated ? null : value <= t.limit, basis };
  });
}
