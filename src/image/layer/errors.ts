// The typed errors of a layer unpack: a refused entry names itself, and a failure of the stream as a whole is
// classified by whose fault it is (the caller's stream, the registry's bytes, the disk).
import { BerthError, errorMessage } from '../../errors.js';

export function escapes(name: string, why?: string): BerthError {
  return new BerthError('invalid_argument', `layer entry ${name} escapes the layer root${why ? `: ${why}` : ''}`);
}

export function invalidEntry(name: string, why: string): BerthError {
  return new BerthError('invalid_argument', `layer entry ${name}: ${why}`);
}

/** The error an unpack that failed with `err` reports; `inputError` is what the caller's stream emitted, if anything. */
export function classify(err: unknown, inputError: unknown, root: string): unknown {
  if (err instanceof BerthError) return err;
  if (err === inputError && inputError !== undefined) return err; // the caller's stream: its error, untouched
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ERR_STREAM_PREMATURE_CLOSE') {
    return new BerthError('unavailable', `layer stream for ${root} closed before its end`, { cause: err });
  }
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new BerthError('resource_exhausted', `unpacking into ${root}: ${errorMessage(err)}`, { cause: err });
  }
  // Everything else comes from the decompressor or the tar parser: corrupt bytes from a registry are its fault
  // and worth a retry, like a digest mismatch, hence UNAVAILABLE.
  return new BerthError('unavailable', `layer data is corrupt or truncated: ${errorMessage(err)}`, { cause: err });
}
