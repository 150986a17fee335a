import { PassThrough, Writable } from 'node:stream';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { ResizeDecoder, ResizeEvents } from './resize.js';
import { encodeStatus, errorStatus, exitCodeStatus, StatusObject, successStatus } from './status.js';
import type { AttachTarget, ExecTarget, ProtocolContext, SessionIO, TerminalSize } from './types.js';
import type { ChannelConn } from './ws-channels.js';

// exec and attach over the channel protocol (kubelet's remotecommand websocket.go): channel 0 stdin, 1 stdout,
// 2 stderr, 3 the error stream (the final status), 4 resize events.

export const STDIN = 0;
export const STDOUT = 1;
export const STDERR = 2;
export const ERROR = 3;
export const RESIZE = 4;

export interface RemoteCommandSession {
  target: ExecTarget | AttachTarget;
  /** v4 and later carry the status as a JSON Status object; older protocols carry the error's text. */
  jsonStatus: boolean;
  ctx: ProtocolContext;
  log: Logger;
}

export async function runRemoteCommand(conn: ChannelConn, session: RemoteCommandSession): Promise<void> {
  const { target, ctx, log } = session;
  const aborter = new AbortController();
  const abort = () => aborter.abort();
  conn.onClosed(abort);
  ctx.shutdown.addEventListener('abort', abort, { once: true });
  try {
    const io = sessionIO(conn, target, aborter.signal);
    // As kubelet: an empty frame on the lowest channel the client reads tells it the session is set up.
    conn.send(target.stdout ? STDOUT : target.stderr ? STDERR : ERROR, Buffer.alloc(0));
    let status: StatusObject;
    try {
      if (target.kind === 'exec') {
        const { exitCode } = await ctx.backend.exec(target, io);
        status = exitCode === 0 ? successStatus() : exitCodeStatus(target.cmd, exitCode);
      } else {
        await ctx.backend.attach(target, io);
        status = successStatus();
      }
    } catch (err) {
      const what = target.kind === 'exec' ? 'error executing command in container' : 'error attaching to container';
      if (!aborter.signal.aborted) log.warn('streaming session failed', { error: errorMessage(err) });
      status = errorStatus(`${what}: ${errorMessage(err)}`);
    }
    // The output the backend wrote must reach the client before the status that ends the session.
    await Promise.all([io.stdout, io.stderr].map((w) => w && finished(w)));
    const bytes = encodeStatus(status, session.jsonStatus);
    if (bytes) conn.send(ERROR, bytes);
    conn.close(1000);
  } finally {
    ctx.shutdown.removeEventListener('abort', abort);
    abort();
  }
}

function finished(w: Writable): Promise<void> {
  return new Promise((resolve) => {
    if (w.writableFinished || w.destroyed) return resolve();
    w.once('finish', resolve);
    w.once('close', resolve);
    w.once('error', resolve);
    if (!w.writableEnded) w.end();
  });
}

function sessionIO(conn: ChannelConn, target: ExecTarget | AttachTarget, signal: AbortSignal): SessionIO {
  const stdin = target.stdin ? new PassThrough({ highWaterMark: 64 * 1024 }) : null;
  const stdout = target.stdout ? conn.writer(STDOUT) : null;
  const stderr = target.stderr && !target.tty ? conn.writer(STDERR) : null;
  const sizes = new ResizeEvents();
  const resize = new ResizeDecoder();
  const endStdin = () => {
    if (stdin && !stdin.writableEnded) stdin.end();
  };
  conn.setHandlers({
    onData(channel, data) {
      if (channel === STDIN && stdin && !stdin.writableEnded) {
        if (!stdin.write(data)) stdin.once('drain', conn.hold());
      } else if (channel === RESIZE && target.tty) {
        resize.push(data).forEach((size) => sizes.emit(size));
      }
    },
    onChannelClosed(channel) {
      if (channel === STDIN) endStdin();
    },
  });
  signal.addEventListener('abort', endStdin, { once: true });
  return {
    stdin,
    stdout,
    stderr,
    tty: target.tty,
    onResize: (listener) => sizes.listen(listener),
    signal,
  };
}
