import test from 'ava';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { podEnv, PodEnv, Pod } from '../helpers/pod-env.js';

// Many clients at once, as kubelet and an operator's crictl are: concurrent starts get distinct addresses,
// concurrent stops and removes of one object all succeed (they are idempotent) and leave nothing, and one pod's slow
// stop never holds another pod's RPCs. Checked by completion, not by timing. podEnv's teardown checks for leftovers.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/concurrency', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

async function runningPod(e: PodEnv, name: string): Promise<{ pod: Pod; container: string }> {
  const pod = await e.pod({ metadata: { name, namespace: 'default', uid: `uid-${name}`, attempt: 0 } });
  const container = await e.container(pod, { command: ['sh', '-c', SLEEPER] });
  return { pod, container };
}

test('50 pods started at once all run, each with an address of its own', async (t) => {
  const e = await podEnv(t, { registryHost: registry.host, image: image.ref });
  const started = await Promise.all(Array.from({ length: 50 }, (_, i) => runningPod(e, `many-${i}`)));
  const ips = await Promise.all(started.map(async ({ pod }) => (await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id: pod.id })).status!.network!.ip));
  t.is(new Set(ips).size, 50, `distinct addresses: ${ips.join(' ')}`);
  const states = await Promise.all(started.map(async ({ container }) => (await e.berth.runtime.ContainerStatus({ container_id: container })).status!.state));
  t.deepEqual(new Set(states), new Set(['CONTAINER_RUNNING']));
  await Promise.all(started.map(async ({ pod }) => {
    await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: pod.id });
    await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
  }));
  t.deepEqual((await e.berth.runtime.ListPodSandbox({})).items, []);
});

test('concurrent Stop and Remove of one container and one pod from several clients all succeed, and nothing is left', async (t) => {
  const e = await podEnv(t, { registryHost: registry.host, image: image.ref });
  const { pod, container } = await runningPod(e, 'raced');
  const clients = 5;
  await Promise.all(Array.from({ length: clients }, () => e.berth.runtime.StopContainer({ container_id: container, timeout: 10 })));
  await Promise.all(Array.from({ length: clients }, () => e.berth.runtime.RemoveContainer({ container_id: container })));
  // Stop and remove of the pod raced against each other, as kubelet's retries and an operator's crictl may be.
  await Promise.all(Array.from({ length: clients }, (_, i) =>
    i % 2 === 0 ? e.berth.runtime.StopPodSandbox({ pod_sandbox_id: pod.id }) : e.berth.runtime.StopPodSandbox({ pod_sandbox_id: pod.id }).then(() => e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id })),
  ));
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id });
  t.deepEqual((await e.berth.runtime.ListContainers({})).containers, []);
  t.deepEqual((await e.berth.runtime.ListPodSandbox({})).items, []);
});

test('a container that ignores SIGTERM for its whole grace period holds no other pod: their RPCs finish while its stop waits', async (t) => {
  const e = await podEnv(t, { registryHost: registry.host, image: image.ref });
  const slowPod = await e.pod({ metadata: { name: 'slow', namespace: 'default', uid: 'uid-slow', attempt: 0 } });
  const stubborn = await e.container(slowPod, { command: ['sh', '-c', "trap '' TERM; while :; do sleep 1; done"] });
  let slowStopDone = false;
  const slowStop = e.berth.runtime.StopContainer({ container_id: stubborn, timeout: 30 }).then(() => (slowStopDone = true));
  // Everything another pod's life needs, start to end, while the slow stop is pending.
  const other = await runningPod(e, 'other');
  await e.berth.runtime.ListContainers({});
  await e.berth.runtime.ListPodSandbox({});
  await e.berth.runtime.ExecSync({ container_id: other.container, cmd: ['true'], timeout: 10 });
  await e.berth.runtime.StopContainer({ container_id: other.container, timeout: 10 });
  await e.berth.runtime.RemoveContainer({ container_id: other.container });
  await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: other.pod.id });
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: other.pod.id });
  t.false(slowStopDone, 'the other pod came and went while the stubborn container was still being stopped');
  // The slow pod's own status answers meanwhile too.
  t.is((await e.berth.runtime.ContainerStatus({ container_id: stubborn })).status?.state, 'CONTAINER_RUNNING');
  await slowStop;
  t.is((await e.berth.runtime.ContainerStatus({ container_id: stubborn })).status?.state, 'CONTAINER_EXITED');
  await e.berth.runtime.StopPodSandbox({ pod_sandbox_id: slowPod.id });
  await e.berth.runtime.RemovePodSandbox({ pod_sandbox_id: slowPod.id });
});
