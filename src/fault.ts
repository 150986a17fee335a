import { writeSync } from 'node:fs';

// Crash injection for the reliability walk: BERTH_FAULT=<step>:<n> makes berth die at the n-th time it reaches
// the named step. Dying is SIGKILL to itself, not process.exit: a real crash (the OOM killer, a node power cut of
// the process, kill -9 by an operator) runs no exit handler, flushes no record written behind, and leaves every
// child and mount as they were, so recovery is tested against exactly what such a crash leaves.
//
// The list is the one source of step names: the services name their steps from it and the walk iterates it.

export const FAULT_STEPS = [
  // RunPodSandbox, in the order it reaches them (the middle four run concurrently).
  'pod.run.name',
  'pod.run.rundir',
  'pod.run.network-plan',
  'pod.run.namespaces',
  'pod.run.cgroup',
  'pod.run.files',
  'pod.run.shm',
  'pod.run.network-setup',
  'pod.run.record',
  'pod.run.done',
  // CreateContainer.
  'container.create.name',
  'container.create.bundle',
  'container.create.layer',
  'container.create.cgroup',
  'container.create.spec',
  'container.create.shim',
  'container.create.record',
  // StartContainer.
  'container.start.begin',
  'container.start.released',
  'container.start.record',
  // StopContainer.
  'container.stop.signal',
  'container.stop.kill',
  'container.stop.exited',
  // RemoveContainer.
  'container.remove.stopped',
  'container.remove.cgroup',
  'container.remove.layer',
  'container.remove.record',
  // StopPodSandbox.
  'pod.stop.containers',
  'pod.stop.init',
  'pod.stop.network',
  'pod.stop.unpin',
  'pod.stop.record',
  // RemovePodSandbox.
  'pod.remove.containers',
  'pod.remove.released',
  'pod.remove.cgroup',
  'pod.remove.rundir',
  'pod.remove.record',
  // PullImage.
  'image.pull.manifest',
  'image.pull.staging',
  'image.pull.unpacked',
  'image.pull.layer-committed',
  'image.pull.record',
  'image.pull.done',
] as const;

export type FaultStep = (typeof FAULT_STEPS)[number];

export interface FaultPlan {
  step: FaultStep;
  /** Dies on this arrival at the step, counting from 1. */
  nth: number;
}

/** BERTH_FAULT's value, checked against the step list: a misspelt step must not silently inject nothing. */
export function parseFault(value: string | undefined): FaultPlan | undefined {
  if (value === undefined || value === '') return undefined;
  const m = /^([a-z.-]+):([1-9][0-9]{0,5})$/.exec(value);
  if (!m) throw new Error(`BERTH_FAULT="${value}": expected <step>:<n> with n >= 1`);
  if (!(FAULT_STEPS as readonly string[]).includes(m[1])) throw new Error(`BERTH_FAULT="${value}": no step named "${m[1]}"; steps: ${FAULT_STEPS.join(', ')}`);
  return { step: m[1] as FaultStep, nth: Number(m[2]) };
}

let plan: FaultPlan | undefined;
/** A BERTH_FAULT that does not parse: berth refuses to start (main) rather than run without the crash asked for. */
export let faultError: string | undefined;
try {
  plan = parseFault(process.env.BERTH_FAULT);
} catch (err) {
  faultError = (err as Error).message;
}
let arrivals = 0;

/** The configured fault, for the loud line at start. */
export const activeFault: Readonly<FaultPlan> | undefined = plan;

/** Marks a step; with BERTH_FAULT unset this is one comparison against a module constant. */
export function faultPoint(step: FaultStep): void {
  if (plan === undefined || plan.step !== step) return;
  if (++arrivals < plan.nth) return;
  // Synchronous: the line must be out before the kill, and the log sink writes behind.
  writeSync(2, JSON.stringify({ time: new Date().toISOString(), level: 'error', msg: 'BERTH_FAULT: crashing now (SIGKILL to self)', step, nth: plan.nth }) + '\n');
  process.kill(process.pid, 'SIGKILL');
}
