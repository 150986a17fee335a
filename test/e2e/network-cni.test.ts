import test, { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { containerConfig, hostLeftovers, podConfig } from '../helpers/cri.js';
import { freePort, waitFor } from '../helpers/util.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { PortMapping } from '../../src/gen/runtime/v1/PortMapping.js';
import { eventually, freeSubnet, releaseSubnet, httpGet, iptablesRestore, iptablesSaveText, removePortmapChains, networkLeftovers, outsideHost, removeTestNet, testNet, TestNet, vethOf, waitGone } from './network-helpers.js';

// CNI for real: Debian's containernetworking-plugins (bridge, host-local, portmap, loopback from /usr/lib/cni),
// configured in a conf dir of the test's own. The tests run one at a time: portmap keeps node-wide chains
// (CNI-HOSTPORT-*), which the last test removes.

const run = promisify(execFile);
const PLUGINS = '/usr/lib/cni';

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/cnibox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
  await removePortmapChains();
});

interface CniNet {
  tag: string;
  bridge: string;
  subnet: string;
  gateway: string;
  dir: string;
  confDir: string;
  ipamDir: string;
  name: string;
  conflist(extra?: object[]): string;
}

async function cniNet(t: ExecutionContext): Promise<CniNet> {
  const tag = randomBytes(3).toString('hex');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-cni-'));
  const subnet = freeSubnet(10, 214);
  const n: CniNet = {
    tag,
    bridge: `bc${tag}`,
    subnet,
    gateway: subnet.replace(/\.0\/24$/, '.1'),
    dir,
    confDir: path.join(dir, 'net.d'),
    ipamDir: path.join(dir, 'ipam'),
    name: `berthtest-${tag}`,
    conflist: (extra = []) =>
      JSON.stringify({
        cniVersion: '1.0.0',
        name: n.name,
        plugins: [
          {
            type: 'bridge',
            bridge: n.bridge,
            isGateway: true,
            ipMasq: true,
            hairpinMode: true,
            ipam: { type: 'host-local', ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: n.ipamDir },
          },
          { type: 'portmap', capabilities: { portMappings: true }, snat: true },
          { type: 'loopback' },
          ...extra,
        ],
      }),
  };
  t.teardown(async () => {
    await run('ip', ['link', 'del', n.bridge]).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
    releaseSubnet(n.subnet);
  });
  return n;
}

interface Env {
  berth: BerthProcess;
  pods: string[];
  cgroups: string[];
  pod(overrides?: Partial<PodSandboxConfig>): Promise<{ id: string; ip: string }>;
  run(podId: string, cmd: string, podOverrides?: Partial<PodSandboxConfig>): Promise<string>;
  exec(containerId: string, cmd: string): Promise<{ out: string; err: string; code: number }>;
  ready(): Promise<{ status: boolean; reason: string; message: string }>;
}

async function env(t: ExecutionContext, toml: string, checks: () => Promise<string[]>): Promise<Env> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n${toml}` });
  const logDir = path.join(berth.dir, 'logs');
  const e: Env = {
    berth,
    pods: [],
    cgroups: [],
    async pod(overrides = {}) {
      const { pod_sandbox_id } = await e.berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: logDir, ...overrides }) });
      e.pods.push(pod_sandbox_id);
      const status = await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      e.cgroups.push(JSON.parse(status.info.info).cgroup.path);
      return { id: pod_sandbox_id, ip: status.status!.network!.ip };
    },
    async run(podId, cmd, podOverrides = {}) {
      const { container_id } = await e.berth.runtime.CreateContainer({
        pod_sandbox_id: podId,
        config: containerConfig(image.ref, { command: ['/bin/sh', '-c', cmd], log_path: `${Math.random().toString(36).slice(2)}.log` }),
        sandbox_config: podConfig({ log_directory: logDir, ...podOverrides }),
      });
      await e.berth.runtime.StartContainer({ container_id });
      return container_id;
    },
    async exec(containerId, cmd) {
      const r = await e.berth.runtime.ExecSync({ container_id: containerId, cmd: ['/bin/sh', '-c', cmd], timeout: 10 });
      return { out: r.stdout.toString(), err: r.stderr.toString(), code: r.exit_code };
    },
    async ready() {
      const s = await e.berth.runtime.Status({ verbose: false });
      return s.status!.conditions.find((c) => c.type === 'NetworkReady')!;
    },
  };
  await berth.images.PullImage({ image: { image: image.ref } });
  t.teardown(async () => {
    await e.berth.cleanup();
    const left = [...(await hostLeftovers(berth.dir, e.cgroups)), ...(await checks())];
    const save = await iptablesSaveText();
    for (const line of save.split('\n')) if (e.pods.some((id) => line.includes(id))) left.push(`rule: ${line}`);
    if (left.length > 0) throw new Error(`test left host objects behind:\n${left.join('\n')}`);
  });
  return e;
}

const HTTPD = (text: string) => `mkdir -p /tmp/www && echo ${text} > /tmp/www/index.html && exec busybox httpd -f -p 80 -h /tmp/www`;
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";
const ports = (list: Partial<PortMapping>[]): PortMapping[] =>
  list.map((p) => ({ protocol: 'TCP', container_port: 80, host_port: 0, host_ip: '', ...p }) as PortMapping);
const inSubnet = (ip: string, subnet: string) => ip.split('.').slice(0, 3).join('.') === subnet.split('.').slice(0, 3).join('.');

/** What a CNI network leaves: host-local allocations, ports on its bridge, berth's result cache. */
async function cniLeftovers(n: CniNet, berthRoot: string): Promise<string[]> {
  const left: string[] = [];
  const ipam = await fs.readdir(path.join(n.ipamDir, n.name)).catch(() => [] as string[]);
  for (const f of ipam) if (/^\d+\.\d+\.\d+\.\d+$/.test(f)) left.push(`host-local allocation ${f}`);
  const ports = await fs.readdir(`/sys/class/net/${n.bridge}/brif`).catch(() => [] as string[]);
  for (const p of ports) left.push(`veth ${p} on ${n.bridge}`);
  const cache = await fs.readdir(path.join(berthRoot, 'network', 'cni-cache')).catch(() => [] as string[]);
  for (const c of cache) left.push(`CNI cache ${c}`);
  return left;
}

test.serial('CNI: pods on the bridge plugin talk; hostPorts via portmap; CHECK passes after a restart, and DEL after it frees everything', async (t) => {
  const n = await cniNet(t);
  await fs.mkdir(n.confDir, { recursive: true });
  await fs.writeFile(path.join(n.confDir, '10-berthtest.conflist'), n.conflist());
  let root = '';
  const e = await env(t, `[network]\nmode = "cni"\n[cni]\nconf_dir = "${n.confDir}"\nbin_dirs = ["/nonexistent", "${PLUGINS}"]\n`, () => cniLeftovers(n, root));
  root = e.berth.root;
  t.true((await e.ready()).status);
  const outside = await outsideHost();
  t.teardown(() => outside.remove());

  const hostPort = await freePort();
  const withPort = { port_mappings: ports([{ host_port: hostPort }]) };
  const a = await e.pod(withPort);
  const b = await e.pod();
  t.true(inSubnet(a.ip, n.subnet), `${a.ip} in ${n.subnet}`);
  t.true(inSubnet(b.ip, n.subnet));
  t.not(a.ip, b.ip);
  const web = await e.run(a.id, HTTPD('hello-cni'), withPort);
  const cb = await e.run(b.id, SLEEPER);

  const got = await eventually(async () => {
    const r = await e.exec(cb, `timeout 5 wget -q -O - http://${a.ip}/`);
    if (r.code !== 0) throw new Error(r.err);
    return r.out;
  });
  t.is(got.trim(), 'hello-cni', 'pod to pod');
  t.is((await httpGet(`http://${a.ip}/`)).trim(), 'hello-cni', 'node to pod');
  t.is((await eventually(() => httpGet(`http://${outside.nodeIp}:${hostPort}/`))).trim(), 'hello-cni', 'hostPort on the node address');
  t.is((await eventually(() => httpGet(`http://127.0.0.1:${hostPort}/`))).trim(), 'hello-cni', 'hostPort on 127.0.0.1');
  t.is((await outside.httpGet(`http://${outside.nodeIp}:${hostPort}/`)).trim(), 'hello-cni', 'hostPort from another host');
  const hairpin = await e.exec(web, `timeout 5 wget -q -O - http://${outside.nodeIp}:${hostPort}/`);
  t.is(hairpin.out.trim(), 'hello-cni', `hairpin: ${hairpin.err}`);
  t.true((await e.exec(cb, 'cat /etc/hosts')).out.includes(b.ip));

  // The ADD result is cached under the root; a restart CHECKs the live pods with it.
  const cached = JSON.parse(await fs.readFile(path.join(root, 'network', 'cni-cache', `${a.id}.json`), 'utf8'));
  t.is(cached.list.name, n.name);
  t.truthy(cached.result.ips);
  e.berth = await e.berth.restart();
  await e.berth.waitForLog((l) => l.msg === 'CNI CHECK passed' && l.pod === b.id, 20000);
  // Pod a has a hostPort: Debian's portmap 1.1.1 then fails CHECK on IPv4-only pods, looking for an ip6tables chain
  // it never made (containernetworking/plugins#819, fixed upstream later). Either outcome shows CHECK ran with the
  // cached result; the failure must name the plugin and the config file.
  const checkA = await e.berth.waitForLog((l) => (l.msg === 'CNI CHECK passed' || l.msg === 'CNI CHECK failed') && l.pod === a.id, 20000);
  if (checkA.msg === 'CNI CHECK failed') {
    const error = String(checkA.error);
    t.true(error.includes('plugin "portmap"') && error.includes('10-berthtest.conflist') && error.includes('ipv6'), error);
  }
  t.is((await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: a.id })).status!.network!.ip, a.ip);

  // DEL after the restart, from the cache, even with the conf dir emptied.
  await fs.rm(path.join(n.confDir, '10-berthtest.conflist'));
  await waitFor('NetworkReady to go false once the config is gone', async () => !(await e.ready()).status);
  for (const p of [a, b]) await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
  await t.throwsAsync(httpGet(`http://127.0.0.1:${hostPort}/`, 1000));
  t.deepEqual(await cniLeftovers(n, root), []);
});

test.serial('CNI: NetworkReady is false while a plugin is missing, RunPodSandbox fails naming it and leaves nothing; the plugin appearing fixes it', async (t) => {
  const n = await cniNet(t);
  const bin = path.join(n.dir, 'bin');
  await fs.mkdir(bin);
  for (const p of ['bridge', 'host-local', 'loopback']) await fs.symlink(path.join(PLUGINS, p), path.join(bin, p));
  await fs.mkdir(n.confDir, { recursive: true });
  const file = path.join(n.confDir, '10-berthtest.conflist');
  await fs.writeFile(file, n.conflist());
  let root = '';
  const e = await env(t, `[network]\nmode = "cni"\n[cni]\nconf_dir = "${n.confDir}"\nbin_dirs = ["${bin}"]\n`, () => cniLeftovers(n, root));
  root = e.berth.root;
  const ready = await e.ready();
  t.false(ready.status);
  t.is(ready.reason, 'NetworkPluginNotReady');
  t.true(ready.message.includes(file) && ready.message.includes('"portmap"'), ready.message);
  const err = (await t.throwsAsync(e.pod())) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.true(err.details.includes('portmap') && err.details.includes(file), err.details);
  t.is((await e.berth.runtime.ListPodSandbox({})).items.length, 0);
  t.deepEqual(await cniLeftovers(n, root), []);

  await fs.symlink(path.join(PLUGINS, 'portmap'), path.join(bin, 'portmap'));
  t.true((await e.ready()).status, 'ready once the plugin is there');
  const p = await e.pod();
  t.true(inSubnet(p.ip, n.subnet));
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
  t.deepEqual(await cniLeftovers(n, root), []);
});

test.serial('auto mode: the embedded bridge until a CNI config appears in the watched conf dir; an invalid one is reported by file and fails pods cleanly', async (t) => {
  const n = await cniNet(t);
  const embedded: TestNet = testNet();
  let root = '';
  // The conf dir does not exist yet: a CNI DaemonSet would create it.
  const e = await env(
    t,
    `${embedded.toml('auto')}[cni]\nconf_dir = "${n.confDir}"\nbin_dirs = ["${PLUGINS}"]\n`,
    async () => [...(await cniLeftovers(n, root)), ...(await networkLeftovers(embedded, e.pods))],
  );
  t.teardown(() => removeTestNet(embedded));
  root = e.berth.root;
  await waitFor('the embedded bridge to be ready', async () => (await e.ready()).status);
  const first = await e.pod();
  t.true(inSubnet(first.ip, embedded.subnet), `without a CNI config, ${first.ip} comes from the embedded ${embedded.subnet}`);

  await fs.mkdir(n.confDir, { recursive: true });
  const bad = path.join(n.confDir, '05-broken.conflist');
  await fs.writeFile(bad, '{"cniVersion": "1.0.0", "name": "x", "plugins": [{"nope": 1}]}');
  const notReady = await waitFor('NetworkReady false for the broken config', async () => {
    const r = await e.ready();
    return r.status ? undefined : r;
  });
  t.true(notReady.message.includes(bad), notReady.message);
  const err = (await t.throwsAsync(e.pod())) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.true(err.details.includes(bad), err.details);
  t.is((await e.berth.runtime.ListPodSandbox({})).items.length, 1);

  await fs.rm(bad);
  await fs.writeFile(path.join(n.confDir, '10-berthtest.conflist'), n.conflist());
  await waitFor('NetworkReady with the valid config', async () => (await e.ready()).status);
  const second = await e.pod();
  t.true(inSubnet(second.ip, n.subnet), `after the config appears, ${second.ip} comes from CNI ${n.subnet}`);
  // Each pod is torn down by the backend that set it up.
  for (const p of [first, second]) await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
  t.deepEqual(await cniLeftovers(n, root), []);
  t.true(await waitGone(vethOf(first.id)), 'the embedded pod\'s veth is gone');
});

test.serial('CNI: a plugin failing ADD gets the spec environment and chained input; the list is deleted again and nothing is left', async (t) => {
  const n = await cniNet(t);
  const bin = path.join(n.dir, 'bin');
  const record = path.join(n.dir, 'calls.log');
  await fs.mkdir(bin);
  // Records what it was given, then refuses ADD the way plugins do: an error object on stdout, a non-zero exit.
  await fs.writeFile(
    path.join(bin, 'berthfail'),
    `#!/bin/sh\nin=$(cat)\nprintf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_PATH" "$CNI_ARGS" "$in" >> ${record}\n` +
      `if [ "$CNI_COMMAND" = ADD ]; then echo '{"cniVersion":"1.0.0","code":7,"msg":"berth test plugin says no","details":"on purpose"}'; exit 1; fi\nexit 0\n`,
    { mode: 0o755 },
  );
  await fs.mkdir(n.confDir, { recursive: true });
  const list = JSON.parse(n.conflist());
  list.plugins = [list.plugins[0], { type: 'berthfail', capabilities: { portMappings: true, dns: true } }];
  await fs.writeFile(path.join(n.confDir, '10-berthtest.conflist'), JSON.stringify(list));
  let root = '';
  const e = await env(t, `[network]\nmode = "cni"\n[cni]\nconf_dir = "${n.confDir}"\nbin_dirs = ["${bin}", "${PLUGINS}"]\n`, () => cniLeftovers(n, root));
  root = e.berth.root;
  t.true((await e.ready()).status);
  const hostPort = await freePort();
  const config = podConfig({
    log_directory: path.join(e.berth.dir, 'logs'),
    port_mappings: ports([{ host_port: hostPort }]),
    dns_config: { servers: ['10.0.0.10'], searches: ['svc.cluster.local'], options: ['ndots:5'] },
  });
  const err = (await t.throwsAsync(e.berth.runtime.RunPodSandbox({ config }))) as unknown as grpc.ServiceError;
  t.true(err.details.includes('berth test plugin says no') && err.details.includes('code 7') && err.details.includes('"berthfail"'), err.details);
  t.is((await e.berth.runtime.ListPodSandbox({})).items.length, 0);

  const calls = (await fs.readFile(record, 'utf8')).trim().split('\n').map((l) => l.split('\t'));
  t.deepEqual(calls.map((c) => c[0]), ['ADD', 'DEL'], 'ADD, then DEL of the whole list');
  const [command, containerId, netns, ifname, cniPath, args, stdin] = calls[0]!;
  t.is(command, 'ADD');
  t.is(containerId!.length, 64);
  t.true(netns!.endsWith('/ns/net'), netns);
  t.is(ifname, 'eth0');
  t.is(cniPath, `${bin}:${PLUGINS}`);
  t.is(args, `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${config.metadata!.name};K8S_POD_INFRA_CONTAINER_ID=${containerId};K8S_POD_UID=${config.metadata!.uid}`);
  const input = JSON.parse(stdin!);
  t.is(input.name, n.name);
  t.is(input.cniVersion, '1.0.0');
  t.true(inSubnet(input.prevResult.ips[0].address.split('/')[0], n.subnet), 'prevResult is the bridge plugin\'s result');
  t.deepEqual(input.runtimeConfig, {
    portMappings: [{ hostPort, containerPort: 80, protocol: 'tcp' }],
    dns: { servers: ['10.0.0.10'], searches: ['svc.cluster.local'], options: ['ndots:5'] },
  });
  t.deepEqual(await cniLeftovers(n, root), []);
});
