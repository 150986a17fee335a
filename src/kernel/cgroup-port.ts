import type { CgroupHandle } from './cgroups.js';

// The cgroup operations a domain service needs, as a type only: the real implementation is Cgroups (cgroupfs),
// and unit tests pass a recording fake. Services depend on this, never on the Cgroups class.

export interface CgroupPort {
  /** Makes the cgroup and missing ancestors in every hierarchy; the handle lists exactly what was made. */
  create(cgPath: string): Promise<CgroupHandle>;
  /** Removes exactly the directories of `handle`; a cgroup still holding processes is failed_precondition. */
  remove(handle: CgroupHandle): Promise<void>;
  /** Removes those of `dirs` that hold no cgroups or processes any more; returns the ones still in use. */
  removeIfUnused(dirs: string[]): Promise<string[]>;
}
