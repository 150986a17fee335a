import test from 'ava';
import { runtimeDefaultProfile, type SeccompArg, type SeccompProfile } from '../../src/container/seccomp.js';
import { DEFAULT_PROFILE } from '../../src/container/seccomp-default.js';
import { ALL_CAPABILITIES, DEFAULT_CAPABILITIES } from '../../src/container/capabilities.js';

// The RuntimeDefault profile judged by what it answers, not by its shape: a small evaluator of OCI profiles
// (the semantics libseccomp gives them) asks it about the calls a busybox shell and a Debian userland make.

const EPERM = 1;
const ENOSYS = 38;
const CLONE_NEWUSER = 0x10000000;
const CLONE_NEWNET = 0x40000000;
const CLONE_NEWNS = 0x00020000;
const CLONE_NEWTIME = 0x00000080;
const SIGCHLD = 17;
// what glibc's fork() and pthread_create() pass to clone
const FORK_FLAGS = 0x01200000 | SIGCHLD; // CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID
const THREAD_FLAGS = 0x003d0f00; // VM FS FILES SIGHAND THREAD SYSVSEM SETTLS PARENT_SETTID CHILD_CLEARTID
const AF_UNIX = 1;
const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const AF_PACKET = 17;
const AF_ALG = 38;
const AF_VSOCK = 40;
const AF_XDP = 44;

type Verdict = 'allow' | { errno: number } | 'kill' | 'trap' | 'log' | 'trace';

function argMatches(a: SeccompArg, args: readonly number[]): boolean {
  const v = BigInt.asUintN(64, BigInt(args[a.index] ?? 0));
  const x = BigInt.asUintN(64, BigInt(a.value));
  const y = BigInt.asUintN(64, BigInt(a.valueTwo ?? 0));
  switch (a.op) {
    case 'SCMP_CMP_NE': return v !== x;
    case 'SCMP_CMP_LT': return v < x;
    case 'SCMP_CMP_LE': return v <= x;
    case 'SCMP_CMP_EQ': return v === x;
    case 'SCMP_CMP_GE': return v >= x;
    case 'SCMP_CMP_GT': return v > x;
    case 'SCMP_CMP_MASKED_EQ': return (v & x) === y; // OCI: value is the mask, valueTwo the datum
  }
}

function actionVerdict(action: string, errnoRet: number | undefined): Verdict {
  switch (action) {
    case 'SCMP_ACT_ALLOW': return 'allow';
    case 'SCMP_ACT_ERRNO': return { errno: errnoRet ?? EPERM };
    case 'SCMP_ACT_KILL': case 'SCMP_ACT_KILL_THREAD': case 'SCMP_ACT_KILL_PROCESS': return 'kill';
    case 'SCMP_ACT_TRAP': return 'trap';
    case 'SCMP_ACT_LOG': return 'log';
    case 'SCMP_ACT_TRACE': return 'trace';
    default: throw new Error(`unknown action ${action}`);
  }
}

/**
 * What the filter answers for `name(args)`: the action of the rules that match (a rule matches when all its
 * conditions hold; rules for one call are OR-ed), else the default. Matching rules that disagree are an error:
 * the profile would depend on libseccomp's tie-breaking.
 */
function evaluate(profile: SeccompProfile, name: string, args: readonly number[] = []): Verdict {
  const found = profile.syscalls
    .filter((r) => r.names.includes(name) && (r.args ?? []).every((a) => argMatches(a, args)))
    .map((r) => actionVerdict(r.action, r.errnoRet));
  const distinct = new Set(found.map((v) => JSON.stringify(v)));
  if (distinct.size > 1) throw new Error(`${name}: rules disagree: ${[...distinct].join(', ')}`);
  return found[0] ?? actionVerdict(profile.defaultAction, profile.defaultErrnoRet);
}

const deny = (errno: number): Verdict => ({ errno });
const defaultProfile = runtimeDefaultProfile(DEFAULT_CAPABILITIES, 'x64');
const allCaps = runtimeDefaultProfile(ALL_CAPABILITIES, 'x64');

// [name, args] a shell, busybox, coreutils, apt, dpkg, Python and glibc's own start-up make.
const USERLAND: [string, number[]?][] = [
  ...[
    'read', 'write', 'open', 'openat', 'openat2', 'close', 'close_range', 'fstat', 'stat', 'lstat', 'newfstatat', 'statx',
    'mmap', 'mprotect', 'munmap', 'brk', 'madvise', 'mremap', 'msync', 'mlock', 'mincore', 'memfd_create',
    'rt_sigaction', 'rt_sigprocmask', 'rt_sigreturn', 'rt_sigsuspend', 'sigaltstack', 'ioctl', 'pread64', 'pwrite64',
    'readv', 'writev', 'access', 'faccessat', 'faccessat2', 'pipe', 'pipe2', 'select', 'pselect6', 'poll', 'ppoll',
    'dup', 'dup2', 'dup3', 'fcntl', 'flock', 'fork', 'vfork', 'execve', 'execveat', 'exit', 'exit_group', 'wait4',
    'waitid', 'kill', 'tgkill', 'tkill', 'getpid', 'getppid', 'gettid', 'getuid', 'geteuid', 'getgid', 'getegid',
    'getgroups', 'getresuid', 'getresgid', 'setuid', 'setgid', 'setgroups', 'setresuid', 'setresgid', 'setreuid',
    'setregid', 'setfsuid', 'setfsgid', 'chdir', 'fchdir', 'getcwd', 'rename', 'renameat', 'renameat2', 'mkdir',
    'mkdirat', 'rmdir', 'unlink', 'unlinkat', 'link', 'linkat', 'symlink', 'symlinkat', 'readlink', 'readlinkat',
    'chmod', 'fchmod', 'fchmodat', 'chown', 'fchown', 'fchownat', 'lchown', 'umask', 'utimensat', 'truncate',
    'ftruncate', 'fallocate', 'fsync', 'fdatasync', 'sync', 'copy_file_range', 'sendfile', 'splice', 'mknod',
    'mknodat', 'getxattr', 'lgetxattr', 'fgetxattr', 'setxattr', 'fsetxattr', 'listxattr', 'llistxattr',
    'gettimeofday', 'clock_gettime', 'clock_getres', 'clock_nanosleep', 'nanosleep', 'time', 'times', 'alarm',
    'getitimer', 'setitimer', 'timer_create', 'timer_settime', 'timer_delete', 'getrandom', 'prlimit64', 'getrlimit',
    'setrlimit', 'getrusage', 'arch_prctl', 'set_tid_address', 'set_robust_list', 'get_robust_list', 'rseq', 'futex',
    'sched_yield', 'sched_getaffinity', 'sched_setaffinity', 'sched_getparam', 'sched_getscheduler', 'getpriority',
    'setpriority', 'uname', 'sysinfo', 'statfs', 'fstatfs', 'getdents', 'getdents64', 'lseek', 'connect', 'bind',
    'listen', 'accept', 'accept4', 'sendto', 'recvfrom', 'sendmsg', 'recvmsg', 'sendmmsg', 'recvmmsg', 'setsockopt',
    'getsockopt', 'getsockname', 'getpeername', 'shutdown', 'socketpair', 'epoll_create', 'epoll_create1',
    'epoll_ctl', 'epoll_wait', 'epoll_pwait', 'eventfd2', 'timerfd_create', 'timerfd_settime', 'signalfd4',
    'inotify_init1', 'inotify_add_watch', 'inotify_rm_watch', 'capget', 'capset', 'prctl', 'setsid', 'setpgid',
    'getpgid', 'getpgrp', 'getsid', 'pause', 'restart_syscall', 'membarrier', 'ioprio_get', 'shmget', 'shmat', 'shmdt',
    'shmctl', 'semget', 'semop', 'semctl', 'msgget', 'mq_open', 'seccomp', 'pidfd_open', 'pidfd_send_signal',
    'process_vm_readv', 'ptrace', 'modify_ldt', 'landlock_create_ruleset', 'io_setup', 'io_submit', 'getcpu',
  ].map((n): [string] => [n]),
  ['clone', [FORK_FLAGS]],
  ['clone', [THREAD_FLAGS]],
  ['socket', [AF_UNIX]],
  ['socket', [AF_INET]],
  ['socket', [AF_INET6]],
  ['socket', [AF_NETLINK]],
  ['socket', [AF_PACKET]],
  ['socket', [AF_ALG + 1]],
  ['socket', [AF_XDP]],
  ['personality', [0xffffffff]], // the query, which Docker's profile allows (setarch, some JVMs and shells ask)
  ['personality', [0]],
  ['personality', [0x8]],
  ['personality', [0x20000]],
  ['personality', [0x20008]],
];

test('RuntimeDefault allows what a shell, busybox and a Debian userland need', (t) => {
  for (const [name, args] of USERLAND) t.is(evaluate(defaultProfile, name, args), 'allow', `${name}(${(args ?? []).join(', ')})`);
});

test('RuntimeDefault is an allowlist: an unlisted call gets EPERM, the default', (t) => {
  t.is(defaultProfile.defaultAction, 'SCMP_ACT_ERRNO');
  t.is(defaultProfile.defaultErrnoRet, EPERM);
  t.deepEqual(defaultProfile.architectures, ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  t.deepEqual(evaluate(defaultProfile, 'no_such_call_berth'), deny(EPERM));
  t.deepEqual(evaluate(allCaps, 'no_such_call_berth'), deny(EPERM), 'with every capability too');
});

test('RuntimeDefault denies io_uring, the keyring, mounts, namespaces and kernel-wide calls without the capabilities', (t) => {
  const denied: [string, number[]?][] = [
    ['io_uring_setup'], ['io_uring_enter'], ['io_uring_register'], ['keyctl'], ['add_key'], ['request_key'],
    ['mount'], ['umount2'], ['mount_setattr'], ['move_mount'], ['open_tree'], ['fsopen'], ['fsmount'], ['pivot_root'],
    ['setns'], ['unshare', [CLONE_NEWUSER]], ['unshare', [0]], ['clone', [CLONE_NEWUSER | SIGCHLD]],
    ['clone', [CLONE_NEWNET | FORK_FLAGS]], ['clone', [CLONE_NEWNS]], ['sethostname'], ['setdomainname'], ['bpf'],
    ['perf_event_open'], ['fanotify_init'], ['kexec_load'], ['kexec_file_load'], ['init_module'], ['finit_module'],
    ['delete_module'], ['reboot'], ['swapon'], ['swapoff'], ['acct'], ['settimeofday'], ['clock_settime'], ['stime'],
    ['iopl'], ['ioperm'], ['vhangup'], ['syslog'], ['kcmp'], ['pidfd_getfd'], ['process_madvise'], ['mbind'],
    ['set_mempolicy'], ['get_mempolicy'], ['move_pages'], ['open_by_handle_at'], ['userfaultfd'], ['quotactl'],
    ['lookup_dcookie'], ['uselib'], ['ustat'], ['sysfs'], ['_sysctl'], ['nfsservctl'], ['vm86'],
    ['socket', [AF_VSOCK]], ['socket', [AF_ALG]], ['personality', [0x0040000]], ['personality', [0x0400000]],
  ];
  for (const [name, args] of denied) {
    t.deepEqual(evaluate(defaultProfile, name, args), deny(EPERM), `${name}(${(args ?? []).join(', ')})`);
  }
  // The namespace flag CLONE_NEWTIME shares its bit with the exit signal in clone(2): it is not a flag there.
  t.is(evaluate(defaultProfile, 'clone', [CLONE_NEWTIME | FORK_FLAGS]), 'allow');
});

test('clone3 answers ENOSYS without CAP_SYS_ADMIN, so that libc falls back to clone', (t) => {
  t.deepEqual(evaluate(defaultProfile, 'clone3'), deny(ENOSYS));
  t.is(evaluate(allCaps, 'clone3'), 'allow');
});

test('io_uring stays denied whatever the capabilities; no rule names it', (t) => {
  for (const name of ['io_uring_setup', 'io_uring_enter', 'io_uring_register']) {
    t.deepEqual(evaluate(allCaps, name), deny(EPERM), name);
    t.false(DEFAULT_PROFILE.rules.some((r) => r.names.includes(name)), name);
  }
  for (const name of ['keyctl', 'add_key', 'request_key']) t.deepEqual(evaluate(allCaps, name), deny(EPERM), name);
});

test('the capability-conditional rules flip when the capability is granted, one capability at a time', (t) => {
  const byCap: Record<string, [string, number[]?][]> = {
    CAP_SYS_ADMIN: [['mount'], ['umount2'], ['mount_setattr'], ['unshare', [CLONE_NEWUSER]], ['setns'], ['sethostname'],
      ['clone', [CLONE_NEWUSER | SIGCHLD]], ['clone3'], ['bpf'], ['perf_event_open'], ['fanotify_init'], ['syslog'], ['quotactl']],
    CAP_SYS_TIME: [['settimeofday'], ['clock_settime']],
    CAP_SYS_BOOT: [['reboot']],
    CAP_SYS_MODULE: [['init_module'], ['finit_module'], ['delete_module']],
    CAP_SYS_PACCT: [['acct']],
    CAP_SYS_PTRACE: [['kcmp'], ['pidfd_getfd'], ['process_madvise']],
    CAP_SYS_RAWIO: [['iopl'], ['ioperm']],
    CAP_SYS_TTY_CONFIG: [['vhangup']],
    CAP_SYS_NICE: [['mbind'], ['set_mempolicy'], ['get_mempolicy']],
    CAP_SYSLOG: [['syslog']],
    CAP_BPF: [['bpf']],
    CAP_PERFMON: [['perf_event_open']],
    CAP_DAC_READ_SEARCH: [['open_by_handle_at']],
  };
  for (const [cap, calls] of Object.entries(byCap)) {
    const without = runtimeDefaultProfile(DEFAULT_CAPABILITIES.filter((c) => c !== cap), 'x64');
    const granted = runtimeDefaultProfile([...DEFAULT_CAPABILITIES, cap], 'x64');
    for (const [name, args] of calls) {
      t.not(evaluate(without, name, args), 'allow', `${name} without ${cap}`);
      t.is(evaluate(granted, name, args), 'allow', `${name} with ${cap}`);
    }
  }
  // CAP_SYS_CHROOT is in the default set: chroot works, and stops working when it is dropped
  t.is(evaluate(defaultProfile, 'chroot'), 'allow');
  t.deepEqual(evaluate(runtimeDefaultProfile(DEFAULT_CAPABILITIES.filter((c) => c !== 'CAP_SYS_CHROOT'), 'x64'), 'chroot'), deny(EPERM));
  // A capability does not open what belongs to another: CAP_SYS_TIME does not allow mount
  t.deepEqual(evaluate(runtimeDefaultProfile([...DEFAULT_CAPABILITIES, 'CAP_SYS_TIME'], 'x64'), 'mount'), deny(EPERM));
});

test('with every capability the userland calls are still allowed and no two rules disagree', (t) => {
  for (const [name, args] of USERLAND) t.is(evaluate(allCaps, name, args), 'allow', name);
  for (const name of new Set(allCaps.syscalls.flatMap((r) => r.names))) t.notThrows(() => evaluate(allCaps, name, [0]));
});

test('x86_64-only rules are left out elsewhere; the profile is fresh data each time', (t) => {
  const arm = runtimeDefaultProfile(DEFAULT_CAPABILITIES, 'arm64');
  t.deepEqual(evaluate(arm, 'arch_prctl'), deny(EPERM));
  t.deepEqual(evaluate(arm, 'modify_ldt'), deny(EPERM));
  t.is(arm.architectures, undefined, 'the shim then filters the native architecture only');
  defaultProfile.syscalls[0]!.names.push('keyctl');
  t.deepEqual(evaluate(runtimeDefaultProfile(DEFAULT_CAPABILITIES, 'x64'), 'keyctl'), deny(EPERM), 'callers cannot change the data');
  defaultProfile.syscalls[0]!.names.pop();
});
