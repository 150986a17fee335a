/* Small helpers shared by the subcommands. No allocation, no stdio in the hot paths. */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/keyctl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Bounded: on a node that mounts or renames without pause, a failure (EAGAIN) beats a create that never returns. */
#define OPENAT2_TRIES 128

int openat2_retry(int dirfd, const char *path, struct open_how *how)
{
    for (int i = 0;; i++) {
        int fd = (int)syscall(SYS_openat2, dirfd, path, how, sizeof *how);
        if (fd >= 0 || errno != EAGAIN || i + 1 >= OPENAT2_TRIES)
            return fd;
    }
}

void fmt_err(char *buf, size_t len, const char *step, const char *path, int err)
{
    snprintf(buf, len, "%s%s%s%s%s", step, path ? " " : "", path ? path : "", err ? ": " : "",
             err ? strerror(err) : "");
}

void warn_err(const char *step, const char *path, int err)
{
    char buf[1024];
    fmt_err(buf, sizeof buf, step, path, err);
    fprintf(stderr, SHIM_NAME ": %s\n", buf);
}

int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int path_join(char *buf, size_t len, const char *dir, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len)
        return -ENAMETOOLONG;
    return 0;
}

static int write_replace(const char *dir, const char *name, const char *data, size_t len, int durable)
{
    char tmp[PATH_MAX], dst[PATH_MAX], tname[NAME_MAX + 1];
    int fd, err = 0;

    if (snprintf(tname, sizeof tname, ".%s.tmp", name) >= (int)sizeof tname)
        return -ENAMETOOLONG;
    if (path_join(tmp, sizeof tmp, dir, tname) < 0 || path_join(dst, sizeof dst, dir, name) < 0)
        return -ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (write_all(fd, data, len) < 0 || (durable && fsync(fd) < 0))
        err = -errno;
    if (close(fd) < 0 && !err)
        err = -errno;
    if (!err && rename(tmp, dst) < 0)
        err = -errno;
    if (err) {
        unlink(tmp);
        return err;
    }
    if (!durable)
        return 0;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

int atomic_write(const char *dir, const char *name, const char *data, size_t len)
{
    return write_replace(dir, name, data, len, 1);
}

int replace_file(const char *dir, const char *name, const char *data, size_t len)
{
    return write_replace(dir, name, data, len, 0);
}

int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int err = 0;
    if (fd < 0)
        return -errno;
    if (write_all(fd, data, strlen(data)) < 0)
        err = -errno;
    if (close(fd) < 0 && !err)
        err = -errno;
    return err;
}

ssize_t read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t off = 0;
    if (fd < 0)
        return -errno;
    while (off + 1 < len) {
        ssize_t n = read(fd, buf + off, len - 1 - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        off += (size_t)n;
    }
    buf[off] = 0;
    close(fd);
    return (ssize_t)off;
}

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int parse_long(const char *s, long *out)
{
    char *end;
    if (!s || !*s)
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

void close_fds_except(int lowfd, const int *keep, int nkeep)
{
    /* Close [lowfd, max] around the kept fds (sorted not required). */
    int start = lowfd;
    for (;;) {
        int next = -1;
        for (int i = 0; i < nkeep; i++)
            if (keep[i] >= start && (next < 0 || keep[i] < next))
                next = keep[i];
        if (next < 0) {
            close_range((unsigned)start, ~0U, 0);
            return;
        }
        if (next > start)
            close_range((unsigned)start, (unsigned)next - 1, 0);
        start = next + 1;
    }
}

void reset_signals(void)
{
    sigset_t all;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &sa, NULL); /* fails harmlessly for SIGKILL/SIGSTOP/reserved */
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
}

int kill_reap(pid_t pid)
{
    int status = 0;
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return 0;
    return status;
}

int detach_stdio(const int *keep, int nkeep)
{
    int null = open("/dev/null", O_RDWR), err = null < 0 ? -errno : 0;
    for (int fd = 0; fd < 3 && null >= 0; fd++)
        if (null != fd)
            dup2(null, fd);
    close_fds_except(3, keep, nkeep); /* null too, when it is >= 3 */
    return err;
}

int exec_in_path(char *const args[], char *const envp[])
{
    const char *file = args[0];
    const char *path = NULL;
    char buf[PATH_MAX];
    int saw_eacces = 0;

    if (!file || !*file)
        return ENOENT;
    if (strchr(file, '/')) {
        execve(file, args, envp);
        return errno;
    }
    for (char *const *e = envp; e && *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    if (!path)
        path = DEFAULT_PATH;
    for (const char *p = path;; ) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        int n = dlen ? snprintf(buf, sizeof buf, "%.*s/%s", (int)dlen, p, file)
                     : snprintf(buf, sizeof buf, "%s", file);
        if (n > 0 && (size_t)n < sizeof buf) {
            execve(buf, args, envp);
            int e = errno;
            if (e == EACCES)
                saw_eacces = 1;
            else if (e != ENOENT && e != ENOTDIR && e != ELOOP && e != ENAMETOOLONG)
                return e; /* e.g. ENOEXEC, E2BIG: found but cannot run */
        }
        if (!colon)
            break;
        p = colon + 1;
    }
    return saw_eacces ? EACCES : ENOENT;
}

int set_undumpable(void)
{
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ? -errno : 0;
}

int join_session_keyring(const char *name)
{
    long serial = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name, 0, 0, 0);
    if (serial < 0)
        return errno == ENOSYS ? 0 : -errno; /* a kernel without keys: nothing is shared either */
    /* The default grants the owner's uid (host root, for every root container without a user namespace)
     * view, read and link: enough for another container to find the keyring in /proc/keys and link it
     * into its own, possessing it. Only the possessor (this process and its children) keeps any right. */
    if (syscall(SYS_keyctl, KEYCTL_SETPERM, serial, 0x3f000000 /* KEY_POS_ALL */, 0, 0) < 0)
        return -errno;
    return 0;
}

int apparmor_exec_profile(const char *profile)
{
    char cmd[320];
    int len = snprintf(cmd, sizeof cmd, "exec %s", profile);
    if (len < 0 || (size_t)len >= sizeof cmd)
        return -ENAMETOOLONG;
    /* The LSM's own file first: with several LSMs stacked the generic one may belong to another. */
    int fd = open("/proc/self/attr/apparmor/exec", O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        fd = open("/proc/self/attr/exec", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, cmd, (size_t)len);
    int e = n < 0 ? errno : EIO;
    close(fd);
    return n == len ? 0 : -e;
}

int set_oom_score_adj(int value)
{
    char buf[32], cur_buf[32];
    snprintf(buf, sizeof buf, "%d", value);
    int r = write_file("/proc/self/oom_score_adj", buf);
    if (r == 0 || (r != -EACCES && r != -EPERM))
        return r;
    /* Lowering (below what a privileged writer last set) needs CAP_SYS_RESOURCE: where we lack it, the
     * process keeps its current value (which is then the requested one or above it). */
    long cur = 0;
    if (read_file("/proc/self/oom_score_adj", cur_buf, sizeof cur_buf) > 0) {
        cur_buf[strcspn(cur_buf, "\n")] = 0;
        parse_long(cur_buf, &cur);
    }
    return value > cur ? r : 0;
}

void cleanup_init(struct cleanup_list *l, void *ctx)
{
    l->ctx = ctx;
    l->n = 0;
}

void cleanup_push(struct cleanup_list *l, const char *name, const char *what, undo_fn undo)
{
    if (l->n == CLEANUP_MAX)
        abort(); /* a command pushes a fixed number of steps: this is a bug, not bad input */
    l->step[l->n].name = name;
    l->step[l->n].what = what;
    l->step[l->n].undo = undo;
    l->n++;
}

void cleanup_run(struct cleanup_list *l, char *msg, size_t len)
{
    while (l->n > 0) {
        l->n--;
        int r = l->step[l->n].undo(l->ctx, l->step[l->n].what);
        size_t used = strlen(msg);
        if (r < 0 && used + 8 < len) {
            memcpy(msg + used, "; undo ", 8);
            used += 7;
            fmt_err(msg + used, len - used, l->step[l->n].name, l->step[l->n].what, -r);
        }
    }
}
