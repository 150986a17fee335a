import test from 'ava';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { BerthProcess, startBerth } from '../helpers/berth.js';
import { containerConfig, failure, hostLeftovers, podConfig } from '../helpers/cri.js';

// Limits a client or the node can hit: oversized gRPC messages, names that cannot become names, and berth's own
// open-files limit. Each ends with berth still serving and nothing stored or left on the host.

/** A berth whose teardown removes its pods, stops it and checks the host for the given pod cgroups and the rest. */
async function withBerth(t: import('ava').ExecutionContext, cgroups: string[] = []): Promise<BerthProcess> {
  const berth = await startBerth();
  t.teardown(async () => {
    await berth.cleanup();
    // Every pod berth began, a failed one included, logged its id: its cgroup must be gone too.
    const begun = new Set(berth.logs.flatMap((line) => /"pod":"([0-9a-f]{64})"/.exec(line)?.[1] ?? []));
    const left = await hostLeftovers(berth.dir, [...cgroups, ...[...begun].map((id) => `/berth-pod-${id.slice(0, 16)}`)]);
    if (left.length > 0) throw new Error(`left behind:\n${left.join('\n')}`);
  });
  return berth;
}

async function cgroupOf(berth: BerthProcess, podId: string): Promise<string> {
  const st = await berth.runtime.PodSandboxStatus({ pod_sandbox_id: podId, verbose: true });
  return JSON.parse(st.info.info).cgroup.path;
}

test('a request over the 16 MiB receive limit is RESOURCE_EXHAUSTED from gRPC itself, labels or annotations over 256 KiB are INVALID_ARGUMENT; berth keeps serving and stored nothing', async (t) => {
  const cgroups: string[] = [];
  const berth = await withBerth(t, cgroups);
  const huge = 'x'.repeat(17 * 1024 * 1024);
  const err = await failure(berth.runtime.RunPodSandbox({ config: podConfig({ annotations: { huge } }) }));
  t.is(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
  t.regex(err.details, /larger than max/i);
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, []);
  // Just under the limit is a request like any other: the same connection still serves it.
  const selector = { label_selector: { app: 'y'.repeat(15 * 1024 * 1024) } };
  t.deepEqual((await berth.runtime.ListContainers({ filter: selector })).containers, []);
  // Labels and annotations are answered in every list: over Kubernetes' 256 KiB they are refused, so that no pod can
  // push ListPodSandbox past the limit for every client.
  const tooMany = { a: 'z'.repeat(200 * 1024), b: 'z'.repeat(100 * 1024) };
  const big = await failure(berth.runtime.RunPodSandbox({ config: podConfig({ annotations: tooMany }) }));
  t.is(big.code, grpc.status.INVALID_ARGUMENT, big.details);
  t.regex(big.details, /^config\.annotations hold \d+ bytes; berth takes at most 262144/);
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: podConfig({ annotations: { a: 'z'.repeat(200 * 1024) } }) });
  cgroups.push(await cgroupOf(berth, pod_sandbox_id));
  await berth.runtime.StopPodSandbox({ pod_sandbox_id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id });
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, []);
  t.is((await berth.runtime.Version({ version: '' })).runtime_name, 'berth');
});

test('pod and container names with "/", NUL or 10 KiB of text are INVALID_ARGUMENT naming the field, and nothing is stored', async (t) => {
  const cgroups: string[] = [];
  const berth = await withBerth(t, cgroups);
  const bad = ['a/b', 'a\0b', 'x'.repeat(10 * 1024)];
  for (const value of bad) {
    for (const field of ['name', 'namespace', 'uid'] as const) {
      const config = podConfig();
      config.metadata = { ...config.metadata!, [field]: value };
      const err = await failure(berth.runtime.RunPodSandbox({ config }));
      t.is(err.code, grpc.status.INVALID_ARGUMENT, err.details);
      t.true(err.details.startsWith(`config.metadata.${field} `), err.details.slice(0, 120));
    }
  }
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, []);
  t.deepEqual(await fs.readdir(`${berth.stateDir}`).then((d) => d.filter((n) => /^[0-9a-f]{64}$/.test(n))), []);

  const pod = podConfig();
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  cgroups.push(await cgroupOf(berth, pod_sandbox_id));
  for (const value of bad) {
    const config = containerConfig('127.0.0.1:1/never/pulled:v1', { metadata: { name: value, attempt: 0 } });
    const err = await failure(berth.runtime.CreateContainer({ pod_sandbox_id, config, sandbox_config: pod }));
    t.is(err.code, grpc.status.INVALID_ARGUMENT, err.details);
    t.true(err.details.startsWith('config.metadata.name '), err.details.slice(0, 120));
  }
  t.deepEqual((await berth.runtime.ListContainers({})).containers, []);
  await berth.runtime.StopPodSandbox({ pod_sandbox_id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id });
});

async function until(condition: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (await condition()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const openFds = async (pid: number) => (await fs.readdir(`/proc/${pid}/fd`)).length;

test("at berth's open-files limit RunPodSandbox is RESOURCE_EXHAUSTED naming the limit, berth does not crash, undoes the half-made pod, and serves again once descriptors free up", async (t) => {
  const cgroups: string[] = [];
  const berth = await withBerth(t, cgroups);
  const pid = berth.child.pid!;
  // The client's connection is made before the limit is reached, as kubelet's long-lived one is.
  t.is((await berth.runtime.Version({ version: '' })).runtime_name, 'berth');
  const limit = (await openFds(pid)) + 32;
  // Lowered for this berth only (root may lower a soft limit; the hard limit stays, so nothing is lost).
  execFileSync('prlimit', ['--pid', String(pid), `--nofile=${limit}:`]);
  // Connections berth accepts and holds (waiting for their HTTP/2 preface) until its descriptors run out.
  const hogs: net.Socket[] = [];
  t.teardown(() => hogs.forEach((s) => s.destroy()));
  for (let i = 0; i < 64; i++) {
    const s = net.connect(berth.socket);
    s.on('error', () => undefined);
    hogs.push(s);
  }
  // libuv accepts and drops what it has no descriptor for (its reserve-fd trick), so the limit is seen in /proc.
  await until(async () => (await openFds(pid)) >= limit - 1, 'berth to reach its open-files limit');

  const pod = podConfig();
  const err = await failure(berth.runtime.RunPodSandbox({ config: pod }));
  t.is(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
  t.regex(err.details, /open-files limit \(RLIMIT_NOFILE\) is reached \(EMFILE\)/);
  t.is(berth.child.exitCode, null, 'berth is still running');

  for (const s of hogs) s.destroy();
  // berth closes its ends once it sees ours close; then it has descriptors again.
  await until(async () => (await openFds(pid)) < limit - 16, 'berth to close the dropped connections');
  t.deepEqual((await berth.runtime.ListPodSandbox({})).items, [], 'the failed pod was undone, not recorded');
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  cgroups.push(await cgroupOf(berth, pod_sandbox_id));
  await berth.runtime.StopPodSandbox({ pod_sandbox_id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id });
});
