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

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
