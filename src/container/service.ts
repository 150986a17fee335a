import { FSWatcher, promises as fs, readFileSync, watch } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { BerthError, errorMessage, failedPrecondition, invalidArgument, notFound } from '../errors.js';
import { Logger } from '../log.js';
import { checkNoSymlinks, logLocation } from './log-path.js';
import { Cgroups, CgroupResources } from '../kernel/cgroups.js';
import { createContainer, execInContainer, ExecResult, isShim, readExecError, readExit, startContainer } from '../kernel/shim.js';
import { ImageService } from '../image/service.js';
import { ImageRecord } from '../image/types.js';
import { RecordStore } from '../store/records.js';
import { SandboxService } from '../sandbox/service.js';
import { readImageFile } from './image-files.js';
import { buildSpec } from './spec.js';
import { loadLocalhostProfile } from './seccomp.js';
import { ShimDevice } from '../kernel/shim-spec.js';
import { CdiInjection, loadCdiRegistry, resolveCdiDevices } from './cdi.js';
import { deviceNumbers } from './devices.js';
import { ContainerConfig, ContainerRecord, ContainerState, ExitStatus, ResourceUpdate } from './types.js';
import { parseGroup, parsePasswd, resolveUser } from './user.js';
import { findByIdOrPrefix } from '../lookup.js';

// Container lifecycle: create (process made, blocked), start (released), stop (signal, then SIGKILL), remove.
// The per-container shim monitor owns the process; berth learns of exits from the exit.json it writes (inotify).

export interface ContainerServiceOptions {
  root: string;
  cgroups: Cgroups;
  images: ImageService;
  sandboxes: SandboxService;
  log: Logger;
  rlimits: { type: string; soft: number; hard: number }[];
  maxLogLineBytes: number;
  shmSizeBytes: number;
  /** Where CDI spec files are read from, lowest priority first. */
  cdiSpecDirs: string[];
}

export interface ContainerFilter {
  id?: string;
  state?: ContainerState;
  sandboxId?: string;
  labels?: Record<string, string>;
}

const SIGNALS: Record<string, NodeJS.Signals> = Object.fromEntries(
  ['SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGKILL', 'SIGUSR1', 'SIGUSR2', 'SIGTERM', 'SIGWINCH', 'SIGSTOP', 'SIGCONT', 'SIGPWR'].map((s) => [s, s as NodeJS.Signals]),
);

function stopSignalOf(image: ImageRecord): NodeJS.Signals {
  const raw = image.config.config?.StopSignal?.toUpperCase();
  if (!raw) return 'SIGTERM';
  if (/^\d+$/.test(raw)) {
    const byNumber: Record<string, NodeJS.Signals> = { '1': 'SIGHUP', '2': 'SIGINT', '3': 'SIGQUIT', '9': 'SIGKILL', '10': 'SIGUSR1', '12': 'SIGUSR2', '15': 'SIGTERM' };
    return byNumber[raw] ?? 'SIGTERM';
  }
  return SIGNALS[raw.startsWith('SIG') ? raw : `SIG${raw}`] ?? 'SIGTERM';
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
  private readonly containers = new Map<string, ContainerRecord>();
  private readonly names = new Map<string, string>();
  private readonly watchers = new Map<string, FSWatcher>();
  private readonly exitWaiters = new Map<string, (() => void)[]>();
  /** Exit records being written, by container id (see markExited). */
  private readonly exitWrites = new Map<string, Promise<void>>();

  constructor(private readonly opts: ContainerServiceOptions) {
    this.records = new RecordStore(path.join(opts.root, 'containers'), 'container.json');
  }

  /** Layers under some container's rootfs: images may not delete them. */
  heldLayers(): Set<string> {
    const held = new Set<string>();
    for (const c of this.containers.values()) for (const l of c.imageLayers) held.add(l);
    return held;
  }

  private nameKey(record: { sandboxId: string; config: ContainerConfig }): string {
    return `${record.sandboxId}/${record.config.metadata.name}/${record.config.metadata.attempt}`;
  }

  async load(): Promise<void> {
    const { records, orphans } = await this.records.loadAll();
    for (const dir of orphans) await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    for (const record of records) {
      this.containers.set(record.id, record);
      this.names.set(this.nameKey(record), record.id);
      if (record.state === 'CREATED' || record.state === 'RUNNING') {
        this.watchExit(record);
        await this.reconcile(record);
      }
    }
  }

  /** After a restart, or when a monitor may have died: exit.json wins; a monitor gone without one is an unknown exit. */
  private async reconcile(record: ContainerRecord): Promise<void> {
    const exit = await readExit(record.bundle);
    if (exit) {
      await this.recordExit(record);
      return;
    }
    if (record.monitorPid && !(await isShim(record.monitorPid))) {
      await this.markExited(record, {
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

  get(id: string): ContainerRecord {
    const found = this.find(id);
    if (!found) throw notFound(`container "${id}" not found`);
    return found;
  }

  find(id: string): ContainerRecord | undefined {
    return findByIdOrPrefix(this.containers, id, 'container');
  }

  list(filter: ContainerFilter = {}): ContainerRecord[] {
    let out = [...this.containers.values()];
    if (filter.id) out = out.filter((c) => c.id.startsWith(filter.id!));
    if (filter.sandboxId) out = out.filter((c) => c.sandboxId.startsWith(filter.sandboxId!));
    if (filter.state) out = out.filter((c) => c.state === filter.state);
    if (filter.labels) {
      const wanted = Object.entries(filter.labels);
      out = out.filter((c) => wanted.every(([k, v]) => c.config.labels[k] === v));
    }
    return out;
  }

  async create(sandboxId: string, config: ContainerConfig): Promise<ContainerRecord> {
    if (!sandboxId) throw invalidArgument('pod_sandbox_id is empty');
    const pod = this.opts.sandboxes.get(sandboxId);
    // Serialised with StopPodSandbox/RemovePodSandbox of the same pod: no container is born into a dying pod.
    return this.opts.sandboxes.podLock.run(pod.id, () => this.createLocked(pod.id, config));
  }

  private async createLocked(sandboxId: string, config: ContainerConfig): Promise<ContainerRecord> {
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
    const id = randomBytes(32).toString('hex');
    const key = this.nameKey({ sandboxId: sandbox.id, config });
    const existing = this.names.get(key);
    if (existing) throw new BerthError('already_exists', `container ${config.metadata.name} (attempt ${config.metadata.attempt}) already exists in pod ${sandbox.id} as ${existing}`);
    this.names.set(key, id);
    // Until the container is listed (heldLayers), a concurrent RemoveImage's GC could take its layers.
    const unpinLayers = this.opts.images.pinLayers(image);
    const log = this.opts.log.child({ pod: sandbox.id, container: id });
    const started = Date.now();
    // Phase timings go into the 'container created' log line: the hot path stays visible in production.
    const phases: Record<string, number> = {};
    let mark = process.hrtime.bigint();
    const phase = (name: string) => {
      const now = process.hrtime.bigint();
      phases[name] = Number(now - mark) / 1e6;
      mark = now;
    };
    const bundle = this.records.pathOf(id);
    let cgroup: { path: string; created: string[] } | undefined;
    let pid: number | undefined;
    try {
      await fs.mkdir(bundle, { recursive: true, mode: 0o700 });
      const lowerDirs = this.opts.images.layerPaths(image).reverse();
      const [passwd, group] = await Promise.all([readImageFile(lowerDirs, '/etc/passwd'), readImageFile(lowerDirs, '/etc/group')]);
      const user = resolveUser(
        {
          runAsUser: config.security.runAsUser,
          runAsUsername: config.security.runAsUsername,
          runAsGroup: config.security.runAsGroup,
          supplementalGroups: config.security.supplementalGroups,
          imageUser: image.config.config?.User,
        },
        parsePasswd(passwd ?? ''),
        parseGroup(group ?? ''),
      );
      const logPath = logAt?.full ?? '';
      const targetPidNamespace = config.security.namespaces.pid === 'TARGET' ? this.targetPidNamespace(sandbox.id, config.security.namespaces.targetId) : undefined;
      await Promise.all([
        fs.mkdir(path.join(bundle, 'rootfs')),
        fs.mkdir(path.join(bundle, 'upper')),
        fs.mkdir(path.join(bundle, 'work')),
        // The log directory is kubelet's (trusted), made if missing as containerd does; directories of log_path
        // beneath it are made by the shim from the directory's descriptor, following no link.
        logAt ? fs.mkdir(logAt.directory, { recursive: true }).then(() => checkNoSymlinks(logAt)) : undefined,
        ...config.mounts.map((m, i) => this.ensureHostPath(m.hostPath, i)),
      ]);
      const localhostSeccomp = config.security.seccomp.kind === 'localhost'
        ? await loadLocalhostProfile(config.security.seccomp.path, 'config.linux.security_context.seccomp')
        : undefined;
      const hostDevices = await Promise.all(config.devices.map((d, i) => this.hostDevice(d.hostPath, d.containerPath, i)));
      const cdi = config.cdiDevices?.length ? await this.resolveCdi(config.cdiDevices, log) : undefined;
      this.warnAppArmor(config.security.apparmor, log);
      phase('prepare');
      const handle = await this.opts.cgroups.create(`${sandbox.cgroup.path}/${id}`);
      cgroup = { path: handle.path, created: handle.created };
      // The cgroup was just made and holds no process yet: its limits are written without the thread pool.
      await this.opts.cgroups.apply(handle.path, toCgroupResources(config.resources), { empty: true }).catch(inField('config.linux.resources'));
      phase('cgroup');
      const spec = buildSpec({
        id,
        config,
        image: image.config,
        sandbox,
        user,
        bundle,
        rootfs: path.join(bundle, 'rootfs'),
        lowerDirs,
        upperDir: path.join(bundle, 'upper'),
        workDir: path.join(bundle, 'work'),
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
      });
      spec.sysctl = { ...sandbox.config.sysctls };
      // ExecSync'd processes get the container's capability set and seccomp filter, not berth's.
      await fs.writeFile(path.join(bundle, 'exec-caps.json'), JSON.stringify(spec.process.capabilities));
      if (spec.seccomp) await fs.writeFile(path.join(bundle, 'exec-seccomp.json'), JSON.stringify(spec.seccomp));
      phase('spec');
      const created = await createContainer(spec);
      phase('shim');
      pid = created.pid;
      const record: ContainerRecord = {
        id,
        sandboxId: sandbox.id,
        config,
        imageId: image.id,
        imageName: config.image,
        imageLayers: image.layers,
        createdAt: Date.now() * 1e6,
        state: 'CREATED',
        pid: created.pid,
        pidStartTime: created.startTime,
        monitorPid: created.monitorPid,
        bundle,
        logPath,
        cgroup,
        stopSignal: stopSignalOf(image),
        user: { uid: user.uid, gid: user.gid, additionalGids: spec.process.additionalGids },
        env: spec.process.env,
        cwd: spec.process.cwd,
        rlimits: spec.process.rlimits,
        oomScoreAdj: spec.process.oomScoreAdj ?? undefined,
      };
      await this.records.put(record);
      this.containers.set(id, record);
      this.watchExit(record);
      phase('record');
      log.info('container created', { name: config.metadata.name, image: image.id, ms: Date.now() - started, phases });
      return record;
    } catch (err) {
      this.names.delete(key);
      if (pid) this.kill(pid, 'SIGKILL');
      if (cgroup) {
        await this.opts.cgroups.killAll(cgroup.path).catch(() => undefined);
        await this.removeCgroupWhenEmpty(cgroup).catch((e) => log.warn('cgroup cleanup failed', { error: errorMessage(e) }));
      }
      await fs.rm(bundle, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    } finally {
      unpinLayers();
    }
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

  // kubelet may ask for AppArmor on a node whose kernel has none; that is worth a warning, not a failed pod.
  private apparmorChecked = false;
  private apparmorAvailable = false;
  private warnAppArmor(profile: string, log: Logger): void {
    if (!profile || profile === 'unconfined') return;
    if (!this.apparmorChecked) {
      this.apparmorChecked = true;
      try {
        this.apparmorAvailable = readFileSync('/sys/module/apparmor/parameters/enabled', 'utf8').trim() === 'Y';
      } catch {
        this.apparmorAvailable = false;
      }
    }
    if (!this.apparmorAvailable) log.warn('AppArmor profile requested but this kernel has no AppArmor: running without it', { profile });
    else log.warn('AppArmor profiles are not applied by berth yet', { profile });
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
  private async ensureHostPath(hostPath: string, index: number): Promise<void> {
    if (!path.isAbsolute(hostPath)) throw invalidArgument(`config.mounts[${index}].host_path "${hostPath}" must be an absolute path`);
    const st = await fs.stat(hostPath).catch(() => undefined);
    if (!st) await fs.mkdir(hostPath, { recursive: true });
  }

  async start(id: string): Promise<void> {
    const record = this.get(id);
    if (record.state !== 'CREATED') throw failedPrecondition(`container ${record.id} is ${record.state}, not CREATED`);
    try {
      await startContainer(record.bundle);
    } catch (err) {
      await this.recordExit(record);
      const why = (await readExecError(record.bundle)) ?? errorMessage(err);
      throw failedPrecondition(`container ${record.id} failed to start: ${why}`);
    }
    record.state = 'RUNNING';
    record.startedAt = Date.now() * 1e6;
    await this.records.put(record);
    this.opts.log.info('container started', { pod: record.sandboxId, container: record.id });
  }

  // A method, not an inline comparison, because state changes behind TypeScript's narrowing (awaits in between).
  private exited(record: ContainerRecord): boolean {
    return record.state === 'EXITED';
  }

  private kill(pid: number, signal: NodeJS.Signals): void {
    try {
      process.kill(pid, signal);
    } catch {
      /* already gone */
    }
  }

  private watchExit(record: ContainerRecord): void {
    if (this.watchers.has(record.id)) return;
    try {
      const watcher = watch(record.bundle, (_event, file) => {
        if (file === 'exit.json') this.recordExitInBackground(record);
      });
      watcher.on('error', () => watcher.close());
      this.watchers.set(record.id, watcher);
    } catch (err) {
      this.opts.log.warn('cannot watch container bundle', { container: record.id, error: errorMessage(err) });
    }
  }

  /** From a watcher or timer: nobody awaits it, so a failure (a full disk, say) is logged here, not thrown. */
  private recordExitInBackground(record: ContainerRecord): void {
    this.recordExit(record).catch((err) =>
      this.opts.log.error('cannot record a container exit', { pod: record.sandboxId, container: record.id, error: errorMessage(err) }),
    );
  }

  private async recordExit(record: ContainerRecord): Promise<void> {
    if (record.state === 'EXITED') return;
    const exit = await readExit(record.bundle);
    if (!exit) return;
    let oomKilled = false;
    try {
      oomKilled = (await this.opts.cgroups.oomKills(record.cgroup.path)) > 0;
    } catch {
      /* cgroup gone: no OOM information */
    }
    const execError = exit.exitCode === 127 ? await readExecError(record.bundle) : undefined;
    await this.markExited(record, {
      exitCode: exit.exitCode,
      signal: exit.signal,
      startedAt: exit.startedAt,
      finishedAt: exit.finishedAt,
      oomKilled,
      reason: oomKilled ? 'OOMKilled' : exit.exitCode === 0 ? 'Completed' : 'Error',
      message: execError ?? '',
    });
  }

  private async markExited(record: ContainerRecord, exit: ExitStatus): Promise<void> {
    if (record.state === 'EXITED') return;
    record.state = 'EXITED';
    record.exit = exit;
    if (!record.startedAt && exit.startedAt) record.startedAt = exit.startedAt;
    this.watchers.get(record.id)?.close();
    this.watchers.delete(record.id);
    // StopContainer returns before the record is on disk: the monitor's exit.json is already durable, and a berth
    // that crashes before this write lands finds it on start (reconcile) and records the same exit again.
    for (const wake of this.exitWaiters.get(record.id) ?? []) wake();
    this.exitWaiters.delete(record.id);
    const write = this.records.put(record).finally(() => {
      if (this.exitWrites.get(record.id) === write) this.exitWrites.delete(record.id);
    });
    this.exitWrites.set(record.id, write);
    await write;
    this.opts.log.info('container exited', { pod: record.sandboxId, container: record.id, exitCode: exit.exitCode, reason: exit.reason });
  }

  private waitExit(record: ContainerRecord, timeoutMs: number): Promise<boolean> {
    if (record.state === 'EXITED') return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const list = this.exitWaiters.get(record.id) ?? [];
        this.exitWaiters.set(record.id, list.filter((w) => w !== wake));
        resolve(false);
      }, timeoutMs);
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const list = this.exitWaiters.get(record.id) ?? [];
      list.push(wake);
      this.exitWaiters.set(record.id, list);
      // The exit may have landed between our state check and the watcher: look once.
      this.recordExitInBackground(record);
    });
  }

  /** Stop signal, then SIGKILL to the whole cgroup after the timeout. Stopping a stopped container is a no-op. */
  async stop(id: string, timeoutSeconds: number): Promise<void> {
    const record = this.get(id);
    if (record.state === 'EXITED') return;
    await this.reconcile(record);
    if (this.exited(record) || !record.pid) return;
    const log = this.opts.log.child({ pod: record.sandboxId, container: record.id });
    if (timeoutSeconds > 0 && record.state === 'RUNNING') {
      this.kill(record.pid, record.stopSignal as NodeJS.Signals);
      if (await this.waitExit(record, timeoutSeconds * 1000)) return;
      log.info('stop timeout passed: killing', { timeoutSeconds });
    }
    this.kill(record.pid, 'SIGKILL');
    await this.opts.cgroups.killAll(record.cgroup.path).catch(() => undefined);
    if (!(await this.waitExit(record, 10_000))) {
      await this.reconcile(record);
      if (!this.exited(record)) throw new BerthError('deadline_exceeded', `container ${record.id} did not exit after SIGKILL`);
    }
  }

  /** Removes a container, killing it first if needed. Removing an unknown container is not an error. */
  async remove(id: string): Promise<void> {
    const record = this.find(id);
    if (!record) return;
    if (record.state !== 'EXITED') await this.stop(record.id, 0);
    // An exit record still being written must land before the record is deleted, or it could outlive it.
    await this.exitWrites.get(record.id)?.catch(() => undefined);
    await this.removeCgroupWhenEmpty(record.cgroup);
    this.watchers.get(record.id)?.close();
    this.watchers.delete(record.id);
    await this.records.delete(record.id);
    this.containers.delete(record.id);
    this.names.delete(this.nameKey(record));
    await this.opts.images.collectGarbage();
    this.opts.log.info('container removed', { pod: record.sandboxId, container: record.id });
  }

  private async removeCgroupWhenEmpty(cgroup: { path: string; created: string[] }): Promise<void> {
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

  private inSandbox(sandboxId: string): ContainerRecord[] {
    return [...this.containers.values()].filter((c) => c.sandboxId === sandboxId);
  }

  async stopAllInSandbox(sandboxId: string): Promise<void> {
    await Promise.all(this.inSandbox(sandboxId).map((c) => this.stop(c.id, 0)));
  }

  async removeAllInSandbox(sandboxId: string): Promise<void> {
    await Promise.all(this.inSandbox(sandboxId).map((c) => this.remove(c.id)));
  }

  async updateResources(id: string, resources: ResourceUpdate): Promise<void> {
    const record = this.get(id);
    if (record.state === 'EXITED') throw failedPrecondition(`container ${record.id} has exited: its resources cannot change`);
    await this.opts.cgroups.apply(record.cgroup.path, toCgroupResources(resources)).catch(inField('linux'));
    record.config.resources = { ...record.config.resources, ...Object.fromEntries(Object.entries(resources).filter(([, v]) => v !== undefined)) };
    await this.records.put(record);
  }

  async execSync(id: string, command: string[], timeoutSeconds: number): Promise<ExecResult> {
    const record = this.get(id);
    if (command.length === 0) throw invalidArgument('cmd is empty');
    if (record.state !== 'RUNNING' || !record.pid) throw failedPrecondition(`container ${record.id} is not running`);
    const security = record.config.security;
    return execInContainer({
      pid: record.pid,
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
      command,
      timeoutMs: timeoutSeconds * 1000,
    });
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
    this.kill(record.monitorPid, 'SIGUSR1');
    const deadline = Date.now() + 5000;
    while (!(await kind())) {
      if (Date.now() > deadline) throw new BerthError('deadline_exceeded', `container ${record.id}: log ${record.logPath} was not reopened within 5s`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  close(): void {
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }
}
