// Reads what one cgroup has used, on cgroup v1 (one mount per controller), hybrid or v2, from cgroupfs text files.
// Pure parsers for each file format, and a reader that finds each file in the hierarchy that holds its controller.
// Knows nothing of pods or containers: the caller passes a cgroup path and gets plain numbers back.
//
// The files are read synchronously, on purpose: cgroupfs and sysfs answer from kernel memory in microseconds,
// while each asynchronous readFile costs four thread-pool round trips and ~100 µs of daemon CPU. Measured with 100
// pods, ListContainerStats cost 190 ms of daemon CPU with fs.promises and a fraction of that this way (bench/,
// "ListContainerStats {}"). The files stay open between reads (kernel-files.ts) and each caller reads only the
// parts it renders (SampleParts). Callers yield to the event loop between cgroups.
import path from 'node:path';
import { cgroupSegments, controllerDir, type CgroupLayout, type Controller } from './cgroup-layout.js';
import { KernelFiles } from './kernel-files.js';

export interface PressureSample {
  avg10: number;
  avg60: number;
  avg300: number;
  totalMicroseconds: bigint;
}

export interface CgroupPressure {
  some: PressureSample;
  full?: PressureSample;
}

/** One reading of a cgroup. Absent parts: the host lacks that controller (or its file). */
export interface CgroupSample {
  cpu?: {
    usageNanoSeconds: bigint;
    throttledNanoSeconds?: bigint;
    /** quota / period in cores; absent without a quota. */
    limitCores?: number;
  };
  memory?: {
    usageBytes: number;
    /** usage minus inactive file pages, never below 0 (cAdvisor's working set). */
    workingSetBytes: number;
    rssBytes: number;
    limitBytes?: number;
    pageFaults: number;
    majorPageFaults: number;
    /** Absent when the reader was not asked for it (SampleParts.oomKills). */
    oomKills?: number;
  };
  pids?: { current: number; limit?: number };
  io?: { readBytes: bigint; writeBytes: bigint };
  psi?: { cpu?: CgroupPressure; memory?: CgroupPressure; io?: CgroupPressure };
}

// ---- parsers (pure, unit-tested from fixture text) ----------------------------------------------

/**
 * "key value" lines (cpu.stat, memory.stat, memory.events, memory.oom_control); with `only`, just those keys (a
 * v1 memory.stat has 40 lines of which the stats need four).
 */
export function parseKeyed(text: string, only?: readonly string[]): Map<string, bigint> {
  const out = new Map<string, bigint>();
  if (only) {
    for (const key of only) {
      const v = keyedValue(text, key);
      if (v !== undefined) out.set(key, v);
    }
    return out;
  }
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const space = text.indexOf(' ', start);
    if (space > start && space < end) {
      const v = text.slice(space + 1, end).trim();
      if (DIGITS.test(v)) out.set(text.slice(start, space), BigInt(v));
    }
    start = end + 1;
  }
  return out;
}

/**
 * The value of one "key value" line, found without splitting the text (a scrape parses 200 memory.stat files);
 * undefined when no line has that key or its value is not a number.
 */
export function keyedValue(text: string, key: string): bigint | undefined {
  const wanted = key + ' ';
  for (let at = text.indexOf(wanted); at >= 0; at = text.indexOf(wanted, at + 1)) {
    // "inactive_file " also ends "total_inactive_file ": only a match at a line's start counts.
    if (at > 0 && text.charCodeAt(at - 1) !== NEWLINE) continue;
    const from = at + wanted.length;
    let end = text.indexOf('\n', from);
    if (end < 0) end = text.length;
    const v = text.slice(from, end).trim();
    return DIGITS.test(v) ? BigInt(v) : undefined;
  }
  return undefined;
}

const NEWLINE = 10;
const DIGITS = /^\d+$/;

/** A single number (cpuacct.usage, memory.current); undefined for "max" or anything else. */
export function parseNumber(text: string | undefined): bigint | undefined {
  const v = text?.trim();
  return v && /^\d+$/.test(v) ? BigInt(v) : undefined;
}

// v1 reports "no limit" as the largest page-aligned counter (~2^63); anything that large is no limit.
const UNLIMITED = 2n ** 62n;

/** A limit file (memory.max, memory.limit_in_bytes, pids.max): undefined when unlimited. */
export function parseLimit(text: string | undefined): number | undefined {
  const v = parseNumber(text);
  return v === undefined || v >= UNLIMITED ? undefined : Number(v);
}

/** v2 cpu.max ("max 100000" or "50000 100000") as cores; undefined without a quota. */
export function parseCpuMax(text: string | undefined): number | undefined {
  const [quota, period] = (text ?? '').trim().split(/\s+/);
  return quotaCores(parseNumber(quota), parseNumber(period));
}

/** v1 cpu.cfs_quota_us / cpu.cfs_period_us (-1 = no quota) as cores. */
export function quotaCores(quota: bigint | undefined, period: bigint | undefined): number | undefined {
  if (quota === undefined || period === undefined || quota <= 0n || period <= 0n) return undefined;
  return Number(quota) / Number(period);
}

/** A cgroup2 pressure file: "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and, but for cpu on old kernels, "full ...". */
export function parsePressure(text: string | undefined): CgroupPressure | undefined {
  if (!text) return undefined;
  const some = pressureLine(text, 'some ');
  if (!some) return undefined;
  const full = pressureLine(text, 'full ');
  return full ? { some, full } : { some };
}

/** One line of a pressure file, read field by field in place (no split: a scrape parses hundreds of these). */
function pressureLine(text: string, prefix: 'some ' | 'full '): PressureSample | undefined {
  let at = text.indexOf(prefix);
  while (at > 0 && text.charCodeAt(at - 1) !== NEWLINE) at = text.indexOf(prefix, at + 1);
  if (at < 0) return undefined;
  let end = text.indexOf('\n', at);
  if (end < 0) end = text.length;
  const total = pressureField(text, ' total=', at, end);
  if (total === undefined || !DIGITS.test(total)) return undefined;
  return {
    avg10: Number(pressureField(text, ' avg10=', at, end) ?? 0),
    avg60: Number(pressureField(text, ' avg60=', at, end) ?? 0),
    avg300: Number(pressureField(text, ' avg300=', at, end) ?? 0),
    totalMicroseconds: BigInt(total),
  };
}

/** The text after ` key=` up to the next space, within [at, end) of a pressure line. */
function pressureField(text: string, key: string, at: number, end: number): string | undefined {
  const from = text.indexOf(key, at);
  if (from < 0 || from >= end) return undefined;
  let to = text.indexOf(' ', from + key.length);
  if (to < 0 || to > end) to = end;
  return text.slice(from + key.length, to).trim();
}

/** v2 io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N" per device, summed. */
export function parseIoStat(text: string): { readBytes: bigint; writeBytes: bigint } {
  let readBytes = 0n;
  let writeBytes = 0n;
  for (const line of text.split('\n')) {
    for (const field of line.trim().split(/\s+/).slice(1)) {
      const [k, v] = field.split('=');
      if (!v || !/^\d+$/.test(v)) continue;
      if (k === 'rbytes') readBytes += BigInt(v);
      else if (k === 'wbytes') writeBytes += BigInt(v);
    }
  }
  return { readBytes, writeBytes };
}

/** v1 blkio.throttle.io_service_bytes(_recursive): "MAJ:MIN Read N" ... and a "Total N" line, summed per op. */
export function parseBlkioServiceBytes(text: string): { readBytes: bigint; writeBytes: bigint } {
  let readBytes = 0n;
  let writeBytes = 0n;
  for (const line of text.split('\n')) {
    const [dev, op, v] = line.trim().split(/\s+/);
    if (!dev?.includes(':') || !v || !/^\d+$/.test(v)) continue;
    if (op === 'Read') readBytes += BigInt(v);
    else if (op === 'Write') writeBytes += BigInt(v);
  }
  return { readBytes, writeBytes };
}

const n = (v: bigint | undefined) => Number(v ?? 0n);
const V1_MEMORY_KEYS = ['total_inactive_file', 'total_rss', 'total_pgfault', 'total_pgmajfault'];
const V2_MEMORY_KEYS = ['inactive_file', 'anon', 'pgfault', 'pgmajfault'];

/** memory.* files of either version as the sample's memory part. */
export function memoryFromFiles(
  v2: boolean,
  files: { usage?: string; limit?: string; stat?: string; events?: string },
  withOomKills = true,
): CgroupSample['memory'] | undefined {
  const usage = parseNumber(files.usage);
  if (usage === undefined) return undefined;
  const stat = files.stat ?? '';
  const [inactiveFileKey, rssKey, faultKey, majorFaultKey] = v2 ? V2_MEMORY_KEYS : V1_MEMORY_KEYS;
  // v1's total_* counters include the cgroup's descendants, as v2's always do.
  const inactiveFile = n(keyedValue(stat, inactiveFileKey));
  const usageBytes = Number(usage);
  const memory: NonNullable<CgroupSample['memory']> = {
    usageBytes,
    workingSetBytes: Math.max(0, usageBytes - inactiveFile),
    rssBytes: n(keyedValue(stat, rssKey)),
    limitBytes: parseLimit(files.limit),
    pageFaults: n(keyedValue(stat, faultKey)),
    majorPageFaults: n(keyedValue(stat, majorFaultKey)),
  };
  if (withOomKills) memory.oomKills = n(keyedValue(files.events ?? '', 'oom_kill'));
  return memory;
}

// ---- the reader ----------------------------------------------------------------------------------

/**
 * What a reading holds beyond CPU time and memory usage (which every reader gets). Each part costs one to three
 * file reads per cgroup, and a file read costs ~10 µs of kernel time (blkio's recursive file ~45 µs on v1): the
 * CRI stats and a /metrics scrape each ask only for what they render.
 */
export interface SampleParts {
  /** cpu.stat */
  cpuThrottling?: boolean;
  /** cpu.max, or v1's cfs quota and period */
  cpuLimit?: boolean;
  memoryLimit?: boolean;
  /** memory.events, v1's memory.oom_control */
  oomKills?: boolean;
  pids?: boolean;
  pidsLimit?: boolean;
  /** io.stat, v1's blkio service bytes */
  io?: boolean;
  /** the three cgroup2 pressure files */
  psi?: boolean;
}

export const ALL_SAMPLE_PARTS: Readonly<Required<SampleParts>> = {
  cpuThrottling: true, cpuLimit: true, memoryLimit: true, oomKills: true, pids: true, pidsLimit: true, io: true, psi: true,
};

export class CgroupStatsReader {
  constructor(
    private readonly layout: CgroupLayout,
    private readonly files = new KernelFiles(),
  ) {}

  /** The cgroup's directory in each hierarchy, by cgroup path: joined once, not at every read. */
  private readonly dirs = new Map<string, Partial<Record<Controller | 'unified', string>>>();
  /** Each cgroup's files by name (`~name` for the cgroup2 tree's own, as cpu.stat may be in both). */
  private readonly paths = new Map<string, Map<string, string>>();

  /** Closes the files kept open for the cgroup: call once it is gone or no longer read. */
  release(cgPath: string): void {
    this.files.release(cgPath);
    this.dirs.delete(cgPath);
    this.paths.delete(cgPath);
  }

  private dirsOf(cgPath: string): Partial<Record<Controller | 'unified', string>> {
    const segs = cgroupSegments(cgPath);
    const dirs: Partial<Record<Controller | 'unified', string>> = {};
    for (const c of ['memory', 'cpu', 'cpuacct', 'pids', 'io', 'blkio'] as const) {
      const dir = controllerDir(this.layout, c, segs)?.dir;
      if (dir) dirs[c] = dir;
    }
    if (this.layout.unified) dirs.unified = path.join(this.layout.unified.mountPoint, ...segs);
    return dirs;
  }

  /** The cgroup's usage now; undefined when the cgroup no longer exists (removed after its container exited). */
  async read(cgPath: string, parts: SampleParts = ALL_SAMPLE_PARTS): Promise<CgroupSample | undefined> {
    return this.readNow(cgPath, parts);
  }

  readNow(cgPath: string, parts: SampleParts = ALL_SAMPLE_PARTS): CgroupSample | undefined {
    const { controllers } = this.layout;
    let dirs = this.dirs.get(cgPath);
    if (!dirs) this.dirs.set(cgPath, (dirs = this.dirsOf(cgPath)));
    const { memory: memDir, cpu: cpuDir, pids: pidsDir, cpuacct: acct, unified } = dirs;
    const memV2 = controllers.memory?.version === 2;
    const cpuV2 = controllers.cpu?.version === 2;
    const paths = (this.paths.get(cgPath) ?? this.paths.set(cgPath, new Map()).get(cgPath))!;
    // The file's path joined once per cgroup: a list of 100 pods reads ~1,400 files.
    const read = (dir: string | undefined, name: string) => {
      if (!dir) return undefined;
      const key = dir === unified ? `~${name}` : name;
      let file = paths.get(key);
      if (!file) paths.set(key, (file = `${dir}/${name}`));
      return this.files.read(cgPath, file);
    };
    // v2 accounts CPU time in the core cpu.stat, present even where the cpu controller is not enabled.
    const acctUsage = acct ? read(acct, 'cpuacct.usage') : undefined;
    const unifiedCpuStat = acct ? undefined : read(unified, 'cpu.stat');
    const usage = read(memDir, memV2 ? 'memory.current' : 'memory.usage_in_bytes');
    if (acctUsage === undefined && unifiedCpuStat === undefined && usage === undefined) return undefined; // gone
    const usageNs = acct ? parseNumber(acctUsage) : scaled(keyedValue(unifiedCpuStat ?? '', 'usage_usec'), 1000n);
    const memory = memoryFromFiles(memV2, {
      usage,
      limit: parts.memoryLimit ? read(memDir, memV2 ? 'memory.max' : 'memory.limit_in_bytes') : undefined,
      stat: read(memDir, 'memory.stat'),
      events: parts.oomKills ? read(memDir, memV2 ? 'memory.events' : 'memory.oom_control') : undefined,
    }, parts.oomKills ?? false);
    // Neither CPU time nor memory usage can be read: the cgroup is gone (its files vanish with it).
    if (usageNs === undefined && memory === undefined) return undefined;
    const sample: CgroupSample = {};
    if (usageNs !== undefined) {
      sample.cpu = { usageNanoSeconds: usageNs };
      if (parts.cpuThrottling) {
        // On v2 the cpu controller lives in the one cgroup2 tree: its cpu.stat is the file already read.
        const cpuStat = cpuV2 ? (unifiedCpuStat ?? read(cpuDir, 'cpu.stat')) : read(cpuDir, 'cpu.stat');
        const throttled = cpuV2 ? scaled(keyedValue(cpuStat ?? '', 'throttled_usec'), 1000n) : keyedValue(cpuStat ?? '', 'throttled_time');
        if (throttled !== undefined) sample.cpu.throttledNanoSeconds = throttled;
      }
      if (parts.cpuLimit) {
        const limitCores = cpuV2
          ? parseCpuMax(read(cpuDir, 'cpu.max'))
          : quotaCores(parseSigned(read(cpuDir, 'cpu.cfs_quota_us')), parseNumber(read(cpuDir, 'cpu.cfs_period_us')));
        if (limitCores !== undefined) sample.cpu.limitCores = limitCores;
      }
    }
    if (memory) sample.memory = memory;
    if (parts.pids) {
      const current = parseNumber(read(pidsDir, 'pids.current'));
      if (current !== undefined) sample.pids = { current: Number(current), ...optional('limit', parts.pidsLimit ? parseLimit(read(pidsDir, 'pids.max')) : undefined) };
    }
    if (parts.io) {
      const ioV2 = controllers.io?.version === 2 ? read(dirs.io, 'io.stat') : undefined;
      const blkio = controllers.blkio?.version === 1 ? read(dirs.blkio, 'blkio.throttle.io_service_bytes_recursive') : undefined;
      if (ioV2 !== undefined) sample.io = parseIoStat(ioV2);
      else if (blkio !== undefined) sample.io = parseBlkioServiceBytes(blkio);
    }
    if (parts.psi && unified) {
      // Pressure files exist from the moment the cgroup2 directory does, or never: a container cgroup berth did
      // not make in the cgroup2 tree (a v1 host where that tree holds no controller berth uses) never has them.
      const pressure = (name: string) => {
        let file = paths.get(name);
        if (!file) paths.set(name, (file = `${unified}/${name}`));
        return parsePressure(this.files.read(cgPath, file, true));
      };
      const cpu = pressure('cpu.pressure');
      const memory = pressure('memory.pressure');
      const io = pressure('io.pressure');
      if (cpu || memory || io) {
        const psi: NonNullable<CgroupSample['psi']> = {};
        if (cpu) psi.cpu = cpu;
        if (memory) psi.memory = memory;
        if (io) psi.io = io;
        sample.psi = psi;
      }
    }
    return sample;
  }
}

const scaled = (v: bigint | undefined, by: bigint) => (v === undefined ? undefined : v * by);

/** cpu.cfs_quota_us is -1 without a quota. */
function parseSigned(text: string | undefined): bigint | undefined {
  const v = text?.trim();
  return v && /^-?\d+$/.test(v) ? BigInt(v) : undefined;
}

function optional<K extends string, V>(key: K, value: V | undefined): Partial<Record<K, V>> {
  return value === undefined ? {} : ({ [key]: value } as Record<K, V>);
}

