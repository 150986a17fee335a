import test, { ExecutionContext } from 'ava';
import { promises as fs, readFileSync, openSync, closeSync, readlinkSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, pushImage, PushedImage } from '../helpers/images.js';
import type { BerthProcess, StartOptions } from '../helpers/berth.js';
import { openFdTargets, waitFor } from '../helpers/util.js';
import { podEnv, type Pod } from '../helpers/pod-env.js';
import { SHIM } from '../helpers/rootfs.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// What a process inside a container can reach of berth's helpers (issue 10, findings 2, 6 and 7): the shim's
// processes inside containers are undumpable and run from a sealed copy; each container has its own session
// keyring; exec'd processes get the container's limits. test/fixtures/hardening.c does the looking from inside.

let registry: Registry;
let image: PushedImage;
let fixture: string;

test.before(async () => {
  registry = await startRegistry();
  fixture = path.join(os.tmpdir(), `berth-hardening-${process.pid}`);
  execFileSync('gcc', ['-static', '-O2', '-o', fixture, fileURLToPath(new URL('../../../test/fixtures/hardening.c', import.meta.url))]);
  const bin = await layer([{ type: 'file', path: 'usr/bin/hardening', content: readFileSync(fixture), mode: 0o755, uid: 0, gid: 0 }]);
  image = await pushImage(registry, 'berth/hardening', 'v1', { layers: [await busyboxLayer(), bin], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await fs.rm(fixture, { force: true });
  await registry?.stop();
});

// Unconfined: RuntimeDefault refuses ptrace and keyctl outright, which would hide what this file checks.
// No CAP_SYS_PTRACE (the default set): the attacker has the target's uid and a superset of its capabilities,
// so the ptrace access check passes on uid and capabilities, and only dumpable can stop it. (CAP_SYS_PTRACE in
// the host's user namespace overrides dumpable, by the kernel's design: that is a host-level privilege.)
const unconfined = (extra: Partial<NonNullable<ContainerConfig['linux']>> = {}): Partial<ContainerConfig> => ({
  linux: { security_context: { seccomp: { profile_type: 'Unconfined', localhost_ref: '' } }, ...extra },
});

interface Env {
  berth: BerthProcess;
  pod(pod?: Partial<PodSandboxConfig>): Promise<Pod>;
  container(pod: Pod, c?: Partial<ContainerConfig>, start?: boolean): Promise<string>;
  exec(id: string, cmd: string[], timeout?: number): Promise<{ out: string; code: number }>;
}

async function env(t: ExecutionContext, opts: StartOptions = {}): Promise<Env> {
  const p = await podEnv(t, { ...opts, registryHost: registry.host, image: image.ref });
  return {
    berth: p.berth,
    pod: p.pod,
    container: (pod, c = {}, start = true) => p.container(pod, { command: ['sleep', '1000'], ...c }, start),
    async exec(id, cmd, timeout = 30) {
      const r = await p.berth.runtime.ExecSync({ container_id: id, cmd, timeout });
      return { out: r.stdout.toString() + r.stderr.toString(), code: r.exit_code };
    },
  };
}

const field = (out: string, key: string) => new RegExp(`^${key}=(.*)$`, 'm').exec(out)?.[1];

/** Host pids of a container's shim processes (its monitor and, while it has not exec'd, its init). */
async function shimPids(containerId: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const cmd = await fs.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes('berth-shim\0create\0') && cmd.includes(containerId)) pids.push(Number(name));
  }
  return pids;
}

/** Opening for writing fails for anyone, host root included: ETXTBSY while it runs, EPERM by its seals. */
function openForWrite(file: string): string {
  try {
    closeSync(openSync(file, 'r+'));
    return 'ok';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'error';
  }
}

test('an exec child held right before execve cannot be ptraced or opened from its container; a child of its own can', async (t) => {
  // Set on berth's environment only (the shim reads its own environment, which is berth's): a pod cannot.
  const e = await env(t, { env: { BERTH_SHIM_TEST_PAUSE: 'exec-before-execve' } });
  const pod = await e.pod();
  const id = await e.container(pod, unconfined());
  const held = e.exec(id, ['hardening', 'hold', 'berth-test-hold']);
  const attack = await e.exec(id, ['hardening', 'attack', 'exec']);
  t.is(attack.code, 0, attack.out);
  t.is(field(attack.out, 'target'), 'found', attack.out);
  t.is(field(attack.out, 'control_seize'), 'ok', `the fixture can seize a dumpable process of its own uid: ${attack.out}`);
  t.is(field(attack.out, 'seize'), 'EPERM', attack.out);
  t.regex(field(attack.out, 'exe_link') ?? '', /^(EACCES|EPERM)$/, attack.out);
  t.regex(field(attack.out, 'exe_write') ?? '', /^(EACCES|EPERM|ETXTBSY)$/, attack.out);
  t.regex(field(attack.out, 'fd_open') ?? '', /^(EACCES|EPERM)$/, attack.out);
  const released = await held;
  t.is(released.code, 0, released.out);
  t.is(released.out.trim(), 'released', 'the held exec went on to its command once continued');
});

test('in a user namespace, CAP_SYS_PTRACE there does not reach an exec child held before execve either', async (t) => {
  const e = await env(t, { env: { BERTH_SHIM_TEST_PAUSE: 'exec-before-execve' } });
  const userns = { mode: 'POD' as const, uids: [{ container_id: 0, host_id: 300000, length: 65536 }], gids: [{ container_id: 0, host_id: 300000, length: 65536 }] };
  const nsopts = { network: 'POD' as const, pid: 'CONTAINER' as const, ipc: 'POD' as const, userns_options: userns };
  const pod = await e.pod({ linux: { security_context: { namespace_options: nsopts } } });
  const id = await e.container(pod, {
    linux: { security_context: { namespace_options: nsopts, seccomp: { profile_type: 'Unconfined', localhost_ref: '' }, capabilities: { add_capabilities: ['SYS_PTRACE'] } } },
  });
  const held = e.exec(id, ['hardening', 'hold', 'berth-test-hold']);
  const attack = await e.exec(id, ['hardening', 'attack', 'exec']);
  t.is(field(attack.out, 'target'), 'found', attack.out);
  t.is(field(attack.out, 'control_seize'), 'ok', attack.out);
  t.is(field(attack.out, 'seize'), 'EPERM', attack.out);
  t.regex(field(attack.out, 'exe_link') ?? '', /^(EACCES|EPERM)$/, attack.out);
  t.regex(field(attack.out, 'fd_open') ?? '', /^(EACCES|EPERM)$/, attack.out);
  t.is((await held).out.trim(), 'released');
});

test('a created-not-started init is out of reach of another container of a shared-pid pod; it runs the sealed copy', async (t) => {
  const e = await env(t);
  const pod = await e.pod({ linux: { security_context: { namespace_options: { network: 'POD', pid: 'POD', ipc: 'POD' } } } });
  const waiting = await e.container(pod, unconfined(), false);
  const attacker = await e.container(pod, unconfined());
  const attack = await e.exec(attacker, ['hardening', 'attack', 'init']);
  t.is(field(attack.out, 'target'), 'found', attack.out);
  t.is(field(attack.out, 'control_seize'), 'ok', attack.out);
  t.is(field(attack.out, 'seize'), 'EPERM', attack.out);
  t.regex(field(attack.out, 'exe_link') ?? '', /^(EACCES|EPERM)$/, attack.out);
  t.regex(field(attack.out, 'exe_write') ?? '', /^(EACCES|EPERM|ETXTBSY)$/, attack.out);
  t.regex(field(attack.out, 'fd_open') ?? '', /^(EACCES|EPERM)$/, 'the sync pipe to the monitor is not reachable through /proc');

  // From the host, as root: the waiting init and its monitor run the sealed memfd, which cannot be written.
  const st = await e.berth.runtime.ContainerStatus({ container_id: waiting, verbose: true });
  const initPid = JSON.parse(st.info.info).pid as number;
  const pids = await shimPids(waiting);
  t.true(pids.includes(initPid), `init ${initPid} among ${pids}`);
  for (const pid of pids) {
    t.regex(readlinkSync(`/proc/${pid}/exe`), /^\/memfd:berth-shim/, `pid ${pid}`);
    t.regex(openForWrite(`/proc/${pid}/exe`), /^(ETXTBSY|EPERM)$/, `pid ${pid}`);
  }
  // berth's own fd of the copy: the same.
  const berthPid = e.berth.child.pid!;
  const sealed = [...openFdTargets(berthPid)].filter(([, target]) => target.startsWith('/memfd:berth-shim')).map(([fd]) => fd);
  t.is(sealed.length, 1, 'one sealed copy per berth process');
  t.regex(openForWrite(`/proc/${berthPid}/fd/${sealed[0]}`), /^(ETXTBSY|EPERM)$/);

  await e.berth.runtime.StartContainer({ container_id: waiting });
  await waitFor('running', async () => (await e.berth.runtime.ContainerStatus({ container_id: waiting })).status?.state === 'CONTAINER_RUNNING');
});

test('each container and each exec has a session keyring of its own, named _ses.<id>, not the host\'s', async (t) => {
  const e = await env(t);
  const host = field(execFileSync(fixture, ['keyring']).toString(), 'serial');
  const pod = await e.pod();
  const a = await e.container(pod, unconfined());
  const b = await e.container(pod, unconfined());
  const ka = await e.exec(a, ['hardening', 'keyring']);
  const kb = await e.exec(b, ['hardening', 'keyring']);
  t.is(ka.code, 0, ka.out);
  t.is(field(ka.out, 'name'), `_ses.${a}`);
  t.is(field(kb.out, 'name'), `_ses.${b}`);
  t.not(field(ka.out, 'serial'), host);
  t.not(field(kb.out, 'serial'), host);
  t.not(field(ka.out, 'serial'), field(kb.out, 'serial'));

  // The init itself: a container whose command prints its keyring into its log.
  const logDir = path.join(e.berth.dir, 'logs');
  const logPod = await e.pod({ log_directory: logDir });
  const c = await e.container(logPod, { ...unconfined(), command: ['hardening', 'keyring'], log_path: 'k.log' });
  await waitFor('exit', async () => (await e.berth.runtime.ContainerStatus({ container_id: c })).status?.state === 'CONTAINER_EXITED', { timeoutMs: 20000 });
  const log = (await fs.readFile(path.join(logDir, 'k.log'), 'utf8')).split('\n').map((l) => l.replace(/^\S+ \S+ [PF] /, '')).join('\n');
  t.is(field(log, 'name'), `_ses.${c}`, log);
  t.not(field(log, 'serial'), host);
  t.false([field(ka.out, 'serial'), field(kb.out, 'serial')].includes(field(log, 'serial')));
});

test('ExecSync runs with the container\'s nofile limit and oom_score_adj, not berth\'s', async (t) => {
  const e = await env(t);
  const berthLimits = await fs.readFile(`/proc/${e.berth.child.pid}/limits`, 'utf8');
  const berthNofile = /Max open files\s+(\d+)\s+(\d+)/.exec(berthLimits)!;
  t.not(berthNofile[2], '1024', 'berth\'s own limit differs, or the test proves nothing');
  const pod = await e.pod();
  const id = await e.container(pod, { linux: { resources: { oom_score_adj: '1000' } } });
  const r = await e.exec(id, ['cat', '/proc/self/limits', '/proc/self/oom_score_adj']);
  t.is(r.code, 0, r.out);
  t.regex(r.out, /Max open files\s+1024\s+1024/);
  t.regex(r.out, /\n1000\n?$/);
});

test('berth-shim exec enters the container by pidfd and refuses a pid whose start time is not the one recorded', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  const id = await e.container(pod);
  const pid = JSON.parse((await e.berth.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info).pid as number;
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  const startTime = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  const run = (start: number) => {
    try {
      return { code: 0, out: execFileSync(SHIM, ['exec', String(pid), '--start-time', String(start), '--', 'hostname'], { encoding: 'utf8', stdio: 'pipe' }) };
    } catch (err) {
      const e = err as { status: number; stderr: string };
      return { code: e.status, out: e.stderr };
    }
  };
  const ok = run(startTime);
  t.is(ok.code, 0, ok.out);
  t.is(ok.out.trim(), pod.config.hostname ?? '', 'it ran in the container\'s uts namespace');
  const recycled = run(startTime + 1);
  t.is(recycled.code, 125);
  t.regex(recycled.out, new RegExp(`process ${pid} is not the container's \\(start time ${startTime}, expected ${startTime + 1}\\)`));
});
