import test from 'ava';
import { collectInside, insideRows, parseTimings } from '../../bench/inside.js';
import type { BenchResult, RuntimeRun } from '../../bench/model.js';
import { insideTable, renderTables, toJson } from '../../bench/report.js';

const line = (fields: Record<string, unknown>) => JSON.stringify({ time: '2024-01-01T00:00:00.000Z', level: 'info', ...fields });

const pod = (ms: number, phases: Record<string, number>) => line({ msg: 'pod sandbox running', pod: 'p', name: 'n', namespace: 'default', ms, phases });
const ctr = (ms: number, phases?: Record<string, number>) => line({ msg: 'container created', name: 'c', image: 'sha256:x', ms, ...(phases ? { phases } : {}) });

const LOG = [
  'node: warning: something that is not JSON',
  line({ msg: 'berth serving', socket: '/tmp/s' }),
  pod(40, { networkPlan: 2, namespaces: 30, cgroup: 5, network: 38 }),
  ctr(20, { prepare: 3, cgroup: 1, spec: 2, shim: 13, record: 1 }),
  line({ msg: 'container started', pod: 'p', container: 'c' }),
  '',
  '{"truncated":',
  'null',
  '[1,2]',
  pod(60, { networkPlan: 4, namespaces: 50, cgroup: 7, network: 58 }),
  ctr(30, { prepare: 5, cgroup: 2, spec: 4, shim: 18 }),
  line({ msg: 'rpc', level: 'debug', rpc: 'Version', ms: 1 }),
  line({ msg: 'image pulled', id: 'sha256:x', layers: 1, ms: 'fast' }),
  line({ msg: 'odd phases', ms: 7, phases: { good: 1, bad: 'x', inf: null, nested: { a: 1 } } }),
  line({ msg: 'array phases', ms: 8, phases: [1, 2] }),
];

test('parseTimings: info lines with a numeric ms; non-JSON, non-objects, debug lines and missing phases are fine', (t) => {
  const timings = parseTimings(LOG);
  t.deepEqual(
    timings.map((x) => x.msg),
    ['pod sandbox running', 'container created', 'pod sandbox running', 'container created', 'odd phases', 'array phases'],
  );
  t.deepEqual(timings[0], { msg: 'pod sandbox running', ms: 40, phases: { networkPlan: 2, namespaces: 30, cgroup: 5, network: 38 } });
  t.deepEqual(timings[4]!.phases, { good: 1 });
  t.deepEqual(timings[5]!.phases, {});
  t.deepEqual(parseTimings([ctr(9)]), [{ msg: 'container created', ms: 9, phases: {} }]);
  t.deepEqual(parseTimings(['not json', '', '{}', line({ msg: 'no ms' })]), []);
});

test('collectInside: samples per message in first-seen order; a phase missing from some lines has fewer samples', (t) => {
  const inside = collectInside(LOG);
  t.deepEqual(Object.keys(inside), ['pod sandbox running', 'container created', 'odd phases', 'array phases']);
  t.deepEqual(inside['pod sandbox running'], {
    ms: [40, 60],
    phases: { networkPlan: [2, 4], namespaces: [30, 50], cgroup: [5, 7], network: [38, 58] },
  });
  t.deepEqual(inside['container created']!.ms, [20, 30]);
  t.deepEqual(inside['container created']!.phases.record, [1]);
  t.deepEqual(Object.keys(inside['container created']!.phases), ['prepare', 'cgroup', 'spec', 'shim', 'record']);
  t.deepEqual(collectInside([]), {});
});

test('collectInside: a message or phase named __proto__ is an ordinary entry', (t) => {
  const inside = collectInside([line({ msg: '__proto__', ms: 1, phases: JSON.parse('{"__proto__": 2}') })]);
  t.deepEqual(Object.keys(inside), ['__proto__']);
  t.deepEqual(inside['__proto__']!.phases['__proto__'], [2]);
});

test('insideRows: total then each phase, with median, p95 and n', (t) => {
  const rows = insideRows(collectInside(LOG.concat(pod(200, { networkPlan: 9 }))));
  const byKey = new Map(rows.map((r) => [`${r.msg}/${r.phase}`, r.summary]));
  t.deepEqual(
    rows.slice(0, 5).map((r) => r.phase),
    ['total', 'networkPlan', 'namespaces', 'cgroup', 'network'],
  );
  t.like(byKey.get('pod sandbox running/total'), { n: 3, median: 60, p95: 200 });
  t.like(byKey.get('pod sandbox running/networkPlan'), { n: 3, median: 4, p95: 9 });
  t.like(byKey.get('pod sandbox running/namespaces'), { n: 2, median: 40, p95: 50 });
  t.like(byKey.get('container created/shim'), { n: 2, median: 15.5, p95: 18 });
  t.like(byKey.get('container created/record'), { n: 1, median: 1, p95: 1 });
  t.like(byKey.get('array phases/total'), { n: 1, median: 8 });
  t.false(byKey.has('array phases/0'));
});

test('insideTable: one row per message and phase, median and p95 in ms', (t) => {
  const md = insideTable(collectInside([pod(40, { namespaces: 30 }), pod(60, { namespaces: 50 }), ctr(20, { shim: 13 })]));
  t.is(
    md,
    'Inside berth during the sequential cycles (from its log; median / p95 ms):\n\n' +
      '| message | phase | n | median ms | p95 ms |\n' +
      '|:---|:---|---:|---:|---:|\n' +
      '| pod sandbox running | total | 2 | 50.00 | 60.00 |\n' +
      '| pod sandbox running | namespaces | 2 | 40.00 | 50.00 |\n' +
      '| container created | total | 1 | 20.00 | 20.00 |\n' +
      '| container created | shim | 1 | 13.00 | 13.00 |\n',
  );
  t.regex(insideTable({}), /no timed log lines/);
  t.true(insideTable(collectInside([line({ msg: 'a | b', ms: 1 })])).includes('| a \\| b | total |'));
});

const run = (over: Partial<RuntimeRun> = {}): RuntimeRun => ({
  label: 'berth',
  endpoint: 'unix:///tmp/b.sock',
  image: 'img',
  samples: { RunPodSandbox: [20, 30] },
  concurrent: [],
  errors: [],
  ...over,
});

const result = (runs: RuntimeRun[]): BenchResult => ({
  startedAt: '2024-01-01T00:00:00.000Z',
  finishedAt: '2024-01-01T00:01:00.000Z',
  cycles: 2,
  host: { node: 'v20.0.0', os: 'Linux 6.1', arch: 'x64', cpus: 4, cpuModel: 'Test CPU' },
  runs,
});

test('report: the inside table follows berth\'s sequential cycles, and only for a run that has it', (t) => {
  const inside = collectInside([pod(40, { namespaces: 30 }), pod(60, { namespaces: 50 })]);
  const md = renderTables(result([run({ inside }), run({ label: 'containerd' })]));
  const at = md.indexOf('Inside berth during the sequential cycles');
  t.true(at > md.indexOf('Sequential cycles:') && at < md.indexOf('### containerd'));
  t.is(md.split('Inside berth').length, 2);
  t.true(md.includes('| pod sandbox running | namespaces | 2 | 40.00 | 50.00 |'));
  t.false(renderTables(result([run()])).includes('Inside berth'));
});

test('toJson: inside per message, total and phases as distributions; absent without it', (t) => {
  const inside = collectInside([pod(40, { namespaces: 30 }), pod(60, { namespaces: 50 })]);
  const json = toJson(result([run({ inside }), run({ label: 'containerd' })]));
  t.is(json.schema, 'berth-bench/2');
  const [berth, other] = json.runs as Record<string, any>[];
  t.deepEqual(berth!.inside, {
    'pod sandbox running': {
      ms: { n: 2, min: 40, median: 50, p95: 60, max: 60, samples: [40, 60] },
      phases: { namespaces: { n: 2, min: 30, median: 40, p95: 50, max: 50, samples: [30, 50] } },
    },
  });
  t.false('inside' in other!);
});
