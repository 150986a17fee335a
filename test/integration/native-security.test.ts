// native/build/berth-shim's isolation features against the real kernel (needs root): seccomp filters (in the
// container and for exec), new user namespaces with id-mapped layers and volumes, mount propagation. Every
// test removes what it made; the last one checks that nothing is left (mounts, processes).
import type { ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chownSync, closeSync, constants as fsc, existsSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync,
  rmSync, statSync, writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_CAPS, SHIM, SHIM_POLL, type SeccompProfile, type ShimSpec, lines, mountsUnder, shim,
} from '../helpers/rootfs.js';
import { shimBed } from '../helpers/shim-bed.js';
import { pidAlive, procCmdline, waitFor } from '../helpers/util.js';
import { runtimeDefaultProfile } from '../../src/container/seccomp.js';

const hostMounts: string[] = []; // made by the propagation test on the host; unmounted by it (or in after)
const { rtest, tmp: TMP, lower: LOWER, started, podDirs, withContainer } = shimBed('berth-native-sec-', {
  prepare(lower) {
    const src = fileURLToPath(new URL('../../../test/fixtures/syscalls.c', import.meta.url));
    execFileSync('gcc', ['-static', '-O2', '-o', path.join(lower, 'bin/syscalls'), src]);
  },
  release() {
    for (const m of hostMounts.reverse()) {
      try {
        execFileSync('umount', ['-l', m], { stdio: 'ignore' });
      } catch {
        // unmounted by its test
      }
    }
  },
});

const EPERM = 1;
const ALL_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN',
  'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD', 'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP',
];

/** RuntimeDefault-like: everything allowed but the keyring, mkdir and unshare, refused with EPERM. */
function defaultLikeProfile(): SeccompProfile {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
    syscalls: [
      // no errnoRet: EPERM, as in the OCI spec; unknown names are skipped
      { names: ['keyctl', 'add_key', 'request_key', 'no_such_syscall_berth'], action: 'SCMP_ACT_ERRNO' },
      { names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      { names: ['unshare'], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      { names: ['getppid'], action: 'SCMP_ACT_ALLOW' }, // the default action again: ignored
    ],
  };
}

/** "Key:\tvalue" lines (grep of /proc/self/status) as an object. */
function fields(ls: string[]): Record<string, string> {
  return Object.fromEntries(ls.map((l) => l.split(/:\s+/) as [string, string]));
}

/** The hex CapEff of a capability list. */
function capMask(names: string[]): string {
  let m = 0n;
  for (const n of names) m |= 1n << BigInt(ALL_CAPS.indexOf(n));
  return m.toString(16).padStart(16, '0');
}

function statusField(status: string, field: string): string {
  return new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
}

// ---- seccomp ----

rtest('seccomp: a RuntimeDefault-like profile refuses mkdir and keyctl, Seccomp: 2; unconfined by default', async (t) => {
  const script = 'grep -E "^(Seccomp|CapEff|NoNewPrivs):" /proc/self/status; mkdir /tmp/d 2>&1 || echo mkdir-failed; ' +
    'syscalls keyctl add_key unshare-uts mkdir getppid';
  await withContainer('seccomp', async (c) => {
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', script] }, (s) => {
      s.seccomp = defaultLikeProfile();
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    const out = lines(records, 'stdout');
    t.deepEqual(fields(out.slice(0, 3)), { Seccomp: '2', CapEff: capMask(DEFAULT_CAPS), NoNewPrivs: '0' },
      'filtered, and the CAP_SYS_ADMIN held to install it (no no_new_privs) is gone');
    t.regex(out[3]!, /Operation not permitted/);
    t.is(out[4], 'mkdir-failed');
    t.is(out[5], `keyctl=${EPERM} add_key=${EPERM} unshare-uts=${EPERM} mkdir=${EPERM} getppid=0`);
  });
  // the same with no_new_privs and another uid: the filter goes in after the uid change
  await withContainer('seccomp-nnp', async (c) => {
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', script], uid: 65534, gid: 65534 }, (s) => {
      s.seccomp = defaultLikeProfile();
      s.process.noNewPrivileges = true;
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    const out = lines(records, 'stdout');
    t.deepEqual(fields(out.slice(0, 3)), { Seccomp: '2', CapEff: '0000000000000000', NoNewPrivs: '1' });
    t.is(out[5], `keyctl=${EPERM} add_key=${EPERM} unshare-uts=${EPERM} mkdir=${EPERM} getppid=0`);
  });
  // capabilities left alone (no capabilities object) and a uid change: installed before it
  await withContainer('seccomp-nocaps', async (c) => {
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', script], uid: 65534, gid: 65534 }, (s) => {
      s.seccomp = defaultLikeProfile();
      delete (s.process as { capabilities?: unknown }).capabilities;
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    const out = lines(records, 'stdout');
    t.is(fields(out.slice(0, 3)).Seccomp, '2');
    t.is(out[5], `keyctl=${EPERM} add_key=${EPERM} unshare-uts=${EPERM} mkdir=${EPERM} getppid=0`);
  });
  await withContainer('unconfined', async (c) => {
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', script] });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    const out = lines(records, 'stdout');
    t.is(fields(out.slice(0, 3)).Seccomp, '0');
    t.is(out[3], `keyctl=0 add_key=0 unshare-uts=${EPERM} mkdir=0 getppid=0`); // unshare: no CAP_SYS_ADMIN
  });
});

rtest('seccomp: argument rules (MASKED_EQ), errnoRet, KILL_PROCESS, a defaultAction other than ALLOW', async (t) => {
  const CLONE_NEWUTS = 0x04000000;
  await withContainer('seccomp-args', async (c) => {
    const { exit, records } = await c.run({
      args: ['/bin/sh', '-c', 'syscalls unshare-uts unshare-ipc getppid; syscalls acct; echo "acct status $?"'],
      capabilities: ALL_CAPS,
    }, (s) => {
      s.seccomp = {
        defaultAction: 'SCMP_ACT_ALLOW',
        syscalls: [
          { names: ['unshare'], action: 'SCMP_ACT_ERRNO', errnoRet: 95, args: [{ index: 0, value: CLONE_NEWUTS, valueTwo: CLONE_NEWUTS, op: 'SCMP_CMP_MASKED_EQ' }] },
          { names: ['getppid'], action: 'SCMP_ACT_ERRNO', errnoRet: 42 },
          { names: ['acct'], action: 'SCMP_ACT_KILL_PROCESS' },
        ],
      };
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    t.deepEqual(lines(records, 'stdout'), ['unshare-uts=95 unshare-ipc=0 getppid=42', 'acct status 159']); // 128 + SIGSYS
  });
  await withContainer('seccomp-deny', async (c) => {
    // ERRNO by default: the allow list must hold all that busybox sh needs; getppid is not on it
    const allow = ['read', 'write', 'openat', 'close', 'fstat', 'newfstatat', 'execve', 'brk', 'arch_prctl', 'set_tid_address',
      'set_robust_list', 'rseq', 'prlimit64', 'mmap', 'munmap', 'mprotect', 'getpid', 'getuid', 'geteuid', 'getgid', 'getegid',
      'rt_sigaction', 'rt_sigprocmask', 'rt_sigreturn', 'exit', 'exit_group', 'uname', 'readlink', 'ioctl', 'fcntl',
      'getcwd', 'stat', 'lstat', 'access', 'dup2', 'dup3', 'wait4', 'clone', 'fork', 'vfork', 'getrandom', 'sigaltstack',
      'poll', 'lseek', 'pread64', 'statx', 'futex', 'madvise'];
    const { exit, records } = await c.run({ args: ['/bin/syscalls', 'getppid', 'keyctl'] }, (s) => {
      s.process.noNewPrivileges = true;
      s.seccomp = { defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38, syscalls: [{ names: allow, action: 'SCMP_ACT_ALLOW' }] };
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    t.deepEqual(lines(records, 'stdout'), ['getppid=38 keyctl=38']);
  });
});

rtest('seccomp: a bad profile fails create with a message naming it', async (t) => {
  await withContainer('seccomp-bad', async (c) => {
    c.spec({ args: ['true'] }, (s) => {
      s.seccomp = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mkdir'], action: 'SCMP_ACT_EXPLODE' }] };
    });
    const r = await shim(['create', c.bundle]);
    t.is(r.code, 1);
    t.is(r.stdout, '');
    t.regex(r.stderr, /seccomp: syscalls\[0\]: action .* SCMP_ACT_EXPLODE/);
  });
});

// This host's kernel has no AppArmor (the generic /proc/self/attr/exec answers EINVAL to "exec <profile>"), so what
// can be checked here is that the init and exec ask for the profile and that a refusal fails them, saying why.
// On an AppArmor kernel the same write confines the program from its execve.
const apparmorOnHost = (() => {
  try {
    return readFileSync('/sys/module/apparmor/parameters/enabled', 'utf8').trim() === 'Y';
  } catch {
    return false;
  }
})();

rtest('apparmor: the init asks for process.apparmorProfile before execve; a kernel that refuses fails create naming the profile', async (t) => {
  if (apparmorOnHost) return t.pass('AppArmor is enabled here: the refusal this test needs does not happen');
  await withContainer('apparmor-init', async (c) => {
    c.spec({ args: ['true'] }, (s) => {
      (s.process as Record<string, unknown>).apparmorProfile = 'berth-test-profile';
    });
    const r = await shim(['create', c.bundle]);
    t.is(r.code, 1);
    t.is(r.stdout, '');
    t.regex(r.stderr, /apparmor: confine the container with profile berth-test-profile: (Invalid argument|No such file or directory)/);
  });
  await withContainer('apparmor-bad-name', async (c) => {
    c.spec({ args: ['true'] }, (s) => {
      (s.process as Record<string, unknown>).apparmorProfile = 'two\nlines';
    });
    const r = await shim(['create', c.bundle]);
    t.is(r.code, 1);
    t.regex(r.stderr, /process\.apparmorProfile must be a profile name/);
  });
});

rtest('apparmor: exec --apparmor asks for the profile before execve; a refusal fails the exec, naming it', async (t) => {
  if (apparmorOnHost) return t.pass('AppArmor is enabled here: the refusal this test needs does not happen');
  await withContainer('apparmor-exec', async (c) => {
    c.spec({ args: ['sleep', '1000'] });
    await c.create();
    c.start();
    await waitFor('sleep to run', () => readFileSync(`/proc/${c.pid}/cmdline`, 'utf8').startsWith('sleep'), SHIM_POLL);
    const plain = await shim(['exec', String(c.pid), '--', 'true']);
    t.is(plain.code, 0, plain.stderr);
    const confined = await shim(['exec', String(c.pid), '--apparmor', 'berth-test-profile', '--', 'touch', '/tmp/ran']);
    t.not(confined.code, 0);
    t.regex(confined.stderr, /exec: apparmor: confine the command with profile berth-test-profile/);
    const ran = await shim(['exec', String(c.pid), '--', 'ls', '/tmp']);
    t.false(ran.stdout.includes('ran'), 'the command never ran');
    process.kill(c.pid, 'SIGKILL');
    await c.exit();
  });
});

rtest('exec --seccomp-json filters the exec\'d process the same way', async (t) => {
  await withContainer('seccomp-exec', async (c) => {
    await c.running({ args: ['sleep', '1000'] });
    const pid = String(c.pid);
    const profile = path.join(c.dir, 'seccomp.json');
    writeFileSync(profile, JSON.stringify(defaultLikeProfile()));
    const caps = path.join(c.dir, 'caps.json');
    writeFileSync(caps, JSON.stringify({ bounding: DEFAULT_CAPS, effective: DEFAULT_CAPS, permitted: DEFAULT_CAPS, inheritable: [], ambient: [] }));
    const cmd = ['sh', '-c', 'grep -E "^(Seccomp|CapEff):" /proc/self/status; syscalls keyctl mkdir getppid'];

    const plain = await shim(['exec', pid, '--caps-json', caps, '--', ...cmd]);
    t.is(plain.code, 0, plain.stderr);
    t.deepEqual(plain.stdout.trim().split('\n'), [`CapEff:\t${capMask(DEFAULT_CAPS)}`, 'Seccomp:\t0', 'keyctl=0 mkdir=0 getppid=0']);

    const filtered = await shim(['exec', pid, '--caps-json', caps, '--seccomp-json', profile, '--', ...cmd]);
    t.is(filtered.code, 0, filtered.stderr);
    t.deepEqual(filtered.stdout.trim().split('\n'),
      [`CapEff:\t${capMask(DEFAULT_CAPS)}`, 'Seccomp:\t2', `keyctl=${EPERM} mkdir=${EPERM} getppid=0`]);

    const nnp = await shim(['exec', pid, '--uid', '65534', '--gid', '65534', '--no-new-privs', '--seccomp-json', profile, '--', ...cmd]);
    t.is(nnp.code, 0, nnp.stderr);
    t.deepEqual(nnp.stdout.trim().split('\n'), ['CapEff:\t0000000000000000', 'Seccomp:\t2', `keyctl=${EPERM} mkdir=${EPERM} getppid=0`]);

    const mk = await shim(['exec', pid, '--seccomp-json', profile, '--', 'sh', '-c', 'mkdir /tmp/x']);
    t.not(mk.code, 0);
    t.regex(mk.stderr, /Operation not permitted/);

    writeFileSync(profile, '{"defaultAction": "SCMP_ACT_NOPE", "syscalls": []}');
    const bad = await shim(['exec', pid, '--seccomp-json', profile, '--', 'true']);
    t.is(bad.code, 125);
    t.regex(bad.stderr, /defaultAction/);
  });
});

// open_tree_attr (kernel 6.15): newer than this libseccomp and than any call the RuntimeDefault profile names,
// so the ENOSYS stub answers it; unfiltered the kernel answers EFAULT (all arguments 0) and does nothing.
const NEWER_THAN_PROFILE = 467;
const ENOSYS = 38;

rtest('seccomp: RuntimeDefault is Docker\'s allowlist: io_uring and keyctl EPERM, clone3 and newer calls ENOSYS, a shell works', async (t) => {
  const probe = `syscalls io_uring_setup keyctl add_key mount_setattr clone-newuser clone3 nr:${NEWER_THAN_PROFILE} ` +
    'socket-vsock socket-inet personality-query getppid';
  const shellWork = 'echo hello | cat | tr a-z A-Z; (cd /tmp && echo x > f && cat f | wc -c); ls / | grep -c bin; ' +
    'v=$(cat /proc/self/status | grep Seccomp:); echo "$v"; sleep 0.01 & wait $!; echo waited=$?';
  await withContainer('seccomp-runtime-default', async (c) => {
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', `${probe}; ${shellWork}`] }, (s) => {
      s.seccomp = runtimeDefaultProfile(DEFAULT_CAPS);
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    t.deepEqual(lines(records, 'stdout'), [
      `io_uring_setup=${EPERM} keyctl=${EPERM} add_key=${EPERM} mount_setattr=${EPERM} clone-newuser=${EPERM} ` +
      `clone3=${ENOSYS} nr:${NEWER_THAN_PROFILE}=${ENOSYS} socket-vsock=${EPERM} socket-inet=0 personality-query=0 getppid=0`,
      'HELLO', '2', '1', 'Seccomp:\t2', 'waited=0',
    ]);
  });
  // The same calls unfiltered: the kernel has them all (else the answers above would prove nothing).
  await withContainer('seccomp-none', async (c) => {
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', probe] });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    const answers = Object.fromEntries(lines(records, 'stdout')[0]!.split(' ').map((kv) => kv.split('=') as [string, string]));
    for (const call of ['io_uring_setup', 'clone3', `nr:${NEWER_THAN_PROFILE}`, 'mount_setattr']) {
      t.false([String(EPERM), String(ENOSYS)].includes(answers[call]!), `${call} unfiltered: ${answers[call]}`);
    }
    t.is(answers['keyctl'], '0');
  });
});

rtest('seccomp: the ENOSYS stub starts above the highest call a deny-by-default profile names (any rule), not with ALLOW', async (t) => {
  const shellCalls = ['read', 'write', 'openat', 'close', 'fstat', 'newfstatat', 'execve', 'brk', 'arch_prctl', 'set_tid_address',
    'set_robust_list', 'rseq', 'prlimit64', 'mmap', 'munmap', 'mprotect', 'getuid', 'exit_group', 'ioctl', 'getrandom'];
  // rseq (334) is the highest allowed; pidfd_send_signal (424) and io_uring_setup (425) exist but are not named
  const probe = ['/bin/syscalls', 'getppid', 'nr:424', 'io_uring_setup', `nr:${NEWER_THAN_PROFILE}`];
  const deny = (extra: { names: string[]; action: string }[]) => ({
    defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: shellCalls, action: 'SCMP_ACT_ALLOW' }, ...extra],
  });
  const cases: [string, SeccompProfile, string][] = [
    ['stub-low', deny([]), `getppid=${EPERM} nr:424=${ENOSYS} io_uring_setup=${ENOSYS} nr:${NEWER_THAN_PROFILE}=${ENOSYS}`],
    // a rule repeating the default adds nothing to the filter but still counts as named
    ['stub-named', deny([{ names: ['io_uring_setup'], action: 'SCMP_ACT_ERRNO' }]),
      `getppid=${EPERM} nr:424=${EPERM} io_uring_setup=${EPERM} nr:${NEWER_THAN_PROFILE}=${ENOSYS}`],
    // allow by default: no stub, the kernel answers (EFAULT for all-zero arguments)
    ['stub-none', { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['getppid'], action: 'SCMP_ACT_ERRNO' }] },
      `getppid=${EPERM} nr:424=9 io_uring_setup=14 nr:${NEWER_THAN_PROFILE}=14`],
  ];
  for (const [name, profile, want] of cases) {
    await withContainer(name, async (c) => {
      const { exit, records } = await c.run({ args: probe }, (s) => {
        s.process.noNewPrivileges = true;
        s.seccomp = profile;
      });
      t.is(exit.exitCode, 0, JSON.stringify(records));
      t.deepEqual(lines(records, 'stdout'), [want], name);
    });
  }
  // exec'd processes get the stub too
  await withContainer('stub-exec', async (c) => {
    await c.running({ args: ['sleep', '1000'] });
    const file = path.join(c.dir, 'rd.json');
    writeFileSync(file, JSON.stringify(runtimeDefaultProfile(DEFAULT_CAPS)));
    const r = await shim(['exec', String(c.pid), '--seccomp-json', file, '--', 'syscalls', 'io_uring_setup', `nr:${NEWER_THAN_PROFILE}`]);
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout.trim(), `io_uring_setup=${EPERM} nr:${NEWER_THAN_PROFILE}=${ENOSYS}`);
  });
});

// ---- user namespaces ----

const MAP = [{ containerID: 0, hostID: 100000, size: 65536 }];

rtest('a new user namespace: root inside, uid 100000 outside; layers, volumes and new files have the right owners', async (t) => {
  const vol = path.join(TMP, `vol-${randomBytes(4).toString('hex')}`);
  mkdirSync(vol);
  writeFileSync(path.join(vol, 'owned-by-1000'), 'x');
  chownSync(path.join(vol, 'owned-by-1000'), 1000, 1000);
  try {
    await withContainer('userns', async (c) => {
      await c.running({
        args: ['sleep', '1000'],
        namespaces: [{ type: 'user' }, { type: 'mount' }, { type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'network' }, { type: 'cgroup' }],
        extraMounts: [
          { destination: '/vol', type: 'bind', source: vol, options: ['rbind', 'rw'] },
          { destination: '/vol-ro', type: 'bind', source: vol, options: ['rbind', 'ro', 'rprivate'] },
          { destination: '/etc/one-file', type: 'bind', source: path.join(vol, 'owned-by-1000'), options: ['rbind', 'rw'] },
          { destination: '/scratch', type: 'tmpfs', source: 'tmpfs', options: ['uid=1000', 'gid=1000', 'mode=700'] },
        ],
      }, (s) => {
        s.uidMappings = MAP;
        s.gidMappings = MAP;
      });
      const status = readFileSync(`/proc/${c.pid}/status`, 'utf8');
      t.regex(statusField(status, 'Uid'), /^100000\s+100000\s+100000\s+100000$/);
      t.regex(statusField(status, 'Gid'), /^100000\s+100000\s+100000\s+100000$/);
      t.is(readFileSync(`/proc/${c.pid}/uid_map`, 'utf8').trim().split(/\s+/).join(' '), '0 100000 65536');
      t.is(readFileSync(`/proc/${c.pid}/gid_map`, 'utf8').trim().split(/\s+/).join(' '), '0 100000 65536');

      const script = [
        'id -u', 'id -g',
        'stat -c "%u %g" /bin/busybox / /root /vol /vol/owned-by-1000 /dev/null /dev/shm /proc/1',
        'touch /root/new /vol/new && echo wrote',
        'stat -c "%u %g" /root/new',
        'echo hi > /dev/null && echo devnull-ok',
        'cat /proc/self/uid_map',
        'stat -c "%u %g" /vol-ro /etc/one-file /scratch',
        'touch /vol-ro/x 2>&1 || true',
      ].join('; ');
      const r = await shim(['exec', String(c.pid), '--', 'sh', '-c', script]);
      t.is(r.code, 0, r.stderr);
      const out = r.stdout.trim().split('\n');
      t.is(out[0], '0');
      t.is(out[1], '0');
      t.deepEqual(out.slice(2, 10), ['0 0', '0 0', '0 0', '0 0', '1000 1000', '0 0', '0 0', '0 0']);
      t.is(out[10], 'wrote');
      t.is(out[11], '0 0');
      t.is(out[12], 'devnull-ok');
      t.is(out[13]!.trim().split(/\s+/).join(' '), '0 100000 65536');
      // a read-only volume and a file are id-mapped too; tmpfs uid=/gid= are container ids
      t.deepEqual(out.slice(14, 17), ['0 0', '1000 1000', '1000 1000']);
      t.regex(out[17]!, /Read-only file system/);
      // on the host: the layer and the volume keep their on-disk owners; new files belong to root of the disk's view
      t.is(statSync(path.join(c.dir, 'upper/root/new')).uid, 0);
      t.is(statSync(path.join(vol, 'new')).uid, 0);
      t.is(statSync(path.join(vol, 'owned-by-1000')).uid, 1000);
      // the exec'd process is mapped too: never host root inside the namespace
      const who = await shim(['exec', String(c.pid), '--', 'sh', '-c', 'cat /proc/self/status | grep ^Uid; id -u']);
      t.is(who.code, 0, who.stderr);
      t.regex(who.stdout, /^Uid:\s+0\s+0\s+0\s+0\n0\n$/);
      process.kill(c.pid, 'SIGKILL');
      t.is((await c.exit()).signal, 9);
    });
  } finally {
    rmSync(vol, { recursive: true, force: true });
  }
});

rtest('a new user namespace without an overlay: the rootfs bind is id-mapped', async (t) => {
  await withContainer('userns-bind', async (c) => {
    const { exit, records } = await c.run({
      args: ['/bin/sh', '-c', 'id -u; stat -c "%u %g" / /bin/busybox /etc/passwd'],
      rootPath: LOWER, // read only by this container: nothing is written under it
      overlay: undefined,
      namespaces: [{ type: 'user' }, { type: 'mount' }, { type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'network' }],
    }, (s) => {
      delete s.overlay;
      s.uidMappings = MAP;
      s.gidMappings = MAP;
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    t.deepEqual(lines(records, 'stdout'), ['0', '0 0', '0 0', '0 0']);
  });
  t.deepEqual(mountsUnder(LOWER), []);
});

rtest('a user-namespaced container in a pod: joins the pod namespaces, mounts sysfs and mqueue, runs as a mapped user', async (t) => {
  const pod = path.join(TMP, `pod-${randomBytes(4).toString('hex')}`);
  podDirs.push(pod);
  const sb = await shim(['sandbox', pod, '--net', '--ipc', '--uts', '--pid', '--hostname', 'userns-pod']);
  t.is(sb.code, 0, sb.stderr);
  const { initPid } = JSON.parse(sb.stdout) as { initPid: number };
  started.add(initPid);
  try {
    await withContainer('userns-pod', async (c) => {
      const ns = (type: 'network' | 'ipc' | 'uts' | 'pid', file: string) => ({ type, path: path.join(pod, file) });
      const { exit, records } = await c.run({
        args: ['/bin/sh', '-c', 'id -u; hostname; ls /sys/class/net; grep -c mqueue /proc/self/mounts; stat -c "%u %g" /dev/pts/ptmx /dev/shm; ' +
          'touch /dev/shm/x /tmp/y && echo writable; syscalls keyctl'],
        uid: 1000,
        gid: 1000,
        namespaces: [{ type: 'user' }, { type: 'mount' }, ns('pid', 'pid'), ns('network', 'net'), ns('ipc', 'ipc'), ns('uts', 'uts'), { type: 'cgroup' }],
      }, (s) => {
        s.uidMappings = MAP;
        s.gidMappings = MAP;
        s.seccomp = defaultLikeProfile();
      });
      t.is(exit.exitCode, 0, JSON.stringify(records));
      const out = lines(records, 'stdout');
      t.deepEqual(out, ['1000', 'userns-pod', 'lo', '1', '0 0', '0 0', 'writable', `keyctl=${EPERM}`]);
    });
  } finally {
    process.kill(initPid, 'SIGTERM');
    await waitFor('pod init to exit', () => !pidAlive(initPid), SHIM_POLL);
    t.is((await shim(['unpin', pod])).code, 0);
  }
});

rtest('user namespace: bad mappings are refused before anything runs', async (t) => {
  await withContainer('userns-bad', async (c) => {
    c.spec({ args: ['true'], namespaces: [{ type: 'user' }, { type: 'mount' }] });
    let r = await shim(['create', c.bundle]);
    t.is(r.code, 1);
    t.regex(r.stderr, /needs uidMappings and gidMappings/);
    c.spec({ args: ['true'] }, (s) => {
      s.uidMappings = MAP;
      s.gidMappings = MAP;
    });
    r = await shim(['create', c.bundle]);
    t.is(r.code, 1);
    t.regex(r.stderr, /need a new user namespace/);
  });
});

// ---- mount propagation ----

function mountedAt(p: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === p);
}

rtest('propagation: rshared goes both ways, rslave host to container only, rprivate not at all', async (t) => {
  const shared = path.join(TMP, `shared-${randomBytes(4).toString('hex')}`);
  mkdirSync(shared);
  execFileSync('mount', ['--bind', shared, shared]);
  hostMounts.push(shared);
  execFileSync('mount', ['--make-shared', shared]);
  for (const d of ['from-host', 'from-ctr-shared', 'from-ctr-slave']) mkdirSync(path.join(shared, d));
  try {
    await withContainer('propagation', async (c) => {
      await c.running({
        args: ['sleep', '1000'],
        capabilities: ALL_CAPS, // to mount inside
        extraMounts: ['rshared', 'rslave', 'rprivate'].map((p) => ({
          destination: `/${p}`, type: 'bind', source: shared, options: ['rbind', p],
        })),
      });
      const pid = String(c.pid);
      // host -> container
      execFileSync('mount', ['-t', 'tmpfs', 'berth-from-host', path.join(shared, 'from-host')]);
      hostMounts.push(path.join(shared, 'from-host'));
      writeFileSync(path.join(shared, 'from-host/marker'), 'host');
      const seen = await shim(['exec', pid, '--', 'sh', '-c',
        'for p in rshared rslave rprivate; do cat /$p/from-host/marker 2>/dev/null || echo none; echo; done']);
      t.is(seen.code, 0, seen.stderr);
      t.deepEqual(seen.stdout.split('\n').filter(Boolean), ['host', 'host', 'none']);
      // container -> host: only through the rshared mount
      const m1 = await shim(['exec', pid, '--', 'mount', '-t', 'tmpfs', 'berth-from-ctr', '/rshared/from-ctr-shared']);
      t.is(m1.code, 0, m1.stderr);
      const m2 = await shim(['exec', pid, '--', 'mount', '-t', 'tmpfs', 'berth-from-ctr', '/rslave/from-ctr-slave']);
      t.is(m2.code, 0, m2.stderr);
      hostMounts.push(path.join(shared, 'from-ctr-shared'), path.join(shared, 'from-ctr-slave'));
      t.true(mountedAt(path.join(shared, 'from-ctr-shared')), 'a mount in the rshared volume reaches the host');
      t.false(mountedAt(path.join(shared, 'from-ctr-slave')), 'a mount in the rslave volume stays in the container');
      const inside = await shim(['exec', pid, '--', 'sh', '-c', 'grep -c berth-from-ctr /proc/self/mounts']);
      t.true(Number(inside.stdout.trim()) >= 2, inside.stdout); // both, and the shared one again under /rslave
      process.kill(c.pid, 'SIGKILL');
      await c.exit();
    });
  } finally {
    for (const m of [path.join(shared, 'from-ctr-shared'), path.join(shared, 'from-host'), shared]) {
      if (mountedAt(m)) execFileSync('umount', [m]);
    }
  }
  t.deepEqual(mountsUnder(shared), []);
  rmSync(shared, { recursive: true, force: true });
});

// ---- recursive read-only mounts ----

/** Options field of each mount of `pid` below `under`, keyed by its mount point. */
function mountOptions(pid: number, under: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')) {
    const f = l.split(' ');
    if (f[4]?.startsWith(under)) out[f[4]] = f[5]!;
  }
  return out;
}

const USERNS = [{ type: 'user' as const }, { type: 'mount' as const }, { type: 'pid' as const }, { type: 'ipc' as const }, { type: 'uts' as const }, { type: 'network' as const }, { type: 'cgroup' as const }];

for (const userns of [false, true]) {
  rtest(`rro: a recursive read-only bind makes its submount read-only too; a plain ro bind leaves it writable${userns ? ' (new user namespace)' : ''}`, async (t) => {
    const vol = path.join(TMP, `rro-${randomBytes(4).toString('hex')}`);
    const sub = path.join(vol, 'sub');
    mkdirSync(sub, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'mode=0777', 'berth-rro-sub', sub]);
    hostMounts.push(sub);
    try {
      await withContainer(userns ? 'rro-userns' : 'rro', async (c) => {
        await c.running({
          args: ['sleep', '1000'],
          ...(userns ? { namespaces: USERNS } : {}),
          extraMounts: [
            { destination: '/rro', type: 'bind', source: vol, options: ['rbind', 'rprivate', 'ro', 'rro'] },
            { destination: '/ro', type: 'bind', source: vol, options: ['rbind', 'rprivate', 'ro'] },
          ],
        }, (s) => {
          if (userns) s.uidMappings = s.gidMappings = MAP;
        });
        const r = await shim(['exec', String(c.pid), '--', 'sh', '-c',
          'for d in /rro /rro/sub /ro /ro/sub; do touch $d/f 2>&1 && echo "$d wrote"; done; true']);
        t.is(r.code, 0, r.stderr);
        t.deepEqual(r.stdout.trim().split('\n'), [
          "touch: /rro/f: Read-only file system",
          "touch: /rro/sub/f: Read-only file system",
          "touch: /ro/f: Read-only file system",
          '/ro/sub wrote',
        ]);
        const opts = mountOptions(c.pid, '/');
        t.regex(opts['/rro/sub'] ?? '', /^ro,/, 'the submount is read-only in the container');
        t.regex(opts['/ro/sub'] ?? '', /^rw,/);
        // Only the container's copies changed: the host's tmpfs stays writable.
        writeFileSync(path.join(sub, 'from-host'), 'x');
        t.true(existsSync(path.join(sub, 'f')), 'the write through /ro/sub reached the host tmpfs');
        process.kill(c.pid, 'SIGKILL');
        await c.exit();
      });
    } finally {
      execFileSync('umount', [sub]);
    }
    t.deepEqual(mountsUnder(vol), []);
    rmSync(vol, { recursive: true, force: true });
  });
}

// ---- hardening of create, exec and sandbox ----

/** Live processes whose command line mentions `needle` (a bundle or pod dir: create, its monitor and init). */
function procsWith(needle: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .map(Number)
    .filter((pid) => pidAlive(pid) && (procCmdline(pid)?.join(' ').includes(needle) ?? false));
}

/** berth-shim with a cwd and extra fds (stdio[3...]), like shim(). */
function shimWith(args: string[], opts: { cwd?: string; extraFds?: number }): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const stdio: ('ignore' | 'pipe')[] = ['ignore', 'pipe', 'pipe', ...Array<'pipe'>(opts.extraFds ?? 0).fill('pipe')];
    const p = spawn(SHIM, args, { stdio, cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code: code ?? 128 + (signal ? os.constants.signals[signal] : 0), stdout, stderr }));
  });
}

rtest('spec: ids out of [0, 2^32-2] and relative host paths are refused, naming the field', async (t) => {
  const cases: [string, (s: ShimSpec) => void, RegExp][] = [
    ['uid -1', (s) => (s.process.uid = -1), /process\.uid must be in \[0, 4294967294\]: -1/],
    ['gid 2^32-1', (s) => (s.process.gid = 4294967295), /process\.gid must be in \[0, 4294967294\]: 4294967295/],
    ['additionalGids', (s) => (s.process.additionalGids = [5, -2]), /process\.additionalGids\[1\] must be in \[0, 4294967294\]: -2/],
    ['device uid', (s) => (s.devices[0]!.uid = -1), /devices\[\]\.uid must be in \[0, 4294967294\]: -1/],
    ['device gid', (s) => (s.devices[0]!.gid = 2 ** 40), /devices\[\]\.gid must be in/],
    ['cgroupProcs', (s) => (s.cgroupProcs = ['sys/fs/cgroup/cgroup.procs']), /cgroupProcs\[0\] must be absolute/],
    ['overlay', (s) => (s.overlay!.lower = ['rootfs']), /overlay\.lower\[0\] must be absolute/],
    ['namespace path', (s) => (s.namespaces = [{ type: 'mount' }, { type: 'network', path: 'net' }]), /namespaces\[1\]\.path must be absolute/],
  ];
  await withContainer('bad-ids', async (c) => {
    for (const [what, mutate, re] of cases) {
      c.spec({ args: ['true'] }, mutate);
      const r = await shim(['create', c.bundle]);
      t.is(r.code, 1, what);
      t.is(r.stdout, '', what);
      t.regex(r.stderr, re, what);
      t.deepEqual(readdirSync(c.bundle), ['spec.json'], `${what}: nothing made`);
    }
    // the largest valid id is fine
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', 'id -u; id -g'], uid: 4294967294, gid: 4294967294 }, (s) => {
      delete (s.process as { capabilities?: unknown }).capabilities;
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    t.deepEqual(lines(records, 'stdout'), ['4294967294', '4294967294']);
  });
});

rtest('a create that fails after making its fifos removes them (and shim.json)', async (t) => {
  await withContainer('fail-fifos', async (c) => {
    // fails opening the log, right after start.fifo
    c.spec({ args: ['true'], logPath: path.join(c.dir, 'no-such-dir', 'x.log') });
    let r = await shim(['create', c.bundle]);
    t.is(r.code, 1);
    t.regex(r.stderr, /open log .*no-such-dir/);
    t.deepEqual(readdirSync(c.bundle), ['spec.json']);
    // fails writing uid_map (overlapping ranges), after start.fifo and stdin.fifo
    c.spec({ args: ['true'], namespaces: [{ type: 'user' }, { type: 'mount' }, { type: 'pid' }] }, (s) => {
      s.process.stdin = true;
      s.uidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }, { containerID: 0, hostID: 300000, size: 10 }];
      s.gidMappings = MAP;
    });
    r = await shim(['create', c.bundle]);
    t.is(r.code, 1);
    t.regex(r.stderr, /write uid_map/);
    t.deepEqual(readdirSync(c.bundle), ['spec.json']);
    t.deepEqual(procsWith(c.bundle), []);
  });
});

rtest('the monitor and the pod init do not keep the caller\'s working directory', async (t) => {
  await withContainer('cwd', async (c) => {
    c.spec({ args: ['sleep', '1000'] });
    const r = await shimWith(['create', c.bundle], { cwd: c.dir });
    t.is(r.code, 0, r.stderr);
    const { pid, monitorPid } = JSON.parse(r.stdout) as { pid: number; monitorPid: number };
    started.add(pid).add(monitorPid);
    c.pid = pid;
    c.monitorPid = monitorPid;
    t.is(readlinkSync(`/proc/${monitorPid}/cwd`), '/');
  });
  const pod = path.join(TMP, `pod-${randomBytes(4).toString('hex')}`);
  podDirs.push(pod);
  mkdirSync(pod);
  const sb = await shimWith(['sandbox', pod, '--pid'], { cwd: pod });
  t.is(sb.code, 0, sb.stderr);
  const { initPid } = JSON.parse(sb.stdout) as { initPid: number };
  started.add(initPid);
  try {
    t.is(readlinkSync(`/proc/${initPid}/cwd`), '/');
  } finally {
    process.kill(initPid, 'SIGTERM');
    await waitFor('pod init to exit', () => !pidAlive(initPid), SHIM_POLL);
    t.is((await shim(['unpin', pod])).code, 0);
  }
});

rtest('a create killed before the monitor reports (berth\'s timeout) leaves no container, process or file', async (t) => {
  await withContainer('create-killed', async (c) => {
    // the init blocks writing its "cgroup.procs" (a fifo here) until the test reads it
    const procs = path.join(c.dir, 'procs-fifo');
    execFileSync('mkfifo', [procs]);
    c.spec({ args: ['sleep', '1000'], cgroupProcs: [procs] });
    const create = spawn(SHIM, ['create', c.bundle], { stdio: 'ignore' });
    const exited = new Promise((resolve) => create.on('exit', resolve));
    const [monitor, init] = await waitFor('the monitor and the init', () => {
      const ps = procsWith(c.bundle).filter((p) => p !== create.pid);
      return ps.length === 2 ? ps : undefined;
    }, SHIM_POLL);
    for (const p of [monitor!, init!]) started.add(p);
    create.kill('SIGKILL');
    await exited;
    const reader = openSync(procs, fsc.O_RDONLY | fsc.O_NONBLOCK); // releases the init
    try {
      await waitFor('monitor and init to go', () => !pidAlive(monitor!) && !pidAlive(init!), SHIM_POLL);
    } finally {
      closeSync(reader);
    }
    t.deepEqual(procsWith(c.bundle), []);
    t.deepEqual(readdirSync(c.bundle).sort(), ['spec.json']);
  });
});

rtest('exec: the command gets no fd of the caller but stdio, and default signal handling', async (t) => {
  await withContainer('exec-fds', async (c) => {
    await c.running({ args: ['sleep', '1000'] });
    const r = await shimWith(['exec', String(c.pid), '--', 'sh', '-c',
      'for f in 3 4 5; do test -e /proc/$$/fd/$f && echo "fd $f open" || echo "fd $f closed"; done'], { extraFds: 3 });
    t.is(r.code, 0, r.stderr);
    t.deepEqual(r.stdout.trim().split('\n'), ['fd 3 closed', 'fd 4 closed', 'fd 5 closed']);
    // not through sh, which ignores SIGQUIT itself
    const sig = await shimWith(['exec', String(c.pid), '--', 'grep', '-E', '^Sig(Blk|Ign):', '/proc/self/status'], { extraFds: 3 });
    t.is(sig.code, 0, sig.stderr);
    t.deepEqual(sig.stdout.trim().split('\n'), ['SigBlk:\t0000000000000000', 'SigIgn:\t0000000000000000']);
  });
});

rtest('an exec error longer than the sync buffer arrives whole, errno text included; startedAt is set', async (t) => {
  await withContainer('long-exec-error', async (c) => {
    const missing = '/' + Array.from({ length: 10 }, () => 'd'.repeat(200)).join('/') + '/prog';
    const { exit, records } = await c.run({ args: [missing] });
    t.is(exit.exitCode, 127);
    t.true(exit.startedAt > 0 && exit.startedAt <= exit.finishedAt);
    const reason = readFileSync(path.join(c.bundle, 'exec-error'), 'utf8');
    t.regex(reason, /^exec (\/d+)+\.\.\.: No such file or directory\n$/); // args[0] cut short, not the errno text
    t.true(reason.length > 1000 && reason.length < 1200, String(reason.length));
    t.true(lines(records, 'stderr').some((l) => l.endsWith('...: No such file or directory')));
  });
});

rtest('bounding set: the highest capabilities can be kept; oom_score_adj below berth\'s own is kept at berth\'s', async (t) => {
  await withContainer('bounding-high', async (c) => {
    const own = Number(readFileSync('/proc/self/oom_score_adj', 'utf8'));
    const { exit, records } = await c.run({ args: ['/bin/sh', '-c', 'grep ^CapBnd: /proc/self/status; cat /proc/self/oom_score_adj'] }, (s) => {
      s.process.capabilities = { bounding: ['CAP_CHOWN', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE'], effective: [], permitted: [], inheritable: [], ambient: [] };
      s.process.oomScoreAdj = -999;
    });
    t.is(exit.exitCode, 0, JSON.stringify(records));
    const [bnd, oom] = lines(records, 'stdout');
    t.is(bnd, `CapBnd:\t${((1n << 0n) | (1n << 39n) | (1n << 40n)).toString(16).padStart(16, '0')}`);
    // lowering needs CAP_SYS_RESOURCE, which this host's root may lack: then the value stays berth's
    t.true(oom === '-999' || Number(oom) === own, `${oom} (ours ${own})`);
  });
});

rtest('a failed sandbox undoes the self-bind it made of a directory on a shared mount', async (t) => {
  const shared = path.join(TMP, `shared-sb-${randomBytes(4).toString('hex')}`);
  mkdirSync(shared);
  execFileSync('mount', ['--bind', shared, shared]);
  hostMounts.push(shared);
  execFileSync('mount', ['--make-shared', shared]);
  try {
    const pod = path.join(shared, 'pod');
    podDirs.push(pod);
    const sb = await shim(['sandbox', pod, '--uts', '--hostname', 'h'.repeat(65)]);
    t.is(sb.code, 1);
    t.regex(sb.stderr, /sethostname/);
    t.deepEqual(mountsUnder(pod), []);
    t.false(existsSync(path.join(pod, '.berth-selfbind')));
    t.false(existsSync(path.join(pod, 'uts')));
    // a good one binds it and unpin undoes it
    const ok = await shim(['sandbox', pod, '--uts']);
    t.is(ok.code, 0, ok.stderr);
    t.true(mountsUnder(pod).some((l) => l.split(' ')[4] === pod));
    t.is((await shim(['unpin', pod])).code, 0);
    t.deepEqual(mountsUnder(pod), []);
  } finally {
    execFileSync('umount', [shared]);
  }
  t.deepEqual(mountsUnder(shared), []);
});

function checkClean(t: ExecutionContext): void {
  t.deepEqual(mountsUnder(TMP), []);
  for (const pid of started) t.false(pidAlive(pid), `pid ${pid} still alive`);
  for (const d of podDirs) t.false(existsSync(path.join(d, 'net')), `${d} still pinned`);
}

rtest('nothing is left behind: mounts, processes, pinned namespaces', (t) => {
  checkClean(t);
});
