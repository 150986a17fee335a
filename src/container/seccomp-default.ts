import type { SeccompArg } from './seccomp.js';

// The RuntimeDefault seccomp profile, as data.
//
// Origin: the default profile of Docker and containerd, github.com/moby/profiles/seccomp v0.2.3 (default_linux.go
// and default.json, read as vendored in moby/moby at commit b985e2313a8676e18072b442911fc8f64f17d440, 2026-08).
// Written here in berth's own form, not copied: the same facts, grouped by what the calls are for.
//
// What was resolved while writing it down:
// - Kernel conditions: moby allows ptrace, process_vm_readv and process_vm_writev only from kernel 4.8 on. berth
//   needs cgroup2, pidfds and openat2 (kernel 5.6+), so those three are simply on the allowlist.
// - Architectures: only x86_64's own rules are kept (arch_prctl, modify_ldt; clone's flags in argument 0). The
//   rules moby has for ppc64le, arm, s390 and riscv64 are left out; `arches` below is the place to add them.
// - Names this libseccomp does not know (calls newer than it) are skipped by the shim, as runc skips them; such
//   calls then answer ENOSYS when their number is above the highest the filter names (see native/README.md).
// - io_uring_setup, io_uring_enter and io_uring_register are not allowed (moby took them off the list in 2023):
//   like keyctl, add_key and request_key they fall to the default action, EPERM.

/** One rule, with the conditions under which the container gets it. */
export interface DefaultProfileRule {
  names: readonly string[];
  action: 'SCMP_ACT_ALLOW' | 'SCMP_ACT_ERRNO';
  errnoRet?: number;
  /** AND-ed; several rules for one call are OR-ed. */
  args?: readonly SeccompArg[];
  /** Only for containers holding every one of these capabilities (in their bounding set). */
  whenCaps?: readonly string[];
  /** Only for containers holding none of these capabilities. */
  unlessCaps?: readonly string[];
  /** Only on these machines (Node's process.arch names). */
  arches?: readonly string[];
}

export interface DefaultProfileData {
  origin: string;
  defaultAction: 'SCMP_ACT_ERRNO';
  defaultErrnoRet: number;
  /** Native architecture (process.arch) -> the OCI architectures the filter covers (native first). */
  architectures: Readonly<Record<string, readonly string[]>>;
  rules: readonly DefaultProfileRule[];
}

const EPERM = 1;
const ENOSYS = 38;
const AF_ALG = 38;
const AF_VSOCK = 40;
// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
const CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;
// personality(2) values a container may ask for: PER_LINUX, PER_LINUX32 (0x8), UNAME26 (0x20000),
// PER_LINUX32|UNAME26, and 0xffffffff (the query: "what is it now?").
const PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

const files = [
  'access', 'chdir', 'chmod', 'chown', 'chown32', 'close', 'close_range', 'copy_file_range', 'creat', 'dup', 'dup2', 'dup3',
  'faccessat', 'faccessat2', 'fadvise64', 'fadvise64_64', 'fallocate', 'fchdir', 'fchmod', 'fchmodat', 'fchmodat2', 'fchown',
  'fchown32', 'fchownat', 'fcntl', 'fcntl64', 'fdatasync', 'flock', 'fstat', 'fstat64', 'fstatat64', 'fstatfs', 'fstatfs64',
  'fsync', 'ftruncate', 'ftruncate64', 'futimesat', 'getcwd', 'getdents', 'getdents64', 'lchown', 'lchown32', 'link', 'linkat',
  '_llseek', 'lseek', 'lstat', 'lstat64', 'mkdir', 'mkdirat', 'mknod', 'mknodat', 'name_to_handle_at', 'newfstatat', 'open',
  'openat', 'openat2', 'pread64', 'preadv', 'preadv2', 'pwrite64', 'pwritev', 'pwritev2', 'read', 'readahead', 'readlink',
  'readlinkat', 'readv', 'rename', 'renameat', 'renameat2', 'rmdir', 'sendfile', 'sendfile64', 'splice', 'stat', 'stat64',
  'statfs', 'statfs64', 'statx', 'symlink', 'symlinkat', 'sync', 'sync_file_range', 'syncfs', 'tee', 'truncate', 'truncate64',
  'umask', 'unlink', 'unlinkat', 'utime', 'utimensat', 'utimensat_time64', 'utimes', 'vmsplice', 'write', 'writev',
  // mount information for the caller's own namespace (kernel 6.8)
  'listmount', 'statmount',
];

const extendedAttributes = [
  'fgetxattr', 'flistxattr', 'fremovexattr', 'fsetxattr', 'getxattr', 'getxattrat', 'lgetxattr', 'listxattr', 'listxattrat',
  'llistxattr', 'lremovexattr', 'lsetxattr', 'removexattr', 'removexattrat', 'setxattr', 'setxattrat',
];

const fileEvents = [
  'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old', 'epoll_pwait', 'epoll_pwait2', 'epoll_wait', 'epoll_wait_old',
  'eventfd', 'eventfd2', 'fanotify_mark', 'inotify_add_watch', 'inotify_init', 'inotify_init1', 'inotify_rm_watch',
  '_newselect', 'pipe', 'pipe2', 'poll', 'ppoll', 'ppoll_time64', 'pselect6', 'pselect6_time64', 'select', 'ioctl',
];

// Linux AIO (io_uring is deliberately not here)
const asyncIo = ['io_cancel', 'io_destroy', 'io_getevents', 'io_pgetevents', 'io_pgetevents_time64', 'io_setup', 'io_submit'];

const memory = [
  'brk', 'cachestat', 'madvise', 'map_shadow_stack', 'membarrier', 'memfd_create', 'memfd_secret', 'mincore', 'mlock', 'mlock2',
  'mlockall', 'mmap', 'mmap2', 'mprotect', 'mremap', 'mseal', 'msync', 'munlock', 'munlockall', 'munmap', 'pkey_alloc',
  'pkey_free', 'pkey_mprotect', 'remap_file_pages',
];

const processes = [
  'capget', 'capset', 'execve', 'execveat', 'exit', 'exit_group', 'fork', 'vfork', 'wait4', 'waitid', 'waitpid', 'getcpu',
  'getpgid', 'getpgrp', 'getpid', 'getppid', 'getpriority', 'setpriority', 'getrlimit', 'ugetrlimit', 'setrlimit', 'prlimit64',
  'getrusage', 'getsid', 'setsid', 'setpgid', 'gettid', 'get_robust_list', 'set_robust_list', 'get_thread_area',
  'set_thread_area', 'set_tid_address', 'ioprio_get', 'ioprio_set', 'pidfd_open', 'process_mrelease', 'prctl', 'rseq',
  'restart_syscall', 'seccomp', 'landlock_add_rule', 'landlock_create_ruleset', 'landlock_restrict_self',
  'uretprobe', 'riscv_hwprobe',
  // moby: from kernel 4.8 on (earlier kernels let them bypass seccomp)
  'ptrace', 'process_vm_readv', 'process_vm_writev',
];

const credentials = [
  'getegid', 'getegid32', 'geteuid', 'geteuid32', 'getgid', 'getgid32', 'getgroups', 'getgroups32', 'getresgid', 'getresgid32',
  'getresuid', 'getresuid32', 'getuid', 'getuid32', 'setfsgid', 'setfsgid32', 'setfsuid', 'setfsuid32', 'setgid', 'setgid32',
  'setgroups', 'setgroups32', 'setregid', 'setregid32', 'setresgid', 'setresgid32', 'setresuid', 'setresuid32', 'setreuid',
  'setreuid32', 'setuid', 'setuid32',
];

const scheduling = [
  'sched_getaffinity', 'sched_getattr', 'sched_getparam', 'sched_get_priority_max', 'sched_get_priority_min',
  'sched_getscheduler', 'sched_rr_get_interval', 'sched_rr_get_interval_time64', 'sched_setaffinity', 'sched_setattr',
  'sched_setparam', 'sched_setscheduler', 'sched_yield',
];

const synchronisation = ['futex', 'futex_requeue', 'futex_time64', 'futex_wait', 'futex_waitv', 'futex_wake'];

const signals = [
  'kill', 'pause', 'pidfd_send_signal', 'rt_sigaction', 'rt_sigpending', 'rt_sigprocmask', 'rt_sigqueueinfo', 'rt_sigreturn',
  'rt_sigsuspend', 'rt_sigtimedwait', 'rt_sigtimedwait_time64', 'rt_tgsigqueueinfo', 'sigaltstack', 'signalfd', 'signalfd4',
  'sigprocmask', 'sigreturn', 'tgkill', 'tkill',
];

// Reading clocks and timers; setting the system clock is CAP_SYS_TIME's (adjtimex/clock_adjtime only read without it).
const time = [
  'adjtimex', 'alarm', 'clock_adjtime', 'clock_adjtime64', 'clock_getres', 'clock_getres_time64', 'clock_gettime',
  'clock_gettime64', 'clock_nanosleep', 'clock_nanosleep_time64', 'getitimer', 'setitimer', 'gettimeofday', 'nanosleep',
  'time', 'times', 'timer_create', 'timer_delete', 'timer_getoverrun', 'timer_gettime', 'timer_gettime64', 'timer_settime',
  'timer_settime64', 'timerfd_create', 'timerfd_gettime', 'timerfd_gettime64', 'timerfd_settime', 'timerfd_settime64',
];

// socket(2) itself is below, filtered by address family.
const network = [
  'accept', 'accept4', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'setsockopt', 'listen', 'recv',
  'recvfrom', 'recvmmsg', 'recvmmsg_time64', 'recvmsg', 'send', 'sendmmsg', 'sendmsg', 'sendto', 'shutdown', 'socketpair',
  'socketcall',
];

// System V and POSIX IPC (within the pod's IPC namespace)
const ipc = [
  'ipc', 'mq_getsetattr', 'mq_notify', 'mq_open', 'mq_timedreceive', 'mq_timedreceive_time64', 'mq_timedsend',
  'mq_timedsend_time64', 'mq_unlink', 'msgctl', 'msgget', 'msgrcv', 'msgsnd', 'semctl', 'semget', 'semop', 'semtimedop',
  'semtimedop_time64', 'shmat', 'shmctl', 'shmdt', 'shmget',
];

const systemInformation = ['getrandom', 'sysinfo', 'uname'];

const allow = (names: readonly string[], extra: Omit<DefaultProfileRule, 'names' | 'action'> = {}): DefaultProfileRule =>
  ({ names, action: 'SCMP_ACT_ALLOW', ...extra });

export const DEFAULT_PROFILE: DefaultProfileData = {
  origin: 'github.com/moby/profiles/seccomp v0.2.3 (Docker and containerd default profile)',
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: EPERM,
  architectures: {
    x64: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
  },
  rules: [
    allow([
      ...files, ...extendedAttributes, ...fileEvents, ...asyncIo, ...memory, ...processes, ...credentials, ...scheduling,
      ...synchronisation, ...signals, ...time, ...network, ...ipc, ...systemInformation,
    ]),

    // Every address family but AF_ALG (kernel crypto) and AF_VSOCK (the host's hypervisor sockets).
    allow(['socket'], { args: [{ index: 0, value: AF_ALG, op: 'SCMP_CMP_LT' }] }),
    allow(['socket'], { args: [{ index: 0, value: AF_ALG + 1, op: 'SCMP_CMP_EQ' }] }),
    allow(['socket'], { args: [{ index: 0, value: AF_VSOCK, op: 'SCMP_CMP_GT' }] }),

    ...PERSONALITIES.map((value) => allow(['personality'], { args: [{ index: 0, value, op: 'SCMP_CMP_EQ' }] })),

    allow(['arch_prctl'], { arches: ['x64'] }),
    allow(['modify_ldt'], { arches: ['x64', 'ia32'] }),

    // Namespaces, mounts and the like: CAP_SYS_ADMIN's. Without it clone may not make namespaces, and clone3
    // (whose flags sit in memory, out of a filter's reach) answers ENOSYS so that libc falls back to clone.
    allow([
      'bpf', 'clone', 'clone3', 'fanotify_init', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'lookup_dcookie',
      'lsm_get_self_attr', 'lsm_list_modules', 'lsm_set_self_attr', 'mount', 'mount_setattr', 'move_mount', 'open_tree',
      'perf_event_open', 'quotactl', 'quotactl_fd', 'setdomainname', 'sethostname', 'setns', 'syslog', 'umount', 'umount2',
      'unshare',
    ], { whenCaps: ['CAP_SYS_ADMIN'] }),
    allow(['clone'], {
      unlessCaps: ['CAP_SYS_ADMIN'],
      args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
    }),
    { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS, unlessCaps: ['CAP_SYS_ADMIN'] },

    allow(['open_by_handle_at'], { whenCaps: ['CAP_DAC_READ_SEARCH'] }),
    allow(['reboot'], { whenCaps: ['CAP_SYS_BOOT'] }),
    allow(['chroot'], { whenCaps: ['CAP_SYS_CHROOT'] }),
    allow(['delete_module', 'init_module', 'finit_module'], { whenCaps: ['CAP_SYS_MODULE'] }),
    allow(['acct'], { whenCaps: ['CAP_SYS_PACCT'] }),
    allow(['kcmp', 'pidfd_getfd', 'process_madvise', 'process_vm_readv', 'process_vm_writev', 'ptrace'], { whenCaps: ['CAP_SYS_PTRACE'] }),
    allow(['iopl', 'ioperm'], { whenCaps: ['CAP_SYS_RAWIO'] }),
    allow(['settimeofday', 'stime', 'clock_settime', 'clock_settime64'], { whenCaps: ['CAP_SYS_TIME'] }),
    allow(['vhangup'], { whenCaps: ['CAP_SYS_TTY_CONFIG'] }),
    allow(['get_mempolicy', 'mbind', 'set_mempolicy', 'set_mempolicy_home_node'], { whenCaps: ['CAP_SYS_NICE'] }),
    allow(['syslog'], { whenCaps: ['CAP_SYSLOG'] }),
    allow(['bpf'], { whenCaps: ['CAP_BPF'] }),
    allow(['perf_event_open'], { whenCaps: ['CAP_PERFMON'] }),
  ],
};
