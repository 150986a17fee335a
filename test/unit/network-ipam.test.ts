import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { parseCidr, formatCidr, overlaps, podRange, gatewayOf, formatIp } from '../../src/network/cidr.js';
import { addressOf, adopt, allocate, emptyIpam, parseIpamState, reconcile, release } from '../../src/network/ipam.js';
import { IpamStore } from '../../src/network/ipam-store.js';

const net = (s: string) => parseCidr(s)!;

test('CIDR parsing is strict about host bits and octets', (t) => {
  t.deepEqual(parseCidr('10.86.0.0/16'), { base: (10 << 24) + (86 << 16), prefix: 16 });
  t.is(parseCidr('10.86.0.1/16'), undefined);
  t.deepEqual(parseCidr('10.86.0.1/16', false), parseCidr('10.86.0.0/16'));
  for (const bad of ['10.86.0.0', '10.86.0.0/33', '10.256.0.0/16', '10.86.0.0/x', '010.1.0.0/16', 'a.b.c.d/8', '']) t.is(parseCidr(bad), undefined, bad);
  t.is(formatCidr(net('192.168.4.0/22')), '192.168.4.0/22');
  t.true(overlaps(net('10.0.0.0/8'), net('10.213.5.0/24')));
  t.false(overlaps(net('10.213.5.0/24'), net('10.213.6.0/24')));
  t.is(formatIp(gatewayOf(net('10.86.0.0/16'))), '10.86.0.1');
  const r = podRange(net('10.1.2.0/24'));
  t.is(formatIp(r.first), '10.1.2.2');
  t.is(formatIp(r.last), '10.1.2.254');
});

test('allocation skips network, gateway and broadcast, is next-fit, and gives a pod the same address twice', (t) => {
  const s = emptyIpam();
  const subnet = net('10.9.9.0/29'); // .2 – .6 for pods
  t.is(allocate(s, subnet, 'a'), '10.9.9.2');
  t.is(allocate(s, subnet, 'a'), '10.9.9.2', 'idempotent');
  t.is(allocate(s, subnet, 'b'), '10.9.9.3');
  t.deepEqual(release(s, 'a'), ['10.9.9.2']);
  // Next-fit: the freed .2 is not handed out again until the rest of the range has been used.
  t.is(allocate(s, subnet, 'c'), '10.9.9.4');
  t.is(allocate(s, subnet, 'd'), '10.9.9.5');
  t.is(allocate(s, subnet, 'e'), '10.9.9.6');
  t.is(allocate(s, subnet, 'f'), '10.9.9.2', 'wraps around to the first free address');
  t.is(addressOf(s, 'f'), '10.9.9.2');
  t.deepEqual(release(s, 'nobody'), []);
});

test('an exhausted subnet is resource_exhausted, naming the subnet', (t) => {
  const s = emptyIpam();
  const subnet = net('10.9.9.0/30'); // exactly one pod address (.2)
  allocate(s, subnet, 'a');
  const err = t.throws(() => allocate(s, subnet, 'b'), { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, 'resource_exhausted');
  t.true(err.message.includes('10.9.9.0/30'));
  t.true(err.message.includes('[network] subnet'), 'says what to change');
  const fromKubelet = t.throws(() => allocate(s, subnet, 'b', 'kubelet'), { instanceOf: BerthError }) as BerthError;
  t.true(fromKubelet.message.includes('pod CIDR'), fromKubelet.message);
  const tiny = t.throws(() => allocate(emptyIpam(), net('10.9.9.0/31'), 'a'), { instanceOf: BerthError }) as BerthError;
  t.is(tiny.kind, 'resource_exhausted');
  t.true(tiny.message.includes('10.9.9.0/31') && tiny.message.includes('[network] subnet'), tiny.message);
  release(s, 'a');
  t.is(allocate(s, subnet, 'b'), '10.9.9.2');
});

test('a pod moving to a new subnet (pod CIDR change) gets an address there', (t) => {
  const s = emptyIpam();
  t.is(allocate(s, net('10.1.0.0/24'), 'a'), '10.1.0.2');
  t.is(allocate(s, net('10.2.0.0/24'), 'a'), '10.2.0.2');
  t.deepEqual(release(s, 'a').sort(), ['10.1.0.2', '10.2.0.2']);
});

test('reconcile frees the addresses of pods that are gone; adopt takes back what live pods hold', (t) => {
  const s = emptyIpam();
  const subnet = net('10.3.0.0/24');
  allocate(s, subnet, 'live');
  allocate(s, subnet, 'gone');
  t.deepEqual(reconcile(s, new Set(['live'])), [['10.3.0.3', 'gone']]);
  t.deepEqual(s.allocations, { '10.3.0.2': 'live' });
  t.true(adopt(s, 'other', '10.3.0.9'));
  t.false(adopt(s, 'other', '10.3.0.9'));
  const err = t.throws(() => adopt(s, 'thief', '10.3.0.2'), { instanceOf: BerthError }) as BerthError;
  t.true(err.message.includes('10.3.0.2'));
  // The next allocation continues after the last one handed out, skipping adopted addresses.
  t.is(allocate(s, subnet, 'new'), '10.3.0.4');
});

test('the persisted format is validated; a corrupt file is an error, not an empty pool', (t) => {
  const good = { version: 1, allocations: { '10.3.0.2': 'p' }, last: { '10.3.0.0/24': '10.3.0.2' }, podCidr: '10.244.1.0/24' };
  t.deepEqual(parseIpamState(good), good);
  t.deepEqual(parseIpamState({ version: 1 }), emptyIpam());
  for (const bad of [null, [], { version: 2 }, { version: 1, allocations: { 'x': 'p' } }, { version: 1, allocations: { '10.0.0.1': '' } }, { version: 1, last: { '10.0.0.1/24': '10.0.0.1' } }, { version: 1, podCidr: 'nope' }]) {
    t.throws(() => parseIpamState(bad), { instanceOf: BerthError }, JSON.stringify(bad));
  }
});

test('the store writes atomically, coalesces concurrent saves, and the last state always lands', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-ipam-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'network', 'ipam.json');
  const store = new IpamStore(file);
  await store.load();
  const subnet = net('10.4.0.0/24');
  const saves: Promise<void>[] = [];
  for (let i = 0; i < 20; i++) {
    allocate(store.state, subnet, `pod${i}`);
    saves.push(store.save());
  }
  await Promise.all(saves);
  const onDisk = JSON.parse(await fs.readFile(file, 'utf8'));
  t.is(Object.keys(onDisk.allocations).length, 20);
  t.is(onDisk.version, 1);
  t.deepEqual((await fs.readdir(path.dirname(file))).filter((f) => f.endsWith('.tmp')), [], 'no temp files left');
  const again = new IpamStore(file);
  t.deepEqual(await again.load(), store.state);
});
