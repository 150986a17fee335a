import test from 'ava';
import { scavenger } from '../../src/streaming/read-pressure.js';

// The scavenge a relay asks for as it reads: one per so many bytes read, young generation only; nothing without a collector.

test('a scavenge is asked for once per the bytes given (4 MiB here), young generation only, however the reads are cut', (t) => {
  const asked: unknown[] = [];
  const note = scavenger((opts) => asked.push(opts), 4 * 1024 * 1024);
  for (let i = 0; i < 64; i++) note(64 * 1024); // 4 MiB in 64 reads
  t.deepEqual(asked, [{ type: 'minor' }]);
  note(3 * 1024 * 1024);
  t.is(asked.length, 1, 'not before the next 4 MiB');
  note(2 * 1024 * 1024);
  t.is(asked.length, 2);
});

test('without a collector (node run without --expose-gc) reads are not even counted', (t) => {
  const note = scavenger(undefined);
  t.notThrows(() => note(1 << 30));
});
