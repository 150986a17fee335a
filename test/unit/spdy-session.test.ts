import test from 'ava';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { encodeGoAway } from '../../src/streaming/spdy/frames.js';
import { SpdySession, type SpdyStream } from '../../src/streaming/spdy/session.js';

// Session mechanics on a real loopback TCP pair: backpressure, half-close, reset, ping.

async function pair(): Promise<{ server: SpdySession; client: SpdySession; serverSocket: net.Socket; close(): Promise<void> }> {
  const listener = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  const clientSocket = net.connect({ port: (listener.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const serverSocket = await accepted;
  const server = new SpdySession(serverSocket, { role: 'server' });
  const client = new SpdySession(clientSocket, { role: 'client' });
  return {
    server,
    client,
    serverSocket,
    async close() {
      client.destroy();
      server.destroy();
      await new Promise((resolve) => listener.close(resolve));
    },
  };
}

test('a stream whose reader is slow stops the socket being read, so berth does not buffer a fast sender', async (t) => {
  const p = await pair();
  const incoming = new Promise<SpdyStream>((resolve) => p.server.on('stream', (s) => (s.accept(), resolve(s))));
  const out = p.client.openStream([['streamtype', 'stdin']]);
  const inStream = await incoming;
  await out.replied;
  const total = 32 * 1024 * 1024;
  const chunk = Buffer.alloc(64 * 1024, 7);
  let written = 0;
  const writer = (async () => {
    while (written < total) {
      written += chunk.length;
      if (!out.write(chunk)) await new Promise((resolve) => out.once('drain', resolve));
    }
    out.end();
  })();
  // Nobody reads inStream for a while: what the server took off the socket stays near the stream's buffer size.
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.true(p.serverSocket.bytesRead < 4 * 1024 * 1024, `server read ${p.serverSocket.bytesRead} bytes while its reader slept`);
  t.true(written < total, 'the sender was held back');
  let got = 0;
  for await (const c of inStream) got += (c as Buffer).length;
  await writer;
  t.is(got, total);
  await p.close();
});

function readAll(s: SpdyStream): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    s.on('data', (c: Buffer) => (text += c.toString()));
    s.once('end', () => resolve(text));
    s.once('close', () => (s.readableEnded ? resolve(text) : reject(new Error('closed before its end'))));
  });
}

test('half-close both ways, RST from the peer, and PING round trips', async (t) => {
  const p = await pair();
  const streams: SpdyStream[] = [];
  p.server.on('stream', (s) => {
    s.accept();
    streams.push(s);
  });
  const a = p.client.openStream([['streamtype', 'data']]);
  await a.replied;
  a.end('from client');
  const [sa] = streams;
  // Read to the end without the async iterator, which would destroy the stream (and RST it) when done.
  const text = await readAll(sa!);
  t.is(text, 'from client', 'the client FIN ends the server side readable');
  sa!.end('reply after half-close');
  const back = await readAll(a);
  t.is(back, 'reply after half-close');

  const b = p.client.openStream([['streamtype', 'data']]);
  await b.replied;
  const closed = new Promise((resolve) => streams[1]!.once('close', resolve));
  b.reset();
  await closed;
  t.true(streams[1]!.resetByPeer);
  t.is(typeof (await p.client.ping()), 'number');
  t.false(p.server.closed);
  await p.close();
});

/** Resolves with the stream's whole text if it ends cleanly; rejects if it closes without its end. */
function readLater(s: SpdyStream): Promise<string> {
  if (s.destroyed && !s.readableEnded) return Promise.reject(new Error('destroyed before it was read'));
  return readAll(s);
}

async function streamPair(p: Awaited<ReturnType<typeof pair>>): Promise<{ local: SpdyStream; remote: SpdyStream }> {
  const incoming = new Promise<SpdyStream>((resolve) => p.server.on('stream', (s) => (s.accept(), resolve(s))));
  const local = p.client.openStream([['streamtype', 'error']]);
  const remote = await incoming;
  await local.replied;
  return { local, remote };
}

test('data the peer sent before closing the connection is still read after the close (FIN, or GOAWAY then close)', async (t) => {
  // FIN on the stream, then the peer's socket ends without GOAWAY: the stream's data is complete.
  const a = await pair();
  const one = await streamPair(a);
  const clientClosed = new Promise((resolve) => a.client.once('close', resolve));
  one.remote.end('{"status":"Failure","code":3}');
  await new Promise<void>((resolve) => one.remote.once('finish', () => resolve()));
  a.serverSocket.end();
  await clientClosed;
  t.is(await readLater(one.local), '{"status":"Failure","code":3}', 'read after the session closed');
  await a.close();

  // No FIN, but the peer said GOAWAY before closing (client-go's conn.Close()): a graceful end, data kept.
  const b = await pair();
  const two = await streamPair(b);
  const closed = new Promise((resolve) => b.client.once('close', resolve));
  two.remote.write('status written just before close');
  // As spdystream's Close() does it: GOAWAY, then the connection ends, its streams left as they are.
  b.serverSocket.write(encodeGoAway(0, 0));
  b.serverSocket.end();
  await closed;
  t.is(await readLater(two.local), 'status written just before close');
  await b.close();
});

/** A connection whose peer takes written bytes only when the test says so (a client slower than any linger). */
class HeldConnection extends Duplex {
  private readonly held: [Buffer, () => void][] = [];
  readonly taken: Buffer[] = [];

  override _read(): void {}

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.held.push([chunk, cb]);
  }

  /** Takes what is held and what each taking lets the writer hand over next. */
  takeAll(): void {
    for (let next = this.held.shift(); next; next = this.held.shift()) {
      this.taken.push(next[0]);
      next[1]();
    }
  }
}

test('a graceful close waits for what was written to leave before its linger starts: a slow reader loses nothing', async (t) => {
  const conn = new HeldConnection();
  const session = new SpdySession(conn, { role: 'server' });
  const closed = new Promise((resolve) => session.once('close', resolve));
  const stream = session.openStream([['streamtype', 'stdout']]);
  const body = Buffer.alloc(256 * 1024, 'x');
  stream.end(body);
  session.close();
  // Longer than the 2 s a closing session gives the peer to close its side.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  t.false(conn.destroyed, 'the connection was cut while its output was still being taken');
  conn.takeAll();
  const taken = Buffer.concat(conn.taken);
  t.true(taken.includes(body.subarray(0, 1024)) && taken.length > body.length, `the peer took ${taken.length} bytes`);
  // Once everything is out, a peer that never closes its side is let go 2 s later.
  await closed;
  t.true(conn.destroyed);
});

test('a peer that drops the connection without FIN or GOAWAY cuts its streams short, visibly', async (t) => {
  const p = await pair();
  const { local, remote } = await streamPair(p);
  const closed = new Promise((resolve) => p.client.once('close', resolve));
  remote.write('partial');
  await new Promise((resolve) => setTimeout(resolve, 50));
  p.serverSocket.end();
  await closed;
  await t.throwsAsync(readLater(local), { message: /destroyed before it was read|closed before its end/ });
  await p.close();
});
