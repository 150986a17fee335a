import { promises as fs } from 'node:fs';
import path from 'node:path';

/**
 * Reads a file of the image's merged rootfs without mounting it: the topmost layer that has it wins, and a
 * whiteout (0:0 char device) or an opaque parent above hides the lower ones.
 */
export async function readImageFile(layerDirsTopFirst: string[], file: string): Promise<string | undefined> {
  const rel = file.replace(/^\/+/, '');
  for (const dir of layerDirsTopFirst) {
    const full = path.join(dir, rel);
    const st = await fs.lstat(full).catch(() => undefined);
    if (st) {
      if (st.isCharacterDevice() && st.rdev === 0) return undefined;
      if (st.isFile()) return fs.readFile(full, 'utf8');
      if (st.isSymbolicLink()) {
        const target = await fs.readlink(full);
        const resolved = path.posix.resolve(path.posix.dirname('/' + rel), target);
        return resolved === '/' + rel ? undefined : readImageFile(layerDirsTopFirst, resolved);
      }
      return undefined;
    }
  }
  return undefined;
}
