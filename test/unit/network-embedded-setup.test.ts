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
  t.deepEqual(host.calls.sort(), ['attachHostEnd', 'iptables -I']);
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
