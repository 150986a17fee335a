import test from 'ava';
import type { Logger } from '../../src/log.js';
import { Undo, withUndo } from '../../src/store/undo.js';

function recordingLog(): Logger & { lines: { msg: string; fields?: Record<string, unknown> }[] } {
  const lines: { msg: string; fields?: Record<string, unknown> }[] = [];
  const log = {
    lines,
    debug: () => undefined,
    info: () => undefined,
    warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields }),
    error: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields }),
    child: () => log,
  };
  return log;
}

test('undos run newest first, and a failing one is logged by name while the rest still run', async (t) => {
  const log = recordingLog();
  const ran: string[] = [];
  const undo = new Undo(log);
  undo.push('remove bundle', () => ran.push('bundle'));
  undo.push('remove cgroup', async () => {
    ran.push('cgroup');
    throw new Error('EBUSY');
  });
  undo.push('kill process', () => ran.push('process'));
  t.deepEqual(await undo.run(), ['remove cgroup']);
  t.deepEqual(ran, ['process', 'cgroup', 'bundle']);
  t.deepEqual(log.lines, [{ msg: 'undo step failed', fields: { step: 'remove cgroup', error: 'EBUSY' } }]);
  t.deepEqual(await undo.run(), [], 'a second run has nothing left to undo');
});

test('withUndo keeps what a successful operation acquired and undoes a failed one before rethrowing', async (t) => {
  const log = recordingLog();
  const ran: string[] = [];
  t.is(await withUndo(log, async (undo) => {
    undo.push('a', () => ran.push('a'));
    return 42;
  }), 42);
  t.deepEqual(ran, []);
  const err = await t.throwsAsync(withUndo(log, async (undo) => {
    undo.push('a', () => ran.push('a'));
    undo.push('b', () => ran.push('b'));
    throw new Error('step 3 failed');
  }));
  t.is(err?.message, 'step 3 failed');
  t.deepEqual(ran, ['b', 'a']);
});
