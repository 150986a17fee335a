// The cgroupfs adapter against this host's real hierarchies (needs root). Everything is made under
// /berth-test-<random> and the last assertion checks that nothing by that prefix is left anywhere.
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { logger } from '../../src/log.js';
import { Cgroups, discoverCgroups, sharesToWeight, type CgroupHandle, type Controller } from '../../src/kernel/cgroups.js';
import { sleep, waitFor } from '../helpers/util.js';

const root = process.getuid?.() === 0;
const layout = discoverCgroups();
const cg = new Cgroups(layout, logger({ test: 'cgroups' }));
const MiB = 1024 * 1024;

const read = (file: string) => readFileSync(file, 'utf8').trim();
const dirOf = (c: Controller, p: string) => path.join(layout.controllers[c]!.mountPoint, p);
const v2 = (c: Controller) => layout.controllers[c]!.version === 2;

/** Cgroup files catch up with a process within a few ms: poll tightly, give up after 3 s. */
const CGROUP_POLL = { timeoutMs: 3000, intervalMs: 20 };

// Made in teardown-safe lists so a failing assertion still cleans up.
const handles: CgroupHandle[] = [];
const children: ChildProcess[] = [];

test.after.always(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  const dirs = handles.flatMap((h) => h.created).sort((a, b) => b.split('/').length - a.split('/').length);
  for (const d of dirs) {
    try {
      rmdirSync(d);
    } catch {
      // already removed by the test, or still busy: the final assertion reports it
    }
  }
});

/** A `sleep` that joins the cgroup before it execs, so its memory is charged there. */
async function sleeperIn(files: string[]): Promise<{ pid: number; exited: Promise<unknown> }> {
  const child = spawn('/bin/sh', ['-c', 'read x; exec sleep 300'], { stdio: ['pipe', 'ignore', 'ignore'] });
  children.push(child);
  const exited = new Promise((r) => child.once('exit', r));
  const pid = child.pid!;
  for (const f of files) writeFileSync(f, String(pid));
  child.stdin!.end('\n');
  await waitFor('sleep to exec', () => read(`/proc/${pid}/comm`) === 'sleep', CGROUP_POLL);
  return { pid, exited };
}

function berthTestDirs(dir: string, found: string[] = []): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return found;
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    if (e.name.startsWith('berth-test-')) found.push(path.join(dir, e.name));
    berthTestDirs(path.join(dir, e.name), found);
  }
  return found;
}

const t2 = root ? test.serial : test.skip;

t2('create, apply, join, read and remove a cgroup on this host', async (t) => {
  const name = `berth-test-${randomBytes(4).toString('hex')}`;
  const p = `/${name}/pod/ctr`;

  // create: the missing parents are made, and recorded, in every hierarchy
  const handle = await cg.create(p);
  handles.push(handle);
  t.is(handle.path, p);
  const expected = layout.hierarchies.flatMap((h) =>
    [`/${name}`, `/${name}/pod`, p].map((q) => path.join(h.mountPoint, q)),
  );
  t.deepEqual([...handle.created].sort(), [...expected].sort());
  t.deepEqual(JSON.parse(JSON.stringify(handle)), handle);
  for (const c of ['memory', 'cpu', 'cpuacct', 'cpuset', 'pids', 'hugetlb'] as const) {
    if (c === 'cpuacct' && !layout.controllers.cpuacct) continue; // pure v2: accounting is cpu.stat
    t.true(existsSync(dirOf(c, p)), `${c}: ${dirOf(c, p)}`);
  }
  if (layout.mode === 'hybrid') {
    // This host: hugetlb lives on the cgroup2 mount.
    t.is(layout.controllers.hugetlb?.mountPoint, '/sys/fs/cgroup/unified');
    t.is(layout.controllers.cpu?.mountPoint, '/sys/fs/cgroup/cpu');
    t.is(layout.controllers.cpuacct?.mountPoint, '/sys/fs/cgroup/cpuacct');
  }
  if (!v2('cpuset')) {
    const top = layout.controllers.cpuset!.mountPoint;
    t.is(read(path.join(dirOf('cpuset', p), 'cpuset.cpus')), read(path.join(top, 'cpuset.cpus')));
    t.is(read(path.join(dirOf('cpuset', p), 'cpuset.mems')), read(path.join(top, 'cpuset.mems')));
  }

  // a sibling under the now existing parents records only itself
  const sibling = await cg.create(`/${name}/pod/ctr2`);
  handles.push(sibling);
  t.deepEqual(sibling.created, layout.hierarchies.map((h) => path.join(h.mountPoint, name, 'pod', 'ctr2')));

  // apply
  await cg.apply(p, {
    cpuShares: 512,
    cpuQuota: 50000,
    cpuPeriod: 100000,
    memoryLimitBytes: 64 * MiB,
    pidsLimit: 10,
    hugepageLimits: [{ pageSize: '2MB', limit: 4 * MiB }],
  });
  const cpu = dirOf('cpu', p);
  if (v2('cpu')) {
    t.is(read(`${cpu}/cpu.weight`), String(sharesToWeight(512)));
    t.is(read(`${cpu}/cpu.max`), '50000 100000');
  } else {
    t.is(read(`${cpu}/cpu.shares`), '512');
    t.is(read(`${cpu}/cpu.cfs_quota_us`), '50000');
    t.is(read(`${cpu}/cpu.cfs_period_us`), '100000');
  }
  t.is(read(`${dirOf('pids', p)}/pids.max`), '10');
  const hugeFile = path.join(dirOf('hugetlb', p), v2('hugetlb') ? 'hugetlb.2MB.max' : 'hugetlb.2MB.limit_in_bytes');
  if (layout.mode === 'hybrid') t.is(hugeFile, `/sys/fs/cgroup/unified/${name}/pod/ctr/hugetlb.2MB.max`);
  t.is(read(hugeFile), String(4 * MiB));

  // memory: with a swap limit, then lowered (memory first), then raised (memsw first)
  const mem = dirOf('memory', p);
  const memsw = !v2('memory') && existsSync(`${mem}/memory.memsw.limit_in_bytes`);
  const checkMemory = (limit: number, swapTotal: number) => {
    if (v2('memory')) {
      t.is(read(`${mem}/memory.max`), String(limit));
      if (existsSync(`${mem}/memory.swap.max`)) t.is(read(`${mem}/memory.swap.max`), String(swapTotal - limit));
    } else {
      t.is(read(`${mem}/memory.limit_in_bytes`), String(limit));
      if (memsw) t.is(read(`${mem}/memory.memsw.limit_in_bytes`), String(swapTotal));
    }
  };
  checkMemory(64 * MiB, 64 * MiB);
  await cg.apply(p, { memoryLimitBytes: 32 * MiB, memorySwapLimitBytes: 48 * MiB });
  checkMemory(32 * MiB, 48 * MiB);
  await cg.apply(p, { memoryLimitBytes: 16 * MiB });
  checkMemory(16 * MiB, 16 * MiB);
  await cg.apply(p, { memoryLimitBytes: 256 * MiB });
  checkMemory(256 * MiB, 256 * MiB);
  t.log(`memsw file present: ${memsw}`);

  // the kernel's refusals come back typed, naming file and value
  const bad = await t.throwsAsync(cg.apply(p, { cpuQuota: 10 }), { instanceOf: BerthError });
  t.is(bad?.kind, 'invalid_argument');
  t.regex(bad!.message, v2('cpu') ? /cpu\.max/ : /cpu\.cfs_quota_us/);
  t.regex(bad!.message, /"10/);
  const size = await t.throwsAsync(cg.apply(p, { hugepageLimits: [{ pageSize: '3MB', limit: 0 }] }), { instanceOf: BerthError });
  t.is(size?.kind, 'invalid_argument');

  // raw unified files (here the cgroup2 tree only has hugetlb)
  if (layout.unified && layout.hierarchies.some((h) => h.version === 2) && v2('hugetlb')) {
    await cg.apply(p, { unified: { 'hugetlb.2MB.max': String(2 * MiB) } });
    t.is(read(hugeFile), String(2 * MiB));
  }

  // a process joins through procsFiles
  const files = cg.procsFiles(handle);
  t.is(files.length, layout.hierarchies.length);
  const { pid, exited } = await sleeperIn(files);
  const membership = read(`/proc/${pid}/cgroup`).split('\n');
  for (const h of layout.hierarchies) {
    const line = membership.find((l) => (h.version === 2 ? l.startsWith('0::') : l.split(':')[1] === h.controllers.join(',')));
    t.is(line?.split(':')[2], p, `${h.mountPoint}: ${line}`);
  }
  const stats = await waitFor('memory usage to be charged', async () => {
    const s = await cg.read(p);
    return s.memoryUsageBytes > 0 ? s : undefined;
  }, CGROUP_POLL);
  t.true(stats.memoryUsageBytes > 0);
  t.is(stats.pidsCurrent, 1);
  t.is(stats.memoryLimitBytes, 256 * MiB);
  t.true(stats.cpuUsageNanos > 0);
  t.is(stats.oomKills, 0);
  t.log(stats);

  // remove refuses while the process is inside, naming it
  const busy = await t.throwsAsync(cg.remove(handle), { instanceOf: BerthError });
  t.is(busy?.kind, 'failed_precondition');
  t.regex(busy!.message, new RegExp(`\\b${pid}\\b`));

  process.kill(pid, 'SIGKILL');
  await exited;

  // The sibling keeps the shared parents busy: our leaf goes, the parents stay until it is gone too.
  const parentBusy = await t.throwsAsync(cg.remove(handle), { instanceOf: BerthError });
  t.is(parentBusy?.kind, 'failed_precondition');
  t.false(existsSync(dirOf('memory', p)));
  await cg.remove(sibling);
  t.true(existsSync(dirOf('memory', `/${name}/pod`)));
  await cg.remove(handle); // idempotent: the leaf is already gone
  await cg.remove(handle);
  for (const d of [...handle.created, ...sibling.created]) t.false(existsSync(d), d);
  await t.throwsAsync(cg.read(p), { instanceOf: BerthError, message: /does not exist/ });
});

t2('killAll kills every process, with cgroup.kill and with the per-pid fallback', async (t) => {
  const name = `berth-test-${randomBytes(4).toString('hex')}`;
  // A layout without the cgroup2 tree exercises the v1 path (cgroup.procs + SIGKILL).
  const v1Only = new Cgroups(
    { ...layout, hierarchies: layout.hierarchies.filter((h) => h.version === 1), unified: null },
    logger({ test: 'cgroups' }),
  );
  for (const [label, adapter] of [['default', cg], ['per-pid', v1Only]] as const) {
    if (adapter.layout.hierarchies.length === 0) continue;
    const p = `/${name}/${label}`;
    const handle = await cg.create(p);
    handles.push(handle);
    const a = await sleeperIn(cg.procsFiles(handle));
    const b = await sleeperIn(cg.procsFiles(handle));
    await adapter.killAll(p);
    await Promise.all([a.exited, b.exited]);
    await cg.remove(handle);
    for (const d of handle.created) t.false(existsSync(d), `${label}: ${d}`);
  }
});

t2('warmMigration moves berth nowhere (it rejoins the cgroups it is in) and swallows a failure', async (t) => {
  const before = read('/proc/self/cgroup');
  await cg.warmMigration();
  t.is(read('/proc/self/cgroup'), before);
  // A layout whose mount point does not exist: the write fails, the warm-up says nothing to its caller.
  const nowhere = new Cgroups({ ...layout, hierarchies: layout.hierarchies.map((h) => ({ ...h, mountPoint: `/nonexistent-${h.mountPoint}` })) }, logger({ test: 'cgroups' }));
  await t.notThrowsAsync(nowhere.warmMigration());
  t.is(read('/proc/self/cgroup'), before);
});

t2('keepMigrationsWarm repeats the no-op migration while its window lasts, a later call extends it, and it ends by itself, at stopWarming, or at a failed migration', async (t) => {
  const before = read('/proc/self/cgroup');
  cg.keepMigrationsWarm(80);
  t.true(cg.keepingMigrationsWarm);
  await sleep(40);
  cg.keepMigrationsWarm(120);
  await sleep(100);
  t.true(cg.keepingMigrationsWarm, 'extended by the second call');
  await waitFor('the window to close', () => !cg.keepingMigrationsWarm, { timeoutMs: 2000, intervalMs: 10 });
  t.is(read('/proc/self/cgroup'), before, 'berth is where it was');
  // stopWarming (berth stopping) closes a long window at once.
  cg.keepMigrationsWarm(60_000);
  await sleep(20);
  cg.stopWarming();
  await waitFor('the stopped window to close', () => !cg.keepingMigrationsWarm, { timeoutMs: 500, intervalMs: 5 });
  // A berth that may not write its cgroup (here: a layout whose mount points do not exist) ends the window at the
  // first failure instead of retrying every few ms.
  const nowhere = new Cgroups({ ...layout, hierarchies: layout.hierarchies.map((h) => ({ ...h, mountPoint: `/nonexistent-${h.mountPoint}` })) }, logger({ test: 'cgroups' }));
  nowhere.keepMigrationsWarm(60_000);
  await waitFor('a failing window to close', () => !nowhere.keepingMigrationsWarm, { timeoutMs: 500, intervalMs: 5 });
});

t2('nothing named berth-test-* is left under /sys/fs/cgroup', (t) => {
  t.deepEqual(berthTestDirs('/sys/fs/cgroup'), []);
});
