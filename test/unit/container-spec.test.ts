import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { buildSpec, DEFAULT_MASKED_PATHS, mergeCommand, mergeEnv, SpecInputs } from '../../src/container/spec.js';
import { capabilitySet, DEFAULT_CAPABILITIES } from '../../src/container/capabilities.js';
import { parseGroup, parsePasswd, resolveUser } from '../../src/container/user.js';
import { ContainerConfig } from '../../src/container/types.js';
import { SandboxRecord } from '../../src/sandbox/types.js';

const image = { config: { Entrypoint: ['/entry'], Cmd: ['default-arg'], Env: ['PATH=/img/bin', 'A=image'], WorkingDir: '/work' } };

test('command replaces the entrypoint and drops the image Cmd', (t) => {
  t.deepEqual(mergeCommand({ command: ['/bin/x'], args: [] }, image), ['/bin/x']);
});
test('args alone replace the image Cmd and keep the entrypoint', (t) => {
  t.deepEqual(mergeCommand({ command: [], args: ['a', 'b'] }, image), ['/entry', 'a', 'b']);
});
test('neither command nor args: entrypoint plus Cmd', (t) => {
  t.deepEqual(mergeCommand({ command: [], args: [] }, image), ['/entry', 'default-arg']);
});
test('no command anywhere is an invalid_argument', (t) => {
  const err = t.throws(() => mergeCommand({ command: [], args: [] }, {}), { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, 'invalid_argument');
});
test('config envs override image envs by key; PATH and HOSTNAME default', (t) => {
  const env = mergeEnv({ envs: [{ key: 'A', value: 'config' }, { key: 'B', value: 'x=y' }] }, image, 'pod1');
  t.deepEqual(env, ['PATH=/img/bin', 'HOSTNAME=pod1', 'A=config', 'B=x=y']);
  t.true(mergeEnv({ envs: [] }, {}, '').some((e) => e.startsWith('PATH=/usr/local/sbin')));
});

const passwd = parsePasswd('root:x:0:0:root:/root:/bin/sh\nberthuser:x:1000:1000::/home/berthuser:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n');
const groups = parseGroup('root:x:0:\nberthgroup:x:1000:\nberthextra:x:2000:berthuser\nother:x:3000:root,berthuser\n');

// The groups list is every group the process holds, primary gid first, as kubelet's ContainerUser and `id -G` show it.
test('image user by name gets its primary group and the groups it is a member of', (t) => {
  t.deepEqual(resolveUser({ supplementalGroups: [], imageUser: 'berthuser' }, passwd, groups), { uid: 1000, gid: 1000, additionalGids: [1000, 2000, 3000], home: '/home/berthuser' });
});
test('RunAsUser wins over the image user; RunAsGroup over the passwd group; supplemental groups added', (t) => {
  const u = resolveUser({ runAsUser: 1000, runAsGroup: 50, supplementalGroups: [7], imageUser: 'nobody' }, passwd, groups);
  t.deepEqual([u.uid, u.gid, u.additionalGids], [1000, 50, [50, 7, 2000, 3000]]);
});
test('a numeric uid absent from passwd runs with gid 0', (t) => {
  const u = resolveUser({ runAsUser: 4242, supplementalGroups: [] }, passwd, groups);
  t.deepEqual([u.uid, u.gid, u.additionalGids], [4242, 0, [0]]);
});
test('SupplementalGroupsPolicy Merge (also when absent): the image /etc/group memberships join the pod groups', (t) => {
  const asked = { runAsUser: 1000, supplementalGroups: [1234] };
  for (const groupsPolicy of ['Merge', undefined] as const) {
    t.deepEqual(resolveUser({ ...asked, groupsPolicy }, passwd, groups).additionalGids, [1000, 1234, 2000, 3000]);
  }
});
test('SupplementalGroupsPolicy Strict: only the primary group and the pod groups, the image /etc/group memberships ignored', (t) => {
  const u = resolveUser({ runAsUser: 1000, supplementalGroups: [1234, 2000], groupsPolicy: 'Strict' }, passwd, groups);
  t.deepEqual([u.uid, u.gid, u.additionalGids], [1000, 1000, [1000, 1234, 2000]], 'a pod group the image also lists is still held');
  const byName = resolveUser({ supplementalGroups: [], imageUser: 'berthuser', groupsPolicy: 'Strict' }, passwd, groups);
  t.deepEqual([byName.uid, byName.gid, byName.additionalGids], [1000, 1000, [1000]]);
  const groupByName = resolveUser({ supplementalGroups: [], imageUser: '1000:berthextra', groupsPolicy: 'Strict' }, passwd, groups);
  t.deepEqual([groupByName.gid, groupByName.additionalGids], [2000, [2000]], 'the image still names the primary group');
});
test('a supplemental group equal to the primary group is listed once', (t) => {
  const u = resolveUser({ runAsUser: 1000, runAsGroup: 2000, supplementalGroups: [2000, 5], groupsPolicy: 'Strict' }, passwd, groups);
  t.deepEqual(u.additionalGids, [2000, 5]);
});
test('uid:group image user resolves the group by name', (t) => {
  const u = resolveUser({ supplementalGroups: [], imageUser: '1000:berthextra' }, passwd, groups);
  t.deepEqual([u.uid, u.gid], [1000, 2000]);
});
test('an unknown username is an invalid_argument naming the field', (t) => {
  const err = t.throws(() => resolveUser({ runAsUsername: 'ghost', supplementalGroups: [] }, passwd, groups)) as BerthError;
  t.is(err.kind, 'invalid_argument');
  t.regex(err.message, /run_as_username/);
});

test('capabilities: Docker default set, add/drop by name, ALL, privileged', (t) => {
  t.deepEqual(capabilitySet({ privileged: false, add: [], drop: [] }).sort(), [...DEFAULT_CAPABILITIES].sort());
  const added = capabilitySet({ privileged: false, add: ['sys_admin'], drop: ['NET_RAW', 'CAP_KILL'] });
  t.true(added.includes('CAP_SYS_ADMIN'));
  t.false(added.includes('CAP_NET_RAW'));
  t.false(added.includes('CAP_KILL'));
  t.deepEqual(capabilitySet({ privileged: false, add: [], drop: ['ALL'] }), []);
  t.deepEqual(capabilitySet({ privileged: false, add: ['CHOWN'], drop: ['ALL'] }), ['CAP_CHOWN']);
  t.true(capabilitySet({ privileged: false, add: ['ALL'], drop: [] }).includes('CAP_SYS_MODULE'));
  t.true(capabilitySet({ privileged: true, add: [], drop: ['ALL'] }).includes('CAP_SYS_ADMIN'));
  const err = t.throws(() => capabilitySet({ privileged: false, add: ['CAP_FLY'], drop: [] })) as BerthError;
  t.regex(err.message, /add_capabilities.*CAP_FLY/);
});

function inputs(config: Partial<ContainerConfig> = {}, sandbox: Partial<SandboxRecord> = {}): SpecInputs {
  const base: ContainerConfig = {
    metadata: { name: 'c', attempt: 0 }, image: 'img', command: [], args: [], workingDir: '', envs: [], mounts: [], devices: [],
    labels: {}, annotations: {}, logPath: '', stdin: false, stdinOnce: false, tty: false, resources: { hugepageLimits: [], unified: {} },
    security: {
      capabilities: { add: [], drop: [] }, privileged: false, readonlyRootfs: false, supplementalGroups: [], noNewPrivs: false,
      maskedPaths: [], readonlyPaths: [], namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' },
      seccomp: { kind: 'unconfined' }, apparmor: '',
    },
  };
  const pod: SandboxRecord = {
    id: 'pod', state: 'READY', createdAt: 0, additionalIps: [], filesDir: '/run/pod/files', shmPath: '/run/pod/shm',
    cgroup: { path: '/p', created: [] },
    namespacePaths: { network: '/run/pod/ns/net', ipc: '/run/pod/ns/ipc', uts: '/run/pod/ns/uts' },
    config: {
      metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 }, hostname: 'p', logDirectory: '', portMappings: [], labels: {},
      annotations: {}, cgroupParent: '', namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' }, privileged: false, sysctls: {}, runtimeHandler: '',
    },
    ...sandbox,
  };
  return {
    id: 'c1', config: { ...base, ...config }, image, sandbox: pod, user: { uid: 0, gid: 0, additionalGids: [], home: '/' }, bundle: '/b',
    rootfs: '/b/rootfs', lowerDirs: ['/l2', '/l1'], upperDir: '/b/upper', workDir: '/b/work', logPath: '/log', cgroupProcs: ['/cg/cgroup.procs'],
    rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26,
  };
}

test('the spec joins the pod namespaces and makes private pid, mount and cgroup namespaces', (t) => {
  const spec = buildSpec(inputs());
  t.deepEqual(spec.namespaces, [
    { type: 'mount' }, { type: 'cgroup' }, { type: 'network', path: '/run/pod/ns/net' }, { type: 'ipc', path: '/run/pod/ns/ipc' },
    { type: 'uts', path: '/run/pod/ns/uts' }, { type: 'pid' },
  ]);
  t.deepEqual(spec.maskedPaths, DEFAULT_MASKED_PATHS);
  t.deepEqual(spec.process.args, ['/entry', 'default-arg']);
  t.is(spec.process.cwd, '/work');
  t.deepEqual(spec.overlay, { lower: ['/l2', '/l1'], upper: '/b/upper', work: '/b/work' });
  t.true(spec.mounts.some((m) => m.destination === '/dev/shm' && m.source === '/run/pod/shm'));
  t.true(spec.mounts.some((m) => m.destination === '/etc/resolv.conf' && m.source === '/run/pod/files/resolv.conf'));
});

test('mount propagation and read-only bind mounts become shim options; a user /etc/hosts replaces the pod one', (t) => {
  const spec = buildSpec(inputs({
    mounts: [
      { containerPath: '/data', hostPath: '/srv', readonly: true, selinuxRelabel: false, propagation: 'HOST_TO_CONTAINER' },
      { containerPath: '/etc/hosts', hostPath: '/k/hosts', readonly: false, selinuxRelabel: false, propagation: 'BIDIRECTIONAL' },
    ],
  }));
  t.deepEqual(spec.mounts.find((m) => m.destination === '/data')?.options, ['rbind', 'rslave', 'ro']);
  t.deepEqual(spec.mounts.filter((m) => m.destination === '/etc/hosts').map((m) => m.source), ['/k/hosts']);
});

test('a recursive read-only bind carries option "rro" after rprivate and ro; other binds, and records without the field, none', (t) => {
  const spec = buildSpec(inputs({
    mounts: [
      { containerPath: '/data', hostPath: '/srv', readonly: true, selinuxRelabel: false, propagation: 'PRIVATE', recursiveReadOnly: true },
      { containerPath: '/plain', hostPath: '/srv', readonly: true, selinuxRelabel: false, propagation: 'PRIVATE', recursiveReadOnly: false },
      { containerPath: '/old', hostPath: '/srv', readonly: true, selinuxRelabel: false, propagation: 'PRIVATE' },
    ],
  }));
  const options = (dest: string) => spec.mounts.find((m) => m.destination === dest)?.options;
  t.deepEqual(options('/data'), ['rbind', 'rprivate', 'ro', 'rro']);
  t.deepEqual(options('/plain'), ['rbind', 'rprivate', 'ro']);
  t.deepEqual(options('/old'), ['rbind', 'rprivate', 'ro']);
  t.deepEqual(spec.mounts.filter((m) => m.options.includes('rro')).map((m) => m.destination), ['/data']);
});

test('host namespaces are not joined or created; privileged drops masks and gets all capabilities', (t) => {
  const base = inputs();
  const spec = buildSpec(inputs({
    security: { ...base.config.security, privileged: true, namespaces: { network: 'NODE', pid: 'NODE', ipc: 'NODE' } },
  }, { namespacePaths: {}, config: { ...base.sandbox.config, namespaces: { network: 'NODE', pid: 'NODE', ipc: 'NODE' } } }));
  t.deepEqual(spec.namespaces.map((n) => n.type), ['mount', 'cgroup']);
  t.deepEqual(spec.maskedPaths, []);
  t.deepEqual(spec.readonlyPaths, []);
  t.true(spec.process.capabilities.bounding.includes('CAP_SYS_ADMIN'));
});

test('a container in a host-network pod gets the host network even when its own option says POD', (t) => {
  const base = inputs();
  const spec = buildSpec(inputs({}, { namespacePaths: {}, config: { ...base.sandbox.config, namespaces: { network: 'NODE', pid: 'CONTAINER', ipc: 'NODE' } } }));
  t.deepEqual(spec.namespaces.map((n) => n.type), ['mount', 'cgroup', 'pid']);
});

test('a relative container path is refused naming the mount', (t) => {
  const err = t.throws(() => buildSpec(inputs({ mounts: [{ containerPath: 'rel', hostPath: '/x', readonly: false, selinuxRelabel: false, propagation: 'PRIVATE' }] }))) as BerthError;
  t.regex(err.message, /mounts\[0\]\.container_path/);
});

const lxcfsView = { dir: '/var/lib/lxcfs', procFiles: ['meminfo', 'cpuinfo', 'stat', 'uptime', 'loadavg', 'diskstats', 'swaps'] };

test('lxcfs: each file lxcfs offers is a read-only bind onto /proc/<file>, after the /proc mount and before the container mounts', (t) => {
  const spec = buildSpec({
    ...inputs({ mounts: [{ containerPath: '/data', hostPath: '/srv', readonly: false, selinuxRelabel: false, propagation: 'PRIVATE' }] }),
    lxcfs: lxcfsView,
  });
  const at = (destination: string) => spec.mounts.findIndex((m) => m.destination === destination);
  const binds = spec.mounts.filter((m) => m.source.startsWith('/var/lib/lxcfs/'));
  t.deepEqual(binds.map((m) => [m.destination, m.source]), lxcfsView.procFiles.map((f) => [`/proc/${f}`, `/var/lib/lxcfs/proc/${f}`]));
  for (const m of binds) t.deepEqual([m.type, m.options], ['bind', ['bind', 'rprivate', 'ro', 'nosuid', 'nodev', 'noexec']]);
  t.true(at('/proc') < at('/proc/meminfo'));
  t.true(at('/proc/swaps') < at('/data'));
  // The masked and read-only paths are applied after every mount: they still cover /proc.
  t.deepEqual(spec.maskedPaths, DEFAULT_MASKED_PATHS);
  t.true(spec.readonlyPaths.includes('/proc/sys'));
});

test('lxcfs: only the files lxcfs has are bound; a container mount onto /proc/meminfo is left to win', (t) => {
  const spec = buildSpec({
    ...inputs({ mounts: [{ containerPath: '/proc/meminfo', hostPath: '/srv/meminfo', readonly: true, selinuxRelabel: false, propagation: 'PRIVATE' }] }),
    lxcfs: { dir: '/l', procFiles: ['meminfo', 'uptime'] },
  });
  t.deepEqual(spec.mounts.filter((m) => m.destination.startsWith('/proc/')).map((m) => m.source), ['/l/proc/uptime', '/srv/meminfo']);
});

test('lxcfs: a privileged container gets no lxcfs bind even when given a view; without a view nobody does', (t) => {
  const base = inputs();
  const privileged = buildSpec({ ...base, config: { ...base.config, security: { ...base.config.security, privileged: true } }, sandbox: { ...base.sandbox, config: { ...base.sandbox.config, privileged: true } }, lxcfs: lxcfsView });
  t.false(privileged.mounts.some((m) => m.destination.startsWith('/proc/')));
  t.false(buildSpec(base).mounts.some((m) => m.destination.startsWith('/proc/')));
});
