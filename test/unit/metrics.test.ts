import test from 'ava';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeSync, openSync, readdirSync } from 'node:fs';
import { BerthMetrics, openFdCount, StateCounts } from '../../src/metrics/berth.js';
import { listenMetrics, MetricsAddressError } from '../../src/metrics/server.js';
import { podRestarts } from '../../src/metrics/usage.js';
import { validateConfig, ConfigError } from '../../src/config/schema.js';
import type { ContainerUsage, PodUsage, UsageSource } from '../../src/stats/types.js';
import type { ContainerRecord } from '../../src/container/types.js';
import type { SandboxRecord } from '../../src/sandbox/types.js';
import { promtoolCheckMetrics } from '../helpers/promtool.js';

// /metrics from a fake UsageSource: the families, their labels and values, the ratio only with a limit, Prometheus's
// own checker on the output, and the endpoint's refusals.

const NS = 1_000_000_000n;
const MiB = 1024 * 1024;

function containerUsage(pod: number, c: number, limited: boolean): ContainerUsage {
  return {
    container: { id: `c${pod}-${c}`.padEnd(64, '0'), name: `app${c}`, labels: {}, annotations: {} },
    pod: { podSandboxId: `p${pod}`, name: `web-${pod}`, namespace: 'shop', uid: `uid-${pod}` },
    attempt: 2,
    cpu: { timestampNs: 1n, usageCoreNanoSeconds: 3n * NS, usageNanoCores: 250_000_000, throttledNanoSeconds: NS / 2n, limitCores: limited ? 0.5 : undefined },
    memory: {
      timestampNs: 1n, usageBytes: 48 * MiB, workingSetBytes: 40 * MiB, rssBytes: 30 * MiB, pageFaults: 10, majorPageFaults: 0, oomKills: limited ? 1 : 0,
      ...(limited ? { limitBytes: 64 * MiB, availableBytes: 24 * MiB } : {}),
    },
    pids: { current: 3, limit: limited ? 100 : undefined },
  };
}

function podUsage(pod: number, containers: number): PodUsage {
  const list = Array.from({ length: containers }, (_, c) => containerUsage(pod, c, c === 0));
  return {
    pod: { id: `p${pod}`, name: `web-${pod}`, namespace: 'shop', uid: `uid-${pod}`, labels: {}, annotations: {} },
    cpu: { timestampNs: 1n, usageCoreNanoSeconds: 6n * NS },
    memory: { timestampNs: 1n, usageBytes: 96 * MiB, workingSetBytes: 80 * MiB, rssBytes: 60 * MiB, pageFaults: 20, majorPageFaults: 0, oomKills: 1 },
    pids: { current: 6 },
    network: { timestampNs: 1n, interfaces: [{ name: 'eth0', rxBytes: 1000n, rxErrors: 0n, txBytes: 2000n, txErrors: 1n }] },
    containers: list,
  };
}

class FakeSource implements UsageSource {
  calls = 0;
  constructor(public pods_: PodUsage[]) {}
  async containers(): Promise<ContainerUsage[]> {
    return this.pods_.flatMap((p) => p.containers);
  }
  async pods(): Promise<PodUsage[]> {
    this.calls++;
    return this.pods_;
  }
}

const counts = (): StateCounts => ({ pods: { READY: 2, NOTREADY: 1 }, containers: { RUNNING: 3, EXITED: 1 } });

function metricsWith(source?: UsageSource) {
  const errors: unknown[] = [];
  const metrics = new BerthMetrics({ usage: () => source, counts, onUsageError: (err) => errors.push(err) });
  return { metrics, errors };
}

type Sample = { labels: Record<string, string | number>; value: number; metricName?: string };

async function values(metrics: BerthMetrics, name: string): Promise<Sample[]> {
  const all = await metrics.registry.getMetricsAsJSON();
  // A histogram's values name their series (_bucket, _sum, _count); prom-client's typings leave the field out.
  const own = all.find((m) => m.name === name);
  if (own) return own.values as Sample[];
  // The container and pod families are rendered outside prom-client's registry: read them as served.
  return samplesOf(await metrics.scrape(), name);
}

/** The samples of one family in the text format, label values unescaped. */
function samplesOf(text: string, name: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name) || !/[{ ]/.test(line[name.length])) continue;
    const labels: Record<string, string> = {};
    let at = name.length;
    if (line[at] === '{') {
      at++;
      while (line[at] !== '}') {
        const eq = line.indexOf('="', at);
        const key = line.slice(at, eq);
        let value = '';
        for (at = eq + 2; line[at] !== '"'; at++) {
          if (line[at] === '\\') {
            at++;
            value += line[at] === 'n' ? '\n' : line[at];
          } else value += line[at];
        }
        labels[key] = value;
        at++;
        if (line[at] === ',') at++;
      }
      at++;
    }
    out.push({ labels, value: Number(line.slice(at + 1)) });
  }
  return out;
}

const USAGE_FAMILIES = [
  'cpu_usage_seconds_total', 'cpu_cfs_throttled_seconds_total', 'cpu_limit_cores', 'cpu_usage_to_limit_ratio', 'memory_usage_bytes',
  'memory_working_set_bytes', 'memory_limit_bytes', 'memory_usage_to_limit_ratio', 'pids', 'pids_limit', 'oom_events_total', 'restarts_total',
];
export const EVERY_FAMILY = [
  ...USAGE_FAMILIES.map((f) => `container_${f}`),
  ...USAGE_FAMILIES.map((f) => `pod_${f}`),
  'pod_network_receive_bytes_total', 'pod_network_transmit_bytes_total', 'pod_network_receive_errors_total', 'pod_network_transmit_errors_total',
  'berth_pod_start_seconds', 'berth_rpc_duration_seconds', 'berth_rpc_errors_total', 'berth_image_pull_seconds', 'berth_image_pull_bytes_total',
  'berth_pods', 'berth_containers', 'process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_start_time_seconds', 'nodejs_heap_size_used_bytes',
];

test('a scrape has every family, passes promtool check metrics, and reads the source once', async (t) => {
  const source = new FakeSource([podUsage(1, 2), podUsage(2, 1)]);
  const { metrics } = metricsWith(source);
  metrics.rpcFinished('RunPodSandbox', 0.02, 'OK');
  metrics.pullFinished(1.5);
  const text = await metrics.scrape();
  t.is(source.calls, 1, 'one read of the source for every usage family');
  const families = new Set(text.split('\n').filter((l) => l.startsWith('# TYPE ')).map((l) => l.split(' ')[2]));
  for (const family of EVERY_FAMILY) t.true(families.has(family), `${family} is served`);
  const checked = await promtoolCheckMetrics(text);
  t.is(checked.code, 0, checked.output);
  t.is(checked.output.trim(), '', 'no lint finding');
});

test('container series carry namespace, pod, container and container_id; counters and gauges have the source values in base units', async (t) => {
  const { metrics } = metricsWith(new FakeSource([podUsage(1, 1)]));
  const id = 'c1-0'.padEnd(64, '0');
  const labels = { namespace: 'shop', pod: 'web-1', container: 'app0', container_id: id };
  t.deepEqual(await values(metrics, 'container_cpu_usage_seconds_total'), [{ labels, value: 3 }]);
  t.deepEqual((await values(metrics, 'container_cpu_cfs_throttled_seconds_total'))[0].value, 0.5);
  t.deepEqual((await values(metrics, 'container_memory_working_set_bytes'))[0].value, 40 * MiB);
  t.deepEqual((await values(metrics, 'container_memory_usage_bytes'))[0].value, 48 * MiB);
  t.deepEqual((await values(metrics, 'container_restarts_total'))[0].value, 2);
  t.deepEqual((await values(metrics, 'container_oom_events_total'))[0].value, 1);
  t.deepEqual((await values(metrics, 'container_pids'))[0].value, 3);
  t.deepEqual((await values(metrics, 'container_pids_limit'))[0].value, 100);
  t.deepEqual((await values(metrics, 'pod_network_transmit_bytes_total'))[0], { labels: { namespace: 'shop', pod: 'web-1', pod_id: 'p1', interface: 'eth0' }, value: 2000 });
  t.deepEqual((await values(metrics, 'pod_restarts_total'))[0].value, 2);
});

test('a usage-to-limit ratio and a limit series exist only for a container with that limit', async (t) => {
  // Container 0 of each pod is limited (64 MiB, half a core, 100 pids); container 1 has no limit.
  const { metrics } = metricsWith(new FakeSource([podUsage(1, 2)]));
  const byContainer = async (name: string) => Object.fromEntries((await values(metrics, name)).map((v) => [v.labels.container, v.value]));
  t.deepEqual(await byContainer('container_memory_usage_to_limit_ratio'), { app0: 40 / 64 });
  t.deepEqual(await byContainer('container_memory_limit_bytes'), { app0: 64 * MiB });
  t.deepEqual(await byContainer('container_cpu_usage_to_limit_ratio'), { app0: 0.25 / 0.5 });
  t.deepEqual(await byContainer('container_cpu_limit_cores'), { app0: 0.5 });
  t.deepEqual(await byContainer('container_pids_limit'), { app0: 100 });
  t.deepEqual(Object.keys(await byContainer('container_memory_working_set_bytes')).sort(), ['app0', 'app1'], 'usage without a limit is still served');
  t.deepEqual(await values(metrics, 'pod_memory_usage_to_limit_ratio'), [], 'the pod has no memory limit');
});

test('usage is read only when scraped, and a container gone since the last scrape has no series', async (t) => {
  const source = new FakeSource([podUsage(1, 2)]);
  const { metrics } = metricsWith(source);
  await new Promise((r) => setTimeout(r, 100));
  t.is(source.calls, 0, 'no timer reads usage without a scraper');
  t.is((await values(metrics, 'container_memory_usage_bytes')).length, 2);
  source.pods_ = [podUsage(1, 1)];
  t.is((await values(metrics, 'container_memory_usage_bytes')).length, 1);
  t.is(source.calls, 2);
});

test('a failing usage source leaves the scrape with berth own series and reports the error', async (t) => {
  const source = new FakeSource([]);
  source.pods = async () => {
    throw new Error('cgroupfs gone');
  };
  const { metrics, errors } = metricsWith(source);
  const text = await metrics.scrape();
  t.true(text.includes('berth_pods{state="READY"} 2'));
  t.false(/^container_memory_usage_bytes\{/m.test(text));
  t.is(errors.length, 1);
});

test('label values from a pod spec are escaped: quotes, backslashes and line feeds cannot forge series', async (t) => {
  const hostile = podUsage(1, 1);
  const name = 'web"} 1\nfake_total{a="b\\';
  hostile.pod.name = name;
  hostile.containers[0].pod.name = name;
  hostile.containers[0].container.name = 'app\\0';
  const { metrics } = metricsWith(new FakeSource([hostile]));
  const text = await metrics.scrape();
  t.false(/^fake_total/m.test(text), 'no forged series');
  const checked = await promtoolCheckMetrics(text);
  t.is(checked.code, 0, checked.output);
  const [series] = samplesOf(text, 'container_memory_usage_bytes');
  t.like(series, { labels: { pod: name, container: 'app\\0' }, value: 48 * MiB });
  t.like(samplesOf(text, 'pod_network_receive_bytes_total')[0], { labels: { pod: name, interface: 'eth0' }, value: 1000 });
});

test.serial('process_open_fds counts the open descriptors without listing them, and follows opens and closes', async (t) => {
  const { metrics } = metricsWith();
  const before = (await values(metrics, 'process_open_fds'))[0].value;
  t.true(before > 3);
  const opened = Array.from({ length: 5 }, () => openSync('/dev/null', 'r'));
  try {
    t.is((await values(metrics, 'process_open_fds'))[0].value, before + 5);
    t.is(openFdCount(), readdirSync('/proc/self/fd').length - 1, 'the same count as a listing (which holds one more)');
  } finally {
    for (const fd of opened) closeSync(fd);
  }
  t.is((await values(metrics, 'process_open_fds'))[0].value, before);
});

test('RPC durations by method, errors by method and code (OK is no error); pods and containers by state', async (t) => {
  const { metrics } = metricsWith();
  metrics.rpcFinished('ContainerStatus', 0.001, 'OK');
  metrics.rpcFinished('ContainerStatus', 0.001, 'NOT_FOUND');
  metrics.rpcFinished('ContainerStatus', 0.001, 'NOT_FOUND');
  const errors = await values(metrics, 'berth_rpc_errors_total');
  t.deepEqual(errors, [{ labels: { method: 'ContainerStatus', code: 'NOT_FOUND' }, value: 2 }]);
  const count = (await values(metrics, 'berth_rpc_duration_seconds')).find((v) => v.metricName === 'berth_rpc_duration_seconds_count');
  t.like(count, { labels: { method: 'ContainerStatus' }, value: 3 });
  const pods = Object.fromEntries((await values(metrics, 'berth_pods')).map((v) => [v.labels.state, v.value]));
  t.deepEqual(pods, { READY: 2, NOTREADY: 1 });
  const containers = Object.fromEntries((await values(metrics, 'berth_containers')).map((v) => [v.labels.state, v.value]));
  t.deepEqual(containers, { CREATED: 0, RUNNING: 3, EXITED: 1 });
});

test('berth_pod_start_seconds: from RunPodSandbox to the first container running, once per pod', async (t) => {
  const { metrics } = metricsWith();
  const pod = { id: 'p1', createdAt: 1_000 } as SandboxRecord;
  metrics.transition({ kind: 'CREATED', subject: 'pod', id: 'p1', podId: 'p1', atNs: 1n, record: pod });
  const started = (id: string, startedAtMs: number) =>
    metrics.transition({ kind: 'STARTED', subject: 'container', id, podId: 'p1', atNs: 2n, record: { id, startedAt: startedAtMs * 1e6 } as ContainerRecord });
  started('c1', 1_250);
  started('c2', 9_000);
  const series = await values(metrics, 'berth_pod_start_seconds');
  t.like(series.find((v) => v.metricName === 'berth_pod_start_seconds_count'), { value: 1 });
  t.like(series.find((v) => v.metricName === 'berth_pod_start_seconds_sum'), { value: 0.25 });
});

test('image pulls: duration histogram and layer bytes', async (t) => {
  const { metrics } = metricsWith();
  metrics.pullFinished(2);
  metrics.bytesPulled(1000);
  metrics.bytesPulled(24);
  t.deepEqual((await values(metrics, 'berth_image_pull_bytes_total'))[0].value, 1024);
  t.like((await values(metrics, 'berth_image_pull_seconds')).find((v) => v.metricName === 'berth_image_pull_seconds_sum'), { value: 2 });
});

function get(address: string, urlPath: string, method = 'GET'): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`http://${address}${urlPath}`, { method }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('the endpoint serves /metrics (503 until ready), 404 elsewhere, 405 for other methods', async (t) => {
  const server = await listenMetrics('127.0.0.1:0', () => undefined);
  t.teardown(() => server.close());
  t.regex(server.address, /^127\.0\.0\.1:\d+$/);
  t.is((await get(server.address, '/metrics')).status, 503);
  const { metrics } = metricsWith(new FakeSource([podUsage(1, 1)]));
  server.serve(metrics);
  const ok = await get(server.address, '/metrics');
  t.is(ok.status, 200);
  t.regex(ok.type, /^text\/plain; version=0\.0\.4/);
  t.true(ok.body.includes('container_memory_working_set_bytes{namespace="shop",pod="web-1",container="app0"'));
  t.is((await get(server.address, '/')).status, 404);
  t.is((await get(server.address, '/metrics', 'POST')).status, 405);
});

test('a taken metrics address is refused naming metrics.address and the address', async (t) => {
  const holder = http.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => new Promise<void>((resolve) => holder.close(() => resolve())));
  const address = `127.0.0.1:${(holder.address() as AddressInfo).port}`;
  const err = await t.throwsAsync(listenMetrics(address, () => undefined), { instanceOf: MetricsAddressError });
  t.is(err?.message, `metrics.address: ${address} is already in use; choose another address, or "" to disable metrics`);
});

test('config: metrics.address defaults to 127.0.0.1:9325, "" disables, anything not host:port is refused naming the key', (t) => {
  t.is(validateConfig({}).metrics.address, '127.0.0.1:9325');
  t.is(validateConfig({ metrics: { address: '' } }).metrics.address, '');
  t.is(validateConfig({ metrics: { address: '[::1]:9325' } }).metrics.address, '[::1]:9325');
  for (const bad of ['9325', 'http://127.0.0.1:9325', '127.0.0.1:99999', 12]) {
    const err = t.throws(() => validateConfig({ metrics: { address: bad } }), { instanceOf: ConfigError });
    t.regex(err?.message ?? '', /^config: metrics\.address: /);
  }
  t.throws(() => validateConfig({ metrics: { port: 1 } }), { message: /metrics\.port: unknown key/ });
});

test('pod_restarts_total never goes down as kubelet removes old attempts: per container name, the newest attempt, summed', (t) => {
  const attempt = (name: string, n: number, pod = 1): ContainerUsage => {
    const c = containerUsage(pod, 0, false);
    return { ...c, container: { ...c.container, id: `${name}-${n}`, name }, attempt: n };
  };
  const pod = (containers: ContainerUsage[]): PodUsage => ({ ...podUsage(1, 0), containers });
  // app crashed twice (attempts 0..2 held), sidecar once.
  const before = podRestarts(pod([attempt('app', 0), attempt('app', 1), attempt('app', 2), attempt('side', 0), attempt('side', 1)]));
  t.is(before, 3);
  // kubelet garbage-collects the old attempts: the count stays.
  t.is(podRestarts(pod([attempt('app', 2), attempt('side', 1)])), before);
  // the next restart of app adds one.
  t.is(podRestarts(pod([attempt('app', 2), attempt('app', 3), attempt('side', 1)])), before + 1);
});
