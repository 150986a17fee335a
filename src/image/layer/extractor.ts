// Turns tar entries into filesystem objects under the layer root, one at a time as tar-stream hands them over.
//
// Where a path may go is safe-path.ts's call; this file makes sure the final component is never followed either:
// files are created with O_EXCL|O_NOFOLLOW, metadata is set on the open descriptor or with the l*() calls, and
// the one path-based chmod(2) only ever targets a directory or node created the line before.
//
// Speed: metadata syscalls and small files run synchronously, in slices (see tuning.ts).
import {
  chmodSync,
  closeSync,
  constants as fsc,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  promises as fs,
  symlinkSync,
  unlinkSync,
  type Stats,
} from 'node:fs';
import { BerthError, errorMessage, internal } from '../../errors.js';
import { lsetxattr, makedev, mknod } from '../../kernel/libc.js';
import type { Logger } from '../../log.js';
import { entryMeta, type EntryData, type EntryHeader, type Meta } from './entry.js';
import { invalidEntry } from './errors.js';
import { PAX_XATTR, type PaxXattrTracker } from './pax-xattrs.js';
import { entryPath, hardlinkTarget, LayerRoot, whiteoutOf, type Whiteout } from './safe-path.js';
import { SYNC_FILE_MAX, SYNC_SLICE_MS, WRITE_BATCH_BYTES } from './tuning.js';
import { writeAll, writeAllSync } from './write-all.js';

const OPAQUE_XATTR = 'trusted.overlay.opaque';

function isWhiteoutDevice(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

export class Extractor {
  unpackedBytes = 0;
  inodes = 0;
  private readonly tree: LayerRoot;
  /** Directory times, applied at the end because creating children changes them. */
  private readonly dirTimes = new Map<string, [number, number]>();
  private current: Promise<void> = Promise.resolve();
  /**
   * The first entry that failed, and why. tar-stream may end the pipeline with a premature close of its own once
   * an entry fails, which would hide the reason (a full disk) behind one that blames the stream.
   */
  failure: Error | undefined;
  private sliceStart = performance.now();

  constructor(
    private readonly root: string,
    private readonly ready: Promise<void>,
    private readonly tracker: PaxXattrTracker,
    private readonly log: Logger,
    /** On a thread of its own: file data is written synchronously too, off libuv's pool, which the daemon's own I/O queues on. */
    private readonly ownThread = false,
  ) {
    this.tree = new LayerRoot(root);
  }

  onEntry(header: EntryHeader, data: EntryData, next: (err?: Error | null) => void): void {
    // When the pipeline fails, tar-stream destroys the entry stream with the error. Without a listener
    // streamx throws from inside its destroy, leaving the stream half-destroyed and our reader hung.
    // The error itself reaches us through the iterator and the pipeline.
    data.on('error', () => {});
    this.current = this.entry(header, data).then(
      () => next(),
      (err: unknown) => {
        data.resume();
        const wrapped = this.wrap(err, header.name);
        this.failure ??= wrapped;
        next(wrapped);
      },
    );
  }

  /** Settles once the entry being extracted, if any, is done. */
  idle(): Promise<void> {
    return this.current.catch(() => {});
  }

  async finish(): Promise<void> {
    for (const [rel, [atime, mtime]] of this.dirTimes) {
      try {
        lutimesSync(this.abs(rel), atime, mtime);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw this.wrap(err, rel);
      }
      await this.yieldSometimes();
    }
  }

  private wrap(err: unknown, name: string): Error {
    return err instanceof BerthError ? err : internal(`unpacking layer entry ${name} into ${this.root}: ${errorMessage(err)}`, err);
  }

  // Metadata syscalls and small files run synchronously: a thread-pool round trip per call costs
  // more than the call itself, and a layer is tens of thousands of them. The event loop still gets
  // a turn every few milliseconds.
  private async yieldSometimes(): Promise<void> {
    if (performance.now() - this.sliceStart < SYNC_SLICE_MS) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.sliceStart = performance.now();
  }

  private abs(rel: string): string {
    return this.tree.abs(rel);
  }

  private async entry(h: EntryHeader, data: EntryData): Promise<void> {
    const type = h.type ?? null;
    const isFile = type === 'file' || type === 'contiguous-file';
    if (!isFile) data.resume(); // drain anything a non-file entry carries
    await this.ready;

    const name = h.name;
    const rel = entryPath(name, name);
    const xattrs = this.xattrs(h);
    const meta = entryMeta(h);

    if (h.pax && Object.keys(h.pax).some((k) => k.startsWith('GNU.sparse.'))) {
      // tar-stream would hand over the sparse map as file content: refuse rather than write garbage.
      throw invalidEntry(name, 'GNU sparse files are not supported');
    }

    if (rel === '') {
      if (type === 'directory') return; // the root's own entry ("./"): the root is ours, like containerd
      throw invalidEntry(name, 'only a directory can stand for the layer root');
    }

    const whiteout = whiteoutOf(rel, name);
    if (whiteout) {
      await this.whiteout(rel, whiteout, name, meta);
    } else {
      this.ensureParents(rel, name);
      switch (type) {
        case 'file':
        case 'contiguous-file':
          await this.file(rel, name, h.size ?? 0, meta, xattrs, data);
          break;
        case 'directory':
          await this.directory(rel, meta, xattrs);
          break;
        case 'symlink':
          await this.symlink(rel, name, h.linkname ?? '', meta, xattrs);
          break;
        case 'link':
          await this.hardlink(rel, name, h.linkname ?? '');
          break;
        case 'character-device':
        case 'block-device':
        case 'fifo':
          await this.special(rel, type, h.devmajor ?? 0, h.devminor ?? 0, meta, xattrs);
          break;
        default:
          throw invalidEntry(name, `unsupported entry type ${type ?? 'unknown'}`);
      }
    }
    await this.yieldSometimes();
  }

  private xattrs(h: EntryHeader): Array<[string, Buffer]> {
    const raw = this.tracker.take(h.byteOffset ?? -1);
    const keys = h.pax ? Object.keys(h.pax).filter((k) => k.startsWith(PAX_XATTR)) : [];
    if (keys.length === 0 && !raw) return [];
    if (!raw || raw.size !== keys.length || keys.some((k) => !raw.has(k))) {
      throw internal(`layer entry ${h.name}: lost track of its PAX xattr records`);
    }
    const out: Array<[string, Buffer]> = [];
    for (const key of keys) {
      const name = key.slice(PAX_XATTR.length);
      // We write the overlayfs xattrs ourselves; a layer must not be able to plant redirects or the like.
      if (name.startsWith('trusted.overlay.')) {
        this.log.warn('ignoring overlayfs xattr in layer', { entry: h.name, xattr: name });
        continue;
      }
      out.push([name, raw.get(key)!]);
    }
    return out;
  }

  private ensureParents(rel: string, entryName: string): void {
    this.inodes += this.tree.ensureParents(rel, entryName);
  }

  /** Removes whatever is at `rel` and forgets what we knew about it and below it. */
  private async remove(rel: string, st: Stats): Promise<void> {
    const abs = this.abs(rel);
    if (st.isDirectory()) {
      await fs.rm(abs, { recursive: true, force: true });
      this.tree.forget(rel);
      const prefix = rel + '/';
      for (const d of this.dirTimes.keys()) if (d === rel || d.startsWith(prefix)) this.dirTimes.delete(d);
    } else {
      unlinkSync(abs);
    }
  }

  /** Runs `make`; if the path is taken, replaces what is there. Returns whether that was a whiteout. */
  private async create(rel: string, make: () => void): Promise<boolean> {
    try {
      make();
      return false;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = lstatSync(this.abs(rel));
    await this.remove(rel, st);
    make();
    return isWhiteoutDevice(st);
  }

  private async file(
    rel: string,
    name: string,
    size: number,
    meta: Meta,
    xattrs: Array<[string, Buffer]>,
    data: EntryData,
  ): Promise<void> {
    const abs = this.abs(rel);
    // O_EXCL: never opens an existing file, nor follows a symlink planted at this name.
    const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
    let fd = -1;
    await this.create(rel, () => {
      fd = openSync(abs, flags, 0o600);
    });
    this.inodes++;
    try {
      let written = 0;
      let batch: Buffer[] = [];
      let batchBytes = 0;
      const small = this.ownThread || size <= SYNC_FILE_MAX;
      for await (const item of data) {
        const chunk = item as Buffer;
        batch.push(chunk);
        batchBytes += chunk.length;
        if (batchBytes >= WRITE_BATCH_BYTES) {
          if (this.ownThread) writeAllSync(fd, batch, batchBytes);
          else await writeAll(fd, batch, batchBytes);
          written += batchBytes;
          batch = [];
          batchBytes = 0;
        }
      }
      if (batchBytes > 0) {
        if (small) writeAllSync(fd, batch, batchBytes);
        else await writeAll(fd, batch, batchBytes);
        written += batchBytes;
      }
      if (written !== size) throw invalidEntry(name, `expected ${size} bytes of data, got ${written}`);
      this.unpackedBytes += size;
      fchownSync(fd, meta.uid, meta.gid);
      fchmodSync(fd, meta.mode); // after chown, which clears setuid/setgid
      this.setXattrs(abs, name, xattrs, false); // after chown, which clears security.capability
      futimesSync(fd, meta.atime, meta.mtime);
    } finally {
      closeSync(fd);
    }
  }

  private async directory(rel: string, meta: Meta, xattrs: Array<[string, Buffer]>): Promise<void> {
    const abs = this.abs(rel);
    let opaque = false;
    try {
      mkdirSync(abs, 0o700);
      this.inodes++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = lstatSync(abs);
      if (!st.isDirectory()) {
        // A directory over a whiteout of this same layer: the lower one stays hidden, so opaque.
        opaque = isWhiteoutDevice(st);
        await this.remove(rel, st);
        mkdirSync(abs, 0o700);
        this.inodes++;
      } // else: a directory over a directory merges; the later metadata wins
    }
    this.tree.addDirectory(rel);
    lchownSync(abs, meta.uid, meta.gid);
    chmodSync(abs, meta.mode);
    this.setXattrs(abs, rel, xattrs, false);
    if (opaque) lsetxattr(abs, OPAQUE_XATTR, Buffer.from('y'));
    this.dirTimes.set(rel, [meta.atime, meta.mtime]);
  }

  private async symlink(
    rel: string,
    name: string,
    target: string,
    meta: Meta,
    xattrs: Array<[string, Buffer]>,
  ): Promise<void> {
    if (target === '') throw invalidEntry(name, 'symlink has an empty target');
    if (target.includes('\0')) throw invalidEntry(name, 'symlink target contains a NUL byte');
    const abs = this.abs(rel);
    // The target is stored as is (absolute or dangling is fine): it is never followed here.
    await this.create(rel, () => symlinkSync(target, abs));
    this.inodes++;
    lchownSync(abs, meta.uid, meta.gid);
    this.setXattrs(abs, name, xattrs, true);
    lutimesSync(abs, meta.atime, meta.mtime);
  }

  private async hardlink(rel: string, name: string, linkname: string): Promise<void> {
    const target = hardlinkTarget(linkname, name);
    if (target === rel) return; // a link to itself: nothing to do
    this.tree.checkParents(target, name, linkname);
    const from = this.abs(target);
    const to = this.abs(rel);
    try {
      // link(2) does not follow a symlink at `from`: at worst this links the symlink itself.
      await this.create(rel, () => linkSync(from, to));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw invalidEntry(name, `hardlink target ${linkname} does not exist`);
      }
      throw err;
    }
    // The inode already carries the target's metadata; nothing more to set.
  }

  private async special(
    rel: string,
    type: 'character-device' | 'block-device' | 'fifo',
    devmajor: number,
    devminor: number,
    meta: Meta,
    xattrs: Array<[string, Buffer]>,
  ): Promise<void> {
    const abs = this.abs(rel);
    const ifmt = type === 'character-device' ? fsc.S_IFCHR : type === 'block-device' ? fsc.S_IFBLK : fsc.S_IFIFO;
    const dev = type === 'fifo' ? 0n : makedev(devmajor, devminor);
    await this.create(rel, () => mknod(abs, ifmt | 0o600, dev));
    this.inodes++;
    lchownSync(abs, meta.uid, meta.gid);
    chmodSync(abs, meta.mode); // chmod(2) on a node we just made; devices aren't opened by it
    this.setXattrs(abs, rel, xattrs, false);
    lutimesSync(abs, meta.atime, meta.mtime);
  }

  /** `dir/.wh.name` → 0:0 character device `dir/name`; `dir/.wh..wh..opq` → `dir` is opaque. */
  private async whiteout(rel: string, whiteout: Whiteout, name: string, meta: Meta): Promise<void> {
    if (whiteout.kind === 'opaque') {
      this.ensureParents(rel, name);
      lsetxattr(this.abs(whiteout.dir), OPAQUE_XATTR, Buffer.from('y'));
      return;
    }
    if (whiteout.kind === 'metadata') {
      this.log.debug('skipping whiteout metadata entry', { entry: name });
      return;
    }
    const { target } = whiteout;
    this.ensureParents(target, name);
    const abs = this.abs(target);
    try {
      mknod(abs, fsc.S_IFCHR, 0n);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // The path was created earlier in this same layer, which a whiteout does not remove (it only
      // hides lower layers). A same-layer file hides the lower one anyway; a directory must become
      // opaque so the lower directory's content stays hidden.
      if (lstatSync(abs).isDirectory()) lsetxattr(abs, OPAQUE_XATTR, Buffer.from('y'));
      return;
    }
    this.inodes++;
    lchownSync(abs, meta.uid, meta.gid);
    lutimesSync(abs, meta.atime, meta.mtime); // for reproducible trees; overlayfs ignores it
  }

  private setXattrs(abs: string, entry: string, xattrs: Array<[string, Buffer]>, symlink: boolean): void {
    for (const [name, value] of xattrs) {
      try {
        lsetxattr(abs, name, value);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // As containerd: unsupported namespaces and security.* we may not set are skipped, not fatal.
        // user.* is never allowed on symlinks.
        if (code === 'ENOTSUP' || code === 'EOPNOTSUPP' || (code === 'EPERM' && (symlink || name.startsWith('security.')))) {
          this.log.warn('ignoring xattr the filesystem refused', { entry, xattr: name, err });
          continue;
        }
        throw err;
      }
    }
  }
}
