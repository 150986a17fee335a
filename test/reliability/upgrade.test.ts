import test, { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage } from '../helpers/images.js';
import { LAUNCHER, startBerth, BerthProcess } from '../helpers/berth.js';
import { containerConfig, doctorOrphans, hostLeftovers, podConfig, stateLeftovers } from '../helpers/cri.js';
import { pidAlive, waitFor } from '../helpers/util.js';
import { chainPrefixFor } from '../../src/network/index.js';
import { RECORD_VERSION } from '../../src/store/records.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';

// Upgrade and rollback: pods made by the previous release are taken over by this build on the same root, state
// dir and socket (records, monitors, exit files), then the previous release takes over again. Each side must
// report every pod and container exactly as the other left it, exec in them, and stop and remove them.
//
// "The previous release" is a build of one commit of this repository, unpacked with `git archive` into a temp dir
// and built there (make -C native, npm run build; a minute or two):
// - BERTH_UPGRADE_FROM=<commit-ish> when set (a release tag, or the commit a deployment runs);
// - otherwise the parent of the newest commit that changed code (src/, native/, proto/, bin/): HEAD~1 alone is
//   fragile, as a commit that only touches docs or tests would make "the previous release" this very build.
// Without git history (a tarball, a shallow clone) the test fails saying so: an upgrade not tested is not a pass.
//
// Formats carry versions (src/store/records.ts RECORD_VERSION). When the previous release wrote an older version,
// the takeover itself is the step up. When it wrote the same one, the step up is made by hand: one record loses its
// `version` (the format before versions, read as 1). The step down is always made by hand: one record is stamped
// RECORD_VERSION + 1 and the previous release must refuse to start naming that file, leaving it as it was.

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '../../..');
const BUILD_TIMEOUT_MS = 10 * 60_000;

function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 2 ** 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(stdout.trim()),
    ),
  );
}

const git = (...args: string[]) => run('git', ['-C', REPO, ...args]);

async function previousCommit(): Promise<{ commit: string; why: string }> {
  const from = process.env.BERTH_UPGRADE_FROM;
  if (from) return { commit: await git('rev-parse', '--verify', `${from}^{commit}`), why: `BERTH_UPGRADE_FROM=${from}` };
  const lastCode = await git('log', '-n1', '--format=%H', 'HEAD', '--', 'src', 'native', 'proto', 'bin');
  if (!lastCode) throw new Error('no commit in history changes src/, native/, proto/ or bin/');
  return { commit: await git('rev-parse', '--verify', `${lastCode}~1^{commit}`), why: `parent of ${lastCode.slice(0, 12)}, the newest commit that changed code` };
}

interface Release {
  commit: string;
  tree: string;
  launcher: string;
  recordVersion: number;
}

async function buildRelease(commit: string): Promise<Release> {
  const tree = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-prev-'));
  try {
    await run('sh', ['-c', 'git -C "$1" archive --format=tar "$2" | tar -x -C "$3"', 'sh', REPO, commit, tree]);
    await fs.symlink(await fs.realpath(path.join(REPO, 'node_modules')), path.join(tree, 'node_modules'));
    await run('make', ['-s', '-C', 'native'], { cwd: tree, timeoutMs: BUILD_TIMEOUT_MS });
    await run('npm', ['run', 'build'], { cwd: tree, timeoutMs: BUILD_TIMEOUT_MS });
    const records = await fs.readFile(path.join(tree, 'src', 'store', 'records.ts'), 'utf8').catch(() => '');
    const version = /export const RECORD_VERSION = (\d+);/.exec(records)?.[1];
    return { commit, tree, launcher: path.join(tree, 'bin', 'berth'), recordVersion: version === undefined ? 1 : Number(version) };
  } catch (err) {
    await fs.rm(tree, { recursive: true, force: true });
    throw err;
  }
}

const TICKER = "trap 'exit 0' TERM; i=0; while :; do echo tick-$i; i=$((i+1)); sleep 1 & wait; done";

interface World {
  registry: Registry;
  image: string;
  logDir: string;
  cgroupParents: string[];
}

function pod(w: World): PodSandboxConfig {
  const cgroupParent = `/berth-upgrade-${randomBytes(6).toString('hex')}`;
  w.cgroupParents.push(cgroupParent);
  return podConfig({ log_directory: w.logDir, linux: { cgroup_parent: cgroupParent, security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } } });
}

async function container(b: BerthProcess, w: World, podId: string, config: PodSandboxConfig, name: string, script: string, start = true): Promise<string> {
  const c = containerConfig(w.image, { metadata: { name, attempt: 0 }, command: ['/bin/sh', '-c', script], log_path: `${name}.log` });
  const { container_id } = await b.runtime.CreateContainer({ pod_sandbox_id: podId, config: c, sandbox_config: config });
  if (start) await b.runtime.StartContainer({ container_id });
  return container_id;
}

/** Everything a kubelet sees of berth's objects, in a form two berths' answers can be compared by. */
async function snapshot(b: BerthProcess): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const p of (await b.runtime.ListPodSandbox({})).items) {
    const s = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: p.id })).status!;
    out[`pod ${p.metadata?.name}`] = { id: s.id, state: s.state, ip: s.network?.ip, created: s.created_at };
  }
  for (const c of (await b.runtime.ListContainers({})).containers) {
    const s = (await b.runtime.ContainerStatus({ container_id: c.id })).status!;
    out[`container ${c.metadata?.name}`] = { id: s.id, pod: c.pod_sandbox_id, state: s.state, exit: s.exit_code, started: s.started_at, finished: s.finished_at, reason: s.reason };
  }
  return out;
}

async function execWorks(t: ExecutionContext, b: BerthProcess, id: string, who: string): Promise<void> {
  const r = await b.runtime.ExecSync({ container_id: id, cmd: ['/bin/echo', `hello-${who}`], timeout: 20 });
  t.is(r.stdout.toString(), `hello-${who}\n`, `${who}: exec in ${id}`);
}

/** The container's log (written by its monitor, whichever berth started it) keeps growing under this berth. */
async function logGrows(t: ExecutionContext, w: World, name: string): Promise<void> {
  const file = path.join(w.logDir, `${name}.log`);
  const size = async () => (await fs.stat(file)).size;
  const before = await size();
  t.true(await waitFor(`${file} grows`, async () => (await size()) > before, { timeoutMs: 20_000, intervalMs: 200 }), `${name}.log grows`);
}

async function editRecord(file: string, change: (r: Record<string, unknown>) => void): Promise<void> {
  const record = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>;
  change(record);
  await fs.writeFile(file, JSON.stringify(record));
}

/** `berth doctor --fix` of a stopped berth's root: its exit status and what it said. */
function doctorFix(b: BerthProcess): Promise<{ code: number; stderr: string }> {
  const args = ['doctor', '--fix', '--root', b.root, '--state-dir', b.stateDir, '--socket', b.socket, '--config', path.join(b.dir, 'config.toml')];
  return new Promise((resolve) =>
    execFile(LAUNCHER, args, { timeout: 60_000 }, (err, _stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stderr })),
  );
}

test.serial('pods of the previous release are taken over by this build and back again (rollback), one record version step each way, and nothing leaks', async (t) => {
  t.timeout(25 * 60_000);
  let from;
  try {
    from = await previousCommit();
  } catch (err) {
    t.log(`no previous release to test against (git history unavailable? a shallow clone?): ${(err as Error).message}`);
    t.fail('the upgrade test needs the git history of this repository (a full clone), or BERTH_UPGRADE_FROM');
    return;
  }
  t.log(`previous release: ${from.commit.slice(0, 12)} (${from.why}); this build writes record version ${RECORD_VERSION}`);
  const release = await buildRelease(from.commit);
  t.log(`previous release built in ${release.tree}; it writes record version ${release.recordVersion}`);
  const registry = await startRegistry();
  let b: BerthProcess | undefined;
  try {
    const image = (await pushImage(registry, 'berth/upgrade', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } })).ref;
    const config = `[registry]\ninsecure = ["${registry.host}"]\n`;
    const old = (dir?: string) => startBerth({ config, dir, launcher: release.launcher, logLevel: 'info' });
    const current = (dir: string) => startBerth({ config, dir, launcher: LAUNCHER, logLevel: 'info' });

    // The previous release makes a running pod (one running, one exited, one created-not-started container) and a
    // stopped pod.
    b = await old();
    const dir = b.dir;
    const w: World = { registry, image, logDir: path.join(dir, 'logs'), cgroupParents: [] };
    await b.images.PullImage({ image: { image } });
    const livePod = pod(w);
    const live = (await b.runtime.RunPodSandbox({ config: livePod })).pod_sandbox_id;
    const ticker = await container(b, w, live, livePod, 'ticker', TICKER);
    const done = await container(b, w, live, livePod, 'done', 'echo done; exit 7');
    const idle = await container(b, w, live, livePod, 'idle', TICKER, false);
    const killed = await container(b, w, live, livePod, 'killed', TICKER);
    const killedPid = JSON.parse((await b.runtime.ContainerStatus({ container_id: killed, verbose: true })).info.info).pid as number;
    const stoppedPod = pod(w);
    const stopped = (await b.runtime.RunPodSandbox({ config: stoppedPod })).pod_sandbox_id;
    await container(b, w, stopped, stoppedPod, 'gone', TICKER);
    await b.runtime.StopPodSandbox({ pod_sandbox_id: stopped });
    await waitFor('done exits', async () => (await b!.runtime.ContainerStatus({ container_id: done })).status?.state === 'CONTAINER_EXITED', { timeoutMs: 30_000, intervalMs: 200 });
    const byOld = await snapshot(b);
    t.log(`made by the previous release: ${JSON.stringify(byOld)}`);
    await b.stop();
    // An exit while no berth runs: only the monitor's exit file tells the next berth of it.
    process.kill(killedPid, 'SIGKILL');
    await waitFor(`the init of ${killed} is gone`, () => !pidAlive(killedPid), { timeoutMs: 20_000, intervalMs: 100 });

    // Step up by hand when the takeover is not one already: a record of the format before versions.
    if (release.recordVersion === RECORD_VERSION) {
      await editRecord(path.join(b.root, 'containers', done, 'container.json'), (r) => delete r.version);
    }

    // Upgrade: this build reports all of it as it was, execs, and takes it further.
    b = await current(dir);
    const taken = await snapshot(b);
    const killedNow = taken['container killed'] as { state: string; exit: number; started: string };
    const killedBefore = byOld['container killed'] as { started: string };
    t.like(killedNow, { state: 'CONTAINER_EXITED', exit: 137, started: killedBefore.started }, 'the exit while no berth ran is read from the exit file');
    t.deepEqual({ ...taken, 'container killed': undefined }, { ...byOld, 'container killed': undefined }, 'this build reports every other pod and container as the previous release left them');
    await execWorks(t, b, ticker, 'upgraded');
    await logGrows(t, w, 'ticker');
    t.true((await fs.readFile(path.join(w.logDir, 'done.log'), 'utf8')).includes('stdout F done\n'), "the exited container's log is kept");
    await b.runtime.StartContainer({ container_id: idle });
    await execWorks(t, b, idle, 'started-after-upgrade');
    await b.runtime.RemoveContainer({ container_id: done });
    await b.runtime.StopPodSandbox({ pod_sandbox_id: stopped });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: stopped });
    const newPod = pod(w);
    const fresh = (await b.runtime.RunPodSandbox({ config: newPod })).pod_sandbox_id;
    const ticker2 = await container(b, w, fresh, newPod, 'ticker2', TICKER);
    const job = await container(b, w, fresh, newPod, 'job', 'echo job; exit 5');
    await waitFor('job exits', async () => (await b!.runtime.ContainerStatus({ container_id: job })).status?.state === 'CONTAINER_EXITED', { timeoutMs: 30_000, intervalMs: 200 });
    const byNew = await snapshot(b);
    await b.stop();

    // Step down by hand: a record newer than the previous release knows stops it from starting, naming the file,
    // and is left as it was (refusing loses nothing; ignoring it would lose the pod's cleanup).
    const newer = path.join(b.root, 'sandboxes', fresh, 'sandbox.json');
    const saved = await fs.readFile(newer, 'utf8');
    await editRecord(newer, (r) => (r.version = Math.max(RECORD_VERSION, release.recordVersion) + 1));
    const stamped = await fs.readFile(newer, 'utf8');
    const refusal = await old(dir).then(
      async (started) => {
        await started.stop();
        return undefined;
      },
      (err: Error) => err.message,
    );
    t.truthy(refusal, 'the previous release refuses to start on a record newer than it knows');
    t.true(refusal?.includes(newer) && refusal.includes('newer than this berth knows'), `the refusal names the record: ${refusal?.slice(0, 400)}`);
    t.is(await fs.readFile(newer, 'utf8'), stamped, 'the newer record is left as it was');
    const fix = await doctorFix(b);
    t.is(fix.code, 2, `berth doctor --fix refuses to judge a root with a record newer than it knows: ${fix.stderr.trim()}`);
    t.is(await fs.readFile(newer, 'utf8'), stamped, 'berth doctor --fix left the newer record as it was');
    await fs.writeFile(newer, saved);

    // Rollback: when this build writes a newer format than the previous release, the refusal above is all a
    // rollback can do (by design); otherwise the previous release takes over what this build made.
    b = release.recordVersion === RECORD_VERSION ? await old(dir) : await current(dir);
    t.deepEqual(await snapshot(b), byNew, 'after the rollback every pod and container is reported as this build left them');
    for (const [id, who] of [[ticker, 'rolled-back'], [idle, 'rolled-back-idle'], [ticker2, 'rolled-back-new']] as const) await execWorks(t, b, id, who);
    await logGrows(t, w, 'ticker2');
    await b.runtime.StopContainer({ container_id: ticker2, timeout: 10 });
    t.is((await b.runtime.ContainerStatus({ container_id: ticker2 })).status?.exit_code, 0, 'a container this build started is stopped by the previous release');
    await b.runtime.RemoveContainer({ container_id: job });
    for (const p of [live, fresh]) {
      await b.runtime.StopPodSandbox({ pod_sandbox_id: p });
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: p });
    }
    for (const img of (await b.images.ListImages({})).images) await b.images.RemoveImage({ image: { image: img.id } });

    // Nothing of either release is left.
    const net = JSON.parse(await fs.readFile(path.join(dir, 'testnet.json'), 'utf8')) as { bridge: string };
    t.deepEqual(await stateLeftovers({ root: b.root, stateDir: b.stateDir, bridge: net.bridge, chainPrefix: chainPrefixFor(net.bridge) }), []);
    await b.stop();
    t.deepEqual(await doctorOrphans(b, LAUNCHER), [], 'berth doctor finds nothing');
    t.deepEqual(await hostLeftovers(dir, w.cgroupParents), []);
    t.deepEqual(await hostLeftovers(release.tree, []), [], "no process of the previous release's build is left");
  } finally {
    await b?.cleanup();
    await registry.stop();
    await fs.rm(release.tree, { recursive: true, force: true });
  }
});
