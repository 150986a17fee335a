// The cgroup layout of this host: which hierarchies are mounted (v1, v2 or a hybrid of both) and where each
// controller berth uses lives. Discovered from mountinfo, never assumed: on some hosts cpu and cpuacct are
// separate v1 mounts and hugetlb lives alone on the cgroup2 mount, on others everything is one cgroup2 tree.
//
// Paths are absolute within each hierarchy as seen through its mount point (cgroup-namespace semantics).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { invalidArgument, unavailable } from '../errors.js';
import { parseMountInfo, type MountInfo } from './mountinfo.js';

/**
 * The controllers berth sets limits with or reads statistics from, and v1's devices, which enforces the
 * container's device policy (the shim writes its rules; on cgroup2 a device program does that job, attached to
 * the container's cgroup in the unified tree). freezer is not needed.
 */
export type Controller = 'cpu' | 'cpuacct' | 'cpuset' | 'memory' | 'pids' | 'devices' | 'hugetlb' | 'blkio' | 'io';
// blkio (v1) and io (v2) only account the container's block I/O for its stats; berth sets no I/O limit.
export const CONTROLLERS: readonly Controller[] = ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'devices', 'hugetlb', 'blkio', 'io'];

// Mount options of a v1 cgroup mount that name controllers (the rest are rw, name=systemd, xattr, ...).
const V1_CONTROLLERS = new Set([
  'cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'net_cls', 'net_prio', 'blkio',
  'perf_event', 'hugetlb', 'pids', 'rdma', 'misc',
]);

export interface Hierarchy {
  version: 1 | 2;
  mountPoint: string;
  /** v1: the controllers bound to this mount; v2: the root's cgroup.controllers. */
  controllers: string[];
}

/** Plain data (JSON-safe): hierarchies are compared by mountPoint, never by identity. */
export interface CgroupLayout {
  mode: 'v1' | 'hybrid' | 'v2';
  /** The distinct hierarchies a berth cgroup is created in, and a process is written into. */
  hierarchies: Hierarchy[];
  /** Where each controller lives; absent when the kernel has it nowhere. */
  controllers: Partial<Record<Controller, Hierarchy>>;
  /** The cgroup2 mount, if any (even when it holds no controller berth uses). */
  unified: Hierarchy | null;
}

export type ReadControllers = (mountPoint: string) => string[];

function readRootControllers(mountPoint: string): string[] {
  try {
    return readFileSync(path.join(mountPoint, 'cgroup.controllers'), 'utf8').split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
}

/** Reads /proc/self/mountinfo unless given its text; readControllers lets tests fake cgroup.controllers. */
export function discoverCgroups(
  mountinfoText?: string,
  readControllers: ReadControllers = readRootControllers,
): CgroupLayout {
  const text = mountinfoText ?? readFileSync('/proc/self/mountinfo', 'utf8');
  return layoutFromMounts(parseMountInfo(text), readControllers);
}

export function layoutFromMounts(mounts: MountInfo[], readControllers: ReadControllers): CgroupLayout {
  // A hierarchy can be mounted more than once (bind mounts of a sub-cgroup): prefer a mount of its root.
  const ordered = [...mounts].sort((a, b) => Number(b.root === '/') - Number(a.root === '/'));
  const controllers: Partial<Record<Controller, Hierarchy>> = {};
  const taken = new Set<string>();
  let unifiedMount: MountInfo | undefined;
  for (const m of ordered) {
    if (m.fsType === 'cgroup2') {
      unifiedMount ??= m;
      continue;
    }
    if (m.fsType !== 'cgroup') continue;
    const names = m.superOptions.filter((o) => V1_CONTROLLERS.has(o));
    // Named hierarchies (name=systemd) have no controllers; a second mount of a seen hierarchy adds nothing.
    if (names.length === 0 || names.some((n) => taken.has(n))) continue;
    const h: Hierarchy = { version: 1, mountPoint: m.mountPoint, controllers: names };
    for (const n of names) {
      taken.add(n);
      if ((CONTROLLERS as readonly string[]).includes(n)) controllers[n as Controller] = h;
    }
  }
  const unified: Hierarchy | null = unifiedMount
    ? { version: 2, mountPoint: unifiedMount.mountPoint, controllers: readControllers(unifiedMount.mountPoint) }
    : null;
  // The kernel lists a controller in cgroup2 only when no v1 mount has bound it; check anyway.
  for (const c of CONTROLLERS) {
    if (!controllers[c] && unified?.controllers.includes(c)) controllers[c] = unified;
  }
  const hierarchies: Hierarchy[] = [];
  for (const c of CONTROLLERS) {
    const h = controllers[c];
    if (h && !hierarchies.some((x) => x.mountPoint === h.mountPoint)) hierarchies.push(h);
  }
  // A pure v2 host without a usable controller still needs its one tree (process tracking, cgroup.kill); and
  // without a v1 devices controller the container's device program is what enforces its device policy, and that
  // program is attached to its cgroup2 directory.
  if (unified && !controllers.devices && !hierarchies.some((h) => h.mountPoint === unified.mountPoint)) hierarchies.push(unified);
  if (hierarchies.length === 0) throw unavailable('no cgroup hierarchy is mounted (see /proc/self/mountinfo)');
  const hasV1 = hierarchies.some((h) => h.version === 1);
  const mode = !hasV1 ? 'v2' : hierarchies.some((h) => h.version === 2) ? 'hybrid' : 'v1';
  return { mode, hierarchies, controllers, unified };
}

/** Splits an absolute cgroup path into its segments, refusing anything that could escape the hierarchy. */
export function cgroupSegments(p: string): string[] {
  const segs = p.split('/').filter((s) => s !== '');
  if (!p.startsWith('/') || segs.length === 0 || segs.some((s) => s === '.' || s === '..' || s.includes('\0'))) {
    throw invalidArgument(`invalid cgroup path ${JSON.stringify(p)}: want an absolute path below the root`);
  }
  return segs;
}

/** The cgroup's directory in the hierarchy of a controller, or undefined when this host lacks that controller. */
export function controllerDir(layout: CgroupLayout, c: Controller, segs: string[]): { dir: string; v2: boolean } | undefined {
  const h = layout.controllers[c];
  return h && { dir: path.join(h.mountPoint, ...segs), v2: h.version === 2 };
}
