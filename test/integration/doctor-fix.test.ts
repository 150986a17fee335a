import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { removeOrphan } from '../../src/doctor/fix.js';
import { discoverCgroups } from '../../src/kernel/cgroup-layout.js';
import { mount, MNT_DETACH, umount2 } from '../../src/kernel/libc.js';
import { logger } from '../../src/log.js';

// berth doctor --fix's guards, on the real kernel: a directory is never removed while something is mounted below
// it, an address is released only while the pod listed still holds it, a pid that is no longer berth's is spared.

async function tempDir(t: import('ava').ExecutionContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-doctor-fix-'));
  t.teardown(async () => {
    try {
      umount2(path.join(dir, 'run', 'shm'), MNT_DETACH);
    } catch {
      /* not mounted */
    }
    await fs.rm(dir, { recursive: true, force: true });
    const left = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.includes(dir));
    if (left.length > 0) throw new Error(`left mounted:\n${left.join('\n')}`);
  });
  return dir;
}

const ctx = (root: string) => ({ root, layout: discoverCgroups(), log: logger({ test: 'doctor-fix' }) });

test('a state directory with a mount below it is not removed; once the mount is fixed, it is', async (t) => {
  const dir = await tempDir(t);
  const runDir = path.join(dir, 'run');
  await fs.mkdir(path.join(runDir, 'shm'), { recursive: true });
  await fs.writeFile(path.join(runDir, 'shm', 'kept'), 'x');
  mount('shm', path.join(runDir, 'shm'), 'tmpfs', 0, 'size=64k');
  await fs.writeFile(path.join(runDir, 'shm', 'on-tmpfs'), 'y');
  await t.throwsAsync(removeOrphan({ kind: 'state', object: runDir, reason: 'test' }, ctx(dir)), { message: /still has mounts below it: .*shm/ });
  t.is(await fs.readFile(path.join(runDir, 'shm', 'on-tmpfs'), 'utf8'), 'y');
  await removeOrphan({ kind: 'mount', object: path.join(runDir, 'shm'), reason: 'test' }, ctx(dir));
  // Detaching one already gone is no error (a second --fix).
  await removeOrphan({ kind: 'mount', object: path.join(runDir, 'shm'), reason: 'test' }, ctx(dir));
  await removeOrphan({ kind: 'state', object: runDir, reason: 'test' }, ctx(dir));
  t.false(await fs.access(runDir).then(() => true, () => false));
});

test('an address is released only while the listed pod still holds it', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'network', 'ipam.json');
  await fs.mkdir(path.dirname(file));
  const a = 'a'.repeat(64);
  const b = 'b'.repeat(64);
  await fs.writeFile(file, JSON.stringify({ version: 1, allocations: { '10.0.0.2': a, '10.0.0.3': b }, last: { '10.0.0.0/24': '10.0.0.3' } }));
  await removeOrphan({ kind: 'ipam', object: '10.0.0.2', pod: a, reason: 'test' }, ctx(dir));
  // Given to another pod since it was listed: kept.
  await removeOrphan({ kind: 'ipam', object: '10.0.0.3', pod: a, reason: 'test' }, ctx(dir));
  t.deepEqual(JSON.parse(await fs.readFile(file, 'utf8')), { version: 1, allocations: { '10.0.0.3': b }, last: { '10.0.0.0/24': '10.0.0.3' } });
});

test('a listed pid that is no longer a berth process is not signalled', async (t) => {
  // This test process is no berth-shim: were it signalled, the test would die with it.
  await removeOrphan({ kind: 'process', object: String(process.pid), reason: 'test' }, ctx('/nonexistent'));
  t.pass();
});
