import { randomBytes } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { promises as fs } from 'node:fs';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// Request builders shaped like what kubelet sends, and host-state checks every lifecycle test runs.

export function podConfig(overrides: Partial<PodSandboxConfig> = {}): PodSandboxConfig {
  const suffix = randomBytes(4).toString('hex');
  return {
    metadata: { name: `pod-${suffix}`, uid: `uid-${suffix}`, namespace: 'default', attempt: 0 },
    hostname: `pod-${suffix}`,
    log_directory: '',
    labels: { 'io.kubernetes.pod.uid': `uid-${suffix}`, app: 'berth-test' },
    annotations: { 'berth.test/annotation': 'kept' },
    linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    ...overrides,
  };
}

export function containerConfig(image: string, overrides: Partial<ContainerConfig> = {}): ContainerConfig {
  return {
    metadata: { name: `c-${randomBytes(3).toString('hex')}`, attempt: 0 },
    image: { image },
    labels: { 'io.kubernetes.container.name': 'c' },
    annotations: {},
    ...overrides,
  };
}

/** Processes whose command line mentions `dir` (our shims and containers' monitors). */
export async function processesMentioning(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(dir)) found.push(`${pid}: ${cmdline.replace(/\0/g, ' ')}`);
  }
  return found;
}

/** Everything a berth test may leave behind on the host, for the pod cgroup paths it used. */
export async function hostLeftovers(dir: string, cgroupPaths: string[]): Promise<string[]> {
  const problems: string[] = [];
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mountinfo.split('\n')) if (line.includes(dir)) problems.push(`mount: ${line}`);
  for (const p of await processesMentioning(dir)) problems.push(`process: ${p}`);
  for (const cg of cgroupPaths) {
    // '' is the cgroup2 root of a pure v2 host; the others are this kind of host's v1 controllers and hybrid tree.
    for (const ctrl of ['', '/memory', '/cpu', '/cpuacct', '/pids', '/cpuset', '/devices', '/blkio', '/unified']) {
      const full = `/sys/fs/cgroup${ctrl}${cg}`;
      if (await fs.access(full).then(() => true, () => false)) problems.push(`cgroup: ${full}`);
    }
  }
  return problems;
}

/** The error a CRI call fails with; throws when it succeeds. */
export async function failure(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
}
