// berth-shim's device policy against the real kernel (needs root): the cgroup2 device program on its own (the
// container sits in the root cgroup of the v1 devices hierarchy, which allows everything) and the v1 devices
// controller on its own, each checked with opens it must refuse and opens it must let through. Every cgroup and
// process made here is removed, and the last test checks that.
import type { ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { DEFAULT_DEVICE_RULES } from '../../src/container/devices.js';
import { discoverCgroups } from '../../src/kernel/cgroups.js';
import {
  SHIM_POLL, type Container, type ShimDevice, lines, mountsUnder, shim, withContainer as withContainerIn,
} from '../helpers/rootfs.js';
import { shimBed } from '../helpers/shim-bed.js';
import { pidAlive, waitFor } from '../helpers/util.js';

const { rtest, tmp: TMP, started, cgroupsMade, env } = shimBed('berth-devices-');
const layout = discoverCgroups();

const node = (p: string, major: number, minor: number): ShimDevice => ({ path: p, type: 'c', major, minor, mode: 0o666, uid: 0, gid: 0 });
// 10:229 (fuse) opens for anyone, and 1:11 (kmsg) write-only without CAP_SYSLOG: neither is in the default list.
const EXTRA_NODES = [node('/dev/fuse', 10, 229), node('/dev/kmsg', 1, 11)];
// Opens only (no byte is read or written): read-open of fuse, write-open of kmsg, read+write of null.
const PROBE = [
  'for spec in "</dev/fuse" ">/dev/kmsg" "<>/dev/null" "</dev/zero" "<>/dev/tty"; do',
  '  if (eval ": $spec") 2>/tmp/err; then echo "$spec ok"; else echo "$spec $(cat /tmp/err)"; fi',
  'done',
].join('\n');

/** A fresh cgroup under a hierarchy's mount point; not named berth-test-* (cgroups.test.ts checks those). */
function makeCgroup(mountPoint: string): string {
  const dir = path.join(mountPoint, `berth-devtest-${randomBytes(4).toString('hex')}`);
  mkdirSync(dir);
  cgroupsMade.push(dir);
  return dir;
}

async function removeWhenEmpty(dir: string): Promise<void> {
  await waitFor(`${dir} to empty`, () => readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').trim() === '', SHIM_POLL);
  rmdirSync(dir);
}

/** Runs PROBE in a container that joins only `cgroupDir`, with or without the default rules; returns its lines. */
async function probe(name: string, cgroupDir: string | undefined, withRules: boolean): Promise<Record<string, string>> {
  let out: string[] = [];
  await withContainerIn(env, name, async (c: Container) => {
    const { exit, records } = await c.run(
      { args: ['/bin/sh', '-c', PROBE], cgroupProcs: cgroupDir ? [path.join(cgroupDir, 'cgroup.procs')] : [] },
      (s) => {
        s.devices.push(...EXTRA_NODES);
        if (withRules) s.deviceRules = [...DEFAULT_DEVICE_RULES];
      },
    );
    out = lines(records, 'stdout');
    if (exit.exitCode !== 0) throw new Error(`probe exited ${exit.exitCode}: ${out.join('\n')}`);
  });
  return Object.fromEntries(out.map((l) => [l.slice(0, l.indexOf(' ')), l.slice(l.indexOf(' ') + 1)]));
}

function expectPolicy(t: ExecutionContext, r: Record<string, string>): void {
  t.regex(r['</dev/fuse'] ?? '', /Operation not permitted/, JSON.stringify(r));
  t.regex(r['>/dev/kmsg'] ?? '', /Operation not permitted/, JSON.stringify(r));
  t.is(r['<>/dev/null'], 'ok');
  t.is(r['</dev/zero'], 'ok');
  // No controlling terminal: ENXIO, which is the tty driver speaking, not the device policy.
  t.notRegex(r['<>/dev/tty'] ?? '', /Operation not permitted/);
}

rtest('control: without deviceRules the probe opens fuse and kmsg (what the policy must stop)', async (t) => {
  const r = await probe('control', undefined, false);
  t.is(r['</dev/fuse'], 'ok', JSON.stringify(r));
  t.is(r['>/dev/kmsg'], 'ok', JSON.stringify(r));
});

rtest('the cgroup2 device program alone refuses fuse and kmsg and lets null, zero and tty through', async (t) => {
  if (!layout.unified) {
    t.log('skipped: no cgroup2 mount on this host');
    t.pass('no cgroup2 mount on this host');
    return;
  }
  const cg = makeCgroup(layout.unified.mountPoint);
  // Not in a v1 devices cgroup of its own: there the root cgroup allows every device.
  expectPolicy(t, await probe('bpf', cg, true));
  await removeWhenEmpty(cg);
  t.false(existsSync(cg));
});

rtest('an exec joining the cgroup2 cgroup gets the same refusals', async (t) => {
  if (!layout.unified) {
    t.log('skipped: no cgroup2 mount on this host');
    t.pass('no cgroup2 mount on this host');
    return;
  }
  const cg = makeCgroup(layout.unified.mountPoint);
  await withContainerIn(env, 'bpf-exec', async (c) => {
    await c.running({ args: ['sleep', '1000'], cgroupProcs: [path.join(cg, 'cgroup.procs')] }, (s) => {
      s.devices.push(...EXTRA_NODES);
      s.deviceRules = [...DEFAULT_DEVICE_RULES];
    });
    const r = await shim(['exec', String(c.pid), '--cgroup-procs', path.join(cg, 'cgroup.procs'), '--', '/bin/sh', '-c', PROBE]);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /<\/dev\/fuse .*Operation not permitted/);
    t.regex(r.stdout, /<>\/dev\/null ok/);
  });
  await removeWhenEmpty(cg);
});

rtest('the v1 devices controller alone refuses fuse and kmsg and lets null, zero and tty through', async (t) => {
  const devices = layout.controllers.devices;
  if (!devices || devices.version !== 1) {
    t.log('skipped: no v1 devices controller on this host');
    t.pass('no v1 devices controller on this host');
    return;
  }
  const cg = makeCgroup(devices.mountPoint);
  expectPolicy(t, await probe('v1', cg, true));
  // What the shim wrote: deny all, then the allow rules.
  const list = readFileSync(path.join(cg, 'devices.list'), 'utf8').trim().split('\n');
  t.true(list.includes('c 10:200 rwm') && list.includes('c 136:* rwm') && list.includes('b *:* m'), list.join(', '));
  t.false(list.includes('a *:* rwm'));
  await removeWhenEmpty(cg);
});

rtest('bad rules are refused by create before anything runs', async (t) => {
  await withContainerIn(env, 'badrules', async (c) => {
    c.spec({ args: ['true'] }, (s) => {
      s.deviceRules = [{ allow: true, type: 'c', major: 1, minor: 3, access: 'rwx' }];
    });
    const r = await shim(['create', c.bundle]);
    if (r.code === 0) {
      // a shim that ignored the rules made a container: it is this test's to remove
      const made = JSON.parse(r.stdout) as { pid: number; monitorPid: number };
      [c.pid, c.monitorPid] = [made.pid, made.monitorPid];
      started.add(made.pid).add(made.monitorPid);
    }
    t.is(r.code, 1);
    t.regex(r.stderr, /deviceRules\[0\]\.access/);
  });
});

rtest('restricting rules with no cgroup able to enforce them fail create (fail closed); allow-all needs none', async (t) => {
  // No cgroup2 directory and no v1 devices directory among cgroupProcs: the rules would be silently dropped.
  await withContainerIn(env, 'unenforced', async (c) => {
    c.spec({ args: ['true'], cgroupProcs: [] }, (s) => {
      s.deviceRules = [...DEFAULT_DEVICE_RULES];
    });
    const r = await shim(['create', c.bundle]);
    if (r.code === 0) {
      const made = JSON.parse(r.stdout) as { pid: number; monitorPid: number };
      [c.pid, c.monitorPid] = [made.pid, made.monitorPid];
      started.add(made.pid).add(made.monitorPid);
    }
    t.is(r.code, 1, r.stdout);
    t.regex(r.stderr, /devices: .*no cgroup .*can enforce/);
  });
  // A privileged container's a *:* rwm restricts nothing: no controller is needed for it.
  await withContainerIn(env, 'allow-all', async (c) => {
    const { exit } = await c.run({ args: ['true'], cgroupProcs: [] }, (s) => {
      s.deviceRules = [{ allow: true, type: 'a', access: 'rwm' }];
    });
    t.is(exit.exitCode, 0);
  });
});

rtest('nothing is left behind: mounts, processes, cgroups', (t) => {
  t.deepEqual(mountsUnder(TMP), []);
  for (const pid of started) t.false(pidAlive(pid), `pid ${pid} still alive`);
  for (const cg of cgroupsMade) t.false(existsSync(cg), `${cg} left`);
});
