import { invalidArgument } from '../errors.js';
import { parseQuantity, shownText } from '../quantity.js';

// Pod bandwidth limits in the embedded network, from the annotations the CNI bandwidth plugin reads, so a pod spec
// means the same here as on a containerd or CRI-O node with that plugin. Traffic to the pod leaves the host through
// the host end of its veth: a tbf there shapes it. Traffic from the pod arrives at that end, where only an ingress
// qdisc can see it; an ifb device (fed by a match-all u32 filter whose mirred action redirects every packet) turns it
// into egress traffic a tbf can shape. No act_police or matchall is needed (this kind of kernel has neither).

export const INGRESS_ANNOTATION = 'kubernetes.io/ingress-bandwidth';
export const EGRESS_ANNOTATION = 'kubernetes.io/egress-bandwidth';

/** kubelet's and containerd's bounds, in bit/s. */
export const MIN_BITS_PER_SECOND = 1e3;
export const MAX_BITS_PER_SECOND = 1e15;

export interface BandwidthLimits {
  /** Into the pod (the annotation's "ingress"), bit/s. */
  ingressBitsPerSecond?: number;
  /** Out of the pod, bit/s. */
  egressBitsPerSecond?: number;
}

function rate(annotations: Record<string, string>, key: string): number | undefined {
  const text = annotations[key];
  if (text === undefined) return undefined;
  const field = `config.annotations["${key}"]`;
  const q = parseQuantity(text);
  if ('problem' in q) throw invalidArgument(`${field} ${q.problem}`);
  if (q.value < MIN_BITS_PER_SECOND) throw invalidArgument(`${field} ${shownText(text)} is below 1 kbit/s (1k)`);
  if (q.value > MAX_BITS_PER_SECOND) throw invalidArgument(`${field} ${shownText(text)} is above 1 Pbit/s (1P)`);
  return q.value;
}

/** The pod's limits, undefined without either annotation; a bad value is INVALID_ARGUMENT naming its annotation. */
export function bandwidthLimits(annotations: Record<string, string>): BandwidthLimits | undefined {
  const ingress = rate(annotations, INGRESS_ANNOTATION);
  const egress = rate(annotations, EGRESS_ANNOTATION);
  if (ingress === undefined && egress === undefined) return undefined;
  return { ...(ingress !== undefined ? { ingressBitsPerSecond: ingress } : {}), ...(egress !== undefined ? { egressBitsPerSecond: egress } : {}) };
}

/** The ifb device of a pod: "berthi" + 9 hex digits of the pod id (15 characters; never a veth's name, as 'i' is no hex digit). */
export function ifbName(podId: string): string {
  return `berthi${podId.slice(0, 9)}`;
}

export const IFB_PATTERN = /^berthi[0-9a-f]{9}$/;

/** berth's ifb devices (by name) that no live pod owns. */
export function orphanIfbs(links: readonly string[], live: ReadonlySet<string>): string[] {
  return links.filter((l) => IFB_PATTERN.test(l) && !live.has(l));
}

/**
 * Bucket size: 10 ms at the rate, so the shaper stays accurate over a second, but at least 32 KiB (a burst below a
 * few MTUs stalls TCP) and at most 1 GiB (tc's limit is 32 bits).
 */
export function burstBytes(bitsPerSecond: number): number {
  return Math.min(2 ** 30, Math.max(32 * 1024, Math.ceil(bitsPerSecond / 8 / 100)));
}

function tbf(dev: string, bitsPerSecond: number): string {
  return `qdisc replace dev ${dev} root tbf rate ${bitsPerSecond}bit burst ${burstBytes(bitsPerSecond)} latency 50ms`;
}

/**
 * The `tc -batch` input that shapes a pod: `veth` is the host end of its pair; `ifb` is needed (and must exist, up)
 * only with an egress limit. What it adds goes with the veth (qdiscs, filter) or with the ifb when it is deleted.
 */
export function shapingBatch(veth: string, ifb: string | undefined, limits: BandwidthLimits): string {
  const lines: string[] = [];
  if (limits.ingressBitsPerSecond !== undefined) lines.push(tbf(veth, limits.ingressBitsPerSecond));
  if (limits.egressBitsPerSecond !== undefined) {
    if (!ifb) throw new Error('an egress limit needs an ifb device');
    lines.push(
      `qdisc replace dev ${veth} handle ffff: ingress`,
      `filter add dev ${veth} parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ${ifb}`,
      tbf(ifb, limits.egressBitsPerSecond),
    );
  }
  return lines.map((l) => `${l}\n`).join('');
}
