#ifndef BERTH_MONITOR_H
#define BERTH_MONITOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* attach.sock: at most this many clients at once (more are refused by closing them) */
#define ATTACH_MAX 32
/* each client's socket send buffer: a client this far behind is dropped */
#define ATTACH_SNDBUF (1 << 20)
/* Frames on attach.sock: 1 byte type, 4 bytes big-endian length, payload. Monitor -> client: output of stdout (1)
 * or stderr (2, never with a terminal). Client -> monitor: resize (4) with cols, rows as 2 bytes big-endian each. */
#define ATTACH_STDOUT 1
#define ATTACH_STDERR 2
#define ATTACH_RESIZE 4
#define ATTACH_HDR 5
#define ATTACH_RESIZE_LEN (ATTACH_HDR + 4)

/* room for the longest sync message ('X' + length + SYNC_TEXT_MAX) and a few more */
#define MONITOR_SYNC_BUF 1280

struct log_stream {
    int fd;               /* read end; -1 when closed */
    char name[8];         /* "stdout" / "stderr" (inline: the loop reads no .rodata) */
    unsigned char attach_id; /* ATTACH_STDOUT / ATTACH_STDERR */
    char *buf;            /* pending partial line (malloc'd on demand, max_line bytes) */
    size_t len;
};

/* Lives in its own mmap'd block (monitor_alloc in monitor_setup.c) together with the two paths, so that the heap
 * used during setup can be given back whole. */
struct monitor {
    char *bundle;
    char *log_path;       /* relative to log_dir_fd when that is open, else absolute */
    int log_dir_fd;       /* the log directory (O_PATH), or -1 */
    int log_fd;
    size_t max_line;
    struct log_stream out, err;
    pid_t pid;
    int pidfd;
    int sync_fd;          /* container init -> monitor */
    int sig_fd;           /* signalfd: SIGUSR1 reopen log, SIGUSR2 close stdin */
    int stdin_hold;       /* our writer on stdin.fifo (keeps it from reporting EOF) */
    int stdin_src;        /* terminal + stdin: stdin.fifo, copied into the pty master */
    int pty_master;       /* terminal: master (also out.fd) */
    int64_t started;
    char *exec_error;
    unsigned sync_len;    /* bytes of an incomplete message at the start of sync_buf */
    unsigned char sync_buf[MONITOR_SYNC_BUF];
    int attach_fd;        /* listening socket <bundle>/attach.sock, or -1 */
    int clients[ATTACH_MAX]; /* attached clients (nonblocking), -1 = free slot */
    unsigned char client_len[ATTACH_MAX];                 /* bytes of a partial resize frame */
    unsigned char client_buf[ATTACH_MAX][ATTACH_RESIZE_LEN];
    char *oom_file;       /* memory.events (v2) or memory.oom_control (v1) of the container's cgroup, or NULL */
    long oom_base;        /* its oom_kill count when the container was created */
};

/* Opens m->log_path (creating it, and with a directory its missing parents) beneath `dir` when not NULL: no
 * symlink followed out of it or as the file. 0, or -1 with errno. */
int monitor_open_log(struct monitor *m, const char *dir);
/* Drop resident pages that setup touched (read-only pages of this binary, unused stack depth).
 * Call last before a long-lived loop that uses only raw syscalls and .text.hot code. */
void shrink_resident(void);
/* The oom_kill counter in a memory.events / memory.oom_control file; -1 if unreadable. */
long read_oom_kills(const char *file);
/* Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or -1. */
long long proc_start_time(pid_t pid);
struct spec;
/* The monitor, forked by create (monitor_setup.c): sets up the container's stdio and log, forks the container
 * init, writes shim.json, reports 'O' + that JSON line (or 'E' + the failing step, after undoing what it made)
 * on report_fd, then runs its loop. Never returns. */
__attribute__((noreturn)) void monitor_main(struct spec *s, int report_fd);
/* Runs until the container is reaped and its output drained; writes exit.json. Never returns. */
__attribute__((noreturn)) void monitor_run(struct monitor *m);

#endif
