import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { createWebSocketStream, WebSocketServer } from 'ws';
import { errorMessage } from '../errors.js';
import { rejectUpgrade } from './http.js';
import { ChannelCodec, ChannelConn } from './ws-channels.js';
import { runPortForward } from './ws-portforward.js';
import { runRemoteCommand } from './ws-remotecommand.js';
import type { UpgradeHandler } from './types.js';
import { serveTunneledPortForward } from './spdy/index.js';

// The WebSocket side of the streaming server (what `crictl --transport websocket` and client-go's WebSocket
// executor speak). The subprotocol is chosen as wsstream does: the first of the client's Sec-WebSocket-Protocol
// values that berth serves; no header at all means "" (the binary channel protocol); none served is refused.

interface Served extends ChannelCodec {
  /** The error stream carries a JSON Status (v4 and later). */
  jsonStatus: boolean;
}

const REMOTE_COMMAND: Record<string, Served> = {
  'v5.channel.k8s.io': { binary: true, closeSignal: true, jsonStatus: true },
  'v5.base64.channel.k8s.io': { binary: false, closeSignal: false, jsonStatus: true },
  'v4.channel.k8s.io': { binary: true, closeSignal: false, jsonStatus: true },
  'v4.base64.channel.k8s.io': { binary: false, closeSignal: false, jsonStatus: true },
  'channel.k8s.io': { binary: true, closeSignal: false, jsonStatus: false },
  'base64.channel.k8s.io': { binary: false, closeSignal: false, jsonStatus: false },
  '': { binary: true, closeSignal: false, jsonStatus: false },
};

/** Port-forward's SPDY session tunneled through WebSocket binary messages (client-go 1.30+, KEP-4006). */
const SPDY_TUNNEL = 'SPDY/3.1+portforward.k8s.io';

const PORT_FORWARD: Record<string, Served> = {
  [SPDY_TUNNEL]: { binary: true, closeSignal: false, jsonStatus: false },
  'v4.channel.k8s.io': { binary: true, closeSignal: false, jsonStatus: false },
  'v4.base64.channel.k8s.io': { binary: false, closeSignal: false, jsonStatus: false },
  '': { binary: true, closeSignal: false, jsonStatus: false },
};

/** Frames larger than this are refused (client-go sends at most 32 KiB of data per frame). */
const MAX_FRAME = 4 << 20;

/** The client's offer, in its order; undefined when it sent no Sec-WebSocket-Protocol header. */
function offered(req: IncomingMessage): string[] | undefined {
  const header = req.headers['sec-websocket-protocol'];
  if (header === undefined) return undefined;
  return header.split(',').map((p) => p.trim()).filter((p) => p !== '');
}

export function negotiate(req: IncomingMessage, served: Record<string, Served>): string | undefined {
  const offer = offered(req) ?? [''];
  return offer.find((p) => Object.hasOwn(served, p));
}

const chosen = new WeakMap<IncomingMessage, string>();

const wss = new WebSocketServer({
  noServer: true,
  clientTracking: false,
  perMessageDeflate: false,
  maxPayload: MAX_FRAME,
  handleProtocols: (_protocols, req) => chosen.get(req) || false,
});

export const websocketUpgradeHandler: UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer, target, ctx) => {
  const served = target.kind === 'portforward' ? PORT_FORWARD : REMOTE_COMMAND;
  const protocol = negotiate(req, served);
  if (protocol === undefined) {
    rejectUpgrade(socket, 400, `requested protocol(s) are not supported: ${JSON.stringify(offered(req))}; berth serves ${JSON.stringify(Object.keys(served).filter((p) => p))}`);
    return;
  }
  if (target.kind === 'portforward' && target.ports.length === 0 && protocol !== SPDY_TUNNEL) {
    rejectUpgrade(socket, 400, 'port-forward over WebSocket forwards the ports named in the PortForward request, and it named none');
    return;
  }
  chosen.set(req, protocol);
  // `ws` accepts only RFC 7230 tokens as offered subprotocols, and the tunnel's name has a "/": it is offered to
  // `ws` under a stand-in token, and the answer names it as the client offered it (handleProtocols above).
  if (protocol === SPDY_TUNNEL) req.headers['sec-websocket-protocol'] = 'berth-spdy-tunnel';
  const log = ctx.log.child({ protocol: protocol || 'channel.k8s.io (implied)' });
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (target.kind === 'portforward' && protocol === SPDY_TUNNEL) {
      // The SPDY session names its ports per stream, as over a plain upgrade.
      const tunnel = createWebSocketStream(ws, { allowHalfOpen: false });
      tunnel.on('error', (err) => log.debug('spdy tunnel error', { error: errorMessage(err) }));
      serveTunneledPortForward(tunnel, target, ctx);
      return;
    }
    const codec = served[protocol];
    const conn = new ChannelConn(ws, codec, ctx.idleTimeoutMs, () => log.info('streaming session idle: closed', { idleTimeoutMs: ctx.idleTimeoutMs }));
    const shut = () => conn.close(1001, 'berth is shutting down');
    if (ctx.shutdown.aborted) return shut();
    ctx.shutdown.addEventListener('abort', shut, { once: true });
    conn.onClosed(() => ctx.shutdown.removeEventListener('abort', shut));
    const session =
      target.kind === 'portforward'
        ? runPortForward(conn, target, ctx, log)
        : runRemoteCommand(conn, { target, jsonStatus: codec.jsonStatus, ctx, log });
    session.catch((err) => {
      log.error('streaming session crashed', { error: errorMessage(err) });
      conn.terminate();
    });
  });
};
