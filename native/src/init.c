/* The container init between fork and exec: namespaces, cgroups, rootfs, credentials.
 *
 * init_main runs native/README.md's steps 1-7 ("Container init: order of operations") as one function each:
 * init_stdio, join_and_configure, build_rootfs, drop_privileges, wait_and_exec. One error convention: a
 * failure before the start is child_fail(step, path, errno), sent to the monitor as 'E' + that text, which
 * create prints; nothing is undone here, as everything the init made dies with it (its mount namespace, its
 * fds) and the monitor kills and reaps it. After the start, a failure is an exec-error (report_exec_failure). */
#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static struct child_ctx *ctx;
static int userns_fd = -1; /* a new user namespace: mounts are id-mapped to it, the init enters it last */

__attribute__((noreturn)) static void child_fail_msg(const char *msg)
{
    size_t len = strlen(msg);
    char buf[1200];
    if (len > sizeof buf - 2)
        len = sizeof buf - 2;
    buf[0] = SYNC_ERROR;
    memcpy(buf + 1, msg, len);
    write_all(ctx->sync_fd, buf, len + 1);
    _exit(1);
}

__attribute__((noreturn)) static void child_fail(const char *step, const char *path, int err)
{
    char msg[1100];
    fmt_err(msg, sizeof msg, step, path, err);
    child_fail_msg(msg);
}

/* ---------- path resolution inside the rootfs ---------- */

static int openat2_compat(int dirfd, const char *path, int flags)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)flags;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    while (*path == '/')
        path++;
    if (!*path)
        path = ".";
    int fd = openat2_retry(dirfd, path, &how);
    if (fd < 0 && errno == ENOSYS)
        fd = openat(dirfd, path, flags); /* old kernel: no symlink containment */
    return fd;
}

/* Open path (relative to the rootfs, symlinks resolved inside it) as O_PATH.
 * create: 0 = must exist, 1 = create missing dirs, 2 = missing last component is a file. */
static int open_in_root(int rootfd, const char *path, int create)
{
    int fd = openat2_compat(rootfd, path, O_PATH | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT || !create)
        return fd;
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, len + 1);
    size_t start = 0;
    while (start < len) {
        while (start < len && buf[start] == '/')
            start++;
        if (start >= len)
            break;
        size_t end = start;
        while (end < len && buf[end] != '/')
            end++;
        int last = end >= len;
        char saved = buf[end];
        buf[end] = 0;
        fd = openat2_compat(rootfd, buf, O_PATH | O_CLOEXEC);
        if (fd >= 0) {
            close(fd);
        } else {
            if (errno != ENOENT)
                return -1;
            char psaved = buf[start];
            buf[start] = 0;
            int pfd = openat2_compat(rootfd, buf, O_PATH | O_DIRECTORY | O_CLOEXEC);
            buf[start] = psaved;
            if (pfd < 0)
                return -1;
            int r;
            if (last && create == 2) {
                r = openat(pfd, buf + start, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (r >= 0)
                    close(r);
            } else {
                r = mkdirat(pfd, buf + start, 0755);
            }
            int e = errno;
            close(pfd);
            if (r < 0 && e != EEXIST) {
                errno = e;
                return -1;
            }
        }
        buf[end] = saved;
        start = end;
    }
    return openat2_compat(rootfd, path, O_PATH | O_CLOEXEC);
}

static void fdpath(char *buf, size_t len, int fd)
{
    snprintf(buf, len, "/proc/self/fd/%d", fd);
}

int lock_flags(const char *path, unsigned long *flags)
{
    struct statvfs sv;
    if (statvfs(path, &sv) < 0)
        return -1;
    if (sv.f_flag & ST_NOSUID)
        *flags |= MS_NOSUID;
    if (sv.f_flag & ST_NODEV)
        *flags |= MS_NODEV;
    if (sv.f_flag & ST_NOEXEC)
        *flags |= MS_NOEXEC;
    if (sv.f_flag & ST_NOATIME)
        *flags |= MS_NOATIME;
    if (sv.f_flag & ST_NODIRATIME)
        *flags |= MS_NODIRATIME;
    if (sv.f_flag & ST_RELATIME)
        *flags |= MS_RELATIME;
    return 0;
}

/* ---------- user namespace: id-mapped mounts ---------- */

/* A detached clone of the mount tree at path (open_tree), id-mapped to the new user namespace when there
 * is one and idmap is set. *mapped tells whether it is: a filesystem without idmap support (EINVAL) keeps
 * its ids. Returns an O_PATH fd, or -1 with errno. */
static int clone_tree(const char *path, int rec, int idmap, int *mapped)
{
    int fd = open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (rec ? AT_RECURSIVE : 0));
    *mapped = 0;
    if (fd < 0 || !idmap || userns_fd < 0)
        return fd;
    struct mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = MOUNT_ATTR_IDMAP;
    a.userns_fd = (uint64_t)userns_fd;
    int r = mount_setattr(fd, "", AT_EMPTY_PATH | (rec ? AT_RECURSIVE : 0), &a, sizeof a);
    if (r < 0 && rec && errno == EINVAL) /* a submount that cannot be id-mapped: the top mount at least */
        r = mount_setattr(fd, "", AT_EMPTY_PATH, &a, sizeof a);
    if (r == 0) {
        *mapped = 1;
    } else if (errno != EINVAL) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int mnt_id_of(const char *path, uint64_t *id)
{
    struct statx stx;
    if (statx(AT_FDCWD, path, 0, STATX_MNT_ID, &stx) < 0)
        return -1;
    *id = stx.stx_mnt_id;
    return 0;
}

/* An id-mapped detached clone of a layer directory, named "/proc/self/fd/N" (malloc'd). */
static char *idmapped_layer(const char *dir, int *fd_out)
{
    int mapped;
    int fd = clone_tree(dir, 0, 1, &mapped);
    if (fd < 0)
        child_fail("overlay: clone layer for id-mapping", dir, errno);
    if (!mapped)
        child_fail("overlay: the filesystem of this layer cannot be id-mapped:", dir, EINVAL);
    char *p = malloc(32);
    if (!p)
        child_fail("overlay", NULL, ENOMEM);
    fdpath(p, 32, fd);
    *fd_out = fd;
    return p;
}

/* upper and work must stay on one mount: id-map their lowest common directory on the mount of upper. */
static void idmapped_upper_work(struct spec *s, char **upper, char **work, int *fd_out)
{
    const char *u = s->upper, *w = s->work;
    size_t last = 0;
    for (size_t i = 0; u[i] && u[i] == w[i]; i++)
        if (u[i] == '/')
            last = i;
    char dir[PATH_MAX];
    uint64_t want, have;
    if (strlen(u) >= sizeof dir)
        child_fail("overlay: upperdir", u, ENAMETOOLONG);
    if (mnt_id_of(u, &want) < 0)
        child_fail("overlay: upperdir", u, errno);
    /* walk down along upper until the directory is on upper's mount */
    for (;;) {
        memcpy(dir, u, last);
        dir[last] = 0;
        if (mnt_id_of(last ? dir : "/", &have) < 0)
            child_fail("overlay: statx", last ? dir : "/", errno);
        if (have == want || !u[last])
            break;
        do
            last++;
        while (u[last] && u[last] != '/');
    }
    if (strncmp(w, u, last) != 0 || (w[last] && w[last] != '/'))
        child_fail("overlay: workdir is not on the mount of upperdir", w, EINVAL);
    char *base = idmapped_layer(last ? dir : "/", fd_out);
    *upper = malloc(strlen(u) + 32);
    *work = malloc(strlen(w) + 32);
    if (!*upper || !*work)
        child_fail("overlay", NULL, ENOMEM);
    sprintf(*upper, "%s%s", base, u + last);
    sprintf(*work, "%s%s", base, w + last);
    free(base);
}

/* "uid=N" / "gid=N" in filesystem data name container ids: the host ids when a user namespace is new
 * (the init mounts from the host's user namespace). Returns a malloc'd copy, or NULL when unchanged. */
static char *map_data_ids(struct spec *s, const char *data)
{
    if (userns_fd < 0 || !data || (!strstr(data, "uid=") && !strstr(data, "gid=")))
        return NULL;
    char *out = malloc(strlen(data) * 3 + 16), *o = out; /* "uid=0" (5) becomes at most "uid=4294967295" (14) */
    if (!out)
        child_fail("mount data", NULL, ENOMEM);
    for (const char *p = data; *p;) {
        size_t len = strcspn(p, ",");
        long v;
        char num[24];
        int isuid = strncmp(p, "uid=", 4) == 0, isgid = strncmp(p, "gid=", 4) == 0;
        if ((isuid || isgid) && len - 4 < sizeof num) {
            memcpy(num, p + 4, len - 4);
            num[len - 4] = 0;
            if (parse_long(num, &v) == 0 && v >= 0 && v <= 0xffffffffL) {
                long long h = isuid ? map_id(s->uidmap, s->nuidmap, (uint32_t)v) : map_id(s->gidmap, s->ngidmap, (uint32_t)v);
                if (h >= 0) {
                    o += sprintf(o, "%cid=%lld,", p[0], h);
                    p += len + (p[len] == ',');
                    continue;
                }
            }
        }
        memcpy(o, p, len);
        o += len;
        *o++ = ',';
        p += len + (p[len] == ',');
    }
    if (o > out)
        o--;
    *o = 0;
    return out;
}

/* While the init builds the rootfs of a container with a new user namespace, files it creates (mount
 * points, devices, /dev links, overlay work files; tmpfs roots) belong to the container's root: fsuid/fsgid
 * are its host ids. The overlay keeps these credentials for its own work in the (id-mapped) upper layer. */
static void act_as_container_root(struct spec *s)
{
    long long u = map_id(s->uidmap, s->nuidmap, 0), g = map_id(s->gidmap, s->ngidmap, 0);
    if (u >= 0)
        setfsuid((uid_t)u);
    if (g >= 0)
        setfsgid((gid_t)g);
    /* a changed fsuid/fsgid clears the parent-death signal: the init must die with the monitor meanwhile */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    int r = caps_raise_effective(); /* a non-zero fsuid drops the file capabilities from the effective set */
    if (r < 0)
        child_fail("capabilities: raise effective set", NULL, -r);
}

/* ---------- rootfs ---------- */

static void mount_overlay(struct spec *s)
{
    const char **lower = s->lower;
    const char *upper = s->upper, *work = s->work;
    char **names = NULL, *up = NULL, *wk = NULL;
    int *fds = NULL, upfd = -1;
    if (userns_fd >= 0) {
        /* id-mapped layers (Linux >= 5.19); overlayfs itself cannot be id-mapped */
        names = calloc(s->nlower + 1, sizeof *names);
        fds = calloc(s->nlower + 1, sizeof *fds);
        if (!names || !fds)
            child_fail("overlay", NULL, ENOMEM);
        for (size_t i = 0; i < s->nlower; i++)
            names[i] = idmapped_layer(s->lower[i], &fds[i]);
        lower = (const char **)names;
        if (upper) {
            idmapped_upper_work(s, &up, &wk, &upfd);
            upper = up;
            work = wk;
        }
    }
    /* New mount API first: one fsconfig call per layer, no length limit, no escaping. */
    int fsfd = fsopen("overlay", FSOPEN_CLOEXEC);
    int done = 0;
    if (fsfd >= 0) {
        int ok = fsconfig(fsfd, FSCONFIG_SET_STRING, "source", "overlay", 0) == 0;
        for (size_t i = 0; i < s->nlower && ok; i++)
            ok = fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir+", lower[i], 0) == 0;
        if (ok && upper)
            ok = fsconfig(fsfd, FSCONFIG_SET_STRING, "upperdir", upper, 0) == 0 &&
                 fsconfig(fsfd, FSCONFIG_SET_STRING, "workdir", work, 0) == 0;
        if (ok && upper && s->overlay_volatile)
            ok = fsconfig(fsfd, FSCONFIG_SET_FLAG, "volatile", NULL, 0) == 0;
        if (ok) {
            if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
                child_fail("mount overlay at", s->root, errno);
            int mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, 0);
            if (mfd < 0)
                child_fail("mount overlay (fsmount) at", s->root, errno);
            if (move_mount(mfd, "", AT_FDCWD, s->root, MOVE_MOUNT_F_EMPTY_PATH) < 0)
                child_fail("mount overlay (move_mount) at", s->root, errno);
            close(mfd);
            done = 1;
        }
        close(fsfd); /* kernel < 6.8 has no lowerdir+: fall back to mount(2) */
    }
    if (!done) {
        size_t cap = 64;
        for (size_t i = 0; i < s->nlower; i++)
            cap += strlen(lower[i]) * 2 + 1;
        if (upper)
            cap += strlen(upper) * 2 + strlen(work) * 2 + 32;
        char *data = malloc(cap);
        if (!data)
            child_fail("mount overlay", NULL, ENOMEM);
        char *p = data;
        p += sprintf(p, "lowerdir=");
        for (size_t i = 0; i < s->nlower; i++) {
            if (i)
                *p++ = ':';
            for (const char *q = lower[i]; *q; q++) {
                if (*q == ',')
                    child_fail("mount overlay: ',' in layer path", lower[i], EINVAL);
                if (*q == ':' || *q == '\\')
                    *p++ = '\\';
                *p++ = *q;
            }
        }
        if (upper)
            p += sprintf(p, ",upperdir=%s,workdir=%s%s", upper, work, s->overlay_volatile ? ",volatile" : "");
        *p = 0;
        if (mount("overlay", s->root, "overlay", 0, data) < 0)
            child_fail("mount overlay at", s->root, errno);
        free(data);
    }
    /* the overlay holds private clones of its layers */
    for (size_t i = 0; names && i < s->nlower; i++) {
        close(fds[i]);
        free(names[i]);
    }
    if (upfd >= 0)
        close(upfd);
    free(names);
    free(fds);
    free(up);
    free(wk);
}

/* An image volume as a detached tree to attach: the image's layers as a read-only overlay of its own, made
 * detached (fsmount: no path on the host or in the container ever shows it whole), then the sub path opened
 * beneath it with RESOLVE_IN_ROOT, so that a symlink or ".." in the image cannot lead outside the image, and
 * cloned (open_tree) as the tree do_mount attaches. */
static int image_volume_tree(const struct mount_spec *m)
{
    const char **lower = m->layers;
    char **names = NULL;
    int *fds = NULL;
    if (userns_fd >= 0) {
        names = calloc(m->nlayers + 1, sizeof *names);
        fds = calloc(m->nlayers + 1, sizeof *fds);
        if (!names || !fds)
            child_fail("image volume", m->dest, ENOMEM);
        for (size_t i = 0; i < m->nlayers; i++)
            names[i] = idmapped_layer(m->layers[i], &fds[i]);
        lower = (const char **)names;
    }
    int fsfd = fsopen("overlay", FSOPEN_CLOEXEC);
    if (fsfd < 0)
        child_fail("image volume: fsopen overlay for", m->dest, errno);
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "source", "overlay", 0) < 0)
        child_fail("image volume: overlay source for", m->dest, errno);
    for (size_t i = 0; i < m->nlayers; i++)
        if (fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir+", lower[i], 0) < 0)
            child_fail("image volume: overlay layer (Linux >= 6.8)", m->layers[i], errno);
    if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        child_fail("image volume: create overlay for", m->dest, errno);
    int mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    if (mfd < 0)
        child_fail("image volume: fsmount for", m->dest, errno);
    close(fsfd);
    for (size_t i = 0; names && i < m->nlayers; i++) {
        close(fds[i]);
        free(names[i]);
    }
    free(names);
    free(fds);
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
    int sub = openat2_retry(mfd, m->subpath, &how);
    if (sub < 0)
        child_fail("image volume: sub path", m->subpath, errno);
    int tree = open_tree(sub, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
    if (tree < 0)
        child_fail("image volume: clone sub path", m->subpath, errno);
    close(sub);
    close(mfd);
    return tree;
}

/* A bind source as a detached tree: id-mapped with a new user namespace (when its filesystem allows). */
static int clone_bind_source(const struct mount_spec *m)
{
    int mapped;
    int fd = clone_tree(m->source, m->bind == 2, 1, &mapped);
    if (fd < 0)
        child_fail("mount: clone bind source", m->source, errno);
    return fd;
}

/* tree: the source already cloned (open_tree) or -1 */
static void do_mount(struct spec *s, int rootfd, const struct mount_spec *m, int tree)
{
    char target[64];
    int isfile = 0;
    struct stat st;

    if (m->bind) {
        if (tree >= 0 ? fstat(tree, &st) < 0 : stat(m->source, &st) < 0)
            child_fail("mount: stat bind source", m->source, errno);
        isfile = !S_ISDIR(st.st_mode);
    }
    int fd = open_in_root(rootfd, m->dest, isfile ? 2 : 1);
    if (fd < 0)
        child_fail("mount: create mount point", m->dest, errno);
    fdpath(target, sizeof target, fd);
    if (m->bind) {
        if (tree < 0 && userns_fd >= 0)
            tree = clone_bind_source(m);
        if (tree >= 0) {
            if (move_mount(tree, "", fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
                child_fail("mount: bind (move_mount)", m->dest, errno);
            close(tree);
        } else if (mount(m->source, target, NULL, MS_BIND | (m->bind == 2 ? MS_REC : 0), NULL) < 0) {
            child_fail("mount: bind", m->dest, errno);
        }
    } else {
        char *data = map_data_ids(s, m->data);
        if (mount(m->source, target, m->type, m->flags, data ? data : m->data) < 0) {
            char what[PATH_MAX + 64];
            snprintf(what, sizeof what, "%s (type %s, data %s)", m->dest, m->type, data ? data : m->data ? m->data : "");
            child_fail("mount:", what, errno);
        }
        free(data);
    }
    close(fd);
    if ((m->bind && (m->flags & ~MS_REMOUNT)) || m->prop || m->rro) {
        /* The fd above names the directory under the new mount: reopen to reach the mount itself. */
        fd = open_in_root(rootfd, m->dest, 0);
        if (fd < 0)
            child_fail("mount: reopen", m->dest, errno);
        fdpath(target, sizeof target, fd);
        if (m->bind && (m->flags & ~MS_REMOUNT)) {
            unsigned long flags = MS_BIND | MS_REMOUNT | (m->flags & ~MS_REMOUNT);
            lock_flags(target, &flags);
            if (mount(NULL, target, NULL, flags, NULL) < 0)
                child_fail("mount: remount bind", m->dest, errno);
        }
        if (m->prop && mount(NULL, target, NULL, m->prop, NULL) < 0)
            child_fail("mount: set propagation", m->dest, errno);
        /* MS_RDONLY on a remount reaches the top mount only: a submount of the source (a tmpfs under a
         * volume) would stay writable. mount_setattr applies it to the whole tree, last, so that no step
         * above turns a submount writable again. */
        if (m->rro) {
            struct mount_attr a;
            memset(&a, 0, sizeof a);
            a.attr_set = MOUNT_ATTR_RDONLY;
            if (mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &a, sizeof a) < 0)
                child_fail("mount: recursive read-only (mount_setattr)", m->dest, errno);
        }
        close(fd);
    }
}

/* Open the parent directory of path inside the rootfs (creating it) and return the last component. */
static int open_parent(int rootfd, const char *path, const char **name)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) : 0;
    if (dlen >= sizeof dir) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(dir, path, dlen);
    dir[dlen] = 0;
    *name = slash ? slash + 1 : path;
    if (!**name) {
        errno = EINVAL;
        return -1;
    }
    return open_in_root(rootfd, dlen ? dir : "/", 1);
}

static void make_device(struct spec *s, int rootfd, const struct device_spec *d, int in_userns)
{
    const char *name;
    int pfd = open_parent(rootfd, d->path, &name);
    if (pfd < 0)
        child_fail("device: create parent of", d->path, errno);
    mode_t type = d->type == 'b' ? S_IFBLK : d->type == 'p' ? S_IFIFO : S_IFCHR;
    dev_t dev = makedev(d->major, d->minor);
    unlinkat(pfd, name, 0); /* an image may ship a placeholder */
    if (!in_userns) {
        /* mknod honours mode/uid/gid and costs no mount entry */
        if (mknodat(pfd, name, type | (d->mode & 0777), dev) == 0) {
            long long uid = d->uid, gid = d->gid;
            if (userns_fd >= 0) { /* container ids: the host ids they map to (left as made when unmapped) */
                uid = map_id(s->uidmap, s->nuidmap, d->uid);
                gid = map_id(s->gidmap, s->ngidmap, d->gid);
            }
            if (fchownat(pfd, name, uid < 0 ? (uid_t)-1 : (uid_t)uid, gid < 0 ? (gid_t)-1 : (gid_t)gid,
                         AT_SYMLINK_NOFOLLOW) < 0)
                child_fail("device: chown", d->path, errno);
            /* umask may have cut the mode */
            int fd = openat(pfd, name, O_PATH | O_CLOEXEC | O_NOFOLLOW);
            char p[64];
            if (fd >= 0) {
                fdpath(p, sizeof p, fd);
                chmod(p, d->mode & 07777);
                close(fd);
            }
            close(pfd);
            return;
        }
        if (errno != EPERM)
            child_fail("device: mknod", d->path, errno);
    }
    /* In a user namespace (or where mknod is refused): bind the host node onto an empty file. */
    struct stat st;
    if (stat(d->path, &st) < 0 || (st.st_mode & S_IFMT) != type || st.st_rdev != dev)
        child_fail("device: no matching host node to bind for", d->path, errno ? errno : ENODEV);
    int f = openat(pfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (f < 0)
        child_fail("device: create", d->path, errno);
    close(f);
    close(pfd);
    int fd = open_in_root(rootfd, d->path, 0);
    char target[64];
    if (fd < 0)
        child_fail("device: open", d->path, errno);
    fdpath(target, sizeof target, fd);
    if (mount(d->path, target, NULL, MS_BIND, NULL) < 0)
        child_fail("device: bind", d->path, errno);
    close(fd);
}

static void dev_symlinks(int rootfd, struct spec *s)
{
    int has_devpts = 0;
    for (size_t i = 0; i < s->nmounts; i++)
        if (s->mounts[i].type && strcmp(s->mounts[i].type, "devpts") == 0 && strcmp(s->mounts[i].dest, "/dev/pts") == 0)
            has_devpts = 1;
    int dfd = openat2_compat(rootfd, "/dev", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return; /* no /dev in this rootfs */
    static const char *const links[][2] = {
        {"/proc/self/fd", "fd"},
        {"/proc/self/fd/0", "stdin"},
        {"/proc/self/fd/1", "stdout"},
        {"/proc/self/fd/2", "stderr"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlinkat(links[i][0], dfd, links[i][1]) < 0 && errno != EEXIST)
            child_fail("symlink /dev/", links[i][1], errno);
    if (has_devpts) {
        unlinkat(dfd, "ptmx", 0);
        if (symlinkat("pts/ptmx", dfd, "ptmx") < 0)
            child_fail("symlink /dev/ptmx", NULL, errno);
    }
    close(dfd);
    if (ctx->pty_slave_fd >= 0) {
        /* By path: an fd opened before unshare(CLONE_NEWNS) names a mount of the old namespace,
         * which bind() refuses (EINVAL). */
        int fd = open_in_root(rootfd, "/dev/console", 2);
        char target[64];
        if (fd < 0)
            child_fail("create /dev/console", NULL, errno);
        fdpath(target, sizeof target, fd);
        if (mount(ctx->pty_path, target, NULL, MS_BIND, NULL) < 0)
            child_fail("bind the pty onto /dev/console from", ctx->pty_path, errno);
        close(fd);
    }
}

static void pivot(const char *root)
{
    int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    int newroot = open(root, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (oldroot < 0 || newroot < 0)
        child_fail("pivot_root: open", root, errno);
    if (fchdir(newroot) < 0)
        child_fail("pivot_root: chdir", root, errno);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        child_fail("pivot_root", root, errno);
    /* The old root is now stacked under the new one at "/": detach it. */
    if (fchdir(oldroot) < 0)
        child_fail("pivot_root: fchdir old root", NULL, errno);
    if (mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) < 0)
        child_fail("pivot_root: make old root rslave", NULL, errno);
    if (umount2(".", MNT_DETACH) < 0)
        child_fail("pivot_root: detach old root", NULL, errno);
    if (chdir("/") < 0)
        child_fail("chdir /", NULL, errno);
    close(oldroot);
    close(newroot);
}

static void setup_rootfs(struct spec *s)
{
    /* Binds asked to be shared are cloned before / turns slave: the clone stays a peer of a shared source
     * (mounts propagate both ways), where a bind made later would only be a slave of it. */
    int *trees = malloc((s->nmounts + 1) * sizeof *trees);
    if (!trees)
        child_fail("mounts", NULL, ENOMEM);
    for (size_t i = 0; i < s->nmounts; i++)
        trees[i] = s->mounts[i].bind && (s->mounts[i].prop & MS_SHARED) ? clone_bind_source(&s->mounts[i]) : -1;
    if (userns_fd >= 0)
        act_as_container_root(s);
    if (mount(NULL, "/", NULL, MS_SLAVE | MS_REC, NULL) < 0)
        child_fail("make / rslave", NULL, errno);
    if (s->nlower) {
        mount_overlay(s);
    } else if (userns_fd >= 0) {
        int mapped, fd = clone_tree(s->root, 1, 1, &mapped);
        if (fd < 0)
            child_fail("clone rootfs for id-mapping", s->root, errno);
        if (!mapped)
            child_fail("the filesystem of the rootfs cannot be id-mapped:", s->root, EINVAL);
        if (move_mount(fd, "", AT_FDCWD, s->root, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            child_fail("mount id-mapped rootfs at", s->root, errno);
        close(fd);
    } else if (mount(s->root, s->root, NULL, MS_BIND | MS_REC, NULL) < 0) {
        child_fail("bind rootfs onto itself", s->root, errno);
    }
    int rootfd = open(s->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        child_fail("open rootfs", s->root, errno);
    for (size_t i = 0; i < s->nmounts; i++)
        do_mount(s, rootfd, &s->mounts[i], s->mounts[i].layers ? image_volume_tree(&s->mounts[i]) : trees[i]);
    free(trees);
    int in_userns = s->ns_path[NS_USER] != NULL;
    for (size_t i = 0; i < s->ndevices; i++)
        make_device(s, rootfd, &s->devices[i], in_userns);
    dev_symlinks(rootfd, s);
    close(rootfd);
    pivot(s->root);
}

static void finish_rootfs(struct spec *s)
{
    struct stat st;
    for (size_t i = 0; i < s->nreadonly; i++) {
        const char *p = s->readonly[i];
        if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                continue;
            child_fail("readonly path: bind", p, errno);
        }
        unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;
        lock_flags(p, &flags);
        if (mount(NULL, p, NULL, flags, NULL) < 0)
            child_fail("readonly path: remount ro", p, errno);
    }
    for (size_t i = 0; i < s->nmasked; i++) {
        const char *p = s->masked[i];
        if (stat(p, &st) < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                continue;
            child_fail("masked path: stat", p, errno);
        }
        int r = S_ISDIR(st.st_mode) ? mount("tmpfs", p, "tmpfs", MS_RDONLY, "size=0k")
                                    : mount("/dev/null", p, NULL, MS_BIND, NULL);
        if (r < 0)
            child_fail("masked path: mount over", p, errno);
    }
    if (s->root_ro) {
        unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;
        lock_flags("/", &flags);
        if (mount(NULL, "/", NULL, flags, NULL) < 0)
            child_fail("remount / read-only", NULL, errno);
    }
}

/* ---------- namespaces, cgroups, sysctls ---------- */

static void join_cgroups(struct spec *s)
{
    for (size_t i = 0; i < s->ncgroup_procs; i++) {
        int r = write_file(s->cgroup_procs[i], "0");
        if (r < 0)
            child_fail("join cgroup: write", s->cgroup_procs[i], -r);
    }
}

static void join_namespaces(struct spec *s)
{
    /* Open every path first: a joined mount namespace would hide the others. */
    int fds[NS_COUNT];
    for (int k = 0; k < NS_COUNT; k++) {
        fds[k] = -1;
        if (k == NS_PID || !s->ns_path[k])
            continue;
        fds[k] = open(s->ns_path[k], O_RDONLY | O_CLOEXEC);
        if (fds[k] < 0)
            child_fail("open namespace", s->ns_path[k], errno);
    }
    for (int k = 0; k < NS_COUNT; k++) {
        if (fds[k] < 0)
            continue;
        if (setns(fds[k], ns_kinds[k].flag) < 0)
            child_fail("setns", s->ns_path[k], errno);
        close(fds[k]);
    }
    int flags = 0;
    for (int k = 0; k < NS_COUNT; k++)
        if (s->ns_new[k] && k != NS_PID && k != NS_CGROUP && k != NS_USER)
            flags |= ns_kinds[k].flag;
    if (flags && unshare(flags) < 0)
        child_fail("unshare namespaces", NULL, errno);
}

static int sysctl_allowed(struct spec *s, const char *key)
{
    static const char *const ipc_keys[] = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                                           "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                                           "kernel.shm_rmid_forced"};
    int has_ipc = s->ns_new[NS_IPC] || s->ns_path[NS_IPC];
    int has_net = s->ns_new[NS_NET] || s->ns_path[NS_NET];
    int has_uts = s->ns_new[NS_UTS] || s->ns_path[NS_UTS];
    for (size_t i = 0; i < sizeof ipc_keys / sizeof ipc_keys[0]; i++)
        if (strcmp(key, ipc_keys[i]) == 0)
            return has_ipc;
    if (strncmp(key, "fs.mqueue.", 10) == 0)
        return has_ipc;
    if (strncmp(key, "net.", 4) == 0)
        return has_net;
    if (strcmp(key, "kernel.hostname") == 0 || strcmp(key, "kernel.domainname") == 0)
        return has_uts;
    return 0;
}

static void apply_sysctls(struct spec *s)
{
    char path[PATH_MAX];
    for (size_t i = 0; i < s->nsysctl; i++) {
        const char *key = s->sysctl[i].key;
        if (!sysctl_allowed(s, key))
            child_fail("sysctl not namespaced (or its namespace is the host's):", key, 0);
        if (strstr(key, "..") || snprintf(path, sizeof path, "/proc/sys/%s", key) >= (int)sizeof path)
            child_fail("sysctl: bad name", key, EINVAL);
        for (char *p = path + 10; *p; p++)
            if (*p == '.')
                *p = '/';
            else if (*p == '/')
                *p = '.';
        int r = write_file(path, s->sysctl[i].value);
        if (r < 0)
            child_fail("sysctl: write", path, -r);
    }
}

static void apply_oom(struct spec *s)
{
    char buf[32];
    if (!s->has_oom)
        return;
    int r = set_oom_score_adj(s->oom);
    if (r < 0) {
        snprintf(buf, sizeof buf, "%d", s->oom);
        child_fail("write /proc/self/oom_score_adj", buf, -r);
    }
}

/* A session keyring of the container's own instead of berth's (which every process would share):
 * with the host's privileges still, so that it can be made possessor-only (see join_session_keyring). */
static void join_keyring(struct spec *s)
{
    char name[300];
    const char *id = s->id && *s->id ? s->id : strrchr(s->bundle, '/') ? strrchr(s->bundle, '/') + 1 : s->bundle;
    snprintf(name, sizeof name, "_ses.%s", id);
    int r = join_session_keyring(name);
    if (r < 0)
        child_fail("join a new session keyring", name, -r);
}

/* ---------- the phases of init_main, in the README's order ---------- */

/* 1. Signals, parent-death signal, session; stdio on fds 0-2, the sync pipe at 3, the user namespace at 4 when
 * new, nothing else; start.fifo opened. Returns its fd. */
static int init_stdio(struct child_ctx *c)
{
    reset_signals();
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (setsid() < 0)
        child_fail("setsid", NULL, errno);

    int ufd = c->userns_fd >= 0 ? fcntl(c->userns_fd, F_DUPFD_CLOEXEC, 10) : -1;
    if (c->userns_fd >= 0 && ufd < 0)
        child_fail("dup user namespace fd", NULL, errno);
    int in = c->stdin_fd, out = c->stdout_fd, errfd = c->stderr_fd;
    if (c->pty_slave_fd >= 0) {
        int t = c->pty_slave_fd;
        if (ioctl(t, TIOCSCTTY, 0) < 0)
            child_fail("set controlling terminal", NULL, errno);
        out = errfd = t;
        if (in < 0)
            in = t;
    }
    if (in < 0) {
        in = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (in < 0)
            child_fail("open /dev/null", NULL, errno);
    }
    /* Every source fd is >= 3 (the monitor's 0-2 are /dev/null), so dup2 cannot clobber one. */
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(errfd, 2) < 0)
        child_fail("dup2 stdio", NULL, errno);
    if (c->sync_fd != 3) {
        if (dup3(c->sync_fd, 3, O_CLOEXEC) < 0)
            child_fail("dup sync fd", NULL, errno);
        c->sync_fd = 3;
    }
    if (ufd >= 0) {
        if (dup3(ufd, 4, O_CLOEXEC) < 0)
            child_fail("dup user namespace fd", NULL, errno);
        userns_fd = 4;
    }
    close_range(userns_fd >= 0 ? 5 : 4, ~0U, 0);

    /* Opened while the bundle is still in view (before any setns or pivot_root). Held for reading,
     * and for writing so that it never reports EOF, until berth writes one byte. */
    int start_fd = open(c->start_fifo, O_RDWR | O_CLOEXEC);
    if (start_fd < 0)
        child_fail("open", c->start_fifo, errno);
    return start_fd;
}

/* 2-4. Into the cgroups first, then the namespaces (the cgroup namespace last, rooted at the cgroup just
 * joined); what is configured inside them: hostname, sysctls, oom_score_adj. */
static void join_and_configure(struct spec *s)
{
    join_cgroups(s);
    join_namespaces(s);
    if (s->ns_new[NS_CGROUP] && unshare(CLONE_NEWCGROUP) < 0)
        child_fail("unshare cgroup namespace", NULL, errno);
    if (s->hostname && *s->hostname && s->ns_new[NS_UTS] && sethostname(s->hostname, strlen(s->hostname)) < 0)
        child_fail("sethostname", s->hostname, errno);
    apply_sysctls(s);
    apply_oom(s);
}

/* 5. Only with a new mount namespace: without one no rootfs work is done. */
static void build_rootfs(struct spec *s)
{
    if (!s->ns_new[NS_MNT])
        return;
    setup_rootfs(s);
    finish_rootfs(s);
}

/* Where the seccomp filter goes. It is installed right before execve. Without no_new_privs that takes
 * CAP_SYS_ADMIN: it is kept until then when the requested sets lack it (and dropped by one capset after the
 * install); when capabilities are left alone and the uid changes, every capability goes with the uid change,
 * so the filter is installed before it (runc's order). */
struct seccomp_plan {
    int filter;     /* there is one */
    int early;      /* installed before the credential change */
    uint64_t extra; /* capabilities held on top of the requested ones until it is installed */
};

static struct seccomp_plan plan_seccomp(const struct spec *s)
{
    struct seccomp_plan p = {s->seccomp.filter != NULL, 0, 0};
    if (p.filter && !s->nnp) {
        if (s->caps.present && !(s->caps.effective & (1ULL << CAP_SYS_ADMIN)))
            p.extra = 1ULL << CAP_SYS_ADMIN;
        else if (!s->caps.present && s->uid != 0)
            p.early = 1;
    }
    return p;
}

static void set_rlimits(struct spec *s)
{
    for (size_t i = 0; i < s->nrlimits; i++) {
        struct rlimit rl = {s->rlimits[i].soft, s->rlimits[i].hard};
        if (setrlimit(s->rlimits[i].resource, &rl) < 0) {
            char what[32];
            snprintf(what, sizeof what, "resource %d", s->rlimits[i].resource);
            child_fail("setrlimit", what, errno);
        }
    }
}

/* Everything that needed the host's privileges is done: enter the container's user namespace (full
 * capabilities there; the ids are set next). */
static void enter_userns(void)
{
    if (userns_fd < 0)
        return;
    if (setns(userns_fd, CLONE_NEWUSER) < 0)
        child_fail("enter the new user namespace", NULL, errno);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); /* cleared by the change of credentials */
    int r = set_undumpable();                  /* so may be this: see set_undumpable */
    if (r < 0)
        child_fail("prctl(PR_SET_DUMPABLE, 0)", NULL, -r);
    close(userns_fd);
    userns_fd = -1;
}

/* 6. Keyring and rlimits with the host's privileges still; then the user namespace, capabilities, ids,
 * no_new_privs, cwd. */
static void drop_privileges(struct spec *s, const struct seccomp_plan *sp)
{
    char err[1100];
    join_keyring(s);
    set_rlimits(s);
    enter_userns();
    /* Asked for while the init is still root with every capability and before no_new_privs, as runc
     * does (under no_new_privs AppArmor refuses most transitions); it takes effect at the execve. */
    if (s->apparmor) {
        int r = apparmor_exec_profile(s->apparmor);
        if (r < 0)
            child_fail("apparmor: confine the container with profile", s->apparmor, -r);
    }
    if (sp->early) {
        int r = seccomp_install(&s->seccomp);
        if (r < 0)
            child_fail("seccomp: install the filter", NULL, -r);
    }
    if (caps_prepare(&s->caps, err, sizeof err) < 0)
        child_fail_msg(err);
    if (set_ids(s->uid, s->gid, s->gids, s->ngids, 1, err, sizeof err) < 0)
        child_fail_msg(err);
    if (caps_finish(&s->caps, sp->extra, err, sizeof err) < 0)
        child_fail_msg(err);
    if (s->nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail("PR_SET_NO_NEW_PRIVS", NULL, errno);
    if (chdir(s->cwd) < 0)
        child_fail("chdir", s->cwd, errno);
    /* The uid change cleared the parent-death signal: set it again (the monitor is checked to live in
     * wait_and_exec). It also set dumpable to fs.suid_dumpable: until execve (which sets it for the
     * container's program) this process waits with the container's credentials, in its pid namespace,
     * still running the shim. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    int r = set_undumpable();
    if (r < 0)
        child_fail("prctl(PR_SET_DUMPABLE, 0)", NULL, -r);
}

/* 'X', the length (2 bytes, little-endian), the text: "<step> <args0>: <errno text>", args0 cut short so that
 * the errno text always fits; the same line on the container's stderr. */
__attribute__((noreturn)) static void report_exec_failure(struct child_ctx *c, const char *step, int e)
{
    char emsg[3 + SYNC_TEXT_MAX + 1];
    char what[1024 + 4];
    const char *arg0 = c->s->args[0];
    size_t alen = strlen(arg0);
    snprintf(what, sizeof what, "%.*s%s", alen > 1024 ? 1021 : (int)alen, arg0, alen > 1024 ? "..." : "");
    fmt_err(emsg + 3, sizeof emsg - 3, step, what, e);
    size_t tlen = strlen(emsg + 3);
    emsg[0] = SYNC_EXECERR;
    emsg[1] = (char)(tlen & 0xff);
    emsg[2] = (char)(tlen >> 8);
    write_all(c->sync_fd, emsg, 3 + tlen);
    dprintf(2, SHIM_NAME ": %s\n", emsg + 3);
    _exit(127);
}

/* 7. Tell the monitor it is ready, block on start.fifo, record startedAt, install seccomp, execve. Before the
 * start nobody is left to report to when the monitor is gone: the init just exits. */
__attribute__((noreturn)) static void wait_and_exec(struct child_ctx *c, int start_fd, const struct seccomp_plan *sp)
{
    struct spec *s = c->s;
    /* getppid() is 0 across a pid namespace: the sync pipe tells instead (POLLERR: no reader left). */
    struct pollfd pfd = {c->sync_fd, POLLOUT, 0};
    if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR))
        _exit(1);

    char msg[9];
    msg[0] = SYNC_READY;
    if (write_all(c->sync_fd, msg, 1) < 0)
        _exit(1);
    for (;;) {
        ssize_t n = read(start_fd, msg, 1);
        if (n == 1)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        _exit(1);
    }
    close(start_fd);
    int64_t started = now_ns();
    msg[0] = SYNC_STARTED;
    memcpy(msg + 1, &started, 8);
    write_all(c->sync_fd, msg, 9);

    if (sp->filter && !sp->early) {
        int e = -seccomp_install(&s->seccomp);
        if (e)
            report_exec_failure(c, "seccomp: install the filter for", e);
        if (sp->extra && (e = -caps_drop_extra(&s->caps)) != 0)
            report_exec_failure(c, "capabilities: drop CAP_SYS_ADMIN before", e);
    }
    report_exec_failure(c, "exec", exec_in_path(s->args, s->env));
}

__attribute__((noreturn)) void init_main(struct child_ctx *c)
{
    struct spec *s = c->s;
    ctx = c;
    int start_fd = init_stdio(c);
    join_and_configure(s);
    build_rootfs(s);
    struct seccomp_plan sp = plan_seccomp(s);
    drop_privileges(s, &sp);
    wait_and_exec(c, start_fd, &sp);
}
