import { invalidArgument } from '../errors.js';
import type { ShimDevice, ShimDeviceRule } from '../kernel/shim-spec.js';

// The container's device policy as data: which device nodes it may create (m), read (r) and write (w). The shim
// applies the rules to the container's cgroups (v1 devices controller and/or a cgroup2 device program).

const rwm = (major: number, minor?: number): ShimDeviceRule => ({ allow: true, type: 'c', major, ...(minor === undefined ? {} : { minor }), access: 'rwm' });

/**
 * runc's and containerd's defaults: nothing may be opened but the standard character devices; any node may be
 * created (mknod, e.g. by a package manager unpacking an archive) but not opened.
 */
export const DEFAULT_DEVICE_RULES: readonly ShimDeviceRule[] = Object.freeze([
  { allow: false, type: 'a', access: 'rwm' },
  { allow: true, type: 'c', access: 'm' },
  { allow: true, type: 'b', access: 'm' },
  rwm(1, 3), // null
  rwm(1, 5), // zero
  rwm(1, 7), // full
  rwm(1, 8), // random
  rwm(1, 9), // urandom
  rwm(5, 0), // tty
  rwm(5, 1), // console
  rwm(5, 2), // ptmx
  rwm(136), // pts
  rwm(10, 200), // net/tun
]);

/** A privileged container may use every device (it also sees the host's /dev). */
export const PRIVILEGED_DEVICE_RULES: readonly ShimDeviceRule[] = Object.freeze([{ allow: true, type: 'a', access: 'rwm' }]);

/**
 * Checks cgroup device permissions (a subset of "rwm") and returns them in canonical order. An empty value means
 * "rwm": device plugins often leave the field empty, and Docker's --device and CDI read an absent value so.
 * `field` names the request field in the error.
 */
export function devicePermissions(value: string, field: string): string {
  if (value === '') return 'rwm';
  if (/[^rwm]/.test(value)) {
    throw invalidArgument(`${field} ${JSON.stringify(value)} must be a combination of r, w and m`);
  }
  return ['r', 'w', 'm'].filter((c) => value.includes(c)).join('');
}

/** A device node the container is given, with the access it gets to it. */
export interface GrantedDevice {
  node: ShimDevice;
  /** Canonical "rwm" subset; '' grants the node no access at all (CDI's "none"). */
  permissions: string;
}

/** The rules for a container: the defaults plus one allow rule per granted node, or everything when privileged. */
export function deviceRules(opts: { privileged: boolean; granted: GrantedDevice[] }): ShimDeviceRule[] {
  if (opts.privileged) return [...PRIVILEGED_DEVICE_RULES];
  const rules = [...DEFAULT_DEVICE_RULES];
  for (const { node, permissions } of opts.granted) {
    // A fifo is no device to the cgroup: nothing to allow.
    if (node.type === 'p' || permissions === '') continue;
    rules.push({ allow: true, type: node.type, major: node.major, minor: node.minor, access: permissions });
  }
  return rules;
}

/** major/minor of a Linux dev_t as stat(2) gives it (glibc's encoding). */
export function deviceNumbers(rdev: number | bigint): { major: number; minor: number } {
  const dev = BigInt(rdev);
  return {
    major: Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)),
    minor: Number((dev & 0xffn) | ((dev >> 12n) & 0xffffff00n)),
  };
}
