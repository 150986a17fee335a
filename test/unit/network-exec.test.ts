import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { run } from '../../src/network/exec.js';

// run(): posix_spawn with the input on a stdin pipe (how iptables-restore gets its rules), or Node's spawn when the
// command needs an environment of its own (CNI plugins).

test('the input reaches the command on stdin, even when it is larger than a pipe holds', async (t) => {
  const big = 'x'.repeat(1024 * 1024) + '\n';
  const r = await run('wc', ['-c'], { what: 'test', input: big });
  t.is(r.stdout.trim(), String(big.length));
  t.is((await run('cat', [], { what: 'test', input: 'a\nb\n' })).stdout, 'a\nb\n');
  t.is((await run('cat', [], { what: 'test' })).stdout, '', 'no input: stdin is empty');
});

test('a command that exits without reading its input is no failure of ours', async (t) => {
  const r = await run('sh', ['-c', 'exit 0'], { what: 'test', input: 'y'.repeat(1024 * 1024) });
  t.is(r.code, 0);
});

test('failures name what was being done, the command and what it printed', async (t) => {
  const err = (await t.throwsAsync(run('sh', ['-c', 'echo nope >&2; exit 3'], { what: 'pod x: test' }), { instanceOf: BerthError })) as BerthError;
  t.is(err.kind, 'internal');
  t.is(err.message, 'pod x: test: sh -c echo nope >&2; exit 3 failed (exit 3): nope');
  t.is((await run('sh', ['-c', 'exit 2'], { what: 'test', okCodes: [2] })).code, 2);
  const missing = (await t.throwsAsync(run('berth-no-such-command', [], { what: 'test' }), { instanceOf: BerthError })) as BerthError;
  t.is(missing.kind, 'failed_precondition');
  t.regex(missing.message, /not installed/);
  const slow = (await t.throwsAsync(run('sleep', ['10'], { what: 'test', timeoutMs: 200 }), { instanceOf: BerthError })) as BerthError;
  t.is(slow.kind, 'deadline_exceeded');
  const killed = (await t.throwsAsync(run('sh', ['-c', 'kill -TERM $$'], { what: 'test', okCodes: 'any' }), { instanceOf: BerthError })) as BerthError;
  t.regex(killed.message, /signal/, 'a signal is a failure even when every exit code is fine');
});

test('with an environment of its own, the command sees only that environment and its input', async (t) => {
  const r = await run('/bin/sh', ['-c', 'echo "$ONLY:${HOME:-unset}"; cat'], { what: 'test', env: { ONLY: 'here' }, input: 'in' });
  t.is(r.stdout, 'here:unset\nin');
  const missing = (await t.throwsAsync(run('berth-no-such-command', [], { what: 'test', env: {} }), { instanceOf: BerthError })) as BerthError;
  t.is(missing.kind, 'failed_precondition');
});
