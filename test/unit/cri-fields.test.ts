import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { apparmorRequest, containerConfigFromProto } from '../../src/cri/translate.js';
import { seccompRequest } from '../../src/container/seccomp.js';
import type { ContainerConfig__Output } from '../../src/gen/runtime/v1/ContainerConfig.js';

// CRI fields berth does not implement are refused by name rather than dropped: a pod never runs without what it
// asked for. (The 1.32 suite does not send them; kubelet may.)

function config(over: Record<string, unknown>): ContainerConfig__Output {
  return {
    metadata: { name: 'c', attempt: 0 }, image: { image: 'img' }, command: [], args: [], working_dir: '', envs: [], mounts: [], devices: [],
    labels: {}, annotations: {}, log_path: '', stdin: false, stdin_once: false, tty: false, linux: null, windows: null, CDI_devices: [],
    ...over,
  } as unknown as ContainerConfig__Output;
}

const mount = (over: Record<string, unknown>) => ({
  container_path: '/data', host_path: '/srv', readonly: false, selinux_relabel: false, propagation: 'PROPAGATION_PRIVATE',
  uidMappings: [], gidMappings: [], recursive_read_only: false, image: null, ...over,
});

function refused(t: import('ava').ExecutionContext, over: Record<string, unknown>, field: RegExp): void {
  const err = t.throws(() => containerConfigFromProto(config(over)), { instanceOf: BerthError });
  t.is(err?.kind, 'invalid_argument');
  t.regex(err?.message ?? '', field);
}

test('per-mount id mappings and ambient capabilities are INVALID_ARGUMENT naming the field', (t) => {
  refused(t, { mounts: [mount({}), mount({ uidMappings: [{ host_id: 100000, container_id: 0, length: 65536 }] })] }, /^config\.mounts\[1\]\.uidMappings/);
  refused(t, { mounts: [mount({ gidMappings: [{ host_id: 100000, container_id: 0, length: 65536 }] })] }, /^config\.mounts\[0\]\.uidMappings\/gidMappings/);
  refused(t, { linux: { security_context: { capabilities: { add_capabilities: [], drop_capabilities: [], add_ambient_capabilities: ['CAP_NET_RAW'] } } } },
    /^config\.linux\.security_context\.capabilities\.add_ambient_capabilities/);
  t.is(containerConfigFromProto(config({ mounts: [mount({})] })).mounts[0].hostPath, '/srv', 'a plain bind still passes');
});

test('AppArmor: the apparmor message wins over the deprecated string, Unconfined included; a localhost/ prefix is not doubled', (t) => {
  t.is(apparmorRequest({ profile_type: 'Localhost', localhost_ref: 'localhost/berth-deny-write' }, undefined), 'localhost/berth-deny-write');
  t.is(apparmorRequest({ profile_type: 'Localhost', localhost_ref: 'berth-deny-write' }, undefined), 'localhost/berth-deny-write');
  t.is(apparmorRequest({ profile_type: 'Unconfined' }, 'localhost/other'), 'unconfined');
  t.is(apparmorRequest({ profile_type: 'RuntimeDefault' }, 'unconfined'), 'runtime/default');
  t.is(apparmorRequest(null, 'localhost/legacy'), 'localhost/legacy');
  t.is(apparmorRequest({ profile_type: '' }, undefined), '');
});

test('seccomp: a Localhost ref in the legacy "localhost//abs/path" form is read as the absolute path; a relative one is refused', (t) => {
  t.deepEqual(seccompRequest({ profile_type: 'Localhost', localhost_ref: 'localhost//etc/berth/p.json' }, undefined, 'f'), { kind: 'localhost', path: '/etc/berth/p.json' });
  t.deepEqual(seccompRequest({ profile_type: 'Localhost', localhost_ref: '/etc/berth/p.json' }, undefined, 'f'), { kind: 'localhost', path: '/etc/berth/p.json' });
  const err = t.throws(() => seccompRequest({ profile_type: 'Localhost', localhost_ref: 'localhost/p.json' }, undefined, 'f'), { instanceOf: BerthError });
  t.regex(err?.message ?? '', /^f\.seccomp\.localhost_ref "localhost\/p\.json" must be an absolute path/);
});
