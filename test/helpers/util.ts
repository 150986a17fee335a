// Small shared utilities for the tests (free ports, hashing, waiting).
import net from 'node:net';
import { createHash } from 'node:crypto';
import { promises as fsp, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import pathMod from 'node:path';

/** Ports freePort has handed out in this process. */
const handedOut = new Set<number>();

/**
 * A currently-free TCP port on 127.0.0.1 (listen on port 0, read it, close), never one this process was given
 * before: a hostPort binds no socket, so the kernel can offer the same port again while a pod holds it in berth, and
 * two pods of one test asking for it collide (the restart test's steady pods did, once).
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = await ephemeralPort();
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error('freePort: 100 ports in a row were ones handed out before');
}

function ephemeralPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('unexpected server address'));
        return;
      }
      const port = addr.port;
      srv.close(() => resolve(port));
    });
  });
}

export function sha256(data: Uint8Array | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** What waitFor throws when its check never held: callers that expect a timeout catch exactly this. */
export class WaitTimeout extends Error {
  override name = 'WaitTimeout';
}

export interface WaitOptions {
  /** How long to keep checking (default 10 s). */
  timeoutMs?: number;
  /** The pause between checks (default 50 ms). */
  intervalMs?: number;
}

type Falsy = undefined | null | false | 0 | '';

/**
 * Every test's polling: call `check` (sync or async) until it returns something truthy, and return that. The
 * wait gives up only after a check that finished past the deadline, so a sleep that overran on a loaded machine
 * still gets its last look. An error the check throws ends the wait: a check that expects failures while things
 * settle catches them itself.
 */
export async function waitFor<T>(what: string, check: () => T | Falsy | Promise<T | Falsy>, opts: WaitOptions = {}): Promise<T> {
  const { timeoutMs = 10000, intervalMs = 50 } = opts;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new WaitTimeout(`timed out waiting for ${what} (${timeoutMs} ms)`);
    await sleep(intervalMs);
  }
}

/** For a wait whose timeout is an answer, not a failure: the value to use instead of WaitTimeout. */
export function onTimeout<T>(fallback: T): (err: unknown) => T {
  return (err) => {
    if (err instanceof WaitTimeout) return fallback;
    throw err;
  };
}

/** True if a process with this pid exists and is not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** The argv of a live process, or null. */
export function procCmdline(pid: number): string[] | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((s) => s !== '');
  } catch {
    return null;
  }
}

/** True if process `pid` owns a TCP socket listening on 127.0.0.1:`port` (via /proc). */
export function pidListensOn(pid: number, port: number): boolean {
  const inodes = new Set<string>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const local = f[1]!;
      const st = f[3];
      const localPort = parseInt(local.slice(local.lastIndexOf(':') + 1), 16);
      if (st === '0A' && localPort === port) inodes.add(f[9]!);
    }
  }
  if (inodes.size === 0) return false;
  for (const target of openFdTargets(pid).values()) {
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m && inodes.has(m[1]!)) return true;
  }
  return false;
}

/** What each open fd of a process points at; fds closed while being read are skipped (the process runs on). */
export function openFdTargets(pid: number): Map<string, string> {
  const targets = new Map<string, string>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return targets;
  }
  for (const fd of fds) {
    try {
      targets.set(fd, readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      /* closed meanwhile */
    }
  }
  return targets;
}

/** Every path under root (relative, "/" after directories, "-> target" after links), sorted. */
export async function listing(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for (const entry of await fsp.readdir(dir, { withFileTypes: true })) {
      const full = pathMod.join(dir, entry.name);
      const rel = pathMod.relative(root, full);
      if (entry.isDirectory()) {
        out.push(`${rel}/`);
        await walk(full);
      } else if (entry.isSymbolicLink()) out.push(`${rel} -> ${await fsp.readlink(full)}`);
      else out.push(rel);
    }
  };
  await walk(root);
  return out.sort();
}
