import test, { ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { promises as fs, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import tar from 'tar-stream';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, pushImage, PushedImage } from '../helpers/images.js';
import { podEnv, PodEnv, Pod } from '../helpers/pod-env.js';
import { waitFor } from '../helpers/util.js';
import { ChannelClient, plainRequest } from '../helpers/ws-client.js';
import { spdyOverWebSocketPortForward, spdyPortForward, spdyRemoteCommand } from '../helpers/spdy-client.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// kubectl exec, attach, port-forward and cp through berth's streaming server, over both wire protocols a client
// may speak (SPDY/3.1 as kubelet's proxy and crictl do by default, WebSocket as crictl --transport websocket),
// against real containers of a real image. Every test ends with the leak check of podEnv's teardown.

let registry: Registry;
let image: PushedImage;
let fixture: string;

test.before(async () => {
  registry = await startRegistry();
  fixture = path.join(os.tmpdir(), `berth-echo-server-${process.pid}`);
  execFileSync('gcc', ['-static', '-O2', '-o', fixture, fileURLToPath(new URL('../../../test/fixtures/echo-server.c', import.meta.url))]);
  const bin = await layer([{ type: 'file', path: 'usr/bin/echo-server', content: readFileSync(fixture), mode: 0o755, uid: 0, gid: 0 }]);
  image = await pushImage(registry, 'berth/streaming', 'v1', { layers: [await busyboxLayer(), bin], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await fs.rm(fixture, { force: true });
  await registry?.stop();
});

type Wire = 'spdy' | 'websocket';
/** How a port-forward client may speak: also SPDY tunneled through WebSocket (client-go 1.30+'s --transport websocket). */
type ForwardWire = Wire | 'spdy-over-websocket';
const WIRES: Wire[] = ['spdy', 'websocket'];

interface Session {
  stdout: string;
  stderr: string;
  exitCode: number | null;
}

interface SessionOptions {
  stdin?: Buffer | string;
  tty?: boolean;
  resize?: { width: number; height: number };
  stderr?: boolean;
}

/** One exec or attach session to its end, over the given wire protocol, as kubectl would run it. */
async function session(wire: Wire, url: string, opts: SessionOptions = {}): Promise<Session> {
  if (wire === 'spdy') {
    const r = await spdyRemoteCommand(url, { stdin: opts.stdin, tty: opts.tty, stderr: opts.stderr, resizes: opts.resize ? [opts.resize] : [] });
    return { stdout: r.stdout.toString(), stderr: r.stderr.toString(), exitCode: r.exitCode };
  }
  const c = await ChannelClient.connect(url, { protocols: ['v5.channel.k8s.io', 'v4.channel.k8s.io'] });
  if (opts.resize) c.resize(opts.resize.width, opts.resize.height);
  if (opts.stdin !== undefined) {
    c.send(0, opts.stdin);
    c.closeChannel(0);
  }
  await c.closed;
  const statusText = c.text(3);
  const status = statusText ? (JSON.parse(statusText) as { status: string; details?: { causes: { reason: string; message: string }[] } }) : null;
  let exitCode: number | null = null;
  if (status?.status === 'Success') exitCode = 0;
  else {
    const cause = status?.details?.causes.find((x) => x.reason === 'ExitCode');
    if (cause) exitCode = Number(cause.message);
  }
  return { stdout: c.text(1), stderr: c.text(2), exitCode };
}

interface Env extends PodEnv {
  running(c?: Partial<ContainerConfig>, pod?: Pod): Promise<{ pod: Pod; id: string }>;
  execUrl(id: string, cmd: string[], o?: { stdin?: boolean; tty?: boolean; stderr?: boolean }): Promise<string>;
}

async function env(t: ExecutionContext): Promise<Env> {
  const p = await podEnv(t, { registryHost: registry.host, image: image.ref });
  return {
    ...p,
    async running(c = {}, pod) {
      pod ??= await p.pod();
      const id = await p.container(pod, { command: ['sleep', '1000'], ...c });
      return { pod, id };
    },
    async execUrl(id, cmd, o = {}) {
      const tty = o.tty ?? false;
      const r = await p.berth.runtime.Exec({ container_id: id, cmd, stdin: o.stdin ?? false, stdout: true, stderr: o.stderr ?? !tty, tty });
      return r.url;
    },
  };
}

for (const wire of WIRES) {
  test(`exec over ${wire}: output, exit codes, stdin through cat with EOF ending it`, async (t) => {
    const e = await env(t);
    const { id } = await e.running();
    const hi = await session(wire, await e.execUrl(id, ['echo', 'hi']));
    t.deepEqual(hi, { stdout: 'hi\n', stderr: '', exitCode: 0 });
    const three = await session(wire, await e.execUrl(id, ['sh', '-c', 'echo err >&2; exit 3']));
    t.is(three.exitCode, 3);
    t.is(three.stderr, 'err\n');
    const killed = await session(wire, await e.execUrl(id, ['sh', '-c', 'kill -9 $$']));
    t.is(killed.exitCode, 137, 'a command killed by signal 9 reports 128+9');
    const input = randomBytes(256 * 1024).toString('base64');
    const cat = await session(wire, await e.execUrl(id, ['cat'], { stdin: true }), { stdin: input });
    t.is(cat.exitCode, 0);
    t.is(cat.stdout, input, 'stdin came back through cat, and its EOF ended cat');
  });

  test(`exec over ${wire} with a tty: the terminal is the container's and has the client's size`, async (t) => {
    const e = await env(t);
    const { id } = await e.running();
    // The client sends its size as the session starts; the command waits for it (a loaded machine may take a while).
    const r = await session(wire, await e.execUrl(id, ['sh', '-c', 'for i in $(seq 200); do s=$(stty size 2>/dev/null); case "$s" in "" | "0 0") sleep 0.1 ;; *) break ;; esac; done; tty; echo "$s"'], { tty: true }), { tty: true, resize: { width: 123, height: 45 } });
    t.is(r.exitCode, 0);
    if (!/45 123/.test(r.stdout)) t.log(e.berth.logs.filter((l) => /exec|resiz|stream/.test(l)).join('\n'));
    t.regex(r.stdout, /^\/dev\/pts\/\d+\r?\n45 123\r?\n$/);
  });

  test(`exec over ${wire} runs as the container's user with its reduced capabilities`, async (t) => {
    const e = await env(t);
    const { id } = await e.running({ linux: { security_context: { run_as_user: { value: '1000' }, run_as_group: { value: '1000' } } } });
    const r = await session(wire, await e.execUrl(id, ['sh', '-c', 'id -u; id -g; grep CapEff /proc/self/status']));
    const [uid, gid, caps] = r.stdout.trim().split('\n');
    t.is(uid, '1000');
    t.is(gid, '1000');
    t.is(caps, 'CapEff:\t0000000000000000', 'a non-root user keeps no effective capability');
    const root = await e.running();
    const rootCaps = (await session(wire, await e.execUrl(root.id, ['grep', 'CapEff', '/proc/self/status']))).stdout.trim();
    t.not(rootCaps, 'CapEff:\t000001ffffffffff', 'root in the container has the default set, not all of the host');
    t.not(rootCaps, 'CapEff:\t0000000000000000');
  });

  test(`attach over ${wire}: live output to two clients at once, input to the container, stdin_once`, async (t) => {
    const e = await env(t);
    const pod = await e.pod();
    const id = await e.container(pod, { command: ['sh', '-c', 'while read line; do echo "got $line"; done; echo "stdin closed"; sleep 1000'], stdin: true, stdin_once: true });
    const url = async (stdin: boolean) => (await e.berth.runtime.Attach({ container_id: id, stdin, stdout: true, stderr: true, tty: false })).url;
    // The watcher only reads (kubectl attach without -i): a client with stdin holds a writer of the container's
    // stdin, and the container reads EOF only once every writer is gone.
    const watcher = await ChannelClient.connect(await url(false), { protocols: ['v5.channel.k8s.io'] });
    // An attach lasts until its client detaches (the container keeps running): each client leaves once it saw
    // the container react to the end of its stdin.
    const writerSaw = await attachAndType(wire, await url(true), 'one\ntwo\n', 'stdin closed');
    await watcher.until(() => watcher.text(1).includes('stdin closed'), 'the watcher to see the output');
    t.is(watcher.text(1), 'got one\ngot two\nstdin closed\n', 'a second attach sees what the first one caused, live');
    t.is(writerSaw, 'got one\ngot two\nstdin closed\n');
    watcher.close();
    await watcher.closed;
  });

  test(`port-forward over ${wire}: 10 MiB each way on two concurrent connections, and a refused port on its error stream`, async (t) => {
    const e = await env(t);
    const port = 18000 + Math.floor(Math.random() * 1000);
    const { pod, id } = await e.running({ command: ['echo-server', String(port)] });
    await waitFor('the echo server', async () => listening((await e.berth.runtime.ExecSync({ container_id: id, cmd: ['cat', '/proc/net/tcp'], timeout: 5 })).stdout.toString(), port));
    const payloads = [randomBytes(10 << 20), randomBytes(10 << 20)];
    const newUrl = async () => (await e.berth.runtime.PortForward({ pod_sandbox_id: pod.id, port: [port, 9] })).url;
    const digests = await forwardAll(wire, newUrl, port, payloads);
    for (let i = 0; i < payloads.length; i++) t.is(digests.back[i], sha256(payloads[i]!), `connection ${i} came back intact`);
    t.regex(digests.refused, /refused/i);
  });
}

test('attach to a tty container passes the client terminal size to its pty', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  const id = await e.container(pod, { command: ['sh', '-c', 'while true; do stty size; sleep 0.2; done'], tty: true, stdin: true });
  const url = (await e.berth.runtime.Attach({ container_id: id, stdin: false, stdout: true, stderr: false, tty: true })).url;
  let seen = '';
  await spdyRemoteCommand(url, {
    tty: true,
    resizes: [{ width: 77, height: 21 }],
    onStreams(streams, conn) {
      streams.get('stdout')!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('21 77')) conn.session.close();
      });
    },
  }).catch(() => undefined);
  t.regex(seen, /21 77/);
});

test('port-forward over SPDY tunneled through WebSocket (client-go 1.30+): two concurrent connections, and a refused port', async (t) => {
  const e = await env(t);
  const port = 18000 + Math.floor(Math.random() * 1000);
  const { pod, id } = await e.running({ command: ['echo-server', String(port)] });
  await waitFor('the echo server', async () => listening((await e.berth.runtime.ExecSync({ container_id: id, cmd: ['cat', '/proc/net/tcp'], timeout: 5 })).stdout.toString(), port));
  const payloads = [randomBytes(4 << 20), randomBytes(4 << 20)];
  const newUrl = async () => (await e.berth.runtime.PortForward({ pod_sandbox_id: pod.id, port: [] })).url;
  const digests = await forwardAll('spdy-over-websocket', newUrl, port, payloads);
  for (let i = 0; i < payloads.length; i++) t.is(digests.back[i], sha256(payloads[i]!), `connection ${i} came back intact`);
  t.regex(digests.refused, /refused/i);
});

test('port-forward to a host-network pod reaches the node loopback port it listens on', async (t) => {
  const e = await env(t);
  const port = 19000 + Math.floor(Math.random() * 1000);
  const pod = await e.pod({ linux: { security_context: { namespace_options: { network: 'NODE', pid: 'POD', ipc: 'POD' } } } });
  await e.running({ command: ['echo-server', String(port)] }, pod);
  await waitFor('the echo server', () => canConnect(port));
  const newUrl = async () => (await e.berth.runtime.PortForward({ pod_sandbox_id: pod.id, port: [port, 9] })).url;
  const payload = randomBytes(1 << 20);
  const digests = await forwardAll('spdy', newUrl, port, [payload]);
  t.is(digests.back[0], sha256(payload));
});

test('kubectl cp: a tar stream into a container and back out, over exec with stdin', async (t) => {
  const e = await env(t);
  const { id } = await e.running();
  const content = randomBytes(300 * 1024);
  const pack = tar.pack();
  pack.entry({ name: 'data/blob.bin', mode: 0o644 }, content);
  pack.entry({ name: 'data/note.txt', mode: 0o600 }, 'hello from kubectl cp\n');
  pack.finalize();
  const archive = await streamToBuffer(pack);
  // kubectl cp local → pod runs `tar -xmf - -C <dir>` with the archive on stdin; pod → local runs `tar cf - <path>`.
  const into = await session('spdy', await e.execUrl(id, ['tar', '-xmf', '-', '-C', '/tmp'], { stdin: true }), { stdin: archive });
  t.is(into.exitCode, 0, into.stderr);
  const out = await spdyRemoteCommand(await e.execUrl(id, ['tar', 'cf', '-', '-C', '/tmp', 'data']), {});
  t.is(out.exitCode, 0);
  const files = await untar(out.stdout).catch((err: Error) => {
    throw new Error(`the archive read back (${out.stdout.length} bytes) is not whole: ${err.message}`);
  });
  t.is(sha256(files.get('data/blob.bin')!), sha256(content));
  t.is(files.get('data/note.txt')!.toString(), 'hello from kubectl cp\n');
});

test('a token works once: reusing a URL is refused with 404 and opens no stream', async (t) => {
  const e = await env(t);
  const { id } = await e.running();
  const url = await e.execUrl(id, ['echo', 'once']);
  t.is((await session('spdy', url)).stdout, 'once\n');
  const again = await plainRequest(url);
  t.is(again.status, 404);
});

test('streaming RPCs refuse what kubelet would: unknown ids, stopped containers, bad stdio combinations', async (t) => {
  const e = await env(t);
  const { pod, id } = await e.running();
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as { code?: number }).code;
  t.is(await code(e.berth.runtime.Exec({ container_id: 'feedface', cmd: ['true'], stdout: true })), 5, 'NOT_FOUND');
  t.is(await code(e.berth.runtime.PortForward({ pod_sandbox_id: 'feedface', port: [80] })), 5);
  t.is(await code(e.berth.runtime.Exec({ container_id: id, cmd: [], stdout: true })), 3, 'INVALID_ARGUMENT');
  t.is(await code(e.berth.runtime.Exec({ container_id: id, cmd: ['true'] })), 3);
  t.is(await code(e.berth.runtime.Exec({ container_id: id, cmd: ['true'], stdout: true, stderr: true, tty: true })), 3);
  await e.berth.runtime.StopContainer({ container_id: id, timeout: 0 });
  t.is(await code(e.berth.runtime.Exec({ container_id: id, cmd: ['true'], stdout: true })), 9, 'FAILED_PRECONDITION');
  t.is(await code(e.berth.runtime.Attach({ container_id: id, stdout: true })), 9);
  t.truthy(pod);
});

test('50 abandoned sessions leave no process, fd or socket behind', async (t) => {
  const e = await env(t);
  const { id } = await e.running();
  const berthFds = () => readdirSync(`/proc/${e.berth.child.pid}/fd`).length;
  // The sleeps in the container: its init and whatever an abandoned session left (counting every process would
  // count the counting shell's own children, which come and go).
  const containerProcs = async () => (await e.berth.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'pidof sleep | wc -w'], timeout: 10 })).stdout.toString().trim();
  // One warm-up session so that lazily opened descriptors (the sealed shim, the server's) are counted before.
  await session('spdy', await e.execUrl(id, ['true']));
  const fdsBefore = berthFds();
  const procsBefore = await containerProcs();
  t.is(procsBefore, '1', 'the init alone');
  for (let i = 0; i < 50; i++) {
    const url = await e.execUrl(id, ['sleep', '1000'], { stdin: true });
    if (i % 2 === 0) {
      const c = await ChannelClient.connect(url, { protocols: ['v5.channel.k8s.io'] });
      c.terminate();
    } else {
      const r = spdyRemoteCommand(url, { stdin: new PassThrough(), onStreams: (_s, conn) => setTimeout(() => conn.socket.destroy(), 100) });
      await r.catch(() => undefined);
    }
  }
  await waitFor('abandoned sessions to be cleaned up', async () => (await containerProcs()) === procsBefore && berthFds() <= fdsBefore, { timeoutMs: 30000 });
  t.is(await containerProcs(), procsBefore);
  t.true(berthFds() <= fdsBefore, `berth holds ${berthFds()} fds, ${fdsBefore} before`);
});

/** Attaches, types `input` and closes stdin, reads stdout until it has `until`, then detaches; what it read. */
async function attachAndType(wire: Wire, url: string, input: string, until: string): Promise<string> {
  if (wire === 'websocket') {
    const c = await ChannelClient.connect(url, { protocols: ['v5.channel.k8s.io'] });
    c.send(0, input);
    c.closeChannel(0);
    await c.until(() => c.text(1).includes(until), `"${until}" on stdout`).catch((err: Error) => {
      throw new Error(`${err.message}; stdout so far: ${JSON.stringify(c.text(1))}, stderr: ${JSON.stringify(c.text(2))}, error: ${JSON.stringify(c.text(3))}`);
    });
    c.close();
    await c.closed;
    return c.text(1);
  }
  let seen = '';
  const stdin = new PassThrough();
  await spdyRemoteCommand(url, {
    stdin,
    onStreams(streams, conn) {
      streams.get('stdout')!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes(until)) conn.session.close();
      });
      stdin.end(input);
    },
  }).catch(() => undefined); // a detach is the client closing the session: no status is read
  return seen;
}

function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** Whether /proc/net/tcp text has a socket listening (state 0A) on port. */
function listening(procNetTcp: string, port: number): boolean {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return procNetTcp.split('\n').some((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[1]?.endsWith(hex) && fields[3] === '0A';
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

function streamToBuffer(stream: { on(event: string, listener: (...args: any[]) => void): unknown }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

/** The files of a tar archive; rejects when it is not a whole archive (cut short, say). */
async function untar(archive: Buffer): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      streamToBuffer(stream).then((b) => {
        if (header.type === 'file') files.set(header.name, b);
        next();
      }, reject);
    });
    extract.on('finish', () => resolve());
    extract.on('error', reject);
  });
  extract.end(archive);
  await done;
  return files;
}

/**
 * Sends each payload through its own forwarded connection, all at once; what came back of each, and the error of
 * port 9 (nothing listens there). SPDY opens every connection on one session; the WebSocket form forwards the
 * request's ports once per session, so each payload gets a session (and a URL) of its own.
 */
async function forwardAll(wire: ForwardWire, newUrl: () => Promise<string>, port: number, payloads: Buffer[]): Promise<{ back: string[]; refused: string }> {
  if (wire !== 'websocket') {
    const client = await (wire === 'spdy' ? spdyPortForward : spdyOverWebSocketPortForward)(await newUrl());
    try {
      const back = await Promise.all(payloads.map(async (payload) => {
        const conn = await client.connect(port);
        const received = streamToBuffer(conn.data);
        conn.data.end(payload);
        return sha256(await received);
      }));
      const refused = await client.connect(9);
      refused.data.end();
      return { back, refused: await refused.error };
    } finally {
      client.close();
    }
  }
  const results = await Promise.all(payloads.map(async (payload) => {
    const c = await ChannelClient.connect(await newUrl(), { protocols: ['v4.channel.k8s.io'] });
    try {
      for (let off = 0; off < payload.length; off += 32 * 1024) c.send(0, payload.subarray(off, off + 32 * 1024));
      // Every channel's first frame is its port (2 bytes, little-endian); the echo follows on the data channel.
      await c.until(() => c.data(0).length - 2 >= payload.length, 'the echo', 120000);
      await c.until(() => c.frames(3).length >= 2, 'the refused port');
      return { back: sha256(c.data(0).subarray(2)), refused: c.frames(3)[1]!.toString() };
    } finally {
      c.close();
      await c.closed;
    }
  }));
  return { back: results.map((r) => r.back), refused: results[0]!.refused };
}
