// The messages between the daemon and an unpack worker thread (unpack-pool.ts ↔ unpack-worker.ts). Plain data only:
// they are structured-cloned, and chunk data is transferred, not copied.
import type { ErrorKind } from '../../errors.js';
import type { Level } from '../../log.js';
import type { UnpackResult } from './unpack.js';

export type ToWorker =
  | { type: 'start'; job: number; dest: string }
  /** Compressed layer bytes; the worker acknowledges them once its pipeline took them, for flow control. */
  | { type: 'chunk'; job: number; data: Uint8Array }
  | { type: 'end'; job: number }
  /** The download failed or was cancelled: the unpack fails, removing what it wrote. */
  | { type: 'abort'; job: number; message: string };

export interface WorkerResult extends UnpackResult {
  /** `sha256:<hex>` of the compressed bytes received, to compare with the manifest's digest. */
  digest: string;
  /** Compressed bytes received. */
  compressedBytes: number;
}

/** An error as it crosses threads: its kind when typed, and the errno code found on it or its causes. */
export interface WireError {
  kind?: ErrorKind;
  message: string;
  code?: string;
}

export type FromWorker =
  | { type: 'ack'; job: number; bytes: number }
  | { type: 'done'; job: number; result: WorkerResult }
  | { type: 'failed'; job: number; error: WireError }
  | { type: 'log'; job: number; level: Level; msg: string; fields?: Record<string, unknown> };
