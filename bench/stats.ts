// Summary statistics over latency samples (milliseconds). Pure: no I/O, no clocks.

export interface Summary {
  n: number;
  min: number;
  median: number;
  /** 95th percentile by the nearest-rank method: the ceil(0.95·n)-th smallest sample. */
  p95: number;
  max: number;
}

function sortedCopy(samples: readonly number[]): number[] {
  for (const s of samples) {
    if (!Number.isFinite(s)) throw new RangeError(`sample ${s} is not a finite number`);
  }
  return [...samples].sort((a, b) => a - b);
}

/**
 * Nearest-rank percentile of samples already sorted ascending: the smallest sample such that at least
 * p% of the samples are ≤ it, i.e. sorted[ceil(p/100·n) − 1] (p = 0 → the minimum). NaN when empty.
 */
export function nearestRank(sorted: readonly number[], p: number): number {
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile ${p} is not within [0, 100]`);
  if (sorted.length === 0) return NaN;
  // Rounding first keeps float noise (0.95·20 = 19.000000000000004) from pushing the rank up by one.
  const rank = Math.max(1, Math.ceil(Number(((p / 100) * sorted.length).toFixed(9))));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

/** Median of samples already sorted ascending (mean of the two middle samples when n is even). NaN when empty. */
export function medianSorted(sorted: readonly number[]): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const mid = n >> 1;
  return n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** min/median/p95/max of the samples (any order). An empty list gives n = 0 and NaN for the rest. */
export function summarize(samples: readonly number[]): Summary {
  const sorted = sortedCopy(samples);
  const n = sorted.length;
  return {
    n,
    min: n ? sorted[0]! : NaN,
    median: medianSorted(sorted),
    p95: nearestRank(sorted, 95),
    max: n ? sorted[n - 1]! : NaN,
  };
}

/** Nanoseconds (from process.hrtime.bigint differences) to milliseconds. */
export function nsToMs(ns: bigint): number {
  return Number(ns) / 1e6;
}

/** What a box plot draws: whiskers at min/max, the box from q1 to q3 (nearest rank 25/75), median and p95 marks. */
export interface Box extends Summary {
  q1: number;
  q3: number;
}

export function boxOf(samples: readonly number[]): Box {
  const sorted = sortedCopy(samples);
  return { ...summarize(sorted), q1: nearestRank(sorted, 25), q3: nearestRank(sorted, 75) };
}

/** Arithmetic mean; NaN when empty. */
export function mean(samples: readonly number[]): number {
  if (samples.length === 0) return NaN;
  let sum = 0;
  for (const s of samples) sum += s;
  return sum / samples.length;
}
