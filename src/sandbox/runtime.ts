import type { OnReadOpts } from 'node:net';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { internal, errorMessage } from '../errors.js';
import { MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, mount, umount2 } from '../kernel/libc.js';
import { createPodNamespaces, isShim, killShims, PodNamespaces, PodVeth, unpinNamespaces } from '../kernel/shim.js';
import { dialInNetns } from '../kernel/shim-stream.js';
import { writeFileNamed } from '../store/atomic.js';
import { writeHostsFile, writePodFiles } from './files.js';
import type { Duplex } from 'node:stream';
import { DnsConfig } from './types.js';

// What the sandbox service asks of the kernel: pinned namespaces (via berth-shim), the pod init, /dev/shm, and the
// pod's files. The service gets it through its options, so that unit tests can pass a recording fake and exercise
// rollback and restart reconciliation without root.

export interface PodNamespaceRequest {
  network: boolean;
  ipc: boolean;
  uts: boolean;
  pid: boolean;
  hostname?: string;
  /** Made by the namespace helper along with the netns. */
  veth?: PodVeth;
}

export interface PodFiles {
  hostname: string;
  dns?: DnsConfig;
  hostNetwork: boolean;
  ip?: string;
}

export interface SandboxRuntime {
  /** The pod's directory under the run directory (pins, /dev/shm). */
  makeRunDir(dir: string): Promise<void>;
  removeRunDir(dir: string): Promise<void>;
  /** The run directories under `parent` (one per pod id), for finding those no record owns after a crash. */
  listRunDirs(parent: string): Promise<string[]>;
  /**
   * Leaves a small note in a pod's run directory of something acquired before the pod has a record (its cgroup,
   * its init), so that a berth that crashed meanwhile can release it. Not synced: the run directory lives on
   * /run, which a host crash clears along with what the note names.
   */
  writeRunNote(dir: string, name: string, value: unknown): Promise<void>;
  /** A note written by writeRunNote; undefined when missing or torn by a crash mid-write. */
  readRunNote<T>(dir: string, name: string): Promise<T | undefined>;
  /** Creates and pins the pod's namespaces under `dir`. */
  createNamespaces(dir: string, want: PodNamespaceRequest): Promise<PodNamespaces>;
  /** Releases whatever is pinned under `dir`; nothing pinned is fine. */
  unpinNamespaces(dir: string): Promise<void>;
  /** True when every pinned namespace file still exists (a reboot clears /run). */
  pinsPresent(paths: string[]): Promise<boolean>;
  /**
   * SIGKILLs every berth-shim process whose command line names the namespace directory `dir`: a `sandbox` command
   * still at work, or the pod init it left, when berth crashed before it learnt the pid. Reads all of /proc: for
   * recovery at start only.
   */
  killShimsOf(dir: string): Promise<void>;
  /** True when `pid` is the pod init berth started (not a reused pid). */
  isInitAlive(pid: number): Promise<boolean>;
  /** SIGKILLs the pod init; one already gone is fine. */
  killInit(pid: number): void;
  mountShm(target: string, sizeBytes: number): Promise<void>;
  /** Detaches the pod's /dev/shm; one not mounted (or gone) is fine. */
  unmountShm(target: string): Promise<void>;
  /** hosts, hostname and resolv.conf in `dir`, made if missing. */
  writePodFiles(dir: string, files: PodFiles): Promise<void>;
  /** Rewrites only /etc/hosts, once the network has given the pod its address. */
  writeHostsFile(dir: string, hostname: string, ip: string): Promise<void>;
  /**
   * A TCP connection to localhost:<port> inside the pinned network namespace (null: the host's); with reads, it
   * reads into reads.buffer and hands each read to reads.callback (net's onread) instead of emitting 'data'.
   */
  dial(netnsPath: string | null, port: number, timeoutMs: number, reads?: OnReadOpts): Promise<Duplex>;
}

/** The real thing: berth-shim for namespaces, mount(2) for /dev/shm, plain files for the rest. */
export const kernelSandboxRuntime: SandboxRuntime = {
  async makeRunDir(dir) {
    await fs.mkdir(dir, { recursive: true, mode: 0o711 });
  },
  async removeRunDir(dir) {
    await fs.rm(dir, { recursive: true, force: true });
  },
  async listRunDirs(parent) {
    const names = await fs.readdir(parent).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [];
      throw err;
    });
    return names.map((n) => path.join(parent, n));
  },
  async writeRunNote(dir, name, value) {
    await writeFileNamed(path.join(dir, `${name}.json`), JSON.stringify(value), 0o600);
  },
  async readRunNote(dir, name) {
    try {
      return JSON.parse(await fs.readFile(path.join(dir, `${name}.json`), 'utf8'));
    } catch {
      return undefined;
    }
  },
  createNamespaces: createPodNamespaces,
  unpinNamespaces,
  async pinsPresent(paths) {
    return (await Promise.all(paths.map((p) => fs.access(p).then(() => true, () => false)))).every(Boolean);
  },
  killShimsOf: (dir) => killShims('sandbox', dir),
  isInitAlive: isShim,
  killInit(pid) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw internal(`killing pod init ${pid}: ${errorMessage(err)}`, err);
    }
  },
  async mountShm(target, sizeBytes) {
    await fs.mkdir(target, { recursive: true, mode: 0o1777 });
    mount('shm', target, 'tmpfs', MS_NOSUID | MS_NODEV | MS_NOEXEC, `mode=1777,size=${sizeBytes}`);
  },
  async unmountShm(target) {
    try {
      umount2(target, MNT_DETACH);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EINVAL' && code !== 'ENOENT') throw err;
    }
  },
  writePodFiles,
  writeHostsFile,
  dial: dialInNetns,
};
