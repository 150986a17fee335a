// The contract with native/berth-shim: bundle/spec.json. See native/README.md.

export type NamespaceType = 'mount' | 'pid' | 'ipc' | 'uts' | 'network' | 'cgroup' | 'user';

export interface ShimMount {
  destination: string;
  /** 'image': an image volume, an overlay of `layers` (top first, at least two) of which `subPath` is attached. */
  type: string;
  source: string;
  options: string[];
  layers?: string[];
  /** Relative to the image's root, '.' for all of it; resolved beneath it by the init (RESOLVE_IN_ROOT). */
  subPath?: string;
}

export interface ShimDevice {
  path: string;
  /** c: character, b: block, p: fifo (CDI may ask for one). */
  type: 'c' | 'b' | 'p';
  major: number;
  minor: number;
  mode: number;
  uid: number;
  gid: number;
}

/**
 * One device cgroup rule, in the shape of OCI's linux.resources.devices: major/minor absent = any. The rules apply
 * over a default of deny and the last matching one decides (an allow rule matches a request whose access is within
 * its own; a deny rule one that asks for any of its access). A rule of type `a` must be `*:* rwm`.
 */
export interface ShimDeviceRule {
  allow: boolean;
  type: 'a' | 'c' | 'b';
  major?: number;
  minor?: number;
  /** A non-empty subset of "rwm". */
  access: string;
}

export interface ShimCapabilities {
  bounding: string[];
  effective: string[];
  permitted: string[];
  inheritable: string[];
  ambient: string[];
}

export interface ShimSpec {
  id: string;
  bundle: string;
  process: {
    args: string[];
    env: string[];
    cwd: string;
    uid: number;
    gid: number;
    additionalGids: number[];
    terminal: boolean;
    stdin: boolean;
    rlimits: { type: string; soft: number; hard: number }[];
    oomScoreAdj: number | null;
    noNewPrivileges: boolean;
    capabilities: ShimCapabilities;
    /** AppArmor profile the init asks for right before execve; absent = unconfined. */
    apparmorProfile?: string;
  };
  root: { path: string; readonly: boolean };
  overlay?: { lower: string[]; upper: string; work: string };
  hostname?: string;
  namespaces: { type: NamespaceType; path?: string }[];
  /** With a new `user` namespace: OCI-style mappings. */
  uidMappings?: { containerID: number; hostID: number; size: number }[];
  gidMappings?: { containerID: number; hostID: number; size: number }[];
  cgroupProcs: string[];
  mounts: ShimMount[];
  devices: ShimDevice[];
  /** The device policy, applied by the shim to the container's cgroups before its init joins them; absent = none. */
  deviceRules?: ShimDeviceRule[];
  maskedPaths: string[];
  readonlyPaths: string[];
  sysctl: Record<string, string>;
  /** With `directory`: `path` is relative and opened beneath it (openat2 RESOLVE_BENEATH, O_NOFOLLOW); else absolute. */
  log: { directory?: string; path: string; maxLineBytes: number };
  /** Loaded with libseccomp right before exec; absent = unconfined. */
  seccomp?: {
    defaultAction: string;
    defaultErrnoRet?: number;
    architectures?: string[];
    syscalls: { names: string[]; action: string; errnoRet?: number; args?: { index: number; value: number; valueTwo?: number; op: string }[] }[];
  };
}
