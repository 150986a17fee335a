/* The monitor's setup, from its fork by create to its loop (monitor.c): one function per step, one cleanup
 * list. This code runs once and may use libc freely; the loop's own rules (see rawsys.h) do not apply here,
 * and its pages are dropped (shrink_resident) before the loop starts. */
#include "init.h"
#include "monitor.h"
#include "spec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* Everything the setup holds. On the heap (given back before the loop), not in a stack frame that stays
 * live, and resident, for the monitor's whole life. */
struct monitor_setup {
    struct spec *s;
    int report_fd;           /* to create: 'O' + JSON line on success, 'E' + message on failure */
    struct monitor *m;       /* what the loop keeps */
    struct cleanup_list undo; /* a failed create leaves no process and no file */
    pid_t init;
    int out_w, err_w;        /* the init's ends of the output pipes, or -1 */
    int init_stdin, pty_slave, sync_w, userns;
    char start_fifo[PATH_MAX], stdin_fifo[PATH_MAX], attach_path[PATH_MAX], msg[1400], line[200], ok[210], pty_path[32];
};

__attribute__((noreturn)) static void report_failure(int report_fd, struct cleanup_list *undo, const char *step,
                                                     const char *path, int err)
{
    char msg[1200];
    msg[0] = 'E';
    fmt_err(msg + 1, sizeof msg - 1, step, path, err);
    if (undo)
        cleanup_run(undo, msg + 1, sizeof msg - 1);
    write_all(report_fd, msg, strlen(msg));
    _exit(1);
}

__attribute__((noreturn)) static void setup_fail(struct monitor_setup *ms, const char *step, const char *path, int err)
{
    report_failure(ms->report_fd, &ms->undo, step, path, err);
}

static int unlink_path(void *ctx, const char *path)
{
    (void)ctx;
    return unlink(path) < 0 ? -errno : 0;
}

static int unlink_shim_json(void *ctx, const char *bundle)
{
    char p[PATH_MAX];
    (void)ctx;
    if (path_join(p, sizeof p, bundle, "shim.json") < 0)
        return -ENAMETOOLONG;
    return unlink(p) < 0 ? -errno : 0;
}

static int kill_init(void *ctx, const char *what)
{
    struct monitor_setup *ms = ctx;
    (void)what;
    if (ms->init > 0) /* 0: reaped already, for the message of a failed setup */
        kill_reap(ms->init);
    return 0;
}

static void unlink_in(const char *dir, const char *name)
{
    char p[PATH_MAX];
    if (path_join(p, sizeof p, dir, name) == 0)
        unlink(p);
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

/* One anonymous mapping holding the struct and copies of the paths it keeps, so that the heap used during
 * setup can be given back whole. */
static struct monitor *monitor_alloc(const char *bundle, const char *log_path, const char *oom_file)
{
    size_t bl = strlen(bundle) + 1, ll = strlen(log_path) + 1, ol = oom_file ? strlen(oom_file) + 1 : 0;
    char *p = mmap(NULL, sizeof(struct monitor) + bl + ll + ol, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    struct monitor *m = (struct monitor *)p;
    memset(m, 0, sizeof *m);
    m->bundle = p + sizeof *m;
    memcpy(m->bundle, bundle, bl);
    m->log_path = m->bundle + bl;
    memcpy(m->log_path, log_path, ll);
    if (oom_file) {
        m->oom_file = m->log_path + ll;
        memcpy(m->oom_file, oom_file, ol);
        m->oom_base = read_oom_kills(oom_file);
    }
    m->stdin_hold = m->stdin_src = m->pty_master = m->attach_fd = -1;
    for (int i = 0; i < ATTACH_MAX; i++)
        m->clients[i] = -1;
    memcpy(m->out.name, "stdout", 7);
    memcpy(m->err.name, "stderr", 7);
    m->out.attach_id = ATTACH_STDOUT;
    m->err.attach_id = ATTACH_STDERR;
    return m;
}

/* The OOM counter of the first memory cgroup the container joins (v2 memory.events, v1 memory.oom_control). */
static const char *oom_file(const struct spec *s, char *buf, size_t len)
{
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

static struct monitor_setup *setup_alloc(struct spec *s, int report_fd)
{
    struct monitor_setup *ms = malloc(sizeof *ms);
    if (!ms)
        report_failure(report_fd, NULL, "monitor: allocate", NULL, ENOMEM);
    memset(ms, 0, sizeof *ms);
    ms->s = s;
    ms->report_fd = report_fd;
    ms->out_w = ms->err_w = ms->init_stdin = ms->pty_slave = ms->sync_w = ms->userns = -1;
    cleanup_init(&ms->undo, ms);
    /* start_fifo is free until make_start_fifo: it holds the oom file's path meanwhile */
    ms->m = monitor_alloc(s->bundle, s->log_path, oom_file(s, ms->start_fifo, sizeof ms->start_fifo));
    if (!ms->m)
        setup_fail(ms, "monitor: allocate", NULL, ENOMEM);
    ms->m->max_line = s->max_line;
    return ms;
}

/* The monitor lives as long as the container: it holds nothing of the caller's (session, directory and so its
 * mount, stdio) but the report pipe. */
static void detach_from_caller(struct monitor_setup *ms)
{
    if (setsid() < 0)
        setup_fail(ms, "monitor: setsid", NULL, errno);
    if (chdir("/") < 0)
        setup_fail(ms, "monitor: chdir", "/", errno);
    int r = detach_stdio(&ms->report_fd, 1);
    if (r < 0)
        setup_fail(ms, "monitor: open /dev/null", NULL, -r);
    signal(SIGPIPE, SIG_IGN); /* a write to a dead create fails with EPIPE */
}

/* SIGUSR1 (reopen the log) and SIGUSR2 (close stdin) are read by the loop from a signalfd. */
static void watch_signals(struct monitor_setup *ms)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    ms->m->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (ms->m->sig_fd < 0)
        setup_fail(ms, "monitor: signalfd", NULL, errno);
}

static void make_start_fifo(struct monitor_setup *ms)
{
    const char *bundle = ms->s->bundle;
    /* leftovers of an earlier run of this bundle would be taken for this one's */
    unlink_in(bundle, "exit.json");
    unlink_in(bundle, "exec-error");
    if (make_fifo(bundle, "start.fifo", ms->start_fifo, sizeof ms->start_fifo) < 0)
        setup_fail(ms, "mkfifo", ms->start_fifo, errno);
    cleanup_push(&ms->undo, "remove", ms->start_fifo, unlink_path);
}

static void open_log(struct monitor_setup *ms)
{
    const struct spec *s = ms->s;
    if (monitor_open_log(ms->m, s->log_dir) < 0)
        setup_fail(ms, s->log_dir ? "open log beneath the log directory (no symlinks)" : "open log", s->log_path,
                   errno);
}

/* The container's output: a pty (one stream) or two pipes. */
static void open_output(struct monitor_setup *ms)
{
    struct monitor *m = ms->m;
    if (!ms->s->terminal) {
        int outp[2], errp[2];
        if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
            setup_fail(ms, "monitor: pipe", NULL, errno);
        m->out.fd = outp[0];
        m->err.fd = errp[0];
        ms->out_w = outp[1];
        ms->err_w = errp[1];
        return;
    }
    int unlock = 0;
    unsigned ptn = 0;
    /* the devpts instance at /dev/pts itself, so that /dev/pts/N names the slave */
    m->pty_master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (m->pty_master < 0)
        m->pty_master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (m->pty_master < 0 || ioctl(m->pty_master, TIOCSPTLCK, &unlock) < 0 || ioctl(m->pty_master, TIOCGPTN, &ptn) < 0)
        setup_fail(ms, "open pty master", "/dev/pts/ptmx", errno);
    snprintf(ms->pty_path, sizeof ms->pty_path, "/dev/pts/%u", ptn);
    ms->pty_slave = ioctl(m->pty_master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (ms->pty_slave < 0)
        setup_fail(ms, "open pty slave", NULL, errno);
    struct winsize ws = {24, 80, 0, 0};
    ioctl(ms->pty_slave, TIOCSWINSZ, &ws);
    m->out.fd = fcntl(m->pty_master, F_DUPFD_CLOEXEC, 0);
    if (m->out.fd < 0)
        setup_fail(ms, "monitor: dup pty master", NULL, errno);
    m->err.fd = -1;
}

static void open_stdin(struct monitor_setup *ms)
{
    if (!ms->s->stdin_open)
        return;
    if (make_fifo(ms->s->bundle, "stdin.fifo", ms->stdin_fifo, sizeof ms->stdin_fifo) < 0)
        setup_fail(ms, "mkfifo", ms->stdin_fifo, errno);
    cleanup_push(&ms->undo, "remove", ms->stdin_fifo, unlink_path);
    /* O_RDWR never blocks and keeps a writer, so the container sees no EOF until SIGUSR2 */
    int hold = open(ms->stdin_fifo, O_RDWR | O_CLOEXEC);
    if (hold < 0)
        setup_fail(ms, "open", ms->stdin_fifo, errno);
    if (ms->s->terminal) {
        ms->m->stdin_src = hold;
        fcntl(hold, F_SETFL, O_NONBLOCK);
        return;
    }
    ms->m->stdin_hold = hold;
    ms->init_stdin = open(ms->stdin_fifo, O_RDONLY | O_CLOEXEC);
    if (ms->init_stdin < 0)
        setup_fail(ms, "open", ms->stdin_fifo, errno);
}

/* attach.sock (0600): clients receive the container's output live, framed (monitor.h), and may resize its
 * terminal. Made before the init exists, so no output can pass before a client could connect. A bundle path too
 * long for sun_path is bound through /proc/self/fd/<dir>. */
static void open_attach_socket(struct monitor_setup *ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    const char *bundle = ms->s->bundle;
    char *path = ms->attach_path;
    int dirfd = -1;
    if (path_join(path, sizeof ms->attach_path, bundle, "attach.sock") < 0)
        setup_fail(ms, "attach socket", bundle, ENAMETOOLONG);
    unlink(path);
    if (strlen(path) < sizeof sa.sun_path) {
        memcpy(sa.sun_path, path, strlen(path) + 1);
    } else {
        dirfd = open(bundle, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0)
            setup_fail(ms, "open", bundle, errno);
        snprintf(sa.sun_path, sizeof sa.sun_path, "/proc/self/fd/%d/attach.sock", dirfd);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        setup_fail(ms, "attach socket", NULL, errno);
    mode_t old = umask(0177);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    umask(old);
    if (dirfd >= 0)
        close(dirfd);
    if (r < 0)
        setup_fail(ms, "bind", path, e);
    cleanup_push(&ms->undo, "remove", path, unlink_path);
    if (listen(fd, ATTACH_MAX) < 0)
        setup_fail(ms, "listen", path, errno);
    ms->m->attach_fd = fd;
}

/* The container's new user namespace: a helper child unshares it and waits while the monitor (host root)
 * writes its uid_map and gid_map (setgroups stays "allow": a privileged writer needs no "deny", and the
 * container may then call setgroups) and keeps an fd of it; then the helper is gone. The init does its
 * setup with the host's privileges (it joins the pod's namespaces, mounts, id-maps layers and volumes to
 * this namespace) and enters it last, before the uid change. Before the pid namespace: the helper would be
 * its pid 1. */
static void make_userns(struct monitor_setup *ms)
{
    const struct spec *s = ms->s;
    int p[2], e = 0;
    char path[64];
    if (!s->ns_new[NS_USER])
        return;
    if (pipe2(p, O_CLOEXEC) < 0)
        setup_fail(ms, "monitor: pipe", NULL, errno);
    pid_t h = fork();
    if (h < 0)
        setup_fail(ms, "fork user namespace helper", NULL, errno);
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
        ms->userns = open(path, O_RDONLY | O_CLOEXEC);
        if (ms->userns < 0)
            e = errno;
    }
    free(buf);
    kill_reap(h); /* the fd keeps the namespace */
    if (e)
        setup_fail(ms, step, NULL, e);
}

/* A new pid namespace is the monitor's to make (or join): the init forked next is its pid 1 (or lands in it). */
static void enter_pid_namespace(struct monitor_setup *ms)
{
    const struct spec *s = ms->s;
    if (s->ns_path[NS_PID]) {
        int fd = open(s->ns_path[NS_PID], O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWPID) < 0)
            setup_fail(ms, "join pid namespace", s->ns_path[NS_PID], errno);
        close(fd);
    } else if (s->ns_new[NS_PID] && unshare(CLONE_NEWPID) < 0) {
        setup_fail(ms, "unshare pid namespace", NULL, errno);
    }
}

/* The init's reports (init.h: ready, setup error, started, exec error) come on this pipe. */
static void open_sync_pipe(struct monitor_setup *ms)
{
    int syncp[2];
    if (pipe2(syncp, O_CLOEXEC) < 0)
        setup_fail(ms, "monitor: pipe", NULL, errno);
    ms->m->sync_fd = syncp[0];
    ms->sync_w = syncp[1];
}

static void fork_init(struct monitor_setup *ms)
{
    pid_t pid = fork();
    if (pid < 0)
        setup_fail(ms, "fork container", NULL, errno);
    if (pid == 0) {
        struct child_ctx c = {
            .s = ms->s,
            .sync_fd = ms->sync_w,
            .stdin_fd = ms->init_stdin,
            .stdout_fd = ms->out_w,
            .stderr_fd = ms->err_w,
            .pty_slave_fd = ms->pty_slave,
            .pty_path = ms->pty_path,
            .start_fifo = ms->start_fifo,
            .userns_fd = ms->userns,
        };
        close(ms->report_fd);
        close(ms->m->sync_fd);
        init_main(&c);
    }
    ms->m->pid = ms->init = pid;
    cleanup_push(&ms->undo, "kill and reap the container init", NULL, kill_init);
    /* the init's ends: the loop must see EOF when the container's processes are gone */
    const int init_ends[] = {ms->sync_w, ms->userns, ms->out_w, ms->err_w, ms->init_stdin, ms->pty_slave};
    for (size_t i = 0; i < sizeof init_ends / sizeof init_ends[0]; i++)
        if (init_ends[i] >= 0)
            close(init_ends[i]);
    ms->m->pidfd = (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec */
    if (ms->m->pidfd < 0)
        setup_fail(ms, "pidfd_open", NULL, errno);
}

/* shim.json: for a berth restart, not a host crash (the monitor dies with the host): no fsync. */
static void write_shim_json(struct monitor_setup *ms)
{
    pid_t pid = ms->init;
    int n = snprintf(ms->line, sizeof ms->line,
                     "{\"pid\":%d,\"monitorPid\":%d,\"startTime\":%lld,\"monitorStartTime\":%lld}", (int)pid,
                     (int)getpid(), proc_start_time(pid), proc_start_time(getpid()));
    if (n < 0 || (size_t)n >= sizeof ms->line)
        ms->line[sizeof ms->line - 1] = 0;
    int r = replace_file(ms->s->bundle, "shim.json", ms->line, strlen(ms->line));
    if (r < 0)
        setup_fail(ms, "write shim.json in", ms->s->bundle, -r);
    cleanup_push(&ms->undo, "remove shim.json in", ms->s->bundle, unlink_shim_json);
}

/* Wait for the init: 'R' = blocked on start.fifo; 'E...' + EOF = setup failed. One byte only: what follows 'R'
 * ('S', 'X') is the loop's to read. */
static void wait_init_ready(struct monitor_setup *ms)
{
    char *msg = ms->msg;
    int fd = ms->m->sync_fd;
    ssize_t k;
    while ((k = read(fd, msg, 1)) < 0 && errno == EINTR)
        ;
    if (k == 1 && msg[0] == SYNC_READY)
        return;
    size_t got = k == 1 ? 1 : 0;
    while (k == 1 && got < sizeof ms->msg - 1) { /* the message, up to EOF */
        ssize_t more = read(fd, msg + got, sizeof ms->msg - 1 - got);
        if (more < 0 && errno == EINTR)
            continue;
        if (more <= 0)
            break;
        got += (size_t)more;
    }
    msg[got] = 0;
    int status = kill_reap(ms->init);
    ms->init = 0;
    if (got > 1 && msg[0] == SYNC_ERROR)
        setup_fail(ms, msg + 1, NULL, 0);
    char what[64];
    snprintf(what, sizeof what, "(wait status 0x%x)", status);
    setup_fail(ms, "container init exited during setup", what, 0);
}

/* Report and detach from the create process. If create is gone (killed at berth's timeout: EPIPE), nobody knows
 * of this container: take it down. */
static void report_ready(struct monitor_setup *ms)
{
    size_t n = strlen(ms->line);
    ms->ok[0] = 'O';
    memcpy(ms->ok + 1, ms->line, n);
    if (write_all(ms->report_fd, ms->ok, n + 1) < 0)
        setup_fail(ms, "monitor: report to create", NULL, errno);
    close(ms->report_fd);
}

void monitor_main(struct spec *s, int report_fd)
{
    struct monitor_setup *ms = setup_alloc(s, report_fd);
    detach_from_caller(ms);
    watch_signals(ms);
    make_start_fifo(ms);
    open_log(ms);
    open_output(ms);
    open_stdin(ms);
    open_attach_socket(ms);
    open_sync_pipe(ms);
    make_userns(ms);
    enter_pid_namespace(ms);
    fork_init(ms);
    write_shim_json(ms);
    wait_init_ready(ms);
    report_ready(ms);

    /* Give back everything the setup needed: the monitor lives as long as the container. */
    struct monitor *m = ms->m;
    char *bundle_copy = (char *)s->bundle; /* realpath() result */
    spec_free(s);
    free(bundle_copy);
    free(ms);
    fcntl(m->sync_fd, F_SETFL, O_NONBLOCK);
    monitor_run(m);
}
