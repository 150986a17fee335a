import test, { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'smol-toml';
import { startRegistry, leakedRegistryPids, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth } from '../helpers/berth.js';
import { containerConfig, hostLeftovers, podConfig } from '../helpers/cri.js';
import { listing, waitFor } from '../helpers/util.js';

// The release bundle as an operator gets it: npm run package's tarball, installed by scripts/install.sh into a
// temporary root, berth started from that root's /opt/berth with the node it carries, a pod run, then uninstalled.

const run = promisify(execFile);
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const INSTALL = path.join(repo, 'scripts/install.sh');
const version = JSON.parse(await fs.readFile(path.join(repo, 'package.json'), 'utf8')).version as string;
const ARCH = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch];

let work: string;
let tarball: string;
/** The tarball unpacked once, for the tests that make variants of it (another version, another arch). */
let unpacked: string;
let registry: Registry;
let image: PushedImage;

test.before(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-bundle-'));
  const { stdout } = await run(process.execPath, [path.join(repo, 'scripts/package.mjs'), '--out', work], { timeout: 180_000 });
  tarball = stdout.trim();
  unpacked = path.join(work, 'unpacked');
  await fs.mkdir(unpacked);
  await run('tar', ['-C', unpacked, '-xzf', tarball], { timeout: 120_000 });
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/bundle', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});

// One hook: ava runs after.always hooks concurrently, and the checks must follow the registry's stop.
test.after.always('the registry stopped, nothing left running or mounted', async (t) => {
  await registry?.stop();
  t.deepEqual(leakedRegistryPids(), []);
  if (!work) return;
  t.deepEqual(await hostLeftovers(work, []), []);
  await fs.rm(work, { recursive: true, force: true });
});

async function tempRoot(t: ExecutionContext): Promise<string> {
  const root = await fs.mkdtemp(path.join(work, 'root-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  return root;
}

async function install(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run(INSTALL, args, { timeout: 180_000 });
}

async function installFails(...args: string[]): Promise<string> {
  try {
    await install(...args);
  } catch (err) {
    return (err as { stderr: string }).stderr;
  }
  throw new Error(`install.sh ${args.join(' ')} succeeded`);
}

const manifestOf = (root: string) => fs.readFile(path.join(root, 'opt/berth/.install-manifest'), 'utf8');

/** A copy of the unpacked bundle with `edit` applied (files are written anew, never through the hard links). */
async function variant(name: string, edit: (dir: string) => Promise<void>): Promise<string> {
  const dir = path.join(work, name);
  await run('cp', ['-al', path.join(unpacked, path.basename(tarball, '.tar.gz')), dir]);
  await edit(dir);
  return dir;
}

async function rewrite(file: string, change: (text: string) => string): Promise<void> {
  const text = await fs.readFile(file, 'utf8');
  await fs.rm(file);
  await fs.writeFile(file, change(text));
}

test('the bundle is named for version and arch, holds production code only, and its programs need only glibc', async (t) => {
  t.is(path.basename(tarball), `berth-${version}-linux-${ARCH}.tar.gz`);
  const top = path.join(unpacked, path.basename(tarball, '.tar.gz'));
  const opt = path.join(top, 'root/opt/berth');
  t.regex(await fs.readFile(path.join(top, 'bundle-info'), 'utf8'), new RegExp(`^version=${version.replace(/\./g, '\\.')}\narch=${ARCH}\n`));
  for (const dev of ['ava', 'typescript', '@types/ws', '@types/tar-stream']) t.false(await exists(path.join(opt, 'node_modules', dev)), `dev dependency ${dev} shipped`);
  for (const prod of ['@grpc/grpc-js', 'koffi', 'smol-toml']) t.true(await exists(path.join(opt, 'node_modules', prod, 'package.json')), `${prod} missing`);
  t.false(await exists(path.join(opt, 'dist/test')), 'tests shipped');
  t.false(await exists(path.join(opt, 'dist/bench')), 'bench shipped');
  t.is(await fs.readFile(path.join(opt, 'node/bin/node')).then((b) => b.length), (await fs.stat(process.execPath)).size, 'the node running the build');
  // The launcher mirrors bin/berth's node flags and environment.
  const repoLauncher = await fs.readFile(path.join(repo, 'bin/berth'), 'utf8');
  const bundled = await fs.readFile(path.join(opt, 'bin/berth'), 'utf8');
  const flags = /exec node ((?:--\S+ )*)/.exec(repoLauncher)![1];
  t.true(bundled.includes(`/node/bin/node" ${flags}`));
  t.true(bundled.includes('export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX-4}"\n'), bundled);

  // What a glibc system always has. node (and koffi's addon) are C++: libstdc++ and libgcc_s, which every glibc
  // distribution installs with its base system (Debian: priority required/important), are allowed for them.
  const glibc = /^(linux-vdso|libc|libm|libdl|libpthread|librt|ld-linux[-\w.]*)\.so/;
  const cxx = /^(libstdc\+\+|libgcc_s)\.so/;
  const elves = await elfFiles(opt);
  t.true(elves.some((f) => f.endsWith('node/bin/node')) && elves.some((f) => f.endsWith('native/build/berth-shim')), elves.join('\n'));
  for (const file of elves) {
    const { stdout, stderr } = await run('ldd', [file]).catch((err: { stdout: string; stderr: string }) => err);
    if (file.endsWith('berth-shim')) {
      t.regex(stdout + stderr, /not a dynamic executable|statically linked/, 'berth-shim is static');
      continue;
    }
    const libs = stdout.split('\n').map((l) => l.trim().split(/\s+/)[0]).filter((l) => l && !l.startsWith('/'));
    const extra = libs.filter((lib) => !glibc.test(lib) && !cxx.test(lib));
    t.deepEqual(extra, [], `${path.relative(opt, file)} needs ${extra.join(', ')}`);
    t.false(stdout.includes('not found'), `${file}: ${stdout}`);
  }
});

test.serial('installed into a temporary root, berth runs a pod with its bundled node; uninstall keeps the config, purge leaves nothing', async (t) => {
  const root = await tempRoot(t);
  const before = await listing(root);
  await install('--root', root, tarball);
  const opt = path.join(root, 'opt/berth');
  t.is(await fs.readlink(path.join(root, 'usr/local/bin/berth')), '/opt/berth/bin/berth');
  t.is(await fs.readFile(path.join(root, 'etc/systemd/system/berth.service'), 'utf8'), await fs.readFile(path.join(repo, 'contrib/berth.service'), 'utf8'));
  t.regex(await fs.readFile(path.join(root, 'etc/crictl.yaml'), 'utf8'), /^runtime-endpoint: unix:\/\/\/run\/berth\/berth\.sock\nimage-endpoint: unix:\/\/\/run\/berth\/berth\.sock\n/);
  const manifest = await manifestOf(root);
  t.regex(manifest, new RegExp(`\nversion ${version.replace(/\./g, '\\.')}\narch ${ARCH}\n`));
  // The manifest lists every path the install created, and nothing else.
  const listed = manifest.split('\n').filter((l) => /^(dir|file|link|config)\t/.test(l)).map((l) => l.split('\t')[1].slice(1)).sort();
  const created = (await listing(root)).map((l) => l.replace(/\/$/, '').replace(/ -> .*/, '')).filter((l) => l !== 'opt/berth/.install-manifest').sort();
  t.deepEqual(listed, created);

  // The installed config: every key commented out (berth's embedded defaults apply), and berth accepts it.
  const configFile = path.join(root, 'etc/berth/config.toml');
  const sections = parse(await fs.readFile(configFile, 'utf8')) as Record<string, object>;
  t.true(Object.keys(sections).length > 3 && Object.values(sections).every((s) => Object.keys(s).length === 0), JSON.stringify(sections));
  const check = await run(path.join(opt, 'bin/berth'), ['config', 'check', '--config', configFile], { timeout: 60_000 });
  t.regex(check.stdout, /is valid/);
  t.regex((await run(path.join(opt, 'bin/berth'), ['--version'], { timeout: 60_000 })).stdout, new RegExp(`^berth ${version.replace(/\./g, '\\.')}\n`));

  // Idempotent: a second install changes no path and writes the same manifest.
  const once = await listing(root);
  await install('--root', root, tarball);
  t.deepEqual(await listing(root), once);
  t.is(await manifestOf(root), manifest);

  // berth from the root's /opt/berth, its state inside the root.
  const dataDir = path.join(root, 'var/lib/berth');
  await fs.mkdir(dataDir, { recursive: true });
  const berth = await startBerth({ launcher: path.join(opt, 'bin/berth'), dir: dataDir, keepDir: true, config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const cgroups: string[] = [];
  let stopped = false;
  t.teardown(async () => {
    if (!stopped) await berth.cleanup();
  });
  t.is(await fs.readlink(`/proc/${berth.child.pid}/exe`), path.join(opt, 'node/bin/node'), 'the bundled node runs berth');
  await berth.images.PullImage({ image: { image: image.ref } });
  const logDir = path.join(dataDir, 'logs');
  const pod = podConfig({ log_directory: logDir });
  const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: pod });
  cgroups.push(JSON.parse((await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true })).info.info).cgroup.path);
  const { container_id } = await berth.runtime.CreateContainer({
    pod_sandbox_id,
    config: containerConfig(image.ref, { command: ['/bin/sh', '-c', 'echo hello from the bundle'], log_path: 'hello.log' }),
    sandbox_config: pod,
  });
  await berth.runtime.StartContainer({ container_id });
  await waitFor('the container to exit', async () => (await berth.runtime.ContainerStatus({ container_id })).status!.state === 'CONTAINER_EXITED', { timeoutMs: 30_000 });
  t.is((await berth.runtime.ContainerStatus({ container_id })).status!.exit_code, 0);
  t.regex(await fs.readFile(path.join(logDir, 'hello.log'), 'utf8'), /stdout F hello from the bundle\n/);
  await berth.runtime.StopPodSandbox({ pod_sandbox_id });
  await berth.runtime.RemovePodSandbox({ pod_sandbox_id });
  await berth.cleanup();
  stopped = true;
  t.deepEqual(await hostLeftovers(root, cgroups), []);

  // Uninstall: the root as it was, but for the config (and the record of it) and what berth itself wrote.
  const berthData = (await listing(root)).filter((l) => l.startsWith('var/'));
  await install('--root', root, '--uninstall');
  t.deepEqual(await listing(root), [...before, 'etc/', 'etc/berth/', 'etc/berth/.install-manifest', 'etc/berth/config.toml', ...berthData].sort());
  // Purge: berth's data and the config go too; var/ and var/lib/ were the test's, not the installer's.
  await install('--root', root, '--uninstall', '--purge');
  t.deepEqual(await listing(root), [...before, 'var/', 'var/lib/'].sort());
});

test.serial('an existing config.toml is kept with the bundle\'s beside it as .new; an existing crictl.yaml and foreign files are left alone', async (t) => {
  const root = await tempRoot(t);
  await fs.mkdir(path.join(root, 'etc/berth'), { recursive: true });
  await fs.writeFile(path.join(root, 'etc/berth/config.toml'), '[log]\nlevel = "warn"\n');
  await fs.writeFile(path.join(root, 'etc/crictl.yaml'), 'runtime-endpoint: unix:///run/containerd/containerd.sock\n');
  const before = await listing(root);
  const { stdout } = await install('--root', root, tarball);
  t.regex(stdout, /kept .*etc\/berth\/config\.toml; this bundle's default configuration is in .*config\.toml\.new/);
  t.is(await fs.readFile(path.join(root, 'etc/berth/config.toml'), 'utf8'), '[log]\nlevel = "warn"\n');
  t.is(await fs.readFile(path.join(root, 'etc/berth/config.toml.new'), 'utf8'), await fs.readFile(path.join(unpacked, path.basename(tarball, '.tar.gz'), 'config/config.toml'), 'utf8'));
  t.is(await fs.readFile(path.join(root, 'etc/crictl.yaml'), 'utf8'), 'runtime-endpoint: unix:///run/containerd/containerd.sock\n');
  // Neither is ours: uninstalling, even with --purge of the config, leaves crictl.yaml.
  await install('--root', root, '--uninstall');
  t.deepEqual(await listing(root), before);

  // A file in the bundle's way that no install made is refused, naming it, before anything is written.
  await fs.mkdir(path.join(root, 'usr/local/bin'), { recursive: true });
  await fs.writeFile(path.join(root, 'usr/local/bin/berth'), '#!/bin/sh\n');
  const blocked = await listing(root);
  t.regex(await installFails('--root', root, tarball), /usr\/local\/bin\/berth exists and was not installed by this script/);
  t.deepEqual(await listing(root), blocked);
  await install('--root', root, '--uninstall', '--purge');
  t.false(await exists(path.join(root, 'etc/berth/config.toml')));
  t.true(await exists(path.join(root, 'etc/crictl.yaml')), 'not ours, even with --purge');
});

test.serial('a newer bundle upgrades an installed one in place, removing what it no longer ships', async (t) => {
  const root = await tempRoot(t);
  await install('--root', root, tarball);
  const next = `${version}-next.1`;
  const upgrade = await variant('upgrade', async (dir) => {
    await rewrite(path.join(dir, 'bundle-info'), (s) => s.replace(/^version=.*$/m, `version=${next}`));
    await rewrite(path.join(dir, 'root/opt/berth/package.json'), (s) => s.replace(`"version": "${version}"`, `"version": "${next}"`));
    await fs.rm(path.join(dir, 'root/opt/berth/config.toml.example'));
  });
  const node = await fs.stat(path.join(root, 'opt/berth/node/bin/node'));
  // Run from the unpacked tree, as an operator who untarred the bundle would.
  const { stdout } = await run(path.join(upgrade, 'install.sh'), ['--root', root], { timeout: 180_000 });
  t.regex(stdout, new RegExp(`upgraded berth ${version.replace(/\./g, '\\.')} to ${next.replace(/\./g, '\\.')}`));
  t.regex(await manifestOf(root), new RegExp(`\nversion ${next.replace(/\./g, '\\.')}\n`));
  t.false((await manifestOf(root)).includes('config.toml.example'));
  t.false(await exists(path.join(root, 'opt/berth/config.toml.example')), 'a file the new version does not ship is removed');
  t.is((await fs.stat(path.join(root, 'opt/berth/node/bin/node'))).ino, node.ino, 'an unchanged file is not rewritten');
  t.regex((await run(path.join(root, 'opt/berth/bin/berth'), ['--version'], { timeout: 60_000 })).stdout, new RegExp(`^berth ${next.replace(/\./g, '\\.')}\n`));
  await install('--root', root, '--uninstall', '--purge');
  t.deepEqual(await listing(root), []);
});

test.serial('a bundle for another architecture is refused, naming both, and changes nothing', async (t) => {
  const root = await tempRoot(t);
  const other = ARCH === 'amd64' ? 'arm64' : 'amd64';
  const foreign = await variant('foreign', (dir) => rewrite(path.join(dir, 'bundle-info'), (s) => s.replace(/^arch=.*$/m, `arch=${other}`)));
  const packed = path.join(work, `berth-${version}-linux-${other}.tar.gz`);
  await run('tar', ['-C', path.dirname(foreign), '-czf', packed, path.basename(foreign)], { timeout: 120_000 });
  const stderr = await installFails('--root', root, packed);
  t.regex(stderr, new RegExp(`bundle is for linux-${other}, this machine is linux-${ARCH}`));
  t.deepEqual(await listing(root), []);
});

test.serial('--purge refuses while something is mounted under /var/lib/berth (a volume would be deleted through it), and deletes nothing', async (t) => {
  const root = await tempRoot(t);
  const volume = path.join(root, 'volume');
  const rootfs = path.join(root, 'var/lib/berth/containers/c1/rootfs');
  await fs.mkdir(volume);
  await fs.writeFile(path.join(volume, 'precious'), 'data');
  await fs.mkdir(rootfs, { recursive: true });
  await run('mount', ['--bind', volume, rootfs]);
  let mounted = true;
  t.teardown(async () => {
    if (mounted) await run('umount', [rootfs]);
  });
  t.regex(await installFails('--root', root, '--uninstall', '--purge'), /var\/lib\/berth has mounts inside it: stop and remove the pods first/);
  t.is(await fs.readFile(path.join(volume, 'precious'), 'utf8'), 'data');
  t.true(await exists(rootfs));
  await run('umount', [rootfs]);
  mounted = false;
  await install('--root', root, '--uninstall', '--purge');
  t.deepEqual(await listing(root), ['var/', 'var/lib/', 'volume/', 'volume/precious'], 'berth\'s data went, the volume stayed');
});

test('contrib/berth.service: systemd-analyze verify finds nothing to say, and the unit has the keys berth relies on', async (t) => {
  const unit = await fs.readFile(path.join(repo, 'contrib/berth.service'), 'utf8');
  const keys = new Map<string, string[]>();
  let section = '';
  for (const line of unit.split('\n')) {
    if (/^\s*(#|$)/.test(line)) continue;
    const header = /^\[(\w+)\]$/.exec(line);
    if (header) {
      section = header[1];
      continue;
    }
    const kv = /^(\w+)=(.*)$/.exec(line);
    t.truthy(kv, `not a key=value line: ${line}`);
    keys.set(`${section}.${kv![1]}`, [...(keys.get(`${section}.${kv![1]}`) ?? []), kv![2]]);
  }
  const want: Record<string, string> = {
    'Unit.Before': 'kubelet.service',
    'Unit.After': 'network-online.target local-fs.target',
    'Service.Type': 'notify',
    'Service.NotifyAccess': 'main',
    'Service.ExecStart': '/opt/berth/bin/berth',
    'Service.ExecReload': '/bin/kill -HUP $MAINPID',
    'Service.Delegate': 'yes',
    'Service.KillMode': 'process',
    'Service.Restart': 'always',
    'Service.LimitNOFILE': '1048576',
    'Service.OOMScoreAdjust': '-999',
    'Install.WantedBy': 'multi-user.target',
  };
  for (const [key, value] of Object.entries(want)) t.deepEqual(keys.get(key), [value], key);

  const analyze = await run('sh', ['-c', 'command -v systemd-analyze'], {}).then(({ stdout }) => stdout.trim(), () => '');
  if (!analyze) {
    t.log('systemd-analyze is not installed: the keys were checked by the parser above only');
    return;
  }
  // verify wants ExecStart's program to exist: the repo's launcher stands in for the installed one.
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-unit-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.writeFile(path.join(dir, 'berth.service'), unit.replace('ExecStart=/opt/berth/bin/berth', `ExecStart=${path.join(repo, 'bin/berth')}`));
  const { stdout, stderr } = await run(analyze, ['verify', path.join(dir, 'berth.service')], { timeout: 60_000 });
  t.is(stdout + stderr, '', 'systemd-analyze verify said something');
});

async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(() => true, () => false);
}

async function elfFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name);
    const handle = await fs.open(file);
    const head = Buffer.alloc(4);
    await handle.read(head, 0, 4, 0);
    await handle.close();
    if (head.toString('latin1') === '\x7fELF') found.push(file);
  }
  return found;
}
