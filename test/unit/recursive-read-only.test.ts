// Recursive read-only mounts (CRI Mount.recursive_read_only): what the CRI layer accepts and refuses, and the kernel
// probe Status declares the feature from (the shim option: container-spec.test.ts).
import test from 'ava';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { BerthError } from '../../src/errors.js';
import { containerConfigFromProto } from '../../src/cri/translate.js';
import type { ContainerConfig__Output } from '../../src/gen/runtime/v1/ContainerConfig.js';
import type { Mount__Output } from '../../src/gen/runtime/v1/Mount.js';
import { mountSetattrSupported } from '../../src/kernel/libc.js';

function protoMount(over: Partial<Mount__Output>): Mount__Output {
  return {
    container_path: '/data', host_path: '/srv/data', readonly: true, selinux_relabel: false, propagation: 'PROPAGATION_PRIVATE',
    uidMappings: [], gidMappings: [], recursive_read_only: true, image: null,
    ...over,
  } as Mount__Output;
}

function protoConfig(mounts: Mount__Output[]): ContainerConfig__Output {
  return {
    metadata: { name: 'c', attempt: 0 }, image: { image: 'img' }, command: [], args: [], working_dir: '', envs: [], mounts, devices: [],
    labels: {}, annotations: {}, log_path: '', stdin: false, stdin_once: false, tty: false, linux: null, windows: null, CDI_devices: [],
  } as unknown as ContainerConfig__Output;
}

test('a read-only private mount may be recursive read-only; the flag is kept, and is false unless asked', (t) => {
  const config = containerConfigFromProto(protoConfig([protoMount({}), protoMount({ container_path: '/plain', recursive_read_only: false })]));
  t.deepEqual(config.mounts.map((m) => [m.containerPath, m.readonly, m.propagation, m.recursiveReadOnly]), [
    ['/data', true, 'PRIVATE', true],
    ['/plain', true, 'PRIVATE', false],
  ]);
});

test('recursive_read_only with readonly false or a propagating mount is INVALID_ARGUMENT naming config.mounts[i].recursive_read_only', (t) => {
  const cases: [Partial<Mount__Output>, RegExp][] = [
    [{ readonly: false }, /readonly: true/],
    [{ propagation: 'PROPAGATION_HOST_TO_CONTAINER' }, /PROPAGATION_PRIVATE, not PROPAGATION_HOST_TO_CONTAINER/],
    [{ propagation: 'PROPAGATION_BIDIRECTIONAL' }, /PROPAGATION_PRIVATE, not PROPAGATION_BIDIRECTIONAL/],
    [{ readonly: false, propagation: 'PROPAGATION_BIDIRECTIONAL' }, /readonly: true/],
  ];
  for (const [over, why] of cases) {
    const mounts = [protoMount({ container_path: '/ok' }), protoMount(over)];
    const err = t.throws(() => containerConfigFromProto(protoConfig(mounts)), { instanceOf: BerthError });
    t.is(err?.kind, 'invalid_argument', JSON.stringify(over));
    t.regex(err?.message ?? '', /^config\.mounts\[1\]\.recursive_read_only /);
    t.regex(err?.message ?? '', why);
  }
  // The same settings without recursive_read_only are fine.
  t.notThrows(() => containerConfigFromProto(protoConfig([protoMount({ readonly: false, propagation: 'PROPAGATION_BIDIRECTIONAL', recursive_read_only: false })])));
});

/** mountinfo lines by mount id: other tests on the host add and remove mounts meanwhile, but never change one. */
function mountsById(): Map<string, string> {
  return new Map(readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map((l) => [l.split(' ')[0]!, l]));
}

test('the mount_setattr probe answers as the running kernel (5.12+) does, and changes no mount', (t) => {
  const [major, minor] = os.release().split('.').map(Number);
  const before = mountsById();
  t.is(mountSetattrSupported(), major > 5 || (major === 5 && minor >= 12));
  const after = mountsById();
  const changed = [...before].filter(([id, line]) => after.has(id) && after.get(id) !== line);
  t.deepEqual(changed, []);
});
