import test from 'ava';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth } from '../helpers/berth.js';
import { containerConfig, failure, hostLeftovers, podConfig } from '../helpers/cri.js';

// berth at its own open-files limit with real containers: exec and container creation need descriptors (pipes,
// the monitor's sockets, log files). They fail with RESOURCE_EXHAUSTED naming the limit, berth neither crashes
// nor leaks what the failed call had made, and the same calls work once descriptors are free again.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/busybox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

async function until(condition: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (await condition()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const openFds = async (pid: number) => (await fs.readdir(`/proc/${pid}/fd`)).length;

test("at berth's open-files limit ExecSync and CreateContainer are RESOURCE_EXHAUSTED naming the limit, nothing is left half-made, and both work once descriptors free up", async (t) => {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const cgroups: string[] = [];
  const hogs: net.Socket[] = [];
  t.teardown(async () => {
    for (const s of hogs) s.destroy();
    const begun = new Set(berth.logs.flatMap((line) => /"pod":"([0-9a-f]{64})"/.exec(line)?.[1] ?? []));
    await berth.cleanup();
    const left = await hostLeftovers(berth.dir, [...cgroups, ...[...begun].map((id) => `/berth-pod-${id.slice(0, 16)}`)]);
    if (left.length > 0) throw new Error(`left behind:\n${left.join('\n')}`);
  });
  await berth.images.PullImage({ image: { image: image.ref } });
  const logDir = `${berth.dir}/logs`;
  const pod = podConfig({ log_directory: logDir });
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
  cgroups.push(JSON.parse(status.info.info).cgroup.path);
  const create = (name: string) =>
    berth.runtime.CreateContainer({
      pod_sandbox_id,
      config: containerConfig(image.ref, { metadata: { name, attempt: 0 }, command: ['sleep', '600'], log_path: `${name}.log` }),
      sandbox_config: pod,
    });
  const { container_id } = await create('first');
  await berth.runtime.StartContainer({ container_id });

  const pid = berth.child.pid!;
  const limit = (await openFds(pid)) + 32;
  execFileSync('prlimit', ['--pid', String(pid), `--nofile=${limit}:`]);
  for (let i = 0; i < 64; i++) {
    const s = net.connect(berth.socket);
    s.on('error', () => undefined);
    hogs.push(s);
  }
  await until(async () => (await openFds(pid)) >= limit - 1, 'berth to reach its open-files limit');

  const execErr = await failure(berth.runtime.ExecSync({ container_id, cmd: ['echo', 'ok'], timeout: 10 }));
  t.is(execErr.code, grpc.status.RESOURCE_EXHAUSTED, execErr.details);
  t.regex(execErr.details, /open-files limit \(RLIMIT_NOFILE\) is reached \(EMFILE\)/);
  const createErr = await failure(create('second'));
  t.is(createErr.code, grpc.status.RESOURCE_EXHAUSTED, createErr.details);
  t.regex(createErr.details, /open-files limit \(RLIMIT_NOFILE\) is reached \(EMFILE\)/);
  t.is(berth.child.exitCode, null, 'berth is still running');

  for (const s of hogs) s.destroy();
  await until(async () => (await openFds(pid)) < limit - 16, 'berth to close the dropped connections');
  t.deepEqual((await berth.runtime.ListContainers({})).containers.map((c) => c.id), [container_id], 'the failed create was undone');
  const ok = await berth.runtime.ExecSync({ container_id, cmd: ['echo', 'ok'], timeout: 10 });
  t.is(ok.stdout.toString(), 'ok\n');
  const second = await create('second');
  await berth.runtime.StartContainer({ container_id: second.container_id });
  t.is((await berth.runtime.ContainerStatus({ container_id: second.container_id })).status?.state, 'CONTAINER_RUNNING');
  await berth.runtime.StopPodSandbox({ pod_sandbox_id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id });
});
