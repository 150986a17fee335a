// A minimal container rootfs from Debian's busybox-static, a builder for berth-shim's spec.json (the schema
// is documented in native/README.md), and a harness that runs containers with native/build/berth-shim.
import { execFile, spawn } from 'node:child_process';
import {
  closeSync, constants as fsc, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync,
  writeSync,
} from 'node:fs';
import { chmod, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { pidAlive, waitFor, type WaitOptions } from './util.js';

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

// The spec types are berth's own (src/kernel/shim-spec.ts): the tests drive the shim with exactly what berth sends.
import type { NamespaceType, ShimCapabilities, ShimDevice, ShimMount, ShimSpec } from '../../src/kernel/shim-spec.js';
export type { ShimCapabilities, ShimDevice, ShimMount, ShimSpec };
export type ShimNamespaceType = NamespaceType;
export type IdMapping = NonNullable<ShimSpec['uidMappings']>[number];
export type SeccompProfile = NonNullable<ShimSpec['seccomp']>;

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

// ---- running containers with berth-shim ----

/** The shim tests watch processes and files that change within milliseconds of a signal: poll tightly. */
export const SHIM_POLL: WaitOptions = { intervalMs: 10 };

/** Lines of /proc/self/mountinfo whose mount point is under dir. */
export function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4]?.startsWith(dir));
}

export interface Exit {
  exitCode: number;
  signal: number;
  startedAt: number;
  finishedAt: number;
  oomKilled: boolean;
}

export interface LogRecord {
  time: string;
  stream: 'stdout' | 'stderr';
  tag: 'P' | 'F';
  content: string;
}

const CRI_LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) ([PF]) (.*)$/s;

export function parseLog(file: string): LogRecord[] {
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  if (text === '') return [];
  if (!text.endsWith('\n')) throw new Error(`log ${file} does not end in a newline`);
  return text
    .slice(0, -1)
    .split('\n')
    .map((l) => {
      const m = CRI_LINE.exec(l);
      if (!m) throw new Error(`not a CRI log line: ${JSON.stringify(l.slice(0, 200))}`);
      return { time: m[1]!, stream: m[2] as 'stdout' | 'stderr', tag: m[3] as 'P' | 'F', content: m[4]! };
    });
}

/** Full lines of one stream (P records joined to their F). */
export function lines(records: LogRecord[], stream: 'stdout' | 'stderr'): string[] {
  const out: string[] = [];
  let cur = '';
  for (const r of records.filter((x) => x.stream === stream)) {
    cur += r.content;
    if (r.tag === 'F') {
      out.push(cur);
      cur = '';
    }
  }
  return out;
}

/** berth-shim with these arguments; resolves with its exit code (128+signal when killed) and output. */
export function shim(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(SHIM, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code: code ?? 128 + (signal ? os.constants.signals[signal] : 0), stdout, stderr }));
  });
}

/** Where a test file's containers live: its temp dir, the lower layer, and every pid it started. */
export interface ShimEnv {
  tmp: string;
  lower: string;
  started: Set<number>;
}

const execFileP = promisify(execFile);

/** One container over an overlay of env.lower: bundle, upper, work, merged and log under a fresh dir. */
export class Container {
  readonly dir: string;
  readonly bundle: string;
  readonly log: string;
  pid = 0;
  monitorPid = 0;

  constructor(readonly env: ShimEnv, readonly name: string) {
    this.dir = mkdtempSync(path.join(env.tmp, `${name}-`));
    this.bundle = path.join(this.dir, 'bundle');
    this.log = path.join(this.dir, 'log', `${name}.log`);
    for (const d of ['bundle', 'upper', 'work', 'merged', 'log']) mkdirSync(path.join(this.dir, d));
  }

  spec(over: Partial<SpecInput> & { args: string[] }, mutate?: (s: ShimSpec) => void): this {
    const spec = buildSpec({
      id: this.name,
      bundle: this.bundle,
      rootPath: path.join(this.dir, 'merged'),
      overlay: { lower: [this.env.lower], upper: path.join(this.dir, 'upper'), work: path.join(this.dir, 'work') },
      logPath: this.log,
      ...over,
    });
    mutate?.(spec);
    writeFileSync(path.join(this.bundle, 'spec.json'), JSON.stringify(spec));
    return this;
  }

  async create(): Promise<void> {
    const { stdout } = await execFileP(SHIM, ['create', this.bundle]);
    const res = JSON.parse(stdout) as { pid: number; monitorPid: number };
    this.pid = res.pid;
    this.monitorPid = res.monitorPid;
    this.env.started.add(res.pid);
    this.env.started.add(res.monitorPid);
  }

  /** What berth does for StartContainer: one byte into start.fifo, never blocking. */
  start(): void {
    const fd = openSync(path.join(this.bundle, 'start.fifo'), fsc.O_WRONLY | fsc.O_NONBLOCK);
    try {
      writeSync(fd, 'x');
    } finally {
      closeSync(fd);
    }
  }

  async exit(ms = 15000): Promise<Exit> {
    const file = path.join(this.bundle, 'exit.json');
    await waitFor(`exit.json of ${this.name}`, () => existsSync(file), { ...SHIM_POLL, timeoutMs: ms });
    await waitFor(`monitor ${this.monitorPid} to exit`, () => !pidAlive(this.monitorPid), { ...SHIM_POLL, timeoutMs: ms });
    return JSON.parse(readFileSync(file, 'utf8')) as Exit;
  }

  async run(
    over: Partial<SpecInput> & { args: string[] },
    mutate?: (s: ShimSpec) => void,
  ): Promise<{ exit: Exit; records: LogRecord[] }> {
    this.spec(over, mutate);
    await this.create();
    this.start();
    const exit = await this.exit();
    return { exit, records: parseLog(this.log) };
  }

  /** Created and started, running args[0] (waits until the init has exec'd it). */
  async running(over: Partial<SpecInput> & { args: string[] }, mutate?: (s: ShimSpec) => void): Promise<void> {
    this.spec(over, mutate);
    await this.create();
    this.start();
    const want = over.args[0]!;
    await waitFor(`${want} to run`, () => readFileSync(`/proc/${this.pid}/cmdline`, 'utf8').startsWith(want), SHIM_POLL);
  }

  async destroy(): Promise<void> {
    if (this.pid && pidAlive(this.pid)) process.kill(this.pid, 'SIGKILL');
    if (this.monitorPid) await waitFor(`monitor ${this.monitorPid} to exit`, () => !pidAlive(this.monitorPid), SHIM_POLL);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Run fn with a fresh container and always destroy it (and check that it left no mount). */
export async function withContainer(env: ShimEnv, name: string, fn: (c: Container) => Promise<void>): Promise<void> {
  const c = new Container(env, name);
  try {
    await fn(c);
  } finally {
    await c.destroy();
    if (mountsUnder(c.dir).length) throw new Error(`mounts left under ${c.dir}: ${mountsUnder(c.dir).join('\n')}`);
  }
}
