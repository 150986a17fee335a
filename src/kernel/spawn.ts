import net from 'node:net';
import koffi from 'koffi';
import { errnoError, internal } from '../errors.js';
import { fn } from './libc.js';

// Starting a process with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK)) instead of Node's fork+exec.
// fork copies the parent's page tables, so with Node's RSS every spawn cost milliseconds of blocked event loop
// (measured: 8 ms at 44 MiB RSS, 23 ms at 145 MiB); vfork-style spawning costs the same whatever berth's size.

const O_CLOEXEC = 0o2000000;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const POSIX_SPAWN_SETSIGDEF = 0x04;

export interface SpawnResult {
  code: number;
  signal: number;
  stdout: Buffer;
  stderr: Buffer;
  timedOut: boolean;
}

export interface SpawnOptions {
  /** Signal sent at the timeout (default SIGKILL); SIGKILL follows `graceMs` later if the process stays. */
  timeoutSignal?: NodeJS.Signals;
  graceMs?: number;
  /** Resolve with timedOut: true instead of rejecting. */
  reportTimeout?: boolean;
  /** Written to the child's stdin (a pipe) instead of giving it /dev/null. */
  input?: Buffer | string;
  /** argv[0] and the name in errors, when `file` is not it (a sealed copy run through /proc/self/fd/N). */
  argv0?: string;
}

function pipe(): [number, number] {
  const fds = new Int32Array(2);
  if (fn('pipe2', 'int pipe2(_Out_ int *fds, int flags)')(fds, O_CLOEXEC) < 0) {
    throw errnoError('pipe2', koffi.errno());
  }
  return [fds[0], fds[1]];
}

function collect(fd: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const socket = new net.Socket({ fd, readable: true, writable: false });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => resolve(Buffer.concat(chunks)));
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

/** Writes `input` to the pipe `fd` without blocking the event loop, then closes it (the child sees EOF). */
function feed(fd: number, input: Buffer | string): void {
  const socket = new net.Socket({ fd, readable: false, writable: true });
  // A child that exits without reading all of it gives EPIPE: not our failure, its exit status tells.
  socket.on('error', () => undefined);
  socket.end(input, () => socket.destroy());
}

/** Waits for the child off the event loop (koffi runs the blocking waitpid on a worker thread). */
function reap(pid: number): Promise<{ code: number; signal: number }> {
  return new Promise((resolve, reject) => {
    const status = new Int32Array(1);
    fn('waitpid', 'int waitpid(int pid, _Out_ int *status, int options)').async(pid, status, 0, (err: unknown, ret: number) => {
      if (err || ret < 0) {
        reject(internal(`waitpid ${pid}: ${err ?? `errno ${koffi.errno()}`}`));
        return;
      }
      const s = status[0];
      const signal = s & 0x7f;
      resolve(signal === 0 ? { code: (s >> 8) & 0xff, signal: 0 } : { code: 128 + signal, signal });
    });
  });
}

/** Runs `file` with `args`, stdin from `opts.input` or /dev/null, and collects stdout and stderr; kills it after `timeoutMs`. */
export async function spawnCollect(file: string, args: string[], timeoutMs: number, opts: SpawnOptions = {}): Promise<SpawnResult> {
  // At the open-files limit the second or third pipe fails: the ones already made must not leak with the error.
  const made: number[] = [];
  const pipeOrClose = (): [number, number] => {
    try {
      const fds = pipe();
      made.push(...fds);
      return fds;
    } catch (err) {
      for (const fd of made) fn('close', 'int close(int fd)')(fd);
      throw err;
    }
  };
  const [outR, outW] = pipeOrClose();
  const [errR, errW] = pipeOrClose();
  const [inR, inW] = opts.input === undefined ? [-1, -1] : pipeOrClose();
  const actions = Buffer.alloc(256);
  const attr = Buffer.alloc(512);
  const sigset = Buffer.alloc(128);
  const pidOut = new Int32Array(1);
  fn('posix_spawn_file_actions_init', 'int posix_spawn_file_actions_init(void *fa)')(actions);
  fn('posix_spawnattr_init', 'int posix_spawnattr_init(void *attr)')(attr);
  try {
    const dup2 = fn('posix_spawn_file_actions_adddup2', 'int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)');
    if (inR >= 0) dup2(actions, inR, 0);
    else fn('posix_spawn_file_actions_addopen', 'int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, int mode)')(actions, 0, '/dev/null', 0, 0);
    dup2(actions, outW, 1);
    dup2(actions, errW, 2);
    spawnWithDefaultSignals(file, args, opts.argv0, actions, attr, sigset, pidOut);
  } catch (err) {
    for (const fd of [outR, outW, errR, errW, inR, inW]) if (fd >= 0) fn('close', 'int close(int fd)')(fd);
    throw err;
  } finally {
    fn('posix_spawn_file_actions_destroy', 'int posix_spawn_file_actions_destroy(void *fa)')(actions);
    fn('posix_spawnattr_destroy', 'int posix_spawnattr_destroy(void *attr)')(attr);
  }
  const close = fn('close', 'int close(int fd)');
  close(outW);
  close(errW);
  if (inR >= 0) {
    close(inR);
    feed(inW, opts.input!);
  }
  const pid = pidOut[0];
  let timedOut = false;
  let hardKill: NodeJS.Timeout | undefined;
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      /* gone */
    }
  };
  const timer = timeoutMs > 0 ? setTimeout(() => {
    timedOut = true;
    signal(opts.timeoutSignal ?? 'SIGKILL');
    if ((opts.timeoutSignal ?? 'SIGKILL') !== 'SIGKILL') hardKill = setTimeout(() => signal('SIGKILL'), opts.graceMs ?? 2000);
  }, timeoutMs) : undefined;
  try {
    const [stdout, stderr] = await Promise.all([collect(outR), collect(errR)]);
    const status = await reap(pid);
    if (timedOut && !opts.reportTimeout) throw internal(`${opts.argv0 ?? file} ${args[0] ?? ''} timed out after ${timeoutMs}ms`);
    return { ...status, stdout, stderr, timedOut };
  } finally {
    clearTimeout(timer);
    clearTimeout(hardKill);
  }
}


/**
 * What the child gets at one fd: a pipe it reads ('in') or writes ('out'), the same pipe as fd 1, /dev/null, or a
 * descriptor of the caller's ({ fd }: duplicated into the child; the caller still owns and closes it).
 */
export type ChildFd = 'in' | 'out' | 'stdout' | 'null' | { fd: number };

export interface PipedChild {
  pid: number;
  /** Berth's end of each pipe, by the child's fd number (-1 where the child got /dev/null or fd 1's pipe). */
  fds: number[];
  /**
   * Resolves with the exit code (128+signal when killed) once the child has exited. The exit is seen on an extra
   * pipe the child holds (at fd `fds.length`, close-on-exec nowhere, closed by nothing but its exit) and only then
   * is it reaped, so no libuv worker thread sits in waitpid for a session's whole life.
   */
  exited: Promise<{ code: number; signal: number }>;
  /** Signals the child unless it has been reaped (a reaped pid may belong to someone else by now). */
  kill(sig: NodeJS.Signals): void;
}

/** posix_spawn with the given fds (0, 1, 2, 3, ...) and an exit-watch pipe after them; see PipedChild. */
export function spawnPiped(file: string, args: string[], childFds: ChildFd[], opts: { argv0?: string } = {}): PipedChild {
  const close = fn('close', 'int close(int fd)');
  const ours: number[] = [];
  const theirs: number[] = [];
  const opened: number[] = [];
  const actions = Buffer.alloc(256);
  const attr = Buffer.alloc(512);
  const sigset = Buffer.alloc(128);
  const pidOut = new Int32Array(1);
  let exitR = -1;
  fn('posix_spawn_file_actions_init', 'int posix_spawn_file_actions_init(void *fa)')(actions);
  fn('posix_spawnattr_init', 'int posix_spawnattr_init(void *attr)')(attr);
  try {
    const dup2 = fn('posix_spawn_file_actions_adddup2', 'int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)');
    const addopen = fn('posix_spawn_file_actions_addopen', 'int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, int mode)');
    const kinds: ChildFd[] = [...childFds, 'out'];
    kinds.forEach((kind, target) => {
      if (kind === 'null') {
        addopen(actions, target, '/dev/null', 2 /* O_RDWR */, 0);
        ours.push(-1);
        return;
      }
      if (typeof kind === 'object') {
        dup2(actions, kind.fd, target);
        ours.push(-1);
        theirs.push(-1);
        return;
      }
      if (kind === 'stdout') {
        dup2(actions, theirs[1] ?? -1, target);
        ours.push(-1);
        theirs.push(-1);
        return;
      }
      const [r, w] = pipe();
      opened.push(r, w);
      const [mine, child] = kind === 'in' ? [w, r] : [r, w];
      ours.push(mine);
      theirs.push(child);
      dup2(actions, child, target);
    });
    spawnWithDefaultSignals(file, args, opts.argv0, actions, attr, sigset, pidOut);
  } catch (err) {
    for (const fd of opened) close(fd);
    throw err;
  } finally {
    fn('posix_spawn_file_actions_destroy', 'int posix_spawn_file_actions_destroy(void *fa)')(actions);
    fn('posix_spawnattr_destroy', 'int posix_spawnattr_destroy(void *attr)')(attr);
  }
  for (const fd of theirs) if (fd >= 0) close(fd);
  exitR = ours.pop()!;
  const pid = pidOut[0];
  let reaped = false;
  const exited = new Promise<void>((resolve) => {
    const watch = new net.Socket({ fd: exitR, readable: true, writable: false });
    watch.on('data', () => undefined);
    watch.on('error', () => resolve());
    watch.on('close', () => resolve());
  }).then(() => reap(pid)).finally(() => {
    reaped = true;
  });
  return {
    pid,
    fds: ours,
    exited,
    kill(sig) {
      if (reaped) return;
      try {
        process.kill(pid, sig);
      } catch {
        /* exited, not reaped yet */
      }
    },
  };
}

/**
 * posix_spawn with every signal at its default and none blocked: Node ignores SIGPIPE and may block signals in the
 * calling thread, which the child would otherwise inherit. Throws the errno posix_spawn returns.
 */
function spawnWithDefaultSignals(file: string, args: string[], argv0: string | undefined, actions: Buffer, attr: Buffer, sigset: Buffer, pidOut: Int32Array): void {
  fn('sigfillset', 'int sigfillset(void *set)')(sigset);
  fn('posix_spawnattr_setsigdefault', 'int posix_spawnattr_setsigdefault(void *attr, void *set)')(attr, sigset);
  fn('sigemptyset', 'int sigemptyset(void *set)')(sigset);
  fn('posix_spawnattr_setsigmask', 'int posix_spawnattr_setsigmask(void *attr, void *set)')(attr, sigset);
  fn('posix_spawnattr_setflags', 'int posix_spawnattr_setflags(void *attr, short flags)')(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  const argv = [argv0 ?? file, ...args, null];
  const env = [...Object.entries(process.env).map(([k, v]) => `${k}=${v}`), null];
  const spawn = fn('posix_spawn', 'int posix_spawn(_Out_ int *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)');
  const rc = spawn(pidOut, file, actions, attr, argv, env) as number;
  if (rc !== 0) throw errnoError(`posix_spawn ${argv0 ?? file}`, rc);
}
