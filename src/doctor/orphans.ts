import path from 'node:path';
import { reconcile, type IpamState } from '../network/ipam.js';
import { orphanVeths, vethName } from '../network/embedded.js';
import { ifbName, orphanIfbs } from '../network/bandwidth.js';
import { staleHostPortRules, type Chains, type SavedTables } from '../network/rules.js';
import { layersInUse } from '../image/store.js';

// `berth doctor`'s judgement: what the host holds (an inventory, read by ./probe.ts) against what berth's records
// own. Pure, so that every rule is unit-tested with fakes. Where berth's start-up reconciliation already decides
// the same question (veths, hostPort rules, IPAM, layers), the very same functions decide it here.
//
// Only what is recognisably berth's is ever an orphan: paths below berth's own directories, veths named by
// vethName on berth's bridge, cgroups named berth-pod-* (and container-id cgroups inside a berth pod's cgroup),
// rules in berth's hostPort chain tagged with a pod id, berth-shim processes whose bundle or pin directory is under
// berth's directories. Everything else on the node is another tool's and is not looked at.

export type OrphanKind = 'process' | 'mount' | 'netns' | 'veth' | 'ifb' | 'loop' | 'iptables' | 'cgroup' | 'ipam' | 'layer' | 'state';

export interface Orphan {
  kind: OrphanKind;
  /** What to remove: a path, a link name, a pid, a rule, an address. */
  object: string;
  /** Why it is an orphan, for the operator. */
  reason: string;
  pod?: string;
  container?: string;
}

/** What berth's records own, read from its root. */
export interface Owners {
  pods: { id: string; ready: boolean; cgroupPath: string; networked: boolean; veth?: string; ifb?: string }[];
  containers: { id: string; sandboxId: string; cgroupPath: string; layers: string[] }[];
  images: { layers: string[] }[];
  /** Record directories whose record is missing or unreadable (RecordStore.loadAll's orphans). */
  recordlessDirs: string[];
}

export interface Inventory {
  root: string;
  stateDir: string;
  mounts: { mountPoint: string; fsType: string }[];
  /** Ports of berth's bridge; empty when the bridge does not exist. */
  bridgePorts: string[];
  /** berth's chains and the saved tables; undefined when iptables could not be read. */
  iptables?: { chains: Chains; saved: SavedTables };
  /** <root>/network/ipam.json; undefined when absent. */
  ipam?: IpamState;
  /**
   * Per cgroup hierarchy mount point, the cgroup paths found below it (see probe: berth-pod-* and their children,
   * and the children of recorded pods' cgroups), each with the pids in it and below it.
   */
  cgroups: { mountPoint: string; paths: { path: string; pids: number[] }[] }[];
  /** Processes named berth-shim or berth-pod-init, with their argv. */
  processes: { pid: number; comm: string; argv: string[] }[];
  /** The parent of each pid found in those cgroups (a container's init is the child of its monitor). */
  parents: Record<number, number>;
  /** Entries of <root>/images/layers: a diffId when its layer.json is readable. */
  layerDirs: { name: string; diffId?: string }[];
  /** Entries of <stateDir>/sandboxes. */
  podRunDirs: string[];
  /** The host's network devices named like berth's ifb devices (bandwidth-limited pods' egress). */
  ifbs: string[];
  /** Loop devices whose backing file is under <root>/writable-layers (containers' size-limited writable layers). */
  loops: { device: string; backingFile: string }[];
  /** Image files in <root>/writable-layers (not its pool), by name: <container id>.img. */
  writableLayerImages: string[];
}

const POD_ID = /^[0-9a-f]{64}$/;
const POD_CGROUP = /^\/berth-pod-[0-9a-f]{16}$/;

function inside(dir: string, p: string): string | undefined {
  const rel = path.relative(dir, p);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : undefined;
}

/**
 * In the order --fix removes them: processes first (they hold mounts and cgroups), mounts and pins deepest first,
 * then network objects, cgroups children first, writable-layer loop devices and images, layers, and record and run directories last.
 */
export function findOrphans(inv: Inventory, owners: Owners): Orphan[] {
  return [...processes(inv, owners), ...mounts(inv, owners), ...network(inv, owners), ...cgroups(inv, owners), ...writableLayers(inv, owners), ...layers(inv, owners), ...stateDirs(inv, owners)];
}

/** A monitor or pod init of this berth's directories (whatever its records say), with the container or pod it serves. */
function berthProcessOf(inv: Inventory, proc: Inventory['processes'][number]): { container: string } | { pod: string } | undefined {
  const [, command, dir] = proc.argv;
  if (dir === undefined) return undefined;
  // A monitor keeps the argv of `berth-shim create <bundle>`; the pod init that of `berth-shim sandbox <ns dir>`.
  if (proc.comm === 'berth-shim' && command === 'create') {
    const rel = inside(path.join(inv.root, 'containers'), path.resolve(dir));
    return rel === undefined || rel.includes('/') ? undefined : { container: rel };
  }
  if (proc.comm === 'berth-pod-init' && command === 'sandbox') {
    const rel = inside(path.join(inv.stateDir, 'sandboxes'), path.resolve(dir));
    const pod = rel?.split('/')[0];
    return pod === undefined || rel !== `${pod}/ns` ? undefined : { pod };
  }
  return undefined;
}

function processes(inv: Inventory, owners: Owners): Orphan[] {
  const containers = new Set(owners.containers.map((c) => c.id));
  const readyPods = new Set(owners.pods.filter((p) => p.ready).map((p) => p.id));
  const out: Orphan[] = [];
  for (const proc of inv.processes) {
    const of = berthProcessOf(inv, proc);
    if (of && 'container' in of && !containers.has(of.container)) {
      out.push({ kind: 'process', object: String(proc.pid), reason: `container monitor of ${path.join(inv.root, 'containers', of.container)}, which no container record owns`, container: of.container });
    } else if (of && 'pod' in of && !readyPods.has(of.pod)) {
      out.push({ kind: 'process', object: String(proc.pid), reason: `pod init of ${of.pod}, which is ${owners.pods.some((p) => p.id === of.pod) ? 'stopped' : 'not a recorded pod'}`, pod: of.pod });
    }
  }
  return out;
}

function mounts(inv: Inventory, owners: Owners): Orphan[] {
  const readyPods = new Set(owners.pods.filter((p) => p.ready).map((p) => p.id));
  const containers = new Set(owners.containers.map((c) => c.id));
  const out: Orphan[] = [];
  // Only berth's own subdirectories: the root or state dir may itself be a mount the operator made (a tmpfs).
  const scopes: { dir: string; owned: (id: string) => boolean; what: 'pod' | 'container' | 'other' }[] = [
    { dir: path.join(inv.stateDir, 'sandboxes'), owned: (id) => readyPods.has(id), what: 'pod' },
    { dir: path.join(inv.root, 'containers'), owned: (id) => containers.has(id), what: 'container' },
    { dir: path.join(inv.root, 'sandboxes'), owned: () => false, what: 'other' },
    { dir: path.join(inv.root, 'images'), owned: () => false, what: 'other' },
  ];
  for (const m of inv.mounts) {
    for (const scope of scopes) {
      const rel = inside(scope.dir, m.mountPoint);
      if (rel === undefined) continue;
      const id = rel.split('/')[0]!;
      if (scope.owned(id)) break;
      // A pod's network namespace lives on as long as its pin: the pin named net is the netns berth made.
      const kind = m.fsType === 'nsfs' && path.basename(m.mountPoint) === 'net' ? 'netns' : 'mount';
      const reason =
        scope.what === 'pod' ? `${m.fsType} mount of pod ${id}, which is ${owners.pods.some((p) => p.id === id) ? 'stopped' : 'not a recorded pod'}`
        : scope.what === 'container' ? `${m.fsType} mount of container ${id}, which has no record`
        : `${m.fsType} mount in berth's state, which berth never leaves mounted`;
      out.push({ kind, object: m.mountPoint, reason, ...(scope.what === 'pod' ? { pod: id } : scope.what === 'container' ? { container: id } : {}) });
      break;
    }
  }
  // Deepest first, the order they can be unmounted in.
  return out.sort((a, b) => b.object.split('/').length - a.object.split('/').length);
}

function network(inv: Inventory, owners: Owners): Orphan[] {
  const networked = owners.pods.filter((p) => p.networked);
  const live = new Set(networked.map((p) => p.id));
  const liveVeths = new Set(networked.flatMap((p) => (p.veth ? [p.veth] : [])));
  // The name holds the first 10 hex digits of the pod id: a pod whose directory is still here is named.
  const known = [...inv.podRunDirs, ...owners.recordlessDirs.map((d) => path.basename(d)), ...owners.pods.map((p) => p.id)].filter((d) => POD_ID.test(d));
  const out: Orphan[] = orphanVeths(inv.bridgePorts, liveVeths).map((veth) => {
    const pod = known.find((id) => vethName(id) === veth);
    return { kind: 'veth' as const, object: veth, reason: 'on berth\'s bridge, and no pod with network state has it', ...(pod ? { pod } : {}) };
  });
  const liveIfbs = new Set(networked.flatMap((p) => (p.ifb ? [p.ifb] : [])));
  for (const ifb of orphanIfbs(inv.ifbs, liveIfbs)) {
    const pod = known.find((id) => ifbName(id) === ifb);
    out.push({ kind: 'ifb', object: ifb, reason: 'an ifb device of berth\'s (a bandwidth-limited pod\'s egress), and no pod with network state has it', ...(pod ? { pod } : {}) });
  }
  if (inv.iptables) {
    for (const rule of staleHostPortRules(inv.iptables.chains, inv.iptables.saved, live)) {
      const pod = /berth-pod:([0-9a-zA-Z_.-]+)/.exec(rule)?.[1];
      out.push({ kind: 'iptables', object: `nat ${rule}`, reason: `hostPort rule of pod ${pod}, which has no network state`, pod });
    }
  }
  if (inv.ipam) {
    // reconcile() mutates: it works on a copy, the way berth's start would see the file.
    const copy: IpamState = { ...inv.ipam, allocations: { ...inv.ipam.allocations } };
    for (const [ip, pod] of reconcile(copy, live)) out.push({ kind: 'ipam', object: ip, reason: `allocated to pod ${pod}, which has no network state`, pod });
  }
  return out;
}

/**
 * berth-pod-* cgroups sit at the top of every hierarchy, where every berth on the node makes them: one without a
 * record here may be another berth's (another root). It is this berth's only when something of this berth's
 * directories points at it: a run or record directory of the pod id it is named after (pinned namespaces, a
 * recordless directory), or a process in it that is, or is the child of, a monitor or pod init of this berth.
 */
function podTraced(inv: Inventory, owners: Owners, idPrefix: string): boolean {
  const dirs = [...inv.podRunDirs, ...owners.recordlessDirs.map((d) => path.basename(d))];
  return dirs.some((d) => POD_ID.test(d) && d.startsWith(idPrefix));
}

function pidsOurs(inv: Inventory, pids: number[]): boolean {
  const ours = new Set(inv.processes.filter((p) => berthProcessOf(inv, p)).map((p) => p.pid));
  return pids.some((pid) => ours.has(pid) || ours.has(inv.parents[pid] ?? -1));
}

function cgroups(inv: Inventory, owners: Owners): Orphan[] {
  const podCgroups = new Map(owners.pods.map((p) => [p.cgroupPath, p.id]));
  const containerCgroups = new Set(owners.containers.map((c) => c.cgroupPath));
  const containerDirs = new Set(owners.recordlessDirs.map((d) => path.basename(d)));
  const out: Orphan[] = [];
  for (const h of inv.cgroups) {
    const pidsOf = new Map(h.paths.map((p) => [p.path, p.pids]));
    const podOrphan = new Map<string, boolean>();
    const isOrphanPod = (p: string) => {
      if (!podOrphan.has(p)) podOrphan.set(p, !podCgroups.has(p) && (podTraced(inv, owners, p.slice('/berth-pod-'.length)) || pidsOurs(inv, pidsOf.get(p) ?? [])));
      return podOrphan.get(p)!;
    };
    for (const { path: p, pids } of h.paths) {
      const parent = path.posix.dirname(p);
      const name = path.posix.basename(p);
      let reason: string | undefined;
      let ids: Pick<Orphan, 'pod' | 'container'> = {};
      if (POD_CGROUP.test(p)) {
        if (isOrphanPod(p)) reason = 'a berth pod cgroup that no pod record owns';
      } else if (POD_ID.test(name) && !containerCgroups.has(p)) {
        // A container's cgroup is <pod cgroup>/<container id>: inside a pod cgroup of this berth, that name is berth's.
        const inBerthPod = podCgroups.has(parent) || POD_CGROUP.test(parent);
        const ours = podCgroups.has(parent) || (POD_CGROUP.test(parent) && isOrphanPod(parent)) || containerDirs.has(name) || pidsOurs(inv, pids);
        if (inBerthPod && ours) {
          reason = 'a container cgroup in a berth pod cgroup that no container record owns';
          ids = { container: name, ...(podCgroups.has(parent) ? { pod: podCgroups.get(parent) } : {}) };
        }
      }
      if (reason) out.push({ kind: 'cgroup', object: path.join(h.mountPoint, p), reason, ...ids });
    }
  }
  // Children before parents: rmdir order.
  return out.sort((a, b) => b.object.split('/').length - a.object.split('/').length);
}

/** A container's size-limited writable layer is <root>/writable-layers/<container id>.img, on a loop device while mounted. */
function writableLayers(inv: Inventory, owners: Owners): Orphan[] {
  const containers = new Set(owners.containers.map((c) => c.id));
  const dir = path.join(inv.root, 'writable-layers');
  const out: Orphan[] = [];
  for (const loop of inv.loops) {
    const rel = inside(dir, loop.backingFile.replace(/ \(deleted\)$/, ''));
    if (rel === undefined) continue;
    const id = /^([0-9a-f]{64})\.img$/.exec(rel)?.[1];
    if (id && containers.has(id)) continue;
    out.push({ kind: 'loop', object: loop.device, reason: `a loop device on ${loop.backingFile}, which no container record owns`, ...(id ? { container: id } : {}) });
  }
  for (const name of inv.writableLayerImages) {
    const id = /^([0-9a-f]{64})\.img$/.exec(name)?.[1];
    if (id && containers.has(id)) continue;
    out.push({ kind: 'state', object: path.join(dir, name), reason: 'a writable-layer image that no container record owns', ...(id ? { container: id } : {}) });
  }
  return out;
}

function layers(inv: Inventory, owners: Owners): Orphan[] {
  const used = layersInUse(owners.images, new Set(owners.containers.flatMap((c) => c.layers)));
  const dir = path.join(inv.root, 'images', 'layers');
  const out: Orphan[] = [];
  for (const l of inv.layerDirs) {
    const object = path.join(dir, l.name);
    if (l.name.startsWith('.')) out.push({ kind: 'layer', object, reason: 'a half-written or half-deleted layer (a crash during a pull or a delete)' });
    else if (l.diffId === undefined) out.push({ kind: 'layer', object, reason: 'a layer directory without a readable layer.json' });
    else if (!used.has(l.diffId)) out.push({ kind: 'layer', object, reason: `layer ${l.diffId}: no image lists it and no container holds it` });
  }
  return out;
}

function stateDirs(inv: Inventory, owners: Owners): Orphan[] {
  const pods = new Set(owners.pods.map((p) => p.id));
  const out: Orphan[] = owners.recordlessDirs.map((d) => ({ kind: 'state' as const, object: d, reason: 'a record directory without a readable record' }));
  for (const name of inv.podRunDirs) {
    if (POD_ID.test(name) && !pods.has(name)) out.push({ kind: 'state', object: path.join(inv.stateDir, 'sandboxes', name), reason: 'the run directory of a pod that has no record', pod: name });
  }
  return out;
}
