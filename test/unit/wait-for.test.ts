import test from 'ava';
import { onTimeout, waitFor, WaitTimeout } from '../helpers/util.js';

test('waitFor returns the first truthy value of a sync check, polling at the given interval', async (t) => {
  let calls = 0;
  const started = Date.now();
  const value = await waitFor('the third call', () => (++calls === 3 ? { calls } : undefined), { intervalMs: 20 });
  t.deepEqual(value, { calls: 3 });
  t.true(Date.now() - started >= 35, 'two pauses of 20 ms between three calls');
});

test('waitFor awaits an async check', async (t) => {
  let calls = 0;
  t.is(await waitFor('an async value', async () => (++calls < 2 ? '' : 'ready'), { intervalMs: 1 }), 'ready');
});

test('a check that never holds times out with a WaitTimeout naming what was awaited and the timeout', async (t) => {
  const err = await t.throwsAsync(waitFor('the moon to turn blue', () => false, { timeoutMs: 30, intervalMs: 5 }), { instanceOf: WaitTimeout });
  t.is(err?.message, 'timed out waiting for the moon to turn blue (30 ms)');
});

test('an error thrown by the check ends the wait at once, and onTimeout does not swallow it', async (t) => {
  const boom = new Error('boom');
  const started = Date.now();
  const check = () => {
    throw boom;
  };
  t.is(await t.throwsAsync(waitFor('anything', check, { timeoutMs: 5000 }).catch(onTimeout('late'))), boom);
  t.true(Date.now() - started < 1000);
});

test('onTimeout turns only a timeout into its fallback', async (t) => {
  t.is(await waitFor('never', () => 0, { timeoutMs: 10, intervalMs: 2 }).catch(onTimeout('timeout')), 'timeout');
});
