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
import { startBerth } from '../helpers/berth.js';
import { CHART, documents, helm, REPO, run } from '../helpers/chart.js';
import { hostLeftovers, podConfig, processesMentioning } from '../helpers/cri.js';

// The installer image's entrypoint against a temporary directory standing in for the node's root. The image's tree
// is built as the Dockerfile builds it (bundle tarball, its unpacked opt/berth, install.sh, entrypoint, host step);
// the host's commands are test doubles in PATH (test/fixtures/installer/README.md), except that berth.service is a
// real berth run from what was installed, on the root's socket, and the old runtime of the kubelet switch is a real
// berth holding a real pod. install.sh is a stand-in with scripts/install.sh's interface (built on another branch).

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

/** A stand-in bundle: opt/berth with this checkout's node and dist, a launcher like the bundle's, a VERSION. */
async function makeBundle(dir: string, version: string): Promise<string> {
  const tree = path.join(dir, `bundle-${version}`);
  const opt = path.join(tree, 'opt/berth');
  await fs.mkdir(path.join(opt, 'node/bin'), { recursive: true });
  await fs.mkdir(path.join(opt, 'bin'), { recursive: true });
  await fs.symlink(process.execPath, path.join(opt, 'node/bin/node'));
  await fs.symlink(path.join(REPO, 'dist'), path.join(opt, 'dist'));
  await fs.writeFile(path.join(opt, 'bin/berth'), '#!/bin/sh\nhere="$(dirname "$(readlink -f "$0")")"\nexec "$here/../node/bin/node" --expose-gc "$here/../dist/src/main.js" "$@"\n', { mode: 0o755 });
  await fs.writeFile(path.join(opt, 'VERSION'), version);
  const tarball = path.join(dir, `berth-${version}-linux-x64.tar.gz`);
  const r = await run('tar', ['-C', tree, '-czf', tarball, 'opt']);
  if (r.code !== 0) throw new Error(r.stderr);
  await fs.rm(tree, { recursive: true });
  return tarball;
}

/** The image's /opt/berth-installer for a bundle version, as the Dockerfile lays it out. */
async function makeImage(n: Node, version: string): Promise<void> {
  await fs.rm(n.image, { recursive: true, force: true });
  await fs.mkdir(path.join(n.image, 'bundle'), { recursive: true });
  const tarball = await makeBundle(n.image, version);
  await fs.copyFile(path.join(FAKES, 'install.sh'), path.join(n.image, 'install.sh'));
  await fs.copyFile(path.join(REPO, 'contrib/installer/entrypoint.sh'), path.join(n.image, 'entrypoint.sh'));
  await fs.copyFile(path.join(REPO, 'contrib/installer/host-step.sh'), path.join(n.image, 'host-step.sh'));
  await fs.chmod(path.join(n.image, 'install.sh'), 0o755);
  await run('tar', ['-xzf', tarball, '-C', path.join(n.image, 'bundle')]);
  await fs.symlink(path.join(n.image, 'bundle/opt/berth'), path.join(n.image, 'berth'));
}

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
async function entrypoint(n: Node, mode: 'install' | 'uninstall', env: Record<string, string> = {}): Promise<Outcome> {
  const signal = path.join(n.dir, mode === 'install' ? 'ready' : 'cleaned');
  await fs.rm(signal, { force: true });
  const before = (await fs.readFile(n.log, 'utf8')).length;
  const child = spawn('bash', [path.join(n.image, 'entrypoint.sh'), mode], {
    env: {
      ...process.env,
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
  await makeImage(n, '0.1.0');
  const chart = await chartConfig(n);
  // An operator's config from before the chart: kept aside once, then the chart owns the file.
  await fs.mkdir(hostFile(n, 'etc/berth'));
  await fs.writeFile(hostFile(n, 'etc/berth/config.toml'), '[log]\nlevel = "warn"\n');

  // 1. Install.
  const first = await entrypoint(n, 'install');
  t.is(first.code, 0, first.stderr);
  t.is(await fs.readFile(hostFile(n, 'opt/berth/.install-manifest'), 'utf8'), 'version 0.1.0\n');
  t.true(first.calls.some((c) => c.startsWith(`install.sh --root ${n.root} ${n.image}/berth-0.1.0-linux-x64.tar.gz`)));
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

  // 3. A new image (bundle 0.2.0) and a changed value: installed in place, berth restarted once.
  await makeImage(n, '0.2.0');
  await chartConfig(n, 'config.log.level=debug');
  const upgrade = await entrypoint(n, 'install');
  t.is(upgrade.code, 0, upgrade.stderr);
  t.is(await fs.readFile(hostFile(n, 'opt/berth/.install-manifest'), 'utf8'), 'version 0.2.0\n');
  t.is(await fs.readFile(hostFile(n, 'opt/berth/VERSION'), 'utf8'), '0.2.0');
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

  // 5. Uninstall (the pre-delete hook): berth stopped and removed, config kept, installer state gone.
  const un = await entrypoint(n, 'uninstall');
  t.is(un.code, 0, un.stderr);
  t.true(un.calls.includes('systemctl disable --now berth.service'));
  t.true(un.calls.includes(`install.sh --root ${n.root} --uninstall`));
  t.is(await berthPid(n), undefined);
  t.deepEqual(await processesMentioning(n.root), []);
  await t.throwsAsync(fs.access(hostFile(n, 'opt/berth')));
  await t.throwsAsync(fs.access(hostFile(n, 'var/lib/berth-installer')));
  t.is(await fs.readFile(hostFile(n, 'etc/berth/config.toml'), 'utf8'), good, 'config kept');
  t.true(logLines(un.stderr).some((l) => l.msg === 'node clean'));
  // Twice is fine (the hook retried).
  t.is((await entrypoint(n, 'uninstall')).code, 0);
});

test.serial('kubelet switch: the old runtime loses every pod, kubelet points at berth; uninstall puts its files back byte for byte', async (t) => {
  const n = await makeNode(t);
  await makeImage(n, '0.1.0');
  await chartConfig(n, 'kubeletSwitch.enabled=true');
  const originalConfig = await fs.readFile(path.join(KUBELET_FIXTURES, 'config-without-endpoints.yaml'));
  const originalFlags = await fs.readFile(path.join(KUBELET_FIXTURES, 'kubeadm-flags.env'));
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/config.yaml'), originalConfig);
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env'), originalFlags);

  // The node's runtime before berth (kubeadm-flags.env names containerd's socket, by /var/run): a real berth with a
  // real pod.
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
    ['kubectl cordon', 'kubectl drain', 'systemd-run --unit=berth-kubelet-unswitch', 'systemctl stop', 'systemctl disable', 'install.sh --root', 'systemctl start', 'kubectl uncordon'],
  );
  t.deepEqual(await fs.readFile(hostFile(n, 'var/lib/kubelet/config.yaml')), originalConfig, 'KubeletConfiguration byte-identical');
  t.deepEqual(await fs.readFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env')), originalFlags, 'flags file byte-identical');
  t.is(await berthPid(n), undefined);
  await t.throwsAsync(fs.access(hostFile(n, 'opt/berth')));
  await t.throwsAsync(fs.access(hostFile(n, 'var/lib/berth-installer')));
});

test.serial('kubelet switch refused before anything stops: a kubelet file it cannot rewrite fails the pod, every pod still runs', async (t) => {
  const n = await makeNode(t);
  await makeImage(n, '0.1.0');
  await chartConfig(n, 'kubeletSwitch.enabled=true');
  const notKubelet = 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: not-kubelet\n';
  const flags = await fs.readFile(path.join(KUBELET_FIXTURES, 'kubeadm-flags.env'));
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/config.yaml'), notKubelet);
  await fs.writeFile(hostFile(n, 'var/lib/kubelet/kubeadm-flags.env'), flags);
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
      // scripts/install.sh comes with the release bundle's branch (issue 17 items 1-2); the tests use a stand-in.
      if (src === 'scripts/install.sh' && !present) t.log('scripts/install.sh not in this tree yet');
      else t.true(present, `${src} exists`);
      t.true(['install.sh', 'entrypoint.sh', 'host-step.sh'].includes(path.basename(src)), `${src} is one the tests put in the image`);
    }
  }
});
