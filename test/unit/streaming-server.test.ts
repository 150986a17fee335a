import test, { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { defaultConfig, StreamingConfig, ConfigError } from '../../src/config/schema.js';
import { BerthError, notFound } from '../../src/errors.js';
import { logger, setLogSink } from '../../src/log.js';
import { StreamingServer, StreamingProtocols } from '../../src/streaming/server.js';
import { StreamingService } from '../../src/streaming/service.js';
import { TokenCache } from '../../src/streaming/tokens.js';
import type { ExecTarget, SessionIO, StreamingBackend, StreamingTargets, TerminalSize } from '../../src/streaming/types.js';
import { websocketUpgradeHandler } from '../../src/streaming/websocket.js';
import { ChannelClient, HttpRefusal, plainRequest } from '../helpers/ws-client.js';

// The streaming server over real loopback with a fake backend: the wire protocols, tokens, URLs and shutdown are
// berth's; only the container side is played by the test (its behaviour is the shim's, tested elsewhere).

const logs: Record<string, unknown>[] = [];
setLogSink((line) => logs.push(JSON.parse(line)));

interface Recorder {
  calls: string[];
  aborted: number;
}

/** Commands the fake backend understands, each standing for what a real container would do. */
function fakeBackend(rec: Recorder, ports: Map<number, number>): StreamingBackend {
  const run = async (target: ExecTarget, io: SessionIO): Promise<number> => {
    const [cmd, ...args] = target.cmd;
    io.signal.addEventListener('abort', () => rec.aborted++);
    switch (cmd) {
      case 'echo':
        io.stdout?.write(args.join(' ') + '\n');
        io.stderr?.write('to stderr\n');
        return 0;
      case 'exit':
        return Number(args[0]);
      case 'cat':
        for await (const chunk of io.stdin!) io.stdout!.write(chunk);
        return 0;
      case 'stty-size': {
        const size = await new Promise<TerminalSize>((resolve) => io.onResize(resolve));
        io.stdout!.write(`${size.height} ${size.width}\n`);
        return 0;
      }
      case 'sleep':
        await new Promise((resolve) => io.signal.addEventListener('abort', resolve));
        return 137;
      case 'flood': {
        // args: bytes of output, written as fast as the client takes them; its sha256 goes to stderr.
        const data = randomBytes(Number(args[0]));
        for (let at = 0; at < data.length; at += 64 * 1024) {
          if (!io.stdout!.write(data.subarray(at, at + 64 * 1024))) await new Promise((resolve) => io.stdout!.once('drain', resolve));
        }
        io.stderr!.write(createHash('sha256').update(data).digest('hex'));
        // Once the last of it is accepted (queued towards the client), the session writes the status and closes.
        await new Promise((resolve) => io.stdout!.write(Buffer.alloc(0), resolve));
        rec.calls.push('flood written');
        return 0;
      }
      default:
        throw new BerthError('failed_precondition', `container stopped`);
    }
  };
  return {
    exec: async (target, io) => {
      rec.calls.push(`exec ${target.cmd.join(' ')}`);
      return { exitCode: await run(target, io) };
    },
    attach: async (target, io) => {
      rec.calls.push(`attach ${target.containerId}`);
      io.stdout?.write('attached\n');
    },
    portForward: (pod, port, signal) => {
      rec.calls.push(`portforward ${pod} ${port}`);
      const real = ports.get(port);
      if (!real) return Promise.reject(new Error(`dial tcp 127.0.0.1:${port}: connection refused`));
      return new Promise<Duplex>((resolve, reject) => {
        const conn = net.connect(real, '127.0.0.1', () => resolve(conn));
        conn.once('error', reject);
        signal.addEventListener('abort', () => conn.destroy());
      });
    },
  };
}

const targets: StreamingTargets = {
  runningContainer: async (id) => {
    if (id === 'gone') throw notFound(`container "${id}" not found`);
    return `${id}-full`;
  },
  readyPod: async (id) => `${id}-full`,
};

interface Bed {
  server: StreamingServer;
  service: StreamingService;
  tokens: TokenCache;
  rec: Recorder;
  ports: Map<number, number>;
}

async function bed(t: ExecutionContext, config: Partial<StreamingConfig> = {}, protocols: StreamingProtocols = { websocket: websocketUpgradeHandler }): Promise<Bed> {
  const rec: Recorder = { calls: [], aborted: 0 };
  const ports = new Map<number, number>();
  const tokens = new TokenCache();
  const server = await StreamingServer.start({
    config: { ...defaultConfig().streaming, ...config },
    tokens,
    backend: fakeBackend(rec, ports),
    protocols,
    log: logger({ test: t.title }),
  });
  t.teardown(() => server.close());
  return { server, service: new StreamingService(tokens, targets, server.baseUrl), tokens, rec, ports };
}

function execTarget(cmd: string[], io: Partial<ExecTarget> = {}): ExecTarget {
  return { kind: 'exec', containerId: 'c1', cmd, stdin: false, stdout: true, stderr: true, tty: false, ...io };
}

function status(client: ChannelClient): { status: string; reason?: string; message?: string; details?: { causes: { reason: string; message: string }[] } } {
  return JSON.parse(client.text(3));
}

test('the URLs carry scheme, the bound host and port, the kind and a token; the target ids are the full ones', async (t) => {
  const b = await bed(t);
  const url = new URL(await b.service.exec(execTarget(['echo'])));
  t.is(url.protocol, 'http:');
  t.is(url.hostname, '127.0.0.1');
  t.not(url.port, '0');
  t.is(`${url.protocol}//${url.host}`, b.server.baseUrl);
  t.regex(url.pathname, /^\/exec\/[A-Za-z0-9_-]{22}$/);
  t.regex(new URL(await b.service.attach({ kind: 'attach', containerId: 'c', stdin: false, stdout: true, stderr: false, tty: false })).pathname, /^\/attach\//);
  const pf = new URL(await b.service.portForward({ kind: 'portforward', podSandboxId: 'p', ports: [80] }));
  t.regex(pf.pathname, /^\/portforward\//);
  t.is(b.tokens.consume(pf.pathname.split('/')[2])?.kind, 'portforward');
  await t.throwsAsync(b.service.exec(execTarget(['echo'], { containerId: 'gone' })), { message: /not found/ });
});

test('a wildcard bind address puts a reachable address in the URL, not 0.0.0.0', async (t) => {
  const b = await bed(t, { address: '0.0.0.0:0' });
  const host = new URL(b.server.baseUrl).hostname;
  t.not(host, '0.0.0.0');
  t.true(net.isIPv4(host));
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['echo', 'hi'])), { protocols: ['v5.channel.k8s.io'] });
  await c.closed;
  t.is(c.text(1), 'hi\n');
});

test('an unknown, reused, expired or mismatched token gets 404 and no session is opened', async (t) => {
  let now = 0;
  const tokens = new TokenCache({ now: () => now });
  const rec: Recorder = { calls: [], aborted: 0 };
  const server = await StreamingServer.start({ config: defaultConfig().streaming, tokens, backend: fakeBackend(rec, new Map()), protocols: { websocket: websocketUpgradeHandler }, log: logger() });
  t.teardown(() => server.close());
  const service = new StreamingService(tokens, targets, server.baseUrl);
  const refused = async (url: string) => {
    const err = await t.throwsAsync(ChannelClient.connect(url, { protocols: ['v5.channel.k8s.io'] }), { instanceOf: HttpRefusal });
    t.is((err as HttpRefusal).status, 404, url);
  };
  await refused(`${server.baseUrl}/exec/AAAAAAAAAAAAAAAAAAAAAA`);
  await refused(`${server.baseUrl}/nothing/here`);
  const used = await service.exec(execTarget(['echo', 'once']));
  const first = await ChannelClient.connect(used, { protocols: ['v5.channel.k8s.io'] });
  await first.closed;
  await refused(used);
  const expiring = await service.exec(execTarget(['echo', 'late']));
  now += 60_000;
  await refused(expiring);
  // A token for an exec does not open an attach.
  const exec = await service.exec(execTarget(['echo', 'wrong door']));
  await refused(exec.replace('/exec/', '/attach/'));
  t.deepEqual(rec.calls, ['exec echo once']);
  t.is((await plainRequest(`${server.baseUrl}/exec/nope`)).status, 404);
});

test('exec over v5.channel.k8s.io: stdout and stderr on their channels, then a Success status, then close', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['echo', 'hi'])), { protocols: ['v5.channel.k8s.io', 'v4.channel.k8s.io'] });
  t.is(c.protocol, 'v5.channel.k8s.io');
  const closed = await c.closed;
  t.is(closed.code, 1000);
  t.is(c.text(1), 'hi\n');
  t.is(c.text(2), 'to stderr\n');
  t.is(status(c).status, 'Success');
  t.deepEqual(b.rec.calls, ['exec echo hi']);
  const started = logs.find((e) => e.msg === 'streaming session started' && e.test === t.title);
  t.is(started?.container, 'c1-full');
  // The server logs the end once its socket has closed, which may come a moment after the client saw the close.
  const deadline = Date.now() + 10000;
  while (!logs.some((e) => e.msg === 'streaming session ended' && e.test === t.title) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.truthy(logs.find((e) => e.msg === 'streaming session ended' && e.test === t.title));
});

test('a client that stops reading for longer than the close wait still gets all the output, then the status and a clean close', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['flood', String(8 << 20)])), { protocols: ['v5.channel.k8s.io'] });
  // Reading in sips until the command has written everything: the kernel's buffers are full and up to a MiB of
  // output waits in berth when berth closes the session. The client takes it only after the 5 s berth gives a
  // client to answer the close.
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  c.ws.pause();
  while (!b.rec.calls.includes('flood written')) {
    c.ws.resume();
    await new Promise((resolve) => setImmediate(resolve));
    c.ws.pause();
    await sleep(20);
  }
  await sleep(6500);
  c.ws.resume();
  const closed = await c.closed;
  t.is(closed.code, 1000);
  const out = c.data(1);
  t.is(out.length, 8 << 20);
  t.is(createHash('sha256').update(out).digest('hex'), c.text(2));
  t.is(status(c).status, 'Success');
});

test('an exit code of 3 comes back as 3 in the ExitCode cause (v4), and as text before v4', async (t) => {
  const b = await bed(t);
  const v4 = await ChannelClient.connect(await b.service.exec(execTarget(['exit', '3'])), { protocols: ['v4.channel.k8s.io'] });
  await v4.closed;
  const s = status(v4);
  t.is(s.status, 'Failure');
  t.is(s.reason, 'NonZeroExitCode');
  t.deepEqual(s.details?.causes, [{ reason: 'ExitCode', message: '3' }]);
  const old = await ChannelClient.connect(await b.service.exec(execTarget(['exit', '3'])), { protocols: ['channel.k8s.io'] });
  await old.closed;
  t.regex(old.text(3), /exit code 3/);
  t.throws(() => JSON.parse(old.text(3)));
  const none = await ChannelClient.connect(await b.service.exec(execTarget(['exit', '0'])), {});
  await none.closed;
  t.is(none.protocol, '');
  t.is(none.text(3), '', 'before v4 a success writes nothing');
});

test('stdin reaches the command and the v5 close signal is its EOF, which ends cat', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['cat'], { stdin: true, stderr: false })), { protocols: ['v5.channel.k8s.io'] });
  c.send(0, 'line one\n');
  await c.until(() => c.text(1) === 'line one\n', 'the echo of line one');
  c.send(0, 'line two\n');
  c.closeChannel(0);
  t.is((await c.closed).code, 1000);
  t.is(c.text(1), 'line one\nline two\n');
  t.is(status(c).status, 'Success');
});

test('with tty, a resize event reaches the session (split across frames), and stderr is not offered', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['stty-size'], { tty: true, stderr: false })), { protocols: ['v5.channel.k8s.io'] });
  c.send(4, '{"Width":1');
  c.send(4, '23,"Height":45}');
  await c.closed;
  t.is(c.text(1), '45 123\n');
});

test('the base64 variants send text frames of digit + base64 both ways', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['cat'], { stdin: true, stderr: false })), { protocols: ['v4.base64.channel.k8s.io'] });
  t.is(c.protocol, 'v4.base64.channel.k8s.io');
  c.send(0, 'über\n');
  await c.until(() => c.text(1) === 'über\n', 'the echo');
  c.close();
  await c.closed;
  t.pass();
});

test('a protocol berth does not serve is refused with 400 naming what it serves; SPDY without its handler gets 400 naming SPDY', async (t) => {
  const b = await bed(t);
  const err = (await t.throwsAsync(ChannelClient.connect(await b.service.exec(execTarget(['echo'])), { protocols: ['v9.channel.k8s.io'] }))) as HttpRefusal;
  t.is(err.status, 400);
  t.regex(err.body, /v5\.channel\.k8s\.io/);
  const spdy = await plainRequest(await b.service.exec(execTarget(['echo'])), { Connection: 'Upgrade', Upgrade: 'SPDY/3.1', 'X-Stream-Protocol-Version': 'v4.channel.k8s.io' });
  t.is(spdy.status, 400);
  t.regex(spdy.body, /SPDY\/3\.1/);
  t.deepEqual(b.rec.calls, []);
});

test('a backend failure ends the session with a Failure status naming it', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['no-such-thing'])), { protocols: ['v5.channel.k8s.io'] });
  await c.closed;
  t.is(status(c).status, 'Failure');
  t.regex(status(c).message!, /error executing command in container: container stopped/);
});

test('attach joins the stdio and ends with Success', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.attach({ kind: 'attach', containerId: 'c9', stdin: false, stdout: true, stderr: false, tty: false }), { protocols: ['v5.channel.k8s.io'] });
  await c.closed;
  t.is(c.text(1), 'attached\n');
  t.is(status(c).status, 'Success');
  t.deepEqual(b.rec.calls, ['attach c9-full']);
});

async function echoServer(t: ExecutionContext): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as net.AddressInfo).port;
}

test('port-forward over v4.channel.k8s.io: port prefixes, 10 MiB through an echo server intact, a refused port on its error channel', async (t) => {
  const b = await bed(t);
  b.ports.set(8080, await echoServer(t));
  const c = await ChannelClient.connect(await b.service.portForward({ kind: 'portforward', podSandboxId: 'p1', ports: [8080, 9] }), { protocols: ['v4.channel.k8s.io'] });
  await c.until(() => c.frames(3).length === 2, 'the refused port');
  t.deepEqual(c.frames(0)[0], Buffer.of(0x90, 0x1f), '8080 little-endian on the data channel');
  t.deepEqual(c.frames(1)[0], Buffer.of(0x90, 0x1f), 'and on the error channel');
  t.deepEqual(c.frames(2)[0], Buffer.of(9, 0));
  t.regex(c.frames(3)[1].toString(), /error forwarding port 9 to pod p1-full: .*connection refused/);
  const payload = randomBytes(10 << 20);
  for (let off = 0; off < payload.length; off += 32 * 1024) c.send(0, payload.subarray(off, off + 32 * 1024));
  const received = () => c.data(0).length - 2;
  await c.until(() => received() >= payload.length, '10 MiB back', 60000);
  const digest = (buf: Buffer) => createHash('sha256').update(buf).digest('hex');
  t.is(digest(c.data(0).subarray(2)), digest(payload));
  c.close();
  await c.closed;
  t.true(b.rec.calls.includes('portforward p1-full 8080'));
});

test('port-forward over WebSocket without ports in the request is refused with 400', async (t) => {
  const b = await bed(t);
  const err = (await t.throwsAsync(ChannelClient.connect(await b.service.portForward({ kind: 'portforward', podSandboxId: 'p1', ports: [] }), { protocols: ['v4.channel.k8s.io'] }))) as HttpRefusal;
  t.is(err.status, 400);
});

test('shutdown ends in-flight sessions: the backend sees its signal abort, the client a close, and close() resolves', async (t) => {
  const b = await bed(t);
  const c = await ChannelClient.connect(await b.service.exec(execTarget(['sleep'])), { protocols: ['v5.channel.k8s.io'] });
  await c.until(() => b.rec.calls.length === 1, 'the session to start');
  t.is(b.server.activeSessions, 1);
  await b.server.close();
  const closed = await c.closed;
  t.true([1000, 1001, 1006].includes(closed.code), `close code ${closed.code}`);
  t.is(b.rec.aborted, 1);
  t.is(b.server.activeSessions, 0);
  await t.throwsAsync(plainRequest(`${b.server.baseUrl}/exec/x`), undefined, 'no longer listening');
});

test('a client that disappears mid-session aborts the backend and leaves no session behind', async (t) => {
  const b = await bed(t);
  for (let i = 0; i < 5; i++) {
    const c = await ChannelClient.connect(await b.service.exec(execTarget(['sleep'])), { protocols: ['v5.channel.k8s.io'] });
    await c.until(() => b.rec.calls.length === i + 1, 'the session to start');
    c.terminate();
  }
  const deadline = Date.now() + 10000;
  while ((b.rec.aborted < 5 || b.server.activeSessions > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.is(b.rec.aborted, 5);
  t.is(b.server.activeSessions, 0);
});

test('HTTPS with the configured certificate: https URLs, and exec works over wss', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-tls-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore', timeout: 30000 });
  const b = await bed(t, { tlsCertFile: cert, tlsKeyFile: key });
  const url = await b.service.exec(execTarget(['echo', 'secure']));
  t.regex(url, /^https:\/\/127\.0\.0\.1:\d+\/exec\//);
  const c = await ChannelClient.connect(url, { protocols: ['v5.channel.k8s.io'], ca: await fs.readFile(cert) });
  await c.closed;
  t.is(c.text(1), 'secure\n');
  // A key that does not load refuses to start, naming the key.
  await fs.writeFile(key, '-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n');
  const err = await t.throwsAsync(bed(t, { tlsCertFile: cert, tlsKeyFile: key }), { instanceOf: ConfigError });
  t.is(err?.key, 'streaming.tls_key_file');
});

test('a taken address refuses to start, naming streaming.address', async (t) => {
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => holder.close(() => resolve())));
  const port = (holder.address() as net.AddressInfo).port;
  const err = await t.throwsAsync(bed(t, { address: `127.0.0.1:${port}` }), { instanceOf: ConfigError });
  t.is(err?.key, 'streaming.address');
  t.regex(err!.message, /EADDRINUSE/);
});
