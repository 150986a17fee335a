import test, { ExecutionContext } from 'ava';
import { spawn, execFile, ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, LayerEntry, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { cleanUpAndCheck, containerConfig, failure, podConfig } from '../helpers/cri.js';
import { pidAlive, waitFor } from '../helpers/util.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';

// The in-container resource view: with an lxcfs of the test's own mounted on a temporary directory (Debian's
// lxcfs package, installed by scripts/setup.sh), berth binds its /proc files into containers, so free(1) in a
// container limited to 64 MiB says 64 MiB. The lxcfs is stopped after, by pid, and leaves no mount.
//
// The free(1) is procps's (Debian's procps, with the libraries it links copied from the host): it reads
// /proc/meminfo. busybox's free takes its total from sysinfo(2), a syscall lxcfs cannot reach.

const run = promisify(execFile);
const MiB = 1024 * 1024;
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";
const LXCFS_FILES = ['meminfo', 'cpuinfo', 'stat', 'uptime', 'loadavg', 'diskstats', 'swaps'];

let registry: Registry;
let image: PushedImage;
let lxcfs: { dir: string; mountPoint: string; child: ChildProcess; pid: number; runDirExisted: boolean };

const fuseMountAt = async (dir: string) => (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === dir);

/** A layer with the host's procps free at /usr/bin/free (ahead of busybox's /bin/free in PATH), its loader and libraries. */
async function procpsFreeLayer(): Promise<LayerEntry[]> {
  const { stdout } = await run('ldd', ['/usr/bin/free'], { timeout: 10000 });
  const files = ['/usr/bin/free', ...stdout.split('\n').map((l) => /(\/\S+) \(0x/.exec(l)?.[1]).filter((f): f is string => f !== undefined)];
  const dirs = new Set<string>();
  const entries: LayerEntry[] = [];
  for (const file of files) {
    for (let d = path.dirname(file); d !== '/'; d = path.dirname(d)) dirs.add(d);
    entries.push({ type: 'file', path: file, content: await fs.readFile(file), mode: 0o755 });
  }
  const dirEntries = [...dirs].sort().map((d): LayerEntry => ({ type: 'dir', path: d, mode: 0o755 }));
  return [...dirEntries, ...entries];
}

test.before(async () => {
  registry = await startRegistry();
  const procps = await layer(await procpsFreeLayer());
  image = await pushImage(registry, 'berth/lxcfsbox', 'v1', { layers: [await busyboxLayer(), procps], config: { Cmd: ['sh'] } });
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-lxcfs-'));
  const mountPoint = path.join(dir, 'mnt');
  await fs.mkdir(mountPoint);
  // lxcfs keeps its private cgroup mounts under /run/lxcfs (in its own mount namespace); the empty directories
  // it leaves on the host are removed after when this test made them.
  const runDirExisted = existsSync('/run/lxcfs');
  const pidFile = path.join(dir, 'lxcfs.pid');
  // lxcfs stays in the foreground of its parent here: its pid is the child's, and it unmounts on SIGTERM.
  const child = spawn('lxcfs', [mountPoint, '-p', pidFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  lxcfs = { dir, mountPoint, child, pid: child.pid!, runDirExisted };
  await waitFor('lxcfs to mount its filesystem', async () => {
    if (child.exitCode !== null) throw new Error(`lxcfs exited (${child.exitCode}): ${stderr}`);
    const line = await fuseMountAt(mountPoint);
    return line?.includes(' - fuse.lxcfs ') && existsSync(path.join(mountPoint, 'proc', 'meminfo'));
  });
  if (Number((await fs.readFile(pidFile, 'utf8')).trim()) !== child.pid) throw new Error('lxcfs wrote another pid than its own');
});

test.after.always(async () => {
  await registry?.stop();
  if (!lxcfs) return;
  if (pidAlive(lxcfs.pid)) {
    const exited = new Promise((resolve) => lxcfs.child.once('exit', resolve));
    process.kill(lxcfs.pid, 'SIGTERM');
    await Promise.race([exited, waitFor('lxcfs to exit', () => !pidAlive(lxcfs.pid), { timeoutMs: 10000 }).catch(() => undefined)]);
    if (pidAlive(lxcfs.pid)) {
      process.kill(lxcfs.pid, 'SIGKILL');
      await waitFor('lxcfs to die', () => !pidAlive(lxcfs.pid));
    }
  }
  // lxcfs unmounts itself on SIGTERM; one killed harder leaves a dead FUSE mount for us to take down.
  if (await fuseMountAt(lxcfs.mountPoint)) await run('umount', [lxcfs.mountPoint], { timeout: 10000 });
  if (await fuseMountAt(lxcfs.mountPoint)) throw new Error(`the lxcfs mount at ${lxcfs.mountPoint} is still there`);
  await fs.rm(lxcfs.dir, { recursive: true });
  if (!lxcfs.runDirExisted) {
    for (const sub of ['controllers', 'root', '']) await fs.rmdir(path.join('/run/lxcfs', sub)).catch(() => undefined);
  }
});

interface Env {
  berth: BerthProcess;
  /** Runs a sleeper in a new pod; returns the container's id. */
  runIn(pod: Partial<PodSandboxConfig>, container?: Partial<ContainerConfig>): Promise<string>;
  sh(containerId: string, script: string): Promise<string>;
}

async function env(t: ExecutionContext, runtimeToml: string): Promise<Env> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n[runtime]\n${runtimeToml}\n` });
  const logDir = path.join(berth.dir, 'logs');
  const cgroups: string[] = [];
  cleanUpAndCheck(t, berth, cgroups);
  await berth.images.PullImage({ image: { image: image.ref } });
  return {
    berth,
    async runIn(podOverrides, container = {}) {
      const pc = podConfig({ log_directory: logDir, ...podOverrides });
      const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pc });
      const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      cgroups.push(JSON.parse(status.info.info).cgroup.path);
      const { container_id } = await berth.runtime.CreateContainer({
        pod_sandbox_id,
        config: containerConfig(image.ref, { command: ['/bin/sh', '-c', SLEEPER], log_path: 'c.log', ...container }),
        sandbox_config: pc,
      });
      await berth.runtime.StartContainer({ container_id });
      return container_id;
    },
    async sh(containerId, script) {
      const r = await berth.runtime.ExecSync({ container_id: containerId, cmd: ['/bin/sh', '-c', script], timeout: 30 });
      if (r.exit_code !== 0) throw new Error(`${script}: exit ${r.exit_code}: ${r.stderr.toString()}`);
      return r.stdout.toString();
    },
  };
}

const limited = (bytes: number): Partial<ContainerConfig> => ({ linux: { resources: { memory_limit_in_bytes: String(bytes) } } });

/** The mounts at /proc/<file> in a container's mountinfo: mount point -> per-mount options. */
async function procBinds(e: Env, id: string): Promise<Map<string, string[]>> {
  const binds = new Map<string, string[]>();
  for (const line of (await e.sh(id, 'cat /proc/self/mountinfo')).split('\n')) {
    const f = line.split(' ');
    if (f.length > 5 && /^\/proc\/[a-z]+$/.test(f[4]) && LXCFS_FILES.includes(f[4].slice(6))) binds.set(f[4], f[5].split(','));
  }
  return binds;
}

const hostMemTotalKb = async () => Number(/MemTotal:\s+(\d+) kB/.exec(await fs.readFile('/proc/meminfo', 'utf8'))![1]);

test.serial('lxcfs auto: free -m in a container limited to 64 MiB reports 64 MiB total; the seven /proc files are read-only binds; masked and read-only paths still hold', async (t) => {
  const e = await env(t, `lxcfs_dir = "${lxcfs.mountPoint}"`);
  const id = await e.runIn({}, limited(64 * MiB));
  // Not through sh: busybox's sh runs its own free applet whatever PATH says.
  const freeRun = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['free', '-m'], timeout: 30 });
  const free = freeRun.stdout.toString();
  t.is(freeRun.exit_code, 0, freeRun.stderr.toString());
  const mem = /^Mem:\s+(\d+)/m.exec(free);
  t.truthy(mem, free);
  t.is(Number(mem![1]), 64, free);
  t.regex(await e.sh(id, 'grep MemTotal /proc/meminfo'), /^MemTotal:\s+65536 kB$/m);
  t.true((await hostMemTotalKb()) > 4 * 65536, 'the node has more memory than the container sees');

  const binds = await procBinds(e, id);
  t.deepEqual([...binds.keys()].sort(), LXCFS_FILES.map((f) => `/proc/${f}`).sort());
  for (const [file, options] of binds) t.true(options.includes('ro') && options.includes('nosuid') && options.includes('nodev') && options.includes('noexec'), `${file}: ${options}`);
  t.regex(await e.sh(id, 'echo x 2>&1 > /proc/meminfo || echo refused'), /refused/);
  // The defaults of maskedPaths and readonlyPaths are applied after the binds, as before.
  // /proc/timer_list (root-readable and never empty) is masked by /dev/null: it reads empty.
  t.true((await fs.readFile('/proc/timer_list')).length > 0);
  t.is(await e.sh(id, 'wc -c < /proc/timer_list'), '0\n');
  t.regex(await e.sh(id, 'touch /proc/sys/kernel/hostname 2>&1 || echo refused; grep " /proc/sys " /proc/self/mountinfo'), /refused[\s\S]* \/proc\/sys ro,/);
  t.true(e.berth.logs.some((l) => l.includes('lxcfs found')), 'berth logged the lxcfs it found');
  const summary = JSON.parse((await e.berth.runtime.Status({ verbose: true })).info.summary);
  t.deepEqual(summary.lxcfs, { mode: 'auto', dir: lxcfs.mountPoint, files: LXCFS_FILES });
});

test.serial('lxcfs auto: a privileged container sees the node\'s /proc files, not lxcfs\'s', async (t) => {
  const e = await env(t, `lxcfs_dir = "${lxcfs.mountPoint}"`);
  const privileged = { linux: { security_context: { privileged: true, namespace_options: { network: 'POD' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const } } } };
  const id = await e.runIn(privileged, { ...limited(64 * MiB), linux: { ...limited(64 * MiB).linux, security_context: { privileged: true } } });
  t.deepEqual([...(await procBinds(e, id)).keys()], []);
  const total = Number(/MemTotal:\s+(\d+) kB/.exec(await e.sh(id, 'cat /proc/meminfo'))![1]);
  t.is(total, await hostMemTotalKb());
});

test.serial('lxcfs auto, user namespace pod: the binds are plain (FUSE cannot be id-mapped), the files read as nobody and show the limit', async (t) => {
  const e = await env(t, `lxcfs_dir = "${lxcfs.mountPoint}"`);
  const userns = { mode: 'POD' as const, uids: [{ container_id: 0, host_id: 300000, length: 65536 }], gids: [{ container_id: 0, host_id: 300000, length: 65536 }] };
  const nsopts = { network: 'POD' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const, userns_options: userns };
  const id = await e.runIn({ linux: { security_context: { namespace_options: nsopts } } }, { ...limited(64 * MiB), linux: { ...limited(64 * MiB).linux, security_context: { namespace_options: nsopts } } });
  t.is(await e.sh(id, 'id -u'), '0\n');
  t.regex(await e.sh(id, 'grep MemTotal /proc/meminfo'), /^MemTotal:\s+65536 kB$/m);
  t.is((await procBinds(e, id)).size, LXCFS_FILES.length);
  // lxcfs's files belong to host root, which the container's user namespace does not map.
  t.is(await e.sh(id, 'stat -c %u:%g /proc/meminfo'), '65534:65534\n');
});

test.serial('lxcfs on, with nothing mounted at lxcfs_dir: CreateContainer is FAILED_PRECONDITION naming [runtime] lxcfs; nothing is left', async (t) => {
  const empty = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-no-lxcfs-'));
  t.teardown(() => fs.rm(empty, { recursive: true, force: true }));
  const e = await env(t, `lxcfs = "on"\nlxcfs_dir = "${empty}"`);
  const err = await failure(e.runIn({}, limited(64 * MiB)));
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.regex(err.details, /\[runtime\] lxcfs = "on" but lxcfs is not usable at .*berth-no-lxcfs-.* \(\[runtime\] lxcfs_dir\): nothing is mounted at/);
  t.deepEqual((await e.berth.runtime.ListContainers({})).containers, []);
  // A privileged container never gets lxcfs, so "on" does not stand in its way.
  const privileged = { linux: { security_context: { privileged: true, namespace_options: { network: 'POD' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const } } } };
  const id = await e.runIn(privileged, { linux: { security_context: { privileged: true } } });
  t.is(await e.sh(id, 'echo ok'), 'ok\n');
});
