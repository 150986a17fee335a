import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { startBerth } from '../helpers/berth.js';
import { containerConfig, hostLeftovers, podConfig } from '../helpers/cri.js';

// containerd's rule: a privileged container only in a privileged pod. Otherwise a pod that never asked for the
// host (and that admission checked as unprivileged) could get every capability and the host's /dev through one
// of its containers.

test('a privileged container in a non-privileged pod is INVALID_ARGUMENT naming the field and the pod setting', async (t) => {
  const berth = await startBerth();
  const cgroups: string[] = [];
  t.teardown(async () => {
    await berth.cleanup();
    const left = await hostLeftovers(berth.dir, cgroups);
    if (left.length > 0) throw new Error(`left behind:\n${left.join('\n')}`);
  });
  const pod = podConfig();
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  const st = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
  cgroups.push(JSON.parse(st.info.info).cgroup.path);
  const err = (await t.throwsAsync(
    berth.runtime.CreateContainer({
      pod_sandbox_id,
      // The refusal comes before the image is looked up: none needs to be pulled.
      config: containerConfig('127.0.0.1:1/never/pulled:v1', { linux: { security_context: { privileged: true } } }),
      sandbox_config: pod,
    }),
  )) as unknown as grpc.ServiceError;
  t.is(err.code, grpc.status.INVALID_ARGUMENT, err.details);
  t.regex(err.details, /config\.linux\.security_context\.privileged/);
  t.regex(err.details, /pod sandbox \w+ is not privileged \(its linux\.security_context\.privileged is false\)/);
  t.deepEqual((await berth.runtime.ListContainers({})).containers, []);
});
