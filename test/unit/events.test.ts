import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { ContainerService } from '../../src/container/service.js';
import { ContainerConfig, ContainerRecord } from '../../src/container/types.js';
import { EventSubscription, LifecycleEvent, LifecycleEvents, Transition } from '../../src/events/lifecycle.js';
import { SandboxRecord } from '../../src/sandbox/types.js';
import { waitFor } from '../helpers/util.js';
import { RecordStore } from '../../src/store/records.js';
import { FakeCgroups, FakeClock, FakeRuntime, fakeImages, fakePods, Journal, POD, recordingLog } from './fakes/container.js';

// The lifecycle hub: events derived from the services' record changes, fanned out to subscribers that may be slow.

function containerConfig(name = 'app'): ContainerConfig {
  return {
    metadata: { name, attempt: 0 }, image: 'img:1', command: [], args: [], workingDir: '', envs: [], mounts: [], devices: [],
    labels: {}, annotations: {}, logPath: '', stdin: false, stdinOnce: false, tty: false, resources: { hugepageLimits: [], unified: {} },
    security: {
      capabilities: { add: [], drop: [] }, privileged: false, readonlyRootfs: false, supplementalGroups: [], noNewPrivs: false,
      maskedPaths: [], readonlyPaths: [], namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' },
      seccomp: { kind: 'unconfined' }, apparmor: '',
    },
  };
}

async function tempRoot(t: ExecutionContext): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-events-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  return root;
}

/** A container service whose record changes feed a hub, as the daemon wires them. */
function setup(root: string) {
  const events = new LifecycleEvents();
  const runtime = new FakeRuntime(new Journal());
  const service = new ContainerService({
    root, runtime, cgroups: new FakeCgroups(new Journal()), images: fakeImages(new Journal()), sandboxes: fakePods(), log: recordingLog(),
    rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26, cdiSpecDirs: [], delay: new FakeClock(-1).delay,
    onRecordChange: events.containerChanged,
  });
  events.attach({ pod: (id) => (id === POD.id ? POD : undefined), containersOf: (podId) => service.list({ sandboxId: podId }) });
  return { events, runtime, service };
}

async function drain(sub: EventSubscription, count: number): Promise<LifecycleEvent[]> {
  const got: LifecycleEvent[] = [];
  while (got.length < count) {
    const e = await sub.next();
    if (!e) break;
    got.push(e);
  }
  return got;
}

test('a container life reaches every subscriber in order: CREATED, STARTED, STOPPED (seen by the exit watcher), DELETED, each with its pod and the pod containers of that moment', async (t) => {
  const { events, runtime, service } = setup(await tempRoot(t));
  const first = events.subscribe();
  const second = events.subscribe();
  const { id, bundle } = await service.create(POD.id, containerConfig());
  await service.start(id);
  // The monitor records an exit; the watcher, not an RPC, notices it.
  runtime.exit(bundle, 0);
  await waitFor('the watched exit', () => service.get(id).state === 'EXITED', { timeoutMs: 2000, intervalMs: 0 });
  await service.remove(id);
  for (const sub of [first, second]) {
    const got = await drain(sub, 4);
    t.deepEqual(got.map((e) => [e.kind, e.subject, e.id, e.podId]), [
      ['CREATED', 'container', id, POD.id],
      ['STARTED', 'container', id, POD.id],
      ['STOPPED', 'container', id, POD.id],
      ['DELETED', 'container', id, POD.id],
    ]);
    t.true(got.every((e) => e.pod?.id === POD.id), 'the pod status rides along');
    t.deepEqual(got.map((e) => e.containers.map((c) => c.state)), [['CREATED'], ['RUNNING'], ['EXITED'], []]);
    t.true(got.every((e, i) => i === 0 || e.atNs > got[i - 1].atNs), 'times strictly increase');
    t.is(sub.pending, 0);
  }
  first.close();
  second.close();
  t.is(events.subscriberCount, 0);
});

test('an exit found by restart reconciliation is a STOPPED transition', async (t) => {
  const root = await tempRoot(t);
  const before = setup(root);
  const { id, bundle } = await before.service.create(POD.id, containerConfig());
  await before.service.start(id);
  await before.service.close();
  const after = setup(root);
  const heard: Transition[] = [];
  after.events.listen((tr) => heard.push(tr));
  after.runtime.exits.set(bundle, { exitCode: 2, signal: 0, startedAt: 5, finishedAt: 6 });
  await after.service.load();
  t.deepEqual(heard.map((tr) => [tr.kind, tr.id]), [['STOPPED', id]]);
  await after.service.close();
});

test('a subscriber that falls behind is dropped with RESOURCE_EXHAUSTED; publishing never waits for it and the others keep theirs', async (t) => {
  const events = new LifecycleEvents();
  const slow = events.subscribe(3);
  const reader = events.subscribe(100);
  const record = { ...POD, id: 'p2' } as SandboxRecord;
  // Synchronous: the RPC that makes a change never awaits a subscriber.
  for (let i = 0; i < 3; i++) {
    events.sandboxChanged(undefined, { ...record, id: `p${i}` });
  }
  t.is(events.subscriberCount, 1, 'the slow one is gone from the hub at once');
  t.is(slow.pending, 0, 'its queue is released');
  const err = await t.throwsAsync(slow.next(), { instanceOf: BerthError });
  t.is(err?.kind, 'resource_exhausted');
  t.regex(err?.message ?? '', /fell 3 events behind.*relist/);
  t.is((await drain(reader, 6)).length, 6, 'CREATED and STARTED of three pods');
  reader.close();
  t.is(events.subscriberCount, 0);
});

test('a pod is CREATED then STARTED when written READY, STOPPED on NOTREADY, DELETED when removed; a NOTREADY rewrite is no event', async (t) => {
  const events = new LifecycleEvents();
  events.attach({ pod: () => undefined, containersOf: () => [] });
  const sub = events.subscribe();
  const ready = { ...POD } as SandboxRecord;
  const notReady = { ...POD, state: 'NOTREADY' } as SandboxRecord;
  events.sandboxChanged(undefined, ready);
  events.sandboxChanged(ready, notReady);
  events.sandboxChanged(notReady, { ...notReady, networkState: undefined });
  events.sandboxChanged(notReady, undefined);
  t.is(sub.pending, 4);
  const got = await drain(sub, 4);
  t.deepEqual(got.map((e) => [e.kind, e.subject, e.id]), [
    ['CREATED', 'pod', POD.id],
    ['STARTED', 'pod', POD.id],
    ['STOPPED', 'pod', POD.id],
    ['DELETED', 'pod', POD.id],
  ]);
  t.is(got[3].pod?.state, 'NOTREADY', 'the deleted pod carries its last status');
  sub.close();
});

test('without subscribers no event is built: the pod containers are not even listed', (t) => {
  let listed = 0;
  const events = new LifecycleEvents();
  events.attach({ pod: () => POD, containersOf: () => (listed++, []) });
  const heard: string[] = [];
  events.listen((tr) => heard.push(tr.kind));
  events.containerChanged(undefined, { id: 'c1', sandboxId: POD.id, state: 'CREATED' } as ContainerRecord);
  t.is(listed, 0);
  t.deepEqual(heard, ['CREATED'], 'in-process listeners still hear it');
  const sub = events.subscribe();
  events.containerChanged({ id: 'c1', sandboxId: POD.id, state: 'CREATED' } as ContainerRecord, { id: 'c1', sandboxId: POD.id, state: 'RUNNING' } as ContainerRecord);
  t.is(listed, 1);
  sub.close();
});

test('closing the hub ends every reader and refuses later subscriptions; a closed subscription is forgotten', async (t) => {
  const events = new LifecycleEvents();
  const sub = events.subscribe();
  const waiting = sub.next();
  events.close();
  t.is(await waiting, undefined);
  t.is(events.subscriberCount, 0);
  const late = events.subscribe();
  t.is(await late.next(), undefined);
  t.is(events.subscriberCount, 0);
});

test('a throwing in-process listener is reported and does not stop the others', (t) => {
  const errors: unknown[] = [];
  const events = new LifecycleEvents((err) => errors.push(err));
  const heard: string[] = [];
  events.listen(() => {
    throw new Error('boom');
  });
  events.listen((tr) => heard.push(tr.kind));
  events.sandboxChanged(undefined, POD);
  t.deepEqual(heard, ['CREATED', 'STARTED']);
  t.is(errors.length, 2);
});

test('the record store reports each change once it is visible: create, durable and recoverable updates, delete; a no-op update is silent', async (t) => {
  const root = await tempRoot(t);
  const seen: [string | undefined, string | undefined][] = [];
  const store = new RecordStore<{ id: string; state: string }>(root, 'r.json', {
    onChange: (before, after) => {
      // Visible already: a listener reading the store sees the new record.
      t.is(store.get((after ?? before)!.id), after);
      seen.push([before?.state, after?.state]);
    },
  });
  await store.create({ id: 'a', state: 'CREATED' });
  await store.update('a', (r) => ({ ...r, state: 'RUNNING' }));
  await store.update('a', (r) => r);
  await store.update('a', (r) => ({ ...r, state: 'EXITED' }), 'recoverable');
  await store.delete('a');
  t.deepEqual(seen, [
    [undefined, 'CREATED'],
    ['CREATED', 'RUNNING'],
    ['RUNNING', 'EXITED'],
    ['EXITED', undefined],
  ]);
});

test('an event that cannot be built fails the subscribers (they relist), never the change that caused it', (t) => {
  const errors: unknown[] = [];
  const events = new LifecycleEvents((err) => errors.push(err));
  events.attach({ pod: () => { throw new Error('lookup broke'); }, containersOf: () => [] });
  const sub = events.subscribe();
  t.notThrows(() => events.containerChanged(undefined, { id: 'c1', sandboxId: POD.id, state: 'CREATED' } as ContainerRecord));
  t.is(errors.length, 1);
  t.is(events.subscriberCount, 0);
  return t.throwsAsync(sub.next(), { message: /an event could not be built \(lookup broke\): relist/ }).then(() => undefined);
});
