import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import net, { type OnReadOpts } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../src/log.js';
import { spdyUpgradeHandler } from '../../src/streaming/spdy/index.js';
import type { ExecTarget, AttachTarget, ProtocolContext, SessionIO, StreamingBackend, StreamTarget, TerminalSize } from '../../src/streaming/types.js';
import { spdyConnect, spdyPortForward, spdyRemoteCommand, UpgradeRefused } from '../helpers/spdy-client.js';

// The SPDY/3.1 protocols end to end over real loopback sockets: a real HTTP server upgrading to berth's handler,
// the test client speaking client-go's side, and a fake backend standing in for containers.

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

interface Recorded {
  resizes: TerminalSize[];
  aborted: number;
  started: number;
  finished: number;
}

function fakeBackend(rec: Recorded, ports: Map<number, number>, honourReads: boolean): StreamingBackend {
  return {
    async exec(target: ExecTarget, io: SessionIO) {
      rec.started++;
      try {
        const [cmd, ...args] = target.cmd;
        switch (cmd) {
          case 'echo':
            io.stdout?.write(args.join(' ') + '\n');
            return { exitCode: 0 };
          case 'exit':
            io.stderr?.write('bye\n');
            return { exitCode: Number(args[0]) };
          case 'cat':
            for await (const chunk of io.stdin!) io.stdout!.write(chunk);
            return { exitCode: 0 };
          case 'stty-size': {
            // Reports the sizes it is told of, the last one being the answer, once the client asks with stdin EOF.
            io.onResize((size) => rec.resizes.push(size));
            for await (const _ of io.stdin!) void _;
            const last = rec.resizes.at(-1);
            io.stdout!.write(last ? `${last.height} ${last.width}\n` : 'no size\n');
            return { exitCode: 0 };
          }
          case 'hang':
            await new Promise<void>((resolve) => io.signal.addEventListener('abort', () => resolve(), { once: true }));
            rec.aborted++;
            return { exitCode: 137 };
          case 'fail':
            throw new Error('container is not running');
          default:
            return { exitCode: 127 };
        }
      } finally {
        rec.finished++;
      }
    },
    async attach(_target: AttachTarget, io: SessionIO) {
      io.stdout!.write('attached\n');
      if (io.stdin) for await (const chunk of io.stdin) io.stdout!.write(chunk);
    },
    portForward(_pod: string, port: number, _signal: AbortSignal, reads?: OnReadOpts): Promise<Duplex> {
      const real = ports.get(port);
      if (real === undefined) return Promise.reject(new Error(`dial tcp 127.0.0.1:${port}: connect: connection refused`));
      return new Promise((resolve, reject) => {
        // Half-open, as a pod connection must be: the pod's FIN must not cut what the client still sends.
        const s = net.connect({ port: real, host: '127.0.0.1', allowHalfOpen: true, ...(honourReads && reads ? { onread: reads } : {}) });
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    },
  };
}

interface Harness {
  url(target: StreamTarget): string;
  rec: Recorded;
  ports: Map<number, number>;
  shutdown: AbortController;
  server: http.Server;
  close(): Promise<void>;
}

/** honourReads false: a backend that ignores the reusable read buffer it is offered and emits 'data' instead. */
async function harness(opts: { streamCreationTimeoutMs?: number; honourReads?: boolean } = {}): Promise<Harness> {
  const rec: Recorded = { resizes: [], aborted: 0, started: 0, finished: 0 };
  const ports = new Map<number, number>();
  const shutdown = new AbortController();
  const targets = new Map<string, StreamTarget>();
  const ctx: ProtocolContext = {
    backend: fakeBackend(rec, ports, opts.honourReads ?? true),
    log: quiet,
    streamCreationTimeoutMs: opts.streamCreationTimeoutMs ?? 5000,
    idleTimeoutMs: 60_000,
    shutdown: shutdown.signal,
  };
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  server.on('upgrade', (req, socket, head) => {
    const target = targets.get(req.url ?? '');
    if (!target) return socket.destroy();
    spdyUpgradeHandler(req, socket, head, target, ctx);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  let n = 0;
  return {
    rec,
    ports,
    shutdown,
    server,
    url(target) {
      const path = `/t/${n++}`;
      targets.set(path, target);
      return `http://127.0.0.1:${port}${path}`;
    },
    async close() {
      shutdown.abort();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const exec = (cmd: string[], io: Partial<ExecTarget> = {}): ExecTarget => ({
  kind: 'exec',
  containerId: 'c1',
  cmd,
  stdin: false,
  stdout: true,
  stderr: true,
  tty: false,
  ...io,
});

async function openConnections(server: http.Server): Promise<number> {
  return new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
}

async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('exec echo: stdout comes back and v4 reports Success', async (t) => {
  const h = await harness();
  const r = await spdyRemoteCommand(h.url(exec(['echo', 'hi'])));
  t.is(r.protocol, 'v4.channel.k8s.io');
  t.is(r.stdout.toString(), 'hi\n');
  t.is(r.status?.status, 'Success');
  t.is(r.exitCode, 0);
  await h.close();
});

test('exit code 3 comes back as the ExitCode cause, stderr apart from stdout', async (t) => {
  const h = await harness();
  const r = await spdyRemoteCommand(h.url(exec(['exit', '3'])));
  t.is(r.exitCode, 3);
  t.is(r.status?.reason, 'NonZeroExitCode');
  t.deepEqual(r.status?.details?.causes, [{ reason: 'ExitCode', message: '3' }]);
  t.is(r.stderr.toString(), 'bye\n');
  t.is(r.stdout.length, 0);
  await h.close();
});

test('stdin flows through cat, 3 MiB intact, and EOF on stdin ends the command', async (t) => {
  const h = await harness();
  const input = randomBytes(3 * 1024 * 1024);
  const r = await spdyRemoteCommand(h.url(exec(['cat'], { stdin: true, stderr: false })), { stdin: input, stderr: false });
  t.is(r.stdout.length, input.length);
  t.true(r.stdout.equals(input));
  t.is(r.exitCode, 0);
  await h.close();
});

test('tty resize events reach the backend (v4 and v3), none exist on v2', async (t) => {
  const h = await harness();
  const target = exec(['stty-size'], { stdin: true, tty: true, stderr: false });
  const resizes = [{ width: 80, height: 24 }, { width: 132, height: 43 }];
  // Stdin stays open until the resizes are in, so the command answers with the last size.
  const { PassThrough } = await import('node:stream');
  for (const protocol of ['v4.channel.k8s.io', 'v3.channel.k8s.io']) {
    h.rec.resizes = [];
    const stdin = new PassThrough();
    const run = spdyRemoteCommand(h.url(target), { protocols: [protocol], stdin, tty: true, resizes });
    await until(() => h.rec.resizes.length === 2, 'both resizes');
    stdin.end();
    const r = await run;
    t.is(r.protocol, protocol);
    t.is(r.stdout.toString(), '43 132\n', protocol);
    t.deepEqual(h.rec.resizes, resizes);
  }
  h.rec.resizes = [];
  const r = await spdyRemoteCommand(h.url(target), { protocols: ['v2.channel.k8s.io'], stdin: '', tty: true });
  t.is(r.stdout.toString(), 'no size\n');
  await h.close();
});

test('v3, v2 and channel.k8s.io fallbacks: text status on failure, nothing on success', async (t) => {
  const h = await harness();
  for (const protocol of ['v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io']) {
    const ok = await spdyRemoteCommand(h.url(exec(['echo', 'old'])), { protocols: ['v9.channel.k8s.io', protocol] });
    t.is(ok.protocol, protocol);
    t.is(ok.stdout.toString(), 'old\n');
    t.is(ok.errorText, '', `${protocol}: success writes nothing`);
    const bad = await spdyRemoteCommand(h.url(exec(['exit', '3'])), { protocols: [protocol] });
    t.regex(bad.errorText, /non-zero exit code.*exit code 3/, protocol);
    t.is(bad.status, null);
  }
  await h.close();
});

test('a backend failure is an InternalError status naming the cause', async (t) => {
  const h = await harness();
  const r = await spdyRemoteCommand(h.url(exec(['fail'])));
  t.is(r.status?.status, 'Failure');
  t.is(r.status?.reason, 'InternalError');
  t.regex(r.status?.message ?? '', /container is not running/);
  t.is(r.exitCode, null);
  await h.close();
});

test('attach: output and stdin through, success status', async (t) => {
  const h = await harness();
  const target: AttachTarget = { kind: 'attach', containerId: 'c1', stdin: true, stdout: true, stderr: true, tty: false };
  const r = await spdyRemoteCommand(h.url(target), { stdin: 'typed\n' });
  t.is(r.stdout.toString(), 'attached\ntyped\n');
  t.is(r.status?.status, 'Success');
  await h.close();
});

test('a stream the request does not imply is refused; the session still runs', async (t) => {
  const h = await harness();
  const { PassThrough } = await import('node:stream');
  const stdin = new PassThrough();
  const r = await spdyRemoteCommand(h.url(exec(['cat'], { stdin: true, stderr: false })), {
    stderr: false,
    stdin,
    onStreams(_streams, conn) {
      // cat waits for stdin, so the session is still up: a resize stream without tty is not one it implies.
      const extra = conn.session.openStream([['streamtype', 'resize']]);
      void extra.replied.then(
        () => t.fail('an unrequested resize stream was accepted'),
        () => stdin.end('still here\n'),
      );
    },
  });
  t.is(r.stdout.toString(), 'still here\n');
  t.is(r.exitCode, 0);
  await h.close();
});

test('bad upgrades get HTTP errors: no Upgrade header 400, no protocol 400, unknown protocol 403 listing ours', async (t) => {
  const h = await harness();
  const url = h.url(exec(['echo']));
  const noProto = await t.throwsAsync(spdyConnect(url, []), { instanceOf: UpgradeRefused });
  t.is(noProto.status, 400);
  t.regex(noProto.body, /X-Stream-Protocol-Version is required/);
  const unknown = await t.throwsAsync(spdyConnect(url, ['v9.channel.k8s.io']), { instanceOf: UpgradeRefused });
  t.is(unknown.status, 403);
  t.regex(String(unknown.headers['x-accepted-stream-protocol-versions']), /v4\.channel\.k8s\.io/);
  const wrongUpgrade = await t.throwsAsync(spdyConnect(url, ['v4.channel.k8s.io'], { Upgrade: 'websocket' }), { instanceOf: UpgradeRefused });
  t.is(wrongUpgrade.status, 400);
  const pf = await t.throwsAsync(spdyConnect(h.url({ kind: 'portforward', podSandboxId: 'p', ports: [] }), ['v4.channel.k8s.io']), { instanceOf: UpgradeRefused });
  t.is(pf.status, 403);
  await until(async () => (await openConnections(h.server)) === 0, 'refused connections to close');
  await h.close();
});

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

test('port-forward: 10 MiB each way over two concurrent connections, intact (sha256)', async (t) => {
  const h = await harness();
  const received: string[] = [];
  const sent: string[] = [];
  const pod = net.createServer((sock) => {
    const out = randomBytes(10 * 1024 * 1024);
    sent.push(sha(out));
    const hash = createHash('sha256');
    sock.on('data', (c: Buffer) => hash.update(c));
    sock.on('end', () => received.push(hash.digest('hex')));
    sock.end(out);
  });
  await new Promise<void>((resolve) => pod.listen(0, '127.0.0.1', resolve));
  h.ports.set(80, (pod.address() as net.AddressInfo).port);
  const client = await spdyPortForward(h.url({ kind: 'portforward', podSandboxId: 'p1', ports: [80] }));
  const one = async () => {
    const conn = await client.connect(80);
    const input = randomBytes(10 * 1024 * 1024);
    const chunks: Buffer[] = [];
    conn.data.on('data', (c: Buffer) => chunks.push(c));
    const ended = new Promise((resolve) => conn.data.once('end', resolve));
    conn.data.end(input);
    await ended;
    return { input: sha(input), output: sha(Buffer.concat(chunks)), error: await conn.error };
  };
  const results = await Promise.all([one(), one()]);
  await until(() => received.length === 2, 'the pod side to see both ends');
  for (const r of results) {
    t.is(r.error, '');
    t.true(sent.includes(r.output), 'pod -> client bytes intact');
    t.true(received.includes(r.input), 'client -> pod bytes intact');
  }
  client.close();
  await new Promise((resolve) => pod.close(resolve));
  await h.close();
});

for (const honourReads of [true, false]) {
  const how = honourReads ? 'reading into one reused buffer' : "from a connection emitting 'data'";
  test(`port-forward: a client that stops reading holds the pod back, then gets every byte intact (${how})`, async (t) => {
    const h = await harness({ honourReads });
    // More than every socket buffer on the way can hold (loopback autotuning: up to 4 MiB sent + 6 MiB received per hop).
    const out = randomBytes(48 * 1024 * 1024);
    let podDone = false;
    const pod = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.resume();
      sock.end(out, () => (podDone = true));
    });
    await new Promise<void>((resolve) => pod.listen(0, '127.0.0.1', resolve));
    h.ports.set(80, (pod.address() as net.AddressInfo).port);
    const client = await spdyPortForward(h.url({ kind: 'portforward', podSandboxId: 'p1', ports: [80] }));
    const conn = await client.connect(80);
    const chunks: Buffer[] = [];
    const ended = new Promise((resolve) => conn.data.once('end', resolve));
    conn.data.pause();
    // The session's socket and the client's receive buffer fill up: the pod must be made to wait, not buffered.
    await new Promise((resolve) => setTimeout(resolve, 300));
    t.false(podDone, 'the pod could not write everything while the client read nothing');
    conn.data.on('data', (c: Buffer) => chunks.push(c));
    conn.data.resume();
    conn.data.end();
    await ended;
    t.is(sha(Buffer.concat(chunks)), sha(out));
    t.is(await conn.error, '');
    client.close();
    await new Promise((resolve) => pod.close(resolve));
    await h.close();
  });
}

test('port-forward: a pod that stops reading holds the client back, then gets every byte intact', async (t) => {
  const h = await harness();
  const input = randomBytes(48 * 1024 * 1024);
  let podSock: net.Socket | undefined;
  const hash = createHash('sha256');
  let podGot = 0;
  const podEnded = new Promise<void>((resolve) => {
    const pod = net.createServer((sock) => {
      podSock = sock;
      sock.pause();
      sock.on('data', (c: Buffer) => {
        podGot += c.length;
        hash.update(c);
      });
      sock.on('end', () => {
        sock.end();
        resolve();
      });
    });
    pod.listen(0, '127.0.0.1', () => h.ports.set(80, (pod.address() as net.AddressInfo).port));
    t.teardown(() => void pod.close());
  });
  await until(() => h.ports.has(80), 'the pod to listen');
  const client = await spdyPortForward(h.url({ kind: 'portforward', podSandboxId: 'p1', ports: [80] }));
  const conn = await client.connect(80);
  conn.data.resume();
  let written = false;
  conn.data.end(input, () => (written = true));
  await until(() => podSock !== undefined, 'the pod connection');
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.false(written, 'berth took the whole upload while the pod read nothing');
  podSock!.resume();
  await podEnded;
  t.is(podGot, input.length);
  t.is(hash.digest('hex'), sha(input));
  client.close();
  await h.close();
});

test('port-forward: a refused dial and a bad port are errors on their own error stream; the session stays up', async (t) => {
  const h = await harness();
  const pod = net.createServer((sock) => sock.end('pong'));
  await new Promise<void>((resolve) => pod.listen(0, '127.0.0.1', resolve));
  h.ports.set(8080, (pod.address() as net.AddressInfo).port);
  const client = await spdyPortForward(h.url({ kind: 'portforward', podSandboxId: 'p1', ports: [] }));
  const refused = await client.connect(9);
  t.regex(await refused.error, /error forwarding port 9 to pod p1: .*connection refused/);
  for (const bad of ['0', '65536', 'http', '-1']) {
    const c = await client.connect(bad);
    t.regex(await c.error, /port|required/, bad);
  }
  const good = await client.connect(8080);
  const chunks: Buffer[] = [];
  good.data.on('data', (c: Buffer) => chunks.push(c));
  await new Promise((resolve) => good.data.once('end', resolve));
  good.data.end();
  t.is(Buffer.concat(chunks).toString(), 'pong');
  t.is(await good.error, '');
  t.false(client.session.closed);
  client.close();
  await new Promise((resolve) => pod.close(resolve));
  await h.close();
});

test('a client that never opens its streams is dropped after the stream creation timeout', async (t) => {
  const h = await harness({ streamCreationTimeoutMs: 200 });
  const conn = await spdyConnect(h.url(exec(['echo', 'x'])), ['v4.channel.k8s.io']);
  conn.session.openStream([['streamtype', 'error']]);
  await new Promise((resolve) => conn.session.once('close', resolve));
  t.is(h.rec.started, 0);
  await h.close();
});

function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1;
  return counts;
}

test('50 abandoned sessions abort their commands and leave no sockets or timers', async (t) => {
  const h = await harness();
  const before = activeResources();
  const sockets: Duplex[] = [];
  for (let i = 0; i < 50; i++) {
    const conn = await spdyConnect(h.url(exec(['hang'], { stdin: true })), ['v4.channel.k8s.io']);
    sockets.push(conn.socket);
    // Half vanish mid-command, half before their streams are all there.
    const types = i % 2 === 0 ? ['error', 'stdin', 'stdout', 'stderr'] : ['error', 'stdout'];
    await Promise.all(types.map((type) => conn.session.openStream([['streamtype', type]]).replied));
  }
  await until(() => h.rec.started === 25, 'the complete sessions to start');
  for (const s of sockets) s.destroy();
  await until(() => h.rec.aborted === 25 && h.rec.finished === 25, 'every command to see its abort');
  await until(async () => (await openConnections(h.server)) === 0, 'the server side sockets to close');
  await until(() => {
    const now = activeResources();
    return (now.TCPSocketWrap ?? 0) <= (before.TCPSocketWrap ?? 0) && (now.Timeout ?? 0) <= (before.Timeout ?? 0);
  }, `no socket or timer left over: before ${JSON.stringify(before)}, now ${JSON.stringify(activeResources())}`);
  t.pass();
  await h.close();
});

test('berth shutting down aborts a running exec and closes its session', async (t) => {
  const h = await harness();
  const run = spdyRemoteCommand(h.url(exec(['hang'])));
  await until(() => h.rec.started === 1, 'the command to start');
  h.shutdown.abort();
  const r = await run;
  t.is(h.rec.aborted, 1);
  t.is(r.exitCode, 137);
  await h.close();
});

test('garbage after the upgrade ends the session with GOAWAY(PROTOCOL_ERROR); nothing runs', async (t) => {
  const h = await harness();
  const conn = await spdyConnect(h.url(exec(['echo', 'x'])), ['v4.channel.k8s.io']);
  const received: Buffer[] = [];
  conn.socket.on('data', (c: Buffer) => received.push(c));
  // A SYN_STREAM whose header block is not zlib at all.
  conn.socket.write(Buffer.from('800300010000000e00000001000000000000deadbeef', 'hex'));
  await until(async () => (await openConnections(h.server)) === 0, 'the server to drop the connection');
  const bytes = Buffer.concat(received);
  t.deepEqual(bytes.subarray(-16), Buffer.from('80030007000000080000000000000001', 'hex'), 'GOAWAY with PROTOCOL_ERROR');
  t.is(h.rec.started, 0);
  conn.socket.destroy();
  await h.close();
});
