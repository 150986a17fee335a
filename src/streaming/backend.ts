import type { OnReadOpts } from 'node:net';
import type { Duplex, Readable, Writable } from 'node:stream';
import { failedPrecondition } from '../errors.js';
import type { Logger } from '../log.js';
import type { InteractiveExec } from '../kernel/shim-stream.js';
import type { AttachTarget, ExecOutcome, ExecTarget, SessionIO, StreamingBackend, StreamingTargets, TerminalSize } from './types.js';

// The streaming backend: glue between a protocol's SessionIO and the processes the container and sandbox services
// start. It owns no state: every session's process, attachment or connection lives exactly as long as the session.

/** A command started in a container for an interactive session: the engine's own handle, as the shim adapter makes it. */
export type InteractiveProcess = InteractiveExec;

/** A running container's stdio as attach joins it. */
export interface Attachment {
  tty: boolean;
  /** Whether the container was created with stdin, and whether the first attach to end closes it. */
  stdin: boolean;
  stdinOnce: boolean;
  /** Object mode: `{ stream: 'stdout' | 'stderr', data: Buffer }` as the container writes; paused, the monitor waits
   * (and drops a client that falls too far behind). Ends when the container exits. */
  output: Readable;
  resize(size: TerminalSize): void;
  close(): void;
  /** Settles when the container's output ends (it exited) or the monitor dropped the connection. */
  ended: Promise<void>;
  openStdin(): Writable;
  /** Closes the container's stdin (its monitor's writer): the container reads EOF. */
  closeStdin(): void | Promise<void>;
}

/** What the backend asks of the container service. */
export interface ContainerStreamsPort {
  runningContainer(id: string): Promise<string>;
  execInteractive(id: string, cmd: string[], opts: { tty: boolean; stdin: boolean; ttySize?: TerminalSize }): Promise<InteractiveProcess>;
  attach(id: string): Promise<Attachment>;
}

/** What the backend asks of the sandbox service. */
export interface PodStreamsPort {
  readyPod(id: string): Promise<string>;
  dial(podSandboxId: string, port: number, signal: AbortSignal, reads?: OnReadOpts): Promise<Duplex>;
}

export class ServiceStreamingBackend implements StreamingBackend, StreamingTargets {
  constructor(
    private readonly containers: ContainerStreamsPort,
    private readonly pods: PodStreamsPort,
    private readonly log: Logger,
  ) {}

  runningContainer(containerId: string): Promise<string> {
    return this.containers.runningContainer(containerId);
  }

  readyPod(podSandboxId: string): Promise<string> {
    return this.pods.readyPod(podSandboxId);
  }

  async exec(target: ExecTarget, io: SessionIO): Promise<ExecOutcome> {
    if (io.signal.aborted) throw failedPrecondition(`exec in container ${target.containerId}: the client went away`);
    // Listening before the spawn: the client sends its terminal's size first thing, and the command should start
    // with it (a shell reads it once at start); sizes that arrive while the process is being made follow it.
    let latestSize: TerminalSize | undefined;
    let resize: ((size: TerminalSize) => void) | undefined;
    io.onResize((size) => {
      latestSize = size;
      resize?.(size);
    });
    const proc = await this.containers.execInteractive(target.containerId, target.cmd, { tty: io.tty, stdin: io.stdin !== null, ttySize: latestSize });
    this.log.debug('exec started', { containerId: target.containerId, tty: io.tty, ttySize: latestSize ?? null });
    const kill = () => proc.kill();
    // A client that left while the process was being made has already fired its abort: end the process now.
    if (io.signal.aborted) kill();
    else io.signal.addEventListener('abort', kill, { once: true });
    try {
      resize = (size) => {
        this.log.debug('exec terminal resized', { containerId: target.containerId, ...size });
        proc.resize(size);
      };
      if (latestSize) resize(latestSize);
      if (io.stdin && proc.stdin) forwardInput(io.stdin, proc.stdin);
      const drained = Promise.all([copyOutput(proc.stdout, io.stdout), proc.stderr ? copyOutput(proc.stderr, io.stderr ?? io.stdout) : undefined]);
      const exitCode = await proc.wait();
      await drained;
      return { exitCode };
    } finally {
      io.signal.removeEventListener('abort', kill);
      if (io.stdin && proc.stdin) io.stdin.unpipe(proc.stdin);
    }
  }

  async attach(target: AttachTarget, io: SessionIO): Promise<void> {
    const attachment = await this.containers.attach(target.containerId);
    const detach = () => attachment.close();
    if (io.signal.aborted) detach();
    else io.signal.addEventListener('abort', detach, { once: true });
    let stdin: Writable | undefined;
    try {
      attachment.output.on('data', ({ stream, data }: { stream: 'stdout' | 'stderr'; data: Buffer }) => {
        // A terminal has one output; without one, stderr goes where the client asked for it (nowhere if it did not).
        const sink = attachment.tty || stream === 'stdout' ? io.stdout : io.stderr;
        if (sink && !sink.write(data)) {
          attachment.output.pause();
          sink.once('drain', () => attachment.output.resume());
        }
      });
      io.onResize((size) => attachment.resize(size));
      if (io.stdin && attachment.stdin) {
        stdin = attachment.openStdin();
        const input = io.stdin;
        const writer = stdin;
        writer.on('error', () => input.unpipe(writer)); // the container stopped reading: its exit ends the session
        // Our writer ends with the client's input; the container sees EOF only once the monitor drops its own
        // writer too, which it does for stdin_once: the container's stdin ends with the first attach's.
        input.pipe(writer);
        input.once('end', () => {
          if (attachment.stdinOnce) void Promise.resolve(attachment.closeStdin()).catch((err) => this.log.warn('closing the container stdin failed', { containerId: target.containerId, error: String(err) }));
        });
      }
      await Promise.race([attachment.ended, aborted(io.signal)]);
    } finally {
      io.signal.removeEventListener('abort', detach);
      attachment.close();
      if (stdin) {
        io.stdin?.unpipe(stdin);
        stdin.destroy();
      }
    }
  }

  async portForward(podSandboxId: string, port: number, signal: AbortSignal, reads?: OnReadOpts) {
    return this.pods.dial(podSandboxId, port, signal, reads);
  }
}

/** Client input into the process; the client's EOF is the process's. */
function forwardInput(from: Readable, to: Writable): void {
  from.pipe(to);
  to.on('error', () => from.unpipe(to)); // the command exited without reading everything: not the session's error
}

/** The process's output to the client, resolving once it ended; the sink stays open for the protocol's status. */
function copyOutput(from: Readable, to: Writable | null): Promise<void> {
  return new Promise((resolve) => {
    if (to) from.pipe(to, { end: false });
    else from.resume();
    from.once('end', resolve);
    from.once('close', resolve);
    from.once('error', resolve);
  });
}

function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}
