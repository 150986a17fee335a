import test from 'ava';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'smol-toml';
import { defaultConfig, validateConfig } from '../../src/config/schema.js';
import { LAUNCHER } from '../helpers/berth.js';

// The berth binary as an operator meets it: exit codes and what goes to stdout and stderr.

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function berth(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(LAUNCHER, args, { timeout: 30000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('--help and -h print the usage to stdout and exit 0', async (t) => {
  for (const flag of ['--help', '-h']) {
    const run = await berth(flag);
    t.is(run.code, 0, flag);
    t.regex(run.stdout, /^usage: berth/);
    t.regex(run.stdout, /--state-dir DIR/);
    t.regex(run.stdout, /config check \[--config FILE\]/);
    t.is(run.stderr, '');
  }
});

test('--version and version print berth, commit, CRI API and node versions and exit 0', async (t) => {
  for (const args of [['--version'], ['version']]) {
    const run = await berth(...args);
    t.is(run.code, 0);
    t.regex(run.stdout, /^berth \d+\.\d+\.\d+\ncommit: \S+\nCRI API: runtime\.v1 .*\nnode: v\d+/);
  }
});

test('help config describes the config commands and exits 0', async (t) => {
  const run = await berth('help', 'config');
  t.is(run.code, 0);
  t.regex(run.stdout, /usage: berth config default/);
  t.regex(run.stdout, /usage: berth config check \[--config FILE\]/);
});

test('an unknown flag exits 2 with a one-line hint on stderr', async (t) => {
  const run = await berth('--frobnicate');
  t.is(run.code, 2);
  t.is(run.stdout, '');
  t.is(run.stderr, "berth: unknown option --frobnicate for berth (see 'berth --help')\n");
});

test('config default prints TOML that loads back to the defaults', async (t) => {
  const run = await berth('config', 'default');
  t.is(run.code, 0);
  t.deepEqual(validateConfig(parse(run.stdout) as Record<string, unknown>), defaultConfig());
});

test('config check: a good file exits 0 printing the effective config, a bad one exits 1 naming the key', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-cli-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const good = path.join(dir, 'good.toml');
  await fs.writeFile(good, '[registry]\ninsecure = ["reg.local:5000"]\n[network]\nmode = "embedded"\n');
  const ok = await berth('config', 'check', '--config', good);
  t.is(ok.code, 0, ok.stderr);
  const effective = validateConfig(parse(ok.stdout) as Record<string, unknown>);
  t.deepEqual(effective.registry.insecure, ['reg.local:5000']);
  t.is(effective.network.mode, 'embedded');
  t.is(effective.registry.requestTimeoutSeconds, 60, 'defaults filled in');

  const bad = path.join(dir, 'bad.toml');
  await fs.writeFile(bad, '[registry]\nmax_concurrent_downloads = 0\n');
  const refused = await berth('config', 'check', '--config', bad);
  t.is(refused.code, 1);
  t.is(refused.stdout, '');
  t.regex(refused.stderr, /registry\.max_concurrent_downloads: must be an integer from 1 to 64/);

  const missingCa = path.join(dir, 'ca.toml');
  await fs.writeFile(missingCa, `[registry.hosts."reg.example:5443"]\nca_file = "${dir}/nope.pem"\n`);
  const noCa = await berth('config', 'check', '--config', missingCa);
  t.is(noCa.code, 1);
  t.regex(noCa.stderr, /registry\.hosts\."reg\.example:5443"\.ca_file: cannot read/);

  const absent = await berth('config', 'check', '--config', path.join(dir, 'absent.toml'));
  t.is(absent.code, 1, 'a file named with --config must exist');
});
