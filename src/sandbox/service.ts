import type { OnReadOpts } from 'node:net';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { BerthError, errorMessage, failedPrecondition, invalidArgument, notFound } from '../errors.js';
import { Logger } from '../log.js';
import type { CgroupHandle } from '../kernel/cgroups.js';
import type { CgroupPort } from '../kernel/cgroup-port.js';
import type { PodNamespaces } from '../kernel/shim.js';
import { RecordStore } from '../store/records.js';
import { withUndo } from '../store/undo.js';
import { PhaseTimer } from '../phases.js';
import { faultPoint } from '../fault.js';
import { filterRecords, findByIdOrPrefix, NameIndex, RecordFilter } from '../lookup.js';
import { KeyedMutex } from '../store/locks.js';
import { readJson, writeJsonAtomic } from '../store/atomic.js';
import { validateSysctls } from './sysctls.js';
import { SandboxRuntime } from './runtime.js';
import { PodResources, SANDBOX_TRANSITIONS, SandboxConfig, SandboxRecord } from './types.js';
import { LoopbackOnly, PodNetwork, PodNetworkRequest } from '../network/types.js';
import type { Duplex } from 'node:stream';

/** What RunPodSandbox notes of the network it planned, for releasing it if berth crashes before the record. */
interface NetworkNote {
  request: PodNetworkRequest;
  state: Record<string, unknown>;
}

/** The pod cgroup RunPodSandbox is making; `created: []` once it turned out to exist already (not berth's). */
interface CgroupNote {
  path: string;
  created?: [];
}

/** The cgroup operations a pod needs: its own cgroup, and its parents once unused. */
export type SandboxCgroups = Pick<CgroupPort, 'create' | 'remove' | 'removeIfUnused' | 'procsFiles' | 'keepMigrationsWarm'>;

// Pod sandboxes without a pause process: the pod's namespaces are pinned by bind mounts under the run directory.
// Only a pod that shares one PID namespace gets a process of its own, the shim's tiny init.

/** What the sandbox service asks of the container service. */
export interface SandboxHooks {
  /** Stops (kills) every container of the pod: StopPodSandbox's contract. */
  stopContainers(sandboxId: string): Promise<void>;
  /** Removes every container of the pod. */
  removeContainers(sandboxId: string): Promise<void>;
}

export interface SandboxServiceOptions {
  root: string;
  stateDir: string;
  log: Logger;
  shmSizeBytes: number;
  /** Namespaces, the pod init, /dev/shm and pod files (kernelSandboxRuntime outside tests). */
  runtime: SandboxRuntime;
  cgroups: SandboxCgroups;
  /** The pods' containers, stopped and removed with their pod. */
  containers: SandboxHooks;
  network?: PodNetwork;
  /**
   * Refuses pod annotations its containers would be refused for (resource limits beyond CRI), so that the pod
   * fails at RunPodSandbox with nothing made rather than at each CreateContainer.
   */
  checkAnnotations?: (annotations: Record<string, string>) => void;
  /** Hears every change of a pod record (the event stream, metrics): see RecordStoreOptions.onChange. */
  onRecordChange?: (before: Readonly<SandboxRecord> | undefined, after: Readonly<SandboxRecord> | undefined) => void;
}

const loopbackOnly = new LoopbackOnly();
/** A port-forward connection that is not made within this long fails on its error stream. */
const DIAL_TIMEOUT_MS = 10_000;
/**
 * How long after a pod's cgroup is made container inits joining theirs find the kernel's fast path: kubelet's
 * CreateContainer follows RunPodSandbox at once when the image is present (a pull in between outlasts it, and
 * CreateContainer starts its own window).
 */
const POD_START_WARM_MS = 1000;

export type SandboxFilter = RecordFilter<SandboxRecord['state']>;

/** The pod records under <root>/sandboxes, with the pod state machine. */
export function sandboxRecordStore(root: string, onChange?: SandboxServiceOptions['onRecordChange']): RecordStore<SandboxRecord> {
  return new RecordStore<SandboxRecord>(path.join(root, 'sandboxes'), 'sandbox.json', { stateOf: (r) => r.state, transitions: SANDBOX_TRANSITIONS, onChange });
}

export class SandboxService {
  private readonly records: RecordStore<SandboxRecord>;
  /** name key -> pod id: a name is taken from the moment a RunPodSandbox for it begins. */
  private readonly names = new NameIndex();
  /** Ancestor cgroups berth created for some pod (e.g. /kubepods/burstable) and removes once unused. */
  private ownedParents = new Set<string>();
  /** Pod-level operations (stop, remove, and container creation in the pod) never interleave. */
  readonly podLock = new KeyedMutex();

  constructor(private readonly opts: SandboxServiceOptions) {
    this.records = sandboxRecordStore(opts.root, opts.onRecordChange);
  }

  private get network(): PodNetwork {
    return this.opts.network ?? loopbackOnly;
  }

  private get runtime(): SandboxRuntime {
    return this.opts.runtime;
  }

  private networkRequest(record: Readonly<SandboxRecord>, netnsPath = record.namespacePaths.network ?? ''): PodNetworkRequest {
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
    return this.records.values().filter((s) => s.networkState).map((s) => ({ podId: s.id, state: s.networkState! }));
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
    for (let record of records) {
      if (record.state === 'READY') {
        const pinned = await this.runtime.pinsPresent(Object.values(record.namespacePaths));
        const initAlive = record.initPid === undefined || (await this.runtime.isInitAlive(record.initPid));
        if (!pinned || !initAlive) {
          this.opts.log.warn('sandbox lost its namespaces while berth was down: marking NOTREADY', { pod: record.id });
          record = await this.records.update(record.id, (r) => ({ ...r, state: 'NOTREADY' }));
        }
      }
      this.names.reserve(SandboxService.nameKey(record.config), record.id);
    }
  }

  /**
   * Releases what a RunPodSandbox that berth crashed in left behind: a run directory with no pod record. Its notes
   * name the cgroup and network the creation had acquired; the namespace pins and /dev/shm are in the directory
   * itself, and the pod init names it in its command line. Called once the network backend has loaded, as the network teardown needs it.
   */
  async releaseInterrupted(): Promise<void> {
    for (const dir of await this.runtime.listRunDirs(path.join(this.opts.stateDir, 'sandboxes'))) {
      const id = path.basename(dir);
      if (this.records.has(id)) continue;
      const log = this.opts.log.child({ pod: id });
      log.warn('releasing what a pod creation interrupted by a crash left behind');
      try {
        // The pod init (or the shim still making the namespaces) names the directory in its command line.
        await this.runtime.killShimsOf(path.join(dir, 'ns'));
        const net = await this.runtime.readRunNote<NetworkNote>(dir, 'network');
        // Torn down while the netns is still pinned, as a normal stop does.
        if (net) await this.network.teardown(net.request, net.state);
        await this.runtime.unpinNamespaces(path.join(dir, 'ns'));
        await this.runtime.unmountShm(path.join(dir, 'shm'));
        const cgroup = await this.runtime.readRunNote<CgroupNote>(dir, 'cgroup');
        // Only the pod's own directories (ancestors made along the way may be shared with other pods by now), and
        // only if they hold nothing: no container of this pod can exist, as the pod never had a record.
        if (cgroup && !cgroup.created) await this.opts.cgroups.removeIfUnused(this.opts.cgroups.procsFiles(cgroup.path).map((f) => path.dirname(f)));
        await this.runtime.removeRunDir(dir);
      } catch (err) {
        // Left for the next start (or berth doctor); serving the pods that do exist matters more.
        log.error('cannot release an interrupted pod creation', { error: errorMessage(err) });
      }
    }
  }

  get(id: string): Readonly<SandboxRecord> {
    const found = this.find(id);
    if (!found) throw notFound(`pod sandbox "${id}" not found`);
    return found;
  }

  /** By full id or a unique prefix, as crictl accepts. */
  find(id: string): Readonly<SandboxRecord> | undefined {
    return findByIdOrPrefix(this.records, id, 'pod sandbox');
  }

  /**
   * kubectl port-forward: a connection to localhost:<port> in the pod's network namespace (the host's for a
   * host-network pod), made by a process of its own: berth's threads never enter a pod's namespace.
   */
  async dial(id: string, port: number, signal: AbortSignal, reads?: OnReadOpts): Promise<Duplex> {
    const record = this.get(id);
    if (record.state !== 'READY') throw failedPrecondition(`pod sandbox ${record.id} is not ready`);
    const netns = record.config.namespaces.network === 'NODE' ? null : record.namespacePaths.network;
    if (netns === undefined) throw failedPrecondition(`pod sandbox ${record.id} has no network namespace`);
    const connection = await this.runtime.dial(netns, port, DIAL_TIMEOUT_MS, reads);
    // The client left while the connection was being made: it has no one to serve.
    if (signal.aborted) {
      connection.destroy();
      throw failedPrecondition(`port-forward to ${record.id}:${port}: the client went away`);
    }
    return connection;
  }

  list(filter: SandboxFilter = {}): Readonly<SandboxRecord>[] {
    return filterRecords(this.records.values(), filter);
  }

  /**
   * UpdatePodSandboxResources: kubelet has already resized the pod cgroup, so this records what it says, for status
   * and stats limits, and changes nothing in the kernel. Serialised with stop and remove of the same pod.
   */
  async recordResources(id: string, podResources: PodResources | undefined): Promise<void> {
    const found = this.get(id);
    await this.podLock.run(found.id, async () => {
      if (!this.records.has(found.id)) throw notFound(`pod sandbox "${id}" not found`);
      await this.records.update(found.id, (r) => ({ ...r, config: { ...r.config, podResources } }));
    });
    this.opts.log.info('pod resources recorded', { pod: found.id, resources: podResources });
  }

  async run(config: SandboxConfig): Promise<Readonly<SandboxRecord>> {
    if (!config.metadata.name) throw invalidArgument('config.metadata.name is empty');
    this.opts.checkAnnotations?.(config.annotations);
    if (config.runtimeHandler && config.runtimeHandler !== 'berth') {
      throw invalidArgument(`runtime_handler "${config.runtimeHandler}" is not known; berth serves "" (the default) and "berth"`);
    }
    validateSysctls(config.sysctls, { hostNetwork: config.namespaces.network === 'NODE', hostIpc: config.namespaces.ipc === 'NODE' });
    const key = SandboxService.nameKey(config);
    const existing = this.names.holder(key);
    if (existing) throw new BerthError('already_exists', `a pod sandbox named ${key} already exists (id ${existing})`);
    const id = randomBytes(32).toString('hex');
    const log = this.opts.log.child({ pod: id });
    const hostNetwork = config.namespaces.network === 'NODE';
    const hostIpc = config.namespaces.ipc === 'NODE';
    // Like containerd: no hostname from the client means the node's (pod names are often longer than 64 bytes).
    const hostname = config.hostname || os.hostname();
    if (Buffer.byteLength(hostname) > 64) throw invalidArgument(`config.hostname "${hostname}" is longer than 64 bytes`);
    const timer = new PhaseTimer();
    const timed = <T>(name: string, work: Promise<T>) => timer.timed(name, work);
    const runtime = this.runtime;
    const runDir = this.runDir(id);
    const nsDir = path.join(runDir, 'ns');
    // A draft until records.create makes it the pod's record (frozen from then on).
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
    const netRequest = this.networkRequest(record, path.join(nsDir, 'net'));
    const created = await withUndo(log, async (undo) => {
      this.names.reserve(key, id);
      undo.push('release pod name', () => this.names.release(key));
      faultPoint('pod.run.name');
      // Registered before anything is written there: the pod files and the record itself live in this directory.
      undo.push('remove pod state directory', () => this.records.delete(id));
      await runtime.makeRunDir(runDir);
      undo.push('remove pod run directory', () => runtime.removeRunDir(runDir));
      faultPoint('pod.run.rundir');
      // Registered before the attempt: unpinning nothing is a no-op, and a shim killed at its timeout may have pinned.
      undo.push('unpin pod namespaces', () => runtime.unpinNamespaces(nsDir));
      const shmPath = hostIpc ? '/dev/shm' : path.join(runDir, 'shm');
      // The network is planned first (the embedded bridge takes the address) so that the namespace helper can make
      // the pod's veth along with its netns; the cgroup and /dev/shm do not wait for it. The plan's undo is
      // registered after the unpin, so that it runs while the netns still exists; it tears down whatever the
      // network holds by then (the plan's allocations, or what setup made).
      let netState: Record<string, unknown> | undefined;
      const planned = hostNetwork
        ? Promise.resolve(undefined)
        : timed('networkPlan', this.network.prepare(netRequest)).then((plan) => {
            netState = plan.state;
            undo.push('tear down pod network', () => this.network.teardown(netRequest, netState!));
            return runtime.writeRunNote(runDir, 'network', { request: netRequest, state: plan.state } satisfies NetworkNote).then(() => {
              faultPoint('pod.run.network-plan');
              return plan;
            });
          });
      // Independent steps run at once: namespaces, cgroup, pod files and shm are unrelated. Each registers its undo
      // as it completes, and every step is awaited (allSettled) before any undo runs, so nothing escapes the cleanup.
      const settled = await Promise.allSettled([
        planned
          .then((plan) =>
            timed('namespaces', runtime.createNamespaces(nsDir, {
              network: !hostNetwork,
              ipc: !hostIpc,
              uts: !hostNetwork,
              pid: config.namespaces.pid === 'POD',
              hostname,
              veth: plan?.veth,
            })),
          )
          .then((namespaces) => {
            const initPid = namespaces.initPid;
            if (initPid !== undefined) undo.push('kill pod init', () => runtime.killInit(initPid));
            faultPoint('pod.run.namespaces');
            return namespaces;
          }),
        // Noted before it is made: a crash right after the mkdir must still find it. A cgroup that already existed
        // (kubelet's pod cgroup) is noted again as not berth's, so that a crash then leaves it alone.
        runtime
          .writeRunNote(runDir, 'cgroup', { path: record.cgroup.path } satisfies CgroupNote)
          .then(() => timed('cgroup', this.opts.cgroups.create(record.cgroup.path)))
          .then(async (handle) => {
            undo.push('remove pod cgroup', () => this.opts.cgroups.remove(handle));
            // The pod's containers (and its init) join their cgroups next: the kernel's wait for that starts now, after
            // this pod's mkdirs (the warm-up holds the cgroup mutex while it waits), and overlaps the rest of the pod.
            this.opts.cgroups.keepMigrationsWarm(POD_START_WARM_MS);
            const own = handle.created.filter((d) => d.endsWith(handle.path));
            if (own.length === 0) await runtime.writeRunNote(runDir, 'cgroup', { path: handle.path, created: [] } satisfies CgroupNote);
            faultPoint('pod.run.cgroup');
            return handle;
          }),
        planned
          .then((plan) => runtime.writePodFiles(record.filesDir, { hostname, dns: config.dns, hostNetwork, ip: plan?.ip }))
          .then(() => faultPoint('pod.run.files')),
        hostIpc
          ? Promise.resolve()
          : runtime.mountShm(shmPath, this.opts.shmSizeBytes).then(() => {
              undo.push('unmount pod /dev/shm', () => runtime.unmountShm(shmPath));
              faultPoint('pod.run.shm');
            }),
      ] as const);
      for (const r of settled) if (r.status === 'rejected') throw r.reason;
      const netPlan = await planned;
      const namespaces = (settled[0] as PromiseFulfilledResult<PodNamespaces>).value;
      const cgroup = (settled[1] as PromiseFulfilledResult<CgroupHandle>).value;
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
        // A failed setup undoes itself only in part: the teardown registered with the plan removes the rest.
        const net = await timed('network', this.network.setup(netRequest, netPlan));
        record.ip = net.ip || undefined;
        record.additionalIps = net.additionalIps;
        record.networkState = netState = net.state;
        // The embedded network's address was known before the files were written; a CNI plugin's comes only now.
        if (record.ip && record.ip !== netPlan.ip) await runtime.writeHostsFile(record.filesDir, hostname, record.ip);
        faultPoint('pod.run.network-setup');
      }
      faultPoint('pod.run.record');
      return this.records.create(record);
    });
    faultPoint('pod.run.done');
    log.info('pod sandbox running', { name: config.metadata.name, namespace: config.metadata.namespace, ms: timer.ms, phases: timer.phases });
    return created;
  }

  /**
   * Kills the pod's containers and releases its namespaces. Idempotent, and stopping an unknown pod is not an error:
   * CRI's StopPodSandbox must succeed once everything is reclaimed, and kubelet repeats it after restarts.
   */
  async stop(id: string): Promise<void> {
    const found = this.find(id);
    if (!found) return;
    return this.podLock.run(found.id, async () => {
      // A remove may have finished while this stop waited: writing the record now would bring the pod back.
      const record = this.records.get(found.id);
      if (!record) return;
      await this.opts.containers.stopContainers(record.id);
      faultPoint('pod.stop.containers');
      await this.releaseLocked(record);
    });
  }

  /**
   * Kills the pod init, tears the network down, unpins the namespaces, then records the pod NOTREADY without
   * network state: once, as a second release finds nothing to change (a crash before that write only repeats
   * an idempotent teardown).
   */
  private async releaseLocked(record: Readonly<SandboxRecord>): Promise<void> {
    if (record.initPid && (await this.runtime.isInitAlive(record.initPid))) this.runtime.killInit(record.initPid);
    faultPoint('pod.stop.init');
    if (record.networkState) await this.network.teardown(this.networkRequest(record), record.networkState);
    faultPoint('pod.stop.network');
    await this.runtime.unpinNamespaces(path.join(this.runDir(record.id), 'ns'));
    if (record.shmPath && record.shmPath !== '/dev/shm') await this.runtime.unmountShm(record.shmPath);
    faultPoint('pod.stop.unpin');
    if (record.state === 'NOTREADY' && record.networkState === undefined) return;
    await this.records.update(record.id, ({ networkState: _released, ...rest }) => ({ ...rest, state: 'NOTREADY' }));
    faultPoint('pod.stop.record');
    if (record.state !== 'NOTREADY') this.opts.log.info('pod sandbox stopped', { pod: record.id });
  }

  /** Removes the pod and everything it holds. Removing an unknown pod is not an error. */
  async remove(id: string): Promise<void> {
    const found = this.find(id);
    if (!found) return;
    return this.podLock.run(found.id, async () => {
      // Another remove may have finished while this one waited.
      const record = this.records.get(found.id);
      if (record) await this.removeLocked(record);
    });
  }

  private async removeLocked(record: Readonly<SandboxRecord>): Promise<void> {
    // Removing a container stops it first if it still runs.
    await this.opts.containers.removeContainers(record.id);
    faultPoint('pod.remove.containers');
    await this.releaseLocked(record);
    faultPoint('pod.remove.released');
    try {
      await this.opts.cgroups.remove({ path: record.cgroup.path, created: record.cgroup.created });
    } catch (err) {
      if (err instanceof BerthError && err.kind === 'failed_precondition') {
        throw failedPrecondition(`pod sandbox ${record.id}: its cgroup still holds processes: ${err.message}`);
      }
      throw err;
    }
    faultPoint('pod.remove.cgroup');
    if (this.ownedParents.size > 0) {
      this.ownedParents = new Set(await this.opts.cgroups.removeIfUnused([...this.ownedParents]));
      await this.saveParents();
    }
    await this.runtime.removeRunDir(this.runDir(record.id));
    faultPoint('pod.remove.rundir');
    await this.records.delete(record.id);
    faultPoint('pod.remove.record');
    this.names.release(SandboxService.nameKey(record.config));
    this.opts.log.info('pod sandbox removed', { pod: record.id });
  }
}
