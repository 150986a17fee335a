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

/** The hostPorts a pod asks for, and the field each came from (`config.port_mappings[i]`), for messages. */
export interface PortRequest {
  ports: HostPort[];
  fields: string[];
}

/** Drops mappings without a hostPort (kubelet sends every declared container port), validates the rest. */
export function portRequest(mappings: PortMapping[]): PortRequest {
  const ports: HostPort[] = [];
  const fields: string[] = [];
  mappings.forEach((m, i) => {
    if (!m.hostPort) return;
    const field = `config.port_mappings[${i}]`;
    const what = `${field} (${m.hostIp ? m.hostIp + ':' : ''}${m.hostPort}/${m.protocol} → ${m.containerPort})`;
    if (!Number.isInteger(m.hostPort) || m.hostPort < 1 || m.hostPort > 65535) throw invalidArgument(`${what}: hostPort must be 1–65535`);
    if (!Number.isInteger(m.containerPort) || m.containerPort < 1 || m.containerPort > 65535) {
      throw invalidArgument(`${what}: containerPort must be 1–65535`);
    }
    if (m.protocol !== 'TCP' && m.protocol !== 'UDP') throw invalidArgument(`${what}: only TCP and UDP hostPorts are supported`);
    let hostIp = m.hostIp ?? '';
    if (hostIp === '0.0.0.0') hostIp = '';
    if (hostIp !== '' && parseIp(hostIp) === undefined) throw invalidArgument(`${what}: hostIP "${hostIp}" is not an IPv4 address`);
    const hp: HostPort = { protocol: m.protocol === 'TCP' ? 'tcp' : 'udp', hostPort: m.hostPort, containerPort: m.containerPort, hostIp };
    const dup = ports.findIndex((o) => clash(o, hp));
    if (dup >= 0) throw invalidArgument(`${what}: hostPort ${describe(hp)} is mapped by ${fields[dup]} of this pod already`);
    ports.push(hp);
    fields.push(field);
  });
  return { ports, fields };
}

export function hostPortsOf(mappings: PortMapping[]): HostPort[] {
  return portRequest(mappings).ports;
}

/** Two mappings clash when they take the same port and protocol on an address both would receive. */
export function clash(a: HostPort, b: HostPort): boolean {
  return a.protocol === b.protocol && a.hostPort === b.hostPort && (a.hostIp === '' || b.hostIp === '' || a.hostIp === b.hostIp);
}

function describe(p: HostPort): string {
  return `${p.hostIp ? p.hostIp + ':' : ''}${p.hostPort}/${p.protocol.toUpperCase()}`;
}

/** Registry of the hostPorts live pods hold. */
export class HostPortTable {
  private readonly byPod = new Map<string, { ports: HostPort[]; pod?: string }>();

  /**
   * Throws already_exists naming the port and the pod holding it. `pod` ("namespace/name") names this pod in
   * later messages; `fields` (from portRequest) leads the message with the field that asked for the port.
   */
  reserve(podId: string, ports: HostPort[], who: { pod?: string; fields?: string[] } = {}): void {
    ports.forEach((p, i) => {
      for (const [other, held] of this.byPod) {
        if (other === podId) continue;
        const taken = held.ports.find((h) => clash(h, p));
        if (!taken) continue;
        const field = who.fields?.[i];
        const as = describe(taken) === describe(p) ? '' : `, which maps ${describe(taken)}`;
        throw new BerthError(
          'already_exists',
          `${field ? `${field}: ` : ''}hostPort ${describe(p)} is already used by pod ${held.pod ? `${held.pod} (${other})` : other}${as}`,
        );
      }
    });
    if (ports.length > 0) this.byPod.set(podId, { ports, pod: who.pod });
  }

  release(podId: string): void {
    this.byPod.delete(podId);
  }

  holders(): string[] {
    return [...this.byPod.keys()];
  }
}
