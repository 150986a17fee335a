import http from 'node:http';
import https from 'node:https';
import WebSocket from 'ws';

// A client of k8s' WebSocket channel protocols (what crictl --transport websocket and client-go's WebSocket
// executor speak), for tests: it connects to a streaming URL, sends on channels, and collects what each channel
// received. Binary protocols put the channel in the first byte; base64 ones send "<digit><base64>" text frames.

export interface ChannelClientOptions {
  /** Sec-WebSocket-Protocol values, in preference order; none: the header is left out. */
  protocols?: string[];
  /** CA to trust for an https URL. */
  ca?: Buffer;
}

export class HttpRefusal extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`HTTP ${status}: ${body}`);
  }
}

export class ChannelClient {
  private readonly chunks = new Map<number, Buffer[]>();
  private readonly waiters: (() => void)[] = [];
  /** Resolves with the close code once the server has closed the connection. */
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly base64: boolean;

  private constructor(readonly ws: WebSocket) {
    this.base64 = ws.protocol.includes('base64');
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on('message', (raw: Buffer, isBinary) => {
      if (raw.length === 0) return;
      let channel: number;
      let data: Buffer;
      if (this.base64) {
        if (isBinary) throw new Error('a base64 protocol got a binary frame');
        channel = raw[0] - 48;
        data = Buffer.from(raw.subarray(1).toString(), 'base64');
      } else {
        if (!isBinary) throw new Error('a binary protocol got a text frame');
        channel = raw[0];
        data = raw.subarray(1);
      }
      if (data.length > 0) {
        const list = this.chunks.get(channel) ?? [];
        list.push(Buffer.from(data));
        this.chunks.set(channel, list);
      }
      for (const w of this.waiters.splice(0)) w();
    });
    ws.once('close', () => {
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static connect(url: string, opts: ChannelClientOptions = {}): Promise<ChannelClient> {
    const wsUrl = url.replace(/^http/, 'ws');
    const ws = new WebSocket(wsUrl, opts.protocols ?? [], { ca: opts.ca, perMessageDeflate: false });
    return new Promise((resolve, reject) => {
      ws.once('unexpected-response', (_req, res: http.IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          ws.terminate();
          reject(new HttpRefusal(res.statusCode ?? 0, body.trim()));
        });
      });
      ws.once('error', reject);
      ws.once('open', () => resolve(new ChannelClient(ws)));
    });
  }

  get protocol(): string {
    return this.ws.protocol;
  }

  /** Every frame received on channel, in order (the empty "ready" frame is dropped). */
  frames(channel: number): Buffer[] {
    return this.chunks.get(channel) ?? [];
  }

  data(channel: number): Buffer {
    return Buffer.concat(this.frames(channel));
  }

  text(channel: number): string {
    return this.data(channel).toString();
  }

  send(channel: number, data: Buffer | string): void {
    const bytes = Buffer.from(data);
    if (this.base64) this.ws.send(String.fromCharCode(48 + channel) + bytes.toString('base64'));
    else this.ws.send(Buffer.concat([Buffer.of(channel), bytes]));
  }

  /** v5.channel.k8s.io's close signal: the client is done writing to channel (stdin's EOF). */
  closeChannel(channel: number): void {
    this.ws.send(Buffer.of(255, channel));
  }

  resize(width: number, height: number): void {
    this.send(4, JSON.stringify({ Width: width, Height: height }));
  }

  /** Waits until check() holds (rechecked at every frame), or the connection closes. */
  async until(check: () => boolean, what: string, timeoutMs = 20000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error(`connection closed before ${what}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
  }

  close(): void {
    this.ws.close();
  }

  terminate(): void {
    this.ws.terminate();
  }
}

/** A plain HTTP(S) request, for the answers that are not upgrades (404 for a bad token, 400 for a protocol). */
export function plainRequest(url: string, headers: Record<string, string> = {}, ca?: Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const get = url.startsWith('https:') ? https.get : http.get;
    const req = get(url, { headers, ca, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    // An upgrade the server accepts has no response event: a test expecting a refusal fails on it.
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      reject(new Error(`unexpected upgrade: ${res.statusCode}`));
    });
    req.on('error', reject);
  });
}
