import test from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth } from '../helpers/berth.js';
import { containerConfig, hostLeftovers, podConfig, stateLeftovers } from '../helpers/cri.js';
import { freePort, waitFor } from '../helpers/util.js';
import { eventually, httpGet, iptablesSaveText, networkLeftovers, removeTestNet, testNetFrom } from './network-helpers.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';

// Neighbours (issue 16 item 4): other tools on the node change what berth's pods rely on while they run. A
// firewall reload restores nat and filter with flush from a save without berth's chains; `ip netns add/delete`
// remounts /run/netns; a CNI-ish tool keeps chains and rules of its own; something makes and removes cgroups
// beside berth's. berth puts its chains and every live pod's hostPort rules back within 10 s (and before a pod
// start that needs them), never touches the neighbour's rules, and still stops and removes every pod.

const exec = promisify(execFile);

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/neighbours', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

const HTTPD = (text: string) => `mkdir -p /tmp/www && echo ${text} > /tmp/www/index.html && exec busybox httpd -f -p 80 -h /tmp/www`;

/**
 * What a firewall reload does to one table: save it, drop what belongs to `prefix` (chains, their rules, jumps to
 * them), restore the rest with flush, in one iptables-restore. Only this berth's chains are dropped: other berths
 * of other tests on this host keep theirs (their rules in the instant between save and restore aside).
 */
async function flushingReload(table: 'nat' | 'filter', prefix: string): Promise<void> {
  const { stdout } = await exec('iptables-save', ['-t', table], { timeout: 10_000 });
  const kept = stdout.split('\n').filter((l) => !l.includes(`${prefix}-`));
  await new Promise<void>((resolve, reject) => {
    const child = execFile('iptables-restore', ['-w', '10'], { timeout: 20_000 }, (err) => (err ? reject(err) : resolve()));
    child.stdin!.end(kept.join('\n'));
  });
}

async function cgroupChurn(root: string, stop: () => boolean): Promise<number> {
  let n = 0;
  while (!stop()) {
    for (const ctrl of ['memory', 'pids', 'cpu', 'unified']) {
      const dir = path.join('/sys/fs/cgroup', ctrl, root, `c${n % 4}`);
      await fs.mkdir(dir, { recursive: true }).catch(() => undefined);
      await fs.rmdir(dir).catch(() => undefined);
    }
    n++;
    await new Promise((r) => setTimeout(r, 20));
  }
  return n;
}

test('a flushing firewall reload, netns churn, a neighbour\'s own chains and cgroup churn: berth re-asserts its rules within 10 s and before a pod start, and still removes every pod', async (t) => {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n`, logLevel: 'info' });
  const netFile = JSON.parse(await fs.readFile(path.join(berth.dir, 'testnet.json'), 'utf8')) as { bridge: string; subnet: string };
  const net = testNetFrom(netFile.bridge, netFile.subnet);
  const tag = randomBytes(3).toString('hex');
  const neighbourChain = `NBR-${tag}`;
  const neighbourNetns = `berth-nbr-${tag}`;
  const neighbourCgroup = `/berth-neighbour-${tag}`;
  const state = { root: berth.root, stateDir: berth.stateDir, bridge: net.bridge, chainPrefix: net.chainPrefix };
  const podIds: string[] = [];
  const cgroups: string[] = [];
  let churning = true;
  const churn = cgroupChurn(neighbourCgroup, () => !churning);
  try {
    await berth.images.PullImage({ image: { image: image.ref } });
    const logDir = path.join(berth.dir, 'logs');
    const runPod = async (hostPort?: number, text = 'x'): Promise<string> => {
      const config: PodSandboxConfig = podConfig({
        log_directory: logDir,
        port_mappings: hostPort ? [{ protocol: 'TCP', container_port: 80, host_port: hostPort, host_ip: '' }] : [],
      });
      const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config });
      podIds.push(pod_sandbox_id);
      const st = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      cgroups.push(JSON.parse(st.info.info).cgroup.path);
      const { container_id } = await berth.runtime.CreateContainer({
        pod_sandbox_id,
        config: containerConfig(image.ref, { command: ['/bin/sh', '-c', HTTPD(text)], log_path: `${text}.log` }),
        sandbox_config: config,
      });
      await berth.runtime.StartContainer({ container_id });
      return pod_sandbox_id;
    };
    const ports = [await freePort(), await freePort()];
    await runPod(ports[0], 'first');
    await runPod(ports[1], 'second');
    await runPod(undefined, 'plain');
    for (const [i, p] of ports.entries()) t.is((await eventually(() => httpGet(`http://127.0.0.1:${p}/`))).trim(), i === 0 ? 'first' : 'second');

    // The neighbour's own chains and rules, made as a CNI plugin would (iptables-restore --noflush).
    const neighbourRules = [
      `-A ${neighbourChain} -s 192.0.2.0/24 -m comment --comment "neighbour ${tag}" -j RETURN`,
      `-A PREROUTING -d 192.0.2.1/32 -m comment --comment "neighbour ${tag}" -j ${neighbourChain}`,
    ];
    await new Promise<void>((resolve, reject) => {
      const child = execFile('iptables-restore', ['--noflush', '-w', '10'], { timeout: 20_000 }, (err) => (err ? reject(err) : resolve()));
      child.stdin!.end(['*nat', `:${neighbourChain} - [0:0]`, ...neighbourRules, 'COMMIT', ''].join('\n'));
    });
    const neighbourLines = async () => (await iptablesSaveText()).split('\n').filter((l) => l.includes(`neighbour ${tag}`) || l.startsWith(`:${neighbourChain} `)).sort();
    const neighbourBefore = await neighbourLines();
    t.is(neighbourBefore.length, 3);

    // ip netns add/delete: /run/netns is (re)mounted shared under berth's feet.
    await exec('ip', ['netns', 'add', neighbourNetns], { timeout: 10_000 });
    await exec('ip', ['netns', 'delete', neighbourNetns], { timeout: 10_000 });

    const berthRules = async () => (await iptablesSaveText()).split('\n').filter((l) => l.includes(`${net.chainPrefix}-`));
    const whole = (await berthRules()).filter((l) => !l.startsWith(':')).map((l) => l.replace(/\[\d+:\d+\]/, '')).sort();
    t.true(whole.some((l) => l.includes(`--dport ${ports[0]} `)));
    const reasserted = () => berth.logs.filter((l) => l.includes('iptables rules re-asserted')).length;
    t.is(reasserted(), 0, 'nothing to re-assert while nobody touched the rules');

    // 1. A firewall reload: berth's rules come back within 10 s, whole, and the hostPorts forward again.
    const t0 = Date.now();
    await flushingReload('nat', net.chainPrefix);
    await flushingReload('filter', net.chainPrefix);
    t.deepEqual(await berthRules(), [], 'the reload took all of berth\'s chains and rules');
    await waitFor('re-assertion', async () => {
      const now = (await berthRules()).filter((l) => !l.startsWith(':')).sort();
      return now.length === whole.length;
    }, { timeoutMs: 20_000, intervalMs: 100 });
    const tookMs = Date.now() - t0;
    t.log(`rules re-asserted ${tookMs} ms after the reload began`);
    t.true(tookMs <= 10_000, `re-asserted within 10 s (took ${tookMs} ms)`);
    t.deepEqual((await berthRules()).filter((l) => !l.startsWith(':')).sort(), whole, 'the same rules as before the reload');
    for (const [i, p] of ports.entries()) t.is((await eventually(() => httpGet(`http://127.0.0.1:${p}/`))).trim(), i === 0 ? 'first' : 'second');

    // 2. A reload right before a pod start with a hostPort: the pod starts, and its rules and everyone's are there.
    await flushingReload('nat', net.chainPrefix);
    await flushingReload('filter', net.chainPrefix);
    const third = await freePort();
    await runPod(third, 'third');
    const after = (await berthRules()).join('\n');
    for (const p of [...ports, third]) t.true(after.includes(`--dport ${p} `), `the rule of hostPort ${p} is there once the pod start returns`);
    t.is((await eventually(() => httpGet(`http://127.0.0.1:${third}/`))).trim(), 'third');
    t.is((await eventually(() => httpGet(`http://127.0.0.1:${ports[0]}/`))).trim(), 'first');

    // 3. A reload followed by stop and remove of every pod: all succeed, and no rule of theirs is put back.
    await flushingReload('nat', net.chainPrefix);
    for (const id of podIds) await berth.runtime.StopPodSandbox({ pod_sandbox_id: id });
    for (const id of podIds) await berth.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    t.deepEqual((await berth.runtime.ListPodSandbox({})).items, []);
    // Wait out one check period so that a re-assertion would have run, then look for the pods' rules.
    await new Promise((r) => setTimeout(r, 6000));
    t.deepEqual(await stateLeftovers(state), [], 'no record, IPAM entry, veth or pod rule is left');
    t.deepEqual(await neighbourLines(), neighbourBefore, 'the neighbour\'s chain and rules are as it left them');
  } finally {
    churning = false;
    t.log(`cgroup churn: ${await churn} rounds`);
    await berth.cleanup();
    const left = [...(await hostLeftovers(berth.dir, cgroups)), ...(await networkLeftovers(net, podIds))];
    await removeTestNet(net);
    // The neighbour's things are the test's to remove.
    await exec('ip', ['netns', 'delete', neighbourNetns]).catch(() => undefined);
    const save = (await iptablesSaveText()).split('\n');
    const mine = save.filter((l) => l.includes(`neighbour ${tag}`)).map((l) => '-D' + l.slice(2));
    await new Promise<void>((resolve) => {
      const child = execFile('iptables-restore', ['--noflush', '-w', '10'], { timeout: 20_000 }, () => resolve());
      child.stdin!.end(['*nat', ...mine, `-X ${neighbourChain}`, 'COMMIT', ''].join('\n'));
    });
    for (const ctrl of ['memory', 'pids', 'cpu', 'unified']) await fs.rmdir(path.join('/sys/fs/cgroup', ctrl, neighbourCgroup)).catch(() => undefined);
    if (left.length > 0) t.fail(`left behind:\n${left.join('\n')}`);
  }
});
