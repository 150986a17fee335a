import { Writable } from 'node:stream';
import type { WebSocket, RawData } from 'ws';
import { noteSocketRead } from './read-pressure.js';

// k8s' channel protocol over one WebSocket (apimachinery's wsstream): every message starts with its channel number,
// a raw byte in the binary protocols, an ASCII digit followed by base64 in the base64 ones (sent as text frames).
// v5.channel.k8s.io adds one control message, [255, channel]: the client closed its side of that channel (stdin).
// This class does the framing and the flow control; what the channels mean is the session's business.

/** Bytes queued towards the client beyond which writers wait: a slow client must not make berth buffer output. */
const HIGH_WATER = 1 << 20;
/** How long a client may take to answer the close frame once everything before it was written to the socket. */
const CLOSE_ANSWER_MS = 5000;
const STREAM_CLOSE = 255;

export interface ChannelCodec {
  /** Raw channel bytes (binary frames) or digit + base64 (text frames). */
  binary: boolean;
  /** Whether the client may send the [255, channel] close signal (v5.channel.k8s.io only, as in kubelet). */
  closeSignal: boolean;
}

export interface ChannelHandlers {
  onData(channel: number, data: Buffer): void;
  onChannelClosed(channel: number): void;
}

export class ChannelConn {
  private handlers: ChannelHandlers = { onData: () => {}, onChannelClosed: () => {} };
  private readonly waiting: (() => void)[] = [];
  private holds = 0;
  /** Messages handed to ws and not yet written to the socket. */
  private unwritten = 0;
  /** After close(): ends a connection whose client stopped taking what is queued or never answers the close. */
  private closeTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly idle: NodeJS.Timeout;
  private readonly closedListeners: (() => void)[] = [];

  constructor(
    private readonly ws: WebSocket,
    private readonly codec: ChannelCodec,
    private readonly idleTimeoutMs: number,
    onIdle: () => void,
  ) {
    this.idle = setTimeout(() => {
      onIdle();
      this.close(1000, 'idle timeout');
    }, idleTimeoutMs);
    this.idle.unref();
    ws.on('message', (data) => this.receive(data));
    ws.on('error', () => this.ws.terminate());
    ws.on('close', () => this.finish());
  }

  setHandlers(handlers: ChannelHandlers): void {
    this.handlers = handlers;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  onClosed(listener: () => void): void {
    if (this.closed) listener();
    else this.closedListeners.push(listener);
  }

  /**
   * Sends data on a channel; `accepted` is called once the client is keeping up (at once unless over HIGH_WATER
   * bytes are queued), or when the connection is gone: data sent then is dropped.
   */
  send(channel: number, data: Buffer, accepted?: () => void): void {
    if (this.closed) {
      accepted?.();
      return;
    }
    this.idle.refresh();
    const frame = this.codec.binary
      ? Buffer.concat([Buffer.of(channel), data])
      : String.fromCharCode(48 + channel) + data.toString('base64');
    this.unwritten++;
    this.ws.send(frame, { binary: this.codec.binary }, () => {
      this.unwritten--;
      if (this.closeTimer) this.armCloseTimer();
      this.release();
    });
    if (!accepted) return;
    if (this.ws.bufferedAmount < HIGH_WATER) accepted();
    else this.waiting.push(accepted);
  }

  /** A Writable onto one channel whose writes complete as the client takes the data (backpressure). */
  writer(channel: number): Writable {
    return new Writable({
      highWaterMark: 64 * 1024,
      write: (chunk: Buffer, _encoding, callback) => this.send(channel, chunk, () => callback()),
    });
  }

  /** Stops reading from the client until the returned function is called (a consumer that is full). */
  hold(): () => void {
    if (this.holds++ === 0 && !this.closed) this.ws.pause();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holds === 0 && !this.closed) this.ws.resume();
    };
  }

  close(code = 1000, reason = ''): void {
    if (this.closed) return;
    this.ws.close(code, reason);
    this.armCloseTimer();
    this.ws.once('close', () => {
      if (this.closeTimer) clearTimeout(this.closeTimer);
      this.closeTimer = null;
    });
    this.finish();
  }

  /** Drops the connection without a close handshake (berth is going away and will not wait). */
  terminate(): void {
    this.ws.terminate();
    this.finish();
  }

  /**
   * A client that never answers the close frame must not keep the socket (and the session) alive. While output
   * queued before the close is still being written, the client is reading it (a slow kubectl cp) and terminating
   * would drop its end: then only a client that takes nothing for the idle timeout is dropped.
   */
  private armCloseTimer(): void {
    if (this.closeTimer) clearTimeout(this.closeTimer);
    this.closeTimer = setTimeout(() => this.ws.terminate(), this.unwritten === 0 ? CLOSE_ANSWER_MS : this.idleTimeoutMs);
    this.closeTimer.unref();
  }

  private release(): void {
    while (this.waiting.length > 0 && (this.closed || this.ws.bufferedAmount < HIGH_WATER)) this.waiting.shift()!();
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.idle);
    this.release();
    for (const listener of this.closedListeners.splice(0)) listener();
  }

  private receive(raw: RawData): void {
    const data = Array.isArray(raw) ? Buffer.concat(raw) : Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
    this.idle.refresh();
    noteSocketRead(data.length);
    if (data.length === 0) return;
    if (this.codec.closeSignal && data[0] === STREAM_CLOSE) {
      if (data.length !== 2) {
        this.close(1002, 'a stream close signal carries exactly one channel byte');
        return;
      }
      this.handlers.onChannelClosed(data[1]);
      return;
    }
    if (this.codec.binary) {
      this.handlers.onData(data[0], data.subarray(1));
      return;
    }
    // base64 protocols: "<digit><base64>" (a text frame; a binary one is read the same way).
    const channel = data[0] - 48;
    if (channel < 0 || channel > 9) return;
    this.handlers.onData(channel, Buffer.from(data.subarray(1).toString('latin1'), 'base64'));
  }
}
