import { BerthError } from '../errors.js';
import { Cidr, contains, formatCidr, formatIp, parseCidr, parseIp, podRange } from './cidr.js';

// IP address management for the embedded bridge: pure functions over a plain object, which is what gets stored
// (<root>/network/ipam.json) atomically after every change.
//
// Format (version 1):
//   { "version": 1,
//     "allocations": { "10.86.0.2": "<pod id>", ... },    one address per pod
//     "last": { "10.86.0.0/16": "10.86.0.2" },            the last address handed out per subnet (next-fit)
//     "podCidr": "10.244.1.0/24" }                         set by kubelet (UpdateRuntimeConfig); optional
// Next-fit allocation means a released address is reused only after the rest of the subnet has been used, so a
// pod's address does not reappear on another pod while the first pod's netns is still being destroyed.

export interface IpamState {
  version: 1;
  allocations: Record<string, string>;
  last: Record<string, string>;
  podCidr?: string;
}

export function emptyIpam(): IpamState {
  return { version: 1, allocations: {}, last: {} };
}

/** Validates what was read from disk; a corrupt file is an error, not an empty pool (that would hand out live IPs). */
export function parseIpamState(raw: unknown): IpamState {
  const fail = (why: string) => new BerthError('internal', `IPAM state is corrupt: ${why}`);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw fail('not an object');
  const r = raw as Record<string, unknown>;
  if (r.version !== 1) throw fail(`unknown version ${JSON.stringify(r.version)}`);
  const state = emptyIpam();
  const table = (key: string): Record<string, unknown> => {
    const v = r[key] ?? {};
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw fail(`${key} is not an object`);
    return v as Record<string, unknown>;
  };
  for (const [ip, pod] of Object.entries(table('allocations'))) {
    if (parseIp(ip) === undefined || typeof pod !== 'string' || pod === '') throw fail(`bad allocation ${ip}`);
    state.allocations[ip] = pod;
  }
  for (const [subnet, ip] of Object.entries(table('last'))) {
    if (!parseCidr(subnet) || typeof ip !== 'string' || parseIp(ip) === undefined) throw fail(`bad last entry ${subnet}`);
    state.last[subnet] = ip;
  }
  if (r.podCidr !== undefined) {
    if (typeof r.podCidr !== 'string' || !parseCidr(r.podCidr)) throw fail('bad podCidr');
    state.podCidr = r.podCidr;
  }
  return state;
}

export function addressOf(state: IpamState, podId: string): string | undefined {
  for (const [ip, pod] of Object.entries(state.allocations)) if (pod === podId) return ip;
  return undefined;
}

/** Where the pod subnet comes from: `[network] subnet`, or the pod CIDR kubelet sent (which takes precedence). */
export type SubnetOrigin = 'config' | 'kubelet';

const MAKE_ROOM: Record<SubnetOrigin, string> = {
  config: 'set a larger [network] subnet',
  kubelet: "give the node a larger pod CIDR (kubelet's, from the Node's spec.podCIDR; it takes precedence over [network] subnet)",
};

/**
 * Gives `podId` an address in `subnet` (the same one again if it already has one there). Mutates `state`.
 * Throws resource_exhausted when every address of the subnet is taken, saying what to change (by `origin`).
 */
export function allocate(state: IpamState, subnet: Cidr, podId: string, origin: SubnetOrigin = 'config'): string {
  const existing = addressOf(state, podId);
  if (existing !== undefined && contains(subnet, parseIp(existing)!)) return existing;
  const { first, last } = podRange(subnet);
  const key = formatCidr(subnet);
  if (last < first) throw new BerthError('resource_exhausted', `pod subnet ${key} has no room for pods: ${MAKE_ROOM[origin]}`);
  const previous = parseIp(state.last[key] ?? '');
  let candidate = previous !== undefined && previous >= first && previous < last ? previous + 1 : first;
  const count = last - first + 1;
  for (let i = 0; i < count; i++) {
    const ip = formatIp(candidate);
    if (state.allocations[ip] === undefined) {
      state.allocations[ip] = podId;
      state.last[key] = ip;
      return ip;
    }
    candidate = candidate === last ? first : candidate + 1;
  }
  throw new BerthError('resource_exhausted', `no free address left in pod subnet ${key} (${count} addresses, all allocated): ${MAKE_ROOM[origin]}`);
}

/** Frees every address `podId` holds; returns them. Mutates `state`. */
export function release(state: IpamState, podId: string): string[] {
  const freed: string[] = [];
  for (const [ip, pod] of Object.entries(state.allocations)) {
    if (pod === podId) {
      delete state.allocations[ip];
      freed.push(ip);
    }
  }
  return freed;
}

/** Frees the addresses of pods that are no longer alive. Returns what was freed, as [ip, podId]. Mutates `state`. */
export function reconcile(state: IpamState, livePods: ReadonlySet<string>): [string, string][] {
  const freed: [string, string][] = [];
  for (const [ip, pod] of Object.entries(state.allocations)) {
    if (!livePods.has(pod)) {
      delete state.allocations[ip];
      freed.push([ip, pod]);
    }
  }
  return freed;
}

/** Records a live pod's address (from its sandbox state) that the file lacks, e.g. after a lost write. */
export function adopt(state: IpamState, podId: string, ip: string): boolean {
  const holder = state.allocations[ip];
  if (holder === podId) return false;
  if (holder !== undefined) {
    throw new BerthError('internal', `IPAM: address ${ip} is recorded for pod ${holder} but pod ${podId} uses it`);
  }
  state.allocations[ip] = podId;
  return true;
}
