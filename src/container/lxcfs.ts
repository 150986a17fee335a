// The in-container resource view: lxcfs's /proc files (meminfo, cpuinfo, stat, ...) bound over the container's
// own, so that free, top and a runtime sizing itself from /proc see the container's limits, not the node's.
import path from 'node:path';
import type { LxcfsMode } from '../config/schema.js';
import { failedPrecondition } from '../errors.js';
import type { LxcfsLookup, LxcfsView } from '../kernel/lxcfs.js';
import type { ShimMount } from '../kernel/shim-spec.js';

export interface LxcfsPolicy {
  /** [runtime] lxcfs. */
  mode: LxcfsMode;
  /** [runtime] lxcfs_dir, for messages. */
  dir: string;
  find(): Promise<LxcfsLookup>;
}

/**
 * The lxcfs a container gets, if any. A privileged container never does: it is the node's, and sees the node.
 * `on` without a usable lxcfs refuses the container, naming the setting.
 */
export async function lxcfsFor(policy: LxcfsPolicy | undefined, privileged: boolean): Promise<LxcfsView | undefined> {
  if (!policy || policy.mode === 'off' || privileged) return undefined;
  const found = await policy.find();
  if (found.view) return found.view;
  if (policy.mode === 'on') {
    throw failedPrecondition(
      `[runtime] lxcfs = "on" but lxcfs is not usable at ${policy.dir} ([runtime] lxcfs_dir): ${found.reason}; start lxcfs there, or set [runtime] lxcfs to "auto" or "off"`,
    );
  }
  return undefined;
}

/**
 * Read-only binds of each file lxcfs offers onto /proc/<file>, to follow the /proc mount. A destination the
 * container mounts something onto itself is left to that mount.
 */
export function lxcfsMounts(view: LxcfsView, taken: ReadonlySet<string>): ShimMount[] {
  return view.procFiles
    .map((file) => ({ file, destination: `/proc/${file}` }))
    .filter(({ destination }) => !taken.has(destination))
    .map(({ file, destination }) => ({
      destination,
      type: 'bind',
      source: path.posix.join(view.dir, 'proc', file),
      options: ['bind', 'rprivate', 'ro', 'nosuid', 'nodev', 'noexec'],
    }));
}
