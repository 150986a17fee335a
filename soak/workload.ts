import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { containerConfig, podConfig } from '../test/helpers/cri.js';
import { waitFor } from '../test/helpers/util.js';
import type { PodSandboxConfig } from '../src/gen/runtime/v1/PodSandboxConfig.js';
import { RestartInterrupted, RpcFailed, type Supervisor } from './supervisor.js';

// What the soak does to berth: workers cycling pods through their whole life (run, two containers, an exec probe,
// the logs read back, an exit code seen, stop, remove), and resident pods that live through every restart and must
// come out of each one exactly as they went in.

/** Errors by kind: a restart's interruptions are expected (counted apart); everything else fails the soak. */
export class Tally {
  readonly interrupted = new Map<string, number>();
  readonly unexpected = new Map<string, number>();
  /** The first few unexpected errors in full, to act on. */
  readonly samples: string[] = [];

  add(err: unknown, where: string): void {
    if (err instanceof RestartInterrupted) {
      this.interrupted.set(err.rpc, (this.interrupted.get(err.rpc) ?? 0) + 1);
      return;
    }
    let kind: string;
    if (err instanceof RpcFailed) kind = `${where}: ${err.rpc} ${err.code === undefined ? 'failed' : (grpc.status[err.code] ?? err.code)}`;
    else if (err instanceof CheckFailed) kind = `${where}: check failed`;
    else kind = `${where}: ${(err as Error)?.name ?? 'error'}`;
    this.unexpected.set(kind, (this.unexpected.get(kind) ?? 0) + 1);
    if (this.samples.length < 10) this.samples.push(`${where}: ${(err as Error)?.message ?? String(err)}`);
  }
}

/** What berth reported or did differs from what the soak asked of it. */
export class CheckFailed extends Error {}

function check(ok: boolean, what: string): void {
  if (!ok) throw new CheckFailed(what);
}

/** A container that logs a line a second and leaves at once, with status 0, on SIGTERM. */
const TICKER = "trap 'exit 0' TERM; i=0; while :; do echo tick-$i; i=$((i+1)); sleep 1 & wait; done";
const WORKER_LABEL = 'berth.soak/worker';

export interface Workload {
  sup: Supervisor;
  image: string;
  logDir: string;
  /** Every pod's cgroup parent, to check each one gone at the end. */
  cgroupParents: string[];
  tally: Tally;
  /** The soak's end: no new cycle begins after it. */
  until: () => number;
}

function soakPod(w: Workload, label: string): PodSandboxConfig {
  const cgroupParent = `/berth-soak-${randomBytes(6).toString('hex')}`;
  w.cgroupParents.push(cgroupParent);
  const base = podConfig();
  return podConfig({
    ...base,
    log_directory: w.logDir,
    labels: { ...base.labels, [WORKER_LABEL]: label },
    linux: { cgroup_parent: cgroupParent, security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  });
}

async function logText(w: Workload, pod: PodSandboxConfig, logPath: string): Promise<string> {
  return fs.readFile(path.join(pod.log_directory!, logPath), 'utf8').catch(() => '');
}

/** One pod's whole life. Throws at the first RPC that fails or the first answer that is wrong. */
async function cycle(w: Workload, worker: string, n: number): Promise<void> {
  const { sup, image } = w;
  const pod = soakPod(w, worker);
  const { pod_sandbox_id } = await sup.call('RunPodSandbox', (b) => b.runtime.RunPodSandbox({ config: pod }));
  const podStatus = (await sup.call('PodSandboxStatus', (b) => b.runtime.PodSandboxStatus({ pod_sandbox_id }))).status!;
  check(podStatus.state === 'SANDBOX_READY' && !!podStatus.network?.ip, `pod ${pod_sandbox_id} is ${podStatus.state} with IP ${JSON.stringify(podStatus.network?.ip)}`);

  const tickerLog = `ticker-${n}.log`;
  const ticker = containerConfig(image, { metadata: { name: 'ticker', attempt: 0 }, command: ['/bin/sh', '-c', TICKER], log_path: tickerLog });
  const { container_id: tickerId } = await sup.call('CreateContainer', (b) => b.runtime.CreateContainer({ pod_sandbox_id, config: ticker, sandbox_config: pod }));
  await sup.call('StartContainer', (b) => b.runtime.StartContainer({ container_id: tickerId }));

  const token = randomBytes(4).toString('hex');
  const probe = await sup.call('ExecSync', (b) => b.runtime.ExecSync({ container_id: tickerId, cmd: ['/bin/sh', '-c', `echo probe-${token}`], timeout: 10 }));
  check(probe.exit_code === 0 && probe.stdout.toString() === `probe-${token}\n`, `exec probe in ${tickerId}: exit ${probe.exit_code}, stdout ${JSON.stringify(probe.stdout.toString())}`);
  await waitFor(`ticker ${tickerId} logs a line`, async () => / stdout F tick-0$/m.test(await logText(w, pod, tickerLog)), { timeoutMs: 30_000, intervalMs: 200 }).catch(() => {
    throw new CheckFailed(`ticker ${tickerId}: no "tick-0" line in ${tickerLog} after 30 s`);
  });

  const jobLog = `job-${n}.log`;
  const job = containerConfig(image, { metadata: { name: 'job', attempt: 0 }, command: ['/bin/sh', '-c', `echo job-${token}; exit 3`], log_path: jobLog });
  const { container_id: jobId } = await sup.call('CreateContainer', (b) => b.runtime.CreateContainer({ pod_sandbox_id, config: job, sandbox_config: pod }));
  await sup.call('StartContainer', (b) => b.runtime.StartContainer({ container_id: jobId }));
  const exited = await waitFor(`job ${jobId} exits`, async () => {
    const s = (await sup.call('ContainerStatus', (b) => b.runtime.ContainerStatus({ container_id: jobId }))).status!;
    return s.state === 'CONTAINER_EXITED' && s;
  }, { timeoutMs: 30_000, intervalMs: 200 });
  check(exited.exit_code === 3, `job ${jobId} exited with ${exited.exit_code}, not 3`);
  check((await logText(w, pod, jobLog)).includes(`stdout F job-${token}\n`), `job ${jobId}: its line is not in ${jobLog}`);

  await sup.call('StopContainer', (b) => b.runtime.StopContainer({ container_id: tickerId, timeout: 10 }));
  const stopped = (await sup.call('ContainerStatus', (b) => b.runtime.ContainerStatus({ container_id: tickerId }))).status!;
  check(stopped.state === 'CONTAINER_EXITED' && stopped.exit_code === 0, `ticker ${tickerId} after StopContainer: ${stopped.state}, exit ${stopped.exit_code}`);
  for (const id of [tickerId, jobId]) await sup.call('RemoveContainer', (b) => b.runtime.RemoveContainer({ container_id: id }));
  await sup.call('StopPodSandbox', (b) => b.runtime.StopPodSandbox({ pod_sandbox_id }));
  await sup.call('RemovePodSandbox', (b) => b.runtime.RemovePodSandbox({ pod_sandbox_id }));
}

/** Removes whatever a worker's interrupted or failed cycle left, as kubelet would on its next sync. */
async function reconcile(w: Workload, worker: string): Promise<void> {
  for (;;) {
    try {
      const pods = await w.sup.call('ListPodSandbox', (b) => b.runtime.ListPodSandbox({ filter: { label_selector: { [WORKER_LABEL]: worker } } }));
      for (const p of pods.items) {
        await w.sup.call('StopPodSandbox', (b) => b.runtime.StopPodSandbox({ pod_sandbox_id: p.id }));
        await w.sup.call('RemovePodSandbox', (b) => b.runtime.RemovePodSandbox({ pod_sandbox_id: p.id }));
      }
      return;
    } catch (err) {
      w.tally.add(err, 'reconcile');
      if (!(err instanceof RestartInterrupted)) return;
    }
  }
}

/** Cycles pods until the soak's end; returns the number of cycles completed whole. */
export async function runWorker(w: Workload, worker: string): Promise<number> {
  let completed = 0;
  for (let n = 0; Date.now() < w.until(); n++) {
    try {
      await cycle(w, worker, n);
      completed++;
    } catch (err) {
      w.tally.add(err, 'cycle');
      await reconcile(w, worker);
    }
  }
  return completed;
}

export interface Resident {
  podId: string;
  ip: string;
  containerId: string;
  startedAt: string;
  logFile: string;
}

/** A pod with a ticker that is meant to run, untouched, through every restart of the soak. */
export async function startResident(w: Workload): Promise<Resident> {
  const pod = soakPod(w, 'resident');
  const b = await w.sup.ready();
  const { pod_sandbox_id } = await b.runtime.RunPodSandbox({ config: pod });
  const ip = (await b.runtime.PodSandboxStatus({ pod_sandbox_id })).status!.network!.ip;
  const logPath = `resident-${pod_sandbox_id.slice(0, 12)}.log`;
  const config = containerConfig(w.image, { metadata: { name: 'resident', attempt: 0 }, command: ['/bin/sh', '-c', TICKER], log_path: logPath });
  const { container_id } = await b.runtime.CreateContainer({ pod_sandbox_id, config, sandbox_config: pod });
  await b.runtime.StartContainer({ container_id });
  const startedAt = (await b.runtime.ContainerStatus({ container_id })).status!.started_at;
  return { podId: pod_sandbox_id, ip, containerId: container_id, startedAt, logFile: path.join(w.logDir, logPath) };
}

/**
 * After a restart: the resident pod is READY with its IP, its container RUNNING since the same moment (never
 * restarted), answers an exec, and its log still grows (the new berth's monitor-side logging goes on).
 */
export async function checkResident(w: Workload, r: Resident): Promise<void> {
  try {
    const pod = (await w.sup.call('PodSandboxStatus', (b) => b.runtime.PodSandboxStatus({ pod_sandbox_id: r.podId }))).status!;
    check(pod.state === 'SANDBOX_READY' && pod.network?.ip === r.ip, `resident pod ${r.podId}: ${pod.state} with IP ${pod.network?.ip}, was READY with ${r.ip}`);
    const c = (await w.sup.call('ContainerStatus', (b) => b.runtime.ContainerStatus({ container_id: r.containerId }))).status!;
    check(c.state === 'CONTAINER_RUNNING' && c.started_at === r.startedAt, `resident container ${r.containerId}: ${c.state} started at ${c.started_at}, was RUNNING since ${r.startedAt}`);
    const probe = await w.sup.call('ExecSync', (b) => b.runtime.ExecSync({ container_id: r.containerId, cmd: ['/bin/echo', 'alive'], timeout: 10 }));
    check(probe.exit_code === 0 && probe.stdout.toString() === 'alive\n', `resident container ${r.containerId}: exec gave ${probe.exit_code} ${JSON.stringify(probe.stdout.toString())}`);
    const size = async () => (await fs.stat(r.logFile).catch(() => undefined))?.size ?? 0;
    const before = await size();
    await waitFor(`resident ${r.containerId} log grows`, async () => (await size()) > before, { timeoutMs: 15_000, intervalMs: 200 }).catch(() => {
      throw new CheckFailed(`resident container ${r.containerId}: ${r.logFile} stopped growing at ${before} bytes`);
    });
  } catch (err) {
    w.tally.add(err, 'resident');
  }
}
