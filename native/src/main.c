/* berth-shim: the only code between fork and exec for berth containers. See ../README.md. */
#include "shim.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
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
    }
    fprintf(stderr, "usage: " SHIM_NAME " create <bundle> | exec <pid> [opts] -- cmd... |\n"
                    "       sandbox <dir> [--net] [--ipc] [--uts] [--pid] [--hostname NAME] | unpin <dir>\n");
    return 2;
}
