// Reads what one cgroup has used, on cgroup v1 (one mount per controller), hybrid or v2, from cgroupfs text files.
// Pure parsers for each file format, and a reader that finds each file in the hierarchy that holds its controller.
// Knows nothing of pods or containers: the caller passes a cgroup path and gets plain numbers back.
import path from 'node:path';
import { cgroupSegments, controllerDir, type CgroupLayout, type Controller } from './cgroup-layout.js';
import { readOptional } from './cgroup-io.js';

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
    oomKills: number;
  };
  pids?: { current: number; limit?: number };
  io?: { readBytes: bigint; writeBytes: bigint };
  psi?: { cpu?: CgroupPressure; memory?: CgroupPressure; io?: CgroupPressure };
}

// ---- parsers (pure, unit-tested from fixture text) ----------------------------------------------

/** "key value" lines (cpu.stat, memory.stat, memory.events, memory.oom_control). */
export function parseKeyed(text: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v && /^\d+$/.test(v)) out.set(k, BigInt(v));
  }
  return out;
}

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
  const lines: Partial<Record<'some' | 'full', PressureSample>> = {};
  for (const line of (text ?? '').split('\n')) {
    const [kind, ...fields] = line.trim().split(/\s+/);
    if (kind !== 'some' && kind !== 'full') continue;
    const kv = new Map(fields.map((f) => f.split('=') as [string, string]));
    const total = kv.get('total');
    if (total === undefined || !/^\d+$/.test(total)) continue;
    lines[kind] = {
      avg10: Number(kv.get('avg10') ?? 0),
      avg60: Number(kv.get('avg60') ?? 0),
      avg300: Number(kv.get('avg300') ?? 0),
      totalMicroseconds: BigInt(total),
    };
  }
  return lines.some ? { some: lines.some, ...(lines.full ? { full: lines.full } : {}) } : undefined;
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

/** memory.* files of either version as the sample's memory part. */
export function memoryFromFiles(
  v2: boolean,
  files: { usage?: string; limit?: string; stat?: string; events?: string },
): CgroupSample['memory'] | undefined {
  const usage = parseNumber(files.usage);
  if (usage === undefined) return undefined;
  const stat = parseKeyed(files.stat ?? '');
  // v1's total_* counters include the cgroup's descendants, as v2's always do.
  const inactiveFile = n(stat.get(v2 ? 'inactive_file' : 'total_inactive_file'));
  const usageBytes = Number(usage);
  return {
    usageBytes,
    workingSetBytes: Math.max(0, usageBytes - inactiveFile),
    rssBytes: n(stat.get(v2 ? 'anon' : 'total_rss')),
    limitBytes: parseLimit(files.limit),
    pageFaults: n(stat.get(v2 ? 'pgfault' : 'total_pgfault')),
    majorPageFaults: n(stat.get(v2 ? 'pgmajfault' : 'total_pgmajfault')),
    oomKills: n(parseKeyed(files.events ?? '').get('oom_kill')),
  };
}

// ---- the reader ----------------------------------------------------------------------------------

export class CgroupStatsReader {
  constructor(private readonly layout: CgroupLayout) {}

  /** The cgroup's usage now; undefined when the cgroup no longer exists (removed after its container exited). */
  async read(cgPath: string): Promise<CgroupSample | undefined> {
    const segs = cgroupSegments(cgPath);
    const file = (c: Controller, v1: string, v2: string): Promise<string | undefined> => {
      const d = controllerDir(this.layout, c, segs);
      return d ? readOptional(path.join(d.dir, d.v2 ? v2 : v1)) : Promise.resolve(undefined);
    };
    const unified = this.layout.unified && path.join(this.layout.unified.mountPoint, ...segs);
    const unifiedFile = (name: string) => (unified ? readOptional(path.join(unified, name)).catch(() => undefined) : Promise.resolve(undefined));
    const memV2 = this.layout.controllers.memory?.version === 2;
    const cpuV2 = this.layout.controllers.cpu?.version === 2;
    const acct = controllerDir(this.layout, 'cpuacct', segs);
    const [
      usage, limit, memStat, memEvents, cpuStat, cpuMax, quota, period, acctUsage, unifiedCpuStat,
      pidsCurrent, pidsMax, ioV2, blkio, cpuPsi, memPsi, ioPsi,
    ] = await Promise.all([
      file('memory', 'memory.usage_in_bytes', 'memory.current'),
      file('memory', 'memory.limit_in_bytes', 'memory.max'),
      file('memory', 'memory.stat', 'memory.stat'),
      file('memory', 'memory.oom_control', 'memory.events'),
      file('cpu', 'cpu.stat', 'cpu.stat'),
      cpuV2 ? file('cpu', '', 'cpu.max') : undefined,
      cpuV2 ? undefined : file('cpu', 'cpu.cfs_quota_us', ''),
      cpuV2 ? undefined : file('cpu', 'cpu.cfs_period_us', ''),
      acct ? readOptional(path.join(acct.dir, 'cpuacct.usage')) : undefined,
      // v2 accounts CPU time in the core cpu.stat, present even where the cpu controller is not enabled.
      acct ? undefined : unifiedFile('cpu.stat'),
      file('pids', 'pids.current', 'pids.current'),
      file('pids', 'pids.max', 'pids.max'),
      file('io', '', 'io.stat'),
      file('blkio', 'blkio.throttle.io_service_bytes_recursive', ''),
      unifiedFile('cpu.pressure'),
      unifiedFile('memory.pressure'),
      unifiedFile('io.pressure'),
    ]);
    const usageNs = acct ? parseNumber(acctUsage) : scaled(parseKeyed(unifiedCpuStat ?? '').get('usage_usec'), 1000n);
    const memory = memoryFromFiles(memV2, { usage, limit, stat: memStat, events: memEvents });
    // Neither CPU time nor memory usage can be read: the cgroup is gone (its files vanish with it).
    if (usageNs === undefined && memory === undefined) return undefined;
    const sample: CgroupSample = {};
    if (usageNs !== undefined) {
      const stat = parseKeyed(cpuStat ?? '');
      const throttled = cpuV2 ? scaled(stat.get('throttled_usec'), 1000n) : stat.get('throttled_time');
      sample.cpu = {
        usageNanoSeconds: usageNs,
        ...(throttled !== undefined ? { throttledNanoSeconds: throttled } : {}),
        ...optional('limitCores', cpuV2 ? parseCpuMax(cpuMax) : quotaCores(parseSigned(quota), parseNumber(period))),
      };
    }
    if (memory) sample.memory = memory;
    const current = parseNumber(pidsCurrent);
    if (current !== undefined) sample.pids = { current: Number(current), ...optional('limit', parseLimit(pidsMax)) };
    if (ioV2 !== undefined) sample.io = parseIoStat(ioV2);
    else if (blkio !== undefined) sample.io = parseBlkioServiceBytes(blkio);
    const psi = { cpu: parsePressure(cpuPsi), memory: parsePressure(memPsi), io: parsePressure(ioPsi) };
    if (psi.cpu || psi.memory || psi.io) sample.psi = dropUndefined(psi);
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

function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
