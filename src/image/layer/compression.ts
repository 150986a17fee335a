// The decompression stage of the unpack pipeline: the data goes through gunzip, a zstd decoder, or nothing,
// by the format its first bytes show.
import { pipeline as pipelineCb, Readable, Transform, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Decompress } from 'fzstd';
import { errorMessage } from '../../errors.js';
import { SYNC_SLICE_MS, ZSTD_SLICE } from './tuning.js';

export type Compression = 'gzip' | 'zstd' | 'none';

/** Sniffs the compression from a layer's first bytes; the media type is not trusted for this. */
export function detectCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/** Pipeline stage: sniffs the first bytes, then passes the data through the matching decompressor. */
export function decompress(out: { compression: Compression }) {
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
