import http from 'node:http';
import https from 'node:https';
import { createHash, randomBytes } from 'node:crypto';
import { Duplex, Readable } from 'node:stream';
import type { StatusObject } from '../status.js';
import type { TerminalSize } from '../types.js';
import { SpdySession, type SpdyStream } from './session.js';

// A client for CRI streaming URLs over SPDY/3.1, speaking k8s' remotecommand and portforward the way client-go does
// (one stream per channel, streamtype headers; a data + error pair per forwarded connection). berth itself never
// dials these URLs: the tests and the bench do, against berth and against other runtimes' streaming servers, so it
// lives here beside the server side of the same framing rather than under test/.

export interface SpdyConnection {
  session: SpdySession;
  socket: Duplex;
  protocol: string;
}

export class UpgradeRefused extends Error {
  constructor(
    readonly status: number,
    readonly headers: http.IncomingHttpHeaders,
    readonly body: string,
  ) {
    super(`upgrade refused: HTTP ${status}: ${body.trim()}`);
  }
}

/** Upgrades a request to SPDY/3.1 offering protocols (in preference order); rejects with UpgradeRefused. */
export function spdyConnect(url: string, protocols: string[], extraHeaders: Record<string, string> = {}): Promise<SpdyConnection> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { Connection: 'Upgrade', Upgrade: 'SPDY/3.1', ...extraHeaders };
    if (protocols.length > 0) headers['X-Stream-Protocol-Version'] = protocols;
    // kubelet's streaming server (and so containerd's) serves plain HTTP unless given a certificate; berth may use TLS.
    const request = new URL(url).protocol === 'https:' ? https.request : http.request;
    const req = request(url, { method: 'POST', headers, agent: false });
    req.on('upgrade', (res, socket, head) => {
      const session = new SpdySession(socket, { role: 'client' });
      session.feed(head);
      resolve({ session, socket, protocol: String(res.headers['x-stream-protocol-version'] ?? '') });
    });
    req.on('response', (res) => rejectWithBody(res, reject));
    req.on('error', reject);
    req.end();
  });
}

/** A plain answer instead of an upgrade: the server refused; its body says why. */
function rejectWithBody(res: http.IncomingMessage, reject: (err: Error) => void): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  res.on('end', () => reject(new UpgradeRefused(res.statusCode ?? 0, res.headers, Buffer.concat(chunks).toString())));
}

export interface RemoteCommandOptions {
  protocols?: string[];
  /** Sent, then the stream is closed (EOF); a Readable is piped. Omit for no stdin stream. */
  stdin?: Buffer | string | Readable;
  stdout?: boolean;
  stderr?: boolean;
  tty?: boolean;
  /** Sent on the resize stream (v3+ with tty), one JSON object each, as client-go writes them. */
  resizes?: TerminalSize[];
  /** Called once the streams are up, with them, for tests that drive a session by hand. */
  onStreams?(streams: Map<string, SpdyStream>, conn: SpdyConnection): void;
}

export interface RemoteCommandResult {
  protocol: string;
  stdout: Buffer;
  stderr: Buffer;
  /** The error stream's bytes as text. */
  errorText: string;
  /** Parsed from the error stream with v4 and later. */
  status: StatusObject | null;
  /** As kubectl reads it: 0 on success, the ExitCode cause on NonZeroExitCode; null for any other error. */
  exitCode: number | null;
}

export const allRemoteCommandProtocols = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'];

function collect(stream: SpdyStream | undefined): Promise<Buffer> {
  if (!stream) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

/** Runs one exec or attach session to its end. */
export async function spdyRemoteCommand(url: string, opts: RemoteCommandOptions = {}): Promise<RemoteCommandResult> {
  const conn = await spdyConnect(url, opts.protocols ?? allRemoteCommandProtocols);
  const { session, protocol } = conn;
  const wantStdout = opts.stdout ?? true;
  const wantStderr = (opts.stderr ?? true) && !opts.tty;
  const types = ['error'];
  if (opts.stdin !== undefined) types.push('stdin');
  if (wantStdout) types.push('stdout');
  if (wantStderr) types.push('stderr');
  const resizeSupported = protocol === 'v3.channel.k8s.io' || protocol === 'v4.channel.k8s.io' || protocol === 'v5.channel.k8s.io';
  if (opts.tty && resizeSupported) types.push('resize');
  const streams = new Map<string, SpdyStream>();
  for (const type of types) streams.set(type, session.openStream([['streamtype', type]]));
  await Promise.all([...streams.values()].map((s) => s.replied));

  const errorBytes = collect(streams.get('error'));
  const stdout = collect(streams.get('stdout'));
  const stderr = collect(streams.get('stderr'));
  // Like client-go, this side only writes on stdin and resize.
  streams.get('error')!.end();
  opts.onStreams?.(streams, conn);
  const resize = streams.get('resize');
  if (resize) for (const size of opts.resizes ?? []) resize.write(JSON.stringify({ Width: size.width, Height: size.height }) + '\n');
  const stdinStream = streams.get('stdin');
  if (stdinStream && opts.stdin !== undefined) {
    if (opts.stdin instanceof Readable) opts.stdin.pipe(stdinStream);
    else stdinStream.end(opts.stdin);
  }

  const [out, err, errText] = await Promise.all([stdout, stderr, errorBytes]);
  session.close();
  const errorText = errText.toString();
  let status: StatusObject | null = null;
  let exitCode: number | null = errorText === '' ? 0 : null;
  if (protocol === 'v4.channel.k8s.io' || protocol === 'v5.channel.k8s.io') {
    status = errorText === '' ? null : (JSON.parse(errorText) as StatusObject);
    // client-go reads an error stream closed without a status as success, in every version: kubelet's streaming
    // server (containerd's) sometimes ends it so.
    exitCode = errorText === '' ? 0 : null;
    if (status?.status === 'Success') exitCode = 0;
    else if (status?.reason === 'NonZeroExitCode') {
      const cause = status.details?.causes.find((c) => c.reason === 'ExitCode');
      if (cause) exitCode = Number(cause.message);
    }
  }
  return { protocol, stdout: out, stderr: err, errorText, status, exitCode };
}

export interface ForwardedConnection {
  data: SpdyStream;
  /** The error stream's text once the server closes it ('' when the connection ended cleanly). */
  error: Promise<string>;
}

export interface PortForwardClient extends SpdyConnection {
  /** Opens the error and data streams of one forwarded connection to port (a string sends it verbatim). */
  connect(port: number | string): Promise<ForwardedConnection>;
  close(): void;
}

export async function spdyPortForward(url: string): Promise<PortForwardClient> {
  return portForwardOver(await spdyConnect(url, ['portforward.k8s.io']));
}

/**
 * Port-forward as client-go 1.30+ dials it for `--transport websocket`: the same SPDY session, carried in WebSocket
 * binary messages under the subprotocol SPDY/3.1+portforward.k8s.io (KEP-4006).
 */
export async function spdyOverWebSocketPortForward(url: string): Promise<PortForwardClient> {
  const tunnel = await webSocketTunnel(url, 'SPDY/3.1+portforward.k8s.io');
  const session = new SpdySession(tunnel, { role: 'client' });
  return portForwardOver({ session, socket: tunnel, protocol: 'portforward.k8s.io' });
}

function portForwardOver(conn: SpdyConnection): PortForwardClient {
  let requestId = 0;
  return {
    ...conn,
    async connect(port) {
      const id = String(requestId++);
      const headers: [string, string][] = [
        ['streamtype', 'error'],
        ['port', String(port)],
        ['requestid', id],
      ];
      const error = conn.session.openStream(headers);
      await error.replied;
      error.end(); // client-go never writes on it
      const errorText = collect(error).then((b) => b.toString());
      const data = conn.session.openStream([['streamtype', 'data'], ['port', String(port)], ['requestid', id]]);
      await data.replied;
      return { data, error: errorText };
    },
    close() {
      conn.session.close();
    },
  };
}

/**
 * A WebSocket client reduced to a byte stream: every write is one masked binary message, every binary message read
 * is bytes (the `ws` client cannot offer a subprotocol with a "/" in it, which this one must).
 */
function webSocketTunnel(url: string, subprotocol: string): Promise<Duplex> {
  const key = randomBytes(16).toString('base64');
  return new Promise((resolve, reject) => {
    const req = http.request(url.replace(/^ws/, 'http'), {
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': key, 'Sec-WebSocket-Protocol': subprotocol },
      agent: false,
    });
    req.on('upgrade', (res, socket, head) => {
      const accept = createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
      if (res.headers['sec-websocket-accept'] !== accept || res.headers['sec-websocket-protocol'] !== subprotocol) {
        socket.destroy();
        reject(new Error(`bad WebSocket handshake: ${JSON.stringify(res.headers)}`));
        return;
      }
      resolve(new WebSocketBytes(socket, head));
    });
    req.on('response', (res) => rejectWithBody(res, reject));
    req.on('error', reject);
    req.end();
  });
}

class WebSocketBytes extends Duplex {
  private pending: Buffer;

  constructor(
    private readonly socket: Duplex,
    head: Buffer,
  ) {
    super();
    this.pending = head;
    socket.on('data', (chunk: Buffer) => this.parse(chunk));
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    this.parse(Buffer.alloc(0));
  }

  private parse(chunk: Buffer): void {
    this.pending = Buffer.concat([this.pending, chunk]);
    for (;;) {
      if (this.pending.length < 2) return;
      const opcode = this.pending[0]! & 0x0f;
      let length = this.pending[1]! & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (this.pending.length < 4) return;
        length = this.pending.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (this.pending.length < 10) return;
        length = Number(this.pending.readBigUInt64BE(2));
        offset = 10;
      }
      if (this.pending.length < offset + length) return;
      const payload = this.pending.subarray(offset, offset + length);
      this.pending = this.pending.subarray(offset + length);
      if (opcode === 0x8) {
        this.push(null);
        this.socket.end();
        return;
      }
      if (opcode === 0x2 || opcode === 0x0) this.push(payload);
    }
  }

  override _read(): void {}

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.socket.write(frame(0x2, chunk), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.socket.write(frame(0x8, Buffer.of(0x03, 0xe8)), () => cb());
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}

/** One final, masked client frame. */
function frame(opcode: number, payload: Buffer): Buffer {
  const mask = randomBytes(4);
  const size = payload.length < 126 ? Buffer.of(0x80 | payload.length) : payload.length < 65536 ? Buffer.of(0x80 | 126, payload.length >> 8, payload.length & 0xff) : Buffer.concat([Buffer.of(0x80 | 127), bigEndian64(payload.length)]);
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i]! ^= mask[i % 4]!;
  return Buffer.concat([Buffer.of(0x80 | opcode), size, mask, masked]);
}

function bigEndian64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}
