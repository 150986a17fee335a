import path from 'node:path';
import type { PodSandboxConfig__Output } from '../gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig__Output } from '../gen/runtime/v1/ContainerConfig.js';
import type { LinuxContainerResources__Output } from '../gen/runtime/v1/LinuxContainerResources.js';
import type { NamespaceOption__Output } from '../gen/runtime/v1/NamespaceOption.js';
import { invalidArgument } from '../errors.js';
import { IdMapping, NamespaceMode, PodResources, SandboxConfig, UserNamespaceOptions } from '../sandbox/types.js';
import type { SupplementalGroupsPolicy } from '../container/user.js';
import { ContainerConfig, ContainerMount, ResourceUpdate, Resources } from '../container/types.js';
import { seccompRequest } from '../container/seccomp.js';
import { devicePermissions } from '../container/devices.js';
import { parseQualifiedName } from '../container/cdi.js';
import { parseStopSignal } from '../container/signals.js';
import { metadataMap, noNul, objectName, pathText } from './names.js';

// Protobuf requests → domain configs. Validation of the shape lives here; meaning is checked by the services.

const num = (v: string | number | undefined | null): number => (v === undefined || v === null || v === '' ? 0 : Number(v));
const optionalPositive = (v: string | number | undefined | null): number | undefined => {
  const n = num(v);
  return n > 0 ? n : undefined;
};

function namespaces(opts: NamespaceOption__Output | null | undefined, field: string) {
  const mode = (m: string | undefined, which: string): NamespaceMode => {
    const value = (m ?? 'POD') as NamespaceMode;
    if (!['POD', 'CONTAINER', 'NODE', 'TARGET'].includes(value)) throw invalidArgument(`${field}.${which}: unknown mode ${m}`);
    return value;
  };
  const result = {
    network: mode(opts?.network, 'network'),
    pid: mode(opts?.pid, 'pid'),
    ipc: mode(opts?.ipc, 'ipc'),
    targetId: opts?.target_id || undefined,
    userns: userns(opts?.userns_options, `${field}.userns_options`),
  };
  if (result.network === 'TARGET') throw invalidArgument(`${field}.network: TARGET is only valid for pid`);
  if (result.ipc === 'TARGET') throw invalidArgument(`${field}.ipc: TARGET is only valid for pid`);
  return result;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * KeyValue.value is bytes since CRI 1.37. berth hands the environment to its init as JSON text, so a value must be
 * UTF-8 (decoding it loosely would replace bytes silently) and free of NUL (execve would cut the string there).
 */
function envValue(value: Buffer | Uint8Array | string, field: string): string {
  if (typeof value === 'string') return value;
  let text: string;
  try {
    text = strictUtf8.decode(value);
  } catch {
    throw invalidArgument(`${field} is not UTF-8 text: berth passes environment values as UTF-8`);
  }
  if (text.includes('\0')) throw invalidArgument(`${field} contains a NUL byte, which an environment value cannot hold`);
  return text;
}

const rangesOverlap = (a: number, aSize: number, b: number, bSize: number) => a < b + bSize && b < a + aSize;

/** Ids are 32-bit: a range must end at or below 2^32, and (uint32 on the wire) cannot start above it. */
const ID_SPACE = 2 ** 32;

interface ProtoIdMapping {
  host_id: number;
  container_id: number;
  length: number;
}

/**
 * One list of user-namespace mappings, checked the way kubelet and the CRI suite expect: every range non-empty and
 * inside the 32-bit id space, no two ranges overlapping on either side (the kernel would refuse the map, or two
 * container ids would share a host id), exactly one mapping (kubelet gives each pod one host range), and container
 * id 0 mapped (the image's root must exist in the namespace).
 */
export function idMappingsFromProto(list: ProtoIdMapping[], field: string): IdMapping[] {
  const mappings = list.map((m, i) => {
    const at = `${field}[${i}]`;
    if (m.length <= 0) throw invalidArgument(`${at}.length is ${m.length}: a mapping covers at least one id`);
    if (m.container_id + m.length > ID_SPACE) {
      throw invalidArgument(`${at}.length ${m.length} from container_id ${m.container_id} overflows the 32-bit id space`);
    }
    if (m.host_id + m.length > ID_SPACE) throw invalidArgument(`${at}.length ${m.length} from host_id ${m.host_id} overflows the 32-bit id space`);
    return { containerID: m.container_id, hostID: m.host_id, size: m.length };
  });
  const span = (from: number, size: number) => `${from}..${from + size - 1}`;
  for (let i = 0; i < mappings.length; i++) {
    for (let j = 0; j < i; j++) {
      const [a, b] = [mappings[j], mappings[i]];
      if (rangesOverlap(a.hostID, a.size, b.hostID, b.size)) {
        throw invalidArgument(`${field}[${i}].host_id: host ids ${span(b.hostID, b.size)} overlap those of ${field}[${j}] (${span(a.hostID, a.size)})`);
      }
      if (rangesOverlap(a.containerID, a.size, b.containerID, b.size)) {
        throw invalidArgument(
          `${field}[${i}].container_id: container ids ${span(b.containerID, b.size)} overlap those of ${field}[${j}] (${span(a.containerID, a.size)})`,
        );
      }
    }
  }
  if (mappings.length !== 1) throw invalidArgument(`${field} has ${mappings.length} mappings: a pod's user namespace takes exactly one`);
  if (mappings[0].containerID !== 0) {
    throw invalidArgument(`${field}[0].container_id is ${mappings[0].containerID}: container id 0 (root) must be mapped`);
  }
  return mappings;
}

function userns(opts: NamespaceOption__Output['userns_options'] | undefined, field: string): UserNamespaceOptions | undefined {
  if (!opts || opts.mode === 'NODE') return undefined;
  // The CRI allows only POD and NODE here; anything else (CONTAINER, TARGET, a number from a newer client) would
  // otherwise run the pod in the host's user namespace, which is not what was asked for.
  if (opts.mode !== 'POD') throw invalidArgument(`${field}.mode ${opts.mode}: a user namespace mode is POD or NODE`);
  return { uidMappings: idMappingsFromProto(opts.uids, `${field}.uids`), gidMappings: idMappingsFromProto(opts.gids, `${field}.gids`) };
}

/** Absent (proto3's zero) is Merge; a number (a newer client's policy) is refused rather than read as Merge. */
function supplementalGroupsPolicy(value: string | number | undefined, field: string): SupplementalGroupsPolicy {
  if (value === undefined || value === 'Merge') return 'Merge';
  if (value === 'Strict') return 'Strict';
  throw invalidArgument(`${field} ${value} is not a supplemental groups policy (Merge or Strict)`);
}

const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];

export function sandboxConfigFromProto(config: PodSandboxConfig__Output | null, runtimeHandler: string): SandboxConfig {
  if (!config) throw invalidArgument('config is missing');
  if (!config.metadata) throw invalidArgument('config.metadata is missing');
  const security = config.linux?.security_context;
  return {
    metadata: {
      name: objectName(config.metadata.name, 'config.metadata.name'),
      uid: objectName(config.metadata.uid, 'config.metadata.uid'),
      namespace: objectName(config.metadata.namespace, 'config.metadata.namespace'),
      attempt: config.metadata.attempt,
    },
    hostname: objectName(config.hostname, 'config.hostname'),
    logDirectory: pathText(config.log_directory, 'config.log_directory'),
    dns: config.dns_config
      ? { servers: config.dns_config.servers, searches: config.dns_config.searches, options: config.dns_config.options }
      : undefined,
    portMappings: config.port_mappings.map((p, i) => {
      if (p.host_port < 0 || p.host_port > 65535) throw invalidArgument(`config.port_mappings[${i}].host_port ${p.host_port} is out of range`);
      if (!PROTOCOLS.includes(p.protocol as string)) throw invalidArgument(`config.port_mappings[${i}].protocol ${p.protocol} is not TCP, UDP or SCTP`);
      return { protocol: p.protocol as 'TCP' | 'UDP' | 'SCTP', containerPort: p.container_port, hostPort: p.host_port, hostIp: p.host_ip };
    }),
    labels: metadataMap(config.labels, 'config.labels'),
    annotations: metadataMap(config.annotations, 'config.annotations'),
    cgroupParent: config.linux?.cgroup_parent ?? '',
    namespaces: namespaces(security?.namespace_options, 'config.linux.security_context.namespace_options'),
    privileged: security?.privileged ?? false,
    supplementalGroupsPolicy: supplementalGroupsPolicy(security?.supplemental_groups_policy, 'config.linux.security_context.supplemental_groups_policy'),
    sysctls: { ...(config.linux?.sysctls ?? {}) },
    runtimeHandler,
    podResources: podResourcesFromProto(config.linux?.resources, config.linux?.overhead, 'config.linux', 0),
  };
}

/** linux.resources / linux.overhead of RunPodSandbox, or resources / overhead of UpdatePodSandboxResources. */
export function podResourcesFromProto(
  resources: LinuxContainerResources__Output | null | undefined,
  overhead: LinuxContainerResources__Output | null | undefined,
  field: string,
  updatedAt: number,
): PodResources | undefined {
  if (!resources && !overhead) return undefined;
  const prefix = field ? `${field}.` : '';
  return {
    resources: resources ? resourcesFromProto(resources, `${prefix}resources`) : undefined,
    overhead: overhead ? resourcesFromProto(overhead, `${prefix}overhead`) : undefined,
    updatedAt,
  };
}

/**
 * Resources as an update gives them. proto3 cannot tell unset from zero or empty, so 0 and empty lists and maps are
 * left undefined: an update that does not mention hugepages keeps the container's hugepage limits.
 */
export function resourceUpdateFromProto(r: LinuxContainerResources__Output | null | undefined, field: string): ResourceUpdate {
  const oomScoreAdj = num(r?.oom_score_adj);
  if (!Number.isInteger(oomScoreAdj) || oomScoreAdj < -1000 || oomScoreAdj > 1000) {
    throw invalidArgument(`${field}.oom_score_adj ${r?.oom_score_adj} is outside -1000..1000`);
  }
  const hugepages = r?.hugepage_limits ?? [];
  const unified = r?.unified ?? {};
  return {
    cpuPeriod: optionalPositive(r?.cpu_period),
    cpuQuota: optionalPositive(r?.cpu_quota),
    cpuShares: optionalPositive(r?.cpu_shares),
    memoryLimitBytes: optionalPositive(r?.memory_limit_in_bytes),
    oomScoreAdj: oomScoreAdj !== 0 ? oomScoreAdj : undefined,
    cpusetCpus: r?.cpuset_cpus || undefined,
    cpusetMems: r?.cpuset_mems || undefined,
    hugepageLimits: hugepages.length > 0 ? hugepages.map((h) => ({ pageSize: h.page_size, limit: num(h.limit) })) : undefined,
    unified: Object.keys(unified).length > 0 ? { ...unified } : undefined,
    memorySwapLimitBytes: optionalPositive(r?.memory_swap_limit_in_bytes),
  };
}

/** Resources a container is created with. */
export function resourcesFromProto(r: LinuxContainerResources__Output | null | undefined, field: string): Resources {
  const resources = resourceUpdateFromProto(r, field);
  return { ...resources, hugepageLimits: resources.hugepageLimits ?? [], unified: resources.unified ?? {} };
}

const propagation = {
  PROPAGATION_PRIVATE: 'PRIVATE',
  PROPAGATION_HOST_TO_CONTAINER: 'HOST_TO_CONTAINER',
  PROPAGATION_BIDIRECTIONAL: 'BIDIRECTIONAL',
} as const;

function mountPropagation(value: string | number, i: number): ContainerMount['propagation'] {
  // An unknown value (a number, with enums as strings) must not quietly become PRIVATE: the mount would not propagate.
  if (typeof value !== 'string' || !Object.hasOwn(propagation, value)) {
    throw invalidArgument(`config.mounts[${i}].propagation ${value} is not a mount propagation`);
  }
  return propagation[value as keyof typeof propagation];
}

// As the CRI defines it (and kubelet sends it): a read-only bind whose submounts would otherwise stay writable. A
// submount the host adds later must not appear writable in the container, so it must not propagate in.
function checkRecursiveReadOnly(m: ContainerMount, i: number): void {
  if (!m.recursiveReadOnly) return;
  const field = `config.mounts[${i}].recursive_read_only`;
  if (!m.readonly) throw invalidArgument(`${field} needs readonly: true`);
  if (m.propagation !== 'PRIVATE') {
    throw invalidArgument(`${field} needs propagation PROPAGATION_PRIVATE, not PROPAGATION_${m.propagation}`);
  }
}

/**
 * The AppArmor profile asked for, in the deprecated string form: the `apparmor` message wins whenever its type is
 * set (Unconfined included); a Localhost ref may carry a "localhost/" prefix already (kubelet and the 1.32 suite send
 * it so), which is not doubled.
 */
export function apparmorRequest(profile: { profile_type?: string; localhost_ref?: string } | null | undefined, legacy: string | undefined): string {
  switch (profile?.profile_type) {
    case 'Localhost':
      return `localhost/${(profile.localhost_ref ?? '').replace(/^localhost\//, '')}`;
    case 'RuntimeDefault':
      return 'runtime/default';
    case 'Unconfined':
      return 'unconfined';
    default:
      return legacy ?? '';
  }
}

/**
 * Mount.mount_options: flags the bind mount gets on top of what berth gives it. Only flags that take something away
 * are accepted (a pod spec is hostile input: "suid", "dev" or "exec" must not undo what the host's mount denies),
 * and each appears once in the result.
 */
export const MOUNT_OPTIONS = ['nosuid', 'nodev', 'noexec', 'noatime', 'nodiratime', 'ro'] as const;

function mountOptions(options: string[], i: number): string[] {
  for (const [j, option] of options.entries()) {
    if (!(MOUNT_OPTIONS as readonly string[]).includes(option)) {
      throw invalidArgument(`config.mounts[${i}].mount_options[${j}] "${option}" is not one berth applies (${MOUNT_OPTIONS.join(', ')})`);
    }
  }
  return [...new Set(options)];
}

/** Mount.image / image_sub_path: an image from berth's store as a read-only volume (resolved by the container service). */
function imageVolume(m: ContainerConfig__Output['mounts'][number], i: number): ContainerMount['image'] {
  const ref = m.image?.image ?? '';
  if (!ref) {
    if (m.image_sub_path) throw invalidArgument(`config.mounts[${i}].image_sub_path is set but config.mounts[${i}].image is empty`);
    return undefined;
  }
  if (m.host_path) throw invalidArgument(`config.mounts[${i}]: host_path and image are both set; a mount is one or the other`);
  const subPath = m.image_sub_path ?? '';
  // Hostile input: a sub path is relative, has no "..", and is confined to the image again when resolved.
  if (subPath.startsWith('/') || subPath.split('/').includes('..') || subPath.includes('\0')) {
    throw invalidArgument(`config.mounts[${i}].image_sub_path "${subPath}" must be a relative path inside the image, without ".."`);
  }
  return { ref, subPath: path.posix.normalize(subPath || '.').replace(/(.)\/+$/, '$1') };
}

/** SELinux options as given, or undefined when every field is empty (what kubelet sends for none). */
function selinuxOptions(o: { user?: string; role?: string; type?: string; level?: string } | null | undefined) {
  if (!o || !(o.user || o.role || o.type || o.level)) return undefined;
  return { user: o.user ?? '', role: o.role ?? '', type: o.type ?? '', level: o.level ?? '' };
}

/** CRI's Signal enum names a signal as SIGNAL_<name>, with PLUS/MINUS for the real-time offsets. */
export function stopSignalFromProto(value: string | number | undefined): string | undefined {
  if (value === undefined || value === 'SIGNAL_RUNTIME_DEFAULT') return undefined;
  // A number is an enum value this proto does not know (a newer client's): refused rather than guessed at.
  const name = typeof value === 'string' && value.startsWith('SIGNAL_SIG') ? value.slice('SIGNAL_'.length).replace('PLUS', '+').replace('MINUS', '-') : undefined;
  const canonical = name === undefined ? undefined : parseStopSignal(name);
  if (!canonical) throw invalidArgument(`config.stop_signal ${value} is not a signal berth knows`);
  return canonical;
}

/** The inverse, for ContainerStatus.stop_signal. */
export function stopSignalToProto(name: string): string {
  return `SIGNAL_${name.replace('+', 'PLUS').replace('-', 'MINUS')}`;
}

export function containerConfigFromProto(config: ContainerConfig__Output | null): ContainerConfig {
  if (!config) throw invalidArgument('config is missing');
  if (!config.metadata) throw invalidArgument('config.metadata is missing');
  const security = config.linux?.security_context;
  const mounts: ContainerMount[] = config.mounts.map((m, i) => {
    if (!m.container_path) throw invalidArgument(`config.mounts[${i}].container_path is empty`);
    pathText(m.container_path, `config.mounts[${i}].container_path`);
    pathText(m.host_path, `config.mounts[${i}].host_path`);
    if (!m.container_path.startsWith('/')) throw invalidArgument(`config.mounts[${i}].container_path "${m.container_path}" must be an absolute path`);
    // Fields berth would otherwise drop silently: refused by name, so a pod never runs without what it asked for.
    if ((m.uidMappings ?? []).length > 0 || (m.gidMappings ?? []).length > 0) {
      throw invalidArgument(`config.mounts[${i}].uidMappings/gidMappings: per-mount id mappings are not supported (berth id-maps volumes to the pod's user namespace itself)`);
    }
    const image = imageVolume(m, i);
    if (!image && !m.host_path) throw invalidArgument(`config.mounts[${i}].host_path is empty`);
    const mount: ContainerMount = {
      containerPath: m.container_path,
      hostPath: image ? '' : m.host_path,
      // An image volume is read-only whatever the request says: the image's layers are shared by every user of it.
      readonly: image ? true : m.readonly,
      selinuxRelabel: m.selinux_relabel,
      propagation: mountPropagation(m.propagation, i),
      recursiveReadOnly: m.recursive_read_only,
    };
    const options = mountOptions(m.mount_options ?? [], i);
    if (options.length > 0) mount.mountOptions = options;
    if (image) mount.image = image;
    checkRecursiveReadOnly(mount, i);
    return mount;
  });
  if ((security?.capabilities?.add_ambient_capabilities ?? []).length > 0) {
    throw invalidArgument('config.linux.security_context.capabilities.add_ambient_capabilities: ambient capabilities are not supported by berth yet');
  }
  const runAsGroup = security?.run_as_group ? num(security.run_as_group.value) : undefined;
  const runAsUser = security?.run_as_user ? num(security.run_as_user.value) : undefined;
  if (runAsGroup !== undefined && runAsUser === undefined && !security?.run_as_username) {
    throw invalidArgument('config.linux.security_context.run_as_group is set without run_as_user or run_as_username');
  }
  return {
    metadata: { name: objectName(config.metadata.name, 'config.metadata.name'), attempt: config.metadata.attempt },
    image: config.image?.image ?? '',
    // kubelet resolves the pod's image to an id before CreateContainer and sends what the pod spec said here.
    ...(config.image?.user_specified_image ? { userSpecifiedImage: config.image.user_specified_image } : {}),
    command: config.command.map((c, i) => noNul(c, `config.command[${i}]`)),
    args: config.args.map((a, i) => noNul(a, `config.args[${i}]`)),
    workingDir: pathText(config.working_dir, 'config.working_dir'),
    envs: config.envs.map((e, i) => ({ key: e.key, value: envValue(e.value, `config.envs[${i}].value`) })),
    mounts,
    devices: config.devices.map((d, i) => {
      if (!d.host_path) throw invalidArgument(`config.devices[${i}].host_path is empty`);
      pathText(d.host_path, `config.devices[${i}].host_path`);
      pathText(d.container_path, `config.devices[${i}].container_path`);
      if (!d.container_path.startsWith('/')) throw invalidArgument(`config.devices[${i}].container_path "${d.container_path}" must be an absolute path`);
      return { containerPath: d.container_path, hostPath: d.host_path, permissions: devicePermissions(d.permissions, `config.devices[${i}].permissions`) };
    }),
    cdiDevices: config.CDI_devices.map((d, i) => {
      if (!parseQualifiedName(d.name)) throw invalidArgument(`config.cdi_devices[${i}].name "${d.name}" is not a fully qualified CDI device name (vendor.com/class=name)`);
      return d.name;
    }),
    labels: metadataMap(config.labels, 'config.labels'),
    annotations: metadataMap(config.annotations, 'config.annotations'),
    logPath: pathText(config.log_path, 'config.log_path'),
    stdin: config.stdin,
    stdinOnce: config.stdin_once,
    tty: config.tty,
    resources: resourcesFromProto(config.linux?.resources, 'config.linux.resources'),
    security: {
      capabilities: {
        add: [...(security?.capabilities?.add_capabilities ?? [])],
        drop: [...(security?.capabilities?.drop_capabilities ?? [])],
      },
      privileged: security?.privileged ?? false,
      runAsUser,
      runAsUsername: security?.run_as_username || undefined,
      runAsGroup,
      readonlyRootfs: security?.readonly_rootfs ?? false,
      supplementalGroups: (security?.supplemental_groups ?? []).map(num),
      supplementalGroupsPolicy: supplementalGroupsPolicy(security?.supplemental_groups_policy, 'config.linux.security_context.supplemental_groups_policy'),
      noNewPrivs: security?.no_new_privs ?? false,
      maskedPaths: [...(security?.masked_paths ?? [])],
      readonlyPaths: [...(security?.readonly_paths ?? [])],
      namespaces: namespaces(security?.namespace_options, 'config.linux.security_context.namespace_options'),
      seccomp: seccompRequest(security?.seccomp, security?.seccomp_profile_path, 'config.linux.security_context'),
      apparmor: apparmorRequest(security?.apparmor, security?.apparmor_profile),
      selinuxOptions: selinuxOptions(security?.selinux_options),
    },
    stopSignal: stopSignalFromProto(config.stop_signal),
  };
}
