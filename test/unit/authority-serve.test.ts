import test from 'ava';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { Duplex } from 'node:stream';
import { EMPTY_SETTINGS, serveConnection } from '../../src/cri/authority.js';

// serveConnection hands a connection whose first request has a valid :authority to the HTTP/2 server as the socket
// itself (no JS stream in between) and any other through the rewriting stream; either way every request is served.

interface Served {
  kinds: string[];
  url: string;
  close(): Promise<void>;
}

async function serve(t: { teardown(fn: () => Promise<void>): void }): Promise<Served> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'berth-authority-'));
  const socket = path.join(dir, 's.sock');
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    stream.respond({ ':status': 200 });
    stream.end(String(headers[':authority']));
  });
  const kinds: string[] = [];
  const listener = net.createServer((conn) =>
    serveConnection(conn, (served: Duplex) => {
      kinds.push(served === conn ? 'socket' : 'rewriting stream');
      server.emit('connection', served);
    }),
  );
  await new Promise<void>((resolve) => listener.listen(socket, resolve));
  const close = async () => {
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    server.close();
    await rm(dir, { recursive: true, force: true });
  };
  t.teardown(close);
  return { kinds, url: socket, close };
}

async function requests(socket: string, authority: string, n: number): Promise<string[]> {
  const client = http2.connect(`http://${authority.startsWith('/') ? 'localhost' : authority}`, { createConnection: () => net.connect(socket) });
  const replies: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      replies.push(
        await new Promise<string>((resolve, reject) => {
          const req = client.request({ ':path': '/x', ':authority': authority });
          let body = '';
          req.setEncoding('utf8');
          req.on('data', (d: string) => (body += d));
          req.on('end', () => resolve(body));
          req.on('error', reject);
          req.end();
        }),
      );
    }
  } finally {
    client.close();
  }
  return replies;
}

test('a client with a valid authority is served over the socket itself, every request of the connection', async (t) => {
  const s = await serve(t);
  t.deepEqual(await requests(s.url, 'localhost', 3), ['localhost', 'localhost', 'localhost']);
  t.deepEqual(s.kinds, ['socket']);
});

test('a client that waits for the server preface before its first request (as grpc-go does) is served over the socket', async (t) => {
  const s = await serve(t);
  const conn = net.connect(s.url);
  t.teardown(() => conn.destroy());
  let received = Buffer.alloc(0);
  conn.on('data', (d: Buffer) => (received = Buffer.concat([received, d])));
  conn.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), EMPTY_SETTINGS]));
  // The server preface arrives before the client has sent any request: the decision could not wait for one.
  while (received.length < EMPTY_SETTINGS.length) await new Promise((r) => setTimeout(r, 10));
  t.deepEqual(received.subarray(0, 9), EMPTY_SETTINGS);
  conn.destroy();
  // The same through a real client, whose request then goes to the session over the socket.
  t.deepEqual(await requests(s.url, 'localhost', 2), ['localhost', 'localhost']);
  t.deepEqual(s.kinds, ['socket']);
});

test('a client sending a socket path as authority goes through the rewriting stream and is served as localhost', async (t) => {
  const s = await serve(t);
  t.deepEqual(await requests(s.url, '/run/berth/berth.sock', 2), ['localhost', 'localhost']);
  t.deepEqual(s.kinds, ['rewriting stream']);
});

test('a connection that closes before any request is never handed on', async (t) => {
  const s = await serve(t);
  const conn = net.connect(s.url);
  await new Promise<void>((resolve) => conn.once('connect', () => resolve()));
  conn.destroy();
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(s.kinds, []);
  t.deepEqual(await requests(s.url, 'localhost', 1), ['localhost'], 'the listener still serves');
});
