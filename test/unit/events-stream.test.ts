import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../../src/cri/grpc.js';
import { containerEventsHandler } from '../../src/cri/events.js';
import { LifecycleEvents } from '../../src/events/lifecycle.js';
import { recordingLog, POD } from './fakes/container.js';
import type { ContainerRecord } from '../../src/container/types.js';
import type { SandboxRecord } from '../../src/sandbox/types.js';
import type { ContainerEventResponse__Output } from '../../src/gen/runtime/v1/ContainerEventResponse.js';
import type { RuntimeServiceClient } from '../../src/gen/runtime/v1/RuntimeService.js';
import { waitFor } from '../helpers/util.js';

// GetContainerEvents over a real gRPC server and client on a unix socket: what kubelet's evented PLEG reads.

interface Served {
  events: LifecycleEvents;
  client(): RuntimeServiceClient;
}

async function serve(t: ExecutionContext, bufferLimit: number, containers: Readonly<ContainerRecord>[] = []): Promise<Served> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-events-stream-'));
  const cri = loadCri();
  const events = new LifecycleEvents();
  events.attach({ pod: () => POD, containersOf: () => containers });
  // A big status per container fills the stream's flow-control window quickly when the client does not read.
  const toStatus = (c: ContainerRecord) => ({ id: c.id, labels: { filler: 'x'.repeat(4096) } });
  const server = new grpc.Server();
  server.addService(cri.runtime.v1.RuntimeService.service, {
    GetContainerEvents: containerEventsHandler(events, toStatus, recordingLog(), bufferLimit),
  } as grpc.UntypedServiceImplementation);
  const socket = path.join(dir, 'events.sock');
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  const clients: grpc.Client[] = [];
  t.teardown(async () => {
    events.close();
    for (const c of clients) c.close();
    server.forceShutdown();
    await fs.rm(dir, { recursive: true, force: true });
  });
  return {
    events,
    client: () => {
      const c = new cri.runtime.v1.RuntimeService(`unix:${socket}`, grpc.credentials.createInsecure()) as unknown as RuntimeServiceClient;
      clients.push(c as unknown as grpc.Client);
      return c;
    },
  };
}

function collect(stream: grpc.ClientReadableStream<ContainerEventResponse__Output>) {
  const got: ContainerEventResponse__Output[] = [];
  let error: grpc.ServiceError | undefined;
  stream.on('data', (e: ContainerEventResponse__Output) => got.push(e));
  stream.on('error', (e: grpc.ServiceError) => (error = e));
  return { got, error: () => error };
}

const container = (id: string, state: ContainerRecord['state']) => ({ id, sandboxId: POD.id, state }) as ContainerRecord;

test('two subscribers both get a container four events in order, each with the pod status and its containers statuses', async (t) => {
  const c = container('c1', 'CREATED');
  const served = await serve(t, 64, [c]);
  const a = collect(served.client().GetContainerEvents({}));
  const b = collect(served.client().GetContainerEvents({}));
  await waitFor('both subscribed', () => served.events.subscriberCount === 2, { timeoutMs: 5000 });
  const running = { ...c, state: 'RUNNING' } as ContainerRecord;
  const exited = { ...c, state: 'EXITED' } as ContainerRecord;
  served.events.containerChanged(undefined, c);
  served.events.containerChanged(c, running);
  served.events.containerChanged(running, exited);
  served.events.containerChanged(exited, undefined);
  for (const sub of [a, b]) {
    await waitFor('four events', () => sub.got.length === 4, { timeoutMs: 5000 });
    t.deepEqual(sub.got.map((e) => [e.container_event_type, e.container_id]), [
      ['CONTAINER_CREATED_EVENT', 'c1'],
      ['CONTAINER_STARTED_EVENT', 'c1'],
      ['CONTAINER_STOPPED_EVENT', 'c1'],
      ['CONTAINER_DELETED_EVENT', 'c1'],
    ]);
    for (const e of sub.got) {
      t.is(e.pod_sandbox_status?.id, POD.id);
      t.is(e.pod_sandbox_status?.metadata?.uid, POD.config.metadata.uid, 'kubelet keys the pod by this uid');
      t.deepEqual(e.containers_statuses.map((s) => s.id), ['c1']);
      t.true(BigInt(e.created_at) > 0n);
    }
    t.is(sub.error(), undefined);
  }
});

test('a subscriber that disconnects leaves no subscription behind', async (t) => {
  const served = await serve(t, 64);
  const call = served.client().GetContainerEvents({});
  const sub = collect(call);
  await waitFor('subscribed', () => served.events.subscriberCount === 1, { timeoutMs: 5000 });
  served.events.sandboxChanged(undefined, POD as SandboxRecord);
  await waitFor('the pod events', () => sub.got.length === 2, { timeoutMs: 5000 });
  call.cancel();
  await waitFor('the subscription to go', () => served.events.subscriberCount === 0, { timeoutMs: 5000 });
  t.is(sub.error()?.code, grpc.status.CANCELLED);
});

test('a subscriber that stops reading is ended with RESOURCE_EXHAUSTED while events keep flowing to the others', async (t) => {
  const many = Array.from({ length: 8 }, (_, i) => container(`c${i}`, 'RUNNING'));
  const served = await serve(t, 8, many);
  const stalled = served.client().GetContainerEvents({});
  const stalledSeen = collect(stalled);
  const reader = collect(served.client().GetContainerEvents({}));
  await waitFor('both subscribed', () => served.events.subscriberCount === 2, { timeoutMs: 5000 });
  stalled.pause();
  // Each event is ~32 KiB: the stalled stream's flow-control window fills after a few, then its queue. The reader
  // keeps up (it has each event before the next is published), so only the stalled one falls behind.
  let published = 0;
  while (served.events.subscriberCount === 2 && published < 1000) {
    served.events.containerChanged(many[0], { ...many[0], state: 'EXITED' } as ContainerRecord);
    published++;
    await waitFor('the reader to have the event', () => reader.got.length === published || served.events.subscriberCount < 2, { timeoutMs: 10_000, intervalMs: 1 });
  }
  t.is(served.events.subscriberCount, 1, `the stalled subscriber was dropped (after ${published} events)`);
  await waitFor('the reader to have every event', () => reader.got.length === published, { timeoutMs: 10_000 });
  t.is(reader.error(), undefined);
  stalled.resume();
  await waitFor('the stalled stream to end', () => stalledSeen.error() !== undefined, { timeoutMs: 20_000 });
  t.is(stalledSeen.error()?.code, grpc.status.RESOURCE_EXHAUSTED);
  t.regex(stalledSeen.error()?.details ?? '', /relist/);
  t.true(stalledSeen.got.length < published, 'it got only what was in flight before it fell behind');
});
