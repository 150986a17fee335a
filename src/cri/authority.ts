import { Duplex } from 'node:stream';
import net from 'node:net';
import { createRequire } from 'node:module';

// Older grpc-go clients (crictl/critest v1.26, kubelets before 1.26) send the unix socket path as `:authority`.
// Node's HTTP/2 (nghttp2) rejects a '/' in it with RST_STREAM PROTOCOL_ERROR, and nothing in Node turns that check
// off. So each connection passes through this filter: it watches the client's header blocks and, if a connection's
// first request carries such an authority, rewrites that connection's header blocks with `:authority: localhost`.
// Connections from clients that send a valid authority are detected on their first request and then handed to
// grpc-js as the socket itself (serveConnection): a socket wrapped in JS streams costs every RPC on it ~0.2 ms of
// CPU more (measured: an empty unary call 0.43 against 0.62 ms of server CPU), because HTTP/2 then reads and writes
// through a JS stream instead of the socket's handle.
//
// Deciding needs the first request's headers, but a grpc-go client sends them only after the server's connection
// preface (a SETTINGS frame), and the server's HTTP/2 session cannot start before the decision. So berth sends that
// preface itself, an empty SETTINGS frame, and takes the client's acknowledgement of it out of the stream: the
// session, which sends its own SETTINGS as a server may, sees only the acknowledgements of its own.

const require = createRequire(import.meta.url);
const hpack = require('hpack.js') as {
  decompressor: { create(o: { table: { size: number } }): Decompressor };
};
interface Decompressor {
  write(b: Buffer): void;
  execute(): void;
  read(): { name: string; value: string } | null;
  updateTableSize(size: number): void;
}

const PREFACE_LENGTH = 24;
const FRAME_HEADER = 9;
const TYPE_HEADERS = 0x1;
const TYPE_SETTINGS = 0x4;
const TYPE_CONTINUATION = 0x9;
const FLAG_END_STREAM = 0x1;
const FLAG_ACK = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;
// Node's default SETTINGS_MAX_FRAME_SIZE and SETTINGS_HEADER_TABLE_SIZE, which berth's server does not change.
const MAX_FRAME = 16384;
const TABLE_SIZE = 4096;

const validAuthority = /^[A-Za-z0-9\-._~!$&'()*+,;=:%@[\]]*$/;

function encodeInteger(value: number, prefixBits: number, firstByte: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [firstByte | value];
  const out = [firstByte | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

/** HPACK "literal header field without indexing, new name": keeps the server's dynamic table untouched. */
export function encodeHeaderBlock(headers: { name: string; value: string }[]): Buffer {
  const parts: Buffer[] = [];
  for (const { name, value } of headers) {
    const n = Buffer.from(name, 'latin1');
    const v = Buffer.from(value, 'latin1');
    parts.push(Buffer.from([0x00]), Buffer.from(encodeInteger(n.length, 7, 0)), n, Buffer.from(encodeInteger(v.length, 7, 0)), v);
  }
  return Buffer.concat(parts);
}

function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(FRAME_HEADER);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([header, payload]);
}

type Mode = 'undecided' | 'rewrite' | 'passthrough';

/** The server connection preface berth sends before the HTTP/2 session starts: an empty SETTINGS frame. */
export const EMPTY_SETTINGS = Buffer.from([0, 0, 0, TYPE_SETTINGS, 0, 0, 0, 0, 0]);

/** Transforms the client→server byte stream of one HTTP/2 connection. Pure: feed bytes, get bytes. */
export class AuthorityRewriter {
  private mode: Mode = 'undecided';
  private pending: Buffer = Buffer.alloc(0);
  private prefaceLeft = PREFACE_LENGTH;
  private readonly decoder = hpack.decompressor.create({ table: { size: TABLE_SIZE } });
  private block: { streamId: number; flags: number; fragments: Buffer[]; raw: Buffer[] } | undefined;
  /** Whether the client's acknowledgement of berth's own EMPTY_SETTINGS is still to be taken out. */
  private ackPending: boolean;

  /** `ownSettings`: berth sent EMPTY_SETTINGS on the connection, so the client's first SETTINGS ACK is dropped. */
  constructor(opts: { ownSettings?: boolean } = {}) {
    this.ackPending = opts.ownSettings ?? false;
  }

  get decided(): Mode {
    return this.mode;
  }

  /** Whether the client's acknowledgement of berth's own SETTINGS has been taken out (always, without them). */
  get ownSettingsAcknowledged(): boolean {
    return !this.ackPending;
  }

  /** The bytes of an incomplete frame held back so far, given up (the socket is handed on as is). */
  takePending(): Buffer {
    const rest = this.pending;
    this.pending = Buffer.alloc(0);
    return rest;
  }

  push(chunk: Buffer): Buffer {
    if (this.mode === 'passthrough' && !this.ackPending && this.pending.length === 0) return chunk;
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const out: Buffer[] = [];
    if (this.prefaceLeft > 0) {
      const take = Math.min(this.prefaceLeft, this.pending.length);
      out.push(this.pending.subarray(0, take));
      this.pending = this.pending.subarray(take);
      this.prefaceLeft -= take;
    }
    while (this.prefaceLeft === 0 && this.pending.length >= FRAME_HEADER) {
      if (this.mode === 'passthrough' && !this.ackPending) {
        out.push(this.pending);
        this.pending = Buffer.alloc(0);
        break;
      }
      const length = this.pending.readUIntBE(0, 3);
      if (this.pending.length < FRAME_HEADER + length) break;
      const raw = this.pending.subarray(0, FRAME_HEADER + length);
      this.pending = this.pending.subarray(FRAME_HEADER + length);
      if (this.ackPending && raw[3] === TYPE_SETTINGS && raw[4] & FLAG_ACK) {
        this.ackPending = false;
        continue;
      }
      out.push(this.mode === 'passthrough' ? raw : this.onFrame(raw));
    }
    return Buffer.concat(out);
  }

  private onFrame(raw: Buffer): Buffer {
    const type = raw[3];
    const flags = raw[4];
    const streamId = raw.readUInt32BE(5) & 0x7fffffff;
    let payload = raw.subarray(FRAME_HEADER);
    if (type === TYPE_HEADERS) {
      let start = 0;
      let end = payload.length;
      if (flags & FLAG_PADDED) {
        start = 1;
        end -= payload[0];
      }
      if (flags & FLAG_PRIORITY) start += 5;
      payload = payload.subarray(start, Math.max(start, end));
      this.block = { streamId, flags, fragments: [payload], raw: [raw] };
    } else if (type === TYPE_CONTINUATION && this.block) {
      this.block.fragments.push(payload);
      this.block.raw.push(raw);
    } else {
      return raw;
    }
    if (!(flags & FLAG_END_HEADERS)) return Buffer.alloc(0);
    const block = this.block!;
    this.block = undefined;
    this.decoder.write(Buffer.concat(block.fragments));
    this.decoder.execute();
    const headers: { name: string; value: string }[] = [];
    for (let h = this.decoder.read(); h; h = this.decoder.read()) headers.push({ name: h.name, value: h.value });
    if (this.mode === 'undecided') {
      const authority = headers.find((h) => h.name === ':authority')?.value ?? '';
      this.mode = validAuthority.test(authority) ? 'passthrough' : 'rewrite';
      // The block went through our decoder and will reach the server unchanged: both tables stay in step.
      if (this.mode === 'passthrough') return Buffer.concat(block.raw);
    }
    for (const h of headers) if (h.name === ':authority' && !validAuthority.test(h.value)) h.value = 'localhost';
    const encoded = encodeHeaderBlock(headers);
    const frames: Buffer[] = [];
    let offset = 0;
    do {
      const piece = encoded.subarray(offset, offset + MAX_FRAME);
      const first = offset === 0;
      offset += MAX_FRAME;
      const f = (first ? block.flags & FLAG_END_STREAM : 0) | (offset >= encoded.length ? FLAG_END_HEADERS : 0);
      frames.push(frame(first ? TYPE_HEADERS : TYPE_CONTINUATION, f, block.streamId, piece));
    } while (offset < encoded.length);
    return Buffer.concat(frames);
  }
}

/** How long a passthrough connection waits for the acknowledgement of berth's SETTINGS before the slower path. */
const ACK_WAIT_MS = 1000;

/**
 * Hands an accepted socket to `serve` once its first request has shown its authority: the socket itself when that is
 * valid and the client has acknowledged berth's preface, else a stream that rewrites (fixAuthority).
 */
export function serveConnection(socket: net.Socket, serve: (conn: net.Socket | Duplex) => void, ackWaitMs = ACK_WAIT_MS): void {
  const rewriter = new AuthorityRewriter({ ownSettings: true });
  const passed: Buffer[] = [];
  let timer: NodeJS.Timeout | undefined;
  const stopWatching = () => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('error', onGone);
    socket.off('close', onGone);
  };
  const handOver = (raw: boolean) => {
    stopWatching();
    socket.pause();
    const bytes = Buffer.concat(passed);
    if (raw) {
      const rest = Buffer.concat([bytes, rewriter.takePending()]);
      if (rest.length > 0) socket.unshift(rest);
      serve(socket);
    } else {
      serve(fixAuthority(socket, rewriter, bytes));
    }
  };
  const onData = (chunk: Buffer) => {
    try {
      passed.push(rewriter.push(chunk));
    } catch (err) {
      stopWatching();
      socket.destroy(err as Error);
      return;
    }
    if (rewriter.decided === 'rewrite') handOver(false);
    else if (rewriter.decided === 'passthrough') {
      if (rewriter.ownSettingsAcknowledged) handOver(true);
      // A client that sent its request before reading berth's SETTINGS acknowledges them in a later chunk.
      else timer ??= setTimeout(() => handOver(false), ackWaitMs);
    }
  };
  // Gone before its first request (a probe that connects and closes): nothing to serve.
  const onGone = () => {
    stopWatching();
    socket.destroy();
  };
  socket.on('data', onData);
  socket.on('error', onGone);
  socket.on('close', onGone);
  socket.write(EMPTY_SETTINGS);
}

/**
 * Wraps an accepted socket so grpc-js sees the rewritten client stream; `rewriter` and `passed` continue what
 * serveConnection began (the rewriter's state and the bytes it already let through).
 */
export function fixAuthority(socket: net.Socket, rewriter = new AuthorityRewriter(), passed?: Buffer): Duplex {
  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _enc, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      socket.end(callback);
    },
    destroy(err, callback) {
      socket.destroy(err ?? undefined);
      callback(err);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    let out: Buffer;
    try {
      out = rewriter.push(chunk);
    } catch (err) {
      socket.destroy(err as Error);
      return;
    }
    if (out.length > 0 && !duplex.push(out)) socket.pause();
  });
  socket.on('end', () => duplex.push(null));
  socket.on('error', (err) => duplex.destroy(err));
  socket.on('close', () => duplex.destroy());
  if (passed && passed.length > 0) duplex.push(passed);
  return duplex;
}
