import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { PortForwardTarget, ProtocolContext, StreamTarget, UpgradeHandler } from '../types.js';
import { servePortForward, portForwardProtocols } from './portforward.js';
import { remoteCommandProtocols, serveRemoteCommand, type RemoteCommandProtocol } from './remotecommand.js';
import { SpdySession } from './session.js';

// The SPDY/3.1 upgrade of k8s' streaming protocols: the handshake kubelet's streaming server does
// (apimachinery httpstream.Handshake + spdy.UpgradeResponse), then one session serving the target.

const SPDY_UPGRADE = 'spdy/3.1';

function headerList(req: IncomingMessage, name: string): string[] {
  const values = req.headersDistinct[name] ?? [];
  return values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '');
}

/** Writes a plain-text HTTP error on a socket that will not be upgraded, then closes it. */
export function rejectUpgrade(socket: Duplex, status: number, reason: string, message: string, extraHeaders: [string, string][] = []): void {
  const body = Buffer.from(message + '\n');
  const head = [
    `HTTP/1.1 ${status} ${reason}`,
    'Content-Type: text/plain; charset=utf-8',
    `Content-Length: ${body.length}`,
    'Connection: close',
    ...extraHeaders.map(([k, v]) => `${k}: ${v}`),
  ].join('\r\n');
  if (socket.destroyed) return;
  socket.on('error', () => undefined);
  socket.end(Buffer.concat([Buffer.from(head + '\r\n\r\n'), body]));
  // Let the client read the answer before the connection goes; a client that never closes does not keep it.
  const linger = setTimeout(() => socket.destroy(), 1000);
  socket.once('close', () => clearTimeout(linger));
  socket.resume();
}

function supportedProtocols(target: StreamTarget): readonly string[] {
  return target.kind === 'portforward' ? portForwardProtocols : remoteCommandProtocols;
}

export const spdyUpgradeHandler: UpgradeHandler = (req, socket, head, target, ctx) => {
  const log = ctx.log.child({
    protocol: 'spdy',
    ...(target.kind === 'portforward' ? { pod_id: target.podSandboxId } : { container_id: target.containerId, kind: target.kind }),
  });
  const connection = headerList(req, 'connection').map((v) => v.toLowerCase());
  const upgrade = headerList(req, 'upgrade').map((v) => v.toLowerCase());
  if (!connection.includes('upgrade') || !upgrade.includes(SPDY_UPGRADE)) {
    return rejectUpgrade(socket, 400, 'Bad Request', 'unable to upgrade: missing upgrade headers in request (Connection: Upgrade, Upgrade: SPDY/3.1)');
  }
  const server = supportedProtocols(target);
  const client = headerList(req, 'x-stream-protocol-version');
  if (client.length === 0) {
    return rejectUpgrade(socket, 400, 'Bad Request', 'unable to upgrade: X-Stream-Protocol-Version is required');
  }
  const protocol = client.find((p) => server.includes(p));
  if (!protocol) {
    return rejectUpgrade(
      socket,
      403,
      'Forbidden',
      `unable to upgrade: unable to negotiate protocol: client supports [${client.join(' ')}], server accepts [${server.join(' ')}]`,
      server.map((p) => ['X-Accepted-Stream-Protocol-Versions', p]),
    );
  }
  if (ctx.shutdown.aborted) return rejectUpgrade(socket, 503, 'Service Unavailable', 'berth is shutting down');

  socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: ${protocol}\r\n\r\n`);
  if ('setNoDelay' in socket && typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
  const session = new SpdySession(socket, { role: 'server', idleTimeoutMs: ctx.idleTimeoutMs, log });
  session.once('close', (err) => log.debug('spdy session closed', { protocol_version: protocol, error: err?.message ?? null }));
  if (target.kind === 'portforward') servePortForward(session, target, ctx, log);
  else serveRemoteCommand(session, protocol as RemoteCommandProtocol, target, ctx, log);
  session.feed(head);
};

/**
 * Port-forward as SPDY/3.1 carried in WebSocket binary messages (subprotocol `SPDY/3.1+portforward.k8s.io`, what
 * client-go 1.30+ dials for `--transport websocket`, KEP-4006): no HTTP handshake inside, the session starts at once.
 */
export function serveTunneledPortForward(tunnel: Duplex, target: PortForwardTarget, ctx: ProtocolContext): void {
  const log = ctx.log.child({ protocol: 'spdy-over-websocket', pod_id: target.podSandboxId });
  const session = new SpdySession(tunnel, { role: 'server', idleTimeoutMs: ctx.idleTimeoutMs, log });
  session.once('close', (err) => log.debug('spdy session closed', { error: err?.message ?? null }));
  servePortForward(session, target, ctx, log);
}
