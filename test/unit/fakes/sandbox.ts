import { PassThrough, type Duplex } from 'node:stream';
import type { Logger } from '../../../src/log.js';
import type { CgroupHandle } from '../../../src/kernel/cgroups.js';
import type { SandboxCgroups } from '../../../src/sandbox/service.js';
import type { PodNamespaces } from '../../../src/kernel/shim.js';
import type { PodFiles, PodNamespaceRequest, SandboxRuntime } from '../../../src/sandbox/runtime.js';
import type { SandboxHooks } from '../../../src/sandbox/service.js';
import type { NetworkReadiness, PodNetwork, PodNetworkPlan, PodNetworkRequest, PodNetworkResult } from '../../../src/network/types.js';

// Recording fakes of what the sandbox service drives (runtime, cgroups, network, the container service). Every
// call lands in one shared journal, in the order made; an operation named in `failing` throws instead of acting.
// Acquisitions also journal `done:<name>` as they return, so that a test can tell sequential steps from
// concurrent ones.

export class Journal {
  readonly calls: string[] = [];
  readonly failing = new Set<string>();

  /** Journals `name`; throws when it is set to fail. */
  call(name: string): void {
    this.calls.push(name);
    if (this.failing.has(name)) throw new Error(`injected failure: ${name}`);
  }

  /** An acquisition: journaled when called and, unless it fails, when done. */
  async acquire<T>(name: string, result: T): Promise<T> {
    this.call(name);
    await Promise.resolve();
    this.calls.push(`done:${name}`);
    return result;
  }

  /** The journal without the `done:` marks. */
  get ops(): string[] {
    return this.calls.filter((c) => !c.startsWith('done:'));
  }

  clear(): void {
    this.calls.length = 0;
  }
}

export const INIT_PID = 4242;

export class FakeSandboxRuntime implements SandboxRuntime {
  /** What pinsPresent and isInitAlive answer (restart reconciliation). */
  pinned = true;
  initAlive = true;

  constructor(private readonly j: Journal) {}

  /** The (netns, port) of every dial, in order. */
  readonly dials: [string | null, number][] = [];

  async dial(netnsPath: string | null, port: number): Promise<Duplex> {
    this.j.call(`runtime.dial ${netnsPath ?? 'host'} ${port}`);
    this.dials.push([netnsPath, port]);
    return new PassThrough();
  }

  makeRunDir(): Promise<void> {
    return this.j.acquire('makeRunDir', undefined);
  }
  async removeRunDir(dir: string): Promise<void> {
    this.j.call('removeRunDir');
    this.runDirs.delete(dir);
  }
  /** Run directories left by a crash, as listRunDirs finds them, with their notes. */
  readonly runDirs = new Map<string, Map<string, unknown>>();
  async listRunDirs(): Promise<string[]> {
    return [...this.runDirs.keys()];
  }
  async writeRunNote(dir: string, name: string, value: unknown): Promise<void> {
    const notes = this.runDirs.get(dir) ?? new Map<string, unknown>();
    notes.set(name, value);
    this.runDirs.set(dir, notes);
  }
  async readRunNote<T>(dir: string, name: string): Promise<T | undefined> {
    return this.runDirs.get(dir)?.get(name) as T | undefined;
  }
  createNamespaces(dir: string, want: PodNamespaceRequest): Promise<PodNamespaces> {
    const ns: PodNamespaces = {};
    if (want.network) ns.network = `${dir}/net`;
    if (want.ipc) ns.ipc = `${dir}/ipc`;
    if (want.uts) ns.uts = `${dir}/uts`;
    if (want.pid) {
      ns.pid = `${dir}/pid`;
      ns.initPid = INIT_PID;
    }
    return this.j.acquire('createNamespaces', ns);
  }
  async unpinNamespaces(): Promise<void> {
    this.j.call('unpinNamespaces');
  }
  async pinsPresent(): Promise<boolean> {
    this.j.call('pinsPresent');
    return this.pinned;
  }
  async killShimsOf(): Promise<void> {
    this.j.call('killShimsOf');
  }
  async isInitAlive(): Promise<boolean> {
    this.j.call('isInitAlive');
    return this.initAlive;
  }
  killInit(): void {
    this.j.call('killInit');
  }
  mountShm(): Promise<void> {
    return this.j.acquire('mountShm', undefined);
  }
  async unmountShm(): Promise<void> {
    this.j.call('unmountShm');
  }
  writePodFiles(_dir: string, _files: PodFiles): Promise<void> {
    return this.j.acquire('writePodFiles', undefined);
  }
  writeHostsFile(): Promise<void> {
    return this.j.acquire('writeHostsFile', undefined);
  }
}

export class FakeCgroups implements SandboxCgroups {
  constructor(private readonly j: Journal) {}

  create(cgPath: string): Promise<CgroupHandle> {
    return this.j.acquire('cgroups.create', { path: cgPath, created: [`/sys/fs/cgroup/memory${cgPath}`] });
  }
  async remove(): Promise<void> {
    this.j.call('cgroups.remove');
  }
  procsFiles(cgPath: string): string[] {
    return [`/sys/fs/cgroup/memory${cgPath}/cgroup.procs`];
  }
  /** Counted, not journaled: it acquires nothing and has nothing to undo. */
  warmed = 0;
  keepMigrationsWarm(): void {
    this.warmed++;
  }
  async removeIfUnused(dirs: string[]): Promise<string[]> {
    this.j.call('cgroups.removeIfUnused');
    return dirs;
  }
}

/** A network whose plan has one address and whose setup reports another (as a CNI plugin would). */
export class FakeNetwork implements PodNetwork {
  /** The state each teardown was given, by its `stage`. */
  readonly tornDown: string[] = [];

  constructor(private readonly j: Journal) {}

  async start(): Promise<void> {}
  prepare(): Promise<PodNetworkPlan> {
    return this.j.acquire('network.prepare', { backend: 'embedded', ip: '10.0.0.2', state: { backend: 'fake', stage: 'planned' } });
  }
  setup(_req: PodNetworkRequest, _plan: PodNetworkPlan): Promise<PodNetworkResult> {
    return this.j.acquire('network.setup', { ip: '10.0.0.3', additionalIps: [], state: { backend: 'fake', stage: 'set up' } });
  }
  async teardown(_req: PodNetworkRequest, state: Record<string, unknown>): Promise<void> {
    this.j.call('network.teardown');
    this.tornDown.push(String(state.stage));
  }
  readiness(): NetworkReadiness {
    return { ready: true, reason: '', message: '' };
  }
  setPodCidr(): void {}
  async close(): Promise<void> {}
}

export class FakeContainers implements SandboxHooks {
  constructor(private readonly j: Journal) {}

  async stopContainers(): Promise<void> {
    this.j.call('containers.stop');
  }
  async removeContainers(): Promise<void> {
    this.j.call('containers.remove');
  }
}

export interface LogLine {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

/** A logger that keeps every line with the fields of its children (pod ids). */
export function recordingLog(lines: LogLine[] = [], base: Record<string, unknown> = {}): Logger & { lines: LogLine[] } {
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => void lines.push({ level, msg, fields: { ...base, ...fields } });
  return {
    lines,
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (fields) => recordingLog(lines, { ...base, ...fields }),
  };
}
