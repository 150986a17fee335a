// One pod+container lifecycle over CRI, each RPC timed with process.hrtime.bigint.

import { containerConfig, podConfig } from '../test/helpers/cri.js';
import { waitFor } from '../test/helpers/util.js';
import type { CriClient } from './cri-client.js';
import { nsToMs } from './stats.js';

/** Report rows, in the order the tables list them. */
export const ROWS = [
  'RunPodSandbox',
  'CreateContainer',
  'StartContainer',
  'ContainerStatus',
  'ExecSync',
  'StopContainer',
  'RemoveContainer',
  'StopPodSandbox',
  'RemovePodSandbox',
  'from scratch → RUNNING',
  'full cycle',
  'from scratch → RUNNING, blkio class',
  'from scratch → RUNNING, writable-layer limit',
  'from scratch → RUNNING, bandwidth annotations',
] as const;
export type RowName = (typeof ROWS)[number];

/**
 * Pod start with a resource control on, beside plain pod start (issue 18's bench): the same cycle with these pod
 * annotations, of which only "from scratch → RUNNING" is kept, in its own row. The writable-layer size is one berth
 * pools images for after its first use; the bandwidth annotations give the pod an ifb and one tc batch.
 */
export const CONTROL_VARIANTS: readonly { row: RowName; annotations: Record<string, string> }[] = [
  { row: 'from scratch → RUNNING, writable-layer limit', annotations: { 'writable-layer.berth.io/pod': '16Mi' } },
  { row: 'from scratch → RUNNING, bandwidth annotations', annotations: { 'kubernetes.io/ingress-bandwidth': '100M', 'kubernetes.io/egress-bandwidth': '100M' } },
];

/** Exits 0 promptly on SIGTERM: the shell is PID 1 of its pid namespace and waits on a background sleep. */
export const CONTAINER_COMMAND = ['/bin/sh', '-c', 'trap "exit 0" TERM; while :; do sleep 1 & wait; done'];
export const STOP_TIMEOUT_S = 10;
export const EXEC_TIMEOUT_S = 10;
const RUNNING_TIMEOUT_MS = 30_000;

export type Samples = Record<RowName, number[]>;

export function emptySamples(): Samples {
  return Object.fromEntries(ROWS.map((r) => [r, []])) as unknown as Samples;
}

/** What a cycle created and has not removed yet, so a failure can be cleaned up. */
export interface Leftovers {
  pods: Set<string>;
  containers: Set<string>;
}

/** Thrown before the next RPC once the signal is aborted. */
export class Interrupted extends Error {
  constructor() {
    super('interrupted');
    this.name = 'Interrupted';
  }
}

/** The pod annotation and class of the blkio-class cycles (berth only: a runtime without the class refuses the pod). */
export const BLKIO_CLASS = 'bench';
export const BLKIO_ANNOTATIONS = { 'blockio.resources.beta.kubernetes.io/pod': BLKIO_CLASS };

/** Returns the id of the pod it ran (and removed). */
export async function runCycle(cri: CriClient, image: string, samples: Samples, left: Leftovers, signal?: AbortSignal, podAnnotations: Record<string, string> = {}): Promise<string> {
  const { runtime } = cri;
  const timed = async <T>(row: RowName, fn: () => Promise<T>): Promise<T> => {
    if (signal?.aborted) throw new Interrupted();
    const t0 = process.hrtime.bigint();
    const res = await fn();
    samples[row].push(nsToMs(process.hrtime.bigint() - t0));
    return res;
  };

  const sandboxConfig = podConfig();
  sandboxConfig.labels = { ...sandboxConfig.labels, app: 'berth-bench' };
  sandboxConfig.annotations = { ...sandboxConfig.annotations, ...podAnnotations };
  const config = containerConfig(image, { command: CONTAINER_COMMAND });

  const cycleStart = process.hrtime.bigint();
  const { pod_sandbox_id: podId } = await timed('RunPodSandbox', () => runtime.RunPodSandbox({ config: sandboxConfig }));
  left.pods.add(podId);
  const { container_id: id } = await timed('CreateContainer', () =>
    runtime.CreateContainer({ pod_sandbox_id: podId, config, sandbox_config: sandboxConfig }),
  );
  left.containers.add(id);
  await timed('StartContainer', () => runtime.StartContainer({ container_id: id }));
  const running = async () => {
    const { status } = await timed('ContainerStatus', () => runtime.ContainerStatus({ container_id: id }));
    const state = status?.state;
    if (state === 'CONTAINER_RUNNING') return true;
    if (state === 'CONTAINER_EXITED' || state === 'CONTAINER_UNKNOWN') {
      throw new Error(
        `container ${id} is ${state} instead of RUNNING: exit_code ${status?.exit_code}, reason ${JSON.stringify(status?.reason)}, message ${JSON.stringify(status?.message)}`,
      );
    }
    return false;
  };
  await waitFor(`container ${id} to be RUNNING after StartContainer`, running, { timeoutMs: RUNNING_TIMEOUT_MS, intervalMs: 5 });
  samples['from scratch → RUNNING'].push(nsToMs(process.hrtime.bigint() - cycleStart));

  const exec = await timed('ExecSync', () => runtime.ExecSync({ container_id: id, cmd: ['true'], timeout: EXEC_TIMEOUT_S }));
  if (exec.exit_code !== 0) {
    throw new Error(`ExecSync ["true"] in ${id} exited ${exec.exit_code}: stdout ${JSON.stringify(String(exec.stdout))}, stderr ${JSON.stringify(String(exec.stderr))}`);
  }
  await timed('StopContainer', () => runtime.StopContainer({ container_id: id, timeout: STOP_TIMEOUT_S }));
  await timed('RemoveContainer', () => runtime.RemoveContainer({ container_id: id }));
  left.containers.delete(id);
  await timed('StopPodSandbox', () => runtime.StopPodSandbox({ pod_sandbox_id: podId }));
  await timed('RemovePodSandbox', () => runtime.RemovePodSandbox({ pod_sandbox_id: podId }));
  left.pods.delete(podId);
  samples['full cycle'].push(nsToMs(process.hrtime.bigint() - cycleStart));
  return podId;
}

/** Best effort: stop and remove what a failed cycle left behind. Returns the errors it met. */
export async function removeLeftovers(cri: CriClient, left: Leftovers): Promise<string[]> {
  const errors: string[] = [];
  const attempt = async (p: Promise<unknown>) => p.catch((err: Error) => void errors.push(err.message));
  for (const id of left.containers) {
    await attempt(cri.runtime.StopContainer({ container_id: id, timeout: 2 }));
    await attempt(cri.runtime.RemoveContainer({ container_id: id }));
  }
  left.containers.clear();
  for (const id of left.pods) {
    await attempt(cri.runtime.StopPodSandbox({ pod_sandbox_id: id }));
    await attempt(cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }));
  }
  left.pods.clear();
  return errors;
}
