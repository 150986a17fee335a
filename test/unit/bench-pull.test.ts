import test from 'ava';
import { gunzipSync } from 'node:zlib';
import { bigLayerEntries, BIG_IMAGE_LAYERS, seededBytes, seededText } from '../../bench/big-image.js';
import { headlineMetrics, type RuntimeRun } from '../../bench/model.js';
import { pullLoadRatio, renderTables } from '../../bench/report.js';
import { layer } from '../helpers/images.js';

test('the large image content is seeded: the same bytes every run, different per seed', (t) => {
  t.deepEqual(seededBytes('a', 1000), seededBytes('a', 1000));
  t.notDeepEqual(seededBytes('a', 1000), seededBytes('b', 1000));
  t.deepEqual(seededText('x', 5000), seededText('x', 5000));
  t.is(seededText('x', 5000).length, 5000);
});

test('a large-image layer holds incompressible and compressible files and gzips to about 11 MiB', async (t) => {
  const entries = bigLayerEntries(0);
  const files = entries.filter((e) => e.type === 'file');
  t.is(files.length, 405);
  t.true(entries.some((e) => e.type === 'symlink') && entries.some((e) => e.type === 'hardlink'));
  const l = await layer(entries, 'gzip');
  const mib = l.size / (1024 * 1024);
  t.true(mib > 9 && mib < 14, `layer of ${mib.toFixed(1)} MiB`);
  t.true(gunzipSync(l.bytes).length > l.size * 1.3, 'the text files compress');
  t.is(BIG_IMAGE_LAYERS, 5);
  // Layers differ, so none is shared between them.
  t.notDeepEqual((await layer(bigLayerEntries(1), 'gzip')).digest, l.digest);
});

function runWith(idle: number[], loaded: number[]): RuntimeRun {
  return {
    label: 'berth',
    endpoint: 'unix:///x',
    image: 'img',
    samples: {},
    concurrent: [],
    errors: [],
    bigPull: { image: 'reg/bench/big:v1', layers: 5, mib: 56.2, cold: [1500, 1700, 1600], warm: [], coldVerified: true, notes: [] },
    pullLoad: { idle, loaded, idleProbe: [1, 2, 3], loadedProbe: [2, 4, 40], pulls: 2, pullMs: [1800, 1900] },
  };
}

test('pull under load: the p95 ratio, the headline rows and the section', (t) => {
  const run = runWith([10, 20, 30, 40], [15, 25, 35, 60]);
  t.is(pullLoadRatio(run.pullLoad!), 1.5);
  const rows = new Map(headlineMetrics(run).map((m) => [m.name, m.value]));
  t.is(rows.get('PullImage cold, 5-layer 56 MiB gzip image (median)'), 1600);
  t.is(rows.get('pod start → RUNNING without a pull (p95)'), 40);
  t.is(rows.get('pod start → RUNNING during a cold pull (p95)'), 60);
  t.is(rows.get('Version RPC during a cold pull (max)'), 40);
  const text = renderTables({ startedAt: '', finishedAt: '', cycles: 0, host: { cpus: 2, memTotalKiB: 1, kernel: 'k', node: 'v' } as never, runs: [run] });
  t.regex(text, /5 gzip layers, 56\.2 MiB/);
  t.regex(text, /p95 during a pull \/ without: 1\.50× \(target ≤ 1\.2\)/);
});
