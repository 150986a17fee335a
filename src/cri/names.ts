import { invalidArgument } from '../errors.js';

// Strings of a request that become names, paths, log fields or metric labels on the node. A pod spec is hostile
// input: a `/` in a name could be read as a path by whatever composes one from it, a NUL would be cut short by
// every C string on the way (the shim's JSON, the kernel), and 10 KiB of text in every log line and metric
// series is a cheap way to exhaust the node.

/** Kubernetes' longest object name (a DNS subdomain); kubelet's names, namespaces and uids all fit. */
export const MAX_NAME_BYTES = 253;
/** PATH_MAX: the kernel refuses anything longer anyway, after berth would have stored it. */
export const MAX_PATH_BYTES = 4096;

// Control characters (NUL included) would garble logs and terminals that print the name.
const CONTROL = /[\u0000-\u001f\u007f]/;

/** metadata.name, namespace, uid: at most 253 bytes, no `/` and no control character. Empty is the caller's call. */
export function objectName(value: string, field: string): string {
  if (Buffer.byteLength(value) > MAX_NAME_BYTES) {
    throw invalidArgument(`${field} is ${Buffer.byteLength(value)} bytes long; berth takes at most ${MAX_NAME_BYTES}`);
  }
  if (value.includes('/')) throw invalidArgument(`${field} "${value}" contains "/", which a name cannot hold`);
  if (CONTROL.test(value)) throw invalidArgument(`${field} ${JSON.stringify(value)} contains a control character (NUL, newline, ...)`);
  return value;
}

/** A word handed to an exec or the kernel (an argument, a hostname): a NUL would end it early, silently. */
export function noNul(value: string, field: string): string {
  if (value.includes('\0')) throw invalidArgument(`${field} ${JSON.stringify(value.slice(0, 64))} contains a NUL byte`);
  return value;
}

/** A path: no NUL, at most PATH_MAX bytes. */
export function pathText(value: string, field: string): string {
  noNul(value, field);
  if (Buffer.byteLength(value) > MAX_PATH_BYTES) {
    throw invalidArgument(`${field} is ${Buffer.byteLength(value)} bytes long; a path is at most ${MAX_PATH_BYTES}`);
  }
  return value;
}

/**
 * Kubernetes' own cap on an object's annotations (TotalAnnotationSizeLimitB), applied to labels and annotations
 * each: berth answers every list with them, and a few pods holding megabytes would push ListPodSandbox or
 * ListContainers past the 16 MiB message limit for every client on the node.
 */
export const MAX_METADATA_MAP_BYTES = 256 * 1024;

/** Labels or annotations: keys and values together at most 256 KiB, keys free of NUL. */
export function metadataMap(map: Record<string, string>, field: string): Record<string, string> {
  let bytes = 0;
  for (const [key, value] of Object.entries(map)) {
    if (key.includes('\0')) throw invalidArgument(`${field} key ${JSON.stringify(key.slice(0, 64))} contains a NUL byte`);
    bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
  }
  if (bytes > MAX_METADATA_MAP_BYTES) {
    throw invalidArgument(`${field} hold ${bytes} bytes; berth takes at most ${MAX_METADATA_MAP_BYTES} (as Kubernetes does for annotations)`);
  }
  return { ...map };
}
