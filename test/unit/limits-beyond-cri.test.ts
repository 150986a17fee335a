import test from 'ava';
import { parse } from 'smol-toml';
import { BerthError } from '../../src/errors.js';
import { parseWholeQuantity } from '../../src/quantity.js';
import { ConfigError, defaultConfig, validateConfig } from '../../src/config/schema.js';
import { renderConfig } from '../../src/config/render.js';
import { resolveBlockioClasses, type ProbeDevice } from '../../src/config/blockio.js';
import { blockioLimitsFor, checkPodBlockioClasses, selectBlockioClass } from '../../src/container/blockio-class.js';
import { podPidsLimit } from '../../src/container/pids-limit.js';
import type { CgroupLayout, Hierarchy } from '../../src/kernel/cgroup-layout.js';
import { planResources, type BlockioDeviceLimit } from '../../src/kernel/cgroup-plan.js';

// Block I/O classes and the pids limit (issue 18 items 1 and 2): quantities, config keys, annotations and the
// cgroup files each becomes on v1 and v2.

const fromToml = (text: string) => validateConfig(parse(text) as Record<string, unknown>);

function configError(t: import('ava').ExecutionContext, text: string, key: string): void {
  const err = t.throws(() => fromToml(text), { instanceOf: ConfigError }, text);
  t.is(err?.key, key, text);
}

test('quantities: whole numbers with Kubernetes suffixes; signs, fractions, unknown suffixes and overflow are refused', (t) => {
  t.is(parseWholeQuantity('1048576'), 1048576);
  t.is(parseWholeQuantity('1Mi'), 1048576);
  t.is(parseWholeQuantity('10M'), 10_000_000);
  t.is(parseWholeQuantity('500k'), 500_000);
  t.is(parseWholeQuantity('2Gi'), 2 ** 31);
  for (const bad of ['', '10Xi', '-1', '1.5Mi', '1e6', ' 1', 'Mi', '1K', '99999999999999999999', '8Ei', '16384Pi']) t.is(parseWholeQuantity(bad), undefined, bad);
});

test('pids_limit: 4096 by default, 0 for none, refused outside 0..4194304 naming runtime.pids_limit', (t) => {
  t.is(defaultConfig().runtime.pidsLimit, 4096);
  t.is(fromToml('[runtime]\npids_limit = 0').runtime.pidsLimit, 0);
  t.is(fromToml('[runtime]\npids_limit = 100').runtime.pidsLimit, 100);
  for (const bad of ['-1', '4194305', '"100"', '1.5', '99999999999']) configError(t, `[runtime]\npids_limit = ${bad}`, 'runtime.pids_limit');
});

test('blockio classes: per-device throttles as integers or quantities, a weight, printed and read back unchanged', (t) => {
  const config = fromToml(`
[blockio.classes.slow]
devices = [{ path = "/dev/vda", write_bps = "1Mi", read_iops = 200 }]
[[blockio.classes.fair.devices]]
path = "/dev/sdb"
weight = 500
read_bps = 1048576
write_iops = "1k"
`);
  t.deepEqual(config.blockio.classes, {
    slow: { devices: [{ path: '/dev/vda', writeBps: 1048576, readIops: 200 }] },
    fair: { devices: [{ path: '/dev/sdb', weight: 500, readBps: 1048576, writeIops: 1000 }] },
  });
  t.deepEqual(fromToml(renderConfig(config)), config);
  t.deepEqual(defaultConfig().blockio.classes, {});
});

test('blockio classes: malformed quantities, bad weights, unknown keys and empty classes are refused naming the key', (t) => {
  const dev = (extra: string) => `[blockio.classes.c]\ndevices = [{ path = "/dev/vda", ${extra} }]`;
  configError(t, dev('write_bps = "10Xi"'), 'blockio.classes.c.devices[0].write_bps');
  configError(t, dev('read_bps = -1'), 'blockio.classes.c.devices[0].read_bps');
  configError(t, dev('read_bps = 0'), 'blockio.classes.c.devices[0].read_bps');
  configError(t, dev('write_iops = "99999Ei"'), 'blockio.classes.c.devices[0].write_iops');
  // An integer beyond 2^53 is already refused by the TOML parser (with its line and column); as a quantity it is ours.
  configError(t, dev('weight = 0'), 'blockio.classes.c.devices[0].weight');
  configError(t, dev('weight = 1001'), 'blockio.classes.c.devices[0].weight');
  configError(t, dev('wbps = 1'), 'blockio.classes.c.devices[0].wbps');
  configError(t, '[blockio.classes.c]\ndevices = [{ path = "/dev/vda" }]', 'blockio.classes.c.devices[0]');
  configError(t, '[blockio.classes.c]\ndevices = [{ path = "vda", weight = 1 }]', 'blockio.classes.c.devices[0].path');
  configError(t, '[blockio.classes.c]\ndevices = []', 'blockio.classes.c.devices');
  configError(t, '[blockio.classes."bad name"]\ndevices = [{ path = "/dev/vda", weight = 1 }]', 'blockio.classes.bad name');
  configError(t, '[blockio]\nclass = {}', 'blockio.class');
});

const probe: ProbeDevice = async (p) => {
  if (p === '/dev/vda') return { ok: true, major: 254, minor: 0 };
  if (p === '/dev/disk/by-id/vda') return { ok: true, major: 254, minor: 0 };
  if (p === '/dev/sdb') return { ok: true, major: 8, minor: 16, weightMechanism: 'bfq' };
  return { ok: false, reason: `cannot stat ${p}: ENOENT` };
};
const classes = (text: string) => fromToml(text).blockio;

test('blockio devices resolve to major:minor; a missing device, a duplicate or a weight without BFQ/iocost stop berth naming the key', async (t) => {
  t.deepEqual(
    await resolveBlockioClasses(classes('[blockio.classes.c]\ndevices = [{ path = "/dev/vda", write_bps = 1 }, { path = "/dev/sdb", weight = 10 }]'), probe),
    { c: [{ major: 254, minor: 0, writeBps: 1 }, { major: 8, minor: 16, weight: 10, weightMechanism: 'bfq' }] },
  );
  const refused = async (text: string, key: string, says: RegExp) => {
    const err = await t.throwsAsync(resolveBlockioClasses(classes(text), probe), { instanceOf: ConfigError });
    t.is(err?.key, key);
    t.regex(err?.message ?? '', says);
  };
  await refused('[blockio.classes.c]\ndevices = [{ path = "/dev/nope", write_bps = 1 }]', 'blockio.classes.c.devices[0].path', /ENOENT/);
  await refused('[blockio.classes.c]\ndevices = [{ path = "/dev/vda", weight = 100 }]', 'blockio.classes.c.devices[0].weight', /no I\/O weight/);
  await refused('[blockio.classes.c]\ndevices = [{ path = "/dev/vda", write_bps = 1 }, { path = "/dev/disk/by-id/vda", read_bps = 1 }]', 'blockio.classes.c.devices[1].path', /254:0.*devices\[0\]/);
});

const limits: Record<string, BlockioDeviceLimit[]> = { slow: [{ major: 7, minor: 3, writeBps: 1048576 }], fast: [{ major: 7, minor: 3, readIops: 9 }] };

test('blockio class: the container\'s CRI annotation, then the pod\'s per-container one, then the pod\'s (containerd\'s order)', (t) => {
  const pod = { 'blockio.resources.beta.kubernetes.io/pod': 'fast', 'blockio.resources.beta.kubernetes.io/container.db': 'slow' };
  t.is(selectBlockioClass('db', {}, pod)?.className, 'slow');
  t.is(selectBlockioClass('web', {}, pod)?.className, 'fast');
  t.is(selectBlockioClass('web', { 'io.kubernetes.cri.blockio-class': 'slow' }, pod)?.className, 'slow');
  t.is(selectBlockioClass('web', {}, {}), undefined);
  t.deepEqual(blockioLimitsFor(selectBlockioClass('db', {}, pod), limits), limits.slow);
  t.is(blockioLimitsFor(undefined, limits), undefined);
});

test('blockio class: an unknown class is INVALID_ARGUMENT naming the annotation, at the pod and at the container', (t) => {
  const err = t.throws(() => blockioLimitsFor(selectBlockioClass('db', {}, { 'blockio.resources.beta.kubernetes.io/container.db': 'gold' }), limits), { instanceOf: BerthError });
  t.is(err?.kind, 'invalid_argument');
  t.regex(err?.message ?? '', /^sandbox_config\.annotations\["blockio\.resources\.beta\.kubernetes\.io\/container\.db"\]: unknown block I\/O class "gold".*slow, fast/);
  const atPod = t.throws(() => checkPodBlockioClasses({ 'blockio.resources.beta.kubernetes.io/pod': 'gold', other: 'x' }, limits), { instanceOf: BerthError });
  t.regex(atPod?.message ?? '', /^config\.annotations\["blockio\.resources\.beta\.kubernetes\.io\/pod"\]/);
  t.notThrows(() => checkPodBlockioClasses({ 'blockio.resources.beta.kubernetes.io/pod': 'slow', other: 'gold' }, limits));
  t.regex(t.throws(() => blockioLimitsFor({ field: 'f', className: 'x' }, {}))?.message ?? '', /defines no \[blockio\] classes/);
  t.throws(() => blockioLimitsFor({ field: 'f', className: 'constructor' }, limits), { instanceOf: BerthError });
});

test('pids annotation: lowers the configured limit, never raises it, and refuses malformed values naming the annotation', (t) => {
  const at = (value: string) => ({ 'berth.dev/pids-limit': value });
  t.is(podPidsLimit(4096, {}, 'config.annotations'), 4096);
  t.is(podPidsLimit(0, {}, 'config.annotations'), 0);
  t.is(podPidsLimit(4096, at('64'), 'config.annotations'), 64);
  t.is(podPidsLimit(4096, at('4096'), 'config.annotations'), 4096);
  t.is(podPidsLimit(0, at('100000'), 'config.annotations'), 100000);
  for (const [limit, bad] of [[4096, '4097'], [4096, '0'], [4096, '-1'], [4096, '10Xi'], [4096, '1.5'], [4096, ''], [0, '4194305'], [0, '99999999999999999999']] as const) {
    const err = t.throws(() => podPidsLimit(limit, at(bad), 'sandbox_config.annotations'), { instanceOf: BerthError }, bad);
    t.is(err?.kind, 'invalid_argument');
    t.true(err?.message.startsWith('sandbox_config.annotations["berth.dev/pids-limit"]: '), err?.message);
  }
});

const v1: Hierarchy = { version: 1, mountPoint: '/cg/blkio', controllers: ['blkio'] };
const pidsV1: Hierarchy = { version: 1, mountPoint: '/cg/pids', controllers: ['pids'] };
const v1Layout: CgroupLayout = { mode: 'v1', hierarchies: [v1, pidsV1], controllers: { blkio: v1, pids: pidsV1 }, unified: null };
const v2: Hierarchy = { version: 2, mountPoint: '/cg2', controllers: ['io', 'pids'] };
const v2Layout: CgroupLayout = { mode: 'v2', hierarchies: [v2], controllers: { io: v2, pids: v2 }, unified: v2 };

test('cgroup plan v1: one blkio.throttle line per device and file, weights in blkio.bfq.weight_device, pids.max', (t) => {
  const plan = planResources(v1Layout, '/pod/c', {
    pidsLimit: 64,
    blockio: [
      { major: 7, minor: 3, writeBps: 1048576, readBps: 2, readIops: 3, writeIops: 4 },
      { major: 8, minor: 16, weight: 500, weightMechanism: 'bfq' },
    ],
  });
  t.deepEqual(plan.missing, []);
  t.deepEqual(
    plan.steps.map((s) => (s.kind === 'write' ? [s.file, s.value] : s.kind)),
    [
      ['/cg/pids/pod/c/pids.max', '64'],
      ['/cg/blkio/pod/c/blkio.throttle.read_bps_device', '7:3 2'],
      ['/cg/blkio/pod/c/blkio.throttle.write_bps_device', '7:3 1048576'],
      ['/cg/blkio/pod/c/blkio.throttle.read_iops_device', '7:3 3'],
      ['/cg/blkio/pod/c/blkio.throttle.write_iops_device', '7:3 4'],
      ['/cg/blkio/pod/c/blkio.bfq.weight_device', '8:16 500'],
    ],
  );
  // A kernel without the file refuses the request by name rather than leaving the container unlimited.
  t.true(plan.steps.every((s) => s.kind === 'write' && (s.file.endsWith('pids.max') || typeof s.ifAbsent === 'object')));
});

test('cgroup plan v2: one io.max line per device, weights in io.bfq.weight or io.weight (iocost), pids.max', (t) => {
  const plan = planResources(v2Layout, '/pod/c', {
    pidsLimit: 0,
    blockio: [
      { major: 7, minor: 3, writeBps: 1048576, readIops: 3 },
      { major: 8, minor: 16, weight: 500, weightMechanism: 'bfq' },
      { major: 254, minor: 0, weight: 50, weightMechanism: 'iocost', readBps: 9 },
    ],
  });
  t.deepEqual(
    plan.steps.map((s) => (s.kind === 'write' ? [s.file, s.value] : s.kind)),
    [
      ['/cg2/pod/c/pids.max', 'max'],
      ['/cg2/pod/c/io.max', '7:3 wbps=1048576 riops=3'],
      ['/cg2/pod/c/io.bfq.weight', '8:16 500'],
      ['/cg2/pod/c/io.max', '254:0 rbps=9'],
      ['/cg2/pod/c/io.weight', '254:0 50'],
    ],
  );
});

test('cgroup plan: block I/O limits on a host with neither blkio nor io are reported missing, not silently dropped', (t) => {
  const layout: CgroupLayout = { mode: 'v1', hierarchies: [pidsV1], controllers: { pids: pidsV1 }, unified: null };
  const plan = planResources(layout, '/pod/c', { blockio: [{ major: 7, minor: 3, writeBps: 1 }] });
  t.deepEqual(plan.steps, []);
  t.deepEqual(plan.missing, ['blkio', 'io']);
});
