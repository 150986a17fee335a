import { invalidArgument } from '../errors.js';
import { MAX_WRITABLE_LAYER_BYTES, MIN_WRITABLE_LAYER_BYTES } from '../kernel/writable-layer.js';
import { parseQuantity, shownText } from '../quantity.js';

// How big a container's writable layer may grow. Neither CRI nor containerd or CRI-O has a field or annotation for
// it (Docker has `--storage-opt size=`), so berth reads its own pod annotations, in the shape containerd gives its
// per-container blockio annotation: one for the pod's every container and one per container name, the latter
// winning. The node's `[runtime] writable_layer_max_bytes` is the default and, when set, a ceiling: a pod spec is
// hostile input and cannot lift the operator's limit.

export const POD_LIMIT_ANNOTATION = 'writable-layer.berth.io/pod';
export const CONTAINER_LIMIT_ANNOTATION_PREFIX = 'writable-layer.berth.io/container.';
/** A key's container name is the pod author's: enough of it to find the annotation, not all of it. */
const KEY_SHOWN_MAX = 128;

/** The container's limit in bytes, 0 for none; a bad annotation is INVALID_ARGUMENT naming it. */
export function writableLayerLimit(podAnnotations: Record<string, string>, containerName: string, nodeDefault: number): number {
  const containerKey = `${CONTAINER_LIMIT_ANNOTATION_PREFIX}${containerName}`;
  const key = podAnnotations[containerKey] !== undefined ? containerKey : podAnnotations[POD_LIMIT_ANNOTATION] !== undefined ? POD_LIMIT_ANNOTATION : undefined;
  if (key === undefined) return nodeDefault;
  return annotatedLimit(podAnnotations[key]!, `sandbox_config.annotations[${shownText(key, KEY_SHOWN_MAX)}]`, nodeDefault);
}

/**
 * RunPodSandbox's check of every writable-layer annotation of the pod: a bad one is refused before the pod exists,
 * not at the first CreateContainer of a pod kubelet then keeps retrying.
 */
export function checkWritableLayerAnnotations(podAnnotations: Record<string, string>, nodeDefault: number): void {
  for (const [key, text] of Object.entries(podAnnotations)) {
    if (key === POD_LIMIT_ANNOTATION || key.startsWith(CONTAINER_LIMIT_ANNOTATION_PREFIX)) annotatedLimit(text, `config.annotations[${shownText(key, KEY_SHOWN_MAX)}]`, nodeDefault);
  }
}

function annotatedLimit(text: string, field: string, nodeDefault: number): number {
  const q = parseQuantity(text);
  if ('problem' in q) throw invalidArgument(`${field} ${q.problem}`);
  if (q.value === 0) {
    if (nodeDefault > 0) throw invalidArgument(`${field} is 0 (no limit), but this node limits every writable layer to ${nodeDefault} bytes ([runtime] writable_layer_max_bytes)`);
    return 0;
  }
  if (q.value < MIN_WRITABLE_LAYER_BYTES) throw invalidArgument(`${field} ${shownText(text)} is below the smallest writable layer, ${MIN_WRITABLE_LAYER_BYTES} bytes (4Mi)`);
  if (q.value > MAX_WRITABLE_LAYER_BYTES) throw invalidArgument(`${field} ${shownText(text)} is above ${MAX_WRITABLE_LAYER_BYTES} bytes (1Pi)`);
  if (nodeDefault > 0 && q.value > nodeDefault) {
    throw invalidArgument(`${field} ${shownText(text)} is above this node's limit of ${nodeDefault} bytes ([runtime] writable_layer_max_bytes)`);
  }
  return q.value;
}
