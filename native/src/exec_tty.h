/* exec --tty: a pty in the container's devpts and the relay between it and the caller's stdio. */
#ifndef BERTH_EXEC_TTY_H
#define BERTH_EXEC_TTY_H

#include <sys/types.h>

struct exec_tty {
    int master, slave; /* -1 when closed */
    unsigned short cols, rows; /* initial size; 0: leave the kernel's default */
    int no_stdin;              /* 1: fd 0 is not read (no EOF is sent) */
};

/* "COLSxROWS" (1..65535 each). Returns 0 or -1. */
int tty_parse_size(const char *s, unsigned short *cols, unsigned short *rows);
/* Open a pty from the devpts at /dev/pts of the current root (the container's, after chroot), so the slave is
 * /dev/pts/N there. Returns 0, or -1 with a message in err. */
int tty_open(struct exec_tty *t, char *err, size_t errlen);
/* In the exec child: new session, the slave as stdin/stdout/stderr and controlling terminal. Returns 0 or -errno. */
int tty_become_child(struct exec_tty *t);
/* In the parent after the fork: relay stdin -> master, master -> stdout, "COLS ROWS\n" lines on resize_fd (-1:
 * none) -> TIOCSWINSZ, until the child has exited and the master is drained. Returns the child's wait status. */
int tty_relay(struct exec_tty *t, pid_t child, int resize_fd);

#endif
