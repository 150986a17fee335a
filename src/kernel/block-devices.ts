// What the kernel says about a block device named by path: its numbers, whether it is a whole disk, and which
// mechanism (if any) gives it a relative I/O weight. Read once, when the config is loaded.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { CgroupLayout } from './cgroup-layout.js';
import type { WeightMechanism } from './cgroup-plan.js';

export type BlockDeviceProbe =
  | { ok: true; major: number; minor: number; weightMechanism?: WeightMechanism }
  | { ok: false; reason: string };

/** Linux's dev_t encoding (the kernel's MAJOR/MINOR for the 64-bit form stat returns). */
function deviceNumbers(rdev: bigint): { major: number; minor: number } {
  return { major: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)), minor: Number((rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n)) };
}

const read = (file: string) => fs.readFile(file, 'utf8').catch(() => undefined);

/**
 * Throttles and weights apply to whole disks only (the kernel refuses a partition's numbers), so a partition is
 * refused here with its disk's name rather than by the first container that uses the class.
 */
export async function probeBlockDevice(devicePath: string, layout: CgroupLayout): Promise<BlockDeviceProbe> {
  const st = await fs.stat(devicePath, { bigint: true }).catch((err: NodeJS.ErrnoException) => err);
  if (st instanceof Error) return { ok: false, reason: `cannot stat ${devicePath}: ${st.code ?? st.message}` };
  if (!st.isBlockDevice()) return { ok: false, reason: `${devicePath} is not a block device` };
  const { major, minor } = deviceNumbers(st.rdev);
  const sys = `/sys/dev/block/${major}:${minor}`;
  if ((await read(path.join(sys, 'partition'))) !== undefined) {
    const disk = path.basename(path.dirname(await fs.realpath(sys).catch(() => sys)));
    return { ok: false, reason: `${devicePath} is a partition; I/O limits apply to its whole disk (/dev/${disk})` };
  }
  return { ok: true, major, minor, ...optionalMechanism(await weightMechanism(`${major}:${minor}`, sys, layout)) };
}

const optionalMechanism = (m: WeightMechanism | undefined) => (m ? { weightMechanism: m } : {});

/** BFQ when it is the device's selected scheduler; iocost when it is enabled for the device on a v2 io controller. */
async function weightMechanism(dev: string, sys: string, layout: CgroupLayout): Promise<WeightMechanism | undefined> {
  const scheduler = await read(path.join(sys, 'queue', 'scheduler'));
  if (scheduler?.includes('[bfq]')) return 'bfq';
  const io = layout.controllers.io;
  if (!io || io.version !== 2 || layout.controllers.blkio) return undefined;
  const qos = await read(path.join(io.mountPoint, 'io.cost.qos'));
  const line = qos?.split('\n').find((l) => l.startsWith(`${dev} `));
  return line && /\benable=1\b/.test(line) ? 'iocost' : undefined;
}
