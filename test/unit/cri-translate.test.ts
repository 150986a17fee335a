import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { containerConfigFromProto, idMappingsFromProto, sandboxConfigFromProto } from '../../src/cri/translate.js';
import type { PodSandboxConfig__Output } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig__Output } from '../../src/gen/runtime/v1/ContainerConfig.js';

// The CRI request → domain translation of user-namespace mappings and the supplemental groups policy: what kubelet
// and the Kubernetes 1.32 CRI suite send, and each refusal naming its field.

const USERNS = 'config.linux.security_context.namespace_options.userns_options';
type Mapping = { host_id: number; container_id: number; length: number };
const KUBELET_RANGE: Mapping = { container_id: 0, host_id: 65536 * 3, length: 65536 };

function pod(security: Record<string, unknown>): PodSandboxConfig__Output {
  return {
    metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 },
    hostname: '',
    log_directory: '',
    port_mappings: [],
    labels: {},
    annotations: {},
    linux: { cgroup_parent: '', sysctls: {}, security_context: security },
  } as unknown as PodSandboxConfig__Output;
}

function container(security: Record<string, unknown>): ContainerConfig__Output {
  return {
    metadata: { name: 'c', attempt: 0 },
    image: { image: 'img' },
    command: [], args: [], working_dir: '', envs: [], mounts: [], devices: [], CDI_devices: [], labels: {}, annotations: {},
    log_path: '', stdin: false, stdin_once: false, tty: false,
    linux: { security_context: security },
  } as unknown as ContainerConfig__Output;
}

const withUserns = (uids: Mapping[], gids: Mapping[] = [KUBELET_RANGE]) => ({ namespace_options: { userns_options: { mode: 'POD', uids, gids } } });

function refused(t: import('ava').ExecutionContext, run: () => unknown, field: string): void {
  const err = t.throws(run, { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, 'invalid_argument', err.message);
  t.true(err.message.startsWith(field), `"${err.message}" should start with ${field}`);
}

test('userns mode POD with one uid and one gid range mapping container id 0 is accepted, for the pod and a container', (t) => {
  const expected = { uidMappings: [{ containerID: 0, hostID: 196608, size: 65536 }], gidMappings: [{ containerID: 0, hostID: 196608, size: 65536 }] };
  t.deepEqual(sandboxConfigFromProto(pod(withUserns([KUBELET_RANGE])), '').namespaces.userns, expected);
  t.deepEqual(containerConfigFromProto(container(withUserns([KUBELET_RANGE]))).security.namespaces.userns, expected);
  t.deepEqual(idMappingsFromProto([{ container_id: 0, host_id: 1, length: 2 ** 32 - 1 }], 'm'), [{ containerID: 0, hostID: 1, size: 2 ** 32 - 1 }], 'a range ending exactly at 2^32 fits');
});

test('userns: more than one mapping is refused (the suite sends two), naming the list', (t) => {
  const disjoint = [KUBELET_RANGE, { container_id: 65536, host_id: 65536 * 5, length: 10 }];
  refused(t, () => sandboxConfigFromProto(pod(withUserns(disjoint)), ''), `${USERNS}.uids has 2 mappings`);
  refused(t, () => sandboxConfigFromProto(pod(withUserns([KUBELET_RANGE], disjoint)), ''), `${USERNS}.gids has 2 mappings`);
  refused(t, () => sandboxConfigFromProto(pod(withUserns([])), ''), `${USERNS}.uids has 0 mappings`);
  // The suite's own case: both container_id 0, host 1000 and 2000, length 100000.
  const suite = [{ container_id: 0, host_id: 1000, length: 100000 }, { container_id: 0, host_id: 2000, length: 100000 }];
  refused(t, () => sandboxConfigFromProto(pod(withUserns(suite, suite)), ''), `${USERNS}.uids[1].host_id`);
});

test('userns: container id 0 not mapped is refused naming container_id', (t) => {
  const mapping = [{ container_id: 1, host_id: 1000, length: 100000 }];
  refused(t, () => sandboxConfigFromProto(pod(withUserns(mapping, mapping)), ''), `${USERNS}.uids[0].container_id`);
  refused(t, () => sandboxConfigFromProto(pod(withUserns([KUBELET_RANGE], mapping)), ''), `${USERNS}.gids[0].container_id`);
});

test('userns: a zero length is refused naming the length', (t) => {
  refused(t, () => sandboxConfigFromProto(pod(withUserns([{ ...KUBELET_RANGE, length: 0 }])), ''), `${USERNS}.uids[0].length`);
  refused(t, () => containerConfigFromProto(container(withUserns([KUBELET_RANGE], [{ ...KUBELET_RANGE, length: 0 }]))), `${USERNS}.gids[0].length`);
});

test('userns: a range overflowing 2^32 on the host or the container side is refused naming the length', (t) => {
  refused(t, () => sandboxConfigFromProto(pod(withUserns([{ container_id: 0, host_id: 2 ** 32 - 10, length: 11 }])), ''), `${USERNS}.uids[0].length`);
  refused(t, () => idMappingsFromProto([{ container_id: 2 ** 32 - 1, host_id: 0, length: 2 }], 'x.uids'), 'x.uids[0].length');
});

test('userns: overlapping host ranges are refused naming the later mapping; overlapping container ranges too', (t) => {
  const hostOverlap = [KUBELET_RANGE, { container_id: 70000, host_id: 65536 * 3 + 65535, length: 5 }];
  refused(t, () => idMappingsFromProto(hostOverlap, `${USERNS}.uids`), `${USERNS}.uids[1].host_id`);
  const containerOverlap = [KUBELET_RANGE, { container_id: 65535, host_id: 65536 * 9, length: 5 }];
  refused(t, () => idMappingsFromProto(containerOverlap, `${USERNS}.gids`), `${USERNS}.gids[1].container_id`);
  const adjacent = [KUBELET_RANGE, { container_id: 65536, host_id: 65536 * 4, length: 5 }];
  // Adjacent ranges do not overlap: only the count refuses them.
  refused(t, () => idMappingsFromProto(adjacent, 'm'), 'm has 2 mappings');
});

test('userns mode NODE, or no userns options, is the host user namespace; CONTAINER and TARGET are refused', (t) => {
  t.is(sandboxConfigFromProto(pod({ namespace_options: { userns_options: { mode: 'NODE', uids: [], gids: [] } } }), '').namespaces.userns, undefined);
  t.is(sandboxConfigFromProto(pod({}), '').namespaces.userns, undefined);
  for (const mode of ['CONTAINER', 'TARGET']) {
    refused(t, () => sandboxConfigFromProto(pod({ namespace_options: { userns_options: { mode, uids: [], gids: [] } } }), ''), `${USERNS}.mode`);
  }
});

test('supplemental_groups_policy: Merge by default, Strict kept, on the pod and the container; an unknown value is refused', (t) => {
  t.is(sandboxConfigFromProto(pod({}), '').supplementalGroupsPolicy, 'Merge');
  t.is(sandboxConfigFromProto(pod({ supplemental_groups_policy: 'Strict' }), '').supplementalGroupsPolicy, 'Strict');
  t.is(containerConfigFromProto(container({})).security.supplementalGroupsPolicy, 'Merge');
  t.is(containerConfigFromProto(container({ supplemental_groups_policy: 'Merge' })).security.supplementalGroupsPolicy, 'Merge');
  t.is(containerConfigFromProto(container({ supplemental_groups_policy: 'Strict' })).security.supplementalGroupsPolicy, 'Strict');
  const field = 'config.linux.security_context.supplemental_groups_policy';
  refused(t, () => sandboxConfigFromProto(pod({ supplemental_groups_policy: 2 }), ''), field);
  refused(t, () => containerConfigFromProto(container({ supplemental_groups_policy: 7 })), field);
});
