/* berth-shim: shared declarations. */
#ifndef BERTH_SHIM_H
#define BERTH_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SHIM_NAME "berth-shim"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define DEFAULT_MAX_LINE 16384

/* ---- util.c ---- */
/* Format "<step> <path>: <strerror(err)>" into buf (path and err optional: NULL / 0). */
void fmt_err(char *buf, size_t len, const char *step, const char *path, int err);
/* Print "berth-shim: <step> <path>: <strerror>" to stderr. */
void warn_err(const char *step, const char *path, int err);
int write_all(int fd, const void *buf, size_t len);
struct open_how;
/* openat2(2), tried again while the kernel answers EAGAIN: a lookup that crosses ".." under RESOLVE_BENEATH or
 * RESOLVE_IN_ROOT fails so whenever any mount or rename on the node raced it, and the caller is to retry. */
int openat2_retry(int dirfd, const char *path, struct open_how *how);
/* Write data to dir/name atomically: dir/.name.tmp, fsync, rename, fsync(dir). Returns 0 or -errno. */
int atomic_write(const char *dir, const char *name, const char *data, size_t len);
/* The same without the fsyncs: atomic for readers (tmp + rename), not durable across a power cut. */
int replace_file(const char *dir, const char *name, const char *data, size_t len);
/* Write a short string to a file (O_WRONLY, no create). Returns 0 or -errno. */
int write_file(const char *path, const char *data);
/* Read a small file into buf (NUL-terminated). Returns length or -errno. */
ssize_t read_file(const char *path, char *buf, size_t len);
int64_t now_ns(void);
/* join dir + "/" + name into buf; returns 0, or -ENAMETOOLONG. */
int path_join(char *buf, size_t len, const char *dir, const char *name);
/* Parse a decimal integer; returns 0 on success. */
int parse_long(const char *s, long *out);
/* Close every fd >= lowfd except those listed (keep may be NULL). */
void close_fds_except(int lowfd, const int *keep, int nkeep);
/* Reset all signal dispositions to default and unblock everything. */
void reset_signals(void);
/* SIGKILL pid and reap it. Returns its wait status (0 if waitpid failed). */
int kill_reap(pid_t pid);
/* stdio onto /dev/null, every other fd >= 3 closed except those listed. Returns 0, or -errno when
 * /dev/null could not be opened (stdio left as it was; the other fds are closed all the same). */
int detach_stdio(const int *keep, int nkeep);
/* execve(args[0] resolved against PATH found in envp). Returns errno on failure. */
int exec_in_path(char *const args[], char *const envp[]);
/* PR_SET_DUMPABLE 0: no ptrace and no /proc/<pid>/{fd,exe,mem,environ} for anyone without CAP_SYS_PTRACE in
 * the host's user namespace. Every shim process is so from main() until its execve; a change of
 * credentials resets it to fs.suid_dumpable, so call it again after one. Returns 0 or -errno. */
int set_undumpable(void);
/* Join a new session keyring `name` (KEYCTL_JOIN_SESSION_KEYRING), rights for its possessor only.
 * Returns 0 (also on a kernel without keys: ENOSYS), or -errno. */
int join_session_keyring(const char *name);
/* Ask AppArmor to confine this process with `profile` from its next execve ("exec <profile>" into
 * /proc/self/attr/apparmor/exec, else the pre-5.8 /proc/self/attr/exec). Returns 0 or -errno: EINVAL or
 * ENOENT where the kernel has no AppArmor, ENOENT too for a profile that is not loaded. */
int apparmor_exec_profile(const char *profile);
/* Write /proc/self/oom_score_adj; a lowering the host refuses (no CAP_SYS_RESOURCE) keeps the current
 * value. Returns 0 or -errno. */
int set_oom_score_adj(int value);

/* One cleanup list per command: push a named undo right after each acquisition; on failure run them
 * last-in-first-out. An undo returns 0 or -errno; each one that fails is appended to the command's error
 * message ("; undo <name> <what>: <errno text>"), so none is lost silently. The list lives in the command's
 * own frame or heap: nothing here allocates. */
#define CLEANUP_MAX 12
typedef int (*undo_fn)(void *ctx, const char *what);
struct cleanup_list {
    void *ctx; /* passed to every undo (the command's state) */
    int n;
    struct {
        const char *name, *what; /* what: a path or name the undo acts on, or NULL */
        undo_fn undo;
    } step[CLEANUP_MAX];
};
void cleanup_init(struct cleanup_list *l, void *ctx);
/* Aborts when the list is full: its size is fixed by the code, not by input. */
void cleanup_push(struct cleanup_list *l, const char *name, const char *what, undo_fn undo);
/* Run every undo, newest first, and empty the list; failures are appended to msg (len bytes). */
void cleanup_run(struct cleanup_list *l, char *msg, size_t len);

/* ---- caps.c ---- */
struct capsets {
    int present;            /* 0: leave capabilities alone */
    uint64_t bounding, effective, permitted, inheritable, ambient;
};
/* Map "CAP_CHOWN" / "chown" to a number; -1 if unknown. */
int cap_from_name(const char *name);
/* Drop the bounding set down to caps->bounding, set KEEPCAPS. Before the uid change. */
int caps_prepare(const struct capsets *caps, char *err, size_t errlen);
/* Set groups, gid, uid. */
int set_ids(uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups, int set_groups, char *err, size_t errlen);
/* capset + ambient after the uid change. `extra` capabilities are kept in the effective and permitted
 * sets on top of the requested ones (to install seccomp later); caps_drop_extra() then removes them. */
int caps_finish(const struct capsets *caps, uint64_t extra, char *err, size_t errlen);
int caps_drop_extra(const struct capsets *caps);
/* effective = permitted (after a change of fsuid cleared the file capabilities). Returns 0 or -errno. */
int caps_raise_effective(void);

/* ---- seccomp.c ---- */
struct json_object;
struct sock_filter;
struct seccomp_prog {
    struct sock_filter *filter; /* NULL: no filter (unconfined) */
    unsigned short len;
};
/* Build the BPF program of an OCI linux.seccomp object. Returns 0, or -1 with a message in err. */
int seccomp_build(struct json_object *obj, struct seccomp_prog *prog, char *err, size_t errlen);
/* Install it on the calling thread (needs no_new_privs or CAP_SYS_ADMIN). Returns 0 or -errno. */
int seccomp_install(const struct seccomp_prog *prog);
void seccomp_prog_free(struct seccomp_prog *prog);

/* ---- spec.c ---- */
struct json_object;
struct capsets;
int caps_from_json(struct json_object *obj, struct capsets *caps, char *err, size_t errlen);

/* ---- netlink.c ---- */
struct veth_plan {
    const char *host_name; /* the host end, created in the namespace of host_netns_fd */
    const char *address;   /* eth0's a.b.c.d/prefix */
    const char *gateway;   /* default route */
    int mtu;
};
/* Validate a plan before any namespace is made. Returns 0, or -1 with a message in err. */
int veth_plan_check(const struct veth_plan *plan, char *err, size_t errlen);
/* From inside the pod's network namespace: the pair, eth0 up with its address and default route. */
int veth_setup(const struct veth_plan *plan, int host_netns_fd, char *err, size_t errlen);

/* ---- subcommands ---- */
int cmd_create(int argc, char **argv);
int cmd_exec(int argc, char **argv);
int cmd_sandbox(int argc, char **argv);
int cmd_unpin(int argc, char **argv);
int cmd_portforward(int argc, char **argv);

#endif
