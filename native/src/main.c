/* berth-shim: the only code between fork and exec for berth containers. See ../README.md. */
#include "shim.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

int main(int argc, char **argv)
{
    /* Before anything: the init and the exec child run inside containers with the container's credentials,
     * still as this program, until their execve. Nothing there may ptrace them or open their /proc fds. */
    int r = set_undumpable();
    if (r < 0) {
        warn_err("prctl(PR_SET_DUMPABLE, 0)", NULL, -r);
        return 1;
    }
    /* berth runs this binary from a sealed memfd (/proc/<pid>/fd/N): comm would be "N" */
    prctl(PR_SET_NAME, SHIM_NAME, 0, 0, 0);
    if (argc >= 2) {
        const char *cmd = argv[1];
        if (strcmp(cmd, "create") == 0)
            return cmd_create(argc - 1, argv + 1);
        if (strcmp(cmd, "exec") == 0)
            return cmd_exec(argc - 1, argv + 1);
        if (strcmp(cmd, "sandbox") == 0)
            return cmd_sandbox(argc - 1, argv + 1);
        if (strcmp(cmd, "unpin") == 0)
            return cmd_unpin(argc - 1, argv + 1);
        if (strcmp(cmd, "portforward") == 0)
            return cmd_portforward(argc - 1, argv + 1);
    }
    fprintf(stderr, "usage: " SHIM_NAME " create <bundle> | exec <pid> [opts] -- cmd... |\n"
                    "       sandbox <dir> [--net] [--ipc] [--uts] [--pid] [--hostname NAME] | unpin <dir> |\n"
                    "       portforward <netns-path|-> <port>\n");
    return 2;
}
