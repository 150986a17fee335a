import { promises as fs } from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { BerthError, errorMessage, failedPrecondition, invalidArgument, notFound } from '../errors.js';
import { Logger } from '../log.js';
import { Cgroups } from '../kernel/cgroups.js';
import { MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, mount, umount2 } from '../kernel/libc.js';
import { createPodNamespaces, isShim, unpinNamespaces } from '../kernel/shim.js';
import { RecordStore } from '../store/records.js';
import { findByIdOrPrefix } from '../lookup.js';
import { KeyedMutex } from '../store/locks.js';
import { readJson, writeJsonAtomic } from '../store/atomic.js';
import { writeHostsFile, writePodFiles } from './files.js';
import { validateSysctls } from './sysctls.js';
import { SandboxConfig, SandboxRecord } from './types.js';
import { LoopbackOnly, PodNetwork, PodNetworkRequest } from '../network/types.js';

// Pod sandboxes without a pause process: the pod's namespaces are pinned by bind mounts under the run directory.
// Only a pod that shares one PID namespace gets a process of its own, the shim's tiny init.

export interface SandboxHooks {
  /** Stops (kills) every container of the pod: StopPodSandbox's contract. */
  stopContainers(sandboxId: string): Promise<void>;
  /** Removes every container of the pod. */
  removeContainers(sandboxId: string): Promise<void>;
}

const loopbackOnly = new LoopbackOnly();

export interface SandboxFilter {
  id?: string;
  state?: 'READY' | 'NOTREADY';
  labels?: Record<string, string>;
}

export class SandboxService {
  private readonly records: RecordStore<SandboxRecord>;
  private readonly sandboxes = new Map<string, SandboxRecord>();
  private readonly names = new Map<string, string>();
  /** Ancestor cgroups berth created for some pod (e.g. /kubepods/burstable) and removes once unused. */
  private ownedParents = new Set<string>();
  /** Pod-level operations (stop, remove, and container creation in the pod) never interleave. */
  readonly podLock = new KeyedMutex();
  private hooks: SandboxHooks = { stopContainers: async () => undefined, removeContainers: async () => undefined };

  constructor(
    private readonly opts: { root: string; stateDir: string; cgroups: Cgroups; log: Logger; shmSizeBytes: number; network?: PodNetwork },
  ) {
    this.records = new RecordStore(path.join(opts.root, 'sandboxes'), 'sandbox.json');
  }

  private get network(): PodNetwork {
    return this.opts.network ?? loopbackOnly;
  }

  private networkRequest(record: SandboxRecord, netnsPath = record.namespacePaths.network ?? ''): PodNetworkRequest {
    const m = record.config.metadata;
    return {
      podId: record.id,
      name: m.name,
      namespace: m.namespace,
      uid: m.uid,
      netnsPath,
      portMappings: record.config.portMappings,
      dns: record.config.dns,
      annotations: record.config.annotations,
    };
  }

  /** Live pods and their network state, for the network backend to reconcile its allocations on start. */
  networkedPods(): { podId: string; state: Record<string, unknown> }[] {
    return [...this.sandboxes.values()].filter((s) => s.networkState).map((s) => ({ podId: s.id, state: s.networkState! }));
  }

  setHooks(hooks: SandboxHooks): void {
    this.hooks = hooks;
  }

  private runDir(id: string): string {
    return path.join(this.opts.stateDir, 'sandboxes', id);
  }

  private static nameKey(c: SandboxConfig): string {
    const m = c.metadata;
    return `${m.name}_${m.namespace}_${m.uid}_${m.attempt}`;
  }

  private get parentsFile(): string {
    return path.join(this.opts.root, 'cgroup-parents.json');
  }

  private async saveParents(): Promise<void> {
    await writeJsonAtomic(this.parentsFile, [...this.ownedParents]);
  }

  /** Re-reads records; a pod whose pinned namespaces vanished (a reboot cleared /run) is NOTREADY. */
  async load(): Promise<void> {
    this.ownedParents = new Set((await readJson<string[]>(this.parentsFile)) ?? []);
    const { records, orphans } = await this.records.loadAll();
    for (const dir of orphans) await fs.rm(dir, { recursive: true, force: true });
    for (const record of records) {
      if (record.state === 'READY') {
        const pins = Object.values(record.namespacePaths);
        const alive = (await Promise.all(pins.map((p) => fs.access(p).then(() => true, () => false)))).every(Boolean);
        const initAlive = record.initPid === undefined || (await isShim(record.initPid));
        if (!alive || !initAlive) {
          this.opts.log.warn('sandbox lost its namespaces while berth was down: marking NOTREADY', { pod: record.id });
          record.state = 'NOTREADY';
          await this.records.put(record);
        }
      }
      this.sandboxes.set(record.id, record);
      this.names.set(SandboxService.nameKey(record.config), record.id);
    }
  }

  get(id: string): SandboxRecord {
    const found = this.find(id);
    if (!found) throw notFound(`pod sandbox "${id}" not found`);
    return found;
  }

  /** By full id or a unique prefix, as crictl accepts. */
  find(id: string): SandboxRecord | undefined {
    return findByIdOrPrefix(this.sandboxes, id, 'pod sandbox');
  }

  list(filter: SandboxFilter = {}): SandboxRecord[] {
    let out = [...this.sandboxes.values()];
    if (filter.id) out = out.filter((s) => s.id.startsWith(filter.id!));
    if (filter.state) out = out.filter((s) => s.state === filter.state);
    if (filter.labels) {
      const wanted = Object.entries(filter.labels);
      out = out.filter((s) => wanted.every(([k, v]) => s.config.labels[k] === v));
    }
    return out;
  }

  async run(config: SandboxConfig): Promise<SandboxRecord> {
    if (!config.metadata.name) throw invalidArgument('config.metadata.name is empty');
    if (config.runtimeHandler && config.runtimeHandler !== 'berth') {
      throw invalidArgument(`runtime_handler "${config.runtimeHandler}" is not known; berth serves "" (the default) and "berth"`);
    }
    validateSysctls(config.sysctls, { hostNetwork: config.namespaces.network === 'NODE', hostIpc: config.namespaces.ipc === 'NODE' });
    const key = SandboxService.nameKey(config);
    const existing = this.names.get(key);
    if (existing) throw new BerthError('already_exists', `a pod sandbox named ${key} already exists (id ${existing})`);
    const id = randomBytes(32).toString('hex');
    const log = this.opts.log.child({ pod: id });
    const hostNetwork = config.namespaces.network === 'NODE';
    const hostIpc = config.namespaces.ipc === 'NODE';
    // Like containerd: no hostname from the client means the node's (pod names are often longer than 64 bytes).
    const hostname = config.hostname || os.hostname();
    if (Buffer.byteLength(hostname) > 64) throw invalidArgument(`config.hostname "${hostname}" is longer than 64 bytes`);
    const started = Date.now();
    const phases: Record<string, number> = {};
    this.names.set(key, id);
    const runDir = this.runDir(id);
    const record: SandboxRecord = {
      id,
      config,
      state: 'READY',
      createdAt: Date.now(),
      namespacePaths: {},
      // Without a parent from kubelet, each pod gets a top-level cgroup: no shared parent for two berths to race on.
      cgroup: { path: config.cgroupParent || `/berth-pod-${id.slice(0, 16)}`, created: [] },
      filesDir: path.join(this.records.pathOf(id), 'files'),
      additionalIps: [],
    };
    const undo: (() => Promise<void>)[] = [];
    try {
      await fs.mkdir(runDir, { recursive: true, mode: 0o711 });
      undo.push(() => fs.rm(runDir, { recursive: true, force: true }));
      const shmPath = hostIpc ? '/dev/shm' : path.join(runDir, 'shm');
      // Independent steps run at once: namespaces, cgroup, pod files and shm are unrelated.
      // Every step is awaited (allSettled) before any undo, so nothing still running escapes the cleanup.
      const timed = <T>(name: string, p: Promise<T>) => p.then((v) => ((phases[name] = Date.now() - started), v));
      // The network is planned first (the embedded bridge takes the address) so that the namespace helper can make
      // the pod's veth along with its netns; the cgroup and /dev/shm do not wait for it.
      const nsDir = path.join(runDir, 'ns');
      const netRequest = this.networkRequest(record, path.join(nsDir, 'net'));
      const planned = hostNetwork ? Promise.resolve(undefined) : timed('networkPlan', this.network.prepare(netRequest));
      let netState: Record<string, unknown> | undefined;
      // Both registered up front: unpinning nothing is a no-op, and a shim killed at its timeout may have pinned.
      // The teardown comes second so that the undo (last in, first out) runs it while the netns still exists.
      undo.push(() => unpinNamespaces(nsDir));
      undo.push(async () => {
        if (netState) await this.network.teardown(netRequest, netState);
      });
      const settled = await Promise.allSettled([
        planned.then((plan) => {
          netState = plan?.state;
          return timed('namespaces', createPodNamespaces(nsDir, {
            network: !hostNetwork,
            ipc: !hostIpc,
            uts: !hostNetwork,
            pid: config.namespaces.pid === 'POD',
            hostname,
            veth: plan?.veth,
          }));
        }),
        timed('cgroup', this.opts.cgroups.create(record.cgroup.path).then((handle) => {
          undo.push(() => this.opts.cgroups.remove(handle));
          return handle;
        })),
        planned.then((plan) => writePodFiles(record.filesDir, { hostname, dns: config.dns, hostNetwork, ip: plan?.ip })),
        hostIpc ? Promise.resolve() : this.mountShm(shmPath).then(() => undo.push(() => this.unmountShm(shmPath))),
      ] as const);
      for (const r of settled) if (r.status === 'rejected') throw r.reason;
      const netPlan = await planned;
      const namespaces = (settled[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof createPodNamespaces>>>).value;
      const cgroup = (settled[1] as PromiseFulfilledResult<Awaited<ReturnType<Cgroups['create']>>>).value;
      // The pod owns only its own directories; ancestors it happened to create are shared with later pods.
      const own = cgroup.created.filter((d) => d.endsWith(cgroup.path));
      const parents = cgroup.created.filter((d) => !own.includes(d));
      record.cgroup = { path: cgroup.path, created: own };
      if (parents.length > 0) {
        for (const d of parents) this.ownedParents.add(d);
        await this.saveParents();
      }
      record.shmPath = shmPath;
      if (namespaces.network) record.namespacePaths.network = namespaces.network;
      if (namespaces.ipc) record.namespacePaths.ipc = namespaces.ipc;
      if (namespaces.uts) record.namespacePaths.uts = namespaces.uts;
      if (namespaces.pid) {
        record.namespacePaths.pid = namespaces.pid;
        record.initPid = namespaces.initPid;
        // The init stays out of the pod's cgroup: on cgroup v2 a cgroup with a process of its own cannot hand
        // controllers down to its containers' cgroups (the no-internal-process rule).
      }
      if (netPlan && record.namespacePaths.network) {
        const net = await timed('network', this.network.setup(netRequest, netPlan));
        record.ip = net.ip || undefined;
        record.additionalIps = net.additionalIps;
        record.networkState = netState = net.state;
        // The embedded network's address was known before the files were written; a CNI plugin's comes only now.
        if (record.ip && record.ip !== netPlan.ip) await writeHostsFile(record.filesDir, hostname, record.ip);
      }
      await this.records.put(record);
    } catch (err) {
      this.names.delete(key);
      if (record.initPid) process.kill(record.initPid, 'SIGKILL');
      for (const step of undo.reverse()) await step().catch((e) => log.warn('undo failed', { error: errorMessage(e) }));
      await fs.rm(this.records.pathOf(id), { recursive: true, force: true });
      throw err;
    }
    this.sandboxes.set(id, record);
    log.info('pod sandbox running', { name: config.metadata.name, namespace: config.metadata.namespace, ms: Date.now() - started, phases });
    return record;
  }

  private async mountShm(target: string): Promise<void> {
    await fs.mkdir(target, { recursive: true, mode: 0o1777 });
    mount('shm', target, 'tmpfs', MS_NOSUID | MS_NODEV | MS_NOEXEC, `mode=1777,size=${this.opts.shmSizeBytes}`);
  }

  private async unmountShm(target: string): Promise<void> {
    try {
      umount2(target, MNT_DETACH);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EINVAL' && code !== 'ENOENT') throw err;
    }
  }

  /** Kills the pod's containers and releases its namespaces. Idempotent. */
  async stop(id: string): Promise<void> {
    const found = this.get(id);
    return this.podLock.run(found.id, async () => {
      // A remove may have finished while this stop waited: writing the record now would bring the pod back.
      const record = this.sandboxes.get(found.id);
      if (record) await this.stopLocked(record);
    });
  }

  private async stopLocked(record: SandboxRecord): Promise<void> {
    await this.hooks.stopContainers(record.id);
    const tornDown = await this.release(record);
    if (record.state !== 'NOTREADY' || tornDown) {
      const stopping = record.state !== 'NOTREADY';
      record.state = 'NOTREADY';
      await this.records.put(record);
      if (stopping) this.opts.log.info('pod sandbox stopped', { pod: record.id });
    }
  }

  /**
   * Kills the pod init, tears the network down, unpins the namespaces. Returns whether the network was torn down:
   * the caller writes the record once (a crash before that write only repeats an idempotent teardown).
   */
  private async release(record: SandboxRecord): Promise<boolean> {
    if (record.initPid && (await isShim(record.initPid))) {
      try {
        process.kill(record.initPid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    const tornDown = record.networkState !== undefined;
    if (record.networkState) {
      await this.network.teardown(this.networkRequest(record), record.networkState);
      record.networkState = undefined;
    }
    const runDir = this.runDir(record.id);
    await unpinNamespaces(path.join(runDir, 'ns'));
    if (record.shmPath && record.shmPath !== '/dev/shm') await this.unmountShm(record.shmPath);
    return tornDown;
  }

  /** Removes the pod and everything it holds. Removing an unknown pod is not an error. */
  async remove(id: string): Promise<void> {
    const found = this.find(id);
    if (!found) return;
    return this.podLock.run(found.id, async () => {
      // Another remove may have finished while this one waited.
      const record = this.sandboxes.get(found.id);
      if (record) await this.removeLocked(record);
    });
  }

  private async removeLocked(record: SandboxRecord): Promise<void> {
    // Removing a container stops it first if it still runs.
    await this.hooks.removeContainers(record.id);
    await this.release(record);
    try {
      await this.opts.cgroups.remove({ path: record.cgroup.path, created: record.cgroup.created });
    } catch (err) {
      if (err instanceof BerthError && err.kind === 'failed_precondition') {
        throw failedPrecondition(`pod sandbox ${record.id}: its cgroup still holds processes: ${err.message}`);
      }
      throw err;
    }
    if (this.ownedParents.size > 0) {
      this.ownedParents = new Set(await this.opts.cgroups.removeIfUnused([...this.ownedParents]));
      await this.saveParents();
    }
    await fs.rm(this.runDir(record.id), { recursive: true, force: true });
    await this.records.delete(record.id);
    this.sandboxes.delete(record.id);
    this.names.delete(SandboxService.nameKey(record.config));
    this.opts.log.info('pod sandbox removed', { pod: record.id });
  }
}
