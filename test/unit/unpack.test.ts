import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { BerthError } from '../../src/errors.js';
import { lgetxattr, lsetxattr as setxattr, major, minor } from '../../src/kernel/libc.js';
import type { Logger } from '../../src/log.js';
import { detectCompression } from '../../src/image/layer/compression.js';
import { unpackLayer } from '../../src/image/layer/unpack.js';
import { writeFileAtomic } from '../../src/store/atomic.js';
import { ImageStore } from '../../src/image/store.js';
import { rawTar, streamOf, type RawTarEntry } from '../helpers/raw-tar.js';

// Unpacking sets owners, device nodes and trusted.* xattrs: only root can do that.
const rootTest = process.getuid?.() === 0 ? test : test.skip;

function zstd(buf: Buffer): Buffer {
  const r = spawnSync('zstd', ['-c', '-q'], { input: buf, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr}`);
  return r.stdout;
}

/** A logger that keeps what it is told, for assertions and a quiet test output. */
function captureLog(): Logger & { lines: Array<{ level: string; msg: string; fields?: Record<string, unknown> }> } {
  const lines: Array<{ level: string; msg: string; fields?: Record<string, unknown> }> = [];
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => void lines.push({ level, msg, fields });
  const log = { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => log };
  return log;
}

const sha256 = (buf: Uint8Array) => 'sha256:' + createHash('sha256').update(buf).digest('hex');

/** A temp dir holding the unpack destination `<box>/dest` and a sibling `<box>/outside`. */
async function box(t: ExecutionContext): Promise<{ dir: string; dest: string; outside: string }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-unpack-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const outside = path.join(dir, 'outside');
  await fs.mkdir(outside);
  return { dir, dest: path.join(dir, 'dest'), outside };
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Everything we preserve about a tree, for comparing unpacks. */
async function snapshot(root: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  async function walk(rel: string): Promise<void> {
    const abs = rel ? path.join(root, rel) : root;
    for (const name of (await fs.readdir(abs)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = path.join(root, r);
      const st = await fs.lstat(p);
      const info: Record<string, unknown> = {
        mode: st.mode.toString(8),
        uid: st.uid,
        gid: st.gid,
        mtime: st.mtimeMs,
        nlink: st.nlink,
      };
      if (st.isFile()) info.sha = sha256(await fs.readFile(p));
      if (st.isSymbolicLink()) info.target = await fs.readlink(p);
      if (st.isCharacterDevice() || st.isBlockDevice()) info.rdev = st.rdev;
      info.opaque = lgetxattr(p, 'trusted.overlay.opaque')?.toString();
      out[r] = info;
      if (st.isDirectory()) await walk(r);
    }
  }
  await walk('');
  return out;
}

async function rejectsEscape(t: ExecutionContext, entries: RawTarEntry[]): Promise<void> {
  const { dir, dest, outside } = await box(t);
  const layer = await rawTar(entries);
  const err = await t.throwsAsync(unpackLayer(streamOf(layer), dest));
  t.true(err instanceof BerthError);
  t.is((err as BerthError).kind, 'invalid_argument');
  t.regex(err!.message, /escapes the layer root/);
  t.false(await exists(dest), 'dest is removed');
  t.deepEqual((await fs.readdir(dir)).sort(), ['outside'], 'nothing appears next to dest');
  t.deepEqual(await fs.readdir(outside), [], 'nothing is written through the symlink');
  t.false(await exists('/tmp/x/file'));
}

test('compression is sniffed from the magic bytes', (t) => {
  t.is(detectCompression(Buffer.from([0x1f, 0x8b, 8, 0])), 'gzip');
  t.is(detectCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])), 'zstd');
  t.is(detectCompression(Buffer.from('etc/')), 'none');
  t.is(detectCompression(Buffer.alloc(0)), 'none');
});

rootTest('a .wh. whiteout file becomes a 0:0 character device and no .wh. file is written', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/.wh.passwd', body: '' },
    { name: '.wh.top', body: '' },
  ]);
  await unpackLayer(streamOf(layer), dest);
  for (const p of ['etc/passwd', 'top']) {
    const st = await fs.lstat(path.join(dest, p));
    t.true(st.isCharacterDevice(), p);
    t.is(st.rdev, 0, p);
  }
  t.false(await exists(path.join(dest, 'etc/.wh.passwd')));
  t.false(await exists(path.join(dest, '.wh.top')));
});

rootTest('an opaque marker sets trusted.overlay.opaque=y on its directory and is not written', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'var/', type: 'directory', mode: 0o755 },
    { name: 'var/lib/', type: 'directory', mode: 0o755 },
    { name: 'var/lib/.wh..wh..opq', body: '' },
    { name: 'var/lib/keep', body: 'k' },
  ]);
  await unpackLayer(streamOf(layer), dest);
  t.is(lgetxattr(path.join(dest, 'var/lib'), 'trusted.overlay.opaque')?.toString(), 'y');
  t.is(lgetxattr(path.join(dest, 'var'), 'trusted.overlay.opaque'), undefined);
  t.deepEqual(await fs.readdir(path.join(dest, 'var/lib')), ['keep']);
});

rootTest('ownership, modes including setuid/setgid/sticky, and mtimes are kept', async (t) => {
  const { dest } = await box(t);
  const dirTime = new Date('2001-02-03T04:05:06Z');
  const fileTime = new Date('2010-01-01T00:00:00Z');
  const layer = await rawTar([
    { name: 'usr/', type: 'directory', mode: 0o750, uid: 12, gid: 34, mtime: dirTime },
    { name: 'usr/bin/', type: 'directory', mode: 0o2775, uid: 0, gid: 50, mtime: dirTime },
    { name: 'usr/bin/su', body: 'su', mode: 0o4755, uid: 0, gid: 0, mtime: fileTime },
    { name: 'usr/bin/wall', body: 'wall', mode: 0o2755, uid: 1000, gid: 5, mtime: fileTime },
    { name: 'tmp/', type: 'directory', mode: 0o1777, mtime: dirTime },
    { name: 'usr/bin/sh', type: 'symlink', linkname: 'su', uid: 7, gid: 8, mtime: fileTime },
    // Ids too big for the octal header fields travel in PAX records.
    { name: 'usr/bin/bigid', body: 'b', mode: 0o644, uid: 0, gid: 0, pax: { uid: '3000000', gid: '4000000' } },
    // Created after usr/bin's entry, which must still end up with its own mtime.
    { name: 'usr/bin/late', body: 'x', mode: 0o600, uid: 65534, gid: 65534, mtime: fileTime },
  ]);
  await unpackLayer(streamOf(layer), dest);
  const st = (p: string) => fs.lstat(path.join(dest, p));
  const usr = await st('usr');
  t.is(usr.mode & 0o7777, 0o750);
  t.deepEqual([usr.uid, usr.gid], [12, 34]);
  t.is(usr.mtimeMs, dirTime.getTime());
  const bin = await st('usr/bin');
  t.is(bin.mode & 0o7777, 0o2775);
  t.is(bin.gid, 50);
  t.is(bin.mtimeMs, dirTime.getTime(), 'directory mtime survives children created after it');
  const su = await st('usr/bin/su');
  t.is(su.mode & 0o7777, 0o4755, 'setuid survives chown');
  t.deepEqual([su.uid, su.gid], [0, 0]);
  t.is(su.mtimeMs, fileTime.getTime());
  const wall = await st('usr/bin/wall');
  t.is(wall.mode & 0o7777, 0o2755);
  t.deepEqual([wall.uid, wall.gid], [1000, 5]);
  t.is((await st('tmp')).mode & 0o7777, 0o1777);
  const sh = await st('usr/bin/sh');
  t.true(sh.isSymbolicLink());
  t.deepEqual([sh.uid, sh.gid], [7, 8]);
  t.is(sh.mtimeMs, fileTime.getTime());
  const bigid = await st('usr/bin/bigid');
  t.deepEqual([bigid.uid, bigid.gid], [3000000, 4000000]);
  const late = await st('usr/bin/late');
  t.deepEqual([late.mode & 0o7777, late.uid, late.gid], [0o600, 65534, 65534]);
  t.is(await fs.readFile(path.join(dest, 'usr/bin/su'), 'utf8'), 'su');
});

rootTest('xattrs from PAX headers are kept, binary values byte for byte', async (t) => {
  const { dest } = await box(t);
  const placeholder = 'BINARY-PLACEHOLDER'; // replaced by non-UTF-8 bytes of the same length below
  const layer = await rawTar([
    { name: 'dir/', type: 'directory', mode: 0o755, pax: { 'SCHILY.xattr.user.dir': 'on-a-dir' } },
    {
      name: 'dir/file',
      body: 'data',
      mode: 0o644,
      pax: { 'SCHILY.xattr.user.comment': 'héllo wörld', 'SCHILY.xattr.user.bin': placeholder },
    },
    { name: 'dir/plain', body: 'no xattrs' },
    { name: 'dir/.wh..wh..opq', body: '' },
    { name: 'dir/planted', body: 'x', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc' } },
  ]);
  const binary = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0xc3, 0x28, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0b, 0xa0, 0xa1]);
  t.is(binary.length, placeholder.length);
  const at = layer.indexOf(placeholder);
  t.true(at > 0);
  binary.copy(layer, at);
  // Tiny chunks: PAX records and headers straddle chunk boundaries.
  const log = captureLog();
  const { diffId } = await unpackLayer(streamOf(layer, 7), dest, { log });
  t.is(diffId, sha256(layer));
  const file = path.join(dest, 'dir/file');
  t.is(lgetxattr(file, 'user.comment')?.toString(), 'héllo wörld');
  t.deepEqual(lgetxattr(file, 'user.bin'), binary);
  t.is(lgetxattr(path.join(dest, 'dir'), 'user.dir')?.toString(), 'on-a-dir');
  t.is(lgetxattr(path.join(dest, 'dir/plain'), 'user.comment'), undefined);
  t.is(lgetxattr(path.join(dest, 'dir/planted'), 'trusted.overlay.redirect'), undefined, 'overlay xattrs are not taken from the layer');
  t.true(log.lines.some((l) => l.level === 'warn' && l.fields?.xattr === 'trusted.overlay.redirect'));
});

rootTest('a hardlink shares the inode of its target', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'bin/', type: 'directory', mode: 0o755 },
    { name: 'bin/busybox', body: 'bb', mode: 0o755 },
    { name: 'bin/ls', type: 'link', linkname: 'bin/busybox' },
    { name: './sbin/init', type: 'link', linkname: './bin/busybox' },
  ]);
  const res = await unpackLayer(streamOf(layer), dest);
  const a = await fs.stat(path.join(dest, 'bin/busybox'));
  const b = await fs.stat(path.join(dest, 'bin/ls'));
  const c = await fs.stat(path.join(dest, 'sbin/init'));
  t.is(a.ino, b.ino);
  t.is(a.ino, c.ino);
  t.is(a.nlink, 3);
  t.is(res.unpackedBytes, 2);
  t.is(res.inodes, 3, 'bin, bin/busybox and the implied sbin; hardlinks add no inode');
});

rootTest('symlinks are kept as is, dangling and absolute ones included', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'dangling', type: 'symlink', linkname: '/does/not/exist' },
    { name: 'up', type: 'symlink', linkname: '../../..' },
  ]);
  await unpackLayer(streamOf(layer), dest);
  t.is(await fs.readlink(path.join(dest, 'lib')), 'usr/lib');
  t.is(await fs.readlink(path.join(dest, 'dangling')), '/does/not/exist');
  t.is(await fs.readlink(path.join(dest, 'up')), '../../..');
});

rootTest('device nodes get the right major/minor, and fifos are created', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'dev/', type: 'directory', mode: 0o755 },
    { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
    { name: 'dev/sda1', type: 'block-device', devmajor: 8, devminor: 1, mode: 0o660, gid: 6 },
    { name: 'dev/big', type: 'character-device', devmajor: 300, devminor: 70000, mode: 0o600 },
    { name: 'run/initctl', type: 'fifo', mode: 0o600 },
  ]);
  await unpackLayer(streamOf(layer), dest);
  const nul = await fs.lstat(path.join(dest, 'dev/null'));
  t.true(nul.isCharacterDevice());
  t.deepEqual([major(nul.rdev), minor(nul.rdev)], [1, 3]);
  t.is(nul.mode & 0o7777, 0o666);
  const sda = await fs.lstat(path.join(dest, 'dev/sda1'));
  t.true(sda.isBlockDevice());
  t.deepEqual([major(sda.rdev), minor(sda.rdev), sda.gid], [8, 1, 6]);
  const big = await fs.lstat(path.join(dest, 'dev/big'));
  t.deepEqual([major(big.rdev), minor(big.rdev)], [300, 70000]);
  t.true((await fs.lstat(path.join(dest, 'run/initctl'))).isFIFO());
});

rootTest('gzip, zstd and plain tar unpack to the same tree with the diffId of the plain tar', async (t) => {
  const big = Buffer.alloc(3 * 1024 * 1024 + 123);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7919) % 251;
  const noise = randomBytes(1 << 20); // incompressible: the compressed streams span many chunks
  const layer = await rawTar([
    { name: 'a/', type: 'directory', mode: 0o755 },
    { name: 'a/big.bin', body: big, mode: 0o644, uid: 3, gid: 4 },
    { name: 'a/random.bin', body: noise, mode: 0o644 },
    { name: 'a/small', body: 'hello\n', mode: 0o600 },
    { name: 'a/link', type: 'symlink', linkname: 'small' },
    { name: 'a/hard', type: 'link', linkname: 'a/small' },
    { name: 'a/.wh.gone', body: '' },
    { name: 'a/x', type: 'character-device', devmajor: 4, devminor: 5 },
    { name: 'b/', type: 'directory' },
    { name: 'b/c/d', body: 'deep' }, // b/c is implied: its mtime is the unpack time, so it is made explicit below
    { name: 'b/c/', type: 'directory' },
  ]);
  const inputs: Record<string, [Buffer, number]> = {
    plain: [layer, 64 * 1024],
    gzip: [gzipSync(layer), 64 * 1024],
    zstd: [zstd(layer), 64 * 1024],
    'zstd in one chunk': [zstd(layer), Infinity],
    'gzip in 1000-byte chunks': [gzipSync(layer), 1000],
  };
  t.is(detectCompression(inputs.zstd[0]), 'zstd');
  const snapshots: Record<string, unknown> = {};
  for (const [kind, [data, chunk]] of Object.entries(inputs)) {
    const { dest } = await box(t);
    let progress = 0;
    const res = await unpackLayer(streamOf(data, Math.min(chunk, data.length)), dest, { onProgress: (n) => (progress = n) });
    t.is(res.diffId, sha256(layer), kind);
    t.is(res.unpackedBytes, big.length + noise.length + 6 + 4, kind);
    t.is(progress, data.length, `${kind}: the last progress report is the whole compressed size`);
    t.is(sha256(await fs.readFile(path.join(dest, 'a/big.bin'))), sha256(big), kind);
    snapshots[kind] = await snapshot(dest);
  }
  for (const kind of Object.keys(inputs)) t.deepEqual(snapshots[kind], snapshots.plain, kind);
});

rootTest('a stream that is already flowing loses nothing', async (t) => {
  const { dest } = await box(t);
  const layer = gzipSync(await rawTar([{ name: 'f', body: 'flowing' }]));
  const counted = new PassThrough();
  let seen = 0;
  counted.on('data', (c: Buffer) => (seen += c.length)); // the caller's own digest, as src/image does
  const done = unpackLayer(counted, dest);
  for (let i = 0; i < layer.length; i += 5) counted.write(layer.subarray(i, i + 5));
  counted.end();
  await done;
  t.is(seen, layer.length);
  t.is(await fs.readFile(path.join(dest, 'f'), 'utf8'), 'flowing');
});

rootTest('entries may come in any order: missing parents are made 0755 root and merged later', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'x/y/z/file', body: 'z', uid: 5 },
    { name: 'x/y/', type: 'directory', mode: 0o700, uid: 9, gid: 9 },
  ]);
  const res = await unpackLayer(streamOf(layer), dest);
  const x = await fs.lstat(path.join(dest, 'x'));
  t.deepEqual([x.mode & 0o7777, x.uid, x.gid], [0o755, 0, 0]);
  const y = await fs.lstat(path.join(dest, 'x/y'));
  t.deepEqual([y.mode & 0o7777, y.uid, y.gid], [0o700, 9, 9]);
  t.is(await fs.readFile(path.join(dest, 'x/y/z/file'), 'utf8'), 'z');
  t.is(res.inodes, 4);
});

rootTest('later entries replace earlier ones at the same path', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'f', body: 'first' },
    { name: 'f', body: 'second' },
    { name: 'd/', type: 'directory', mode: 0o700 },
    { name: 'd/inner', body: 'in' },
    { name: 'd/', type: 'directory', mode: 0o755 }, // dir over dir: merge
    { name: 'gone/', type: 'directory' },
    { name: 'gone/sub/', type: 'directory' },
    { name: 'gone', type: 'symlink', linkname: 'f' }, // non-dir over dir: replace it
    { name: 'l', type: 'symlink', linkname: '/etc/passwd' },
    { name: 'l', body: 'not through the link' }, // file over symlink: replace the link itself
    { name: '.wh.w', body: '' },
    { name: 'w/', type: 'directory' }, // dir over this layer's whiteout: opaque
  ]);
  await unpackLayer(streamOf(layer), dest);
  t.is(await fs.readFile(path.join(dest, 'f'), 'utf8'), 'second');
  t.is((await fs.lstat(path.join(dest, 'd'))).mode & 0o7777, 0o755);
  t.is(await fs.readFile(path.join(dest, 'd/inner'), 'utf8'), 'in');
  t.is(await fs.readlink(path.join(dest, 'gone')), 'f');
  t.true((await fs.lstat(path.join(dest, 'l'))).isFile());
  t.is(await fs.readFile(path.join(dest, 'l'), 'utf8'), 'not through the link');
  t.true((await fs.lstat(path.join(dest, 'w'))).isDirectory());
  t.is(lgetxattr(path.join(dest, 'w'), 'trusted.overlay.opaque')?.toString(), 'y');
});

rootTest('../escape is rejected and dest is removed', async (t) => {
  await rejectsEscape(t, [{ name: 'ok', body: 'ok' }, { name: '../escape', body: 'bad' }]);
});

rootTest('a climbing a/../../escape is rejected', async (t) => {
  await rejectsEscape(t, [{ name: 'a/../../escape', body: 'bad' }]);
});

rootTest('an absolute /abs entry is rejected', async (t) => {
  await rejectsEscape(t, [{ name: '/abs', body: 'bad' }]);
});

rootTest('writing through an absolute symlink (link -> /tmp/x, then link/file) is rejected', async (t) => {
  await rejectsEscape(t, [
    { name: 'link', type: 'symlink', linkname: '/tmp/x' },
    { name: 'link/file', body: 'bad' },
  ]);
});

rootTest('writing through a symlink to an existing outside dir is rejected', async (t) => {
  const { outside } = await box(t);
  await rejectsEscape(t, [
    { name: 'link', type: 'symlink', linkname: outside },
    { name: 'link/file', body: 'bad' },
  ]);
});

rootTest('writing through link -> .. (then link/file) is rejected', async (t) => {
  await rejectsEscape(t, [
    { name: 'link', type: 'symlink', linkname: '..' },
    { name: 'link/file', body: 'bad' },
  ]);
});

rootTest('a directory replaced by a symlink cannot be written through afterwards', async (t) => {
  await rejectsEscape(t, [
    { name: 'd/', type: 'directory' },
    { name: 'd/ok', body: 'ok' },
    { name: 'd', type: 'symlink', linkname: '..' },
    { name: 'd/file', body: 'bad' },
  ]);
});

rootTest('a whiteout through a symlink is rejected', async (t) => {
  await rejectsEscape(t, [
    { name: 'link', type: 'symlink', linkname: '..' },
    { name: 'link/.wh.outside', body: '' },
  ]);
});

rootTest('hardlink targets outside the root or through a symlink are rejected', async (t) => {
  await rejectsEscape(t, [{ name: 'h', type: 'link', linkname: '../outside' }]);
  await rejectsEscape(t, [{ name: 'h', type: 'link', linkname: '/etc/passwd' }]);
  await rejectsEscape(t, [
    { name: 'etc', type: 'symlink', linkname: '/etc' },
    { name: 'h', type: 'link', linkname: 'etc/passwd' },
  ]);
});

rootTest('a corrupt or truncated layer is rejected and dest is removed', async (t) => {
  const layer = await rawTar([{ name: 'f', body: randomBytes(100_000) }]);
  const half = (b: Buffer) => b.subarray(0, b.length >> 1);
  const garbled = Buffer.from(layer);
  garbled.fill(0x41, 0, 100); // breaks the first header's checksum
  for (const data of [half(gzipSync(layer)), half(zstd(layer)), half(layer), garbled]) {
    const { dir, dest } = await box(t);
    const err = await t.throwsAsync(unpackLayer(streamOf(data), dest));
    t.true(err instanceof BerthError, err?.message);
    t.false(await exists(dest));
    t.deepEqual(await fs.readdir(dir), ['outside']);
  }
});

rootTest('unsupported entries (GNU sparse files) fail the unpack instead of writing garbage', async (t) => {
  const { dest } = await box(t);
  const layer = await rawTar([
    { name: 'GNUSparseFile.0/disk.img', body: '1\n0\n4\nabcd', pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'disk.img', 'GNU.sparse.realsize': '4096' } },
  ]);
  const err = await t.throwsAsync(unpackLayer(streamOf(layer), dest));
  t.regex(err!.message, /sparse/);
  t.false(await exists(dest));
});

rootTest('an input stream error rejects with that error and removes dest', async (t) => {
  const { dest } = await box(t);
  const boom = new Error('connection reset');
  const input = new PassThrough();
  const done = unpackLayer(input, dest);
  input.write(gzipSync(await rawTar([{ name: 'f', body: 'x'.repeat(10000) }])).subarray(0, 100));
  setTimeout(() => input.destroy(boom), 20);
  const err = await t.throwsAsync(done);
  t.is(err, boom);
  t.false(await exists(dest));
});

rootTest('a layer made by GNU tar (posix, --xattrs) round-trips, binary security.capability included', async (t) => {
  const { dir, dest } = await box(t);
  const src = path.join(dir, 'src');
  await fs.mkdir(path.join(src, 'usr/bin'), { recursive: true });
  await fs.writeFile(path.join(src, 'usr/bin/ping'), 'ping');
  await fs.chown(path.join(src, 'usr/bin/ping'), 0, 0);
  // vfs_cap_data v2, effective, permitted = CAP_SETUID|CAP_NET_RAW: byte 0x80 is not valid UTF-8.
  const cap = Buffer.from([0x01, 0, 0, 0x02, 0x80, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  setxattr(path.join(src, 'usr/bin/ping'), 'security.capability', cap);
  setxattr(path.join(src, 'usr'), 'user.note', Buffer.from('a note'));
  await fs.link(path.join(src, 'usr/bin/ping'), path.join(src, 'usr/bin/ping6'));
  await fs.symlink('bin/ping', path.join(src, 'usr/ping'));
  await fs.writeFile(path.join(src, 'usr/big'), randomBytes(600_000));
  // Whole seconds: sub-microsecond precision of PAX times is not kept (Node's utimes takes doubles).
  for (const [p, s] of [['usr/ping', 1_600_000_001], ['usr/big', 1_600_000_002], ['usr/bin/ping', 1_600_000_003], ['usr/bin', 1_600_000_004], ['usr', 1_600_000_005]] as const) {
    await fs.lutimes(path.join(src, p), s, s);
  }
  const r = spawnSync('tar', ['--xattrs', "--xattrs-include=*", '--format=posix', '-cf', '-', '-C', src, '.'], {
    maxBuffer: 1 << 30,
  });
  t.is(r.status, 0, String(r.stderr));
  const layer = r.stdout;
  t.true(layer.includes(Buffer.from('SCHILY.xattr.security.capability')), 'tar wrote the capability');
  const res = await unpackLayer(streamOf(gzipSync(layer), 4096), dest);
  t.is(res.diffId, sha256(layer));
  t.deepEqual(lgetxattr(path.join(dest, 'usr/bin/ping'), 'security.capability'), cap);
  t.is(lgetxattr(path.join(dest, 'usr'), 'user.note')?.toString(), 'a note');
  const before = await snapshot(src);
  const after = await snapshot(dest);
  t.deepEqual(after, before);
});

// ---------------------------------------------------------------------------------------------
// The image store that unpacked layers land in.

async function addLayer(store: ImageStore, content: string): Promise<string> {
  const diffId = sha256(Buffer.from(content));
  const staging = await store.stagingDir();
  await fs.mkdir(path.join(staging, 'fs'));
  await fs.writeFile(path.join(staging, 'fs', 'file'), content);
  await store.commitLayer(staging, { diffId, digests: [diffId], unpackedBytes: content.length, inodes: 2, createdAt: Date.now() });
  return diffId;
}

async function storeWithLayer(t: ExecutionContext, content: string) {
  const { dir } = await box(t);
  const store = new ImageStore(path.join(dir, 'images'), captureLog(), () => new Set());
  await store.load();
  return { store, diffId: await addLayer(store, content) };
}

test('a committed layer is in place with its record and no staging dir left', async (t) => {
  const { store, diffId } = await storeWithLayer(t, 'committed');
  t.true(store.hasLayer(diffId));
  t.is(await fs.readFile(path.join(store.layerPath(diffId), 'file'), 'utf8'), 'committed');
  t.is(JSON.parse(await fs.readFile(path.join(store.layersDir, diffId.slice(7), 'layer.json'), 'utf8')).diffId, diffId);
  t.deepEqual((await fs.readdir(store.layersDir)).filter((n) => n.startsWith('.')), []);
});

test('GC leaves a layer a pull has pinned, and deletes it once every pin is released', async (t) => {
  const { store, diffId } = await storeWithLayer(t, 'pinned');
  const releaseA = store.pin([diffId]);
  const releaseB = store.pin([diffId]);
  await store.collectGarbage();
  t.true(store.hasLayer(diffId));
  releaseA();
  releaseA(); // a second call must not drop the other pull's pin
  await store.collectGarbage();
  t.true(store.hasLayer(diffId));
  t.true(await exists(store.layerPath(diffId)));
  releaseB();
  await store.collectGarbage();
  t.false(store.hasLayer(diffId));
  t.deepEqual(await fs.readdir(store.layersDir), []);
});

test('GC that cannot move a layer away keeps it, logs, and goes on with the others', async (t) => {
  const { store, diffId } = await storeWithLayer(t, 'stuck');
  const other = await addLayer(store, 'other');
  // Deleted behind the store's back: the rename fails with ENOENT.
  await fs.rm(path.join(store.layersDir, diffId.slice(7)), { recursive: true });
  await t.notThrowsAsync(store.collectGarbage());
  t.true(store.hasLayer(diffId), 'the map follows the disk: nothing was renamed');
  t.false(store.hasLayer(other));
  t.false(await exists(path.join(store.layersDir, other.slice(7))));
});

test('load drops a layer whose record is not JSON, and keeps a good one', async (t) => {
  const { store, diffId } = await storeWithLayer(t, 'kept');
  const broken = path.join(store.layersDir, 'ab'.repeat(32));
  await fs.mkdir(path.join(broken, 'fs'), { recursive: true });
  await fs.writeFile(path.join(broken, 'layer.json'), '{"diffId": ');
  const again = new ImageStore(store.root, captureLog(), () => new Set());
  // An image record keeps the good layer from the GC that load runs.
  await fs.writeFile(
    path.join(store.imagesDir, 'cd'.repeat(32) + '.json'),
    JSON.stringify({ id: 'sha256:' + 'cd'.repeat(32), repoTags: [], repoDigests: [], size: 1, manifestDigest: '', layers: [diffId], config: {}, pulledAt: 0 }),
  );
  await again.load();
  t.true(again.hasLayer(diffId));
  t.false(await exists(broken));
});

test('writeFileAtomic leaves no temp file behind when it fails', async (t) => {
  const { dir } = await box(t);
  const target = path.join(dir, 'target');
  // A non-empty directory where the file should go: the final rename fails.
  await fs.mkdir(path.join(target, 'sub'), { recursive: true });
  await t.throwsAsync(writeFileAtomic(target, 'x'));
  // Data that is not a string or bytes: the write itself fails.
  await t.throwsAsync(writeFileAtomic(path.join(dir, 'other'), 42 as unknown as string));
  t.deepEqual((await fs.readdir(dir)).filter((n) => n.endsWith('.tmp')), []);
});
