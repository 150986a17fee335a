import type { CgroupHandle, CgroupResources } from './cgroups.js';

// The cgroup operations a domain service needs, as a type only: the real implementation is Cgroups (cgroupfs),
// and unit tests pass a recording fake. Services depend on this, never on the Cgroups class.

export interface CgroupPort {
  /** Makes the cgroup and missing ancestors in every hierarchy; the handle lists exactly what was made. */
  create(cgPath: string): Promise<CgroupHandle>;
  /** Removes exactly the directories of `handle`; a cgroup still holding processes is failed_precondition. */
  remove(handle: CgroupHandle): Promise<void>;
  /** Writes limits; a value the kernel refuses is invalid_argument naming the file. `empty`: no process joined yet. */
  apply(cgPath: string, resources: CgroupResources, opts?: { empty?: boolean }): Promise<void>;
  /** Keeps migrations on the kernel's fast path for `ms` from now (a pod's containers are about to join theirs). */
  keepMigrationsWarm(ms: number): void;
  /** The cgroup.procs files a process joins, one per hierarchy. */
  procsFiles(cgPath: string): string[];
  /** OOM kills counted in the cgroup (0 once it is gone or without a memory controller). */
  oomKills(cgPath: string): Promise<number>;
  /** SIGKILLs every process in the cgroup and below it. */
  killAll(cgPath: string): Promise<void>;
  /** Removes those of `dirs` that hold no cgroups or processes any more; returns the ones still in use. */
  removeIfUnused(dirs: string[]): Promise<string[]>;
}
