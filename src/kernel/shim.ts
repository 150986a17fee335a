import { spawnCollect } from './spawn.js';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthError, errorMessage, internal } from '../errors.js';
import { ShimSpec } from './shim-spec.js';
import { MNT_DETACH, UMOUNT_NOFOLLOW, umount2 } from './libc.js';

// Driving native/berth-shim: creating containers and pod namespaces, starting, exec. Nothing above this file
// knows the shim's command line or its files.

const here = path.dirname(fileURLToPath(import.meta.url));
export const SHIM_PATH = process.env.BERTH_SHIM ?? path.resolve(here, '../../../native/build/berth-shim');

const SHIM_TIMEOUT_MS = 15_000;

export interface ShimExit {
  exitCode: number;
  signal: number;
  startedAt: number;
  finishedAt: number;
}

async function run(args: string[], timeoutMs = SHIM_TIMEOUT_MS): Promise<string> {
  const result = await spawnCollect(SHIM_PATH, args, timeoutMs).catch((err) => {
    throw internal(`berth-shim ${args[0]}: ${errorMessage(err)}`, err);
  });
  if (result.code !== 0) {
    const why = result.stderr.toString().trim() || `exit code ${result.code}`;
    throw internal(`berth-shim ${args[0]}: ${why}`);
  }
  return result.stdout.toString();
}

/** Writes the spec and creates the container process, blocked until `startContainer`. */
export async function createContainer(spec: ShimSpec): Promise<{ pid: number; monitorPid: number }> {
  // Read once by the shim right now and never again: no need for the fsyncs of an atomic write.
  await fs.writeFile(path.join(spec.bundle, 'spec.json'), JSON.stringify(spec));
  const out = await run(['create', spec.bundle]);
  try {
    const parsed = JSON.parse(out.trim().split('\n').pop() ?? '') as { pid: number; monitorPid: number };
    if (!parsed.pid || !parsed.monitorPid) throw new Error('missing pids');
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
  if (names.includes(SELFBIND_MARK)) {
    await fs.rm(path.join(dir, SELFBIND_MARK), { force: true });
    detach(dir);
  }
}

export interface ExecOptions {
  pid: number;
  uid: number;
  gid: number;
  groups: number[];
  cwd: string;
  env: string[];
  cgroupProcs: string[];
  noNewPrivs: boolean;
  capsFile?: string;
  seccompFile?: string;
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
  const args = ['exec', String(opts.pid), '--uid', String(opts.uid), '--gid', String(opts.gid), '--cwd', opts.cwd];
  if (opts.groups.length > 0) args.push('--groups', opts.groups.join(','));
  for (const e of opts.env) args.push('--env', e);
  for (const f of opts.cgroupProcs) args.push('--cgroup-procs', f);
  if (opts.capsFile) args.push('--caps-json', opts.capsFile);
  if (opts.seccompFile) args.push('--seccomp-json', opts.seccompFile);
  if (opts.noNewPrivs) args.push('--no-new-privs');
  args.push('--', ...opts.command);
  // SIGTERM at the timeout makes the shim kill and reap the command before it exits (no zombie outlives the
  // call); SIGKILL follows if the shim itself does not go.
  return spawnCollect(SHIM_PATH, args, opts.timeoutMs, { timeoutSignal: 'SIGTERM', graceMs: 2000, reportTimeout: true }).then(
    (r) => ({ stdout: r.stdout, stderr: r.stderr, exitCode: r.code, timedOut: r.timedOut }),
    (err) => {
      throw internal(`berth-shim exec: ${errorMessage(err)}`, err);
    },
  );
}
