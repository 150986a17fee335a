import test from 'ava';
import { KeyedMutex } from '../../src/store/locks.js';

const tick = () => new Promise((r) => setTimeout(r, 5));

test('work on one key runs one at a time, in order, even when some fails', async (t) => {
  const m = new KeyedMutex();
  const events: string[] = [];
  const job = (name: string, fail = false) => async () => {
    events.push(`start ${name}`);
    await tick();
    events.push(`end ${name}`);
    if (fail) throw new Error(name);
    return name;
  };
  const results = await Promise.allSettled([m.run('a', job('1')), m.run('a', job('2', true)), m.run('a', job('3'))]);
  t.deepEqual(events, ['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);
  t.is(results[1].status, 'rejected');
  t.deepEqual(results[2], { status: 'fulfilled', value: '3' });
});

test('different keys run concurrently', async (t) => {
  const m = new KeyedMutex();
  const events: string[] = [];
  const job = (name: string) => async () => {
    events.push(`start ${name}`);
    await tick();
    events.push(`end ${name}`);
  };
  await Promise.all([m.run('a', job('a')), m.run('b', job('b'))]);
  t.deepEqual(events.slice(0, 2), ['start a', 'start b']);
});
