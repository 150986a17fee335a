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

const OPAQUE_XATTR = 'trusted.overlay.opaque';
const MAX_SYMLINKS = 40;

/**
 * What a path names in the image's merged rootfs, as overlayfs would show it, without mounting: 'directory',
 * 'other' (a file, device, ...) or undefined when it does not exist. Symlinks are followed inside the image (an
 * absolute target and ".." stop at the image's root, as RESOLVE_IN_ROOT does); whiteouts and opaque directories
 * hide what the layers below hold. Used to answer NOT_FOUND for an image volume's sub path before anything is made;
 * the init resolves the path again, beneath the mounted overlay, when it attaches the volume.
 */
export async function imagePathKind(layerDirsTopFirst: string[], rel: string, isOpaque = defaultIsOpaque): Promise<'directory' | 'other' | undefined> {
  let pending = rel.split('/').filter((c) => c !== '' && c !== '.');
  let resolved: string[] = [];
  let links = 0;
  // The layers in which the directory `resolved` is seen: top first, down to the first opaque one.
  let dirLayers = layerDirsTopFirst;
  let kind: 'directory' | 'other' = 'directory';
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (kind !== 'directory') return undefined;
    if (name === '..') {
      resolved = resolved.slice(0, -1);
      dirLayers = await layersOfDirectory(layerDirsTopFirst, resolved, isOpaque);
      continue;
    }
    const next: string[] = [];
    let entry: { dir: string; st: import('node:fs').Stats } | undefined;
    for (const dir of dirLayers) {
      const full = path.join(dir, ...resolved, name);
      const st = await fs.lstat(full).catch(() => undefined);
      if (!st) continue;
      if (st.isCharacterDevice() && st.rdev === 0) break;
      if (!st.isDirectory()) {
        if (next.length === 0) entry = { dir, st };
        break;
      }
      next.push(dir);
      if (await isOpaque(full)) break;
    }
    if (next.length > 0) {
      resolved = [...resolved, name];
      dirLayers = next;
      kind = 'directory';
      continue;
    }
    if (!entry) return undefined;
    if (entry.st.isSymbolicLink()) {
      if (++links > MAX_SYMLINKS) return undefined;
      const target = await fs.readlink(path.join(entry.dir, ...resolved, name));
      if (target.startsWith('/')) {
        resolved = [];
        dirLayers = layerDirsTopFirst;
      }
      pending = [...target.split('/').filter((c) => c !== '' && c !== '.'), ...pending];
      continue;
    }
    resolved = [...resolved, name];
    kind = 'other';
  }
  return kind;
}

async function layersOfDirectory(layerDirsTopFirst: string[], parts: string[], isOpaque: (p: string) => Promise<boolean>): Promise<string[]> {
  // Only called for a prefix already resolved as a directory: walk it again from the root.
  let dirLayers = layerDirsTopFirst;
  for (let i = 0; i < parts.length; i++) {
    const next: string[] = [];
    for (const dir of dirLayers) {
      const full = path.join(dir, ...parts.slice(0, i + 1));
      const st = await fs.lstat(full).catch(() => undefined);
      if (!st) continue;
      if (!st.isDirectory()) break;
      next.push(dir);
      if (await isOpaque(full)) break;
    }
    dirLayers = next;
  }
  return dirLayers;
}

async function defaultIsOpaque(dir: string): Promise<boolean> {
  const { lgetxattr } = await import('../kernel/libc.js');
  return lgetxattr(dir, OPAQUE_XATTR)?.toString() === 'y';
}
