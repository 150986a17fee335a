// cgroupfs adapter (kubelet's "cgroupfs" driver): cgroup paths such as /kubepods/burstable/pod<uid>/<id>
// are directories made by hand in every hierarchy berth needs. The layout (v1, v2 or a hybrid of both) is
// discovered from mountinfo, never assumed: on some hosts cpu and cpuacct are separate v1 mounts and
// hugetlb lives alone on the cgroup2 mount, on others everything is one cgroup2 tree.
//
// Paths are absolute within each hierarchy as seen through its mount point (cgroup-namespace semantics).
import { closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, rmdirSync, writeSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  BerthError, errorMessage, failedPrecondition, internal, invalidArgument, notFound, unavailable,
} from '../errors.js';
import type { Logger } from '../log.js';
import { parseMountInfo, type MountInfo } from './mountinfo.js';

/**
 * The controllers berth sets limits with or reads statistics from, and v1's devices, which enforces the
 * container's device policy (the shim writes its rules; on cgroup2 a device program does that job, attached to
 * the container's cgroup in the unified tree). freezer is not needed.
 */
export type Controller = 'cpu' | 'cpuacct' | 'cpuset' | 'memory' | 'pids' | 'devices' | 'hugetlb';
export const CONTROLLERS: readonly Controller[] = ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'devices', 'hugetlb'];

// Mount options of a v1 cgroup mount that name controllers (the rest are rw, name=systemd, xattr, ...).
const V1_CONTROLLERS = new Set([
  'cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'net_cls', 'net_prio', 'blkio',
  'perf_event', 'hugetlb', 'pids', 'rdma', 'misc',
]);

export interface Hierarchy {
  version: 1 | 2;
  mountPoint: string;
  /** v1: the controllers bound to this mount; v2: the root's cgroup.controllers. */
  controllers: string[];
}

/** Plain data (JSON-safe): hierarchies are compared by mountPoint, never by identity. */
export interface CgroupLayout {
  mode: 'v1' | 'hybrid' | 'v2';
  /** The distinct hierarchies a berth cgroup is created in, and a process is written into. */
  hierarchies: Hierarchy[];
  /** Where each controller lives; absent when the kernel has it nowhere. */
  controllers: Partial<Record<Controller, Hierarchy>>;
  /** The cgroup2 mount, if any (even when it holds no controller berth uses). */
  unified: Hierarchy | null;
}

export type ReadControllers = (mountPoint: string) => string[];

function readRootControllers(mountPoint: string): string[] {
  try {
    return readFileSync(path.join(mountPoint, 'cgroup.controllers'), 'utf8').split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
}

/** Reads /proc/self/mountinfo unless given its text; readControllers lets tests fake cgroup.controllers. */
export function discoverCgroups(
  mountinfoText?: string,
  readControllers: ReadControllers = readRootControllers,
): CgroupLayout {
  const text = mountinfoText ?? readFileSync('/proc/self/mountinfo', 'utf8');
  return layoutFromMounts(parseMountInfo(text), readControllers);
}

export function layoutFromMounts(mounts: MountInfo[], readControllers: ReadControllers): CgroupLayout {
  // A hierarchy can be mounted more than once (bind mounts of a sub-cgroup): prefer a mount of its root.
  const ordered = [...mounts].sort((a, b) => Number(b.root === '/') - Number(a.root === '/'));
  const controllers: Partial<Record<Controller, Hierarchy>> = {};
  const taken = new Set<string>();
  let unifiedMount: MountInfo | undefined;
  for (const m of ordered) {
    if (m.fsType === 'cgroup2') {
      unifiedMount ??= m;
      continue;
    }
    if (m.fsType !== 'cgroup') continue;
    const names = m.superOptions.filter((o) => V1_CONTROLLERS.has(o));
    // Named hierarchies (name=systemd) have no controllers; a second mount of a seen hierarchy adds nothing.
    if (names.length === 0 || names.some((n) => taken.has(n))) continue;
    const h: Hierarchy = { version: 1, mountPoint: m.mountPoint, controllers: names };
    for (const n of names) {
      taken.add(n);
      if ((CONTROLLERS as readonly string[]).includes(n)) controllers[n as Controller] = h;
    }
  }
  const unified: Hierarchy | null = unifiedMount
    ? { version: 2, mountPoint: unifiedMount.mountPoint, controllers: readControllers(unifiedMount.mountPoint) }
    : null;
  // The kernel lists a controller in cgroup2 only when no v1 mount has bound it; check anyway.
  for (const c of CONTROLLERS) {
    if (!controllers[c] && unified?.controllers.includes(c)) controllers[c] = unified;
  }
  const hierarchies: Hierarchy[] = [];
  for (const c of CONTROLLERS) {
    const h = controllers[c];
    if (h && !hierarchies.some((x) => x.mountPoint === h.mountPoint)) hierarchies.push(h);
  }
  // A pure v2 host without a usable controller still needs its one tree (process tracking, cgroup.kill); and
  // without a v1 devices controller the container's device program is what enforces its device policy, and that
  // program is attached to its cgroup2 directory.
  if (unified && !controllers.devices && !hierarchies.some((h) => h.mountPoint === unified.mountPoint)) hierarchies.push(unified);
  if (hierarchies.length === 0) throw unavailable('no cgroup hierarchy is mounted (see /proc/self/mountinfo)');
  const hasV1 = hierarchies.some((h) => h.version === 1);
  const mode = !hasV1 ? 'v2' : hierarchies.some((h) => h.version === 2) ? 'hybrid' : 'v1';
  return { mode, hierarchies, controllers, unified };
}

// ---- pure conversions -------------------------------------------------------------------------------

/** Kubernetes' shares→cpu.weight conversion: maps [2, 262144] onto [1, 10000]. */
export function sharesToWeight(shares: number): number {
  const s = Math.min(Math.max(Math.trunc(shares), 2), 262144);
  return 1 + Math.floor(((s - 2) * 9999) / 262142);
}

// Swap limits in CRI are memory+swap (v1's memsw); v2 limits swap alone. Without a swap limit a
// container gets none: memsw = memory on v1, swap.max = 0 on v2. -1 means unlimited swap.
function checkSwap(memory: number | undefined, swap: number): void {
  if (memory !== undefined && swap < memory) {
    throw invalidArgument(`memory+swap limit ${swap} is lower than the memory limit ${memory}`);
  }
}

/** v1 memory.memsw.limit_in_bytes for a memory limit (0/undefined = not set) and a memory+swap limit. */
export function v1MemswLimit(memory?: number, swap?: number): number | undefined {
  const mem = memory !== undefined && memory > 0 ? memory : undefined;
  if (swap === -1) return -1;
  if (swap !== undefined && swap > 0) {
    checkSwap(mem, swap);
    return swap;
  }
  return mem;
}

/** v2 memory.swap.max: the swap part of a memory+swap limit. */
export function v2SwapMax(memory?: number, swap?: number): string | undefined {
  const mem = memory !== undefined && memory > 0 ? memory : undefined;
  if (swap === -1) return 'max';
  if (swap !== undefined && swap > 0) {
    if (mem === undefined) throw invalidArgument('a memory+swap limit needs a memory limit on cgroup v2');
    checkSwap(mem, swap);
    return String(swap - mem);
  }
  return mem === undefined ? undefined : '0';
}

/** Splits an absolute cgroup path into its segments, refusing anything that could escape the hierarchy. */
export function cgroupSegments(p: string): string[] {
  const segs = p.split('/').filter((s) => s !== '');
  if (!p.startsWith('/') || segs.length === 0 || segs.some((s) => s === '.' || s === '..' || s.includes('\0'))) {
    throw invalidArgument(`invalid cgroup path ${JSON.stringify(p)}: want an absolute path below the root`);
  }
  return segs;
}

// ---- file helpers -----------------------------------------------------------------------------------

const codeOf = (err: unknown) => (err as NodeJS.ErrnoException)?.code;

function writeError(file: string, value: string | number, err: unknown): BerthError {
  // The kernel answers EINVAL for values it refuses (out of range, above the parent's, ...).
  const kind = codeOf(err) === 'EINVAL' ? 'invalid_argument' : 'internal';
  return new BerthError(kind, `cgroup: writing "${value}" to ${file}: ${errorMessage(err)}`, { cause: err });
}

/** One write(2) of the whole value; cgroup files reject partial or appended writes. */
async function writeCgroupFile(file: string, value: string | number): Promise<void> {
  try {
    await fs.writeFile(file, String(value), { flag: constants.O_WRONLY });
  } catch (err) {
    throw writeError(file, value, err);
  }
}

/** File content, or undefined when the file (or the controller) does not exist. */
async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if (codeOf(err) === 'ENOENT') return undefined;
    throw internal(`cgroup: reading ${file}: ${errorMessage(err)}`, err);
  }
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(() => true, () => false);
}

/**
 * How a call reaches cgroupfs. cgroupfs lives in memory: on a cgroup without processes a read, write or mkdir
 * costs microseconds, far less than a trip through the thread pool (several per pod start, each waiting behind
 * whatever else the pool does). Writes to a live cgroup stay asynchronous: lowering a memory limit makes the
 * kernel reclaim before write(2) returns.
 */
interface CgroupIo {
  write(file: string, value: string | number): Promise<void>;
  read(file: string): Promise<string | undefined>;
  exists(file: string): Promise<boolean>;
  mkdir(dir: string): Promise<void>;
}

const asyncIo: CgroupIo = {
  write: writeCgroupFile,
  read: readOptional,
  exists,
  mkdir: (dir) => fs.mkdir(dir, { mode: 0o755 }).then(() => undefined),
};

const syncIo: CgroupIo = {
  async write(file, value) {
    try {
      const fd = openSync(file, constants.O_WRONLY);
      try {
        writeSync(fd, String(value));
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      throw writeError(file, value, err);
    }
  },
  async read(file) {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      if (codeOf(err) === 'ENOENT') return undefined;
      throw internal(`cgroup: reading ${file}: ${errorMessage(err)}`, err);
    }
  },
  async exists(file) {
    return existsSync(file);
  },
  async mkdir(dir) {
    mkdirSync(dir, { mode: 0o755 });
  },
};

/** "key value" lines (cpu.stat, memory.events, memory.oom_control) as numbers. */
function keyed(text: string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of (text ?? '').split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined && v !== '') out.set(k, Number(v));
  }
  return out;
}

const num = (text: string | undefined) => (text === undefined ? 0 : Number(text.trim()) || 0);

/** A memory limit file's value; null for unlimited (v2 "max", v1 its largest page-aligned counter, ~2^63). */
function bytesLimit(text: string | undefined): number | null {
  const v = text?.trim();
  return v === undefined || v === 'max' || Number(v) >= 2 ** 62 ? null : Number(v);
}

/**
 * Writes two dependent files. Each order is right in one direction (raising memory+swap must come before
 * memory, lowering the other way round; the same for CFS period/quota against the parent's), so try one
 * order and, when the kernel refuses it, the other.
 */
async function writeEitherOrder(io: CgroupIo, dir: string, writes: ([string, string] | undefined)[]): Promise<void> {
  const todo = writes.filter((w): w is [string, string] => w !== undefined);
  const run = async (list: [string, string][]) => {
    for (const [name, value] of list) await io.write(path.join(dir, name), value);
  };
  try {
    await run(todo);
  } catch (err) {
    if (todo.length < 2 || !(err instanceof BerthError) || err.kind !== 'invalid_argument') throw err;
    await run([...todo].reverse()).catch(() => Promise.reject(err));
  }
}

async function cgroupPids(dir: string): Promise<number[]> {
  const text = await readOptional(path.join(dir, 'cgroup.procs'));
  return (text ?? '').split('\n').filter(Boolean).map(Number);
}

/** Pids in a cgroup and all its descendants. */
async function pidsBelow(dir: string): Promise<number[]> {
  const pids = await cgroupPids(dir);
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) pids.push(...(await pidsBelow(path.join(dir, e.name))));
  return pids;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const isSet = (v: number | undefined): v is number => v !== undefined && v > 0;

/** Refuses bad input before anything is written, so a rejected apply() changes nothing. */
function checkResources(r: CgroupResources, layout: CgroupLayout): void {
  const memory = isSet(r.memoryLimitBytes) ? r.memoryLimitBytes : undefined;
  if (layout.controllers.memory?.version === 2) v2SwapMax(memory, r.memorySwapLimitBytes);
  else v1MemswLimit(memory, r.memorySwapLimitBytes);
  for (const { pageSize } of r.hugepageLimits ?? []) {
    if (!/^[0-9]+[KMG]B$/.test(pageSize)) throw invalidArgument(`invalid hugepage size ${JSON.stringify(pageSize)}`);
  }
  const names = Object.keys(r.unified ?? {});
  if (names.length > 0 && !layout.unified) {
    throw invalidArgument('unified cgroup resources need a cgroup v2 hierarchy, and this host has none');
  }
  for (const name of names) {
    if (name === '' || name.includes('/') || name.includes('..')) {
      throw invalidArgument(`invalid unified cgroup file name ${JSON.stringify(name)}`);
    }
  }
}

// ---- the adapter ------------------------------------------------------------------------------------

/** What create() made: persist it so that remove() after a restart deletes exactly these directories. */
export interface CgroupHandle {
  path: string;
  /** Absolute directories created by this call, in every hierarchy, parents before children. */
  created: string[];
}

export interface HugepageLimit {
  /** As CRI and the kernel spell it: 2MB, 1GB, 64KB. */
  pageSize: string;
  limit: number;
}

/** Every field is optional: only what is given is written. 0 means "not set" for memory and shares. */
export interface CgroupResources {
  cpuShares?: number;
  /** Microseconds; given as 0 (or negative) it removes the quota. */
  cpuQuota?: number;
  cpuPeriod?: number;
  cpusetCpus?: string;
  cpusetMems?: string;
  memoryLimitBytes?: number;
  /** Memory+swap, as in CRI; -1 for unlimited swap. */
  memorySwapLimitBytes?: number;
  hugepageLimits?: HugepageLimit[];
  /** 0 or negative: no limit. */
  pidsLimit?: number;
  /** Raw files on the cgroup2 hierarchy (CRI's "unified" map). */
  unified?: Record<string, string>;
}

export interface CgroupStats {
  memoryUsageBytes: number;
  /** null when unlimited. */
  memoryLimitBytes: number | null;
  oomKills: number;
  cpuUsageNanos: number;
  nrThrottled: number;
  throttledNanos: number;
  pidsCurrent: number;
}

export class Cgroups {
  private readonly warned = new Set<string>();

  constructor(
    readonly layout: CgroupLayout,
    private readonly log: Logger,
  ) {}

  /** Makes the cgroup (and missing ancestors) in every hierarchy; ready for a process to join. */
  async create(cgPath: string): Promise<CgroupHandle> {
    const segs = cgroupSegments(cgPath);
    const made = this.layout.hierarchies.map(() => [] as string[]);
    const results = await Promise.allSettled(this.layout.hierarchies.map((h, i) => this.createIn(h, segs, made[i])));
    const created = made.flat();
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await this.rmdirs(created).catch((err) => this.log.warn('cgroup cleanup after a failed create', { err }));
      throw failed.reason;
    }
    this.log.debug('cgroup created', { path: cgPath, created });
    return { path: '/' + segs.join('/'), created };
  }

  private async createIn(h: Hierarchy, segs: string[], created: string[]): Promise<void> {
    const cpusetV1 = h.version === 1 && this.layout.controllers.cpuset?.mountPoint === h.mountPoint;
    let dir = h.mountPoint;
    for (const seg of segs) {
      // On v2 a child only gets a controller's files when its parent delegates it.
      if (h.version === 2) await this.enableSubtree(h, dir);
      const parent = dir;
      dir = path.join(dir, seg);
      try {
        await syncIo.mkdir(dir);
        created.push(dir);
      } catch (err) {
        if (codeOf(err) !== 'EEXIST') throw internal(`cgroup: mkdir ${dir}: ${errorMessage(err)}`, err);
      }
      if (cpusetV1) await inheritCpuset(parent, dir);
    }
  }

  /** Adds the controllers berth needs to dir's cgroup.subtree_control; best effort for dirs not ours. */
  private async enableSubtree(h: Hierarchy, dir: string): Promise<void> {
    const wanted = CONTROLLERS.filter((c) => this.layout.controllers[c]?.mountPoint === h.mountPoint);
    if (wanted.length === 0) return;
    const available = (await syncIo.read(path.join(dir, 'cgroup.controllers')) ?? '').split(/\s+/);
    const enabled = (await syncIo.read(path.join(dir, 'cgroup.subtree_control')) ?? '').split(/\s+/);
    for (const c of wanted) {
      if (enabled.includes(c) || !available.includes(c)) continue;
      // One controller per write, so one refusal (e.g. EBUSY: processes in a non-root parent) spares the rest.
      await syncIo.write(path.join(dir, 'cgroup.subtree_control'), `+${c}`).catch((err) =>
        this.log.warn('cannot enable cgroup controller', { dir, controller: c, err }),
      );
    }
  }

  /** The cgroup.procs files a process must be written into, one per hierarchy. */
  procsFiles(target: CgroupHandle | string): string[] {
    const segs = cgroupSegments(typeof target === 'string' ? target : target.path);
    return this.layout.hierarchies.map((h) => path.join(h.mountPoint, ...segs, 'cgroup.procs'));
  }

  /** The cgroup's directory in the hierarchy of a controller, or undefined when that controller is missing. */
  private dirOf(c: Controller, segs: string[]): { dir: string; v2: boolean } | undefined {
    const h = this.layout.controllers[c];
    return h && { dir: path.join(h.mountPoint, ...segs), v2: h.version === 2 };
  }

  private missing(c: Controller): undefined {
    // runc's cgroupfs driver skips controllers the kernel does not have; so do we, loudly once.
    if (!this.warned.has(c)) this.log.warn('cgroup controller not available; its limits are not applied', { controller: c });
    this.warned.add(c);
    return undefined;
  }

  /**
   * Writes the given limits. Inputs are checked before the first write; kernel refusals come back as
   * errors naming the file and value (invalid_argument for EINVAL, internal otherwise).
   */
  async apply(cgPath: string, r: CgroupResources, opts: { empty?: boolean } = {}): Promise<void> {
    const segs = cgroupSegments(cgPath);
    const io = opts.empty ? syncIo : asyncIo;
    checkResources(r, this.layout);
    await this.applyCpu(io, segs, r);
    if (r.cpusetCpus || r.cpusetMems) {
      const cs = this.dirOf('cpuset', segs) ?? this.missing('cpuset');
      if (cs && r.cpusetCpus) await io.write(path.join(cs.dir, 'cpuset.cpus'), r.cpusetCpus);
      if (cs && r.cpusetMems) await io.write(path.join(cs.dir, 'cpuset.mems'), r.cpusetMems);
    }
    await this.applyMemory(io, segs, r);
    if (r.pidsLimit !== undefined) {
      const pids = this.dirOf('pids', segs) ?? this.missing('pids');
      if (pids) await io.write(path.join(pids.dir, 'pids.max'), r.pidsLimit > 0 ? r.pidsLimit : 'max');
    }
    await this.applyHugepages(io, segs, r.hugepageLimits ?? []);
    for (const [name, value] of Object.entries(r.unified ?? {})) {
      const file = path.join(this.layout.unified!.mountPoint, ...segs, name);
      if (!(await io.exists(file))) throw invalidArgument(`unified cgroup file ${name} does not exist (${file})`);
      await io.write(file, value);
    }
  }

  private async applyCpu(io: CgroupIo, segs: string[], r: CgroupResources): Promise<void> {
    if (!isSet(r.cpuShares) && r.cpuQuota === undefined && !isSet(r.cpuPeriod)) return;
    const cpu = this.dirOf('cpu', segs) ?? this.missing('cpu');
    if (!cpu) return;
    if (!cpu.v2) {
      if (isSet(r.cpuShares)) await io.write(path.join(cpu.dir, 'cpu.shares'), r.cpuShares!);
      await writeEitherOrder(io, cpu.dir, [
        isSet(r.cpuPeriod) ? ['cpu.cfs_period_us', String(r.cpuPeriod)] : undefined,
        r.cpuQuota !== undefined ? ['cpu.cfs_quota_us', r.cpuQuota > 0 ? String(r.cpuQuota) : '-1'] : undefined,
      ]);
      return;
    }
    if (isSet(r.cpuShares)) await io.write(path.join(cpu.dir, 'cpu.weight'), sharesToWeight(r.cpuShares!));
    if (r.cpuQuota === undefined && !isSet(r.cpuPeriod)) return;
    // cpu.max is "<quota|max> [period]": keep the current quota when only the period changes.
    const current = (await io.read(path.join(cpu.dir, 'cpu.max')))?.trim().split(' ')[0] ?? 'max';
    const quota = r.cpuQuota === undefined ? current : r.cpuQuota > 0 ? String(r.cpuQuota) : 'max';
    await io.write(path.join(cpu.dir, 'cpu.max'), isSet(r.cpuPeriod) ? `${quota} ${r.cpuPeriod}` : quota);
  }

  private async applyMemory(io: CgroupIo, segs: string[], r: CgroupResources): Promise<void> {
    if (!isSet(r.memoryLimitBytes) && r.memorySwapLimitBytes === undefined) return;
    const mem = this.dirOf('memory', segs) ?? this.missing('memory');
    if (!mem) return;
    const limit = isSet(r.memoryLimitBytes) ? r.memoryLimitBytes : undefined;
    if (!mem.v2) {
      const memsw = v1MemswLimit(limit, r.memorySwapLimitBytes);
      // memsw exists only with swap accounting (swapaccount=1).
      const hasMemsw = memsw !== undefined && (await io.exists(path.join(mem.dir, 'memory.memsw.limit_in_bytes')));
      await writeEitherOrder(io, mem.dir, [
        limit !== undefined ? ['memory.limit_in_bytes', String(limit)] : undefined,
        hasMemsw ? ['memory.memsw.limit_in_bytes', String(memsw)] : undefined,
      ]);
      return;
    }
    const swap = v2SwapMax(limit, r.memorySwapLimitBytes);
    if (limit !== undefined) await io.write(path.join(mem.dir, 'memory.max'), limit);
    if (swap !== undefined && (await io.exists(path.join(mem.dir, 'memory.swap.max')))) {
      await io.write(path.join(mem.dir, 'memory.swap.max'), swap);
    }
  }

  private async applyHugepages(io: CgroupIo, segs: string[], limits: HugepageLimit[]): Promise<void> {
    if (limits.length === 0) return;
    const hp = this.dirOf('hugetlb', segs) ?? this.missing('hugetlb');
    if (!hp) return;
    const suffix = hp.v2 ? 'max' : 'limit_in_bytes';
    for (const { pageSize, limit } of limits) {
      const file = path.join(hp.dir, `hugetlb.${pageSize}.${suffix}`);
      if (!(await io.exists(file))) throw invalidArgument(`hugepage size ${pageSize} is not supported here (no ${file})`);
      await io.write(file, limit);
      // Newer kernels also account reservations; keep both limits equal, as runc does.
      const rsvd = path.join(hp.dir, `hugetlb.${pageSize}.rsvd.${suffix}`);
      if (await io.exists(rsvd)) await io.write(rsvd, limit);
    }
  }

  /** Usage statistics; controllers the host lacks read as 0. */
  async read(cgPath: string): Promise<CgroupStats> {
    const segs = cgroupSegments(cgPath);
    const first = path.join(this.layout.hierarchies[0].mountPoint, ...segs);
    if (!(await exists(path.join(first, 'cgroup.procs')))) throw notFound(`cgroup ${cgPath} does not exist`);
    const at = (c: Controller, v1File: string, v2File: string) => {
      const d = this.dirOf(c, segs);
      return d ? readOptional(path.join(d.dir, d.v2 ? v2File : v1File)) : Promise.resolve(undefined);
    };
    const cpuV2 = this.layout.controllers.cpu?.version === 2;
    const [usage, limit, oom, cpuStat, pids, cpuUsageNanos] = await Promise.all([
      at('memory', 'memory.usage_in_bytes', 'memory.current'),
      at('memory', 'memory.limit_in_bytes', 'memory.max'),
      at('memory', 'memory.oom_control', 'memory.events'),
      at('cpu', 'cpu.stat', 'cpu.stat'),
      at('pids', 'pids.current', 'pids.current'),
      this.cpuUsage(segs),
    ]);
    const stat = keyed(cpuStat);
    return {
      memoryUsageBytes: num(usage),
      memoryLimitBytes: bytesLimit(limit),
      oomKills: keyed(oom).get('oom_kill') ?? 0,
      cpuUsageNanos,
      nrThrottled: stat.get('nr_throttled') ?? 0,
      throttledNanos: cpuV2 ? (stat.get('throttled_usec') ?? 0) * 1000 : (stat.get('throttled_time') ?? 0),
      pidsCurrent: num(pids),
    };
  }

  /** OOM kills counted in the cgroup (0 without a memory controller or once the cgroup is gone). */
  async oomKills(cgPath: string): Promise<number> {
    const d = this.dirOf('memory', cgroupSegments(cgPath));
    if (!d) return 0;
    // Read on the exit path of every container: cgroupfs answers from memory, no thread pool needed.
    return keyed(await syncIo.read(path.join(d.dir, d.v2 ? 'memory.events' : 'memory.oom_control'))).get('oom_kill') ?? 0;
  }

  private async cpuUsage(segs: string[]): Promise<number> {
    // v1 accounts CPU time in cpuacct; v2 in the core cpu.stat, present even without the cpu controller.
    const acct = this.dirOf('cpuacct', segs);
    if (acct) return num(await readOptional(path.join(acct.dir, 'cpuacct.usage')));
    const u = this.layout.unified;
    if (!u) return 0;
    return (keyed(await readOptional(path.join(u.mountPoint, ...segs, 'cpu.stat'))).get('usage_usec') ?? 0) * 1000;
  }

  /**
   * Removes exactly the directories create() made, deepest first. A cgroup with processes is refused with
   * their pids (the caller kills its own processes first); already-gone directories are fine.
   */
  async remove(handle: CgroupHandle): Promise<void> {
    for (const dir of handle.created) {
      const resolved = path.resolve(dir);
      if (resolved !== dir || !this.layout.hierarchies.some((h) => dir.startsWith(h.mountPoint + '/'))) {
        throw invalidArgument(`${JSON.stringify(dir)} is not a cgroup directory in this host's hierarchies`);
      }
    }
    await this.rmdirs(handle.created);
    this.log.debug('cgroup removed', { path: handle.path });
  }

  /**
   * Removes those of `dirs` that no longer hold cgroups or processes (shared parents such as /kubepods that berth
   * made for the first pod and that later pods also live in). Returns the ones still in use.
   */
  async removeIfUnused(dirs: string[]): Promise<string[]> {
    const depth = (d: string) => d.split('/').length;
    const kept: string[] = [];
    for (const dir of [...dirs].sort((a, b) => depth(b) - depth(a))) {
      if (!this.layout.hierarchies.some((h) => dir.startsWith(h.mountPoint + '/'))) continue;
      try {
        rmdirSync(dir);
      } catch (err) {
        const code = codeOf(err);
        if (code === 'EBUSY' || code === 'ENOTEMPTY') kept.push(dir);
        else if (code !== 'ENOENT') throw internal(`cgroup: rmdir ${dir}: ${errorMessage(err)}`, err);
      }
    }
    return kept;
  }

  private async rmdirs(dirs: string[]): Promise<void> {
    const depth = (d: string) => d.split('/').length;
    for (const dir of [...dirs].sort((a, b) => depth(b) - depth(a))) await rmdirCgroup(dir);
  }

  /** SIGKILLs every process in the cgroup and its children (for berth's own container cgroups only). */
  async killAll(cgPath: string): Promise<void> {
    const segs = cgroupSegments(cgPath);
    const u = this.layout.unified;
    if (u && this.layout.hierarchies.some((h) => h.mountPoint === u.mountPoint)) {
      // cgroup.kill (Linux 5.14) kills atomically, racing no fork.
      const file = path.join(u.mountPoint, ...segs, 'cgroup.kill');
      if (await exists(file)) return writeCgroupFile(file, '1');
    }
    // Without it, signal in passes: a child forked meanwhile lands in the same cgroup and the next pass gets it.
    const signalled = new Set<number>();
    for (let pass = 0; pass < 10; pass++) {
      const lists = await Promise.all(this.layout.hierarchies.map((h) => pidsBelow(path.join(h.mountPoint, ...segs))));
      const fresh = [...new Set(lists.flat())].filter((p) => !signalled.has(p));
      if (fresh.length === 0) return;
      for (const pid of fresh) {
        signalled.add(pid);
        try {
          process.kill(pid, 'SIGKILL');
        } catch (err) {
          if (codeOf(err) !== 'ESRCH') throw internal(`cgroup: kill ${pid} in ${cgPath}: ${errorMessage(err)}`, err);
        }
      }
    }
  }
}

/** v1 cpusets start empty (unless clone_children) and refuse processes until cpus and mems are set. */
async function inheritCpuset(parent: string, dir: string): Promise<void> {
  for (const name of ['cpuset.cpus', 'cpuset.mems']) {
    if ((await syncIo.read(path.join(dir, name)))?.trim()) continue;
    // Ancestors are visited first (root down), so the parent already has a value.
    const value = (await syncIo.read(path.join(parent, name)))?.trim();
    if (value) await syncIo.write(path.join(dir, name), value);
  }
}

async function rmdirCgroup(dir: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      // rmdir on cgroupfs returns at once (the kernel frees the cgroup later): no thread-pool round trip needed.
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = codeOf(err);
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' && code !== 'ENOTEMPTY') throw internal(`cgroup: rmdir ${dir}: ${errorMessage(err)}`, err);
      const pids = await pidsBelow(dir);
      if (pids.length > 0) throw failedPrecondition(`cgroup ${dir} still has processes: ${pids.join(', ')}`);
      // A just-reaped task can keep a cgroup populated for a few milliseconds; child cgroups never go away.
      if (attempt === 4) throw failedPrecondition(`cgroup ${dir} is busy (child cgroups not made by berth?)`);
      await sleep(5 << attempt);
    }
  }
}
