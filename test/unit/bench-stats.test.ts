import test from 'ava';
import { medianSorted, nearestRank, nsToMs, summarize } from '../../bench/stats.js';
import {
  comparisonTable,
  formatMs,
  formatRatio,
  markdownTable,
  renderMarkdown,
  renderTables,
  rowsOf,
  toJson,
  type BenchResult,
  type RuntimeRun,
} from '../../bench/report.js';

const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

test('summarize: min, median, p95 and max of unsorted samples, without reordering the input', (t) => {
  const samples = [5, 1, 4, 2, 3];
  t.deepEqual(summarize(samples), { n: 5, min: 1, median: 3, p95: 5, max: 5 });
  t.deepEqual(samples, [5, 1, 4, 2, 3]);
});

test('median of an even count is the mean of the two middle samples', (t) => {
  t.is(summarize([4, 1, 3, 2]).median, 2.5);
  t.is(medianSorted([1, 2]), 1.5);
  t.is(medianSorted([7]), 7);
});

test('p95 is the nearest rank: ceil(0.95·n)-th smallest', (t) => {
  // n = 20: rank 19 exactly (no float creep to 20).
  t.is(summarize(range(20)).p95, 19);
  // n = 100: rank 95.
  t.is(summarize(range(100)).p95, 95);
  // n = 10: ceil(9.5) = 10 → the maximum.
  t.is(summarize(range(10)).p95, 10);
  // n = 2 (--quick): ceil(1.9) = 2 → the maximum.
  t.is(summarize([3, 1]).p95, 3);
  // n = 21: ceil(19.95) = 20.
  t.is(summarize(range(21)).p95, 20);
  t.is(nearestRank([1, 2, 3, 4], 50), 2);
  t.is(nearestRank([1, 2, 3, 4], 0), 1);
  t.is(nearestRank([1, 2, 3, 4], 100), 4);
  t.throws(() => nearestRank([1], 101), { instanceOf: RangeError });
});

test('a single sample is every statistic; no samples gives n 0 and NaN', (t) => {
  t.deepEqual(summarize([1.25]), { n: 1, min: 1.25, median: 1.25, p95: 1.25, max: 1.25 });
  const empty = summarize([]);
  t.is(empty.n, 0);
  for (const k of ['min', 'median', 'p95', 'max'] as const) t.true(Number.isNaN(empty[k]));
});

test('non-finite samples are rejected', (t) => {
  t.throws(() => summarize([1, NaN]), { instanceOf: RangeError });
  t.throws(() => summarize([Infinity]), { instanceOf: RangeError });
});

test('nsToMs converts hrtime nanoseconds', (t) => {
  t.is(nsToMs(1_500_000n), 1.5);
  t.is(nsToMs(0n), 0);
});

test('formatting: 2 decimals, dash for missing, ratios as ×', (t) => {
  t.is(formatMs(1), '1.00');
  t.is(formatMs(12.345), '12.35');
  t.is(formatMs(NaN), '–');
  t.is(formatRatio(3, 2), '1.50×');
  t.is(formatRatio(1, 0), '–');
  t.is(formatRatio(NaN, 1), '–');
});

test('markdownTable: one row per RPC in insertion order, n/min/median/p95/max in ms', (t) => {
  const table = markdownTable(rowsOf({ RunPodSandbox: [3, 1, 2], ExecSync: [10.5], Empty: [] }));
  t.is(
    table,
    '| RPC | n | min ms | median ms | p95 ms | max ms |\n' +
      '|:---|---:|---:|---:|---:|---:|\n' +
      '| RunPodSandbox | 3 | 1.00 | 2.00 | 3.00 | 3.00 |\n' +
      '| ExecSync | 1 | 10.50 | 10.50 | 10.50 | 10.50 |\n' +
      '| Empty | 0 | – | – | – | – |\n',
  );
});

test('markdownTable escapes pipes in row names', (t) => {
  t.true(markdownTable(rowsOf({ 'a|b': [1] })).includes('| a\\|b | 1 |'));
});

const berthRun: RuntimeRun = {
  label: 'berth',
  endpoint: 'unix:///tmp/berth.sock',
  runtimeName: 'berth',
  runtimeVersion: '0.1.0',
  image: '127.0.0.1:5000/bench/busybox:v1',
  samples: { RunPodSandbox: [10, 20], StartContainer: [4, 6] },
  pull: { cold: [42.1234], warm: [3], coldVerified: true, notes: [] },
  concurrent: [],
  errors: [],
};
const otherRun: RuntimeRun = {
  label: 'containerd',
  endpoint: 'unix:///run/containerd/containerd.sock',
  runtimeName: 'containerd',
  runtimeVersion: 'v1.7.0',
  image: 'docker.io/library/busybox:latest',
  samples: { RunPodSandbox: [30, 30], StartContainer: [5, 15], Extra: [1] },
  concurrent: [],
  errors: [],
};
const result = (runs: RuntimeRun[]): BenchResult => ({
  startedAt: '2024-01-01T00:00:00.000Z',
  finishedAt: '2024-01-01T00:01:00.000Z',
  cycles: 2,
  host: { node: 'v20.0.0', os: 'Linux 6.1', arch: 'x64', cpus: 4, cpuModel: 'Test CPU' },
  runs,
});

test('comparisonTable: medians and p95s side by side with other/berth ratios', (t) => {
  t.is(
    comparisonTable(berthRun, otherRun),
    '| RPC | berth median ms | containerd median ms | median containerd/berth | berth p95 ms | containerd p95 ms | p95 containerd/berth |\n' +
      '|:---|---:|---:|---:|---:|---:|---:|\n' +
      '| RunPodSandbox | 15.00 | 30.00 | 2.00× | 20.00 | 30.00 | 1.50× |\n' +
      '| StartContainer | 5.00 | 10.00 | 2.00× | 6.00 | 15.00 | 2.50× |\n' +
      '| Extra | – | 1.00 | – | – | 1.00 | – |\n',
  );
});

test('renderTables: a table per runtime, the comparison only with two', (t) => {
  const one = renderTables(result([berthRun]));
  t.true(one.includes('### berth (berth 0.1.0) — unix:///tmp/berth.sock'));
  t.true(one.includes('| PullImage cold | 1 | 42.12 | 42.12 | 42.12 | 42.12 |'));
  t.true(one.includes('| RunPodSandbox | 2 | 10.00 | 15.00 | 20.00 | 20.00 |'));
  t.false(one.includes(' vs '));
  const two = renderTables(result([berthRun, otherRun]));
  t.true(two.includes('### containerd (containerd v1.7.0) — unix:///run/containerd/containerd.sock'));
  t.true(two.includes('### containerd vs berth'));
  const md = renderMarkdown(result([berthRun]));
  t.true(md.startsWith('# berth CRI benchmark\n'));
  t.true(md.includes('2 sequential cycles per runtime'));
  t.true(md.endsWith(one));
});

test('toJson: summaries and samples per row, comparison ratios with two runs, round-trips through JSON', (t) => {
  const json = toJson(result([berthRun, otherRun]));
  t.deepEqual(JSON.parse(JSON.stringify(json)), json);
  t.is(json.schema, 'berth-bench/2');
  t.is(json.cycles, 2);
  const runs = json.runs as Record<string, unknown>[];
  t.is(runs.length, 2);
  t.deepEqual((runs[0]!.pull as Record<string, unknown>).cold, { n: 1, min: 42.123, median: 42.123, p95: 42.123, max: 42.123, samples: [42.123] });
  t.is(runs[1]!.pull, null);
  t.deepEqual((runs[0]!.rows as Record<string, unknown>).RunPodSandbox, { n: 2, min: 10, median: 15, p95: 20, max: 20, samples: [10, 20] });
  const comparison = json.comparison as Record<string, unknown>;
  t.is(comparison.base, 'berth');
  t.is(comparison.other, 'containerd');
  t.deepEqual(comparison.rows, {
    RunPodSandbox: { medianRatio: 2, p95Ratio: 1.5 },
    StartContainer: { medianRatio: 2, p95Ratio: 2.5 },
    Extra: { medianRatio: null, p95Ratio: null },
  });
  // Only berth pulled: the metric is there with no ratio.
  t.deepEqual((comparison.metrics as Record<string, unknown>)['PullImage cold (median)'], { unit: 'ms', base: 42.123, other: null, ratio: null });
  t.false('comparison' in toJson(result([berthRun])));
});

test('toJson: empty rows serialise as nulls, not NaN', (t) => {
  const json = toJson(result([{ ...berthRun, samples: { Nothing: [] } }]));
  const row = ((json.runs as Record<string, unknown>[])[0]!.rows as Record<string, unknown>).Nothing;
  t.deepEqual(row, { n: 0, min: null, median: null, p95: null, max: null, samples: [] });
});
