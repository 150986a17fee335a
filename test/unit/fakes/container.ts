import { PassThrough, type Writable } from 'node:stream';
import type { InteractiveExec, InteractiveExecOptions, MonitorAttach } from '../../../src/kernel/shim-stream.js';
import type { Logger } from '../../../src/log.js';
import type { CgroupHandle, CgroupResources } from '../../../src/kernel/cgroups.js';
import type { ExecOptions, ExecResult, ShimExit } from '../../../src/kernel/shim.js';
import type { ShimSpec } from '../../../src/kernel/shim-spec.js';
import type { ContainerRuntime, CreatedProcess, ExitWatch } from '../../../src/container/runtime.js';
import type { ContainerCgroups, ContainerImages, ContainerPods, Delay } from '../../../src/container/service.js';
import type { ImageRecord } from '../../../src/image/types.js';
import type { SandboxRecord } from '../../../src/sandbox/types.js';
import { KeyedMutex } from '../../../src/store/locks.js';

// Recording fakes of what the container service drives: the process runtime, cgroups, images, pods, the clock.
// Every call lands in one journal, in the order made; an operation named in `failing` throws instead of acting.

export class Journal {
  readonly calls: string[] = [];
  readonly failing = new Set<string>();
  /** Runs on every call before it acts (a test looks at the world at that moment). */
  onCall: (name: string) => void = () => undefined;

  call(name: string): void {
    this.calls.push(name);
    this.onCall(name);
    if (this.failing.has(name)) throw new Error(`injected failure: ${name}`);
  }

  clear(): void {
    this.calls.length = 0;
  }
}

export const PID = 4100;
export const MONITOR_PID = 4099;

/**
 * The shim and its monitor, simulated: a signal in `fatal` ends the process, and the monitor then writes its
 * exit record and the watch fires, as inotify would.
 */
export class FakeRuntime implements ContainerRuntime {
  readonly exits = new Map<string, ShimExit>();
  readonly watches = new Map<string, () => void>();
  fatal = new Set<NodeJS.Signals>(['SIGTERM', 'SIGKILL']);
  monitorAlive = true;
  /** Bundles whose create() made container.json a directory: the record write that follows fails. */
  spoilRecordWrite = false;
  /** Every spec create() was given, in order. */
  readonly specs: ShimSpec[] = [];

  constructor(private readonly j: Journal) {}

  async create(spec: ShimSpec): Promise<CreatedProcess> {
    this.j.call('runtime.create');
    this.specs.push(spec);
    if (this.spoilRecordWrite) {
      const { mkdir } = await import('node:fs/promises');
      await mkdir(`${spec.bundle}/container.json/x`, { recursive: true });
    }
    return { pid: PID, monitorPid: MONITOR_PID, startTime: 77 };
  }

  async start(): Promise<void> {
    this.j.call('runtime.start');
  }

  signal(pid: number, signal: NodeJS.Signals): void {
    this.j.call(`signal ${pid} ${signal}`);
    if (pid === PID && this.fatal.has(signal)) {
      for (const bundle of this.watches.keys()) this.exit(bundle, 128 + (signal === 'SIGKILL' ? 9 : 15));
    }
  }

  /** The monitor records an exit and the watch on its bundle fires. */
  exit(bundle: string, exitCode: number): void {
    this.exits.set(bundle, { exitCode, signal: 0, startedAt: 5, finishedAt: 6 });
    const fire = this.watches.get(bundle);
    if (fire) setImmediate(fire);
  }

  async readExit(bundle: string): Promise<ShimExit | undefined> {
    return this.exits.get(bundle);
  }

  async readExecError(): Promise<string | undefined> {
    return undefined;
  }

  watchExit(bundle: string, onExit: () => void): ExitWatch {
    this.j.call('runtime.watchExit');
    this.watches.set(bundle, onExit);
    return { close: () => this.watches.delete(bundle) };
  }

  async killShimsOf(): Promise<void> {
    this.j.call('runtime.killShimsOf');
  }

  async isMonitorAlive(): Promise<boolean> {
    return this.monitorAlive;
  }

  /** Every exec's options, in order. */
  readonly execs: ExecOptions[] = [];

  async exec(opts: ExecOptions): Promise<ExecResult> {
    this.j.call('runtime.exec');
    this.execs.push(opts);
    return { stdout: Buffer.from(opts.command.join(' ')), stderr: Buffer.alloc(0), exitCode: 0, timedOut: false };
  }

  /** The options of every interactive exec, in order. */
  readonly interactiveExecs: InteractiveExecOptions[] = [];
  readonly stdinClosed: number[] = [];

  async execInteractive(opts: InteractiveExecOptions): Promise<InteractiveExec> {
    this.j.call('runtime.execInteractive');
    this.interactiveExecs.push(opts);
    const stdout = new PassThrough();
    stdout.end(opts.command.join(' '));
    return { stdin: opts.stdin ? new PassThrough() : null, stdout, stderr: null, resize: () => undefined, wait: async () => 0, kill: () => undefined };
  }

  async attach(bundle: string): Promise<MonitorAttach> {
    this.j.call(`runtime.attach ${bundle}`);
    const output = new PassThrough({ objectMode: true });
    return { output, resize: () => undefined, close: () => output.end(), ended: new Promise((r) => output.on('end', r)) };
  }

  openStdin(bundle: string): Writable {
    this.j.call(`runtime.openStdin ${bundle}`);
    return new PassThrough();
  }

  closeStdin(monitorPid: number): void {
    this.j.call(`runtime.closeStdin ${monitorPid}`);
    this.stdinClosed.push(monitorPid);
  }
}

export class FakeCgroups implements ContainerCgroups {
  /** The resources of each apply, in order. */
  readonly applied: CgroupResources[] = [];
  constructor(private readonly j: Journal) {}

  async create(cgPath: string): Promise<CgroupHandle> {
    this.j.call('cgroup.create');
    return { path: cgPath, created: [`/sys/fs/cgroup/memory${cgPath}`] };
  }
  async remove(): Promise<void> {
    this.j.call('cgroup.remove');
  }
  async apply(_cgPath: string, r: CgroupResources): Promise<void> {
    this.applied.push(r);
    this.j.call('cgroup.apply');
  }
  procsFiles(cgPath: string): string[] {
    return [`/sys/fs/cgroup/memory${cgPath}/cgroup.procs`];
  }
  /** Counted, not journaled: it acquires nothing and has nothing to undo. */
  warmed = 0;
  keepMigrationsWarm(): void {
    this.warmed++;
  }
  async oomKills(): Promise<number> {
    return 0;
  }
  async killAll(): Promise<void> {
    this.j.call('cgroup.killAll');
  }
}

export const IMAGE: ImageRecord = {
  id: 'sha256:feed', repoTags: ['img:1'], repoDigests: [], size: 1, manifestDigest: 'sha256:m', layers: ['sha256:l1'],
  config: { config: { Cmd: ['/bin/app'] } }, pulledAt: 0,
} as ImageRecord;

/** The image's layers are `layerDirs` (top first), empty by default. */
export function fakeImages(j: Journal, layerDirs: string[] = []): ContainerImages {
  return {
    resolve: (name) => (name === 'img:1' ? IMAGE : undefined),
    pinLayers: () => {
      j.call('images.pinLayers');
      return () => j.call('images.unpinLayers');
    },
    layerPaths: () => [...layerDirs].reverse(),
    collectGarbage: async () => j.call('images.collectGarbage'),
  };
}

export const POD: SandboxRecord = {
  id: 'pod1', state: 'READY', createdAt: 0, additionalIps: [], filesDir: '/run/pod/files', shmPath: '/run/pod/shm',
  cgroup: { path: '/kubepods/podu', created: [] },
  namespacePaths: { network: '/run/pod/ns/net', ipc: '/run/pod/ns/ipc', uts: '/run/pod/ns/uts' },
  config: {
    metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 }, hostname: 'p', logDirectory: '', portMappings: [], labels: {},
    annotations: {}, cgroupParent: '', namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' }, privileged: false, sysctls: {}, runtimeHandler: '',
  },
} as SandboxRecord;

export function fakePods(pod: SandboxRecord = POD): ContainerPods {
  return {
    get: (id: string) => {
      if (id !== pod.id) throw new Error(`no pod ${id}`);
      return pod;
    },
    podLock: new KeyedMutex(),
  } as ContainerPods;
}

/** A clock whose waits of `instant` ms elapse at once; every other wait lasts until it is cancelled. */
export class FakeClock {
  readonly waits: number[] = [];

  constructor(private readonly instant: number) {}

  readonly delay: Delay = (ms, signal) => {
    this.waits.push(ms);
    if (ms === this.instant) return Promise.resolve();
    return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('cancelled')), { once: true }));
  };
}

export function recordingLog(): Logger & { lines: { level: string; msg: string; fields?: Record<string, unknown> }[] } {
  const lines: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => void lines.push({ level, msg, fields });
  const log = { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => log };
  return log;
}
