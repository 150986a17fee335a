/* berth-shim exec <pid> [options] -- cmd args...: run a process inside a running container. */
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
#include <sys/stat.h>
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
                    "         [--no-new-privs]\n"
                    "         -- cmd [args...]\n");
}

static int parse_id(const char *s, long max, long *out)
{
    return parse_long(s, out) == 0 && *out >= 0 && *out <= max ? 0 : -1;
}

int cmd_exec(int argc, char **argv)
{
    long target, v;
    uid_t uid = 0;
    gid_t gid = 0;
    gid_t groups[256];
    size_t ngroups = 0;
    int set_groups = 0, nnp = 0;
    const char *cwd = NULL, *caps_file = NULL, *seccomp_file = NULL;
    struct seccomp_prog filter = {NULL, 0};
    char **env = calloc((size_t)argc + 2, sizeof *env);
    const char **cgprocs = calloc((size_t)argc + 1, sizeof *cgprocs);
    size_t nenv = 0, ncg = 0;
    struct capsets caps;
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
        } else if (strcmp(a, "--no-new-privs") == 0) {
            nnp = 1;
            i--; /* takes no value */
        } else {
            fprintf(stderr, SHIM_NAME ": exec: bad option %s %s\n", a, val);
            usage();
            return 2;
        }
    }
    if (i >= argc) {
        usage();
        return 2;
    }
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

    /* Open everything we need from the host's view before joining anything. */
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld", target);
    if (access(path, F_OK) < 0) {
        warn_err("exec: container process", path, errno);
        return EXIT_SETUP;
    }
    int nsfd[NS_COUNT];
    for (int k = 0; k < NS_COUNT; k++) {
        struct stat theirs, ours;
        char self[64];
        nsfd[k] = -1;
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
        nsfd[k] = open(path, O_RDONLY | O_CLOEXEC);
        if (nsfd[k] < 0) {
            warn_err("exec: open", path, errno);
            return EXIT_SETUP;
        }
    }
    snprintf(path, sizeof path, "/proc/%ld/root", target);
    int rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
        warn_err("exec: open", path, errno);
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
     * user namespace made for the container owns none of the pod's. */
    for (int i = 0; i < NS_COUNT; i++) {
        int k = i == NS_COUNT - 1 ? NS_USER : i + 1;
        if (nsfd[k] < 0)
            continue;
        if (k == NS_USER && (fchdir(rootfd) < 0 || chroot(".") < 0)) {
            warn_err("exec: enter container root", NULL, errno);
            return EXIT_SETUP;
        }
        if (setns(nsfd[k], ns_kinds[k].flag) < 0) {
            snprintf(path, sizeof path, "/proc/%ld/ns/%s", target, ns_kinds[k].procname);
            warn_err("exec: setns", path, errno);
            return EXIT_SETUP;
        }
        close(nsfd[k]);
    }
    /* The container may have pivoted or chrooted: take its root as ours. */
    if (nsfd[NS_USER] < 0 && (fchdir(rootfd) < 0 || chroot(".") < 0)) {
        warn_err("exec: enter container root", NULL, errno);
        return EXIT_SETUP;
    }
    close(rootfd);

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
        close_range(3, ~0U, 0);
        /* seccomp as in the container's init: right before execve, holding CAP_SYS_ADMIN for it when
         * no_new_privs is not set (or before the uid change when capabilities are left alone). */
        int joined_user = nsfd[NS_USER] >= 0;
        int early = 0;
        uint64_t extra = 0;
        if (filter.filter && !nnp) {
            if (caps.present && !(caps.effective & (1ULL << 21 /* CAP_SYS_ADMIN */)))
                extra = 1ULL << 21;
            else if (!caps.present && uid != 0)
                early = 1;
        }
        int r = early ? seccomp_install(&filter) : 0;
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
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) {
            warn_err("exec: wait", NULL, errno);
            return EXIT_SETUP;
        }
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return EXIT_SETUP;
}
