import test from 'ava';
import { parse } from 'smol-toml';
import { ConfigError, defaultConfig, validateConfig } from '../../src/config/schema.js';
import { BerthError } from '../../src/errors.js';
import { lxcfsFor, LxcfsPolicy } from '../../src/container/lxcfs.js';
import { LxcfsHost, LxcfsLookup, LxcfsProbe } from '../../src/kernel/lxcfs.js';
import { MountInfo } from '../../src/kernel/mountinfo.js';

// Finding lxcfs (a fake host: which stats, mountinfo reads and directory listings a create costs) and the
// policy of [runtime] lxcfs: auto, on, off, never for privileged containers.

const ALL = ['cpuinfo', 'diskstats', 'loadavg', 'meminfo', 'slabinfo', 'stat', 'swaps', 'uptime'];

function mount(mountPoint: string, fsType: string): MountInfo {
  return { id: 1, parentId: 0, device: '0:62', root: '/', mountPoint, options: ['rw'], optional: [], fsType, source: fsType.replace('fuse.', ''), superOptions: [] };
}

/** /var/lib (dev 1); /var/lib/lxcfs is a directory there, or a mount of device `dev` when mounted. */
class FakeHost implements LxcfsHost {
  calls: string[] = [];
  mounted?: { dev: number; fsType: string; files: string[] };
  exists = true;
  statError?: string;
  hang = false;

  async stat(file: string) {
    this.calls.push(`stat ${file}`);
    if (this.hang && file === '/var/lib/lxcfs') return new Promise<never>(() => undefined);
    if (file === '/var/lib') return { dev: 1 };
    if (this.statError) throw Object.assign(new Error(this.statError), { code: this.statError });
    if (!this.exists) throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
    return { dev: this.mounted?.dev ?? 1 };
  }
  async readMountInfo() {
    this.calls.push('mountinfo');
    return [mount('/var/lib', 'ext4'), ...(this.mounted ? [mount('/var/lib/lxcfs', this.mounted.fsType)] : [])];
  }
  async realpath(file: string) {
    return file;
  }
  async readdir(dir: string) {
    this.calls.push(`readdir ${dir}`);
    return this.mounted?.files ?? [];
  }
}

function probe(host: FakeHost, timeoutMs?: number) {
  const changes: LxcfsLookup[] = [];
  return { changes, probe: new LxcfsProbe({ dir: '/var/lib/lxcfs/', host, timeoutMs, onChange: (f) => changes.push(f) }) };
}

test('probe: lxcfs mounted is found once through mountinfo, then each create costs two stats while the same mount stays', async (t) => {
  const host = new FakeHost();
  host.mounted = { dev: 62, fsType: 'fuse.lxcfs', files: ALL };
  const { probe: p, changes } = probe(host);
  for (let i = 0; i < 3; i++) {
    t.deepEqual(await p.find(), { view: { dir: '/var/lib/lxcfs', procFiles: ['meminfo', 'cpuinfo', 'stat', 'uptime', 'loadavg', 'diskstats', 'swaps'] } });
  }
  t.is(host.calls.filter((c) => c === 'mountinfo').length, 1);
  t.is(host.calls.filter((c) => c.startsWith('readdir')).length, 1);
  t.deepEqual(host.calls.slice(-2), ['stat /var/lib/lxcfs', 'stat /var/lib']);
  t.is(changes.length, 1, 'the find is told once');
});

test('probe: an lxcfs that goes away is noticed at the next create, and a new one (another device) is looked at again', async (t) => {
  const host = new FakeHost();
  host.mounted = { dev: 62, fsType: 'fuse.lxcfs', files: ['meminfo', 'uptime'] };
  const { probe: p, changes } = probe(host);
  t.deepEqual((await p.find()).view?.procFiles, ['meminfo', 'uptime']);
  host.mounted = undefined;
  t.deepEqual(await p.find(), { reason: 'nothing is mounted at /var/lib/lxcfs' });
  t.deepEqual(await p.find(), { reason: 'nothing is mounted at /var/lib/lxcfs' });
  t.is(host.calls.filter((c) => c === 'mountinfo').length, 1, 'no mountinfo read while nothing is mounted');
  host.mounted = { dev: 63, fsType: 'fuse.lxcfs', files: ALL };
  t.is((await p.find()).view?.procFiles.length, 7);
  t.is(host.calls.filter((c) => c === 'mountinfo').length, 2);
  t.deepEqual(changes.map((c) => (c.view ? 'found' : c.reason)), ['found', 'nothing is mounted at /var/lib/lxcfs', 'found']);
});

test('probe: a missing directory, another filesystem, an empty proc directory and a dead FUSE mount are each a reason, not an error', async (t) => {
  const host = new FakeHost();
  host.exists = false;
  const { probe: p } = probe(host);
  t.deepEqual(await p.find(), { reason: '/var/lib/lxcfs does not exist' });
  host.exists = true;
  host.mounted = { dev: 70, fsType: 'tmpfs', files: ALL };
  t.deepEqual(await p.find(), { reason: '/var/lib/lxcfs is a tmpfs mount, not fuse.lxcfs' });
  host.mounted = { dev: 71, fsType: 'fuse.lxcfs', files: ['slabinfo'] };
  t.regex((await p.find()).reason ?? '', /^\/var\/lib\/lxcfs\/proc has none of meminfo, cpuinfo/);
  host.statError = 'ENOTCONN';
  t.deepEqual(await p.find(), { reason: 'stat /var/lib/lxcfs: ENOTCONN' });
});

test('probe: a hung lxcfs (a stat that never answers) is given up after the timeout', async (t) => {
  const host = new FakeHost();
  host.hang = true;
  const { probe: p } = probe(host, 50);
  t.deepEqual(await p.find(), { reason: 'stat /var/lib/lxcfs: no answer within 50 ms (is lxcfs hung?)' });
});

function policy(mode: LxcfsPolicy['mode'], found: LxcfsLookup) {
  const asked: number[] = [];
  return { asked, policy: { mode, dir: '/var/lib/lxcfs', find: async () => (asked.push(1), found) } satisfies LxcfsPolicy };
}

const view = { dir: '/var/lib/lxcfs', procFiles: ['meminfo'] };
const missing = { reason: 'nothing is mounted at /var/lib/lxcfs' };

test('policy: auto uses lxcfs when found and goes without when not; off never looks', async (t) => {
  t.deepEqual(await lxcfsFor(policy('auto', { view }).policy, false), view);
  t.is(await lxcfsFor(policy('auto', missing).policy, false), undefined);
  const off = policy('off', { view });
  t.is(await lxcfsFor(off.policy, false), undefined);
  t.is(off.asked.length, 0);
  t.is(await lxcfsFor(undefined, false), undefined);
});

test('policy: a privileged container never gets lxcfs and is not refused by "on"; nothing is looked up for it', async (t) => {
  for (const mode of ['auto', 'on'] as const) {
    const p = policy(mode, missing);
    t.is(await lxcfsFor(p.policy, true), undefined);
    t.is(p.asked.length, 0);
  }
});

test('policy: "on" without a usable lxcfs is FAILED_PRECONDITION naming [runtime] lxcfs, lxcfs_dir and the reason', async (t) => {
  t.deepEqual(await lxcfsFor(policy('on', { view }).policy, false), view);
  const err = await t.throwsAsync(lxcfsFor(policy('on', missing).policy, false), { instanceOf: BerthError });
  t.is(err?.kind, 'failed_precondition');
  t.is(
    err?.message,
    '[runtime] lxcfs = "on" but lxcfs is not usable at /var/lib/lxcfs ([runtime] lxcfs_dir): nothing is mounted at /var/lib/lxcfs; start lxcfs there, or set [runtime] lxcfs to "auto" or "off"',
  );
});

test('config: runtime.lxcfs is auto by default with lxcfs_dir /var/lib/lxcfs; a bad mode or a relative directory is refused naming the key', (t) => {
  t.deepEqual([defaultConfig().runtime.lxcfs, defaultConfig().runtime.lxcfsDir], ['auto', '/var/lib/lxcfs']);
  const fromToml = (text: string) => validateConfig(parse(text) as Record<string, unknown>);
  t.deepEqual([fromToml('[runtime]\nlxcfs = "on"\nlxcfs_dir = "/srv/lxcfs"').runtime.lxcfs, fromToml('[runtime]\nlxcfs = "off"').runtime.lxcfs], ['on', 'off']);
  for (const [text, key, why] of [
    ['[runtime]\nlxcfs = "yes"', 'runtime.lxcfs', /must be one of auto, on, off/],
    ['[runtime]\nlxcfs = true', 'runtime.lxcfs', /must be one of auto, on, off/],
    ['[runtime]\nlxcfs_dir = "var/lib/lxcfs"', 'runtime.lxcfs_dir', /absolute/],
  ] as const) {
    const err = t.throws(() => fromToml(text), { instanceOf: ConfigError }, text) as ConfigError;
    t.is(err.key, key);
    t.regex(err.message, why);
  }
});
