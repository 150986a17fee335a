/* berth-shim create <bundle>: load the spec, fork the monitor (monitor_setup.c), which forks the container
 * init (init.c); print what the monitor reports. */
#include "monitor.h"
#include "spec.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* Forks the monitor (monitor_setup.c), which makes, and on failure undoes, everything that outlives create:
 * the fifos, shim.json, the init. Returns the read end of its report pipe, or -1 with the error printed. */
static int fork_monitor(struct spec *s, const char *bundle, pid_t *mon)
{
    int rep[2];
    /* While the cgroups are still empty: the init joins them first thing, so nothing of the container's
     * own ever runs without the policy. */
    if (s->device_rules) {
        char err[1200];
        if (devices_apply(s->cgroup_procs, s->ncgroup_procs, s->device_rules, s->ndevice_rules, err, sizeof err) < 0) {
            fprintf(stderr, SHIM_NAME ": create %s: %s\n", bundle, err);
            return -1;
        }
    }
    if (pipe2(rep, O_CLOEXEC) < 0) {
        warn_err("create: pipe", NULL, errno);
        return -1;
    }
    fflush(NULL);
    *mon = fork();
    if (*mon < 0) {
        warn_err("create: fork monitor", NULL, errno);
        return -1;
    }
    if (*mon == 0) {
        close(rep[0]);
        monitor_main(s, rep[1]);
    }
    close(rep[1]);
    return rep[0];
}

int cmd_create(int argc, char **argv)
{
    char *bundle;
    struct spec s;
    pid_t mon;

    if (argc != 2) {
        fprintf(stderr, "usage: " SHIM_NAME " create <bundle-dir>\n");
        return 2;
    }
    if (load(argv[1], &bundle, &s) < 0)
        return 1;
    int report = fork_monitor(&s, bundle, &mon);
    spec_free(&s);
    return report < 0 ? 1 : create_wait(mon, report, bundle);
}
