import type { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { startBerth, BerthProcess, StartOptions } from './berth.js';
import { containerConfig, hostLeftovers, podConfig } from './cri.js';
import { waitFor } from './util.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// The environment most e2e tests need: a berth that trusts one loopback registry (plain HTTP), whose teardown
// checks that nothing of the test's pods is left on the host, with an image pulled and pods to run it in.

export interface CheckedBerth {
  berth: BerthProcess;
  /** Pod cgroup paths the teardown's leak check looks for (pods made through PodEnv are added on their own). */
  cgroups: string[];
}

export interface CheckedBerthOptions extends StartOptions {
  /** host:port of the registry, listed as insecure (plain HTTP). */
  registryHost: string;
  /** TOML appended to the [registry] section. */
  extraConfig?: string;
}

/** Starts berth; the test's teardown stops it and fails the test if it left anything behind. */
export async function startCheckedBerth(t: ExecutionContext, opts: CheckedBerthOptions): Promise<CheckedBerth> {
  const { registryHost, extraConfig = '', ...start } = opts;
  const berth = await startBerth({ ...start, config: `[registry]\ninsecure = ["${registryHost}"]\n${extraConfig}` });
  const cgroups: string[] = [];
  t.teardown(async () => {
    await berth.cleanup();
    const left = await hostLeftovers(berth.dir, cgroups);
    if (left.length > 0) throw new Error(`left behind:\n${left.join('\n')}`);
  });
  return { berth, cgroups };
}

export interface Pod {
  id: string;
  config: PodSandboxConfig;
}

export interface PodEnv {
  berth: BerthProcess;
  /** The log_directory pods get unless they say otherwise (berth.dir/logs). */
  logDir: string;
  /** Runs a pod sandbox from podConfig(overrides) and adds its cgroup to the leak check. */
  pod(overrides?: Partial<PodSandboxConfig>): Promise<Pod>;
  /** A pod whose log_directory is logDir (overrides may change it). */
  loggedPod(overrides?: Partial<PodSandboxConfig>): Promise<Pod>;
  /** Creates a container of the env's image (containerConfig(image, c)) in the pod, and starts it unless told not to. */
  container(pod: Pod, c?: Partial<ContainerConfig>, start?: boolean): Promise<string>;
  /** Waits for the container to exit and returns its stdout+stderr from the CRI log at logDir/logPath. */
  output(containerId: string, logPath: string): Promise<string>;
  /** Runs `script` to completion in a fresh logged pod; its id and stdout+stderr from the CRI log. */
  run(script: string, c?: Partial<ContainerConfig>, pod?: Partial<PodSandboxConfig>): Promise<{ id: string; out: string }>;
}

export interface PodEnvOptions extends CheckedBerthOptions {
  /** The image every container runs; pulled before the env is handed out. */
  image: string;
}

/** A checked berth with `image` pulled. */
export async function podEnv(t: ExecutionContext, opts: PodEnvOptions): Promise<PodEnv> {
  const { image, ...start } = opts;
  const { berth, cgroups } = await startCheckedBerth(t, start);
  await berth.images.PullImage({ image: { image } });
  const logDir = path.join(berth.dir, 'logs');
  const pod = async (overrides: Partial<PodSandboxConfig> = {}): Promise<Pod> => {
    const config = podConfig(overrides);
    const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config });
    const st = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
    cgroups.push(JSON.parse(st.info.info).cgroup.path);
    return { id: pod_sandbox_id, config };
  };
  const loggedPod = (overrides: Partial<PodSandboxConfig> = {}) => pod({ log_directory: logDir, ...overrides });
  const container = async (p: Pod, c: Partial<ContainerConfig> = {}, start = true): Promise<string> => {
    const { container_id } = await berth.runtime.CreateContainer({ pod_sandbox_id: p.id, config: containerConfig(image, c), sandbox_config: p.config });
    if (start) await berth.runtime.StartContainer({ container_id });
    return container_id;
  };
  const output = async (containerId: string, logPath: string): Promise<string> => {
    await waitFor('exit', async () => (await berth.runtime.ContainerStatus({ container_id: containerId })).status?.state === 'CONTAINER_EXITED', { timeoutMs: 20000 });
    const log = await fs.readFile(path.join(logDir, logPath), 'utf8');
    return log.split('\n').filter(Boolean).map((l) => l.replace(/^\S+ \S+ [PF] /, '')).join('\n');
  };
  return {
    berth,
    logDir,
    pod,
    loggedPod,
    container,
    output,
    async run(script, c = {}, p = {}) {
      const logPath = randomLogPath();
      const id = await container(await loggedPod(p), { command: ['/bin/sh', '-c', script], log_path: logPath, ...c });
      return { id, out: await output(id, logPath) };
    },
  };
}

/** A fresh log file name beneath the log directory. */
export const randomLogPath = (): string => `${Math.random().toString(36).slice(2)}.log`;
