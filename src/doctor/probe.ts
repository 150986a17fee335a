import { promises as fs } from 'node:fs';
import path from 'node:path';
import { errorMessage } from '../errors.js';
import { readJson } from '../store/atomic.js';
import { RecordStore } from '../store/records.js';
import { sandboxRecordStore } from '../sandbox/service.js';
import type { ContainerRecord } from '../container/types.js';
import type { ImageRecord, LayerRecord } from '../image/types.js';
import { parseMountInfo } from '../kernel/mountinfo.js';
import { discoverCgroups, type CgroupLayout } from '../kernel/cgroup-layout.js';
import { pidsBelow } from '../kernel/cgroups.js';
import { bridgePorts } from '../network/links.js';
import { ifbOwnerTag, ownedIfbs } from '../network/ifb.js';
import { iptablesSave } from '../network/iptables.js';
import { chainsFor } from '../network/rules.js';
import { parseIpamState } from '../network/ipam.js';
import type { Inventory, Owners } from './orphans.js';

// Reads, and only reads, what `berth doctor` judges: berth's records under its root, and what the kernel and the
// disk hold in the places berth uses. A check that cannot run (no iptables-save, say) is reported as skipped.

export interface ProbePaths {
  root: string;
  stateDir: string;
  bridge: string;
  chainPrefix: string;
}

const PROCESS_NAMES = new Set(['berth-shim', 'berth-pod-init']);
const POD_CGROUP_NAME = /^berth-pod-[0-9a-f]{16}$/;

async function readdirOr(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch((err) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  });
}

async function isDir(p: string): Promise<boolean> {
  return (await fs.lstat(p).catch(() => undefined))?.isDirectory() ?? false;
}

/** RecordStore.loadAll, without making the directory when it is missing: doctor writes nothing while it looks. */
async function loadIfPresent<T extends { id: string }>(store: RecordStore<T>): Promise<{ records: Readonly<T>[]; orphans: string[] }> {
  return (await isDir(store.dir)) ? store.loadAll() : { records: [], orphans: [] };
}

export async function readOwners(root: string): Promise<Owners> {
  const pods = await loadIfPresent(sandboxRecordStore(root));
  const containers = await loadIfPresent(new RecordStore<ContainerRecord>(path.join(root, 'containers'), 'container.json'));
  const imagesDir = path.join(root, 'images', 'images');
  const images: { layers: string[] }[] = [];
  for (const name of await readdirOr(imagesDir)) {
    if (!name.endsWith('.json')) continue;
    const record = await readJson<ImageRecord>(path.join(imagesDir, name)).catch(() => undefined);
    if (record && Array.isArray(record.layers)) images.push({ layers: record.layers });
  }
  return {
    pods: pods.records.map((p) => {
      const veth = p.networkState?.veth;
      const ifb = p.networkState?.ifb;
      return {
        id: p.id,
        ready: p.state === 'READY',
        cgroupPath: p.cgroup.path,
        networked: p.networkState !== undefined,
        ...(typeof veth === 'string' ? { veth } : {}),
        ...(typeof ifb === 'string' ? { ifb } : {}),
      };
    }),
    containers: containers.records.map((c) => ({ id: c.id, sandboxId: c.sandboxId, cgroupPath: c.cgroup.path, layers: [...c.imageLayers, ...(c.volumeLayers ?? [])] })),
    images,
    recordlessDirs: [...pods.orphans, ...containers.orphans],
  };
}

/**
 * berth-pod-* cgroups at the top of each hierarchy, their children, and the children of recorded pods' cgroups,
 * each with the pids in it and below it.
 */
async function readCgroups(layout: CgroupLayout, podCgroups: string[]): Promise<Inventory['cgroups']> {
  const out: Inventory['cgroups'] = [];
  for (const h of layout.hierarchies) {
    const paths: string[] = [];
    const parents = new Set(podCgroups);
    for (const name of await readdirOr(h.mountPoint)) {
      if (!POD_CGROUP_NAME.test(name) || !(await isDir(path.join(h.mountPoint, name)))) continue;
      paths.push(`/${name}`);
      parents.add(`/${name}`);
    }
    for (const parent of parents) {
      const dir = path.join(h.mountPoint, parent);
      if (path.relative(h.mountPoint, dir).startsWith('..')) continue;
      for (const name of await readdirOr(dir).catch(() => [])) {
        if (await isDir(path.join(dir, name))) paths.push(path.posix.join(parent, name));
      }
    }
    const withPids = await Promise.all(paths.map(async (p) => ({ path: p, pids: await pidsBelow(path.join(h.mountPoint, p)).catch(() => []) })));
    out.push({ mountPoint: h.mountPoint, paths: withPids });
  }
  return out;
}

async function parentOf(pid: number): Promise<number | undefined> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
  const ppid = stat && Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  return ppid || undefined;
}

async function readProcesses(): Promise<Inventory['processes']> {
  const out: Inventory['processes'] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const comm = (await fs.readFile(`/proc/${entry}/comm`, 'utf8').catch(() => '')).trim();
    if (!PROCESS_NAMES.has(comm)) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    out.push({ pid: Number(entry), comm, argv: cmdline.split('\0').filter((a, i, all) => a !== '' || i < all.length - 1) });
  }
  return out;
}

async function readLayerDirs(root: string): Promise<Inventory['layerDirs']> {
  const dir = path.join(root, 'images', 'layers');
  const out: Inventory['layerDirs'] = [];
  for (const name of await readdirOr(dir)) {
    if (name.startsWith('.')) {
      out.push({ name });
      continue;
    }
    const record = await readJson<LayerRecord>(path.join(dir, name, 'layer.json')).catch(() => undefined);
    out.push({ name, ...(record && typeof record.diffId === 'string' ? { diffId: record.diffId } : {}) });
  }
  return out;
}

export interface Probed {
  owners: Owners;
  inventory: Inventory;
  /** Checks that could not run, each with why. */
  skipped: string[];
}

/** Loop devices backed by a file under `dir`. */
async function readLoops(dir: string): Promise<{ device: string; backingFile: string }[]> {
  const out: { device: string; backingFile: string }[] = [];
  for (const name of await readdirOr('/sys/block')) {
    if (!/^loop[0-9]+$/.test(name)) continue;
    const backing = (await fs.readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '')).trim();
    if (backing.startsWith(`${dir}/`)) out.push({ device: `/dev/${name}`, backingFile: backing });
  }
  return out;
}

export async function probe(paths: ProbePaths): Promise<Probed> {
  const owners = await readOwners(paths.root);
  const skipped: string[] = [];
  const attempt = async <T>(what: string, read: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await read();
    } catch (err) {
      skipped.push(`${what}: ${errorMessage(err)}`);
      return undefined;
    }
  };
  const chains = chainsFor(paths.chainPrefix);
  const [mountinfo, ports, saved, ipamRaw, cgroups, processes, layerDirs, podRunDirs, ifbs, loops, layerImages] = await Promise.all([
    fs.readFile('/proc/self/mountinfo', 'utf8'),
    bridgePorts(paths.bridge),
    attempt('iptables', () => iptablesSave('berth doctor')),
    attempt('IPAM', async () => {
      const raw = await readJson<unknown>(path.join(paths.root, 'network', 'ipam.json'));
      return raw === undefined ? undefined : parseIpamState(raw);
    }),
    attempt('cgroups', () => readCgroups(discoverCgroups(), owners.pods.map((p) => p.cgroupPath))),
    readProcesses(),
    readLayerDirs(paths.root),
    readdirOr(path.join(paths.stateDir, 'sandboxes')),
    ownedIfbs(ifbOwnerTag(paths.bridge)),
    readLoops(path.join(paths.root, 'writable-layers')),
    readdirOr(path.join(paths.root, 'writable-layers')),
  ]);
  const parents: Record<number, number> = {};
  for (const pid of new Set((cgroups ?? []).flatMap((h) => h.paths.flatMap((p) => p.pids)))) {
    const ppid = await parentOf(pid);
    if (ppid !== undefined) parents[pid] = ppid;
  }
  const inventory: Inventory = {
    root: paths.root,
    stateDir: paths.stateDir,
    mounts: parseMountInfo(mountinfo).map((m) => ({ mountPoint: m.mountPoint, fsType: m.fsType })),
    bridgePorts: ports,
    ...(saved ? { iptables: { chains, saved } } : {}),
    ...(ipamRaw ? { ipam: ipamRaw } : {}),
    cgroups: cgroups ?? [],
    processes,
    parents,
    layerDirs,
    podRunDirs,
    ifbs,
    loops,
    writableLayerImages: layerImages.filter((n) => n.endsWith('.img')),
  };
  return { owners, inventory, skipped };
}
