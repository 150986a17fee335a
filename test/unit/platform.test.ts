import test from 'ava';
import { selectPlatform } from '../../src/image/platform.js';

const amd64 = { os: 'linux', architecture: 'amd64' };

test('the host platform is chosen even when a decoy is listed first', (t) => {
  const entries = [{ platform: { os: 'linux', architecture: 'arm64' } }, { platform: amd64 }];
  t.is(selectPlatform(entries, amd64), 1);
});

test('entries without a platform (attestations) never match', (t) => {
  t.is(selectPlatform([{}, { platform: { os: 'unknown', architecture: 'unknown' } }], amd64), -1);
});

test('no entry for the host platform selects nothing', (t) => {
  t.is(selectPlatform([{ platform: { os: 'windows', architecture: 'amd64' } }], amd64), -1);
});

test('an exact variant beats an entry without a variant', (t) => {
  const want = { os: 'linux', architecture: 'arm', variant: 'v7' };
  const entries = [{ platform: { os: 'linux', architecture: 'arm' } }, { platform: { os: 'linux', architecture: 'arm', variant: 'v7' } }];
  t.is(selectPlatform(entries, want), 1);
});

test('arm64 treats a missing variant as v8', (t) => {
  const want = { os: 'linux', architecture: 'arm64', variant: 'v8' };
  t.is(selectPlatform([{ platform: { os: 'linux', architecture: 'arm64' } }], want), 0);
});

test('a different variant is refused', (t) => {
  const want = { os: 'linux', architecture: 'arm', variant: 'v7' };
  t.is(selectPlatform([{ platform: { os: 'linux', architecture: 'arm', variant: 'v6' } }], want), -1);
});
