import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { boxOf, mean } from '../../bench/stats.js';
import {
  describeProcesses,
  parseMemAvailable,
  parseNetUnix,
  parseSmapsRollup,
  parseStat,
  runtimeOwnedProcesses,
  type ProcInfo,
} from '../../bench/procfs.js';
import { headlineMetrics, memorySummary, type BenchResult, type MemoryResult, type RuntimeRun } from '../../bench/model.js';
import { evaluateTargets, TARGETS } from '../../bench/targets.js';
import { formatMiB, formatRatio, headlineComparisonTable, renderTables, targetsTable, toJson } from '../../bench/report.js';
import { escapeXml, logDomain, logTicks, logX, renderSvg } from '../../bench/svg.js';
import { findNamed, mapLimit } from '../../bench/phases.js';

// ---------------------------------------------------------------------------------------------------------------
// stats

test('boxOf: quartiles by nearest rank alongside the summary', (t) => {
  t.deepEqual(boxOf([8, 1, 2, 3, 4, 5, 6, 7]), { n: 8, min: 1, q1: 2, median: 4.5, q3: 6, p95: 8, max: 8 });
  const empty = boxOf([]);
  t.is(empty.n, 0);
  t.true(Number.isNaN(empty.q1) && Number.isNaN(empty.q3));
});

test('mean', (t) => {
  t.is(mean([1, 2, 3, 6]), 3);
  t.true(Number.isNaN(mean([])));
});

// ---------------------------------------------------------------------------------------------------------------
// /proc parsers

const SMAPS = `55d0c0a00000-7ffc1c3fe000 ---p 00000000 00:00 0                          [rollup]
Rss:                1780 kB
Pss:                 350 kB
Pss_Dirty:           112 kB
Pss_Anon:            112 kB
Shared_Clean:       1432 kB
Anonymous:           120 kB
Swap:                  0 kB
`;

test('parseSmapsRollup reads Rss and Pss in KiB', (t) => {
  t.deepEqual(parseSmapsRollup(SMAPS), { rssKiB: 1780, pssKiB: 350, anonKiB: 120 });
  t.deepEqual(parseSmapsRollup('Rss: 8 kB\nPss: 4 kB\n'), { rssKiB: 8, pssKiB: 4 });
  t.throws(() => parseSmapsRollup('Size: 4 kB\n'), { message: /Rss\/Pss/ });
});

test('parseMemAvailable', (t) => {
  t.is(parseMemAvailable('MemTotal:       24684544 kB\nMemFree:        22051604 kB\nMemAvailable:   24000616 kB\nHugePages_Total:       0\n'), 24000616);
  t.throws(() => parseMemAvailable('MemTotal: 1 kB\n'));
});

test('parseNetUnix: bound sockets with their inode, path and listening flag', (t) => {
  const text =
    'Num       RefCount Protocol Flags    Type St Inode Path\n' +
    '0000000073f40c2d: 00000003 00000000 00000000 0001 03 233683\n' +
    '00000000f2655fa9: 00000002 00000000 00010000 0001 01 235636 /run/anchor-containerd/containerd.sock\n' +
    '00000000aaaaaaaa: 00000003 00000000 00000000 0001 03 235700 /run/anchor-containerd/containerd.sock\n' +
    '00000000bbbbbbbb: 00000002 00000000 00010000 0001 01 1234 /tmp/a b.sock\n';
  const entries = parseNetUnix(text);
  t.deepEqual(entries.filter((e) => e.path), [
    { inode: 235636, path: '/run/anchor-containerd/containerd.sock', listening: true },
    { inode: 235700, path: '/run/anchor-containerd/containerd.sock', listening: false },
    { inode: 1234, path: '/tmp/a b.sock', listening: true },
  ]);
});

test('parseStat: comm may hold spaces and parentheses', (t) => {
  t.deepEqual(parseStat('4242 (containerd-shim) S 1 4242 4242 0 -1 4194560 1517 0 3 0 250 17 0 0 20 0 11 0 1000'), { comm: 'containerd-shim', ppid: 1, cpuMs: 2670 });
  t.like(parseStat('77 (a (b) c) R 12 77 77 0 -1 0 0 0 0 0 1 2'), { comm: 'a (b) c', ppid: 12, cpuMs: 30 });
});

// ---------------------------------------------------------------------------------------------------------------
// per-pod process attribution

const POD = 'a'.repeat(64);
const CTR = 'c'.repeat(64);
const OTHER_POD = 'b'.repeat(64);
const proc = (pid: number, ppid: number, comm: string, cmdline: string): ProcInfo => ({ pid, ppid, comm, cmdline });

test('runtimeOwnedProcesses: berth — the monitor named by its bundle, not the container it runs', (t) => {
  const procs = [
    proc(1, 0, 'init', '/sbin/init'),
    proc(100, 1, 'node', `node dist/src/main.js --root /tmp/x/root`),
    proc(200, 1, 'berth-shim', `/work/native/build/berth-shim create /tmp/x/root/containers/${CTR}`),
    proc(201, 200, 'sh', '/bin/sh -c trap "exit 0" TERM; while :; do sleep 1 & wait; done'),
    proc(202, 201, 'sleep', 'sleep 1'),
    proc(300, 1, 'berth-shim', `/work/native/build/berth-shim create /tmp/x/root/containers/${'d'.repeat(64)}`),
  ];
  const owned = runtimeOwnedProcesses(procs, { podId: POD, containerIds: [CTR], ownPids: [200], workloadPids: [201], excludePids: [100] });
  t.deepEqual(owned.map((p) => p.pid), [200]);
  t.is(describeProcesses(owned), 'berth-shim ×1');
});

test('runtimeOwnedProcesses: containerd — the shim named by the pod id and the pause pid it reports', (t) => {
  const procs = [
    proc(10, 1, 'containerd', 'containerd --config /etc/anchor-containerd/config.toml'),
    proc(20, 1, 'containerd-shim', `/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id ${POD} -address /run/anchor-containerd/containerd.sock`),
    proc(21, 20, 'pause', '/pause'),
    proc(22, 20, 'sh', '/bin/sh -c sleep'),
    proc(23, 22, 'sleep', 'sleep 1'),
    proc(30, 1, 'containerd-shim', `/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id ${OTHER_POD} -address /run/anchor-containerd/containerd.sock`),
    proc(31, 30, 'pause', '/pause'),
  ];
  const owned = runtimeOwnedProcesses(procs, { podId: POD, containerIds: [CTR], ownPids: [21], workloadPids: [22], excludePids: [10] });
  t.deepEqual(owned.map((p) => p.pid), [20, 21]);
  t.is(describeProcesses(owned), 'containerd-shim ×1, pause ×1');
});

test('runtimeOwnedProcesses: a workload process that names the pod is still not counted, nor its children', (t) => {
  const procs = [proc(5, 1, 'sh', `sh -c echo ${POD}`), proc(6, 5, 'cat', `cat /${POD}`), proc(7, 1, 'x', `x ${POD}`)];
  t.deepEqual(
    runtimeOwnedProcesses(procs, { podId: POD, containerIds: [], ownPids: [], workloadPids: [5], excludePids: [7] }).map((p) => p.pid),
    [],
  );
});

// ---------------------------------------------------------------------------------------------------------------
// fixtures

const memory = (over: Partial<MemoryResult> = {}): MemoryResult => ({
  pods: 30,
  running: 30,
  daemonPid: 100,
  atStart: { rssKiB: 60 * 1024, pssKiB: 40 * 1024 },
  idle: { rssKiB: 70 * 1024, pssKiB: 50 * 1024, anonKiB: 30 * 1024 },
  withPods: { rssKiB: 75 * 1024, pssKiB: 55 * 1024 },
  memAvailableBeforeKiB: 1_000_000,
  memAvailableAfterKiB: 1_000_000 - 30 * 2048,
  perPod: Array.from({ length: 30 }, (_, i) => ({ podId: `p${i}`, pids: [1000 + i], processes: 'berth-shim ×1', rssKiB: i === 0 ? 400 : 200, pssKiB: 100 })),
  notes: [],
  ...over,
});

const fast: RuntimeRun = {
  label: 'berth',
  endpoint: 'unix:///tmp/b.sock',
  runtimeName: 'berth',
  runtimeVersion: '0.1.0',
  image: '127.0.0.1:5000/bench/busybox:v1',
  samples: {
    RunPodSandbox: [20, 30],
    CreateContainer: [10],
    StartContainer: [15, 15],
    StopContainer: [5],
    StopPodSandbox: [20],
    'from scratch → RUNNING': [50, 70],
    'from scratch → RUNNING, blkio class': [52, 74],
    'from scratch → RUNNING, writable-layer limit': [53, 71],
  },
  pull: { cold: [100, 120, 140], warm: [5, 6, 7], coldVerified: true, notes: [] },
  concurrent: [
    { pods: 20, wallMs: 1500, perPodMs: Array.from({ length: 20 }, (_, i) => 1000 + i * 25), daemonCpuMs: 750, teardownMs: 400, failures: [] },
    { pods: 50, wallMs: 4000, perPodMs: [3000, 4000], teardownMs: 900, failures: ['x'] },
  ],
  memory: memory(),
  errors: [],
};

const slow: RuntimeRun = {
  ...fast,
  label: 'containerd',
  endpoint: 'unix:///run/anchor-containerd/containerd.sock',
  runtimeName: 'containerd',
  runtimeVersion: '1.6.20',
  samples: { RunPodSandbox: [100], StartContainer: [40], 'from scratch → RUNNING': [200] },
  pull: { cold: [300], warm: [10], coldVerified: null, notes: ['layer digests unknown'] },
  concurrent: [{ pods: 20, wallMs: 3000, perPodMs: Array.from({ length: 20 }, (_, i) => 2000 + i * 50), teardownMs: 800, failures: [] }],
  memory: memory({ withPods: { rssKiB: 50 * 1024, pssKiB: 40 * 1024 }, perPod: [{ podId: 'q', pids: [1, 2], processes: 'containerd-shim ×1, pause ×1', rssKiB: 12 * 1024, pssKiB: 4 * 1024 }] }),
};

const result = (runs: RuntimeRun[]): BenchResult => ({
  startedAt: '2024-01-01T00:00:00.000Z',
  finishedAt: '2024-01-01T00:01:00.000Z',
  cycles: 2,
  host: { node: 'v20.0.0', os: 'Linux 6.1', arch: 'x64', cpus: 4, cpuModel: 'Test CPU', memTotalMiB: 1024 },
  runs,
});

// ---------------------------------------------------------------------------------------------------------------
// memory summary, metrics

test('memorySummary: per-pod mean and max, MemAvailable drop per running pod', (t) => {
  const s = memorySummary(memory());
  t.is(s.perPodRssKiB, (400 + 29 * 200) / 30);
  t.is(s.perPodPssKiB, 100);
  t.is(s.perPodRssMaxKiB, 400);
  t.is(s.processes, 'berth-shim ×1');
  t.is(s.memAvailableDropPerPodKiB, 2048);
  const none = memorySummary(memory({ perPod: [], memAvailableAfterKiB: undefined }));
  t.true(Number.isNaN(none.perPodRssKiB) && Number.isNaN(none.memAvailableDropPerPodKiB));
  t.is(none.processes, '');
});

test('headlineMetrics: pulls, each pods-at-once run, memory in MiB', (t) => {
  const m = Object.fromEntries(headlineMetrics(fast).map((x) => [x.name, x]));
  t.deepEqual(m['PullImage cold (median)'], { name: 'PullImage cold (median)', unit: 'ms', value: 120 });
  t.is(m['20 pods at once: all running']!.value, 1500);
  // A run with failures has no "all running" time.
  t.true(Number.isNaN(m['50 pods at once: all running']!.value));
  t.is(m['daemon RSS with 30 pods']!.value, 75);
  t.is(m['host MemAvailable drop per pod']!.value, 2);
  t.deepEqual(headlineMetrics({ ...fast, pull: undefined, concurrent: [], memory: undefined }), []);
});

// ---------------------------------------------------------------------------------------------------------------
// targets

test('evaluateTargets: every target of the issue, met when ≤ the limit', (t) => {
  const byId = Object.fromEntries(evaluateTargets(fast).map((r) => [r.id, r]));
  t.deepEqual(Object.keys(byId), TARGETS.map((d) => d.id));
  t.is(Object.keys(byId).length, 15);
  t.like(byId.writableLayerCost, { value: 2, met: true, limit: 5, basis: 'median of 2, less plain\'s median of 2' });
  t.like(byId.bandwidthCost, { value: null, met: null });
  t.like(byId.fromScratch, { value: 60, met: true, limit: 60, unit: 'ms', basis: 'median of 2' });
  t.like(byId.blkioClassAdds, { value: 3, met: true, limit: 5, unit: 'ms', basis: 'median of 2, less plain\'s median of 2' });
  t.like(byId.RunPodSandbox, { value: 25, met: true });
  t.like(byId.StartContainer, { value: 15, met: true }); // equal to the limit is met
  t.like(byId.StopContainer, { value: 5, met: true });
  t.like(byId.StopPodSandbox, { value: 20, met: true });
  t.like(byId.podRss, { unit: 'MiB', met: true });
  t.is(byId.podRss!.value, (400 + 29 * 200) / 30 / 1024);
  t.like(byId.podPss, { value: 100 / 1024, met: true });
  t.like(byId.daemonRss, { value: 75, met: true, basis: '30 pods running' });
  t.like(byId.concurrent20, { value: 1500, met: true, limit: 2000 });
  t.like(byId.relist100, { value: null, met: null, basis: 'not measured' });
  t.like(byId.execFirstByte, { value: null, met: null, basis: 'not measured' });
  t.like(byId.metricsScrapeCpu, { value: null, met: null, basis: 'not measured' });
});

test('evaluateTargets: not met, and not measured when the run lacks the figure', (t) => {
  const byId = Object.fromEntries(evaluateTargets(slow).map((r) => [r.id, r]));
  t.like(byId.RunPodSandbox, { value: 100, met: false });
  t.like(byId.StopContainer, { value: null, met: null, basis: 'no StopContainer samples' });
  t.like(byId.podRss, { value: 12, met: false });
  t.like(byId.concurrent20, { value: 3000, met: false });
  const quick = Object.fromEntries(
    evaluateTargets({
      ...fast,
      memory: memory({ pods: 3, running: 3 }),
      concurrent: [{ pods: 5, wallMs: 100, perPodMs: [1], teardownMs: 1, failures: [] }],
    }).map((r) => [r.id, r]),
  );
  t.like(quick.daemonRss, { value: 75, basis: 'measured with 3 pods, not 30', met: null });
  t.like(quick.concurrent20, { value: null, met: null });
  const failed = evaluateTargets({ ...fast, concurrent: [{ pods: 20, wallMs: 100, perPodMs: [1], teardownMs: 1, failures: ['boom'] }] });
  t.like(failed.find((r) => r.id === 'concurrent20'), { value: null, met: null, basis: '1 of 20 pods failed' });
  const bare = evaluateTargets({ ...fast, samples: {}, memory: undefined, concurrent: [] });
  t.true(bare.every((r) => r.value === null && r.met === null));
});

test('targetsTable: limit, value, status, basis, and the other runtime for reference', (t) => {
  const md = targetsTable(fast, slow);
  const lines = md.trim().split('\n');
  t.is(lines[0], '| target | limit | berth | status | basis | containerd |');
  // the 15 targets, then the 4 stated against the other runtime
  t.is(lines.length, 2 + 15 + 4);
  t.true(md.includes('| RunPodSandbox (median) | ≤ 30 ms | 25.00 | met | median of 2 | 100.00 |'));
  t.true(md.includes('| StopContainer, process exits on SIGTERM (median) | ≤ 15 ms | 5.00 | met | median of 1 | – |'));
  t.true(md.includes('| runtime-owned PSS per pod (mean) | ≤ 0.3 MiB | 0.098 | met | mean over 30 pods | 4.000 |'));
  t.true(md.includes('| 20 pods started at once, all running | ≤ 2000 ms | 1500.00 | met | wall time | 3000.00 |'));
  t.false(targetsTable(fast).includes('containerd'));
  t.true(targetsTable(slow).includes('NOT MET'));
});

// ---------------------------------------------------------------------------------------------------------------
// tables and JSON

test('ratios only between a non-negative value and a positive base', (t) => {
  t.is(formatRatio(-1, 2), '–');
  t.is(formatRatio(1, -2), '–');
  t.is(formatRatio(0, 2), '0.00×');
});

test('formatMiB: 3 decimals below 10 MiB, 1 above', (t) => {
  t.is(formatMiB(0.1234), '0.123');
  t.is(formatMiB(75.04), '75.0');
  t.is(formatMiB(NaN), '–');
});

test('headlineComparisonTable: each metric with both values and the ratio', (t) => {
  const md = headlineComparisonTable(fast, slow);
  t.true(md.startsWith('| measure | unit | berth | containerd | containerd/berth |\n'));
  t.true(md.includes('| PullImage cold (median) | ms | 120.00 | 300.00 | 2.50× |'));
  t.true(md.includes('| 20 pods at once: all running | ms | 1500.00 | 3000.00 | 2.00× |'));
  t.true(md.includes('| 50 pods at once: all running | ms | – | – | – |'));
  t.true(md.includes('| runtime-owned RSS per pod | MiB | 0.202 | 12.0 | 59.46× |'));
});

test('renderTables: per-runtime pull, pods-at-once and memory sections, comparison and targets', (t) => {
  const md = renderTables(result([fast, slow]));
  t.true(md.includes('PullImage (cold: after RemoveImage; layer files checked gone before each cold pull)'));
  t.true(md.includes('PullImage (cold: after RemoveImage; layers on disk not checked)'));
  t.true(md.includes('\n- layer digests unknown\n'));
  t.true(md.includes('| 20 | 1500.00 | 1237.50 | 1450.00 | 1475.00 | 750.00 | 400.00 | 0 |'));
  t.true(md.includes('| 50 | 4000.00 | 3500.00 | 4000.00 | 4000.00 | – | 900.00 | 1 |'));
  t.true(md.includes('- 50 pods: x'));
  t.true(md.includes('| daemon with 30 pods | 75.0 | 55.0 | – |'));
  t.true(md.includes('| daemon idle (no pods) | 70.0 | 50.0 | 30.0 |'));
  t.true(md.includes('| runtime-owned per pod (mean of 30) | 0.202 | 0.098 |  |'));
  t.true(md.includes('| runtime-owned per pod (max) | 0.391 | 0.098 |  |'));
  t.true(md.includes('| host MemAvailable drop per pod | 2.000 |  |  |'));
  t.true(md.includes('- runtime processes per pod: berth-shim ×1'));
  t.true(md.includes('- runtime processes per pod: containerd-shim ×1, pause ×1'));
  t.true(md.includes('### containerd vs berth'));
  t.true(md.includes('### targets (berth; reported, not asserted)'));
  t.true(md.indexOf('### targets') > md.indexOf('### containerd vs berth'));
  const withErrors = renderTables(result([{ ...fast, errors: ['memory: boom'] }]));
  t.true(withErrors.includes('Errors:\n\n- memory: boom'));
});

test('toJson: every measurement per run, targets, metric comparison; no NaN anywhere', (t) => {
  const json = toJson(result([fast, slow]));
  const text = JSON.stringify(json);
  t.false(text.includes('NaN'));
  t.deepEqual(JSON.parse(text), json);
  const [b] = json.runs as Record<string, any>[];
  t.deepEqual(b!.pull.warm, { n: 3, min: 5, median: 6, p95: 7, max: 7, samples: [5, 6, 7] });
  t.is(b!.pull.coldVerified, true);
  t.is(b!.concurrent.length, 2);
  t.like(b!.concurrent[0], { pods: 20, wallMs: 1500, daemonCpuMs: 750, teardownMs: 400, failures: [] });
  t.is(b!.concurrent[1].daemonCpuMs, null);
  t.like(b!.concurrent[0].perPod, { n: 20, median: 1237.5, p95: 1450 });
  t.like(b!.memory, { unit: 'KiB', pods: 30, running: 30, daemonPid: 100 });
  t.deepEqual(b!.memory.withPods, { rssKiB: 75 * 1024, pssKiB: 55 * 1024 });
  t.deepEqual(b!.memory.perPod.mean, { rssKiB: 206.667, pssKiB: 100 });
  t.is(b!.memory.perPod.pods.length, 30);
  t.deepEqual(b!.memory.memAvailable, { beforeKiB: 1_000_000, afterKiB: 1_000_000 - 61440, dropPerPodKiB: 2048 });
  t.is(b!.targets.length, 15);
  t.deepEqual(json.targets, b!.targets);
  t.like((json.targets as unknown[])[0], { id: 'fromScratch', value: 60, met: true });
  const metrics = (json.comparison as Record<string, any>).metrics;
  t.deepEqual(metrics['20 pods at once: all running'], { unit: 'ms', base: 1500, other: 3000, ratio: 2 });
  t.deepEqual(metrics['50 pods at once: all running'], { unit: 'ms', base: null, other: null, ratio: null });
  const bare = toJson(result([{ ...fast, pull: undefined, memory: undefined, concurrent: [] }]));
  const r0 = (bare.runs as Record<string, unknown>[])[0]!;
  t.is(r0.pull, null);
  t.is(r0.memory, null);
  t.is(r0.relist, null);
  t.false(JSON.stringify(bare).includes('NaN'));
});

// ---------------------------------------------------------------------------------------------------------------
// SVG

/** Tags balance (a tiny well-formedness check: no parser dependency). */
function balanced(svg: string): boolean {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    const [, close, name, self] = m;
    if (self) continue;
    if (close) {
      if (stack.pop() !== name) return false;
    } else stack.push(name!);
  }
  return stack.length === 0;
}

test('log axis: decades around the data, 1-2-5 ticks, monotonic positions', (t) => {
  t.deepEqual(logDomain([3, 40, 150]), [1, 1000]);
  t.deepEqual(logDomain([0.2, 0.9]), [0.1, 1]);
  t.deepEqual(logDomain([10]), [10, 100]);
  t.deepEqual(logDomain([0, -1]), [1, 10]);
  t.deepEqual(logTicks(1, 100), [1, 2, 5, 10, 20, 50, 100]);
  t.deepEqual(logTicks(0.1, 1), [0.1, 0.2, 0.5, 1]);
  t.is(logX(1, 1, 100, 0, 200), 0);
  t.is(logX(10, 1, 100, 0, 200), 100);
  t.is(logX(100, 1, 100, 0, 200), 200);
  t.is(logX(0, 1, 100, 0, 200), 0);
  t.true(logX(3, 1, 100, 0, 200) < logX(4, 1, 100, 0, 200));
});

test('escapeXml', (t) => {
  t.is(escapeXml(`a<b>&"c'`), 'a&lt;b&gt;&amp;&quot;c&apos;');
});

test('renderSvg: a box per row and runtime, legend, escaped labels, balanced tags', (t) => {
  const svg = renderSvg(result([fast, slow]));
  t.true(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
  t.true(svg.trimEnd().endsWith('</svg>'));
  t.true(balanced(svg));
  const boxes = [...svg.matchAll(/<g class="box" data-run="([^"]+)" data-row="([^"]+)">/g)].map((m) => `${m[1]}/${m[2]}`);
  // berth: 8 rows (two controls) + 2 pulls + 2 pods-at-once; containerd: 3 rows + 2 pulls + 1 pods-at-once.
  t.is(boxes.filter((b) => b.startsWith('berth/')).length, 12);
  t.is(boxes.filter((b) => b.startsWith('containerd/')).length, 6);
  t.true(boxes.includes('berth/from scratch → RUNNING'));
  t.true(boxes.includes('containerd/20 pods at once: per pod'));
  t.true(svg.includes('>berth</text>') && svg.includes('>containerd</text>'));
  const odd = renderSvg(result([{ ...fast, label: 'a<b>', samples: { 'x&y': [1, 2, 3] }, pull: undefined, concurrent: [] }]));
  t.true(odd.includes('a&lt;b&gt;') && odd.includes('x&amp;y'));
  t.false(odd.includes('a<b>'));
  t.true(balanced(odd));
  const empty = renderSvg(result([{ ...fast, samples: {}, pull: undefined, concurrent: [] }]));
  t.true(empty.includes('no samples'));
  t.true(balanced(empty));
});

// ---------------------------------------------------------------------------------------------------------------
// helpers of the phases

test('findNamed: files or directories named by a digest, down to a depth', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-find-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const hex = 'f'.repeat(64);
  await fs.mkdir(path.join(root, 'content/blobs/sha256'), { recursive: true });
  await fs.writeFile(path.join(root, 'content/blobs/sha256', hex), '');
  await fs.mkdir(path.join(root, 'layers', `.deleting-${'e'.repeat(64)}-1234`), { recursive: true });
  t.deepEqual(await findNamed(root, new Set([hex]), 4), [path.join(root, 'content/blobs/sha256', hex)]);
  t.deepEqual(await findNamed(root, new Set([hex]), 3), []);
  t.deepEqual(await findNamed(root, new Set(['e'.repeat(64)]), 2), [path.join(root, 'layers', `.deleting-${'e'.repeat(64)}-1234`)]);
  t.deepEqual(await findNamed(path.join(root, 'missing'), new Set([hex]), 4), []);
});

test('mapLimit: at most `limit` in flight, results in order, failures settled', async (t) => {
  let inFlight = 0;
  let peak = 0;
  const results = await mapLimit([1, 2, 3, 4, 5, 6], 2, async (n) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await new Promise((r) => setTimeout(r, 5));
    inFlight--;
    if (n === 4) throw new Error('four');
    return n * 10;
  });
  t.is(peak, 2);
  t.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message)), [10, 20, 30, 'four', 50, 60]);
});

test('pods at once: per-step medians and p95s in a table and in the JSON', (t) => {
  const run: RuntimeRun = {
    ...fast,
    concurrent: [{ pods: 2, wallMs: 30, perPodMs: [20, 30], stages: { RunPodSandbox: [10, 20], CreateContainer: [5, 6] }, teardownMs: 5, failures: [] }],
  };
  const md = renderTables(result([run]));
  t.true(md.includes('| pods | RunPodSandbox | CreateContainer |'));
  t.true(md.includes('| 2 | 15.00 / 20.00 | 5.50 / 6.00 |'));
  const c = ((toJson(result([run])).runs as Record<string, any>[])[0]!.concurrent as Record<string, any>[])[0]!;
  t.deepEqual(c.stages.RunPodSandbox, { n: 2, min: 10, median: 15, p95: 20, max: 20, samples: [10, 20] });
  t.false(renderTables(result([fast])).includes('time in each step'));
});
