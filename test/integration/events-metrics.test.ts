import test from 'ava';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { podEnv } from '../helpers/pod-env.js';
import { promtoolCheckMetrics } from '../helpers/promtool.js';
import { waitFor } from '../helpers/util.js';
import type { ContainerEventResponse__Output } from '../../src/gen/runtime/v1/ContainerEventResponse.js';

// A real berth: the container event stream kubelet's evented PLEG reads, and the Prometheus endpoint.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/busybox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

function subscribe(berth: BerthProcess) {
  const call = berth.rawRuntime.GetContainerEvents({}) as grpc.ClientReadableStream<ContainerEventResponse__Output>;
  const got: ContainerEventResponse__Output[] = [];
  let error: grpc.ServiceError | undefined;
  call.on('data', (e: ContainerEventResponse__Output) => got.push(e));
  call.on('error', (e: grpc.ServiceError) => (error = e));
  return { call, got, error: () => error };
}

function metricsAddress(berth: BerthProcess): Promise<string> {
  return berth.waitForLog((e) => e.msg === 'berth serving').then((e) => String(e.metrics));
}

function scrape(address: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(`http://${address}/metrics`, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

test('GetContainerEvents: two subscribers each get the pod and container events in order, each with the pod status', async (t) => {
  const env = await podEnv(t, { registryHost: registry.host, image: image.ref });
  const { berth } = env;
  const a = subscribe(berth);
  const b = subscribe(berth);
  t.teardown(() => {
    a.call.cancel();
    b.call.cancel();
  });
  await berth.waitForLog((e) => e.msg === 'event subscriber connected' && e.subscribers === 2);
  const pod = await env.pod();
  // A process that exits at once may be seen exited before StartContainer records it running (then no STARTED):
  // this one runs until stopped.
  const id = await env.container(pod, { command: ['sleep', '300'] });
  await berth.runtime.StopContainer({ container_id: id, timeout: '0' });
  // While the pod lives, its status carries its containers' statuses and a timestamp (evented PLEG reads them).
  const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id: pod.id, verbose: false });
  t.deepEqual(status.containers_statuses.map((c) => [c.id, c.state]), [[id, 'CONTAINER_EXITED']]);
  t.true(BigInt(status.timestamp) > 0n);
  await berth.runtime.RemoveContainer({ container_id: id });
  await berth.runtime.StopPodSandbox({ pod_sandbox_id: pod.id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
  const expected = [
    ['CONTAINER_CREATED_EVENT', pod.id],
    ['CONTAINER_STARTED_EVENT', pod.id],
    ['CONTAINER_CREATED_EVENT', id],
    ['CONTAINER_STARTED_EVENT', id],
    ['CONTAINER_STOPPED_EVENT', id],
    ['CONTAINER_DELETED_EVENT', id],
    ['CONTAINER_STOPPED_EVENT', pod.id],
    ['CONTAINER_DELETED_EVENT', pod.id],
  ];
  for (const sub of [a, b]) {
    await waitFor('every event', () => sub.got.length >= expected.length, { timeoutMs: 20_000 });
    t.deepEqual(sub.got.map((e) => [e.container_event_type, e.container_id]), expected);
    for (const e of sub.got) {
      t.is(e.pod_sandbox_status?.id, pod.id);
      t.is(e.pod_sandbox_status?.metadata?.uid, pod.config.metadata?.uid);
    }
    const containerStates = sub.got.slice(2, 5).map((e) => e.containers_statuses.find((c) => c.id === id)?.state);
    t.deepEqual(containerStates, ['CONTAINER_CREATED', 'CONTAINER_RUNNING', 'CONTAINER_EXITED'], 'each event has the container as it was then');
    t.is(sub.got[7].pod_sandbox_status?.state, 'SANDBOX_NOTREADY');
    const times = sub.got.map((e) => BigInt(e.created_at));
    t.true(times.every((ts, i) => i === 0 || ts > times[i - 1]), 'created_at strictly increases');
    t.is(sub.error(), undefined);
    // On the events' clock: the status read after the stop is newer than the STOPPED event (kubelet keeps the newer).
    t.true(BigInt(status.timestamp) > BigInt(sub.got[4].created_at) && BigInt(status.timestamp) < BigInt(sub.got[5].created_at));
  }
  // A client that goes away leaves no subscription behind.
  a.call.cancel();
  b.call.cancel();
  await berth.waitForLog((e) => e.msg === 'event subscriber disconnected' && e.subscribers === 0);
});

test('/metrics serves every family, passes promtool check metrics, and counts the pull, the RPCs and the pod start', async (t) => {
  const env = await podEnv(t, { registryHost: registry.host, image: image.ref });
  const address = await metricsAddress(env.berth);
  t.regex(address, /^127\.0\.0\.1:\d+$/);
  const pod = await env.pod();
  const id = await env.container(pod, { command: ['sleep', '300'] });
  const { status, body } = await scrape(address);
  t.is(status, 200);
  const checked = await promtoolCheckMetrics(body);
  t.is(checked.code, 0, checked.output);
  const families = new Set(body.split('\n').filter((l) => l.startsWith('# TYPE ')).map((l) => l.split(' ')[2]));
  const usage = ['cpu_usage_seconds_total', 'cpu_cfs_throttled_seconds_total', 'cpu_limit_cores', 'cpu_usage_to_limit_ratio', 'memory_usage_bytes',
    'memory_working_set_bytes', 'memory_limit_bytes', 'memory_usage_to_limit_ratio', 'pids', 'pids_limit', 'oom_events_total', 'restarts_total'];
  const every = [
    ...usage.map((f) => `container_${f}`), ...usage.map((f) => `pod_${f}`),
    'pod_network_receive_bytes_total', 'pod_network_transmit_bytes_total', 'pod_network_receive_errors_total', 'pod_network_transmit_errors_total',
    'berth_pod_start_seconds', 'berth_rpc_duration_seconds', 'berth_rpc_errors_total', 'berth_image_pull_seconds', 'berth_image_pull_bytes_total',
    'berth_pods', 'berth_containers', 'process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes',
  ];
  for (const family of every) t.true(families.has(family), `${family} is served`);
  const line = (prefix: string) => body.split('\n').find((l) => l.startsWith(prefix));
  t.is(line('berth_pod_start_seconds_count'), 'berth_pod_start_seconds_count 1');
  t.is(line('berth_containers{state="RUNNING"}'), 'berth_containers{state="RUNNING"} 1');
  t.is(line('berth_pods{state="READY"}'), 'berth_pods{state="READY"} 1');
  t.is(line('berth_image_pull_seconds_count'), 'berth_image_pull_seconds_count 1');
  t.true(Number(line('berth_image_pull_bytes_total')?.split(' ')[1]) > 0, 'the layer bytes were counted');
  t.is(line('berth_rpc_duration_seconds_count{method="RunPodSandbox"}'), 'berth_rpc_duration_seconds_count{method="RunPodSandbox"} 1');
  await env.berth.runtime.StopContainer({ container_id: id, timeout: '0' });
});

test('a taken metrics address: berth refuses to start, naming metrics.address and the address, and touches nothing', async (t) => {
  const holder = http.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => new Promise<void>((resolve) => holder.close(() => resolve())));
  const address = `127.0.0.1:${(holder.address() as AddressInfo).port}`;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-metrics-taken-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const err = await t.throwsAsync(startBerth({ dir, config: `[metrics]\naddress = "${address}"\n` }));
  t.regex(err?.message ?? '', /berth exited with 1 before serving/);
  t.true(err?.message.includes(`berth: metrics.address: ${address} is already in use`), err?.message);
  // Refused before berth touched the node: its test bridge was never made, nor any pod state.
  const { bridge } = JSON.parse(await fs.readFile(path.join(dir, 'testnet.json'), 'utf8')) as { bridge: string };
  const links = await promisify(execFile)('ip', ['-o', 'link', 'show']);
  t.false(links.stdout.includes(`${bridge}:`), `bridge ${bridge} exists`);
  t.false(await fs.access(path.join(dir, 'root', 'sandboxes')).then(() => true, () => false));
});

test('SIGTERM ends open event streams cleanly and berth exits 0 (a stream does not hold the drain)', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const sub = subscribe(berth);
  let ended = false;
  sub.call.on('end', () => (ended = true));
  await berth.waitForLog((e) => e.msg === 'event subscriber connected');
  t.is(await berth.stop('SIGTERM'), 0);
  await waitFor('the stream to end', () => ended || sub.error() !== undefined, { timeoutMs: 10_000 });
  t.true(ended, `ended with ${sub.error()?.message}`);
});
