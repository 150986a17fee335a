// The security boundary of layer extraction. A layer is untrusted input: every entry name and hardlink target is
// normalized and must stay inside the layer root, and no parent directory on the way may be a symlink, so
// nothing is ever created or modified outside the root. (Final path components are the extractor's part: it
// never follows them.)
//
// Only this process is assumed to write under the root while a layer is being unpacked, which is what makes
// remembering checked directories sound.
import { chmodSync, lchownSync, lstatSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { escapes, invalidEntry } from './errors.js';

const WHITEOUT_PREFIX = '.wh.';
const WHITEOUT_META_PREFIX = '.wh..wh.';
const WHITEOUT_OPAQUE = '.wh..wh..opq';

/**
 * `name` (an entry's name, or with `what` one of its link targets) as a normalized path relative to the root,
 * '' for the root itself; throws if it would leave the root.
 */
export function entryPath(name: string, entryName: string, what?: string): string {
  if (name.includes('\0')) throw invalidEntry(entryName, 'name contains a NUL byte');
  if (name.startsWith('/')) throw escapes(entryName, what ? `${what} ${name} is absolute` : 'absolute path');
  let rel = path.posix.normalize(name);
  if (rel === '..' || rel.startsWith('../')) throw escapes(entryName, what ? `${what} ${name} leaves it` : undefined);
  if (rel.endsWith('/')) rel = rel.slice(0, -1);
  if (rel === '.' || rel === './') return '';
  return rel;
}

/** A hardlink's target relative to the root: inside it, and not the root itself. */
export function hardlinkTarget(linkname: string, entryName: string): string {
  if (linkname === '') throw invalidEntry(entryName, 'hardlink has an empty target');
  const target = entryPath(linkname, entryName, 'hardlink target');
  if (target === '') throw invalidEntry(entryName, 'hardlink to the layer root');
  return target;
}

export type Whiteout =
  /** `dir/.wh..wh..opq`: `dir` ('' for the root) hides the lower layers' content. */
  | { kind: 'opaque'; dir: string }
  /** Other `.wh..wh.*` names: whiteout bookkeeping of the tool that made the layer, nothing to create. */
  | { kind: 'metadata' }
  /** `dir/.wh.name`: `dir/name` is deleted. */
  | { kind: 'file'; target: string };

/** What the entry at `rel` (as entryPath returns it) whites out, or undefined when it is no whiteout. */
export function whiteoutOf(rel: string, entryName: string): Whiteout | undefined {
  const base = path.posix.basename(rel);
  if (!base.startsWith(WHITEOUT_PREFIX)) return undefined;
  const dir = path.posix.dirname(rel);
  const dirRel = dir === '.' ? '' : dir;
  if (base === WHITEOUT_OPAQUE) return { kind: 'opaque', dir: dirRel };
  if (base.startsWith(WHITEOUT_META_PREFIX)) return { kind: 'metadata' };
  const original = base.slice(WHITEOUT_PREFIX.length);
  if (original === '' || original === '.' || original === '..') throw invalidEntry(entryName, 'malformed whiteout');
  return { kind: 'file', target: dirRel ? `${dirRel}/${original}` : original };
}

/** The layer root, and the directories below it already known to be real directories (not symlinks). */
export class LayerRoot {
  private readonly dirs = new Set<string>();

  constructor(readonly root: string) {}

  /** The absolute path of `rel`, which entryPath has checked. */
  abs(rel: string): string {
    return rel === '' ? this.root : this.root + '/' + rel;
  }

  /** `rel` is now a real directory (the extractor just made it). */
  addDirectory(rel: string): void {
    this.dirs.add(rel);
  }

  /** `rel` was removed: forgets it and everything below it. */
  forget(rel: string): void {
    const prefix = rel + '/';
    for (const d of this.dirs) if (d === rel || d.startsWith(prefix)) this.dirs.delete(d);
  }

  /**
   * Makes sure every parent of `rel` is a real directory, creating missing ones (0755 root:root); refuses a
   * symlink or a non-directory on the way. Returns how many directories it created.
   */
  ensureParents(rel: string, entryName: string): number {
    const dir = path.posix.dirname(rel);
    if (dir === '.' || this.dirs.has(dir)) return 0;
    let created = 0;
    let cur = '';
    let missing = false;
    for (const part of dir.split('/')) {
      cur = cur ? `${cur}/${part}` : part;
      if (this.dirs.has(cur)) continue;
      const abs = this.abs(cur);
      if (!missing) {
        const st = lstatSync(abs, { throwIfNoEntry: false });
        if (st) {
          if (st.isDirectory()) {
            this.dirs.add(cur);
            continue;
          }
          if (st.isSymbolicLink()) throw escapes(entryName, `${cur} is a symlink`);
          throw invalidEntry(entryName, `parent ${cur} is not a directory`);
        }
        missing = true;
      }
      mkdirSync(abs, 0o700);
      lchownSync(abs, 0, 0);
      chmodSync(abs, 0o755);
      this.dirs.add(cur);
      created++;
    }
    return created;
  }

  /** Like ensureParents for a path that must already exist (a hardlink target), creating nothing. */
  checkParents(rel: string, entryName: string, linkname: string): void {
    const dir = path.posix.dirname(rel);
    if (dir === '.' || this.dirs.has(dir)) return;
    let cur = '';
    for (const part of dir.split('/')) {
      cur = cur ? `${cur}/${part}` : part;
      if (this.dirs.has(cur)) continue;
      const st = lstatSync(this.abs(cur), { throwIfNoEntry: false });
      if (!st) throw invalidEntry(entryName, `hardlink target ${linkname} does not exist`);
      if (st.isSymbolicLink()) throw escapes(entryName, `hardlink target ${linkname} goes through symlink ${cur}`);
      if (!st.isDirectory()) throw invalidEntry(entryName, `hardlink target ${linkname} does not exist`);
      this.dirs.add(cur);
    }
  }
}
