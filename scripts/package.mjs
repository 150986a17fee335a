#!/usr/bin/env node
// `npm run package`: the release bundle, berth-<version>-linux-<arch>.tar.gz, from an already built tree (dist/ and
// native/build/). A node needs nothing else: the bundle carries the node binary running this script, the production
// node_modules (copied from the ones installed here, so packaging needs no network), berth-shim, the systemd unit
// and the default configuration rendered by berth itself. scripts/install.sh (also in the bundle) installs it.
//
//   node scripts/package.mjs [--out DIR] [--version V]
//
// --version replaces package.json's version in the bundle's name and files (a test makes an "upgrade" with it).
import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: opts } = parseArgs({ options: { out: { type: 'string' }, version: { type: 'string' } } });
const pkg = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8'));
const version = opts.version ?? pkg.version;
if (!/^[0-9A-Za-z][0-9A-Za-z.+-]*$/.test(version)) fail(`--version ${JSON.stringify(version)}: letters, digits, ".", "+" and "-" only`);

// Debian's and Kubernetes' names for the machine, which install.sh derives from `uname -m` the same way.
const ARCHES = { x64: 'amd64', arm64: 'arm64' };
const arch = ARCHES[process.arch] ?? fail(`no release bundle for node's arch ${process.arch} (known: ${Object.keys(ARCHES).join(', ')})`);
const name = `berth-${version}-linux-${arch}`;
const outDir = path.resolve(opts.out ?? path.join(repo, 'release'));

function fail(message) {
  process.stderr.write(`package: ${message}\n`);
  process.exit(1);
}

for (const need of ['dist/src/main.js', 'dist/build-info.json', 'native/build/berth-shim']) {
  if (!existsSync(path.join(repo, need))) fail(`${need} is missing: build first (make -s -C native && npm run build)`);
}

const staging = mkdtempSync(path.join(os.tmpdir(), 'berth-package-'));
try {
  const top = path.join(staging, name);
  const rootfs = path.join(top, 'root');
  const opt = path.join(rootfs, 'opt/berth');

  // Compiled JavaScript only: no tests, bench, source maps (their sources are not shipped) or declarations.
  cpSync(path.join(repo, 'dist/src'), path.join(opt, 'dist/src'), { recursive: true, filter: (src) => !/\.(map|d\.ts)$/.test(src) });
  cpSync(path.join(repo, 'dist/build-info.json'), path.join(opt, 'dist/build-info.json'));
  // Read at run time, relative to dist/: the CRI proto (gRPC loads it), package.json (the version berth reports).
  cpSync(path.join(repo, 'proto/api.proto'), path.join(opt, 'proto/api.proto'));
  writeFileSync(path.join(opt, 'package.json'), JSON.stringify({ name: pkg.name, version, type: pkg.type, license: pkg.license, dependencies: pkg.dependencies }, null, 2) + '\n');
  // Where src/kernel/shim.ts looks for it, relative to dist/.
  mkdirSync(path.join(opt, 'native/build'), { recursive: true });
  cpSync(path.join(repo, 'native/build/berth-shim'), path.join(opt, 'native/build/berth-shim'));

  copyProductionModules(path.join(opt, 'node_modules'));

  mkdirSync(path.join(opt, 'node/bin'), { recursive: true });
  cpSync(process.execPath, path.join(opt, 'node/bin/node'));
  chmodSync(path.join(opt, 'node/bin/node'), 0o755);
  for (const license of ['/usr/share/doc/nodejs/copyright', path.join(path.dirname(process.execPath), '../LICENSE')]) {
    if (existsSync(license)) {
      cpSync(license, path.join(opt, 'node/LICENSE'));
      break;
    }
  }

  mkdirSync(path.join(opt, 'bin'), { recursive: true });
  writeFileSync(path.join(opt, 'bin/berth'), launcher(), { mode: 0o755 });
  mkdirSync(path.join(rootfs, 'usr/local/bin'), { recursive: true });
  symlinkSync('/opt/berth/bin/berth', path.join(rootfs, 'usr/local/bin/berth'));
  mkdirSync(path.join(rootfs, 'etc/systemd/system'), { recursive: true });
  cpSync(path.join(repo, 'contrib/berth.service'), path.join(rootfs, 'etc/systemd/system/berth.service'));

  const config = await defaultConfigFile();
  writeFileSync(path.join(opt, 'config.toml.example'), config.example);
  // Installed only where no file exists (install.sh): placed apart from root/, which is copied as a whole.
  mkdirSync(path.join(top, 'config'));
  writeFileSync(path.join(top, 'config/config.toml'), config.installed);
  writeFileSync(path.join(top, 'config/crictl.yaml'), `runtime-endpoint: unix://${config.socket}\nimage-endpoint: unix://${config.socket}\ntimeout: 30\n`);

  cpSync(path.join(repo, 'scripts/install.sh'), path.join(top, 'install.sh'));
  chmodSync(path.join(top, 'install.sh'), 0o755);
  // key=value lines that install.sh reads (never sources).
  writeFileSync(
    path.join(top, 'bundle-info'),
    [`version=${version}`, `arch=${arch}`, `commit=${JSON.parse(readFileSync(path.join(repo, 'dist/build-info.json'), 'utf8')).commit || 'unknown'}`, `node=${process.version}`, ''].join('\n'),
  );

  mkdirSync(outDir, { recursive: true });
  const tarball = path.join(outDir, `${name}.tar.gz`);
  // Owned by root whoever packs it, and in a stable order.
  execFileSync('tar', ['-C', staging, '--owner=0', '--group=0', '--numeric-owner', '--sort=name', '-czf', tarball, name], { stdio: 'inherit', timeout: 120_000 });
  process.stdout.write(`${tarball}\n`);
} finally {
  rmSync(staging, { recursive: true, force: true });
}

/** The non-dev packages of package-lock.json that are installed here (the other platforms' optional koffi builds are not). */
function copyProductionModules(target) {
  const lock = JSON.parse(readFileSync(path.join(repo, 'package-lock.json'), 'utf8'));
  const modules = path.join(repo, 'node_modules');
  let copied = 0;
  for (const [where, entry] of Object.entries(lock.packages)) {
    if (where === '' || entry.dev) continue;
    const source = path.join(repo, where);
    if (!existsSync(source)) {
      if (entry.optional) continue;
      fail(`${where} (a production dependency) is not installed: run npm ci`);
    }
    // A nested node_modules is an entry of its own, copied (or not, if dev) when its turn comes.
    const dest = path.join(target, path.relative(modules, source));
    const nested = (src) => src !== source && path.basename(src) === 'node_modules';
    // koffi's platform package carries a musl build beside the glibc one: the bundled node is glibc's, so it can
    // never load (and ldd of it would name musl's libc).
    const musl = (src) => where.startsWith('node_modules/@koromix/koffi-linux-') && /^musl_/.test(path.relative(source, src));
    cpSync(source, dest, { recursive: true, dereference: true, filter: (src) => !nested(src) && !musl(src) });
    copied++;
  }
  if (copied === 0) fail('package-lock.json lists no production packages');
  // Tools' command links point into packages, some of them dev ones: berth runs none of them.
  rmSync(path.join(target, '.bin'), { recursive: true, force: true });
  rmSync(path.join(target, '.package-lock.json'), { force: true });
}

/** bin/berth with the bundled node: the same node flags, read from bin/berth so the two cannot drift. */
function launcher() {
  const source = readFileSync(path.join(repo, 'bin/berth'), 'utf8');
  const m = /^exec node ((?:--\S+ )*)"\$\(dirname "\$\(readlink -f "\$0"\)"\)\/\.\.\/dist\/src\/main\.js" "\$@"$/m.exec(source);
  if (!m) fail('bin/berth no longer has the `exec node FLAGS ".../dist/src/main.js" "$@"` line this script mirrors');
  // Its environment settings too (the malloc arena limit).
  const exports = source.split('\n').filter((line) => /^export [A-Za-z_][A-Za-z0-9_]*=/.test(line));
  return [
    '#!/bin/sh',
    "# berth's launcher in a release bundle: the node shipped beside it, with bin/berth's flags and environment (see that file for why).",
    '# Resolved from its own real path, so /usr/local/bin/berth (a symlink) and a root other than / both work.',
    ...exports,
    'here="$(dirname "$(readlink -f "$0")")"',
    `exec "$here/../node/bin/node" ${m[1]}"$here/../dist/src/main.js" "$@"`,
    '',
  ].join('\n');
}

/**
 * berth's own defaults as TOML (`berth config default`'s renderer). The installed file has every key commented out,
 * so berth runs on its embedded defaults (a later release's better default applies) and the file shows what to set.
 */
async function defaultConfigFile() {
  const { renderConfig } = await import(path.join(repo, 'dist/src/config/render.js'));
  const { defaultConfig } = await import(path.join(repo, 'dist/src/config/schema.js'));
  const { defaults } = await import(path.join(repo, 'dist/src/cli/args.js'));
  const example = renderConfig(defaultConfig(), [`berth ${version}: every key with its default value (berth config default).`]);
  const installed = renderConfig(defaultConfig(), [
    'berth configuration. Every key below is commented out at its default value: uncomment and change what you need,',
    'check with `berth config check`, then `systemctl reload berth` (the [registry] section and log.level) or restart.',
  ])
    .split('\n')
    .map((line) => (/^[a-z_]+ = /.test(line) ? `# ${line}` : line))
    .join('\n');
  return { example, installed, socket: defaults.socket };
}
