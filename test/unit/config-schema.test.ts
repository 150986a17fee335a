import test from 'ava';
import { parse } from 'smol-toml';
import { CONFIG_SCHEMA, ConfigError, defaultConfig, validateConfig } from '../../src/config/schema.js';
import { renderConfig } from '../../src/config/render.js';
import { afterReload, changedKeys, reloadable } from '../../src/config/reload.js';

const fromToml = (text: string) => validateConfig(parse(text) as Record<string, unknown>);

test('config default lists every key of the schema under its section, with its meaning above it', (t) => {
  const text = renderConfig(defaultConfig());
  const lines = text.split('\n');
  let keys = 0;
  for (const section of CONFIG_SCHEMA) {
    const at = lines.indexOf(`[${section.name}]`);
    t.true(at >= 0, `section [${section.name}]`);
    for (const k of section.keys) {
      keys++;
      const line = lines.findIndex((l, i) => i > at && l.startsWith(`${k.key} = `));
      t.true(line > at, `${section.name}.${k.key} is printed`);
      t.is(lines[line - 1], `# ${k.meaning}`, `${section.name}.${k.key} has its meaning`);
      t.true(k.meaning.length > 10 && !k.meaning.includes('\n'), `${section.name}.${k.key}: a one-line meaning`);
    }
  }
  t.is(lines.filter((l) => / = /.test(l) && !l.startsWith('#')).length, keys, 'nothing printed that the schema lacks');
});

test('config default parses back through the loader to the defaults unchanged', (t) => {
  t.deepEqual(fromToml(renderConfig(defaultConfig())), defaultConfig());
});

test('a non-default configuration prints and parses back unchanged too', (t) => {
  const config = fromToml(`
[log]
level = "debug"
[registry]
insecure = ["reg.local:5000", "[::1]:5001"]
loopback_plain_http = false
ca_files = ["/etc/berth/ca.pem"]
mirrors = { "docker.io" = ["http://127.0.0.1:5000", "mirror.example/with\\"quote"] }
[registry.hosts."reg.example:5443"]
ca_file = "/etc/berth/reg.pem"
[registry.hosts."other.example"]
[runtime]
rlimits = { nofile = [10, 20], core = [0, 0] }
`);
  t.deepEqual(fromToml(renderConfig(config)), config);
  t.deepEqual(config.registry.hosts, { 'reg.example:5443': { caFile: '/etc/berth/reg.pem' }, 'other.example': {} });
});

test('registry trust keys are validated naming the key', (t) => {
  const bad: [string, string][] = [
    ['[registry]\nloopback_plain_http = "yes"', 'registry.loopback_plain_http'],
    ['[registry]\nca_files = ["relative.pem"]', 'registry.ca_files'],
    ['[registry.hosts."reg.example"]\nca_file = "rel.pem"', 'registry.hosts."reg.example".ca_file'],
    ['[registry.hosts."reg.example"]\ncafile = "/x.pem"', 'registry.hosts."reg.example".cafile'],
    ['[registry.hosts."https://reg.example"]\nca_file = "/x.pem"', 'registry.hosts'],
    ['[log]\nlevel = "loud"', 'log.level'],
  ];
  for (const [text, key] of bad) {
    const err = t.throws(() => fromToml(text), { instanceOf: ConfigError }, text) as ConfigError;
    t.is(err.key, key, text);
  }
});

test('a reload applies the registry section and log.level and names every other changed key as needing a restart', (t) => {
  const running = defaultConfig();
  const next = fromToml('[log]\nlevel = "debug"\n[registry]\nmirrors = { "docker.io" = ["http://127.0.0.1:1"] }\n[network]\nsubnet = "10.99.0.0/16"\n');
  const changes = changedKeys(running, next);
  t.deepEqual(changes.map((c) => c.key), ['log.level', 'registry.mirrors', 'network.subnet']);
  t.deepEqual(changes.filter((c) => !reloadable(c.key)).map((c) => c.key), ['network.subnet']);
  const after = afterReload(running, next);
  t.is(after.log.level, 'debug');
  t.deepEqual(after.registry.mirrors, { 'docker.io': ['http://127.0.0.1:1'] });
  t.is(after.network.subnet, '10.86.0.0/16', 'kept until a restart');
  t.deepEqual(changedKeys(after, next).map((c) => c.key), ['network.subnet'], 'still reported at the next SIGHUP');
});

test('the streaming section: an ip:port address, TLS files both or neither, bounded timeouts, each refusal naming its key', (t) => {
  t.deepEqual(defaultConfig().streaming, { address: '127.0.0.1:0', tlsCertFile: '', tlsKeyFile: '', streamIdleTimeoutSeconds: 14400, streamCreationTimeoutSeconds: 30 });
  const ok = fromToml('[streaming]\naddress = "[::1]:10010"\ntls_cert_file = "/etc/berth/s.crt"\ntls_key_file = "/etc/berth/s.key"\nstream_idle_timeout_seconds = 60');
  t.is(ok.streaming.address, '[::1]:10010');
  t.deepEqual(fromToml(renderConfig(ok)), ok);
  t.is(fromToml('[streaming]\naddress = "0.0.0.0:10010"').streaming.address, '0.0.0.0:10010');
  const bad: [string, string][] = [
    ['[streaming]\naddress = "localhost:0"', 'streaming.address'],
    ['[streaming]\naddress = "127.0.0.1"', 'streaming.address'],
    ['[streaming]\naddress = "127.0.0.1:65536"', 'streaming.address'],
    ['[streaming]\naddress = "::1:80"', 'streaming.address'],
    ['[streaming]\naddress = "999.0.0.1:80"', 'streaming.address'],
    ['[streaming]\ntls_cert_file = "/etc/berth/s.crt"', 'streaming.tls_key_file'],
    ['[streaming]\ntls_key_file = "/etc/berth/s.key"', 'streaming.tls_cert_file'],
    ['[streaming]\ntls_cert_file = "s.crt"\ntls_key_file = "/s.key"', 'streaming.tls_cert_file'],
    ['[streaming]\nstream_idle_timeout_seconds = 0', 'streaming.stream_idle_timeout_seconds'],
    ['[streaming]\nstream_creation_timeout_seconds = 601', 'streaming.stream_creation_timeout_seconds'],
    ['[streaming]\nport = 10010', 'streaming.port'],
  ];
  for (const [text, key] of bad) {
    const err = t.throws(() => fromToml(text), { instanceOf: ConfigError }, text) as ConfigError;
    t.is(err.key, key, text);
  }
  t.false(reloadable('streaming.address'), 'the server is bound once: a change needs a restart');
});
