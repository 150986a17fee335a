import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, layer, pushImage, PushedImage } from '../helpers/images.js';
import type { BerthProcess } from '../helpers/berth.js';
import { containerConfig, podConfig } from '../helpers/cri.js';
import { podEnv } from '../helpers/pod-env.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// The device policy from inside containers: what a pod may open, make and be given. Opens only: no byte is read
// from or written to any device here. /dev/fuse (10:229) and /dev/kvm (10:232) are host devices outside the
// default list that open for anyone the policy lets through.

let registry: Registry;
let image: PushedImage;

const EPERM = /Operation not permitted/;

test.before(async () => {
  registry = await startRegistry();
  // Device nodes shipped inside the image, 0666: only the device policy stands between a pod and them.
  const nodes = await layer([
    { type: 'dir', path: 'opt', mode: 0o755 },
    { type: 'char', path: 'opt/fuse', major: 10, minor: 229, mode: 0o666 },
    { type: 'char', path: 'opt/kvm', major: 10, minor: 232, mode: 0o666 },
  ]);
  image = await pushImage(registry, 'berth/devices', 'v1', { layers: [await busyboxLayer(), nodes], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

interface Env {
  berth: BerthProcess;
  dir: string;
  run(script: string, c?: Partial<ContainerConfig>, pod?: Partial<PodSandboxConfig>): Promise<string>;
  running(c?: Partial<ContainerConfig>): Promise<string>;
}

async function env(t: ExecutionContext, extraConfig = '', dir?: string): Promise<Env> {
  const p = await podEnv(t, { registryHost: registry.host, extraConfig, dir, image: image.ref });
  return {
    berth: p.berth,
    dir: p.berth.dir,
    /** Runs `script` to completion in a fresh pod; its stdout+stderr from the CRI log. */
    run: async (script, c = {}, pod = {}) => (await p.run(script, c, pod)).out,
    /** A running `sleep 1000` container; its id. */
    running: async (c = {}) => p.container(await p.loggedPod(), { command: ['sleep', '1000'], ...c }),
  };
}

const sc = (s: NonNullable<NonNullable<ContainerConfig['linux']>['security_context']>): Partial<ContainerConfig> => ({ linux: { security_context: s } });

/** Shell lines that try one open each and print "<label> ok" or "<label> <error>". */
const opens = (...tries: [label: string, redirect: string][]) =>
  tries.map(([label, redirect]) => `if (: ${redirect}) 2>/tmp/err; then echo "${label} ok"; else echo "${label} $(cat /tmp/err)"; fi`).join('\n');

const result = (out: string, label: string) => out.split('\n').find((l) => l.startsWith(`${label} `))?.slice(label.length + 1) ?? `(no line for ${label} in ${JSON.stringify(out)})`;

test('a default container may mknod a device but not open it, nor nodes shipped in its image (root or not); null, zero, urandom, tty, ptmx and pts still work', async (t) => {
  const e = await env(t);
  const made = await e.run(['mknod /tmp/kvm c 10 232 && echo made', opens(['read', '</tmp/kvm'], ['readwrite', '<>/tmp/kvm'])].join('\n'));
  t.regex(made, /^made$/m);
  t.regex(result(made, 'read'), EPERM);
  t.regex(result(made, 'readwrite'), EPERM);

  const shipped = opens(['fuse', '</opt/fuse'], ['kvm', '<>/opt/kvm']);
  const asRoot = await e.run(shipped);
  t.regex(result(asRoot, 'fuse'), EPERM);
  t.regex(result(asRoot, 'kvm'), EPERM);
  const asUser = await e.run(`id -u; grep CapEff /proc/self/status\n${shipped}`, sc({ run_as_user: { value: '1000' }, capabilities: { drop_capabilities: ['ALL'] } }));
  t.regex(asUser, /^1000$/m);
  t.regex(asUser, /CapEff:\s+0+$/m);
  t.regex(result(asUser, 'fuse'), EPERM);
  t.regex(result(asUser, 'kvm'), EPERM);

  // The standard devices keep working.
  const out = await e.run([
    opens(['null', '<>/dev/null'], ['zero', '</dev/zero'], ['urandom', '</dev/urandom'], ['full', '>/dev/full'], ['tty', '<>/dev/tty'], ['ptmx', '<>/dev/ptmx']),
    'head -c 4 /dev/urandom | wc -c',
    // a pty pair of the container's own devpts: the slave is locked (EIO), which is the driver, not the policy
    'exec 3<>/dev/ptmx',
    opens(['pts', '<>/dev/pts/0']),
  ].join('\n'));
  for (const ok of ['null', 'zero', 'urandom', 'full', 'ptmx']) t.is(result(out, ok), 'ok', `${ok}: ${out}`);
  t.regex(out, /^4$/m);
  // No controlling terminal: ENXIO from the tty driver.
  t.notRegex(result(out, 'tty'), EPERM);
  t.notRegex(result(out, 'pts'), EPERM);
  t.false(result(out, 'pts').startsWith('(no line'), out);
  // With a terminal, /dev/tty and /dev/console (the pty, 136:N) open.
  const tty = await e.run(opens(['tty', '<>/dev/tty'], ['console', '<>/dev/console']), { tty: true });
  t.is(result(tty, 'tty'), 'ok', tty);
  t.is(result(tty, 'console'), 'ok', tty);
});

test('a CRI-listed device opens with exactly its permissions, also in an exec; privileged opens anything', async (t) => {
  const e = await env(t);
  const fuseR = { devices: [{ host_path: '/dev/fuse', container_path: '/dev/fuse', permissions: 'r' }] };
  const out = await e.run(opens(['read', '</dev/fuse'], ['write', '>/dev/fuse'], ['kvm', '</opt/kvm']), fuseR);
  t.is(result(out, 'read'), 'ok', out);
  t.regex(result(out, 'write'), EPERM);
  t.regex(result(out, 'kvm'), EPERM);

  const rw = await e.run(opens(['readwrite', '<>/dev/fuse']), { devices: [{ host_path: '/dev/fuse', container_path: '/dev/fuse', permissions: 'rw' }] });
  t.is(result(rw, 'readwrite'), 'ok', rw);

  // ExecSync'd processes join the container's cgroups and get the same answers.
  const id = await e.running(fuseR);
  const script = `mknod /tmp/m c 10 232\n${opens(['read', '</dev/fuse'], ['write', '>/dev/fuse'], ['kvm', '</opt/kvm'], ['made', '</tmp/m'])}`;
  const exec = await e.berth.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', script], timeout: 10 });
  const text = exec.stdout.toString();
  t.is(result(text, 'read'), 'ok', text);
  t.regex(result(text, 'write'), EPERM);
  t.regex(result(text, 'kvm'), EPERM);
  t.regex(result(text, 'made'), EPERM);

  const privileged = { linux: { security_context: { privileged: true } } };
  const priv = await e.run(opens(['fuse', '<>/opt/fuse'], ['host', '</dev/fuse']), sc({ privileged: true }), privileged);
  t.is(result(priv, 'fuse'), 'ok', priv);
  t.is(result(priv, 'host'), 'ok', priv);
});

test('bad device permissions are INVALID_ARGUMENT naming the field; nothing is made', async (t) => {
  const e = await env(t);
  const pc = podConfig();
  const { pod_sandbox_id } = await e.berth.runtime.RunPodSandbox({ config: pc });
  const st = await e.berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
  t.truthy(JSON.parse(st.info.info).cgroup.path);
  for (const [permissions, index] of [['rwx', 0], ['rw-', 0]] as const) {
    const err = (await t.throwsAsync(e.berth.runtime.CreateContainer({
      pod_sandbox_id,
      config: containerConfig(image.ref, { command: ['true'], devices: [{ host_path: '/dev/fuse', container_path: '/dev/fuse', permissions }] }),
      sandbox_config: pc,
    }))) as unknown as grpc.ServiceError;
    t.is(err.code, grpc.status.INVALID_ARGUMENT);
    t.regex(err.details, new RegExp(`config\\.devices\\[${index}\\]\\.permissions`));
  }
  const notNode = (await t.throwsAsync(e.berth.runtime.CreateContainer({
    pod_sandbox_id,
    config: containerConfig(image.ref, { command: ['true'], devices: [{ host_path: '/etc/passwd', container_path: '/dev/x', permissions: 'r' }] }),
    sandbox_config: pc,
  }))) as unknown as grpc.ServiceError;
  t.is(notNode.code, grpc.status.INVALID_ARGUMENT);
  t.regex(notNode.details, /config\.devices\[0\]\.host_path \/etc\/passwd is not a device node/);
  t.deepEqual((await e.berth.runtime.ListContainers({})).containers, []);
});

test('a CDI device from a YAML spec gets its node (with its permissions), env and mount; hooks and unknown devices are refused', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-test-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const specDir = path.join(dir, 'cdi');
  const data = path.join(dir, 'vendor-data');
  await fs.mkdir(specDir);
  await fs.mkdir(data);
  await fs.writeFile(path.join(data, 'hello.txt'), 'from the host\n');
  await fs.writeFile(path.join(specDir, 'berth-test.yaml'), [
    'cdiVersion: "0.6.0"',
    'kind: berth.test/dev',
    'containerEdits:',
    '  env: ["CDI_COMMON=yes"]',
    'devices:',
    '  - name: fuse',
    '    containerEdits:',
    '      env: ["CDI_VAR=hello"]',
    '      deviceNodes:',
    '        - path: /dev/cdi-fuse',
    '          hostPath: /dev/fuse',
    '          permissions: r',
    '      mounts:',
    `        - hostPath: ${data}`,
    '          containerPath: /cdi-data',
    '          options: [ro, nosuid, nodev]',
    '  - name: hooked',
    '    containerEdits:',
    '      hooks:',
    '        - hookName: createContainer',
    '          path: /bin/true',
    '',
  ].join('\n'));
  // Broken files are skipped, not fatal: one of another vendor (cut off), one that would define berth.test/bad.
  await fs.writeFile(path.join(specDir, 'broken.json'), '{"cdiVersion": "0.6.0", "kind": "other.vendor/thing", "devices": [');
  await fs.writeFile(path.join(specDir, 'bad.yaml'), 'kind: berth.test/bad\ndevices: [{name: x}]\n');
  const e = await env(t, `[cdi]\nspec_dirs = ["${specDir}"]\n`, dir);
  const cdi = (name: string): Partial<ContainerConfig> => ({ CDI_devices: [{ name }] });
  const out = await e.run([
    'echo "var=$CDI_VAR common=$CDI_COMMON"',
    'cat /cdi-data/hello.txt',
    'stat -c "type=%F number=%t:%T" /dev/cdi-fuse',
    opens(['read', '</dev/cdi-fuse'], ['write', '>/dev/cdi-fuse'], ['mountwrite', '>/cdi-data/x']),
  ].join('\n'), cdi('berth.test/dev=fuse'));
  t.regex(out, /^var=hello common=yes$/m);
  t.regex(out, /^from the host$/m);
  t.regex(out, /^type=character special file number=a:e5$/m);
  t.is(result(out, 'read'), 'ok', out);
  t.regex(result(out, 'write'), EPERM);
  t.regex(result(out, 'mountwrite'), /Read-only file system/);

  const pc = podConfig();
  const { pod_sandbox_id } = await e.berth.runtime.RunPodSandbox({ config: pc });
  const create = (name: string) => e.berth.runtime.CreateContainer({ pod_sandbox_id, config: containerConfig(image.ref, { command: ['true'], ...cdi(name) }), sandbox_config: pc });
  const hooked = (await t.throwsAsync(create('berth.test/dev=hooked'))) as unknown as grpc.ServiceError;
  t.is(hooked.code, grpc.status.INVALID_ARGUMENT);
  t.regex(hooked.details, /config\.cdi_devices\[0\]: CDI device "berth\.test\/dev=hooked" needs hooks .*berth does not run CDI hooks/);
  const unknown = (await t.throwsAsync(create('berth.test/dev=nope'))) as unknown as grpc.ServiceError;
  t.is(unknown.code, grpc.status.NOT_FOUND);
  t.regex(unknown.details, /config\.cdi_devices\[0\]: CDI device "berth\.test\/dev=nope" not found/);
  const onlyInBad = (await t.throwsAsync(create('berth.test/bad=x'))) as unknown as grpc.ServiceError;
  t.is(onlyInBad.code, grpc.status.FAILED_PRECONDITION);
  t.regex(onlyInBad.details, /config\.cdi_devices\[0\]: CDI device "berth\.test\/bad=x" not found; .*bad\.yaml \(cdiVersion/);
  t.true(e.berth.logs.some((l) => l.includes('CDI spec file skipped') && l.includes('broken.json')), 'the broken file is named in a warning');
  t.is((await e.berth.runtime.ListContainers({ filter: { pod_sandbox_id } })).containers.length, 0);
});
