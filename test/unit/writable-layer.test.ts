import test from 'ava';
import { parse } from 'smol-toml';
import { validateConfig } from '../../src/config/schema.js';
import { checkWritableLayerAnnotations, writableLayerLimit } from '../../src/container/writable-layer-limit.js';
import { loopConfig } from '../../src/kernel/loop.js';
import { applyQuotaPlan, projectIdOf, projectQuotaFs, releaseQuotaPlan } from '../../src/kernel/project-quota.js';
import { imageBytes, mkfsArgs, upperDirOf } from '../../src/kernel/writable-layer.js';

// The writable-layer limit: where it comes from (config, pod annotations), which mechanism enforces it, and the
// plans each mechanism runs. No root needed; the loop-backed path runs for real in test/e2e/writable-layer.test.ts.

const MiB = 2 ** 20;
const POD = 'writable-layer.berth.io/pod';
const C = 'writable-layer.berth.io/container.app';

test('[runtime] writable_layer_max_bytes: 0 by default; 0 or 4 MiB..2^50; anything else stops berth naming the key', (t) => {
  const fromToml = (text: string) => validateConfig(parse(text) as Record<string, unknown>);
  t.is(fromToml('').runtime.writableLayerMaxBytes, 0);
  t.is(fromToml('[runtime]\nwritable_layer_max_bytes = 16777216\n').runtime.writableLayerMaxBytes, 16 * MiB);
  for (const bad of ['1000', '-1', '"16Mi"', '1.5', String(2 ** 51)]) {
    t.throws(() => fromToml(`[runtime]\nwritable_layer_max_bytes = ${bad}\n`), { message: /runtime\.writable_layer_max_bytes/ }, bad);
  }
});

test('the per-container annotation wins over the pod one, which wins over the node default', (t) => {
  t.is(writableLayerLimit({}, 'app', 0), 0);
  t.is(writableLayerLimit({}, 'app', 32 * MiB), 32 * MiB);
  t.is(writableLayerLimit({ [POD]: '16Mi' }, 'app', 0), 16 * MiB);
  t.is(writableLayerLimit({ [POD]: '16Mi', [C]: '8Mi' }, 'app', 0), 8 * MiB);
  t.is(writableLayerLimit({ [POD]: '16Mi', [C]: '8Mi' }, 'other', 0), 16 * MiB);
  t.is(writableLayerLimit({ [C]: '20M' }, 'app', 32 * MiB), 20e6);
  t.is(writableLayerLimit({ [C]: '0' }, 'app', 0), 0);
});

test('a bad writable-layer annotation is INVALID_ARGUMENT naming it; a pod cannot lift the node limit', (t) => {
  for (const [annotations, node, why] of [
    [{ [C]: '10Xi' }, 0, /not a quantity/],
    [{ [C]: '-16Mi' }, 0, /negative/],
    [{ [POD]: '99999999999E' }, 0, /too large/],
    [{ [POD]: '1Mi' }, 0, /below the smallest/],
    [{ [C]: '2Pi' }, 0, /above 1125899906842624 bytes/],
    [{ [C]: '64Mi' }, 32 * MiB, /above this node's limit/],
    [{ [C]: '0' }, 32 * MiB, /0 \(no limit\)/],
  ] as const) {
    const err = t.throws(() => writableLayerLimit(annotations as Record<string, string>, 'app', node));
    t.is((err as { kind?: string }).kind, 'invalid_argument');
    t.regex(err!.message, /^sandbox_config\.annotations\["writable-layer\.berth\.io\/(pod|container\.app)"\]/);
    t.regex(err!.message, why);
  }
});

test('project quotas are chosen only where the storage enforces them', (t) => {
  t.is(projectQuotaFs(0x58465342, ['rw', 'prjquota']), 'xfs');
  t.is(projectQuotaFs(0x58465342, ['rw', 'pquota']), 'xfs');
  t.is(projectQuotaFs(0x58465342, ['rw', 'usrquota']), undefined);
  t.is(projectQuotaFs(0xef53, ['rw', 'prjquota']), 'ext4');
  t.is(projectQuotaFs(0xef53, ['rw', 'errors=remount-ro']), undefined);
  t.is(projectQuotaFs(0x01021994 /* tmpfs */, ['rw', 'prjquota']), undefined);
});

test('the project-quota plans: xfs_quota on xfs, chattr + setquota on ext4; release lifts the limit', (t) => {
  const id = projectIdOf('abcdef' + '0'.repeat(58));
  t.is(id, 0x1000000 + 0xabcdef);
  t.deepEqual(applyQuotaPlan('xfs', '/var/lib', '/var/lib/berth/containers/x/upper', id, 16 * MiB), [
    { cmd: 'xfs_quota', args: ['-x', '-c', `project -s -p /var/lib/berth/containers/x/upper ${id}`, '-c', `limit -p bhard=${16 * MiB} ${id}`, '/var/lib'] },
  ]);
  t.deepEqual(applyQuotaPlan('ext4', '/', '/var/lib/berth/containers/x/upper', id, 16 * MiB + 1), [
    { cmd: 'chattr', args: ['-p', String(id), '+P', '/var/lib/berth/containers/x/upper'] },
    { cmd: 'setquota', args: ['-P', String(id), '0', String(16 * 1024 + 1), '0', '0', '/'] },
  ]);
  t.deepEqual(releaseQuotaPlan('xfs', '/var/lib', id), [{ cmd: 'xfs_quota', args: ['-x', '-c', `limit -p bhard=0 ${id}`, '/var/lib'] }]);
  t.deepEqual(releaseQuotaPlan('ext4', '/', id), [{ cmd: 'setquota', args: ['-P', String(id), '0', '0', '0', '0', '/'] }]);
});

test('the loop-backed plan: whole 4 KiB blocks, an ext4 with all of it usable, a loop device that clears itself', (t) => {
  t.is(imageBytes(16 * MiB), 16 * MiB);
  t.is(imageBytes(20e6), 20000768);
  const args = mkfsArgs('/x.img');
  t.is(args.at(-1), '/x.img');
  t.true(args.includes('^has_journal,^resize_inode'));
  t.deepEqual(args.slice(args.indexOf('-m'), args.indexOf('-m') + 2), ['-m', '0']);
  const cfg = loopConfig(7);
  t.is(cfg.length, 304);
  t.is(cfg.readUInt32LE(0), 7);
  t.is(cfg.readUInt32LE(60), 4, 'LO_FLAGS_AUTOCLEAR in loop_config.info.lo_flags');
  t.is(upperDirOf({ bundle: '/b' }), '/b/upper');
  t.is(upperDirOf({ bundle: '/b', writableLayer: { mechanism: 'loop', bytes: 1, image: '/i', mountPoint: '/b/layer' } }), '/b/layer/upper');
});

test("RunPodSandbox's check covers the pod's every writable-layer annotation, named as the pod config's field", (t) => {
  t.notThrows(() => checkWritableLayerAnnotations({ [POD]: '16Mi', [C]: '8Mi', other: 'x' }, 0));
  const err = t.throws(() => checkWritableLayerAnnotations({ [POD]: '16Mi', 'writable-layer.berth.io/container.side': '1Mi' }, 0));
  t.is((err as { kind?: string }).kind, 'invalid_argument');
  t.regex(err!.message, /^config\.annotations\["writable-layer\.berth\.io\/container\.side"\] "1Mi" is below/);
  t.throws(() => checkWritableLayerAnnotations({ [POD]: '64Mi' }, 32 * MiB), { message: /above this node's limit/ });
});

test("a pod author's long annotation text or key is quoted and cut in the message, never repeated whole", (t) => {
  const longZeros = `${'0'.repeat(100_000)}1Mi`;
  const err = t.throws(() => checkWritableLayerAnnotations({ [POD]: longZeros }, 0));
  t.regex(err!.message, /^config\.annotations\["writable-layer\.berth\.io\/pod"\] "0{64}…" is below/);
  t.true(err!.message.length < 400, `${err!.message.length} characters`);
  const longKey = `writable-layer.berth.io/container.${'c'.repeat(10_000)}`;
  const keyErr = t.throws(() => checkWritableLayerAnnotations({ [longKey]: '1Mi' }, 0));
  t.true(keyErr!.message.length < 400, `${keyErr!.message.length} characters`);
  t.regex(keyErr!.message, /^config\.annotations\["writable-layer\.berth\.io\/container\.c+…"\] "1Mi" is below/);
});
