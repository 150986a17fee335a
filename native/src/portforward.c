/* berth-shim portforward <netns-path|-> <port> [--timeout-ms N] [--pass-fd]: one TCP connection to localhost:<port>
 * inside a network namespace, relayed to this process's stdin/stdout, or (--pass-fd) handed to berth over the unix
 * socket at fd 3 so that berth reads and writes it directly, with no relay hop. A process of its own,
 * single-threaded, so that berth never moves one of its own threads into a pod's namespace. */
#include "shim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATUS_FD 3
#define PF_CHUNK 65536
#define DEFAULT_CONNECT_TIMEOUT_MS 5000

static void usage(void)
{
    fprintf(stderr, "usage: " SHIM_NAME " portforward <netns-path|-> <port 1-65535> [--timeout-ms N] [--pass-fd]\n");
}

/* "ok\n", or the reason, on the status fd (stderr when berth passed none). */
static void report(const char *text)
{
    int fd = fcntl(STATUS_FD, F_GETFD) >= 0 ? STATUS_FD : 2;
    char line[300];
    int n = snprintf(line, sizeof line, "%s\n", text);
    write_all(fd, line, (size_t)n);
    if (fd == STATUS_FD)
        close(STATUS_FD);
}

/* Nonblocking connect bounded by timeout_ms. Returns the socket, or -errno. */
static int dial(int family, int port, int timeout_ms)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_addr = in6addr_loopback;
        len = sizeof *a;
    }
    int s = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    if (connect(s, (struct sockaddr *)&ss, len) == 0)
        return s;
    int e = errno;
    if (e == EINPROGRESS) {
        struct pollfd p = {s, POLLOUT, 0};
        int r;
        while ((r = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
            ;
        socklen_t el = sizeof e;
        if (r == 0)
            e = ETIMEDOUT;
        else if (r < 0 || getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
            e = errno;
        if (e == 0)
            return s;
    }
    close(s);
    return -e;
}

struct pipe_dir {
    int from, to;     /* -1 once closed */
    char *buf;
    size_t len, off;
    int eof;          /* the source ended (or failed): flush, then close/shutdown the destination */
};

/* Nonblocking both ways with a buffer per direction: a peer that echoes can never deadlock us against it. */
static int relay(int sock)
{
    struct pipe_dir up = {0, sock, malloc(PF_CHUNK), 0, 0, 0};   /* stdin -> socket */
    struct pipe_dir down = {sock, 1, malloc(PF_CHUNK), 0, 0, 0}; /* socket -> stdout */
    int failed = 0;
    if (!up.buf || !down.buf)
        return 1;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
    while (up.to >= 0 || down.to >= 0) {
        struct pipe_dir *d[2] = {&up, &down};
        struct pollfd p[4];
        int idx[2][2] = {{-1, -1}, {-1, -1}}, n = 0;
        for (int k = 0; k < 2; k++) {
            if (d[k]->to < 0)
                continue;
            if (!d[k]->eof && d[k]->len == 0)
                p[idx[k][0] = n++] = (struct pollfd){d[k]->from, POLLIN, 0};
            if (d[k]->len)
                p[idx[k][1] = n++] = (struct pollfd){d[k]->to, POLLOUT, 0};
        }
        if (n && poll(p, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        for (int k = 0; k < 2; k++) {
            struct pipe_dir *x = d[k];
            if (x->to < 0)
                continue;
            if (idx[k][0] >= 0 && p[idx[k][0]].revents) {
                ssize_t r = read(x->from, x->buf, PF_CHUNK);
                if (r > 0) {
                    x->len = (size_t)r;
                    x->off = 0;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    if (r < 0 && errno != ECONNRESET)
                        failed = 1;
                    x->eof = 1;
                }
            }
            if (x->len && (idx[k][1] < 0 || p[idx[k][1]].revents)) {
                ssize_t w = x == &up ? send(x->to, x->buf + x->off, x->len, MSG_NOSIGNAL)
                                     : write(x->to, x->buf + x->off, x->len);
                if (w > 0) {
                    x->off += (size_t)w;
                    x->len -= (size_t)w;
                } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    x->len = 0; /* the reader is gone: this direction is over */
                    x->eof = 1;
                }
            }
            if (x->eof && x->len == 0) {
                /* half-close: the peer sees our end of data, its reply still flows the other way */
                if (x == &up)
                    shutdown(sock, SHUT_WR);
                else
                    close(1);
                x->to = -1;
            }
        }
    }
    close(sock);
    return failed;
}

/* "ok\n" with the connected socket attached (SCM_RIGHTS) on the unix socket at the status fd. */
static int pass_socket(int sock)
{
    char text[] = "ok\n";
    struct iovec iov = {text, sizeof text - 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &sock, sizeof(int));
    ssize_t r;
    while ((r = sendmsg(STATUS_FD, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    close(sock);
    close(STATUS_FD);
    return r == (ssize_t)iov.iov_len ? 0 : 1;
}

int cmd_portforward(int argc, char **argv)
{
    long port, v;
    int timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    int pass_fd = 0;
    if (argc < 3) {
        usage();
        return 2;
    }
    if (parse_long(argv[2], &port) < 0 || port < 1 || port > 65535) {
        fprintf(stderr, SHIM_NAME ": portforward: bad port %s (1-65535)\n", argv[2]);
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--pass-fd") == 0) {
            pass_fd = 1;
        } else if (strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc) {
            if (parse_long(argv[++i], &v) < 0 || v < 1 || v > 600000) {
                usage();
                return 2;
            }
            timeout_ms = (int)v;
        } else {
            usage();
            return 2;
        }
    }
    if (pass_fd) {
        struct stat st;
        if (fstat(STATUS_FD, &st) < 0 || !S_ISSOCK(st.st_mode)) {
            fprintf(stderr, SHIM_NAME ": portforward: --pass-fd needs a unix socket at fd %d\n", STATUS_FD);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    char msg[300];
    const char *ns = argv[1];
    if (strcmp(ns, "-") != 0) {
        int fd = open(ns, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) {
            fmt_err(msg, sizeof msg, "enter the pod's network namespace", ns, errno);
            report(msg);
            return 1;
        }
        close(fd);
    }
    int s = dial(AF_INET, (int)port, timeout_ms);
    if (s == -ECONNREFUSED || s == -EADDRNOTAVAIL) {
        /* a server listening on ::1 only */
        int s6 = dial(AF_INET6, (int)port, timeout_ms);
        if (s6 >= 0 || (s6 != -EADDRNOTAVAIL && s6 != -EAFNOSUPPORT && s6 != -ENETUNREACH && s6 != -ECONNREFUSED))
            s = s6;
    }
    if (s < 0) {
        snprintf(msg, sizeof msg, "connect to localhost:%ld: %s", port, strerror(-s));
        report(msg);
        return 1;
    }
    if (pass_fd)
        return pass_socket(s);
    report("ok");
    return relay(s);
}
