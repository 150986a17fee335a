// The project-quota mechanism for a container's writable layer: where the storage filesystem enforces project
// quotas (xfs mounted with prjquota/pquota, ext4 with prjquota), the upper directory gets a project id of its own
// and a hard block limit on that project. No extra filesystem, no loop device. Chosen by detection only: this
// file says what detects it and which commands apply and lift a limit; quota-backed.ts runs them.

export type QuotaFs = 'xfs' | 'ext4';

const XFS_MAGIC = 0x58465342;
const EXT4_MAGIC = 0xef53;

/**
 * Whether the filesystem holding berth's containers enforces project quotas: its statfs type, and the
 * superblock options of its mount (mountinfo's last field) naming project quota enforcement.
 */
export function projectQuotaFs(statfsType: number, superOptions: readonly string[]): QuotaFs | undefined {
  const enforced = (names: string[]) => superOptions.some((o) => names.includes(o));
  if (statfsType === XFS_MAGIC && enforced(['prjquota', 'pquota'])) return 'xfs';
  if (statfsType === EXT4_MAGIC && enforced(['prjquota'])) return 'ext4';
  return undefined;
}

/** A project id per container, from its id: 24 bits plus a high bit, clear of the small ids operators hand out. */
export function projectIdOf(containerId: string): number {
  return 0x1000000 + parseInt(containerId.slice(0, 6), 16);
}

export interface QuotaCommand {
  cmd: string;
  args: string[];
}

/** The commands that put `upperDir` (on the filesystem mounted at `mountPoint`) under a hard limit of `bytes`. */
export function applyQuotaPlan(fs: QuotaFs, mountPoint: string, upperDir: string, projectId: number, bytes: number): QuotaCommand[] {
  const id = String(projectId);
  if (fs === 'xfs') {
    return [{ cmd: 'xfs_quota', args: ['-x', '-c', `project -s -p ${upperDir} ${id}`, '-c', `limit -p bhard=${bytes} ${id}`, mountPoint] }];
  }
  // setquota counts 1 KiB blocks; +P makes everything made below the directory inherit its project.
  return [
    { cmd: 'chattr', args: ['-p', id, '+P', upperDir] },
    { cmd: 'setquota', args: ['-P', id, '0', String(Math.ceil(bytes / 1024)), '0', '0', mountPoint] },
  ];
}

/** The commands that lift the project's limit once its directory is gone (the id may come back with another container). */
export function releaseQuotaPlan(fs: QuotaFs, mountPoint: string, projectId: number): QuotaCommand[] {
  const id = String(projectId);
  if (fs === 'xfs') return [{ cmd: 'xfs_quota', args: ['-x', '-c', `limit -p bhard=0 ${id}`, mountPoint] }];
  return [{ cmd: 'setquota', args: ['-P', id, '0', '0', '0', '0', mountPoint] }];
}
