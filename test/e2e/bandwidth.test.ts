import test, { ExecutionContext } from 'ava';
import net from 'node:net';
import { once } from 'node:events';
import path from 'node:path';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { containerConfig, failure, hostLeftovers, podConfig } from '../helpers/cri.js';
import { freePort } from '../helpers/util.js';
import { eventually, linkExists, networkLeftovers, removeTestNet, TestNet, testNet, vethOf, waitGone } from './network-helpers.js';
import * as grpc from '@grpc/grpc-js';
import { ifbOwnerTag, ownedIfbs } from '../../src/network/ifb.js';

// Pod bandwidth annotations in the embedded network, measured: TCP transfers between a pod and the node (the
// bridge's address), each bounded in time, into the pod and out of it, with and without the annotations.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/bwbox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

const ING = 'kubernetes.io/ingress-bandwidth';
const EGR = 'kubernetes.io/egress-bandwidth';
const BYTES = 2 * 1024 * 1024;
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";
/** A transfer that has not finished by then has hung (8 Mbit/s moves BYTES in about 2 s). */
const TRANSFER_LIMIT_MS = 60_000;

/** `work`, or a clear failure naming `what` once TRANSFER_LIMIT_MS pass. */
function bounded<T>(what: string, work: Promise<T>, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new Error(`${what} did not finish within ${TRANSFER_LIMIT_MS} ms`));
    }, TRANSFER_LIMIT_MS);
  });
  return Promise.race([work, limit]).finally(() => clearTimeout(timer));
}

interface Env {
  berth: BerthProcess;
  net: TestNet;
  pods: string[];
  cgroups: string[];
  pod(annotations?: Record<string, string>): Promise<{ id: string; ip: string; container: string }>;
}

async function env(t: ExecutionContext): Promise<Env> {
  const tn = testNet();
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n${tn.toml()}` });
  await berth.images.PullImage({ image: { image: image.ref } });
  const e: Env = {
    berth,
    net: tn,
    pods: [],
    cgroups: [],
    async pod(annotations = {}) {
      const config = podConfig({ log_directory: path.join(berth.dir, 'logs'), annotations });
      const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config });
      e.pods.push(pod_sandbox_id);
      const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      e.cgroups.push(JSON.parse(status.info.info).cgroup.path);
      const { container_id } = await berth.runtime.CreateContainer({
        pod_sandbox_id,
        config: containerConfig(image.ref, { command: ['/bin/sh', '-c', SLEEPER], log_path: 'c.log' }),
        sandbox_config: config,
      });
      await berth.runtime.StartContainer({ container_id });
      return { id: pod_sandbox_id, ip: status.status!.network!.ip, container: container_id };
    },
  };
  t.teardown(async () => {
    await berth.cleanup();
    const left = await hostLeftovers(berth.dir, e.cgroups, e.pods);
    for (const id of e.pods) if (!(await waitGone(vethOf(id)))) left.push(`veth ${vethOf(id)} still exists`);
    left.push(...(await networkLeftovers(tn, e.pods)));
    await removeTestNet(tn);
    if (left.length > 0) throw new Error(`test left host objects behind:\n${left.join('\n')}`);
  });
  return e;
}

/**
 * Into the pod: the node sends BYTES to `nc -l` in the pod, timed where they arrive (busybox nc half-closes at once,
 * so the node's socket says nothing about delivery): from the first byte read to the end, by /proc/uptime. Mbit/s.
 */
async function intoPod(e: Env, pod: { ip: string; container: string }): Promise<number> {
  const port = 5001;
  const receive = `nc -l -p ${port} | { dd bs=1 count=1 of=/dev/null 2>/dev/null; read a x < /proc/uptime; n=$(wc -c); read b x < /proc/uptime; echo "$a $b $n"; }`;
  const listener = e.berth.runtime.ExecSync({ container_id: pod.container, cmd: ['/bin/sh', '-c', receive], timeout: 60 });
  const socket = await eventually(
    () =>
      new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host: pod.ip, port }, () => resolve(s));
        s.once('error', reject);
      }),
    10_000,
    'nc in the pod',
  );
  socket.on('error', () => undefined);
  socket.on('data', () => undefined);
  socket.end(Buffer.alloc(BYTES));
  const r = await bounded(`sending ${BYTES} bytes into pod ${pod.ip}`, listener, () => socket.destroy());
  socket.destroy();
  const [from, to, rest] = r.stdout.toString().trim().split(/\s+/).map(Number) as [number, number, number];
  if (rest + 1 !== BYTES) throw new Error(`the pod read ${rest + 1} of ${BYTES} bytes: ${r.stdout.toString()} ${r.stderr.toString()}`);
  // /proc/uptime counts hundredths: a transfer shorter than that is "faster than we can tell".
  return to > from ? ((rest * 8) / (to - from)) / 1e6 : Infinity;
}

/** Out of the pod: busybox nc in the pod sends BYTES to a server on the node, timed from first to last byte. Mbit/s. */
async function outOfPod(e: Env, pod: { container: string }): Promise<number> {
  const port = await freePort();
  let first = 0n;
  let received = 0;
  let server: net.Server | undefined;
  const done = new Promise<number>((resolve) => {
    server = net.createServer((s) => {
      s.on('data', (b: Buffer) => {
        if (received === 0) first = process.hrtime.bigint();
        received += b.length;
        if (received >= BYTES) {
          const seconds = Number(process.hrtime.bigint() - first) / 1e9;
          s.destroy();
          server!.close();
          resolve((received * 8) / seconds / 1e6);
        }
      });
    });
    server.listen(port, e.net.gateway);
  });
  // Listening before the pod's nc connects.
  if (!server!.listening) await once(server!, 'listening');
  const sender = e.berth.runtime.ExecSync({
    container_id: pod.container,
    cmd: ['/bin/sh', '-c', `dd if=/dev/zero bs=65536 count=${BYTES / 65536 + 16} 2>/dev/null | nc ${e.net.gateway} ${port}`],
    timeout: 30,
  });
  const mbits = await bounded(`receiving ${BYTES} bytes from the pod (${received} so far)`, done, () => server?.close());
  await sender.catch(() => undefined);
  return mbits;
}

test('a pod annotated 8 Mbit/s each way measures at most 10 Mbit/s both ways, an unannotated one is much faster; the ifb goes with the pod', async (t) => {
  const e = await env(t);
  const limited = await e.pod({ [ING]: '8M', [EGR]: '8M' });
  const free = await e.pod();
  const ifb = `berthi${limited.id.slice(0, 9)}`;
  t.true(await linkExists(ifb), 'the limited pod has its ifb');
  // Its alias says whose it is: a berth on another bridge (doctor, or its start-time sweep) never takes it.
  t.deepEqual(await ownedIfbs(ifbOwnerTag(e.net.bridge)), [ifb]);
  t.deepEqual(await ownedIfbs(ifbOwnerTag(`${e.net.bridge}x`)), []);
  t.false(await linkExists(`berthi${free.id.slice(0, 9)}`), 'an unannotated pod has none');

  const limitedIn = await intoPod(e, limited);
  const limitedOut = await outOfPod(e, limited);
  const freeIn = await intoPod(e, free);
  const freeOut = await outOfPod(e, free);
  t.log(`Mbit/s: limited in ${limitedIn.toFixed(1)} out ${limitedOut.toFixed(1)}; unannotated in ${freeIn.toFixed(1)} out ${freeOut.toFixed(1)}`);
  t.true(limitedIn <= 10, `into the limited pod: ${limitedIn} Mbit/s`);
  t.true(limitedOut <= 10, `out of the limited pod: ${limitedOut} Mbit/s`);
  // Well above what a working limit allows; not too close to a loaded machine's loopback speed either.
  t.true(freeIn > 40, `into the unannotated pod: ${freeIn} Mbit/s`);
  t.true(freeOut > 40, `out of the unannotated pod: ${freeOut} Mbit/s`);

  await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: limited.id });
  t.false(await linkExists(ifb), 'StopPodSandbox deleted the ifb');
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: limited.id });
});

test('a bad bandwidth annotation is INVALID_ARGUMENT naming it, and leaves nothing', async (t) => {
  const e = await env(t);
  for (const [key, value] of [[ING, '10Xi'], [EGR, '-8M'], [EGR, '999'], [ING, '2P']]) {
    const err = await failure(e.berth.runtime.RunPodSandbox({ config: podConfig({ annotations: { [key]: value } }) }));
    t.is(err.code, grpc.status.INVALID_ARGUMENT);
    t.true(err.details.includes(`config.annotations["${key}"]`), err.details);
  }
  t.deepEqual((await e.berth.runtime.ListPodSandbox({})).items, []);
});

