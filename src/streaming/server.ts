import { readFileSync } from 'node:fs';
import http, { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { ConfigError, parseListenAddress, StreamingConfig } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { isWebSocketRequest, rejectUpgrade } from './http.js';
import type { TokenCache } from './tokens.js';
import type { ProtocolContext, StreamingBackend, StreamTarget, UpgradeHandler } from './types.js';

// The HTTP(S) server behind the URLs Exec, Attach and PortForward return (kubelet's pkg/cri/streaming shape):
// /exec/{token}, /attach/{token}, /portforward/{token}. A token is consumed by the first request that names it;
// the request is then handed to the wire protocol it asks for (WebSocket if it is a WebSocket request, otherwise
// SPDY, as kubelet decides), which runs the session on the upgraded socket.

export interface StreamingProtocols {
  websocket?: UpgradeHandler;
  spdy?: UpgradeHandler;
}

export interface StreamingServerOptions {
  config: StreamingConfig;
  tokens: TokenCache;
  backend: StreamingBackend;
  protocols: StreamingProtocols;
  log: Logger;
}

const ROUTE = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]{1,64})$/;
/** How long sessions get, once berth is stopping, to send their last frames before their sockets are cut. */
const SHUTDOWN_GRACE_MS = 2000;

export class StreamingServer {
  private readonly sockets = new Set<Duplex>();
  private readonly shutdown = new AbortController();
  private readonly ctx: ProtocolContext;

  private constructor(
    private readonly server: http.Server | https.Server,
    private readonly opts: StreamingServerOptions,
    /** scheme://host:port, as clients reach the bound address. */
    readonly baseUrl: string,
  ) {
    this.ctx = {
      backend: opts.backend,
      log: opts.log,
      streamCreationTimeoutMs: opts.config.streamCreationTimeoutSeconds * 1000,
      idleTimeoutMs: opts.config.streamIdleTimeoutSeconds * 1000,
      shutdown: this.shutdown.signal,
    };
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.plainRequest(req, res));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head));
  }

  /** Listens on config.address; a bad certificate or an address that cannot be bound refuses, naming the key. */
  static async start(opts: StreamingServerOptions): Promise<StreamingServer> {
    const { config } = opts;
    const listen = parseListenAddress(config.address);
    if (!listen) throw new ConfigError('streaming.address', `"${config.address}" is not ip:port`);
    let server: http.Server | https.Server;
    if (config.tlsCertFile) {
      try {
        server = https.createServer({ cert: readFileSync(config.tlsCertFile), key: readFileSync(config.tlsKeyFile) });
      } catch (err) {
        throw new ConfigError('streaming.tls_key_file', `cannot serve HTTPS with ${config.tlsCertFile} and ${config.tlsKeyFile}: ${errorMessage(err)}`);
      }
    } else {
      server = http.createServer();
    }
    // Requests carry nothing but a token: a client that dawdles over its headers is dropped early.
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: listen.host, port: listen.port, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((err: NodeJS.ErrnoException) => {
      throw new ConfigError('streaming.address', `cannot listen on ${config.address}: ${err.code ?? errorMessage(err)}`);
    });
    server.on('error', (err) => opts.log.error('streaming server error', { error: errorMessage(err) }));
    const bound = server.address() as AddressInfo;
    const scheme = config.tlsCertFile ? 'https' : 'http';
    return new StreamingServer(server, opts, `${scheme}://${urlHost(advertisedHost(bound.address))}:${bound.port}`);
  }

  /** Ends every session (their backends see io.signal abort), closes their sockets and stops listening. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.shutdown.abort();
    this.server.closeIdleConnections();
    const drained = Promise.all([...this.sockets].map((s) => new Promise<void>((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())))));
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, SHUTDOWN_GRACE_MS)));
    await Promise.race([drained, grace]);
    clearTimeout(timer);
    for (const socket of this.sockets) socket.destroy();
    this.server.closeAllConnections();
    await closed;
  }

  get activeSessions(): number {
    return this.sockets.size;
  }

  private plainRequest(req: IncomingMessage, res: ServerResponse): void {
    const route = ROUTE.exec(pathOf(req));
    const known = route && this.opts.tokens.consume(route[2])?.kind === route[1];
    res.writeHead(known ? 400 : 404, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close' });
    res.end(known ? 'this URL is served over an upgraded connection (WebSocket or SPDY/3.1), and the request asked for none\n' : 'not found\n');
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const route = ROUTE.exec(pathOf(req));
    // An unknown, used or expired token, or one issued for another kind of session: nothing is opened.
    const target = route ? this.opts.tokens.consume(route[2]) : undefined;
    if (!route || !target || target.kind !== route[1] || (req.method !== 'GET' && req.method !== 'POST')) {
      rejectUpgrade(socket, 404, 'not found');
      return;
    }
    const websocket = isWebSocketRequest(req);
    const protocol = websocket ? 'websocket' : 'spdy';
    const handler = websocket ? this.opts.protocols.websocket : this.opts.protocols.spdy;
    if (!handler) {
      const missing = websocket ? 'WebSocket' : `SPDY/3.1 (the request asked for "${req.headers.upgrade}")`;
      rejectUpgrade(socket, 400, `${missing} is not served by this berth`);
      return;
    }
    const ids = targetIds(target);
    const log = this.opts.log.child({ ...ids, session: target.kind });
    const started = performance.now();
    this.sockets.add(socket);
    log.info('streaming session started', { transport: protocol, remote: (socket as Socket).remoteAddress });
    socket.once('close', () => {
      this.sockets.delete(socket);
      log.info('streaming session ended', { transport: protocol, ms: Math.round(performance.now() - started) });
    });
    try {
      handler(req, socket, head, target, { ...this.ctx, log });
    } catch (err) {
      log.error('streaming session failed to start', { error: errorMessage(err) });
      socket.destroy();
    }
  }
}

function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

function targetIds(target: StreamTarget): Record<string, string> {
  return target.kind === 'portforward' ? { pod: target.podSandboxId } : { container: target.containerId };
}

function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * The host the URLs name. A wildcard bind is reachable on every address, and the URL needs one the client can
 * dial: the address of the interface that holds the default route (as kubelet's and containerd's servers
 * choose), else loopback.
 */
function advertisedHost(bound: string): string {
  if (bound !== '0.0.0.0' && bound !== '::') return bound;
  return defaultRouteAddress() ?? (bound === '::' ? '::1' : '127.0.0.1');
}

function defaultRouteAddress(): string | undefined {
  let routes: string;
  try {
    routes = readFileSync('/proc/net/route', 'utf8');
  } catch {
    return undefined;
  }
  for (const line of routes.split('\n').slice(1)) {
    const [iface, destination, , , , , , mask] = line.trim().split(/\s+/);
    if (destination !== '00000000' || mask !== '00000000') continue;
    const address = os.networkInterfaces()[iface]?.find((a) => a.family === 'IPv4' && !a.internal);
    if (address) return address.address;
  }
  return undefined;
}
