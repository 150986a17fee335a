import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import type { Logger } from '../../log.js';
import { GoAwayStatus, RstStatus, SpdyProtocolError } from './errors.js';
import {
  encodeDataHeader,
  encodeGoAway,
  encodePing,
  encodeRstStream,
  encodeSynReply,
  encodeSynStream,
  FrameReader,
  type ControlFrame,
  type FrameEvent,
} from './frames.js';
import { HeaderInflater, StoredZlibWriter } from './header-compression.js';
import { noteSocketRead } from '../read-pressure.js';
import { decodeHeaderBlock, encodeHeaderBlock, type SpdyHeaders } from './header-block.js';

// One SPDY/3.1 connection: frames in and out of a socket, streams as Duplexes.
//
// Flow control: SPDY/3.1 has per-stream and session windows, but the Go peer every k8s client uses
// (moby/spdystream) ignores WINDOW_UPDATE and SETTINGS and never sends WINDOW_UPDATE itself. A sender that waited
// for window credit would stall a Go peer after 64 KiB. So windows are neither enforced nor advertised, and TCP is
// the flow control: when a stream's reader falls behind, the whole socket stops being read (as spdystream stops
// reading its connection when a stream's channel is full); when the socket's send buffer is full, stream writers
// wait for 'drain'.

export interface SessionLimits {
  /** Largest control frame accepted (its header block is compressed, so this bounds inflater input). */
  maxControlPayload: number;
  /** Largest inflated header block. */
  maxHeaderBlockBytes: number;
  maxHeaderPairs: number;
  /** Streams open at once; more are refused with REFUSED_STREAM. */
  maxConcurrentStreams: number;
  /** Outgoing data is cut into frames of at most this many bytes. */
  maxOutgoingDataFrame: number;
}

export const defaultSessionLimits: SessionLimits = {
  maxControlPayload: 64 * 1024,
  maxHeaderBlockBytes: 64 * 1024,
  maxHeaderPairs: 64,
  maxConcurrentStreams: 512,
  maxOutgoingDataFrame: 64 * 1024 - 1,
};

export interface SessionOptions {
  role: 'server' | 'client';
  /** Closes the session after this long without a frame either way; 0 disables. */
  idleTimeoutMs?: number;
  limits?: Partial<SessionLimits>;
  log?: Logger;
}

/** A stream of a session: the readable side is what the peer sends, the writable side what we send. */
export class SpdyStream extends Duplex {
  /** True once the peer reset the stream (its data may be cut short). */
  resetByPeer = false;
  /** Resolves with the peer's SYN_REPLY headers (streams this side opened); rejects when it resets instead. */
  readonly replied: Promise<SpdyHeaders>;
  private resolveReply!: (h: SpdyHeaders) => void;
  private rejectReply!: (e: Error) => void;
  remoteFinished = false;
  localFinished = false;
  private replySent = false;
  private rstSent = false;
  private sink: DataSink | null = null;

  constructor(
    private readonly session: SpdySession,
    readonly id: number,
    readonly headers: SpdyHeaders,
  ) {
    super({ allowHalfOpen: true, emitClose: true });
    this.replied = new Promise((resolve, reject) => {
      this.resolveReply = resolve;
      this.rejectReply = reject;
    });
    this.replied.catch(() => undefined);
  }

  /** First value of a request header (names are lowercase on the wire). */
  header(name: string): string | undefined {
    return this.headers.get(name.toLowerCase())?.[0];
  }

  /** Accepts a stream the peer opened (SYN_REPLY). */
  accept(headers: Iterable<[string, string | string[]]> = []): void {
    if (this.replySent || this.destroyed) return;
    this.replySent = true;
    this.session.sendReply(this.id, headers);
  }

  /** Aborts the stream both ways (RST_STREAM) and destroys it. */
  reset(status: number = RstStatus.cancel): void {
    if (!this.rstSent && !(this.remoteFinished && this.localFinished) && !this.resetByPeer) {
      this.rstSent = true;
      this.session.sendRst(this.id, status);
    }
    this.destroy();
  }

  override _read(): void {
    this.session.unblock(this);
  }

  /**
   * Hands what the peer sends to sink instead of to the Readable side (a relay skips its buffering this way); the
   * Readable side then only ends. The chunks of one read of the connection go to sink.write, then sink.flush says
   * whether it takes more: false holds the connection's reading until resumeDelivery. null drops whatever comes
   * from now on.
   */
  deliverTo(sink: DataSink | null): void {
    const to = sink ?? droppingSink;
    // What came before (e.g. while the relay's other end was being dialed) goes first, in order.
    for (let chunk: Buffer | null; (chunk = this.read() as Buffer | null) !== null;) to.write(chunk);
    this.sink = to;
    this.resume();
    if (to.flush()) this.session.unblock(this);
    else this.session.hold(this);
  }

  /** The sink given to deliverTo takes more again. */
  resumeDelivery(): void {
    this.session.unblock(this);
  }

  /**
   * Sends chunk as data frames at once, past the Writable side's buffering (for a relay that reads into one reused
   * buffer). True when the connection took all of it synchronously: chunk's memory may be reused. False when some
   * is queued: chunk must stay untouched and the caller should produce nothing more until onFlushed is called
   * (once the queued bytes are written; never, if the session dies first, which destroys this stream). The
   * Writable side must not be written to meanwhile (frames would interleave out of order); end() still sends FIN.
   */
  sendNow(chunk: Buffer, onFlushed: () => void): boolean {
    if (this.destroyed || this.localFinished) return true;
    return this.session.sendDataNow(this.id, chunk, onFlushed);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.session.sendData(this.id, chunk, false, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.localFinished = true;
    this.session.sendData(this.id, Buffer.alloc(0), true, () => {
      this.session.maybeForget(this);
      cb();
    });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!(this.remoteFinished && this.localFinished) && !this.resetByPeer && !this.rstSent) {
      this.rstSent = true;
      this.session.sendRst(this.id, RstStatus.cancel);
    }
    this.rejectReply(new Error(`spdy stream ${this.id} closed before its reply`));
    this.session.forget(this);
    cb(err);
  }

  /** @internal */ receiveReply(headers: SpdyHeaders, fin: boolean): void {
    this.resolveReply(headers);
    if (fin) this.receiveFin();
  }

  /** @internal Returns false when the reader is behind (the session then stops reading the socket). */
  receiveData(chunk: Buffer): boolean {
    if (this.destroyed || this.remoteFinished) return true;
    if (!this.sink) return this.push(chunk);
    this.sink.write(chunk);
    this.session.toFlush(this);
    return true;
  }

  /** @internal After a read's chunks went to the sink: false when it is full. */
  flushSink(): boolean {
    return this.destroyed || !this.sink || this.sink.flush();
  }

  /** @internal */ receiveFin(): void {
    if (this.remoteFinished) return;
    this.remoteFinished = true;
    if (!this.destroyed) this.push(null);
    this.session.maybeForget(this);
  }

  /**
   * @internal The connection is gone, but what the peer sent is complete (its FIN came, or it said GOAWAY before
   * closing): the reader still gets every byte already received and then 'end' (a status written just before
   * the close must not be lost); nothing more can be sent, so the stream closes once read to its end.
   */
  endWithConnection(): void {
    this.localFinished = true;
    if (!this.remoteFinished) {
      this.remoteFinished = true;
      if (!this.destroyed) this.push(null);
    }
    this.rejectReply(new Error(`spdy stream ${this.id} ended with its connection before its reply`));
    if (this.destroyed) return;
    if (this.readableEnded) this.destroy();
    else this.once('end', () => this.destroy());
  }

  /** @internal */ receiveReset(): void {
    this.resetByPeer = true;
    this.remoteFinished = true;
    this.rejectReply(new Error(`spdy stream ${this.id} was reset by the peer`));
    this.destroy();
  }
}

/** Where a relay has a stream's incoming data go (SpdyStream.deliverTo). */
export interface DataSink {
  write(chunk: Buffer): void;
  /** Called after the chunks of one read; false when the sink is full (reading waits for resumeDelivery). */
  flush(): boolean;
}

const droppingSink: DataSink = { write: () => undefined, flush: () => true };

type SessionEvents = {
  stream: [SpdyStream];
  close: [Error | null];
};

export class SpdySession extends EventEmitter<SessionEvents> {
  readonly limits: SessionLimits;
  private readonly reader: FrameReader;
  private readonly inflater: HeaderInflater;
  private readonly deflater = new StoredZlibWriter();
  private readonly streams = new Map<number, SpdyStream>();
  private readonly blocked = new Set<SpdyStream>();
  /** Streams whose sink got data since the last flush. */
  private readonly unflushed = new Set<SpdyStream>();
  private readonly drainWaiters: (() => void)[] = [];
  private readonly pings = new Map<number, () => void>();
  private inbox: FrameEvent[] = [];
  private readonly drainedCallbacks: (() => void)[] = [];
  private draining = false;
  private inflating = false;
  private paused = false;
  private lastIncomingId = 0;
  private nextOwnId: number;
  private nextPingId: number;
  private goneAway = false;
  private peerGoneAway = false;
  private closedErr: Error | null | undefined = undefined;
  private idleTimer: NodeJS.Timeout | null = null;
  private lingerTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly socket: Duplex,
    private readonly opts: SessionOptions,
  ) {
    super();
    this.limits = { ...defaultSessionLimits, ...opts.limits };
    this.reader = new FrameReader({ maxControlPayload: this.limits.maxControlPayload });
    this.inflater = new HeaderInflater(this.limits.maxHeaderBlockBytes);
    this.nextOwnId = opts.role === 'client' ? 1 : 2;
    this.nextPingId = opts.role === 'client' ? 1 : 2;
    if (opts.idleTimeoutMs && opts.idleTimeoutMs > 0) {
      this.idleTimer = setTimeout(() => this.destroy(new Error(`spdy session idle for ${opts.idleTimeoutMs} ms`)), opts.idleTimeoutMs);
    }
    socket.on('data', (chunk: Buffer) => this.onBytes(chunk));
    // Frames already read are still handled (their header blocks may be inflating) before the end is.
    socket.on('end', () => this.whenDrained(() => this.onPeerEnd()));
    socket.on('error', (err: Error) => this.destroy(err));
    socket.on('close', () => this.whenDrained(() => this.teardown(null)));
    socket.on('drain', () => this.flushDrainWaiters());
  }

  get closed(): boolean {
    return this.closedErr !== undefined;
  }

  get openStreams(): number {
    return this.streams.size;
  }

  /** Bytes that arrived with the HTTP upgrade response/request, before the socket was handed over. */
  feed(head: Buffer): void {
    if (head.length > 0) this.onBytes(head);
  }

  /** Opens a stream to the peer (SYN_STREAM). */
  openStream(headers: Iterable<[string, string | string[]]>, opts: { fin?: boolean } = {}): SpdyStream {
    if (this.closed || this.goneAway || this.peerGoneAway) throw new Error('spdy session is closing');
    const id = this.nextOwnId;
    this.nextOwnId += 2;
    const list = [...headers];
    const stream = new SpdyStream(this, id, new Map(list.map(([k, v]) => [k.toLowerCase(), Array.isArray(v) ? v : [v]])));
    this.streams.set(id, stream);
    this.writeFrame(encodeSynStream(id, this.deflater.encode(encodeHeaderBlock(list)), { fin: opts.fin }));
    if (opts.fin) {
      stream.localFinished = true;
      stream.end();
    }
    return stream;
  }

  /** Round trip of a PING; resolves with milliseconds. */
  ping(): Promise<number> {
    const id = this.nextPingId;
    this.nextPingId = (this.nextPingId + 2) >>> 0 || (this.opts.role === 'client' ? 1 : 2);
    const started = performance.now();
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new Error('spdy session closed'));
      this.pings.set(id, () => resolve(performance.now() - started));
      this.writeFrame(encodePing(id));
    });
  }

  /** Graceful end: GOAWAY, then the socket is ended once written; the peer's last bytes are read and dropped. */
  close(): void {
    if (this.closed) return;
    if (!this.goneAway) {
      this.goneAway = true;
      this.writeFrame(encodeGoAway(this.lastIncomingId, GoAwayStatus.ok));
    }
    for (const s of [...this.streams.values()]) s.destroy();
    this.blocked.clear();
    this.updateFlow();
    // A peer that never closes its side must not hold the socket (and berth's fd) forever. The wait starts once what
    // was written before the close is in the kernel: a slow reader still taking its output (kubectl cp) would lose
    // the end of it to a destroy. A peer that takes nothing at all is ended by the idle timeout.
    this.socket.end(() => {
      if (!this.closed) this.lingerTimer ??= setTimeout(() => this.socket.destroy(), 2000);
    });
  }

  destroy(err?: Error): void {
    if (this.closed) return;
    this.socket.destroy();
    this.teardown(err ?? null);
  }

  /** @internal */ sendReply(id: number, headers: Iterable<[string, string | string[]]>): void {
    this.writeFrame(encodeSynReply(id, this.deflater.encode(encodeHeaderBlock(headers))));
  }

  /** @internal */ sendRst(id: number, status: number): void {
    this.writeFrame(encodeRstStream(id, status));
  }

  /** @internal */ sendData(id: number, data: Buffer, fin: boolean, cb: () => void): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return cb();
    const ok = this.writeDataFrames(id, data, fin);
    if (ok || this.socket.writableLength === 0) cb();
    else this.drainWaiters.push(cb);
  }

  /** @internal True when the socket took every byte synchronously (nothing of data is referenced any more). */
  sendDataNow(id: number, data: Buffer, onFlushed: () => void): boolean {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return true;
    let returned = false;
    let flushed = false;
    this.writeDataFrames(id, data, false, () => {
      if (returned && !flushed) onFlushed();
    });
    flushed = this.socket.writableLength === 0;
    returned = true;
    return flushed;
  }

  /** One corked write of data as frames of at most maxOutgoingDataFrame bytes; returns the last write()'s verdict. */
  private writeDataFrames(id: number, data: Buffer, fin: boolean, written?: () => void): boolean {
    this.touch();
    const max = this.limits.maxOutgoingDataFrame;
    let ok = true;
    this.socket.cork();
    if (data.length === 0) {
      ok = this.socket.write(encodeDataHeader(id, 0, fin), written);
    } else {
      for (let at = 0; at < data.length; at += max) {
        const piece = data.subarray(at, at + max);
        const last = at + max >= data.length;
        this.socket.write(encodeDataHeader(id, piece.length, fin && last));
        ok = this.socket.write(piece, last ? written : undefined);
      }
    }
    this.socket.uncork();
    return ok;
  }

  /** @internal */ toFlush(stream: SpdyStream): void {
    this.unflushed.add(stream);
  }

  /** @internal The stream's sink is full: stop reading the socket until unblock. */
  hold(stream: SpdyStream): void {
    this.blocked.add(stream);
    this.updateFlow();
  }

  /** Flushes the sinks that got data: one write of the relay's per read of the connection, not one per frame. */
  private flushSinks(): void {
    if (this.unflushed.size === 0) return;
    for (const stream of this.unflushed) if (!stream.flushSink()) this.blocked.add(stream);
    this.unflushed.clear();
    this.updateFlow();
  }

  /** @internal A stream's reader asked for more: read the socket again if nothing else holds it. */
  unblock(stream: SpdyStream): void {
    if (this.blocked.delete(stream)) this.updateFlow();
  }

  /** @internal */ maybeForget(stream: SpdyStream): void {
    if (stream.remoteFinished && stream.localFinished) this.forget(stream);
  }

  /** @internal */ forget(stream: SpdyStream): void {
    if (this.streams.get(stream.id) === stream) this.streams.delete(stream.id);
    if (this.blocked.delete(stream)) this.updateFlow();
    if (this.peerGoneAway && this.streams.size === 0) this.close();
  }

  private writeFrame(frame: Buffer): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    this.touch();
    this.socket.write(frame);
  }

  private touch(): void {
    this.idleTimer?.refresh();
  }

  private flushDrainWaiters(): void {
    const waiters = this.drainWaiters.splice(0);
    for (const w of waiters) w();
  }

  private updateFlow(): void {
    const hold = !this.closed && (this.blocked.size > 0 || this.inflating);
    if (hold && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!hold && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private onPeerEnd(): void {
    // The peer will send nothing more: streams it left open can never finish.
    if (this.goneAway) this.socket.destroy();
    else this.destroy(this.peerGoneAway ? undefined : new Error('spdy peer closed the connection'));
  }

  private onBytes(chunk: Buffer): void {
    if (this.closed) return;
    noteSocketRead(chunk.length);
    this.touch();
    if (this.goneAway && this.streams.size === 0) return; // closing: read and drop
    let events: FrameEvent[];
    try {
      events = this.reader.push(chunk);
    } catch (err) {
      return this.protocolError(err as Error);
    }
    if (events.length === 0) return;
    this.inbox.push(...events);
    void this.drain();
  }

  private whenDrained(fn: () => void): void {
    if (!this.draining && this.inbox.length === 0) fn();
    else this.drainedCallbacks.push(fn);
  }

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.inbox.length > 0 && !this.closed) {
        const ev = this.inbox.shift()!;
        if (ev.kind === 'data') {
          this.onDataEvent(ev.streamId, ev.chunk, ev.fin);
          continue;
        }
        const f = ev.frame;
        if (f.type === 'syn_stream' || f.type === 'syn_reply' || f.type === 'headers') {
          this.flushSinks();
          // Every block must go through the inflater in order, even for a frame we then drop, or the
          // context and the peer's deflater part ways.
          this.inflating = true;
          this.updateFlow();
          let headers: SpdyHeaders;
          try {
            const block = await this.inflater.inflateBlock(f.headerBlock);
            headers = decodeHeaderBlock(block, { maxPairs: this.limits.maxHeaderPairs, maxBlockBytes: this.limits.maxHeaderBlockBytes });
          } finally {
            this.inflating = false;
            this.updateFlow();
          }
          if (this.closed) return;
          this.onHeaderFrame(f, headers);
        } else {
          this.onControl(f);
        }
      }
      this.flushSinks();
    } catch (err) {
      this.protocolError(err as Error);
    } finally {
      this.draining = false;
    }
    if (this.inbox.length === 0 || this.closed) {
      for (const fn of this.drainedCallbacks.splice(0)) fn();
    }
  }

  private onDataEvent(streamId: number, chunk: Buffer, fin: boolean): void {
    const stream = this.streams.get(streamId);
    if (!stream) return; // reset or finished meanwhile: spdystream drops these too
    if (stream.remoteFinished) {
      if (chunk.length > 0) stream.reset(RstStatus.streamAlreadyClosed);
      return;
    }
    if (chunk.length > 0 && !stream.receiveData(chunk)) {
      this.blocked.add(stream);
      this.updateFlow();
    }
    if (fin) stream.receiveFin();
  }

  private onHeaderFrame(f: Extract<ControlFrame, { type: 'syn_stream' | 'syn_reply' | 'headers' }>, headers: SpdyHeaders): void {
    if (f.type === 'syn_stream') {
      const peerParity = this.opts.role === 'server' ? 1 : 0;
      if (f.streamId % 2 !== peerParity || f.streamId <= this.lastIncomingId) {
        throw new SpdyProtocolError(`stream id ${f.streamId} is not a new id of the peer (last ${this.lastIncomingId})`);
      }
      this.lastIncomingId = f.streamId;
      if (this.goneAway || this.peerGoneAway) return this.sendRst(f.streamId, RstStatus.refusedStream);
      if (f.unidirectional || f.associatedId !== 0) return this.sendRst(f.streamId, RstStatus.protocolError);
      if (this.streams.size >= this.limits.maxConcurrentStreams) return this.sendRst(f.streamId, RstStatus.refusedStream);
      const stream = new SpdyStream(this, f.streamId, headers);
      this.streams.set(f.streamId, stream);
      if (f.fin) stream.receiveFin();
      if (this.listenerCount('stream') === 0) stream.reset(RstStatus.refusedStream);
      else this.emit('stream', stream);
      return;
    }
    const stream = this.streams.get(f.streamId);
    if (!stream) return;
    if (f.type === 'syn_reply') stream.receiveReply(headers, f.fin);
    else if (f.fin) stream.receiveFin();
  }

  private onControl(f: ControlFrame): void {
    switch (f.type) {
      case 'rst_stream':
        this.streams.get(f.streamId)?.receiveReset();
        return;
      case 'ping': {
        const ownParity = this.opts.role === 'client' ? 1 : 0;
        if (f.id % 2 !== ownParity) {
          this.writeFrame(encodePing(f.id));
          return;
        }
        const done = this.pings.get(f.id);
        this.pings.delete(f.id);
        done?.();
        return;
      }
      case 'goaway':
        this.peerGoneAway = true;
        if (this.streams.size === 0) this.close();
        return;
      // SETTINGS and WINDOW_UPDATE: see the flow-control note at the top. Unknown types are ignored (spec 2.2.1).
      default:
        return;
    }
  }

  private protocolError(err: Error): void {
    if (this.closed) return;
    this.opts.log?.warn('spdy protocol error, closing the session', { error: err.message });
    if (!this.goneAway) {
      this.goneAway = true;
      this.writeFrame(encodeGoAway(this.lastIncomingId, GoAwayStatus.protocolError));
    }
    // Flush the GOAWAY, then drop the connection; nothing more from this peer is read.
    this.socket.end(() => this.socket.destroy());
    this.teardown(err);
  }

  private teardown(err: Error | null): void {
    if (this.closed) return;
    this.closedErr = err;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.idleTimer = this.lingerTimer = null;
    this.inbox = [];
    this.inflater.close();
    this.blocked.clear();
    this.unflushed.clear();
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const s of streams) {
      if (s.remoteFinished || (err === null && this.peerGoneAway)) {
        s.endWithConnection();
      } else {
        // The peer vanished mid-stream: its data is cut short, which the reader must not take for a clean end.
        s.remoteFinished = true;
        s.destroy();
      }
    }
    this.flushDrainWaiters();
    for (const done of this.pings.values()) done();
    this.pings.clear();
    this.emit('close', err);
  }
}

