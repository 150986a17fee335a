import { watch } from 'node:fs';
import { createContainer, execInContainer, ExecOptions, ExecResult, isShim, readExecError, readExit, ShimExit, startContainer } from '../kernel/shim.js';
import { ShimSpec } from '../kernel/shim-spec.js';

// What the container service asks of the process level: the shim makes, starts and execs into containers, its
// monitor records their exits, and signals reach them. The service gets it through its options, so that unit tests
// pass a recording fake and exercise rollback, stop escalation and restart reconciliation without root.
// Streaming's interactive exec and attach belong here too, as methods of their own, when they are added.

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
  /** True while `monitorPid` is the monitor berth started, not a process that reused its pid. */
  isMonitorAlive(monitorPid: number): Promise<boolean>;
  /** Runs a command in a running container and collects its output (ExecSync). */
  exec(opts: ExecOptions): Promise<ExecResult>;
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
  exec: execInContainer,
};
