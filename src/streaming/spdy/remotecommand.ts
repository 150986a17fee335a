import type { Logger } from '../../log.js';
import { errorMessage } from '../../errors.js';
import { encodeStatus, errorStatus, exitCodeStatus, successStatus, type StatusObject } from '../status.js';
import type { AttachTarget, ExecTarget, ProtocolContext, SessionIO, TerminalSize } from '../types.js';
import { RstStatus } from './errors.js';
import { ResizeDecoder, ResizeEvents } from '../resize.js';
import { onShutdown } from './shutdown.js';
import type { SpdySession, SpdyStream } from './session.js';

// k8s remotecommand (exec/attach) over one SPDY session, as kubelet's streaming server serves it
// (k8s.io/kubelet/pkg/cri/streaming/remotecommand): the client opens one stream per stdio channel, named by its
// `streamtype` header; once every stream the request implies is there, the command runs; at its end the status
// goes on the error stream and the session closes.

export const remoteCommandProtocols = ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'] as const;
export type RemoteCommandProtocol = (typeof remoteCommandProtocols)[number];

const SHUTDOWN_GRACE_MS = 5000;

type StreamType = 'error' | 'stdin' | 'stdout' | 'stderr' | 'resize';

interface ProtocolTraits {
  /** v4 on: a metav1.Status as JSON on the error stream, success included (v5 is v4 on SPDY, as in kubelet). */
  jsonStatus: boolean;
  /** v3 on: a resize stream with tty. */
  resize: boolean;
  /** channel.k8s.io (v1): kubelet closes its side of the stdin stream as soon as the streams are set up. */
  v1: boolean;
}

function traits(protocol: RemoteCommandProtocol): ProtocolTraits {
  switch (protocol) {
    case 'v5.channel.k8s.io':
    case 'v4.channel.k8s.io':
      return { jsonStatus: true, resize: true, v1: false };
    case 'v3.channel.k8s.io':
      return { jsonStatus: false, resize: true, v1: false };
    case 'v2.channel.k8s.io':
      return { jsonStatus: false, resize: false, v1: false };
    case 'channel.k8s.io':
      return { jsonStatus: false, resize: false, v1: true };
  }
}

/** The stream types a request implies, as kubelet counts them (tty has one output: stderr is dropped). */
export function expectedStreamTypes(target: ExecTarget | AttachTarget, protocol: RemoteCommandProtocol): Set<StreamType> {
  const t = traits(protocol);
  const types = new Set<StreamType>(['error']);
  if (target.stdin) types.add('stdin');
  if (target.stdout) types.add('stdout');
  if (target.stderr && !target.tty) types.add('stderr');
  if (target.tty && t.resize) types.add('resize');
  return types;
}

export function serveRemoteCommand(
  session: SpdySession,
  protocol: RemoteCommandProtocol,
  target: ExecTarget | AttachTarget,
  ctx: ProtocolContext,
  log: Logger,
): void {
  const t = traits(protocol);
  const expected = expectedStreamTypes(target, protocol);
  const streams = new Map<StreamType, SpdyStream>();
  const abort = new AbortController();
  let started = false;
  let reported = false;

  let shutdownGrace: NodeJS.Timeout | null = null;
  const shutdownNow = () => {
    abort.abort(new Error('berth is shutting down'));
    // The backend gets a moment to end what it runs and report it; then the connection goes regardless.
    if (!session.closed) shutdownGrace = setTimeout(() => session.destroy(), SHUTDOWN_GRACE_MS);
  };
  const unsubscribe = onShutdown(ctx.shutdown, shutdownNow);
  const creationTimer = setTimeout(() => {
    log.warn('timed out waiting for the client to create streams', { expected: [...expected], got: [...streams.keys()] });
    session.close();
  }, ctx.streamCreationTimeoutMs);
  session.once('close', () => {
    clearTimeout(creationTimer);
    if (shutdownGrace) clearTimeout(shutdownGrace);
    unsubscribe();
    // After the command has been reported there is nothing left to abort.
    if (!abort.signal.aborted && !reported) abort.abort(new Error('the client went away'));
  });
  abort.signal.addEventListener('abort', () => {
    if (!started) session.close();
  }, { once: true });

  session.on('stream', (stream) => {
    const type = stream.header('streamtype') as StreamType | undefined;
    if (started || type === undefined || !expected.has(type) || streams.has(type)) {
      log.debug('refusing a stream the request does not imply', { streamtype: type ?? null, stream: stream.id });
      stream.reset(RstStatus.refusedStream);
      return;
    }
    stream.accept();
    streams.set(type, stream);
    // Streams berth only writes to: whatever the client sends on them is dropped, so it never holds the socket.
    if (type === 'error' || type === 'stdout' || type === 'stderr') stream.resume();
    if (streams.size === expected.size) {
      started = true;
      clearTimeout(creationTimer);
      void run();
    }
  });

  async function run(): Promise<void> {
    const stdin = streams.get('stdin') ?? null;
    const stdout = streams.get('stdout') ?? null;
    const stderr = streams.get('stderr') ?? null;
    const resize = streams.get('resize') ?? null;
    const errorStream = streams.get('error')!;
    if (t.v1 && stdin) stdin.end();

    const sizes = new ResizeEvents();
    if (resize) {
      const decoder = new ResizeDecoder();
      resize.on('data', (chunk: Buffer) => decoder.push(chunk).forEach((size) => sizes.emit(size)));
    }
    const io: SessionIO = {
      stdin,
      stdout,
      stderr,
      tty: target.tty,
      onResize: (listener) => sizes.listen(listener),
      signal: abort.signal,
    };

    let status: StatusObject;
    try {
      if (target.kind === 'exec') {
        const outcome = await ctx.backend.exec(target, io);
        status = outcome.exitCode === 0 ? successStatus() : exitCodeStatus(target.cmd, outcome.exitCode);
      } else {
        await ctx.backend.attach(target, io);
        status = successStatus();
      }
    } catch (err) {
      if (abort.signal.aborted && session.closed) return;
      const verb = target.kind === 'exec' ? 'executing command in' : 'attaching to';
      log.warn(`${target.kind} failed`, { error: errorMessage(err) });
      status = errorStatus(`error ${verb} container: ${errorMessage(err)}`);
    }
    if (session.closed) return;
    reported = true;
    const outputs = [stdout, stderr].filter((s): s is SpdyStream => s !== null);
    for (const s of outputs) if (!s.writableEnded) s.end();
    const bytes = encodeStatus(status, t.jsonStatus);
    if (bytes) errorStream.write(bytes);
    errorStream.end();
    // Close only once what was written has gone to the socket: the client reads each stream to its end.
    await Promise.all([...outputs, errorStream].map(waitFinished));
    session.close();
  }

  function waitFinished(stream: SpdyStream): Promise<void> {
    if (stream.writableFinished || stream.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        stream.off('finish', done);
        stream.off('close', done);
        resolve();
      };
      stream.on('finish', done);
      stream.on('close', done);
    });
  }
}
