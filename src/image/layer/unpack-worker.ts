// An unpack worker thread: runs unpackLayer (gunzip/zstd, both sha256s, tar parsing and every filesystem call of
// the extractor) off the daemon's event loop, for any number of layers at once, fed by unpack-pool.ts.
import { createHash, type Hash } from 'node:crypto';
import os from 'node:os';
import { Readable } from 'node:stream';
import { parentPort } from 'node:worker_threads';
import { BerthError, errorMessage } from '../../errors.js';
import type { Level, Logger } from '../../log.js';
import type { FromWorker, ToWorker, WireError } from './unpack-protocol.js';
import { unpackLayer } from './unpack.js';

const port = parentPort;
if (!port) throw new Error('unpack-worker.js runs as a worker thread only');

// Unpacking is background work: pod starts and RPCs on the daemon's thread come first when CPUs are scarce. On
// Linux the nice value is per thread and pid 0 names the calling one, so this leaves the daemon's thread alone.
// Raising it needs no privilege.
const UNPACK_NICENESS = 10;
try {
  os.setPriority(0, Math.min(19, os.getPriority(0) + UNPACK_NICENESS));
} catch {
  // Without it unpacking still works, at the daemon's priority.
}

const send = (m: FromWorker) => port.postMessage(m);

interface Job {
  input: Readable;
  hash: Hash;
  bytes: number;
  /** Bytes taken while the pipeline was full: acknowledged when it next asks for data. */
  owed: number;
}

const jobs = new Map<number, Job>();
/** Compressed bytes a job buffers before the daemon is asked to wait (it also keeps WINDOW_BYTES in flight). */
const INPUT_HIGH_WATER = 1 << 20;

function forwardingLogger(job: number, base: Record<string, unknown> = {}): Logger {
  const at = (level: Level) => (msg: string, fields?: Record<string, unknown>) => {
    const flat: Record<string, unknown> = { ...base };
    for (const [k, v] of Object.entries(fields ?? {})) flat[k] = v instanceof Error ? v.message : v;
    send({ type: 'log', job, level, msg, fields: flat });
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: (f) => forwardingLogger(job, { ...base, ...f }) };
}

function wire(err: unknown): WireError {
  let code: string | undefined;
  for (let e = err, depth = 0; e instanceof Error && depth < 8 && code === undefined; e = e.cause, depth++) {
    code = (e as NodeJS.ErrnoException).code;
  }
  return { ...(err instanceof BerthError ? { kind: err.kind } : {}), message: errorMessage(err), ...(code ? { code } : {}) };
}

function start(id: number, dest: string): void {
  const job: Job = {
    input: new Readable({
      highWaterMark: INPUT_HIGH_WATER,
      read() {
        if (job.owed > 0) {
          send({ type: 'ack', job: id, bytes: job.owed });
          job.owed = 0;
        }
      },
    }),
    hash: createHash('sha256'),
    bytes: 0,
    owed: 0,
  };
  jobs.set(id, job);
  unpackLayer(job.input, dest, { log: forwardingLogger(id), ownThread: true }).then(
    (result) => send({ type: 'done', job: id, result: { ...result, digest: 'sha256:' + job.hash.digest('hex'), compressedBytes: job.bytes } }),
    (err: unknown) => send({ type: 'failed', job: id, error: wire(err) }),
  ).finally(() => jobs.delete(id));
}

port.on('message', (m: ToWorker) => {
  if (m.type === 'start') return start(m.job, m.dest);
  const job = jobs.get(m.job);
  if (!job) return; // already failed: what is still in flight for it is dropped
  switch (m.type) {
    case 'chunk': {
      const chunk = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
      job.hash.update(chunk);
      job.bytes += chunk.length;
      if (job.input.push(chunk)) send({ type: 'ack', job: m.job, bytes: chunk.length });
      else job.owed += chunk.length;
      break;
    }
    case 'end':
      job.input.push(null);
      break;
    case 'abort':
      job.input.destroy(new Error(m.message));
      break;
  }
});
