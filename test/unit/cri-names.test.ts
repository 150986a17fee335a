import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { containerConfigFromProto, sandboxConfigFromProto } from '../../src/cri/translate.js';
import type { PodSandboxConfig__Output } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig__Output } from '../../src/gen/runtime/v1/ContainerConfig.js';

// Names and paths of a request that berth turns into records, log fields, metric labels and kernel strings:
// a `/`, a NUL or 10 KiB of text is refused with INVALID_ARGUMENT naming the field, before anything is stored.

const TEN_KIB = 'x'.repeat(10 * 1024);

function pod(over: { metadata?: Record<string, unknown>; hostname?: string; log_directory?: string } = {}): PodSandboxConfig__Output {
  return {
    metadata: { name: 'web-0', uid: '9f3c2a1e-0000-4000-8000-000000000001', namespace: 'kube-system', attempt: 0, ...over.metadata },
    hostname: over.hostname ?? 'web-0',
    log_directory: over.log_directory ?? '/var/log/pods/kube-system_web-0_9f3c',
    port_mappings: [],
    labels: {},
    annotations: {},
    linux: { cgroup_parent: '', sysctls: {}, security_context: {} },
  } as unknown as PodSandboxConfig__Output;
}

function container(over: Partial<Record<keyof ContainerConfig__Output, unknown>> = {}): ContainerConfig__Output {
  return {
    metadata: { name: 'app', attempt: 0 },
    image: { image: 'img' },
    command: [], args: [], working_dir: '', envs: [], mounts: [], devices: [], CDI_devices: [], labels: {}, annotations: {},
    log_path: 'app/0.log', stdin: false, stdin_once: false, tty: false,
    linux: { security_context: {} },
    ...over,
  } as unknown as ContainerConfig__Output;
}

function refused(t: import('ava').ExecutionContext, run: () => unknown, field: string): void {
  const err = t.throws(run, { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, 'invalid_argument', err.message);
  t.true(err.message.startsWith(`${field} `), `"${err.message.slice(0, 200)}" should name ${field}`);
  t.true(err.message.length < 400, 'the message does not echo 10 KiB back');
}

test("kubelet's names, namespaces, uids, hostnames and paths are accepted as they are", (t) => {
  const p = sandboxConfigFromProto(pod(), '');
  t.is(p.metadata.name, 'web-0');
  t.is(p.metadata.namespace, 'kube-system');
  t.is(p.logDirectory, '/var/log/pods/kube-system_web-0_9f3c');
  const long = 'a'.repeat(253);
  t.is(sandboxConfigFromProto(pod({ metadata: { name: long } }), '').metadata.name, long, 'a 253-byte DNS subdomain fits');
  const c = containerConfigFromProto(container({ args: ['sh', '-c', TEN_KIB], working_dir: '/srv' }));
  t.is(c.metadata.name, 'app');
  t.is(c.args[2].length, TEN_KIB.length, 'a long argument (a shell script) is not a name');
});

for (const [what, value] of [['a "/"', 'a/b'], ['a NUL', 'a\0b'], ['a newline', 'a\nb'], ['10 KiB of text', TEN_KIB]] as const) {
  test(`pod metadata name, namespace and uid and the hostname with ${what} are INVALID_ARGUMENT naming the field`, (t) => {
    refused(t, () => sandboxConfigFromProto(pod({ metadata: { name: value } }), ''), 'config.metadata.name');
    refused(t, () => sandboxConfigFromProto(pod({ metadata: { namespace: value } }), ''), 'config.metadata.namespace');
    refused(t, () => sandboxConfigFromProto(pod({ metadata: { uid: value } }), ''), 'config.metadata.uid');
    refused(t, () => sandboxConfigFromProto(pod({ hostname: value }), ''), 'config.hostname');
  });

  test(`a container name with ${what} is INVALID_ARGUMENT naming config.metadata.name`, (t) => {
    refused(t, () => containerConfigFromProto(container({ metadata: { name: value, attempt: 0 } })), 'config.metadata.name');
  });
}

test('paths and exec words with a NUL are INVALID_ARGUMENT naming the field', (t) => {
  refused(t, () => sandboxConfigFromProto(pod({ log_directory: '/var/log/pods/a\0b' }), ''), 'config.log_directory');
  refused(t, () => containerConfigFromProto(container({ log_path: 'app\0/0.log' })), 'config.log_path');
  refused(t, () => containerConfigFromProto(container({ working_dir: '/srv\0' })), 'config.working_dir');
  refused(t, () => containerConfigFromProto(container({ command: ['/bin/sh\0-c'] })), 'config.command[0]');
  refused(t, () => containerConfigFromProto(container({ args: ['ok', 'x\0y'] })), 'config.args[1]');
  const mount = { container_path: '/data', host_path: '/srv/data', readonly: false, selinux_relabel: false, propagation: 'PROPAGATION_PRIVATE', mount_options: [] };
  refused(t, () => containerConfigFromProto(container({ mounts: [mount, { ...mount, host_path: '/srv\0/x' }] })), 'config.mounts[1].host_path');
  refused(t, () => containerConfigFromProto(container({ mounts: [{ ...mount, container_path: '/data\0' }] })), 'config.mounts[0].container_path');
  const device = { container_path: '/dev/x', host_path: '/dev/null', permissions: 'rw' };
  refused(t, () => containerConfigFromProto(container({ devices: [{ ...device, host_path: '/dev/null\0' }] })), 'config.devices[0].host_path');
});

test('a path longer than PATH_MAX is INVALID_ARGUMENT naming the field', (t) => {
  const long = '/' + 'd/'.repeat(2100);
  refused(t, () => sandboxConfigFromProto(pod({ log_directory: long }), ''), 'config.log_directory');
  refused(t, () => containerConfigFromProto(container({ working_dir: long })), 'config.working_dir');
});

test('labels and annotations over 256 KiB in all, or a key with a NUL, are INVALID_ARGUMENT naming the map', (t) => {
  const fits = { 'kubectl.kubernetes.io/last-applied-configuration': 'x'.repeat(200 * 1024) };
  t.deepEqual(sandboxConfigFromProto({ ...pod(), annotations: fits } as PodSandboxConfig__Output, '').annotations, fits);
  const over = { a: 'x'.repeat(128 * 1024), b: 'x'.repeat(128 * 1024) };
  refused(t, () => sandboxConfigFromProto({ ...pod(), annotations: over } as PodSandboxConfig__Output, ''), 'config.annotations');
  refused(t, () => sandboxConfigFromProto({ ...pod(), labels: over } as PodSandboxConfig__Output, ''), 'config.labels');
  refused(t, () => containerConfigFromProto(container({ annotations: over })), 'config.annotations');
  refused(t, () => containerConfigFromProto(container({ labels: { 'a\0b': 'v' } })), 'config.labels');
});
