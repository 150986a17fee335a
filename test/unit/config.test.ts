import test from 'ava';
import { parse } from 'smol-toml';
import { ConfigError, defaultConfig, validateConfig } from '../../src/config/schema.js';
import { parseArgs, UsageError } from '../../src/cli/args.js';

const fromToml = (text: string) => validateConfig(parse(text) as Record<string, unknown>);

test('an empty config is the embedded defaults', (t) => {
  t.deepEqual(fromToml(''), defaultConfig());
});

test('registry insecure hosts and mirrors are read', (t) => {
  const config = fromToml(`
[registry]
insecure = ["127.0.0.1:5000"]
max_concurrent_downloads = 5
[registry.mirrors]
"registry.k8s.io" = ["http://127.0.0.1:5000", "mirror.example:443"]
`);
  t.deepEqual(config.registry.insecure, ['127.0.0.1:5000']);
  t.deepEqual(config.registry.mirrors['registry.k8s.io'], ['http://127.0.0.1:5000', 'mirror.example:443']);
  t.is(config.registry.maxConcurrentDownloads, 5);
});

test('registry insecure entries may be a name, an IPv4 or bracketed IPv6 address, each with a port', (t) => {
  const hosts = ['localhost', 'registry.local:5000', '10.0.0.1', '[::1]:5000', 'my-registry.example.com:443'];
  t.deepEqual(fromToml(`[registry]\ninsecure = ${JSON.stringify(hosts)}`).registry.insecure, hosts);
});

test('CDI spec directories: /etc/cdi then /var/run/cdi by default, or as configured', (t) => {
  t.deepEqual(defaultConfig().cdi.specDirs, ['/etc/cdi', '/var/run/cdi']);
  t.deepEqual(fromToml('[cdi]\nspec_dirs = ["/opt/cdi", "/run/cdi"]').cdi.specDirs, ['/opt/cdi', '/run/cdi']);
});

const bad: [string, string][] = [
  ['[registry]\ninsecur = ["x"]', 'registry.insecur'],
  ['[regstry]\n', 'regstry'],
  ['[registry]\ninsecure = "127.0.0.1:5000"', 'registry.insecure'],
  ['[registry]\nmax_concurrent_downloads = 0', 'registry.max_concurrent_downloads'],
  ['[registry]\nrequest_timeout_seconds = "10"', 'registry.request_timeout_seconds'],
  ['[registry.mirrors]\n"docker.io" = ["ftp://x"]', 'registry.mirrors."docker.io"'],
  ['[registry.mirrors]\n"docker.io" = "http://x"', 'registry.mirrors."docker.io"'],
  ['registry = 3', 'registry'],
  ['[registry]\ninsecure = ["http://127.0.0.1:5000"]', 'registry.insecure'],
  ['[registry]\ninsecure = ["registry.local/v2"]', 'registry.insecure'],
  ['[registry]\ninsecure = ["registry.local:0"]', 'registry.insecure'],
  ['[registry]\ninsecure = ["registry.local:99999"]', 'registry.insecure'],
  ['[registry]\ninsecure = ["user@registry.local"]', 'registry.insecure'],
  ['[cdi]\nspec_dirs = ["relative/dir"]', 'cdi.spec_dirs'],
  ['[cdi]\nspec_dirs = "/etc/cdi"', 'cdi.spec_dirs'],
  ['[cdi]\nspec_dir = ["/etc/cdi"]', 'cdi.spec_dir'],
];
for (const [text, key] of bad) {
  test(`bad config ${JSON.stringify(text)} is refused naming ${key}`, (t) => {
    const err = t.throws(() => fromToml(text), { instanceOf: ConfigError }) as ConfigError;
    t.is(err.key, key);
    t.true(err.message.includes(key));
  });
}

test('command line defaults (the log level only when given)', (t) => {
  const o = parseArgs([]);
  t.is(o.socket, '/run/berth/berth.sock');
  t.is(o.root, '/var/lib/berth');
  t.is(o.stateDir, '/run/berth');
  t.is(o.configFile, '/etc/berth/config.toml');
  t.false(o.configRequired);
});

test('each command line flag is independent of the others', (t) => {
  const o = parseArgs(['--state-dir', '/tmp/s', '--root=/tmp/r']);
  t.is(o.socket, '/run/berth/berth.sock');
  t.is(o.stateDir, '/tmp/s');
  t.is(o.root, '/tmp/r');
  const p = parseArgs(['--socket', 'unix:///tmp/x.sock', '--config', '/tmp/c.toml', '--log-level', 'debug']);
  t.is(p.socket, '/tmp/x.sock');
  t.true(p.configRequired);
  t.is(p.logLevel, 'debug');
});

test('unknown flags and missing values are usage errors', (t) => {
  t.throws(() => parseArgs(['--sock', 'x']), { instanceOf: UsageError });
  t.throws(() => parseArgs(['--root']), { instanceOf: UsageError });
  t.throws(() => parseArgs(['--log-level', 'loud']), { instanceOf: UsageError });
});
