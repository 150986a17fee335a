/* berth-shim exec <pid> [options] -- cmd args...: run a process inside a running container. */
#include "exec_tty.h"
#include "monitor.h"
#include "spec.h"

#include <errno.h>
#include <fcntl.h>
#include <json.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_SETUP 125 /* could not enter the container */
#define EXIT_CANNOT 126
#define EXIT_NOTFOUND 127

static volatile pid_t exec_child;

static void kill_exec_child(int sig)
{
    (void)sig;
    if (exec_child > 0)
        kill(exec_child, SIGKILL);
}

static void usage(void)
{
    fprintf(stderr, "usage: " SHIM_NAME " exec <container-pid> [--uid N] [--gid N] [--groups a,b] [--cwd DIR]\n"
                    "         [--env K=V]... [--cgroup-procs FILE]... [--caps-json FILE] [--seccomp-json FILE]\n"
                    "         [--no-new-privs] [--start-time T] [--session-keyring NAME]\n"
                    "         [--rlimit RLIMIT_X=SOFT:HARD]... [--oom-score-adj N] [--apparmor PROFILE]\n"
                    "         [--tty [--tty-size COLSxROWS] [--resize-fd N] [--no-stdin]]\n"
                    "         -- cmd [args...]\n");
}

static int parse_id(const char *s, long max, long *out)
{
    return parse_long(s, out) == 0 && *out >= 0 && *out <= max ? 0 : -1;
}

/* "RLIMIT_NOFILE=1024:1024" (a negative number: unlimited) */
static int parse_rlimit(const char *arg, int *resource, struct rlimit *rl)
{
    char name[32], soft[24], hard[24];
    const char *eq = strchr(arg, '='), *colon = eq ? strchr(eq, ':') : NULL;
    long s, h;
    if (!eq || !colon || (size_t)(eq - arg) >= sizeof name || (size_t)(colon - eq - 1) >= sizeof soft ||
        strlen(colon + 1) >= sizeof hard)
        return -1;
    memcpy(name, arg, (size_t)(eq - arg));
    name[eq - arg] = 0;
    memcpy(soft, eq + 1, (size_t)(colon - eq - 1));
    soft[colon - eq - 1] = 0;
    strcpy(hard, colon + 1);
    if ((*resource = rlimit_resource(name)) < 0 || parse_long(soft, &s) < 0 || parse_long(hard, &h) < 0)
        return -1;
    rl->rlim_cur = s < 0 ? RLIM_INFINITY : (rlim_t)s;
    rl->rlim_max = h < 0 ? RLIM_INFINITY : (rlim_t)h;
    return 0;
}

/* Test-only: BERTH_SHIM_TEST_PAUSE=exec-before-execve stops the exec child of a command that has the
 * argument "berth-test-hold" right before its execve, where it is most exposed (in the container's pid
 * namespace, with the container's credentials, still this program), until it gets SIGCONT. The variable is
 * read from this program's own environment, which is berth's: a pod cannot set it (the command's
 * environment is a separate list). */
static void test_pause(char **cmd)
{
    const char *want = getenv("BERTH_SHIM_TEST_PAUSE");
    if (!want || strcmp(want, "exec-before-execve") != 0)
        return;
    for (char **a = cmd; *a; a++)
        if (strcmp(*a, "berth-test-hold") == 0) {
            raise(SIGSTOP);
            return;
        }
}

int cmd_exec(int argc, char **argv)
{
    long target, v;
    uid_t uid = 0;
    gid_t gid = 0;
    gid_t groups[256];
    size_t ngroups = 0;
    int set_groups = 0, nnp = 0;
    const char *cwd = NULL, *caps_file = NULL, *seccomp_file = NULL, *keyring = NULL, *apparmor = NULL;
    long long start_time = -1;
    int has_oom = 0, oom = 0;
    struct rlimit rlims[RLIM_NLIMITS];
    int rlim_res[RLIM_NLIMITS];
    size_t nrlim = 0;
    struct seccomp_prog filter = {NULL, 0};
    char **env = calloc((size_t)argc + 2, sizeof *env);
    const char **cgprocs = calloc((size_t)argc + 1, sizeof *cgprocs);
    size_t nenv = 0, ncg = 0;
    struct capsets caps;
    struct exec_tty tty = {-1, -1, 0, 0, 0};
    int want_tty = 0;
    long resize_fd = -1;
    char err[1200];
    int i;

    memset(&caps, 0, sizeof caps);
    if (!env || !cgprocs)
        return EXIT_SETUP;
    if (argc < 2 || parse_long(argv[1], &target) < 0 || target <= 0) {
        usage();
        return 2;
    }
    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "--tty") == 0) { /* flags without a value */
            want_tty = 1;
            continue;
        }
        if (strcmp(a, "--no-stdin") == 0) {
            tty.no_stdin = 1;
            continue;
        }
        if (i + 1 >= argc) {
            usage();
            return 2;
        }
        const char *val = argv[++i];
        if (strcmp(a, "--uid") == 0 && parse_id(val, 0xfffffffeL, &v) == 0) {
            uid = (uid_t)v;
        } else if (strcmp(a, "--gid") == 0 && parse_id(val, 0xfffffffeL, &v) == 0) {
            gid = (gid_t)v;
        } else if (strcmp(a, "--groups") == 0) {
            set_groups = 1;
            char *copy = strdup(val);
            for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
                if (ngroups >= sizeof groups / sizeof groups[0] || parse_id(tok, 0xfffffffeL, &v) < 0) {
                    fprintf(stderr, SHIM_NAME ": exec: bad --groups %s\n", val);
                    return 2;
                }
                groups[ngroups++] = (gid_t)v;
            }
            free(copy);
        } else if (strcmp(a, "--cwd") == 0) {
            cwd = val;
        } else if (strcmp(a, "--env") == 0) {
            env[nenv++] = (char *)val;
        } else if (strcmp(a, "--cgroup-procs") == 0) {
            cgprocs[ncg++] = val;
        } else if (strcmp(a, "--caps-json") == 0) {
            caps_file = val;
        } else if (strcmp(a, "--seccomp-json") == 0) {
            seccomp_file = val;
        } else if (strcmp(a, "--start-time") == 0 && parse_long(val, &v) == 0 && v >= 0) {
            start_time = v;
        } else if (strcmp(a, "--session-keyring") == 0) {
            keyring = val;
        } else if (strcmp(a, "--apparmor") == 0 && *val) {
            apparmor = val;
        } else if (strcmp(a, "--oom-score-adj") == 0 && parse_long(val, &v) == 0 && v >= -1000 && v <= 1000) {
            has_oom = 1;
            oom = (int)v;
        } else if (strcmp(a, "--rlimit") == 0) {
            if (nrlim >= RLIM_NLIMITS || parse_rlimit(val, &rlim_res[nrlim], &rlims[nrlim]) < 0) {
                fprintf(stderr, SHIM_NAME ": exec: bad --rlimit %s (RLIMIT_NAME=SOFT:HARD)\n", val);
                return 2;
            }
            nrlim++;
        } else if (strcmp(a, "--tty-size") == 0) {
            if (tty_parse_size(val, &tty.cols, &tty.rows) < 0) {
                fprintf(stderr, SHIM_NAME ": exec: bad --tty-size %s (COLSxROWS)\n", val);
                return 2;
            }
        } else if (strcmp(a, "--resize-fd") == 0 && parse_long(val, &v) == 0 && v >= 3 && v < 65536 &&
                   fcntl((int)v, F_GETFD) >= 0) {
            resize_fd = v;
        } else if (strcmp(a, "--no-new-privs") == 0) {
            nnp = 1;
            i--; /* takes no value */
        } else {
            fprintf(stderr, SHIM_NAME ": exec: bad option %s %s\n", a, val);
            usage();
            return 2;
        }
    }
    if (i >= argc || (!want_tty && (tty.cols || resize_fd >= 0 || tty.no_stdin))) {
        usage();
        return 2;
    }
    if (resize_fd >= 0)
        fcntl((int)resize_fd, F_SETFD, FD_CLOEXEC); /* the command must not inherit it */
    char **cmd = argv + i;
    if (nenv == 0)
        env[nenv++] = "PATH=" DEFAULT_PATH;

    if (caps_file) {
        struct json_object *o = json_object_from_file(caps_file);
        if (!o || !json_object_is_type(o, json_type_object)) {
            fprintf(stderr, SHIM_NAME ": exec: --caps-json %s: not a JSON object\n", caps_file);
            return EXIT_SETUP;
        }
        if (caps_from_json(o, &caps, err, sizeof err) < 0) {
            fprintf(stderr, SHIM_NAME ": exec: %s\n", err);
            return EXIT_SETUP;
        }
        json_object_put(o);
    }
    if (seccomp_file) {
        struct json_object *o = json_object_from_file(seccomp_file);
        if (!o) {
            fprintf(stderr, SHIM_NAME ": exec: --seccomp-json %s: not JSON\n", seccomp_file);
            return EXIT_SETUP;
        }
        if (seccomp_build(o, &filter, err, sizeof err) < 0) {
            fprintf(stderr, SHIM_NAME ": exec: --seccomp-json %s: %s\n", seccomp_file, err);
            return EXIT_SETUP;
        }
        json_object_put(o);
    }

    char path[64];
    /* The container's limits, not the caller's (berth's); /proc/self is still the host's. */
    for (size_t k = 0; k < nrlim; k++) {
        if (setrlimit(rlim_res[k], &rlims[k]) < 0) {
            char what[32];
            snprintf(what, sizeof what, "resource %d", rlim_res[k]);
            warn_err("exec: setrlimit", what, errno);
            return EXIT_SETUP;
        }
    }
    if (has_oom) {
        int r = set_oom_score_adj(oom);
        if (r < 0) {
            snprintf(path, sizeof path, "%d", oom);
            warn_err("exec: write /proc/self/oom_score_adj", path, -r);
            return EXIT_SETUP;
        }
    }
    if (keyring) {
        /* with the host's privileges still (see join_session_keyring); the child inherits it */
        int r = join_session_keyring(keyring);
        if (r < 0) {
            warn_err("exec: join a new session keyring", keyring, -r);
            return EXIT_SETUP;
        }
    }

    /* The container by pidfd: a bare pid may be recycled between berth's look and our setns. The pidfd is
     * opened first, then the start time berth recorded is checked (so the pidfd is the container's
     * process), the /proc entries we need are opened, and the process is checked to be alive still (so
     * they were its). setns(pidfd) of a process that died meanwhile fails (ESRCH). */
    int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)target, 0);
    if (pidfd < 0) {
        snprintf(path, sizeof path, "%ld", target);
        warn_err("exec: pidfd_open of container process", path, errno);
        return EXIT_SETUP;
    }
    if (start_time >= 0) {
        long long now = proc_start_time((pid_t)target);
        if (now != start_time) {
            fprintf(stderr, SHIM_NAME ": exec: process %ld is not the container's (start time %lld, expected %lld)\n",
                    target, now, start_time);
            return EXIT_SETUP;
        }
    }
    int ns_flags = 0, user_differs = 0;
    for (int k = 0; k < NS_COUNT; k++) {
        struct stat theirs, ours;
        char self[64];
        snprintf(path, sizeof path, "/proc/%ld/ns/%s", target, ns_kinds[k].procname);
        snprintf(self, sizeof self, "/proc/self/ns/%s", ns_kinds[k].procname);
        if (stat(path, &theirs) < 0) {
            char dir[64];
            snprintf(dir, sizeof dir, "/proc/%ld", target);
            if (errno == ENOENT && access(dir, F_OK) == 0)
                continue; /* this kernel lacks the namespace type */
            warn_err("exec: container", path, errno);
            return EXIT_SETUP;
        }
        if (stat(self, &ours) == 0 && ours.st_ino == theirs.st_ino && ours.st_dev == theirs.st_dev)
            continue;
        if (k == NS_USER)
            user_differs = 1;
        else
            ns_flags |= ns_kinds[k].flag;
    }
    snprintf(path, sizeof path, "/proc/%ld/root", target);
    int rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
        warn_err("exec: open", path, errno);
        return EXIT_SETUP;
    }
    if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0) {
        snprintf(path, sizeof path, "%ld", target);
        warn_err("exec: container process", path, errno);
        return EXIT_SETUP;
    }
    for (size_t k = 0; k < ncg; k++) {
        int r = write_file(cgprocs[k], "0");
        if (r < 0) {
            warn_err("exec: join cgroup: write", cgprocs[k], -r);
            return EXIT_SETUP;
        }
    }
    /* The user namespace last: as host root we may enter every other namespace whatever its owner, and a
     * user namespace made for the container owns none of the pod's (one setns with both flags would check
     * the others against the new one). */
    if (ns_flags && setns(pidfd, ns_flags) < 0) {
        snprintf(path, sizeof path, "%ld", target);
        warn_err("exec: setns to the namespaces of container process", path, errno);
        return EXIT_SETUP;
    }
    /* The container may have pivoted or chrooted: take its root as ours. */
    if (fchdir(rootfd) < 0 || chroot(".") < 0) {
        warn_err("exec: enter container root", NULL, errno);
        return EXIT_SETUP;
    }
    close(rootfd);
    /* With the host's privileges still, in the container's mount namespace and root. */
    if (want_tty && tty_open(&tty, err, sizeof err) < 0) {
        fprintf(stderr, SHIM_NAME ": %s\n", err);
        return EXIT_SETUP;
    }
    if (user_differs && setns(pidfd, CLONE_NEWUSER) < 0) {
        snprintf(path, sizeof path, "%ld", target);
        warn_err("exec: setns to the user namespace of container process", path, errno);
        return EXIT_SETUP;
    }
    close(pidfd);
    int r0 = set_undumpable(); /* entering a user namespace is a change of credentials */
    if (r0 < 0) {
        warn_err("exec: prctl(PR_SET_DUMPABLE, 0)", NULL, -r0);
        return EXIT_SETUP;
    }

    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) {
        warn_err("exec: fork", NULL, errno);
        return EXIT_SETUP;
    }
    if (child == 0) {
        /* Nothing of the caller's but stdio reaches the command (the fds above are closed or CLOEXEC, but
         * berth's may not be), and no inherited signal disposition or mask. */
        reset_signals();
        if (want_tty && (r0 = tty_become_child(&tty)) < 0) {
            warn_err("exec: make the pty the controlling terminal", NULL, -r0);
            _exit(EXIT_CANNOT);
        }
        close_range(3, ~0U, 0);
        /* seccomp as in the container's init: right before execve, holding CAP_SYS_ADMIN for it when
         * no_new_privs is not set (or before the uid change when capabilities are left alone). */
        int joined_user = user_differs;
        int early = 0;
        uint64_t extra = 0;
        if (filter.filter && !nnp) {
            if (caps.present && !(caps.effective & (1ULL << 21 /* CAP_SYS_ADMIN */)))
                extra = 1ULL << 21;
            else if (!caps.present && uid != 0)
                early = 1;
        }
        /* The container's AppArmor profile, asked for as the init does: still root, before no_new_privs. */
        int r = apparmor ? apparmor_exec_profile(apparmor) : 0;
        if (r < 0) {
            warn_err("exec: apparmor: confine the command with profile", apparmor, -r);
            _exit(EXIT_CANNOT);
        }
        r = early ? seccomp_install(&filter) : 0;
        if (r < 0) {
            warn_err("exec: seccomp: install the filter", NULL, -r);
            _exit(EXIT_CANNOT);
        }
        /* In a user namespace the ids are always set: host root's would be unmapped there. */
        if (caps_prepare(&caps, err, sizeof err) < 0 ||
            set_ids(uid, gid, groups, ngroups, set_groups || uid != 0 || gid != 0 || joined_user, err, sizeof err) < 0 ||
            caps_finish(&caps, extra, err, sizeof err) < 0) {
            fprintf(stderr, SHIM_NAME ": exec: %s\n", err);
            _exit(EXIT_CANNOT);
        }
        if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
            warn_err("exec: PR_SET_NO_NEW_PRIVS", NULL, errno);
            _exit(EXIT_CANNOT);
        }
        const char *dir = cwd ? cwd : "/";
        if (chdir(dir) < 0) {
            warn_err("exec: chdir", dir, errno);
            _exit(EXIT_CANNOT);
        }
        /* After the credential change, which clears it. In another pid namespace getppid() is 0. */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() != parent && getppid() != 0)
            _exit(EXIT_CANNOT);
        /* The credential change also set dumpable to fs.suid_dumpable; until execve this process is in the
         * container's pid namespace with its credentials, still running this program. */
        if ((r = set_undumpable()) < 0) {
            warn_err("exec: prctl(PR_SET_DUMPABLE, 0)", NULL, -r);
            _exit(EXIT_CANNOT);
        }
        if (filter.filter && !early) {
            if ((r = seccomp_install(&filter)) < 0) {
                warn_err("exec: seccomp: install the filter", NULL, -r);
                _exit(EXIT_CANNOT);
            }
            if (extra && (r = caps_drop_extra(&caps)) < 0) {
                warn_err("exec: capabilities: drop CAP_SYS_ADMIN", NULL, -r);
                _exit(EXIT_CANNOT);
            }
        }
        test_pause(cmd);
        int e = exec_in_path(cmd, env);
        warn_err("exec", cmd[0], e);
        _exit(e == ENOENT ? EXIT_NOTFOUND : EXIT_CANNOT);
    }
    /* SIGTERM (berth's exec timeout) kills the child and reaps it before this process exits, so no zombie
     * outlives the call (PDEATHSIG alone would leave it to the host's init to reap, later). SIGKILL of this
     * process still kills the child through PDEATHSIG; a terminal's ^C/^\\ reach the child directly. */
    int status;
    exec_child = child;
    struct sigaction sa = {0};
    sa.sa_handler = kill_exec_child;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    if (want_tty) {
        signal(SIGPIPE, SIG_IGN); /* berth closing our stdout must not end the relay before the command */
        status = tty_relay(&tty, child, (int)resize_fd);
        if (status == -1) {
            warn_err("exec: wait", NULL, errno);
            return EXIT_SETUP;
        }
    } else {
        while (waitpid(child, &status, 0) < 0) {
            if (errno != EINTR) {
                warn_err("exec: wait", NULL, errno);
                return EXIT_SETUP;
            }
        }
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return EXIT_SETUP;
}
