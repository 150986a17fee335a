// A pod sandbox as the domain sees it: no protobuf here, src/cri/ translates.

export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';

export interface IdMapping {
  containerID: number;
  hostID: number;
  size: number;
}

export interface UserNamespaceOptions {
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
}

export interface NamespaceOptions {
  network: NamespaceMode;
  pid: NamespaceMode;
  ipc: NamespaceMode;
  targetId?: string;
  /** A user namespace with these mappings (kubelet's hostUsers: false); absent = the host's. */
  userns?: UserNamespaceOptions;
}

export interface PortMapping {
  protocol: 'TCP' | 'UDP' | 'SCTP';
  containerPort: number;
  hostPort: number;
  hostIp: string;
}

export interface DnsConfig {
  servers: string[];
  searches: string[];
  options: string[];
}

export interface SandboxMetadata {
  name: string;
  uid: string;
  namespace: string;
  attempt: number;
}

export interface SandboxConfig {
  metadata: SandboxMetadata;
  hostname: string;
  logDirectory: string;
  dns?: DnsConfig;
  portMappings: PortMapping[];
  labels: Record<string, string>;
  annotations: Record<string, string>;
  cgroupParent: string;
  namespaces: NamespaceOptions;
  privileged: boolean;
  /**
   * Strict: no container of the pod takes groups from its image's /etc/group. Absent in records written before the
   * field existed, which reads as Merge.
   */
  supplementalGroupsPolicy?: 'Merge' | 'Strict';
  sysctls: Record<string, string>;
  runtimeHandler: string;
  /**
   * The pod-level resources kubelet gives (linux.resources and linux.overhead): kubelet sizes the pod cgroup
   * itself, so berth only records them (for status and stats limits). UpdatePodSandboxResources replaces them.
   * Absent in records written before the field existed, and when kubelet sends none.
   */
  podResources?: PodResources;
}

/** Pod-level resources as kubelet last reported them; `updatedAt` (ms since the epoch) is 0 for RunPodSandbox's. */
export interface PodResources {
  resources?: import('../container/types.js').Resources;
  overhead?: import('../container/types.js').Resources;
  updatedAt: number;
}

export type SandboxState = 'READY' | 'NOTREADY';

/** The only state changes a pod has: a stopped pod (or one that lost its namespaces) never becomes ready again. */
export const SANDBOX_TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  READY: ['NOTREADY'],
  NOTREADY: [],
};

export interface SandboxRecord {
  id: string;
  /** Record format, set by the record store. */
  version?: number;
  config: SandboxConfig;
  state: SandboxState;
  createdAt: number;
  /** Pinned namespace files, by type. */
  namespacePaths: Partial<Record<'network' | 'ipc' | 'uts' | 'pid', string>>;
  /** The shared-PID init, when the pod shares one PID namespace. */
  initPid?: number;
  /** Pod cgroup and the directories berth created for it. */
  cgroup: { path: string; created: string[] };
  /** Directory holding hosts, hostname, resolv.conf. */
  filesDir: string;
  shmPath?: string;
  ip?: string;
  additionalIps: string[];
  /** What the network backend needs to tear the pod's network down, even after a restart. */
  networkState?: Record<string, unknown>;
}
