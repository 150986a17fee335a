import { promises as fs } from 'node:fs';
import path from 'node:path';
import { exhaustedResource } from '../errors.js';

// A little disk space held back under berth's root for the day the disk fills up. A full disk must not stop berth
// from stopping and removing pods (that is how an operator frees space), yet recording a container's exit or a
// pod's teardown means writing a record, which needs a page. So a file of RESERVE_BYTES is kept under the root;
// a record update that meets ENOSPC deletes it and tries once more. Creating new objects never uses it: they
// fail with RESOURCE_EXHAUSTED as they should. The reserve is made again once space allows (at start and after
// each removal).

export const RESERVE_BYTES = 1024 * 1024;
export const RESERVE_NAME = '.space-reserve';

const reserves = new Set<string>();

/** Makes sure `<root>/.space-reserve` holds RESERVE_BYTES; false when the disk has no room for it now. */
export async function ensureReserve(root: string): Promise<boolean> {
  reserves.add(root);
  const file = path.join(root, RESERVE_NAME);
  const st = await fs.stat(file).catch(() => undefined);
  if (st?.size === RESERVE_BYTES) return true;
  try {
    // Real zeros, not a sparse file or fallocate: tmpfs and every filesystem count written pages.
    await fs.writeFile(file, Buffer.alloc(RESERVE_BYTES), { mode: 0o600 });
    return true;
  } catch (err) {
    await fs.rm(file, { force: true }).catch(() => undefined);
    if (exhaustedResource(err)) return false;
    throw err;
  }
}

/** Frees the reserve of the root that holds `dir`, if it still has one; true when space was freed. */
export async function releaseReserve(dir: string): Promise<boolean> {
  for (const root of reserves) {
    if (dir !== root && !dir.startsWith(root + path.sep)) continue;
    const file = path.join(root, RESERVE_NAME);
    try {
      await fs.rm(file);
      return true;
    } catch {
      return false;
    }
  }
  return false;
}

/** After something was removed under `dir`: makes the reserve again if it was used and there is room now. */
export async function restoreReserve(dir: string): Promise<void> {
  for (const root of reserves) {
    if (dir === root || dir.startsWith(root + path.sep)) await ensureReserve(root).catch(() => false);
  }
}
