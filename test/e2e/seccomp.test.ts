import test, { ExecutionContext } from 'ava';
import { promises as fs, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, pushImage, PushedImage } from '../helpers/images.js';
import type { BerthProcess } from '../helpers/berth.js';
import { podEnv } from '../helpers/pod-env.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// RuntimeDefault through CRI is Docker's default allowlist: a static fixture in the image makes system calls and
// prints the errno each one got (test/fixtures/syscalls.c).

const EPERM = 1;
const ENOSYS = 38;
// open_tree_attr (kernel 6.15): newer than any call the profile names, so the shim's ENOSYS stub answers it.
const NEWER_THAN_PROFILE = 467;
const PROBE = `syscalls io_uring_setup keyctl mount_setattr clone-newuser clone3 nr:${NEWER_THAN_PROFILE} socket-inet personality-query getppid`;
// the answers of a default container under RuntimeDefault
const CONFINED = `io_uring_setup=${EPERM} keyctl=${EPERM} mount_setattr=${EPERM} clone-newuser=${EPERM} clone3=${ENOSYS} ` +
  `nr:${NEWER_THAN_PROFILE}=${ENOSYS} socket-inet=0 personality-query=0 getppid=0`;

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  const binary = path.join(os.tmpdir(), `berth-syscalls-${process.pid}`);
  execFileSync('gcc', ['-static', '-O2', '-o', binary, fileURLToPath(new URL('../../../test/fixtures/syscalls.c', import.meta.url))]);
  const probe = await layer([{ type: 'file', path: 'usr/bin/syscalls', content: readFileSync(binary), mode: 0o755, uid: 0, gid: 0 }]);
  await fs.rm(binary, { force: true });
  image = await pushImage(registry, 'berth/seccomp', 'v1', { layers: [await busyboxLayer(), probe], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

interface Env {
  berth: BerthProcess;
  /** Creates and starts a container in a fresh pod; returns its id. */
  start(command: string[], c?: Partial<ContainerConfig>, logPath?: string): Promise<string>;
  /** Runs `script` to completion and returns its output from the CRI log. */
  run(script: string, c?: Partial<ContainerConfig>): Promise<string>;
}

async function env(t: ExecutionContext): Promise<Env> {
  const p = await podEnv(t, { registryHost: registry.host, image: image.ref });
  return {
    berth: p.berth,
    start: async (command, c = {}, logPath) => p.container(await p.loggedPod(), { command, ...(logPath ? { log_path: logPath } : {}), ...c }),
    run: async (script, c = {}) => (await p.run(script, c)).out,
  };
}

const seccomp = (profile_type: 'RuntimeDefault' | 'Unconfined', more: object = {}): Partial<ContainerConfig> =>
  ({ linux: { security_context: { seccomp: { profile_type }, ...more } } });

test('RuntimeDefault: io_uring_setup, keyctl and namespaces EPERM, clone3 and calls newer than the profile ENOSYS; a shell workload runs', async (t) => {
  const e = await env(t);
  const shellWork = 'echo hello | cat | tr a-z A-Z; (cd /tmp && echo abc > f && cat f | wc -c); ls -d /bin /etc | wc -l; ' +
    'n=$(seq 1 100 | grep -c 7); echo "n=$n"; sleep 0.01 & wait $!; echo waited=$?; id -u';
  const out = await e.run(`${PROBE}; ${shellWork}`, seccomp('RuntimeDefault'));
  t.is(out, [CONFINED, 'HELLO', '4', '2', 'n=19', 'waited=0', '0'].join('\n'));

  // ExecSync'd processes are held to the same filter
  const id = await e.start(['sleep', '1000'], seccomp('RuntimeDefault'));
  const r = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', PROBE], timeout: 10 });
  t.is(r.stdout.toString().trim(), CONFINED);
});

test('RuntimeDefault with CAP_SYS_ADMIN allows clone3 and namespaces; Unconfined shows the kernel\'s own answers', async (t) => {
  const e = await env(t);
  const admin = (await e.run(PROBE, seccomp('RuntimeDefault', { capabilities: { add_capabilities: ['SYS_ADMIN'] } }))).split(' ');
  t.true(admin.includes(`io_uring_setup=${EPERM}`), 'io_uring stays denied');
  t.true(admin.includes(`keyctl=${EPERM}`), 'the keyring stays denied');
  t.true(admin.includes('clone3=22'), 'clone3 reaches the kernel (EINVAL for a zero size)');
  t.true(admin.includes('clone-newuser=0'), 'a new user namespace may be made');
  t.true(admin.includes(`nr:${NEWER_THAN_PROFILE}=${ENOSYS}`));

  // Unconfined: the kernel has every probed call (else the ENOSYS/EPERM above would prove nothing)
  const open = Object.fromEntries((await e.run(PROBE, seccomp('Unconfined'))).split(' ').map((kv) => kv.split('=') as [string, string]));
  for (const call of ['io_uring_setup', 'mount_setattr', 'clone3', `nr:${NEWER_THAN_PROFILE}`]) {
    t.false([String(EPERM), String(ENOSYS)].includes(open[call]!), `${call} unfiltered answered ${open[call]}`);
  }
  t.is(open['keyctl'], '0');
});
