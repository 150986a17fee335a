#ifndef BERTH_INIT_H
#define BERTH_INIT_H

#include "spec.h"

/* Messages on the sync pipe, container init -> monitor. */
#define SYNC_READY 'R'   /* setup done, blocked on start.fifo */
#define SYNC_ERROR 'E'   /* followed by text, then the init exits */
#define SYNC_STARTED 'S' /* followed by 8 bytes: int64 unix ns when released */
#define SYNC_EXECERR 'X' /* followed by a 2-byte little-endian length and that much text; exit 127 follows */
#define SYNC_TEXT_MAX 1200 /* longest text of an 'X' message */

struct child_ctx {
    struct spec *s;
    int sync_fd;            /* write end of the sync pipe */
    int stdin_fd;           /* -1: /dev/null */
    int stdout_fd, stderr_fd; /* pipe write ends, or -1 with a pty */
    int pty_slave_fd;       /* pty slave when terminal, else -1 */
    const char *pty_path;   /* its path (/dev/pts/N), bind-mounted onto the container's /dev/console */
    const char *start_fifo; /* <bundle>/start.fifo */
    int userns_fd;          /* the new user namespace (mapped by the monitor), or -1 */
};

__attribute__((noreturn)) void init_main(struct child_ctx *c);

/* rootfs helpers shared with nothing else, exported for clarity. */
int lock_flags(const char *path, unsigned long *flags);

#endif
