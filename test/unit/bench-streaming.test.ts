import test from 'ava';
import { headlineMetrics, type RuntimeRun, type ScrapeResult, type StreamingResult } from '../../bench/model.js';
import { formatRate, headlineComparisonTable, renderTables, scrapeTable, streamingTable, targetsTable, toJson } from '../../bench/report.js';
import { scrapeCoverage } from '../../bench/scrape.js';
import { evaluateRelativeTargets, evaluateTargets } from '../../bench/targets.js';

// The bench's streaming phase (exec first byte, port-forward throughput) and /metrics scrape: what the report makes
// of their measurements. Pure: the phases themselves run in test/integration/bench-quick.test.ts.

const streaming = (over: Partial<StreamingResult> = {}): StreamingResult => ({
  execRpc: [2, 3, 4],
  firstByte: [10, 12, 30],
  execDone: [11, 13, 31],
  forwardMiB: 64,
  uploadMiBps: [200, 250, 300],
  downloadMiBps: [100, 150],
  failures: [],
  ...over,
});

const scrape = (over: Partial<ScrapeResult> = {}): ScrapeResult => ({
  pods: 100,
  wallMs: [20, 25, 40],
  cpuPerScrapeMs: 18,
  bytes: 500_000,
  samples: 6000,
  containersSeen: 100,
  failures: [],
  ...over,
});

const berth: RuntimeRun = {
  label: 'berth',
  endpoint: 'unix:///tmp/b.sock',
  image: 'img',
  samples: {},
  concurrent: [],
  errors: [],
  streaming: streaming(),
  scrape: scrape(),
  relist: {
    pods: 100,
    running: 100,
    relists: 2,
    calls: {
      'relist: ListPodSandbox + ListContainers together': [],
      'ListPodSandbox {} (in the relist)': [],
      'ListContainers {} (in the relist)': [],
      'ListContainers {io.kubernetes.pod.uid} (one pod)': [],
      'ListPodSandbox {state: SANDBOX_READY}': [],
      'PodSandboxStatus + ContainerStatus (one pod)': [],
      'ListContainerStats {}': [5, 7],
      'ListPodSandboxStats {}': [9],
    },
    listed: { sandboxes: 100, containers: 100 },
    mismatches: [],
    failures: [],
  },
};

const containerd: RuntimeRun = {
  ...berth,
  label: 'containerd',
  streaming: streaming({ firstByte: [40], uploadMiBps: [100], downloadMiBps: [400] }),
  scrape: { pods: 100, wallMs: [], bytes: 0, samples: 0, containersSeen: 0, failures: [], unavailable: 'no /metrics endpoint in containerd' },
  relist: { ...berth.relist!, calls: { ...berth.relist!.calls, 'ListContainerStats {}': [20], 'ListPodSandboxStats {}': [3] } },
};

test('scrapeCoverage: samples are the non-comment lines; containers are the running ids a container_id label names', (t) => {
  const text = [
    '# HELP berth_container_cpu_seconds_total CPU',
    '# TYPE berth_container_cpu_seconds_total counter',
    'berth_container_cpu_seconds_total{namespace="default",pod="p",container="c",container_id="aaa"} 1.5',
    'berth_container_memory_bytes{container_id="aaa",pod="p"} 100',
    'berth_container_memory_bytes{pod="q",container_id="bbb"} 100',
    'berth_container_memory_bytes{pod="x",container_id="gone"} 1',
    'berth_container_memory_bytes{pod="y",not_container_id="ccc"} 1',
    'process_cpu_seconds_total 3',
    '',
  ].join('\n');
  t.deepEqual(scrapeCoverage(text, new Set(['aaa', 'bbb', 'ccc'])), { samples: 6, containersSeen: 2 });
  t.deepEqual(scrapeCoverage('', new Set(['aaa'])), { samples: 0, containersSeen: 0 });
});

test('streamingTable: exec latencies in ms, throughput in MiB/s with min and max and daemon CPU per MiB, failures listed', (t) => {
  const md = streamingTable(streaming({ failures: ['exec echo: no answer'], uploadCpuMsPerMiB: 1.234 }));
  t.true(md.includes('| exec of echo | n | median ms | p95 ms |'));
  t.true(md.includes('| Exec RPC (URL returned) | 3 | 3.00 | 4.00 |'));
  t.true(md.includes('| Exec → first stdout byte | 3 | 12.00 | 30.00 |'));
  t.true(md.includes('| Exec → exit status read | 3 | 13.00 | 31.00 |'));
  t.true(md.includes('| port-forward, one connection, 64 MiB | n | median MiB/s | min MiB/s | max MiB/s | daemon CPU ms/MiB |'));
  t.true(md.includes('| upload (until the pod counted every byte) | 3 | 250.0 | 200.0 | 300.0 | 1.23 |'));
  t.true(md.includes('| download (until EOF) | 2 | 125.0 | 100.0 | 150.0 | – |'));
  t.true(md.includes('\n- exec echo: no answer\n'));
  t.true(streamingTable(streaming({ uploadMiBps: [] })).includes('| upload (until the pod counted every byte) | 0 | – | – | – | – |'));
});

test('scrapeTable: wall time, daemon CPU per scrape, coverage; a runtime without the endpoint says so', (t) => {
  const md = scrapeTable(scrape({ failures: ['the scrape had series for 99 of the 100 running containers'] }));
  t.true(md.startsWith('/metrics scrape with 100 pods running:'));
  t.true(md.includes('| scrape wall time | 3 | 25.00 | 40.00 |'));
  t.true(md.includes('| daemon CPU per scrape | 3 | 18.00 |  |'));
  t.true(md.includes('- 500000 bytes, 6000 samples; series for 100 of the 100 running containers'));
  t.true(md.includes('- the scrape had series for 99 of the 100 running containers'));
  t.is(scrapeTable(containerd.scrape!), '/metrics scrape with 100 pods running:\n\nnot measured: no /metrics endpoint in containerd.\n');
});

test('formatRate: one decimal, a dash when missing', (t) => {
  t.is(formatRate(123.456), '123.5');
  t.is(formatRate(NaN), '–');
});

test('headlineMetrics and the comparison: first byte, throughput, scrape; the missing endpoint named in its cell', (t) => {
  const m = Object.fromEntries(headlineMetrics(berth).map((x) => [x.name, x]));
  t.like(m['Exec → first stdout byte of echo (median)'], { unit: 'ms', value: 12 });
  t.like(m['Exec → first stdout byte of echo (p95)'], { unit: 'ms', value: 30 });
  t.like(m['port-forward upload, one connection (64 MiB)'], { unit: 'MiB/s', value: 250 });
  t.like(m['port-forward download, one connection (64 MiB)'], { unit: 'MiB/s', value: 125 });
  t.like(m['/metrics scrape with 100 pods (median)'], { unit: 'ms', value: 25 });
  t.like(m['daemon CPU per /metrics scrape with 100 pods'], { unit: 'ms', value: 18 });
  const md = headlineComparisonTable(berth, containerd);
  t.true(md.includes('| Exec → first stdout byte of echo (median) | ms | 12.00 | 40.00 | 3.33× |'));
  t.true(md.includes('| port-forward upload, one connection (64 MiB) | MiB/s | 250.0 | 100.0 | 0.40× |'));
  t.true(md.includes('| port-forward download, one connection (64 MiB) | MiB/s | 125.0 | 400.0 | 3.20× |'));
  t.true(md.includes('| /metrics scrape with 100 pods (median) | ms | 25.00 | no /metrics endpoint in containerd | – |'));
  t.true(md.includes('| daemon CPU per /metrics scrape with 100 pods | ms | 18.00 | no /metrics endpoint in containerd | – |'));
});

test('targets: first byte ≤ 15 ms; scrape CPU ≤ 50 ms evaluated only with 100 pods all in the scrape', (t) => {
  const byId = (run: RuntimeRun) => Object.fromEntries(evaluateTargets(run).map((r) => [r.id, r]));
  t.like(byId(berth).execFirstByte, { value: 12, met: true, limit: 15, basis: 'median of 3' });
  t.like(byId(containerd).execFirstByte, { value: 40, met: false });
  t.like(byId(berth).metricsScrapeCpu, { value: 18, met: true, limit: 50, basis: 'mean of 3 scrapes, 100 pods' });
  t.like(byId({ ...berth, scrape: scrape({ cpuPerScrapeMs: 60 }) }).metricsScrapeCpu, { value: 60, met: false });
  t.like(byId({ ...berth, scrape: scrape({ pods: 5, containersSeen: 5 }) }).metricsScrapeCpu, { value: 18, met: null, basis: 'measured with 5 pods, not 100' });
  t.like(byId({ ...berth, scrape: scrape({ containersSeen: 90 }) }).metricsScrapeCpu, { met: null, basis: 'mean of 3 scrapes, 100 pods; only 90 containers in the scrape' });
  t.like(byId(containerd).metricsScrapeCpu, { value: null, met: null, basis: 'no /metrics endpoint in containerd' });
  t.like(byId({ ...berth, scrape: scrape({ cpuPerScrapeMs: undefined }) }).metricsScrapeCpu, { value: null, basis: 'daemon CPU unknown' });
});

test('relative targets: throughput at least the other runtime\'s, stats lists at most its time', (t) => {
  const byId = Object.fromEntries(evaluateRelativeTargets(berth, containerd).map((r) => [r.id, r]));
  t.like(byId.forwardUpload, { value: 250, limit: 100, atLeast: true, met: true, unit: 'MiB/s' });
  t.like(byId.forwardDownload, { value: 125, limit: 400, met: false });
  t.like(byId.ListContainerStats, { value: 6, limit: 20, atLeast: false, met: true });
  t.like(byId.ListPodSandboxStats, { value: 9, limit: 3, met: false });
  const unmeasured = Object.fromEntries(evaluateRelativeTargets(berth, { ...containerd, streaming: undefined }).map((r) => [r.id, r]));
  t.like(unmeasured.forwardUpload, { value: 250, met: null, basis: 'containerd not measured' });
  const fewer = { ...containerd, relist: { ...containerd.relist!, running: 50 } };
  t.like(Object.fromEntries(evaluateRelativeTargets(berth, fewer).map((r) => [r.id, r])).ListContainerStats, {
    met: null,
    basis: 'different pod counts (100 vs 50)',
  });
  const md = targetsTable(berth, containerd);
  t.true(md.includes("| port-forward upload, one connection (median) | ≥ containerd's | 250.0 | met | against containerd's in the same run | 100.0 |"));
  t.true(md.includes("| ListPodSandboxStats {} with the relist pods (median) | ≤ containerd's | 9.00 | NOT MET | against containerd's in the same run | 3.00 |"));
  t.false(targetsTable(berth).includes("containerd's"));
});

test('renderTables and toJson carry the streaming and scrape sections; no NaN in the JSON', (t) => {
  const result = { startedAt: 'a', finishedAt: 'b', cycles: 1, host: { node: 'v', os: 'o', arch: 'x', cpus: 2, cpuModel: 'c' }, runs: [berth, containerd] };
  const md = renderTables(result);
  t.true(md.includes('Streaming over SPDY/3.1'));
  t.true(md.includes('not measured: no /metrics endpoint in containerd.'));
  const json = toJson(result);
  const text = JSON.stringify(json);
  t.false(text.includes('NaN'));
  const [b, c] = json.runs as Record<string, any>[];
  t.like(b!.streaming, { forwardMiB: 64, failures: [] });
  t.like(b!.streaming.firstByte, { n: 3, median: 12, p95: 30 });
  t.like(b!.streaming.uploadMiBps, { n: 3, median: 250 });
  t.like(b!.scrape, { pods: 100, cpuPerScrapeMs: 18, bytes: 500_000, samples: 6000, containersSeen: 100 });
  t.like(b!.scrape.wallMs, { median: 25 });
  t.deepEqual(c!.scrape, { pods: 100, unavailable: 'no /metrics endpoint in containerd' });
  const comparison = json.comparison as Record<string, any>;
  t.deepEqual(comparison.metrics['port-forward upload, one connection (64 MiB)'], { unit: 'MiB/s', base: 250, other: 100, ratio: 0.4 });
  t.like(comparison.targets.find((x: { id: string }) => x.id === 'forwardUpload'), { value: 250, limit: 100, atLeast: true, met: true });
  const bare = toJson({ ...result, runs: [{ ...berth, streaming: undefined, scrape: undefined }] });
  t.like((bare.runs as Record<string, unknown>[])[0], { streaming: null, scrape: null });
});
