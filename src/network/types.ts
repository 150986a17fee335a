import type { PodVeth } from '../kernel/shim.js';
import { DnsConfig, PortMapping } from '../sandbox/types.js';

// What the sandbox service asks of pod networking; the embedded bridge and CNI both implement it.

export interface PodNetworkRequest {
  podId: string;
  name: string;
  namespace: string;
  uid: string;
  /** The pod's pinned network namespace file. */
  netnsPath: string;
  portMappings: PortMapping[];
  dns?: DnsConfig;
  /** Bandwidth annotations etc. for CNI runtimeConfig. */
  annotations: Record<string, string>;
}

export interface PodNetworkResult {
  ip: string;
  additionalIps: string[];
  /** Anything teardown needs after a restart (which backend, allocations). Stored in the sandbox record. */
  state: Record<string, unknown>;
}

/** Decided before the pod's namespaces exist: which backend, and what (if anything) is made along with them. */
export interface PodNetworkPlan {
  backend: 'embedded' | 'cni' | 'none';
  /** Made by the namespace helper along with the netns (no process of its own). */
  veth?: PodVeth;
  /** The pod's address when it is known before the netns exists (embedded); CNI plugins give it in setup. */
  ip?: string;
  /** What teardown needs to undo the plan when setup never runs or fails (addresses, hostPorts). */
  state: Record<string, unknown>;
}

export interface NetworkReadiness {
  ready: boolean;
  reason: string;
  message: string;
}

export interface PodNetwork {
  /** Called once at start: make the bridge, chains, reconcile allocations against live pods. */
  start(livePods: { podId: string; state: Record<string, unknown> }[]): Promise<void>;
  /** Before the namespaces are made (req.netnsPath is where the netns will be pinned). */
  prepare(req: PodNetworkRequest): Promise<PodNetworkPlan>;
  /** Once the netns exists (with plan.veth in it, if the plan had one). */
  setup(req: PodNetworkRequest, plan: PodNetworkPlan): Promise<PodNetworkResult>;
  /** Idempotent; must work after a berth restart from `state` alone. */
  teardown(req: PodNetworkRequest, state: Record<string, unknown>): Promise<void>;
  readiness(): NetworkReadiness;
  setPodCidr(cidr: string): void;
  close(): Promise<void>;
}

/** Loopback only: what a pod has until a real network is configured. */
export class LoopbackOnly implements PodNetwork {
  async start(): Promise<void> {}
  async prepare(): Promise<PodNetworkPlan> {
    return { backend: 'none', state: { backend: 'none' } };
  }
  async setup(): Promise<PodNetworkResult> {
    return { ip: '', additionalIps: [], state: { backend: 'none' } };
  }
  async teardown(): Promise<void> {}
  readiness(): NetworkReadiness {
    return { ready: false, reason: 'NetworkPluginNotReady', message: 'berth: pod networking beyond loopback is not configured' };
  }
  setPodCidr(): void {}
  async close(): Promise<void> {}
}
