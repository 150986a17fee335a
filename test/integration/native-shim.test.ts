// native/build/berth-shim against the real kernel (needs root): containers over an overlay of a busybox
// rootfs, the CRI log, exit status, exec, pod sandboxes and cgroups. Every test removes what it made
// (processes it started, mounts, cgroups, pinned namespaces) and the last test checks that it did.
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync, constants as fsc, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, renameSync,
  rmdirSync, symlinkSync, writeFileSync, writeSync,
} from 'node:fs';
import path from 'node:path';
import { SHIM_POLL, lines, mountsUnder, parseLog, shim } from '../helpers/rootfs.js';
import { shimBed } from '../helpers/shim-bed.js';
import { pidAlive, waitFor } from '../helpers/util.js';

const { rtest, tmp: TMP, started, cgroupsMade, podDirs, withContainer } = shimBed('berth-native-');

rtest('a container in new namespaces logs stdout and stderr apart in the CRI format and reports exit code 3', async (t) => {
  await withContainer('basic', async (c) => {
    const { exit, records } = await c.run({
      hostname: 'ctr-basic',
      args: ['/bin/sh', '-c', 'echo out1; echo err1 >&2; echo "pid $$"; hostname; ps; echo out2; echo err2 >&2; exit 3'],
    });
    t.is(exit.exitCode, 3);
    t.is(exit.signal, 0);
    t.true(exit.startedAt > 1.6e18 && exit.finishedAt >= exit.startedAt, JSON.stringify(exit));
    const out = lines(records, 'stdout');
    const err = lines(records, 'stderr');
    t.true(records.every((r) => r.tag === 'F'));
    t.deepEqual(err, ['err1', 'err2']);
    t.is(out[0], 'out1');
    t.is(out[1], 'pid 1');
    t.is(out[2], 'ctr-basic');
    t.is(out[out.length - 1], 'out2');
    // ps: the shell is pid 1 of its own pid namespace, and it sees nothing of the host
    const ps = out.slice(4, -1);
    t.true(ps.some((l) => /^\s*1\s+root\s+\/bin\/sh -c/.test(l)), ps.join('\n'));
    t.true(ps.length <= 3, ps.join('\n'));
    // timestamps are UTC, non-decreasing per stream
    for (const s of ['stdout', 'stderr'] as const) {
      const times = records.filter((r) => r.stream === s).map((r) => r.time);
      t.deepEqual(times, [...times].sort());
    }
    t.false(existsSync(path.join(c.bundle, 'exec-error')));
    const shimJson = JSON.parse(readFileSync(path.join(c.bundle, 'shim.json'), 'utf8')) as Record<string, number>;
    t.like(shimJson, { pid: c.pid, monitorPid: c.monitorPid });
    t.true(shimJson.startTime! > 0 && shimJson.monitorStartTime! > 0 && shimJson.startTime! >= shimJson.monitorStartTime!);
    t.false(exit.oomKilled);
  });
});

rtest('a line longer than maxLineBytes is split into P records and an F; an unterminated tail is flushed as F', async (t) => {
  await withContainer('long', async (c) => {
    // 10 * 2^12 = 40960 bytes without a newline, then a newline; then 'tail' with no newline at all
    const script = 's=aaaaaaaaaa; i=0; while [ $i -lt 12 ]; do s=$s$s; i=$((i+1)); done; echo "$s"; echo short; printf tail';
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', script] });
    t.is(exit.exitCode, 0);
    const out = records.filter((r) => r.stream === 'stdout');
    t.deepEqual(
      out.map((r) => [r.tag, r.content.length]),
      [['P', 16384], ['P', 16384], ['F', 8192], ['F', 5], ['F', 4]],
    );
    t.true(out.slice(0, 3).every((r) => /^a+$/.test(r.content)));
    t.deepEqual(lines(records, 'stdout').slice(1), ['short', 'tail']);
  });
});

rtest('maxLineBytes is configurable', async (t) => {
  await withContainer('maxline', async (c) => {
    const { records } = await c.run({ args: ['/bin/sh', '-c', 'echo 0123456789abcdefghij'], maxLineBytes: 8 });
    t.deepEqual(records.map((r) => `${r.tag}:${r.content}`), ['P:01234567', 'P:89abcdef', 'F:ghij']);
  });
});

rtest('SIGUSR1 reopens the log after berth renamed it', async (t) => {
  await withContainer('rotate', async (c) => {
    const sync = path.join(c.dir, 'sync');
    mkdirSync(sync);
    c.spec({
      args: ['/bin/sh', '-c', 'echo before; while [ ! -e /sync/go ]; do sleep 0.02; done; echo after'],
      extraMounts: [{ destination: '/sync', type: 'bind', source: sync, options: ['rbind', 'rw'] }],
    });
    await c.create();
    c.start();
    await waitFor('the first line', () => existsSync(c.log) && readFileSync(c.log, 'utf8').includes('before'), SHIM_POLL);
    renameSync(c.log, `${c.log}.1`);
    process.kill(c.monitorPid, 'SIGUSR1');
    await waitFor('the reopened log', () => existsSync(c.log), SHIM_POLL);
    writeFileSync(path.join(sync, 'go'), '');
    const exit = await c.exit();
    t.is(exit.exitCode, 0);
    t.deepEqual(lines(parseLog(`${c.log}.1`), 'stdout'), ['before']);
    t.deepEqual(lines(parseLog(c.log), 'stdout'), ['after']);
  });
});

rtest('log.directory: the relative log.path is opened beneath it, missing parents made there', async (t) => {
  await withContainer('logdir', async (c) => {
    const dir = path.join(c.dir, 'log');
    const { exit } = await c.run({ args: ['/bin/sh', '-c', 'echo beneath'] }, (s) => {
      s.log = { directory: dir, path: 'sub/deeper/c.log', maxLineBytes: 16384 };
    });
    t.is(exit.exitCode, 0);
    t.deepEqual(lines(parseLog(path.join(dir, 'sub', 'deeper', 'c.log')), 'stdout'), ['beneath']);
  });
});

rtest('log.directory: a path with "..", a symlinked directory or a symlink as the file fails create; nothing is written where they point', async (t) => {
  const outside = mkdtempSync(path.join(TMP, 'outside-'));
  const target = path.join(outside, 'target.log');
  writeFileSync(target, '');
  const attempt = async (name: string, logPath: string, plant: (dir: string) => void, expect: RegExp) => {
    await withContainer(name, async (c) => {
      const dir = path.join(c.dir, 'log');
      plant(dir);
      c.spec({ args: ['/bin/sh', '-c', 'echo escaped'] }, (s) => {
        s.log = { directory: dir, path: logPath, maxLineBytes: 16384 };
      });
      const err = await t.throwsAsync(c.create());
      t.regex(String((err as { stderr?: string }).stderr ?? err?.message), expect, name);
      t.false(existsSync(path.join(c.bundle, 'shim.json')), `${name}: no container was left`);
    });
  };
  await attempt('dotdot', '../escaped.log', () => undefined, /log\.path must be relative to log\.directory/);
  await attempt('linkdir', 'link/c.log', (dir) => symlinkSync(outside, path.join(dir, 'link')), /open log beneath the log directory.*link\/c\.log.*symbolic links/);
  await attempt('linkfile', 'c.log', (dir) => symlinkSync(target, path.join(dir, 'c.log')), /open log beneath the log directory.*c\.log.*symbolic links/);
  await attempt('relative-link', 'up/c.log', (dir) => symlinkSync('..', path.join(dir, 'up')), /open log beneath the log directory.*up\/c\.log/);
  t.deepEqual(readdirSync(outside), ['target.log'], 'nothing was created outside');
  t.is(readFileSync(target, 'utf8'), '', 'nothing was written outside');
  t.false(existsSync(path.join(TMP, 'escaped.log')));
});

rtest('SIGUSR1 does not follow a symlink put in the log file\'s place: the monitor keeps the file it has', async (t) => {
  const outside = mkdtempSync(path.join(TMP, 'outside-'));
  const target = path.join(outside, 'target.log');
  writeFileSync(target, '');
  await withContainer('reopen-link', async (c) => {
    const dir = path.join(c.dir, 'log');
    const log = path.join(dir, 'c.log');
    const sync = path.join(c.dir, 'sync');
    mkdirSync(sync);
    c.spec(
      {
        args: ['/bin/sh', '-c', 'echo before; while [ ! -e /sync/go ]; do sleep 0.02; done; echo after'],
        extraMounts: [{ destination: '/sync', type: 'bind', source: sync, options: ['rbind', 'rw'] }],
      },
      (s) => {
        s.log = { directory: dir, path: 'c.log', maxLineBytes: 16384 };
      },
    );
    await c.create();
    c.start();
    await waitFor('the first line', () => existsSync(log) && readFileSync(log, 'utf8').includes('before'), SHIM_POLL);
    renameSync(log, `${log}.1`);
    symlinkSync(target, log);
    process.kill(c.monitorPid, 'SIGUSR1');
    // The reopen is refused without a trace but the file: give the monitor a moment to have handled the signal.
    await new Promise((r) => setTimeout(r, 200));
    writeFileSync(path.join(sync, 'go'), '');
    const exit = await c.exit();
    t.is(exit.exitCode, 0);
    t.is(readFileSync(target, 'utf8'), '', 'nothing was written through the symlink');
    t.deepEqual(lines(parseLog(`${log}.1`), 'stdout'), ['before', 'after'], 'the monitor kept writing the file it had');
  });
});

rtest('a sleep 1000 container killed with SIGKILL reports signal 9', async (t) => {
  await withContainer('kill', async (c) => {
    c.spec({ args: ['sleep', '1000'] });
    await c.create();
    c.start();
    await waitFor('sleep to run', () => readFileSync(`/proc/${c.pid}/cmdline`, 'utf8').startsWith('sleep'), SHIM_POLL);
    process.kill(c.pid, 'SIGKILL');
    const exit = await c.exit();
    t.is(exit.signal, 9);
    t.is(exit.exitCode, 137);
    t.true(exit.startedAt > 0);
  });
});

rtest('a container killed before it was started still gets exit.json (startedAt 0)', async (t) => {
  await withContainer('unstarted', async (c) => {
    c.spec({ args: ['sleep', '1000'] });
    await c.create();
    // created = blocked on start.fifo: not yet the container's program
    t.true(pidAlive(c.pid));
    t.false(readFileSync(`/proc/${c.pid}/cmdline`, 'utf8').startsWith('sleep'));
    process.kill(c.pid, 'SIGKILL');
    const exit = await c.exit();
    t.is(exit.signal, 9);
    t.is(exit.startedAt, 0);
    t.deepEqual(parseLog(c.log), []);
  });
});

rtest('a program that cannot be executed exits 127 and leaves exec-error', async (t) => {
  await withContainer('noexec', async (c) => {
    const { exit, records } = await c.run({ args: ['no-such-program'] });
    t.is(exit.exitCode, 127);
    const reason = readFileSync(path.join(c.bundle, 'exec-error'), 'utf8');
    t.regex(reason, /no-such-program: No such file or directory/);
    t.true(lines(records, 'stderr').some((l) => l.includes('no-such-program')));
  });
});

rtest('a failing setup prints nothing on stdout, explains on stderr and leaves no process', async (t) => {
  await withContainer('fail', async (c) => {
    c.spec({ args: ['true'] });
    const spec = JSON.parse(readFileSync(path.join(c.bundle, 'spec.json'), 'utf8')) as { mounts: unknown[] };
    spec.mounts.push({ destination: '/data', type: 'bind', source: path.join(c.dir, 'missing'), options: ['rbind'] });
    writeFileSync(path.join(c.bundle, 'spec.json'), JSON.stringify(spec));
    const r = await shim(['create', c.bundle]);
    t.not(r.code, 0);
    t.is(r.stdout, '');
    t.regex(r.stderr, /bind source .*missing: No such file or directory/);
    t.false(existsSync(path.join(c.bundle, 'shim.json')));
    const mine = readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(c.bundle);
        } catch {
          return false;
        }
      });
    t.deepEqual(mine, []);

    const bad = await shim(['create', path.join(c.dir, 'no-bundle')]);
    t.not(bad.code, 0);
    t.is(bad.stdout, '');
  });
});

rtest('process settings: uid, groups, capabilities, no_new_privs, rlimits, oom_score_adj, sysctls', async (t) => {
  await withContainer('process', async (c) => {
    const script = 'grep -E "^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):" /proc/self/status; ' +
      'ulimit -n; cat /proc/self/oom_score_adj /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni; pwd';
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', script], uid: 65534, gid: 65534, cwd: '/tmp' }, (s) => {
      s.process.additionalGids = [5];
      s.process.noNewPrivileges = true;
      s.process.oomScoreAdj = 500;
      s.process.rlimits = [{ type: 'RLIMIT_NOFILE', soft: 512, hard: 1000 }];
      s.process.capabilities = {
        bounding: ['CAP_CHOWN', 'CAP_NET_BIND_SERVICE'],
        effective: ['CAP_NET_BIND_SERVICE'],
        permitted: ['CAP_NET_BIND_SERVICE'],
        inheritable: ['CAP_NET_BIND_SERVICE'],
        ambient: ['CAP_NET_BIND_SERVICE'],
      };
      s.sysctl = { 'net.ipv4.ip_forward': '1', 'kernel.shmmni': '2048' };
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    const out = lines(records, 'stdout');
    const status = Object.fromEntries(out.slice(0, 9).map((l) => l.split(/:\s+/) as [string, string]));
    t.regex(status.Uid!, /^65534\s+65534\s+65534\s+65534$/);
    t.regex(status.Gid!, /^65534\s+65534\s+65534\s+65534$/);
    t.is(status.Groups!.trim(), '5');
    const bit10 = (1 << 10).toString(16).padStart(16, '0'); // CAP_NET_BIND_SERVICE
    t.is(status.CapBnd, (1 + (1 << 10)).toString(16).padStart(16, '0'));
    t.is(status.CapEff, bit10);
    t.is(status.CapPrm, bit10);
    t.is(status.CapAmb, bit10);
    t.is(status.NoNewPrivs, '1');
    t.deepEqual(out.slice(9), ['512', '500', '1', '2048', '/tmp']);
  });
});

rtest('a sysctl that is not namespaced is refused', async (t) => {
  await withContainer('sysctl', async (c) => {
    c.spec({ args: ['true'], sysctl: { 'kernel.panic': '1' } });
    const r = await shim(['create', c.bundle]);
    t.not(r.code, 0);
    t.regex(r.stderr, /sysctl not namespaced.*kernel\.panic/);
  });
});

rtest('read-only root, read-only and masked paths', async (t) => {
  await withContainer('readonly', async (c) => {
    const script = 'touch /x 2>&1; { echo 1 > /proc/sys/kernel/shmmni; } 2>&1; cat /proc/timer_list | wc -c; ' +
      'ls /sys/firmware | wc -l; touch /dev/shm/ok && echo shm-writable';
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', script], readonlyRoot: true });
    t.is(exit.exitCode, 0);
    const out = lines(records, 'stdout');
    t.regex(out[0]!, /Read-only file system/);
    t.regex(out[1]!, /Read-only file system/);
    t.is(out[2], '0'); // /proc/timer_list: /dev/null bound over it
    t.is(out[3], '0'); // /sys/firmware: empty read-only tmpfs
    t.is(out[4], 'shm-writable');
    t.deepEqual(readdirSync(path.join(c.dir, 'upper')), []);
  });
});

rtest('a terminal container: pty as stdio and /dev/console, stdin through stdin.fifo', async (t) => {
  await withContainer('tty', async (c) => {
    c.spec({ args: ['/bin/sh'] }, (s) => {
      s.process.terminal = true;
      s.process.stdin = true;
    });
    await c.create();
    c.start();
    const fd = openSync(path.join(c.bundle, 'stdin.fifo'), fsc.O_WRONLY | fsc.O_NONBLOCK);
    try {
      writeSync(fd, 'test -t 0 && test -t 1 && echo "tty-$((6*7))"; ls -l /dev/console; exit 4\n');
    } finally {
      closeSync(fd);
    }
    const exit = await c.exit();
    t.is(exit.exitCode, 4);
    const records = parseLog(c.log);
    t.true(records.every((r) => r.stream === 'stdout'));
    const out = lines(records, 'stdout');
    t.true(out.includes('tty-42'), out.join('\n'));
    t.true(out.some((l) => /^c.* \/dev\/console$/.test(l)), out.join('\n'));
    t.false(out.some((l) => l.endsWith('\r')));
  });
});

rtest('stdin without a terminal: the container reads stdin.fifo until SIGUSR2 closes it', async (t) => {
  await withContainer('stdin', async (c) => {
    c.spec({ args: ['/bin/sh', '-c', 'cat; echo done'] }, (s) => {
      s.process.stdin = true;
    });
    await c.create();
    c.start();
    const fd = openSync(path.join(c.bundle, 'stdin.fifo'), fsc.O_WRONLY | fsc.O_NONBLOCK);
    try {
      writeSync(fd, 'line one\nline two\n');
    } finally {
      closeSync(fd);
    }
    await waitFor('the echoed input', () => existsSync(c.log) && readFileSync(c.log, 'utf8').includes('line two'), SHIM_POLL);
    t.true(pidAlive(c.pid)); // the monitor's own writer keeps cat from seeing EOF
    process.kill(c.monitorPid, 'SIGUSR2');
    const exit = await c.exit();
    t.is(exit.exitCode, 0);
    t.deepEqual(lines(parseLog(c.log), 'stdout'), ['line one', 'line two', 'done']);
  });
});

rtest('exec runs in the container namespaces with its exit code passed through', async (t) => {
  await withContainer('exec', async (c) => {
    c.spec({ hostname: 'ctr-exec', args: ['sleep', '1000'] });
    await c.create();
    c.start();
    await waitFor('sleep to run', () => readFileSync(`/proc/${c.pid}/cmdline`, 'utf8').startsWith('sleep'), SHIM_POLL);
    const pid = String(c.pid);

    const host = await shim(['exec', pid, '--', 'hostname']);
    t.is(host.code, 0, host.stderr);
    t.is(host.stdout.trim(), 'ctr-exec');

    const cmdline = await shim(['exec', pid, '--', 'cat', '/proc/1/cmdline']);
    t.is(cmdline.stdout, 'sleep\x001000\x00');

    const who = await shim(['exec', pid, '--uid', '65534', '--gid', '65534', '--groups', '5', '--cwd', '/tmp',
      '--env', 'GREETING=hi', '--env', 'PATH=/bin', '--', 'sh', '-c', 'id; pwd; echo $GREETING; echo $$']);
    t.is(who.code, 0, who.stderr);
    const [id, pwd, greeting, shellPid] = who.stdout.trim().split('\n');
    t.regex(id!, /^uid=65534\(nobody\) gid=65534\(nogroup\) groups=5\(tty\)/);
    t.is(pwd, '/tmp');
    t.is(greeting, 'hi');
    t.not(shellPid, '1'); // in the container's pid namespace, not its init

    const code = await shim(['exec', pid, '--', 'sh', '-c', 'exit 5']);
    t.is(code.code, 5);
    const missing = await shim(['exec', pid, '--', 'no-such-program']);
    t.is(missing.code, 127);
    t.regex(missing.stderr, /no-such-program/);
    const denied = await shim(['exec', pid, '--', '/etc/passwd']);
    t.is(denied.code, 126);

    const capsFile = path.join(c.dir, 'caps.json');
    const kill = ['CAP_KILL'];
    writeFileSync(capsFile, JSON.stringify({ bounding: kill, effective: kill, permitted: kill, inheritable: [], ambient: [] }));
    const caps = await shim(['exec', pid, '--caps-json', capsFile, '--no-new-privs', '--',
      'grep', '-E', '^(CapEff|CapBnd|NoNewPrivs):', '/proc/self/status']);
    t.is(caps.code, 0, caps.stderr);
    t.deepEqual(caps.stdout.trim().split('\n').map((l) => l.split(/\s+/)[1]),
      ['0000000000000020', '0000000000000020', '1']); // CapEff, CapBnd: CAP_KILL (bit 5)

    process.kill(c.pid, 'SIGKILL');
    t.is((await c.exit()).signal, 9);
  });
});

rtest('sandbox pins pod namespaces; a container joining them shares the pod pid namespace and sees lo up', async (t) => {
  const pod = path.join(TMP, `pod-${randomBytes(4).toString('hex')}`);
  podDirs.push(pod);
  const sb = await shim(['sandbox', pod, '--net', '--ipc', '--uts', '--pid', '--hostname', 'pod-one']);
  t.is(sb.code, 0, sb.stderr);
  const { initPid } = JSON.parse(sb.stdout) as { initPid: number };
  started.add(initPid);
  try {
    t.true(pidAlive(initPid));
    for (const ns of ['net', 'ipc', 'uts', 'pid']) t.true(mountsUnder(path.join(pod, ns)).length === 1, ns);
    await withContainer('podctr', async (c) => {
      const ns = (type: 'network' | 'ipc' | 'uts' | 'pid', file: string) => ({ type, path: path.join(pod, file) });
      const { exit, records } = await c.run({
        namespaces: [{ type: 'mount' }, ns('pid', 'pid'), ns('network', 'net'), ns('ipc', 'ipc'), ns('uts', 'uts'), { type: 'cgroup' }],
        args: ['/bin/sh', '-c', 'echo $$; hostname; cat /proc/1/cmdline | tr "\\0" " "; echo; cat /sys/class/net/lo/flags; ls /sys/class/net'],
      });
      t.is(exit.exitCode, 0, JSON.stringify(records));
      const [pid, hostname, init, flags, ifaces] = lines(records, 'stdout');
      t.not(pid, '1');
      t.is(hostname, 'pod-one');
      t.regex(init!, /berth-shim sandbox/);
      t.is(Number(flags) & 1, 1); // IFF_UP
      t.is(ifaces, 'lo');
    });
  } finally {
    process.kill(initPid, 'SIGTERM');
    await waitFor('pod init to exit on SIGTERM', () => !pidAlive(initPid), SHIM_POLL);
    const un = await shim(['unpin', pod]);
    t.is(un.code, 0, un.stderr);
  }
  t.deepEqual(mountsUnder(pod), []);
  for (const f of ['net', 'ipc', 'uts', 'pid']) t.false(existsSync(path.join(pod, f)));
});

rtest('sandbox without --pid leaves no process behind', async (t) => {
  const pod = path.join(TMP, `pod-${randomBytes(4).toString('hex')}`);
  podDirs.push(pod);
  const before = new Set(readdirSync('/proc').filter((p) => /^\d+$/.test(p)));
  const sb = await shim(['sandbox', pod, '--net', '--uts', '--hostname', 'p2']);
  t.is(sb.code, 0, sb.stderr);
  t.deepEqual(JSON.parse(sb.stdout), {});
  const leftovers = readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p) && !before.has(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(pod);
      } catch {
        return false;
      }
    });
  t.deepEqual(leftovers, []);
  const pins = mountsUnder(pod).map((l) => l.split(' ')[4]).filter((m) => m !== pod);
  // With --net, the pod netns's own sysfs (pod network stats) sits beside the pins.
  t.deepEqual(pins.sort(), [path.join(pod, 'net'), path.join(pod, 'sys'), path.join(pod, 'uts')]);
  t.is((await shim(['unpin', pod])).code, 0);
  t.deepEqual(mountsUnder(pod), []);
  t.false(existsSync(path.join(pod, 'sys')), 'unpin removes the sysfs directory too');
});

rtest('sandbox --veth makes eth0 with its address and default route inside, the peer on the host; bad plans change nothing', async (t) => {
  const pod = path.join(TMP, `pod-${randomBytes(4).toString('hex')}`);
  podDirs.push(pod);
  const hostEnd = `bshim${randomBytes(4).toString('hex')}`;
  const sb = await shim(['sandbox', pod, '--net', '--veth', hostEnd, '--address', '10.250.7.9/24', '--gateway', '10.250.7.1', '--mtu', '1400']);
  t.is(sb.code, 0, sb.stderr);
  try {
    const inside = (args: string[]) => execFileSync('nsenter', [`--net=${path.join(pod, 'net')}`, 'ip', ...args]).toString();
    t.regex(inside(['-o', '-4', 'addr', 'show', 'dev', 'eth0']), /inet 10\.250\.7\.9\/24 /);
    t.regex(inside(['-o', 'link', 'show', 'dev', 'eth0']), /<[^>]*\bUP\b[^>]*> mtu 1400 /);
    t.regex(inside(['route', 'show', 'default']), /^default via 10\.250\.7\.1 dev eth0/);
    t.is(readFileSync(`/sys/class/net/${hostEnd}/mtu`, 'utf8').trim(), '1400');
    // Both ends are up when the helper returns: nothing on the host has to bring the host end up.
    t.regex(execFileSync('ip', ['-o', 'link', 'show', 'dev', hostEnd]).toString(), /<[^>]*\bUP\b[^>]*> mtu 1400 /);
    t.regex(inside(['-o', 'link', 'show', 'dev', 'eth0']), /<[^>]*\bLOWER_UP\b[^>]*>/, 'the peer is up, so eth0 has carrier');
    // The sysfs mounted from inside the netns lists the pod's interfaces, not the host's, with their counters.
    t.deepEqual(readdirSync(path.join(pod, 'sys', 'class', 'net')).sort(), ['eth0', 'lo']);
    t.regex(readFileSync(path.join(pod, 'sys', 'class', 'net', 'eth0', 'statistics', 'rx_bytes'), 'utf8'), /^\d+\n$/);
  } finally {
    t.is((await shim(['unpin', pod])).code, 0);
  }
  await waitFor('the host end to go with the netns', () => !existsSync(`/sys/class/net/${hostEnd}`), SHIM_POLL);

  // A plan the kernel refuses (the host already has a link by that name) fails before anything is pinned.
  const taken = execFileSync('ip', ['-o', 'link', 'show', 'up']).toString().split('\n')[0]!.split(': ')[1]!.split('@')[0]!;
  const clash = await shim(['sandbox', pod, '--net', '--veth', taken, '--address', '10.250.7.9/24', '--gateway', '10.250.7.1']);
  t.is(clash.code, 1);
  t.regex(clash.stderr, new RegExp(`create veth eth0 with peer ${taken}: File exists`));
  t.deepEqual(mountsUnder(pod), []);
  // A gateway outside eth0's subnet, or eth0's own address, would leave the pod without a default route.
  for (const bad of [['--address', '10.250.7.9/33'], ['--gateway', 'ten'], ['--gateway', '10.250.8.1'], ['--gateway', '10.250.7.9'], ['--mtu', '0']]) {
    const args = { '--address': '10.250.7.9/24', '--gateway': '10.250.7.1', '--mtu': '1500', [bad[0]!]: bad[1]! };
    const r = await shim(['sandbox', pod, '--net', '--veth', hostEnd, ...Object.entries(args).flat()]);
    t.is(r.code, 2, bad.join(' '));
    t.regex(r.stderr, new RegExp(`bad ${bad[0]}`));
  }
  const noNet = await shim(['sandbox', pod, '--uts', '--veth', hostEnd, '--address', '10.250.7.9/24', '--gateway', '10.250.7.1']);
  t.is(noNet.code, 2);
  t.regex(noNet.stderr, /--veth needs --net/);
  t.deepEqual(mountsUnder(pod), []);
  t.false(existsSync(`/sys/class/net/${hostEnd}`));
});

/** A fresh cgroup to put a container in: v1 memory when the host has it, else cgroup2. Not named
 * berth-test-*: cgroups.test.ts, which may run at the same time, asserts that none of those is left. */
function makeCgroup(): string | null {
  const name = `berth-shimtest-${randomBytes(4).toString('hex')}`;
  for (const base of ['/sys/fs/cgroup/memory', '/sys/fs/cgroup']) {
    if (!existsSync(path.join(base, 'cgroup.procs'))) continue;
    const dir = path.join(base, name);
    mkdirSync(dir);
    cgroupsMade.push(dir);
    return dir;
  }
  return null;
}

rtest('the container joins the cgroups listed in cgroupProcs before anything else', async (t) => {
  const cg = makeCgroup();
  if (!cg) {
    t.log('skipped: no writable cgroup hierarchy on this host');
    t.pass('no writable cgroup hierarchy');
    return;
  }
  try {
    await withContainer('cgroup', async (c) => {
      c.spec({ args: ['sleep', '1000'], cgroupProcs: [path.join(cg, 'cgroup.procs')] });
      await c.create();
      // even before start: the init joined first
      const procs = readFileSync(path.join(cg, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
      t.deepEqual(procs, [c.pid]);
      t.false(procs.includes(c.monitorPid));
      c.start();
      // inside its new cgroup namespace, its own cgroup is the root
      const r = await shim(['exec', String(c.pid), '--', 'cat', '/proc/self/cgroup']);
      t.true(r.stdout.split('\n').some((l) => /:(memory)?:\/$/.test(l)), r.stdout);
      process.kill(c.pid, 'SIGKILL');
      await c.exit();
      await waitFor('the cgroup to empty', () => readFileSync(path.join(cg, 'cgroup.procs'), 'utf8').trim() === '', SHIM_POLL);
    });
  } finally {
    rmdirSync(cg);
  }
  t.false(existsSync(cg));
});

rtest('a container killed by the OOM killer is reported as oomKilled', async (t) => {
  const cg = makeCgroup();
  if (!cg) {
    t.log('skipped: no writable cgroup hierarchy on this host');
    t.pass('no writable cgroup hierarchy');
    return;
  }
  try {
    const v1 = existsSync(path.join(cg, 'memory.limit_in_bytes'));
    writeFileSync(path.join(cg, v1 ? 'memory.limit_in_bytes' : 'memory.max'), String(32 * 1024 * 1024));
    if (!v1 && existsSync(path.join(cg, 'memory.swap.max'))) writeFileSync(path.join(cg, 'memory.swap.max'), '0');
    await withContainer('oom', async (c) => {
      const { exit } = await c.run({
        args: ['/bin/sh', '-c', 's=aaaaaaaaaa; while :; do s=$s$s; done'],
        cgroupProcs: [path.join(cg, 'cgroup.procs')],
      });
      t.is(exit.signal, 9);
      t.true(exit.oomKilled);
    });
  } finally {
    rmdirSync(cg);
  }
});

rtest('an idle monitor stays small', async (t) => {
  await withContainer('rss', async (c) => {
    c.spec({ args: ['sleep', '1000'] });
    await c.create();
    c.start();
    await waitFor('sleep to run', () => readFileSync(`/proc/${c.pid}/cmdline`, 'utf8').startsWith('sleep'), SHIM_POLL);
    const status = readFileSync(`/proc/${c.monitorPid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]);
    t.log(`monitor VmRSS ${rss} kB`);
    t.true(rss < 1024, `monitor VmRSS ${rss} kB`);
  });
});

function checkClean(t: ExecutionContext): void {
  t.deepEqual(mountsUnder(TMP), []);
  for (const pid of started) t.false(pidAlive(pid), `pid ${pid} still alive`);
  for (const cg of cgroupsMade) t.false(existsSync(cg), `${cg} left`);
}

rtest('nothing is left behind: mounts, processes, cgroups, pinned namespaces', (t) => {
  checkClean(t);
});
