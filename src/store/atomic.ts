import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { writeFailure } from '../errors.js';

// Writes survive a crash or power cut: readers see the old content or the new, never a torn file.
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  await replaceFile(file, data, mode, true);
  await syncDir(path.dirname(file));
}

/**
 * The same temp + rename without an fsync: a berth that crashes (or is killed) after it reads the old content or
 * the new, never a torn file, as the page cache outlives the process; a power cut may lose the new content or
 * leave the file empty. For files whose loss with the host is harmless, made durable later by syncFile.
 */
export async function replaceFileUnsynced(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  await replaceFile(file, data, mode, false);
}

async function replaceFile(file: string, data: string | Uint8Array, mode: number, sync: boolean): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const handle = await fs.open(tmp, 'w', mode);
    try {
      await handle.writeFile(data);
      if (sync) await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, file);
  } catch (err) {
    // A full disk or an I/O error must not leave dot-files piling up next to the records.
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw writeFailure(file, err);
  }
}

/** Flushes a file written by replaceFileUnsynced, and its directory entry. A file already gone is not an error. */
export async function syncFile(file: string): Promise<void> {
  let handle;
  try {
    handle = await fs.open(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await syncDir(path.dirname(file)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}

/**
 * A plain (not atomic) write of a file berth alone reads, such as a bundle's spec: its failure names the file and
 * a full disk is RESOURCE_EXHAUSTED, as Node's message for write(2) names no file.
 */
export async function writeFileNamed(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  try {
    await fs.writeFile(file, data, { mode });
  } catch (err) {
    throw writeFailure(file, err);
  }
}

export async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  await writeFileAtomic(file, jsonText(value));
}

export function jsonText(value: unknown): string {
  return JSON.stringify(value, null, 1) + '\n';
}

export async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

// A rename is only durable once the directory entry itself is flushed.
export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
