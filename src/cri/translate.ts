import type { PodSandboxConfig__Output } from '../gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig__Output } from '../gen/runtime/v1/ContainerConfig.js';
import type { LinuxContainerResources__Output } from '../gen/runtime/v1/LinuxContainerResources.js';
import type { NamespaceOption__Output } from '../gen/runtime/v1/NamespaceOption.js';
import { invalidArgument } from '../errors.js';
import { IdMapping, NamespaceMode, SandboxConfig, UserNamespaceOptions } from '../sandbox/types.js';
import { ContainerConfig, ContainerMount, Resources } from '../container/types.js';
import { seccompRequest } from '../container/seccomp.js';

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

function userns(opts: NamespaceOption__Output['userns_options'] | undefined, field: string): UserNamespaceOptions | undefined {
  if (!opts || opts.mode === 'NODE' || (opts.uids.length === 0 && opts.gids.length === 0 && opts.mode !== 'POD')) return undefined;
  if (opts.mode !== 'POD') throw invalidArgument(`${field}.mode ${opts.mode}: only POD and NODE are supported for user namespaces`);
  const mappings = (list: { host_id: number; container_id: number; length: number }[], which: string): IdMapping[] => {
    if (list.length === 0) throw invalidArgument(`${field}.${which}: a user namespace needs at least one mapping`);
    return list.map((m, i) => {
      if (m.length <= 0) throw invalidArgument(`${field}.${which}[${i}].length must be positive`);
      return { containerID: m.container_id, hostID: m.host_id, size: m.length };
    });
  };
  return { uidMappings: mappings(opts.uids, 'uids'), gidMappings: mappings(opts.gids, 'gids') };
}

export function sandboxConfigFromProto(config: PodSandboxConfig__Output | null, runtimeHandler: string): SandboxConfig {
  if (!config) throw invalidArgument('config is missing');
  if (!config.metadata) throw invalidArgument('config.metadata is missing');
  const security = config.linux?.security_context;
  return {
    metadata: {
      name: config.metadata.name,
      uid: config.metadata.uid,
      namespace: config.metadata.namespace,
      attempt: config.metadata.attempt,
    },
    hostname: config.hostname,
    logDirectory: config.log_directory,
    dns: config.dns_config
      ? { servers: config.dns_config.servers, searches: config.dns_config.searches, options: config.dns_config.options }
      : undefined,
    portMappings: config.port_mappings.map((p, i) => {
      if (p.host_port < 0 || p.host_port > 65535) throw invalidArgument(`config.port_mappings[${i}].host_port ${p.host_port} is out of range`);
      return { protocol: p.protocol as 'TCP' | 'UDP' | 'SCTP', containerPort: p.container_port, hostPort: p.host_port, hostIp: p.host_ip };
    }),
    labels: { ...config.labels },
    annotations: { ...config.annotations },
    cgroupParent: config.linux?.cgroup_parent ?? '',
    namespaces: namespaces(security?.namespace_options, 'config.linux.security_context.namespace_options'),
    privileged: security?.privileged ?? false,
    sysctls: { ...(config.linux?.sysctls ?? {}) },
    runtimeHandler,
  };
}

export function resourcesFromProto(r: LinuxContainerResources__Output | null | undefined): Resources {
  return {
    cpuPeriod: optionalPositive(r?.cpu_period),
    cpuQuota: optionalPositive(r?.cpu_quota),
    cpuShares: optionalPositive(r?.cpu_shares),
    memoryLimitBytes: optionalPositive(r?.memory_limit_in_bytes),
    oomScoreAdj: r?.oom_score_adj !== undefined && r?.oom_score_adj !== null && num(r.oom_score_adj) !== 0 ? num(r.oom_score_adj) : undefined,
    cpusetCpus: r?.cpuset_cpus || undefined,
    cpusetMems: r?.cpuset_mems || undefined,
    hugepageLimits: (r?.hugepage_limits ?? []).map((h) => ({ pageSize: h.page_size, limit: num(h.limit) })),
    unified: { ...(r?.unified ?? {}) },
    memorySwapLimitBytes: optionalPositive(r?.memory_swap_limit_in_bytes),
  };
}

const propagation = {
  PROPAGATION_PRIVATE: 'PRIVATE',
  PROPAGATION_HOST_TO_CONTAINER: 'HOST_TO_CONTAINER',
  PROPAGATION_BIDIRECTIONAL: 'BIDIRECTIONAL',
} as const;

export function containerConfigFromProto(config: ContainerConfig__Output | null): ContainerConfig {
  if (!config) throw invalidArgument('config is missing');
  if (!config.metadata) throw invalidArgument('config.metadata is missing');
  const security = config.linux?.security_context;
  const oomScoreAdj = num(config.linux?.resources?.oom_score_adj);
  if (oomScoreAdj < -1000 || oomScoreAdj > 1000) throw invalidArgument(`config.linux.resources.oom_score_adj ${oomScoreAdj} is outside -1000..1000`);
  const mounts: ContainerMount[] = config.mounts.map((m, i) => {
    if (!m.container_path) throw invalidArgument(`config.mounts[${i}].container_path is empty`);
    if (!m.container_path.startsWith('/')) throw invalidArgument(`config.mounts[${i}].container_path "${m.container_path}" must be an absolute path`);
    if (!m.host_path) throw invalidArgument(`config.mounts[${i}].host_path is empty`);
    return {
      containerPath: m.container_path,
      hostPath: m.host_path,
      readonly: m.readonly,
      selinuxRelabel: m.selinux_relabel,
      propagation: propagation[m.propagation as keyof typeof propagation] ?? 'PRIVATE',
    };
  });
  const runAsGroup = security?.run_as_group ? num(security.run_as_group.value) : undefined;
  const runAsUser = security?.run_as_user ? num(security.run_as_user.value) : undefined;
  if (runAsGroup !== undefined && runAsUser === undefined && !security?.run_as_username) {
    throw invalidArgument('config.linux.security_context.run_as_group is set without run_as_user or run_as_username');
  }
  return {
    metadata: { name: config.metadata.name, attempt: config.metadata.attempt },
    image: config.image?.image ?? '',
    command: [...config.command],
    args: [...config.args],
    workingDir: config.working_dir,
    envs: config.envs.map((e) => ({ key: e.key, value: e.value })),
    mounts,
    devices: config.devices.map((d) => ({ containerPath: d.container_path, hostPath: d.host_path, permissions: d.permissions })),
    labels: { ...config.labels },
    annotations: { ...config.annotations },
    logPath: config.log_path,
    stdin: config.stdin,
    stdinOnce: config.stdin_once,
    tty: config.tty,
    resources: resourcesFromProto(config.linux?.resources),
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
      noNewPrivs: security?.no_new_privs ?? false,
      maskedPaths: [...(security?.masked_paths ?? [])],
      readonlyPaths: [...(security?.readonly_paths ?? [])],
      namespaces: namespaces(security?.namespace_options, 'config.linux.security_context.namespace_options'),
      seccomp: seccompRequest(security?.seccomp, security?.seccomp_profile_path, 'config.linux.security_context'),
      apparmor: security?.apparmor?.profile_type === 'Localhost' ? `localhost/${security.apparmor.localhost_ref}` : security?.apparmor?.profile_type === 'RuntimeDefault' ? 'runtime/default' : security?.apparmor_profile ?? '',
    },
  };
}
