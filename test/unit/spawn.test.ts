import test from 'ava';
import { spawnCollect } from '../../src/kernel/spawn.js';

test('posix_spawn runs a program and returns its stdout, stderr and exit code apart', async (t) => {
  const r = await spawnCollect('/bin/sh', ['-c', 'echo out; echo err >&2; exit 3'], 5000);
  t.is(r.stdout.toString(), 'out\n');
  t.is(r.stderr.toString(), 'err\n');
  t.is(r.code, 3);
});

test('the child starts with default signal dispositions (Node ignores SIGPIPE)', async (t) => {
  const r = await spawnCollect('/bin/sh', ['-c', 'kill -PIPE $$'], 5000);
  t.is(r.signal, 13);
});

test('a program that overruns its timeout is killed and reported', async (t) => {
  const started = Date.now();
  await t.throwsAsync(spawnCollect('/bin/sleep', ['10'], 200), { message: /timed out/ });
  t.true(Date.now() - started < 5000);
});

test('many spawns at once all complete', async (t) => {
  const results = await Promise.all(Array.from({ length: 30 }, (_, i) => spawnCollect('/bin/echo', [String(i)], 10000)));
  t.deepEqual(results.map((r) => r.stdout.toString().trim()), Array.from({ length: 30 }, (_, i) => String(i)));
});
