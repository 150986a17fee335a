import test from 'ava';
import { credentialsApply, credentialsFromAuthConfig, parseChallenge } from '../../src/registry/auth.js';
import { BerthError } from '../../src/errors.js';
import { endpointsFor } from '../../src/registry/client.js';
import { defaultConfig } from '../../src/config/schema.js';

test('a bearer challenge is parsed with quoted params', (t) => {
  const c = parseChallenge('Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push"');
  t.is(c?.scheme, 'bearer');
  t.is(c?.params.realm, 'http://127.0.0.1:1/token');
  t.is(c?.params.service, 'reg');
  t.is(c?.params.scope, 'repository:a/b:pull,push');
});

test('a basic challenge is parsed', (t) => {
  t.deepEqual(parseChallenge('Basic realm="Registry Realm"'), { scheme: 'basic', params: { realm: 'Registry Realm' } });
});

test('the CRI auth field is decoded into username and password', (t) => {
  const creds = credentialsFromAuthConfig({ auth: Buffer.from('alice:s3:cret').toString('base64') });
  t.deepEqual(creds, { username: 'alice', password: 's3:cret' });
  t.is(credentialsFromAuthConfig({}), undefined);
});

test('mirrors replace the original host; http:// endpoints are plain HTTP', (t) => {
  const config = defaultConfig().registry;
  config.mirrors['registry.k8s.io'] = ['http://127.0.0.1:5000', 'mirror.example'];
  t.deepEqual(endpointsFor('registry.k8s.io', config).map((e) => e.base), ['http://127.0.0.1:5000', 'https://mirror.example']);
});

test('docker.io is reached at its API host, insecure hosts over http', (t) => {
  const config = defaultConfig().registry;
  config.insecure.push('127.0.0.1:5000');
  t.deepEqual(endpointsFor('docker.io', config).map((e) => e.base), ['https://registry-1.docker.io']);
  t.deepEqual(endpointsFor('127.0.0.1:5000', config).map((e) => e.base), ['http://127.0.0.1:5000']);
});

test('an auth field that is not base64 "user:password" is INVALID_ARGUMENT naming auth', (t) => {
  for (const auth of [Buffer.from('no-colon').toString('base64'), Buffer.from(':nouser').toString('base64'), '%%%not base64%%%']) {
    const err = t.throws(() => credentialsFromAuthConfig({ auth }), { instanceOf: BerthError });
    t.is(err?.kind, 'invalid_argument');
    t.regex(err?.message ?? '', /\bauth\b/);
  }
  // An explicit username wins; auth is then not looked at.
  t.deepEqual(credentialsFromAuthConfig({ username: 'u', password: 'p', auth: 'garbage' }), { username: 'u', password: 'p' });
});

test('pull credentials go to the registry they name, never to a mirror of another', (t) => {
  const hub = credentialsFromAuthConfig({ username: 'u', password: 'p', server_address: 'https://index.docker.io/v1/' })!;
  t.is(hub.serverAddress, 'https://index.docker.io/v1/');
  t.true(credentialsApply(hub, 'registry-1.docker.io', false));
  t.false(credentialsApply(hub, '127.0.0.1:5000', true), 'a mirror of docker.io does not get docker.io credentials');
  const mirror = credentialsFromAuthConfig({ username: 'u', password: 'p', server_address: '127.0.0.1:5000' })!;
  t.true(credentialsApply(mirror, '127.0.0.1:5000', true), 'credentials naming the mirror are for the mirror');
  t.false(credentialsApply(mirror, '127.0.0.1:5001', false));
  // Without a server_address (crictl --creds) they stay with the image's own registry.
  const bare = credentialsFromAuthConfig({ username: 'u', password: 'p' })!;
  t.true(credentialsApply(bare, 'quay.io', false));
  t.false(credentialsApply(bare, 'mirror.local:5000', true));
  t.is(credentialsFromAuthConfig({ server_address: 'quay.io' }), undefined, 'an address alone is no credentials');
});

test('loopback registries are plain HTTP by default, unless switched off or given a CA', (t) => {
  const config = defaultConfig().registry;
  const base = (domain: string) => endpointsFor(domain, config).map((e) => e.base)[0];
  for (const host of ['127.0.0.1:5000', '127.8.9.10', 'localhost:5000', 'LOCALHOST', '[::1]:5000']) t.is(base(host), `http://${host}`, host);
  for (const host of ['10.0.0.1:5000', '128.0.0.1:5000', 'localhost.example.com:5000', '[::2]:5000', 'registry.k8s.io']) {
    t.is(base(host), `https://${host}`, host);
  }
  config.hosts['127.0.0.1:5443'] = { caFile: '/etc/berth/ca.pem' };
  t.is(base('127.0.0.1:5443'), 'https://127.0.0.1:5443', 'a CA for a loopback host says it speaks TLS');
  config.mirrors['docker.io'] = ['127.0.0.1:5000', '127.0.0.1:5443', 'mirror.example'];
  t.deepEqual(endpointsFor('docker.io', config).map((e) => e.base), ['http://127.0.0.1:5000', 'https://127.0.0.1:5443', 'https://mirror.example']);
  config.loopbackPlainHttp = false;
  t.is(base('127.0.0.1:5000'), 'https://127.0.0.1:5000');
  config.insecure.push('127.0.0.1:5000');
  t.is(base('127.0.0.1:5000'), 'http://127.0.0.1:5000', 'registry.insecure still applies');
});
