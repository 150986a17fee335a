import test from 'ava';
import { PassThrough, Writable } from 'node:stream';
import { failedPrecondition, notFound } from '../../src/errors.js';
import { logger } from '../../src/log.js';
import { Attachment, ContainerStreamsPort, InteractiveProcess, PodStreamsPort, ServiceStreamingBackend } from '../../src/streaming/backend.js';
import { SessionIO, TerminalSize } from '../../src/streaming/types.js';

// The glue between a protocol's session and the processes behind it, against fakes: what reaches the command,
// what reaches the client, and that a client going away ends what the session started.

function collect(): { sink: Writable; text: () => string; ended: () => boolean } {
  const chunks: Buffer[] = [];
  let ended = false;
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
    final(cb) {
      ended = true;
      cb();
    },
  });
  return { sink, text: () => Buffer.concat(chunks).toString(), ended: () => ended };
}

function session(opts: { stdin?: boolean; tty?: boolean; stderr?: boolean } = {}) {
  const stdin = opts.stdin ? new PassThrough() : null;
  const out = collect();
  const err = collect();
  const resizeListeners: ((s: TerminalSize) => void)[] = [];
  const abort = new AbortController();
  const io: SessionIO = {
    stdin,
    stdout: out.sink,
    stderr: opts.stderr === false || opts.tty ? null : err.sink,
    tty: opts.tty ?? false,
    onResize: (l) => resizeListeners.push(l),
    signal: abort.signal,
  };
  return { io, stdin, out, err, abort, resize: (s: TerminalSize) => resizeListeners.forEach((l) => l(s)) };
}

class FakeProcess implements InteractiveProcess {
  stdin = new PassThrough();
  stdout = new PassThrough();
  stderr = new PassThrough();
  input: Buffer[] = [];
  sizes: TerminalSize[] = [];
  killed = false;
  private finish!: (code: number) => void;
  private done = new Promise<number>((r) => (this.finish = r));
  constructor() {
    this.stdin.on('data', (d: Buffer) => this.input.push(d));
  }
  resize(size: TerminalSize) {
    this.sizes.push(size);
  }
  wait() {
    return this.done;
  }
  kill() {
    this.killed = true;
    this.exit(137);
  }
  exit(code: number) {
    this.stdout.end();
    this.stderr.end();
    this.finish(code);
  }
}

function backendWith(containers: Partial<ContainerStreamsPort>, pods: Partial<PodStreamsPort> = {}) {
  const port: ContainerStreamsPort = {
    runningContainer: async (id) => id,
    execInteractive: async () => {
      throw new Error('unexpected exec');
    },
    attach: async () => {
      throw new Error('unexpected attach');
    },
    ...containers,
  };
  const podPort: PodStreamsPort = {
    readyPod: async (id) => id,
    dial: async () => {
      throw new Error('unexpected dial');
    },
    ...pods,
  };
  return new ServiceStreamingBackend(port, podPort, logger({ test: 'streaming-backend' }));
}

const execTarget = (cmd: string[], tty = false) => ({ kind: 'exec' as const, containerId: 'c1', cmd, tty, stdin: true, stdout: true, stderr: !tty });

test('exec copies stdin to the command, its stdout and stderr to the client, and returns its exit code', async (t) => {
  const proc = new FakeProcess();
  let asked: { tty: boolean; stdin: boolean } | undefined;
  const backend = backendWith({ execInteractive: async (_id, _cmd, opts) => ((asked = opts), proc) });
  const s = session({ stdin: true });
  const outcome = backend.exec(execTarget(['cat']), s.io);
  await new Promise((r) => setImmediate(r));
  s.stdin!.end('typed');
  proc.stdout.write('out');
  proc.stderr.write('err');
  await new Promise((r) => setImmediate(r));
  proc.exit(3);
  t.deepEqual(await outcome, { exitCode: 3 });
  t.deepEqual(asked, { tty: false, stdin: true, ttySize: undefined });
  t.is(Buffer.concat(proc.input).toString(), 'typed');
  t.is(s.out.text(), 'out');
  t.is(s.err.text(), 'err');
  t.false(s.out.ended(), 'the protocol closes the client streams after writing the status');
});

test('exec resolves only after the output the command wrote before exiting reached the client', async (t) => {
  const proc = new FakeProcess();
  const backend = backendWith({ execInteractive: async () => proc });
  const s = session();
  const outcome = backend.exec(execTarget(['echo']), s.io);
  await new Promise((r) => setImmediate(r));
  proc.stdout.write('last words');
  proc.exit(0);
  await outcome;
  t.is(s.out.text(), 'last words');
});

test('exec passes terminal resizes to the process', async (t) => {
  const proc = new FakeProcess();
  const backend = backendWith({ execInteractive: async () => proc });
  const s = session({ tty: true });
  const outcome = backend.exec(execTarget(['sh'], true), s.io);
  await new Promise((r) => setImmediate(r));
  s.resize({ width: 100, height: 40 });
  proc.exit(0);
  await outcome;
  t.deepEqual(proc.sizes, [{ width: 100, height: 40 }]);
});

test('a client that goes away kills the exec command', async (t) => {
  const proc = new FakeProcess();
  const backend = backendWith({ execInteractive: async () => proc });
  const s = session();
  const outcome = backend.exec(execTarget(['sleep', '100']), s.io);
  await new Promise((r) => setImmediate(r));
  s.abort.abort();
  t.deepEqual(await outcome, { exitCode: 137 });
  t.true(proc.killed);
});

test('a client that goes away while its command is being started still gets it killed', async (t) => {
  const proc = new FakeProcess();
  const s = session();
  const backend = backendWith({
    execInteractive: async () => {
      s.abort.abort(); // the client leaves during the spawn
      return proc;
    },
  });
  t.deepEqual(await backend.exec(execTarget(['sleep', '100']), s.io), { exitCode: 137 });
  t.true(proc.killed);
});

test('exec refusals from the container service reach the protocol unchanged', async (t) => {
  const backend = backendWith({
    execInteractive: async () => {
      throw failedPrecondition('container c1 is not running');
    },
  });
  const err = await t.throwsAsync(backend.exec(execTarget(['true']), session().io));
  t.is((err as { kind?: string }).kind, 'failed_precondition');
});

class FakeAttachment implements Attachment {
  tty = false;
  stdin = true;
  stdinOnce = false;
  output = new PassThrough({ objectMode: true });
  sizes: TerminalSize[] = [];
  closed = false;
  written: Buffer[] = [];
  stdinClosed = 0;
  private finish!: () => void;
  ended = new Promise<void>((r) => (this.finish = r));
  constructor(opts: Partial<Pick<Attachment, 'tty' | 'stdin' | 'stdinOnce'>> = {}) {
    Object.assign(this, opts);
  }
  emit(stream: 'stdout' | 'stderr', text: string) {
    this.output.write({ stream, data: Buffer.from(text) });
  }
  resize(size: TerminalSize) {
    this.sizes.push(size);
  }
  close() {
    this.closed = true;
  }
  end() {
    this.output.end();
    this.finish();
  }
  openStdin() {
    const w = new PassThrough();
    w.on('data', (d: Buffer) => this.written.push(d));
    return w;
  }
  closeStdin() {
    this.stdinClosed++;
  }
}

const tick = () => new Promise((r) => setImmediate(r));

const attachTarget = { kind: 'attach' as const, containerId: 'c1', stdin: true, stdout: true, stderr: true, tty: false };

test('attach streams the container output live to the client and ends when the container exits', async (t) => {
  const attachment = new FakeAttachment();
  const backend = backendWith({ attach: async () => attachment });
  const s = session({ stdin: true });
  const done = backend.attach(attachTarget, s.io);
  await tick();
  attachment.emit('stdout', 'hello ');
  attachment.emit('stderr', 'oops');
  await tick();
  attachment.end();
  await done;
  t.is(s.out.text(), 'hello ');
  t.is(s.err.text(), 'oops');
  t.true(attachment.closed);
});

test('attach writes client input to the container stdin and, with stdin_once, closes it when the client ends', async (t) => {
  const attachment = new FakeAttachment({ stdinOnce: true });
  const backend = backendWith({ attach: async () => attachment });
  const s = session({ stdin: true });
  const done = backend.attach(attachTarget, s.io);
  await tick();
  s.stdin!.end('input');
  await tick();
  t.is(Buffer.concat(attachment.written).toString(), 'input');
  t.is(attachment.stdinClosed, 1);
  attachment.end();
  await done;
});

test('attach without stdin_once leaves the container stdin open for the next attach', async (t) => {
  const attachment = new FakeAttachment();
  const backend = backendWith({ attach: async () => attachment });
  const s = session({ stdin: true });
  const done = backend.attach(attachTarget, s.io);
  await tick();
  s.stdin!.end('x');
  await tick();
  attachment.end();
  await done;
  t.is(attachment.stdinClosed, 0);
});

test('attach ignores client input for a container created without stdin', async (t) => {
  const attachment = new FakeAttachment({ stdin: false });
  const backend = backendWith({ attach: async () => attachment });
  const s = session({ stdin: true });
  const done = backend.attach(attachTarget, s.io);
  await tick();
  s.stdin!.end('x');
  await tick();
  attachment.end();
  await done;
  t.deepEqual(attachment.written, []);
});

test('attach to a tty container sends everything to stdout and passes resizes', async (t) => {
  const attachment = new FakeAttachment({ tty: true });
  const backend = backendWith({ attach: async () => attachment });
  const s = session({ tty: true });
  const done = backend.attach({ ...attachTarget, tty: true, stderr: false }, s.io);
  await tick();
  attachment.emit('stdout', '$ ');
  attachment.emit('stderr', 'err ');
  await tick();
  s.resize({ width: 80, height: 24 });
  s.abort.abort();
  await done;
  t.is(s.out.text(), '$ err ');
  t.deepEqual(attachment.sizes, [{ width: 80, height: 24 }]);
  t.true(attachment.closed, 'a client going away detaches from the monitor');
});

test('attach pauses the monitor connection while the client is slow', async (t) => {
  const attachment = new FakeAttachment();
  const backend = backendWith({ attach: async () => attachment });
  const s = session();
  // A client that takes what it is given only when the test lets it.
  let release: (() => void) | undefined;
  const slow = new Writable({ highWaterMark: 4, write: (_c, _e, cb) => (release = () => cb()) });
  const done = backend.attach(attachTarget, { ...s.io, stdout: slow });
  await tick();
  attachment.emit('stdout', 'more than four bytes');
  await tick();
  t.true(attachment.output.isPaused(), 'the monitor connection waits while the client has not taken the output');
  release!();
  await tick();
  t.false(attachment.output.isPaused(), 'and reads again once the client drained');
  attachment.end();
  await done;
});

test('targets: NOT_FOUND and FAILED_PRECONDITION from the services pass through', async (t) => {
  const backend = backendWith(
    { runningContainer: async () => Promise.reject(notFound('container "x" not found')) },
    { readyPod: async () => Promise.reject(failedPrecondition('pod p is not ready')) },
  );
  t.is(((await t.throwsAsync(backend.runningContainer('x'))) as { kind?: string }).kind, 'not_found');
  t.is(((await t.throwsAsync(backend.readyPod('p'))) as { kind?: string }).kind, 'failed_precondition');
});
