import { constants, openSync, closeSync, readFileSync } from 'node:fs';
import net, { type OnReadOpts } from 'node:net';
import path from 'node:path';
import { Duplex, Readable, type Writable } from 'node:stream';
import { BerthError, errorMessage, failedPrecondition, internal, invalidArgument } from '../errors.js';
import { type ExecOptions, execArgs, SHIM_PATH, sealedShim } from './shim.js';
import { type LineWithFd, receiveLineWithFd, unixSocketPair } from './fd-passing.js';
import { fn } from './libc.js';
import { type ChildFd, type PipedChild, spawnPiped } from './spawn.js';

// The engine side of kubectl exec -it, attach and port-forward: interactive `berth-shim exec`, the monitor's
// attach.sock, the container's stdin.fifo and `berth-shim portforward`. Nothing here knows a wire protocol.

export interface TerminalSize {
  width: number;
  height: number;
}

/** How long a killed shim gets to kill and reap its command before SIGKILL. */
const KILL_GRACE_MS = 2000;
/**
 * After the command exited and everything it wrote was read, how long its output pipes may stay open (a background
 * process holding them) before berth stops waiting for their end.
 */
const OUTPUT_LINGER_MS = 2000;
const FIONREAD = 0x541b;
const ATTACH_CONNECT_TIMEOUT_MS = 5000;
const PORTFORWARD_STATUS_GRACE_MS = 2000;
/** sun_path holds 108 bytes with the terminating NUL. */
const SUN_PATH_MAX = 107;

function closeFd(fd: number): void {
  fn('close', 'int close(int fd)')(fd);
}

function readableFd(fd: number): net.Socket {
  return new net.Socket({ fd, readable: true, writable: false });
}

function writableFd(fd: number): net.Socket {
  const s = new net.Socket({ fd, readable: false, writable: true });
  // EPIPE: the reader went away (the command exited); its exit status tells what happened.
  s.on('error', () => undefined);
  return s;
}

/** Bytes written into a pipe and not read yet. */
function unreadInPipe(fd: number): number {
  const count = new Int32Array(1);
  const ok = fn('ioctl_fionread', 'int ioctl(int fd, unsigned long request, _Out_ int *count)')(fd, FIONREAD, count) === 0;
  return ok ? count[0]! : 0;
}

/**
 * Resolves once an output pipe of an exited command ended. Whatever the command wrote before it exited is owed to the
 * reader however slowly it reads (kubectl cp takes a tar archive over stdout): the pipe is cut short only when a
 * background process still holds it after all of that went to the reader (checked every OUTPUT_LINGER_MS), or once
 * `abandoned()` (kill() was called: the session ended, nobody reads any more).
 */
function outputEnd(output: net.Socket, fd: number, abandoned: () => boolean): Promise<void> {
  if (output.destroyed) return Promise.resolve();
  // Bytes read from the pipe so far plus those still in it: the command's whole output, in order.
  const owed = output.bytesRead + unreadInPipe(fd);
  return new Promise<void>((resolve) => {
    let linger: NodeJS.Timeout | undefined;
    const finish = () => {
      clearTimeout(linger);
      resolve();
    };
    output.once('close', finish);
    const check = () => {
      const handedOut = output.bytesRead - output.readableLength;
      if (abandoned() || handedOut >= owed) {
        output.off('close', finish);
        if (!output.readableEnded) output.destroy();
        finish();
      } else {
        linger = setTimeout(check, OUTPUT_LINGER_MS);
      }
    };
    linger = setTimeout(check, OUTPUT_LINGER_MS);
  });
}

function validSize(size: TerminalSize): boolean {
  const ok = (n: number) => Number.isInteger(n) && n >= 1 && n <= 65535;
  return ok(size.width) && ok(size.height);
}

export interface InteractiveExec {
  /** The command's stdin (a pipe, or with tty the terminal's input); null when not requested. */
  stdin: Writable | null;
  /** stdout, or with tty the terminal's output (which also carries the shim's own error messages). */
  stdout: Readable;
  /** null with tty. */
  stderr: Readable | null;
  /** Resizes the terminal (the command gets SIGWINCH); ignored without tty or for an invalid size. */
  resize(size: TerminalSize): void;
  /**
   * The exit code (128+signal when killed; 125/126/127 from the shim), once stdout/stderr have ended too: a reader
   * must keep reading them meanwhile, as everything the command wrote before exiting is waited for.
   */
  wait(): Promise<number>;
  /** Ends the command: SIGTERM to the shim (which kills and reaps it), SIGKILL if the shim is still there later. */
  kill(): void;
}

export type InteractiveExecOptions = ExecOptions & { tty: boolean; stdin: boolean; ttySize?: TerminalSize };

/**
 * `berth-shim exec` with live stdio. With tty the shim allocates a pty in the container's devpts and relays it;
 * stdin EOF then sends the terminal's EOF character (see native/README.md). `timeoutMs` > 0 kills the command
 * after that long; 0 = no limit (an interactive session ends when its client goes: call kill()).
 */
export async function spawnInteractiveExec(opts: InteractiveExecOptions): Promise<InteractiveExec> {
  const extra: string[] = [];
  const fds: ChildFd[] = [opts.stdin ? 'in' : 'null', 'out', opts.tty ? 'stdout' : 'out'];
  if (opts.tty) {
    extra.push('--tty', '--resize-fd', '3');
    fds.push('in');
    if (!opts.stdin) extra.push('--no-stdin');
    if (opts.ttySize && validSize(opts.ttySize)) extra.push('--tty-size', `${opts.ttySize.width}x${opts.ttySize.height}`);
  }
  let child: PipedChild;
  try {
    child = spawnPiped(await sealedShim(), execArgs(opts, extra), fds, { argv0: SHIM_PATH });
  } catch (err) {
    throw internal(`berth-shim exec: ${errorMessage(err)}`, err);
  }
  const stdin = opts.stdin ? writableFd(child.fds[0]!) : null;
  const stdout = readableFd(child.fds[1]!);
  const stderr = opts.tty ? null : readableFd(child.fds[2]!);
  const resizer = opts.tty ? writableFd(child.fds[3]!) : null;
  let hardKill: NodeJS.Timeout | undefined;
  let killed = false;
  const kill = () => {
    killed = true;
    child.kill('SIGTERM');
    hardKill ??= setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
  };
  const timer = opts.timeoutMs > 0 ? setTimeout(kill, opts.timeoutMs) : undefined;
  const outputs: [net.Socket, number][] = [[stdout, child.fds[1]!], ...(stderr ? [[stderr, child.fds[2]!] as [net.Socket, number]] : [])];
  const done = child.exited.then(async ({ code }) => {
    clearTimeout(timer);
    clearTimeout(hardKill);
    resizer?.destroy();
    // The output normally ends with the shim; a background process of the command may hold the pipes longer.
    await Promise.all(outputs.map(([output, fd]) => outputEnd(output, fd, () => killed)));
    stdin?.destroy();
    return code;
  });
  return {
    stdin,
    stdout,
    stderr,
    resize(size) {
      if (resizer && !resizer.destroyed && validSize(size)) resizer.write(`${size.width} ${size.height}\n`);
    },
    wait: () => done,
    kill,
  };
}

export interface AttachOutput {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

export interface MonitorAttach {
  /** Object-mode stream of AttachOutput, in the order the monitor read them; ends after the container exits. */
  output: Readable;
  /** Resizes the container's terminal (tty containers; others ignore it). */
  resize(size: TerminalSize): void;
  close(): void;
  /** Resolves when the monitor closed the connection (container exited, or this client fell behind). */
  ended: Promise<void>;
}

// attach.sock frames (native/src/monitor.h): type, 4-byte big-endian length, payload.
const FRAME_STDOUT = 1;
const FRAME_STDERR = 2;
const FRAME_RESIZE = 4;
const FRAME_HDR = 5;

/**
 * Joins the monitor's live output of a running container. A client that does not read (its socket buffer full)
 * is dropped by the monitor rather than slowing the container: the stream then ends early.
 */
export async function attachToMonitor(bundle: string): Promise<MonitorAttach> {
  const sock = await connectAttachSocket(path.join(bundle, 'attach.sock'));
  const output = new Readable({
    objectMode: true,
    read() {
      sock.resume();
    },
  });
  let pending: Buffer = Buffer.alloc(0);
  sock.on('data', (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= FRAME_HDR) {
      const len = pending.readUInt32BE(1);
      if (pending.length < FRAME_HDR + len) break;
      const type = pending[0];
      const data = pending.subarray(FRAME_HDR, FRAME_HDR + len);
      pending = pending.subarray(FRAME_HDR + len);
      if (type !== FRAME_STDOUT && type !== FRAME_STDERR) continue;
      const item: AttachOutput = { stream: type === FRAME_STDOUT ? 'stdout' : 'stderr', data: Buffer.from(data) };
      if (!output.push(item)) sock.pause();
    }
  });
  const ended = new Promise<void>((resolve) => {
    sock.on('error', () => undefined);
    sock.on('close', () => {
      output.push(null);
      resolve();
    });
  });
  return {
    output,
    resize(size) {
      if (!validSize(size) || sock.destroyed) return;
      const frame = Buffer.alloc(FRAME_HDR + 4);
      frame[0] = FRAME_RESIZE;
      frame.writeUInt32BE(4, 1);
      frame.writeUInt16BE(size.width, 5);
      frame.writeUInt16BE(size.height, 7);
      sock.write(frame);
    },
    close() {
      sock.destroy();
    },
    ended,
  };
}

function connectAttachSocket(file: string): Promise<net.Socket> {
  // A bundle path too long for sun_path is reached through a descriptor of its directory.
  let dirFd = -1;
  let target = file;
  if (Buffer.byteLength(file) > SUN_PATH_MAX) {
    try {
      dirFd = openSync(path.dirname(file), constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (err) {
      return Promise.reject(notRunning(err));
    }
    target = `/proc/self/fd/${dirFd}/${path.basename(file)}`;
  }
  return new Promise<net.Socket>((resolve, reject) => {
    const sock = net.connect(target);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(internal(`attach: connecting to ${file} timed out after ${ATTACH_CONNECT_TIMEOUT_MS}ms`));
    }, ATTACH_CONNECT_TIMEOUT_MS);
    const settle = () => {
      clearTimeout(timer);
      if (dirFd >= 0) closeSync(dirFd);
      dirFd = -1;
    };
    sock.once('connect', () => {
      settle();
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (err) => {
      settle();
      reject(notRunning(err));
    });
  });
}

function notRunning(err: unknown): BerthError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'ECONNREFUSED') return failedPrecondition('the container is not running (its monitor has no attach socket)');
  return internal(`attach: ${errorMessage(err)}`, err);
}

/**
 * A writer on the container's stdin.fifo, opened O_WRONLY|O_NONBLOCK and driven by libuv like a pipe, so a
 * container that does not read its stdin never blocks a threadpool thread. Several writers may be open at once.
 */
export function openContainerStdin(bundle: string): Writable {
  const fifo = path.join(bundle, 'stdin.fifo');
  let fd: number;
  try {
    fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw failedPrecondition('the container was not created with stdin');
    if (code === 'ENXIO') throw failedPrecondition('the container is not running (nothing reads its stdin)');
    throw internal(`opening ${fifo}: ${errorMessage(err)}`, err);
  }
  return writableFd(fd);
}

/**
 * stdin_once: the monitor drops its own writer of stdin.fifo, so the container sees EOF once every other writer
 * is closed too. `monitorStartTime` (field 22 of /proc/<pid>/stat, from shim.json) guards against a reused pid:
 * SIGUSR2 would kill most other processes.
 */
export function closeContainerStdin(monitorPid: number, monitorStartTime?: number): void {
  if (monitorStartTime !== undefined) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${monitorPid}/stat`, 'utf8');
    } catch {
      return; // the monitor is gone, and with it the container's stdin
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[19]) !== monitorStartTime) return;
  }
  try {
    process.kill(monitorPid, 'SIGUSR2');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw internal(`signalling monitor ${monitorPid}: ${errorMessage(err)}`, err);
  }
}

/**
 * A TCP connection to localhost:<port> in a network namespace (127.0.0.1, then ::1 when that is refused). With
 * netnsPath null (host network) berth connects itself; otherwise `berth-shim portforward --pass-fd` enters the
 * pinned namespace in a process of its own, connects, and hands the connected socket back over a unix socket
 * pair (SCM_RIGHTS) before exiting: berth then reads and writes the pod's connection itself, with no relay process
 * or pipes in the data path. Rejects with a BerthError whose message suits the port's error stream:
 * invalid_argument for a port outside 1-65535, unavailable when the connection cannot be made.
 */
export async function dialInNetns(netnsPath: string | null, port: number, timeoutMs: number, reads?: OnReadOpts): Promise<Duplex> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArgument(`port ${port} is not in 1-65535`);
  if (netnsPath === null) return dialHost(port, timeoutMs, reads);
  let child: PipedChild;
  let ours: number;
  let theirs: number;
  try {
    [ours, theirs] = unixSocketPair();
  } catch (err) {
    throw internal(`port-forward: ${errorMessage(err)}`, err);
  }
  try {
    child = spawnPiped(await sealedShim(), ['portforward', netnsPath, String(port), '--timeout-ms', String(Math.max(1, timeoutMs)), '--pass-fd'],
      ['null', 'null', 'out', { fd: theirs }], { argv0: SHIM_PATH });
  } catch (err) {
    closeFd(ours);
    throw internal(`berth-shim portforward: ${errorMessage(err)}`, err);
  } finally {
    closeFd(theirs); // the child's copy is its own now; its exit then ends the pair for us
  }
  const stderr = readableFd(child.fds[2]!);
  const diagnostics: Buffer[] = [];
  stderr.on('data', (d: Buffer) => diagnostics.push(d));
  let received: LineWithFd;
  try {
    received = await receiveLineWithFd(ours, timeoutMs + PORTFORWARD_STATUS_GRACE_MS);
  } catch (err) {
    received = { line: `receiving the connection: ${errorMessage(err)}`, fd: null };
  }
  if (received.line !== 'ok' || received.fd === null) {
    if (received.fd !== null) closeFd(received.fd);
    child.kill('SIGKILL');
    const { code } = await child.exited;
    await new Promise<void>((resolve) => (stderr.destroyed ? resolve() : stderr.once('close', () => resolve())));
    const why = received.line || Buffer.concat(diagnostics).toString().trim() || `berth-shim portforward exited with ${code}`;
    throw new BerthError('unavailable', received.line ? why : `port ${port}: ${why}`);
  }
  void child.exited.then(() => stderr.destroy());
  return new net.Socket({ fd: received.fd, readable: true, writable: true, allowHalfOpen: true, ...(reads ? { onread: reads } : {}) });
}

function dialHost(port: number, timeoutMs: number, reads?: OnReadOpts): Promise<Duplex> {
  const attempt = (host: string) => new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host, port, ...(reads ? { onread: reads } : {}) });
    const timer = setTimeout(() => {
      s.destroy();
      reject(Object.assign(new Error(`connect to localhost:${port}: timed out after ${timeoutMs}ms`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  const fail = (err: unknown) => new BerthError('unavailable', `connect to localhost:${port}: ${errorMessage(err).replace(/^connect /, '')}`);
  return attempt('127.0.0.1').catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ECONNREFUSED' && err.code !== 'EADDRNOTAVAIL') throw fail(err);
    return attempt('::1').catch(() => {
      throw fail(err);
    });
  });
}
