import path from 'node:path';
import { invalidArgument } from '../errors.js';
import { ImageConfig } from '../image/types.js';
import { NamespaceType, ShimDevice, ShimMount, ShimSpec } from '../kernel/shim-spec.js';
import { SandboxRecord } from '../sandbox/types.js';
import { capabilitySet } from './capabilities.js';
import type { CdiInjection } from './cdi.js';
import { devicePermissions, deviceRules, type GrantedDevice } from './devices.js';
import { lxcfsMounts } from './lxcfs.js';
import type { LxcfsView } from '../kernel/lxcfs.js';
import { runtimeDefaultProfile, SeccompProfile } from './seccomp.js';
import { ContainerConfig } from './types.js';
import { ResolvedUser } from './user.js';

// Pure translation of a CRI container config + image config + sandbox into the native shim's spec.

export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export const DEFAULT_MASKED_PATHS = [
  '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
  '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
];
export const DEFAULT_READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export const DEFAULT_DEVICES: ShimDevice[] = [
  { path: '/dev/null', type: 'c', major: 1, minor: 3, mode: 0o666, uid: 0, gid: 0 },
  { path: '/dev/zero', type: 'c', major: 1, minor: 5, mode: 0o666, uid: 0, gid: 0 },
  { path: '/dev/full', type: 'c', major: 1, minor: 7, mode: 0o666, uid: 0, gid: 0 },
  { path: '/dev/random', type: 'c', major: 1, minor: 8, mode: 0o666, uid: 0, gid: 0 },
  { path: '/dev/urandom', type: 'c', major: 1, minor: 9, mode: 0o666, uid: 0, gid: 0 },
  { path: '/dev/tty', type: 'c', major: 5, minor: 0, mode: 0o666, uid: 0, gid: 0 },
];

/** Kubernetes' rule: command replaces the entrypoint (and drops the image's Cmd); args replace Cmd. */
export function mergeCommand(config: Pick<ContainerConfig, 'command' | 'args'>, image: ImageConfig): string[] {
  const entrypoint = config.command.length > 0 ? config.command : image.config?.Entrypoint ?? [];
  const args = config.args.length > 0 ? config.args : config.command.length > 0 ? [] : image.config?.Cmd ?? [];
  const argv = [...entrypoint, ...args];
  if (argv.length === 0) throw invalidArgument('config.command: no command given and the image has no Entrypoint or Cmd');
  return argv;
}

/** Image env first, the CRI config's envs override by key; PATH and HOSTNAME get defaults. */
export function mergeEnv(config: Pick<ContainerConfig, 'envs'>, image: ImageConfig, hostname: string): string[] {
  const env = new Map<string, string>();
  const put = (entry: string) => {
    const eq = entry.indexOf('=');
    env.set(eq < 0 ? entry : entry.slice(0, eq), entry);
  };
  put(DEFAULT_PATH);
  if (hostname) put(`HOSTNAME=${hostname}`);
  for (const e of image.config?.Env ?? []) put(e);
  for (const { key, value } of config.envs) {
    if (key === '') throw invalidArgument('config.envs: an environment variable has an empty key');
    put(`${key}=${value}`);
  }
  return [...env.values()];
}

const propagationOption = { PRIVATE: 'rprivate', HOST_TO_CONTAINER: 'rslave', BIDIRECTIONAL: 'rshared' } as const;

export interface SpecInputs {
  id: string;
  config: ContainerConfig;
  image: ImageConfig;
  sandbox: SandboxRecord;
  user: ResolvedUser;
  bundle: string;
  rootfs: string;
  lowerDirs: string[];
  upperDir: string;
  workDir: string;
  /** Relative to logDirectory when that is set (the monitor opens it beneath the directory), else absolute. */
  logPath: string;
  logDirectory?: string;
  cgroupProcs: string[];
  /** pid namespace of the TARGET container, when pid mode is TARGET. */
  targetPidNamespace?: string;
  rlimits: { type: string; soft: number; hard: number }[];
  maxLogLineBytes: number;
  shmSizeBytes: number;
  /** A Localhost profile, already read; RuntimeDefault is built here from the capability set. */
  localhostSeccomp?: SeccompProfile;
  /** The host device nodes behind config.devices[i], already stat'ed by the service. */
  hostDevices?: ShimDevice[][];
  /** What the config's CDI devices add, already resolved from the spec files by the service. */
  cdi?: CdiInjection;
  /** The layer directories (top first) of the image behind config.mounts[i].image, by mount index. */
  imageVolumes?: Record<number, string[]>;
  /** The lxcfs whose /proc files the container gets (decided by the service: never for a privileged one). */
  lxcfs?: LxcfsView;
}

function standardMounts(inputs: SpecInputs, privileged: boolean): ShimMount[] {
  // A privileged container sees every host device, as with Docker: the host's /dev instead of a fresh tmpfs.
  const dev: ShimMount = privileged
    ? { destination: '/dev', type: 'bind', source: '/dev', options: ['rbind', 'rslave', 'nosuid'] }
    : { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] };
  const mounts: ShimMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    dev,
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', privileged ? 'rw' : 'ro'] },
  ];
  const shm = inputs.sandbox.shmPath;
  if (shm && (inputs.config.security.namespaces.ipc !== 'CONTAINER' || inputs.sandbox.config.namespaces.ipc === 'NODE')) {
    mounts.push({ destination: '/dev/shm', type: 'bind', source: shm, options: ['rbind', 'nosuid', 'nodev', 'noexec', 'rprivate'] });
  } else {
    mounts.push({ destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', `size=${inputs.shmSizeBytes}`] });
  }
  return mounts;
}

export function buildSpec(inputs: SpecInputs): ShimSpec {
  const { config, sandbox } = inputs;
  const security = config.security;
  const privileged = security.privileged;
  const caps = capabilitySet({ privileged, add: security.capabilities.add, drop: security.capabilities.drop });

  const userMountTargets = new Set(config.mounts.map((m) => path.posix.normalize(m.containerPath)));
  const mounts = standardMounts(inputs, privileged);
  const podFiles: [string, string][] = [
    ['/etc/hosts', path.join(sandbox.filesDir, 'hosts')],
    ['/etc/hostname', path.join(sandbox.filesDir, 'hostname')],
    ['/etc/resolv.conf', path.join(sandbox.filesDir, 'resolv.conf')],
  ];
  for (const [destination, source] of podFiles) {
    if (userMountTargets.has(destination)) continue;
    mounts.push({ destination, type: 'bind', source, options: ['rbind', 'rprivate', security.readonlyRootfs ? 'ro' : 'rw'] });
  }
  // After the /proc mount they cover; maskedPaths and readonlyPaths are applied after every mount, so they still win.
  if (inputs.lxcfs && !privileged) mounts.push(...lxcfsMounts(inputs.lxcfs, userMountTargets));
  for (const [index, m] of config.mounts.entries()) {
    if (!path.posix.isAbsolute(m.containerPath)) {
      throw invalidArgument(`config.mounts[${index}].container_path "${m.containerPath}" must be an absolute path`);
    }
    if (m.image) {
      const layers = inputs.imageVolumes?.[index];
      if (!layers) throw invalidArgument(`config.mounts[${index}].image: the image's layers were not resolved`);
      // Always read-only; propagation is moot for a mount nobody else holds.
      mounts.push({
        destination: path.posix.normalize(m.containerPath),
        type: 'image',
        source: '',
        options: ['rprivate', 'ro', 'nosuid', 'nodev', ...(m.mountOptions ?? [])],
        layers,
        subPath: m.image.subPath,
      });
      continue;
    }
    if (!path.posix.isAbsolute(m.hostPath)) {
      throw invalidArgument(`config.mounts[${index}].host_path "${m.hostPath}" must be an absolute path`);
    }
    mounts.push({
      destination: path.posix.normalize(m.containerPath),
      type: 'bind',
      source: m.hostPath,
      options: ['rbind', propagationOption[m.propagation], m.readonly ? 'ro' : 'rw', ...(m.mountOptions ?? []), ...(m.recursiveReadOnly ? ['rro'] : [])],
    });
  }

  const granted: GrantedDevice[] = [];
  for (const [i, d] of config.devices.entries()) {
    if (!path.posix.isAbsolute(d.containerPath)) throw invalidArgument(`config.devices[${i}].container_path "${d.containerPath}" must be absolute`);
    const permissions = devicePermissions(d.permissions, `config.devices[${i}].permissions`);
    for (const node of inputs.hostDevices?.[i] ?? []) granted.push({ node, permissions });
  }
  const cdi = inputs.cdi;
  if (cdi) {
    granted.push(...cdi.granted);
    mounts.push(...cdi.mounts);
  }
  // A privileged container has the host's /dev bound in: a node made there would be made on the host.
  const devices = privileged ? [] : [...DEFAULT_DEVICES, ...granted.map((g) => g.node)];
  const env = mergeEnv(config, inputs.image, sandbox.config.hostname);
  for (const e of cdi?.env ?? []) {
    const key = e.slice(0, e.indexOf('=') + 1);
    const at = env.findIndex((x) => x.startsWith(key));
    if (at >= 0) env[at] = e;
    else env.push(e);
  }
  const additionalGids = [...new Set([...inputs.user.additionalGids, ...(cdi?.additionalGids ?? [])])];
  let seccomp: SeccompProfile | undefined;
  if (!privileged && security.seccomp.kind === 'runtime-default') seccomp = runtimeDefaultProfile(caps);
  else if (!privileged && security.seccomp.kind === 'localhost') seccomp = inputs.localhostSeccomp;
  const namespaces: { type: NamespaceType; path?: string }[] = [{ type: 'mount' }, { type: 'cgroup' }];
  const ns = security.namespaces;
  const pod = sandbox.config.namespaces;
  // Network and IPC belong to the pod in CRI: a container shares whatever its pod has (host included).
  if (pod.network !== 'NODE') {
    namespaces.push(sandbox.namespacePaths.network ? { type: 'network', path: sandbox.namespacePaths.network } : { type: 'network' });
  }
  if (pod.ipc !== 'NODE') {
    if (ns.ipc === 'CONTAINER' || !sandbox.namespacePaths.ipc) namespaces.push({ type: 'ipc' });
    else namespaces.push({ type: 'ipc', path: sandbox.namespacePaths.ipc });
  }
  if (sandbox.namespacePaths.uts) namespaces.push({ type: 'uts', path: sandbox.namespacePaths.uts });
  if (ns.pid === 'TARGET') {
    if (!inputs.targetPidNamespace) throw invalidArgument('linux.security_context.namespace_options.target_id: target container is not running');
    namespaces.push({ type: 'pid', path: inputs.targetPidNamespace });
  } else if (ns.pid === 'NODE' || pod.pid === 'NODE') {
    // the host's pid namespace: nothing to join or create
  } else if (ns.pid === 'POD' && sandbox.namespacePaths.pid) {
    namespaces.push({ type: 'pid', path: sandbox.namespacePaths.pid });
  } else {
    namespaces.push({ type: 'pid' });
  }

  // kubelet sends the pod's mappings with every container; each container gets a user namespace with them.
  const userns = ns.userns ?? sandbox.config.namespaces.userns;
  if (userns) namespaces.unshift({ type: 'user' });

  return {
    id: inputs.id,
    bundle: inputs.bundle,
    ...(userns ? { uidMappings: userns.uidMappings, gidMappings: userns.gidMappings } : {}),
    process: {
      args: mergeCommand(config, inputs.image),
      env,
      cwd: config.workingDir || inputs.image.config?.WorkingDir || '/',
      uid: inputs.user.uid,
      gid: inputs.user.gid,
      additionalGids,
      terminal: config.tty,
      stdin: config.stdin,
      rlimits: inputs.rlimits,
      oomScoreAdj: config.resources.oomScoreAdj ?? null,
      noNewPrivileges: security.noNewPrivs && !privileged,
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] },
    },
    root: { path: inputs.rootfs, readonly: security.readonlyRootfs },
    overlay: { lower: inputs.lowerDirs, upper: inputs.upperDir, work: inputs.workDir },
    namespaces,
    cgroupProcs: inputs.cgroupProcs,
    mounts,
    devices,
    deviceRules: deviceRules({ privileged, granted }),
    maskedPaths: privileged ? [] : security.maskedPaths.length > 0 ? security.maskedPaths : DEFAULT_MASKED_PATHS,
    readonlyPaths: privileged ? [] : security.readonlyPaths.length > 0 ? security.readonlyPaths : DEFAULT_READONLY_PATHS,
    sysctl: {},
    log: { ...(inputs.logDirectory ? { directory: inputs.logDirectory } : {}), path: inputs.logPath, maxLineBytes: inputs.maxLogLineBytes },
    ...(seccomp ? { seccomp } : {}),
  };
}
