// Pass-through stages of the unpack pipeline that watch the bytes go by: the compressed byte count for progress
// reports, and the uncompressed tar for its diff id and its raw PAX xattr values.
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import type { Logger } from '../../log.js';
import { PaxXattrTracker } from './pax-xattrs.js';

const PROGRESS_INTERVAL_MS = 250;

export class ProgressCounter extends Transform {
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

/** Hashes the uncompressed tar (the diff id) and keeps the raw bytes of PAX xattr values. */
export class TarTap extends Transform {
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
