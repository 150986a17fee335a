/* The per-container monitor's event loop: CRI log writer, reaper, exit status. */
#include "monitor.h"
#include "init.h"
#include "rawsys.h"
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 16384
#define HOT __attribute__((hot))

static inline void r_memcpy(char *d, const char *s, size_t n)
{
    while (n--)
        *d++ = *s++;
}

#define LOG_FLAGS (O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY)

/* Opens (creating) the log; the fd or -errno. With a log directory: beneath the descriptor the monitor holds of it,
 * the file itself no symlink and no component climbing out (`..`, an absolute link), so a link swapped in at any
 * time cannot send the container's output elsewhere. The same code serves the first open and every reopen. */
HOT static long log_openat(const struct monitor *m)
{
    if (m->log_dir_fd < 0)
        return r_openat(AT_FDCWD, m->log_path, LOG_FLAGS, 0640);
    struct open_how how;
    how.flags = LOG_FLAGS | O_NOFOLLOW;
    how.mode = 0640;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    return rsys(SYS_openat2, m->log_dir_fd, (long)m->log_path, (long)&how, (long)sizeof how, 0);
}

/* Makes the missing directories of the log path beneath dirfd. Each is entered with openat2(RESOLVE_NO_SYMLINKS)
 * from the one before, so a symlink in the path, planted or swapped in meanwhile, fails (ELOOP) instead of a
 * directory being made wherever it points. */
static int make_log_parents(int dirfd, const char *rel)
{
    char name[NAME_MAX + 1];
    int cur = dirfd, e;
    for (const char *p = rel;;) {
        while (*p == '/')
            p++;
        size_t n = strcspn(p, "/");
        if (!p[n])
            break; /* the last component is the file */
        if (n > NAME_MAX) {
            errno = ENAMETOOLONG;
            goto fail;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        p += n;
        if (mkdirat(cur, name, 0755) < 0 && errno != EEXIST)
            goto fail;
        struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                               .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
        int next = openat2_retry(cur, name, &how);
        if (next < 0)
            goto fail;
        if (cur != dirfd)
            close(cur);
        cur = next;
    }
    if (cur != dirfd)
        close(cur);
    return 0;
fail:
    e = errno;
    if (cur != dirfd)
        close(cur);
    errno = e;
    return -1;
}

int monitor_open_log(struct monitor *m, const char *dir)
{
    m->log_dir_fd = -1;
    if (dir) {
        m->log_dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (m->log_dir_fd < 0 || make_log_parents(m->log_dir_fd, m->log_path) < 0)
            return -1;
    }
    long fd = log_openat(m);
    if (fd < 0) {
        errno = (int)-fd;
        return -1;
    }
    m->log_fd = (int)fd;
    return 0;
}

static inline char *put_digits(char *p, unsigned long v, int width)
{
    for (int k = width - 1; k >= 0; k--) {
        p[k] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + width;
}

/* "2026-11-25T12:00:00.123456789Z" (30 chars) without stdio or tz data. */
HOT static size_t fmt_time(char *b)
{
    struct timespec ts;
    r_clock_gettime(CLOCK_REALTIME, &ts);
    int64_t secs = ts.tv_sec;
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0) {
        rem += 86400;
        days--;
    }
    /* civil_from_days (H. Hinnant) */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned mo = mp < 10 ? mp + 3 : mp - 9;
    if (mo <= 2)
        y++;
    char *p = b;
    p = put_digits(p, (unsigned long)y, 4);
    *p++ = '-';
    p = put_digits(p, mo, 2);
    *p++ = '-';
    p = put_digits(p, d, 2);
    *p++ = 'T';
    p = put_digits(p, (unsigned long)(rem / 3600), 2);
    *p++ = ':';
    p = put_digits(p, (unsigned long)(rem / 60 % 60), 2);
    *p++ = ':';
    p = put_digits(p, (unsigned long)(rem % 60), 2);
    *p++ = '.';
    p = put_digits(p, (unsigned long)ts.tv_nsec, 9);
    *p++ = 'Z';
    return (size_t)(p - b);
}

HOT static void emit(struct monitor *m, struct log_stream *s, char tag, const char *a, size_t alen, const char *b,
                 size_t blen)
{
    char prefix[64];
    size_t n = fmt_time(prefix);
    prefix[n++] = ' ';
    for (size_t i = 0; i < sizeof s->name && s->name[i]; i++)
        prefix[n++] = s->name[i];
    prefix[n++] = ' ';
    prefix[n++] = tag;
    prefix[n++] = ' ';
    /* A full line drops its line ending ("\n" already gone; "\r" of "\r\n" too, like containerd). */
    if (tag == 'F') {
        if (blen && b[blen - 1] == '\r')
            blen--;
        else if (!blen && alen && a[alen - 1] == '\r')
            alen--;
    }
    char eol = '\n';
    struct iovec iov[4] = {{prefix, n}, {(void *)a, alen}, {(void *)b, blen}, {&eol, 1}};
    if (m->log_fd >= 0) {
        long w;
        do
            w = r_writev(m->log_fd, iov, 4);
        while (w == -EINTR);
    }
}

HOT static void drop_client(struct monitor *m, int slot)
{
    r_close(m->clients[slot]);
    m->clients[slot] = -1;
    m->client_len[slot] = 0;
}

/* Every attached client gets the chunk as one frame. Sockets are nonblocking: a client that cannot take the
 * whole frame now (its buffer is full) is dropped, so no client ever holds up the container or its log. */
HOT static void broadcast(struct monitor *m, unsigned char id, const char *data, size_t n)
{
    unsigned char hdr[ATTACH_HDR];
    hdr[0] = id;
    hdr[1] = (unsigned char)(n >> 24);
    hdr[2] = (unsigned char)(n >> 16);
    hdr[3] = (unsigned char)(n >> 8);
    hdr[4] = (unsigned char)n;
    struct iovec iov[2];
    iov[0].iov_base = hdr;
    iov[0].iov_len = ATTACH_HDR;
    iov[1].iov_base = (void *)data;
    iov[1].iov_len = n;
    struct msghdr msg;
    msg.msg_name = NULL;
    msg.msg_namelen = 0;
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    msg.msg_control = NULL;
    msg.msg_controllen = 0;
    msg.msg_flags = 0;
    for (int i = 0; i < ATTACH_MAX; i++) {
        if (m->clients[i] < 0)
            continue;
        long w;
        do
            w = rsys(SYS_sendmsg, m->clients[i], (long)&msg, MSG_DONTWAIT | MSG_NOSIGNAL, 0, 0);
        while (w == -EINTR);
        if (w != (long)(ATTACH_HDR + n))
            drop_client(m, i);
    }
}

HOT static void accept_clients(struct monitor *m)
{
    for (;;) {
        long fd = rsys(SYS_accept4, m->attach_fd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -EINTR || fd == -ECONNABORTED)
            continue;
        if (fd < 0)
            return;
        int slot = -1;
        for (int i = 0; i < ATTACH_MAX && slot < 0; i++)
            if (m->clients[i] < 0)
                slot = i;
        if (slot < 0) {
            r_close(fd); /* full: refused */
            continue;
        }
        /* room for bursts (a client reading over kubelet's proxy lags behind a busy container); memory is
         * only used while the client lags. Refused (no CAP_NET_ADMIN): the default buffer. */
        int sndbuf = ATTACH_SNDBUF;
        rsys(SYS_setsockopt, fd, SOL_SOCKET, SO_SNDBUFFORCE, (long)&sndbuf, sizeof sndbuf);
        m->clients[slot] = (int)fd;
        m->client_len[slot] = 0;
    }
}

/* A client sends only resize frames; anything else, EOF or an error ends it. */
HOT static void read_client(struct monitor *m, int slot)
{
    unsigned char in[64];
    long r;
    do
        r = r_read(m->clients[slot], in, sizeof in);
    while (r == -EINTR);
    if (r == -EAGAIN)
        return;
    if (r <= 0) {
        drop_client(m, slot);
        return;
    }
    unsigned char *f = m->client_buf[slot];
    for (long i = 0; i < r; i++) {
        f[m->client_len[slot]++] = in[i];
        unsigned len = m->client_len[slot];
        if (len == ATTACH_HDR && (f[0] != ATTACH_RESIZE || f[1] || f[2] || f[3] || f[4] != 4)) {
            drop_client(m, slot);
            return;
        }
        if (len < ATTACH_RESIZE_LEN)
            continue;
        m->client_len[slot] = 0;
        struct winsize ws;
        ws.ws_col = (unsigned short)(f[5] << 8 | f[6]);
        ws.ws_row = (unsigned short)(f[7] << 8 | f[8]);
        ws.ws_xpixel = 0;
        ws.ws_ypixel = 0;
        if (m->pty_master >= 0 && ws.ws_col && ws.ws_row)
            rsys(SYS_ioctl, m->pty_master, TIOCSWINSZ, (long)&ws, 0, 0); /* the container gets SIGWINCH */
    }
}

/* Feed bytes read from a stream: emit F records per newline, P records when a line exceeds max_line. */
HOT static void feed(struct monitor *m, struct log_stream *s, const char *data, size_t n)
{
    while (n > 0) {
        const char *nl = r_memchr(data, '\n', n);
        size_t seg = nl ? (size_t)(nl - data) : n;
        if (s->len == 0 && nl && seg <= m->max_line) {
            emit(m, s, 'F', NULL, 0, data, seg); /* common case: the whole line is here */
        } else {
            while (seg > 0) {
                if (s->len == m->max_line) {
                    emit(m, s, 'P', s->buf, s->len, NULL, 0);
                    s->len = 0;
                }
                if (!s->buf)
                    return; /* no line buffer (allocation failed at setup): drop */
                size_t take = m->max_line - s->len;
                if (take > seg)
                    take = seg;
                r_memcpy(s->buf + s->len, data, take);
                s->len += take;
                data += take;
                n -= take;
                seg -= take;
            }
            if (!nl)
                return;
            emit(m, s, 'F', s->buf, s->len, NULL, 0);
            s->len = 0;
            seg = 0;
        }
        data += seg + 1;
        n -= seg + 1;
    }
}

static void flush_partial(struct monitor *m, struct log_stream *s)
{
    if (s->len) {
        emit(m, s, 'F', s->buf, s->len, NULL, 0);
        s->len = 0;
    }
}

/* Read once from a stream. Returns 1 if data was read, 0 on EOF/error (stream closed), -1 on EAGAIN. */
HOT static int pump(struct monitor *m, struct log_stream *s, char *buf)
{
    long r = r_read(s->fd, buf, READ_CHUNK);
    if (r > 0) {
        broadcast(m, s->attach_id, buf, (size_t)r);
        feed(m, s, buf, (size_t)r);
        return 1;
    }
    if (r == -EAGAIN || r == -EINTR)
        return -1;
    /* EOF, or EIO from a pty master once the slave side is gone */
    flush_partial(m, s);
    r_close(s->fd);
    s->fd = -1;
    return 0;
}

_Static_assert(MONITOR_SYNC_BUF >= 3 + SYNC_TEXT_MAX + 9, "sync buffer too small for an 'X' message");

/* Take in the complete messages at the start of sync_buf; keep an incomplete one for the next read. */
HOT static void sync_parse(struct monitor *m)
{
    unsigned char *b = m->sync_buf;
    size_t n = m->sync_len, p = 0;
    while (p < n) {
        size_t need;
        if (b[p] == SYNC_STARTED) {
            need = 9;
        } else if (b[p] == SYNC_EXECERR) {
            if (n - p < 3)
                break;
            need = 3 + ((size_t)b[p + 1] | (size_t)b[p + 2] << 8);
            if (need > sizeof m->sync_buf) { /* cannot be: drop what is here */
                p = n;
                break;
            }
        } else {
            p++; /* SYNC_READY (or a stray byte) */
            continue;
        }
        if (n - p < need)
            break;
        if (b[p] == SYNC_STARTED) {
            int64_t v = 0;
            for (int i = 7; i >= 0; i--) /* native byte order, as the init wrote it */
                ((unsigned char *)&v)[i] = b[p + 1 + i];
            m->started = v;
        } else {
            /* exit 127 follows: this path may use libc */
            free(m->exec_error);
            m->exec_error = strndup((const char *)b + p + 3, need - 3);
        }
        p += need;
    }
    for (size_t i = p; i < n; i++) /* move the incomplete message to the front */
        b[i - p] = b[i];
    m->sync_len = (unsigned)(n - p);
}

/* Returns 1 after a read, 0 when the pipe closed, -1 on EAGAIN. */
HOT static int read_sync(struct monitor *m)
{
    long r;
    do
        r = r_read(m->sync_fd, m->sync_buf + m->sync_len, sizeof m->sync_buf - m->sync_len);
    while (r == -EINTR);
    if (r == -EAGAIN)
        return -1;
    if (r <= 0) {
        r_close(m->sync_fd);
        m->sync_fd = -1;
        return 0;
    }
    m->sync_len += (unsigned)r;
    sync_parse(m);
    return 1;
}

HOT static void handle_signals(struct monitor *m)
{
    struct signalfd_siginfo si;
    while (r_read(m->sig_fd, &si, sizeof si) == (long)sizeof si) {
        if (si.ssi_signo == SIGUSR1) {
            /* berth renamed the file (kubelet-style rotation): continue in a fresh one */
            /* a refused open (a symlink put in the file's place) keeps the file we have */
            long fd = log_openat(m);
            if (fd >= 0) {
                if (m->log_fd >= 0)
                    r_close(m->log_fd);
                m->log_fd = (int)fd;
            }
        } else if (si.ssi_signo == SIGUSR2) {
            /* stdin once: berth wrote and closed its end; let the container see EOF */
            if (m->stdin_hold >= 0) {
                r_close(m->stdin_hold);
                m->stdin_hold = -1;
            }
            if (m->stdin_src >= 0) {
                r_close(m->stdin_src);
                m->stdin_src = -1;
                char eot = 4;
                if (m->pty_master >= 0)
                    r_write(m->pty_master, &eot, 1);
            }
        }
    }
}

HOT static void copy_stdin(struct monitor *m, char *buf)
{
    long r = r_read(m->stdin_src, buf, READ_CHUNK);
    if (r > 0 && m->pty_master >= 0) {
        /* master is non-blocking: a container that does not read its terminal loses input, never the log */
        r_write(m->pty_master, buf, r);
    }
}

static void write_exit(struct monitor *m, int status, int64_t finished)
{
    char buf[200];
    int code = 0, sig = 0;
    if (WIFEXITED(status)) {
        code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        sig = WTERMSIG(status);
        code = 128 + sig;
    }
    if (m->exec_error) {
        char msg[1300];
        int n = snprintf(msg, sizeof msg, "%s\n", m->exec_error);
        atomic_write(m->bundle, "exec-error", msg, (size_t)n);
    }
    /* OOM-killed: the cgroup's oom_kill count went up and the container died of SIGKILL */
    int oom = 0;
    if (m->oom_file && sig == SIGKILL) {
        long now = read_oom_kills(m->oom_file);
        oom = now > m->oom_base && m->oom_base >= 0;
    }
    int n = snprintf(buf, sizeof buf,
                     "{\"exitCode\":%d,\"signal\":%d,\"startedAt\":%lld,\"finishedAt\":%lld,\"oomKilled\":%s}\n", code,
                     sig, (long long)m->started, (long long)finished, oom ? "true" : "false");
    atomic_write(m->bundle, "exit.json", buf, (size_t)n);
}

/* Drop the page-table entries of everything setup touched: read-only file pages of this binary
 * (refaulted from the page cache on use, and only the loop's few windows are) and the unused
 * depth of the stack. Writable or copied-on-write mappings are left alone. */
static uintptr_t stack_low;

HOT __attribute__((noinline)) static void shrink_stack(void)
{
    volatile char here = 0;
    uintptr_t top = ((uintptr_t)&here & ~(uintptr_t)4095) - 4096;
    if (stack_low && top > stack_low)
        rsys(SYS_madvise, (long)stack_low, (long)(top - stack_low), MADV_DONTNEED, 0, 0);
}

/* Runs from .text.hot: after the zap, execution must only touch the loop's window. */
HOT __attribute__((noinline)) static void zap_and_shrink(const void *r, int nr)
{
    const uintptr_t *v = r;
    for (int i = 0; i < nr; i++)
        rsys(SYS_madvise, (long)v[2 * i], (long)(v[2 * i + 1] - v[2 * i]), MADV_DONTNEED, 0, 0);
    shrink_stack();
}

void shrink_resident(void)
{
    struct stat exe;
    FILE *f;
    char line[512];
    struct {
        uintptr_t start, end;
    } ranges[16] = {{0, 0}};
    int nr = 0, ours = 0;
    uintptr_t start = 0, end = 0;

    if (stat("/proc/self/exe", &exe) < 0 || !(f = fopen("/proc/self/smaps", "re")))
        return;
    while (fgets(line, sizeof line, f)) {
        unsigned long s0, e0, ino;
        unsigned maj, mnr;
        char perms[8];
        long anon;
        if (sscanf(line, "%lx-%lx %7s %*x %x:%x %lu", &s0, &e0, perms, &maj, &mnr, &ino) == 6) {
            start = s0;
            end = e0;
            ours = ino == exe.st_ino && makedev(maj, mnr) == exe.st_dev && perms[1] != 'w';
            if (strstr(line, "[stack]"))
                stack_low = s0;
        } else if (ours && sscanf(line, "Anonymous: %ld kB", &anon) == 1) {
            if (anon == 0 && nr < 16) {
                ranges[nr].start = start;
                ranges[nr].end = end;
                nr++;
            }
            ours = 0;
        }
    }
    fclose(f);
    malloc_trim(0);
    zap_and_shrink(ranges, nr);
}

/* The loop, kept apart from the exit path so that its code stays in .text.hot. */
HOT __attribute__((noinline)) static void monitor_loop(struct monitor *m, char *buf)
{
    for (;;) {
        struct pollfd p[7 + ATTACH_MAX];
        unsigned char slot_at[ATTACH_MAX];
        int n = 0, ipid, isig, isync = -1, iout = -1, ierr = -1, iin = -1, ilisten = -1, iclient;
        p[ipid = n++] = (struct pollfd){m->pidfd, POLLIN, 0};
        p[isig = n++] = (struct pollfd){m->sig_fd, POLLIN, 0};
        if (m->sync_fd >= 0)
            p[isync = n++] = (struct pollfd){m->sync_fd, POLLIN, 0};
        if (m->out.fd >= 0)
            p[iout = n++] = (struct pollfd){m->out.fd, POLLIN, 0};
        if (m->err.fd >= 0)
            p[ierr = n++] = (struct pollfd){m->err.fd, POLLIN, 0};
        if (m->stdin_src >= 0)
            p[iin = n++] = (struct pollfd){m->stdin_src, POLLIN, 0};
        if (m->attach_fd >= 0)
            p[ilisten = n++] = (struct pollfd){m->attach_fd, POLLIN, 0};
        iclient = n;
        for (int i = 0; i < ATTACH_MAX; i++)
            if (m->clients[i] >= 0) {
                slot_at[n - iclient] = (unsigned char)i;
                p[n++] = (struct pollfd){m->clients[i], POLLIN, 0};
            }
        long r = r_ppoll(p, n);
        if (r == -EINTR)
            continue;
        if (r < 0)
            return;
        if (p[isig].revents)
            handle_signals(m);
        /* before any output is read: a client whose connect completed before it gets it */
        if (ilisten >= 0 && p[ilisten].revents)
            accept_clients(m);
        if (isync >= 0 && p[isync].revents)
            read_sync(m);
        if (iout >= 0 && p[iout].revents)
            pump(m, &m->out, buf);
        if (ierr >= 0 && p[ierr].revents)
            pump(m, &m->err, buf);
        if (iin >= 0 && p[iin].revents)
            copy_stdin(m, buf);
        for (int k = iclient; k < n; k++) {
            int slot = slot_at[k - iclient];
            if (p[k].revents && m->clients[slot] == p[k].fd) /* not dropped meanwhile */
                read_client(m, slot);
        }
        if (p[ipid].revents)
            return;
    }
}

long read_oom_kills(const char *file)
{
    char buf[1024];
    if (read_file(file, buf, sizeof buf) < 0)
        return -1;
    for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        long v;
        if (sscanf(l, "oom_kill %ld", &v) == 1)
            return v;
    }
    return -1;
}

long long proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_file(path, buf, sizeof buf) < 0)
        return -1;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* after ") ": field 3 (state) onwards; starttime is field 22 */
    p += 2;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoll(p, NULL, 10) : -1;
}

void monitor_run(struct monitor *m)
{
    siginfo_t si;
    int status = 0;
    /* read buffer + one line buffer per stream; pages become resident only when used */
    size_t len = READ_CHUNK + 2 * m->max_line;
    char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        _exit(1);
    m->out.buf = buf + READ_CHUNK;
    m->err.buf = buf + READ_CHUNK + m->max_line;
    shrink_resident();
    monitor_loop(m, buf);

    memset(&si, 0, sizeof si);
    int r;
    do
        r = waitid(P_PIDFD, (id_t)m->pidfd, &si, WEXITED);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
        if (si.si_code == CLD_EXITED)
            status = (si.si_status & 0xff) << 8;
        else
            status = si.si_status & 0x7f; /* killed / dumped */
    } else {
        while (waitpid(m->pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    int64_t finished = now_ns();
    /* Drain: everything the container wrote is in the pipes now. Stop at the first EAGAIN so a
     * leftover process sharing the pipes cannot keep us alive. */
    if (m->sync_fd >= 0) {
        fcntl(m->sync_fd, F_SETFL, O_NONBLOCK);
        while (m->sync_fd >= 0 && read_sync(m) > 0)
            ;
    }
    struct log_stream *streams[2] = {&m->out, &m->err};
    for (int i = 0; i < 2; i++) {
        struct log_stream *s = streams[i];
        if (s->fd < 0)
            continue;
        fcntl(s->fd, F_SETFL, O_NONBLOCK);
        while (s->fd >= 0 && pump(m, s, buf) > 0)
            ;
        flush_partial(m, s);
    }
    /* clients get EOF after the last output; the socket goes before exit.json says the container is gone */
    for (int i = 0; i < ATTACH_MAX; i++)
        if (m->clients[i] >= 0)
            close(m->clients[i]);
    if (m->attach_fd >= 0) {
        char sock[PATH_MAX];
        close(m->attach_fd);
        if (path_join(sock, sizeof sock, m->bundle, "attach.sock") == 0)
            unlink(sock);
    }
    write_exit(m, status, finished);
    _exit(0);
}
