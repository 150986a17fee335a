// The device policy as data (rules for defaults, CRI devices, CDI grants, privileged), CRI validation of device
// permissions and CDI names, and the cgroup2 device program berth-shim builds from the rules, run in the
// native/test/devices-eval interpreter: allow/deny decisions for (type, major, minor, access) requests.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthError } from '../../src/errors.js';
import { DEFAULT_DEVICE_RULES, deviceNumbers, devicePermissions, deviceRules, PRIVILEGED_DEVICE_RULES } from '../../src/container/devices.js';
import { containerConfigFromProto } from '../../src/cri/translate.js';
import type { ContainerConfig__Output } from '../../src/gen/runtime/v1/ContainerConfig.js';
import type { ShimDevice, ShimDeviceRule } from '../../src/kernel/shim-spec.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const EVAL = path.join(REPO, 'native/build/devices-eval');
const TMP = mkdtempSync(path.join(os.tmpdir(), 'berth-devices-unit-'));

test.before(() => {
  execFileSync('make', ['-s', '-C', path.join(REPO, 'native'), 'test-tools'], { stdio: 'inherit' });
});
test.after.always(() => rmSync(TMP, { recursive: true, force: true }));

const node = (type: 'c' | 'b', major: number, minor: number): ShimDevice => ({ path: '/dev/x', type, major, minor, mode: 0o666, uid: 0, gid: 0 });

// ---- rules as data ----

test('the default rules: deny all, mknod of any node, rwm on the standard character devices only', (t) => {
  t.deepEqual(DEFAULT_DEVICE_RULES[0], { allow: false, type: 'a', access: 'rwm' });
  const allowed = DEFAULT_DEVICE_RULES.filter((r) => r.allow && r.access === 'rwm').map((r) => `${r.type} ${r.major}:${r.minor ?? '*'}`);
  t.deepEqual(allowed, ['c 1:3', 'c 1:5', 'c 1:7', 'c 1:8', 'c 1:9', 'c 5:0', 'c 5:1', 'c 5:2', 'c 136:*', 'c 10:200']);
  t.deepEqual(DEFAULT_DEVICE_RULES.filter((r) => r.access === 'm'), [
    { allow: true, type: 'c', access: 'm' },
    { allow: true, type: 'b', access: 'm' },
  ]);
  t.is(DEFAULT_DEVICE_RULES.length, 13, 'nothing else: no fuse, no kvm');
});

test('rules: each granted device is one allow rule with exactly its permissions; privileged gets a *:* rwm', (t) => {
  const rules = deviceRules({ privileged: false, granted: [{ node: node('c', 10, 229), permissions: 'r' }, { node: node('b', 8, 0), permissions: 'rw' }] });
  t.deepEqual(rules.slice(0, DEFAULT_DEVICE_RULES.length), [...DEFAULT_DEVICE_RULES]);
  t.deepEqual(rules.slice(DEFAULT_DEVICE_RULES.length), [
    { allow: true, type: 'c', major: 10, minor: 229, access: 'r' },
    { allow: true, type: 'b', major: 8, minor: 0, access: 'rw' },
  ]);
  // CDI "none" and fifos grant nothing.
  const none = deviceRules({ privileged: false, granted: [{ node: node('c', 10, 229), permissions: '' }, { node: { ...node('c', 0, 0), type: 'p' }, permissions: 'rwm' }] });
  t.is(none.length, DEFAULT_DEVICE_RULES.length);
  t.deepEqual(deviceRules({ privileged: true, granted: [{ node: node('c', 10, 229), permissions: 'r' }] }), [...PRIVILEGED_DEVICE_RULES]);
  t.deepEqual(PRIVILEGED_DEVICE_RULES, [{ allow: true, type: 'a', access: 'rwm' }]);
});

test('permissions: a subset of rwm, put in canonical order, empty meaning rwm; anything else names the field', (t) => {
  t.is(devicePermissions('mwr', 'f'), 'rwm');
  t.is(devicePermissions('', 'f'), 'rwm');
  t.is(devicePermissions('r', 'f'), 'r');
  t.is(devicePermissions('wm', 'f'), 'wm');
  for (const bad of ['rwx', 'a', 'R', ' r', 'rw m']) {
    const err = t.throws(() => devicePermissions(bad, 'config.devices[2].permissions'), { instanceOf: BerthError });
    t.is(err?.kind, 'invalid_argument', bad);
    t.regex(err?.message ?? '', /^config\.devices\[2\]\.permissions /);
  }
});

test('device numbers are decoded from st_rdev, large minors included', (t) => {
  t.deepEqual(deviceNumbers(0x103), { major: 1, minor: 3 });
  t.deepEqual(deviceNumbers(0xae5), { major: 10, minor: 229 });
  // major 259, minor 300000 in glibc's encoding
  const major = 259;
  const minor = 300000;
  const rdev = (BigInt(minor & 0xff)) | (BigInt(major & 0xfff) << 8n) | (BigInt(minor & ~0xff) << 12n) | (BigInt(major & ~0xfff) << 32n);
  t.deepEqual(deviceNumbers(rdev), { major, minor });
});

// ---- CRI validation (translate) ----

function protoConfig(over: Partial<ContainerConfig__Output>): ContainerConfig__Output {
  return {
    metadata: { name: 'c', attempt: 0 }, image: { image: 'img' }, command: [], args: [], working_dir: '', envs: [], mounts: [], devices: [],
    labels: {}, annotations: {}, log_path: '', stdin: false, stdin_once: false, tty: false, linux: null, windows: null, CDI_devices: [],
    ...over,
  } as unknown as ContainerConfig__Output;
}

test('CRI devices: permissions are checked and normalised, bad ones name config.devices[i].permissions', (t) => {
  const ok = containerConfigFromProto(protoConfig({ devices: [{ container_path: '/dev/f', host_path: '/dev/fuse', permissions: 'wr' }] }));
  t.deepEqual(ok.devices, [{ containerPath: '/dev/f', hostPath: '/dev/fuse', permissions: 'rw' }]);
  const unset = containerConfigFromProto(protoConfig({ devices: [{ container_path: '/dev/f', host_path: '/dev/fuse', permissions: '' }] }));
  t.is(unset.devices[0].permissions, 'rwm', 'an empty value means rwm, as Docker and CDI read it');
  const cases: [ContainerConfig__Output['devices'], RegExp][] = [
    [[{ container_path: '/dev/f', host_path: '/dev/fuse', permissions: 'rwx' }], /config\.devices\[0\]\.permissions "rwx"/],
    [[{ container_path: '/dev/a', host_path: '/dev/null', permissions: 'r' }, { container_path: '/dev/f', host_path: '/dev/fuse', permissions: 'rwmr ' }], /config\.devices\[1\]\.permissions "rwmr "/],
    [[{ container_path: 'dev/f', host_path: '/dev/fuse', permissions: 'r' }], /config\.devices\[0\]\.container_path/],
    [[{ container_path: '/dev/f', host_path: '', permissions: 'r' }], /config\.devices\[0\]\.host_path/],
  ];
  for (const [devices, pattern] of cases) {
    const err = t.throws(() => containerConfigFromProto(protoConfig({ devices })), { instanceOf: BerthError });
    t.is(err?.kind, 'invalid_argument');
    t.regex(err?.message ?? '', pattern);
  }
});

test('CRI cdi_devices: fully qualified names pass, others name config.cdi_devices[i]', (t) => {
  t.deepEqual(containerConfigFromProto(protoConfig({ CDI_devices: [{ name: 'vendor.com/gpu=0' }] })).cdiDevices, ['vendor.com/gpu=0']);
  for (const bad of ['gpu0', 'vendor.com/gpu', 'vendor.com=0', '/gpu=0', 'vendor.com/gpu=']) {
    const err = t.throws(() => containerConfigFromProto(protoConfig({ CDI_devices: [{ name: 'a.com/b=c' }, { name: bad }] })), { instanceOf: BerthError });
    t.is(err?.kind, 'invalid_argument', bad);
    t.regex(err?.message ?? '', /config\.cdi_devices\[1\]/);
  }
});

// ---- the cgroup2 device program, in the interpreter ----

type Request = `${'c' | 'b'} ${number} ${number} ${string}`;

function decide(rules: readonly ShimDeviceRule[], requests: Request[]): string[] {
  const file = path.join(TMP, `rules-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(rules));
  const r = spawnSync(EVAL, [file], { input: requests.join('\n') + '\n', encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`devices-eval: ${r.stderr}`);
  return r.stdout.trim().split('\n');
}

test('program: the defaults allow the standard devices, mknod of anything, and nothing else', (t) => {
  const cases: [Request, 'allow' | 'deny'][] = [
    ['c 1 3 rw', 'allow'], ['c 1 5 r', 'allow'], ['c 1 7 w', 'allow'], ['c 1 8 rwm', 'allow'], ['c 1 9 r', 'allow'],
    ['c 5 0 rw', 'allow'], ['c 5 1 rw', 'allow'], ['c 5 2 rw', 'allow'], ['c 136 0 rw', 'allow'], ['c 136 4095 rw', 'allow'],
    ['c 10 200 rw', 'allow'],
    ['c 10 232 m', 'allow'], ['b 8 0 m', 'allow'], ['c 1 1 m', 'allow'],
    ['c 10 232 rw', 'deny'], ['c 10 232 r', 'deny'], ['c 10 229 w', 'deny'], ['c 1 11 r', 'deny'], ['c 1 1 r', 'deny'],
    ['b 8 0 r', 'deny'], ['b 8 0 rw', 'deny'], ['b 1 3 r', 'deny'], ['c 10 232 rm', 'deny'], ['c 137 0 r', 'deny'],
    ['c 3 1 r', 'deny'], ['c 1 4 r', 'deny'], ['c 0 3 r', 'deny'], ['c 10 201 r', 'deny'],
  ];
  t.deepEqual(decide(DEFAULT_DEVICE_RULES, cases.map(([q]) => q)), cases.map(([, want]) => want));
});

test('program: a granted device opens with exactly its permissions', (t) => {
  const rules = deviceRules({ privileged: false, granted: [{ node: node('c', 10, 229), permissions: 'r' }, { node: node('b', 7, 0), permissions: 'rw' }] });
  const cases: [Request, string][] = [
    ['c 10 229 r', 'allow'], ['c 10 229 w', 'deny'], ['c 10 229 rw', 'deny'], ['c 10 229 m', 'allow'],
    ['b 7 0 rw', 'allow'], ['b 7 0 r', 'allow'], ['b 7 1 r', 'deny'], ['c 7 0 r', 'deny'], ['c 10 228 r', 'deny'],
  ];
  t.deepEqual(decide(rules, cases.map(([q]) => q)), cases.map(([, want]) => want));
});

test('program: privileged allows everything; later deny rules win over earlier allows; no rules deny all', (t) => {
  t.deepEqual(decide(PRIVILEGED_DEVICE_RULES, ['c 10 232 rw', 'b 8 0 rwm', 'c 1 1 r']), ['allow', 'allow', 'allow']);
  const rules: ShimDeviceRule[] = [
    { allow: false, type: 'a', access: 'rwm' },
    { allow: true, type: 'c', major: 4, access: 'rw' },
    { allow: false, type: 'c', major: 4, minor: 1, access: 'w' },
  ];
  t.deepEqual(decide(rules, ['c 4 0 rw', 'c 4 1 r', 'c 4 1 w', 'c 4 1 rw', 'c 5 1 r']), ['allow', 'allow', 'deny', 'deny', 'deny']);
  t.deepEqual(decide([], ['c 1 3 r', 'b 8 0 m']), ['deny', 'deny']);
});

test('program: rules the shim must refuse (bad access, a partial rule for every device)', (t) => {
  for (const bad of [
    [{ allow: true, type: 'c', major: 1, minor: 3, access: 'rwx' }],
    [{ allow: true, type: 'c', access: '' }],
    [{ allow: true, type: 'a', access: 'r' }],
    [{ allow: true, type: 'x', access: 'r' }],
    [{ allow: true, type: 'c', major: -1, access: 'r' }],
  ]) {
    const file = path.join(TMP, 'bad.json');
    writeFileSync(file, JSON.stringify(bad));
    const r = spawnSync(EVAL, [file], { input: 'c 1 3 r\n', encoding: 'utf8' });
    t.is(r.status, 1, JSON.stringify(bad));
    t.regex(r.stderr, /deviceRules\[0\]/);
  }
});
