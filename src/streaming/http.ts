import { IncomingMessage, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';

// An upgrade request that is refused gets a plain HTTP answer on its raw socket (Node hands upgrades over before
// any response object exists), and the connection ends with it: nothing else is read from a refused client.

export function rejectUpgrade(socket: Duplex, code: number, message: string): void {
  const body = Buffer.from(message + '\n');
  const head =
    `HTTP/1.1 ${code} ${STATUS_CODES[code] ?? 'Error'}\r\n` +
    'Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n' +
    `Content-Length: ${body.length}\r\n\r\n`;
  if (socket.writable) socket.end(Buffer.concat([Buffer.from(head), body]));
  else socket.destroy();
  // A client that never reads its answer must not hold the socket open.
  const timer = setTimeout(() => socket.destroy(), 5000);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** Whether a request asks for a WebSocket (kubelet's wsstream.IsWebSocketRequest); any other upgrade is SPDY's. */
export function isWebSocketRequest(req: IncomingMessage): boolean {
  if ((req.headers.upgrade ?? '').toLowerCase() !== 'websocket') return false;
  return (req.headers.connection ?? '').toLowerCase().split(',').some((t) => t.trim() === 'upgrade');
}
