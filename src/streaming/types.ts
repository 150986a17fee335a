import type { IncomingMessage } from 'node:http';
import type { OnReadOpts } from 'node:net';
import type { Duplex, Readable, Writable } from 'node:stream';
import type { Logger } from '../log.js';

// The seams of the streaming server (kubectl exec/attach/port-forward). Three layers meet here:
// - the wire protocols (SPDY/3.1 and WebSocket framing of k8s' remotecommand and portforward), which turn one
//   upgraded HTTP connection into a SessionIO or into port connections;
// - the server (tokens, HTTP routes, which protocol a request speaks);
// - the backend (the container and sandbox services), which runs the command, joins the container's stdio or
//   dials the port. The protocols never see a container; the backend never sees a frame.

export interface TerminalSize {
  width: number;
  height: number;
}

/** The stdio of one exec or attach session, as a protocol hands it to the backend. */
export interface SessionIO {
  /** Bytes the client typed; ends when the client closes its stdin. null when the request had no stdin. */
  stdin: Readable | null;
  /** Where the command's output goes (the pty's, with tty). null when the request had no stdout. */
  stdout: Writable | null;
  /** null with tty (a terminal has one output) or when the request had no stderr. */
  stderr: Writable | null;
  tty: boolean;
  /**
   * Terminal size changes sent by the client (the first usually right after the streams are set up). A listener
   * added after a size arrived is called with the latest one at once.
   */
  onResize(listener: (size: TerminalSize) => void): void;
  /** Aborted when the client goes away or berth shuts down: the backend must then end what it started. */
  signal: AbortSignal;
}

export interface StdioRequest {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

export interface ExecTarget extends StdioRequest {
  kind: 'exec';
  containerId: string;
  cmd: string[];
}

export interface AttachTarget extends StdioRequest {
  kind: 'attach';
  containerId: string;
}

export interface PortForwardTarget {
  kind: 'portforward';
  podSandboxId: string;
  /** The ports of the CRI request (WebSocket clients forward exactly these; SPDY clients name a port per stream). */
  ports: number[];
}

export type StreamTarget = ExecTarget | AttachTarget | PortForwardTarget;

/** What a finished exec reports; a command killed by signal N reports 128+N (the protocol has no signal field). */
export interface ExecOutcome {
  exitCode: number;
}

export interface StreamingBackend {
  /**
   * Runs target.cmd in the container with io; resolves with its exit code once it has exited and its output has
   * been written to io. Rejects (typed BerthError) when it could not be run, e.g. the container stopped meanwhile.
   */
  exec(target: ExecTarget, io: SessionIO): Promise<ExecOutcome>;
  /** Joins the container's stdio; resolves when the container exits or io.signal aborts. */
  attach(target: AttachTarget, io: SessionIO): Promise<void>;
  /**
   * A connection to `localhost:<port>` inside the pod's network namespace. Rejects with a message fit for the
   * port's error stream (connection refused, no such pod, …). With reads, the connection reads into reads.buffer
   * and hands each read to reads.callback instead of emitting 'data' (net's onread).
   */
  portForward(podSandboxId: string, port: number, signal: AbortSignal, reads?: OnReadOpts): Promise<Duplex>;
}

/** What the CRI handlers ask before handing out a URL; both throw typed errors (NOT_FOUND, FAILED_PRECONDITION). */
export interface StreamingTargets {
  /** The full id of a container that exists and runs. */
  runningContainer(containerId: string): Promise<string>;
  /** The full id of a pod that exists and is ready. */
  readyPod(podSandboxId: string): Promise<string>;
}

export interface ProtocolContext {
  backend: StreamingBackend;
  log: Logger;
  /** How long the client has to open the streams its request implies (kubelet: 30 s). */
  streamCreationTimeoutMs: number;
  /** A session with no traffic for this long is closed (kubelet: 4 h). */
  idleTimeoutMs: number;
  /** Aborted when berth shuts down: every session ends. */
  shutdown: AbortSignal;
}

/**
 * Serves one upgrade request whose token has been consumed: answers the upgrade (101 with the negotiated
 * protocol, or an HTTP error) and runs the session to its end. One per wire protocol (SPDY/3.1, WebSocket).
 */
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer, target: StreamTarget, ctx: ProtocolContext) => void;
