import { invalidArgument } from '../errors.js';
import { MAX_PIDS_LIMIT } from '../config/schema.js';

// A container's pids.max: [runtime] pids_limit, which a pod annotation may lower but never raise. No runtime
// convention exists for this (containerd has none, CRI-O only a node-wide pids_limit), hence berth's own namespace.

export const PIDS_LIMIT_ANNOTATION = 'berth.dev/pids-limit';

/**
 * The limit for the pod's containers (0: none). `field` is how the request names the pod's annotations
 * (config.annotations at RunPodSandbox, sandbox_config.annotations at CreateContainer).
 */
export function podPidsLimit(configLimit: number, podAnnotations: Record<string, string>, field: string): number {
  if (!Object.hasOwn(podAnnotations, PIDS_LIMIT_ANNOTATION)) return configLimit;
  const raw = podAnnotations[PIDS_LIMIT_ANNOTATION];
  const at = `${field}["${PIDS_LIMIT_ANNOTATION}"]`;
  const n = /^[0-9]{1,7}$/.test(raw) ? Number(raw) : NaN;
  const cap = configLimit === 0 ? MAX_PIDS_LIMIT : configLimit;
  if (!(n >= 1 && n <= cap)) {
    throw invalidArgument(
      `${at}: ${JSON.stringify(raw)} must be a whole number from 1 to ${cap}${configLimit === 0 ? '' : " (this node's [runtime] pids_limit: the annotation can lower it, never raise it)"}`,
    );
  }
  return n;
}
