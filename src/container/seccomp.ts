import { promises as fs } from 'node:fs';
import { invalidArgument } from '../errors.js';

// Seccomp profiles in the form the shim loads with libseccomp (the OCI runtime-spec `linux.seccomp` shape).

export interface SeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: 'SCMP_CMP_NE' | 'SCMP_CMP_LT' | 'SCMP_CMP_LE' | 'SCMP_CMP_EQ' | 'SCMP_CMP_GE' | 'SCMP_CMP_GT' | 'SCMP_CMP_MASKED_EQ';
}

export interface SeccompRule {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: SeccompArg[];
}

export interface SeccompProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures?: string[];
  syscalls: SeccompRule[];
}

export type SeccompRequest = { kind: 'unconfined' } | { kind: 'runtime-default' } | { kind: 'localhost'; path: string };

const EPERM = 1;
const ENOSYS = 38;
// CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
const CLONE_NEW_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000];

// Blocked for everyone, as in Docker's default profile.
const ALWAYS_BLOCKED = [
  'add_key', 'request_key', 'keyctl', 'userfaultfd', 'uselib', 'ustat', 'sysfs', '_sysctl', 'vm86', 'vm86old',
  'nfsservctl', 'create_module', 'get_kernel_syms', 'query_module', 'stime', 'lookup_dcookie', 'kexec_load',
  'kexec_file_load', 'open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'fspick',
];

// Blocked unless the container holds the capability that makes them legitimate.
const BY_CAPABILITY: Record<string, string[]> = {
  CAP_SYS_ADMIN: ['mount', 'umount', 'umount2', 'unshare', 'setns', 'pivot_root', 'swapon', 'swapoff', 'quotactl', 'fanotify_init', 'bpf', 'perf_event_open', 'mbind', 'set_mempolicy', 'get_mempolicy', 'syslog', 'setdomainname', 'sethostname'],
  CAP_SYS_BOOT: ['reboot'],
  CAP_SYS_MODULE: ['init_module', 'finit_module', 'delete_module'],
  CAP_SYS_RAWIO: ['iopl', 'ioperm'],
  CAP_SYS_PACCT: ['acct'],
  CAP_SYS_TIME: ['settimeofday', 'clock_settime', 'clock_adjtime'],
  CAP_SYS_NICE: ['move_pages'],
  CAP_DAC_READ_SEARCH: ['open_by_handle_at', 'name_to_handle_at'],
  CAP_SYS_TTY_CONFIG: ['vhangup'],
  CAP_SYS_PTRACE: ['kcmp'],
};

/**
 * The RuntimeDefault profile: the effect of Docker's default — kernel-keyring, module, clock, reboot, mount and
 * namespace syscalls refused with EPERM unless the capability that governs them was granted; clone3 answers ENOSYS
 * so libc falls back to clone, whose namespace flags are filtered.
 */
export function runtimeDefaultProfile(capabilities: string[]): SeccompProfile {
  const blocked = [...ALWAYS_BLOCKED];
  for (const [cap, calls] of Object.entries(BY_CAPABILITY)) if (!capabilities.includes(cap)) blocked.push(...calls);
  const syscalls: SeccompRule[] = [{ names: blocked, action: 'SCMP_ACT_ERRNO', errnoRet: EPERM }];
  if (!capabilities.includes('CAP_SYS_ADMIN')) {
    syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
    // Rules for one syscall are OR'ed: one per namespace flag refuses a clone that sets any of them.
    for (const flag of CLONE_NEW_FLAGS) {
      syscalls.push({ names: ['clone'], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM, args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }] });
    }
  }
  return { defaultAction: 'SCMP_ACT_ALLOW', syscalls };
}

/** CRI's two ways of asking: the `seccomp` message, or the deprecated `seccomp_profile_path` string. */
export function seccompRequest(
  profile: { profile_type?: string; localhost_ref?: string } | null | undefined,
  legacyPath: string | undefined,
  field: string,
): SeccompRequest {
  if (profile && profile.profile_type) {
    switch (profile.profile_type) {
      case 'RuntimeDefault':
        return { kind: 'runtime-default' };
      case 'Unconfined':
        return { kind: 'unconfined' };
      case 'Localhost':
        if (!profile.localhost_ref?.startsWith('/')) {
          throw invalidArgument(`${field}.seccomp.localhost_ref "${profile.localhost_ref ?? ''}" must be an absolute path`);
        }
        return { kind: 'localhost', path: profile.localhost_ref };
      default:
        throw invalidArgument(`${field}.seccomp.profile_type "${profile.profile_type}" is not known`);
    }
  }
  const p = legacyPath ?? '';
  if (p === '' || p === 'unconfined') return { kind: 'unconfined' };
  if (p === 'runtime/default' || p === 'docker/default') return { kind: 'runtime-default' };
  if (p.startsWith('localhost/')) {
    const path = p.slice('localhost/'.length);
    if (!path.startsWith('/')) throw invalidArgument(`${field}.seccomp_profile_path "${p}": the path after localhost/ must be absolute`);
    return { kind: 'localhost', path };
  }
  throw invalidArgument(`${field}.seccomp_profile_path "${p}" must be unconfined, runtime/default, docker/default or localhost/<absolute path>`);
}

const ACTIONS = new Set(['SCMP_ACT_KILL', 'SCMP_ACT_KILL_PROCESS', 'SCMP_ACT_KILL_THREAD', 'SCMP_ACT_TRAP', 'SCMP_ACT_ERRNO', 'SCMP_ACT_TRACE', 'SCMP_ACT_ALLOW', 'SCMP_ACT_LOG']);

/** Reads a Docker or OCI seccomp JSON profile and checks it enough that the shim gets a well-formed one. */
export async function loadLocalhostProfile(path: string, field: string): Promise<SeccompProfile> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(path, 'utf8'));
  } catch (err) {
    throw invalidArgument(`${field}: seccomp profile ${path} cannot be read as JSON: ${(err as Error).message}`);
  }
  const doc = raw as { defaultAction?: string; defaultErrnoRet?: number; architectures?: string[]; syscalls?: { names?: string[]; name?: string; action?: string; errnoRet?: number; args?: SeccompArg[] }[] };
  if (!doc.defaultAction || !ACTIONS.has(doc.defaultAction)) {
    throw invalidArgument(`${field}: seccomp profile ${path} has no valid defaultAction`);
  }
  const syscalls: SeccompRule[] = [];
  for (const [i, s] of (doc.syscalls ?? []).entries()) {
    const names = s.names ?? (s.name ? [s.name] : []);
    if (!s.action || !ACTIONS.has(s.action)) throw invalidArgument(`${field}: seccomp profile ${path}: syscalls[${i}] has an unknown action ${s.action}`);
    syscalls.push({ names, action: s.action, errnoRet: s.errnoRet, args: s.args });
  }
  return { defaultAction: doc.defaultAction, defaultErrnoRet: doc.defaultErrnoRet, architectures: doc.architectures, syscalls };
}
