import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RecordStore, RECORD_VERSION } from '../../src/store/records.js';

interface Rec {
  id: string;
  version?: number;
  state: 'CREATED' | 'RUNNING' | 'EXITED';
  tags: string[];
}

const transitions = { CREATED: ['RUNNING', 'EXITED'], RUNNING: ['EXITED'] };

async function tempStore(t: import('ava').ExecutionContext, onWriteError?: (id: string, err: unknown) => void) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-records-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return { dir, store: new RecordStore<Rec>(dir, 'rec.json', { stateOf: (r) => r.state, transitions, onWriteError }) };
}

const onDisk = async (dir: string, id: string) => JSON.parse(await fs.readFile(path.join(dir, id, 'rec.json'), 'utf8')) as Rec;

test('update writes the new record before swapping it in, and readers get frozen snapshots', async (t) => {
  const { dir, store } = await tempStore(t);
  const created = await store.create({ id: 'a', state: 'CREATED', tags: [] });
  t.is(created.version, RECORD_VERSION);
  t.throws(() => (created as Rec).tags.push('x'), { instanceOf: TypeError }, 'a snapshot cannot be changed in place');
  const running = await store.update('a', (r) => ({ ...r, state: 'RUNNING', tags: [...r.tags, 'started'] }));
  t.is(store.get('a'), running);
  t.deepEqual((await onDisk(dir, 'a')).tags, ['started']);
  t.is(created.state, 'CREATED', 'an old snapshot stays as it was');
});

test('a failed write leaves memory as it was on disk', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  // A directory where the record file should go makes the rename fail.
  await fs.rm(path.join(dir, 'a', 'rec.json'));
  await fs.mkdir(path.join(dir, 'a', 'rec.json', 'x'), { recursive: true });
  await t.throwsAsync(store.update('a', (r) => ({ ...r, state: 'RUNNING' })));
  t.is(store.get('a')?.state, 'CREATED');
});

test('the transition table is the only way state changes: illegal moves are refused and nothing is written', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  await store.update('a', (r) => ({ ...r, state: 'EXITED' }));
  const err = await t.throwsAsync(store.update('a', (r) => ({ ...r, state: 'RUNNING' })));
  t.regex(err?.message ?? '', /state EXITED cannot become RUNNING/);
  t.is(store.get('a')?.state, 'EXITED');
  t.is((await onDisk(dir, 'a')).state, 'EXITED');
});

test('updates of one record run one at a time, each seeing the one before', async (t) => {
  const { store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  await Promise.all(['1', '2', '3'].map((tag) => store.update('a', (r) => ({ ...r, tags: [...r.tags, tag] }))));
  t.deepEqual(store.get('a')?.tags, ['1', '2', '3']);
});

test('a recoverable change is visible at once and written behind the answer; flush waits for it', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  const next = await store.update('a', (r) => ({ ...r, state: 'EXITED' }), 'recoverable');
  t.is(store.get('a'), next);
  await store.flush();
  t.is((await onDisk(dir, 'a')).state, 'EXITED');
});

test('a failed write-behind is reported, not thrown at a later caller', async (t) => {
  const failures: string[] = [];
  const { dir, store } = await tempStore(t, (id) => failures.push(id));
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  await fs.rm(path.join(dir, 'a', 'rec.json'));
  await fs.mkdir(path.join(dir, 'a', 'rec.json', 'x'), { recursive: true });
  await store.update('a', (r) => ({ ...r, state: 'EXITED' }), 'recoverable');
  await store.flush();
  t.deepEqual(failures, ['a']);
});

test('records without a version load as version 1; a newer version fails the load naming its file', async (t) => {
  const { dir, store } = await tempStore(t);
  await fs.mkdir(path.join(dir, 'old'));
  await fs.writeFile(path.join(dir, 'old', 'rec.json'), JSON.stringify({ id: 'old', state: 'RUNNING', tags: [] }));
  await fs.mkdir(path.join(dir, 'junk'));
  const { records, orphans } = await store.loadAll();
  t.deepEqual(records.map((r) => [r.id, r.version]), [['old', 1]]);
  t.deepEqual(orphans, [path.join(dir, 'junk')]);

  await fs.mkdir(path.join(dir, 'new'));
  await fs.writeFile(path.join(dir, 'new', 'rec.json'), JSON.stringify({ id: 'new', version: RECORD_VERSION + 1, state: 'RUNNING', tags: [] }));
  const fresh = new RecordStore<Rec>(dir, 'rec.json');
  const err = await t.throwsAsync(fresh.loadAll());
  t.true(err?.message.includes(path.join(dir, 'new', 'rec.json')));
  t.regex(err?.message ?? '', /newer than this berth knows/);
  t.is(JSON.parse(await fs.readFile(path.join(dir, 'new', 'rec.json'), 'utf8')).version, RECORD_VERSION + 1, 'the newer record is left as it was');
});

test('a record whose version is not a version fails the load naming its file, and is left as it was', async (t) => {
  for (const version of [0, -1, 1.5, '2']) {
    const { dir, store } = await tempStore(t);
    await fs.mkdir(path.join(dir, 'odd'));
    const text = JSON.stringify({ id: 'odd', version, state: 'RUNNING', tags: [] });
    await fs.writeFile(path.join(dir, 'odd', 'rec.json'), text);
    const err = await t.throwsAsync(store.loadAll(), undefined, `version ${JSON.stringify(version)}`);
    t.true(err?.message.includes(path.join(dir, 'odd', 'rec.json')));
    t.regex(err?.message ?? '', /is not a version/);
    t.is(await fs.readFile(path.join(dir, 'odd', 'rec.json'), 'utf8'), text);
  }
});

test('delete removes the record from disk and memory', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  await store.delete('a');
  t.false(store.has('a'));
  await t.throwsAsync(fs.access(path.join(dir, 'a')));
});

test('a delete right after a recoverable change waits for its write: the record does not come back', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  await store.update('a', (r) => ({ ...r, state: 'EXITED' }), 'recoverable');
  await store.delete('a');
  await store.flush();
  await t.throwsAsync(fs.access(path.join(dir, 'a')));
  const again = new RecordStore<Rec>(dir, 'rec.json');
  t.deepEqual((await again.loadAll()).records, []);
});

test('a synced-behind create or change is in the file when it returns (a restarted berth loads it) and leaves no temp file', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] }, 'synced-behind');
  t.is((await onDisk(dir, 'a')).state, 'CREATED');
  await store.update('a', (r) => ({ ...r, state: 'RUNNING', tags: ['started'] }), 'synced-behind');
  const restarted = new RecordStore<Rec>(dir, 'rec.json', { stateOf: (r) => r.state, transitions });
  const { records, orphans } = await restarted.loadAll();
  t.deepEqual(records.map((r) => [r.id, r.state, r.tags]), [['a', 'RUNNING', ['started']]]);
  t.deepEqual(orphans, []);
  await store.flush();
  t.deepEqual(await fs.readdir(path.join(dir, 'a')), ['rec.json']);
});

test('a delete right after a synced-behind create leaves nothing, and its fsync behind does not fail on the gone file', async (t) => {
  const errors: unknown[] = [];
  const { dir, store } = await tempStore(t, (_id, err) => errors.push(err));
  await store.create({ id: 'a', state: 'CREATED', tags: [] }, 'synced-behind');
  await store.delete('a');
  await store.flush();
  t.deepEqual(await fs.readdir(dir), []);
  t.deepEqual(errors, []);
});

test('deleteBehind removes the record at once and its directory behind; until then a restarted berth sees an orphan', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  await fs.writeFile(path.join(dir, 'a', 'payload'), 'x');
  const { removed } = await store.deleteBehind('a');
  t.false(store.has('a'));
  const restarted = new RecordStore<Rec>(dir, 'rec.json');
  const loaded = await restarted.loadAll();
  // Loaded before or after the directory went: never as a record.
  t.deepEqual(loaded.records, []);
  t.true(loaded.orphans.length === 0 || loaded.orphans[0] === path.join(dir, 'a'));
  await removed;
  t.deepEqual(await fs.readdir(dir), []);
});

test('flush() waits for a deleteBehind called before it, even one whose record file is not yet removed', async (t) => {
  const { dir, store } = await tempStore(t);
  await store.create({ id: 'a', state: 'CREATED', tags: [] });
  await fs.writeFile(path.join(dir, 'a', 'payload'), 'x');
  // Not awaited: flush is asked for while the record file is still being removed (a shutdown, a test).
  const deleting = store.deleteBehind('a');
  await store.flush();
  t.deepEqual(await fs.readdir(dir), [], 'the directory is gone once flush resolves');
  await deleting;
});
