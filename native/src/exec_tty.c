/* exec --tty: the pty comes from the container's own devpts (so `tty` there names /dev/pts/N and the slave
 * obeys the container's devpts options), and this process, which stays outside the command as its parent,
 * relays between the master and the caller's stdio. */
#include "exec_tty.h"
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define RELAY_CHUNK 16384
/* After the command exited: how long the master may stay quiet before the relay stops (a background process
 * still holding the slave would otherwise keep the session open), and how long the drain may take at most. */
#define DRAIN_QUIET_MS 50
#define DRAIN_MAX_MS 2000

int tty_parse_size(const char *s, unsigned short *cols, unsigned short *rows)
{
    char *end;
    errno = 0;
    unsigned long c = strtoul(s, &end, 10);
    if (errno || end == s || *end != 'x' || c < 1 || c > 65535)
        return -1;
    const char *r0 = end + 1;
    unsigned long r = strtoul(r0, &end, 10);
    if (errno || end == r0 || *end || r < 1 || r > 65535)
        return -1;
    *cols = (unsigned short)c;
    *rows = (unsigned short)r;
    return 0;
}

int tty_open(struct exec_tty *t, char *err, size_t errlen)
{
    int unlock = 0;
    unsigned ptn = 0;
    struct stat st;
    t->master = t->slave = -1;
    /* The container controls its /dev: whatever is at /dev/pts/ptmx must be the multiplexer of a devpts (5:2),
     * not a fifo or another device it put there. The path resolves inside the container's root (chrooted). */
    t->master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (t->master < 0) {
        fmt_err(err, errlen, "exec: open the container's pty multiplexer", "/dev/pts/ptmx", errno);
        return -1;
    }
    if (fstat(t->master, &st) < 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 5 || minor(st.st_rdev) != 2) {
        fmt_err(err, errlen, "exec: not a devpts multiplexer", "/dev/pts/ptmx", 0);
        goto fail;
    }
    if (ioctl(t->master, TIOCSPTLCK, &unlock) < 0 || ioctl(t->master, TIOCGPTN, &ptn) < 0) {
        fmt_err(err, errlen, "exec: unlock pty", "/dev/pts/ptmx", errno);
        goto fail;
    }
    /* by the master, not by path: nothing the container put at /dev/pts/N is opened */
    t->slave = ioctl(t->master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (t->slave < 0) {
        fmt_err(err, errlen, "exec: open pty slave", NULL, errno);
        goto fail;
    }
    if (t->cols && t->rows) {
        struct winsize ws = {.ws_row = t->rows, .ws_col = t->cols};
        ioctl(t->master, TIOCSWINSZ, &ws);
    }
    return 0;
fail:
    close(t->master);
    t->master = -1;
    return -1;
}

int tty_become_child(struct exec_tty *t)
{
    if (setsid() < 0 || ioctl(t->slave, TIOCSCTTY, 0) < 0)
        return -errno;
    for (int fd = 0; fd < 3; fd++)
        if (dup2(t->slave, fd) < 0)
            return -errno;
    return 0;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "COLS ROWS\n" lines; a malformed line is skipped. */
static void apply_resizes(int master, char *buf, size_t *len)
{
    char *nl;
    while ((nl = memchr(buf, '\n', *len))) {
        *nl = 0;
        unsigned long c, r;
        char *end;
        c = strtoul(buf, &end, 10);
        if (end != buf && *end == ' ') {
            char *r0 = end + 1;
            r = strtoul(r0, &end, 10);
            if (end != r0 && !*end && c >= 1 && c <= 65535 && r >= 1 && r <= 65535) {
                struct winsize ws = {.ws_row = (unsigned short)r, .ws_col = (unsigned short)c};
                ioctl(master, TIOCSWINSZ, &ws); /* the foreground process group gets SIGWINCH */
            }
        }
        size_t used = (size_t)(nl - buf) + 1;
        memmove(buf, nl + 1, *len - used);
        *len -= used;
    }
}

/* Stdin ended: the terminal's end-of-file character, as typing ^D would (twice after a partial line: the
 * first only hands the line over). The command keeps running and its output keeps flowing. */
static void send_eof(int master, int mid_line)
{
    struct termios tio;
    char eof = 4;
    if (tcgetattr(master, &tio) == 0 && tio.c_cc[VEOF] != _POSIX_VDISABLE)
        eof = (char)tio.c_cc[VEOF];
    char two[2] = {eof, eof};
    if (write(master, two, mid_line ? 2 : 1) < 0) {
        /* the terminal's input is full: the command does not read it, nor would it read the EOF */
    }
}

int tty_relay(struct exec_tty *t, pid_t child, int resize_fd)
{
    static char in[RELAY_CHUNK], out[RELAY_CHUNK];
    char rbuf[64];
    size_t in_len = 0, in_off = 0, r_len = 0;
    int in_open = t->no_stdin ? 0 : 1, out_ok = 1, exited = 0, status = 0, mid_line = 0;
    int64_t exited_at = 0;
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);

    close(t->slave);
    t->slave = -1;
    for (;;) {
        struct pollfd p[4];
        int n = 0, iin = -1, imaster, iresize = -1, ipid = -1;
        if (in_open && in_len == 0)
            p[iin = n++] = (struct pollfd){0, POLLIN, 0};
        p[imaster = n++] = (struct pollfd){t->master, (short)(POLLIN | (in_len ? POLLOUT : 0)), 0};
        if (resize_fd >= 0)
            p[iresize = n++] = (struct pollfd){resize_fd, POLLIN, 0};
        if (!exited && pidfd >= 0)
            p[ipid = n++] = (struct pollfd){pidfd, POLLIN, 0};
        int timeout = -1;
        if (exited) {
            int64_t left = exited_at + DRAIN_MAX_MS - mono_ms();
            if (left <= 0)
                break;
            timeout = left < DRAIN_QUIET_MS ? (int)left : DRAIN_QUIET_MS;
        } else if (pidfd < 0) {
            timeout = 100; /* no pidfd: look at the child now and then */
        }
        int r = poll(p, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR)
            break;
        if (r == 0 && exited)
            break; /* drained: quiet since the command exited */
        if (r > 0 && iin >= 0 && p[iin].revents) {
            ssize_t k = read(0, in, sizeof in);
            if (k > 0) {
                in_len = (size_t)k;
                in_off = 0;
            } else if (k == 0 || (errno != EINTR && errno != EAGAIN)) {
                in_open = 0;
                send_eof(t->master, mid_line);
            }
        }
        if (r > 0 && p[imaster].revents & POLLOUT && in_len) {
            ssize_t k = write(t->master, in + in_off, in_len);
            if (k > 0) {
                mid_line = in[in_off + (size_t)k - 1] != '\n';
                in_off += (size_t)k;
                in_len -= (size_t)k;
            } else if (k < 0 && errno != EAGAIN && errno != EINTR) {
                in_len = 0; /* the terminal is gone */
                in_open = 0;
            }
        }
        if (r > 0 && p[imaster].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t k = read(t->master, out, sizeof out);
            if (k > 0) {
                /* berth gone (EPIPE): keep reading so the command never blocks on a full terminal */
                if (out_ok && write_all(1, out, (size_t)k) < 0)
                    out_ok = 0;
            } else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
                /* EIO: every slave fd is closed; nothing more will come */
                if (exited)
                    break;
                if (p[imaster].revents & POLLHUP) {
                    /* the slave is closed but the command lives on (it closed its terminal): wait for it */
                    if (pidfd >= 0) {
                        struct pollfd w = {pidfd, POLLIN, 0};
                        while (poll(&w, 1, -1) < 0 && errno == EINTR)
                            ;
                    }
                    break;
                }
            }
        }
        if (r > 0 && iresize >= 0 && p[iresize].revents) {
            ssize_t k = read(resize_fd, rbuf + r_len, sizeof rbuf - r_len);
            if (k > 0) {
                r_len += (size_t)k;
                apply_resizes(t->master, rbuf, &r_len);
                if (r_len == sizeof rbuf)
                    r_len = 0; /* a line that long is no resize */
            } else if (k == 0 || (errno != EINTR && errno != EAGAIN)) {
                resize_fd = -1;
            }
        }
        if (!exited && ((ipid >= 0 && r > 0 && p[ipid].revents) || (pidfd < 0 && waitpid(child, &status, WNOHANG) == child))) {
            exited = pidfd >= 0 ? 1 : 2;
            exited_at = mono_ms();
        }
    }
    if (pidfd >= 0)
        close(pidfd);
    if (exited != 2) {
        while (waitpid(child, &status, 0) < 0) {
            if (errno != EINTR)
                return -1;
        }
    }
    return status;
}
