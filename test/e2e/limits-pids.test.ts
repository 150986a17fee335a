import test, { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { cleanUpAndCheck, containerConfig, failure, podConfig } from '../helpers/cri.js';
import { waitFor } from '../helpers/util.js';

// The pids limit (issue 18 item 2), measured: a fork bomb in one container of a pod annotated with
// berth.dev/pids-limit runs into its pids.max (fork fails inside, the cgroup's pids.events counts it), while the
// pod's other container still execs, the node still spawns, and StopContainer still stops the bomb.

const run = promisify(execFile);
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";
// busybox's ash takes no function named ":"; the bomb is the classic one under another name. Its init then
// becomes a sleep, which needs no fork, so the container lives on while the bomb's children churn at the limit.
const FORK_BOMB = 'bomb() { bomb | bomb & }; bomb; exec sleep 100000';
const PIDS_ANNOTATION = 'berth.dev/pids-limit';

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/pidsbox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});

test.after.always(async () => {
  await registry?.stop();
});

async function env(t: ExecutionContext): Promise<{ berth: BerthProcess; cgroups: string[] }> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const cgroups: string[] = [];
  cleanUpAndCheck(t, berth, cgroups);
  await berth.images.PullImage({ image: { image: image.ref } });
  return { berth, cgroups };
}

const pidsFile = (cg: string, file: string) => fs.readFile(`/sys/fs/cgroup/pids${cg}/${file}`, 'utf8').then((s) => s.trim());

test.serial('pids limit: a fork bomb hits the pod\'s berth.dev/pids-limit (fork fails inside), its sibling still execs, the node still spawns, StopContainer stops it', async (t) => {
  const { berth, cgroups } = await env(t);
  const logDir = path.join(berth.dir, 'logs');
  const pc = podConfig({ log_directory: logDir, annotations: { [PIDS_ANNOTATION]: '32' } });
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pc });
  const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
  const podCg = JSON.parse(status.info.info).cgroup.path as string;
  cgroups.push(podCg);
  const create = async (name: string, script: string, extra = {}) => {
    const { container_id } = await berth.runtime.CreateContainer({
      pod_sandbox_id,
      config: containerConfig(image.ref, { metadata: { name, attempt: 0 }, command: ['/bin/sh', '-c', script], log_path: `${name}.log`, ...extra }),
      sandbox_config: pc,
    });
    await berth.runtime.StartContainer({ container_id });
    return container_id;
  };
  const sibling = await create('sibling', SLEEPER);
  // A quarter of a CPU: the bomb churns at its limit on a machine other tests share.
  const bomb = await create('bomb', FORK_BOMB, { linux: { resources: { cpu_period: '100000', cpu_quota: '25000' } } });
  t.is(await pidsFile(`${podCg}/${bomb}`, 'pids.max'), '32');
  t.is(await pidsFile(`${podCg}/${sibling}`, 'pids.max'), '32');

  const maxHits = await waitFor('the bomb to hit pids.max', async () => {
    const hits = Number(/^max (\d+)$/m.exec(await pidsFile(`${podCg}/${bomb}`, 'pids.events'))?.[1] ?? 0);
    return hits > 0 && hits;
  }, { timeoutMs: 60000 });
  t.true(maxHits > 0);
  t.true(Number(await pidsFile(`${podCg}/${bomb}`, 'pids.current')) <= 32);
  const log = await waitFor('"can\'t fork" in the bomb\'s log', async () => {
    const text = await fs.readFile(path.join(logDir, 'bomb.log'), 'utf8').catch(() => '');
    return text.includes("can't fork") && text;
  }, { timeoutMs: 60000 });
  t.regex(log, /can't fork: Resource temporarily unavailable/);

  // The bomb is still at it (its init is alive), and the pod's other container and the node are unaffected.
  const bombStatus = await berth.runtime.ContainerStatus({ container_id: bomb });
  t.is(bombStatus.status!.state, 'CONTAINER_RUNNING');
  const exec = await berth.runtime.ExecSync({ container_id: sibling, cmd: ['/bin/sh', '-c', 'echo alive; (echo forked) & wait'], timeout: 30 });
  t.is(exec.exit_code, 0, exec.stderr.toString());
  t.is(exec.stdout.toString(), 'alive\nforked\n');
  t.is((await run('/bin/sh', ['-c', 'echo node'], { timeout: 10000 })).stdout, 'node\n');

  await berth.runtime.StopContainer({ container_id: bomb, timeout: 2 });
  t.is((await berth.runtime.ContainerStatus({ container_id: bomb })).status!.state, 'CONTAINER_EXITED');
  // Every task of the bomb is gone (the cgroup may already be removed with them).
  await waitFor('the bomb\'s tasks to be gone', async () => (await pidsFile(`${podCg}/${bomb}`, 'pids.current').catch(() => '0')) === '0', { timeoutMs: 30000 });
  await berth.runtime.StopPodSandbox({ pod_sandbox_id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id });
});

test.serial('pids limit: an annotation that is malformed, zero, or above [runtime] pids_limit is INVALID_ARGUMENT naming it; nothing is made', async (t) => {
  const { berth } = await env(t);
  for (const value of ['10Xi', '-1', '0', '4097', '99999999999999999999']) {
    const err = await failure(berth.runtime.RunPodSandbox({ config: podConfig({ annotations: { [PIDS_ANNOTATION]: value } }) }));
    t.is(err.code, grpc.status.INVALID_ARGUMENT, value);
    t.true(err.details.startsWith(`config.annotations["${PIDS_ANNOTATION}"]: ${JSON.stringify(value)} must be a whole number from 1 to 4096`), err.details);
  }
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, []);
});
