import koffi from 'koffi';
import { errnoError, fn } from './libc.js';

// Attaches a file to a free loop device in-process (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, one ioctl each), with
// LO_FLAGS_AUTOCLEAR: the device detaches itself once the last user is gone, so after a mount of it the caller
// closes its descriptor, and unmounting is all removal takes. No losetup process on the container-create path.

const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;
const LOOP_CTL_GET_FREE = 0x4c82;
const LOOP_CONFIGURE = 0x4c0a;
const LO_FLAGS_AUTOCLEAR = 4;
/** struct loop_config: u32 fd, u32 block_size, struct loop_info64 (232 bytes), u64 reserved[8]. */
const LOOP_CONFIG_SIZE = 304;
/** loop_config.info.lo_flags: 8 + (five u64 + three u32) = 8 + 52. */
const LO_FLAGS_OFFSET = 60;
const EBUSY = 16;

const open = () => fn('open', 'int open(const char *path, int flags)');
const close = () => fn('close', 'int close(int fd)');
const ioctlInt = () => fn('ioctl_int', 'int ioctl(int fd, unsigned long request, unsigned long arg)');
const ioctlBuf = () => fn('ioctl_buf', 'int ioctl(int fd, unsigned long request, const uint8_t *arg)');

/** The loop_config that attaches `fd` with autoclear; exported for its unit test. */
export function loopConfig(fd: number): Buffer {
  const cfg = Buffer.alloc(LOOP_CONFIG_SIZE);
  cfg.writeUInt32LE(fd, 0);
  cfg.writeUInt32LE(LO_FLAGS_AUTOCLEAR, LO_FLAGS_OFFSET);
  return cfg;
}

export interface AttachedLoop {
  device: string;
  /** Open on the device: close it once the device is mounted (or to detach an unmounted one). */
  fd: number;
}

/** Attaches `file` to a free loop device. Another process taking the same free device meanwhile is retried. */
export function attachLoop(file: string): AttachedLoop {
  const ctl = open()('/dev/loop-control', O_RDWR | O_CLOEXEC) as number;
  if (ctl < 0) throw errnoError(koffi.errno(), 'open', '/dev/loop-control');
  const backing = open()(file, O_RDWR | O_CLOEXEC) as number;
  if (backing < 0) {
    const errno = koffi.errno();
    close()(ctl);
    throw errnoError(errno, 'open', file);
  }
  try {
    for (let attempt = 0; ; attempt++) {
      const n = ioctlInt()(ctl, LOOP_CTL_GET_FREE, 0) as number;
      if (n < 0) throw errnoError(koffi.errno(), 'ioctl(LOOP_CTL_GET_FREE)', '/dev/loop-control');
      const device = `/dev/loop${n}`;
      const fd = open()(device, O_RDWR | O_CLOEXEC) as number;
      if (fd < 0) throw errnoError(koffi.errno(), 'open', device);
      if ((ioctlBuf()(fd, LOOP_CONFIGURE, loopConfig(backing)) as number) === 0) return { device, fd };
      const errno = koffi.errno();
      close()(fd);
      if (errno !== EBUSY || attempt >= 8) throw errnoError(errno, 'ioctl(LOOP_CONFIGURE)', `${device} <- ${file}`);
    }
  } finally {
    close()(backing);
    close()(ctl);
  }
}

export function closeFd(fd: number): void {
  close()(fd);
}
