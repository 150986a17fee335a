// Pure planning of cgroup limit writes: a resource request becomes the list of files to write, with their values
// and in their order, for the hierarchy each controller lives in (v1 or v2). Nothing here touches the filesystem;
// cgroup-io.ts carries a plan out.
import path from 'node:path';
import { invalidArgument } from '../errors.js';
import { cgroupSegments, controllerDir, type CgroupLayout, type Controller } from './cgroup-layout.js';

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
  /** Per-device block I/O limits (a [blockio] class); devices absent from the list are not limited. */
  blockio?: BlockioDeviceLimit[];
}

/**
 * Which kernel mechanism gives a device a relative I/O weight: the BFQ scheduler (v1 blkio.bfq.weight_device, v2
 * io.bfq.weight) or v2's iocost controller (io.weight). Devices without either have no weight to set.
 */
export type WeightMechanism = 'bfq' | 'iocost';

/** Limits on one whole-disk block device, by its numbers; an absent field is not limited. */
export interface BlockioDeviceLimit {
  major: number;
  minor: number;
  readBps?: number;
  writeBps?: number;
  readIops?: number;
  writeIops?: number;
  weight?: number;
  /** Set whenever weight is: how this device takes one (resolved once, when the config is loaded). */
  weightMechanism?: WeightMechanism;
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

// ---- the plan -----------------------------------------------------------------------------------------

/** One cgroup file write. */
export interface CgroupWrite {
  file: string;
  value: string;
  /**
   * What an absent file means, checked right before the write: 'skip' it (accounting the kernel may lack, such
   * as memsw without swapaccount=1), or refuse the request with this message. Without it the write just fails.
   */
  ifAbsent?: 'skip' | { refuse: string };
}

export type CgroupStep =
  | ({ kind: 'write' } & CgroupWrite)
  /**
   * Two dependent files. Each order is right in one direction (raising memory+swap must come before memory,
   * lowering the other way round; the same for CFS period/quota against the parent's): the executor tries this
   * order and, when the kernel refuses it, the reverse.
   */
  | { kind: 'either-order'; writes: CgroupWrite[] }
  /** cpu.max is "<quota|max> [period]": a new period alone keeps the quota the file holds. */
  | { kind: 'cpu-max-period'; file: string; period: number };

export interface CgroupPlan {
  steps: CgroupStep[];
  /** Controllers the request needs that this host lacks, in the order met: their limits are not applied. */
  missing: Controller[];
}

/**
 * The writes that apply `r` to the cgroup at `cgPath`, in order. Bad input is refused here, so a request that
 * plans fine is refused afterwards only by the kernel (or by a file that turns out to be absent).
 */
export function planResources(layout: CgroupLayout, cgPath: string, r: CgroupResources): CgroupPlan {
  const segs = cgroupSegments(cgPath);
  checkResources(r, layout);
  const steps: CgroupStep[] = [];
  const missing: Controller[] = [];
  const write = (file: string, value: string | number, ifAbsent?: CgroupWrite['ifAbsent']) =>
    steps.push({ kind: 'write', file, value: String(value), ...(ifAbsent && { ifAbsent }) });
  const eitherOrder = (writes: (CgroupWrite | undefined)[]) => {
    const todo = writes.filter((w): w is CgroupWrite => w !== undefined);
    if (todo.length === 1) steps.push({ kind: 'write', ...todo[0] });
    else if (todo.length > 1) steps.push({ kind: 'either-order', writes: todo });
  };
  /** The cgroup's directory for controller c; a missing controller is noted. */
  const dirOf = (c: Controller) => {
    const dir = controllerDir(layout, c, segs);
    if (!dir) missing.push(c);
    return dir;
  };

  const cpu = isSet(r.cpuShares) || r.cpuQuota !== undefined || isSet(r.cpuPeriod) ? dirOf('cpu') : undefined;
  if (cpu && !cpu.v2) {
    if (isSet(r.cpuShares)) write(path.join(cpu.dir, 'cpu.shares'), r.cpuShares);
    eitherOrder([
      isSet(r.cpuPeriod) ? { file: path.join(cpu.dir, 'cpu.cfs_period_us'), value: String(r.cpuPeriod) } : undefined,
      r.cpuQuota !== undefined
        ? { file: path.join(cpu.dir, 'cpu.cfs_quota_us'), value: r.cpuQuota > 0 ? String(r.cpuQuota) : '-1' }
        : undefined,
    ]);
  } else if (cpu) {
    if (isSet(r.cpuShares)) write(path.join(cpu.dir, 'cpu.weight'), sharesToWeight(r.cpuShares));
    const file = path.join(cpu.dir, 'cpu.max');
    if (r.cpuQuota !== undefined) {
      const quota = r.cpuQuota > 0 ? String(r.cpuQuota) : 'max';
      write(file, isSet(r.cpuPeriod) ? `${quota} ${r.cpuPeriod}` : quota);
    } else if (isSet(r.cpuPeriod)) {
      steps.push({ kind: 'cpu-max-period', file, period: r.cpuPeriod });
    }
  }

  if (r.cpusetCpus || r.cpusetMems) {
    const cs = dirOf('cpuset');
    if (cs && r.cpusetCpus) write(path.join(cs.dir, 'cpuset.cpus'), r.cpusetCpus);
    if (cs && r.cpusetMems) write(path.join(cs.dir, 'cpuset.mems'), r.cpusetMems);
  }

  const mem = isSet(r.memoryLimitBytes) || r.memorySwapLimitBytes !== undefined ? dirOf('memory') : undefined;
  const limit = isSet(r.memoryLimitBytes) ? r.memoryLimitBytes : undefined;
  if (mem && !mem.v2) {
    const memsw = v1MemswLimit(limit, r.memorySwapLimitBytes);
    eitherOrder([
      limit !== undefined ? { file: path.join(mem.dir, 'memory.limit_in_bytes'), value: String(limit) } : undefined,
      // memsw exists only with swap accounting (swapaccount=1).
      memsw !== undefined
        ? { file: path.join(mem.dir, 'memory.memsw.limit_in_bytes'), value: String(memsw), ifAbsent: 'skip' }
        : undefined,
    ]);
  } else if (mem) {
    const swap = v2SwapMax(limit, r.memorySwapLimitBytes);
    if (limit !== undefined) write(path.join(mem.dir, 'memory.max'), limit);
    if (swap !== undefined) write(path.join(mem.dir, 'memory.swap.max'), swap, 'skip');
  }

  if (r.pidsLimit !== undefined) {
    const pids = dirOf('pids');
    if (pids) write(path.join(pids.dir, 'pids.max'), r.pidsLimit > 0 ? r.pidsLimit : 'max');
  }

  if (r.blockio?.length) planBlockio(r.blockio, dirOf, write);

  const hp = r.hugepageLimits?.length ? dirOf('hugetlb') : undefined;
  for (const { pageSize, limit: bytes } of hp ? r.hugepageLimits! : []) {
    const suffix = hp!.v2 ? 'max' : 'limit_in_bytes';
    const file = path.join(hp!.dir, `hugetlb.${pageSize}.${suffix}`);
    write(file, bytes, { refuse: `hugepage size ${pageSize} is not supported here (no ${file})` });
    // Newer kernels also account reservations; keep both limits equal, as runc does.
    write(path.join(hp!.dir, `hugetlb.${pageSize}.rsvd.${suffix}`), bytes, 'skip');
  }

  for (const [name, value] of Object.entries(r.unified ?? {})) {
    const file = path.join(layout.unified!.mountPoint, ...segs, name);
    write(file, value, { refuse: `unified cgroup file ${name} does not exist (${file})` });
  }
  return { steps, missing };
}

/**
 * v1 takes one "major:minor value" line per throttle file and device; v2 takes all of a device's throttles in
 * one io.max line. A file the kernel lacks (no CONFIG_BLK_DEV_THROTTLING, no BFQ) refuses the request by name
 * rather than leaving the container unlimited.
 */
function planBlockio(
  devices: BlockioDeviceLimit[],
  dirOf: (c: Controller) => { dir: string; v2: boolean } | undefined,
  write: (file: string, value: string | number, ifAbsent?: CgroupWrite['ifAbsent']) => void,
): void {
  const v1 = dirOf('blkio');
  const io = v1 ? undefined : dirOf('io');
  const dir = v1?.dir ?? io?.dir;
  if (!dir) return;
  const refuse = (file: string) => ({ refuse: `block I/O limits need ${file}, which this kernel does not have` });
  for (const d of devices) {
    const dev = `${d.major}:${d.minor}`;
    const throttles: [keyof BlockioDeviceLimit, string, string][] = [
      ['readBps', 'blkio.throttle.read_bps_device', 'rbps'],
      ['writeBps', 'blkio.throttle.write_bps_device', 'wbps'],
      ['readIops', 'blkio.throttle.read_iops_device', 'riops'],
      ['writeIops', 'blkio.throttle.write_iops_device', 'wiops'],
    ];
    const set = throttles.filter(([field]) => d[field] !== undefined);
    if (v1) {
      for (const [field, file] of set) write(path.join(dir, file), `${dev} ${d[field]}`, refuse(file));
    } else if (set.length > 0) {
      write(path.join(dir, 'io.max'), `${dev} ${set.map(([field, , key]) => `${key}=${d[field]}`).join(' ')}`, refuse('io.max'));
    }
    if (d.weight !== undefined) {
      const file = v1 ? 'blkio.bfq.weight_device' : d.weightMechanism === 'bfq' ? 'io.bfq.weight' : 'io.weight';
      write(path.join(dir, file), `${dev} ${d.weight}`, refuse(file));
    }
  }
}
