// Layer unpacking on worker threads. On the daemon's thread an unpack costs tens of ms of event loop per MiB: on
// these VMs a file create alone is ~0.5 ms of synchronous syscall, and a layer holds thousands. A worker runs the
// whole pipeline (hashes, decompression, tar parsing, filesystem calls), so pod starts and every other RPC keep
// their latency during a pull, and layers of a pull unpack in parallel on several CPUs.
//
// The pool is created lazily and shrinks to nothing when no pull needs it, so an idle daemon pays no memory for it.
import os from 'node:os';
import type { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { BerthError, internal } from '../../errors.js';
import { mallocTrimAsync } from '../../kernel/libc.js';
import type { Logger } from '../../log.js';
import type { FromWorker, ToWorker, WireError, WorkerResult } from './unpack-protocol.js';

/** Compressed bytes sent to a worker and not yet taken by its pipeline, per job, before the download is paused. */
const WINDOW_BYTES = 4 << 20;
/** A worker with no job for this long is ended; the next pull starts one again (~10 ms). */
const IDLE_MS = 2_000;

export interface UnpackPoolOptions {
  /** At most this many threads (default: the CPUs this process may use, at most 4). */
  size?: number;
  /** A worker idle this long is ended (default 2 s). */
  idleMs?: number;
}

interface Job {
  resolve(r: WorkerResult): void;
  reject(err: unknown): void;
  log: Logger;
  onAck(bytes: number): void;
}

interface PoolWorker {
  worker: Worker;
  jobs: Map<number, Job>;
  idle?: NodeJS.Timeout;
}

function trimMalloc(): void {
  // Not glibc, or the trim failed: the pages stay, nothing else is wrong.
  mallocTrimAsync().catch(() => {});
}

function unwire(e: WireError): Error {
  const cause = e.code ? Object.assign(new Error(e.message), { code: e.code }) : undefined;
  if (e.kind) return new BerthError(e.kind, e.message, { cause });
  return Object.assign(new Error(e.message), e.code ? { code: e.code } : {});
}

export class UnpackPool {
  private readonly workers: PoolWorker[] = [];
  private nextJob = 1;

  private readonly size: number;
  private readonly idleMs: number;

  constructor(opts: UnpackPoolOptions = {}) {
    this.size = Math.max(1, opts.size ?? Math.min(os.availableParallelism(), 4));
    this.idleMs = opts.idleMs ?? IDLE_MS;
  }

  /**
   * Unpacks `input` (a layer as downloaded) into `dest` on a worker thread, as unpackLayer does, and returns also
   * the digest and size of the compressed bytes. A failure of `input` fails the unpack with that very error.
   */
  unpack(input: Readable, dest: string, log: Logger): Promise<WorkerResult> {
    const pw = this.pick();
    const id = this.nextJob++;
    const post = (m: ToWorker, transfer?: ArrayBuffer[]) => pw.worker.postMessage(m, transfer);
    return new Promise<WorkerResult>((resolve, reject) => {
      let inFlight = 0;
      let inputError: unknown;
      const detach = () => {
        input.off('data', onData);
        input.off('end', onEnd);
        input.off('error', onError);
      };
      const onData = (chunk: Buffer) => {
        // A copy in a buffer of its own, which is then moved to the worker, not cloned again.
        const data = new Uint8Array(chunk);
        inFlight += data.byteLength;
        post({ type: 'chunk', job: id, data }, [data.buffer]);
        if (inFlight > WINDOW_BYTES) input.pause();
      };
      const onEnd = () => post({ type: 'end', job: id });
      const onError = (err: unknown) => {
        inputError ??= err;
        post({ type: 'abort', job: id, message: String((err as Error)?.message ?? err) });
      };
      const finish = () => {
        detach();
        pw.jobs.delete(id);
        this.release(pw);
      };
      pw.jobs.set(id, {
        log,
        onAck: (bytes) => {
          inFlight -= bytes;
          if (inFlight <= WINDOW_BYTES && input.isPaused() && !input.destroyed) input.resume();
        },
        resolve: (r) => {
          finish();
          resolve(r);
        },
        reject: (err) => {
          finish();
          if (!input.destroyed) input.destroy();
          reject(inputError ?? err);
        },
      });
      post({ type: 'start', job: id, dest });
      input.on('data', onData);
      input.on('end', onEnd);
      input.on('error', onError);
    });
  }

  /** Ends every worker (their jobs fail). */
  async close(): Promise<void> {
    await Promise.all([...this.workers].map((pw) => pw.worker.terminate()));
  }

  /** Workers running now, for tests and metrics. */
  get threads(): number {
    return this.workers.length;
  }

  private pick(): PoolWorker {
    let least: PoolWorker | undefined;
    for (const pw of this.workers) if (!least || pw.jobs.size < least.jobs.size) least = pw;
    const pw = least && (least.jobs.size === 0 || this.workers.length >= this.size) ? least : this.spawn();
    if (pw.idle) clearTimeout(pw.idle);
    pw.idle = undefined;
    pw.worker.ref();
    return pw;
  }

  private release(pw: PoolWorker): void {
    if (pw.jobs.size > 0 || !this.workers.includes(pw)) return;
    pw.worker.unref();
    pw.idle = setTimeout(() => {
      if (pw.jobs.size > 0) return;
      this.drop(pw);
      void pw.worker.terminate();
    }, this.idleMs);
    pw.idle.unref();
  }

  private drop(pw: PoolWorker): void {
    const i = this.workers.indexOf(pw);
    if (i >= 0) this.workers.splice(i, 1);
  }

  private spawn(): PoolWorker {
    const worker = new Worker(new URL('./unpack-worker.js', import.meta.url));
    const pw: PoolWorker = { worker, jobs: new Map() };
    worker.on('message', (m: FromWorker) => {
      const job = pw.jobs.get(m.job);
      if (!job) return;
      switch (m.type) {
        case 'ack':
          return job.onAck(m.bytes);
        case 'log':
          return job.log[m.level](m.msg, m.fields);
        case 'done':
          return job.resolve(m.result);
        case 'failed':
          return job.reject(unwire(m.error));
      }
    });
    // A worker that dies takes its jobs with it; the next unpack starts a fresh one.
    const lost = (why: string, err?: unknown) => {
      this.drop(pw);
      if (pw.idle) clearTimeout(pw.idle);
      for (const job of [...pw.jobs.values()]) job.reject(internal(`layer unpack worker ${why}`, err));
    };
    worker.on('error', (err) => lost(`failed: ${err.message}`, err));
    worker.on('exit', (code) => {
      lost(`exited with code ${code}`);
      // The threads' buffers and decompressor state were malloc'd: glibc keeps those pages in its arenas unless
      // told, and the daemon would sit on the pull's high-water mark (~60 MiB more RSS, measured with the bench).
      if (this.workers.length === 0) trimMalloc();
    });
    this.workers.push(pw);
    return pw;
  }
}
