// The streaming phase: what `kubectl exec` and `kubectl port-forward` cost through a runtime's streaming server.
// Driven the way kubelet's proxy and crictl drive it: the CRI RPC returns a URL, the client upgrades it to SPDY/3.1.
// The same client code runs against berth and against another runtime's own streaming server (containerd's is
// kubelet's streaming library).

import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { spdyPortForward, spdyRemoteCommand } from '../src/streaming/spdy/client.js';
import type { SpdyStream } from '../src/streaming/spdy/session.js';
import type { CriClient } from './cri-client.js';
import { Interrupted } from './lifecycle.js';
import type { StreamingResult } from './model.js';
import { removePods, startPod, type PodSet } from './phases.js';
import { readCpuMs } from './procfs.js';
import { nsToMs } from './stats.js';

/** Inside the pod's own network namespace, so any fixed port is free. */
export const THROUGHPUT_PORT = 7777;
/** Where the bench image carries the server (bench/fixtures/throughput-server.c). */
export const THROUGHPUT_SERVER = '/usr/local/bin/throughput-server';
const EXEC_OUTPUT = 'hi\n';
const LISTEN_TIMEOUT_MS = 30_000;
const SESSION_TIMEOUT_MS = 60_000;
const COMPILE_TIMEOUT_MS = 120_000;

const since = (t0: bigint) => nsToMs(process.hrtime.bigint() - t0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** Compiles the throughput server statically (the image has no libc); returns the binary's bytes. */
export async function buildThroughputServer(source: string): Promise<Buffer> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-bench-tps-'));
  try {
    const out = path.join(dir, 'throughput-server');
    await promisify(execFile)('gcc', ['-static', '-O2', '-std=c11', '-Wall', '-Wextra', '-Werror', '-o', out, source], { timeout: COMPILE_TIMEOUT_MS });
    return await fs.readFile(out);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Rejects after ms with a message naming what did not finish; the timer never outlives the race. */
async function within<T>(what: string, ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** A URL the client can dial: kubelet resolves a relative one against the runtime's streaming base, which we do not know. */
function absolute(url: string, rpc: string): string {
  if (!/^https?:\/\//.test(url)) throw new Error(`${rpc} returned ${JSON.stringify(url)}, not an absolute http(s) URL`);
  return url;
}

/**
 * One `kubectl exec … echo hi`: Exec RPC, SPDY upgrade, streams, the output, the exit status. Timed from the RPC
 * being issued, to its reply, the first stdout byte, and the status.
 */
async function execEcho(cri: CriClient, containerId: string): Promise<{ rpcMs: number; firstByteMs: number; doneMs: number }> {
  const t0 = process.hrtime.bigint();
  const { url } = await cri.runtime.Exec({ container_id: containerId, cmd: ['echo', 'hi'], stdin: false, stdout: true, stderr: true, tty: false });
  const rpcMs = since(t0);
  let firstByteMs = NaN;
  const result = await within(
    'exec echo',
    SESSION_TIMEOUT_MS,
    spdyRemoteCommand(absolute(url, 'Exec'), {
      stdout: true,
      stderr: true,
      onStreams(streams) {
        streams.get('stdout')!.once('data', () => (firstByteMs = since(t0)));
      },
    }),
  );
  const doneMs = since(t0);
  const out = result.stdout.toString();
  if (out !== EXEC_OUTPUT || result.exitCode !== 0) {
    throw new Error(`exec echo hi over ${result.protocol}: stdout ${JSON.stringify(out)}, stderr ${JSON.stringify(result.stderr.toString())}, exit ${result.exitCode}, status ${result.errorText}`);
  }
  return { rpcMs, firstByteMs, doneMs };
}

/** Writes n bytes (one reused buffer) on stream, honouring backpressure; the stream stays open (see receive). */
async function sendBytes(stream: SpdyStream, n: number): Promise<void> {
  const chunk = Buffer.alloc(Math.min(n, 256 * 1024), 0x61);
  for (let left = n; left > 0; ) {
    const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
    left -= piece.length;
    if (!stream.write(piece)) await new Promise<void>((resolve, reject) => {
      const onDrain = () => (stream.off('close', onClose), resolve());
      const onClose = () => (stream.off('drain', onDrain), reject(new Error('the data stream closed while sending')));
      stream.once('drain', onDrain);
      stream.once('close', onClose);
    });
  }
}

/** A request to the throughput server: the direction, then the byte count (big-endian u64). */
export function throughputRequest(direction: 'upload' | 'download', bytes: number): Buffer {
  const request = Buffer.alloc(9);
  request.write(direction === 'upload' ? 'u' : 'd');
  request.writeBigUInt64BE(BigInt(bytes), 1);
  return request;
}

/**
 * Resolves once `until` holds for what arrived (its byte count and its first bytes), or rejects when the stream ends
 * first. Nothing waits for EOF: containerd's port-forward ends the connection as soon as the client half-closes.
 */
function receive(stream: SpdyStream, until: (count: number, head: Buffer) => boolean, keep = 32): Promise<{ count: number; head: Buffer }> {
  return new Promise((resolve, reject) => {
    let count = 0;
    let head = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      count += c.length;
      if (head.length < keep) head = Buffer.concat([head, c.subarray(0, keep - head.length)]);
      if (until(count, head)) {
        stream.off('data', onData);
        stream.resume();
        resolve({ count, head });
      }
    };
    stream.on('data', onData);
    stream.once('end', () => reject(new Error(`the data stream ended after ${count} bytes (${JSON.stringify(head.toString())}…)`)));
    stream.once('error', reject);
  });
}

/**
 * One forwarded connection to the pod's throughput server moving `bytes` one way. Upload: timed until the server
 * answers the count it read (every byte arrived); download: until every byte arrived. MiB/s.
 */
async function forwardOnce(cri: CriClient, podId: string, direction: 'upload' | 'download', bytes: number): Promise<number> {
  const { url } = await cri.runtime.PortForward({ pod_sandbox_id: podId, port: [THROUGHPUT_PORT] });
  const client = await spdyPortForward(absolute(url, 'PortForward'));
  try {
    const conn = await client.connect(THROUGHPUT_PORT);
    const failed = conn.error.then((text) => {
      if (text) throw new Error(`port-forward error stream: ${text.trim()}`);
      return new Promise<never>(() => undefined);
    });
    failed.catch(() => undefined); // raced below; an error after the measurement ended changes nothing
    const got =
      direction === 'upload' ? receive(conn.data, (_n, head) => head.includes(0x0a)) : receive(conn.data, (n) => n >= bytes, 0);
    got.catch(() => undefined); // raced below
    const t0 = process.hrtime.bigint();
    conn.data.write(throughputRequest(direction, bytes));
    if (direction === 'upload') await Promise.race([sendBytes(conn.data, bytes), failed]);
    const { count, head } = await within(`port-forward ${direction}`, SESSION_TIMEOUT_MS, Promise.race([got, failed]));
    const ms = since(t0);
    if (direction === 'upload') {
      const counted = Number(head.toString().trim());
      if (counted !== bytes) throw new Error(`port-forward upload: the pod read ${JSON.stringify(head.toString())} bytes, not ${bytes}`);
    } else if (count !== bytes) {
      throw new Error(`port-forward download: ${count} bytes arrived, not ${bytes}`);
    }
    return bytes / 2 ** 20 / (ms / 1000);
  } finally {
    client.close();
  }
}

/** ExecSync until the pod's /proc/net/tcp shows the server listening. */
async function waitListening(cri: CriClient, containerId: string, signal?: AbortSignal): Promise<void> {
  const want = `:${THROUGHPUT_PORT.toString(16).toUpperCase().padStart(4, '0')} 00000000:0000 0A`;
  const deadline = Date.now() + LISTEN_TIMEOUT_MS;
  for (;;) {
    if (signal?.aborted) throw new Interrupted();
    const r = await cri.runtime.ExecSync({ container_id: containerId, cmd: ['cat', '/proc/net/tcp'], timeout: 5 });
    if (String(r.stdout).includes(want)) return;
    if (Date.now() > deadline) throw new Error(`the throughput server did not listen on ${THROUGHPUT_PORT} within ${LISTEN_TIMEOUT_MS} ms`);
    await sleep(50);
  }
}

export interface StreamingOptions {
  /** Execs timed (after one untimed warm-up). */
  execs: number;
  /** Port-forward measurements per direction (after one untimed warm-up each). */
  forwards: number;
  /** Bytes per port-forward measurement, MiB. */
  forwardMiB: number;
  /** The streaming server's process (the runtime daemon), for CPU per MiB; omitted when unknown. */
  daemonPid?: number;
  signal?: AbortSignal;
}

/**
 * One pod running the throughput server; execs of `echo hi` one after another, then port-forward uploads and
 * downloads through one connection each. The pod is removed afterwards, whatever happened.
 */
export async function measureStreaming(cri: CriClient, image: string, opts: StreamingOptions): Promise<StreamingResult> {
  const result: StreamingResult = { execRpc: [], firstByte: [], execDone: [], forwardMiB: opts.forwardMiB, uploadMiBps: [], downloadMiBps: [], failures: [] };
  const pods: PodSet = new Set();
  const check = () => {
    if (opts.signal?.aborted) throw new Interrupted();
  };
  try {
    const pod = await startPod(cri, image, pods, opts.signal, undefined, [THROUGHPUT_SERVER, String(THROUGHPUT_PORT)]);
    const containerId = pod.containerId!;
    // Untimed: the first exec pays for things a node pays once (the client's first TLS-less connect, code paths warming).
    await execEcho(cri, containerId);
    for (let i = 0; i < opts.execs; i++) {
      check();
      const r = await execEcho(cri, containerId);
      result.execRpc.push(r.rpcMs);
      result.firstByte.push(r.firstByteMs);
      result.execDone.push(r.doneMs);
    }
    if (opts.forwards > 0) {
      await waitListening(cri, containerId, opts.signal);
      const bytes = opts.forwardMiB * 2 ** 20;
      for (const direction of ['upload', 'download'] as const) {
        check();
        await forwardOnce(cri, pod.podId, direction, Math.min(bytes, 2 ** 20));
        const cpu0 = opts.daemonPid ? await readCpuMs(opts.daemonPid) : NaN;
        for (let i = 0; i < opts.forwards; i++) {
          check();
          const mibps = await forwardOnce(cri, pod.podId, direction, bytes);
          (direction === 'upload' ? result.uploadMiBps : result.downloadMiBps).push(mibps);
        }
        if (opts.daemonPid) {
          const perMiB = ((await readCpuMs(opts.daemonPid)) - cpu0) / (opts.forwards * opts.forwardMiB);
          if (direction === 'upload') result.uploadCpuMsPerMiB = perMiB;
          else result.downloadCpuMsPerMiB = perMiB;
        }
      }
    }
  } catch (err) {
    if (err instanceof Interrupted) throw err;
    result.failures.push(message(err));
  } finally {
    for (const e of await removePods(cri, pods)) result.failures.push(`cleanup: ${e}`);
  }
  return result;
}
