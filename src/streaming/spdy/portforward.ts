import type { OnReadOpts } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../log.js';
import { errorMessage } from '../../errors.js';
import type { PortForwardTarget, ProtocolContext } from '../types.js';
import { RstStatus } from './errors.js';
import type { SpdySession, SpdyStream } from './session.js';
import { onShutdown } from './shutdown.js';

// k8s portforward.k8s.io over one SPDY session, as kubelet's streaming server serves it
// (k8s.io/kubelet/pkg/cri/streaming/portforward): each forwarded connection is a pair of streams, `error` and
// `data`, sharing `port` and `requestID` headers. Anything wrong with one pair (bad port, failed dial, a stream
// missing) goes as text on that pair's error stream and closes that pair only; the session serves the others.

export const portForwardProtocols = ['portforward.k8s.io'] as const;

/**
 * Bytes the pod side of a forwarded connection reads at once: several data frames per read (and per writev to the
 * client) when the pod sends fast, one buffer per connection whatever its speed.
 */
const POD_READ_BYTES = 256 * 1024;

interface Pair {
  requestId: string;
  data?: SpdyStream;
  error?: SpdyStream;
  timer: NodeJS.Timeout | null;
}

/** A `port` header as kubelet parses it (decimal, 1-65535); the error names the value. */
export function parsePortHeader(raw: string | undefined): number | string {
  if (raw === undefined || raw === '') return 'the "port" header is required';
  if (!/^[0-9]{1,5}$/.test(raw)) return `port ${JSON.stringify(raw)} is not a number in 1-65535`;
  const port = Number(raw);
  if (port < 1 || port > 65535) return `port ${raw} is outside 1-65535`;
  return port;
}

export function servePortForward(session: SpdySession, target: PortForwardTarget, ctx: ProtocolContext, log: Logger): void {
  const pending = new Map<string, Pair>();
  const sessionAbort = new AbortController();
  const unsubscribe = onShutdown(ctx.shutdown, () => session.close());
  session.once('close', () => {
    unsubscribe();
    for (const p of pending.values()) if (p.timer) clearTimeout(p.timer);
    pending.clear();
    sessionAbort.abort(new Error('the port-forward session ended'));
  });

  session.on('stream', (stream) => {
    const type = stream.header('streamtype');
    if (type !== 'data' && type !== 'error') {
      log.debug('refusing a port-forward stream of unknown type', { streamtype: type ?? null, stream: stream.id });
      stream.reset(RstStatus.refusedStream);
      return;
    }
    stream.accept();
    const requestId = stream.header('requestid') ?? legacyRequestId(type, stream.id);
    let pair = pending.get(requestId);
    if (!pair) {
      const created: Pair = { requestId, timer: null };
      created.timer = setTimeout(() => {
        pending.delete(requestId);
        failPair(created, `timed out waiting for the streams of request ${requestId}`);
      }, ctx.streamCreationTimeoutMs);
      pending.set(requestId, created);
      pair = created;
    }
    if (pair[type]) {
      stream.reset(RstStatus.protocolError);
      pair.error?.write(`error processing stream for request ${requestId}: ${type} stream already assigned`);
      return;
    }
    pair[type] = stream;
    if (type === 'error') stream.resume(); // the client writes nothing on it; a stray byte must not hold the socket
    if (pair.data && pair.error) {
      pending.delete(requestId);
      if (pair.timer) clearTimeout(pair.timer);
      void forward(pair.data, pair.error, requestId);
    }
  });

  function failPair(pair: Pair, message: string): void {
    log.info('port-forward request failed', { request: pair.requestId, error: message });
    if (pair.error && !pair.error.writableEnded) pair.error.end(message);
    if (pair.data && !pair.data.writableEnded) pair.data.end();
  }

  async function forward(data: SpdyStream, error: SpdyStream, requestId: string): Promise<void> {
    const port = parsePortHeader(data.header('port'));
    if (typeof port === 'string') return failPair({ requestId, data, error, timer: null }, port);
    const abort = new AbortController();
    const onSessionEnd = () => abort.abort(sessionAbort.signal.reason);
    sessionAbort.signal.addEventListener('abort', onSessionEnd, { once: true });
    const release = () => {
      sessionAbort.signal.removeEventListener('abort', onSessionEnd);
      if (!abort.signal.aborted) abort.abort(new Error('the port-forward connection ended'));
    };
    let conn: Duplex | undefined;
    const resumePod = () => conn?.resume();
    // Pod -> client without a buffer per read: the pod connection reads into one buffer of its own, whose bytes go
    // out as frames at once; while the client's socket holds some of them, the pod connection is paused (so the
    // buffer is not overwritten) until they are written. Per-read buffers cost the daemon collections that cost
    // more than the copying.
    const podBuffer = Buffer.allocUnsafe(POD_READ_BYTES);
    const podReads: OnReadOpts = { buffer: podBuffer, callback: (bytes) => data.sendNow(podBuffer.subarray(0, bytes), resumePod) };
    try {
      conn = await ctx.backend.portForward(target.podSandboxId, port, abort.signal, podReads);
    } catch (err) {
      release();
      return failPair({ requestId, data, error, timer: null }, `error forwarding port ${port} to pod ${target.podSandboxId}: ${errorMessage(err)}`);
    }
    if (data.destroyed || session.closed) {
      conn.destroy();
      return release();
    }
    const plog = log.child({ request: requestId, port });
    let connClosed = false;
    let dataClosed = false;
    const finish = () => {
      if (connClosed && dataClosed) release();
    };
    const pod = conn;
    pod.on('error', (err) => plog.debug('pod side of a port-forward connection failed', { error: err.message }));
    // A connection that does not read into podReads (a backend may ignore it) delivers chunks of its own: each is
    // sent the same way and is not reused, so only the pause matters.
    pod.on('data', (chunk: Buffer) => {
      if (!data.sendNow(chunk, resumePod)) pod.pause();
    });
    // When the pod side is done, so is the pair for the client (kubelet closes both streams).
    pod.on('end', () => {
      if (!data.writableEnded) data.end();
      if (!error.writableEnded) error.end();
    });
    pod.on('close', () => {
      connClosed = true;
      // Whatever the client still sends has nowhere to go; dropping it keeps the session's socket flowing.
      data.deliverTo(null);
      if (!data.writableEnded) data.end();
      if (!error.writableEnded) error.end();
      finish();
    });
    // Client -> pod, straight from the session's frames; the client's FIN half-closes the pod connection.
    // Corked per read of the session's socket: the frames' payloads of one read go to the pod in one writev.
    let corked = false;
    data.deliverTo({
      write: (chunk) => {
        if (pod.destroyed) return;
        if (!corked) {
          corked = true;
          pod.cork();
        }
        pod.write(chunk);
      },
      flush: () => {
        if (corked) {
          corked = false;
          pod.uncork();
        }
        // Full only when bytes wait and 'drain' is due (write returned false); otherwise no 'drain' would come.
        return pod.destroyed || !(pod.writableNeedDrain && pod.writableLength > 0);
      },
    });
    pod.on('drain', () => data.resumeDelivery());
    data.on('end', () => {
      if (!pod.destroyed && !pod.writableEnded) pod.end();
    });
    data.on('close', () => {
      dataClosed = true;
      if (!pod.destroyed) pod.destroy();
      if (!error.destroyed && !error.writableEnded) error.end();
      finish();
    });
  }
}

/**
 * Clients older than the requestID header open error then data back to back: kubelet pairs them by stream id
 * (error n, data n+2), which holds as long as connections do not start concurrently.
 */
function legacyRequestId(type: 'data' | 'error', streamId: number): string {
  return String(type === 'error' ? streamId : streamId - 2);
}
