import { spawnCollect } from './spawn.js';
import { closeSync, constants, promises as fs, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthError, errorMessage, internal } from '../errors.js';
import { ShimSpec } from './shim-spec.js';
import { writeFileNamed } from '../store/atomic.js';
import {
  addSeals,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  getSeals,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MFD_EXEC,
  memfdCreate,
  MNT_DETACH,
  UMOUNT_NOFOLLOW,
  umount2,
} from './libc.js';

// Driving native/berth-shim: creating containers and pod namespaces, starting, exec. Nothing above this file
// knows the shim's command line or its files.

const here = path.dirname(fileURLToPath(import.meta.url));
export const SHIM_PATH = process.env.BERTH_SHIM ?? path.resolve(here, '../../../native/build/berth-shim');

const SHIM_TIMEOUT_MS = 15_000;

const SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;
let sealing: Promise<string> | undefined;

/**
 * The shim as berth runs it: a copy of SHIM_PATH in a memfd sealed against any write, made once per berth
 * process and executed as /proc/self/fd/N. The init and exec children run inside containers until their
 * execve, so /proc/<pid>/exe of them names this copy, which nobody (host root included) can write: a
 * container cannot replace the binary that runs in the next container's setup (runc's CVE-2019-5736
 * defence). There is no fallback to the writable file: a failure here fails berth's start.
 */
export function sealedShim(): Promise<string> {
  sealing ??= makeSealedCopy().catch((err) => {
    sealing = undefined;
    throw err;
  });
  return sealing;
}

async function makeSealedCopy(): Promise<string> {
  const fail = (why: string, err?: unknown) =>
    internal(`cannot make the sealed copy of berth-shim ${SHIM_PATH} (memfd_create + F_SEAL_*): ${why}${err ? `: ${errorMessage(err)}` : ''}; berth does not run container-facing helpers from a writable file`, err);
  const binary = await fs.readFile(SHIM_PATH).catch((err) => {
    throw fail('reading it', err);
  });
  let fd: number;
  try {
    fd = memfdCreate('berth-shim', MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
  } catch (err) {
    // MFD_EXEC is Linux >= 6.3; before it every memfd is executable.
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw fail('memfd_create', err);
    try {
      fd = memfdCreate('berth-shim', MFD_CLOEXEC | MFD_ALLOW_SEALING);
    } catch (err2) {
      throw fail('memfd_create', err2);
    }
  }
  try {
    for (let off = 0; off < binary.length; ) off += writeSync(fd, binary, off, binary.length - off, off);
    addSeals(fd, SEALS);
    if ((getSeals(fd) & SEALS) !== SEALS) throw new Error(`seals are 0x${getSeals(fd).toString(16)}`);
  } catch (err) {
    closeSync(fd);
    throw fail('copying and sealing', err);
  }
  return `/proc/self/fd/${fd}`;
}

async function spawnShim(args: string[], timeoutMs: number, opts: Parameters<typeof spawnCollect>[3] = {}) {
  return spawnCollect(await sealedShim(), args, timeoutMs, { ...opts, argv0: SHIM_PATH });
}

export interface ShimExit {
  exitCode: number;
  signal: number;
  startedAt: number;
  finishedAt: number;
}

async function run(args: string[], timeoutMs = SHIM_TIMEOUT_MS): Promise<string> {
  const result = await spawnShim(args, timeoutMs).catch((err) => {
    throw internal(`berth-shim ${args[0]}: ${errorMessage(err)}`, err);
  });
  if (result.code !== 0) {
    const why = result.stderr.toString().trim() || `exit code ${result.code}`;
    throw internal(`berth-shim ${args[0]}: ${why}`);
  }
  return result.stdout.toString();
}

/** Writes the spec and creates the container process, blocked until `startContainer`. */
export async function createContainer(spec: ShimSpec): Promise<{ pid: number; monitorPid: number; startTime: number }> {
  // Read once by the shim right now and never again: no need for the fsyncs of an atomic write.
  await writeFileNamed(path.join(spec.bundle, 'spec.json'), JSON.stringify(spec));
  const out = await run(['create', spec.bundle]);
  try {
    const parsed = JSON.parse(out.trim().split('\n').pop() ?? '') as { pid: number; monitorPid: number; startTime: number };
    if (!parsed.pid || !parsed.monitorPid || !(parsed.startTime > 0)) throw new Error('missing pids or start time');
    return parsed;
  } catch (err) {
    throw internal(`berth-shim create ${spec.id}: unexpected output ${JSON.stringify(out)}: ${errorMessage(err)}`);
  }
}

/** Releases the container from its start fifo. Fails (ENXIO) when nobody waits on it: the process is gone. */
export async function startContainer(bundle: string): Promise<void> {
  const fifo = path.join(bundle, 'start.fifo');
  let handle;
  try {
    handle = await fs.open(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENXIO' || code === 'ENOENT') throw new BerthError('failed_precondition', 'the container process is no longer waiting to start (it exited)');
    throw internal(`opening ${fifo}: ${errorMessage(err)}`, err);
  }
  try {
    await handle.write(Buffer.from('1'));
  } finally {
    await handle.close();
  }
}

export async function readExit(bundle: string): Promise<ShimExit | undefined> {
  try {
    return JSON.parse(await fs.readFile(path.join(bundle, 'exit.json'), 'utf8')) as ShimExit;
  } catch {
    return undefined;
  }
}

export async function readExecError(bundle: string): Promise<string | undefined> {
  try {
    return (await fs.readFile(path.join(bundle, 'exec-error'), 'utf8')).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** True when `pid` is alive and is the process we started (its cmdline names berth-shim), not a reused pid. */
/** How long killShims waits for the shims it killed to be gone. */
const SHIM_DEATH_MS = 2000;

/**
 * SIGKILLs every berth-shim process run as `berth-shim <command> <target> ...`: what a crashed berth left of a
 * `sandbox` or `create` (the pod init, a container's monitor and init keep that command line). Reads all of /proc,
 * so for recovery at start only. Returns once they are gone (a zombie's command line is empty), within a bound: a
 * mount a shim had begun completes before it dies, and the caller unpins or removes only after.
 */
export async function killShims(command: 'sandbox' | 'create', target: string): Promise<void> {
  const killed: string[] = [];
  for (const pid of await fs.readdir('/proc')) {
    if (!/^[0-9]+$/.test(pid)) continue;
    const argv = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').then((t) => t.split('\0'), () => []);
    if (!argv[0]?.includes('berth-shim') || argv[1] !== command || argv[2] !== target) continue;
    try {
      process.kill(Number(pid), 'SIGKILL');
      killed.push(pid);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw internal(`killing berth-shim ${pid} (${command} ${target}): ${errorMessage(err)}`, err);
    }
  }
  const deadline = Date.now() + SHIM_DEATH_MS;
  for (const pid of killed) {
    while ((await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')) !== '' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

export async function isShim(pid: number): Promise<boolean> {
  try {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes('berth-shim');
  } catch {
    return false;
  }
}

/** A veth pair made inside the new netns: eth0 there, `hostName` in berth's own network namespace. */
export interface PodVeth {
  hostName: string;
  address: string;
  gateway: string;
  mtu: number;
}

export interface PodNamespaces {
  network?: string;
  ipc?: string;
  uts?: string;
  pid?: string;
  initPid?: number;
}

/** Creates and pins a pod's namespaces under `dir`. */
export async function createPodNamespaces(
  dir: string,
  want: { network: boolean; ipc: boolean; uts: boolean; pid: boolean; hostname?: string; veth?: PodVeth },
): Promise<PodNamespaces> {
  const args = ['sandbox', dir];
  if (want.network) args.push('--net');
  if (want.network && want.veth) {
    const v = want.veth;
    args.push('--veth', v.hostName, '--address', v.address, '--gateway', v.gateway, '--mtu', String(v.mtu));
  }
  if (want.ipc) args.push('--ipc');
  if (want.uts) args.push('--uts');
  if (want.pid) args.push('--pid');
  if (want.uts && want.hostname) args.push('--hostname', want.hostname);
  const out = await run(args);
  const parsed = JSON.parse(out.trim() || '{}') as { initPid?: number };
  const result: PodNamespaces = {};
  if (want.network) result.network = path.join(dir, 'net');
  if (want.ipc) result.ipc = path.join(dir, 'ipc');
  if (want.uts) result.uts = path.join(dir, 'uts');
  if (want.pid) {
    result.pid = path.join(dir, 'pid');
    result.initPid = parsed.initPid;
  }
  return result;
}

const PIN_NAMES = ['net', 'ipc', 'uts', 'pid', 'cgroup', 'user', 'mnt'];
const SELFBIND_MARK = '.berth-selfbind';
/** Where berth-shim sandbox mounts the sysfs of a pod's network namespace, beside the pins. */
export const NET_SYSFS = 'sys';

/**
 * Releases a pod's pinned namespaces, as `berth-shim unpin` does, but in-process: a few umount2 calls cost
 * microseconds where spawning the shim costs milliseconds on the pod-stop path.
 */
export async function unpinNamespaces(dir: string): Promise<void> {
  const names = await fs.readdir(dir).catch(() => undefined);
  if (!names) return;
  const detach = (target: string) => {
    try {
      umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EINVAL' && code !== 'ENOENT') throw internal(`unpinning ${target}: ${errorMessage(err)}`, err);
    }
  };
  for (const name of names) {
    if (!PIN_NAMES.includes(name)) continue;
    detach(path.join(dir, name));
    await fs.rm(path.join(dir, name), { force: true });
  }
  if (names.includes(NET_SYSFS)) {
    // The pod netns's sysfs (pod network stats) holds a reference on the netns: detached with the pins.
    detach(path.join(dir, NET_SYSFS));
    await fs.rmdir(path.join(dir, NET_SYSFS)).catch((err) => {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw internal(`removing ${path.join(dir, NET_SYSFS)}: ${errorMessage(err)}`, err);
    });
  }
  if (names.includes(SELFBIND_MARK)) {
    await fs.rm(path.join(dir, SELFBIND_MARK), { force: true });
    detach(dir);
  }
}

export interface ExecOptions {
  pid: number;
  /** Field 22 of /proc/<pid>/stat when created: the shim refuses a pid that is no longer the container's. */
  startTime?: number;
  /** Named `_ses.<container id>`, as runc does. */
  sessionKeyring: string;
  rlimits: { type: string; soft: number; hard: number }[];
  oomScoreAdj?: number;
  uid: number;
  gid: number;
  groups: number[];
  cwd: string;
  env: string[];
  cgroupProcs: string[];
  noNewPrivs: boolean;
  capsFile?: string;
  seccompFile?: string;
  /** The container's AppArmor profile: the exec'd command is confined by it too. */
  apparmorProfile?: string;
  command: string[];
  timeoutMs: number;
}

export interface ExecResult {
  stdout: Buffer;
  stderr: Buffer;
  exitCode: number;
  timedOut: boolean;
}

/** Runs a command inside a running container and collects its output. */
export function execInContainer(opts: ExecOptions): Promise<ExecResult> {
  const args = execArgs(opts);
  // SIGTERM at the timeout makes the shim kill and reap the command before it exits (no zombie outlives the
  // call); SIGKILL follows if the shim itself does not go.
  return spawnShim(args, opts.timeoutMs, { timeoutSignal: 'SIGTERM', graceMs: 2000, reportTimeout: true }).then(
    (r) => ({ stdout: r.stdout, stderr: r.stderr, exitCode: r.code, timedOut: r.timedOut }),
    (err) => {
      throw internal(`berth-shim exec: ${errorMessage(err)}`, err);
    },
  );
}

/** The `berth-shim exec` command line for opts; `extra` options (e.g. --tty) go before the command. */
export function execArgs(opts: Omit<ExecOptions, 'timeoutMs'>, extra: string[] = []): string[] {
  const args = ['exec', String(opts.pid), '--uid', String(opts.uid), '--gid', String(opts.gid), '--cwd', opts.cwd];
  if (opts.groups.length > 0) args.push('--groups', opts.groups.join(','));
  for (const e of opts.env) args.push('--env', e);
  for (const f of opts.cgroupProcs) args.push('--cgroup-procs', f);
  if (opts.capsFile) args.push('--caps-json', opts.capsFile);
  if (opts.seccompFile) args.push('--seccomp-json', opts.seccompFile);
  if (opts.noNewPrivs) args.push('--no-new-privs');
  if (opts.startTime !== undefined) args.push('--start-time', String(opts.startTime));
  args.push('--session-keyring', opts.sessionKeyring);
  for (const r of opts.rlimits) args.push('--rlimit', `${r.type}=${r.soft}:${r.hard}`);
  if (opts.oomScoreAdj !== undefined) args.push('--oom-score-adj', String(opts.oomScoreAdj));
  if (opts.apparmorProfile) args.push('--apparmor', opts.apparmorProfile);
  args.push(...extra, '--', ...opts.command);
  return args;
}
