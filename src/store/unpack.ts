// Unpacks one OCI/Docker image layer (a tar, gzip'd, zstd'd or plain) into a directory that can
// serve as an overlayfs lowerdir: OCI whiteouts become overlayfs whiteouts (0:0 character devices
// and trusted.overlay.opaque), and ownership, modes, times, xattrs and device nodes are kept.
//
// Safety: a layer is untrusted input. Every entry name and hardlink target is normalized and must
// stay inside the layer root, and no parent directory on the way may be a symlink, so nothing is
// ever created or modified outside `dest`. Final path components are never followed either: files
// are created with O_EXCL|O_NOFOLLOW, metadata is set on the open descriptor or with the l*() calls,
// and the one path-based chmod(2) only ever targets a directory or node created the line before.
//
// Only this process is assumed to write under `dest` while it is being unpacked.
//
// Speed: the quick metadata syscalls and small files are done synchronously, in slices of a few
// milliseconds between which the event loop runs; file data beyond that is written asynchronously.
import { createHash } from 'node:crypto';
import fsCb, {
  chmodSync,
  closeSync,
  constants as fsc,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  promises as fs,
  symlinkSync,
  unlinkSync,
  writeSync,
  writevSync,
  type Stats,
} from 'node:fs';
import path from 'node:path';
import { pipeline as pipelineCb, Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Decompress } from 'fzstd';
import tar from 'tar-stream';
import { BerthError, errorMessage, internal } from '../errors.js';
import { lsetxattr, makedev, mknod } from '../kernel/libc.js';
import { log as rootLog, type Logger } from '../log.js';

export interface UnpackOptions {
  log?: Logger;
  /** Compressed bytes read so far; called at most every 250 ms, and once more at the end of the input. */
  onProgress?: (compressedBytes: number) => void;
}

export interface UnpackResult {
  /** `sha256:<hex>` of the uncompressed tar stream, to compare with the config's rootfs.diff_ids. */
  diffId: string;
  /** Sum of the sizes of the regular files written (files replaced later in the layer included). */
  unpackedBytes: number;
  /** Filesystem objects created, including implied parent directories and whiteout devices (not hardlinks). */
  inodes: number;
}

export type Compression = 'gzip' | 'zstd' | 'none';

/** Sniffs the compression from a layer's first bytes; the media type is not trusted for this. */
export function detectCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

const WHITEOUT_PREFIX = '.wh.';
const WHITEOUT_META_PREFIX = '.wh..wh.';
const WHITEOUT_OPAQUE = '.wh..wh..opq';
const OPAQUE_XATTR = 'trusted.overlay.opaque';
const PAX_XATTR = 'SCHILY.xattr.';
const PROGRESS_INTERVAL_MS = 250;
const WRITE_BATCH_BYTES = 1 << 20;
/** Files up to this size are written synchronously (their data is at most one batch anyway). */
const SYNC_FILE_MAX = 256 * 1024;
/** The longest stretch of synchronous fs calls before the event loop gets a turn. */
const SYNC_SLICE_MS = 4;
/** Compressed bytes handed to the (synchronous, pure JS) zstd decoder at a time. */
const ZSTD_SLICE = 64 * 1024;

/**
 * Streams `input` (compressed or not) into `dest`, which is created if missing and should be empty.
 * The input is consumed from the moment of the call. On any failure `dest` is removed entirely.
 */
export async function unpackLayer(input: Readable, dest: string, opts: UnpackOptions = {}): Promise<UnpackResult> {
  const log = opts.log ?? rootLog.child({ component: 'unpack' });
  const root = path.resolve(dest);
  const started = Date.now();

  // Everything that touches `input` happens synchronously in this call: the caller may hand over a
  // stream that is already flowing, and any chunk emitted before we are attached would be lost.
  let inputError: unknown;
  const onInputError = (err: unknown) => {
    inputError ??= err;
  };
  input.on('error', onInputError);

  const ready = prepareRoot(root);
  ready.catch(() => {}); // awaited below and by every entry; this only avoids an unhandled-rejection race
  const counter = new ProgressCounter(opts.onProgress, log);
  const tap = new TarTap();
  const extractor = new Extractor(root, ready, tap.xattrs, log);
  const extract = tar.extract();
  const decoded = { compression: 'none' as Compression };
  extract.on('entry', (header, stream, next) => extractor.onEntry(header as EntryHeader, stream, next));

  try {
    try {
      await pipeline([input, counter, decompress(decoded), tap, extract] as unknown as NodeJS.ReadWriteStream[]);
    } finally {
      // An upstream failure can end the pipeline while an entry is mid-way; let it settle before rm -rf.
      await extractor.idle();
    }
    await ready;
    await extractor.finish();
    const result: UnpackResult = {
      diffId: 'sha256:' + tap.hash.digest('hex'),
      unpackedBytes: extractor.unpackedBytes,
      inodes: extractor.inodes,
    };
    log.debug('layer unpacked', {
      dest: root,
      compression: decoded.compression,
      ...result,
      compressedBytes: counter.bytes,
      tarBytes: tap.bytes,
      ms: Date.now() - started,
    });
    return result;
  } catch (err) {
    if (!input.destroyed) input.destroy();
    try {
      await fs.rm(root, { recursive: true, force: true });
    } catch (rmErr) {
      log.error('removing a failed layer unpack', { dest: root, err: rmErr });
    }
    throw classify(err, inputError, root);
  } finally {
    input.off('error', onInputError);
  }
}

async function prepareRoot(root: string): Promise<void> {
  let st: Stats;
  try {
    await fs.mkdir(root, { recursive: true, mode: 0o755 });
    st = await fs.lstat(root);
  } catch (err) {
    throw internal(`creating unpack destination ${root}: ${errorMessage(err)}`, err);
  }
  if (!st.isDirectory()) throw new BerthError('invalid_argument', `unpack destination ${root} is not a directory`);
}

function classify(err: unknown, inputError: unknown, root: string): unknown {
  if (err instanceof BerthError) return err;
  if (err === inputError && inputError !== undefined) return err; // the caller's stream: its error, untouched
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ERR_STREAM_PREMATURE_CLOSE') {
    return new BerthError('unavailable', `layer stream for ${root} closed before its end`, { cause: err });
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new BerthError('resource_exhausted', `unpacking into ${root}: ${errorMessage(err)}`, { cause: err });
  }
  // Everything else comes from the decompressor or the tar parser: corrupt bytes from a registry are its fault
  // and worth a retry, like a digest mismatch, hence UNAVAILABLE.
  return new BerthError('unavailable', `layer data is corrupt or truncated: ${errorMessage(err)}`, { cause: err });
}

// ---------------------------------------------------------------------------------------------
// Stream stages

class ProgressCounter extends Transform {
  bytes = 0;
  private last = 0;

  constructor(
    private readonly onProgress: ((bytes: number) => void) | undefined,
    private readonly log: Logger,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.report(false);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.report(true);
    cb();
  }

  private report(final: boolean): void {
    if (!this.onProgress) return;
    const now = Date.now();
    if (!final && now - this.last < PROGRESS_INTERVAL_MS) return;
    this.last = now;
    try {
      this.onProgress(this.bytes);
    } catch (err) {
      this.log.warn('layer progress callback failed', { err });
    }
  }
}

/** Pipeline stage: sniffs the first bytes, then passes the data through the matching decompressor. */
function decompress(out: { compression: Compression }) {
  return async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    const it = source[Symbol.asyncIterator]();
    const head: Buffer[] = [];
    let headLen = 0;
    while (headLen < 4) {
      const r = await it.next();
      if (r.done) break;
      head.push(r.value);
      headLen += r.value.length;
    }
    const first = Buffer.concat(head, headLen);
    out.compression = detectCompression(first);
    async function* all(): AsyncGenerator<Buffer> {
      if (first.length) yield first;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    }
    if (out.compression === 'none') {
      yield* all();
      return;
    }
    const decoder = out.compression === 'gzip' ? createGunzip({ chunkSize: 128 * 1024 }) : new ZstdDecompress();
    // Errors on either side destroy `decoder`, which makes the iteration below throw.
    pipelineCb(Readable.from(all(), { objectMode: false }), decoder, () => {});
    yield* decoder as AsyncIterable<Buffer>;
  };
}

/** Streaming zstd decompression (fzstd is pure JS; Node 20's zlib has no zstd). */
class ZstdDecompress extends Transform {
  private readonly z = new Decompress((data) => {
    if (data.length) this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  });

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    // Backpressure is per input chunk: Transform holds the next chunk until the output is read.
    // Decoding runs on this thread, so a chunk is fed in slices with event loop turns in between.
    let offset = 0;
    const step = () => {
      if (this.destroyed) return;
      const start = performance.now();
      try {
        while (offset < chunk.length) {
          const end = Math.min(offset + ZSTD_SLICE, chunk.length);
          this.z.push(chunk.subarray(offset, end));
          offset = end;
          if (offset < chunk.length && performance.now() - start > SYNC_SLICE_MS) {
            setImmediate(step);
            return;
          }
        }
      } catch (err) {
        return cb(new Error(`zstd: ${errorMessage(err)}`));
      }
      cb();
    };
    step();
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.z.push(new Uint8Array(0), true);
    } catch (err) {
      return cb(new Error(`zstd: ${errorMessage(err)}`));
    }
    cb();
  }
}

/** Hashes the uncompressed tar (the diff id) and keeps the raw bytes of PAX xattr values. */
class TarTap extends Transform {
  readonly hash = createHash('sha256');
  readonly xattrs = new PaxXattrTracker();
  bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.xattrs.feed(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

// tar-stream decodes PAX values as UTF-8, which corrupts binary xattrs such as security.capability.
// This tracker follows the same byte stream as tar-stream, just the headers, and keeps the raw
// SCHILY.xattr.* values keyed by the stream offset of the entry's data (tar-stream's
// header.byteOffset), so the extractor can pick them up exactly for the matching entry.
const MAX_PAX_SIZE = 4 * 1024 * 1024; // tar-stream's own limit
const USTAR_MAGIC = Buffer.from('ustar\0', 'latin1');

class PaxXattrTracker {
  private pos = 0;
  private skip = 0;
  private readonly header = Buffer.alloc(512);
  private headerFill = 0;
  private body: Buffer | null = null;
  private bodyFill = 0;
  private bodyGlobal = false;
  private local: Map<string, Buffer> | null = null;
  private global: Map<string, Buffer> | null = null;
  private dead = false;
  private readonly found = new Map<number, Map<string, Buffer>>();

  feed(chunk: Buffer): void {
    const n = chunk.length;
    let i = 0;
    while (i < n && !this.dead) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - i);
        this.skip -= k;
        i += k;
      } else if (this.body) {
        const k = Math.min(this.body.length - this.bodyFill, n - i);
        chunk.copy(this.body, this.bodyFill, i, i + k);
        this.bodyFill += k;
        i += k;
        if (this.bodyFill === this.body.length) this.endBody();
      } else {
        const k = Math.min(512 - this.headerFill, n - i);
        chunk.copy(this.header, this.headerFill, i, i + k);
        this.headerFill += k;
        i += k;
        if (this.headerFill === 512) {
          this.headerFill = 0;
          this.onHeader(this.pos + i);
        }
      }
    }
    this.pos += n;
  }

  /** The raw xattrs of the entry whose data starts at `byteOffset`, if its PAX header had any. */
  take(byteOffset: number): Map<string, Buffer> | undefined {
    const found = this.found.get(byteOffset);
    if (found) this.found.delete(byteOffset);
    return found;
  }

  private onHeader(dataOffset: number): void {
    const h = this.header;
    let sum = 8 * 32;
    for (let j = 0; j < 148; j++) sum += h[j];
    for (let j = 156; j < 512; j++) sum += h[j];
    if (sum === 8 * 32) return; // an all-zero block (end of archive or padding)
    if (sum !== readNumber(h, 148, 8)) {
      this.dead = true; // tar-stream rejects this header too
      return;
    }
    const typeflag = h[156] === 0 ? 0 : h[156] - 48;
    const size = readNumber(h, 124, 12);
    switch (typeflag) {
      case 72: // 'x' PAX header
      case 55: // 'g' PAX global header
        if (!(size >= 0) || size > MAX_PAX_SIZE) {
          this.dead = true;
          return;
        }
        this.body = Buffer.alloc(size);
        this.bodyFill = 0;
        this.bodyGlobal = typeflag === 55;
        if (size === 0) this.endBody();
        return;
      case 27: // 'K' GNU long link name
      case 28: // 'L' GNU long name
      case 30: // 'N' old GNU long name
        this.skip = size + pad(size);
        return;
    }
    let effective = size;
    const paxSize = this.local?.get('size');
    if (paxSize && paxSize.length) effective = parseInt(paxSize.toString('utf8'), 10);
    if (this.local) {
      let xattrs: Map<string, Buffer> | undefined;
      for (const [key, value] of this.local) {
        if (!key.startsWith(PAX_XATTR)) continue;
        xattrs ??= new Map();
        xattrs.set(key, value);
      }
      if (xattrs) this.found.set(dataOffset, xattrs);
      this.local = null;
    }
    const isDir = typeflag === 5 || (typeflag === 0 && ustarNameEndsWithSlash(h));
    if (!(effective >= 0)) {
      this.dead = true;
      return;
    }
    this.skip = isDir || effective === 0 ? 0 : effective + pad(effective);
  }

  private endBody(): void {
    const body = this.body!;
    this.body = null;
    const records = parsePax(body);
    if (this.bodyGlobal) {
      this.global = records;
    } else {
      this.local = this.global ? new Map([...this.global, ...records]) : records;
    }
    this.skip = pad(body.length);
  }
}

function pad(size: number): number {
  const rem = size % 512;
  return rem === 0 ? 0 : 512 - rem;
}

// Same rules as tar-stream's decodePax: "<len> <key>=<value>\n" records, raw values.
function parsePax(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < buf.length) {
    let sp = off;
    while (sp < buf.length && buf[sp] !== 0x20) sp++;
    const len = parseInt(buf.toString('latin1', off, sp), 10);
    if (!len) break;
    const rec = buf.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq === -1) break;
    out.set(rec.toString('utf8', 0, eq), rec.subarray(eq + 1));
    off += len;
  }
  return out;
}

// Octal (optionally space/NUL padded) or base-256 numeric header field, as tar-stream reads it.
function readNumber(buf: Buffer, offset: number, length: number): number {
  const field = buf.subarray(offset, offset + length);
  if (field[0] & 0x80) {
    const positive = field[0] === 0x80;
    if (!positive && field[0] !== 0xff) return NaN;
    let sum = 0;
    for (let i = 1; i < field.length; i++) {
      const byte = positive ? field[i] : 0xff - field[i];
      sum = sum * 256 + byte;
    }
    return positive ? sum : -sum;
  }
  let i = 0;
  while (i < field.length && field[i] === 0x20) i++;
  let end = field.indexOf(0x20, i);
  if (end === -1) end = field.length;
  while (i < end && field[i] === 0) i++;
  if (i === end) return 0;
  return parseInt(field.toString('latin1', i, end), 8);
}

function ustarNameEndsWithSlash(h: Buffer): boolean {
  let nameEnd = h.indexOf(0, 0);
  if (nameEnd === -1 || nameEnd > 100) nameEnd = 100;
  const ustar = h.subarray(257, 263).equals(USTAR_MAGIC);
  if (ustar && h[345] !== 0 && nameEnd === 0) return true; // "<prefix>/" + ""
  return nameEnd > 0 && h[nameEnd - 1] === 0x2f;
}

// ---------------------------------------------------------------------------------------------
// Extraction

// tar-stream's own typings, widened to what it really hands out.
type EntryHeader = Omit<tar.Header, 'pax' | 'type'> & {
  type: tar.Header['type'] | null;
  pax?: Record<string, string> | null;
  byteOffset?: number;
};

interface EntryData extends AsyncIterable<unknown> {
  resume(): unknown;
  on(event: 'error', listener: (err: unknown) => void): unknown;
}

interface Meta {
  mode: number;
  uid: number;
  gid: number;
  atime: number;
  mtime: number;
}

function escapes(name: string, why?: string): BerthError {
  return new BerthError('invalid_argument', `layer entry ${name} escapes the layer root${why ? `: ${why}` : ''}`);
}

function invalidEntry(name: string, why: string): BerthError {
  return new BerthError('invalid_argument', `layer entry ${name}: ${why}`);
}

function isWhiteoutDevice(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

function paxId(value: string | undefined): number | undefined {
  if (!value || !/^\d+$/.test(value)) return undefined;
  const id = Number(value);
  return id <= 0xffffffff ? id : undefined;
}

function paxTime(value: string | undefined): number | undefined {
  if (!value) return undefined;
  const t = Number(value);
  return Number.isFinite(t) ? t : undefined;
}

class Extractor {
  unpackedBytes = 0;
  inodes = 0;
  /** Directories (relative to root) known to exist as real directories, not symlinks. */
  private readonly dirs = new Set<string>();
  /** Directory times, applied at the end because creating children changes them. */
  private readonly dirTimes = new Map<string, [number, number]>();
  private current: Promise<void> = Promise.resolve();
  private sliceStart = performance.now();

  constructor(
    private readonly root: string,
    private readonly ready: Promise<void>,
    private readonly tracker: PaxXattrTracker,
    private readonly log: Logger,
  ) {}

  onEntry(header: EntryHeader, data: EntryData, next: (err?: Error | null) => void): void {
    // When the pipeline fails, tar-stream destroys the entry stream with the error. Without a listener
    // streamx throws from inside its destroy, leaving the stream half-destroyed and our reader hung.
    // The error itself reaches us through the iterator and the pipeline.
    data.on('error', () => {});
    this.current = this.entry(header, data).then(
      () => next(),
      (err: unknown) => {
        data.resume();
        next(this.wrap(err, header.name));
      },
    );
  }

  /** Settles once the entry being extracted, if any, is done. */
  idle(): Promise<void> {
    return this.current.catch(() => {});
  }

  async finish(): Promise<void> {
    for (const [rel, [atime, mtime]] of this.dirTimes) {
      try {
        lutimesSync(this.abs(rel), atime, mtime);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw this.wrap(err, rel);
      }
      await this.yieldSometimes();
    }
  }

  private wrap(err: unknown, name: string): Error {
    return err instanceof BerthError ? err : internal(`unpacking layer entry ${name} into ${this.root}: ${errorMessage(err)}`, err);
  }

  // Metadata syscalls and small files run synchronously: a thread-pool round trip per call costs
  // more than the call itself, and a layer is tens of thousands of them. The event loop still gets
  // a turn every few milliseconds.
  private async yieldSometimes(): Promise<void> {
    if (performance.now() - this.sliceStart < SYNC_SLICE_MS) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.sliceStart = performance.now();
  }

  private abs(rel: string): string {
    return rel === '' ? this.root : this.root + '/' + rel;
  }

  /** Normalized path relative to the root ('' for the root itself); throws if it would leave it. */
  private relative(name: string, entryName: string, what?: string): string {
    if (name.includes('\0')) throw invalidEntry(entryName, 'name contains a NUL byte');
    if (name.startsWith('/')) throw escapes(entryName, what ? `${what} ${name} is absolute` : 'absolute path');
    let rel = path.posix.normalize(name);
    if (rel === '..' || rel.startsWith('../')) throw escapes(entryName, what ? `${what} ${name} leaves it` : undefined);
    if (rel.endsWith('/')) rel = rel.slice(0, -1);
    if (rel === '.' || rel === './') return '';
    return rel;
  }

  private async entry(h: EntryHeader, data: EntryData): Promise<void> {
    const type = h.type ?? null;
    const isFile = type === 'file' || type === 'contiguous-file';
    if (!isFile) data.resume(); // drain anything a non-file entry carries
    await this.ready;

    const name = h.name;
    const rel = this.relative(name, name);
    const xattrs = this.xattrs(h);
    const meta: Meta = {
      mode: (h.mode ?? 0) & 0o7777,
      // tar-stream applies only path, linkpath and size from PAX; ids too big for the header are there.
      uid: paxId(h.pax?.uid) ?? h.uid ?? 0,
      gid: paxId(h.pax?.gid) ?? h.gid ?? 0,
      mtime: paxTime(h.pax?.mtime) ?? (h.mtime ? h.mtime.getTime() / 1000 : 0),
      atime: 0,
    };
    meta.atime = paxTime(h.pax?.atime) ?? meta.mtime;

    if (h.pax && Object.keys(h.pax).some((k) => k.startsWith('GNU.sparse.'))) {
      // tar-stream would hand over the sparse map as file content: refuse rather than write garbage.
      throw invalidEntry(name, 'GNU sparse files are not supported');
    }

    if (rel === '') {
      if (type === 'directory') return; // the root's own entry ("./"): the root is ours, like containerd
      throw invalidEntry(name, 'only a directory can stand for the layer root');
    }

    const base = path.posix.basename(rel);
    if (base.startsWith(WHITEOUT_PREFIX)) {
      await this.whiteout(rel, name, meta);
    } else {
      this.ensureParents(rel, name);
      switch (type) {
        case 'file':
        case 'contiguous-file':
          await this.file(rel, name, h.size ?? 0, meta, xattrs, data);
          break;
        case 'directory':
          await this.directory(rel, meta, xattrs);
          break;
        case 'symlink':
          await this.symlink(rel, name, h.linkname ?? '', meta, xattrs);
          break;
        case 'link':
          await this.hardlink(rel, name, h.linkname ?? '');
          break;
        case 'character-device':
        case 'block-device':
        case 'fifo':
          await this.special(rel, type, h.devmajor ?? 0, h.devminor ?? 0, meta, xattrs);
          break;
        default:
          throw invalidEntry(name, `unsupported entry type ${type ?? 'unknown'}`);
      }
    }
    await this.yieldSometimes();
  }

  private xattrs(h: EntryHeader): Array<[string, Buffer]> {
    const raw = this.tracker.take(h.byteOffset ?? -1);
    const keys = h.pax ? Object.keys(h.pax).filter((k) => k.startsWith(PAX_XATTR)) : [];
    if (keys.length === 0 && !raw) return [];
    if (!raw || raw.size !== keys.length || keys.some((k) => !raw.has(k))) {
      throw internal(`layer entry ${h.name}: lost track of its PAX xattr records`);
    }
    const out: Array<[string, Buffer]> = [];
    for (const key of keys) {
      const name = key.slice(PAX_XATTR.length);
      // We write the overlayfs xattrs ourselves; a layer must not be able to plant redirects or the like.
      if (name.startsWith('trusted.overlay.')) {
        this.log.warn('ignoring overlayfs xattr in layer', { entry: h.name, xattr: name });
        continue;
      }
      out.push([name, raw.get(key)!]);
    }
    return out;
  }

  /** Makes sure every parent of `rel` is a real directory, creating missing ones (0755 root:root). */
  private ensureParents(rel: string, entryName: string): void {
    const dir = path.posix.dirname(rel);
    if (dir === '.' || this.dirs.has(dir)) return;
    let cur = '';
    let missing = false;
    for (const part of dir.split('/')) {
      cur = cur ? `${cur}/${part}` : part;
      if (this.dirs.has(cur)) continue;
      const abs = this.abs(cur);
      if (!missing) {
        const st = lstatSync(abs, { throwIfNoEntry: false });
        if (st) {
          if (st.isDirectory()) {
            this.dirs.add(cur);
            continue;
          }
          if (st.isSymbolicLink()) throw escapes(entryName, `${cur} is a symlink`);
          throw invalidEntry(entryName, `parent ${cur} is not a directory`);
        }
        missing = true;
      }
      mkdirSync(abs, 0o700);
      lchownSync(abs, 0, 0);
      chmodSync(abs, 0o755);
      this.dirs.add(cur);
      this.inodes++;
    }
  }

  /** Like ensureParents for a path that must already exist (a hardlink target), creating nothing. */
  private checkParents(rel: string, entryName: string, linkname: string): void {
    const dir = path.posix.dirname(rel);
    if (dir === '.' || this.dirs.has(dir)) return;
    let cur = '';
    for (const part of dir.split('/')) {
      cur = cur ? `${cur}/${part}` : part;
      if (this.dirs.has(cur)) continue;
      const st = lstatSync(this.abs(cur), { throwIfNoEntry: false });
      if (!st) throw invalidEntry(entryName, `hardlink target ${linkname} does not exist`);
      if (st.isSymbolicLink()) throw escapes(entryName, `hardlink target ${linkname} goes through symlink ${cur}`);
      if (!st.isDirectory()) throw invalidEntry(entryName, `hardlink target ${linkname} does not exist`);
      this.dirs.add(cur);
    }
  }

  /** Removes whatever is at `rel` and forgets what we knew about it and below it. */
  private async remove(rel: string, st: Stats): Promise<void> {
    const abs = this.abs(rel);
    if (st.isDirectory()) {
      await fs.rm(abs, { recursive: true, force: true });
      const prefix = rel + '/';
      for (const d of this.dirs) if (d === rel || d.startsWith(prefix)) this.dirs.delete(d);
      for (const d of this.dirTimes.keys()) if (d === rel || d.startsWith(prefix)) this.dirTimes.delete(d);
    } else {
      unlinkSync(abs);
    }
  }

  /** Runs `make`; if the path is taken, replaces what is there. Returns whether that was a whiteout. */
  private async create(rel: string, make: () => void): Promise<boolean> {
    try {
      make();
      return false;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = lstatSync(this.abs(rel));
    await this.remove(rel, st);
    make();
    return isWhiteoutDevice(st);
  }

  private async file(
    rel: string,
    name: string,
    size: number,
    meta: Meta,
    xattrs: Array<[string, Buffer]>,
    data: EntryData,
  ): Promise<void> {
    const abs = this.abs(rel);
    // O_EXCL: never opens an existing file, nor follows a symlink planted at this name.
    const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
    let fd = -1;
    await this.create(rel, () => {
      fd = openSync(abs, flags, 0o600);
    });
    this.inodes++;
    try {
      let written = 0;
      let batch: Buffer[] = [];
      let batchBytes = 0;
      const small = size <= SYNC_FILE_MAX;
      for await (const item of data) {
        const chunk = item as Buffer;
        batch.push(chunk);
        batchBytes += chunk.length;
        if (batchBytes >= WRITE_BATCH_BYTES) {
          await writeAll(fd, batch, batchBytes);
          written += batchBytes;
          batch = [];
          batchBytes = 0;
        }
      }
      if (batchBytes > 0) {
        if (small) writeAllSync(fd, batch, batchBytes);
        else await writeAll(fd, batch, batchBytes);
        written += batchBytes;
      }
      if (written !== size) throw invalidEntry(name, `expected ${size} bytes of data, got ${written}`);
      this.unpackedBytes += size;
      fchownSync(fd, meta.uid, meta.gid);
      fchmodSync(fd, meta.mode); // after chown, which clears setuid/setgid
      this.setXattrs(abs, name, xattrs, false); // after chown, which clears security.capability
      futimesSync(fd, meta.atime, meta.mtime);
    } finally {
      closeSync(fd);
    }
  }

  private async directory(rel: string, meta: Meta, xattrs: Array<[string, Buffer]>): Promise<void> {
    const abs = this.abs(rel);
    let opaque = false;
    try {
      mkdirSync(abs, 0o700);
      this.inodes++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = lstatSync(abs);
      if (!st.isDirectory()) {
        // A directory over a whiteout of this same layer: the lower one stays hidden, so opaque.
        opaque = isWhiteoutDevice(st);
        await this.remove(rel, st);
        mkdirSync(abs, 0o700);
        this.inodes++;
      } // else: a directory over a directory merges; the later metadata wins
    }
    this.dirs.add(rel);
    lchownSync(abs, meta.uid, meta.gid);
    chmodSync(abs, meta.mode);
    this.setXattrs(abs, rel, xattrs, false);
    if (opaque) lsetxattr(abs, OPAQUE_XATTR, Buffer.from('y'));
    this.dirTimes.set(rel, [meta.atime, meta.mtime]);
  }

  private async symlink(
    rel: string,
    name: string,
    target: string,
    meta: Meta,
    xattrs: Array<[string, Buffer]>,
  ): Promise<void> {
    if (target === '') throw invalidEntry(name, 'symlink has an empty target');
    if (target.includes('\0')) throw invalidEntry(name, 'symlink target contains a NUL byte');
    const abs = this.abs(rel);
    // The target is stored as is (absolute or dangling is fine): it is never followed here.
    await this.create(rel, () => symlinkSync(target, abs));
    this.inodes++;
    lchownSync(abs, meta.uid, meta.gid);
    this.setXattrs(abs, name, xattrs, true);
    lutimesSync(abs, meta.atime, meta.mtime);
  }

  private async hardlink(rel: string, name: string, linkname: string): Promise<void> {
    if (linkname === '') throw invalidEntry(name, 'hardlink has an empty target');
    const target = this.relative(linkname, name, 'hardlink target');
    if (target === '') throw invalidEntry(name, 'hardlink to the layer root');
    if (target === rel) return; // a link to itself: nothing to do
    this.checkParents(target, name, linkname);
    const from = this.abs(target);
    const to = this.abs(rel);
    try {
      // link(2) does not follow a symlink at `from`: at worst this links the symlink itself.
      await this.create(rel, () => linkSync(from, to));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw invalidEntry(name, `hardlink target ${linkname} does not exist`);
      }
      throw err;
    }
    // The inode already carries the target's metadata; nothing more to set.
  }

  private async special(
    rel: string,
    type: 'character-device' | 'block-device' | 'fifo',
    devmajor: number,
    devminor: number,
    meta: Meta,
    xattrs: Array<[string, Buffer]>,
  ): Promise<void> {
    const abs = this.abs(rel);
    const ifmt = type === 'character-device' ? fsc.S_IFCHR : type === 'block-device' ? fsc.S_IFBLK : fsc.S_IFIFO;
    const dev = type === 'fifo' ? 0n : makedev(devmajor, devminor);
    await this.create(rel, () => mknod(abs, ifmt | 0o600, dev));
    this.inodes++;
    lchownSync(abs, meta.uid, meta.gid);
    chmodSync(abs, meta.mode); // chmod(2) on a node we just made; devices aren't opened by it
    this.setXattrs(abs, rel, xattrs, false);
    lutimesSync(abs, meta.atime, meta.mtime);
  }

  /** `dir/.wh.name` → 0:0 character device `dir/name`; `dir/.wh..wh..opq` → `dir` is opaque. */
  private async whiteout(rel: string, name: string, meta: Meta): Promise<void> {
    const dir = path.posix.dirname(rel);
    const dirRel = dir === '.' ? '' : dir;
    const base = path.posix.basename(rel);
    if (base === WHITEOUT_OPAQUE) {
      this.ensureParents(rel, name);
      lsetxattr(this.abs(dirRel), OPAQUE_XATTR, Buffer.from('y'));
      return;
    }
    if (base.startsWith(WHITEOUT_META_PREFIX)) {
      this.log.debug('skipping whiteout metadata entry', { entry: name });
      return;
    }
    const original = base.slice(WHITEOUT_PREFIX.length);
    if (original === '' || original === '.' || original === '..') throw invalidEntry(name, 'malformed whiteout');
    const target = dirRel ? `${dirRel}/${original}` : original;
    this.ensureParents(target, name);
    const abs = this.abs(target);
    try {
      mknod(abs, fsc.S_IFCHR, 0n);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // The path was created earlier in this same layer, which a whiteout does not remove (it only
      // hides lower layers). A same-layer file hides the lower one anyway; a directory must become
      // opaque so the lower directory's content stays hidden.
      if (lstatSync(abs).isDirectory()) lsetxattr(abs, OPAQUE_XATTR, Buffer.from('y'));
      return;
    }
    this.inodes++;
    lchownSync(abs, meta.uid, meta.gid);
    lutimesSync(abs, meta.atime, meta.mtime); // for reproducible trees; overlayfs ignores it
  }

  private setXattrs(abs: string, entry: string, xattrs: Array<[string, Buffer]>, symlink: boolean): void {
    for (const [name, value] of xattrs) {
      try {
        lsetxattr(abs, name, value);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // As containerd: unsupported namespaces and security.* we may not set are skipped, not fatal.
        // user.* is never allowed on symlinks.
        if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || (code === 'EPERM' && (symlink || name.startsWith('security.')))) {
          this.log.warn('ignoring xattr the filesystem refused', { entry, xattr: name, err });
          continue;
        }
        throw err;
      }
    }
  }
}

const writevFd = (fd: number, buffers: Buffer[]) =>
  new Promise<number>((resolve, reject) => fsCb.writev(fd, buffers, (err, n) => (err ? reject(err) : resolve(n))));
const writeFd = (fd: number, buffer: Buffer) =>
  new Promise<number>((resolve, reject) => fsCb.write(fd, buffer, (err, n) => (err ? reject(err) : resolve(n))));

async function writeAll(fd: number, chunks: Buffer[], total: number): Promise<void> {
  const n = chunks.length === 1 ? await writeFd(fd, chunks[0]) : await writevFd(fd, chunks);
  if (n === total) return;
  // Short write: finish the rest.
  let rest = Buffer.concat(chunks, total).subarray(n);
  while (rest.length > 0) rest = rest.subarray(await writeFd(fd, rest));
}

function writeAllSync(fd: number, chunks: Buffer[], total: number): void {
  const n = chunks.length === 1 ? writeSync(fd, chunks[0]) : writevSync(fd, chunks);
  if (n === total) return;
  let rest = Buffer.concat(chunks, total).subarray(n);
  while (rest.length > 0) rest = rest.subarray(writeSync(fd, rest));
}
