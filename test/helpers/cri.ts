import { randomBytes } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { onTimeout, waitFor } from './util.js';
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

/** Attached loop devices whose backing file lies under `dir` (the kernel appends " (deleted)" once it is gone). */
export async function loopDevicesBackedUnder(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const dev of await fs.readdir('/sys/block').catch(() => [])) {
    if (!dev.startsWith('loop')) continue;
    const backing = await fs.readFile(`/sys/block/${dev}/loop/backing_file`, 'utf8').catch(() => '');
    if (backing.startsWith(`${dir}/`)) found.push(`/dev/${dev} -> ${backing.trim()}`);
  }
  return found;
}

/**
 * Everything a berth test may leave behind on the host, for the pod cgroup paths it used: mounts, processes and loop
 * devices of its directory, cgroups, and (for the pod ids given) ifb devices of bandwidth-limited pods.
 */
export async function hostLeftovers(dir: string, cgroupPaths: string[], podIds: string[] = []): Promise<string[]> {
  const problems: string[] = [];
  for (const id of podIds) {
    const ifb = `berthi${id.slice(0, 9)}`;
    if (await fs.access(`/sys/class/net/${ifb}`).then(() => true, () => false)) problems.push(`ifb device: ${ifb}`);
  }
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mountinfo.split('\n')) if (line.includes(dir)) problems.push(`mount: ${line}`);
  for (const p of await processesMentioning(dir)) problems.push(`process: ${p}`);
  for (const l of await loopDevicesBackedUnder(dir)) problems.push(`loop device: ${l}`);
  for (const cg of cgroupPaths) {
    // '' is the cgroup2 root of a pure v2 host; the others are this kind of host's v1 controllers and hybrid tree.
    for (const ctrl of ['', '/memory', '/cpu', '/cpuacct', '/pids', '/cpuset', '/devices', '/blkio', '/unified']) {
      const full = `/sys/fs/cgroup${ctrl}${cg}`;
      if (await fs.access(full).then(() => true, () => false)) problems.push(`cgroup: ${full}`);
    }
  }
  return problems;
}

/**
 * Registers a test berth's teardown: its cleanup (pods removed through it, berth stopped, its directory removed),
 * then the check that nothing of it stays on the host (mounts, processes, loop devices, the cgroups in `cgroups`,
 * which the test fills as it goes).
 */
export function cleanUpAndCheck(t: Pick<ExecutionContext, 'teardown'>, berth: { dir: string; cleanup(): Promise<void> }, cgroups: string[]): void {
  t.teardown(async () => {
    await berth.cleanup();
    const left = await hostLeftovers(berth.dir, cgroups);
    if (left.length > 0) throw new Error(`test left host objects behind:\n${left.join('\n')}`);
  });
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

export interface BerthState {
  /** berth's --root and --state-dir. */
  root: string;
  stateDir: string;
  /** The embedded network's bridge and iptables chain prefix, when the test berth has one. */
  bridge?: string;
  chainPrefix?: string;
}

async function entries(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
}

/**
 * What berth's own state and the kernel still hold for objects berth made that `owned` does not name (pod and
 * container ids): records and bundles (with their fifos and sockets), pod run directories (netns pins live there),
 * IPAM entries, veths on its bridge, per-pod iptables rules, half-written layers (staging or dot directories) and
 * layers no image record names. With `owned` empty this is the check that a full teardown left nothing.
 */
export async function stateLeftovers(s: BerthState, owned: string[] = []): Promise<string[]> {
  let last: string[] = [];
  const settled = await waitFor('berth state to settle', async () => ((last = await stateLeftoversNow(s, owned)).length === 0 ? last : undefined), {
    timeoutMs: SETTLE_MS,
    intervalMs: 100,
  }).catch(onTimeout(undefined));
  return settled ?? last;
}

/**
 * Some of what a removal releases goes in the background after berth replies, by design: the kernel destroys a
 * pod's netns (and with it the veth) once its pin is gone, and berth deletes records and bundles and writes IPAM
 * off the RPC path. So only what is still there after this long counts as leaked.
 */
const SETTLE_MS = 5000;

async function stateLeftoversNow(s: BerthState, owned: string[]): Promise<string[]> {
  const problems: string[] = [];
  const mine = (name: string) => owned.some((id) => name.includes(id) || id.includes(name));
  for (const [what, dir] of [
    ['pod record', path.join(s.root, 'sandboxes')],
    ['container record/bundle', path.join(s.root, 'containers')],
    ['pod run directory', path.join(s.stateDir, 'sandboxes')],
  ] as const) {
    for (const name of await entries(dir)) if (!mine(name)) problems.push(`${what}: ${path.join(dir, name)}`);
  }
  const ipam = await fs.readFile(path.join(s.root, 'network', 'ipam.json'), 'utf8').then((t) => JSON.parse(t) as { allocations?: Record<string, string> }, () => undefined);
  for (const [ip, pod] of Object.entries(ipam?.allocations ?? {})) if (!mine(pod)) problems.push(`IPAM entry: ${ip} -> ${pod}`);
  if (s.bridge) {
    // Only a pod's veth is ever enslaved to berth's bridge; its name carries the pod id's first 10 characters.
    for (const link of await entries(`/sys/class/net/${s.bridge}/brif`)) {
      if (!owned.some((id) => link === `berth${id.slice(0, 10)}`)) problems.push(`veth on ${s.bridge}: ${link}`);
    }
  }
  if (s.chainPrefix) {
    const save = await new Promise<string>((resolve, reject) =>
      execFile('iptables-save', [], { timeout: 10_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
    );
    for (const line of save.split('\n')) {
      const pod = /berth-pod:([0-9a-f]+)/.exec(line)?.[1];
      if (pod && line.includes(`${s.chainPrefix}-`) && !mine(pod)) problems.push(`iptables rule: ${line}`);
    }
  }
  const layersDir = path.join(s.root, 'images', 'layers');
  const imagesDir = path.join(s.root, 'images', 'images');
  const named = new Set<string>();
  for (const file of await entries(imagesDir)) {
    const image = await fs.readFile(path.join(imagesDir, file), 'utf8').then((t) => JSON.parse(t) as { layers?: string[] }, () => undefined);
    if (!image) problems.push(`unreadable or partial image record: ${file}`);
    for (const l of image?.layers ?? []) named.add(l.replace(/^sha256:/, ''));
  }
  for (const name of await entries(layersDir)) {
    if (name.startsWith('.')) problems.push(`half-written or half-deleted layer: ${path.join(layersDir, name)}`);
    else if (!named.has(name)) problems.push(`layer no image names: ${path.join(layersDir, name)}`);
  }
  return problems;
}

/**
 * `berth doctor --json` (this checkout's) of a stopped berth's root: the orphans it lists (logged by the caller),
 * or why it gave no answer to trust (a check it skipped, no report at all).
 */
export function doctorOrphans(b: { dir: string; root: string; stateDir: string; socket: string }, launcher: string): Promise<unknown[] | string> {
  const args = ['doctor', '--json', '--root', b.root, '--state-dir', b.stateDir, '--socket', b.socket, '--config', path.join(b.dir, 'config.toml')];
  return new Promise((resolve) => {
    execFile(launcher, args, { timeout: 60_000 }, (err, stdout, stderr) => {
      try {
        const report = JSON.parse(stdout) as { orphans: unknown[]; skipped: string[] };
        resolve(report.skipped.length > 0 ? `doctor skipped checks: ${report.skipped.join('; ')}` : report.orphans);
      } catch {
        resolve(`doctor gave no report (${err?.message ?? 'no error'}): ${stderr.trim()}`);
      }
    });
  });
}
