import type { Duplex } from 'node:stream';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { PortForwardTarget, ProtocolContext } from './types.js';
import type { ChannelConn } from './ws-channels.js';

// port-forward over the channel protocol (kubelet's portforward websocket.go): for the i-th port of the request,
// channel 2i carries the data both ways and channel 2i+1 the errors towards the client; the first message berth
// sends on each is the port, two bytes little-endian, so the client can tell the pairs apart. One connection per
// port for the whole session; the session ends when every port's connection has ended.

export async function runPortForward(conn: ChannelConn, target: PortForwardTarget, ctx: ProtocolContext, log: Logger): Promise<void> {
  const aborter = new AbortController();
  const abort = () => aborter.abort();
  conn.onClosed(abort);
  ctx.shutdown.addEventListener('abort', abort, { once: true });
  const pairs = target.ports.map((port, i) => new PortPair(conn, port, i * 2, i * 2 + 1));
  conn.setHandlers({
    onData: (channel, data) => pairs[channel >> 1]?.fromClient(channel, data),
    onChannelClosed: () => {},
  });
  try {
    for (const pair of pairs) pair.announce();
    await Promise.all(pairs.map((pair) => pair.run(ctx, target.podSandboxId, aborter.signal, log)));
    conn.close(1000);
  } finally {
    ctx.shutdown.removeEventListener('abort', abort);
    abort();
  }
}

class PortPair {
  private upstream: Duplex | undefined;
  /** What the client sent before the connection to the pod was up (the read side is held meanwhile). */
  private early: Buffer[] = [];
  private releaseEarly: (() => void) | undefined;

  constructor(
    private readonly conn: ChannelConn,
    private readonly port: number,
    private readonly dataChannel: number,
    private readonly errorChannel: number,
  ) {}

  announce(): void {
    const prefix = Buffer.alloc(2);
    prefix.writeUInt16LE(this.port);
    this.conn.send(this.dataChannel, prefix);
    this.conn.send(this.errorChannel, prefix);
  }

  fromClient(channel: number, data: Buffer): void {
    if (channel !== this.dataChannel || data.length === 0) return;
    const upstream = this.upstream;
    if (!upstream) {
      this.early.push(data);
      this.releaseEarly ??= this.conn.hold();
      return;
    }
    if (upstream.writable && !upstream.write(data)) upstream.once('drain', this.conn.hold());
  }

  async run(ctx: ProtocolContext, podSandboxId: string, signal: AbortSignal, log: Logger): Promise<void> {
    let upstream: Duplex;
    try {
      upstream = await ctx.backend.portForward(podSandboxId, this.port, signal);
    } catch (err) {
      this.dropEarly();
      if (signal.aborted) return;
      const message = `error forwarding port ${this.port} to pod ${podSandboxId}: ${errorMessage(err)}`;
      log.info('port-forward connection failed', { port: this.port, error: errorMessage(err) });
      this.conn.send(this.errorChannel, Buffer.from(message));
      return;
    }
    if (signal.aborted) {
      upstream.destroy();
      this.dropEarly();
      return;
    }
    this.upstream = upstream;
    for (const data of this.early.splice(0)) this.fromClient(this.dataChannel, data);
    this.dropEarly();
    await new Promise<void>((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        upstream.destroy();
        resolve();
      };
      signal.addEventListener('abort', done, { once: true });
      upstream.once('close', done);
      upstream.once('end', done);
      upstream.on('error', (err) => {
        if (!signal.aborted) this.conn.send(this.errorChannel, Buffer.from(`error forwarding port ${this.port} to pod ${podSandboxId}: ${err.message}`));
        done();
      });
      upstream.on('data', (chunk: Buffer) => {
        upstream.pause();
        this.conn.send(this.dataChannel, chunk, () => upstream.resume());
      });
    });
  }

  private dropEarly(): void {
    this.early = [];
    this.releaseEarly?.();
    this.releaseEarly = undefined;
  }
}
