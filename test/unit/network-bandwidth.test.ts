import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bandwidthLimits, burstBytes, ifbName, orphanIfbs, shapingBatch } from '../../src/network/bandwidth.js';
import { EmbeddedNetwork } from '../../src/network/embedded.js';
import { ifbAliasRequest, ifbOwnerTag, newIfbRequest } from '../../src/network/ifb.js';
import { IpamStore } from '../../src/network/ipam-store.js';
import { PodNetworkRequest } from '../../src/network/types.js';
import { parseQuantity } from '../../src/quantity.js';
import { FakeEmbeddedHost } from './fakes/embedded-host.js';
import { recordingLog } from './fakes/sandbox.js';

// Pod bandwidth annotations in the embedded network: parsing and bounds, the tc plan, and the ifb's lifetime with a
// recording host (no root).

const ING = 'kubernetes.io/ingress-bandwidth';
const EGR = 'kubernetes.io/egress-bandwidth';

test('quantities parse as kubelet writes them; malformed, negative and overflowing ones say why', (t) => {
  t.deepEqual(parseQuantity('8M'), { value: 8e6 });
  t.deepEqual(parseQuantity('16Mi'), { value: 16 * 2 ** 20 });
  t.deepEqual(parseQuantity('1.5k'), { value: 1500 });
  t.deepEqual(parseQuantity('1e3'), { value: 1000 });
  t.deepEqual(parseQuantity('100'), { value: 100 });
  t.regex((parseQuantity('10Xi') as { problem: string }).problem, /not a quantity/);
  t.regex((parseQuantity('10ki') as { problem: string }).problem, /not a quantity/);
  t.regex((parseQuantity('-5M') as { problem: string }).problem, /negative/);
  t.regex((parseQuantity('99999E') as { problem: string }).problem, /too large/);
  t.regex((parseQuantity('') as { problem: string }).problem, /empty/);
});

test('bandwidth annotations become bit/s limits; a pod without them has none', (t) => {
  t.is(bandwidthLimits({ other: 'x' }), undefined);
  t.deepEqual(bandwidthLimits({ [ING]: '8M' }), { ingressBitsPerSecond: 8e6 });
  t.deepEqual(bandwidthLimits({ [ING]: '8M', [EGR]: '1G' }), { ingressBitsPerSecond: 8e6, egressBitsPerSecond: 1e9 });
  t.deepEqual(bandwidthLimits({ [EGR]: '1k' }), { egressBitsPerSecond: 1000 });
  t.deepEqual(bandwidthLimits({ [EGR]: '1P' }), { egressBitsPerSecond: 1e15 });
});

test('a bad bandwidth annotation is INVALID_ARGUMENT naming the annotation', (t) => {
  for (const [key, value, why] of [
    [ING, '10Xi', /not a quantity/],
    [EGR, '-1M', /negative/],
    [ING, '999P', /above 1 Pbit\/s/],
    [EGR, '999', /below 1 kbit\/s/],
    [ING, '2P', /above 1 Pbit\/s/],
    [EGR, '99999999999999999999E', /too large/],
  ] as const) {
    const err = t.throws(() => bandwidthLimits({ [key]: value }));
    t.is((err as { kind?: string }).kind, 'invalid_argument');
    t.true(err!.message.startsWith(`config.annotations["${key}"]`), err!.message);
    t.regex(err!.message, why);
  }
});

test('the tc plan shapes traffic to the pod on the veth, and from it through the ifb', (t) => {
  t.is(shapingBatch('berthaaaaaaaaaa', undefined, { ingressBitsPerSecond: 8e6 }), 'qdisc replace dev berthaaaaaaaaaa root tbf rate 8000000bit burst 32768 latency 50ms\n');
  t.deepEqual(shapingBatch('berthaaaaaaaaaa', 'berthiaaaaaaaaa', { ingressBitsPerSecond: 8e6, egressBitsPerSecond: 1e9 }).trim().split('\n'), [
    'qdisc replace dev berthaaaaaaaaaa root tbf rate 8000000bit burst 32768 latency 50ms',
    'qdisc replace dev berthaaaaaaaaaa handle ffff: ingress',
    'filter add dev berthaaaaaaaaaa parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev berthiaaaaaaaaa',
    'qdisc replace dev berthiaaaaaaaaa root tbf rate 1000000000bit burst 1250000 latency 50ms',
  ]);
  t.throws(() => shapingBatch('v', undefined, { egressBitsPerSecond: 8e6 }));
  t.is(burstBytes(1e15), 2 ** 30);
});

test('ifb names are berth-prefixed, 15 bytes, never a veth name; only berth ifbs no live pod owns are orphans', (t) => {
  const name = ifbName('0123456789abcdef'.repeat(4));
  t.is(name, 'berthi012345678');
  t.is(name.length, 15);
  t.deepEqual(orphanIfbs(['eth0', 'ifb0', 'berth0123456789', name, 'berthi999999999', 'berthixyz'], new Set([name])), ['berthi999999999']);
});

test('the RTM_NEWLINK requests name the ifb and then its owner (alias); the first asks for it up, created exclusively, with an ack', (t) => {
  const req = newIfbRequest('berthi012345678', 7);
  t.is(req.readUInt32LE(0), req.length);
  t.is(req.readUInt16LE(4), 16);
  t.is(req.readUInt16LE(6), 0x1 | 0x4 | 0x200 | 0x400);
  t.is(req.readUInt32LE(8), 7);
  t.is(req.readUInt32LE(16 + 8), 1);
  t.true(req.includes(Buffer.from('berthi012345678\0')));
  t.true(req.includes(Buffer.from('ifb\0')));
  t.is(req.length % 4, 0);
  const alias = ifbAliasRequest('berthi012345678', 8, ifbOwnerTag('berth0'));
  t.is(alias.readUInt16LE(6), 0x1 | 0x4, 'a change of the existing link, not a create');
  t.true(alias.includes(Buffer.from('berthi012345678\0')));
  t.true(alias.includes(Buffer.from('berth bridge=berth0')));
  t.is(alias.length % 4, 0);
});

test('a berth restarting on its bridge removes only its own orphan ifb devices, never another berth\'s', async (t) => {
  const { net, host } = await embedded(t);
  await net.close();
  host.devices.add('berthi111111111');
  host.ifbOwners.set('berthi111111111', ifbOwnerTag('berthtest0'));
  host.devices.add('berthi222222222');
  host.ifbOwners.set('berthi222222222', ifbOwnerTag('some-other-bridge'));
  const again = new EmbeddedNetwork({ bridge: 'berthtest0', subnet: '10.252.0.0/16', chainPrefix: 'BERTH-UNIT', dataDir: (net as unknown as { opts: { dataDir: string } }).opts.dataDir, log: recordingLog([]), host });
  await again.load([]);
  t.teardown(() => again.close());
  await again.ensure();
  t.false(host.devices.has('berthi111111111'));
  t.true(host.devices.has('berthi222222222'));
});

async function embedded(t: ExecutionContext) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-bandwidth-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const host = new FakeEmbeddedHost();
  const net = new EmbeddedNetwork({ bridge: 'berthtest0', subnet: '10.252.0.0/16', chainPrefix: 'BERTH-UNIT', dataDir: dir, log: recordingLog([]), host });
  await net.load([]);
  t.teardown(() => net.close());
  return { net, host, addresses: () => Object.values((net as unknown as { store: IpamStore }).store.state.allocations) };
}

const request = (podId: string, annotations: Record<string, string> = {}): PodNetworkRequest => ({
  podId, name: 'p', namespace: 'default', uid: 'u', netnsPath: '/run/x/net', portMappings: [], annotations,
});
const A = 'a'.repeat(64);

test('an unannotated pod pays nothing for bandwidth: no ifb, no tc', async (t) => {
  const { net, host } = await embedded(t);
  const result = await net.setup(request(A), await net.prepare(request(A)));
  t.false(host.calls.includes('createIfb'));
  t.false(host.calls.includes('tcBatch'));
  t.is(result.state.ifb, undefined);
});

test('an annotated pod gets its ifb and one tc batch; teardown deletes the ifb', async (t) => {
  const { net, host } = await embedded(t);
  const req = request(A, { [ING]: '8M', [EGR]: '8M' });
  const result = await net.setup(req, await net.prepare(req));
  t.deepEqual(host.calls.filter((c) => c === 'createIfb' || c === 'tcBatch'), ['createIfb', 'tcBatch']);
  t.is(result.state.ifb, ifbName(A));
  t.true(host.devices.has(ifbName(A)));
  await net.teardown(req, result.state);
  t.false(host.devices.has(ifbName(A)));
});

test('an ingress-only pod gets no ifb', async (t) => {
  const { net, host } = await embedded(t);
  const req = request(A, { [ING]: '8M' });
  await net.setup(req, await net.prepare(req));
  t.false(host.calls.includes('createIfb'));
  t.is(host.batches.length, 1);
});

test('a failing tc batch deletes the ifb it made', async (t) => {
  const { net, host } = await embedded(t);
  host.failing.add('tcBatch');
  const req = request(A, { [EGR]: '8M' });
  await t.throwsAsync(net.setup(req, await net.prepare(req)), { message: /injected failure: tcBatch/ });
  t.false(host.devices.has(ifbName(A)));
});

test('a bad annotation fails prepare before any address is taken', async (t) => {
  const { net, addresses } = await embedded(t);
  await t.throwsAsync(net.prepare(request(A, { [EGR]: '10Xi' })), { message: /kubernetes.io\/egress-bandwidth/ });
  t.deepEqual(addresses(), []);
});

test('an ifb of berth that no live pod owns is removed when the network starts; a live pod keeps its own', async (t) => {
  const { net, host } = await embedded(t);
  host.devices.add('berthi999999999');
  host.devices.add('ifb0');
  const live = 'c'.repeat(64);
  host.devices.add(ifbName(live));
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-bandwidth-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const again = new EmbeddedNetwork({ bridge: 'berthtest0', subnet: '10.252.0.0/16', chainPrefix: 'BERTH-UNIT', dataDir: dir, log: recordingLog([]), host });
  await again.load([{ podId: live, state: { backend: 'embedded', ip: '10.252.0.9', subnet: '10.252.0.0/16', bridge: 'berthtest0', veth: `berth${live.slice(0, 10)}`, chainPrefix: 'BERTH-UNIT', hostPorts: [], ifb: ifbName(live) } }]);
  await again.ensure();
  t.teardown(() => again.close());
  t.false(host.devices.has('berthi999999999'));
  t.true(host.devices.has('ifb0'));
  t.true(host.devices.has(ifbName(live)));
  void net;
});
