import test, { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'smol-toml';
import { loadConfig } from '../../src/config/load.js';
import { probeRuntime } from '../../src/installer/cri-client.js';
import { configEndpoints, flagEndpoints } from '../../src/installer/kubelet-config.js';
import { startBerth, type BerthProcess } from '../helpers/berth.js';
import { CHART, documents, helm, REPO, run } from '../helpers/chart.js';
import { hostLeftovers, podConfig, processesMentioning } from '../helpers/cri.js';
import { listing } from '../helpers/util.js';

// The installer image's entrypoint against a temporary directory standing in for the node's root. The image's tree
// is built as the Dockerfile builds it (bundle tarball, its unpacked opt/berth, install.sh, entrypoint, host step);
// the host's commands are test doubles in PATH (test/fixtures/installer/README.md), except that berth.service is a
// real berth run from what was installed, on the root's socket, and the old runtime of the kubelet switch is a real
// berth holding a real pod. The bundle is npm run package's (built once for this file), install.sh the real one.

const FAKES = path.join(REPO, 'test/fixtures/installer');
const KUBELET_FIXTURES = path.join(REPO, 'test/fixtures/kubelet');

interface Node {
  dir: string;
  root: string;
  image: string;
  state: string;
  log: string;
  chartConfig: string;
  metricsPort: number;
}

async function freePort(host: string): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const VERSION = JSON.parse(await fs.readFile(path.join(REPO, 'package.json'), 'utf8')).version as string;
const NEXT = `${VERSION}-next.1`;

/** The release bundles the images carry: this tree's, and the same as a later version (an upgrade). */
const bundles: Record<string, { tarball: string; opt: string }> = {};
let work: string;

async function expectOk(r: Promise<{ code: number; stderr: string }>): Promise<void> {
  const { code, stderr } = await r;
  if (code !== 0) throw new Error(stderr);
}

test.before(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-inst-bundle-'));
  const packed = await run(process.execPath, [path.join(REPO, 'scripts/package.mjs'), '--out', work], 300_000);
  if (packed.code !== 0) throw new Error(`scripts/package.mjs failed: ${packed.stderr}`);
  const tarball = packed.stdout.trim();
  const top = path.basename(tarball, '.tar.gz');
  await fs.mkdir(path.join(work, 'unpacked'));
  await expectOk(run('tar', ['-C', path.join(work, 'unpacked'), '-xzf', tarball], 300_000));
  bundles[VERSION] = { tarball, opt: path.join(work, 'unpacked', top, 'root/opt/berth') };
  // The next version: the same files, another version in bundle-info and package.json (what berth --version reads).
  const nextTop = top.replace(VERSION, NEXT);
  const nextDir = path.join(work, 'next');
  await fs.mkdir(nextDir);
  await expectOk(run('cp', ['-al', path.join(work, 'unpacked', top), path.join(nextDir, nextTop)]));
  for (const file of ['bundle-info', 'root/opt/berth/package.json']) {
    const f = path.join(nextDir, nextTop, file);
    const text = await fs.readFile(f, 'utf8');
    await fs.rm(f); // a hard link into the first bundle: written anew
    await fs.writeFile(f, text.replace(/^version=.*$/m, `version=${NEXT}`).replace(`"version": "${VERSION}"`, `"version": "${NEXT}"`));
  }
  const nextTarball = path.join(work, `${nextTop}.tar.gz`);
  await expectOk(run('tar', ['-C', nextDir, '-czf', nextTarball, nextTop], 300_000));
  bundles[NEXT] = { tarball: nextTarball, opt: path.join(nextDir, nextTop, 'root/opt/berth') };
});

test.after.always(async () => {
  if (work) await fs.rm(work, { recursive: true, force: true });
});

/** The image's /opt/berth-installer for a bundle version, as the Dockerfile lays it out. */
async function makeImage(n: Node, version: string): Promise<void> {
  const { tarball, opt } = bundles[version];
  await fs.rm(n.image, { recursive: true, force: true });
  await fs.mkdir(n.image, { recursive: true });
  await fs.link(tarball, path.join(n.image, path.basename(tarball)));
  for (const [from, to] of [['scripts/install.sh', 'install.sh'], ['contrib/installer/entrypoint.sh', 'entrypoint.sh'], ['contrib/installer/host-step.sh', 'host-step.sh']]) {
    await fs.copyFile(path.join(REPO, from), path.join(n.image, to));
    await fs.chmod(path.join(n.image, to), 0o755);
  }
  // The unpacked bundle (once per version, shared by the images): its node runs the entrypoint's CRI probe.
  await fs.symlink(opt, path.join(n.image, 'berth'));
}

const manifestVersion = async (n: Node) => /^version (.*)$/m.exec(await fs.readFile(hostFile(n, 'opt/berth/.install-manifest'), 'utf8'))?.[1];

/** The chart's ConfigMap, rendered by helm with `sets`, as the DaemonSet mounts it. */
async function chartConfig(n: Node, ...sets: string[]): Promise<string> {
  const r = await helm('template', 'rel', CHART, '--set', 'metrics.enabled=true', '--set', `metrics.port=${n.metricsPort}`, '--set', `config.cni.conf_dir=${n.dir}/cni`, ...sets.flatMap((s) => ['--set', s]));
  if (r.code !== 0) throw new Error(r.stderr);
  const cm = documents(r.stdout).find((d) => d.kind === 'ConfigMap' && d.metadata.name.endsWith('-config'))!;
  await fs.writeFile(n.chartConfig, cm.data['config.toml']);
  return cm.data['config.toml'];
}

async function makeNode(t: ExecutionContext): Promise<Node> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-inst-'));
  const n: Node = {
    dir,
    root: path.join(dir, 'host'),
    image: path.join(dir, 'image'),
    state: path.join(dir, 'fake'),
    log: path.join(dir, 'calls.log'),
    chartConfig: path.join(dir, 'chart-config.toml'),
    metricsPort: await freePort('127.0.0.2'),
  };
  for (const d of ['etc', 'opt', 'usr/local/bin', 'run/berth', 'var/lib/kubelet']) await fs.mkdir(path.join(n.root, d), { recursive: true });
  await fs.symlink('../run', path.join(n.root, 'var/run'));
  await fs.mkdir(n.state);
  await fs.mkdir(path.join(dir, 'cni'));
  await fs.writeFile(n.log, '');
  t.teardown(async () => {
    // The berth the fake systemctl started, if a test failed before uninstalling it.
    const pid = await fs.readFile(path.join(n.state, 'berth.pid'), 'utf8').catch(() => '');
    if (pid) {
      try {
        process.kill(Number(pid), 'SIGTERM');
      } catch {
        /* gone */
      }
      for (let i = 0; i < 300 && (await processesMentioning(n.root)).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    }
    const left = await hostLeftovers(n.dir, []);
    await fs.rm(n.dir, { recursive: true, force: true });
    if (left.length > 0) throw new Error(`left behind:\n${left.join('\n')}`);
  });
  return n;
}

interface Outcome {
  code: number | null;
  stderr: string;
  calls: string[];
}

/**
 * Runs the entrypoint in `mode` until it reports ready (install) or clean (uninstall), then stops it as kubelet
 * would (SIGTERM), or until it exits by itself (a failure).
 */
async function entrypoint(n: Node, mode: 'install' | 'uninstall', env: Record<string, string> = {}, opts: { asPod?: boolean } = {}): Promise<Outcome> {
  const signal = path.join(n.dir, mode === 'install' ? 'ready' : 'cleaned');
  await fs.rm(signal, { force: true });
  const before = (await fs.readFile(n.log, 'utf8')).length;
  const script = path.join(n.image, 'entrypoint.sh');
  // asPod: in a mount namespace of its own where the installer's state directory is a mount, as the DaemonSet's
  // hostPath is; the fake nsenter then runs "host" commands back in this process's mount namespace.
  const [file, args] = opts.asPod
    ? ['unshare', ['-m', '--propagation', 'private', '--', 'bash', '-c', 'mount --bind "$1" "$1" && exec bash "$2" "$3"', '_', hostFile(n, 'var/lib/berth-installer'), script, mode]]
    : ['bash', [script, mode]];
  const child = spawn(file, args, {
    env: {
      ...process.env,
      ...(opts.asPod ? { FAKE_HOST_MOUNT_NS: `/proc/${process.pid}/ns/mnt` } : {}),
      PATH: `${FAKES}:${process.env.PATH}`,
      FAKE_LOG: n.log,
      FAKE_ROOT: n.root,
      FAKE_STATE: n.state,
      BERTH_HOST_ROOT: n.root,
      BERTH_INSTALLER_DIR: n.image,
      BERTH_SOCKET_PATH: path.join(n.root, 'run/berth/berth.sock'),
      BERTH_CHART_CONFIG: n.chartConfig,
      BERTH_READY_FILE: path.join(n.dir, 'ready'),
      BERTH_CLEANED_FILE: path.join(n.dir, 'cleaned'),
      BERTH_SOCKET_WAIT_SECONDS: '90',
      NODE_NAME: 'node-1',
      NODE_IP: '127.0.0.2',
      BERTH_METRICS_ON_NODE_IP: 'true',
      BERTH_KUBELET_SWITCH: 'false',
      BERTH_KUBELET_CONFIG: '/var/lib/kubelet/config.yaml',
      BERTH_KUBELET_FLAGS: '/var/lib/kubelet/kubeadm-flags.env',
      BERTH_PREVIOUS_RUNTIME_ENDPOINT: '',
      BERTH_DRAIN_TIMEOUT_SECONDS: '60',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (c) => (stderr += c));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let done = false;
  void exited.then(() => (done = true));
  const deadline = Date.now() + 150_000;
  while (!done && Date.now() < deadline) {
    if (await fs.access(signal).then(() => true, () => false)) {
      child.kill('SIGTERM');
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!done && Date.now() >= deadline) child.kill('SIGKILL');
  const code = await exited;
  const calls = (await fs.readFile(n.log, 'utf8')).slice(before).split('\n').filter(Boolean);
  return { code, stderr, calls };
}

const berthPid = (n: Node) => fs.readFile(path.join(n.state, 'berth.pid'), 'utf8').then(Number, () => undefined);
const socketOf = (n: Node) => `unix://${path.join(n.root, 'run/berth/berth.sock')}`;
const hostFile = (n: Node, p: string) => path.join(n.root, p);

function logLines(stderr: string): Record<string, unknown>[] {
  return stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
}

test.serial('install, a second run, an upgrade in place, then uninstall', async (t) => {
  const n = await makeNode(t);
  await makeImage(n, VERSION);
  const chart = await chartConfig(n);
  // An operator's config from before the chart: kept aside once, then the chart owns the file.
  await fs.mkdir(hostFile(n, 'etc/berth'));
  await fs.writeFile(hostFile(n, 'etc/berth/config.toml'), '[log]\nlevel = "warn"\n');
  const before = await listing(n.root);

  // 1. Install.
  const first = await entrypoint(n, 'install');
  t.is(first.code, 0, first.stderr);
  t.is(await manifestVersion(n), VERSION);
  // install.sh was told to leave /etc/berth to the chart: no example config, no config.toml.new, nothing listed.
  t.false((await fs.readFile(hostFile(n, 'opt/berth/.install-manifest'), 'utf8')).includes('\t/etc/berth'));
  const written = await fs.readFile(hostFile(n, 'etc/berth/config.toml'), 'utf8');
  t.is(written, chart.replace(`address = "127.0.0.1:${n.metricsPort}"`, `address = "127.0.0.2:${n.metricsPort}"`), 'the metrics address is the node address');
  t.is((await loadConfig(hostFile(n, 'etc/berth/config.toml'), true)).metrics.address, `127.0.0.2:${n.metricsPort}`);
  t.is(await fs.readFile(hostFile(n, 'etc/berth/config.toml.pre-chart'), 'utf8'), '[log]\nlevel = "warn"\n');
  t.true(first.calls.includes('nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl daemon-reload'));
  t.true(first.calls.includes('systemctl enable --now berth.service'));
  t.false(first.calls.includes('systemctl restart berth.service'), 'a first install starts berth, no restart');
  t.true(first.calls.some((c) => c.includes('/opt/berth/bin/berth config check --config /etc/berth/.config.toml.')), 'berth judged the config on the host first');
  t.deepEqual(first.calls.filter((c) => c.startsWith('kubectl')), [], 'no kubelet switch asked: the API is not used');
  // The berth that serves is the one installed, with the chart's config: its metrics on the node address.
  t.is((await probeRuntime(socketOf(n), 10_000)).runtime, 'berth');
  const metrics = await fetch(`http://127.0.0.2:${n.metricsPort}/metrics`);
  t.is(metrics.status, 200);
  await metrics.body?.cancel();
  for (const line of logLines(first.stderr)) t.like(line, { component: 'installer', mode: 'install', node: 'node-1' });
  t.true(logLines(first.stderr).some((l) => l.msg === `berth serves on unix:///run/berth/berth.sock`));
  const pid = await berthPid(n);

  // 2. Again (the pod restarted): nothing changes, nothing restarts.
  const stat = await fs.stat(hostFile(n, 'etc/berth/config.toml'));
  const second = await entrypoint(n, 'install');
  t.is(second.code, 0, second.stderr);
  t.false(second.calls.includes('systemctl restart berth.service'));
  t.is(await berthPid(n), pid, 'the same berth serves');
  t.is((await fs.stat(hostFile(n, 'etc/berth/config.toml'))).mtimeMs, stat.mtimeMs, 'config not rewritten');
  t.is(await fs.readFile(hostFile(n, 'etc/berth/config.toml.pre-chart'), 'utf8'), '[log]\nlevel = "warn"\n', 'the operator copy is not replaced by the chart one');

  // 3. A new image (the next version's bundle) and a changed value: installed in place, berth restarted once.
  await makeImage(n, NEXT);
  await chartConfig(n, 'config.log.level=debug');
  const upgrade = await entrypoint(n, 'install');
  t.is(upgrade.code, 0, upgrade.stderr);
  t.is(await manifestVersion(n), NEXT);
  t.is(JSON.parse(await fs.readFile(hostFile(n, 'opt/berth/package.json'), 'utf8')).version, NEXT);
  t.is(upgrade.calls.filter((c) => c === 'systemctl restart berth.service').length, 1);
  t.not(await berthPid(n), pid);
  t.is((await probeRuntime(socketOf(n), 10_000)).runtime, 'berth');
  t.is((parse(await fs.readFile(hostFile(n, 'etc/berth/config.toml'), 'utf8')) as { log: { level: string } }).log.level, 'debug');

  // 4. A value berth refuses (the schema cannot see host bits): the node keeps its file and its berth.
  const good = await fs.readFile(hostFile(n, 'etc/berth/config.toml'), 'utf8');
  const servingPid = await berthPid(n);
  await chartConfig(n, 'config.network.subnet=10.86.0.1/16');
  const refused = await entrypoint(n, 'install');
  t.is(refused.code, 1);
  t.regex(refused.stderr, /the chart's config is refused by berth.*network\.subnet/);
  t.is(await fs.readFile(hostFile(n, 'etc/berth/config.toml'), 'utf8'), good);
  t.deepEqual((await fs.readdir(hostFile(n, 'etc/berth'))).sort(), ['config.toml', 'config.toml.pre-chart'], 'no temp file left');
  t.is(await berthPid(n), servingPid);

  // 5. Uninstall (the pre-delete hook): berth stopped and removed, config kept, installer state gone, although
  // the state directory is the pod's mount (emptied in the pod, removed on the host).
  const un = await entrypoint(n, 'uninstall', {}, { asPod: true });
  t.is(un.code, 0, un.stderr);
  t.true(un.calls.includes('systemctl disable --now berth.service'));
  t.is(await berthPid(n), undefined);
  t.deepEqual(await processesMentioning(n.root), []);
  await t.throwsAsync(fs.access(hostFile(n, 'opt/berth')));
  await t.throwsAsync(fs.access(hostFile(n, 'var/lib/berth-installer')));
  t.is(await fs.readFile(hostFile(n, 'etc/berth/config.toml'), 'utf8'), good, 'config kept');
  // The root as it was, but for the config the chart wrote and the operator's copy kept beside it.
  t.deepEqual(await listing(n.root), [...before, 'etc/berth/config.toml.pre-chart'].sort());
  t.true(logLines(un.stderr).some((l) => l.msg === 'node clean'));
  // Twice is fine (the hook retried).
  t.is((await entrypoint(n, 'uninstall')).code, 0);
});

/**
 * The node's runtime before berth, as kubeadm-flags.env names it (containerd's socket, by /var/run): a real berth
 * with a real pod, torn down and checked for leftovers after the test.
 */
async function oldRuntimeWithPod(t: ExecutionContext, n: Node): Promise<{ old: BerthProcess; pod_sandbox_id: string }> {
  const old = await startBerth();
  const cgroups: string[] = [];
  t.teardown(async () => {
    await old.cleanup();
    const left = await hostLeftovers(old.dir, cgroups);
    if (left.length > 0) throw new Error(`old runtime left behind:\n${left.join('\n')}`);
  });
  const { pod_sandbox_id } = await old.runtime.RunPodSandbox({ config: podConfig() });
  cgroups.push(JSON.parse((await old.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true })).info.info).cgroup.path);
  await fs.mkdir(hostFile(n, 'run/containerd'));
  await fs.symlink(old.socket, hostFile(n, 'run/containerd/containerd.sock'));
  return { old, pod_sandbox_id };
}

test.serial('kubelet switch: the old runtime loses every pod, kubelet points at berth; uninstall puts its files back byte for byte', async (t) => {
  const n = await makeNode(t);
  await makeImage(n, VERSION);
  await chartConfig(n, 'kubeletSwitch.enabled=true');
  const originalConfig = await fs.readFile(path.join(KUBELET_FIXTURES, 'config-without-endpoints.yaml'));
  const originalFlags = await fs.readFile(path.join(KUBELET_FIXTURES, 'kubeadm-flags.env'));
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/config.yaml'), originalConfig);
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env'), originalFlags);

  const { old, pod_sandbox_id } = await oldRuntimeWithPod(t, n);

  const sw = await entrypoint(n, 'install', { BERTH_KUBELET_SWITCH: 'true' });
  t.is(sw.code, 0, sw.stderr + (await fs.readFile(path.join(n.state, 'host-step.log'), 'utf8').catch(() => '')));
  const kubectl = sw.calls.filter((c) => c.startsWith('kubectl'));
  t.deepEqual(kubectl.map((c) => c.split(' ').slice(0, 2).join(' ')), ['kubectl cordon', 'kubectl drain', 'kubectl uncordon']);
  t.true(kubectl.every((c) => c.endsWith(' node-1')), 'only its own node');
  t.true(kubectl[1].includes('--ignore-daemonsets'));
  const order = sw.calls.filter((c) => /systemctl (stop|start) kubelet|systemd-run|kubectl/.test(c) && !c.startsWith('nsenter'));
  t.deepEqual(order.map((c) => c.split(' ').slice(0, 2).join(' ')), ['kubectl cordon', 'kubectl drain', 'systemd-run --unit=berth-kubelet-switch', 'systemctl stop', 'systemctl start', 'kubectl uncordon']);
  t.deepEqual((await old.runtime.ListPodSandbox({})).items, [], 'every pod of the old runtime removed');
  const berthEndpoint = 'unix:///run/berth/berth.sock';
  t.deepEqual(configEndpoints(await fs.readFile(hostFile(n, 'var/lib/kubelet/config.yaml'), 'utf8'), 'c'), { runtime: berthEndpoint, image: berthEndpoint });
  t.is(flagEndpoints(await fs.readFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env'), 'utf8')).runtime, berthEndpoint);
  t.is(await fs.readFile(hostFile(n, 'var/lib/berth-installer/previous-endpoint'), 'utf8'), 'unix:///var/run/containerd/containerd.sock\n');

  // The pod restarted under berth: already switched, nothing to do.
  const again = await entrypoint(n, 'install', { BERTH_KUBELET_SWITCH: 'true' });
  t.is(again.code, 0, again.stderr);
  t.deepEqual(again.calls.filter((c) => c.startsWith('kubectl') || c.startsWith('systemd-run')), []);

  const un = await entrypoint(n, 'uninstall');
  t.is(un.code, 0, un.stderr + (await fs.readFile(path.join(n.state, 'host-step.log'), 'utf8').catch(() => '')));
  t.deepEqual(
    un.calls.filter((c) => /systemctl (stop|start|disable)|systemd-run|kubectl|install\.sh/.test(c) && !c.startsWith('nsenter')).map((c) => c.split(' ').slice(0, 2).join(' ')),
    ['kubectl cordon', 'kubectl drain', 'systemd-run --unit=berth-kubelet-unswitch', 'systemctl stop', 'systemctl disable', 'systemctl start', 'kubectl uncordon'],
  );
  t.true(un.calls.includes('fake: kubelet started, berth installed: no'), 'berth was uninstalled before kubelet came back');
  t.deepEqual(await fs.readFile(hostFile(n, 'var/lib/kubelet/config.yaml')), originalConfig, 'KubeletConfiguration byte-identical');
  t.deepEqual(await fs.readFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env')), originalFlags, 'flags file byte-identical');
  t.is(await berthPid(n), undefined);
  await t.throwsAsync(fs.access(hostFile(n, 'opt/berth')));
  await t.throwsAsync(fs.access(hostFile(n, 'var/lib/berth-installer')));
});

test.serial('kubelet switch refused before anything stops: a kubelet file it cannot rewrite fails the pod, every pod still runs', async (t) => {
  const n = await makeNode(t);
  await makeImage(n, VERSION);
  await chartConfig(n, 'kubeletSwitch.enabled=true');
  const notKubelet = 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: not-kubelet\n';
  const flags = await fs.readFile(path.join(KUBELET_FIXTURES, 'kubeadm-flags.env'));
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/config.yaml'), notKubelet);
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env'), flags);
  const { old, pod_sandbox_id } = await oldRuntimeWithPod(t, n);

  const sw = await entrypoint(n, 'install', { BERTH_KUBELET_SWITCH: 'true', BERTH_HOST_STEP_WAIT_SECONDS: '60' });
  t.is(sw.code, 1);
  t.regex(sw.stderr, /kubelet switch failed on the host: .*config\.yaml: kind is Pod, not KubeletConfiguration/);
  t.false(sw.calls.includes('systemctl stop kubelet.service'), 'kubelet never stopped');
  t.deepEqual((await old.runtime.ListPodSandbox({})).items.map((p) => p.id), [pod_sandbox_id], "the old runtime's pod still runs");
  t.is(await fs.readFile(hostFile(n, 'var/lib/kubelet/config.yaml'), 'utf8'), notKubelet);
  t.deepEqual(await fs.readFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env')), flags);
  t.false(sw.calls.some((c) => c.startsWith('kubectl uncordon')), 'the node stays cordoned for a person to look at');
  await old.runtime.StopPodSandbox({ pod_sandbox_id });
  await old.runtime.RemovePodSandbox({ pod_sandbox_id });
  // The berth the installer started is removed by the hook's uninstall path.
  t.is((await entrypoint(n, 'uninstall')).code, 0);
});

test("install.sh --no-config (the entrypoint's) leaves /etc/berth alone: fresh root, over an earlier plain install, and uninstall", async (t) => {
  const dir = await fs.mkdtemp(path.join(work, 'no-config-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const install = (...args: string[]) => run(path.join(REPO, 'scripts/install.sh'), args, 300_000);
  const manifest = (root: string) => fs.readFile(path.join(root, 'opt/berth/.install-manifest'), 'utf8');

  // A fresh root: berth installed, no /etc/berth at all (the chart writes the config after), crictl.yaml as usual.
  const fresh = path.join(dir, 'fresh');
  await fs.mkdir(fresh);
  const r1 = await install('--root', fresh, '--no-config', bundles[VERSION].tarball);
  t.is(r1.code, 0, r1.stderr);
  t.false(await fs.access(path.join(fresh, 'etc/berth')).then(() => true, () => false), '/etc/berth not created');
  t.true(await fs.access(path.join(fresh, 'etc/crictl.yaml')).then(() => true, () => false));
  t.false((await manifest(fresh)).includes('\t/etc/berth'));

  // An earlier plain install wrote (and listed) the example config; the chart's file replaced it since. An upgrade
  // with --no-config writes no config.toml.new, keeps the file, and keeps listing what the earlier run listed.
  const earlier = path.join(dir, 'earlier');
  await fs.mkdir(earlier);
  t.is((await install('--root', earlier, bundles[VERSION].tarball)).code, 0);
  const listed = (await manifest(earlier)).split('\n').filter((l) => l.includes('\t/etc/berth'));
  t.deepEqual(listed.sort(), ['config\t/etc/berth/config.toml', 'dir\t/etc/berth']);
  const chartText = '# written by the chart\n[log]\nlevel = "debug"\n';
  await fs.writeFile(path.join(earlier, 'etc/berth/config.toml'), chartText);
  const r2 = await install('--root', earlier, '--no-config', bundles[NEXT].tarball);
  t.is(r2.code, 0, r2.stderr);
  t.regex(r2.stdout, new RegExp(`upgraded berth ${VERSION.replace(/\./g, '\\.')} to ${NEXT.replace(/\./g, '\\.')}`));
  t.notRegex(r2.stdout, /kept .*config\.toml/);
  t.deepEqual((await fs.readdir(path.join(earlier, 'etc/berth'))).sort(), ['config.toml']);
  t.is(await fs.readFile(path.join(earlier, 'etc/berth/config.toml'), 'utf8'), chartText);
  t.deepEqual((await manifest(earlier)).split('\n').filter((l) => l.includes('\t/etc/berth')).sort(), listed.sort());

  // --no-config is for installing; uninstall keeps the config as always, --purge removes it.
  const both = await install('--root', earlier, '--uninstall', '--no-config');
  t.not(both.code, 0);
  t.regex(both.stderr, /--no-config is for installing/);
  t.is((await install('--root', earlier, '--uninstall')).code, 0);
  t.is(await fs.readFile(path.join(earlier, 'etc/berth/config.toml'), 'utf8'), chartText);
  t.is((await install('--root', earlier, '--uninstall', '--purge')).code, 0);
  t.deepEqual(await listing(earlier), []);
  t.is((await install('--root', fresh, '--uninstall', '--purge')).code, 0);
  t.deepEqual(await listing(fresh), []);
  t.regex((await install('--help')).stdout, /--no-config leaves \/etc\/berth alone/);
});

test('the Dockerfile lays out the image as these tests build it', async (t) => {
  const dockerfile = await fs.readFile(path.join(REPO, 'Dockerfile'), 'utf8');
  t.regex(dockerfile, /^FROM debian:12-slim$/m, 'a slim Debian final stage');
  t.regex(dockerfile, /npm ci .*\n.*npm run build.*\n.*npm run package/, 'the bundle is built in the build stage');
  t.regex(dockerfile, /^ENTRYPOINT \["\/opt\/berth-installer\/entrypoint\.sh"\]$/m);
  // What the tests give through BERTH_INSTALLER_DIR is the entrypoint's default layout.
  const entry = await fs.readFile(path.join(REPO, 'contrib/installer/entrypoint.sh'), 'utf8');
  t.regex(entry, /image_dir=\$\{BERTH_INSTALLER_DIR:-\/opt\/berth-installer\}/);
  t.regex(entry, /bundle_dir=\$\{BERTH_BUNDLE_DIR:-\$image_dir\/berth\}/);
  t.regex(dockerfile, /\/opt\/berth-installer\/berth \\\n/, 'the unpacked bundle linked where the entrypoint looks');
  for (const m of dockerfile.matchAll(/^COPY (?!--from)(.+) \/opt\/berth-installer\/$/gm)) {
    for (const src of m[1].split(' ')) {
      const present = await fs.access(path.join(REPO, src)).then(() => true, () => false);
      t.true(present, `${src} exists`);
      t.true(['install.sh', 'entrypoint.sh', 'host-step.sh'].includes(path.basename(src)), `${src} is one the tests put in the image`);
    }
  }
});

test("the hook Jobs' steps: retire deletes only the installer DaemonSet, in the foreground and waiting; wait-cleanup waits for the cleanup rollout", async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-inst-hook-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const log = path.join(dir, 'calls.log');
  await fs.writeFile(log, '');
  const step = (...args: string[]) =>
    run('bash', [path.join(REPO, 'contrib/installer/entrypoint.sh'), ...args], 30_000, {
      env: { ...process.env, PATH: `${FAKES}:${process.env.PATH}`, FAKE_LOG: log, POD_NAMESPACE: 'kube-system', NODE_NAME: 'node-1' },
    });
  const retired = await step('retire', 'rel-berth', '600');
  t.is(retired.code, 0, retired.stderr);
  const waited = await step('wait-cleanup', 'rel-berth-cleanup', '600');
  t.is(waited.code, 0, waited.stderr);
  t.deepEqual((await fs.readFile(log, 'utf8')).trim().split('\n'), [
    'kubectl -n kube-system delete daemonset/rel-berth --ignore-not-found --cascade=foreground --wait --timeout=600s',
    'kubectl -n kube-system rollout status daemonset/rel-berth-cleanup --timeout=600s',
  ]);
  const missing = await step('retire');
  t.not(missing.code, 0);
  t.regex(missing.stderr, /retire needs the DaemonSet name/);
});
