// Finds an lxcfs filesystem on the node, for the in-container resource view (/proc/meminfo and friends).
//
// CreateContainer asks on every create, so the answer is cached: while lxcfs stays mounted a create costs two
// stat calls (the mount point and its parent: a mount shows as a change of device), and mountinfo is read only
// when a new mount appears at the directory. While nothing is mounted there, the same two stats say so.
import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import { errorMessage } from '../errors.js';
import { MountInfo, parseMountInfo } from './mountinfo.js';

/** The files of lxcfs's proc directory a container gets, when lxcfs has them (its version decides). */
export const LXCFS_PROC_FILES = ['meminfo', 'cpuinfo', 'stat', 'uptime', 'loadavg', 'diskstats', 'swaps'] as const;

export interface LxcfsView {
  /** The mount point, normalised. */
  dir: string;
  /** Those of LXCFS_PROC_FILES present in `<dir>/proc`, in that order. */
  procFiles: string[];
}

/** The syscalls the probe makes; unit tests pass fakes. */
export interface LxcfsHost {
  stat(file: string): Promise<Pick<Stats, 'dev'>>;
  readMountInfo(): Promise<MountInfo[]>;
  readdir(dir: string): Promise<string[]>;
  realpath(file: string): Promise<string>;
}

export const kernelLxcfsHost: LxcfsHost = {
  stat: (file) => fs.stat(file),
  readMountInfo: async () => parseMountInfo(await fs.readFile('/proc/self/mountinfo', 'utf8')),
  readdir: (dir) => fs.readdir(dir),
  realpath: (file) => fs.realpath(file),
};

export interface LxcfsProbeOptions {
  dir: string;
  host?: LxcfsHost;
  /** A FUSE daemon that hangs would hang a stat: past this the probe answers "not available". */
  timeoutMs?: number;
  /** Told when lxcfs appears or goes away (once per change), for the log. */
  onChange?: (found: LxcfsLookup) => void;
}

export type LxcfsLookup = { view: LxcfsView; reason?: undefined } | { view?: undefined; reason: string };

const TIMED_OUT = Symbol('timed out');

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

export class LxcfsProbe {
  readonly dir: string;
  private readonly host: LxcfsHost;
  private readonly timeoutMs: number;
  /** The device of the lxcfs mount last found, and what it offered. */
  private cached?: { dev: number; view: LxcfsView };
  /** What the last lookup said, so that onChange hears each change once. */
  private said?: string;

  constructor(private readonly opts: LxcfsProbeOptions) {
    this.dir = path.posix.resolve(opts.dir);
    this.host = opts.host ?? kernelLxcfsHost;
    this.timeoutMs = opts.timeoutMs ?? 2000;
  }

  /** The lxcfs mounted at the directory, or why there is none usable. Never throws. */
  async find(): Promise<LxcfsLookup> {
    let found: LxcfsLookup;
    try {
      const r = await withTimeout(this.look(), this.timeoutMs);
      found = r === TIMED_OUT ? { reason: `stat ${this.dir}: no answer within ${this.timeoutMs} ms (is lxcfs hung?)` } : r;
    } catch (err) {
      found = { reason: errorMessage(err) };
    }
    if (!found.view) this.cached = undefined;
    const said = found.view ? `found ${found.view.procFiles.join(',')}` : found.reason;
    if (said !== this.said) {
      this.said = said;
      this.opts.onChange?.(found);
    }
    return found;
  }

  private async look(): Promise<LxcfsLookup> {
    const missing = (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
      // ENOTCONN: a FUSE mount whose daemon is gone (lxcfs killed without unmounting).
      throw new Error(`stat ${this.dir}: ${err.code ?? err.message}`);
    };
    const [dirStat, parentStat] = await Promise.all([
      this.host.stat(this.dir).catch(missing),
      this.host.stat(path.posix.dirname(this.dir)).catch(missing),
    ]);
    if (!dirStat || !parentStat) return { reason: `${this.dir} does not exist` };
    if (dirStat.dev === parentStat.dev) return { reason: `nothing is mounted at ${this.dir}` };
    if (this.cached && this.cached.dev === dirStat.dev) return { view: this.cached.view };
    // A mount appeared (or another took the place of the one cached): is it lxcfs, and what does it offer?
    // mountinfo names the mount point without symlinks (lxcfs_dir may go through one).
    const [mounts, mountPoint] = await Promise.all([this.host.readMountInfo(), this.host.realpath(this.dir)]);
    const top = mounts.filter((m) => m.mountPoint === mountPoint).at(-1);
    if (!top || top.fsType !== 'fuse.lxcfs') return { reason: `${this.dir} is a ${top?.fsType ?? 'unknown'} mount, not fuse.lxcfs` };
    const present = new Set(await this.host.readdir(path.posix.join(this.dir, 'proc')));
    const procFiles = LXCFS_PROC_FILES.filter((f) => present.has(f));
    if (procFiles.length === 0) return { reason: `${this.dir}/proc has none of ${LXCFS_PROC_FILES.join(', ')}` };
    const view = { dir: this.dir, procFiles };
    this.cached = { dev: dirStat.dev, view };
    return { view };
  }
}
