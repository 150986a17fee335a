// The whole disk a directory lives on, by a path berth's config can name (block I/O classes take whole disks).

import { promises as fs } from 'node:fs';
import path from 'node:path';

/** /dev/<name> of the disk holding `dir` (its parent disk when on a partition); undefined off a block device. */
export async function wholeDiskOf(dir: string): Promise<string | undefined> {
  const { dev } = await fs.stat(dir, { bigint: true });
  const numbers = `${Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn))}:${Number((dev & 0xffn) | ((dev >> 12n) & 0xffffff00n))}`;
  const sys = await fs.realpath(`/sys/dev/block/${numbers}`).catch(() => undefined);
  if (!sys) return undefined;
  const isPartition = await fs.access(path.join(sys, 'partition')).then(() => true, () => false);
  const uevent = await fs.readFile(path.join(isPartition ? path.dirname(sys) : sys, 'uevent'), 'utf8').catch(() => '');
  const name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
  const node = name && `/dev/${name}`;
  return node && (await fs.stat(node).catch(() => undefined))?.isBlockDevice() ? node : undefined;
}
