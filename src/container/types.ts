import type { WritableLayerState } from '../kernel/writable-layer.js';
// A container as the domain sees it.

export interface ContainerMount {
  containerPath: string;
  hostPath: string;
  readonly: boolean;
  selinuxRelabel: boolean;
  propagation: 'PRIVATE' | 'HOST_TO_CONTAINER' | 'BIDIRECTIONAL';
  /** The bind and every submount read-only (needs readonly and PRIVATE); absent in records of older berths. */
  recursiveReadOnly?: boolean;
  /** CRI's mount_options: restricting bind flags (nosuid, nodev, noexec, ...) checked by the CRI layer. */
  mountOptions?: string[];
  /**
   * An image volume (hostPath is then empty): `ref` as kubelet gives it (the id PullImage returned), `subPath`
   * normalised and relative ('.' for the whole image). `imageId` is filled at create with the id it resolved to.
   */
  image?: { ref: string; subPath: string; imageId?: string };
}

export interface DeviceMapping {
  containerPath: string;
  hostPath: string;
  /** Cgroup access to the device: a subset of "rwm", empty meaning "rwm" (checked by the CRI layer). */
  permissions: string;
}

export interface Resources {
  cpuPeriod?: number;
  cpuQuota?: number;
  cpuShares?: number;
  memoryLimitBytes?: number;
  oomScoreAdj?: number;
  cpusetCpus?: string;
  cpusetMems?: string;
  hugepageLimits: { pageSize: string; limit: number }[];
  unified: Record<string, string>;
  memorySwapLimitBytes?: number;
}

/** What UpdateContainerResources may leave out: the service keeps the stored value of every undefined field. */
export type ResourceUpdate = Omit<Resources, 'hugepageLimits' | 'unified'> & Partial<Pick<Resources, 'hugepageLimits' | 'unified'>>;

import type { SeccompRequest } from './seccomp.js';

export interface SecurityOptions {
  capabilities: { add: string[]; drop: string[] };
  privileged: boolean;
  runAsUser?: number;
  runAsUsername?: string;
  runAsGroup?: number;
  readonlyRootfs: boolean;
  supplementalGroups: number[];
  /** Merge (also when absent): the user's memberships in the image's /etc/group join supplementalGroups; Strict: only these. */
  supplementalGroupsPolicy?: import('./user.js').SupplementalGroupsPolicy;
  noNewPrivs: boolean;
  maskedPaths: string[];
  readonlyPaths: string[];
  namespaces: { network: string; pid: string; ipc: string; targetId?: string; userns?: import('../sandbox/types.js').UserNamespaceOptions };
  seccomp: SeccompRequest;
  /** AppArmor profile asked for: '' (not set), 'unconfined', 'runtime/default' or 'localhost/<name>'. */
  apparmor: string;
  /** SELinux options, when any field of them was given (berth does not label: see ContainerService). */
  selinuxOptions?: { user: string; role: string; type: string; level: string };
}

export interface ContainerMetadata {
  name: string;
  attempt: number;
}

export interface ContainerConfig {
  metadata: ContainerMetadata;
  image: string;
  /** ImageSpec.user_specified_image: the image as the pod spec names it, echoed in ContainerStatus and ListContainers. */
  userSpecifiedImage?: string;
  command: string[];
  args: string[];
  workingDir: string;
  envs: { key: string; value: string }[];
  mounts: ContainerMount[];
  devices: DeviceMapping[];
  /** Fully qualified CDI device names (vendor.com/class=name). Absent in records made before CDI support. */
  cdiDevices?: string[];
  labels: Record<string, string>;
  annotations: Record<string, string>;
  logPath: string;
  stdin: boolean;
  stdinOnce: boolean;
  tty: boolean;
  resources: Resources;
  security: SecurityOptions;
  /** CRI's stop_signal as a canonical name (SIGQUIT, SIGRTMIN+3): overrides the image's STOPSIGNAL; absent = the image's. */
  stopSignal?: string;
}

export type ContainerState = 'CREATED' | 'RUNNING' | 'EXITED' | 'UNKNOWN';

/**
 * The only state changes a container has (the record store refuses any other): a start that fails, or a pod stopped
 * before its container started, goes from CREATED to EXITED. No record is ever UNKNOWN: it is a CRI state that
 * ListContainers' filter can name, so it has no way in or out.
 */
export const CONTAINER_TRANSITIONS: Readonly<Record<ContainerState, readonly ContainerState[]>> = {
  CREATED: ['RUNNING', 'EXITED'],
  RUNNING: ['EXITED'],
  EXITED: [],
  UNKNOWN: [],
};

export interface ExitStatus {
  exitCode: number;
  signal: number;
  startedAt: number;
  finishedAt: number;
  oomKilled: boolean;
  reason: string;
  message: string;
}

export interface ContainerRecord {
  id: string;
  /** Record format, set by the record store. */
  version?: number;
  sandboxId: string;
  config: ContainerConfig;
  imageId: string;
  /** The image name as the user asked for it (image field of ContainerStatus). */
  imageName: string;
  imageLayers: string[];
  /** Layers of the images mounted as volumes (kept from garbage collection like imageLayers); absent = none. */
  volumeLayers?: string[];
  createdAt: number;
  startedAt?: number;
  state: ContainerState;
  pid?: number;
  /** Field 22 of /proc/<pid>/stat of the init: exec refuses a recycled pid. Absent in older records. */
  pidStartTime?: number;
  monitorPid?: number;
  exit?: ExitStatus;
  bundle: string;
  logPath: string;
  cgroup: { path: string; created: string[] };
  /** The signal StopContainer sends first, by canonical name (see signals.ts). */
  stopSignal: string;
  /** uid/gid/groups the process runs with, for exec. */
  user: { uid: number; gid: number; additionalGids: number[] };
  env: string[];
  cwd: string;
  /** The init's rlimits and oom_score_adj as created, for exec'd processes. Absent in older records. */
  rlimits?: { type: string; soft: number; hard: number }[];
  oomScoreAdj?: number;
  /** The AppArmor profile the init asked for (exec'd processes get it too); absent = unconfined. */
  apparmorProfile?: string;
  /** The container's size-limited writable layer, when it has one: what exists for it, for removal and recovery. */
  writableLayer?: WritableLayerState;
}
