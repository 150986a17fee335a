import test from 'ava';
import { readdirSync } from 'node:fs';
import net from 'node:net';
import { spawnCollect, spawnPiped } from '../../src/kernel/spawn.js';

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

function readAll(fd: number): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    const s = new net.Socket({ fd, readable: true, writable: false });
    s.on('data', (d: Buffer) => (text += d.toString()));
    s.on('close', () => resolve(text));
  });
}

test.serial('spawnPiped: pipes by fd number, fd 2 onto fd 1, the exit seen on its own pipe, and no fd left', async (t) => {
  const before = readdirSync('/proc/self/fd').length;
  const child = spawnPiped('/bin/sh', ['-c', 'cat; echo err >&2; cat <&3 >&2; exit 3'], ['in', 'out', 'stdout', 'in']);
  t.is(child.fds.length, 4);
  t.is(child.fds[2], -1);
  const out = readAll(child.fds[1]!);
  const input = new net.Socket({ fd: child.fds[0]!, readable: false, writable: true });
  input.end('via stdin\n');
  const extra = new net.Socket({ fd: child.fds[3]!, readable: false, writable: true });
  extra.end('via fd 3\n');
  t.deepEqual(await child.exited, { code: 3, signal: 0 });
  t.is(await out, 'via stdin\nerr\nvia fd 3\n');
  child.kill('SIGKILL'); // reaped: must not signal the pid again
  await new Promise((r) => setTimeout(r, 50));
  t.true(readdirSync('/proc/self/fd').length <= before);
});

test('spawnPiped: a killed child reports 128+signal', async (t) => {
  const child = spawnPiped('/bin/sleep', ['10'], ['null', 'null', 'null']);
  child.kill('SIGTERM');
  t.deepEqual(await child.exited, { code: 128 + 15, signal: 15 });
});
