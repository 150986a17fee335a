// CDI: spec files (JSON and YAML) from spec directories, the edits of requested devices (nodes with their host
// numbers, mounts, env), hooks refused, unknown devices and bad files reported naming the field and the file;
// and how buildSpec applies the result.
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { loadCdiRegistry, parseCdiSpec, parseQualifiedName, resolveCdiDevices, type StatNode } from '../../src/container/cdi.js';
import { DEFAULT_DEVICE_RULES } from '../../src/container/devices.js';
import { buildSpec, type SpecInputs } from '../../src/container/spec.js';
import type { ContainerConfig } from '../../src/container/types.js';
import type { SandboxRecord } from '../../src/sandbox/types.js';

const TMP = mkdtempSync(path.join(os.tmpdir(), 'berth-cdi-unit-'));
test.after.always(() => rmSync(TMP, { recursive: true, force: true }));

let dirCount = 0;
function specDirs(files: Record<string, string>[]): string[] {
  return files.map((entries) => {
    const dir = path.join(TMP, `d${dirCount++}`);
    mkdirSync(dir);
    for (const [name, text] of Object.entries(entries)) writeFileSync(path.join(dir, name), text);
    return dir;
  });
}

// A fake host: fuse 10:229 and a block device; nothing else exists.
const hostNodes: StatNode = async (p) => {
  if (p === '/dev/fuse') return { type: 'c', major: 10, minor: 229, mode: 0o600 };
  if (p === '/dev/vdb') return { type: 'b', major: 254, minor: 16, mode: 0o660 };
  if (p === '/etc/passwd') return { type: 'other', major: 0, minor: 0, mode: 0o644 };
  return undefined;
};

const GPU_YAML = `cdiVersion: "0.6.0"
kind: vendor.com/gpu
containerEdits:
  env: ["GPU_COMMON=1"]
  mounts:
    - hostPath: /usr/lib/vendor
      containerPath: /usr/lib/vendor
      options: [ro, nosuid]
devices:
  - name: "0"
    containerEdits:
      env: ["GPU=0"]
      deviceNodes:
        - path: /dev/gpu0
          hostPath: /dev/fuse
          permissions: r
  - name: all
    containerEdits:
      deviceNodes:
        - path: /dev/fuse
        - path: /dev/vdb
          permissions: rw
`;

const FPGA_JSON = JSON.stringify({
  cdiVersion: '0.5.0',
  kind: 'example.org/fpga',
  devices: [
    { name: 'f1', containerEdits: { deviceNodes: [{ path: '/dev/fpga1', type: 'c', major: 240, minor: 1, fileMode: 0o640, uid: 5, gid: 6 }] } },
    { name: 'hooked', containerEdits: { hooks: [{ hookName: 'createContainer', path: '/usr/bin/vendor-hook' }] } },
    { name: 'nodes-none', containerEdits: { deviceNodes: [{ path: '/dev/fuse', permissions: 'none' }] } },
  ],
});

test('qualified names: vendor.com/class=name only', (t) => {
  t.deepEqual(parseQualifiedName('vendor.com/gpu=0'), { kind: 'vendor.com/gpu', device: '0' });
  t.deepEqual(parseQualifiedName('nvidia.com/gpu=GPU-1a:2'), { kind: 'nvidia.com/gpu', device: 'GPU-1a:2' });
  for (const bad of ['gpu', 'vendor.com/gpu', 'a/b/c=d', 'vendor.com/=0', '-v.com/gpu=0', 'v.com/gpu=-0', 'v.com/g pu=0']) t.is(parseQualifiedName(bad), undefined, bad);
});

test('YAML and JSON specs are parsed; device and spec edits are kept apart', (t) => {
  const gpu = parseCdiSpec(GPU_YAML, '/etc/cdi/gpu.yaml');
  t.is(gpu.kind, 'vendor.com/gpu');
  t.deepEqual(gpu.edits.env, ['GPU_COMMON=1']);
  t.deepEqual([...gpu.devices.keys()], ['0', 'all']);
  t.deepEqual(gpu.devices.get('0')?.deviceNodes, [{ path: '/dev/gpu0', hostPath: '/dev/fuse', permissions: 'r', major: undefined, minor: undefined, fileMode: undefined, uid: undefined, gid: undefined }]);
  const fpga = parseCdiSpec(FPGA_JSON, '/var/run/cdi/fpga.json');
  t.is(fpga.kind, 'example.org/fpga');
  t.true(fpga.devices.get('hooked')?.hasHooks);
  t.false(fpga.devices.get('f1')?.hasHooks);
});

test('malformed specs are refused naming the file and the problem', (t) => {
  const cases: [string, string, RegExp][] = [
    ['a.yaml', 'kind: [unclosed', /a\.yaml: not valid YAML/],
    ['b.json', '{"cdiVersion": ', /b\.json: not valid JSON/],
    ['c.yaml', 'cdiVersion: "0.6.0"\nkind: nokind\ndevices: [{name: x}]\n', /c\.yaml: kind "nokind"/],
    ['d.yaml', 'kind: v.com/c\ndevices: [{name: x}]\n', /d\.yaml: cdiVersion/],
    ['e.yaml', 'cdiVersion: "0.6.0"\nkind: v.com/c\ndevices: []\n', /at least one device/],
    ['f.yaml', 'cdiVersion: "0.6.0"\nkind: v.com/c\ndevices: [{name: x, containerEdits: {deviceNodes: [{path: rel}]}}]\n', /deviceNodes\[0\]\.path must be an absolute path/],
    ['g.yaml', 'cdiVersion: "0.6.0"\nkind: v.com/c\ndevices: [{name: x, containerEdits: {deviceNodes: [{path: /dev/x, permissions: rwx}]}}]\n', /permissions "rwx"/],
    ['h.yaml', 'cdiVersion: "0.6.0"\nkind: v.com/c\ndevices: [{name: x, containerEdits: {env: [NOEQUALS]}}]\n', /env\[0\]/],
  ];
  for (const [file, text, pattern] of cases) {
    const err = t.throws(() => parseCdiSpec(text, `/etc/cdi/${file}`), { instanceOf: BerthError });
    t.regex(err?.message ?? '', pattern, file);
    t.regex(err?.message ?? '', new RegExp(`/etc/cdi/${file.replace('.', '\\.')}`));
  }
});

test('a requested device gets its nodes (numbers from the host when not given), mounts, env; spec edits once', async (t) => {
  const registry = await loadCdiRegistry(specDirs([{ 'gpu.yaml': GPU_YAML, 'fpga.json': FPGA_JSON, 'notes.txt': 'ignored' }]));
  t.deepEqual(registry.bad, []);
  const got = await resolveCdiDevices(['vendor.com/gpu=0', 'vendor.com/gpu=all', 'example.org/fpga=f1', 'vendor.com/gpu=0'], registry, hostNodes);
  t.deepEqual(got.granted, [
    { node: { path: '/dev/gpu0', type: 'c', major: 10, minor: 229, mode: 0o600, uid: 0, gid: 0 }, permissions: 'r' },
    { node: { path: '/dev/fuse', type: 'c', major: 10, minor: 229, mode: 0o600, uid: 0, gid: 0 }, permissions: 'rwm' },
    { node: { path: '/dev/vdb', type: 'b', major: 254, minor: 16, mode: 0o660, uid: 0, gid: 0 }, permissions: 'rw' },
    // completely described by the vendor: need not exist on the host
    { node: { path: '/dev/fpga1', type: 'c', major: 240, minor: 1, mode: 0o640, uid: 5, gid: 6 }, permissions: 'rwm' },
  ]);
  t.deepEqual(got.env, ['GPU_COMMON=1', 'GPU=0']);
  t.deepEqual(got.mounts, [{ destination: '/usr/lib/vendor', type: 'bind', source: '/usr/lib/vendor', options: ['rbind', 'ro', 'nosuid'] }]);
  const none = await resolveCdiDevices(['example.org/fpga=nodes-none'], registry, hostNodes);
  t.deepEqual(none.granted.map((g) => g.permissions), ['']);
});

test('hooks are refused naming the field, the device and the file', async (t) => {
  const dirs = specDirs([{ 'fpga.json': FPGA_JSON }]);
  const registry = await loadCdiRegistry(dirs);
  const err = await t.throwsAsync(resolveCdiDevices(['example.org/fpga=f1', 'example.org/fpga=hooked'], registry, hostNodes), { instanceOf: BerthError });
  t.is(err?.kind, 'invalid_argument');
  t.regex(err?.message ?? '', /^config\.cdi_devices\[1\]: CDI device "example\.org\/fpga=hooked" needs hooks/);
  t.regex(err?.message ?? '', /berth does not run CDI hooks/);
  t.true(err?.message.includes(path.join(dirs[0], 'fpga.json')));
  // Spec-wide hooks refuse every device of the file.
  const shared = await loadCdiRegistry(specDirs([{ 's.yaml': 'cdiVersion: "0.6.0"\nkind: v.com/c\ncontainerEdits: {hooks: [{hookName: poststart, path: /bin/true}]}\ndevices: [{name: x}]\n' }]));
  const err2 = await t.throwsAsync(resolveCdiDevices(['v.com/c=x'], shared, hostNodes), { instanceOf: BerthError });
  t.is(err2?.kind, 'invalid_argument');
  t.regex(err2?.message ?? '', /config\.cdi_devices\[0\]: CDI device "v\.com\/c=x" needs hooks/);
});

test('an unknown device is NOT_FOUND naming the field; a bad file does not hide good ones', async (t) => {
  const dirs = specDirs([{
    'gpu.yaml': GPU_YAML,
    'broken.yaml': 'kind: [',
    'other.yaml': 'cdiVersion: "0.6.0"\nkind: other.com/x\ndevices: []\n',
    'cut.json': '{"cdiVersion": "0.6.0", "kind": "third.org/y", "devices": [',
  }]);
  const registry = await loadCdiRegistry(dirs);
  t.deepEqual(registry.bad.map((b) => path.basename(b.file)).sort(), ['broken.yaml', 'cut.json', 'other.yaml']);
  t.is(registry.bad.find((b) => b.file.endsWith('cut.json'))?.kind, 'third.org/y', 'the kind of a cut-off file is still read');
  // the good file still works
  t.is((await resolveCdiDevices(['vendor.com/gpu=0'], registry, hostNodes)).granted.length, 1);
  const clean = await loadCdiRegistry(specDirs([{ 'gpu.yaml': GPU_YAML }]));
  const err = await t.throwsAsync(resolveCdiDevices(['vendor.com/gpu=0', 'vendor.com/gpu=7'], clean, hostNodes), { instanceOf: BerthError });
  t.is(err?.kind, 'not_found');
  t.regex(err?.message ?? '', /^config\.cdi_devices\[1\]: CDI device "vendor\.com\/gpu=7" not found/);
  // A device only a bad file could define: the error names that file (and not one of an unrelated kind).
  const hidden = await t.throwsAsync(resolveCdiDevices(['vendor.com/gpu=7'], registry, hostNodes), { instanceOf: BerthError });
  t.is(hidden?.kind, 'failed_precondition');
  t.true(hidden?.message.includes(path.join(dirs[0], 'broken.yaml')), hidden?.message);
  t.false(hidden?.message.includes('other.yaml'), hidden?.message);
  t.false(hidden?.message.includes('cut.json'), hidden?.message);
});

test('a later spec directory wins; two files in one directory defining a device conflict', async (t) => {
  const low = 'cdiVersion: "0.6.0"\nkind: v.com/c\ndevices: [{name: x, containerEdits: {env: [FROM=etc]}}]\n';
  const high = 'cdiVersion: "0.6.0"\nkind: v.com/c\ndevices: [{name: x, containerEdits: {env: [FROM=run]}}]\n';
  const registry = await loadCdiRegistry(specDirs([{ 'a.yaml': low }, { 'b.yaml': high }]));
  t.deepEqual((await resolveCdiDevices(['v.com/c=x'], registry, hostNodes)).env, ['FROM=run']);
  const conflict = await loadCdiRegistry(specDirs([{ 'a.yaml': low, 'b.yaml': high }]));
  const err = await t.throwsAsync(resolveCdiDevices(['v.com/c=x'], conflict, hostNodes), { instanceOf: BerthError });
  t.is(err?.kind, 'failed_precondition');
  t.regex(err?.message ?? '', /more than one spec file.*a\.yaml.*b\.yaml/);
});

test('a device node missing on the host, or not a device, fails naming the device', async (t) => {
  const registry = await loadCdiRegistry(specDirs([{ 'n.yaml': 'cdiVersion: "0.6.0"\nkind: v.com/c\ndevices:\n  - {name: gone, containerEdits: {deviceNodes: [{path: /dev/nothere}]}}\n  - {name: file, containerEdits: {deviceNodes: [{path: /dev/x, hostPath: /etc/passwd}]}}\n' }]));
  const gone = await t.throwsAsync(resolveCdiDevices(['v.com/c=gone'], registry, hostNodes), { instanceOf: BerthError });
  t.regex(gone?.message ?? '', /config\.cdi_devices\[0\] \(v\.com\/c=gone, .*n\.yaml\): host device \/dev\/nothere does not exist/);
  const file = await t.throwsAsync(resolveCdiDevices(['v.com/c=file'], registry, hostNodes), { instanceOf: BerthError });
  t.regex(file?.message ?? '', /\/etc\/passwd is not a device node/);
});

// ---- buildSpec with CDI edits ----

function inputs(security: Partial<ContainerConfig['security']> = {}): SpecInputs {
  const config: ContainerConfig = {
    metadata: { name: 'c', attempt: 0 }, image: 'img', command: ['/bin/sh'], args: [], workingDir: '', envs: [{ key: 'GPU', value: 'config' }], mounts: [],
    devices: [{ containerPath: '/dev/f', hostPath: '/dev/fuse', permissions: 'r' }],
    labels: {}, annotations: {}, logPath: '', stdin: false, stdinOnce: false, tty: false, resources: { hugepageLimits: [], unified: {} },
    security: {
      capabilities: { add: [], drop: [] }, privileged: false, readonlyRootfs: false, supplementalGroups: [], noNewPrivs: false,
      maskedPaths: [], readonlyPaths: [], namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' }, seccomp: { kind: 'unconfined' }, apparmor: '',
      ...security,
    },
  };
  const sandbox = {
    id: 'pod', state: 'READY', createdAt: 0, additionalIps: [], filesDir: '/f', shmPath: '/s', cgroup: { path: '/p', created: [] }, namespacePaths: {},
    config: { metadata: { name: 'p', uid: 'u', namespace: 'n', attempt: 0 }, hostname: 'p', logDirectory: '', portMappings: [], labels: {}, annotations: {}, cgroupParent: '', namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' }, privileged: false, sysctls: {}, runtimeHandler: '' },
  } as unknown as SandboxRecord;
  return {
    id: 'c1', config, image: {}, sandbox, user: { uid: 0, gid: 0, additionalGids: [5], home: '/' }, bundle: '/b', rootfs: '/b/rootfs', lowerDirs: ['/l'], upperDir: '/b/u', workDir: '/b/w',
    logPath: '/log', cgroupProcs: [], rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26,
    hostDevices: [[{ path: '/dev/f', type: 'c', major: 10, minor: 229, mode: 0o600, uid: 0, gid: 0 }]],
    cdi: {
      granted: [{ node: { path: '/dev/vdb', type: 'b', major: 254, minor: 16, mode: 0o660, uid: 0, gid: 0 }, permissions: 'rw' }],
      mounts: [{ destination: '/usr/lib/vendor', type: 'bind', source: '/usr/lib/vendor', options: ['rbind', 'ro'] }],
      env: ['GPU=0', 'EXTRA=1'],
      additionalGids: [44, 5],
    },
  };
}

test('buildSpec: CRI and CDI devices become nodes and allow rules; CDI mounts, env and groups are applied', (t) => {
  const spec = buildSpec(inputs());
  t.deepEqual(spec.devices.slice(-2).map((d) => d.path), ['/dev/f', '/dev/vdb']);
  t.deepEqual(spec.deviceRules, [
    ...DEFAULT_DEVICE_RULES,
    { allow: true, type: 'c', major: 10, minor: 229, access: 'r' },
    { allow: true, type: 'b', major: 254, minor: 16, access: 'rw' },
  ]);
  t.true(spec.mounts.some((m) => m.destination === '/usr/lib/vendor' && m.options.includes('ro')));
  t.true(spec.process.env.includes('GPU=0'), 'a CDI variable replaces the config one');
  t.false(spec.process.env.includes('GPU=config'));
  t.true(spec.process.env.includes('EXTRA=1'));
  t.deepEqual(spec.process.additionalGids, [5, 44]);
});

test('buildSpec: privileged gets a *:* rwm and no nodes of its own (the host /dev is bound in)', (t) => {
  const spec = buildSpec(inputs({ privileged: true }));
  t.deepEqual(spec.deviceRules, [{ allow: true, type: 'a', access: 'rwm' }]);
  t.deepEqual(spec.devices, []);
  t.true(spec.mounts.some((m) => m.destination === '/usr/lib/vendor'), 'CDI mounts still apply');
});
