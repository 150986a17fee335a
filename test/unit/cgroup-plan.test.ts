import test, { type ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError, internal, invalidArgument } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { asyncIo, executePlan, syncIo, type CgroupIo } from '../../src/kernel/cgroup-io.js';
import type { CgroupLayout, Controller, Hierarchy } from '../../src/kernel/cgroup-layout.js';
import { planResources, type CgroupResources, type CgroupStep } from '../../src/kernel/cgroup-plan.js';
import { Cgroups } from '../../src/kernel/cgroups.js';

// Fake hierarchies are plain directories under a temp dir, holding the files a real cgroup would have. cgroupfs
// replaces a file's value on each write(2); a regular file is overwritten in place, so the files start empty.

async function tempBase(t: ExecutionContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-cgplan-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Every controller on its own v1 mount at `<base>/<controller>`, except those left out. */
function v1Layout(base: string, without: Controller[] = []): CgroupLayout {
  const controllers: Partial<Record<Controller, Hierarchy>> = {};
  for (const c of ['cpu', 'cpuset', 'memory', 'pids', 'hugetlb'] as const) {
    if (!without.includes(c)) controllers[c] = { version: 1, mountPoint: `${base}/${c}`, controllers: [c] };
  }
  return { mode: 'v1', hierarchies: Object.values(controllers), controllers, unified: null };
}

/** One cgroup2 tree at `<base>` holding every controller. */
function v2Layout(base: string): CgroupLayout {
  const unified: Hierarchy = { version: 2, mountPoint: base, controllers: ['cpu', 'cpuset', 'memory', 'pids', 'hugetlb'] };
  const controllers = { cpu: unified, cpuset: unified, memory: unified, pids: unified, hugetlb: unified };
  return { mode: 'v2', hierarchies: [unified], controllers, unified };
}

/** Creates each file (and its directory) empty, or with the given content. */
async function files(entries: Record<string, string>): Promise<void> {
  for (const [file, content] of Object.entries(entries)) {
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, content);
  }
}

const read = (file: string) => fs.readFile(file, 'utf8');
const exists = (file: string) => fs.access(file).then(() => true, () => false);

const everything: CgroupResources = {
  cpuShares: 512,
  cpuQuota: 50000,
  cpuPeriod: 100000,
  cpusetCpus: '0-1',
  cpusetMems: '0',
  memoryLimitBytes: 64 << 20,
  memorySwapLimitBytes: 96 << 20,
  pidsLimit: 0,
  hugepageLimits: [{ pageSize: '2MB', limit: 4 << 20 }],
};

test('v1: every limit is planned in its controller\'s hierarchy, dependent pairs together', async (t) => {
  const base = await tempBase(t);
  const cg = '/kubepods/pod1/c1';
  const plan = planResources(v1Layout(base), cg, everything);
  const at = (c: string, file: string) => `${base}/${c}${cg}/${file}`;
  t.deepEqual(plan.missing, []);
  t.deepEqual(plan.steps, [
    { kind: 'write', file: at('cpu', 'cpu.shares'), value: '512' },
    {
      kind: 'either-order',
      writes: [
        { file: at('cpu', 'cpu.cfs_period_us'), value: '100000' },
        { file: at('cpu', 'cpu.cfs_quota_us'), value: '50000' },
      ],
    },
    { kind: 'write', file: at('cpuset', 'cpuset.cpus'), value: '0-1' },
    { kind: 'write', file: at('cpuset', 'cpuset.mems'), value: '0' },
    {
      kind: 'either-order',
      writes: [
        { file: at('memory', 'memory.limit_in_bytes'), value: String(64 << 20) },
        { file: at('memory', 'memory.memsw.limit_in_bytes'), value: String(96 << 20), ifAbsent: 'skip' },
      ],
    },
    { kind: 'write', file: at('pids', 'pids.max'), value: 'max' },
    {
      kind: 'write',
      file: at('hugetlb', 'hugetlb.2MB.limit_in_bytes'),
      value: String(4 << 20),
      ifAbsent: { refuse: `hugepage size 2MB is not supported here (no ${at('hugetlb', 'hugetlb.2MB.limit_in_bytes')})` },
    },
    { kind: 'write', file: at('hugetlb', 'hugetlb.2MB.rsvd.limit_in_bytes'), value: String(4 << 20), ifAbsent: 'skip' },
  ]);

  // The files a v1 cgroup has (no swap accounting here, no reservation accounting either).
  const present = ['cpu.shares', 'cpu.cfs_period_us', 'cpu.cfs_quota_us'].map((f) => at('cpu', f));
  present.push(at('cpuset', 'cpuset.cpus'), at('cpuset', 'cpuset.mems'), at('memory', 'memory.limit_in_bytes'));
  present.push(at('pids', 'pids.max'), at('hugetlb', 'hugetlb.2MB.limit_in_bytes'));
  await files(Object.fromEntries(present.map((f) => [f, ''])));
  await executePlan(syncIo, plan.steps);
  t.is(await read(at('cpu', 'cpu.shares')), '512');
  t.is(await read(at('cpu', 'cpu.cfs_period_us')), '100000');
  t.is(await read(at('cpu', 'cpu.cfs_quota_us')), '50000');
  t.is(await read(at('cpuset', 'cpuset.cpus')), '0-1');
  t.is(await read(at('memory', 'memory.limit_in_bytes')), String(64 << 20));
  t.false(await exists(at('memory', 'memory.memsw.limit_in_bytes')), 'memsw is skipped without swap accounting');
  t.is(await read(at('pids', 'pids.max')), 'max');
  t.is(await read(at('hugetlb', 'hugetlb.2MB.limit_in_bytes')), String(4 << 20));
  t.false(await exists(at('hugetlb', 'hugetlb.2MB.rsvd.limit_in_bytes')));
});

test('v2: weight, cpu.max, memory.max and swap.max (the swap part alone), written by the async executor', async (t) => {
  const base = await tempBase(t);
  const cg = '/kubepods/pod1/c1';
  const dir = base + cg;
  const plan = planResources(v2Layout(base), cg, { ...everything, unified: { 'memory.high': '50331648' } });
  t.deepEqual(plan.steps, [
    { kind: 'write', file: `${dir}/cpu.weight`, value: '20' },
    { kind: 'write', file: `${dir}/cpu.max`, value: '50000 100000' },
    { kind: 'write', file: `${dir}/cpuset.cpus`, value: '0-1' },
    { kind: 'write', file: `${dir}/cpuset.mems`, value: '0' },
    { kind: 'write', file: `${dir}/memory.max`, value: String(64 << 20) },
    { kind: 'write', file: `${dir}/memory.swap.max`, value: String(32 << 20), ifAbsent: 'skip' },
    { kind: 'write', file: `${dir}/pids.max`, value: 'max' },
    {
      kind: 'write',
      file: `${dir}/hugetlb.2MB.max`,
      value: String(4 << 20),
      ifAbsent: { refuse: `hugepage size 2MB is not supported here (no ${dir}/hugetlb.2MB.max)` },
    },
    { kind: 'write', file: `${dir}/hugetlb.2MB.rsvd.max`, value: String(4 << 20), ifAbsent: 'skip' },
    {
      kind: 'write',
      file: `${dir}/memory.high`,
      value: '50331648',
      ifAbsent: { refuse: `unified cgroup file memory.high does not exist (${dir}/memory.high)` },
    },
  ]);
  const names = ['cpu.weight', 'cpu.max', 'cpuset.cpus', 'cpuset.mems', 'memory.max', 'memory.swap.max', 'pids.max'];
  names.push('hugetlb.2MB.max', 'hugetlb.2MB.rsvd.max', 'memory.high');
  await files(Object.fromEntries(names.map((n) => [`${dir}/${n}`, ''])));
  await executePlan(asyncIo, plan.steps);
  const written = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await read(`${dir}/${n}`)])));
  t.deepEqual(written, {
    'cpu.weight': '20',
    'cpu.max': '50000 100000',
    'cpuset.cpus': '0-1',
    'cpuset.mems': '0',
    'memory.max': String(64 << 20),
    'memory.swap.max': String(32 << 20),
    'pids.max': 'max',
    'hugetlb.2MB.max': String(4 << 20),
    'hugetlb.2MB.rsvd.max': String(4 << 20),
    'memory.high': '50331648',
  });
});

test('v2: a new period alone keeps the quota cpu.max holds; no quota sets "max"', async (t) => {
  const base = await tempBase(t);
  const dir = `${base}/c`;
  const layout = v2Layout(base);
  const periodOnly = planResources(layout, '/c', { cpuPeriod: 250000 });
  t.deepEqual(periodOnly.steps, [{ kind: 'cpu-max-period', file: `${dir}/cpu.max`, period: 250000 }]);
  await files({ [`${dir}/cpu.max`]: '20000 100000\n' });
  await executePlan(syncIo, periodOnly.steps);
  t.is((await read(`${dir}/cpu.max`)).trim(), '20000 250000');

  t.deepEqual(planResources(layout, '/c', { cpuQuota: 0 }).steps, [{ kind: 'write', file: `${dir}/cpu.max`, value: 'max' }]);
  t.deepEqual(planResources(layout, '/c', { cpuQuota: -1, cpuPeriod: 100000 }).steps, [
    { kind: 'write', file: `${dir}/cpu.max`, value: 'max 100000' },
  ]);
});

test('v1: a quota alone is one write, and no quota is -1', (t) => {
  const layout = v1Layout('/cg');
  t.deepEqual(planResources(layout, '/c', { cpuQuota: 0 }).steps, [
    { kind: 'write', file: '/cg/cpu/c/cpu.cfs_quota_us', value: '-1' },
  ]);
  t.deepEqual(planResources(layout, '/c', { memorySwapLimitBytes: -1 }).steps, [
    { kind: 'write', file: '/cg/memory/c/memory.memsw.limit_in_bytes', value: '-1', ifAbsent: 'skip' },
  ]);
  t.deepEqual(planResources(layout, '/c', {}).steps, []);
});

test('controllers the host lacks are reported, and nothing is planned for them', (t) => {
  const plan = planResources(v1Layout('/cg', ['cpuset', 'hugetlb', 'cpu']), '/c', everything);
  t.deepEqual(plan.missing, ['cpu', 'cpuset', 'hugetlb']);
  t.deepEqual(
    plan.steps.flatMap((s) => (s.kind === 'either-order' ? s.writes.map((w) => w.file) : [s.file])),
    ['/cg/memory/c/memory.limit_in_bytes', '/cg/memory/c/memory.memsw.limit_in_bytes', '/cg/pids/c/pids.max'],
  );
});

test('bad input is refused by the planner, before any write', (t) => {
  const layout = v2Layout('/cg');
  const refused = (r: CgroupResources) => t.throws(() => planResources(layout, '/c', r), { instanceOf: BerthError })?.kind;
  t.is(refused({ memoryLimitBytes: 300, memorySwapLimitBytes: 100 }), 'invalid_argument');
  t.is(refused({ memorySwapLimitBytes: 300 }), 'invalid_argument', 'swap without memory on v2');
  t.is(refused({ hugepageLimits: [{ pageSize: '2M', limit: 0 }] }), 'invalid_argument');
  t.is(refused({ unified: { '../cgroup.procs': '1' } }), 'invalid_argument');
  t.is(t.throws(() => planResources(layout, '/a/../b', {}), { instanceOf: BerthError })?.kind, 'invalid_argument');
  t.is(t.throws(() => planResources(v1Layout('/cg'), '/c', { unified: { 'memory.high': '1' } }))?.message,
    'unified cgroup resources need a cgroup v2 hierarchy, and this host has none');
});

test('a file that must exist is refused when absent, after the writes before it', async (t) => {
  const base = await tempBase(t);
  const dir = `${base}/c`;
  await files({ [`${dir}/pids.max`]: '' });
  const plan = planResources(v2Layout(base), '/c', { pidsLimit: 7, hugepageLimits: [{ pageSize: '1GB', limit: 0 }] });
  const err = await t.throwsAsync(executePlan(syncIo, plan.steps), { instanceOf: BerthError });
  t.is(err?.kind, 'invalid_argument');
  t.is(err?.message, `hugepage size 1GB is not supported here (no ${dir}/hugetlb.1GB.max)`);
  t.is(await read(`${dir}/pids.max`), '7');
});

test('a write the kernel cannot take names the file and the value', async (t) => {
  const base = await tempBase(t);
  const plan = planResources(v2Layout(base), '/gone', { pidsLimit: 3 });
  const err = await t.throwsAsync(executePlan(asyncIo, plan.steps), { instanceOf: BerthError });
  t.is(err?.kind, 'internal');
  t.regex(err!.message, new RegExp(`^cgroup: writing "3" to ${base}/gone/pids.max: `));
});

/** An io that records writes and lets `refuse` turn one down (as the kernel's EINVAL would arrive). */
function recordingIo(refuse: (file: string, done: string[]) => Error | undefined): CgroupIo & { done: string[]; tried: string[] } {
  const done: string[] = [];
  const tried: string[] = [];
  return {
    done,
    tried,
    async write(file, value) {
      tried.push(`${path.basename(file)}=${value}`);
      const err = refuse(path.basename(file), done);
      if (err) throw err;
      done.push(`${path.basename(file)}=${value}`);
    },
    async read() {
      return undefined;
    },
    async exists() {
      return true;
    },
    async mkdir() {},
  };
}

const pair: CgroupStep = {
  kind: 'either-order',
  writes: [
    { file: '/cg/memory.limit_in_bytes', value: '100' },
    { file: '/cg/memory.memsw.limit_in_bytes', value: '100' },
  ],
};

test('either-order pairs are written in the other order when the kernel refuses the first', async (t) => {
  // Lowering: memory comes down first, in the planned order.
  const io = recordingIo(() => undefined);
  await executePlan(io, [pair]);
  t.deepEqual(io.tried, ['memory.limit_in_bytes=100', 'memory.memsw.limit_in_bytes=100']);

  // Raising: memory+swap must go up first; the first order's memory write is refused.
  const raising = recordingIo((file, done) =>
    file === 'memory.limit_in_bytes' && !done.includes('memory.memsw.limit_in_bytes=100')
      ? invalidArgument('cgroup: writing "100" to memory.limit_in_bytes: EINVAL')
      : undefined,
  );
  await executePlan(raising, [pair]);
  t.deepEqual(raising.tried, ['memory.limit_in_bytes=100', 'memory.memsw.limit_in_bytes=100', 'memory.limit_in_bytes=100']);
  t.deepEqual(raising.done, ['memory.memsw.limit_in_bytes=100', 'memory.limit_in_bytes=100']);
});

test('either-order pairs: other errors are not retried, and a failed retry reports the first refusal', async (t) => {
  const broken = recordingIo(() => internal('cgroup: writing: EIO'));
  const err = await t.throwsAsync(executePlan(broken, [pair]), { instanceOf: BerthError });
  t.is(err?.kind, 'internal');
  t.deepEqual(broken.tried, ['memory.limit_in_bytes=100']);

  const first = invalidArgument('first refusal');
  const always = recordingIo((file) => (file === 'memory.limit_in_bytes' ? first : invalidArgument('second refusal')));
  t.is(await t.throwsAsync(executePlan(always, [pair])), first);
  t.deepEqual(always.tried, ['memory.limit_in_bytes=100', 'memory.memsw.limit_in_bytes=100']);
});

test('Cgroups.apply plans and executes, warning once per missing controller', async (t) => {
  const base = await tempBase(t);
  const warnings: unknown[] = [];
  const log: Logger = {
    debug() {},
    info() {},
    error() {},
    warn: (msg, fields) => void warnings.push({ msg, ...fields }),
    child: () => log,
  };
  const cgroups = new Cgroups(v1Layout(base, ['hugetlb']), log);
  await files({ [`${base}/pids/c/pids.max`]: '', [`${base}/memory/c/memory.limit_in_bytes`]: '' });
  const r = { pidsLimit: 9, memoryLimitBytes: 4096, hugepageLimits: [{ pageSize: '2MB', limit: 0 }] };
  await cgroups.apply('/c', r, { empty: true });
  await cgroups.apply('/c', r);
  t.is(await read(`${base}/pids/c/pids.max`), '9');
  t.is(await read(`${base}/memory/c/memory.limit_in_bytes`), '4096');
  t.deepEqual(warnings, [{ msg: 'cgroup controller not available; its limits are not applied', controller: 'hugetlb' }]);
});
