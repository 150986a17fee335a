import { invalidArgument } from '../errors.js';
import type { BlockioDeviceLimit } from '../kernel/cgroup-plan.js';

// Which [blockio] class a container gets, read from the annotations containerd reads (through goresctrl), in its
// order: the container's own CRI annotation, then the pod's per-container one, then the pod's.

export const BLOCKIO_CONTAINER_ANNOTATION = 'io.kubernetes.cri.blockio-class';
export const BLOCKIO_POD_ANNOTATION = 'blockio.resources.beta.kubernetes.io/pod';
export const BLOCKIO_POD_CONTAINER_PREFIX = 'blockio.resources.beta.kubernetes.io/container.';

export interface BlockioSelection {
  /** The annotation that chose the class, as the request field an error names. */
  field: string;
  className: string;
}

export function selectBlockioClass(
  containerName: string,
  containerAnnotations: Record<string, string>,
  podAnnotations: Record<string, string>,
): BlockioSelection | undefined {
  const candidates: [string, Record<string, string>, string][] = [
    ['config.annotations', containerAnnotations, BLOCKIO_CONTAINER_ANNOTATION],
    ['sandbox_config.annotations', podAnnotations, BLOCKIO_POD_CONTAINER_PREFIX + containerName],
    ['sandbox_config.annotations', podAnnotations, BLOCKIO_POD_ANNOTATION],
  ];
  for (const [map, annotations, key] of candidates) {
    if (Object.hasOwn(annotations, key)) return { field: `${map}["${key}"]`, className: annotations[key] };
  }
  return undefined;
}

/** The device limits of the chosen class; a class the config does not define is INVALID_ARGUMENT naming the annotation. */
export function blockioLimitsFor(selection: BlockioSelection | undefined, classes: Record<string, BlockioDeviceLimit[]>): BlockioDeviceLimit[] | undefined {
  if (!selection) return undefined;
  const limits = Object.hasOwn(classes, selection.className) ? classes[selection.className] : undefined;
  if (!limits) {
    const known = Object.keys(classes);
    throw invalidArgument(
      `${selection.field}: unknown block I/O class ${JSON.stringify(selection.className)} (${known.length ? `this node's [blockio] classes: ${known.join(', ')}` : 'this node defines no [blockio] classes'})`,
    );
  }
  return limits;
}

/** Every block I/O class a pod's own annotations name exists: checked at RunPodSandbox, before anything is made. */
export function checkPodBlockioClasses(podAnnotations: Record<string, string>, classes: Record<string, BlockioDeviceLimit[]>): void {
  for (const [key, className] of Object.entries(podAnnotations)) {
    if (key === BLOCKIO_POD_ANNOTATION || key.startsWith(BLOCKIO_POD_CONTAINER_PREFIX)) {
      blockioLimitsFor({ field: `config.annotations["${key}"]`, className }, classes);
    }
  }
}
