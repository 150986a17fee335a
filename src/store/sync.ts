import { promises as fs } from 'node:fs';
import koffi from 'koffi';
import { errnoError, fn } from '../kernel/libc.js';

/**
 * Flushes the whole filesystem holding `path` (one call instead of an fsync per unpacked file), on a koffi
 * worker thread: a flush can take seconds and the synchronous call would stall every RPC meanwhile.
 * The fd comes from node:fs so it is close-on-exec while a container is being spawned.
 */
export async function syncfsAsync(path: string): Promise<void> {
  const sync = fn('syncfs', 'int syncfs(int fd)');
  const handle = await fs.open(path, 'r');
  try {
    await new Promise<void>((resolve, reject) => {
      sync.async(handle.fd, (err: unknown, ret: number) => {
        if (err) reject(err);
        // koffi hands the worker thread's errno over to the callback.
        else if (ret < 0) reject(errnoError(koffi.errno(), 'syncfs', path));
        else resolve();
      });
    });
  } finally {
    await handle.close();
  }
}
