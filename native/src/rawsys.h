/* Raw system calls for the monitor's event loop.
 *
 * The loop must not wander through libc: every distinct libc function it calls faults in (and keeps
 * resident) a 64 KiB window of the binary. These inline wrappers keep the loop's code inside the
 * few pages of .text.hot. They return -errno on failure and never touch errno. */
#ifndef BERTH_RAWSYS_H
#define BERTH_RAWSYS_H

#include <stddef.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
static inline long rsys(long n, long a, long b, long c, long d, long e)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static inline long rsys(long n, long a, long b, long c, long d, long e)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
    return x0;
}
#else
#include <errno.h>
#include <unistd.h>
static inline long rsys(long n, long a, long b, long c, long d, long e)
{
    long r = syscall(n, a, b, c, d, e);
    return r < 0 ? -errno : r;
}
#endif

#define r_read(fd, buf, n) rsys(SYS_read, (fd), (long)(buf), (long)(n), 0, 0)
#define r_write(fd, buf, n) rsys(SYS_write, (fd), (long)(buf), (long)(n), 0, 0)
#define r_writev(fd, iov, n) rsys(SYS_writev, (fd), (long)(iov), (long)(n), 0, 0)
#define r_ppoll(fds, n) rsys(SYS_ppoll, (long)(fds), (long)(n), 0, 0, 8)
#define r_close(fd) rsys(SYS_close, (fd), 0, 0, 0, 0)
#define r_openat(dirfd, path, flags, mode) rsys(SYS_openat, (dirfd), (long)(path), (flags), (mode), 0)
#define r_clock_gettime(clk, ts) rsys(SYS_clock_gettime, (clk), (long)(ts), 0, 0, 0)

/* Byte helpers the compiler will not turn back into libc calls at -O2 for these small sizes. */
static inline const char *r_memchr(const char *p, char c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == c)
            return p + i;
    return NULL;
}

#endif
