import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { cleanUpAndCheck, containerConfig, podConfig, stateLeftovers } from '../helpers/cri.js';
import { pidAlive, waitFor } from '../helpers/util.js';
import { chainPrefixFor } from '../../src/network/index.js';

// kill -9 from outside berth, of a container's monitor and of its init: both are exits, reported by
// ContainerStatus, and the container is then removed without a trace.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/busybox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

// The shell forks a child now and then: a process beside the init, which PDEATHSIG does not reach.
const TERM_FRIENDLY = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

interface Running {
  berth: BerthProcess;
  podId: string;
  containerId: string;
  pid: number;
  monitorPid: number;
  cgroupPath: string;
}

async function runningContainer(t: ExecutionContext): Promise<Running> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const cgroups: string[] = [];
  const net = JSON.parse(await fs.readFile(path.join(berth.dir, 'testnet.json'), 'utf8')) as { bridge: string };
  cleanUpAndCheck(t, berth, cgroups);
  await berth.images.PullImage({ image: { image: image.ref } });
  const logDir = path.join(berth.dir, 'logs');
  const pod = podConfig({ log_directory: logDir });
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  const podInfo = JSON.parse((await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true })).info.info);
  cgroups.push(podInfo.cgroup.path);
  const { container_id } = await berth.runtime.CreateContainer({
    pod_sandbox_id,
    config: containerConfig(image.ref, { command: ['/bin/sh', '-c', TERM_FRIENDLY], log_path: 'c.log' }),
    sandbox_config: pod,
  });
  await berth.runtime.StartContainer({ container_id });
  const info = JSON.parse((await berth.runtime.ContainerStatus({ container_id, verbose: true })).info.info);
  t.teardown(async () => {
    // Before cleanup stops berth: no record, run directory, veth or rule of the pod may be left.
    const left = await stateLeftovers({ root: berth.root, stateDir: berth.stateDir, bridge: net.bridge, chainPrefix: chainPrefixFor(net.bridge) });
    if (left.length > 0) throw new Error(`berth state left behind:\n${left.join('\n')}`);
  });
  return { berth, podId: pod_sandbox_id, containerId: container_id, pid: info.pid, monitorPid: info.monitorPid, cgroupPath: info.cgroup.path };
}

async function exitedStatus(r: Running) {
  return waitFor(`container ${r.containerId} reported exited`, async () => {
    const s = (await r.berth.runtime.ContainerStatus({ container_id: r.containerId })).status!;
    return s.state === 'CONTAINER_EXITED' ? s : undefined;
  }, { timeoutMs: 15_000 });
}

/** Every process still in the container's cgroup, in any hierarchy berth made it in. */
async function processesIn(cgroupPath: string): Promise<string[]> {
  const found: string[] = [];
  for (const ctrl of ['', '/memory', '/pids', '/unified']) {
    const text = await fs.readFile(`/sys/fs/cgroup${ctrl}${cgroupPath}/cgroup.procs`, 'utf8').catch(() => '');
    found.push(...text.split('\n').filter((l) => l !== ''));
  }
  return found;
}

async function removeAndCheck(t: ExecutionContext, r: Running): Promise<void> {
  await r.berth.runtime.RemoveContainer({ container_id: r.containerId });
  t.deepEqual((await r.berth.runtime.ListContainers({})).containers, [], 'the container is removed');
  await r.berth.runtime.StopPodSandbox({ pod_sandbox_id: r.podId });
  await r.berth.runtime.RemovePodSandbox({ pod_sandbox_id: r.podId });
}

test('kill -9 of a container monitor is an exit: reported with reason Unknown, nothing of the container runs on, removed cleanly', async (t) => {
  const r = await runningContainer(t);
  t.true(pidAlive(r.monitorPid) && pidAlive(r.pid));
  process.kill(r.monitorPid, 'SIGKILL');
  const s = await exitedStatus(r);
  t.is(s.exit_code, 255);
  t.is(s.reason, 'Unknown');
  t.true(BigInt(s.finished_at) > 0n);
  await waitFor('the init to be gone', () => !pidAlive(r.pid));
  await waitFor('the container cgroup to be empty', async () => (await processesIn(r.cgroupPath)).length === 0);
  await removeAndCheck(t, r);
});

test('kill -9 of a container init is an exit: reported as killed by SIGKILL, the monitor ends, removed cleanly', async (t) => {
  const r = await runningContainer(t);
  process.kill(r.pid, 'SIGKILL');
  const s = await exitedStatus(r);
  t.is(s.exit_code, 137);
  t.is(s.reason, 'Error');
  await waitFor('the monitor to end', () => !pidAlive(r.monitorPid));
  await waitFor('the container cgroup to be empty', async () => (await processesIn(r.cgroupPath)).length === 0);
  await removeAndCheck(t, r);
});
