import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { containerConfig, hostLeftovers, podConfig } from '../helpers/cri.js';
import { freePort, waitFor } from '../helpers/util.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { PortMapping } from '../../src/gen/runtime/v1/PortMapping.js';
import {
  eventually,
  freeSubnet,
  releaseSubnet,
  httpGet,
  linkExists,
  networkLeftovers,
  outsideHost,
  removeTestNet,
  TestNet,
  testNet,
  udpAsk,
  udpEchoLayer,
  vethOf,
  waitGone,
} from './network-helpers.js';

// The embedded network for real: a berth per test with its own bridge, subnet and iptables chains; pods that serve
// HTTP (busybox httpd) and UDP (a small static echo server); clients on the node, in the pods, and on an "outside
// host" (a network namespace of the test's own, linked to the node by a veth pair).

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/netbox', 'v1', { layers: [await busyboxLayer(), await udpEchoLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

interface Env {
  berth: BerthProcess;
  net: TestNet;
  pods: string[];
  cgroups: string[];
  pod(overrides?: Partial<PodSandboxConfig>): Promise<{ id: string; ip: string }>;
  run(podId: string, cmd: string, podOverrides?: Partial<PodSandboxConfig>): Promise<string>;
  exec(containerId: string, cmd: string, timeout?: number): Promise<{ out: string; err: string; code: number }>;
  allocations(): Promise<Record<string, string>>;
  setupTimes(): string[];
}

async function env(t: ExecutionContext): Promise<Env> {
  const net = testNet();
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n${net.toml()}` });
  const e: Env = {
    berth,
    net,
    pods: [],
    cgroups: [],
    async pod(overrides = {}) {
      const { pod_sandbox_id } = await e.berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: path.join(berth.dir, 'logs'), ...overrides }) });
      e.pods.push(pod_sandbox_id);
      const status = await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      e.cgroups.push(JSON.parse(status.info.info).cgroup.path);
      return { id: pod_sandbox_id, ip: status.status!.network!.ip };
    },
    async run(podId, cmd, podOverrides = {}) {
      const { container_id } = await e.berth.runtime.CreateContainer({
        pod_sandbox_id: podId,
        config: containerConfig(image.ref, { command: ['/bin/sh', '-c', cmd], log_path: `${Math.random().toString(36).slice(2)}.log` }),
        sandbox_config: podConfig({ log_directory: path.join(berth.dir, 'logs'), ...podOverrides }),
      });
      await e.berth.runtime.StartContainer({ container_id });
      return container_id;
    },
    async exec(containerId, cmd, timeout = 10) {
      const r = await e.berth.runtime.ExecSync({ container_id: containerId, cmd: ['/bin/sh', '-c', cmd], timeout });
      return { out: r.stdout.toString(), err: r.stderr.toString(), code: r.exit_code };
    },
    async allocations() {
      const file = path.join(berth.root, 'network', 'ipam.json');
      const state = JSON.parse(await fs.readFile(file, 'utf8').catch(() => '{"allocations":{}}'));
      return state.allocations;
    },
    setupTimes() {
      return berth.logs
        .map((l) => {
          try {
            return JSON.parse(l);
          } catch {
            return {};
          }
        })
        .filter((l) => l.msg === 'pod network set up')
        .map((l) => `${l.ms} ${JSON.stringify(l.steps)}`);
    },
  };
  await berth.images.PullImage({ image: { image: image.ref } });
  t.teardown(async () => {
    const times = e.setupTimes();
    if (times.length > 0) t.log(`setup() per pod, ms: ${times.join(', ')}`);
    await e.berth.cleanup();
    const left = [...(await hostLeftovers(berth.dir, e.cgroups))];
    for (const id of e.pods) if (!(await waitGone(vethOf(id)))) left.push(`veth ${vethOf(id)} still exists`);
    left.push(...(await networkLeftovers(net, e.pods)));
    await removeTestNet(net);
    left.push(...(await networkLeftovers(net, e.pods, { bridgeToo: true })));
    if (left.length > 0) throw new Error(`test left host objects behind:\n${left.join('\n')}`);
  });
  return e;
}

const HTTPD = (text: string) => `mkdir -p /tmp/www && echo ${text} > /tmp/www/index.html && exec busybox httpd -f -p 80 -h /tmp/www`;
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

const ports = (list: Partial<PortMapping>[]): PortMapping[] =>
  list.map((p) => ({ protocol: 'TCP', container_port: 80, host_port: 0, host_ip: '', ...p }) as PortMapping);

function inSubnet(ip: string, subnet: string): boolean {
  return ip.split('.').slice(0, 3).join('.') === subnet.split('.').slice(0, 3).join('.');
}

test('two pods get addresses on the bridge and talk over TCP; the node reaches them; removal leaves nothing', async (t) => {
  const e = await env(t);
  const a = await e.pod();
  const b = await e.pod();
  t.true(inSubnet(a.ip, e.net.subnet), `${a.ip} in ${e.net.subnet}`);
  t.true(inSubnet(b.ip, e.net.subnet));
  t.not(a.ip, b.ip);
  t.not(a.ip, e.net.gateway);
  await e.run(a.id, HTTPD('hello-from-a'));
  const cb = await e.run(b.id, SLEEPER);

  // pod → pod, and node → pod
  const r = await eventually(async () => {
    const x = await e.exec(cb, `timeout 5 wget -q -O - http://${a.ip}/`);
    if (x.code !== 0) throw new Error(x.err);
    return x.out;
  });
  t.is(r.trim(), 'hello-from-a');
  t.is((await eventually(() => httpGet(`http://${a.ip}/`))).trim(), 'hello-from-a');

  // Inside: eth0 with the address, the host's default-route MTU, a default route via the bridge, /etc/hosts.
  const routes = (await fs.readFile('/proc/net/route', 'utf8')).split('\n').find((l) => l.split('\t')[1] === '00000000');
  const hostMtu = routes ? (await fs.readFile(`/sys/class/net/${routes.split('\t')[0]}/mtu`, 'utf8')).trim() : '1500';
  t.is((await e.exec(cb, 'cat /sys/class/net/eth0/mtu')).out.trim(), hostMtu);
  t.regex((await e.exec(cb, 'ip route')).out, new RegExp(`default via ${e.net.gateway.replace(/\./g, '\\.')} dev eth0`));
  t.regex((await e.exec(cb, 'ip -4 addr show eth0')).out, new RegExp(`inet ${b.ip.replace(/\./g, '\\.')}/24`));
  t.true((await e.exec(cb, 'cat /etc/hosts')).out.includes(b.ip));
  // The host ends sit on the bridge, in hairpin mode.
  t.is((await fs.readFile(`/sys/class/net/${e.net.bridge}/brif/${vethOf(a.id)}/hairpin_mode`, 'utf8')).trim(), '1');

  const allocated = await e.allocations();
  t.deepEqual(Object.keys(allocated).sort(), [a.ip, b.ip].sort());
  t.is(allocated[a.ip], a.id);

  for (const p of [a, b]) await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
  const removed = Date.now();
  const atReturn = await Promise.all([a, b].map((p) => linkExists(vethOf(p.id))));
  t.deepEqual(await e.allocations(), {}, 'addresses are released');
  // The kernel deletes a veth when its netns goes (after the pin is unmounted), asynchronously.
  for (const p of [a, b]) t.true(await waitGone(vethOf(p.id)), `veth of ${p.id} is gone after RemovePodSandbox`);
  t.log(`veths still present when RemovePodSandbox returned: ${atReturn.filter(Boolean).length}/2; all gone ${Date.now() - removed} ms later`);
  t.deepEqual(await networkLeftovers(e.net, [a.id, b.id]), []);
  const status = await e.berth.runtime.Status({ verbose: false });
  t.true(status.status!.conditions.find((c) => c.type === 'NetworkReady')!.status);
});

test('hostPorts (TCP, UDP, with and without hostIP) from 127.0.0.1, the node, an outside host and the pod itself; pods masquerade to the outside', async (t) => {
  const e = await env(t);
  const outside = await outsideHost();
  t.teardown(() => outside.remove());
  const [tcpPort, udpPort, boundPort] = [await freePort(), await freePort(), await freePort()];
  const mappings = ports([
    { host_port: tcpPort, container_port: 80 },
    { protocol: 'UDP', host_port: udpPort, container_port: 5353 },
    { host_port: boundPort, container_port: 80, host_ip: outside.nodeIp },
    { container_port: 8080 }, // a declared container port without a hostPort: no rule
  ]);
  const overrides = { port_mappings: mappings };
  const p = await e.pod(overrides);
  const web = await e.run(p.id, HTTPD('hello-hostport'), overrides);
  await e.run(p.id, 'exec udpecho 5353', overrides);

  // From the node, over loopback and over the node's own address.
  t.is((await eventually(() => httpGet(`http://127.0.0.1:${tcpPort}/`), 10000, 'TCP hostPort on 127.0.0.1')).trim(), 'hello-hostport');
  t.is((await httpGet(`http://${outside.nodeIp}:${tcpPort}/`)).trim(), 'hello-hostport');
  t.regex(await eventually(() => udpAsk('127.0.0.1', udpPort, 'ping'), 10000, 'UDP hostPort on 127.0.0.1'), /^echo ping from /);
  // hostIP: only that address.
  t.is((await httpGet(`http://${outside.nodeIp}:${boundPort}/`)).trim(), 'hello-hostport');
  await t.throwsAsync(httpGet(`http://127.0.0.1:${boundPort}/`, 1000));

  // From another host: its own address is kept (no masquerade on the way in).
  t.is((await outside.httpGet(`http://${outside.nodeIp}:${tcpPort}/`)).trim(), 'hello-hostport');
  t.is(await outside.udpAsk(outside.nodeIp, udpPort, 'hi'), `echo hi from ${outside.ip}`);

  // Hairpin: the pod reaches itself through its hostPort, on the bridge address and on the node's address.
  for (const host of [e.net.gateway, outside.nodeIp]) {
    const r = await e.exec(web, `timeout 5 wget -q -O - http://${host}:${tcpPort}/`);
    t.is(r.out.trim(), 'hello-hostport', `hairpin via ${host}: ${r.err}`);
  }

  // Pod → outside host: masqueraded to the node's address on that link.
  const server = await outside.serveClientAddress(9000);
  t.teardown(() => void server.kill('SIGKILL'));
  const seen = await e.exec(web, `timeout 5 wget -q -O - http://${outside.ip}:9000/`);
  t.is(seen.out.trim(), outside.nodeIp, seen.err);

  // A second pod asking for a taken hostPort is refused, naming the port, and leaves nothing behind.
  const before = await e.allocations();
  const err = (await t.throwsAsync(
    e.berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: path.join(e.berth.dir, 'logs'), port_mappings: ports([{ host_port: tcpPort }]) }) }),
  )) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.ALREADY_EXISTS);
  t.true(err.details.includes(String(tcpPort)), err.details);
  t.deepEqual(await e.allocations(), before);
  t.is((await e.berth.runtime.ListPodSandbox({})).items.length, 1);
  // Two mappings of one pod on the same port: invalid.
  const dup = (await t.throwsAsync(
    e.berth.runtime.RunPodSandbox({
      config: podConfig({ log_directory: path.join(e.berth.dir, 'logs'), port_mappings: ports([{ host_port: 61001 }, { host_port: 61001, container_port: 81 }]) }),
    }),
  )) as unknown as grpc.ServiceError;
  t.is(dup.code, grpc.status.INVALID_ARGUMENT);
  t.true(dup.details.includes('61001'));

  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
  await t.throwsAsync(httpGet(`http://127.0.0.1:${tcpPort}/`, 1000), undefined, 'the hostPort is gone with its pod');
  t.deepEqual(await networkLeftovers(e.net, [p.id]), []);
  t.deepEqual(await e.allocations(), {});
});

test('a berth restart keeps allocations, hostPorts and reachability; teardown after the restart removes everything', async (t) => {
  const e = await env(t);
  const hostPort = await freePort();
  const overrides = { port_mappings: ports([{ host_port: hostPort }]) };
  const a = await e.pod(overrides);
  await e.run(a.id, HTTPD('survivor'), overrides);
  t.is((await eventually(() => httpGet(`http://127.0.0.1:${hostPort}/`))).trim(), 'survivor');

  const restarted = await e.berth.restart();
  e.berth = restarted;
  t.deepEqual(await e.allocations(), { [a.ip]: a.id }, 'the allocation is still on disk');
  t.is((await httpGet(`http://127.0.0.1:${hostPort}/`)).trim(), 'survivor', 'rules survive the restart');
  t.is((await httpGet(`http://${a.ip}/`)).trim(), 'survivor');
  const status = await restarted.runtime.PodSandboxStatus({ pod_sandbox_id: a.id });
  t.is(status.status!.network!.ip, a.ip);
  // The hostPort is still held after the restart.
  const err = (await t.throwsAsync(
    restarted.runtime.RunPodSandbox({ config: podConfig({ log_directory: path.join(restarted.dir, 'logs'), port_mappings: ports([{ host_port: hostPort }]) }) }),
  )) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.ALREADY_EXISTS);
  const b = await e.pod();
  t.not(b.ip, a.ip);
  t.deepEqual(Object.keys(await e.allocations()).sort(), [a.ip, b.ip].sort());

  await restarted.runtime.StopPodSandbox({ pod_sandbox_id: a.id });
  await t.throwsAsync(httpGet(`http://127.0.0.1:${hostPort}/`, 1000));
  t.deepEqual(Object.keys(await e.allocations()), [b.ip]);
  await restarted.runtime.RemovePodSandbox({ pod_sandbox_id: a.id });
  await restarted.runtime.RemovePodSandbox({ pod_sandbox_id: b.id });
  t.deepEqual(await e.allocations(), {});
  t.deepEqual(await networkLeftovers(e.net, [a.id, b.id]), []);
});

test('a pod CIDR from UpdateRuntimeConfig takes precedence over the configured subnet, and survives a restart', async (t) => {
  const e = await env(t);
  const before = await e.pod();
  t.true(inSubnet(before.ip, e.net.subnet));
  const podCidr = freeSubnet(10, 213);
  t.teardown(() => releaseSubnet(podCidr));
  await e.berth.runtime.UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr: podCidr } } });
  const after = await e.pod();
  t.true(inSubnet(after.ip, podCidr), `${after.ip} in ${podCidr}`);
  await e.run(after.id, HTTPD('new-cidr'));
  t.is((await eventually(() => httpGet(`http://${after.ip}/`))).trim(), 'new-cidr');
  // The same CIDR again (kubelet repeats it) changes nothing.
  await e.berth.runtime.UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr: podCidr } } });
  e.berth = await e.berth.restart();
  const third = await e.pod();
  t.true(inSubnet(third.ip, podCidr), 'the pod CIDR is remembered across a restart');
  t.not(third.ip, after.ip);
});

test('a subnet that collides with a host route is refused with a clear reason; nothing is made', async (t) => {
  const outside = await outsideHost();
  t.teardown(() => outside.remove());
  // The outside link's /24 is a host route now; ask for a subnet inside it.
  const linkSubnet = outside.ip.replace(/\.2$/, '.0');
  const collide = testNet();
  t.teardown(() => releaseSubnet(collide.subnet));
  const berth = await startBerth({
    config: `[registry]\ninsecure = ["${registry.host}"]\n[network]\nmode = "embedded"\nbridge = "${collide.bridge}"\nsubnet = "${linkSubnet}/25"\n`,
  });
  t.teardown(() => berth.cleanup());
  // The bridge is set up in the background after start: wait for its verdict.
  const ready = await waitFor('NetworkReady to report the collision', async () => {
    const s = await berth.runtime.Status({ verbose: false });
    const c = s.status!.conditions.find((x) => x.type === 'NetworkReady')!;
    return c.message.includes('collides') ? c : undefined;
  });
  t.false(ready.status);
  t.regex(ready.message, new RegExp(`${linkSubnet.replace(/\./g, '\\.')}/25 collides with the host route ${linkSubnet.replace(/\./g, '\\.')}/24 dev ${outside.nodeLink}`));
  const err = (await t.throwsAsync(berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: path.join(berth.dir, 'logs') }) }))) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.true(err.details.includes('collides'), err.details);
  t.is((await berth.runtime.ListPodSandbox({})).items.length, 0);
  t.false(await linkExists(collide.bridge), 'no bridge was made');
  t.deepEqual(await networkLeftovers(collide, [], { bridgeToo: true }), []);
});
