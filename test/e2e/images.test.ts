import test from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { standardFixtures, StandardFixtures } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { lgetxattr } from '../../src/kernel/libc.js';

// ImageService end to end: a real berth, a real docker-registry on loopback, images our fixtures pushed.

let registry: Registry;
let fx: StandardFixtures;

test.before(async () => {
  registry = await startRegistry();
  fx = await standardFixtures(registry, { big: false });
});
test.after.always(async () => {
  await registry?.stop();
});

const configFor = (host: string) => `[registry]\ninsecure = ["${host}"]\n`;

async function withBerth(t: { teardown(fn: () => Promise<void>): void }, config = configFor(registry.host)): Promise<BerthProcess> {
  const berth = await startBerth({ config });
  t.teardown(() => berth.cleanup());
  return berth;
}

const layerDir = (berth: BerthProcess, diffId: string) => path.join(berth.root, 'images', 'layers', diffId.slice(7), 'fs');

test('pull by tag records id, tags, digests and size, and ImageStatus reports them', async (t) => {
  const berth = await withBerth(t);
  const img = fx.multilayer;
  const pulled = await berth.images.PullImage({ image: { image: img.ref } });
  t.is(pulled.image_ref, img.imageId);
  const status = await berth.images.ImageStatus({ image: { image: img.ref }, verbose: true });
  t.is(status.image?.id, img.imageId);
  t.deepEqual(status.image?.repo_tags, [img.ref]);
  t.deepEqual(status.image?.repo_digests, [`${registry.host}/${img.name}@${img.manifestDigest}`]);
  t.is(Number(status.image?.size), img.configSize + img.layersSize);
  const info = JSON.parse(status.info.info);
  t.deepEqual(info.imageSpec.rootfs.diff_ids, img.layers.map((l) => l.diffId));
  // Status by id and by digest find the same image.
  t.is((await berth.images.ImageStatus({ image: { image: img.imageId } })).image?.id, img.imageId);
  t.is((await berth.images.ImageStatus({ image: { image: img.digestRef } })).image?.id, img.imageId);
});

test('layers unpack into overlay lowerdirs: whiteouts, opaque dirs, xattrs, hardlinks and devices', async (t) => {
  const berth = await withBerth(t);
  const img = fx.multilayer;
  await berth.images.PullImage({ image: { image: img.ref } });
  const [lower, upper] = img.layers.map((l) => layerDir(berth, l.diffId));
  const whiteout = await fs.lstat(path.join(upper, 'data/gone.txt'));
  t.true(whiteout.isCharacterDevice());
  t.is(whiteout.rdev, 0);
  await t.throwsAsync(fs.lstat(path.join(upper, 'data/.wh.gone.txt')));
  t.is(lgetxattr(path.join(upper, 'opq'), 'trusted.overlay.opaque')?.toString(), 'y');
  t.is(lgetxattr(path.join(upper, 'keep/xattr.txt'), 'user.berth')?.toString(), 'yes');
  const [a, b] = await Promise.all([fs.stat(path.join(upper, 'keep/hard.txt')), fs.stat(path.join(upper, 'keep/a2.txt'))]);
  t.is(a.ino, b.ino);
  const dev = await fs.lstat(path.join(upper, 'dev/berthnull'));
  t.true(dev.isCharacterDevice());
  t.is(dev.rdev, (1 << 8) | 3);
  const owned = await fs.stat(path.join(lower, 'keep/a.txt'));
  t.is(owned.uid, 1000);
  t.is(owned.gid, 2000);
  t.is(owned.mode & 0o7777, 0o640);

  // The kernel agrees: an overlay of the two layers hides the deleted file and the opaque dir's old content.
  const merged = path.join(berth.dir, 'merged');
  await fs.mkdir(merged);
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${upper}:${lower}`, merged]);
  try {
    t.false(await exists(path.join(merged, 'data/gone.txt')));
    t.true(await exists(path.join(merged, 'data/stays.txt')));
    t.false(await exists(path.join(merged, 'opq/old.txt')));
    t.true(await exists(path.join(merged, 'opq/new.txt')));
    t.true(await exists(path.join(merged, 'bin/busybox')));
  } finally {
    execFileSync('umount', [merged]);
  }
});

async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(() => true, () => false);
}

test('pull by digest records the digest and no tag', async (t) => {
  const berth = await withBerth(t);
  const img = fx.busybox;
  const pulled = await berth.images.PullImage({ image: { image: img.digestRef } });
  t.is(pulled.image_ref, img.imageId);
  const status = await berth.images.ImageStatus({ image: { image: img.digestRef } });
  t.deepEqual(status.image?.repo_tags, []);
  t.deepEqual(status.image?.repo_digests, [img.digestRef]);
});

test('a zstd layer is pulled and unpacked', async (t) => {
  const berth = await withBerth(t);
  await berth.images.PullImage({ image: { image: fx.zstd.ref } });
  const top = fx.zstd.layers[fx.zstd.layers.length - 1];
  t.true(await exists(path.join(layerDir(berth, top.diffId), 'zstd.txt')));
});

for (const kind of ['multiarch', 'ociindex'] as const) {
  test(`${kind}: the linux/amd64 image is chosen over an arm64 decoy listed first`, async (t) => {
    const berth = await withBerth(t);
    const set = fx[kind];
    const ref = 'list' in set ? set.list.ref : set.index.ref;
    const pulled = await berth.images.PullImage({ image: { image: ref } });
    t.is(pulled.image_ref, set.amd64.imageId);
    const top = set.amd64.layers[set.amd64.layers.length - 1];
    t.is((await fs.readFile(path.join(layerDir(berth, top.diffId), 'arch.txt'), 'utf8')).trim(), 'amd64');
  });
}

test('the image user becomes uid or username', async (t) => {
  const berth = await withBerth(t);
  await berth.images.PullImage({ image: { image: fx.nonroot.ref } });
  await berth.images.PullImage({ image: { image: fx.nonrootNamed.ref } });
  await berth.images.PullImage({ image: { image: fx.busybox.ref } });
  const numeric = await berth.images.ImageStatus({ image: { image: fx.nonroot.ref } });
  t.is(numeric.image?.uid?.value, '1000');
  t.is(numeric.image?.username, '');
  const named = await berth.images.ImageStatus({ image: { image: fx.nonrootNamed.ref } });
  t.is(named.image?.uid, null);
  t.is(named.image?.username, 'berthuser');
});

test('list with a filter, remove by tag, id and digest; shared layers stay while another image uses them', async (t) => {
  const berth = await withBerth(t);
  await berth.images.PullImage({ image: { image: fx.sharedA.ref } });
  await berth.images.PullImage({ image: { image: fx.sharedB.ref } });
  await berth.images.PullImage({ image: { image: fx.busybox.ref } });
  t.is((await berth.images.ListImages({})).images.length, 3);
  const filtered = await berth.images.ListImages({ filter: { image: { image: fx.sharedA.ref } } });
  t.deepEqual(filtered.images.map((i) => i.id), [fx.sharedA.imageId]);

  const onlyA = fx.sharedA.layers[2].diffId;
  const shared = fx.sharedLayer.diffId;
  await berth.images.RemoveImage({ image: { image: fx.sharedA.ref } });
  t.false(await exists(layerDir(berth, onlyA)));
  t.true(await exists(layerDir(berth, shared)));
  await berth.images.RemoveImage({ image: { image: fx.sharedB.imageId } });
  t.false(await exists(layerDir(berth, shared)));
  t.true(await exists(layerDir(berth, fx.busybox.layers[0].diffId)), 'busybox image still holds the base layer');
  await berth.images.RemoveImage({ image: { image: `${registry.host}/${fx.busybox.name}@${fx.busybox.manifestDigest}` } });
  t.deepEqual((await berth.images.ListImages({})).images, []);
  t.deepEqual((await fs.readdir(path.join(berth.root, 'images', 'layers'))).filter((n) => !n.startsWith('.')), []);
  // Removing what is not there is not an error.
  await berth.images.RemoveImage({ image: { image: fx.busybox.ref } });
});

test('ImageFsInfo reports bytes, inodes and the store mountpoint', async (t) => {
  const berth = await withBerth(t);
  const empty = await berth.images.ImageFsInfo({});
  await berth.images.PullImage({ image: { image: fx.sharedA.ref } });
  const full = await berth.images.ImageFsInfo({});
  const fsUsage = full.image_filesystems[0];
  t.true(Number(fsUsage.used_bytes?.value) > 8 * 1024 * 1024);
  t.true(Number(fsUsage.inodes_used?.value) > Number(empty.image_filesystems[0].inodes_used?.value));
  t.is(fsUsage.fs_id?.mountpoint, path.join(berth.root, 'images', 'layers'));
  t.true(BigInt(fsUsage.timestamp) > 0n);
});

test('images survive a berth restart', async (t) => {
  let berth = await startBerth({ config: configFor(registry.host) });
  t.teardown(() => berth.cleanup());
  await berth.images.PullImage({ image: { image: fx.multilayer.ref } });
  berth = await berth.restart();
  const status = await berth.images.ImageStatus({ image: { image: fx.multilayer.ref } });
  t.is(status.image?.id, fx.multilayer.imageId);
  t.deepEqual((await berth.images.ListImages({})).images.map((i) => i.id), [fx.multilayer.imageId]);
  t.true(await exists(layerDir(berth, fx.multilayer.layers[1].diffId)));
});

const code = async (p: Promise<unknown>): Promise<grpc.ServiceError> => {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
};

test('bad input: empty, malformed, unknown tag, unknown registry', async (t) => {
  const berth = await withBerth(t);
  const empty = await code(berth.images.PullImage({ image: { image: '' } }));
  t.is(empty.code, grpc.status.INVALID_ARGUMENT);
  t.regex(empty.details, /image\.image/);
  const malformed = await code(berth.images.PullImage({ image: { image: 'Bad/Name:tag' } }));
  t.is(malformed.code, grpc.status.INVALID_ARGUMENT);
  t.true(malformed.details.includes('Bad/Name:tag'));
  const unknownTag = `${registry.host}/berth/busybox:nope`;
  const missing = await code(berth.images.PullImage({ image: { image: unknownTag } }));
  t.is(missing.code, grpc.status.NOT_FOUND);
  t.true(missing.details.includes(unknownTag));
  const nowhere = '127.0.0.1:1/berth/busybox:v1';
  const unreachable = await code(berth.images.PullImage({ image: { image: nowhere } }));
  t.is(unreachable.code, grpc.status.UNAVAILABLE);
  t.true(unreachable.details.includes(nowhere));
  t.deepEqual((await berth.images.ListImages({})).images, []);
  const statusEmpty = await code(berth.images.ImageStatus({ image: { image: '' } }));
  t.is(statusEmpty.code, grpc.status.INVALID_ARGUMENT);
  t.is((await berth.images.ImageStatus({ image: { image: unknownTag } })).image, null);
});
