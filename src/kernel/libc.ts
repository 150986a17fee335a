// Thin koffi bindings to glibc for the few syscalls Node has no API for (xattrs, device nodes).
// Every wrapper throws a Node-style errno error (code, errno, syscall, path) on failure, so
// callers can test `err.code === 'EEXIST'` exactly as with node:fs.
import os from 'node:os';
import koffi from 'koffi';

export type Fn = ((...args: any[]) => any) & { async: (...args: any[]) => void };

let lib: ReturnType<typeof koffi.load> | undefined;
const bound = new Map<string, Fn>();

// Bind on first use: a symbol missing from an old libc then only breaks the call that needs it.
export function fn(name: string, definition: string): Fn {
  let f = bound.get(name);
  if (!f) {
    lib ??= koffi.load('libc.so.6');
    f = lib.func(definition) as Fn;
    bound.set(name, f);
  }
  return f;
}

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(os.constants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

export interface ErrnoError extends NodeJS.ErrnoException {
  errno: number;
  code: string;
  syscall: string;
  path: string;
}

/** Builds an error shaped like node:fs errors: `EPERM: operation not permitted, mknod '/x'`. */
export function errnoError(errno: number, syscall: string, path: string, extra = ''): ErrnoError {
  const code = errnoNames.get(errno) ?? `E${errno}`;
  let text: string;
  try {
    text = fn('strerror', 'const char *strerror(int errnum)')(errno) as string;
  } catch {
    text = 'unknown error';
  }
  const err = new Error(`${code}: ${text.toLowerCase()}, ${syscall} '${path}'${extra}`) as ErrnoError;
  err.errno = -errno;
  err.code = code;
  err.syscall = syscall;
  err.path = path;
  return err;
}

function check(ret: number | bigint, syscall: string, path: string, extra?: string): void {
  if (Number(ret) < 0) throw errnoError(koffi.errno(), syscall, path, extra);
}

// Device numbers, encoded exactly like glibc's gnu_dev_makedev / gnu_dev_major / gnu_dev_minor.
// dev_t is 64-bit on every glibc target (unsigned long on LP64, unsigned long long on ILP32).
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffn) << 8n) | ((ma & 0xfffff000n) << 32n) | (mi & 0xffn) | ((mi & 0xffffff00n) << 12n);
}

export function major(dev: number | bigint): number {
  const d = BigInt(dev);
  return Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & 0xfffff000n));
}

export function minor(dev: number | bigint): number {
  const d = BigInt(dev);
  return Number((d & 0xffn) | ((d >> 12n) & 0xffffff00n));
}

/** mknod(2). `mode` carries the file type (S_IFCHR, S_IFBLK, S_IFIFO, ...) and is subject to umask. */
export function mknod(path: string, mode: number, dev: number | bigint = 0): void {
  const f = fn('mknod', 'int mknod(const char *path, uint32_t mode, uint64_t dev)');
  check(f(path, mode >>> 0, BigInt(dev)), 'mknod', path);
}

/** mkfifo(3); subject to umask. */
export function mkfifo(path: string, mode: number): void {
  const f = fn('mkfifo', 'int mkfifo(const char *path, uint32_t mode)');
  check(f(path, mode >>> 0), 'mkfifo', path);
}

export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

/** lsetxattr(2): sets an extended attribute without following a final symlink. */
export function lsetxattr(path: string, name: string, value: Uint8Array, flags = 0): void {
  const f = fn(
    'lsetxattr',
    'int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)',
  );
  check(f(path, name, value, value.byteLength, flags), 'lsetxattr', path, ` (${name})`);
}

/** lgetxattr(2): the attribute's value, or undefined when it isn't set (ENODATA). */
export function lgetxattr(path: string, name: string): Buffer | undefined {
  const f = fn('lgetxattr', 'intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)');
  for (let attempt = 0; attempt < 8; attempt++) {
    const size = Number(f(path, name, null, 0));
    if (size < 0) {
      const errno = koffi.errno();
      if (errno === os.constants.errno.ENODATA) return undefined;
      throw errnoError(errno, 'lgetxattr', path, ` (${name})`);
    }
    if (size === 0) return Buffer.alloc(0);
    const buf = Buffer.alloc(size);
    const got = Number(f(path, name, buf, size));
    if (got >= 0) return buf.subarray(0, got);
    const errno = koffi.errno();
    // The value grew between the two calls: ask for the size again.
    if (errno === os.constants.errno.ERANGE) continue;
    if (errno === os.constants.errno.ENODATA) return undefined;
    throw errnoError(errno, 'lgetxattr', path, ` (${name})`);
  }
  throw errnoError(os.constants.errno.ERANGE, 'lgetxattr', path, ` (${name})`);
}

export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_BIND = 0x1000;
export const MS_REC = 0x4000;
export const MS_PRIVATE = 0x40000;
export const MNT_DETACH = 0x2;
export const UMOUNT_NOFOLLOW = 0x8;

export function mount(source: string, target: string, fstype: string | null, flags: number, data: string | null): void {
  const f = fn('mount', 'int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)');
  check(f(source, target, fstype, flags, data), 'mount', target);
}

export function umount2(target: string, flags: number): void {
  const f = fn('umount2', 'int umount2(const char *target, int flags)');
  check(f(target, flags), 'umount2', target);
}

/** Flushes the whole filesystem holding `path`: one call instead of an fsync per unpacked file. */
export function syncfs(path: string): void {
  const open = fn('open', 'int open(const char *path, int flags)');
  const close = fn('close', 'int close(int fd)');
  const sync = fn('syncfs', 'int syncfs(int fd)');
  const fd = open(path, 0 /* O_RDONLY */) as number;
  if (fd < 0) throw errnoError(koffi.errno(), 'open', path);
  try {
    check(sync(fd), 'syncfs', path);
  } finally {
    close(fd);
  }
}

/** Gives free heap memory of every malloc arena back to the kernel (glibc keeps it otherwise). */
export function mallocTrim(): void {
  fn('malloc_trim', 'int malloc_trim(size_t pad)')(0);
}

/** mallocTrim on a koffi worker thread: trimming after a pull walks arenas of tens of MiB (tens of ms). */
export function mallocTrimAsync(): Promise<void> {
  return new Promise((resolve, reject) => {
    fn('malloc_trim', 'int malloc_trim(size_t pad)').async(0, (err: unknown) => (err ? reject(err) : resolve()));
  });
}

export const MFD_CLOEXEC = 0x1;
export const MFD_ALLOW_SEALING = 0x2;
/** Linux ≥ 6.3: the memfd may be executed even where vm.memfd_noexec would make it non-executable. */
export const MFD_EXEC = 0x10;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x1;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
export const F_SEAL_WRITE = 0x8;

/** memfd_create(2); returns the fd. */
export function memfdCreate(name: string, flags: number): number {
  const fd = fn('memfd_create', 'int memfd_create(const char *name, unsigned int flags)')(name, flags >>> 0) as number;
  if (fd < 0) throw errnoError(koffi.errno(), 'memfd_create', name);
  return fd;
}

const fcntlInt = (): Fn => fn('fcntl', 'int fcntl(int fd, int cmd, ...)');

/** fcntl(fd, F_ADD_SEALS, seals). */
export function addSeals(fd: number, seals: number): void {
  check(fcntlInt()(fd, F_ADD_SEALS, 'int', seals), 'fcntl(F_ADD_SEALS)', `fd ${fd}`);
}

/** fcntl(fd, F_GET_SEALS). */
export function getSeals(fd: number): number {
  const seals = fcntlInt()(fd, F_GET_SEALS, 'int', 0) as number;
  if (seals < 0) throw errnoError(koffi.errno(), 'fcntl(F_GET_SEALS)', `fd ${fd}`);
  return seals;
}

/** The syscall number is the same on every architecture (numbers from 424 on are shared). */
const SYS_MOUNT_SETATTR = 442;
const AT_EMPTY_PATH = 0x1000;
const MOUNT_ATTR_RDONLY = 0x1;
/** struct mount_attr, version 0: attr_set, attr_clr, propagation, userns_fd (four u64). */
const MOUNT_ATTR_SIZE_VER0 = 32;

/**
 * Whether the kernel has mount_setattr(2) (Linux ≥ 5.12), which recursive read-only mounts need. Asked of an
 * invalid fd, so nothing is mounted: EBADF means the call exists; ENOSYS (an old kernel) or EPERM (a seccomp
 * filter around berth) that the shim could not make it either.
 */
export function mountSetattrSupported(): boolean {
  const syscall = fn('syscall', 'long syscall(long number, ...)');
  const attr = Buffer.alloc(MOUNT_ATTR_SIZE_VER0);
  attr.writeBigUInt64LE(BigInt(MOUNT_ATTR_RDONLY), 0);
  const ret = Number(syscall(SYS_MOUNT_SETATTR, 'int', -1, 'const char *', '', 'unsigned int', AT_EMPTY_PATH, 'void *', attr, 'size_t', attr.byteLength));
  return ret < 0 && koffi.errno() === os.constants.errno.EBADF;
}
