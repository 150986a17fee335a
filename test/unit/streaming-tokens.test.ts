import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { MAX_OUTSTANDING_TOKENS, TOKEN_TTL_MS, TokenCache } from '../../src/streaming/tokens.js';
import type { StreamTarget } from '../../src/streaming/types.js';

const target: StreamTarget = { kind: 'exec', containerId: 'c1', cmd: ['sh'], stdin: true, stdout: true, stderr: false, tty: true };

test('a token is 128 random bits in base64url, and redeems its target exactly once', (t) => {
  const cache = new TokenCache();
  const token = cache.insert(target);
  t.regex(token, /^[A-Za-z0-9_-]{22}$/);
  t.is(Buffer.from(token, 'base64url').length, 16);
  t.not(cache.insert(target), token);
  t.deepEqual(cache.consume(token), target);
  t.is(cache.consume(token), undefined);
  t.is(cache.consume('not-a-token'), undefined);
});

test('a token expires 60 s after it was issued, without a timer, and is then unknown', (t) => {
  let now = 1000;
  const cache = new TokenCache({ now: () => now });
  t.is(TOKEN_TTL_MS, 60_000);
  const early = cache.insert(target);
  now += 30_000;
  const late = cache.insert(target);
  now += 29_999;
  t.is(cache.size, 2);
  now += 1;
  t.is(cache.consume(early), undefined, 'the first token lapsed at 60 s');
  t.is(cache.size, 1);
  t.deepEqual(cache.consume(late), target, 'the second is 30 s old and still good');
});

test('at most 1000 tokens are outstanding: the next is RESOURCE_EXHAUSTED until one is used or expires', (t) => {
  let now = 0;
  const cache = new TokenCache({ now: () => now });
  t.is(MAX_OUTSTANDING_TOKENS, 1000);
  const tokens = Array.from({ length: 1000 }, () => cache.insert(target));
  const err = t.throws(() => cache.insert(target), { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, 'resource_exhausted');
  t.regex(err.message, /1000 streaming URLs are outstanding/);
  cache.consume(tokens[0]);
  t.notThrows(() => cache.insert(target), 'a used token frees its place');
  t.throws(() => cache.insert(target));
  now += TOKEN_TTL_MS;
  t.notThrows(() => cache.insert(target), 'expired tokens free theirs');
  t.is(cache.size, 1);
});
