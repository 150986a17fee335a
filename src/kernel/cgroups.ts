// cgroupfs adapter (kubelet's "cgroupfs" driver): cgroup paths such as /kubepods/burstable/pod<uid>/<id>
// are directories made by hand in every hierarchy berth needs (cgroup-layout.ts finds them). Limits are planned
// as pure [file, value] lists (cgroup-plan.ts) and written by an executor (cgroup-io.ts).
import { rmdirSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { errorMessage, failedPrecondition, internal, invalidArgument, notFound } from '../errors.js';
import type { Logger } from '../log.js';
import { CONTROLLERS, cgroupSegments, controllerDir, type CgroupLayout, type Controller, type Hierarchy } from './cgroup-layout.js';
import { asyncIo, codeOf, executePlan, exists, readOptional, syncIo, writeCgroupFile } from './cgroup-io.js';
import { planResources, type CgroupResources } from './cgroup-plan.js';

// Callers know this module as the cgroup adapter; the layout and the plan's types are part of its API.
export {
  CONTROLLERS, cgroupSegments, discoverCgroups, layoutFromMounts,
  type CgroupLayout, type Controller, type Hierarchy, type ReadControllers,
} from './cgroup-layout.js';
export {
  sharesToWeight, v1MemswLimit, v2SwapMax, type CgroupResources, type HugepageLimit, type BlockioDeviceLimit, type WeightMechanism,
} from './cgroup-plan.js';

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

async function cgroupPids(dir: string): Promise<number[]> {
  const text = await readOptional(path.join(dir, 'cgroup.procs'));
  return (text ?? '').split('\n').filter(Boolean).map(Number);
}

/** Pids in a cgroup and all its descendants. */
export async function pidsBelow(dir: string): Promise<number[]> {
  const pids = await cgroupPids(dir);
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) pids.push(...(await pidsBelow(path.join(dir, e.name))));
  return pids;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- the adapter ------------------------------------------------------------------------------------

/**
 * The cgroup.procs file of the cgroup this process is in, in the first of `hierarchies` that /proc/self/cgroup
 * (`id:controllers:/path`, cgroup2 as `0::/path`) names; undefined when none does or the path leaves the mount.
 */
export function ownProcsFile(procSelfCgroup: string, hierarchies: Hierarchy[]): string | undefined {
  const lines = procSelfCgroup.split('\n').map((l) => /^(\d+):([^:]*):(\/.*)$/.exec(l)).filter((m) => m !== null);
  const key = (names: string[]) => [...names].sort().join(',');
  for (const h of hierarchies) {
    const m = lines.find((l) => (h.version === 2 ? l[1] === '0' && l[2] === '' : key(l[2].split(',')) === key(h.controllers)));
    if (!m) continue;
    const dir = path.join(h.mountPoint, m[3]);
    if (dir !== h.mountPoint && !dir.startsWith(h.mountPoint + '/')) continue;
    return path.join(dir, 'cgroup.procs');
  }
  return undefined;
}

/** What create() made: persist it so that remove() after a restart deletes exactly these directories. */
export interface CgroupHandle {
  path: string;
  /** Absolute directories created by this call, in every hierarchy, parents before children. */
  created: string[];
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

/** Under a grace period (10-20 ms on these VMs), so that the kernel never drops back to its quiet state. */
const KEEP_WARM_EVERY_MS = 4;

export class Cgroups {
  private readonly warned = new Set<string>();
  private warming: Promise<string | undefined> | undefined;
  /** keepMigrationsWarm's window: its end (performance.now() ms), whether its loop runs, and its next step. */
  private warmUntil = 0;
  private keepingWarm = false;
  private warmTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly layout: CgroupLayout,
    private readonly log: Logger,
  ) {}

  /**
   * Starts, now and off the event loop, the wait that the next migration into a cgroup will pay: a process about to
   * join its cgroups (a container init) then shares it instead of paying it whole. Never throws, never waits.
   *
   * Why: without `favordynmods` on the hierarchy, moving a process between cgroups takes the kernel's global
   * cgroup_threadgroup_rwsem for writing, and the first such write after a quiet moment waits for an RCU grace
   * period (percpu_rwsem: readers' fast path off); writes in the next grace period find it off already. Measured on
   * these VMs: 10-20 ms for the first cgroup.procs write, 0.05 ms for the next ones, and it was half of
   * CreateContainer (the init joining its cgroups). berth's own process is migrated into the cgroup it is already in
   * (read from /proc/self/cgroup just before): a move that changes nothing but starts that grace period. A write
   * already under way serves every caller meanwhile. The promise (never rejected) is for tests: callers go on.
   */
  warmMigration(): Promise<void> {
    return this.warmOnce().then(() => undefined);
  }

  /**
   * One no-op migration (shared by concurrent callers) into `known`, or the cgroup /proc/self/cgroup names; the
   * cgroup.procs file written, or undefined when there was none or the write failed (logged).
   */
  private warmOnce(known?: string): Promise<string | undefined> {
    this.warming ??= (async () => {
      const file = known ?? ownProcsFile(await fs.readFile('/proc/self/cgroup', 'utf8'), this.layout.hierarchies);
      // '0' is the writing thread's own process: berth.
      if (file) await fs.writeFile(file, '0');
      return file;
    })()
      .catch((err) => {
        this.log.debug('cgroup migration warm-up failed', { error: errorMessage(err) });
        return undefined;
      })
      .finally(() => {
        this.warming = undefined;
      });
    return this.warming;
  }

  /** Whether a keepMigrationsWarm window is open (its loop running). */
  get keepingMigrationsWarm(): boolean {
    return this.keepingWarm;
  }

  /**
   * Keeps migrations cheap for `ms` from now: starts the wait (warmMigration) and then repeats the no-op migration
   * every KEEP_WARM_EVERY_MS while the window lasts. After the last migration the kernel goes back to its quiet
   * state one grace period later (10-20 ms here), so the next migration would wait a whole grace period again: a
   * pod's first container init joins its cgroups some ms after RunPodSandbox (kubelet's CreateContainer follows
   * it), and inside this window it finds the fast path. A later call extends the window. While one is open, forks and
   * exits on the node take the kernel's slower reader path, as they do on a host mounted with favordynmods: under
   * steady pod churn that is most of the time. The window is timed on the monotonic clock (a clock step cannot
   * stretch it), closes at the first failed migration (berth in a cgroup it may not write), and at stopWarming().
   */
  keepMigrationsWarm(ms: number): void {
    this.warmUntil = Math.max(this.warmUntil, performance.now() + ms);
    if (this.keepingWarm) return;
    this.keepingWarm = true;
    // berth's own cgroup is read once per window, not at every step.
    let file: string | undefined;
    const again = () => {
      void this.warmOnce(file).then((written) => {
        file = written;
        if (!written || performance.now() >= this.warmUntil) {
          this.keepingWarm = false;
          this.warmTimer = undefined;
          return;
        }
        this.warmTimer = setTimeout(again, KEEP_WARM_EVERY_MS).unref();
      });
    };
    again();
  }

  /** Closes a keepMigrationsWarm window at once (berth stopping): no migration starts after this. */
  stopWarming(): void {
    this.warmUntil = 0;
    // Between two steps: end the loop here. During one: its end sees the window closed.
    if (this.warmTimer) {
      clearTimeout(this.warmTimer);
      this.warmTimer = undefined;
      this.keepingWarm = false;
    }
  }

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

  /**
   * Writes the given limits. Inputs are checked before the first write; kernel refusals come back as
   * errors naming the file and value (invalid_argument for EINVAL, internal otherwise).
   */
  async apply(cgPath: string, r: CgroupResources, opts: { empty?: boolean } = {}): Promise<void> {
    const plan = planResources(this.layout, cgPath, r);
    for (const c of plan.missing) {
      // runc's cgroupfs driver skips controllers the kernel does not have; so do we, loudly once.
      if (!this.warned.has(c)) this.log.warn('cgroup controller not available; its limits are not applied', { controller: c });
      this.warned.add(c);
    }
    await executePlan(opts.empty ? syncIo : asyncIo, plan.steps);
  }

  /** Usage statistics; controllers the host lacks read as 0. */
  async read(cgPath: string): Promise<CgroupStats> {
    const segs = cgroupSegments(cgPath);
    const first = path.join(this.layout.hierarchies[0].mountPoint, ...segs);
    if (!(await exists(path.join(first, 'cgroup.procs')))) throw notFound(`cgroup ${cgPath} does not exist`);
    const at = (c: Controller, v1File: string, v2File: string) => {
      const d = controllerDir(this.layout, c, segs);
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
    const d = controllerDir(this.layout, 'memory', cgroupSegments(cgPath));
    if (!d) return 0;
    // Read on the exit path of every container: cgroupfs answers from memory, no thread pool needed.
    return keyed(await syncIo.read(path.join(d.dir, d.v2 ? 'memory.events' : 'memory.oom_control'))).get('oom_kill') ?? 0;
  }

  private async cpuUsage(segs: string[]): Promise<number> {
    // v1 accounts CPU time in cpuacct; v2 in the core cpu.stat, present even without the cpu controller.
    const acct = controllerDir(this.layout, 'cpuacct', segs);
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
