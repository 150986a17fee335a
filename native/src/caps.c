/* Capabilities and credentials with raw syscalls (no libcap). */
#include "shim.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *const cap_names[] = {
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
};
#define NCAPS ((int)(sizeof cap_names / sizeof cap_names[0]))

int cap_from_name(const char *name)
{
    if (strncasecmp(name, "CAP_", 4) == 0)
        name += 4;
    for (int i = 0; i < NCAPS; i++)
        if (strcasecmp(name, cap_names[i]) == 0)
            return i;
    return -1;
}

static int capget_all(struct __user_cap_data_struct data[2])
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    return (int)syscall(SYS_capget, &hdr, data);
}

int caps_prepare(const struct capsets *caps, char *err, size_t errlen)
{
    if (!caps->present)
        return 0;
    /* One DROP per capability not kept, upwards until EINVAL (past the kernel's last one). Dropping one
     * that is already gone succeeds; only without CAP_SETPCAP (EPERM) does READ tell whether it matters. */
    for (int c = 0; c < 64; c++) {
        if (caps->bounding & (1ULL << c))
            continue;
        if (prctl(PR_CAPBSET_DROP, (unsigned long)c, 0, 0, 0) == 0)
            continue;
        int e = errno;
        if (e == EINVAL)
            break;
        if (e == EPERM) {
            int r = prctl(PR_CAPBSET_READ, (unsigned long)c, 0, 0, 0);
            if (r == 0)
                continue; /* already gone */
            if (r < 0 && errno == EINVAL)
                break;
        }
        char what[64];
        snprintf(what, sizeof what, "CAP_%s", c < NCAPS ? cap_names[c] : "?");
        fmt_err(err, errlen, "capabilities: drop bounding", what, e);
        return -1;
    }
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) {
        fmt_err(err, errlen, "capabilities: PR_SET_KEEPCAPS", NULL, errno);
        return -1;
    }
    return 0;
}

int set_ids(uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups, int set_groups, char *err, size_t errlen)
{
    char what[32];
    if (set_groups && setgroups(ngroups, groups) < 0) {
        fmt_err(err, errlen, "setgroups", NULL, errno);
        return -1;
    }
    if (setresgid(gid, gid, gid) < 0) {
        snprintf(what, sizeof what, "%u", (unsigned)gid);
        fmt_err(err, errlen, "setgid", what, errno);
        return -1;
    }
    if (setresuid(uid, uid, uid) < 0) {
        snprintf(what, sizeof what, "%u", (unsigned)uid);
        fmt_err(err, errlen, "setuid", what, errno);
        return -1;
    }
    return 0;
}

/* Set effective/permitted/inheritable to the requested sets (intersected with what we hold) plus `extra`. */
static int caps_set(const struct capsets *caps, uint64_t extra, uint64_t *perm_out, uint64_t *inh_out)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    uint64_t have;

    memset(data, 0, sizeof data);
    if (capget_all(data) < 0)
        return -1;
    /* We cannot grant what this process does not hold (e.g. CAP_SYS_RESOURCE on a
     * restricted host): every set is intersected with the current permitted set. */
    have = (uint64_t)data[0].permitted | ((uint64_t)data[1].permitted << 32);
    uint64_t perm = (caps->permitted | extra) & have;
    uint64_t eff = (caps->effective | extra) & perm;
    uint64_t inh = caps->inheritable & (have | ((uint64_t)data[0].inheritable | ((uint64_t)data[1].inheritable << 32)));
    data[0].effective = (uint32_t)eff;
    data[1].effective = (uint32_t)(eff >> 32);
    data[0].permitted = (uint32_t)perm;
    data[1].permitted = (uint32_t)(perm >> 32);
    data[0].inheritable = (uint32_t)inh;
    data[1].inheritable = (uint32_t)(inh >> 32);
    if (perm_out)
        *perm_out = perm & ~(extra & ~caps->permitted);
    if (inh_out)
        *inh_out = inh;
    return (int)syscall(SYS_capset, &hdr, data);
}

int caps_finish(const struct capsets *caps, uint64_t extra, char *err, size_t errlen)
{
    uint64_t perm, inh;
    if (!caps->present)
        return 0;
    if (caps_set(caps, extra, &perm, &inh) < 0) {
        fmt_err(err, errlen, "capabilities: capset", NULL, errno);
        return -1;
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
        fmt_err(err, errlen, "capabilities: clear ambient", NULL, errno);
        return -1;
    }
    uint64_t amb = caps->ambient & perm & inh;
    for (int c = 0; c < 64; c++) {
        if (!(amb & (1ULL << c)))
            continue;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, (unsigned long)c, 0, 0) < 0) {
            char what[64];
            snprintf(what, sizeof what, "CAP_%s", c < NCAPS ? cap_names[c] : "?");
            fmt_err(err, errlen, "capabilities: raise ambient", what, errno);
            return -1;
        }
    }
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    return 0;
}

/* One capset: what caps_finish set, without its extra capabilities (ambient ones stay: they are in the
 * requested permitted and inheritable sets). */
int caps_drop_extra(const struct capsets *caps)
{
    return caps_set(caps, 0, NULL, NULL) < 0 ? -errno : 0;
}

int caps_raise_effective(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (capget_all(data) < 0)
        return -errno;
    data[0].effective = data[0].permitted;
    data[1].effective = data[1].permitted;
    return syscall(SYS_capset, &hdr, data) < 0 ? -errno : 0;
}
