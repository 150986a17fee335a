import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EmbeddedNetwork } from '../../src/network/embedded.js';
import { HostPortTable } from '../../src/network/hostports.js';
import { IpamStore } from '../../src/network/ipam-store.js';
import { PodNetworkRequest } from '../../src/network/types.js';
import { PortMapping } from '../../src/sandbox/types.js';
import { FakeEmbeddedHost } from './fakes/embedded-host.js';
import { LogLine, recordingLog } from './fakes/sandbox.js';

// The embedded network's pod setup with a recording host (no bridge, no iptables, no root): a failure at each step
// leaves nothing of the pod held, or undoes what the failing call itself made.

async function embedded(t: ExecutionContext, subnet = '10.251.0.0/16') {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-embedded-setup-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const host = new FakeEmbeddedHost();
  const lines: LogLine[] = [];
  const net = new EmbeddedNetwork({ bridge: 'berthtest0', subnet, chainPrefix: 'BERTH-UNIT', dataDir: dir, log: recordingLog(lines), host });
  await net.load([]);
  const held = () => ({
    hostPorts: (net as unknown as { hostPorts: HostPortTable }).hostPorts.holders(),
    addresses: Object.values((net as unknown as { store: IpamStore }).store.state.allocations),
  });
  t.teardown(() => net.close());
  return { net, host, lines, held };
}

const web: PortMapping[] = [{ protocol: 'TCP', containerPort: 80, hostPort: 8080, hostIp: '' }];

function request(podId: string, portMappings: PortMapping[] = web): PodNetworkRequest {
  return { podId, name: `pod-${podId[0]}`, namespace: 'default', uid: 'u', netnsPath: '/run/x/net', portMappings, annotations: {} };
}

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

test('a pod set up in full holds its address and hostPorts until teardown releases them', async (t) => {
  const { net, host, held } = await embedded(t);
  const plan = await net.prepare(request(A));
  const result = await net.setup(request(A), plan);
  t.deepEqual(host.calls.filter((c) => c === 'iptables -I' || c === 'attachHostEnd').sort(), ['attachHostEnd', 'iptables -I']);
  t.false(host.calls.includes('iptables -D'));
  t.deepEqual(held(), { hostPorts: [A], addresses: [A] });
  await net.teardown(request(A), result.state);
  t.deepEqual(held(), { hostPorts: [], addresses: [] });
});

test('a prepare failing while the bridge is made holds nothing of the pod', async (t) => {
  const { net, host, held } = await embedded(t);
  host.failing.add('ensureBridge');
  await t.throwsAsync(net.prepare(request(A)), { message: /injected failure: ensureBridge/ });
  t.deepEqual(held(), { hostPorts: [], addresses: [] });
});

test('a prepare failing at the hostPort reservation takes no address', async (t) => {
  const { net, held } = await embedded(t);
  await net.prepare(request(A));
  await t.throwsAsync(net.prepare(request(B)), { message: /hostPort 8080\/TCP is already used by pod default\/pod-a/ });
  t.deepEqual(held(), { hostPorts: [A], addresses: [A] });
});

test('a prepare failing at the address allocation releases the hostPorts it reserved', async (t) => {
  // A /30 has one pod address besides the gateway.
  const { net, held } = await embedded(t, '10.251.0.0/30');
  await net.prepare(request(A, []));
  await t.throwsAsync(net.prepare(request(B)), { message: /10\.251\.0\.0\/30/ });
  t.deepEqual(held(), { hostPorts: [], addresses: [A] });
});

test('a setup failing to attach the host end deletes the hostPort rules it put in; the plan stays for teardown', async (t) => {
  const { net, host, lines, held } = await embedded(t);
  const plan = await net.prepare(request(A));
  host.calls.length = 0;
  host.failing.add('attachHostEnd');
  await t.throwsAsync(net.setup(request(A), plan), { message: /injected failure: attachHostEnd/ });
  t.deepEqual(host.calls.filter((c) => c.startsWith('iptables')), ['iptables -I', 'iptables -D'], 'inserted, then deleted');
  t.deepEqual(lines.filter((l) => l.msg === 'undo step failed'), []);
  t.deepEqual(held(), { hostPorts: [A], addresses: [A] }, 'the plan is the caller\'s to undo');
  await net.teardown(request(A), plan.state);
  t.deepEqual(held(), { hostPorts: [], addresses: [] });
});

test('a setup failing to put the hostPort rules in has nothing of its own to undo', async (t) => {
  const { net, host } = await embedded(t);
  const plan = await net.prepare(request(A));
  host.calls.length = 0;
  host.failing.add('iptables -I');
  await t.throwsAsync(net.setup(request(A), plan), { message: /injected failure: iptables -I/ });
  // The failed insert looks for missing chains of berth (a neighbour's flush) once; none are missing, so no retry.
  t.deepEqual(host.calls.sort(), ['attachHostEnd', 'iptables -I', 'iptablesSave']);
});

test('a failing undo of the setup is logged by name with the pod id, and the first error is what the caller gets', async (t) => {
  const { net, host, lines } = await embedded(t);
  const plan = await net.prepare(request(A));
  host.failing.add('attachHostEnd');
  host.failing.add('iptables -D');
  await t.throwsAsync(net.setup(request(A), plan), { message: /injected failure: attachHostEnd/ });
  const failed = lines.filter((l) => l.msg === 'undo step failed');
  t.deepEqual(failed.map((l) => [l.fields.step, l.fields.pod]), [['delete hostPort rules', A]]);
});

// Neighbours: a firewall reload restores nat and filter with flush from a save that lacks berth's chains.

const notBerths = (chainOrRule: string) => !chainOrRule.includes('BERTH-UNIT');

test('a rule check finds nothing to do while every rule of berth is there, and changes nothing', async (t) => {
  const { net, host } = await embedded(t);
  await net.setup(request(A), await net.prepare(request(A)));
  const before = JSON.stringify(host.tables, (_k, v) => (v instanceof Set ? [...v] : v));
  host.calls.length = 0;
  t.false(await net.checkRules());
  t.deepEqual(host.calls, ['iptablesSave'], 'one save, no restore');
  t.is(JSON.stringify(host.tables, (_k, v) => (v instanceof Set ? [...v] : v)), before);
});

test('after a flushing reload, a rule check puts back the chains, jumps, static rules and every live pod\'s hostPort rules, and leaves the neighbour\'s own rules', async (t) => {
  const { net, host } = await embedded(t);
  const pods = [A, B, 'c'.repeat(64)];
  const ports = (i: number): PortMapping[] => (i === 2 ? [] : [{ protocol: 'TCP', containerPort: 80, hostPort: 8080 + i, hostIp: '' }, { protocol: 'UDP', containerPort: 53, hostPort: 5300 + i, hostIp: '' }]);
  for (const [i, id] of pods.entries()) await net.setup(request(id, ports(i)), await net.prepare(request(id, ports(i))));
  const whole = await host.iptablesSave();
  const neighbour = '-A PREROUTING -m comment --comment "cni-ish neighbour" -j ACCEPT';
  host.flushingReload(notBerths, { nat: [neighbour] });
  t.false(host.tables.nat!.rules.some((r) => r.includes('BERTH-UNIT')), 'the reload took all of berth\'s rules');
  t.true(await net.checkRules());
  const sorted = (xs: Iterable<string>) => [...xs].sort();
  t.deepEqual(sorted(host.tables.nat!.chains), sorted(whole.nat!.chains));
  t.deepEqual(sorted(host.tables.filter!.chains), sorted(whole.filter!.chains));
  t.deepEqual(sorted(host.tables.nat!.rules), sorted([...whole.nat!.rules, neighbour]), 'berth\'s nat rules are back as they were, the neighbour\'s kept');
  t.deepEqual(sorted(host.tables.filter!.rules), sorted(whole.filter!.rules));
  t.false(await net.checkRules(), 'and a second check has nothing to do');
});

test('a reload that takes some of a pod\'s rules gets them back without doubling those it left', async (t) => {
  const { net, host } = await embedded(t);
  const two: PortMapping[] = [...web, { protocol: 'TCP', containerPort: 81, hostPort: 8081, hostIp: '' }];
  await net.setup(request(A, two), await net.prepare(request(A, two)));
  const whole = [...host.tables.nat!.rules].sort();
  host.tables.nat!.rules = host.tables.nat!.rules.filter((r) => !r.includes('--dport 8081'));
  t.true(await net.checkRules());
  t.deepEqual([...host.tables.nat!.rules].sort(), whole);
});

test('a pod start after a reload and before the next check puts berth\'s rules back first, then its own', async (t) => {
  const { net, host } = await embedded(t);
  await net.setup(request(A), await net.prepare(request(A)));
  host.flushingReload(notBerths);
  const other: PortMapping[] = [{ protocol: 'TCP', containerPort: 80, hostPort: 9090, hostIp: '' }];
  await net.setup(request(B, other), await net.prepare(request(B, other)));
  const rules = host.tables.nat!.rules;
  t.true(rules.some((r) => r.includes(`berth-pod:${A}`) && r.includes('--dport 8080')), 'the first pod\'s rule is back');
  t.true(rules.some((r) => r.includes(`berth-pod:${B}`) && r.includes('--dport 9090')), 'the new pod\'s rule is in');
  t.false(await net.checkRules(), 'nothing is missing');
});

test('a pod torn down after a reload stops cleanly, and a check then does not put its rules back', async (t) => {
  const { net, host, held } = await embedded(t);
  const { state } = await net.setup(request(A), await net.prepare(request(A)));
  host.flushingReload(notBerths);
  await net.teardown(request(A), state);
  t.deepEqual(held(), { hostPorts: [], addresses: [] });
  t.true(await net.checkRules(), 'the base chains were missing');
  t.false(host.tables.nat!.rules.some((r) => r.includes(`berth-pod:${A}`)), 'the gone pod\'s rules are not restored');
});

test('a check waits for a pod rule change in flight, and a pod start waits for a check in flight', async (t) => {
  const { net, host } = await embedded(t);
  const plan = await net.prepare(request(A));
  // The pod's insert is in flight when the check starts: the check sees it whole, never half.
  const setup = net.setup(request(A), plan);
  const check = net.checkRules();
  await setup;
  t.false(await check, 'the pod\'s rules were in by the time the check read the tables');
  t.is(host.tables.nat!.rules.filter((r) => r.includes(`berth-pod:${A}`)).length, 1, 'not doubled');
  host.flushingReload(notBerths);
  const recheck = net.checkRules();
  const prepared = net.prepare(request(B, []));
  await prepared;
  t.true(host.restores.some((r) => r.includes(':BERTH-UNIT-HOSTPORTS')), 'the re-assertion had run before the next pod start was prepared');
  t.true(await recheck);
});
