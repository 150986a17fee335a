// What the bench reads from /proc: process memory (smaps_rollup), host memory (meminfo), the process table, and
// which process listens on a unix socket. Parsers are pure and exported for the unit tests; readers are thin.

import { promises as fs } from 'node:fs';

/** Resident and proportional set size of one process or a group of them, KiB. */
export interface MemUsage {
  rssKiB: number;
  pssKiB: number;
  /** Anonymous memory (heap, stacks): what the process itself allocated, as opposed to mapped files. */
  anonKiB?: number;
}

/** `Key:   123 kB` lines (smaps_rollup, meminfo, status) → { Key: 123 }. Lines without a number are skipped. */
export function parseKbLines(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z_()0-9]+):\s+(\d+)(?:\s+kB)?\s*$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** Rss and Pss of /proc/<pid>/smaps_rollup text. Throws when either is missing (kernel without smaps_rollup). */
export function parseSmapsRollup(text: string): MemUsage {
  const kv = parseKbLines(text);
  if (kv.Rss === undefined || kv.Pss === undefined) throw new Error('smaps_rollup without Rss/Pss lines');
  return { rssKiB: kv.Rss, pssKiB: kv.Pss, ...(kv.Anonymous !== undefined ? { anonKiB: kv.Anonymous } : {}) };
}

/** MemAvailable of /proc/meminfo text, KiB. */
export function parseMemAvailable(text: string): number {
  const v = parseKbLines(text).MemAvailable;
  if (v === undefined) throw new Error('meminfo without MemAvailable');
  return v;
}

export interface UnixSocketEntry {
  inode: number;
  path: string;
  /** Flags has __SO_ACCEPTCON (a listening socket). */
  listening: boolean;
}

/** /proc/net/unix → its bound entries (those with a path). */
export function parseNetUnix(text: string): UnixSocketEntry[] {
  const out: UnixSocketEntry[] = [];
  for (const line of text.split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode [Path]
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const flags = parseInt(f[3]!, 16);
    out.push({ inode: Number(f[6]), path: f.slice(7).join(' '), listening: (flags & 0x10000) !== 0 });
  }
  return out;
}

export interface ProcInfo {
  pid: number;
  ppid: number;
  /** /proc/<pid>/comm (at most 15 characters). */
  comm: string;
  /** argv joined by spaces. */
  cmdline: string;
}

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on every mainstream Linux build). */
export const USER_HZ = 100;

/**
 * comm, ppid and the CPU time the process used (utime + stime, in ms) from /proc/<pid>/stat text (comm may contain
 * spaces and parentheses).
 */
export function parseStat(text: string): { comm: string; ppid: number; cpuMs: number } {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error('malformed stat');
  // After "(comm) ": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime …
  const rest = text.slice(close + 2).split(' ');
  const ticks = Number(rest[11]) + Number(rest[12]);
  return { comm: text.slice(open + 1, close), ppid: Number(rest[1]), cpuMs: Number.isFinite(ticks) ? (ticks * 1000) / USER_HZ : NaN };
}

/** CPU time a process has used so far, ms; NaN when it is gone. */
export async function readCpuMs(pid: number): Promise<number> {
  try {
    return parseStat(await fs.readFile(`/proc/${pid}/stat`, 'utf8')).cpuMs;
  } catch {
    return NaN;
  }
}

/** The processes attributed to one pod: what the runtime runs for it, not the pod's workload. */
export interface PodProcessQuery {
  /** The pod sandbox id: a containerd shim names it on its command line (`-id <pod>`), berth's sandbox holder its dir. */
  podId: string;
  /** The pod's container ids: berth's monitors name their bundle (`berth-shim create …/containers/<id>`). */
  containerIds: string[];
  /** Pids the runtime reports as its own (berth: monitorPid, pod initPid; containerd: the sandbox's pause pid). */
  ownPids: number[];
  /** The containers' processes (ContainerStatus verbose `pid`): never counted, nor anything below them. */
  workloadPids: number[];
  /** Never counted either (the runtime daemon, this bench). */
  excludePids: number[];
}

/**
 * Pure: the processes of `procs` that belong to the runtime for one pod — those whose command line names the
 * pod or one of its containers, plus the pids the runtime reported — minus the containers' own processes and
 * everything below them, and minus excluded pids.
 */
export function runtimeOwnedProcesses(procs: readonly ProcInfo[], q: PodProcessQuery): ProcInfo[] {
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  const workload = new Set(q.workloadPids.filter((p) => p > 0));
  const exclude = new Set(q.excludePids);
  const underWorkload = (p: ProcInfo): boolean => {
    const seen = new Set<number>();
    for (let cur: ProcInfo | undefined = p; cur && !seen.has(cur.pid); cur = byPid.get(cur.ppid)) {
      if (workload.has(cur.pid)) return true;
      seen.add(cur.pid);
    }
    return false;
  };
  const ids = [q.podId, ...q.containerIds].filter((id) => id.length >= 8);
  const own = new Set(q.ownPids.filter((p) => p > 0));
  return procs.filter((p) => {
    if (exclude.has(p.pid) || underWorkload(p)) return false;
    return own.has(p.pid) || ids.some((id) => p.cmdline.includes(id));
  });
}

/** `n × comm` counts, e.g. "berth-shim ×1" or "containerd-shim ×1, pause ×1". */
export function describeProcesses(procs: readonly ProcInfo[]): string {
  const counts = new Map<string, number>();
  for (const p of procs) counts.set(p.comm, (counts.get(p.comm) ?? 0) + 1);
  return [...counts].map(([c, n]) => `${c} ×${n}`).join(', ');
}

// ---------------------------------------------------------------------------------------------------------------
// readers

export async function readMemUsage(pid: number): Promise<MemUsage> {
  return parseSmapsRollup(await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8'));
}

/** Summed usage of processes; those that vanished meanwhile count 0 and are returned in `gone`. */
export async function sumMemUsage(pids: readonly number[]): Promise<Required<MemUsage> & { gone: number[] }> {
  let rssKiB = 0;
  let pssKiB = 0;
  let anonKiB = 0;
  const gone: number[] = [];
  for (const pid of pids) {
    try {
      const m = await readMemUsage(pid);
      rssKiB += m.rssKiB;
      pssKiB += m.pssKiB;
      anonKiB += m.anonKiB ?? 0;
    } catch {
      gone.push(pid);
    }
  }
  return { rssKiB, pssKiB, anonKiB, gone };
}

export async function readMemAvailable(): Promise<number> {
  return parseMemAvailable(await fs.readFile('/proc/meminfo', 'utf8'));
}

/** Every process visible in /proc now (kernel threads have an empty cmdline). */
export async function processTable(): Promise<ProcInfo[]> {
  const out: ProcInfo[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const [stat, cmdline] = await Promise.all([fs.readFile(`/proc/${name}/stat`, 'utf8'), fs.readFile(`/proc/${name}/cmdline`, 'utf8')]);
      const { comm, ppid } = parseStat(stat);
      out.push({ pid: Number(name), ppid, comm, cmdline: cmdline.replace(/\0+$/, '').replace(/\0/g, ' ') });
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

/**
 * The pids holding the listening socket bound at `socketPath` (the CRI daemon behind an endpoint), found through
 * /proc/net/unix (socket inode) and /proc/<pid>/fd links `socket:[inode]`. Empty when not found (another network
 * namespace, no permission).
 */
export async function pidsListeningOn(socketPath: string): Promise<number[]> {
  const entries = parseNetUnix(await fs.readFile('/proc/net/unix', 'utf8')).filter((e) => e.path === socketPath);
  const inodes = new Set((entries.some((e) => e.listening) ? entries.filter((e) => e.listening) : entries).map((e) => `socket:[${e.inode}]`));
  if (inodes.size === 0) return [];
  const pids: number[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    let fds: string[];
    try {
      fds = await fs.readdir(`/proc/${name}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      const target = await fs.readlink(`/proc/${name}/fd/${fd}`).catch(() => '');
      if (inodes.has(target)) {
        pids.push(Number(name));
        break;
      }
    }
  }
  return pids;
}
