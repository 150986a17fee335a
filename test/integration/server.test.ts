import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { MAIN, startBerth } from '../helpers/berth.js';

test('Version names berth and the v1 API', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const v = await berth.runtime.Version({ version: '' });
  t.is(v.runtime_name, 'berth');
  t.is(v.runtime_api_version, 'v1');
  t.truthy(v.runtime_version);
});

test('Status reports runtime and network conditions with reasons, handlers, and the config when verbose', async (t) => {
  const berth = await startBerth({ config: '[registry]\ninsecure = ["127.0.0.1:5999"]\n' });
  t.teardown(() => berth.cleanup());
  const s = await berth.runtime.Status({ verbose: true });
  const byType = Object.fromEntries(s.status!.conditions.map((c) => [c.type, c]));
  t.true(byType.RuntimeReady.status);
  t.is(typeof byType.NetworkReady.status, 'boolean');
  if (!byType.NetworkReady.status) t.truthy(byType.NetworkReady.reason);
  t.true(s.runtime_handlers.length >= 1);
  t.is(typeof s.runtime_handlers[0].features?.user_namespaces, 'boolean');
  const config = JSON.parse(s.info.config);
  t.deepEqual(config.registry.insecure, ['127.0.0.1:5999']);
  const quiet = await berth.runtime.Status({ verbose: false });
  t.deepEqual(quiet.info, {});
});

test('berth says at start what it found on the host, in one info line, and verbose Status says the same', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const serving = await berth.waitForLog((e) => e.msg === 'berth serving');
  t.is(serving.level, 'info');
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const v1 = / - cgroup /.test(mountinfo);
  const v2 = / - cgroup2 /.test(mountinfo);
  t.is(serving.cgroups, v1 && v2 ? 'hybrid' : v1 ? 'v1' : 'v2');
  t.is(typeof serving.userNamespaces, 'boolean');
  t.is(serving.seccomp, (await fs.readFile('/proc/sys/kernel/seccomp/actions_avail', 'utf8')).includes('errno'));
  const network = serving.network as Record<string, unknown>;
  t.is(network.mode, 'embedded');
  t.regex(String(network.bridge), /\S/);
  t.regex(String(network.subnet), /^\d+\.\d+\.\d+\.\d+\/\d+$/);
  t.is(serving.socket, berth.socket);
  const s = await berth.runtime.Status({ verbose: true });
  const summary = JSON.parse(s.info.summary);
  for (const key of ['cgroups', 'userNamespaces', 'seccomp', 'socket']) t.deepEqual(summary[key], serving[key], key);
  t.is(summary.network.mode, network.mode);
  t.is(summary.network.bridge, network.bridge);
});

test('RuntimeConfig reports the cgroupfs driver', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const r = await berth.runtime.RuntimeConfig({});
  t.is(r.linux?.cgroup_driver, 'CGROUPFS');
});

test('an RPC that is not built yet answers UNIMPLEMENTED naming it', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const err = await t.throwsAsync(berth.runtime.CheckpointContainer({ container_id: 'x' })) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.UNIMPLEMENTED);
  t.regex(err.details, /CheckpointContainer/);
});

test('the socket is 0660 and its directory 0700', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  t.is((await fs.stat(berth.socket)).mode & 0o777, 0o660);
  t.is((await fs.stat(path.dirname(berth.socket))).mode & 0o777, 0o700);
});

test('a socket directory berth did not create keeps its mode', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-test-'));
  await fs.mkdir(path.join(dir, 'run'), { mode: 0o755 });
  await fs.chmod(path.join(dir, 'run'), 0o755);
  const berth = await startBerth({ dir });
  t.teardown(() => berth.cleanup());
  t.is((await fs.stat(path.dirname(berth.socket))).mode & 0o777, 0o755);
});

test('Version reports the package version; Status advertises each runtime handler RunPodSandbox accepts', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const pkg = JSON.parse(await fs.readFile(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  const v = await berth.runtime.Version({ version: '' });
  t.is(v.runtime_version, pkg.version);
  t.is(v.version, '0.1.0');
  const s = await berth.runtime.Status({ verbose: false });
  t.deepEqual(s.runtime_handlers.map((h) => h.name), ['', 'berth']);
  // Recursive read-only mounts need mount_setattr (Linux 5.12+); declared for every handler alike.
  const [major, minor] = os.release().split('.').map(Number);
  const rro = major > 5 || (major === 5 && minor >= 12);
  t.deepEqual(s.runtime_handlers.map((h) => h.features?.recursive_read_only_mounts), [rro, rro]);
});

async function invalid(t: ExecutionContext, call: Promise<unknown>, field: string): Promise<void> {
  const err = (await t.throwsAsync(call)) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.INVALID_ARGUMENT, err.details);
  t.true(err.details.includes(field), `${err.details} should name ${field}`);
}

test('UpdateRuntimeConfig refuses a pod CIDR without an IPv4 block and ignores an empty one', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const field = 'runtime_config.network_config.pod_cidr';
  for (const pod_cidr of ['10.244.1.0', '10.244.1.0/33', 'fd00::/64', 'bogus,also-bogus']) {
    await invalid(t, berth.runtime.UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr } } }), field);
  }
  await berth.runtime.UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr: '' } } });
  await berth.runtime.UpdateRuntimeConfig({});
  t.pass();
});

test('list filters with an unknown state are refused naming the field', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  await invalid(t, berth.runtime.ListContainers({ filter: { state: { state: 42 as unknown as 'CONTAINER_RUNNING' } } }), 'filter.state.state');
  await invalid(t, berth.runtime.ListPodSandbox({ filter: { state: { state: 42 as unknown as 'SANDBOX_READY' } } }), 'filter.state.state');
  t.deepEqual((await berth.runtime.ListContainers({ filter: { state: { state: 'CONTAINER_RUNNING' } } })).containers, []);
  t.deepEqual((await berth.runtime.ListPodSandbox({ filter: { state: { state: 'SANDBOX_NOTREADY' } } })).items, []);
});

test('requests with values berth cannot honour are refused naming the field, before anything is looked up', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const metadata = { name: 'c', attempt: 0 };
  const mount = { container_path: '/data', host_path: '/tmp', propagation: 7 as unknown as 'PROPAGATION_PRIVATE' };
  await invalid(t, berth.runtime.CreateContainer({ pod_sandbox_id: 'x', config: { metadata, image: { image: 'busybox' }, mounts: [{ container_path: '/a', host_path: '/tmp' }, mount] } }), 'config.mounts[1].propagation');
  await invalid(t, berth.runtime.CreateContainer({ pod_sandbox_id: 'x', config: { metadata, linux: { resources: { oom_score_adj: '1001' } } } }), 'config.linux.resources.oom_score_adj');
  await invalid(t, berth.runtime.UpdateContainerResources({ container_id: 'x', linux: { oom_score_adj: '-1001' } }), 'linux.oom_score_adj');
  const pod = (mode: string) => ({
    config: {
      metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 },
      linux: { security_context: { namespace_options: { userns_options: { mode: mode as 'POD', uids: [{ host_id: 100000, container_id: 0, length: 65536 }], gids: [{ host_id: 100000, container_id: 0, length: 65536 }] } } } },
    },
  });
  for (const mode of ['CONTAINER', 'TARGET', 9]) {
    await invalid(t, berth.runtime.RunPodSandbox(pod(mode as string)), 'config.linux.security_context.namespace_options.userns_options.mode');
  }
  const noMappings = { config: { metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 }, linux: { security_context: { namespace_options: { userns_options: { mode: 'CONTAINER' as const } } } } } };
  await invalid(t, berth.runtime.RunPodSandbox(noMappings), 'userns_options.mode');
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, [], 'no pod was started');
});

// CRI (cri-api's api.proto): StopPodSandbox, RemovePodSandbox, StopContainer and RemoveContainer are idempotent and
// "must not return an error" for what is already stopped or removed; kubelet repeats them after restarts, and the
// Kubernetes 1.32 suite sends UUIDs. Only an empty id is the caller's mistake.
test('Stop and Remove of pods and containers that match nothing succeed; an empty id is INVALID_ARGUMENT naming the field', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  for (const id of [randomUUID(), 'f'.repeat(64), 'not-an-id']) {
    await berth.runtime.StopPodSandbox({ pod_sandbox_id: id });
    await berth.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    await berth.runtime.StopContainer({ container_id: id, timeout: 0 });
    await berth.runtime.RemoveContainer({ container_id: id });
  }
  await invalid(t, berth.runtime.StopPodSandbox({ pod_sandbox_id: '' }), 'pod_sandbox_id');
  await invalid(t, berth.runtime.RemovePodSandbox({ pod_sandbox_id: '' }), 'pod_sandbox_id');
  await invalid(t, berth.runtime.StopContainer({ container_id: '', timeout: 0 }), 'container_id');
  await invalid(t, berth.runtime.RemoveContainer({ container_id: '' }), 'container_id');
  // Status of what does not exist is still NOT_FOUND: only Stop and Remove are idempotent.
  const missing = (await t.throwsAsync(berth.runtime.ContainerStatus({ container_id: randomUUID() }))) as unknown as grpc.ServiceError;
  t.is(missing.code, grpc.status.NOT_FOUND);
});

test('user-namespace mappings the suite and kubelet refuse are INVALID_ARGUMENT naming the field; nothing is started', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const field = 'config.linux.security_context.namespace_options.userns_options';
  type Mapping = { host_id: number; container_id: number; length: number };
  const pod = (uids: Mapping[], gids: Mapping[] = uids) => ({
    config: {
      metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 },
      linux: { security_context: { namespace_options: { userns_options: { mode: 'POD' as const, uids, gids } } } },
    },
  });
  const range = { container_id: 0, host_id: 1000, length: 100000 };
  await invalid(t, berth.runtime.RunPodSandbox(pod([range, { container_id: 100000, host_id: 200000, length: 10 }])), `${field}.uids has 2 mappings`);
  await invalid(t, berth.runtime.RunPodSandbox(pod([{ ...range, container_id: 1 }])), `${field}.uids[0].container_id`);
  await invalid(t, berth.runtime.RunPodSandbox(pod([range], [{ ...range, length: 0 }])), `${field}.gids[0].length`);
  await invalid(t, berth.runtime.RunPodSandbox(pod([{ ...range, host_id: 2 ** 32 - 5 }])), `${field}.uids[0].length`);
  await invalid(t, berth.runtime.RunPodSandbox(pod([range, { container_id: 100000, host_id: 50000, length: 10 }])), `${field}.uids[1].host_id`);
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, [], 'no pod was started');
});

test('Status declares SupplementalGroupsPolicy; an unknown policy value is refused naming the field', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  t.true((await berth.runtime.Status({ verbose: false })).features?.supplemental_groups_policy);
  const field = 'config.linux.security_context.supplemental_groups_policy';
  const policy = 5 as unknown as 'Strict';
  await invalid(t, berth.runtime.RunPodSandbox({ config: { metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 }, linux: { security_context: { supplemental_groups_policy: policy } } } }), field);
  await invalid(t, berth.runtime.CreateContainer({ pod_sandbox_id: 'x', config: { metadata: { name: 'c', attempt: 0 }, linux: { security_context: { supplemental_groups_policy: policy } } } }), field);
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, []);
});

test('a second berth on the same socket refuses to start and the first keeps serving', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const second = spawn(process.execPath, [MAIN, '--socket', berth.socket, '--root', path.join(berth.dir, 'r2'), '--state-dir', path.join(berth.dir, 's2')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  second.stderr.on('data', (d) => (stderr += d));
  // 'close', not 'exit': the exit can be seen before the last of stderr is read.
  const code = await new Promise((resolve) => second.on('close', resolve));
  t.not(code, 0);
  t.regex(stderr, /already serves/);
  t.is((await berth.runtime.Version({ version: '' })).runtime_name, 'berth');
});

async function runBerth(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { code, stderr };
}

test('a bad config stops berth at start with a message naming the key', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-config-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const cases: [string, string][] = [
    ['[registry]\nmirrorz = {}\n', 'registry.mirrorz'],
    ['[registry]\nmax_concurrent_downloads = -1\n', 'registry.max_concurrent_downloads'],
    ['[registry\n', 'invalid TOML'],
  ];
  for (const [text, key] of cases) {
    const file = path.join(dir, 'config.toml');
    await fs.writeFile(file, text);
    const { code, stderr } = await runBerth(['--config', file, '--socket', path.join(dir, 's.sock'), '--root', path.join(dir, 'root'), '--state-dir', dir]);
    t.is(code, 2, text);
    t.true(stderr.includes(key), `${stderr} should name ${key}`);
  }
  const missing = await runBerth(['--config', path.join(dir, 'absent.toml'), '--socket', path.join(dir, 's.sock')]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /absent\.toml/);
  const usage = await runBerth(['--bogus']);
  t.is(usage.code, 2);
  t.regex(usage.stderr, /^berth: unknown option --bogus .*'berth --help'\)\n$/);
});

test('a streaming address another process holds stops berth at start, naming streaming.address', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-config-'));
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    await new Promise<void>((resolve) => holder.close(() => resolve()));
    await fs.rm(dir, { recursive: true, force: true });
  });
  const file = path.join(dir, 'config.toml');
  await fs.writeFile(file, `[streaming]\naddress = "127.0.0.1:${(holder.address() as net.AddressInfo).port}"\n`);
  const { code, stderr } = await runBerth(['--config', file, '--socket', path.join(dir, 's.sock'), '--root', path.join(dir, 'root'), '--state-dir', dir]);
  t.is(code, 1);
  t.regex(stderr, /streaming\.address: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
});

test('the streaming server starts with berth: its URL in the start line; Exec/Attach/PortForward check their target and request', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const serving = await berth.waitForLog((e) => e.msg === 'berth serving');
  t.regex(String(serving.streaming), /^http:\/\/127\.0\.0\.1:\d+$/);
  const code = (p: Promise<unknown>) => p.then(() => grpc.status.OK, (e: grpc.ServiceError) => e.code);
  t.is(await code(berth.runtime.Exec({ container_id: 'feedbeef', cmd: ['sh'], stdout: true })), grpc.status.NOT_FOUND);
  t.is(await code(berth.runtime.Exec({ container_id: 'feedbeef', cmd: [], stdout: true })), grpc.status.INVALID_ARGUMENT);
  t.is(await code(berth.runtime.Attach({ container_id: 'feedbeef', stdout: true })), grpc.status.NOT_FOUND);
  t.is(await code(berth.runtime.PortForward({ pod_sandbox_id: 'feedbeef', port: [80] })), grpc.status.NOT_FOUND);
  t.is(await code(berth.runtime.PortForward({ pod_sandbox_id: 'feedbeef', port: [70000] })), grpc.status.INVALID_ARGUMENT);
  const res = await fetch(`${serving.streaming}/exec/AAAAAAAAAAAAAAAAAAAAAA`);
  t.is(res.status, 404);
  await res.body?.cancel();
});

test('SIGTERM with nothing in flight exits 0', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  t.is(await berth.stop('SIGTERM'), 0);
});

test('a client that sends the socket path as :authority (older grpc-go, crictl 1.26) is served', async (t) => {
  const berth = await startBerth();
  t.teardown(() => berth.cleanup());
  const { loadCri } = await import('../../src/cri/grpc.js');
  const cri = loadCri();
  const client = new cri.runtime.v1.RuntimeService(`unix://${berth.socket}`, grpc.credentials.createInsecure(), {
    'grpc.default_authority': berth.socket,
  }) as unknown as { Version(req: object, cb: (err: grpc.ServiceError | null, res: { runtime_name: string }) => void): void; close(): void };
  const version = await new Promise<{ runtime_name: string }>((resolve, reject) => client.Version({}, (err, res) => (err ? reject(err) : resolve(res))));
  client.close();
  t.is(version.runtime_name, 'berth');
});
