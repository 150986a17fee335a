import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SandboxService, sandboxRecordStore } from '../../src/sandbox/service.js';
import { SandboxConfig, SandboxRecord } from '../../src/sandbox/types.js';
import { RecordStore } from '../../src/store/records.js';
import { FakeCgroups, FakeContainers, FakeNetwork, FakeSandboxRuntime, Journal, LogLine, recordingLog } from './fakes/sandbox.js';

// The sandbox service's order of operations, rollback, restart reconciliation and state machine, without root:
// every kernel-level operation goes to recording fakes (test/unit/fakes/sandbox.ts); records go to a temp dir.

function podConfig(name = 'web'): SandboxConfig {
  return {
    metadata: { name, uid: `uid-${name}`, namespace: 'default', attempt: 0 },
    hostname: name,
    logDirectory: '/var/log/pods/x',
    portMappings: [],
    labels: { app: name },
    annotations: {},
    cgroupParent: '',
    namespaces: { network: 'POD', pid: 'POD', ipc: 'POD' },
    privileged: false,
    sysctls: {},
    runtimeHandler: '',
  };
}

async function setup(t: ExecutionContext, root?: string) {
  root ??= await fs.mkdtemp(path.join(os.tmpdir(), 'berth-sandbox-'));
  const dir = root;
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const journal = new Journal();
  const runtime = new FakeSandboxRuntime(journal);
  const network = new FakeNetwork(journal);
  const lines: LogLine[] = [];
  const service = new SandboxService({
    root,
    stateDir: path.join(root, 'run'),
    log: recordingLog(lines),
    shmSizeBytes: 65536,
    runtime,
    cgroups: new FakeCgroups(journal),
    containers: new FakeContainers(journal),
    network,
  });
  // The record write is journaled (and can be made to fail) like the kernel steps.
  const store = (service as unknown as { records: RecordStore<SandboxRecord> }).records;
  const create = store.create.bind(store);
  store.create = (record) => {
    journal.call('records.create');
    return create(record);
  };
  await service.load();
  return { root, journal, runtime, network, lines, service };
}

/** What undoes each acquisition, in the order the undos run (the unpin is registered with the run directory). */
const UNDO_OF: Record<string, string[]> = {
  makeRunDir: ['unpinNamespaces', 'removeRunDir'],
  'network.prepare': ['network.teardown'],
  createNamespaces: ['killInit'],
  'cgroups.create': ['cgroups.remove'],
  mountShm: ['unmountShm'],
};

const STEPS = ['makeRunDir', 'network.prepare', 'createNamespaces', 'cgroups.create', 'writePodFiles', 'mountShm', 'network.setup', 'writeHostsFile', 'records.create'];

test('a successful RunPodSandbox takes every step once and undoes none', async (t) => {
  const { journal, service } = await setup(t);
  const record = await service.run(podConfig());
  t.deepEqual([...journal.ops].sort(), [...STEPS].sort());
  t.is(record.state, 'READY');
  t.is(record.ip, '10.0.0.3');
  t.is(record.initPid, 4242);
  t.deepEqual(record.networkState, { backend: 'fake', stage: 'set up' });
  t.true(Object.isFrozen(record) && Object.isFrozen(record.namespacePaths), 'the caller gets a frozen snapshot');
  t.is(service.get(record.id), record);
});

for (const failing of STEPS) {
  test(`a RunPodSandbox failing at ${failing} undoes every earlier step, newest first, and leaves no record`, async (t) => {
    const { root, journal, network, lines, service } = await setup(t);
    journal.failing.add(failing);
    await t.throwsAsync(service.run(podConfig()), { message: `injected failure: ${failing}` });

    // Which acquisitions completed, and when each began and ended, from the journal.
    const calls = journal.calls;
    const began = (op: string) => calls.indexOf(op);
    const ended = (op: string) => calls.indexOf(`done:${op}`);
    const acquired = STEPS.filter((s) => ended(s) >= 0);
    const undos = calls.filter((c) => !c.startsWith('done:') && !STEPS.includes(c));
    const expected = acquired.flatMap((s) => UNDO_OF[s] ?? []);
    t.deepEqual([...undos].sort(), [...expected].sort(), `exactly the undos of ${acquired.join(', ')}`);
    t.true(undos.every((u) => calls.indexOf(u) > began(failing)), 'nothing is undone before the failure');
    // A step that began after another had ended depends on it: its undos run first.
    for (const a of acquired) {
      for (const b of acquired) {
        if (ended(a) >= began(b)) continue;
        for (const ub of UNDO_OF[b] ?? []) {
          for (const ua of UNDO_OF[a] ?? []) {
            t.true(undos.indexOf(ub) < undos.indexOf(ua), `${ub} (undo of ${b}) runs before ${ua} (undo of ${a})`);
          }
        }
      }
    }
    for (const [a, b] of [['unpinNamespaces', 'removeRunDir'], ['network.teardown', 'unpinNamespaces'], ['killInit', 'unpinNamespaces']]) {
      if (undos.includes(a) && undos.includes(b)) t.true(undos.indexOf(a) < undos.indexOf(b), `${a} before ${b}`);
    }
    // What the network holds by the failure is what it is asked to tear down.
    if (acquired.includes('network.prepare')) t.deepEqual(network.tornDown, [acquired.includes('network.setup') ? 'set up' : 'planned']);

    t.deepEqual(service.list(), []);
    t.deepEqual(await fs.readdir(path.join(root, 'sandboxes')).catch(() => []), [], 'no record directory is left');
    t.deepEqual(lines.filter((l) => l.msg === 'undo step failed'), []);
    // The name is free again.
    journal.failing.clear();
    t.is((await service.run(podConfig())).state, 'READY');
  });
}

test('a failing undo is logged by name with the pod id, and the other undos still run', async (t) => {
  const { journal, lines, service } = await setup(t);
  journal.failing.add('network.setup');
  journal.failing.add('cgroups.remove');
  await t.throwsAsync(service.run(podConfig()), { message: 'injected failure: network.setup' });
  const failed = lines.filter((l) => l.msg === 'undo step failed');
  t.is(failed.length, 1);
  t.is(failed[0].fields.step, 'remove pod cgroup');
  t.regex(String(failed[0].fields.pod), /^[0-9a-f]{64}$/);
  t.regex(String(failed[0].fields.error), /injected failure: cgroups.remove/);
  for (const undo of ['killInit', 'unmountShm', 'network.teardown', 'unpinNamespaces', 'removeRunDir']) t.true(journal.ops.includes(undo), undo);
});

test('StopPodSandbox releases once and is idempotent on the record', async (t) => {
  const { root, journal, network, service } = await setup(t);
  const { id } = await service.run(podConfig());
  journal.clear();
  await service.stop(id);
  t.deepEqual(journal.ops, ['containers.stop', 'isInitAlive', 'killInit', 'network.teardown', 'unpinNamespaces', 'unmountShm']);
  const stopped = service.get(id);
  t.is(stopped.state, 'NOTREADY');
  t.is(stopped.networkState, undefined);
  const file = path.join(root, 'sandboxes', id, 'sandbox.json');
  const onDisk = await fs.readFile(file, 'utf8');
  t.is(JSON.parse(onDisk).state, 'NOTREADY');
  const mtime = (await fs.stat(file)).mtimeMs;

  journal.clear();
  runtimeGone(service);
  await service.stop(id);
  t.is(service.get(id), stopped, 'a second stop changes nothing: the same snapshot');
  t.is(await fs.readFile(file, 'utf8'), onDisk);
  t.is((await fs.stat(file)).mtimeMs, mtime, 'and writes nothing');
  t.deepEqual(network.tornDown, ['set up'], 'the network is torn down once');
  t.deepEqual(journal.ops, ['containers.stop', 'isInitAlive', 'unpinNamespaces', 'unmountShm'], 'the kernel-side release is repeated (idempotent)');
});

/** The pod init is gone after the first stop. */
function runtimeGone(service: SandboxService): void {
  ((service as unknown as { opts: { runtime: FakeSandboxRuntime } }).opts.runtime).initAlive = false;
}

test('RemovePodSandbox removes containers, releases, and forgets the pod; removing it again is no error', async (t) => {
  const { root, journal, service } = await setup(t);
  const { id } = await service.run(podConfig());
  await service.stop(id);
  journal.clear();
  await service.remove(id);
  t.deepEqual(journal.ops, ['containers.remove', 'isInitAlive', 'killInit', 'unpinNamespaces', 'unmountShm', 'cgroups.remove', 'removeRunDir']);
  t.is(service.find(id), undefined);
  t.deepEqual(await fs.readdir(path.join(root, 'sandboxes')), []);
  await service.remove(id);
  t.is((await service.run(podConfig())).state, 'READY', 'the name is free again');
});

test('restart reconciliation marks a READY pod NOTREADY when its pins are gone, or its init', async (t) => {
  const first = await setup(t);
  const kept = await first.service.run(podConfig('kept'));
  const stopped = await first.service.run(podConfig('stopped'));
  await first.service.stop(stopped.id);

  const again = await setup(t, first.root);
  t.is(again.service.get(kept.id).state, 'READY', 'pins and init alive: still ready');
  t.is(again.service.get(stopped.id).state, 'NOTREADY');
  t.true(Object.isFrozen(again.service.get(kept.id)), 'loaded records are snapshots too');

  const noPins = new Journal();
  const rebooted = await reload(first.root, (rt) => (rt.pinned = false), noPins);
  t.is(rebooted.get(kept.id).state, 'NOTREADY');
  t.is(JSON.parse(await fs.readFile(path.join(first.root, 'sandboxes', kept.id, 'sandbox.json'), 'utf8')).state, 'NOTREADY', 'and on disk');
  t.deepEqual(noPins.ops, ['pinsPresent', 'isInitAlive'], 'only the READY pod is checked');
  await t.throwsAsync(rebooted.run(podConfig('kept')), { message: /already exists/ }, 'its name is still taken');
});

test('restart reconciliation marks a pod NOTREADY when its init is gone though its pins remain', async (t) => {
  const first = await setup(t);
  const { id } = await first.service.run(podConfig());
  const reloaded = await reload(first.root, (rt) => (rt.initAlive = false));
  t.is(reloaded.get(id).state, 'NOTREADY');
});

async function reload(root: string, tweak: (rt: FakeSandboxRuntime) => void, journal = new Journal()): Promise<SandboxService> {
  const runtime = new FakeSandboxRuntime(journal);
  tweak(runtime);
  const service = new SandboxService({
    root,
    stateDir: path.join(root, 'run'),
    log: recordingLog(),
    shmSizeBytes: 65536,
    runtime,
    cgroups: new FakeCgroups(journal),
    containers: new FakeContainers(journal),
    network: new FakeNetwork(journal),
  });
  await service.load();
  return service;
}

test('the pod state machine: READY may become NOTREADY, never the reverse', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-sandbox-states-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const store = sandboxRecordStore(root);
  const record: SandboxRecord = {
    id: 'p1',
    config: podConfig(),
    state: 'READY',
    createdAt: 1,
    namespacePaths: {},
    cgroup: { path: '/p1', created: [] },
    filesDir: '/nowhere',
    additionalIps: [],
  };
  await store.create(record);
  await store.update('p1', (r) => ({ ...r, state: 'NOTREADY' }));
  const err = await t.throwsAsync(store.update('p1', (r) => ({ ...r, state: 'READY' })));
  t.regex(err?.message ?? '', /state NOTREADY cannot become READY/);
  t.is(store.get('p1')?.state, 'NOTREADY');
  t.is(JSON.parse(await fs.readFile(path.join(root, 'sandboxes', 'p1', 'sandbox.json'), 'utf8')).state, 'NOTREADY');
});

// CRI (cri-api's api.proto, on StopPodSandbox and RemovePodSandbox): "This call is idempotent, and must not return
// an error if all relevant resources have already been reclaimed" / "... if the sandbox has already been removed".
// kubelet repeats both after restarts, and the Kubernetes 1.32 suite sends UUIDs that are no pod's id.
test('StopPodSandbox and RemovePodSandbox of ids that match nothing (a UUID, an unknown hex id) succeed and touch nothing', async (t) => {
  const { journal, service } = await setup(t);
  const { id } = await service.run(podConfig());
  journal.clear();
  for (const unknown of ['6f1c2b9e-3a4d-4e5f-8a7b-9c0d1e2f3a4b', '0'.repeat(64), `${id}0`]) {
    await service.stop(unknown);
    await service.remove(unknown);
  }
  t.deepEqual(journal.ops, []);
  t.is(service.get(id).state, 'READY');
});

test('StopPodSandbox and RemovePodSandbox of an ambiguous id prefix are refused as invalid_argument and change nothing', async (t) => {
  const { journal, service } = await setup(t);
  // 17 random hex ids: two share a first digit.
  const ids: string[] = [];
  for (let i = 0; i <= 16; i++) ids.push((await service.run(podConfig(`p${i}`))).id);
  const prefix = ids.map((id) => id[0]).find((c, i, all) => all.indexOf(c) !== i)!;
  journal.clear();
  for (const call of [() => service.stop(prefix), () => service.remove(prefix)]) {
    const err = await t.throwsAsync(call(), { message: /ambiguous/ });
    t.is((err as unknown as { kind: string }).kind, 'invalid_argument');
  }
  t.deepEqual(journal.ops, []);
  t.true(service.list().every((p) => p.state === 'READY'));
});

test('a run directory no record owns (a RunPodSandbox berth crashed in) is released from its notes on the next start', async (t) => {
  const { journal, runtime, service } = await setup(t);
  const live = await service.run(podConfig('kept'));
  // What a crash after every acquisition but before the record leaves: notes of the network plan and cgroup.
  const crashed = path.join(path.dirname(runtime.runDirs.keys().next().value!), 'f'.repeat(64));
  await runtime.writeRunNote(crashed, 'network', { request: { podId: 'f'.repeat(64) }, state: { stage: 'planned' } });
  await runtime.writeRunNote(crashed, 'cgroup', { path: '/berth-pod-ffff' });
  journal.clear();
  await service.releaseInterrupted();
  t.deepEqual(journal.ops, ['killShimsOf', 'network.teardown', 'unpinNamespaces', 'unmountShm', 'cgroups.removeIfUnused', 'removeRunDir']);
  t.false(runtime.runDirs.has(crashed));
  t.true(runtime.runDirs.size > 0, 'the live pod\'s run directory is kept');
  t.is(service.get(live.id).state, 'READY');

  // A cgroup that already existed when the pod was made (kubelet's) is not berth's to remove.
  await runtime.writeRunNote(crashed, 'cgroup', { path: '/kubepods/pod-x', created: [] });
  journal.clear();
  await service.releaseInterrupted();
  t.false(journal.ops.includes('cgroups.removeIfUnused'));
  t.true(journal.ops.includes('removeRunDir'));
});
