import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';

// One rollback idiom for every multi-step operation (RunPodSandbox, CreateContainer, network setup, pulls):
// push a named undo right after each acquisition; on failure the undos run last-in-first-out. A failing undo is
// logged with its name (the logger carries the pod/container id) and the rest still run: a half-undone
// operation is reported, never silently left behind.

interface Step {
  name: string;
  undo: () => unknown;
}

export class Undo {
  private steps: Step[] = [];

  constructor(private readonly log: Logger) {}

  /** Registers the undo of something just acquired. */
  push(name: string, undo: () => unknown): void {
    this.steps.push({ name, undo });
  }

  /** The operation succeeded: what it acquired is kept. */
  commit(): void {
    this.steps = [];
  }

  /** Runs every registered undo, newest first. Never throws; returns the names of the undos that failed. */
  async run(): Promise<string[]> {
    const failed: string[] = [];
    const steps = this.steps.reverse();
    this.steps = [];
    for (const step of steps) {
      try {
        await step.undo();
      } catch (err) {
        failed.push(step.name);
        this.log.warn('undo step failed', { step: step.name, error: errorMessage(err) });
      }
    }
    return failed;
  }
}

/**
 * Runs `work` with an Undo stack: if it throws, every undo it pushed runs (newest first) before the error
 * propagates; if it returns, they are dropped.
 */
export async function withUndo<T>(log: Logger, work: (undo: Undo) => Promise<T>): Promise<T> {
  const undo = new Undo(log);
  try {
    const result = await work(undo);
    undo.commit();
    return result;
  } catch (err) {
    await undo.run();
    throw err;
  }
}
