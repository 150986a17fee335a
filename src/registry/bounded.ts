import { BerthError } from '../errors.js';

// Size limits for the registry bodies berth holds in memory. A registry is hostile input: without a cap, one
// that serves a 1.5 GB "manifest" makes the daemon grow by gigabytes. Layers are not read into memory (they
// stream to disk) and are not limited here.

const MiB = 1 << 20;

export const REGISTRY_LIMITS = {
  /** containerd's MaxManifestSize is 4*1048*1048 (~4.2 MB, its 1024 typo'd); 4 MiB is the round figure it meant. */
  manifest: { bytes: 4 * MiB, what: 'manifests and indexes' },
  /**
   * containerd has no limit of its own for configs (it reads the size the manifest's descriptor declares, which
   * nothing bounds). Real configs are a few KiB; with long histories and many labels a few hundred KiB. 8 MiB
   * leaves a wide margin and keeps a pull's memory bounded.
   */
  config: { bytes: 8 * MiB, what: 'image configs' },
  /** A token response is a JWT or an opaque token plus a few fields: KiBs. */
  token: { bytes: 1 * MiB, what: 'token responses' },
  /** Only the first 200 characters of an error body end up in a message. */
  errorBody: { bytes: 64 * 1024, what: 'error bodies' },
} as const;

export type RegistryLimit = (typeof REGISTRY_LIMITS)[keyof typeof REGISTRY_LIMITS];

function human(bytes: number): string {
  return bytes % MiB === 0 ? `${bytes / MiB} MiB` : `${bytes / 1024} KiB`;
}

/**
 * RESOURCE_EXHAUSTED, not INVALID_ARGUMENT or FAILED_PRECONDITION: the request was fine and the node is in a fine
 * state; what ran out is the room berth allows one body, as gRPC itself answers a message over its maximum size.
 */
export function tooLarge(what: string, limit: RegistryLimit, seen: string): BerthError {
  return new BerthError('resource_exhausted', `${what}: ${seen}, over berth's limit of ${human(limit.bytes)} (${limit.bytes} bytes) for ${limit.what}`);
}

/**
 * Reads a response body into memory, never holding more than `limit.bytes` of it. A Content-Length over the limit
 * fails before any of the body is read; a body without one (chunked) is cut off as soon as it passes the limit.
 * Either way the body is cancelled and `abort` is called so the connection is dropped, not drained.
 */
export async function readBounded(res: Response, limit: RegistryLimit, what: string, abort?: () => void): Promise<Buffer> {
  const declared = res.headers.get('content-length');
  if (declared !== null && /^\d+$/.test(declared.trim()) && Number(declared) > limit.bytes) {
    abort?.();
    await res.body?.cancel().catch(() => undefined);
    throw tooLarge(what, limit, `Content-Length ${declared.trim()}`);
  }
  if (!res.body) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit.bytes) {
      chunks.length = 0;
      abort?.();
      await reader.cancel().catch(() => undefined);
      throw tooLarge(what, limit, `more than ${limit.bytes} bytes received`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}
