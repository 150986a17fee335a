import { SpdyProtocolError } from './errors.js';

// SPDY/3 frame layout (spec section 2.2). Control frames: C bit + version 3, type, flags, 24-bit length; data
// frames: C bit clear + 31-bit stream id, flags, 24-bit length. This file only cuts bytes into frames and frames
// into bytes; header blocks stay compressed here (header-compression.ts owns the zlib contexts, whose order matters).

export const SPDY_VERSION = 3;
export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;
const FRAME_HEADER_BYTES = 8;
/** The 24-bit length field's ceiling. */
export const MAX_FRAME_PAYLOAD = 0xffffff;
const STREAM_ID_MASK = 0x7fffffff;

export const ControlType = {
  synStream: 1,
  synReply: 2,
  rstStream: 3,
  settings: 4,
  ping: 6,
  goAway: 7,
  headers: 8,
  windowUpdate: 9,
} as const;

export type ControlFrame =
  | { type: 'syn_stream'; streamId: number; associatedId: number; priority: number; fin: boolean; unidirectional: boolean; headerBlock: Buffer }
  | { type: 'syn_reply'; streamId: number; fin: boolean; headerBlock: Buffer }
  | { type: 'rst_stream'; streamId: number; status: number }
  | { type: 'settings'; clear: boolean; entries: { flags: number; id: number; value: number }[] }
  | { type: 'ping'; id: number }
  | { type: 'goaway'; lastGoodStreamId: number; status: number }
  | { type: 'headers'; streamId: number; fin: boolean; headerBlock: Buffer }
  | { type: 'window_update'; streamId: number; delta: number }
  | { type: 'unknown'; frameType: number };

/** What the reader emits: whole control frames, and data frames in pieces as their bytes arrive. */
export type FrameEvent =
  | { kind: 'control'; frame: ControlFrame }
  | { kind: 'data'; streamId: number; chunk: Buffer; fin: boolean };

export interface FrameReaderLimits {
  /** Largest control frame payload accepted (header blocks are compressed here, so this bounds their input). */
  maxControlPayload: number;
}

function controlHeader(type: number, flags: number, length: number): Buffer {
  if (length > MAX_FRAME_PAYLOAD) throw new RangeError(`spdy control frame of ${length} bytes exceeds the 24-bit length`);
  const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  b.writeUInt16BE(0x8000 | SPDY_VERSION, 0);
  b.writeUInt16BE(type, 2);
  b.writeUInt32BE(((flags & 0xff) << 24 | length) >>> 0, 4);
  return b;
}

function checkStreamId(id: number): void {
  if (!Number.isInteger(id) || id <= 0 || id > STREAM_ID_MASK) throw new RangeError(`spdy stream id ${id} out of range`);
}

export function encodeSynStream(streamId: number, headerBlock: Buffer, opts: { fin?: boolean; priority?: number; associatedId?: number } = {}): Buffer {
  checkStreamId(streamId);
  const body = Buffer.allocUnsafe(10);
  body.writeUInt32BE(streamId, 0);
  body.writeUInt32BE((opts.associatedId ?? 0) & STREAM_ID_MASK, 4);
  body.writeUInt8(((opts.priority ?? 0) & 0x7) << 5, 8);
  body.writeUInt8(0, 9);
  return Buffer.concat([controlHeader(ControlType.synStream, opts.fin ? FLAG_FIN : 0, 10 + headerBlock.length), body, headerBlock]);
}

export function encodeSynReply(streamId: number, headerBlock: Buffer, fin = false): Buffer {
  checkStreamId(streamId);
  const body = Buffer.allocUnsafe(4);
  body.writeUInt32BE(streamId, 0);
  return Buffer.concat([controlHeader(ControlType.synReply, fin ? FLAG_FIN : 0, 4 + headerBlock.length), body, headerBlock]);
}

export function encodeHeaders(streamId: number, headerBlock: Buffer, fin = false): Buffer {
  checkStreamId(streamId);
  const body = Buffer.allocUnsafe(4);
  body.writeUInt32BE(streamId, 0);
  return Buffer.concat([controlHeader(ControlType.headers, fin ? FLAG_FIN : 0, 4 + headerBlock.length), body, headerBlock]);
}

export function encodeRstStream(streamId: number, status: number): Buffer {
  checkStreamId(streamId);
  const b = Buffer.concat([controlHeader(ControlType.rstStream, 0, 8), Buffer.alloc(8)]);
  b.writeUInt32BE(streamId, 8);
  b.writeUInt32BE(status, 12);
  return b;
}

export function encodeSettings(entries: { flags?: number; id: number; value: number }[], clear = false): Buffer {
  const body = Buffer.alloc(4 + entries.length * 8);
  body.writeUInt32BE(entries.length, 0);
  entries.forEach((e, i) => {
    body.writeUInt32BE((((e.flags ?? 0) & 0xff) << 24 | (e.id & 0xffffff)) >>> 0, 4 + i * 8);
    body.writeUInt32BE(e.value >>> 0, 8 + i * 8);
  });
  return Buffer.concat([controlHeader(ControlType.settings, clear ? 1 : 0, body.length), body]);
}

export function encodePing(id: number): Buffer {
  const b = Buffer.concat([controlHeader(ControlType.ping, 0, 4), Buffer.alloc(4)]);
  b.writeUInt32BE(id >>> 0, 8);
  return b;
}

export function encodeGoAway(lastGoodStreamId: number, status: number): Buffer {
  const b = Buffer.concat([controlHeader(ControlType.goAway, 0, 8), Buffer.alloc(8)]);
  b.writeUInt32BE(lastGoodStreamId & STREAM_ID_MASK, 8);
  b.writeUInt32BE(status, 12);
  return b;
}

export function encodeWindowUpdate(streamId: number, delta: number): Buffer {
  checkStreamId(streamId);
  const b = Buffer.concat([controlHeader(ControlType.windowUpdate, 0, 8), Buffer.alloc(8)]);
  b.writeUInt32BE(streamId, 8);
  b.writeUInt32BE(delta & STREAM_ID_MASK, 12);
  return b;
}

/** The 8-byte header of a data frame; the payload follows it on the wire (kept apart so it is never copied). */
export function encodeDataHeader(streamId: number, length: number, fin: boolean): Buffer {
  checkStreamId(streamId);
  if (length > MAX_FRAME_PAYLOAD) throw new RangeError(`spdy data frame of ${length} bytes exceeds the 24-bit length`);
  const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  b.writeUInt32BE(streamId, 0);
  b.writeUInt32BE(((fin ? FLAG_FIN : 0) << 24 | length) >>> 0, 4);
  return b;
}

function need(cond: boolean, message: string): void {
  if (!cond) throw new SpdyProtocolError(message);
}

/** Decodes one control frame's payload; throws SpdyProtocolError for anything the spec calls malformed. */
export function decodeControl(version: number, type: number, flags: number, p: Buffer): ControlFrame {
  need(version === SPDY_VERSION, `unsupported version ${version}`);
  const streamIdAt = (at: number) => p.readUInt32BE(at) & STREAM_ID_MASK;
  switch (type) {
    case ControlType.synStream: {
      need(p.length >= 10, `SYN_STREAM of ${p.length} bytes is too short`);
      const streamId = streamIdAt(0);
      need(streamId !== 0, 'SYN_STREAM for stream 0');
      return {
        type: 'syn_stream',
        streamId,
        associatedId: streamIdAt(4),
        priority: p[8]! >> 5,
        fin: (flags & FLAG_FIN) !== 0,
        unidirectional: (flags & FLAG_UNIDIRECTIONAL) !== 0,
        headerBlock: p.subarray(10),
      };
    }
    case ControlType.synReply:
    case ControlType.headers: {
      const name = type === ControlType.synReply ? 'SYN_REPLY' : 'HEADERS';
      need(p.length >= 4, `${name} of ${p.length} bytes is too short`);
      const streamId = streamIdAt(0);
      need(streamId !== 0, `${name} for stream 0`);
      const fin = (flags & FLAG_FIN) !== 0;
      return type === ControlType.synReply
        ? { type: 'syn_reply', streamId, fin, headerBlock: p.subarray(4) }
        : { type: 'headers', streamId, fin, headerBlock: p.subarray(4) };
    }
    case ControlType.rstStream: {
      need(p.length === 8, `RST_STREAM of ${p.length} bytes (must be 8)`);
      need(flags === 0, 'RST_STREAM with flags');
      const streamId = streamIdAt(0);
      const status = p.readUInt32BE(4);
      need(streamId !== 0, 'RST_STREAM for stream 0');
      need(status !== 0, 'RST_STREAM with status 0');
      return { type: 'rst_stream', streamId, status };
    }
    case ControlType.settings: {
      need(p.length >= 4, `SETTINGS of ${p.length} bytes is too short`);
      const count = p.readUInt32BE(0);
      need(p.length === 4 + count * 8, `SETTINGS of ${p.length} bytes does not hold ${count} entries`);
      const entries = [];
      for (let i = 0; i < count; i++) {
        const word = p.readUInt32BE(4 + i * 8);
        entries.push({ flags: word >>> 24, id: word & 0xffffff, value: p.readUInt32BE(8 + i * 8) });
      }
      return { type: 'settings', clear: (flags & 1) !== 0, entries };
    }
    case ControlType.ping:
      need(p.length === 4, `PING of ${p.length} bytes (must be 4)`);
      need(flags === 0, 'PING with flags');
      return { type: 'ping', id: p.readUInt32BE(0) };
    case ControlType.goAway:
      need(p.length === 8, `GOAWAY of ${p.length} bytes (must be 8)`);
      need(flags === 0, 'GOAWAY with flags');
      return { type: 'goaway', lastGoodStreamId: streamIdAt(0), status: p.readUInt32BE(4) };
    case ControlType.windowUpdate: {
      need(p.length === 8, `WINDOW_UPDATE of ${p.length} bytes (must be 8)`);
      need(flags === 0, 'WINDOW_UPDATE with flags');
      const delta = p.readUInt32BE(4) & STREAM_ID_MASK;
      need(delta !== 0, 'WINDOW_UPDATE with delta 0');
      return { type: 'window_update', streamId: streamIdAt(0), delta };
    }
    default:
      // Spec 2.2.1: a control frame of an unknown type is ignored.
      return { type: 'unknown', frameType: type };
  }
}

/**
 * Cuts a byte stream into frames. Control frames are buffered whole (bounded by maxControlPayload); data frame
 * payloads pass through as they arrive, so a peer's 16 MiB frame costs no 16 MiB buffer.
 */
export class FrameReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes of the current data frame's payload still to come; -1 when between frames. */
  private dataLeft = -1;
  private dataStreamId = 0;
  private dataFin = false;

  constructor(private readonly limits: FrameReaderLimits) {}

  /** Feeds bytes; returns the events they complete. Throws SpdyProtocolError on malformed input. */
  push(chunk: Buffer): FrameEvent[] {
    const events: FrameEvent[] = [];
    if (chunk.length > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
    }
    for (;;) {
      if (this.dataLeft >= 0) {
        if (this.dataLeft === 0) {
          events.push({ kind: 'data', streamId: this.dataStreamId, chunk: Buffer.alloc(0), fin: this.dataFin });
          this.dataLeft = -1;
          continue;
        }
        if (this.pendingBytes === 0) break;
        const piece = this.take(Math.min(this.dataLeft, this.pendingBytes));
        this.dataLeft -= piece.length;
        events.push({ kind: 'data', streamId: this.dataStreamId, chunk: piece, fin: this.dataLeft === 0 && this.dataFin });
        if (this.dataLeft === 0) this.dataLeft = -1;
        continue;
      }
      if (this.pendingBytes < FRAME_HEADER_BYTES) break;
      const head = this.peek(FRAME_HEADER_BYTES);
      const word = head.readUInt32BE(0);
      const flags = head[4]!;
      const length = head.readUInt32BE(4) & 0xffffff;
      if (word & 0x80000000) {
        if (length > this.limits.maxControlPayload) {
          throw new SpdyProtocolError(`control frame of ${length} bytes exceeds the limit of ${this.limits.maxControlPayload}`);
        }
        if (this.pendingBytes < FRAME_HEADER_BYTES + length) break;
        this.take(FRAME_HEADER_BYTES);
        const payload = this.take(length);
        events.push({ kind: 'control', frame: decodeControl((word >>> 16) & 0x7fff, word & 0xffff, flags, payload) });
      } else {
        const streamId = word & STREAM_ID_MASK;
        if (streamId === 0) throw new SpdyProtocolError('data frame for stream 0');
        this.take(FRAME_HEADER_BYTES);
        this.dataStreamId = streamId;
        this.dataFin = (flags & FLAG_FIN) !== 0;
        this.dataLeft = length;
      }
    }
    return events;
  }

  private peek(n: number): Buffer {
    if (this.pending[0]!.length >= n) return this.pending[0]!.subarray(0, n);
    const joined = Buffer.concat(this.pending);
    this.pending = [joined];
    return joined.subarray(0, n);
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.pending[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.pending.shift();
      else this.pending[0] = first.subarray(n);
    } else {
      const parts: Buffer[] = [];
      let left = n;
      while (left > 0) {
        const head = this.pending[0]!;
        if (head.length <= left) {
          parts.push(head);
          this.pending.shift();
          left -= head.length;
        } else {
          parts.push(head.subarray(0, left));
          this.pending[0] = head.subarray(left);
          left = 0;
        }
      }
      out = Buffer.concat(parts);
    }
    this.pendingBytes -= n;
    return out;
  }
}
