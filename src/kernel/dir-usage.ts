// Disk use of a directory tree as `du` counts it: allocated blocks and inodes, each hard-linked inode once. Used
// for a container's writable layer (its overlay upper directory), off the request path: the walk is
// asynchronous, so it yields to the event loop at every directory and file, and bounded in entries.
import fs from 'node:fs/promises';
import path from 'node:path';
import { codeOf } from './cgroup-io.js';

export interface DirUsage {
  usedBytes: number;
  inodesUsed: number;
  /** True when the walk stopped at maxEntries: the numbers are a lower bound. */
  truncated: boolean;
}

/** Never follows symlinks and never leaves the tree's filesystem (an overlay upper dir holds no mounts anyway). */
export async function dirUsage(root: string, opts: { maxEntries?: number } = {}): Promise<DirUsage | undefined> {
  const maxEntries = opts.maxEntries ?? 1_000_000;
  let top;
  try {
    top = await fs.lstat(root, { bigint: false });
  } catch (err) {
    if (codeOf(err) === 'ENOENT') return undefined;
    throw err;
  }
  const seen = new Set<number>();
  let usedBytes = 0;
  let inodesUsed = 0;
  let entries = 0;
  const count = (st: { ino: number; nlink: number; blocks: number }) => {
    if (st.nlink > 1) {
      if (seen.has(st.ino)) return;
      seen.add(st.ino);
    }
    usedBytes += st.blocks * 512;
    inodesUsed += 1;
  };
  count(top);
  const pending = [root];
  while (pending.length > 0 && entries < maxEntries) {
    const dir = pending.pop()!;
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch {
      continue; // removed while we walked
    }
    for (const name of names) {
      if (++entries > maxEntries) break;
      const p = path.join(dir, name);
      const st = await fs.lstat(p).catch(() => undefined);
      if (!st) continue;
      count(st);
      if (st.isDirectory() && st.dev === top.dev) pending.push(p);
    }
  }
  return { usedBytes, inodesUsed, truncated: entries > maxEntries || pending.length > 0 };
}
