/* berth-shim create <bundle>: fork the monitor, which forks the container init. */
#include "init.h"
#include "monitor.h"
#include "spec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* Monitor -> create: 'O' + JSON line on success, 'E' + message on failure. */

static void unlink_in(const char *dir, const char *name)
{
    char p[PATH_MAX];
    if (path_join(p, sizeof p, dir, name) == 0)
        unlink(p);
}

/* What the monitor made so far, undone by mon_fail: a failed create leaves no process and no file. */
static struct {
    const char *fifo[2]; /* start.fifo, stdin.fifo */
    const char *bundle;  /* set once shim.json is written */
    pid_t init;
} made;

__attribute__((noreturn)) static void mon_fail(int report_fd, const char *step, const char *path, int err)
{
    char msg[1200];
    msg[0] = 'E';
    fmt_err(msg + 1, sizeof msg - 1, step, path, err);
    if (made.init > 0)
        kill_reap(made.init);
    if (made.bundle)
        unlink_in(made.bundle, "shim.json");
    for (int i = 0; i < 2; i++)
        if (made.fifo[i])
            unlink(made.fifo[i]);
    write_all(report_fd, msg, strlen(msg));
    _exit(1);
}

static int make_fifo(const char *bundle, const char *name, char *path, size_t len)
{
    if (path_join(path, len, bundle, name) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    unlink(path);
    return mkfifo(path, 0600);
}

/* Setup-time buffers live on the heap (given back before the loop), not in a stack frame that
 * stays live, and resident, for the monitor's whole life. */
struct setup_bufs {
    char fifo[PATH_MAX], stdin_fifo[PATH_MAX], msg[1400], line[200], ok[210], pty_path[32];
};

/* The container's new user namespace: a helper child unshares it and waits while the monitor (host root)
 * writes its uid_map and gid_map (setgroups stays "allow": a privileged writer needs no "deny", and the
 * container may then call setgroups) and keeps an fd of it; then the helper is gone. The init does its
 * setup with the host's privileges (it joins the pod's namespaces, mounts, id-maps layers and volumes to
 * this namespace) and enters it last, before the uid change. Returns the fd (O_CLOEXEC). */
static int make_userns(struct spec *s, int report_fd)
{
    int p[2], e = 0;
    char path[64];
    if (pipe2(p, O_CLOEXEC) < 0)
        mon_fail(report_fd, "monitor: pipe", NULL, errno);
    pid_t h = fork();
    if (h < 0)
        mon_fail(report_fd, "fork user namespace helper", NULL, errno);
    if (h == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        e = unshare(CLONE_NEWUSER) < 0 ? errno : 0;
        if (write(p[1], &e, sizeof e) != sizeof e || e)
            _exit(1);
        for (;;)
            pause();
    }
    close(p[1]);
    if (read(p[0], &e, sizeof e) != sizeof e)
        e = EIO;
    close(p[0]);
    int fd = -1;
    const char *step = "unshare user namespace";
    size_t cap = 40 * (s->nuidmap > s->ngidmap ? s->nuidmap : s->ngidmap) + 1;
    char *buf = malloc(cap);
    if (!e && !buf)
        e = ENOMEM;
    for (int k = 0; k < 2 && !e; k++) {
        snprintf(path, sizeof path, "/proc/%d/%s", (int)h, k ? "gid_map" : "uid_map");
        step = k ? "write gid_map" : "write uid_map";
        if (format_idmap(k ? s->gidmap : s->uidmap, k ? s->ngidmap : s->nuidmap, buf, cap) < 0)
            e = EINVAL;
        else
            e = -write_file(path, buf);
    }
    if (!e) {
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int)h);
        step = "open user namespace";
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            e = errno;
    }
    free(buf);
    kill_reap(h);
    if (e)
        mon_fail(report_fd, step, NULL, e);
    return fd;
}

/* The OOM counter of the first memory cgroup the container joins (v2 memory.events, v1 memory.oom_control). */
static const char *oom_file(const struct spec *s, char *buf, size_t len)
{
    if (!buf)
        return NULL;
    for (size_t i = 0; i < s->ncgroup_procs; i++) {
        const char *procs = s->cgroup_procs[i];
        const char *slash = strrchr(procs, '/');
        if (!slash)
            continue;
        static const char *const names[] = {"memory.events", "memory.oom_control"};
        for (int k = 0; k < 2; k++) {
            snprintf(buf, len, "%.*s/%s", (int)(slash - procs), procs, names[k]);
            if (access(buf, R_OK) == 0)
                return buf;
        }
    }
    return NULL;
}

__attribute__((noreturn)) static void monitor_main(struct spec *s, int report_fd)
{
    struct child_ctx c;
    int outp[2] = {-1, -1}, errp[2] = {-1, -1}, syncp[2];
    int child_stdin = -1, slave = -1;
    struct setup_bufs *b = malloc(sizeof *b);
    struct monitor *mp = monitor_alloc(s->bundle, s->log_path, oom_file(s, b->fifo, sizeof b->fifo));

    if (!b || !mp)
        mon_fail(report_fd, "monitor: allocate", NULL, ENOMEM);
    mp->stdin_hold = mp->stdin_src = mp->pty_master = -1;
    memcpy(mp->out.name, "stdout", 7);
    memcpy(mp->err.name, "stderr", 7);
    mp->max_line = s->max_line;

    if (setsid() < 0)
        mon_fail(report_fd, "monitor: setsid", NULL, errno);
    /* the monitor lives as long as the container: it must not hold the caller's directory (its mount) */
    if (chdir("/") < 0)
        mon_fail(report_fd, "monitor: chdir", "/", errno);
    int r = detach_stdio(&report_fd, 1);
    if (r < 0)
        mon_fail(report_fd, "monitor: open /dev/null", NULL, -r);
    signal(SIGPIPE, SIG_IGN); /* a write to a dead create fails with EPIPE */

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    mp->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (mp->sig_fd < 0)
        mon_fail(report_fd, "monitor: signalfd", NULL, errno);

    /* leftovers of an earlier run of this bundle would be taken for this one's */
    unlink_in(s->bundle, "exit.json");
    unlink_in(s->bundle, "exec-error");
    if (make_fifo(s->bundle, "start.fifo", b->fifo, sizeof b->fifo) < 0)
        mon_fail(report_fd, "mkfifo", b->fifo, errno);
    made.fifo[0] = b->fifo;
    if (monitor_open_log(mp, s->log_dir) < 0)
        mon_fail(report_fd, s->log_dir ? "open log beneath the log directory (no symlinks)" : "open log", s->log_path, errno);

    if (s->terminal) {
        int unlock = 0;
        unsigned ptn = 0;
        /* the devpts instance at /dev/pts itself, so that /dev/pts/N names the slave */
        mp->pty_master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
        if (mp->pty_master < 0)
            mp->pty_master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
        if (mp->pty_master < 0 || ioctl(mp->pty_master, TIOCSPTLCK, &unlock) < 0 ||
            ioctl(mp->pty_master, TIOCGPTN, &ptn) < 0)
            mon_fail(report_fd, "open pty master", "/dev/pts/ptmx", errno);
        snprintf(b->pty_path, sizeof b->pty_path, "/dev/pts/%u", ptn);
        slave = ioctl(mp->pty_master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0)
            mon_fail(report_fd, "open pty slave", NULL, errno);
        struct winsize ws = {24, 80, 0, 0};
        ioctl(slave, TIOCSWINSZ, &ws);
        mp->out.fd = fcntl(mp->pty_master, F_DUPFD_CLOEXEC, 0);
        if (mp->out.fd < 0)
            mon_fail(report_fd, "monitor: dup pty master", NULL, errno);
        mp->err.fd = -1;
    } else {
        if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
            mon_fail(report_fd, "monitor: pipe", NULL, errno);
        mp->out.fd = outp[0];
        mp->err.fd = errp[0];
    }
    if (s->stdin_open) {
        if (make_fifo(s->bundle, "stdin.fifo", b->stdin_fifo, sizeof b->stdin_fifo) < 0)
            mon_fail(report_fd, "mkfifo", b->stdin_fifo, errno);
        made.fifo[1] = b->stdin_fifo;
        /* O_RDWR never blocks and keeps a writer, so the container sees no EOF until SIGUSR2 */
        int hold = open(b->stdin_fifo, O_RDWR | O_CLOEXEC);
        if (hold < 0)
            mon_fail(report_fd, "open", b->stdin_fifo, errno);
        if (s->terminal) {
            mp->stdin_src = hold;
            fcntl(hold, F_SETFL, O_NONBLOCK);
        } else {
            mp->stdin_hold = hold;
            child_stdin = open(b->stdin_fifo, O_RDONLY | O_CLOEXEC);
            if (child_stdin < 0)
                mon_fail(report_fd, "open", b->stdin_fifo, errno);
        }
    }
    if (pipe2(syncp, O_CLOEXEC) < 0)
        mon_fail(report_fd, "monitor: pipe", NULL, errno);
    /* before the pid namespace: the helper would be its pid 1 */
    int userns = s->ns_new[NS_USER] ? make_userns(s, report_fd) : -1;

    if (s->ns_path[NS_PID]) {
        int fd = open(s->ns_path[NS_PID], O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWPID) < 0)
            mon_fail(report_fd, "join pid namespace", s->ns_path[NS_PID], errno);
        close(fd);
    } else if (s->ns_new[NS_PID] && unshare(CLONE_NEWPID) < 0) {
        mon_fail(report_fd, "unshare pid namespace", NULL, errno);
    }

    pid_t pid = fork();
    if (pid < 0)
        mon_fail(report_fd, "fork container", NULL, errno);
    if (pid == 0) {
        close(report_fd);
        close(syncp[0]);
        c.s = s;
        c.sync_fd = syncp[1];
        c.stdin_fd = child_stdin;
        c.stdout_fd = outp[1];
        c.stderr_fd = errp[1];
        c.pty_slave_fd = slave;
        c.pty_path = b->pty_path;
        c.start_fifo = b->fifo;
        c.userns_fd = userns;
        container_main(&c);
    }
    mp->pid = made.init = pid;
    if (userns >= 0)
        close(userns);
    close(syncp[1]);
    if (outp[1] >= 0)
        close(outp[1]);
    if (errp[1] >= 0)
        close(errp[1]);
    if (child_stdin >= 0)
        close(child_stdin);
    if (slave >= 0)
        close(slave);
    mp->sync_fd = syncp[0];
    mp->pidfd = (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec */
    if (mp->pidfd < 0)
        mon_fail(report_fd, "pidfd_open", NULL, errno);

    char *line = b->line;
    int n = snprintf(line, sizeof b->line, "{\"pid\":%d,\"monitorPid\":%d,\"startTime\":%lld,\"monitorStartTime\":%lld}",
                     (int)pid, (int)getpid(), proc_start_time(pid), proc_start_time(getpid()));
    if (n < 0 || (size_t)n >= sizeof b->line)
        n = (int)strlen(line);
    /* For a berth restart, not a host crash (the monitor dies with the host): no fsync. */
    r = replace_file(s->bundle, "shim.json", line, (size_t)n);
    if (r < 0)
        mon_fail(report_fd, "write shim.json in", s->bundle, -r);
    made.bundle = s->bundle;

    /* Wait for the init: 'R' = blocked on start.fifo; 'E...' + EOF = setup failed. One byte only: what
     * follows 'R' ('S', 'X') is the loop's to read. */
    char *msg = b->msg;
    ssize_t k;
    while ((k = read(mp->sync_fd, msg, 1)) < 0 && errno == EINTR)
        ;
    if (k != 1 || msg[0] != SYNC_READY) {
        size_t got = k == 1 ? 1 : 0;
        while (k == 1 && got < sizeof b->msg - 1) { /* the message, up to EOF */
            ssize_t more = read(mp->sync_fd, msg + got, sizeof b->msg - 1 - got);
            if (more < 0 && errno == EINTR)
                continue;
            if (more <= 0)
                break;
            got += (size_t)more;
        }
        msg[got] = 0;
        int status = kill_reap(pid);
        made.init = 0;
        if (got > 1 && msg[0] == SYNC_ERROR)
            mon_fail(report_fd, msg + 1, NULL, 0);
        char what[64];
        snprintf(what, sizeof what, "(wait status 0x%x)", status);
        mon_fail(report_fd, "container init exited during setup", what, 0);
    }

    /* Report and detach from the create process. If create is gone (killed at berth's timeout: EPIPE),
     * nobody knows of this container: take it down. */
    char *ok = b->ok;
    ok[0] = 'O';
    memcpy(ok + 1, line, (size_t)n);
    if (write_all(report_fd, ok, (size_t)n + 1) < 0)
        mon_fail(report_fd, "monitor: report to create", NULL, errno);
    close(report_fd);

    /* Give back everything the setup needed: the monitor lives as long as the container. */
    char *bundle_copy = (char *)s->bundle; /* realpath() result */
    spec_free(s);
    free(bundle_copy);
    free(b);
    fcntl(mp->sync_fd, F_SETFL, O_NONBLOCK);
    monitor_run(mp);
}

static int create_wait(pid_t mon, int fd, const char *bundle)
{
    char msg[1400];
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fd, msg + got, sizeof msg - 1 - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
        if (got >= sizeof msg - 1)
            break;
    }
    msg[got] = 0;
    if (got > 1 && msg[0] == 'O') {
        printf("%s\n", msg + 1);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    int status = 0;
    while (waitpid(mon, &status, 0) < 0 && errno == EINTR)
        ;
    if (got > 1 && msg[0] == 'E')
        fprintf(stderr, SHIM_NAME ": create %s: %s\n", bundle, msg + 1);
    else
        fprintf(stderr, SHIM_NAME ": create %s: monitor died during setup (wait status 0x%x)\n", bundle, status);
    return 1;
}

__attribute__((noinline)) static int load(const char *arg, char **bundle, struct spec *s)
{
    char err[1200];
    *bundle = realpath(arg, NULL);
    if (!*bundle) {
        warn_err("create: bundle", arg, errno);
        return -1;
    }
    if (spec_load(*bundle, s, err, sizeof err) < 0) {
        fprintf(stderr, SHIM_NAME ": create: %s\n", err);
        return -1;
    }
    return 0;
}

int cmd_create(int argc, char **argv)
{
    char *bundle;
    struct spec s;
    int rep[2];

    if (argc != 2) {
        fprintf(stderr, "usage: " SHIM_NAME " create <bundle-dir>\n");
        return 2;
    }
    if (load(argv[1], &bundle, &s) < 0)
        return 1;
    /* While the cgroups are still empty: the init joins them first thing, so nothing of the container's
     * own ever runs without the policy. */
    if (s.device_rules) {
        char err[1200];
        if (devices_apply(s.cgroup_procs, s.ncgroup_procs, s.device_rules, s.ndevice_rules, err, sizeof err) < 0) {
            fprintf(stderr, SHIM_NAME ": create %s: %s\n", bundle, err);
            spec_free(&s);
            return 1;
        }
    }
    if (pipe2(rep, O_CLOEXEC) < 0) {
        warn_err("create: pipe", NULL, errno);
        return 1;
    }
    fflush(NULL);
    pid_t mon = fork();
    if (mon < 0) {
        warn_err("create: fork monitor", NULL, errno);
        return 1;
    }
    if (mon == 0) {
        close(rep[0]);
        monitor_main(&s, rep[1]);
    }
    close(rep[1]);
    spec_free(&s);
    return create_wait(mon, rep[0], bundle);
}
