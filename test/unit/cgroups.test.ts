import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { logger } from '../../src/log.js';
import { parseMountInfo, unescapeOctal } from '../../src/kernel/mountinfo.js';
import {
  Cgroups,
  cgroupSegments,
  discoverCgroups,
  ownProcsFile,
  sharesToWeight,
  v1MemswLimit,
  v2SwapMax,
  type CgroupLayout,
} from '../../src/kernel/cgroups.js';

// This host: every v1 controller on its own mount, hugetlb alone on cgroup2, a named systemd hierarchy.
const hybrid = `21 26 0:20 / /proc rw,relatime - proc proc rw
26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:32 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
37 30 0:34 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;

// A modern systemd host: one cgroup2 tree.
const pureV2 = `22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`;

// Classic v1 (systemd "hybrid" with an empty unified tree): cpu and cpuacct co-mounted; also a bind mount
// of a memory sub-cgroup listed first, and a path with an escaped space.
const v1Comounted = `25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
99 1 0:29 /docker/abc /mnt/inner\\040memory rw,relatime shared:50 master:12 - cgroup cgroup rw,memory
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpuset
32 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
33 25 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
34 25 0:31 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,hugetlb
35 25 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,net_cls,net_prio
36 25 0:33 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,devices
`;

const controllersOf = (table: Record<string, string>) => (mountPoint: string) => (table[mountPoint] ?? '').split(' ').filter(Boolean);

test('mountinfo: fields, optional fields and octal escapes', (t) => {
  const mounts = parseMountInfo(v1Comounted);
  t.is(mounts.length, 11);
  const inner = mounts[1];
  t.like(inner, { id: 99, parentId: 1, device: '0:29', root: '/docker/abc', mountPoint: '/mnt/inner memory', fsType: 'cgroup', source: 'cgroup' });
  t.deepEqual(inner.optional, ['shared:50', 'master:12']);
  t.deepEqual(inner.superOptions, ['rw', 'memory']);
  t.deepEqual(parseMountInfo(hybrid)[0].optional, []);
  t.is(unescapeOctal('a\\040b\\011c\\012d\\134e'), 'a b\tc\nd\\e');
});

test('mountinfo: malformed lines are skipped', (t) => {
  t.deepEqual(parseMountInfo('\ngarbage\n1 2 3 4 5\n'), []);
});

test('layout: this host (hybrid, hugetlb alone on cgroup2)', (t) => {
  const layout = discoverCgroups(hybrid, controllersOf({ '/sys/fs/cgroup/unified': 'hugetlb' }));
  t.is(layout.mode, 'hybrid');
  t.deepEqual(
    layout.hierarchies.map((h) => h.mountPoint),
    // blkio only accounts the container's block I/O for its stats.
    ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'devices', 'unified', 'blkio'].map((n) => `/sys/fs/cgroup/${n}`),
  );
  t.like(layout.controllers.blkio, { version: 1, mountPoint: '/sys/fs/cgroup/blkio' });
  // The devices controller holds the container's device rules (and cgroup2 its device program).
  t.like(layout.controllers.devices, { version: 1, mountPoint: '/sys/fs/cgroup/devices' });
  t.like(layout.controllers.cpu, { version: 1, mountPoint: '/sys/fs/cgroup/cpu' });
  t.like(layout.controllers.cpuacct, { version: 1, mountPoint: '/sys/fs/cgroup/cpuacct' });
  t.like(layout.controllers.hugetlb, { version: 2, mountPoint: '/sys/fs/cgroup/unified' });
  t.like(layout.unified, { version: 2, controllers: ['hugetlb'] });
  // The named systemd hierarchy and unused controllers are left alone.
  t.false(layout.hierarchies.some((h) => h.mountPoint.endsWith('systemd') || h.mountPoint.endsWith('freezer')));
});

test('layout: pure cgroup v2', (t) => {
  const layout = discoverCgroups(pureV2, controllersOf({ '/sys/fs/cgroup': 'cpuset cpu io memory hugetlb pids rdma misc' }));
  t.is(layout.mode, 'v2');
  t.deepEqual(layout.hierarchies, [{ version: 2, mountPoint: '/sys/fs/cgroup', controllers: ['cpuset', 'cpu', 'io', 'memory', 'hugetlb', 'pids', 'rdma', 'misc'] }]);
  for (const c of ['cpu', 'cpuset', 'memory', 'pids', 'hugetlb'] as const) t.is(layout.controllers[c]?.mountPoint, '/sys/fs/cgroup');
  // CPU accounting is cpu.stat on v2, not a controller.
  t.is(layout.controllers.cpuacct, undefined);
});

test('layout: v1 with cpu,cpuacct co-mounted and an empty unified tree', (t) => {
  const layout = discoverCgroups(v1Comounted, controllersOf({}));
  t.is(layout.mode, 'v1');
  t.is(layout.controllers.cpu?.mountPoint, '/sys/fs/cgroup/cpu,cpuacct');
  t.is(layout.controllers.cpuacct?.mountPoint, '/sys/fs/cgroup/cpu,cpuacct');
  t.deepEqual(layout.controllers.cpu?.controllers, ['cpu', 'cpuacct']);
  // The bind mount of a sub-cgroup loses to the mount of the hierarchy's root.
  t.is(layout.controllers.memory?.mountPoint, '/sys/fs/cgroup/memory');
  t.deepEqual(
    layout.hierarchies.map((h) => h.mountPoint),
    ['cpu,cpuacct', 'cpuset', 'memory', 'pids', 'devices', 'hugetlb'].map((n) => `/sys/fs/cgroup/${n}`),
  );
  t.is(layout.unified?.mountPoint, '/sys/fs/cgroup/unified');
});

test('layout: without a v1 devices controller the cgroup2 tree is joined, even when it holds no controller berth uses', (t) => {
  // A device program attached there is then all that enforces the device policy.
  const noDevices = v1Comounted.split('\n').filter((l) => !l.includes('/sys/fs/cgroup/devices')).join('\n');
  const layout = discoverCgroups(noDevices, controllersOf({}));
  t.is(layout.controllers.devices, undefined);
  t.deepEqual(layout.hierarchies.map((h) => h.mountPoint).at(-1), '/sys/fs/cgroup/unified');
  t.is(layout.mode, 'hybrid');
});

test('layout: no cgroup mount at all is unavailable', (t) => {
  const err = t.throws(() => discoverCgroups('26 1 254:0 / / rw - ext4 /dev/vda rw\n', () => []), { instanceOf: BerthError });
  t.is(err?.kind, 'unavailable');
});

test('procsFiles: one per hierarchy, from a layout that went through JSON', (t) => {
  const layout = JSON.parse(JSON.stringify(discoverCgroups(hybrid, controllersOf({ '/sys/fs/cgroup/unified': 'hugetlb' })))) as CgroupLayout;
  const cg = new Cgroups(layout, logger());
  t.deepEqual(cg.procsFiles({ path: '/kubepods/pod1/c', created: [] }), [
    '/sys/fs/cgroup/cpu/kubepods/pod1/c/cgroup.procs',
    '/sys/fs/cgroup/cpuacct/kubepods/pod1/c/cgroup.procs',
    '/sys/fs/cgroup/cpuset/kubepods/pod1/c/cgroup.procs',
    '/sys/fs/cgroup/memory/kubepods/pod1/c/cgroup.procs',
    '/sys/fs/cgroup/pids/kubepods/pod1/c/cgroup.procs',
    '/sys/fs/cgroup/devices/kubepods/pod1/c/cgroup.procs',
    '/sys/fs/cgroup/unified/kubepods/pod1/c/cgroup.procs',
    '/sys/fs/cgroup/blkio/kubepods/pod1/c/cgroup.procs',
  ]);
});

test('cgroup paths must be absolute and stay inside the hierarchy', (t) => {
  t.deepEqual(cgroupSegments('/kubepods//burstable/pod1/'), ['kubepods', 'burstable', 'pod1']);
  for (const bad of ['kubepods', '/', '', '/a/../b', '/a/./b']) {
    t.is(t.throws(() => cgroupSegments(bad), { instanceOf: BerthError })?.kind, 'invalid_argument', bad);
  }
});

test('bad input is refused before any write', async (t) => {
  const fake = pureV2.replace(' /sys/fs/cgroup ', ' /nonexistent/cgroup ');
  const cg = new Cgroups(discoverCgroups(fake, () => ['cpu', 'memory', 'pids', 'hugetlb']), logger());
  for (const name of ['../cgroup.procs', 'a/b', '..']) {
    const err = await t.throwsAsync(cg.apply('/x', { unified: { [name]: '1' } }), { instanceOf: BerthError });
    t.is(err?.kind, 'invalid_argument');
  }
  // Checked before the first write (a write would fail as internal: the fake layout has no files).
  const swap = await t.throwsAsync(cg.apply('/x', { cpuShares: 512, memoryLimitBytes: 300, memorySwapLimitBytes: 100 }));
  t.is((swap as BerthError).kind, 'invalid_argument');
  const page = await t.throwsAsync(cg.apply('/x', { pidsLimit: 5, hugepageLimits: [{ pageSize: '2M', limit: 0 }] }));
  t.is((page as BerthError).kind, 'invalid_argument');
  const outside = await t.throwsAsync(cg.remove({ path: '/x', created: ['/etc/x'] }), { instanceOf: BerthError });
  t.is(outside?.kind, 'invalid_argument');
});

test('cpu shares to cpu.weight (the Kubernetes conversion)', (t) => {
  t.is(sharesToWeight(2), 1);
  t.is(sharesToWeight(1024), 39);
  t.is(sharesToWeight(512), 20);
  t.is(sharesToWeight(262144), 10000);
  t.is(sharesToWeight(1), 1); // clamped to the v1 range first
  t.is(sharesToWeight(1_000_000), 10000);
});

test('v1 memory+swap: defaults to the memory limit', (t) => {
  t.is(v1MemswLimit(100), 100);
  t.is(v1MemswLimit(100, 0), 100);
  t.is(v1MemswLimit(100, 300), 300);
  t.is(v1MemswLimit(100, -1), -1);
  t.is(v1MemswLimit(undefined, undefined), undefined);
  t.is(v1MemswLimit(0, undefined), undefined);
  t.is(t.throws(() => v1MemswLimit(300, 100), { instanceOf: BerthError })?.kind, 'invalid_argument');
});

test('v2 swap.max: memory+swap minus memory, 0 when equal or unset', (t) => {
  t.is(v2SwapMax(100), '0');
  t.is(v2SwapMax(100, 100), '0');
  t.is(v2SwapMax(100, 300), '200');
  t.is(v2SwapMax(100, -1), 'max');
  t.is(v2SwapMax(undefined, undefined), undefined);
  t.is(t.throws(() => v2SwapMax(undefined, 300), { instanceOf: BerthError })?.kind, 'invalid_argument');
  t.is(t.throws(() => v2SwapMax(300, 100), { instanceOf: BerthError })?.kind, 'invalid_argument');
});

test('ownProcsFile: the cgroup.procs of the cgroup /proc/self/cgroup names in the first hierarchy it matches, never outside the mount', (t) => {
  const layout = discoverCgroups(hybrid, () => ['hugetlb']);
  const self = '9:name=systemd:/system.slice/berth.service\n4:cpu:/system.slice\n3:memory:/system.slice/berth.service\n0::/\n';
  t.is(ownProcsFile(self, layout.hierarchies), '/sys/fs/cgroup/cpu/system.slice/cgroup.procs');
  const memory = layout.hierarchies.filter((h) => h.controllers.includes('memory'));
  t.is(ownProcsFile(self, memory), '/sys/fs/cgroup/memory/system.slice/berth.service/cgroup.procs');
  const unified = layout.hierarchies.filter((h) => h.version === 2);
  t.is(ownProcsFile(self, unified), '/sys/fs/cgroup/unified/cgroup.procs');
  t.is(ownProcsFile('3:memory:/../../etc\n', memory), undefined);
  t.is(ownProcsFile('', layout.hierarchies), undefined);
});
