/* berth-shim sandbox / unpin: pod namespaces pinned by bind mounts, optional pod init. */
#include "monitor.h"
#include "rawsys.h"
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SELFBIND_MARK ".berth-selfbind"

static const char *const pin_names[] = {"net", "ipc", "uts", "pid", "cgroup", "user", "mnt"};
/* <dir>/sys: a sysfs mounted from inside the pod's netns, which therefore lists that netns's interfaces; berth
 * reads their counters there (pod network stats) with no process per read. */
#define NET_SYSFS "sys"

/* Undo "\040"-style escapes of /proc/self/mountinfo in place. */
static void unescape(char *s)
{
    char *d = s;
    while (*s) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
            *d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 4;
        } else {
            *d++ = *s++;
        }
    }
    *d = 0;
}

/* Find the mount that holds dir: *is_mountpoint when dir itself is one, *shared when it propagates. */
static int mount_of(const char *dir, int *is_mountpoint, int *shared)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL;
    size_t cap = 0, best = 0;
    *is_mountpoint = *shared = 0;
    if (!f)
        return -1;
    while (getline(&line, &cap, f) > 0) {
        char *save, *tok;
        char *mp = NULL;
        int field = 0, is_shared = 0;
        for (tok = strtok_r(line, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save), field++) {
            if (field == 4)
                mp = tok;
            else if (field >= 6 && strcmp(tok, "-") == 0)
                break;
            else if (field >= 6 && strncmp(tok, "shared:", 7) == 0)
                is_shared = 1;
        }
        if (!mp)
            continue;
        unescape(mp);
        size_t n = strlen(mp);
        int covers = strcmp(mp, "/") == 0 ? 1 : strncmp(dir, mp, n) == 0 && (dir[n] == '/' || dir[n] == 0);
        if (!covers)
            continue;
        size_t len = strcmp(mp, "/") == 0 ? 1 : n + 1;
        if (len >= best) { /* later entries stack on top of earlier ones */
            best = len;
            *shared = is_shared;
            *is_mountpoint = strcmp(mp, dir) == 0;
        }
    }
    free(line);
    fclose(f);
    return 0;
}

/* Undoes make_private's self-bind of dir (ctx): the marker, then the bind. */
/* What a sandbox call holds: the context of its cleanup list. */
struct pod_dir {
    char dir[PATH_MAX]; /* realpath of <dir> */
    pid_t init;         /* the pod init, or 0 */
};

static int drop_selfbind(void *ctx, const char *what)
{
    char mark[PATH_MAX];
    const char *dir = ((struct pod_dir *)ctx)->dir;
    (void)what;
    if (path_join(mark, sizeof mark, dir, SELFBIND_MARK) == 0)
        unlink(mark);
    return umount2(dir, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 ? -errno : 0;
}

static int make_private(const char *dir, struct cleanup_list *undo, char *err, size_t errlen)
{
    int is_mp, shared;
    if (mount_of(dir, &is_mp, &shared) < 0) {
        fmt_err(err, errlen, "read /proc/self/mountinfo", NULL, errno);
        return -1;
    }
    if (!shared)
        return 0;
    if (!is_mp) {
        char mark[PATH_MAX];
        if (mount(dir, dir, NULL, MS_BIND, NULL) < 0) {
            fmt_err(err, errlen, "bind onto itself", dir, errno);
            return -1;
        }
        cleanup_push(undo, "drop the self-bind of the pin directory", NULL, drop_selfbind);
        if (path_join(mark, sizeof mark, dir, SELFBIND_MARK) == 0) {
            int fd = open(mark, O_CREAT | O_WRONLY | O_CLOEXEC, 0444);
            if (fd >= 0)
                close(fd);
        }
    }
    if (mount(NULL, dir, NULL, MS_PRIVATE, NULL) < 0) {
        fmt_err(err, errlen, "make private", dir, errno);
        return -1;
    }
    return 0;
}

/* Detaches and removes the pin dir/name: with unpin (idempotent) as the sandbox's undo of pin(). A pin that is
 * not there (not mounted: EINVAL; no file: ENOENT) is no failure. */
static int unpin_one(void *ctx, const char *name)
{
    char p[PATH_MAX];
    const char *dir = ((struct pod_dir *)ctx)->dir;
    int r = path_join(p, sizeof p, dir, name);
    if (r < 0)
        return r;
    if (umount2(p, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL && errno != ENOENT)
        r = -errno;
    if (unlink(p) < 0 && errno != ENOENT && !r)
        r = -errno;
    return r;
}

static int pin(const char *dir, const char *name, const char *nspath, struct cleanup_list *undo, char *err,
               size_t errlen)
{
    char p[PATH_MAX];
    struct stat sd, sf;
    if (path_join(p, sizeof p, dir, name) < 0) {
        fmt_err(err, errlen, "pin", dir, ENAMETOOLONG);
        return -1;
    }
    int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0444);
    if (fd < 0) {
        fmt_err(err, errlen, "pin: create", p, errno);
        return -1;
    }
    close(fd);
    if (stat(dir, &sd) == 0 && stat(p, &sf) == 0 && sd.st_dev != sf.st_dev) {
        fmt_err(err, errlen, "pin: already a mount point:", p, EEXIST);
        return -1; /* not ours: left alone */
    }
    cleanup_push(undo, "unpin", name, unpin_one);
    if (mount(nspath, p, NULL, MS_BIND, NULL) < 0) {
        fmt_err(err, errlen, "pin: bind", nspath, errno);
        return -1;
    }
    return 0;
}

static void init_noop(int sig)
{
    (void)sig;
}

__attribute__((hot, noinline, noreturn)) static void pod_init_loop(const sigset_t *set)
{
    siginfo_t si;
    for (;;) {
        long sig = rsys(SYS_rt_sigtimedwait, (long)set, (long)&si, 0, 8, 0);
        if (sig == SIGTERM || sig == SIGINT)
            rsys(SYS_exit_group, 0, 0, 0, 0, 0);
        if (sig < 0)
            continue;
        while (rsys(SYS_wait4, -1, 0, WNOHANG, 0, 0) > 0)
            ;
    }
}

/* pid 1 of the pod's pid namespace: reap orphans, exit on SIGTERM. */
__attribute__((noreturn)) static void pod_init(void)
{
    sigset_t set;
    struct sigaction sa;

    setsid();
    if (chdir("/") < 0) /* not the caller's directory (its mount) for the pod's life */
        _exit(1);
    detach_stdio(NULL, 0);
    prctl(PR_SET_NAME, "berth-pod-init", 0, 0, 0);
    /* An ns init only receives signals it handles: install handlers, then take them synchronously. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = init_noop;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    sigprocmask(SIG_BLOCK, &set, NULL);
    shrink_resident();
    pod_init_loop(&set);
}

static int kill_pod_init(void *ctx, const char *what)
{
    (void)what;
    kill_reap(((struct pod_dir *)ctx)->init);
    return 0;
}

/* The message (err) names the failing step; what was made is undone, newest first. */
/* Detaches and removes <dir>/sys; with unpin (idempotent). Not mounted (EINVAL) or absent (ENOENT) is fine. */
static int drop_net_sysfs(void *ctx, const char *what)
{
    char p[PATH_MAX];
    int r = path_join(p, sizeof p, ((struct pod_dir *)ctx)->dir, NET_SYSFS);
    (void)what;
    if (r < 0)
        return r;
    if (umount2(p, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL && errno != ENOENT)
        r = -errno;
    if (rmdir(p) < 0 && errno != ENOENT && !r)
        r = -errno;
    return r;
}

/* sysfs ties a new instance to the network namespace of the process that mounts it: call after unshare. */
static int mount_net_sysfs(const char *dir, struct cleanup_list *undo, char *err, size_t errlen)
{
    char p[PATH_MAX];
    struct stat sd, sp;
    if (path_join(p, sizeof p, dir, NET_SYSFS) < 0) {
        fmt_err(err, errlen, "mount sysfs", dir, ENAMETOOLONG);
        return -1;
    }
    if (mkdir(p, 0555) < 0 && errno != EEXIST) {
        fmt_err(err, errlen, "mount sysfs: mkdir", p, errno);
        return -1;
    }
    if (lstat(dir, &sd) < 0 || lstat(p, &sp) < 0 || !S_ISDIR(sp.st_mode) || sd.st_dev != sp.st_dev) {
        fmt_err(err, errlen, "mount sysfs: not a fresh directory:", p, EEXIST);
        return -1; /* not ours: left alone */
    }
    cleanup_push(undo, "drop the pod's sysfs", NULL, drop_net_sysfs);
    if (mount("sysfs", p, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        fmt_err(err, errlen, "mount sysfs", p, errno);
        return -1;
    }
    return 0;
}

static int sandbox_fail(const char *arg, struct cleanup_list *undo, char *err, size_t errlen)
{
    cleanup_run(undo, err, errlen);
    fprintf(stderr, SHIM_NAME ": sandbox %s: %s\n", arg, err);
    return 1;
}

static int bring_up_lo(char *err, size_t errlen)
{
    struct ifreq ifr;
    int sk = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), r = 0;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (sk < 0 || ioctl(sk, SIOCGIFFLAGS, &ifr) < 0) {
        fmt_err(err, errlen, "get flags of", "lo", errno);
        r = -1;
    } else {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(sk, SIOCSIFFLAGS, &ifr) < 0) {
            fmt_err(err, errlen, "bring up", "lo", errno);
            r = -1;
        }
    }
    if (sk >= 0)
        close(sk);
    return r;
}

int cmd_sandbox(int argc, char **argv)
{
    int want_net = 0, want_ipc = 0, want_uts = 0, want_pid = 0;
    const char *hostname = NULL;
    struct veth_plan veth = {0};
    char err[1200];
    struct pod_dir pd = {.init = 0};
    struct cleanup_list undo;
    int host_netns = -1;

    if (argc < 2) {
        fprintf(stderr, "usage: " SHIM_NAME " sandbox <dir> [--net [--veth HOST_NAME --address A.B.C.D/P --gateway A.B.C.D"
                        " --mtu N]] [--ipc] [--uts] [--pid] [--hostname NAME]\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--net") == 0)
            want_net = 1;
        else if (strcmp(argv[i], "--ipc") == 0)
            want_ipc = 1;
        else if (strcmp(argv[i], "--uts") == 0)
            want_uts = 1;
        else if (strcmp(argv[i], "--pid") == 0)
            want_pid = 1;
        else if (strcmp(argv[i], "--hostname") == 0 && i + 1 < argc)
            hostname = argv[++i];
        else if (strcmp(argv[i], "--veth") == 0 && i + 1 < argc)
            veth.host_name = argv[++i];
        else if (strcmp(argv[i], "--address") == 0 && i + 1 < argc)
            veth.address = argv[++i];
        else if (strcmp(argv[i], "--gateway") == 0 && i + 1 < argc)
            veth.gateway = argv[++i];
        else if (strcmp(argv[i], "--mtu") == 0 && i + 1 < argc) {
            long mtu;
            if (parse_long(argv[++i], &mtu) < 0 || mtu <= 0 || mtu > 65535) {
                fprintf(stderr, SHIM_NAME ": sandbox: bad --mtu %s\n", argv[i]);
                return 2;
            }
            veth.mtu = (int)mtu;
        } else {
            fprintf(stderr, SHIM_NAME ": sandbox: bad argument %s\n", argv[i]);
            return 2;
        }
    }
    if (hostname && !want_uts) {
        fprintf(stderr, SHIM_NAME ": sandbox: --hostname needs --uts\n");
        return 2;
    }
    if (veth.host_name || veth.address || veth.gateway || veth.mtu) {
        if (!want_net) {
            fprintf(stderr, SHIM_NAME ": sandbox: --veth needs --net\n");
            return 2;
        }
        if (!veth.mtu)
            veth.mtu = 1500;
        if (veth_plan_check(&veth, err, sizeof err) < 0) {
            fprintf(stderr, SHIM_NAME ": sandbox: %s\n", err);
            return 2;
        }
        /* The host end is created in our namespace as it is before unshare: keep a handle on it. */
        host_netns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        if (host_netns < 0) {
            warn_err("sandbox: open", "/proc/self/ns/net", errno);
            return 1;
        }
    }
    if (mkdir(argv[1], 0711) < 0 && errno != EEXIST) {
        warn_err("sandbox: mkdir", argv[1], errno);
        return 1;
    }
    if (!realpath(argv[1], pd.dir)) {
        warn_err("sandbox:", argv[1], errno);
        return 1;
    }
    cleanup_init(&undo, &pd);
    if (make_private(pd.dir, &undo, err, sizeof err) < 0)
        return sandbox_fail(argv[1], &undo, err, sizeof err);

    int flags = (want_net ? CLONE_NEWNET : 0) | (want_ipc ? CLONE_NEWIPC : 0) | (want_uts ? CLONE_NEWUTS : 0) |
                (want_pid ? CLONE_NEWPID : 0);
    if (flags && unshare(flags) < 0) {
        fmt_err(err, sizeof err, "unshare", NULL, errno);
        return sandbox_fail(argv[1], &undo, err, sizeof err);
    }
    if (hostname && sethostname(hostname, strlen(hostname)) < 0) {
        fmt_err(err, sizeof err, "sethostname", hostname, errno);
        return sandbox_fail(argv[1], &undo, err, sizeof err);
    }
    if (want_net && (bring_up_lo(err, sizeof err) < 0 ||
                     (host_netns >= 0 && veth_setup(&veth, host_netns, err, sizeof err) < 0)))
        return sandbox_fail(argv[1], &undo, err, sizeof err);
    if (want_pid) {
        fflush(NULL);
        pd.init = fork();
        if (pd.init < 0) {
            fmt_err(err, sizeof err, "fork pod init", NULL, errno);
            return sandbox_fail(argv[1], &undo, err, sizeof err);
        }
        if (pd.init == 0)
            pod_init();
        cleanup_push(&undo, "kill the pod init", NULL, kill_pod_init);
    }
    if ((want_net && pin(pd.dir, "net", "/proc/self/ns/net", &undo, err, sizeof err) < 0) ||
        (want_net && mount_net_sysfs(pd.dir, &undo, err, sizeof err) < 0) ||
        (want_ipc && pin(pd.dir, "ipc", "/proc/self/ns/ipc", &undo, err, sizeof err) < 0) ||
        (want_uts && pin(pd.dir, "uts", "/proc/self/ns/uts", &undo, err, sizeof err) < 0))
        return sandbox_fail(argv[1], &undo, err, sizeof err);
    if (want_pid) {
        char p[64];
        snprintf(p, sizeof p, "/proc/%d/ns/pid", (int)pd.init);
        if (pin(pd.dir, "pid", p, &undo, err, sizeof err) < 0)
            return sandbox_fail(argv[1], &undo, err, sizeof err);
        printf("{\"initPid\":%d}\n", (int)pd.init);
    } else {
        printf("{}\n");
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int cmd_unpin(int argc, char **argv)
{
    struct pod_dir pd = {.init = 0};
    char mark[PATH_MAX];
    if (argc != 2) {
        fprintf(stderr, "usage: " SHIM_NAME " unpin <dir>\n");
        return 2;
    }
    if (!realpath(argv[1], pd.dir)) {
        if (errno == ENOENT)
            return 0;
        warn_err("unpin:", argv[1], errno);
        return 1;
    }
    /* Idempotent and best effort, as a pod's teardown must be: whatever is left is reported by berth's own
     * checks (the pin files stay). */
    for (size_t i = 0; i < sizeof pin_names / sizeof pin_names[0]; i++)
        unpin_one(&pd, pin_names[i]);
    drop_net_sysfs(&pd, NULL);
    /* the self-bind only when sandbox made it (its marker) */
    if (path_join(mark, sizeof mark, pd.dir, SELFBIND_MARK) == 0 && unlink(mark) == 0)
        umount2(pd.dir, MNT_DETACH | UMOUNT_NOFOLLOW);
    return 0;
}
