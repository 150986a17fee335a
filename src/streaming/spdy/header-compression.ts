import zlib from 'node:zlib';
import { spdyHeaderDictionary } from './dictionary.js';
import { SpdyProtocolError } from './errors.js';

// SPDY/3 compresses every header block of one direction of a session as one zlib stream (one context, primed with
// the SPDY dictionary, each block ending on a flush boundary). So blocks must be deflated and inflated strictly in
// frame order, and a context cannot be shared between sessions.

export function adler32(data: Buffer): number {
  let a = 1;
  let b = 0;
  for (let i = 0; i < data.length; ) {
    // 3800 bytes keep b below 2^31 between reductions.
    const end = Math.min(i + 3800, data.length);
    for (; i < end; i++) {
      a += data[i]!;
      b += a;
    }
    a %= 65521;
    b %= 65521;
  }
  return ((b << 16) | a) >>> 0;
}

const MAX_STORED_BLOCK = 0xffff;

/**
 * The outgoing header blocks of one session, as a zlib stream of stored (uncompressed) deflate blocks. Why not
 * compress: berth's blocks are a few dozen bytes (a SYN_REPLY carries none), stored blocks are valid zlib that every
 * inflater reads, they keep encoding synchronous so a reply is never reordered behind data, and a block's size
 * leaks nothing about other headers (no CRIME-style side channel through a shared compression context).
 */
export class StoredZlibWriter {
  private started = false;

  encode(block: Buffer): Buffer {
    const parts: Buffer[] = [];
    if (!this.started) {
      this.started = true;
      // CMF 0x78 (deflate, 32 KiB window), FLG 0x20 (FDICT; FCHECK 0 already makes 0x7820 a multiple of 31).
      const head = Buffer.alloc(6);
      head[0] = 0x78;
      head[1] = 0x20;
      head.writeUInt32BE(adler32(spdyHeaderDictionary), 2);
      parts.push(head);
    }
    for (let at = 0; at < block.length; at += MAX_STORED_BLOCK) parts.push(storedBlock(block.subarray(at, at + MAX_STORED_BLOCK)));
    // The sync-flush marker (an empty stored block), as zlib's Z_SYNC_FLUSH ends a block. Not optional: Go's
    // inflater keeps a finished block's bytes in its window until it reads the next block header, so without
    // the marker it reads into the next frame, fails, and the Go peer stops reading the connection.
    parts.push(storedBlock(Buffer.alloc(0)));
    return Buffer.concat(parts);
  }
}

function storedBlock(piece: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = 0x00; // BFINAL 0 (the stream lasts as long as the session), BTYPE 00 (stored)
  head.writeUInt16LE(piece.length, 1);
  head.writeUInt16LE(~piece.length & 0xffff, 3);
  return Buffer.concat([head, piece]);
}

/**
 * The incoming header blocks of one session. A block inflating past maxOutputBytes is a protocol error (a few
 * bytes of zlib can claim megabytes); the context is then unusable, as is the session.
 */
export class HeaderInflater {
  private readonly inflate = zlib.createInflate({ dictionary: spdyHeaderDictionary });
  private queue: Promise<unknown> = Promise.resolve();
  private collected: Buffer[] = [];
  private collectedBytes = 0;
  private failure: Error | null = null;
  private closed = false;

  constructor(private readonly maxOutputBytes: number) {
    this.inflate.on('data', (chunk: Buffer) => {
      this.collectedBytes += chunk.length;
      if (this.collectedBytes > this.maxOutputBytes) {
        this.fail(new SpdyProtocolError(`header block inflates past ${this.maxOutputBytes} bytes`));
        return;
      }
      this.collected.push(chunk);
    });
    this.inflate.on('error', (err) => this.fail(new SpdyProtocolError(`header block does not inflate: ${err.message}`)));
  }

  /** Inflates the next block of this direction; calls resolve in frame order. */
  inflateBlock(block: Buffer): Promise<Buffer> {
    const run = this.queue.then(() => this.inflateNow(block));
    this.queue = run.catch(() => undefined);
    return run;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.inflate.destroy();
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.close();
  }

  private inflateNow(block: Buffer): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new SpdyProtocolError('session closed'));
    this.collected = [];
    this.collectedBytes = 0;
    return new Promise<Buffer>((resolve, reject) => {
      let settled = false;
      const onClose = () => finish();
      const finish = () => {
        if (settled) return;
        settled = true;
        this.inflate.off('close', onClose);
        if (this.failure) reject(this.failure);
        else if (this.closed) reject(new SpdyProtocolError('session closed'));
        else resolve(Buffer.concat(this.collected));
      };
      this.inflate.once('close', onClose);
      this.inflate.write(block);
      this.inflate.flush(zlib.constants.Z_SYNC_FLUSH, finish);
    });
  }
}
