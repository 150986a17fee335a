import { watch } from 'node:fs';
import { createContainer, execInContainer, ExecOptions, ExecResult, isShim, killShims, readExecError, readExit, ShimExit, startContainer } from '../kernel/shim.js';
import { ShimSpec } from '../kernel/shim-spec.js';
import { attachToMonitor, closeContainerStdin, InteractiveExec, InteractiveExecOptions, MonitorAttach, openContainerStdin, spawnInteractiveExec } from '../kernel/shim-stream.js';
import type { Writable } from 'node:stream';

// What the container service asks of the process level: the shim makes, starts and execs into containers, its
// monitor records their exits, and signals reach them. The service gets it through its options, so that unit tests
// pass a recording fake and exercise rollback, stop escalation and restart reconciliation without root.

export interface CreatedProcess {
  pid: number;
  monitorPid: number;
  /** Field 22 of /proc/<pid>/stat: later execs refuse a recycled pid. */
  startTime: number;
}

export interface ExitWatch {
  close(): void;
}

export interface ContainerRuntime {
  /** Writes the spec into its bundle and makes the container's process and its monitor, blocked until start(). */
  create(spec: ShimSpec): Promise<CreatedProcess>;
  /** Releases a created process; fails when it is no longer waiting (it exited). */
  start(bundle: string): Promise<void>;
  /** Sends `signal` (a name, or a number for the real-time signals Node has no name for) to `pid`; a process already gone is not an error. */
  signal(pid: number, signal: NodeJS.Signals | number): void;
  /** The monitor's exit record, once it has written one. */
  readExit(bundle: string): Promise<ShimExit | undefined>;
  /** Why the init could not exec the command, when it recorded that. */
  readExecError(bundle: string): Promise<string | undefined>;
  /** Calls `onExit` when the monitor writes its exit record (perhaps more than once); throws if it cannot watch. */
  watchExit(bundle: string, onExit: () => void): ExitWatch;
  /**
   * SIGKILLs the shim processes of `bundle` (a `create` still at work, the monitor, the init blocked on start.fifo)
   * found by their command line: for a bundle a crash left without a record. Reads all of /proc.
   */
  killShimsOf(bundle: string): Promise<void>;
  /** True while `monitorPid` is the monitor berth started, not a process that reused its pid. */
  isMonitorAlive(monitorPid: number): Promise<boolean>;
  /** Runs a command in a running container and collects its output (ExecSync). */
  exec(opts: ExecOptions): Promise<ExecResult>;
  /** Runs a command in a running container with live stdio (kubectl exec), on a pty with `tty`. */
  execInteractive(opts: InteractiveExecOptions): Promise<InteractiveExec>;
  /** Joins the live output (and terminal) of the container whose monitor serves `bundle` (kubectl attach). */
  attach(bundle: string): Promise<MonitorAttach>;
  /** A writer on the container's stdin; throws when it has none or nothing reads it. */
  openStdin(bundle: string): Writable;
  /** Makes the monitor drop its own writer of the container's stdin, so the container reads EOF (stdin_once). */
  closeStdin(monitorPid: number): void;
}

/** A running container's stdio as kubectl attach joins it: the monitor's live output, its terminal, its stdin. */
export interface ContainerAttachment extends MonitorAttach {
  tty: boolean;
  /** Whether the container was created with stdin, and whether the first attach to end closes it. */
  stdin: boolean;
  stdinOnce: boolean;
  openStdin(): Writable;
  closeStdin(): Promise<void>;
}

/** The real thing: berth-shim, its monitor's files in the bundle (watched with inotify), and kill(2). */
export const shimContainerRuntime: ContainerRuntime = {
  create: createContainer,
  start: startContainer,
  signal(pid, signal) {
    try {
      process.kill(pid, signal);
    } catch {
      /* already gone */
    }
  },
  readExit,
  readExecError,
  watchExit(bundle, onExit) {
    const watcher = watch(bundle, (_event, file) => {
      if (file === 'exit.json') onExit();
    });
    watcher.on('error', () => watcher.close());
    return watcher;
  },
  isMonitorAlive: isShim,
  killShimsOf: (bundle) => killShims('create', bundle),
  exec: execInContainer,
  execInteractive: spawnInteractiveExec,
  attach: attachToMonitor,
  openStdin: openContainerStdin,
  closeStdin: (monitorPid) => closeContainerStdin(monitorPid),
};
