import { BerthError, invalidArgument } from '../errors.js';
import { PortMapping } from '../sandbox/types.js';
import { parseIp } from './cidr.js';

// hostPort bookkeeping for the embedded network: which mappings a pod asks for, and whether another pod holds
// them already. Pure.

export interface HostPort {
  protocol: 'tcp' | 'udp';
  hostPort: number;
  containerPort: number;
  /** '' = every local address. */
  hostIp: string;
}

/** Drops mappings without a hostPort (kubelet sends every declared container port), validates the rest. */
export function hostPortsOf(mappings: PortMapping[]): HostPort[] {
  const out: HostPort[] = [];
  for (const m of mappings) {
    if (!m.hostPort) continue;
    const what = `port mapping ${m.hostIp ? m.hostIp + ':' : ''}${m.hostPort}/${m.protocol} → ${m.containerPort}`;
    if (!Number.isInteger(m.hostPort) || m.hostPort < 1 || m.hostPort > 65535) throw invalidArgument(`${what}: hostPort must be 1–65535`);
    if (!Number.isInteger(m.containerPort) || m.containerPort < 1 || m.containerPort > 65535) {
      throw invalidArgument(`${what}: containerPort must be 1–65535`);
    }
    if (m.protocol !== 'TCP' && m.protocol !== 'UDP') throw invalidArgument(`${what}: only TCP and UDP hostPorts are supported`);
    let hostIp = m.hostIp ?? '';
    if (hostIp === '0.0.0.0') hostIp = '';
    if (hostIp !== '' && parseIp(hostIp) === undefined) throw invalidArgument(`${what}: hostIP "${hostIp}" is not an IPv4 address`);
    const hp: HostPort = { protocol: m.protocol === 'TCP' ? 'tcp' : 'udp', hostPort: m.hostPort, containerPort: m.containerPort, hostIp };
    const dup = out.find((o) => clash(o, hp));
    if (dup) throw invalidArgument(`${what}: hostPort ${hp.hostPort}/${m.protocol} is mapped twice in this pod`);
    out.push(hp);
  }
  return out;
}

/** Two mappings clash when they take the same port and protocol on an address both would receive. */
export function clash(a: HostPort, b: HostPort): boolean {
  return a.protocol === b.protocol && a.hostPort === b.hostPort && (a.hostIp === '' || b.hostIp === '' || a.hostIp === b.hostIp);
}

export function describe(p: HostPort): string {
  return `${p.hostIp ? p.hostIp + ':' : ''}${p.hostPort}/${p.protocol.toUpperCase()}`;
}

/** Registry of the hostPorts live pods hold. */
export class HostPortTable {
  private readonly byPod = new Map<string, HostPort[]>();

  /** Throws already_exists naming the port and the pod holding it. */
  reserve(podId: string, ports: HostPort[]): void {
    for (const p of ports) {
      for (const [other, held] of this.byPod) {
        if (other === podId) continue;
        const taken = held.find((h) => clash(h, p));
        if (taken) {
          throw new BerthError('already_exists', `hostPort ${describe(p)} is already used by pod ${other} (as ${describe(taken)})`);
        }
      }
    }
    if (ports.length > 0) this.byPod.set(podId, ports);
  }

  release(podId: string): void {
    this.byPod.delete(podId);
  }

  holders(): string[] {
    return [...this.byPod.keys()];
  }
}
