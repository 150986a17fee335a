// Typed domain errors. Services throw these; src/cri/ maps each kind to a gRPC status code,
// so nothing below the handlers needs to know about gRPC.
export type ErrorKind =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'failed_precondition'
  | 'unavailable'
  | 'unauthenticated'
  | 'permission_denied'
  | 'deadline_exceeded'
  | 'resource_exhausted'
  | 'unimplemented'
  | 'internal';

export class BerthError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BerthError';
  }
}

export const invalidArgument = (msg: string) => new BerthError('invalid_argument', msg);
export const notFound = (msg: string) => new BerthError('not_found', msg);
export const failedPrecondition = (msg: string) => new BerthError('failed_precondition', msg);
export const unavailable = (msg: string, cause?: unknown) => new BerthError('unavailable', msg, { cause });
export const unauthenticated = (msg: string) => new BerthError('unauthenticated', msg);
export const resourceExhausted = (msg: string) => new BerthError('resource_exhausted', msg);
export const internal = (msg: string, cause?: unknown) => new BerthError('internal', msg, { cause });

// What the node ran out of, by errno: the kernel's answer when a disk, a quota or a file table is full. Named so
// that an operator reading the gRPC status knows which limit to raise or what to free.
const EXHAUSTED: Record<string, string> = {
  ENOSPC: 'no space left on the filesystem',
  EDQUOT: 'disk quota exceeded',
  EMFILE: "berth's open-files limit (RLIMIT_NOFILE) is reached",
  ENFILE: "the system's open-files limit (fs.file-max) is reached",
};
const ERRNO_NAMES: Record<number, string> = { 28: 'ENOSPC', 122: 'EDQUOT', 24: 'EMFILE', 23: 'ENFILE' };

/** The errno name (ENOSPC, EDQUOT, EMFILE, ENFILE) of the exhausted resource behind `err` or its causes, if any. */
export function exhaustedResource(err: unknown): string | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code && code in EXHAUSTED) return code;
  }
  return undefined;
}

/** What an exhausted resource means, for a message: "no space left on the filesystem (ENOSPC)". */
export function describeExhausted(code: string): string {
  return `${EXHAUSTED[code] ?? 'a resource is exhausted'} (${code})`;
}

/**
 * The typed error of a failed libc call that reports an errno (posix_spawn, pipe2): RESOURCE_EXHAUSTED when a
 * limit was reached, else internal. The errno name is kept as `code` on the cause, as Node does for its own calls.
 */
export function errnoError(what: string, errno: number): BerthError {
  const code = ERRNO_NAMES[errno];
  const cause = Object.assign(new Error(`${what}: errno ${errno}`), code ? { code } : {});
  if (code) return new BerthError('resource_exhausted', `${what}: ${describeExhausted(code)}`, { cause });
  return new BerthError('internal', `${what}: errno ${errno}`, { cause });
}

/**
 * A failure writing `target` (a file or directory) with the path named: a full disk or file table becomes
 * RESOURCE_EXHAUSTED, as Node's own message for write(2) does not say which file it was.
 */
export function writeFailure(target: string, err: unknown): unknown {
  const code = exhaustedResource(err);
  if (!code || (err instanceof BerthError && err.kind === 'resource_exhausted')) return err;
  return new BerthError('resource_exhausted', `writing ${target}: ${describeExhausted(code)}`, { cause: err });
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
