import test, { ExecutionContext } from 'ava';
import { existsSync, promises as fs, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { ContainerService } from '../../src/container/service.js';
import { ContainerConfig, ContainerRecord } from '../../src/container/types.js';
import type { RecordStore } from '../../src/store/records.js';
import { waitFor } from '../helpers/util.js';
import { FakeCgroups, FakeClock, FakeRuntime, fakeImages, fakePods, Journal, MONITOR_PID, PID, POD, recordingLog } from './fakes/container.js';

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
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-containers-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  return root;
}

function setup(root: string, clock = new FakeClock(-1)) {
  const j = new Journal();
  const runtime = new FakeRuntime(j);
  const log = recordingLog();
  const service = new ContainerService({
    root, runtime, cgroups: new FakeCgroups(j), images: fakeImages(j), sandboxes: fakePods(), log,
    rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26, cdiSpecDirs: [], delay: clock.delay,
  });
  return { j, runtime, log, service, clock, containersDir: path.join(root, 'containers') };
}

/** The service's record store: the state machine is the store's to enforce. */
const storeOf = (service: ContainerService) => (service as unknown as { records: RecordStore<ContainerRecord> }).records;

test('CreateContainer acquires in order: layer pin, bundle, cgroup, limits, shim process, record', async (t) => {
  const { j, service, containersDir } = setup(await tempRoot(t));
  const record = await service.create(POD.id, containerConfig());
  t.deepEqual(j.calls, ['images.pinLayers', 'cgroup.create', 'cgroup.apply', 'runtime.create', 'runtime.watchExit', 'images.unpinLayers']);
  t.is(record.state, 'CREATED');
  t.is(record.version, 1);
  t.deepEqual([record.pid, record.monitorPid], [PID, MONITOR_PID]);
  t.deepEqual(await fs.readdir(containersDir), [record.id]);
  t.deepEqual([...service.heldLayers()], ['sha256:l1']);
});

const rollbacks: { failAt: string; expected: string[] }[] = [
  { failAt: 'images.pinLayers', expected: ['images.pinLayers'] },
  { failAt: 'cgroup.create', expected: ['images.pinLayers', 'cgroup.create', 'images.unpinLayers'] },
  { failAt: 'cgroup.apply', expected: ['images.pinLayers', 'cgroup.create', 'cgroup.apply', 'cgroup.killAll', 'cgroup.remove', 'images.unpinLayers'] },
  {
    failAt: 'runtime.create',
    expected: ['images.pinLayers', 'cgroup.create', 'cgroup.apply', 'runtime.create', 'cgroup.killAll', 'cgroup.remove', 'images.unpinLayers'],
  },
  {
    failAt: 'record write',
    expected: ['images.pinLayers', 'cgroup.create', 'cgroup.apply', 'runtime.create', `signal ${PID} SIGKILL`, 'cgroup.killAll', 'cgroup.remove', 'images.unpinLayers'],
  },
];

for (const { failAt, expected } of rollbacks) {
  test(`CreateContainer failing at ${failAt} undoes every earlier step, newest first`, async (t) => {
    const { j, runtime, log, service, containersDir } = setup(await tempRoot(t));
    if (failAt === 'record write') runtime.spoilRecordWrite = true;
    else j.failing.add(failAt);
    // The bundle goes after the cgroup and before the layer pin: look at it as those undos run.
    const bundlePresent: Record<string, boolean> = {};
    // Synchronous: the hook runs inside an undo and must see the directory at that instant.
    const bundles = () => (existsSync(containersDir) ? readdirSync(containersDir) : []);
    j.onCall = (name) => {
      if (name === 'cgroup.remove' || name === 'images.unpinLayers') bundlePresent[name] = bundles().length > 0;
    };
    await t.throwsAsync(service.create(POD.id, containerConfig()));
    t.deepEqual(j.calls, expected);
    if (expected.includes('cgroup.remove')) t.true(bundlePresent['cgroup.remove'], 'the cgroup is removed before the bundle');
    if (expected.includes('images.unpinLayers')) t.false(bundlePresent['images.unpinLayers'], 'the layers are unpinned after the bundle is gone');
    t.deepEqual(bundles(), [], 'no bundle left');
    t.deepEqual(service.list(), []);
    t.deepEqual(log.lines.filter((l) => l.msg === 'undo step failed'), []);
    // The name was released: the same container can be created once the fault is gone.
    j.failing.clear();
    runtime.spoilRecordWrite = false;
    t.is((await service.create(POD.id, containerConfig())).state, 'CREATED');
  });
}

test('a recursive read-only mount of a file is INVALID_ARGUMENT naming the field; nothing is left; of a directory it is created', async (t) => {
  const root = await tempRoot(t);
  const { j, runtime, service, containersDir } = setup(root);
  const file = path.join(root, 'a-file');
  await fs.writeFile(file, 'x');
  const mount = { containerPath: '/data', readonly: true, selinuxRelabel: false, propagation: 'PRIVATE' as const, recursiveReadOnly: true };
  const refused = { ...containerConfig(), mounts: [{ ...mount, containerPath: '/ok', hostPath: root }, { ...mount, hostPath: file }] };
  const err = await t.throwsAsync(service.create(POD.id, refused), { instanceOf: BerthError });
  t.is(err?.kind, 'invalid_argument');
  t.regex(err?.message ?? '', /^config\.mounts\[1\]\.recursive_read_only: host_path ".*a-file" is not a directory/);
  t.false(j.calls.includes('runtime.create'));
  t.deepEqual(readdirSync(containersDir), []);
  t.deepEqual(service.list(), []);
  const created = await service.create(POD.id, { ...containerConfig(), mounts: [{ ...mount, hostPath: root }] });
  t.is(created.state, 'CREATED');
  t.true(runtime.specs.at(-1)?.mounts.some((m) => m.destination === '/data' && m.options.includes('rro')));
});

test('a failing undo is logged with its name and the rest still run; the caller gets the original error', async (t) => {
  const { j, log, service, containersDir } = setup(await tempRoot(t));
  j.failing.add('runtime.create');
  j.failing.add('cgroup.remove');
  const err = await t.throwsAsync(service.create(POD.id, containerConfig()));
  t.regex(err?.message ?? '', /injected failure: runtime.create/);
  t.deepEqual(j.calls.slice(-3), ['cgroup.killAll', 'cgroup.remove', 'images.unpinLayers']);
  t.deepEqual(readdirSync(containersDir), []);
  const failed = log.lines.filter((l) => l.msg === 'undo step failed');
  t.deepEqual(failed.map((l) => [l.level, l.fields?.step]), [['warn', 'remove cgroup']]);
});

test('StopContainer escalates to SIGKILL and kills the cgroup when the stop timeout passes', async (t) => {
  const { j, runtime, log, service, clock } = setup(await tempRoot(t), new FakeClock(30_000));
  runtime.fatal = new Set(['SIGKILL']);
  const { id } = await service.create(POD.id, containerConfig());
  await service.start(id);
  j.clear();
  await service.stop(id, 30);
  t.deepEqual(j.calls, [`signal ${PID} SIGTERM`, `signal ${PID} SIGKILL`, 'cgroup.killAll']);
  t.deepEqual(clock.waits, [30_000, 10_000]);
  t.true(log.lines.some((l) => l.msg === 'stop timeout passed: killing'));
  const stopped = service.get(id);
  t.is(stopped.state, 'EXITED');
  t.is(stopped.exit?.exitCode, 137);
  // Written behind the answer; on disk once flushed.
  await service.close();
  const onDisk = JSON.parse(await fs.readFile(path.join(stopped.bundle, 'container.json'), 'utf8')) as ContainerRecord;
  t.is(onDisk.state, 'EXITED');
});

test('StopContainer sends only the stop signal to a container that honours it', async (t) => {
  const { j, service, clock } = setup(await tempRoot(t));
  const { id } = await service.create(POD.id, containerConfig());
  await service.start(id);
  j.clear();
  await service.stop(id, 30);
  t.deepEqual(j.calls, [`signal ${PID} SIGTERM`]);
  t.deepEqual(clock.waits, [30_000]);
  t.is(service.get(id).exit?.exitCode, 143);
  t.is(service.get(id).exit?.reason, 'Error');
  // Stopping a stopped container does nothing.
  await service.stop(id, 30);
  t.deepEqual(j.calls, [`signal ${PID} SIGTERM`]);
});

test('StopContainer of a created (never started) container kills it at once: CREATED -> EXITED', async (t) => {
  const { j, service, clock } = setup(await tempRoot(t));
  const { id } = await service.create(POD.id, containerConfig());
  j.clear();
  await service.stop(id, 30);
  t.deepEqual(j.calls, [`signal ${PID} SIGKILL`, 'cgroup.killAll']);
  t.deepEqual(clock.waits, [10_000]);
  t.is(service.get(id).state, 'EXITED');
});

async function runningContainerOnDisk(t: ExecutionContext): Promise<{ root: string; id: string; bundle: string }> {
  const root = await tempRoot(t);
  const { service } = setup(root);
  const { id, bundle } = await service.create(POD.id, containerConfig());
  await service.start(id);
  await service.close();
  return { root, id, bundle };
}

test('after a restart a container whose monitor wrote an exit record is EXITED with that status', async (t) => {
  const { root, id, bundle } = await runningContainerOnDisk(t);
  const { runtime, service } = setup(root);
  runtime.exits.set(bundle, { exitCode: 3, signal: 0, startedAt: 5, finishedAt: 6 });
  await service.load();
  const record = service.get(id);
  t.is(record.state, 'EXITED');
  t.like(record.exit, { exitCode: 3, finishedAt: 6, reason: 'Error', oomKilled: false });
  await service.close();
  t.is((JSON.parse(await fs.readFile(path.join(bundle, 'container.json'), 'utf8')) as ContainerRecord).state, 'EXITED');
});

test('after a restart a container whose monitor is gone without an exit record is EXITED as unknown (255)', async (t) => {
  const { root, id } = await runningContainerOnDisk(t);
  const { runtime, service } = setup(root);
  runtime.monitorAlive = false;
  await service.load();
  t.like(service.get(id), { state: 'EXITED', exit: { exitCode: 255, signal: 0, oomKilled: false, reason: 'Unknown', message: 'the container monitor exited without recording an exit status' } });
});

test('after a restart a container whose monitor lives stays RUNNING and its exit is watched again', async (t) => {
  const { root, id, bundle } = await runningContainerOnDisk(t);
  const { j, runtime, service } = setup(root);
  await service.load();
  t.is(service.get(id).state, 'RUNNING');
  t.deepEqual(j.calls, ['runtime.watchExit']);
  runtime.exit(bundle, 0);
  await waitFor('the watched exit to be recorded', () => service.get(id).state === 'EXITED', { timeoutMs: 1000, intervalMs: 0 });
  t.like(service.get(id).exit, { exitCode: 0, reason: 'Completed' });
  await service.close();
});

test('the state machine: StartContainer of an exited container is refused as before, and the store refuses EXITED -> RUNNING', async (t) => {
  const { service } = setup(await tempRoot(t));
  const { id } = await service.create(POD.id, containerConfig());
  await service.stop(id, 0);
  const err = await t.throwsAsync(service.start(id), { instanceOf: BerthError });
  t.is((err as BerthError).kind, 'failed_precondition');
  t.is(err?.message, `container ${id} is EXITED, not CREATED`);
  const refused = await t.throwsAsync(storeOf(service).update(id, (r) => ({ ...r, state: 'RUNNING' })), { instanceOf: BerthError });
  t.is((refused as BerthError).kind, 'failed_precondition');
  t.regex(refused?.message ?? '', /state EXITED cannot become RUNNING/);
  t.is(service.get(id).state, 'EXITED');
});

test('readers get frozen snapshots: changing one throws and the stored record is untouched', async (t) => {
  const { service } = setup(await tempRoot(t));
  const { id } = await service.create(POD.id, containerConfig());
  const snapshot = service.get(id) as ContainerRecord;
  t.throws(() => {
    snapshot.state = 'RUNNING';
  }, { instanceOf: TypeError });
  t.throws(() => {
    snapshot.config.labels.x = 'y';
  }, { instanceOf: TypeError });
  t.is(service.get(id).state, 'CREATED');
});

test('RemoveContainer kills a running container, removes its cgroup and record, and collects image garbage; its bundle goes behind the answer', async (t) => {
  const { j, service, containersDir } = setup(await tempRoot(t));
  const { id } = await service.create(POD.id, containerConfig());
  await service.start(id);
  j.clear();
  await service.remove(id);
  t.deepEqual(j.calls, [`signal ${PID} SIGKILL`, 'cgroup.killAll', 'cgroup.remove', 'images.collectGarbage']);
  t.is(service.find(id), undefined);
  // From here a restarted berth sees the bundle as an orphan and releases it (the test below).
  t.false(existsSync(path.join(containersDir, id, 'container.json')), 'the record file is gone when RemoveContainer answers');
  t.deepEqual([...service.heldLayers()], []);
  // RemovePodSandbox waits for the bundles of its containers removed before.
  await service.removeAllInSandbox(POD.id);
  t.deepEqual(readdirSync(containersDir), []);
});

// CRI (cri-api's api.proto, on StopContainer and RemoveContainer): "This call is idempotent, and must not return an
// error if the container has already been stopped" / "... has already been removed". kubelet repeats both after
// restarts, and the Kubernetes 1.32 suite sends UUIDs that are no container's id.
test('StopContainer and RemoveContainer of ids that match nothing (a UUID, an unknown hex id) succeed and touch nothing', async (t) => {
  const { j, service } = setup(await tempRoot(t));
  const { id } = await service.create(POD.id, containerConfig());
  j.calls.length = 0;
  for (const unknown of ['0b5a3c55-2f9b-4a57-9a57-3d1f3f1e8a11', 'f'.repeat(64), `${id}0`]) {
    await service.stop(unknown, 0);
    await service.remove(unknown);
  }
  t.deepEqual(j.calls, []);
  t.is(service.get(id).state, 'CREATED');
});

test('StopContainer and RemoveContainer of an ambiguous id prefix are refused as invalid_argument and change nothing', async (t) => {
  const { service } = setup(await tempRoot(t));
  // 17 random hex ids: two share a first digit.
  const ids: string[] = [];
  for (let i = 0; i <= 16; i++) ids.push((await service.create(POD.id, containerConfig(`c${i}`))).id);
  const prefix = ids.map((id) => id[0]).find((c, i, all) => all.indexOf(c) !== i)!;
  for (const call of [() => service.stop(prefix, 0), () => service.remove(prefix)]) {
    const err = await t.throwsAsync(call(), { instanceOf: BerthError });
    t.is((err as BerthError).kind, 'invalid_argument');
    t.regex(err?.message ?? '', /ambiguous/);
  }
  t.is(service.list().length, 17);
  t.true(service.list().every((c) => c.state === 'CREATED'));
});

test('CreateContainer records the effective identity: Merge adds the image /etc/group memberships, Strict (container or pod) does not', async (t) => {
  const root = await tempRoot(t);
  const layer = path.join(root, 'layer');
  await fs.mkdir(path.join(layer, 'etc'), { recursive: true });
  await fs.writeFile(path.join(layer, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n');
  await fs.writeFile(path.join(layer, 'etc/group'), 'root:x:0:\nuser:x:1000:\nimage-group:x:50000:user\n');
  const identity = async (podPolicy: 'Merge' | 'Strict' | undefined, containerPolicy: 'Merge' | 'Strict' | undefined) => {
    const j = new Journal();
    const runtime = new FakeRuntime(j);
    const pod = { ...POD, config: { ...POD.config, supplementalGroupsPolicy: podPolicy } };
    const service = new ContainerService({
      root: await fs.mkdtemp(path.join(root, 'state-')), runtime, cgroups: new FakeCgroups(j), images: fakeImages(j, [layer]),
      sandboxes: fakePods(pod), log: recordingLog(), rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26, cdiSpecDirs: [], delay: new FakeClock(-1).delay,
    });
    const config = containerConfig();
    config.security = { ...config.security, runAsUser: 1000, supplementalGroups: [1234], supplementalGroupsPolicy: containerPolicy };
    const record = await service.create(POD.id, config);
    t.deepEqual(runtime.specs[0].process.additionalGids, record.user.additionalGids, 'the process gets what the record says');
    return record.user;
  };
  t.deepEqual(await identity(undefined, 'Merge'), { uid: 1000, gid: 1000, additionalGids: [1000, 1234, 50000] });
  t.deepEqual(await identity(undefined, undefined), { uid: 1000, gid: 1000, additionalGids: [1000, 1234, 50000] }, 'a record without a policy merges');
  t.deepEqual(await identity('Merge', 'Strict'), { uid: 1000, gid: 1000, additionalGids: [1000, 1234] });
  t.deepEqual(await identity('Strict', 'Merge'), { uid: 1000, gid: 1000, additionalGids: [1000, 1234] }, "the pod's Strict holds for a container that sent the default");
});

test('lxcfs "on" without lxcfs: CreateContainer is FAILED_PRECONDITION before anything is acquired; "auto" with lxcfs puts its binds in the spec', async (t) => {
  const root = await tempRoot(t);
  const base = setup(root);
  const make = (mode: 'on' | 'auto', found: import('../../src/kernel/lxcfs.js').LxcfsLookup) =>
    new ContainerService({
      root, runtime: base.runtime, cgroups: new FakeCgroups(base.j), images: fakeImages(base.j), sandboxes: fakePods(), log: base.log,
      rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26, cdiSpecDirs: [], delay: base.clock.delay,
      lxcfs: { mode, dir: '/var/lib/lxcfs', find: async () => found },
    });
  const refusing = make('on', { reason: 'nothing is mounted at /var/lib/lxcfs' });
  const err = await t.throwsAsync(refusing.create(POD.id, containerConfig()), { instanceOf: BerthError });
  t.is(err?.kind, 'failed_precondition');
  t.regex(err?.message ?? '', /^\[runtime\] lxcfs = "on" but lxcfs is not usable/);
  t.deepEqual(base.j.calls, []);
  t.deepEqual(existsSync(base.containersDir) ? readdirSync(base.containersDir) : [], []);
  t.deepEqual(refusing.list(), []);

  const using = make('auto', { view: { dir: '/var/lib/lxcfs', procFiles: ['meminfo', 'stat'] } });
  await using.create(POD.id, containerConfig('with-lxcfs'));
  t.deepEqual(base.runtime.specs.at(-1)?.mounts.filter((m) => m.source.startsWith('/var/lib/lxcfs/')).map((m) => m.destination), ['/proc/meminfo', '/proc/stat']);
});

test('a monitor that dies while berth runs (kill -9) is found by checkMonitors: the container is EXITED as unknown, its cgroup killed', async (t) => {
  const { j, runtime, service } = setup(await tempRoot(t));
  const { id } = await service.create(POD.id, containerConfig());
  await service.start(id);
  await service.checkMonitors();
  t.is(service.get(id).state, 'RUNNING', 'a live monitor changes nothing');
  runtime.monitorAlive = false;
  j.calls.length = 0;
  await service.checkMonitors();
  t.like(service.get(id), { state: 'EXITED', exit: { exitCode: 255, reason: 'Unknown' } });
  t.true(j.calls.includes('cgroup.killAll'), 'what the init forked is killed too');
  await service.close();
});

test('a bundle without a record (a CreateContainer or RemoveContainer berth crashed in) has its monitor and cgroup released on load, then goes', async (t) => {
  const root = await tempRoot(t);
  const bundle = path.join(root, 'containers', 'c'.repeat(64));
  await fs.mkdir(bundle, { recursive: true });
  await fs.writeFile(path.join(bundle, 'cgroup-path'), `/${POD.id}/${'c'.repeat(64)}`);
  const { j, service } = setup(root);
  await service.load();
  t.deepEqual(j.calls, ['runtime.killShimsOf', 'cgroup.killAll', 'cgroup.remove']);
  t.false(existsSync(bundle));
  t.deepEqual(service.list(), []);
});

test('CreateContainer writes the pids limit (the pod annotation lowering the node\'s) and the block I/O class the annotations select', async (t) => {
  const root = await tempRoot(t);
  const j = new Journal();
  const cgroups = new FakeCgroups(j);
  const pod = { ...POD, config: { ...POD.config, annotations: { 'berth.dev/pids-limit': '64', 'blockio.resources.beta.kubernetes.io/container.db': 'slow' } } };
  const service = new ContainerService({
    root, runtime: new FakeRuntime(j), cgroups, images: fakeImages(j), sandboxes: fakePods(pod), log: recordingLog(),
    rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26, cdiSpecDirs: [], pidsLimit: 4096,
    blockioClasses: { slow: [{ major: 7, minor: 3, writeBps: 1048576 }] },
  });
  await service.create(POD.id, containerConfig('db'));
  await service.create(POD.id, containerConfig('web'));
  t.like(cgroups.applied[0], { pidsLimit: 64, blockio: [{ major: 7, minor: 3, writeBps: 1048576 }] });
  t.like(cgroups.applied[1], { pidsLimit: 64 });
  t.is(cgroups.applied[1].blockio, undefined);
});

test('CreateContainer with an unknown block I/O class is INVALID_ARGUMENT naming the annotation, before anything is acquired', async (t) => {
  const root = await tempRoot(t);
  const j = new Journal();
  const service = new ContainerService({
    root, runtime: new FakeRuntime(j), cgroups: new FakeCgroups(j), images: fakeImages(j), sandboxes: fakePods(), log: recordingLog(),
    rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26, cdiSpecDirs: [], pidsLimit: 4096, blockioClasses: {},
  });
  const config = { ...containerConfig(), annotations: { 'io.kubernetes.cri.blockio-class': 'gold' } };
  const err = await t.throwsAsync(service.create(POD.id, config), { instanceOf: BerthError });
  t.is(err?.kind, 'invalid_argument');
  t.regex(err?.message ?? '', /^config\.annotations\["io\.kubernetes\.cri\.blockio-class"\]: unknown block I\/O class "gold"/);
  t.deepEqual(j.calls, []);
  t.deepEqual(await fs.readdir(path.join(root, 'containers')).catch(() => []), []);
});
