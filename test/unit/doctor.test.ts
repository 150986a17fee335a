import test from 'ava';
import { ifbName } from '../../src/network/bandwidth.js';
import { findOrphans, type Inventory, type Owners } from '../../src/doctor/orphans.js';
import { chainsFor, parseSave } from '../../src/network/rules.js';
import { vethName } from '../../src/network/embedded.js';
import { parseCommand, UsageError } from '../../src/cli/args.js';
import { daemonRoot } from '../../src/doctor/serving.js';

// berth doctor's judgement, with a fake host: what is berth's and unowned is listed, what is owned or another
// tool's is not.

const ROOT = '/var/lib/berth';
const STATE = '/run/berth';
const id = (c: string) => c.repeat(64);
const LIVE = id('a');
const STOPPED = id('b');
const GONE = id('c');
const CTR = id('d');
const GONE_CTR = id('e');
const OTHER_BERTH = id('f');
const chains = chainsFor('BERTH');

function owners(): Owners {
  return {
    pods: [
      { id: LIVE, ready: true, cgroupPath: `/berth-pod-${LIVE.slice(0, 16)}`, networked: true, veth: vethName(LIVE) },
      { id: STOPPED, ready: false, cgroupPath: '/kubepods/podx', networked: false },
    ],
    containers: [{ id: CTR, sandboxId: LIVE, cgroupPath: `/berth-pod-${LIVE.slice(0, 16)}/${CTR}`, layers: ['sha256:l1'] }],
    images: [{ layers: ['sha256:l2'] }],
    recordlessDirs: [],
  };
}

function inventory(over: Partial<Inventory> = {}): Inventory {
  return {
    root: ROOT,
    stateDir: STATE,
    mounts: [],
    bridgePorts: [],
    cgroups: [],
    processes: [],
    parents: {},
    layerDirs: [],
    podRunDirs: [],
    ifbs: [],
    loops: [],
    writableLayerImages: [],
    ...over,
  };
}

const kinds = (inv: Inventory, o = owners()) => findOrphans(inv, o).map((x) => `${x.kind} ${x.object}`);

test('nothing is listed when every object has its record', (t) => {
  const pod = `/berth-pod-${LIVE.slice(0, 16)}`;
  const inv = inventory({
    mounts: [
      { mountPoint: `${STATE}/sandboxes/${LIVE}/ns/net`, fsType: 'nsfs' },
      { mountPoint: `${STATE}/sandboxes/${LIVE}/shm`, fsType: 'tmpfs' },
      { mountPoint: `${ROOT}/containers/${CTR}/rootfs`, fsType: 'overlay' },
    ],
    bridgePorts: [vethName(LIVE)],
    cgroups: [{ mountPoint: '/sys/fs/cgroup/memory', paths: [{ path: pod, pids: [] }, { path: `${pod}/${CTR}`, pids: [11] }] }],
    processes: [{ pid: 10, comm: 'berth-shim', argv: ['/proc/self/fd/3', 'create', `${ROOT}/containers/${CTR}`] }],
    parents: { 11: 10 },
    layerDirs: [{ name: 'l1', diffId: 'sha256:l1' }, { name: 'l2', diffId: 'sha256:l2' }],
    podRunDirs: [LIVE, STOPPED],
    ipam: { version: 1, allocations: { '10.86.0.2': LIVE }, last: {} },
    iptables: { chains, saved: parseSave(`*nat\n:BERTH-HOSTPORTS - [0:0]\n-A BERTH-HOSTPORTS -p tcp -m tcp --dport 80 -m comment --comment "berth-pod:${LIVE}" -j DNAT --to-destination 10.86.0.2:80\nCOMMIT\n`) },
  });
  t.deepEqual(findOrphans(inv, owners()), []);
});

test('each kind of orphan is listed, with its pod or container', (t) => {
  const gonePod = `/berth-pod-${GONE.slice(0, 16)}`;
  const inv = inventory({
    mounts: [
      { mountPoint: `${STATE}/sandboxes/${GONE}/ns/net`, fsType: 'nsfs' },
      { mountPoint: `${STATE}/sandboxes/${STOPPED}/shm`, fsType: 'tmpfs' },
      { mountPoint: `${ROOT}/containers/${GONE_CTR}/rootfs`, fsType: 'overlay' },
    ],
    bridgePorts: [vethName(LIVE), vethName(GONE)],
    cgroups: [{ mountPoint: '/sys/fs/cgroup/pids', paths: [{ path: gonePod, pids: [] }, { path: `${gonePod}/${GONE_CTR}`, pids: [] }, { path: `/kubepods/podx/${GONE_CTR}`, pids: [] }] }],
    processes: [
      { pid: 20, comm: 'berth-shim', argv: ['/proc/self/fd/3', 'create', `${ROOT}/containers/${GONE_CTR}`] },
      { pid: 21, comm: 'berth-pod-init', argv: ['/proc/self/fd/3', 'sandbox', `${STATE}/sandboxes/${STOPPED}/ns`, '--pid'] },
    ],
    layerDirs: [{ name: '.staging-0011' }, { name: 'l3', diffId: 'sha256:l3' }, { name: 'broken' }, { name: 'l1', diffId: 'sha256:l1' }],
    podRunDirs: [GONE, LIVE],
    ipam: { version: 1, allocations: { '10.86.0.2': LIVE, '10.86.0.3': GONE }, last: {} },
    iptables: { chains, saved: parseSave(`*nat\n:BERTH-HOSTPORTS - [0:0]\n-A BERTH-HOSTPORTS -p tcp -m tcp --dport 81 -m comment --comment "berth-pod:${GONE}" -j DNAT --to-destination 10.86.0.3:80\nCOMMIT\n`) },
  });
  const found = findOrphans(inv, { ...owners(), recordlessDirs: [`${ROOT}/sandboxes/${GONE}`] });
  const list = found.map((x) => `${x.kind} ${x.object}`);
  t.deepEqual(list, [
    'process 20',
    'process 21',
    `netns ${STATE}/sandboxes/${GONE}/ns/net`,
    `mount ${ROOT}/containers/${GONE_CTR}/rootfs`,
    `mount ${STATE}/sandboxes/${STOPPED}/shm`,
    `veth ${vethName(GONE)}`,
    `iptables nat -A BERTH-HOSTPORTS -p tcp -m tcp --dport 81 -m comment --comment "berth-pod:${GONE}" -j DNAT --to-destination 10.86.0.3:80`,
    'ipam 10.86.0.3',
    `cgroup /sys/fs/cgroup/pids/kubepods/podx/${GONE_CTR}`,
    `cgroup /sys/fs/cgroup/pids${gonePod}/${GONE_CTR}`,
    `cgroup /sys/fs/cgroup/pids${gonePod}`,
    `layer ${ROOT}/images/layers/.staging-0011`,
    `layer ${ROOT}/images/layers/l3`,
    `layer ${ROOT}/images/layers/broken`,
    `state ${ROOT}/sandboxes/${GONE}`,
    `state ${STATE}/sandboxes/${GONE}`,
  ]);
  t.is(found.find((o) => o.kind === 'process' && o.object === '20')?.container, GONE_CTR);
  t.is(found.find((o) => o.kind === 'ipam')?.pod, GONE);
  t.is(found.find((o) => o.kind === 'veth')?.pod, GONE);
  t.is(found.find((o) => o.kind === 'cgroup' && o.object.includes('kubepods'))?.pod, STOPPED);
});

test("another tool's objects are never listed", (t) => {
  const inv = inventory({
    // Mounts outside berth's subdirectories, among them the root itself on a tmpfs of the operator's.
    mounts: [
      { mountPoint: '/run/netns/other', fsType: 'nsfs' },
      { mountPoint: ROOT, fsType: 'tmpfs' },
      { mountPoint: '/var/lib/containerd/x', fsType: 'overlay' },
    ],
    // A veth another tool put on the bridge, and one named like berth's but not hex.
    bridgePorts: ['veth1234', 'berthnothexxxxx', 'eth9'],
    cgroups: [
      {
        mountPoint: '/sys/fs/cgroup/memory',
        paths: [
          { path: '/kubepods/podx/notanid', pids: [] },
          // Inside a cgroup that is neither berth's nor a recorded pod's: a 64-hex name there is another runtime's.
          { path: `/system.slice/${GONE_CTR}`, pids: [] },
        ],
      },
    ],
    processes: [
      // berth-shim of another root, an exec session, and a process merely named like the shim.
      { pid: 30, comm: 'berth-shim', argv: ['/proc/self/fd/3', 'create', `/other/root/containers/${GONE_CTR}`] },
      { pid: 31, comm: 'berth-shim', argv: ['/proc/self/fd/3', 'exec', '--pid', '12'] },
      { pid: 32, comm: 'berth-pod-init', argv: ['x', 'sandbox', '/elsewhere/ns'] },
    ],
    iptables: {
      chains,
      saved: parseSave(
        '*nat\n:KUBE-SERVICES - [0:0]\n:BERTH-other-HOSTPORTS - [0:0]\n' +
          `-A KUBE-SERVICES -m comment --comment "berth-pod:${GONE}" -j ACCEPT\n` +
          `-A BERTH-other-HOSTPORTS -m comment --comment "berth-pod:${GONE}" -j ACCEPT\n` +
          '-A BERTH-HOSTPORTS -p tcp --dport 9 -j ACCEPT\nCOMMIT\n',
      ),
    },
  });
  t.deepEqual(kinds(inv), []);
});

test("a berth-pod cgroup of another berth (no trace of it under this root) is not listed; one traced to this root is", (t) => {
  const other = `/berth-pod-${OTHER_BERTH.slice(0, 16)}`;
  const gone = `/berth-pod-${GONE.slice(0, 16)}`;
  const viaMonitor = `/berth-pod-${'9'.repeat(16)}`;
  const inv = inventory({
    cgroups: [
      {
        mountPoint: '/sys/fs/cgroup/cpu',
        paths: [
          { path: other, pids: [40] },
          { path: `${other}/${GONE_CTR}`, pids: [40] },
          { path: gone, pids: [] },
          { path: viaMonitor, pids: [51] },
        ],
      },
    ],
    // 40's parent is a monitor of another root; 51's parent is a monitor of this one.
    processes: [
      { pid: 41, comm: 'berth-shim', argv: ['x', 'create', `/other/containers/${GONE_CTR}`] },
      { pid: 50, comm: 'berth-shim', argv: ['x', 'create', `${ROOT}/containers/${GONE_CTR}`] },
    ],
    parents: { 40: 41, 51: 50 },
    podRunDirs: [GONE],
  });
  t.deepEqual(kinds(inv), ['process 50', `cgroup /sys/fs/cgroup/cpu${gone}`, `cgroup /sys/fs/cgroup/cpu${viaMonitor}`, `state ${STATE}/sandboxes/${GONE}`]);
});

test('a stopped pod keeps its cgroup, record and run dir; its pins and init are orphans', (t) => {
  const inv = inventory({
    mounts: [{ mountPoint: `${STATE}/sandboxes/${STOPPED}/ns/net`, fsType: 'nsfs' }],
    cgroups: [{ mountPoint: '/sys/fs/cgroup/cpu', paths: [{ path: '/kubepods/podx', pids: [] }] }],
    podRunDirs: [STOPPED],
  });
  t.deepEqual(kinds(inv), [`netns ${STATE}/sandboxes/${STOPPED}/ns/net`]);
});

test('orphan ifb devices, writable-layer loop devices and images are listed; live ones and other tools\' are not', (t) => {
  const o = owners();
  o.pods[0]!.ifb = ifbName(LIVE);
  const gone = 'e'.repeat(64);
  const inv = inventory({
    ifbs: [ifbName(LIVE), ifbName(gone), 'ifb0'],
    loops: [
      { device: '/dev/loop3', backingFile: `${ROOT}/writable-layers/${CTR}.img` },
      { device: '/dev/loop4', backingFile: `${ROOT}/writable-layers/${gone}.img (deleted)` },
      { device: '/dev/loop5', backingFile: '/srv/other.img' },
    ],
    writableLayerImages: [`${CTR}.img`, `${gone}.img`],
  });
  t.deepEqual(kinds(inv, o), [`ifb ${ifbName(gone)}`, 'loop /dev/loop4', `state ${ROOT}/writable-layers/${gone}.img`]);
});

test('berth doctor: flags, and --force only with --fix', (t) => {
  t.like(parseCommand(['doctor']), { kind: 'doctor', options: { json: false, fix: false, force: false, root: '/var/lib/berth', socket: '/run/berth/berth.sock' } });
  t.like(parseCommand(['doctor', '--json', '--fix', '--force', '--root', '/r', '--state-dir', '/s', '--socket', 'unix:///s/b.sock']), {
    kind: 'doctor',
    options: { json: true, fix: true, force: true, root: '/r', stateDir: '/s', socket: '/s/b.sock' },
  });
  t.deepEqual(parseCommand(['doctor', '--help']), { kind: 'help', topic: 'doctor' });
  t.throws(() => parseCommand(['doctor', '--force']), { instanceOf: UsageError, message: /--force only goes with --fix/ });
  t.throws(() => parseCommand(['doctor', '--frob']), { instanceOf: UsageError, message: /unknown option --frob for berth doctor/ });
});

test("a berth daemon's root is read from its argv, relative to its working directory; other commands are no daemon", (t) => {
  const node = ['node', '--expose-gc', '/opt/berth/bin/../dist/src/main.js'];
  t.is(daemonRoot([...node, '--root', 'state', '--socket', '/s.sock'], '/srv'), '/srv/state');
  t.is(daemonRoot(node, '/'), '/var/lib/berth');
  t.is(daemonRoot([...node, 'doctor', '--root', '/srv/state'], '/'), undefined);
  t.is(daemonRoot([...node, '--frob'], '/'), undefined);
  t.is(daemonRoot(['node', 'server.js', '--root', '/srv/state'], '/'), undefined);
});
