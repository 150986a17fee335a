import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  CgroupStatsReader, keyedValue, memoryFromFiles, parseBlkioServiceBytes, parseCpuMax, parseIoStat, parseKeyed, parseLimit, parsePressure,
  type CgroupSample,
} from '../../src/kernel/cgroup-stats.js';
import { layoutFromMounts } from '../../src/kernel/cgroup-layout.js';
import { parseMountInfo } from '../../src/kernel/mountinfo.js';
import { InterfaceCountersReader, readInterfaceCounters } from '../../src/kernel/netdev-stats.js';
import { KernelFiles, maxOpenFor } from '../../src/kernel/kernel-files.js';
import { dirUsage } from '../../src/kernel/dir-usage.js';
import { nanoCoresBetween, StatsService, type StatsContainer, type StatsPod, type StatsPorts } from '../../src/stats/service.js';
import { WritableLayers } from '../../src/stats/writable-layers.js';
import { containerStatsToProto, podStatsToProto } from '../../src/cri/stats.js';
import { loadCri } from '../../src/cri/grpc.js';
import { DIRECT_ENCODED_METHODS, directResponseEncoder } from '../../src/cri/stats-wire.js';
import type { ContainerUsage, PodUsage } from '../../src/stats/types.js';
import { metricDescriptors, podMetrics } from '../../src/cri/stats-metrics.js';
import { BerthError } from '../../src/errors.js';
import { logger } from '../../src/log.js';

// Fixture text as the kernel writes these files (cut from real hosts: v1 with one mount per controller, and v2).

const V1_MEMORY_STAT = `cache 10874880
rss 7725056
pgfault 107486
pgmajfault 0
inactive_file 20480
total_cache 816873472
total_rss 17137664
total_pgfault 127539499
total_pgmajfault 11218
total_inactive_anon 9191424
total_inactive_file 460939264
`;
const V2_MEMORY_STAT = `anon 41943040
file 8388608
kernel 1048576
shmem 0
inactive_anon 0
active_anon 41943040
inactive_file 6291456
active_file 2097152
pgfault 10345
pgmajfault 12
`;
const PRESSURE = 'some avg10=9.88 avg60=20.96 avg300=14.48 total=1796740741\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n';

test('v1 memory: working set is usage minus total_inactive_file; rss, faults and the OOM count from their files', (t) => {
  const m = memoryFromFiles(false, {
    usage: '500000000\n',
    limit: '9223372036854771712\n',
    stat: V1_MEMORY_STAT,
    events: 'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n',
  });
  t.deepEqual(m, {
    usageBytes: 500000000,
    workingSetBytes: 500000000 - 460939264,
    rssBytes: 17137664,
    limitBytes: undefined,
    pageFaults: 127539499,
    majorPageFaults: 11218,
    oomKills: 2,
  });
});

test('v2 memory: working set is memory.current minus inactive_file, rss is anon; a limit and memory.events', (t) => {
  const m = memoryFromFiles(true, {
    usage: '52428800\n',
    limit: '104857600\n',
    stat: V2_MEMORY_STAT,
    events: 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n',
  });
  t.deepEqual(m, {
    usageBytes: 52428800,
    workingSetBytes: 52428800 - 6291456,
    rssBytes: 41943040,
    limitBytes: 104857600,
    pageFaults: 10345,
    majorPageFaults: 12,
    oomKills: 1,
  });
});

test('working set never goes below 0; a missing usage file is no memory at all', (t) => {
  t.is(memoryFromFiles(true, { usage: '100', stat: 'inactive_file 4096\n' })?.workingSetBytes, 0);
  t.is(memoryFromFiles(true, { stat: V2_MEMORY_STAT }), undefined);
});

test('limits: "max" and v1 huge counters are no limit', (t) => {
  t.is(parseLimit('max\n'), undefined);
  t.is(parseLimit('9223372036854771712'), undefined);
  t.is(parseLimit('67108864\n'), 67108864);
  t.is(parseLimit(undefined), undefined);
  t.is(parseCpuMax('max 100000\n'), undefined);
  t.is(parseCpuMax('50000 100000\n'), 0.5);
  t.is(parseCpuMax('200000 100000'), 2);
});

test('keyed files keep big counters exact', (t) => {
  const m = parseKeyed('usage_usec 18446744073709551\nnr_throttled 3\ngarbage\nthrottled_usec x\n');
  t.is(m.get('usage_usec'), 18446744073709551n);
  t.is(m.get('nr_throttled'), 3n);
  t.false(m.has('throttled_usec'));
});

test('pressure files: some and full lines; cpu without full; empty is none', (t) => {
  t.deepEqual(parsePressure(PRESSURE), {
    some: { avg10: 9.88, avg60: 20.96, avg300: 14.48, totalMicroseconds: 1796740741n },
    full: { avg10: 0, avg60: 0, avg300: 0, totalMicroseconds: 0n },
  });
  t.deepEqual(parsePressure('some avg10=1.50 avg60=0.00 avg300=0.00 total=42\n'), {
    some: { avg10: 1.5, avg60: 0, avg300: 0, totalMicroseconds: 42n },
  });
  t.is(parsePressure(''), undefined);
  t.is(parsePressure(undefined), undefined);
});

test('io: v2 io.stat and v1 blkio service bytes, summed over devices', (t) => {
  t.deepEqual(parseIoStat('8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n'), {
    readBytes: 4097n,
    writeBytes: 8194n,
  });
  t.deepEqual(parseBlkioServiceBytes('8:0 Read 4096\n8:0 Write 512\n8:0 Sync 4608\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 4608\n8:16 Read 1\nTotal 4609\n'), {
    readBytes: 4097n,
    writeBytes: 512n,
  });
  t.deepEqual(parseBlkioServiceBytes('Total 0\n'), { readBytes: 0n, writeBytes: 0n });
});

test('usage_nano_cores: CPU time over wall time between two samples, in billionths of a core', (t) => {
  t.is(nanoCoresBetween({ timestampNs: 0n, usage: 0n }, { timestampNs: 2_000_000_000n, usage: 1_000_000_000n }), 500_000_000);
  t.is(nanoCoresBetween({ timestampNs: 10n, usage: 5n }, { timestampNs: 10n, usage: 9n }), undefined);
  // A counter that went backwards (a new cgroup under the same id) gives no rate.
  t.is(nanoCoresBetween({ timestampNs: 0n, usage: 9n }, { timestampNs: 10n, usage: 5n }), undefined);
});

// ---- the reader, on a fake cgroupfs in a temporary directory --------------------------------------

async function fakeCgroupfs(files: Record<string, string>): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-cgstats-'));
  for (const [name, text] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(root, name)), { recursive: true });
    await fs.writeFile(path.join(root, name), text);
  }
  return root;
}

/** A v1 host with one mount per controller and the hybrid cgroup2 tree, holding the cgroup /pod/c. */
async function fakeV1Host(): Promise<{ root: string; layout: ReturnType<typeof layoutFromMounts> }> {
  const root = await fakeCgroupfs({
    'cpu/pod/c/cpu.stat': 'nr_periods 10\nnr_throttled 4\nthrottled_time 123456789\n',
    'cpu/pod/c/cpu.cfs_quota_us': '50000\n',
    'cpu/pod/c/cpu.cfs_period_us': '100000\n',
    'cpuacct/pod/c/cpuacct.usage': '987654321\n',
    'memory/pod/c/memory.usage_in_bytes': '500000000\n',
    'memory/pod/c/memory.limit_in_bytes': '9223372036854771712\n',
    'memory/pod/c/memory.stat': V1_MEMORY_STAT,
    'memory/pod/c/memory.oom_control': 'oom_kill_disable 0\nunder_oom 0\noom_kill 0\n',
    'pids/pod/c/pids.current': '3\n',
    'pids/pod/c/pids.max': 'max\n',
    'blkio/pod/c/blkio.throttle.io_service_bytes_recursive': '8:0 Read 10\n8:0 Write 20\nTotal 30\n',
    'unified/pod/c/cpu.pressure': PRESSURE,
    'unified/pod/c/cgroup.procs': '',
  });
  const mounts = ['cpu', 'cpuacct', 'memory', 'pids', 'blkio']
    .map((c, i) => `${30 + i} 1 0:${40 + i} / ${root}/${c} rw - cgroup cgroup rw,${c}`)
    .concat(`50 1 0:60 / ${root}/unified rw - cgroup2 cgroup2 rw`)
    .join('\n');
  return { root, layout: layoutFromMounts(parseMountInfo(mounts), () => []) };
}

test('reader: a v1 host (one mount per controller, PSI from the hybrid cgroup2 tree)', async (t) => {
  const { root, layout } = await fakeV1Host();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const s = (await new CgroupStatsReader(layout).read('/pod/c')) as CgroupSample;
  t.deepEqual(s.cpu, { usageNanoSeconds: 987654321n, throttledNanoSeconds: 123456789n, limitCores: 0.5 });
  t.is(s.memory?.workingSetBytes, 500000000 - 460939264);
  t.deepEqual(s.pids, { current: 3 });
  t.deepEqual(s.io, { readBytes: 10n, writeBytes: 20n });
  t.is(s.psi?.cpu?.some.totalMicroseconds, 1796740741n);
  t.is(s.psi?.memory, undefined);
  t.is(await new CgroupStatsReader(layout).read('/pod/gone'), undefined);
});

test('reader: only the parts asked for are read (CRI stats: no throttling, quota, OOM count or block I/O; metrics: no PSI)', async (t) => {
  const { root, layout } = await fakeV1Host();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const reader = new CgroupStatsReader(layout);
  const cri = (await reader.read('/pod/c', { memoryLimit: true, pids: true, psi: true })) as CgroupSample;
  t.deepEqual(cri.cpu, { usageNanoSeconds: 987654321n });
  t.like(cri.memory, { usageBytes: 500000000, workingSetBytes: 500000000 - 460939264, rssBytes: 17137664, pageFaults: 127539499 });
  t.false('oomKills' in cri.memory!);
  t.deepEqual(cri.pids, { current: 3 });
  t.is(cri.io, undefined);
  t.is(cri.psi?.cpu?.some.totalMicroseconds, 1796740741n);
  const bare = (await reader.read('/pod/c', {})) as CgroupSample;
  t.deepEqual(Object.keys(bare).sort(), ['cpu', 'memory']);
  t.is(bare.memory?.limitBytes, undefined);
  const forMetrics = (await reader.read('/pod/c', { cpuThrottling: true, cpuLimit: true, memoryLimit: true, oomKills: true, pids: true, pidsLimit: true })) as CgroupSample;
  t.deepEqual(forMetrics.cpu, { usageNanoSeconds: 987654321n, throttledNanoSeconds: 123456789n, limitCores: 0.5 });
  t.is(forMetrics.memory?.oomKills, 0);
  t.is(forMetrics.psi, undefined);
  t.is(forMetrics.io, undefined);
});

test('reader: files stay open and are read afresh each time; released with their cgroup; capped', async (t) => {
  const { root, layout } = await fakeV1Host();
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const files = new KernelFiles();
  const reader = new CgroupStatsReader(layout, files);
  t.is((await reader.read('/pod/c', {}))?.memory?.usageBytes, 500000000);
  const held = files.size;
  t.true(held >= 3);
  // The kernel rewrites a control file's text in place; a shorter text must not keep the old one's tail.
  await fs.writeFile(path.join(root, 'memory/pod/c/memory.usage_in_bytes'), '7\n');
  t.is((await reader.read('/pod/c', {}))?.memory?.usageBytes, 7);
  t.is(files.size, held);
  // A text larger than the read buffer is read on to its end.
  const big = 'x'.repeat(100_000) + '\ntotal_rss 42\n';
  await fs.writeFile(path.join(root, 'memory/pod/c/memory.stat'), big);
  t.is((await reader.read('/pod/c', {}))?.memory?.rssBytes, 42);
  reader.release('/pod/c');
  t.is(files.size, 0);
  t.is(await reader.read('/pod/gone', {}), undefined);
  t.is(files.size, 0);
  const capped = new KernelFiles(2);
  await new CgroupStatsReader(layout, capped).read('/pod/c');
  t.is(capped.size, 2);
  t.is(new KernelFiles(0).read('x', path.join(root, 'cpuacct/pod/c/cpuacct.usage')), '987654321\n');
});

test('kept-open files: at most 4096, or a quarter of a lower soft nofile limit', (t) => {
  const limits = (soft: string, hard: string) =>
    `Limit                     Soft Limit           Hard Limit           Units     \nMax processes             63459                63459                processes \nMax open files            ${soft.padEnd(21)}${hard.padEnd(21)}files     \n`;
  t.is(maxOpenFor(limits('20000', '20000')), 4096);
  t.is(maxOpenFor(limits('1024', '4096')), 256);
  t.is(maxOpenFor(limits('unlimited', 'unlimited')), 4096);
  t.is(maxOpenFor(undefined), 4096);
});

test('keyed values: only a match at the start of a line counts', (t) => {
  t.is(keyedValue(V1_MEMORY_STAT, 'inactive_file'), 20480n);
  t.is(keyedValue(V1_MEMORY_STAT, 'total_inactive_file'), 460939264n);
  t.is(keyedValue('a_rss 1\nrss 2', 'rss'), 2n);
  t.is(keyedValue('rss x\n', 'rss'), undefined);
  t.is(keyedValue('', 'rss'), undefined);
});

test('reader: a pure v2 host', async (t) => {
  const root = await fakeCgroupfs({
    'pod/c/cgroup.procs': '',
    'pod/c/cpu.stat': 'usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 5\nnr_throttled 1\nthrottled_usec 7000\n',
    'pod/c/cpu.max': '25000 100000\n',
    'pod/c/memory.current': '52428800\n',
    'pod/c/memory.max': '104857600\n',
    'pod/c/memory.stat': V2_MEMORY_STAT,
    'pod/c/memory.events': 'oom 1\noom_kill 1\n',
    'pod/c/pids.current': '7\n',
    'pod/c/pids.max': '100\n',
    'pod/c/io.stat': '8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n',
    'pod/c/cpu.pressure': PRESSURE,
    'pod/c/memory.pressure': PRESSURE,
    'pod/c/io.pressure': PRESSURE,
  });
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const layout = layoutFromMounts(parseMountInfo(`30 1 0:40 / ${root} rw - cgroup2 cgroup2 rw`), () => ['cpu', 'memory', 'pids', 'io']);
  const s = (await new CgroupStatsReader(layout).read('/pod/c')) as CgroupSample;
  t.deepEqual(s.cpu, { usageNanoSeconds: 2_500_000_000n, throttledNanoSeconds: 7_000_000n, limitCores: 0.25 });
  t.like(s.memory, { usageBytes: 52428800, workingSetBytes: 52428800 - 6291456, rssBytes: 41943040, limitBytes: 104857600, oomKills: 1 });
  t.deepEqual(s.pids, { current: 7, limit: 100 });
  t.deepEqual(s.io, { readBytes: 4096n, writeBytes: 8192n });
  t.truthy(s.psi?.cpu && s.psi.memory && s.psi.io);
});

test('network counters: every interface but lo, eth0 first; no sysfs is no network', async (t) => {
  const sys = await fakeCgroupfs({
    'class/net/lo/statistics/rx_bytes': '5\n',
    'class/net/lo/statistics/rx_errors': '0\n',
    'class/net/lo/statistics/tx_bytes': '5\n',
    'class/net/lo/statistics/tx_errors': '0\n',
    'class/net/eth0/statistics/rx_bytes': '1000\n',
    'class/net/eth0/statistics/rx_errors': '1\n',
    'class/net/eth0/statistics/tx_bytes': '2000\n',
    'class/net/eth0/statistics/tx_errors': '2\n',
    'class/net/a1/statistics/rx_bytes': '3\n',
    'class/net/a1/statistics/rx_errors': '0\n',
    'class/net/a1/statistics/tx_bytes': '4\n',
    'class/net/a1/statistics/tx_errors': '0\n',
  });
  t.teardown(() => fs.rm(sys, { recursive: true, force: true }));
  t.deepEqual(await readInterfaceCounters(sys), [
    { name: 'eth0', rxBytes: 1000n, rxErrors: 1n, txBytes: 2000n, txErrors: 2n },
    { name: 'a1', rxBytes: 3n, rxErrors: 0n, txBytes: 4n, txErrors: 0n },
  ]);
  t.is(await readInterfaceCounters(path.join(sys, 'nothing')), undefined);
});

test('network counters of a pod: its interface list is remembered, read again after relistMs or when one vanished', async (t) => {
  const iface = (name: string, rx: number) => Object.fromEntries(
    ['rx_bytes', 'rx_errors', 'tx_bytes', 'tx_errors'].map((c) => [`class/net/${name}/statistics/${c}`, c === 'rx_bytes' ? `${rx}\n` : '0\n']),
  );
  const sys = await fakeCgroupfs({ ...iface('lo', 1), ...iface('eth0', 100) });
  t.teardown(() => fs.rm(sys, { recursive: true, force: true }));
  const clock = { now: 0 };
  const files = new KernelFiles();
  const reader = new InterfaceCountersReader(files, 10_000, () => clock.now);
  t.deepEqual(reader.read(sys)?.map((i) => [i.name, i.rxBytes]), [['eth0', 100n]]);
  await fs.writeFile(path.join(sys, 'class/net/eth0/statistics/rx_bytes'), '250\n');
  for (const [k, v] of Object.entries(iface('net1', 7))) {
    await fs.mkdir(path.dirname(path.join(sys, k)), { recursive: true });
    await fs.writeFile(path.join(sys, k), v);
  }
  // Counters are read afresh; the new interface waits for the next listing.
  t.deepEqual(reader.read(sys)?.map((i) => [i.name, i.rxBytes]), [['eth0', 250n]]);
  clock.now = 10_000;
  t.deepEqual(reader.read(sys)?.map((i) => [i.name, i.rxBytes]), [['eth0', 250n], ['net1', 7n]]);
  t.is(files.size, 8);
  reader.release(sys);
  t.is(files.size, 0);
  // Without files held open (sysfs answers ENODEV for a removed interface's open file; a regular file would not),
  // an interface gone since the listing makes the reader list again at once.
  const uncached = new InterfaceCountersReader(new KernelFiles(0), 10_000, () => clock.now);
  t.is(uncached.read(sys)?.length, 2);
  await fs.rm(path.join(sys, 'class/net/net1'), { recursive: true });
  t.deepEqual(uncached.read(sys)?.map((i) => i.name), ['eth0']);
  t.is(uncached.read(path.join(sys, 'nothing')), undefined);
});

test('dir usage: blocks and inodes like du, a hard link counted once', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-du-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const empty = (await dirUsage(dir))!;
  await fs.mkdir(path.join(dir, 'a/b'), { recursive: true });
  await fs.writeFile(path.join(dir, 'a/b/f'), Buffer.alloc(1 << 20, 1));
  await fs.link(path.join(dir, 'a/b/f'), path.join(dir, 'a/g'));
  await fs.symlink('/etc/passwd', path.join(dir, 'l'));
  const u = (await dirUsage(dir))!;
  t.is(u.inodesUsed - empty.inodesUsed, 4); // a, a/b, f (twice linked), l
  t.true(u.usedBytes - empty.usedBytes >= 1 << 20 && u.usedBytes - empty.usedBytes < 3 << 20, `${u.usedBytes}`);
  t.false(u.truncated);
  t.true((await dirUsage(dir, { maxEntries: 2 }))!.truncated);
  t.is(await dirUsage(path.join(dir, 'missing')), undefined);
});

// ---- the service, with fakes for every port ---------------------------------------------------------

function fakes(samples: Map<string, CgroupSample | undefined>, clock: { now: bigint }) {
  const warnings: string[] = [];
  const log = { ...logger(), warn: (msg: string) => warnings.push(msg), child: () => log } as ReturnType<typeof logger>;
  const pod: StatsPod = { id: 'p1', name: 'web', namespace: 'ns', uid: 'u1', labels: { app: 'web' }, annotations: {}, cgroupPath: '/pod', netSysDir: '/sys-of-p1' };
  const containers: StatsContainer[] = [
    { id: 'c1', podSandboxId: 'p1', name: 'app', attempt: 2, labels: { tier: 'front' }, annotations: {}, cgroupPath: '/pod/c1' },
    { id: 'c2', podSandboxId: 'p1', name: 'side', attempt: 0, labels: {}, annotations: {}, cgroupPath: '/pod/c2' },
  ];
  const ports: StatsPorts = {
    containers: () => containers,
    pods: () => [pod],
    findContainer: (id) => containers.find((c) => c.id.startsWith(id)),
    findPod: (id) => (pod.id.startsWith(id) ? pod : undefined),
    readCgroup: async (p) => samples.get(p),
    readInterfaces: async (dir) => (dir === '/sys-of-p1' ? [{ name: 'eth0', rxBytes: 10n, rxErrors: 0n, txBytes: 20n, txErrors: 0n }] : undefined),
    writableLayer: (id) => (id === 'c1' ? { usedBytes: 4096, inodesUsed: 3, timestampNs: 5n } : undefined),
    layerMountpoint: '/var/lib/berth/containers',
    log,
    now: () => clock.now,
  };
  return { ports, warnings, containers };
}

const sample = (cpuNs: bigint, mem: number): CgroupSample => ({
  cpu: { usageNanoSeconds: cpuNs },
  memory: { usageBytes: mem, workingSetBytes: mem - 100, rssBytes: mem / 2, limitBytes: mem * 4, pageFaults: 1, majorPageFaults: 0, oomKills: 0 },
  pids: { current: 2, limit: 10 },
});

test('service: a rate from the previous sample of the same container; none on the first', async (t) => {
  const clock = { now: 1_000_000_000n };
  const samples = new Map<string, CgroupSample | undefined>([['/pod/c1', sample(1_000_000_000n, 1000)]]);
  const { ports } = fakes(samples, clock);
  const stats = new StatsService(ports);
  const first = await stats.container('c1');
  t.is(first.cpu?.usageNanoCores, undefined);
  t.is(first.memory?.availableBytes, 4000 - 900);
  t.deepEqual(first.writableLayer, { timestampNs: 5n, mountpoint: '/var/lib/berth/containers', usedBytes: 4096, inodesUsed: 3 });
  t.is(first.attempt, 2);
  t.deepEqual(first.pod, { podSandboxId: 'p1', name: 'web', namespace: 'ns', uid: 'u1' });
  clock.now += 2_000_000_000n;
  samples.set('/pod/c1', sample(2_000_000_000n, 1000));
  t.is((await stats.container('c1')).cpu?.usageNanoCores, 500_000_000);
  // A second read a microsecond later keeps the rate instead of dividing by almost nothing.
  clock.now += 1000n;
  samples.set('/pod/c1', sample(2_000_000_100n, 1000));
  t.is((await stats.container('c1')).cpu?.usageNanoCores, 500_000_000);
});

test('service: a vanished cgroup gives the last known values and one warning; unknown ids are NOT_FOUND', async (t) => {
  const clock = { now: 1n };
  const samples = new Map<string, CgroupSample | undefined>([['/pod/c1', sample(5n, 4096)]]);
  const { ports, warnings } = fakes(samples, clock);
  const stats = new StatsService(ports);
  const live = await stats.container('c1');
  samples.delete('/pod/c1');
  clock.now = 99n;
  const gone = await stats.container('c1');
  t.deepEqual(gone.memory, live.memory);
  t.deepEqual(gone.cpu, live.cpu);
  await stats.container('c1');
  t.deepEqual(warnings, ['cgroup is gone: stats repeat its last known values']);
  // Never sampled: identity and writable layer only.
  const never = await stats.container('c2');
  t.is(never.cpu, undefined);
  t.is(never.container.id, 'c2');
  for (const p of [stats.container('nope'), stats.pod('nope')]) {
    const err = await t.throwsAsync(p, { instanceOf: BerthError });
    t.is((err as BerthError).kind, 'not_found');
  }
});

test('service: list filters by id prefix, pod and labels; pods carry their containers and network', async (t) => {
  const samples = new Map<string, CgroupSample | undefined>([
    ['/pod', sample(10n, 8192)],
    ['/pod/c1', sample(5n, 4096)],
    ['/pod/c2', sample(5n, 4096)],
  ]);
  const { ports } = fakes(samples, { now: 1n });
  const stats = new StatsService(ports);
  t.deepEqual((await stats.containers()).map((c) => c.container.id), ['c1', 'c2']);
  t.deepEqual((await stats.containers({ containerId: 'c2' })).map((c) => c.container.id), ['c2']);
  t.deepEqual((await stats.containers({ labels: { tier: 'front' } })).map((c) => c.container.id), ['c1']);
  t.deepEqual((await stats.containers({ podSandboxId: 'other' })).map((c) => c.container.id), []);
  const [pod] = await stats.pods({ labels: { app: 'web' } });
  t.is(pod.pod.namespace, 'ns');
  t.deepEqual(pod.containers.map((c) => c.container.id), ['c1', 'c2']);
  t.is(pod.network?.interfaces[0].name, 'eth0');
  t.deepEqual(pod.pids, { current: 2, limit: 10 });
  t.deepEqual(await stats.pods({ labels: { app: 'db' } }), []);
});

test('service: what a gone container or pod was read from is released once, at the next list', async (t) => {
  const samples = new Map<string, CgroupSample | undefined>([['/pod', sample(1n, 10)], ['/pod/c1', sample(1n, 10)], ['/pod/c2', sample(1n, 10)]]);
  const { ports, containers } = fakes(samples, { now: 1n });
  const released: unknown[] = [];
  const pods = [ports.pods()[0]];
  const parts = [] as (object | undefined)[];
  const read = ports.readCgroup;
  const stats = new StatsService({ ...ports, pods: () => pods, release: (from) => released.push(from), readCgroup: async (p, want) => (parts.push(want), read(p, want)) });
  await stats.pods({}, { psi: true });
  t.deepEqual(parts, [{ psi: true }, { psi: true }, { psi: true }]);
  t.deepEqual(released, []);
  containers.splice(1, 1);
  await stats.containers();
  t.deepEqual(released, [{ cgroupPath: '/pod/c2' }]);
  pods.length = 0;
  await stats.pods();
  await stats.pods();
  t.deepEqual(released, [{ cgroupPath: '/pod/c2' }, { cgroupPath: '/pod', netSysDir: '/sys-of-p1' }]);
});

test('service: release lets go of what a stopped pod was read from at once, keeping its last values', async (t) => {
  const samples = new Map<string, CgroupSample | undefined>([['/pod', sample(1n, 10)], ['/pod/c1', sample(1n, 10)], ['/pod/c2', sample(1n, 10)]]);
  const { ports } = fakes(samples, { now: 1n });
  const released: unknown[] = [];
  const stats = new StatsService({ ...ports, release: (from) => released.push(from) });
  const before = await stats.pod('p1');
  stats.release('p1');
  stats.release('p1');
  stats.release('never-read');
  t.deepEqual(released, [{ cgroupPath: '/pod', netSysDir: '/sys-of-p1' }]);
  samples.delete('/pod');
  t.deepEqual((await stats.pod('p1')).memory, before.memory);
});

test('CRI rendering: absent counters stay absent; pod network default interface; descriptors match series labels', async (t) => {
  const samples = new Map<string, CgroupSample | undefined>([['/pod', sample(3_000_000_000n, 8192)], ['/pod/c1', { cpu: { usageNanoSeconds: 7n } }]]);
  const { ports } = fakes(samples, { now: 42n });
  const stats = new StatsService(ports);
  const c1 = containerStatsToProto(await stats.container('c1'));
  t.deepEqual(c1.cpu, { timestamp: '42', usage_core_nano_seconds: { value: 7 }, usage_nano_cores: undefined, psi: undefined });
  t.is(c1.memory, undefined);
  // Absent parts are undefined fields of one object shape: on the wire they are absent (null once decoded).
  const method = loadCri().runtime.v1.RuntimeService.service.ContainerStats;
  const decoded = method.responseDeserialize(method.responseSerialize({ stats: c1 })) as { stats: typeof c1 };
  t.like(decoded.stats.cpu, { timestamp: '42', usage_core_nano_seconds: { value: '7' }, usage_nano_cores: null, psi: null });
  t.is(decoded.stats.memory, null);
  t.is(decoded.stats.io, null);
  t.deepEqual(c1.writable_layer?.used_bytes, { value: 4096 });
  t.deepEqual(c1.attributes?.metadata, { name: 'app', attempt: 2 });
  samples.set('/pod/c1', { cpu: { usageNanoSeconds: 7n }, psi: { cpu: { some: { avg10: 1.5, avg60: 0, avg300: 0, totalMicroseconds: 12n } }, io: { some: { avg10: 0, avg60: 0, avg300: 0, totalMicroseconds: 3n }, full: { avg10: 0, avg60: 0, avg300: 0, totalMicroseconds: 1n } } } });
  const withPsi = containerStatsToProto(await stats.container('c1'));
  // PsiData.Total is nanoseconds; the kernel's files say microseconds.
  t.deepEqual(withPsi.cpu?.psi, { Some: { Total: 12000, Avg10: 1.5, Avg60: 0, Avg300: 0 }, Full: undefined });
  t.deepEqual(withPsi.io?.psi?.Full, { Total: 1000, Avg10: 0, Avg60: 0, Avg300: 0 });
  t.is(c1.io, undefined);
  // Counters past 2^53 go to protobufjs as decimal strings, exact.
  samples.set('/pod/c1', { cpu: { usageNanoSeconds: 2n ** 64n - 1n } });
  t.deepEqual(containerStatsToProto(await stats.container('c1')).cpu?.usage_core_nano_seconds, { value: '18446744073709551615' });
  const pod = await stats.pod('p1');
  const proto = podStatsToProto(pod, 1);
  t.is(proto.linux?.network?.default_interface?.name, 'eth0');
  t.deepEqual(proto.linux?.process?.process_count, { value: 2 });
  t.deepEqual(proto.attributes?.metadata, { name: 'web', uid: 'u1', namespace: 'ns', attempt: 1 });

  const descriptors = new Map(metricDescriptors().map((d) => [d.name, d]));
  t.true(descriptors.has('container_cpu_usage_seconds_total'));
  t.true(descriptors.has('container_memory_working_set_bytes'));
  t.true(descriptors.has('container_network_receive_bytes_total'));
  const m = podMetrics(pod, () => 'registry/busybox:1');
  const all = [...m.metrics!, ...m.container_metrics!.flatMap((c) => c.metrics!)];
  for (const metric of all) t.is(metric.label_values!.length, descriptors.get(metric.name!)!.label_keys!.length, metric.name!);
  const podCpu = m.metrics!.find((x) => x.name === 'container_cpu_usage_seconds_total');
  t.deepEqual(podCpu?.value, { value: '3' });
  t.is(m.metrics!.find((x) => x.name === 'container_network_transmit_bytes_total')?.label_values!.at(-1), 'eth0');
  t.is(m.container_metrics!.find((c) => c.container_id === 'c1')?.metrics!.find((x) => x.name === 'container_fs_usage_bytes')?.value?.value, '4096');
});

test('writable layers: walked in the background, dropped with their container, asleep without readers', async (t) => {
  let clock = 0;
  const walked: string[] = [];
  let list = [{ id: 'a', upperDir: '/a' }, { id: 'b', upperDir: '/b' }];
  const layers = new WritableLayers({
    layers: () => list,
    walk: async (dir) => (walked.push(dir), { usedBytes: dir.length * 100, inodesUsed: 1 }),
    intervalMs: 3_600_000,
    log: logger(),
    now: () => clock,
  });
  t.teardown(() => layers.close());
  layers.start();
  await layers.refresh();
  t.is(layers.usage('a')?.usedBytes, 200);
  list = [{ id: 'b', upperDir: '/b' }];
  await layers.refresh();
  t.is(layers.usage('a'), undefined);
  t.deepEqual(walked.slice(-1), ['/b']);
  // Long after the last read the periodic walk stops; the next read wakes it.
  clock += 10 * 3_600_000;
  const before = walked.length;
  layers.usage('b');
  await layers.refresh();
  t.true(walked.length > before);
});

test('stats responses encoded directly decode exactly as proto-loader encodes them: every field, 64-bit extremes, maps, absent parts', (t) => {
  const line = (total: bigint) => ({ avg10: 1.25, avg60: 0.5, avg300: 0, totalMicroseconds: total });
  const full = { some: line(12n), full: line(2n ** 60n) };
  const container = (id: string, rich: boolean): ContainerUsage => ({
    container: { id, name: 'app', labels: rich ? { 'io.kubernetes.pod.uid': 'u1', a: 'é"\n' } : {}, annotations: rich ? { note: 'x' } : {} },
    pod: { podSandboxId: 'p1', name: 'web', namespace: 'ns', uid: 'u1' },
    attempt: 3,
    ...(rich
      ? {
          cpu: { timestampNs: 1_764_771_234_567_000_000n, usageCoreNanoSeconds: 2n ** 64n - 1n, usageNanoCores: 250_000_000 },
          memory: { timestampNs: 1_764_771_234_567_000_001n, usageBytes: 2 ** 40, workingSetBytes: 40 * 2 ** 20, rssBytes: 7, availableBytes: 0, limitBytes: 2 ** 30, pageFaults: 5, majorPageFaults: 0 },
          psi: { cpu: full, memory: { some: line(0n) }, io: full },
          writableLayer: { timestampNs: 5n, mountpoint: '/var/lib/berth', usedBytes: 4096, inodesUsed: 2 },
        }
      : {}),
  });
  const pod: PodUsage = {
    pod: { id: 'p1', name: 'web', namespace: 'ns', uid: 'u1', labels: { app: 'web' }, annotations: {} },
    cpu: { timestampNs: 9n, usageCoreNanoSeconds: 3n },
    memory: { timestampNs: 9n, usageBytes: 1, workingSetBytes: 1, rssBytes: 1, pageFaults: 0, majorPageFaults: 0 },
    pids: { current: 4 },
    network: { timestampNs: 9n, interfaces: [{ name: 'eth0', rxBytes: 2n ** 63n, rxErrors: 0n, txBytes: 10n, txErrors: 1n }, { name: 'net1', rxBytes: 1n, rxErrors: 0n, txBytes: 0n, txErrors: 0n }] },
    psi: { cpu: full },
    containers: [container('c1', true), container('c2', false)],
  };
  const service = loadCri().runtime.v1.RuntimeService.service;
  const responses = {
    ListContainerStats: { stats: pod.containers.map((c) => containerStatsToProto(c)) },
    ContainerStats: { stats: containerStatsToProto(pod.containers[0]) },
    StreamContainerStats: { container_stats: pod.containers.map((c) => containerStatsToProto(c)) },
    ListPodSandboxStats: { stats: [podStatsToProto(pod, 1), podStatsToProto({ ...pod, network: undefined, pids: undefined, containers: [] }, 0)] },
    PodSandboxStats: { stats: podStatsToProto(pod, 1) },
    StreamPodSandboxStats: { pod_sandbox_stats: [podStatsToProto(pod, 1)] },
  };
  for (const name of DIRECT_ENCODED_METHODS) {
    const method = service[name];
    const direct = directResponseEncoder(name)(responses[name]);
    const reference = method.responseSerialize(responses[name] as never);
    t.deepEqual(method.responseDeserialize(direct), method.responseDeserialize(reference), name);
    // protobufjs 8 leaves proto3 scalars at their zero value off the wire, as proto3 says; the decoded messages match.
    t.true(direct.length <= reference.length, `${name}: no longer than the reference encoding`);
  }
  const decoded = service.ListContainerStats.responseDeserialize(directResponseEncoder('ListContainerStats')(responses.ListContainerStats));
  t.deepEqual(decoded.stats[0].cpu?.usage_core_nano_seconds, { value: '18446744073709551615' });
  t.is(decoded.stats[0].cpu?.timestamp, '1764771234567000000');
  t.is(decoded.stats[1].cpu, null, 'absent parts stay absent');
});
