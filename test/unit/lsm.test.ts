import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { chooseAppArmorProfile } from '../../src/container/apparmor.js';
import { ContainerService } from '../../src/container/service.js';
import { ContainerConfig } from '../../src/container/types.js';
import { parseAppArmorProfiles, LsmHost } from '../../src/kernel/lsm.js';
import { containerConfigFromProto } from '../../src/cri/translate.js';
import type { ContainerConfig__Output } from '../../src/gen/runtime/v1/ContainerConfig.js';
import { FakeCgroups, FakeRuntime, fakeImages, fakePods, Journal, POD, recordingLog } from './fakes/container.js';

// AppArmor and SELinux: the decision table of apparmor.ts on hosts with and without AppArmor, and the plumbing from
// the CRI request to the init's spec and to exec; SELinux options ignored without SELinux, refused with it.

function host(opts: { apparmor?: boolean; loaded?: string[]; selinux?: boolean } = {}): LsmHost {
  return {
    apparmorEnabled: () => opts.apparmor ?? false,
    apparmorProfileLoaded: async (name) => (opts.loaded ?? []).includes(name),
    selinuxEnabled: () => opts.selinux ?? false,
  };
}

async function refusal(t: ExecutionContext, p: Promise<unknown>, kind: BerthError["kind"], message: RegExp): Promise<void> {
  const err = await t.throwsAsync(p, { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, kind);
  t.regex(err.message, message);
}

test('AppArmor on the host: unset and RuntimeDefault get the configured default, Localhost its profile, Unconfined none', async (t) => {
  const h = host({ apparmor: true, loaded: ['berth-default', 'k8s-deny-write'] });
  t.deepEqual(await chooseAppArmorProfile('', false, 'berth-default', h), { profile: 'berth-default' });
  t.deepEqual(await chooseAppArmorProfile('', true, 'berth-default', h), {}, 'privileged and unset: unconfined, as containerd');
  t.deepEqual(await chooseAppArmorProfile('runtime/default', true, 'berth-default', h), { profile: 'berth-default' });
  t.deepEqual(await chooseAppArmorProfile('localhost/k8s-deny-write', false, 'berth-default', h), { profile: 'k8s-deny-write' });
  t.deepEqual(await chooseAppArmorProfile('unconfined', false, 'berth-default', h), {});
  await refusal(t, chooseAppArmorProfile('localhost/missing', false, 'berth-default', h), 'failed_precondition',
    /^config\.linux\.security_context\.apparmor\.localhost_ref: AppArmor profile "missing" is not loaded/);
  await refusal(t, chooseAppArmorProfile('runtime/default', false, 'other-default', h), 'failed_precondition',
    /RuntimeDefault is berth's profile "other-default" \(\[runtime\] apparmor_profile\), which is not loaded/);
  const unset = await chooseAppArmorProfile('', false, 'other-default', h);
  t.is(unset.profile, undefined);
  t.regex(unset.warning ?? '', /not loaded: the container runs unconfined/);
});

test('no AppArmor on the host: unset, Unconfined and RuntimeDefault run unconfined; Localhost is FAILED_PRECONDITION naming the field', async (t) => {
  const h = host({ apparmor: false });
  for (const request of ['', 'unconfined', 'runtime/default']) t.deepEqual(await chooseAppArmorProfile(request, false, 'berth-default', h), {});
  await refusal(t, chooseAppArmorProfile('localhost/k8s-deny-write', false, 'berth-default', h), 'failed_precondition',
    /^config\.linux\.security_context\.apparmor\.localhost_ref: AppArmor profile "k8s-deny-write" was asked for, but this node's kernel has no AppArmor/);
});

test('AppArmor requests berth cannot read are INVALID_ARGUMENT whatever the host', async (t) => {
  for (const h of [host({ apparmor: true }), host()]) {
    await refusal(t, chooseAppArmorProfile('my-profile', false, 'berth-default', h), 'invalid_argument', /is not unconfined, runtime\/default or localhost\/<profile>/);
    await refusal(t, chooseAppArmorProfile('localhost/two words', false, 'berth-default', h), 'invalid_argument', /localhost_ref "two words" is not an AppArmor profile name/);
    await refusal(t, chooseAppArmorProfile('localhost/', false, 'berth-default', h), 'invalid_argument', /localhost_ref "" is not/);
  }
});

test('the securityfs profile list is read by name, mode stripped, names with spaces and parentheses kept', (t) => {
  const names = parseAppArmorProfiles('berth-default (enforce)\n/usr/bin/man (complain)\nodd (name) (enforce)\n\n');
  t.deepEqual([...names], ['berth-default', '/usr/bin/man', 'odd (name)']);
});

function config(over: Partial<ContainerConfig['security']> = {}): ContainerConfig {
  return {
    metadata: { name: 'app', attempt: 0 }, image: 'img:1', command: [], args: [], workingDir: '', envs: [], mounts: [], devices: [],
    labels: {}, annotations: {}, logPath: '', stdin: false, stdinOnce: false, tty: false, resources: { hugepageLimits: [], unified: {} },
    security: {
      capabilities: { add: [], drop: [] }, privileged: false, readonlyRootfs: false, supplementalGroups: [], noNewPrivs: false,
      maskedPaths: [], readonlyPaths: [], namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' },
      seccomp: { kind: 'unconfined' }, apparmor: '', ...over,
    },
  };
}

async function service(t: ExecutionContext, lsm: LsmHost) {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-lsm-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const j = new Journal();
  const runtime = new FakeRuntime(j);
  const log = recordingLog();
  const svc = new ContainerService({
    root, runtime, cgroups: new FakeCgroups(j), images: fakeImages(j), sandboxes: fakePods(), log,
    rlimits: [], maxLogLineBytes: 16384, shmSizeBytes: 1 << 26, cdiSpecDirs: [], lsm, apparmorProfile: 'berth-default',
  });
  return { svc, runtime, log, j };
}

test('the chosen profile reaches the init\'s spec, the record and every exec; unconfined leaves it out', async (t) => {
  const { svc, runtime } = await service(t, host({ apparmor: true, loaded: ['berth-default', 'k8s-deny-write'] }));
  const confined = await svc.create(POD.id, config({ apparmor: 'localhost/k8s-deny-write' }));
  t.is(runtime.specs.at(-1)?.process.apparmorProfile, 'k8s-deny-write');
  t.is(confined.apparmorProfile, 'k8s-deny-write');
  const open = await svc.create(POD.id, { ...config({ apparmor: 'unconfined' }), metadata: { name: 'open', attempt: 0 } });
  t.false('apparmorProfile' in runtime.specs.at(-1)!.process);
  t.is(open.apparmorProfile, undefined);
  await svc.start(confined.id);
  await svc.execSync(confined.id, ['true'], 5);
  t.is(runtime.execs.at(-1)?.apparmorProfile, 'k8s-deny-write');
});

test('a refused profile fails CreateContainer before anything is made', async (t) => {
  const { svc, j } = await service(t, host({ apparmor: false }));
  await refusal(t, svc.create(POD.id, config({ apparmor: 'localhost/k8s-deny-write' })), 'failed_precondition', /apparmor\.localhost_ref/);
  t.false(j.calls.includes('runtime.create'));
  t.deepEqual(svc.list(), []);
});

const selinux = { user: 'system_u', role: 'system_r', type: 'container_t', level: 's0:c1,c2' };

test('SELinux options: ignored and logged on a host without SELinux; FAILED_PRECONDITION naming the field on one with it', async (t) => {
  const without = await service(t, host({ selinux: false }));
  await without.svc.create(POD.id, config({ selinuxOptions: selinux }));
  t.true(without.log.lines.some((l) => l.msg.startsWith('SELinux options ignored') && l.level === 'info'));
  const withSelinux = await service(t, host({ selinux: true }));
  await refusal(t, withSelinux.svc.create(POD.id, config({ selinuxOptions: selinux })), 'failed_precondition',
    /^config\.linux\.security_context\.selinux_options: this node has SELinux enabled and berth does not apply SELinux labels/);
  t.false(withSelinux.j.calls.includes('runtime.create'));
  await withSelinux.svc.create(POD.id, config(), ).then((r) => t.truthy(r.id, 'no options: the container runs unlabelled'));
});

test('CRI translation: empty SELinux options are none; user_specified_image is kept for ContainerStatus', (t) => {
  const proto = (over: Record<string, unknown>) => ({
    metadata: { name: 'c', attempt: 0 }, image: { image: 'sha256:abc', user_specified_image: 'busybox:1.36' }, command: [], args: [], working_dir: '',
    envs: [], mounts: [], devices: [], CDI_devices: [], labels: {}, annotations: {}, log_path: '', stdin: false, stdin_once: false, tty: false, ...over,
  }) as unknown as ContainerConfig__Output;
  const none = containerConfigFromProto(proto({ linux: { security_context: { selinux_options: { user: '', role: '', type: '', level: '' } } } }));
  t.is(none.security.selinuxOptions, undefined);
  t.is(none.userSpecifiedImage, 'busybox:1.36');
  t.is(none.image, 'sha256:abc');
  const some = containerConfigFromProto(proto({ linux: { security_context: { selinux_options: { level: 's0:c1' } } } }));
  t.deepEqual(some.security.selinuxOptions, { user: '', role: '', type: '', level: 's0:c1' });
});
