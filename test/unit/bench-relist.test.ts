import test from 'ava';
import {
  emptyRelistCalls,
  headlineMetrics,
  MAX_MISMATCHES,
  RELIST,
  RELIST_CALLS,
  relistProblems,
  relistSummary,
  type BenchResult,
  type RelistResult,
  type RuntimeRun,
} from '../../bench/model.js';
import { headlineComparisonTable, relistTable, renderTables, targetsTable, toJson } from '../../bench/report.js';
import { renderSvg } from '../../bench/svg.js';
import { evaluateTargets, RELIST_TARGET_PODS } from '../../bench/targets.js';

// The relist phase's pure parts: its summary, why it failed, its table, JSON, comparison rows and its target.

const relist = (over: Partial<RelistResult> = {}): RelistResult => {
  const calls = emptyRelistCalls();
  calls[RELIST].push(4, 2, 3, 5);
  calls['ListPodSandbox {} (in the relist)'].push(1, 1, 2, 2);
  calls['ListContainers {} (in the relist)'].push(3, 2, 3, 4);
  calls['ListContainers {io.kubernetes.pod.uid} (one pod)'].push(0.5, 0.7);
  calls['ListPodSandbox {state: SANDBOX_READY}'].push(1.5, 1.1);
  calls['PodSandboxStatus + ContainerStatus (one pod)'].push(0.8, 0.6);
  return { pods: 100, running: 100, relists: 4, calls, daemonCpuMs: 20, listed: { sandboxes: 100, containers: 100 }, mismatches: [], failures: [], ...over };
};

const run = (over: Partial<RuntimeRun> = {}): RuntimeRun => ({
  label: 'berth',
  endpoint: 'unix:///tmp/b.sock',
  image: 'img',
  samples: {},
  concurrent: [],
  errors: [],
  relist: relist(),
  ...over,
});

const result = (runs: RuntimeRun[]): BenchResult => ({
  startedAt: '2024-01-01T00:00:00.000Z',
  finishedAt: '2024-01-01T00:01:00.000Z',
  cycles: 2,
  host: { node: 'v20.0.0', os: 'Linux 6.1', arch: 'x64', cpus: 4, cpuModel: 'Test CPU' },
  runs,
});

const target = (r: RuntimeRun) => evaluateTargets(r).find((x) => x.id === 'relist100')!;

test('relistSummary: the relist distribution, CPU per relist, whether every list held every pod', (t) => {
  const s = relistSummary(relist());
  t.like(s.relist, { n: 4, median: 3.5, p95: 5 });
  t.is(s.cpuPerRelistMs, 5);
  t.true(s.countsMatched);
  t.true(Number.isNaN(relistSummary(relist({ daemonCpuMs: undefined })).cpuPerRelistMs));
  t.true(Number.isNaN(relistSummary(relist({ relists: 0 })).cpuPerRelistMs));
  t.false(relistSummary(relist({ mismatches: ['ListContainers {} returned 99 items'] })).countsMatched);
  t.false(relistSummary(relist({ listed: { sandboxes: 100, containers: 0 } })).countsMatched);
  t.false(relistSummary(relist({ running: 0 })).countsMatched);
  // Other pods on the runtime are listed too: not a mismatch.
  t.true(relistSummary(relist({ listed: { sandboxes: 103, containers: 107 } })).countsMatched);
});

test('relistProblems: pods that did not start, wrong lists, pods not removed', (t) => {
  t.deepEqual(relistProblems(relist()), []);
  t.deepEqual(relistProblems(relist({ running: 98, failures: ['pod failed to start: boom', 'pod failed to start: boom'] })), ['2 of 100 pods did not start: pod failed to start: boom']);
  t.deepEqual(relistProblems(relist({ mismatches: ['a', 'b'] })), ['2 wrong list results, first: a']);
  const capped = Array.from({ length: MAX_MISMATCHES }, (_, i) => `m${i}`);
  t.deepEqual(relistProblems(relist({ mismatches: capped })), [`${MAX_MISMATCHES}+ wrong list results, first: m0`]);
  t.deepEqual(relistProblems(relist({ failures: ['cleanup: pod x: gone'] })), ['1 pods not removed, first: cleanup: pod x: gone']);
});

test('relistTable: a row per call, the daemon CPU per relist, and what the lists returned', (t) => {
  const md = relistTable(relist());
  const lines = md.split('\n');
  t.is(lines[0], "Relist with 100 pods (kubelet's PLEG: ListPodSandbox + ListContainers every second):");
  t.is(lines[2], '| call | n | median ms | p95 ms |');
  t.true(md.includes('| relist: ListPodSandbox + ListContainers together | 4 | 3.50 | 5.00 |'));
  t.true(md.includes('| ListContainers {} (in the relist) | 4 | 3.00 | 4.00 |'));
  t.true(md.includes('| ListContainers {io.kubernetes.pod.uid} (one pod) | 2 | 0.60 | 0.70 |'));
  t.true(md.includes('| PodSandboxStatus + ContainerStatus (one pod) | 2 | 0.70 | 0.80 |'));
  t.true(md.includes('| daemon CPU per relist | 4 | 5.00 |  |'));
  t.is(lines.filter((l) => l.startsWith('| ')).length, 1 + RELIST_CALLS.length + 1);
  t.true(md.includes('- daemon CPU 20.00 ms over 4 relists'));
  t.true(md.includes('- unfiltered lists returned up to 100 sandboxes and 100 containers; every list held all 100 pods'));

  const warmed = relistTable(relist({ warmup: 1000, cold: { relists: 20, daemonCpuMs: 40 } }));
  t.true(warmed.includes('| daemon CPU per relist, the first 20 of the phase | 20 | 2.00 |  |'), 'the cold relists have a row of their own');
  t.true(warmed.includes('timed after 1001 untimed ones'));

  const bad = relistTable(relist({ running: 5, pods: 6, daemonCpuMs: undefined, mismatches: ['ListPodSandbox {} returned 4 items'], failures: ['pod failed to start: x'] }));
  t.true(bad.startsWith('Relist with 5 pods'));
  t.true(bad.includes('| daemon CPU per relist | 4 | – |  |'));
  t.true(bad.includes('- daemon CPU not measured'));
  t.true(bad.includes('1 wrong list results\n- ListPodSandbox {} returned 4 items\n- pod failed to start: x'));
});

test('renderTables and SVG: the relist section after memory; no section without the phase', (t) => {
  const md = renderTables(result([run()]));
  t.true(md.includes("Relist with 100 pods (kubelet's PLEG"));
  t.false(renderTables(result([run({ relist: undefined })])).includes('Relist with'));
  t.true(renderSvg(result([run()])).includes('data-row="relist with 100 pods"'));
});

test('headline comparison: relist median and daemon CPU per relist side by side', (t) => {
  const m = Object.fromEntries(headlineMetrics(run()).map((x) => [x.name, x]));
  t.deepEqual(m['relist with 100 pods (median)'], { name: 'relist with 100 pods (median)', unit: 'ms', value: 3.5 });
  t.deepEqual(m['daemon CPU per relist with 100 pods'], { name: 'daemon CPU per relist with 100 pods', unit: 'ms', value: 5 });
  const other = run({ label: 'containerd', relist: relist({ daemonCpuMs: 80, calls: { ...emptyRelistCalls(), [RELIST]: [7, 7] } }) });
  const md = headlineComparisonTable(run(), other);
  t.true(md.includes('| relist with 100 pods (median) | ms | 3.50 | 7.00 | 2.00× |'));
  t.true(md.includes('| daemon CPU per relist with 100 pods | ms | 5.00 | 20.00 | 4.00× |'));
  t.deepEqual(headlineMetrics(run({ relist: undefined })), []);
});

test('toJson: the relist measurements with every sample, no NaN', (t) => {
  const json = toJson(result([run({ relist: relist({ daemonCpuMs: undefined }) })]));
  const text = JSON.stringify(json);
  t.false(text.includes('NaN'));
  const r = (json.runs as Record<string, any>[])[0]!.relist;
  t.like(r, { pods: 100, running: 100, relists: 4, daemonCpuMs: null, cpuPerRelistMs: null, countsMatched: true, mismatches: [], failures: [] });
  t.deepEqual(r.listed, { sandboxes: 100, containers: 100 });
  t.deepEqual(Object.keys(r.calls), [...RELIST_CALLS]);
  t.deepEqual(r.calls[RELIST], { n: 4, min: 2, median: 3.5, p95: 5, max: 5, samples: [4, 2, 3, 5] });
  t.is((toJson(result([run()])).runs as Record<string, any>[])[0]!.relist.cpuPerRelistMs, 5);
});

test(`target: relist with ${RELIST_TARGET_PODS} pods, median ≤ 100 ms`, (t) => {
  t.like(target(run()), {
    name: 'relist (ListPodSandbox + ListContainers) with 100 pods, median',
    limit: 100,
    unit: 'ms',
    value: 3.5,
    met: true,
    basis: 'median of 4, 100 pods',
  });
  const slow = relist({ calls: { ...emptyRelistCalls(), [RELIST]: [150, 150] } });
  t.like(target(run({ relist: slow })), { value: 150, met: false });
  t.like(target(run({ relist: undefined })), { value: null, met: null, basis: 'not measured' });
  t.like(target(run({ relist: relist({ running: 0, calls: emptyRelistCalls() }) })), { value: null, met: null, basis: 'none of 100 pods started' });
});

test('target: fewer pods than 100, or lists that missed pods, show the value but are not evaluated', (t) => {
  const quick = run({ relist: relist({ pods: 5, running: 5, listed: { sandboxes: 5, containers: 5 } }) });
  t.like(target(quick), { value: 3.5, met: null, basis: 'measured with 5 pods, not 100' });
  const md = targetsTable(quick);
  t.true(md.includes('| relist (ListPodSandbox + ListContainers) with 100 pods, median | ≤ 100 ms | 3.50 | not evaluated | measured with 5 pods, not 100 |'));
  // 98 of 100 started: still fewer than the target names.
  t.like(target(run({ relist: relist({ running: 98, listed: { sandboxes: 98, containers: 98 } }) })), { met: null, basis: 'measured with 98 pods, not 100' });
  t.like(target(run({ relist: relist({ mismatches: ['x'] }) })), { value: 3.5, met: null, basis: 'lists did not return every pod' });
  // More pods than 100: met proves the target, not met does not disprove it.
  const more = relist({ pods: 200, running: 200, listed: { sandboxes: 200, containers: 200 } });
  t.like(target(run({ relist: more })), { met: true, basis: 'median of 4, 200 pods' });
  t.like(target(run({ relist: { ...more, calls: { ...emptyRelistCalls(), [RELIST]: [150] } } })), { value: 150, met: null });
  t.true(targetsTable(run({ relist: undefined })).includes('| – | not measured | not measured |'));
  const json = toJson(result([quick]));
  t.like((json.targets as Record<string, unknown>[]).find((x) => x.id === 'relist100'), { value: 3.5, met: null });
});
