import test from 'ava';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { BerthError } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { UnpackPool } from '../../src/image/layer/unpack-pool.js';
import { unpackLayer } from '../../src/image/layer/unpack.js';
import { waitFor } from '../helpers/util.js';
import { rawTar, streamOf, type RawTarEntry } from '../helpers/raw-tar.js';

// Unpacking sets owners: only root can do that.
const rootTest = process.getuid?.() === 0 ? test : test.skip;

/** 64 KiB chunks by default: a download's shape. */
const chunked = (buf: Buffer, size = 64 * 1024): Readable => streamOf(buf, size);

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

function captureLog(): Logger & { lines: Array<{ level: string; msg: string }> } {
  const lines: Array<{ level: string; msg: string }> = [];
  const at = (level: string) => (msg: string) => void lines.push({ level, msg });
  const self = { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => self };
  return self;
}

async function scratch(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-unpack-pool-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Every path below `root` with its type, mode, owner, size, mtime and content, in order. */
async function tree(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    for (const name of (await fs.readdir(path.join(root, rel))).sort()) {
      const r = path.join(rel, name);
      const st = await fs.lstat(path.join(root, r));
      const content = st.isFile() ? sha256(await fs.readFile(path.join(root, r))) : st.isSymbolicLink() ? await fs.readlink(path.join(root, r)) : '';
      // Directories the layer only implies get the time they were made, which differs between two unpacks.
      const mtime = st.isDirectory() ? '' : st.mtimeMs;
      out.push(`${r} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${mtime} ${content}`);
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out;
}

async function sampleLayer(seed: number): Promise<Buffer> {
  const big = Buffer.alloc(3 << 20);
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  const entries: RawTarEntry[] = [
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/passwd', mode: 0o644, body: `root:x:0:0:${seed}\n` },
    { name: 'usr/bin/tool', mode: 0o4755, uid: 0, gid: 0, body: big },
    { name: 'usr/bin/alias', type: 'symlink', linkname: 'tool' },
    { name: 'usr/bin/hard', type: 'link', linkname: 'usr/bin/tool' },
  ];
  for (let i = 0; i < 50; i++) entries.push({ name: `usr/share/doc/f${i}`, mode: 0o644, uid: 1000 + i, gid: 100, body: `doc ${seed} ${i}\n`.repeat(i) });
  return rawTar(entries);
}

rootTest('a layer unpacked on a worker thread is the tree unpackLayer makes in-process, with both digests', async (t) => {
  const dir = await scratch(t);
  const pool = new UnpackPool({ size: 2 });
  t.teardown(() => pool.close());
  const tarball = await sampleLayer(1);
  const gz = gzipSync(tarball);
  const viaPool = await pool.unpack(chunked(gz), path.join(dir, 'pool'), captureLog());
  const inProcess = await unpackLayer(chunked(gz), path.join(dir, 'direct'));
  t.is(viaPool.digest, sha256(gz));
  t.is(viaPool.compressedBytes, gz.length);
  t.is(viaPool.diffId, sha256(tarball));
  t.is(viaPool.diffId, inProcess.diffId);
  t.is(viaPool.unpackedBytes, inProcess.unpackedBytes);
  t.is(viaPool.inodes, inProcess.inodes);
  t.deepEqual(await tree(path.join(dir, 'pool')), await tree(path.join(dir, 'direct')));
});

rootTest('several layers at once share the threads the pool may start, each one intact', async (t) => {
  const dir = await scratch(t);
  const pool = new UnpackPool({ size: 2 });
  t.teardown(() => pool.close());
  const layers = await Promise.all([1, 2, 3, 4, 5].map(async (seed) => gzipSync(await sampleLayer(seed))));
  const results = await Promise.all(layers.map((gz, i) => pool.unpack(chunked(gz, 16 * 1024), path.join(dir, `l${i}`), captureLog())));
  t.true(pool.threads <= 2);
  for (const [i, r] of results.entries()) {
    t.is(r.digest, sha256(layers[i]!));
    t.is((await fs.readFile(path.join(dir, `l${i}`, 'etc/passwd'), 'utf8')).trim(), `root:x:0:0:${i + 1}`);
  }
});

rootTest('a layer entry that escapes the root fails with its typed error across the thread, and nothing is left', async (t) => {
  const dir = await scratch(t);
  const pool = new UnpackPool({ size: 1 });
  t.teardown(() => pool.close());
  const gz = gzipSync(await rawTar([{ name: 'ok', body: 'x' }, { name: '../../escaped', body: 'evil' }]));
  const dest = path.join(dir, 'dest');
  const err = await t.throwsAsync(pool.unpack(chunked(gz), dest, captureLog()));
  t.true(err instanceof BerthError);
  t.is((err as BerthError).kind, 'invalid_argument');
  t.regex(err!.message, /escapes the layer root/);
  await t.throwsAsync(fs.access(dest));
  await t.throwsAsync(fs.access(path.join(dir, '..', 'escaped')));
});

rootTest('a download that fails midway fails the unpack with its own error and removes what was written', async (t) => {
  const dir = await scratch(t);
  const pool = new UnpackPool({ size: 1 });
  t.teardown(() => pool.close());
  const gz = gzipSync(await sampleLayer(7));
  const input = new PassThrough();
  const dest = path.join(dir, 'dest');
  const unpacking = pool.unpack(input, dest, captureLog());
  input.write(gz.subarray(0, gz.length >> 1));
  const boom = new Error('connection reset by the registry');
  setTimeout(() => input.destroy(boom), 50);
  const err = await t.throwsAsync(unpacking);
  t.is(err, boom);
  await t.throwsAsync(fs.access(dest));
});

rootTest('corrupt gzip is UNAVAILABLE, and the warnings the extractor logs reach the caller’s logger', async (t) => {
  const dir = await scratch(t);
  const pool = new UnpackPool({ size: 1 });
  t.teardown(() => pool.close());
  const gz = gzipSync(await sampleLayer(3));
  gz[gz.length >> 1] ^= 0xff;
  const err = await t.throwsAsync(pool.unpack(chunked(gz), path.join(dir, 'bad'), captureLog()));
  t.is((err as BerthError).kind, 'unavailable');

  const log = captureLog();
  const withOverlayXattr = gzipSync(await rawTar([{ name: 'f', body: 'x', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc' } } as RawTarEntry]));
  await pool.unpack(chunked(withOverlayXattr), path.join(dir, 'warned'), log);
  t.true(log.lines.some((l) => l.level === 'warn' && l.msg === 'ignoring overlayfs xattr in layer'));
});

rootTest('workers start on the first unpack and end once idle, so an idle daemon holds none', async (t) => {
  const dir = await scratch(t);
  const pool = new UnpackPool({ size: 2, idleMs: 100 });
  t.teardown(() => pool.close());
  t.is(pool.threads, 0);
  await pool.unpack(chunked(gzipSync(await sampleLayer(9))), path.join(dir, 'a'), captureLog());
  t.is(pool.threads, 1);
  await waitFor('the idle worker to end', () => pool.threads === 0, { timeoutMs: 10_000, intervalMs: 20 });
  // And the pool works again afterwards.
  const r = await pool.unpack(chunked(gzipSync(await sampleLayer(10))), path.join(dir, 'b'), captureLog());
  t.truthy(r.diffId);
});
