// KernelFiles against this host's real cgroupfs (needs root): a control file kept open is generated afresh by each
// read at offset 0, and one whose cgroup was removed reads as gone (ENODEV), after which a new cgroup at the same
// path is opened anew. A regular file in a temporary directory (the unit tests) can show none of this.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { discoverCgroups } from '../../src/kernel/cgroup-layout.js';
import { KernelFiles } from '../../src/kernel/kernel-files.js';

const root = process.getuid?.() === 0;
const layout = discoverCgroups();
const memory = layout.controllers.memory;
const dir = memory && path.join(memory.mountPoint, `berth-test-kfiles-${randomBytes(4).toString('hex')}`);

test.after.always(() => {
  if (dir && existsSync(dir)) rmdirSync(dir);
});

(root && memory ? test : test.skip)('a cgroup file kept open reads its current value; a removed cgroup reads as gone; a new one at the path is reopened', (t) => {
  const limitFile = memory!.version === 2 ? 'memory.max' : 'memory.limit_in_bytes';
  const file = path.join(dir!, limitFile);
  const files = new KernelFiles();
  mkdirSync(dir!);
  writeFileSync(file, String(64 * 1024 * 1024));
  t.is(files.read(dir!, file)?.trim(), String(64 * 1024 * 1024));
  t.is(files.size, 1);
  writeFileSync(file, String(32 * 1024 * 1024));
  t.is(files.read(dir!, file)?.trim(), String(32 * 1024 * 1024), 'the same descriptor shows the new limit');
  t.is(files.size, 1);
  rmdirSync(dir!);
  t.is(files.read(dir!, file), undefined, 'the removed cgroup reads as gone');
  t.is(files.size, 0, 'and its descriptor is closed');
  mkdirSync(dir!);
  writeFileSync(file, String(16 * 1024 * 1024));
  t.is(files.read(dir!, file)?.trim(), String(16 * 1024 * 1024), 'a new cgroup at the same path is read');
  files.release(dir!);
  t.is(files.size, 0);
  rmdirSync(dir!);
  t.false(existsSync(dir!));
});
