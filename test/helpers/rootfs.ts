// A minimal container rootfs from Debian's busybox-static, and a builder for berth-shim's spec.json
// (the schema is documented in native/README.md).
import { closeSync, openSync, readSync } from 'node:fs';
import { chmod, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (this file is compiled to dist/test/helpers/rootfs.js). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const SHIM = path.join(REPO_ROOT, 'native/build/berth-shim');

export const BUSYBOX_APPLETS = [
  'sh', 'echo', 'cat', 'sleep', 'ls', 'id', 'hostname', 'ps', 'mount',
  'head', 'tr', 'true', 'false', 'touch', 'test', 'printf', 'wc', 'grep',
];

const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

/** True if the ELF file at `file` has no PT_INTERP (it runs without a dynamic loader). */
function isStaticElf(file: string): boolean {
  const fd = openSync(file, 'r');
  try {
    const hdr = Buffer.alloc(64);
    readSync(fd, hdr, 0, 64, 0);
    if (hdr.readUInt32BE(0) !== 0x7f454c46 || hdr[4] !== 2) return false; // ELF64 only
    const phoff = Number(hdr.readBigUInt64LE(32));
    const phentsize = hdr.readUInt16LE(54);
    const phnum = hdr.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    return true;
  } finally {
    closeSync(fd);
  }
}

/** The host's statically linked busybox (Debian package busybox-static), or an explanatory error. */
export function findStaticBusybox(): string {
  for (const c of BUSYBOX_CANDIDATES) {
    try {
      if (isStaticElf(c)) return c;
    } catch {
      // not there
    }
  }
  throw new Error('no static busybox found: apt-get install busybox-static');
}

/** Build a rootfs at `dir`: /bin/busybox + applet links, /etc/passwd and group, empty proc sys dev tmp. */
export async function buildBusyboxRootfs(dir: string): Promise<void> {
  const busybox = findStaticBusybox();
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'root']) await mkdir(path.join(dir, d), { recursive: true });
  await chmod(path.join(dir, 'tmp'), 0o1777);
  await copyFile(busybox, path.join(dir, 'bin/busybox'));
  await chmod(path.join(dir, 'bin/busybox'), 0o755);
  for (const a of BUSYBOX_APPLETS) await symlink('busybox', path.join(dir, 'bin', a));
  await writeFile(
    path.join(dir, 'etc/passwd'),
    'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  );
  await writeFile(path.join(dir, 'etc/group'), 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n');
}

// ---- spec.json (native/README.md) ----

export type ShimNamespaceType = 'mount' | 'pid' | 'ipc' | 'uts' | 'network' | 'cgroup' | 'user';

export interface ShimMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export interface ShimDevice {
  path: string;
  type: 'c' | 'b';
  major: number;
  minor: number;
  mode: number;
  uid: number;
  gid: number;
}

export interface ShimCapabilities {
  bounding: string[];
  effective: string[];
  permitted: string[];
  inheritable: string[];
  ambient: string[];
}

export interface ShimSpec {
  id: string;
  bundle: string;
  process: {
    args: string[];
    env: string[];
    cwd: string;
    uid: number;
    gid: number;
    additionalGids: number[];
    terminal: boolean;
    stdin: boolean;
    rlimits: { type: string; soft: number; hard: number }[];
    oomScoreAdj: number | null;
    noNewPrivileges: boolean;
    capabilities: ShimCapabilities;
  };
  root: { path: string; readonly: boolean };
  overlay?: { lower: string[]; upper: string; work: string };
  hostname?: string;
  namespaces: { type: ShimNamespaceType; path?: string }[];
  cgroupProcs: string[];
  mounts: ShimMount[];
  devices: ShimDevice[];
  maskedPaths: string[];
  readonlyPaths: string[];
  sysctl: Record<string, string>;
  log: { path: string; maxLineBytes: number };
}

/** containerd's default capability set. */
export const DEFAULT_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

export const DEFAULT_MASKED = [
  '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
  '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
];

export const DEFAULT_READONLY = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export const DEFAULT_ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];

/** proc, /dev tmpfs, devpts, /dev/shm, mqueue, read-only sysfs. */
export function standardMounts(): ShimMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=64m'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
  ];
}

/** null, zero, full, random, urandom, tty. */
export function standardDevices(): ShimDevice[] {
  const c = (p: string, major: number, minor: number): ShimDevice => ({
    path: p, type: 'c', major, minor, mode: 0o666, uid: 0, gid: 0,
  });
  return [c('/dev/null', 1, 3), c('/dev/zero', 1, 5), c('/dev/full', 1, 7), c('/dev/random', 1, 8),
    c('/dev/urandom', 1, 9), c('/dev/tty', 5, 0)];
}

export interface SpecInput {
  id: string;
  bundle: string;
  /** Where the rootfs is mounted (the overlay's mount point when `overlay` is set). */
  rootPath: string;
  overlay?: { lower: string[]; upper: string; work: string };
  args: string[];
  env?: string[];
  cwd?: string;
  uid?: number;
  gid?: number;
  hostname?: string;
  /** Default: new mount, pid, ipc, uts, network and cgroup namespaces. */
  namespaces?: { type: ShimNamespaceType; path?: string }[];
  cgroupProcs?: string[];
  extraMounts?: ShimMount[];
  logPath: string;
  maxLineBytes?: number;
  readonlyRoot?: boolean;
  capabilities?: string[];
  sysctl?: Record<string, string>;
}

export function buildSpec(i: SpecInput): ShimSpec {
  const caps = i.capabilities ?? DEFAULT_CAPS;
  return {
    id: i.id,
    bundle: i.bundle,
    process: {
      args: i.args,
      env: i.env ?? DEFAULT_ENV,
      cwd: i.cwd ?? '/',
      uid: i.uid ?? 0,
      gid: i.gid ?? 0,
      additionalGids: [],
      terminal: false,
      stdin: false,
      rlimits: [{ type: 'RLIMIT_NOFILE', soft: 1024, hard: 1024 }],
      oomScoreAdj: null,
      noNewPrivileges: false,
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] },
    },
    root: { path: i.rootPath, readonly: i.readonlyRoot ?? false },
    ...(i.overlay ? { overlay: i.overlay } : {}),
    ...(i.hostname !== undefined ? { hostname: i.hostname } : {}),
    namespaces: i.namespaces ?? [
      { type: 'mount' }, { type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'network' }, { type: 'cgroup' },
    ],
    cgroupProcs: i.cgroupProcs ?? [],
    mounts: [...standardMounts(), ...(i.extraMounts ?? [])],
    devices: standardDevices(),
    maskedPaths: DEFAULT_MASKED,
    readonlyPaths: DEFAULT_READONLY,
    sysctl: i.sysctl ?? {},
    log: { path: i.logPath, maxLineBytes: i.maxLineBytes ?? 16384 },
  };
}
