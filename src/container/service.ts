import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { BerthError, errorMessage, failedPrecondition, invalidArgument, notFound } from '../errors.js';
import { Logger } from '../log.js';
import { checkNoSymlinks, logLocation } from './log-path.js';
import { CgroupHandle, CgroupResources } from '../kernel/cgroups.js';
import type { CgroupPort } from '../kernel/cgroup-port.js';
import { ExecOptions, ExecResult } from '../kernel/shim.js';
import type { InteractiveExec, TerminalSize } from '../kernel/shim-stream.js';
import { ImageService } from '../image/service.js';
import { ImageRecord } from '../image/types.js';
import { Durability, RecordStore } from '../store/records.js';
import { Undo, withUndo } from '../store/undo.js';
import { SandboxService } from '../sandbox/service.js';
import { PhaseTimer } from '../phases.js';
import { faultPoint } from '../fault.js';
import { ContainerAttachment, ContainerRuntime, ExitWatch } from './runtime.js';
import { imagePathKind, readImageFile } from './image-files.js';
import { buildSpec } from './spec.js';
import { loadLocalhostProfile } from './seccomp.js';
import { ShimDevice } from '../kernel/shim-spec.js';
import { CdiInjection, loadCdiRegistry, resolveCdiDevices } from './cdi.js';
import { deviceNumbers } from './devices.js';
import { CONTAINER_TRANSITIONS, ContainerConfig, ContainerMount, ContainerRecord, ContainerState, ExitStatus, ResourceUpdate } from './types.js';
import { parseGroup, parsePasswd, resolveUser } from './user.js';
import { parseStopSignal, signalToSend } from './signals.js';
import { chooseAppArmorProfile } from './apparmor.js';
import { lxcfsFor, LxcfsPolicy } from './lxcfs.js';
import { kernelLsmHost, LsmHost } from '../kernel/lsm.js';
import { filterRecords, findByIdOrPrefix, NameIndex, RecordFilter } from '../lookup.js';
import { writeFileNamed } from '../store/atomic.js';
import { blockioLimitsFor, selectBlockioClass } from './blockio-class.js';
import { podPidsLimit } from './pids-limit.js';
import type { BlockioDeviceLimit } from '../kernel/cgroup-plan.js';
import type { LimitedLayer, LimitedLayers } from '../kernel/writable-layer.js';
import { writableLayerLimit } from './writable-layer-limit.js';

// Container lifecycle: create (process made, blocked), start (released), stop (signal, then SIGKILL), remove.
// The per-container shim monitor owns the process; berth learns of exits from the exit record it writes (watched).
//
// Records change only through the record store's update(), checked against CONTAINER_TRANSITIONS. Durability:
// - 'durable' (written and fsynced before the new record is visible): resource updates, and an exit berth had to
//   make up because the monitor died without writing one (nothing else on disk would tell it again).
// - 'synced-behind' (written before the answer, fsynced behind it): create and CREATED -> RUNNING. A berth crash
//   finds them on start; only a power cut can lose them, and it takes the container's processes with it: a lost
//   record leaves its bundle an orphan (released at load), a lost start leaves a CREATED record whose monitor is
//   gone (reconciled as an unknown exit). Their fsyncs (~3-4 ms each on these VMs) were a fifth of CreateContainer.
// - 'recoverable' (visible at once, written behind): an exit read from the monitor's exit record. That file is
//   already durable, and reconciliation on start records the same exit from it again, so StopContainer answers
//   as soon as the exit is known, without waiting for a write.

export type ContainerCgroups = Pick<CgroupPort, 'create' | 'remove' | 'apply' | 'procsFiles' | 'oomKills' | 'killAll' | 'keepMigrationsWarm'>;
export type ContainerImages = Pick<ImageService, 'resolve' | 'pinLayers' | 'layerPaths' | 'collectGarbage'>;
export type ContainerPods = Pick<SandboxService, 'get' | 'podLock'>;
/** Resolves after `ms`, or rejects once `signal` aborts. */
export type Delay = (ms: number, signal: AbortSignal) => Promise<void>;

export type ContainerWritableLayers = Pick<LimitedLayers, 'acquire' | 'release' | 'sweep'>;

export interface ContainerServiceOptions {
  root: string;
  runtime: ContainerRuntime;
  cgroups: ContainerCgroups;
  images: ContainerImages;
  sandboxes: ContainerPods;
  log: Logger;
  rlimits: { type: string; soft: number; hard: number }[];
  maxLogLineBytes: number;
  shmSizeBytes: number;
  /** [runtime] pids_limit: every container's pids.max unless its pod's annotation lowers it (0: none). */
  pidsLimit?: number;
  /** [blockio] classes, resolved to device numbers, by name. */
  blockioClasses?: Record<string, BlockioDeviceLimit[]>;
  /** Where CDI spec files are read from, lowest priority first. */
  cdiSpecDirs: string[];
  /** The stop timeout's clock; unit tests pass a fake one. */
  delay?: Delay;
  /**
   * How often the monitors of live containers are checked (ms; 0: never). A monitor that dies (kill -9) writes no
   * exit record, and its container's init dies with it (PDEATHSIG): only this check tells berth it exited.
   */
  monitorCheckMs?: number;
  /** AppArmor and SELinux on this host; unit tests pass a fake one. */
  lsm?: LsmHost;
  /** The AppArmor profile RuntimeDefault means ([runtime] apparmor_profile). */
  apparmorProfile?: string;
  /** [runtime] lxcfs and the probe of the node's lxcfs mount; absent: no container gets lxcfs's files. */
  lxcfs?: LxcfsPolicy;
  /**
   * Hears every change of a container record, exits seen by the watcher and restart reconciliation included (the
   * event stream, metrics): see RecordStoreOptions.onChange.
   */
  /** Size-limited writable layers (see kernel/writable-layer.ts); absent: no container gets a limit. */
  writableLayers?: ContainerWritableLayers;
  /** [runtime] writable_layer_max_bytes: every container's limit unless its pod's annotations lower it. */
  writableLayerMaxBytes?: number;
  onRecordChange?: (before: Readonly<ContainerRecord> | undefined, after: Readonly<ContainerRecord> | undefined) => void;
}

export const DEFAULT_APPARMOR_PROFILE = 'berth-default';
/** In the bundle: the container's cgroup path, written before the cgroup is made (see releaseInterrupted). */
const CGROUP_NOTE = 'cgroup-path';
/** From the container's cgroup to its init joining it: prepare, spec, the shim's spawn and the monitor's setup. */
const CREATE_WARM_MS = 300;

const realDelay: Delay = (ms, signal) => sleep(ms, undefined, { signal });
/** One /proc read per live container each time: cheap, and a lost monitor shows as an exit within this long. */
export const MONITOR_CHECK_MS = 2000;

export interface ContainerFilter extends RecordFilter<ContainerState> {
  sandboxId?: string;
}

/** The image's STOPSIGNAL, else SIGTERM; one that names no Linux signal is said, not silently replaced. */
function imageStopSignal(image: ImageRecord, log: Logger): string {
  const raw = image.config.config?.StopSignal;
  if (!raw) return 'SIGTERM';
  const name = parseStopSignal(raw);
  if (!name) log.warn('the image\'s STOPSIGNAL names no Linux signal: SIGTERM stops the container instead', { image: image.id, stopSignal: raw });
  return name ?? 'SIGTERM';
}

/** The cgroup adapter names files and values; a caller's mistake also names the request field it came from. */
function inField(field: string): (err: unknown) => never {
  return (err) => {
    if (err instanceof BerthError && err.kind === 'invalid_argument') throw new BerthError(err.kind, `${field}: ${err.message}`, { cause: err });
    throw err;
  };
}

function toCgroupResources(r: ResourceUpdate): CgroupResources {
  return {
    cpuShares: r.cpuShares,
    cpuQuota: r.cpuQuota,
    cpuPeriod: r.cpuPeriod,
    cpusetCpus: r.cpusetCpus,
    cpusetMems: r.cpusetMems,
    memoryLimitBytes: r.memoryLimitBytes,
    memorySwapLimitBytes: r.memorySwapLimitBytes,
    hugepageLimits: r.hugepageLimits,
    unified: r.unified,
  };
}

export class ContainerService {
  private readonly records: RecordStore<ContainerRecord>;
  /** name/attempt in its pod -> container id: CreateContainer refuses a second container of the same name. */
  private readonly names = new NameIndex();
  private readonly watchers = new Map<string, ExitWatch>();
  /** Bundles of removed containers still being deleted (RemoveContainer answers before), by container id. */
  private readonly bundleRemovals = new Map<string, { sandboxId: string; removed: Promise<void> }>();
  private readonly exitWaiters = new Map<string, (() => void)[]>();
  private readonly runtime: ContainerRuntime;
  private readonly delay: Delay;
  private monitorCheck: NodeJS.Timeout | undefined;
  private checkingMonitors = false;

  constructor(private readonly opts: ContainerServiceOptions) {
    this.runtime = opts.runtime;
    this.delay = opts.delay ?? realDelay;
    this.records = new RecordStore(path.join(opts.root, 'containers'), 'container.json', {
      stateOf: (record) => record.state,
      transitions: CONTAINER_TRANSITIONS,
      onWriteError: (id, err) => opts.log.error('cannot write or remove a container record or bundle', { container: id, error: errorMessage(err) }),
      onChange: opts.onRecordChange,
    });
  }

  /** Layers under some container's rootfs: images may not delete them. */
  heldLayers(): Set<string> {
    const held = new Set<string>();
    for (const c of this.records.values()) for (const l of [...c.imageLayers, ...(c.volumeLayers ?? [])]) held.add(l);
    return held;
  }

  private nameKey(record: { sandboxId: string; config: ContainerConfig }): string {
    return `${record.sandboxId}/${record.config.metadata.name}/${record.config.metadata.attempt}`;
  }

  async load(): Promise<void> {
    const { records, orphans } = await this.records.loadAll();
    // An image whose container has no record is an orphan; it is unmounted from its bundle (if it still is)
    // before the bundles of interrupted creations are deleted.
    for (const id of (await this.opts.writableLayers?.sweep(new Set(records.map((r) => r.id)))) ?? []) {
      this.opts.log.warn('removed the writable-layer image of a container that has no record', { container: id });
    }
    for (const dir of orphans) await this.releaseInterrupted(dir);
    for (const record of records) {
      this.names.reserve(this.nameKey(record), record.id);
      if (record.state === 'CREATED' || record.state === 'RUNNING') {
        this.watchExit(record);
        await this.reconcile(record.id);
      }
    }
    const every = this.opts.monitorCheckMs ?? 0;
    if (every > 0) {
      this.monitorCheck = setInterval(() => void this.checkMonitors(), every);
      this.monitorCheck.unref();
    }
  }

  /** Reconciles every live container whose monitor is gone (see monitorCheckMs). Never throws: a timer runs it. */
  async checkMonitors(): Promise<void> {
    if (this.checkingMonitors) return;
    this.checkingMonitors = true;
    try {
      for (const record of this.records.values()) {
        if ((record.state !== 'CREATED' && record.state !== 'RUNNING') || !record.monitorPid) continue;
        if (await this.runtime.isMonitorAlive(record.monitorPid)) continue;
        await this.reconcile(record.id).catch((err) =>
          this.opts.log.error('cannot record the exit of a container whose monitor is gone', { pod: record.sandboxId, container: record.id, error: errorMessage(err) }),
        );
      }
    } finally {
      this.checkingMonitors = false;
    }
  }

  /**
   * A bundle without a record: a CreateContainer that berth crashed in. Its shims (monitor, init blocked on
   * start.fifo, a create still at work) and its cgroup are released before the bundle goes.
   */
  private async releaseInterrupted(bundle: string): Promise<void> {
    const log = this.opts.log.child({ container: path.basename(bundle) });
    try {
      // By command line, not shim.json: a crash while `berth-shim create` ran may precede that file.
      await this.runtime.killShimsOf(bundle);
      const cgroupPath = await fs.readFile(path.join(bundle, CGROUP_NOTE), 'utf8').catch(() => undefined);
      if (cgroupPath) {
        await this.opts.cgroups.killAll(cgroupPath).catch(() => undefined);
        const dirs = this.opts.cgroups.procsFiles(cgroupPath).map((f) => path.dirname(f));
        await this.removeCgroupWhenEmpty({ path: cgroupPath, created: dirs });
      }
      if (cgroupPath) log.warn('released what a container creation or removal interrupted by a crash left behind');
      await fs.rm(bundle, { recursive: true, force: true });
    } catch (err) {
      log.error('cannot release an interrupted container creation', { error: errorMessage(err) });
    }
  }

  /** After a restart, or when a monitor may have died: exit.json wins; a monitor gone without one is an unknown exit. */
  private async reconcile(id: string): Promise<void> {
    const record = this.records.get(id);
    if (!record) return;
    const exit = await this.runtime.readExit(record.bundle);
    if (exit) {
      await this.recordExit(id);
      return;
    }
    if (record.monitorPid && !(await this.runtime.isMonitorAlive(record.monitorPid))) {
      // The init died with its monitor (PDEATHSIG), but what it forked did not: nothing of the container may run
      // once it is reported exited.
      await this.opts.cgroups.killAll(record.cgroup.path).catch(() => undefined);
      this.opts.log.warn('the container monitor is gone without recording an exit: the container is reported exited', { pod: record.sandboxId, container: id });
      await this.markExited(id, 'durable', {
        exitCode: 255,
        signal: 0,
        startedAt: record.startedAt ?? 0,
        finishedAt: Date.now() * 1e6,
        oomKilled: false,
        reason: 'Unknown',
        message: 'the container monitor exited without recording an exit status',
      });
    }
  }

  get(id: string): Readonly<ContainerRecord> {
    const found = this.find(id);
    if (!found) throw notFound(`container "${id}" not found`);
    return found;
  }

  find(id: string): Readonly<ContainerRecord> | undefined {
    return findByIdOrPrefix(this.records, id, 'container');
  }

  list(filter: ContainerFilter = {}): Readonly<ContainerRecord>[] {
    const inPod = filter.sandboxId ? this.records.values().filter((c) => c.sandboxId.startsWith(filter.sandboxId!)) : this.records.values();
    return filterRecords(inPod, filter);
  }

  async create(sandboxId: string, config: ContainerConfig): Promise<Readonly<ContainerRecord>> {
    const pod = this.opts.sandboxes.get(sandboxId);
    // Serialised with StopPodSandbox/RemovePodSandbox of the same pod: no container is born into a dying pod.
    return this.opts.sandboxes.podLock.run(pod.id, () => this.createLocked(pod.id, config));
  }

  private async createLocked(sandboxId: string, config: ContainerConfig): Promise<Readonly<ContainerRecord>> {
    const sandbox = this.opts.sandboxes.get(sandboxId);
    if (sandbox.state !== 'READY') throw failedPrecondition(`pod sandbox ${sandbox.id} is not ready`);
    if (!config.metadata.name) throw invalidArgument('config.metadata.name is empty');
    if (!config.image) throw invalidArgument('config.image.image is empty');
    const logAt = logLocation(sandbox.config.logDirectory, config.logPath);
    // containerd's rule: a pod that did not ask to be privileged cannot gain the host through one of its containers.
    if (config.security.privileged && !sandbox.config.privileged) {
      throw invalidArgument(
        `config.linux.security_context.privileged is true but pod sandbox ${sandbox.id} is not privileged (its linux.security_context.privileged is false): no privileged container allowed in a non-privileged sandbox`,
      );
    }
    const image = this.opts.images.resolve(config.image);
    if (!image) throw notFound(`image "${config.image}" not found: pull it first`);
    const volumeImages = this.imageVolumeImages(config);
    // Before anything is acquired: in "on" mode a node without lxcfs refuses the container outright.
    const lxcfs = await lxcfsFor(this.opts.lxcfs, config.security.privileged);
    const limits = this.limitsBeyondCri(config, sandbox.config.annotations);
    // ContainerStatus names the image each volume resolved to (Mount.image.image_ref).
    if (volumeImages.size > 0) {
      config = { ...config, mounts: config.mounts.map((m, i) => (m.image ? { ...m, image: { ...m.image, imageId: volumeImages.get(i)!.id } } : m)) };
    }
    const layerLimit = this.opts.writableLayers ? writableLayerLimit(sandbox.config.annotations, config.metadata.name, this.opts.writableLayerMaxBytes ?? 0) : 0;
    const id = randomBytes(32).toString('hex');
    const key = this.nameKey({ sandboxId: sandbox.id, config });
    const existing = this.names.holder(key);
    if (existing) throw new BerthError('already_exists', `container ${config.metadata.name} (attempt ${config.metadata.attempt}) already exists in pod ${sandbox.id} as ${existing}`);
    const log = this.opts.log.child({ pod: sandbox.id, container: id });
    const timer = new PhaseTimer();
    const bundle = this.records.pathOf(id);
    // Each acquisition pushes its undo at once; a failure anywhere undoes them all, newest first.
    return withUndo(log, async (undo) => {
      this.names.reserve(key, id);
      undo.push('release name', () => this.names.release(key));
      faultPoint('container.create.name');
      // Until the container is listed (heldLayers), a concurrent RemoveImage's GC could take its layers.
      const unpins = [image, ...volumeImages.values()].map((img) => this.opts.images.pinLayers(img));
      const unpinLayers = () => unpins.forEach((unpin) => unpin());
      undo.push('unpin image layers', unpinLayers);
      await fs.mkdir(bundle, { recursive: true, mode: 0o700 });
      undo.push('remove bundle', () => fs.rm(bundle, { recursive: true, force: true }));
      faultPoint('container.create.bundle');
      const cgroupPath = `${sandbox.cgroup.path}/${id}`;
      // Noted in the bundle before it is made: a crash before the record is written must still find it (load).
      await writeFileNamed(path.join(bundle, CGROUP_NOTE), cgroupPath, 0o600);
      const handle = await this.opts.cgroups.create(cgroupPath);
      const cgroup = { path: handle.path, created: handle.created };
      undo.push('remove cgroup', async () => {
        // A kill that fails leaves processes behind: the removal below says so.
        await this.opts.cgroups.killAll(cgroup.path).catch(() => undefined);
        await this.removeCgroupWhenEmpty(cgroup);
      });
      // The cgroup was just made and holds no process yet: its limits are written without the thread pool.
      await this.opts.cgroups.apply(handle.path, { ...toCgroupResources(config.resources), ...limits }, { empty: true }).catch(inField('config.linux.resources'));
      // The init joins these cgroups a few ms from now (prepare, spec, shim, monitor). The pod's window (opened at
      // RunPodSandbox) usually still runs; after a pull in between it has closed, and this one starts the kernel's
      // wait here, after the mkdirs and limit writes above, which would otherwise wait behind it for the cgroup mutex.
      this.opts.cgroups.keepMigrationsWarm(CREATE_WARM_MS);
      timer.lap('cgroup');
      faultPoint('container.create.cgroup');
      const lowerDirs = this.opts.images.layerPaths(image).reverse();
      const imageVolumes = await this.imageVolumeLayers(config, volumeImages, bundle);
      const [passwd, group] = await Promise.all([readImageFile(lowerDirs, '/etc/passwd'), readImageFile(lowerDirs, '/etc/group')]);
      const user = resolveUser(
        {
          runAsUser: config.security.runAsUser,
          runAsUsername: config.security.runAsUsername,
          runAsGroup: config.security.runAsGroup,
          supplementalGroups: config.security.supplementalGroups,
          // kubelet copies the pod's policy into each container's; a client that sets only the pod's still gets Strict.
          groupsPolicy: sandbox.config.supplementalGroupsPolicy === 'Strict' ? 'Strict' : config.security.supplementalGroupsPolicy,
          imageUser: image.config.config?.User,
        },
        parsePasswd(passwd ?? ''),
        parseGroup(group ?? ''),
      );
      const logPath = logAt?.full ?? '';
      const targetPidNamespace = config.security.namespaces.pid === 'TARGET' ? this.targetPidNamespace(sandbox.id, config.security.namespaces.targetId) : undefined;
      const limited = layerLimit > 0 ? await timer.timed('writableLayer', this.acquireLayer(id, layerLimit, bundle, undo)) : undefined;
      await Promise.all([
        fs.mkdir(path.join(bundle, 'rootfs')),
        limited ? undefined : fs.mkdir(path.join(bundle, 'upper')),
        limited ? undefined : fs.mkdir(path.join(bundle, 'work')),
        // The log directory is kubelet's (trusted), made if missing as containerd does; directories of log_path
        // beneath it are made by the shim from the directory's descriptor, following no link.
        logAt ? fs.mkdir(logAt.directory, { recursive: true }).then(() => checkNoSymlinks(logAt)) : undefined,
        ...config.mounts.map((m, i) => this.ensureHostPath(m, i)),
      ]);
      const localhostSeccomp = config.security.seccomp.kind === 'localhost'
        ? await loadLocalhostProfile(config.security.seccomp.path, 'config.linux.security_context.seccomp')
        : undefined;
      const hostDevices = await Promise.all(config.devices.map((d, i) => this.hostDevice(d.hostPath, d.containerPath, i)));
      const cdi = config.cdiDevices?.length ? await this.resolveCdi(config.cdiDevices, log) : undefined;
      const apparmor = await this.securityModules(config, log);
      timer.lap('prepare');
      const spec = buildSpec({
        id,
        config,
        image: image.config,
        sandbox,
        user,
        bundle,
        rootfs: path.join(bundle, 'rootfs'),
        lowerDirs,
        upperDir: limited?.upperDir ?? path.join(bundle, 'upper'),
        workDir: limited?.workDir ?? path.join(bundle, 'work'),
        logPath: logAt?.relative ?? '/dev/null',
        logDirectory: logAt?.directory,
        cgroupProcs: this.opts.cgroups.procsFiles(handle.path),
        targetPidNamespace,
        rlimits: this.opts.rlimits,
        maxLogLineBytes: this.opts.maxLogLineBytes,
        shmSizeBytes: this.opts.shmSizeBytes,
        localhostSeccomp,
        hostDevices,
        cdi,
        imageVolumes,
        lxcfs,
      });
      spec.sysctl = { ...sandbox.config.sysctls };
      if (apparmor) spec.process.apparmorProfile = apparmor;
      // ExecSync'd processes get the container's capability set and seccomp filter, not berth's.
      await writeFileNamed(path.join(bundle, 'exec-caps.json'), JSON.stringify(spec.process.capabilities));
      if (spec.seccomp) await writeFileNamed(path.join(bundle, 'exec-seccomp.json'), JSON.stringify(spec.seccomp));
      timer.lap('spec');
      faultPoint('container.create.spec');
      const created = await this.runtime.create(spec);
      undo.push('kill container process', () => this.runtime.signal(created.pid, 'SIGKILL'));
      timer.lap('shim');
      faultPoint('container.create.shim');
      const record = await this.records.create({
        id,
        sandboxId: sandbox.id,
        config,
        imageId: image.id,
        imageName: config.image,
        imageLayers: [...image.layers],
        ...(volumeImages.size > 0 ? { volumeLayers: [...new Set([...volumeImages.values()].flatMap((img) => img.layers))] } : {}),
        createdAt: Date.now() * 1e6,
        state: 'CREATED',
        pid: created.pid,
        pidStartTime: created.startTime,
        monitorPid: created.monitorPid,
        bundle,
        logPath,
        cgroup,
        stopSignal: config.stopSignal ?? imageStopSignal(image, log),
        user: { uid: user.uid, gid: user.gid, additionalGids: spec.process.additionalGids },
        env: spec.process.env,
        cwd: spec.process.cwd,
        rlimits: spec.process.rlimits,
        oomScoreAdj: spec.process.oomScoreAdj ?? undefined,
        apparmorProfile: apparmor,
        ...(limited ? { writableLayer: limited.state } : {}),
      }, 'synced-behind');
      this.watchExit(record);
      faultPoint('container.create.record');
      // Listed now: heldLayers() keeps its layers from here on.
      unpinLayers();
      timer.lap('record');
      log.info('container created', { name: config.metadata.name, image: image.id, ...(lxcfs ? { lxcfs: lxcfs.procFiles.length } : {}), ms: timer.ms, phases: timer.phases });
      return record;
    });
  }

  /** pids.max and block I/O limits, which CRI has no field for: from berth's config and the pod's annotations. */
  private limitsBeyondCri(config: ContainerConfig, podAnnotations: Record<string, string>): CgroupResources {
    const pidsLimit = podPidsLimit(this.opts.pidsLimit ?? 0, podAnnotations, 'sandbox_config.annotations');
    const blockio = blockioLimitsFor(selectBlockioClass(config.metadata.name, config.annotations, podAnnotations), this.opts.blockioClasses ?? {});
    return { ...(pidsLimit > 0 ? { pidsLimit } : {}), ...(blockio ? { blockio } : {}) };
  }

  private async hostDevice(hostPath: string, containerPath: string, index: number): Promise<ShimDevice[]> {
    const st = await fs.stat(hostPath).catch(() => undefined);
    if (!st) throw notFound(`config.devices[${index}].host_path ${hostPath} does not exist`);
    if (!st.isCharacterDevice() && !st.isBlockDevice()) throw invalidArgument(`config.devices[${index}].host_path ${hostPath} is not a device node`);
    const { major, minor } = deviceNumbers(st.rdev);
    return [{ path: containerPath, type: st.isCharacterDevice() ? 'c' : 'b', major, minor, mode: st.mode & 0o777, uid: 0, gid: 0 }];
  }

  /** Spec files are read when a container asks for a CDI device (drivers rewrite them as devices come and go). */
  private async resolveCdi(names: string[], log: Logger): Promise<CdiInjection> {
    const registry = await loadCdiRegistry(this.opts.cdiSpecDirs);
    // One bad file must not break pods that do not need it: skipped, and said so.
    for (const bad of registry.bad) log.warn('CDI spec file skipped', { file: bad.file, reason: bad.reason });
    return resolveCdiDevices(names, registry);
  }

  /**
   * AppArmor: the profile the container runs under (see apparmor.ts for the table). SELinux: berth does not label,
   * so options on a node with SELinux are refused rather than ignored; on a node without it they mean nothing and
   * are ignored, as containerd does, and said in the log.
   */
  private async securityModules(config: ContainerConfig, log: Logger): Promise<string | undefined> {
    const lsm = this.opts.lsm ?? kernelLsmHost;
    if (config.security.selinuxOptions) {
      const field = 'config.linux.security_context.selinux_options';
      if (lsm.selinuxEnabled()) {
        throw failedPrecondition(`${field}: this node has SELinux enabled and berth does not apply SELinux labels; run the pod without seLinuxOptions or on a node without SELinux`);
      }
      log.info('SELinux options ignored: this node has no SELinux', { selinux: config.security.selinuxOptions });
    }
    const choice = await chooseAppArmorProfile(config.security.apparmor, config.security.privileged, this.opts.apparmorProfile ?? DEFAULT_APPARMOR_PROFILE, lsm);
    if (choice.warning) log.warn(choice.warning);
    return choice.profile;
  }

  /** The images of the config's image volumes, by mount index: each must be in berth's store (kubelet pulls it first). */
  private imageVolumeImages(config: ContainerConfig): Map<number, ImageRecord> {
    const found = new Map<number, ImageRecord>();
    for (const [i, m] of config.mounts.entries()) {
      if (!m.image) continue;
      const img = this.opts.images.resolve(m.image.ref);
      if (!img) throw notFound(`config.mounts[${i}].image "${m.image.ref}" not found: pull it first`);
      found.set(i, img);
    }
    return found;
  }

  /**
   * The layer directories (top first) each image volume is an overlay of, its sub path checked to exist in the
   * image first (NOT_FOUND naming the field). overlayfs needs two lower layers without an upper one: a
   * single-layer image gets an empty directory of the bundle below it.
   */
  private async imageVolumeLayers(config: ContainerConfig, images: Map<number, ImageRecord>, bundle: string): Promise<Record<number, string[]>> {
    const layers: Record<number, string[]> = {};
    for (const [i, img] of images) {
      const volume = config.mounts[i].image!;
      const dirs = this.opts.images.layerPaths(img).reverse();
      if (volume.subPath !== '.' && !(await imagePathKind(dirs, volume.subPath))) {
        throw notFound(`config.mounts[${i}].image_sub_path "${volume.subPath}" does not exist in image "${volume.ref}"`);
      }
      if (dirs.length === 1) {
        const empty = path.join(bundle, 'empty-layer');
        await fs.mkdir(empty, { recursive: true, mode: 0o555 });
        dirs.push(empty);
      }
      layers[i] = dirs;
    }
    return layers;
  }

  private targetPidNamespace(sandboxId: string, targetId?: string): string {
    const field = 'config.linux.security_context.namespace_options.target_id';
    if (!targetId) throw invalidArgument(`${field} is empty but pid mode is TARGET`);
    const target = this.find(targetId);
    if (!target) throw notFound(`${field}: container "${targetId}" not found`);
    // Only a container of the same pod: another pod's processes are not this pod's to see.
    if (target.sandboxId !== sandboxId) throw failedPrecondition(`${field}: container ${target.id} belongs to another pod sandbox`);
    if (target.state !== 'RUNNING' || !target.pid) throw failedPrecondition(`${field}: container ${target.id} is not running`);
    return `/proc/${target.pid}/ns/pid`;
  }

  // kubelet expects a missing host path of a bind mount to be created as a directory, as Docker did.
  private async ensureHostPath({ hostPath, recursiveReadOnly, image }: ContainerMount, index: number): Promise<void> {
    if (image) return;
    if (!path.isAbsolute(hostPath)) throw invalidArgument(`config.mounts[${index}].host_path "${hostPath}" must be an absolute path`);
    const st = await fs.stat(hostPath).catch(() => undefined);
    if (!st) await fs.mkdir(hostPath, { recursive: true });
    // A file has no submounts: asking for a recursive read-only file is a mistake the pod spec should hear of.
    else if (recursiveReadOnly && !st.isDirectory()) {
      throw invalidArgument(`config.mounts[${index}].recursive_read_only: host_path "${hostPath}" is not a directory`);
    }
  }

  async start(id: string): Promise<void> {
    const record = this.get(id);
    if (record.state !== 'CREATED') throw failedPrecondition(`container ${record.id} is ${record.state}, not CREATED`);
    faultPoint('container.start.begin');
    try {
      await this.runtime.start(record.bundle);
    } catch (err) {
      await this.recordExit(record.id);
      const why = (await this.runtime.readExecError(record.bundle)) ?? errorMessage(err);
      throw failedPrecondition(`container ${record.id} failed to start: ${why}`);
    }
    faultPoint('container.start.released');
    const startedAt = Date.now() * 1e6;
    // A process that exits at once may already be recorded EXITED (with its own start time): it did start.
    await this.records.update(record.id, (current) => (current.state === 'CREATED' ? { ...current, state: 'RUNNING', startedAt } : current), 'synced-behind');
    faultPoint('container.start.record');
    this.opts.log.info('container started', { pod: record.sandboxId, container: record.id });
  }

  /** True once the container has exited, or is gone altogether (removed meanwhile): there is nothing to stop. */
  private exited(id: string): boolean {
    const record = this.records.get(id);
    return !record || record.state === 'EXITED';
  }

  private watchExit(record: Readonly<ContainerRecord>): void {
    if (this.watchers.has(record.id)) return;
    try {
      this.watchers.set(record.id, this.runtime.watchExit(record.bundle, () => this.recordExitInBackground(record.id)));
    } catch (err) {
      this.opts.log.warn('cannot watch container bundle', { container: record.id, error: errorMessage(err) });
    }
  }

  private unwatchExit(id: string): void {
    this.watchers.get(id)?.close();
    this.watchers.delete(id);
  }

  /** From a watcher or timer: nobody awaits it, so a failure (a full disk, say) is logged here, not thrown. */
  private recordExitInBackground(id: string): void {
    this.recordExit(id).catch((err) =>
      this.opts.log.error('cannot record a container exit', { pod: this.records.get(id)?.sandboxId, container: id, error: errorMessage(err) }),
    );
  }

  private async recordExit(id: string): Promise<void> {
    const record = this.records.get(id);
    if (!record || record.state === 'EXITED') return;
    const exit = await this.runtime.readExit(record.bundle);
    if (!exit) return;
    let oomKilled = false;
    try {
      oomKilled = (await this.opts.cgroups.oomKills(record.cgroup.path)) > 0;
    } catch {
      /* cgroup gone: no OOM information */
    }
    const execError = exit.exitCode === 127 ? await this.runtime.readExecError(record.bundle) : undefined;
    await this.markExited(id, 'recoverable', {
      exitCode: exit.exitCode,
      signal: exit.signal,
      startedAt: exit.startedAt,
      finishedAt: exit.finishedAt,
      oomKilled,
      reason: oomKilled ? 'OOMKilled' : exit.exitCode === 0 ? 'Completed' : 'Error',
      message: execError ?? '',
    });
  }

  private async markExited(id: string, durability: Durability, exit: ExitStatus): Promise<void> {
    if (!this.records.has(id)) return;
    let changed = false;
    const record = await this.records.update(
      id,
      (current) => {
        if (current.state === 'EXITED') return current;
        changed = true;
        const next: ContainerRecord = { ...current, state: 'EXITED', exit };
        if (!current.startedAt && exit.startedAt) next.startedAt = exit.startedAt;
        return next;
      },
      durability,
    );
    if (!changed) return;
    this.unwatchExit(id);
    for (const wake of this.exitWaiters.get(id) ?? []) wake();
    this.exitWaiters.delete(id);
    this.opts.log.info('container exited', { pod: record.sandboxId, container: id, exitCode: exit.exitCode, reason: exit.reason });
  }

  private async waitExit(id: string, timeoutMs: number): Promise<boolean> {
    if (this.exited(id)) return true;
    const timeout = new AbortController();
    let wake!: () => void;
    const exited = new Promise<boolean>((resolve) => (wake = () => resolve(true)));
    const list = this.exitWaiters.get(id) ?? [];
    list.push(wake);
    this.exitWaiters.set(id, list);
    // The exit may have landed between our state check and the watcher: look once.
    this.recordExitInBackground(id);
    const timedOut = this.delay(timeoutMs, timeout.signal).then(
      () => false,
      () => false,
    );
    try {
      return await Promise.race([exited, timedOut]);
    } finally {
      timeout.abort();
      const rest = (this.exitWaiters.get(id) ?? []).filter((w) => w !== wake);
      if (rest.length > 0) this.exitWaiters.set(id, rest);
      else this.exitWaiters.delete(id);
    }
  }

  /**
   * Stop signal, then SIGKILL to the whole cgroup after the timeout. Stopping a stopped or unknown container is a
   * no-op: CRI's StopContainer is idempotent, and kubelet repeats it after restarts for containers already gone.
   */
  async stop(id: string, timeoutSeconds: number): Promise<void> {
    const found = this.find(id);
    if (!found || found.state === 'EXITED') return;
    await this.reconcile(found.id);
    const record = this.records.get(found.id);
    if (!record || record.state === 'EXITED' || !record.pid) return;
    const log = this.opts.log.child({ pod: record.sandboxId, container: record.id });
    if (timeoutSeconds > 0 && record.state === 'RUNNING') {
      this.runtime.signal(record.pid, signalToSend(record.stopSignal));
      faultPoint('container.stop.signal');
      if (await this.waitExit(record.id, timeoutSeconds * 1000)) return;
      log.info('stop timeout passed: killing', { timeoutSeconds });
    }
    this.runtime.signal(record.pid, 'SIGKILL');
    await this.opts.cgroups.killAll(record.cgroup.path).catch(() => undefined);
    faultPoint('container.stop.kill');
    if (!(await this.waitExit(record.id, 10_000))) {
      await this.reconcile(record.id);
      if (!this.exited(record.id)) throw new BerthError('deadline_exceeded', `container ${record.id} did not exit after SIGKILL`);
    }
    faultPoint('container.stop.exited');
  }

  /** Removes a container, killing it first if needed. Removing an unknown container is not an error. */
  async remove(id: string): Promise<void> {
    const record = this.find(id);
    if (!record) return;
    const timer = new PhaseTimer();
    if (record.state !== 'EXITED') await this.stop(record.id, 0);
    timer.lap('stop');
    faultPoint('container.remove.stopped');
    await this.removeCgroupWhenEmpty(record.cgroup);
    timer.lap('cgroup');
    faultPoint('container.remove.cgroup');
    this.unwatchExit(record.id);
    if (record.writableLayer) await this.opts.writableLayers?.release(record.writableLayer);
    faultPoint('container.remove.layer');
    // The store lets an exit record still being written land first, so that it cannot outlive the delete. The
    // bundle (upper layer, work dir, fifos: a dozen files or many) goes behind the answer: once the record is
    // gone it is an orphan that load() releases, should berth crash before it is removed.
    const { removed } = await this.records.deleteBehind(record.id);
    this.bundleRemovals.set(record.id, { sandboxId: record.sandboxId, removed });
    void removed.finally(() => this.bundleRemovals.delete(record.id));
    timer.lap('record');
    faultPoint('container.remove.record');
    this.names.release(this.nameKey(record));
    await this.opts.images.collectGarbage();
    timer.lap('gc');
    this.opts.log.info('container removed', { pod: record.sandboxId, container: record.id, ms: timer.ms, phases: timer.phases });
  }

  private async acquireLayer(id: string, bytes: number, bundle: string, undo: Undo): Promise<LimitedLayer> {
    const limited = await this.opts.writableLayers!.acquire(id, bytes, bundle);
    undo.push('release writable layer', () => this.opts.writableLayers!.release(limited.state));
    faultPoint('container.create.layer');
    return limited;
  }

  private async removeCgroupWhenEmpty(cgroup: CgroupHandle): Promise<void> {
    // A killed process leaves the cgroup a moment after its monitor saw it die.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.opts.cgroups.remove(cgroup);
        return;
      } catch (err) {
        if (attempt >= 20 || !(err instanceof BerthError && err.kind === 'failed_precondition')) throw err;
        await this.opts.cgroups.killAll(cgroup.path).catch(() => undefined);
        await new Promise((r) => setTimeout(r, 25));
      }
    }
  }

  private inSandbox(sandboxId: string): Readonly<ContainerRecord>[] {
    return this.records.values().filter((c) => c.sandboxId === sandboxId);
  }

  async stopAllInSandbox(sandboxId: string): Promise<void> {
    await Promise.all(this.inSandbox(sandboxId).map((c) => this.stop(c.id, 0)));
  }

  /** Also waits for the bundles of the pod's containers removed earlier: a removed pod leaves nothing behind. */
  async removeAllInSandbox(sandboxId: string): Promise<void> {
    await Promise.all(this.inSandbox(sandboxId).map((c) => this.remove(c.id)));
    await Promise.all([...this.bundleRemovals.values()].filter((r) => r.sandboxId === sandboxId).map((r) => r.removed));
  }

  async updateResources(id: string, resources: ResourceUpdate): Promise<void> {
    const record = this.get(id);
    if (record.state === 'EXITED') throw failedPrecondition(`container ${record.id} has exited: its resources cannot change`);
    await this.opts.cgroups.apply(record.cgroup.path, toCgroupResources(resources)).catch(inField('linux'));
    const given = Object.fromEntries(Object.entries(resources).filter(([, v]) => v !== undefined));
    await this.records.update(record.id, (current) => ({ ...current, config: { ...current.config, resources: { ...current.config.resources, ...given } } }));
  }

  async execSync(id: string, command: string[], timeoutSeconds: number): Promise<ExecResult> {
    if (command.length === 0) throw invalidArgument('cmd is empty');
    return this.runtime.exec(this.execOptions(this.running(id), command, timeoutSeconds * 1000));
  }

  /** kubectl exec: the command with the container's identity and isolation, its stdio live (on a pty with tty). */
  async execInteractive(id: string, command: string[], opts: { tty: boolean; stdin: boolean; ttySize?: TerminalSize }): Promise<InteractiveExec> {
    if (command.length === 0) throw invalidArgument('cmd is empty');
    // No deadline: the session ends the command when its client goes.
    return this.runtime.execInteractive({ ...this.execOptions(this.running(id), command, 0), ...opts });
  }

  /** kubectl attach: the running container's live output, its terminal, and its stdin when it was created with one. */
  async attach(id: string): Promise<ContainerAttachment> {
    const record = this.running(id);
    const monitorPid = record.monitorPid;
    if (!monitorPid) throw failedPrecondition(`container ${record.id} has no monitor to attach to`);
    const output = await this.runtime.attach(record.bundle);
    return {
      ...output,
      tty: record.config.tty,
      stdin: record.config.stdin,
      stdinOnce: record.config.stdinOnce,
      openStdin: () => this.runtime.openStdin(record.bundle),
      closeStdin: async () => {
        if (await this.runtime.isMonitorAlive(monitorPid)) this.runtime.closeStdin(monitorPid);
      },
    };
  }

  private running(id: string): Readonly<ContainerRecord> {
    const record = this.get(id);
    if (record.state !== 'RUNNING' || !record.pid) throw failedPrecondition(`container ${record.id} is not running`);
    return record;
  }

  private execOptions(record: Readonly<ContainerRecord>, command: string[], timeoutMs: number): ExecOptions {
    const security = record.config.security;
    return {
      pid: record.pid!,
      startTime: record.pidStartTime,
      // A keyring of its own (not berth's, not another container's), named like the init's.
      sessionKeyring: `_ses.${record.id}`,
      // The container's limits, not berth's.
      rlimits: record.rlimits ?? this.opts.rlimits,
      oomScoreAdj: record.oomScoreAdj ?? record.config.resources.oomScoreAdj,
      uid: record.user.uid,
      gid: record.user.gid,
      groups: record.user.additionalGids,
      cwd: record.cwd,
      env: record.env,
      cgroupProcs: this.opts.cgroups.procsFiles(record.cgroup.path),
      noNewPrivs: security.noNewPrivs && !security.privileged,
      capsFile: path.join(record.bundle, 'exec-caps.json'),
      // Written at create exactly when the container got a filter: known from the config, no file probe per exec.
      seccompFile: security.seccomp.kind !== 'unconfined' && !security.privileged ? path.join(record.bundle, 'exec-seccomp.json') : undefined,
      // Exec'd processes are confined as the container's own.
      apparmorProfile: record.apparmorProfile,
      command,
      timeoutMs,
    };
  }

  /** Asks the monitor to reopen the log file (after kubelet renamed it) and waits until it has. */
  async reopenLog(id: string): Promise<void> {
    const record = this.get(id);
    if (record.state !== 'RUNNING' || !record.monitorPid) throw failedPrecondition(`container ${record.id} is not running`);
    if (!record.logPath) return;
    // The monitor opens the log beneath the log directory without following links: a symlink put in the file's
    // place is refused there (it keeps writing the file it has). Said here too, so the caller learns of it.
    const kind = async () => {
      const st = await fs.lstat(record.logPath).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (st && !st.isFile()) {
        throw failedPrecondition(`container ${record.id}: log ${record.logPath} is ${st.isSymbolicLink() ? 'a symlink' : 'not a regular file'}; the log is not reopened through it`);
      }
      return st;
    };
    await kind();
    this.runtime.signal(record.monitorPid, 'SIGUSR1');
    const deadline = Date.now() + 5000;
    while (!(await kind())) {
      if (Date.now() > deadline) throw new BerthError('deadline_exceeded', `container ${record.id}: log ${record.logPath} was not reopened within 5s`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Stops watching for exits and waits for exit records still being written. */
  async close(): Promise<void> {
    clearInterval(this.monitorCheck);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    await this.records.flush();
  }
}
