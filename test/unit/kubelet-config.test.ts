import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import {
  configEndpoints,
  currentRuntimeEndpoint,
  flagEndpoints,
  KUBELET_DEFAULT_ENDPOINT,
  KubeletConfigError,
  setConfigEndpoints,
  setFlagEndpoints,
} from '../../src/installer/kubelet-config.js';
import { isSwitched, switchKubelet, unswitchKubelet } from '../../src/installer/kubelet-switch.js';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/kubelet');
const BERTH = 'unix:///run/berth/berth.sock';

async function fixture(name: string): Promise<string> {
  return fs.readFile(path.join(FIXTURES, name), 'utf8');
}

/** A temp dir holding copies of the fixtures as kubelet's files; removed after the test. */
async function node(t: { teardown(fn: () => Promise<void>): void }, configFixture: string | undefined, flagsFixture: string | undefined) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-kubelet-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const files = { config: path.join(dir, 'config.yaml'), flags: path.join(dir, 'kubeadm-flags.env'), stateDir: path.join(dir, 'state') };
  if (configFixture) await fs.writeFile(files.config, await fixture(configFixture), { mode: 0o640 });
  if (flagsFixture) await fs.writeFile(files.flags, await fixture(flagsFixture));
  return { dir, files };
}

test('setConfigEndpoints adds both fields to a KubeletConfiguration without them and keeps every other key and comment', async (t) => {
  const before = await fixture('config-without-endpoints.yaml');
  const after = setConfigEndpoints(before, 'config.yaml', BERTH);
  t.deepEqual(configEndpoints(after, 'config.yaml'), { runtime: BERTH, image: BERTH });
  t.true(after.includes('# operator: this node has no systemd cgroup driver'));
  const { containerRuntimeEndpoint, imageServiceEndpoint, ...rest } = parse(after);
  t.is(containerRuntimeEndpoint, BERTH);
  t.is(imageServiceEndpoint, BERTH);
  t.deepEqual(rest, parse(before));
});

test('setConfigEndpoints replaces fields that name another runtime', async (t) => {
  const before = await fixture('config-with-endpoints.yaml');
  t.deepEqual(configEndpoints(before, 'c'), { runtime: 'unix:///var/run/crio/crio.sock', image: 'unix:///var/run/crio/crio.sock' });
  const after = setConfigEndpoints(before, 'c', BERTH);
  t.deepEqual(configEndpoints(after, 'c'), { runtime: BERTH, image: BERTH });
  t.is(parse(after).evictionHard['memory.available'], '100Mi');
});

test('a file that is not a KubeletConfiguration is refused, naming it', (t) => {
  const err = t.throws(() => setConfigEndpoints('apiVersion: v1\nkind: Pod\n', '/var/lib/kubelet/config.yaml', BERTH), { instanceOf: KubeletConfigError });
  t.regex(err!.message, /\/var\/lib\/kubelet\/config\.yaml: kind is Pod/);
  t.throws(() => setConfigEndpoints('a: [b', 'f.yaml', BERTH), { message: /f\.yaml: not YAML/ });
});

test('flags: both spellings are rewritten, nothing else in the line changes, an absent flag is not added', async (t) => {
  const kubeadm = await fixture('kubeadm-flags.env');
  const switched = setFlagEndpoints(kubeadm, BERTH);
  t.is(switched, kubeadm.replace('unix:///var/run/containerd/containerd.sock', BERTH));
  t.deepEqual(flagEndpoints(switched), { runtime: BERTH, image: undefined });
  const spaced = await fixture('kubeadm-flags-spaced.env');
  t.deepEqual(flagEndpoints(setFlagEndpoints(spaced, BERTH)), { runtime: BERTH, image: BERTH });
  t.is(setFlagEndpoints('KUBELET_KUBEADM_ARGS="--node-ip=1.2.3.4"\n', BERTH), 'KUBELET_KUBEADM_ARGS="--node-ip=1.2.3.4"\n');
});

test('the runtime kubelet uses: a flag wins over the file, the file over the default', async (t) => {
  const withFields = await fixture('config-with-endpoints.yaml');
  const flags = await fixture('kubeadm-flags.env');
  t.is(currentRuntimeEndpoint(withFields, flags, 'c'), 'unix:///var/run/containerd/containerd.sock');
  t.is(currentRuntimeEndpoint(withFields, undefined, 'c'), 'unix:///var/run/crio/crio.sock');
  t.is(currentRuntimeEndpoint(await fixture('config-without-endpoints.yaml'), 'KUBELET_KUBEADM_ARGS=""\n', 'c'), KUBELET_DEFAULT_ENDPOINT);
});

for (const [configFixture, flagsFixture] of [
  ['config-without-endpoints.yaml', 'kubeadm-flags.env'],
  ['config-with-endpoints.yaml', 'kubeadm-flags-spaced.env'],
  ['config-without-endpoints.yaml', undefined],
  [undefined, 'kubeadm-flags.env'],
] as const) {
  test(`switch then unswitch leaves kubelet's files byte-identical (${configFixture ?? 'no config file'}, ${flagsFixture ?? 'no flags file'})`, async (t) => {
    const { files } = await node(t, configFixture, flagsFixture);
    const before = { config: await fs.readFile(files.config).catch(() => undefined), flags: await fs.readFile(files.flags).catch(() => undefined) };
    const modeBefore = configFixture ? (await fs.stat(files.config)).mode : undefined;

    const first = await switchKubelet(files, BERTH);
    t.not(first.previous, BERTH);
    t.true(await isSwitched(files));
    if (configFixture) t.deepEqual(configEndpoints(await fs.readFile(files.config, 'utf8'), 'c'), { runtime: BERTH, image: BERTH });
    if (flagsFixture) t.is(flagEndpoints(await fs.readFile(files.flags, 'utf8')).runtime, BERTH);
    // The installer pod may run the switch again (restarted): the original kept is still the first one.
    const second = await switchKubelet(files, BERTH);
    t.is(second.previous, first.previous);
    t.deepEqual(second.changed, []);

    const back = await unswitchKubelet(files);
    t.deepEqual(back.patched, []);
    t.deepEqual(await fs.readFile(files.config).catch(() => undefined), before.config);
    t.deepEqual(await fs.readFile(files.flags).catch(() => undefined), before.flags);
    if (modeBefore !== undefined) t.is((await fs.stat(files.config)).mode, modeBefore);
    t.false(await isSwitched(files));
    t.deepEqual(await fs.readdir(files.stateDir), [], 'no saved copies left');
    t.deepEqual((await fs.readdir(path.dirname(files.config))).filter((f) => f.includes('.tmp')), [], 'no temp files left');
  });
}

test('a file edited after the switch keeps the edit: only the endpoint fields go back', async (t) => {
  const { files } = await node(t, 'config-with-endpoints.yaml', 'kubeadm-flags.env');
  await switchKubelet(files, BERTH);
  const switched = await fs.readFile(files.config, 'utf8');
  await fs.writeFile(files.config, switched.replace('cgroupDriver: systemd', 'cgroupDriver: cgroupfs'));
  const back = await unswitchKubelet(files);
  t.deepEqual(back, { restored: [files.flags], patched: [files.config] });
  const config = parse(await fs.readFile(files.config, 'utf8'));
  t.is(config.cgroupDriver, 'cgroupfs');
  t.is(config.containerRuntimeEndpoint, 'unix:///var/run/crio/crio.sock');
  t.is(config.imageServiceEndpoint, 'unix:///var/run/crio/crio.sock');
});

test('a node with neither kubelet file is refused, naming both paths', async (t) => {
  const { files } = await node(t, undefined, undefined);
  const err = await t.throwsAsync(switchKubelet(files, BERTH), { instanceOf: KubeletConfigError });
  t.true(err!.message.includes(files.config) && err!.message.includes(files.flags));
});
