// Unpacks one OCI/Docker image layer (a tar, gzip'd, zstd'd or plain) into a directory that can
// serve as an overlayfs lowerdir: OCI whiteouts become overlayfs whiteouts (0:0 character devices
// and trusted.overlay.opaque), and ownership, modes, times, xattrs and device nodes are kept.
//
// The pipeline: input → progress counter → decompression → tar tap (diff id, raw PAX xattrs) → tar-stream
// → extractor. A layer is untrusted input; safe-path.ts holds the checks that keep it inside `dest`.
import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { BerthError, errorMessage, internal } from '../../errors.js';
import { log as rootLog, type Logger } from '../../log.js';
import { decompress, type Compression } from './compression.js';
import type { EntryHeader } from './entry.js';
import { classify } from './errors.js';
import { Extractor } from './extractor.js';
import { ProgressCounter, TarTap } from './stream-taps.js';

export interface UnpackOptions {
  log?: Logger;
  /** Compressed bytes read so far; called at most every 250 ms, and once more at the end of the input. */
  onProgress?: (compressedBytes: number) => void;
  /** Running on a thread of its own (unpack-worker.ts): every filesystem call may block it. */
  ownThread?: boolean;
}

export interface UnpackResult {
  /** `sha256:<hex>` of the uncompressed tar stream, to compare with the config's rootfs.diff_ids. */
  diffId: string;
  /** Sum of the sizes of the regular files written (files replaced later in the layer included). */
  unpackedBytes: number;
  /** Filesystem objects created, including implied parent directories and whiteout devices (not hardlinks). */
  inodes: number;
}

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
  const extractor = new Extractor(root, ready, tap.xattrs, log, opts.ownThread);
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
    // An entry's own failure (ENOSPC writing a file) explains a premature close that followed it.
    const premature = (err as NodeJS.ErrnoException | undefined)?.code === 'ERR_STREAM_PREMATURE_CLOSE';
    throw classify(premature && extractor.failure ? extractor.failure : err, inputError, root);
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
