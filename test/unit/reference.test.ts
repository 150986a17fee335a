import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { formatReference, parseReference } from '../../src/image/reference.js';

const normalised: [string, string][] = [
  ['busybox', 'docker.io/library/busybox:latest'],
  ['busybox:1.36', 'docker.io/library/busybox:1.36'],
  ['library/busybox', 'docker.io/library/busybox:latest'],
  ['docker.io/busybox', 'docker.io/library/busybox:latest'],
  ['index.docker.io/library/busybox:1', 'docker.io/library/busybox:1'],
  ['someone/tool:v2', 'docker.io/someone/tool:v2'],
  ['registry.k8s.io/pause:3.9', 'registry.k8s.io/pause:3.9'],
  ['127.0.0.1:5000/berth/multi:v1', '127.0.0.1:5000/berth/multi:v1'],
  ['localhost/app', 'localhost/app:latest'],
  ['localhost:5000/a/b/c:t', 'localhost:5000/a/b/c:t'],
  ['gcr.io/k8s-staging-cri-tools/test-image-tags:1', 'gcr.io/k8s-staging-cri-tools/test-image-tags:1'],
];

for (const [input, expected] of normalised) {
  test(`reference "${input}" normalises to ${expected}`, (t) => {
    t.is(formatReference(parseReference(input)), expected);
  });
}

const digest = 'sha256:' + 'a'.repeat(64);

test('a digest reference keeps the digest and gets no default tag', (t) => {
  const ref = parseReference(`busybox@${digest}`);
  t.is(ref.digest, digest);
  t.is(ref.tag, undefined);
  t.is(formatReference(ref), `docker.io/library/busybox@${digest}`);
});

test('a reference with both tag and digest keeps both', (t) => {
  const ref = parseReference(`127.0.0.1:5000/x/y:v1@${digest}`);
  t.is(ref.domain, '127.0.0.1:5000');
  t.is(ref.path, 'x/y');
  t.is(ref.tag, 'v1');
  t.is(ref.digest, digest);
});

const malformed = ['', ' busybox', 'Busybox', 'busybox:', 'busybox@sha256:abc', 'a//b', 'busy box', 'busybox:-bad', '-x/y', 'x@md5:' + 'a'.repeat(32)];
for (const input of malformed) {
  test(`malformed reference ${JSON.stringify(input)} is an invalid_argument naming the reference`, (t) => {
    const err = t.throws(() => parseReference(input), { instanceOf: BerthError }) as BerthError;
    t.is(err.kind, 'invalid_argument');
    if (input !== '') t.true(err.message.includes(input.trim() === input ? input : JSON.stringify(input).slice(1, -1)) || err.message.includes('whitespace'));
  });
}
