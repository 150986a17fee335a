import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { BerthState, containerConfig, hostLeftovers, podConfig, processesMentioning, stateLeftovers } from '../helpers/cri.js';
import { freePort } from '../helpers/util.js';
import { FAULT_STEPS, FaultStep } from '../../src/fault.js';
import { chainPrefixFor } from '../../src/network/index.js';

// Crash at every step: a berth started with BERTH_FAULT=<step>:1 is driven through a pod's whole life (pull, run,
// two containers created and started, one stopped and removed by hand, the pod stopped and removed) until it kills
// itself at that step. A berth started again on the same root must then own everything the dead one left (a
// half-made pod or container is either listed and usable, or gone from records and kernel alike), and a full
// teardown through the RPCs must leave nothing at all.
//
// BERTH_FAULT_WALK=full (npm run test:reliability) walks every step in FAULT_STEPS (and the second arrival at those
// reached twice), then kills berth from outside at random moments of the same drive until 100 runs are done
// (BERTH_FAULT_RANDOM_RUNS overrides the count of those).
// Without it (npm test) a sample runs: SAMPLE_STEPS random steps and one random-moment kill.
// BERTH_FAULT_STEPS=a,b:2 runs just those (n defaults to 1), e.g. to reproduce one.

const FULL = process.env.BERTH_FAULT_WALK === 'full';
const SAMPLE_STEPS = 4;
const TOTAL_FULL_RUNS = 100;
/**
 * Steps the drive reaches twice: both containers are created, started and removed (the second by RemovePodSandbox;
 * the first stops on SIGTERM, so only the second is ever SIGKILLed); the pod's remove repeats its stop's release;
 * the image has two layers. The full walk crashes at
 * the second arrival too, where a first object already exists beside the half-made one.
 */
const REACHED_TWICE: FaultStep[] = [
  'container.create.name', 'container.create.bundle', 'container.create.cgroup', 'container.create.spec', 'container.create.shim',
  'container.create.record', 'container.start.begin', 'container.start.released', 'container.start.record', 'container.remove.stopped',
  'container.create.layer', 'container.remove.cgroup', 'container.remove.layer', 'container.remove.record', 'pod.stop.init', 'pod.stop.network', 'pod.stop.unpin', 'image.pull.staging', 'image.pull.unpacked', 'image.pull.layer-committed',
];
const WALK: string[] = [...FAULT_STEPS.map((s) => `${s}:1`), ...REACHED_TWICE.map((s) => `${s}:2`)];
const RANDOM_RUNS = Number(process.env.BERTH_FAULT_RANDOM_RUNS ?? (FULL ? Math.max(TOTAL_FULL_RUNS - WALK.length, 0) : 1));

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  // Two layers: a crash between their commits leaves one committed layer that no image record names.
  const extra = await layer([{ type: 'file', path: 'etc/fault-walk', content: 'x\n' }]);
  image = await pushImage(registry, 'berth/fault-walk', 'v1', { layers: [await busyboxLayer(), extra], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

const TERM_FRIENDLY = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

interface Run {
  berth: BerthProcess;
  state: BerthState;
  cgroupParent: string;
  logDir: string;
}

class BerthDied extends Error {}

/** Each RPC of the drive races the berth's death: once it is dead, the drive stops there. */
async function drive(run: Run, onStep?: (n: number) => void): Promise<void> {
  const b = run.berth;
  let step = 0;
  const died = b.exited.then(() => {
    throw new BerthDied();
  });
  died.catch(() => undefined);
  const call = async <T>(p: Promise<T>): Promise<T> => {
    onStep?.(step++);
    try {
      return await Promise.race([p, died]);
    } catch (err) {
      // An RPC in flight when berth died fails with UNAVAILABLE: that is the death, not a berth answer.
      if (b.child.exitCode !== null || b.child.signalCode !== null) throw new BerthDied();
      await Promise.race([new Promise((r) => setTimeout(r, 200)), died]);
      throw err;
    }
  };
  const hostPort = await freePort();
  await call(b.images.PullImage({ image: { image: image.ref } }));
  const pod = podConfig({
    log_directory: run.logDir,
    port_mappings: [{ protocol: 'TCP', container_port: 8080, host_port: hostPort, host_ip: '' }],
    // A size-limited writable layer for each container (image, loop device, mount) and an egress limit (an ifb in
    // the host's namespace): more objects a crash can leave.
    annotations: { 'writable-layer.berth.io/pod': '8Mi', 'kubernetes.io/egress-bandwidth': '100M' },
    // A shared PID namespace: the pod has an init of its own, one more thing a crash can leave.
    linux: { cgroup_parent: run.cgroupParent, security_context: { namespace_options: { network: 'POD', pid: 'POD', ipc: 'POD' } } },
  });
  const { pod_sandbox_id } = await call(b.runtime.RunPodSandbox({ config: pod }));
  const ids: string[] = [];
  for (const name of ['first', 'second']) {
    const config = containerConfig(image.ref, { metadata: { name, attempt: 0 }, command: ['/bin/sh', '-c', TERM_FRIENDLY], log_path: `${name}.log` });
    const { container_id } = await call(b.runtime.CreateContainer({ pod_sandbox_id, config, sandbox_config: pod }));
    await call(b.runtime.StartContainer({ container_id }));
    ids.push(container_id);
  }
  await call(b.runtime.StopContainer({ container_id: ids[0], timeout: 10 }));
  await call(b.runtime.RemoveContainer({ container_id: ids[0] }));
  await call(b.runtime.StopPodSandbox({ pod_sandbox_id }));
  await call(b.runtime.RemovePodSandbox({ pod_sandbox_id }));
}

async function startRun(env: Record<string, string>): Promise<Run> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n`, env, logLevel: 'info' });
  const net = JSON.parse(await fs.readFile(path.join(berth.dir, 'testnet.json'), 'utf8')) as { bridge: string };
  return {
    berth,
    state: { root: berth.root, stateDir: berth.stateDir, bridge: net.bridge, chainPrefix: chainPrefixFor(net.bridge) },
    cgroupParent: `/berth-fault-${randomBytes(6).toString('hex')}`,
    logDir: path.join(berth.dir, 'logs'),
  };
}

const cgroupExists = (cg: string) => fs.access(`/sys/fs/cgroup${cg}`).then(() => true, () => false);

/**
 * After the restart: every pod and container listed is whole (a READY pod has its veth, a RUNNING container
 * answers an exec), and nothing of berth's on disk or in the kernel is owned by no listed object.
 */
async function checkRecovered(t: ExecutionContext, run: Run): Promise<string[]> {
  const b = run.berth;
  const pods = (await b.runtime.ListPodSandbox({})).items;
  const containers = (await b.runtime.ListContainers({})).containers;
  const owned = [...pods.map((p) => p.id), ...containers.map((c) => c.id)];
  const problems = await stateLeftovers(run.state, owned);
  for (const p of pods) {
    const s = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: p.id })).status!;
    if (s.state === 'SANDBOX_READY' && !(await fs.access(`/sys/class/net/${run.state.bridge}/brif/berth${p.id.slice(0, 10)}`).then(() => true, () => false))) {
      problems.push(`pod ${p.id} is READY but has no veth on the bridge`);
    }
  }
  for (const c of containers) {
    const s = (await b.runtime.ContainerStatus({ container_id: c.id })).status!;
    if (s.state === 'CONTAINER_RUNNING') {
      const r = await b.runtime.ExecSync({ container_id: c.id, cmd: ['true'], timeout: 10 }).catch((err: Error) => ({ exit_code: -1, err }));
      if (r.exit_code !== 0) problems.push(`container ${c.id} is RUNNING but an exec in it failed: ${JSON.stringify(r)}`);
    }
  }
  if (pods.length === 0 && (await cgroupExists(run.cgroupParent))) problems.push(`pod cgroup ${run.cgroupParent} exists but no pod is listed`);
  for (const p of await processesMentioning(b.dir)) {
    if (!p.startsWith(`${b.child.pid}:`) && !owned.some((id) => p.includes(id))) problems.push(`process no listed object owns: ${p}`);
  }
  const mounts = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.includes(b.dir));
  for (const m of mounts) if (!owned.some((id) => m.includes(id))) problems.push(`mount no listed object owns: ${m}`);
  t.log(`after restart: ${pods.length} pod(s) [${pods.map((p) => p.state).join(',')}], ${containers.length} container(s) [${containers.map((c) => c.state).join(',')}]`);
  return problems;
}

/** Removes everything through the RPCs, then checks that no trace of any kind is left. */
async function tearDownAndCheck(run: Run): Promise<string[]> {
  const b = run.berth;
  for (const p of (await b.runtime.ListPodSandbox({})).items) {
    await b.runtime.StopPodSandbox({ pod_sandbox_id: p.id });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
  }
  for (const img of (await b.images.ListImages({})).images) await b.images.RemoveImage({ image: { image: img.id } });
  const problems = await stateLeftovers(run.state);
  for (const name of await fs.readdir(path.join(run.state.root, 'images', 'images'))) problems.push(`image record after RemoveImage: ${name}`);
  for (const name of await fs.readdir(path.join(run.state.root, 'images', 'layers'))) problems.push(`layer after the last image went: ${name}`);
  await b.stop();
  // Every pod id this berth (or the one that crashed, whose log it took over) logged: their ifb devices must be gone.
  const podIds = new Set([...b.logs.join('\n').matchAll(/"pod":"([0-9a-f]{64})"/g)].map((m) => m[1]!));
  problems.push(...(await hostLeftovers(b.dir, [run.cgroupParent], [...podIds])));
  return problems;
}

async function crashAndRecover(t: ExecutionContext, env: Record<string, string>, killAt?: number): Promise<void> {
  const first = await startRun(env);
  let run = first;
  try {
    let died = false;
    try {
      await drive(first, killAt === undefined ? undefined : (n) => {
        if (n === killAt) setTimeout(() => first.berth.child.kill('SIGKILL'), Math.floor(Math.random() * 150));
      });
    } catch (err) {
      if (!(err instanceof BerthDied)) throw err;
      died = true;
    }
    if (env.BERTH_FAULT) {
      t.true(died, `berth did not die at ${env.BERTH_FAULT}: the step is never reached by the drive`);
      t.true(first.berth.logs.some((l) => l.includes('BERTH_FAULT is set')), 'the switch is logged at start');
      t.true(first.berth.logs.some((l) => l.includes('BERTH_FAULT: crashing now')), 'the crash is logged');
    }
    if (!died) first.berth.child.kill('SIGKILL');
    await first.berth.stop();
    run = { ...first, berth: await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n`, dir: first.berth.dir, logLevel: 'info' }) };
    t.deepEqual(await checkRecovered(t, run), [], 'after the restart, everything berth holds is owned by a listed, whole object');
    t.deepEqual(await tearDownAndCheck(run), [], 'a full teardown leaves nothing');
  } finally {
    await run.berth.cleanup();
  }
}

function sample<T>(items: readonly T[], n: number): T[] {
  return [...items].sort(() => Math.random() - 0.5).slice(0, n);
}

const chosen = process.env.BERTH_FAULT_STEPS?.split(',').filter((s) => s !== '').map((s) => (s.includes(':') ? s : `${s}:1`));
for (const fault of chosen ?? (FULL ? WALK : sample(WALK, SAMPLE_STEPS))) {
  test.serial(`a crash at ${fault} is recovered on restart and a teardown then leaves nothing`, async (t) => {
    await crashAndRecover(t, { BERTH_FAULT: fault });
  });
}

for (let i = 0; i < RANDOM_RUNS; i++) {
  // 10 RPCs in the drive (pull, run, 2 x create+start, stop, remove, stop pod, remove pod): the kill lands during
  // or just after one of them.
  const killAt = Math.floor(Math.random() * 10);
  test.serial(`random crash ${i + 1}: SIGKILL during RPC ${killAt} is recovered on restart and a teardown then leaves nothing`, async (t) => {
    await crashAndRecover(t, {}, killAt);
  });
}
