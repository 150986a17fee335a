import test from 'ava';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { logger } from '../../src/log.js';
import { loadCri } from '../../src/cri/grpc.js';
import { acceptEncoded, encodedService, ItemBytes } from '../../src/cri/encoded.js';
import { podHandlers, toPodSandbox } from '../../src/cri/pods.js';
import { containerHandlers } from '../../src/cri/containers.js';
import { deepFreeze } from '../../src/store/records.js';
import type { SandboxRecord } from '../../src/sandbox/types.js';
import type { ContainerRecord } from '../../src/container/types.js';
import type { SandboxService } from '../../src/sandbox/service.js';
import type { ContainerService } from '../../src/container/service.js';
import type { ImageService } from '../../src/image/service.js';
import type { RuntimeServiceClient } from '../../src/gen/runtime/v1/RuntimeService.js';
import type { PodSandbox } from '../../src/gen/runtime/v1/PodSandbox.js';

// List responses are sent as items' bytes encoded once per record version (src/cri/encoded.ts): what a client
// decodes must be what the object-built answer was, and a changed record must never be answered with old bytes.

const service = loadCri().runtime.v1.RuntimeService.service;
const log = logger();

const kubeletLabels = (i: number) => ({
  'io.kubernetes.pod.uid': `uid-${i}`,
  'io.kubernetes.pod.name': `pod-${i}`,
  'io.kubernetes.pod.namespace': 'default',
});

function pod(i: number, state: 'READY' | 'NOTREADY' = 'READY'): Readonly<SandboxRecord> {
  return deepFreeze({
    id: `${'p'.repeat(62)}${String(i).padStart(2, '0')}`,
    state,
    createdAt: 1764777777000 + i,
    config: {
      metadata: { name: `pod-${i}`, uid: `uid-${i}`, namespace: 'default', attempt: i % 3 },
      labels: kubeletLabels(i),
      annotations: { 'kubernetes.io/config.seen': '2026-12-03T16:00:00Z', 'kubernetes.io/config.source': 'api' },
      runtimeHandler: '',
    },
  } as unknown as SandboxRecord);
}

function container(i: number, state: ContainerRecord['state'] = 'RUNNING'): Readonly<ContainerRecord> {
  return deepFreeze({
    id: `${'c'.repeat(62)}${String(i).padStart(2, '0')}`,
    sandboxId: pod(i).id,
    state,
    createdAt: 1764777777000000000 + i,
    imageId: `sha256:${'a'.repeat(64)}`,
    imageName: '127.0.0.1:5000/bench/busybox:v1',
    config: {
      metadata: { name: 'app', attempt: 0 },
      labels: { ...kubeletLabels(i), 'io.kubernetes.container.name': 'app' },
      annotations: { 'io.kubernetes.container.hash': 'abcd', 'io.kubernetes.container.restartCount': String(i) },
      userSpecifiedImage: 'busybox:v1',
    },
  } as unknown as ContainerRecord);
}

test('a list response of encoded items is byte for byte the serialization of the same items built as objects', (t) => {
  const pods = [pod(1), pod(2, 'NOTREADY'), pod(3)];
  const bytes = new ItemBytes<Readonly<SandboxRecord>, PodSandbox>('items', service.ListPodSandbox.responseSerialize, toPodSandbox);
  const serialize = acceptEncoded(service.ListPodSandbox.responseSerialize as (v: unknown) => Buffer);
  const encoded = serialize(bytes.response(pods));
  t.deepEqual(encoded, service.ListPodSandbox.responseSerialize({ items: pods.map(toPodSandbox) }));
  t.deepEqual(service.ListPodSandbox.responseDeserialize(encoded).items.map((p) => p.id), pods.map((p) => p.id));
  t.deepEqual(serialize(bytes.response([])), service.ListPodSandbox.responseSerialize({ items: [] }), 'an empty list is an empty message');
});

test('an item is encoded once per record version: a changed record or a changed variant is encoded anew', (t) => {
  let built = 0;
  const bytes = new ItemBytes<Readonly<SandboxRecord>, PodSandbox>('items', service.ListPodSandbox.responseSerialize, (r) => {
    built++;
    return toPodSandbox(r);
  });
  const ready = pod(7);
  const first = bytes.bytes(ready);
  t.is(bytes.bytes(ready), first, 'the same record object is answered from the cache');
  t.is(built, 1);
  // The store replaces a record on every change; the new object must not share the old one's bytes.
  const stopped = deepFreeze({ ...ready, state: 'NOTREADY' as const });
  const changed = bytes.bytes(stopped);
  t.is(built, 2);
  t.is(service.ListPodSandbox.responseDeserialize(changed).items[0].state, 'SANDBOX_NOTREADY');
  t.is(service.ListPodSandbox.responseDeserialize(bytes.bytes(ready)).items[0].state, 'SANDBOX_READY');
  bytes.bytes(ready, 'other image digest');
  t.is(built, 3, 'a variant other than the cached one is encoded anew');
});

test('reading the list field of an encoded response builds the items, and plain responses serialize as before', (t) => {
  const bytes = new ItemBytes<Readonly<SandboxRecord>, PodSandbox>('items', service.ListPodSandbox.responseSerialize, toPodSandbox);
  const response = bytes.response<{ items: PodSandbox[] }>([pod(1), pod(2)]);
  t.deepEqual(response.items, [toPodSandbox(pod(1)), toPodSandbox(pod(2))]);
  const wrapped = encodedService(service).Version.responseSerialize as (v: unknown) => Buffer;
  const plain = { version: '0.1.0', runtime_name: 'berth', runtime_version: '1', runtime_api_version: 'v1' };
  t.deepEqual(wrapped(plain), service.Version.responseSerialize(plain));
});

test('ListPodSandbox and ListContainers over gRPC: the items decode as built from the records, filters apply, and a change of record or image digest shows at once', async (t) => {
  const pods = Array.from({ length: 20 }, (_, i) => pod(i));
  let containers = Array.from({ length: 20 }, (_, i) => container(i));
  let digest = `127.0.0.1:5000/bench/busybox@sha256:${'b'.repeat(64)}`;
  const sandboxes = { list: (f: { state?: string }) => pods.filter((p) => !f.state || p.state === f.state) } as unknown as SandboxService;
  const containerService = {
    list: (f: { sandboxId?: string }) => containers.filter((c) => !f.sandboxId || c.sandboxId.startsWith(f.sandboxId)),
  } as unknown as ContainerService;
  const images = { byId: () => ({ repoDigests: [digest] }) } as unknown as ImageService;
  const handlers = {
    ...podHandlers(sandboxes, () => ({ statuses: [], timestampNs: 0n }), log),
    ...containerHandlers(containerService, images, log),
  };
  const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-encoded-'));
  const socket = path.join(dir, 'cri.sock');
  const server = new grpc.Server();
  server.addService(encodedService(service), handlers as grpc.UntypedServiceImplementation);
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener = net.createServer((conn) => injector.injectConnection(conn));
  await new Promise<void>((resolve) => listener.listen(socket, resolve));
  const client = new (loadCri().runtime.v1.RuntimeService)(`unix://${socket}`, grpc.credentials.createInsecure()) as unknown as RuntimeServiceClient;
  const call = <Res>(rpc: 'ListPodSandbox' | 'ListContainers', req: object) =>
    new Promise<Res>((resolve, reject) => (client[rpc] as unknown as (r: object, cb: (e: Error | null, v: Res) => void) => void)(req, (e, v) => (e ? reject(e) : resolve(v))));
  type Listed = { items: { id: string; state: string; labels: Record<string, string>; metadata: { attempt: number } }[] };
  type Containers = { containers: { id: string; pod_sandbox_id: string; image_ref: string; state: string; annotations: Record<string, string> }[] };
  try {
    const listed = await call<Listed>('ListPodSandbox', {});
    t.is(listed.items.length, 20);
    t.deepEqual(listed.items[5].labels, kubeletLabels(5));
    t.is(listed.items[5].metadata.attempt, 5 % 3);
    const all = await call<Containers>('ListContainers', {});
    t.is(all.containers.length, 20);
    t.is(all.containers[3].pod_sandbox_id, pods[3].id);
    t.is(all.containers[3].annotations['io.kubernetes.container.restartCount'], '3');
    t.is(all.containers[3].image_ref, digest);
    const inPod = await call<Containers>('ListContainers', { filter: { pod_sandbox_id: pods[4].id } });
    t.deepEqual(inPod.containers.map((c) => c.id), [containers[4].id]);

    containers = containers.map((c, i) => (i === 3 ? deepFreeze({ ...c, state: 'EXITED' as const }) : c));
    digest = `127.0.0.1:5000/bench/busybox@sha256:${'d'.repeat(64)}`;
    const after = await call<Containers>('ListContainers', {});
    t.is(after.containers[3].state, 'CONTAINER_EXITED', 'the replaced record is encoded anew');
    t.is(after.containers[2].state, 'CONTAINER_RUNNING');
    t.true(after.containers.every((c) => c.image_ref === digest), 'a changed image digest shows in every item');
  } finally {
    client.close();
    server.forceShutdown();
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  }
});
