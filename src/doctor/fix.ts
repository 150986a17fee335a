import { promises as fs } from 'node:fs';
import path from 'node:path';
import { errorMessage, failedPrecondition, internal } from '../errors.js';
import type { Logger } from '../log.js';
import { MNT_DETACH, UMOUNT_NOFOLLOW, umount2 } from '../kernel/libc.js';
import { parseMountInfo } from '../kernel/mountinfo.js';
import { Cgroups } from '../kernel/cgroups.js';
import type { CgroupLayout } from '../kernel/cgroup-layout.js';
import { deleteLink } from '../network/links.js';
import { run } from '../network/exec.js';
import { iptablesRestore } from '../network/iptables.js';
import { parseIpamState } from '../network/ipam.js';
import { readJson, writeJsonAtomic } from '../store/atomic.js';
import type { Orphan } from './orphans.js';

// `berth doctor --fix`: removes one orphan at a time, each with the same primitives berth uses for its own objects.
// Every removal re-checks what it is about to remove where the object could have changed since it was listed
// (a pid reused, a mount put back under a directory about to be deleted).

export interface FixContext {
  root: string;
  layout: CgroupLayout;
  log: Logger;
}

const WHAT = 'berth doctor --fix';

export async function removeOrphan(o: Orphan, ctx: FixContext): Promise<void> {
  switch (o.kind) {
    case 'process':
      return killProcess(Number(o.object));
    case 'mount':
    case 'netns':
      return detach(o.object);
    case 'veth':
    case 'ifb':
      return deleteLink(o.object, WHAT);
    case 'loop':
      return detachLoop(o.object);
    case 'iptables': {
      const [table, ...rule] = o.object.split(' ');
      return iptablesRestore(`*${table}\n-D${rule.join(' ').slice(2)}\nCOMMIT\n`, WHAT);
    }
    case 'cgroup':
      return removeCgroup(o.object, ctx);
    case 'ipam':
      return releaseAddress(path.join(ctx.root, 'network', 'ipam.json'), o.object, o.pod!);
    case 'layer':
    case 'state':
      return removeTree(o.object);
  }
}

async function detachLoop(device: string): Promise<void> {
  // Still mounted somewhere, the device is only marked to detach once unmounted (the mount is an orphan too).
  const r = await run('losetup', ['-d', device], { what: `${WHAT}: detach ${device}`, okCodes: [1] });
  if (r.code !== 0 && !/No such device|No such device or address/.test(r.stderr)) throw internal(`losetup -d ${device}: ${r.stderr.trim()}`);
}

async function killProcess(pid: number): Promise<void> {
  // The pid was berth-shim's or berth-pod-init's when listed; a pid reused since is left alone.
  const comm = (await fs.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
  if (comm !== 'berth-shim' && comm !== 'berth-pod-init') return;
  try {
    // A monitor's death SIGKILLs its container (PR_SET_PDEATHSIG); a pod init's ends its pid namespace.
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw internal(`kill ${pid}: ${errorMessage(err)}`, err);
  }
}

function detach(mountPoint: string): void {
  try {
    umount2(mountPoint, MNT_DETACH | UMOUNT_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'ENOENT') throw internal(`umount ${mountPoint}: ${errorMessage(err)}`, err);
  }
}

async function removeCgroup(dir: string, ctx: FixContext): Promise<void> {
  const h = ctx.layout.hierarchies.find((x) => dir.startsWith(x.mountPoint + '/'));
  if (!h) throw failedPrecondition(`${dir} is not in this host's cgroup hierarchies`);
  const cgroups = new Cgroups(ctx.layout, ctx.log);
  // The processes of an orphan berth cgroup are containers no record knows: berth would never stop them.
  await cgroups.killAll('/' + path.relative(h.mountPoint, dir));
  let lastError: unknown;
  // Killed tasks leave the cgroup once reaped, a few milliseconds later.
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      await cgroups.remove({ path: '/' + path.relative(h.mountPoint, dir), created: [dir] });
      return;
    } catch (err) {
      lastError = err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw lastError;
}

async function releaseAddress(file: string, ip: string, pod: string): Promise<void> {
  const raw = await readJson<unknown>(file);
  if (raw === undefined) return;
  const state = parseIpamState(raw);
  if (state.allocations[ip] !== pod) return;
  delete state.allocations[ip];
  await writeJsonAtomic(file, state);
}

async function removeTree(dir: string): Promise<void> {
  // rm -r must never descend into a mount (a pin's nsfs, a pod's sysfs or shm): anything still mounted below the
  // directory stops the removal, and its mount is listed (and fixed) on its own.
  const mounted = parseMountInfo(await fs.readFile('/proc/self/mountinfo', 'utf8')).filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(dir + '/'));
  if (mounted.length > 0) throw failedPrecondition(`${dir} still has mounts below it: ${mounted.map((m) => m.mountPoint).join(', ')}`);
  await fs.rm(dir, { recursive: true, force: true });
}
