import { promises as fs } from 'node:fs';
import { invalidArgument } from '../errors.js';
import { DEFAULT_PROFILE, type DefaultProfileRule } from './seccomp-default.js';

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

/**
 * The RuntimeDefault profile for a container with this capability (bounding) set: Docker's and containerd's
 * default allowlist (DEFAULT_PROFILE, see seccomp-default.ts), everything else refused with EPERM. The rules
 * that depend on a capability or on the machine are resolved here, as moby's setupSeccomp does.
 */
export function runtimeDefaultProfile(capabilities: readonly string[], arch: string = process.arch): SeccompProfile {
  const held = new Set(capabilities);
  const applies = (r: DefaultProfileRule): boolean =>
    (r.whenCaps ?? []).every((c) => held.has(c)) &&
    !(r.unlessCaps ?? []).some((c) => held.has(c)) &&
    (!r.arches || r.arches.includes(arch));
  const syscalls: SeccompRule[] = DEFAULT_PROFILE.rules.filter(applies).map((r) => ({
    names: [...r.names],
    action: r.action,
    ...(r.errnoRet !== undefined ? { errnoRet: r.errnoRet } : {}),
    ...(r.args ? { args: r.args.map((a) => ({ ...a })) } : {}),
  }));
  const architectures = DEFAULT_PROFILE.architectures[arch];
  return {
    defaultAction: DEFAULT_PROFILE.defaultAction,
    defaultErrnoRet: DEFAULT_PROFILE.defaultErrnoRet,
    ...(architectures ? { architectures: [...architectures] } : {}),
    syscalls,
  };
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
      case 'Localhost': {
        // kubelet may pass the legacy form "localhost//abs/path"; containerd strips the prefix, so berth does too.
        const ref = profile.localhost_ref ?? '';
        const path = ref.startsWith('localhost/') ? ref.slice('localhost/'.length) : ref;
        if (!path.startsWith('/')) throw invalidArgument(`${field}.seccomp.localhost_ref "${ref}" must be an absolute path`);
        return { kind: 'localhost', path };
      }
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
