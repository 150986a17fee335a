/* seccomp: an OCI `linux.seccomp` object -> a BPF program (built with libseccomp in the create/exec
 * process, where a bad profile can still be reported), installed with one seccomp(2) call right
 * before execve. */
#include "spec.h"

#include <errno.h>
#include <json.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        goto out;                                                                                  \
    } while (0)

/* A string member, or NULL (absent, null, or another type). */
static const char *str_member(struct json_object *o, const char *key)
{
    int bad = 0;
    struct json_object *v = json_member(o, key, json_type_string, &bad);
    return v ? json_object_get_string(v) : NULL;
}

/* An unsigned 64-bit integer member (negative values wrap, as a Go uint64 would not accept them anyway).
 * Returns 1 when present, 0 when absent or null (*out unchanged), -1 for another type. */
static int u64_member(struct json_object *o, const char *key, uint64_t *out)
{
    int bad = 0;
    struct json_object *v = json_member(o, key, json_type_int, &bad);
    if (bad)
        return -1;
    if (!v)
        return 0;
    int64_t s = json_object_get_int64(v);
    *out = s == INT64_MAX ? json_object_get_uint64(v) : (uint64_t)s;
    return 1;
}

/* Action name (+ the errno member retkey of o) -> libseccomp action. Returns 0, or -1 when unknown. */
static int parse_action(const char *name, struct json_object *o, const char *retkey, uint32_t *act)
{
    uint64_t r = 1; /* EPERM when errnoRet is absent, as in the OCI spec */
    if (!name || u64_member(o, retkey, &r) < 0)
        return -1;
    if (r > 0xffff)
        return -1;
    if (strcmp(name, "SCMP_ACT_ALLOW") == 0)
        *act = SCMP_ACT_ALLOW;
    else if (strcmp(name, "SCMP_ACT_ERRNO") == 0)
        *act = SCMP_ACT_ERRNO((uint32_t)r);
    else if (strcmp(name, "SCMP_ACT_KILL") == 0 || strcmp(name, "SCMP_ACT_KILL_THREAD") == 0)
        *act = SCMP_ACT_KILL_THREAD;
    else if (strcmp(name, "SCMP_ACT_KILL_PROCESS") == 0)
        *act = SCMP_ACT_KILL_PROCESS;
    else if (strcmp(name, "SCMP_ACT_TRAP") == 0)
        *act = SCMP_ACT_TRAP;
    else if (strcmp(name, "SCMP_ACT_TRACE") == 0)
        *act = SCMP_ACT_TRACE((uint32_t)r);
    else if (strcmp(name, "SCMP_ACT_LOG") == 0)
        *act = SCMP_ACT_LOG;
    else
        return -1;
    return 0;
}

static int parse_op(const char *name, enum scmp_compare *op)
{
    static const struct {
        const char *name;
        enum scmp_compare op;
    } ops[] = {
        {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
        {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
        {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(name, ops[i].name) == 0) {
            *op = ops[i].op;
            return 0;
        }
    return -1;
}

/* "SCMP_ARCH_X86_64" / "x86_64" -> libseccomp token; 0 when libseccomp does not know it. */
static uint32_t arch_token(const char *name)
{
    char buf[64];
    size_t i;
    if (strncmp(name, "SCMP_ARCH_", 10) == 0)
        name += 10;
    for (i = 0; name[i] && i < sizeof buf - 1; i++)
        buf[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    buf[i] = 0;
    return seccomp_arch_resolve_name(buf);
}

/* Calls newer than the profile answer ENOSYS, not the default errno, so that a new libc falls back to the
 * older call (as runc does): a deny-by-default profile cannot have allowed a call it did not know of.
 * "Newer" = a number above the highest the profile names (any rule, any action) that libseccomp resolves
 * for the native architecture. The stub goes in front of libseccomp's program, whose jumps are relative and
 * which loads what it needs itself. Only x86_64 here; x32 calls (bit 30 set; also nr -1, which a tracer uses
 * to skip a call) and other architectures fall through to libseccomp's program unchanged. */
#define ENOSYS_STUB_LEN 6

static int default_is_permissive(const char *name, uint32_t def)
{
    /* a tracer handles calls it does not know itself (runc treats TRACE as permissive too) */
    return strcmp(name, "SCMP_ACT_ALLOW") == 0 || strcmp(name, "SCMP_ACT_LOG") == 0 ||
           strcmp(name, "SCMP_ACT_TRACE") == 0 || def == SCMP_ACT_ERRNO(ENOSYS);
}

/* Fills stub[ENOSYS_STUB_LEN]; returns its length, 0 when there is none for this machine. */
static unsigned enosys_stub(struct sock_filter *stub, uint32_t highest_nr)
{
#if defined(__x86_64__)
    /* index:                                                                    jt jf: relative, from the next one */
    stub[0] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    stub[1] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 4); /* else -> [6] */
    stub[2] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    stub[3] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x40000000, 2, 0); /* x32 -> [6] */
    stub[4] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, highest_nr, 0, 1);  /* not newer -> [6] */
    stub[5] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA));
    return ENOSYS_STUB_LEN;
#else
    (void)stub;
    (void)highest_nr;
    return 0;
#endif
}

int seccomp_build(struct json_object *o, struct seccomp_prog *prog, char *err, size_t errlen)
{
    scmp_filter_ctx ctx = NULL;
    struct scmp_arg_cmp *conds = NULL;
    int ret = -1, rc, memfd = -1;
    uint32_t def;
    const char *name;
    int bad = 0;
    int highest_nr = -1;

    memset(prog, 0, sizeof *prog);
    if (!json_object_is_type(o, json_type_object))
        FAIL("seccomp: must be an object");
    name = str_member(o, "defaultAction");
    if (parse_action(name, o, "defaultErrnoRet", &def) < 0)
        FAIL("seccomp: defaultAction (with defaultErrnoRet) is missing or not known: %s", name ? name : "(none)");
    ctx = seccomp_init(def);
    if (!ctx)
        FAIL("seccomp: libseccomp refused defaultAction %s (not supported by this kernel?)", name);
    /* no_new_privs is the spec's business, not the filter's; the program is installed by hand anyway */
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);

    struct json_object *arches = json_member(o, "architectures", json_type_array, &bad);
    if (bad)
        FAIL("seccomp: architectures must be an array");
    for (size_t i = 0; arches && i < json_object_array_length(arches); i++) {
        struct json_object *av = json_object_array_get_idx(arches, i);
        const char *a = json_object_is_type(av, json_type_string) ? json_object_get_string(av) : NULL;
        if (!a)
            FAIL("seccomp: architectures[%zu] must be a string", i);
        uint32_t tok = arch_token(a);
        if (!tok)
            continue; /* unknown to this libseccomp: nothing to filter for it */
        rc = seccomp_arch_add(ctx, tok);
        if (rc < 0 && rc != -EEXIST)
            FAIL("seccomp: add architecture %s: %s", a, strerror(-rc));
    }

    struct json_object *calls = json_member(o, "syscalls", json_type_array, &bad);
    if (bad)
        FAIL("seccomp: syscalls must be an array");
    for (size_t i = 0; calls && i < json_object_array_length(calls); i++) {
        struct json_object *r = json_object_array_get_idx(calls, i);
        uint32_t act;
        if (!json_object_is_type(r, json_type_object))
            FAIL("seccomp: syscalls[%zu] must be an object", i);
        const char *an = str_member(r, "action");
        if (parse_action(an, r, "errnoRet", &act) < 0)
            FAIL("seccomp: syscalls[%zu]: action (with errnoRet) is missing or not known: %s", i, an ? an : "(none)");
        struct json_object *names = json_member(r, "names", json_type_array, &bad);
        if (!names)
            FAIL("seccomp: syscalls[%zu].names must be an array", i);
        struct json_object *args = json_member(r, "args", json_type_array, &bad);
        if (bad)
            FAIL("seccomp: syscalls[%zu].args must be an array", i);
        size_t nargs = args ? json_object_array_length(args) : 0;
        free(conds);
        conds = calloc(nargs + 1, sizeof *conds);
        if (!conds)
            FAIL("seccomp: out of memory");
        unsigned used[6] = {0};
        int repeated = 0;
        for (size_t k = 0; k < nargs; k++) {
            struct json_object *a = json_object_array_get_idx(args, k);
            uint64_t index, value, value2 = 0;
            enum scmp_compare op;
            const char *opn = str_member(a, "op");
            if (!json_object_is_type(a, json_type_object) || u64_member(a, "index", &index) != 1 || index > 5 ||
                u64_member(a, "value", &value) != 1 || u64_member(a, "valueTwo", &value2) < 0 || !opn ||
                parse_op(opn, &op) < 0)
                FAIL("seccomp: syscalls[%zu].args[%zu]: needs index 0-5, integer value (valueTwo), a known op", i, k);
            /* For SCMP_CMP_MASKED_EQ, value is the mask and valueTwo the datum: libseccomp's order too. */
            conds[k] = (struct scmp_arg_cmp){(unsigned)index, op, value, value2};
            if (used[index]++)
                repeated = 1;
        }
        for (size_t k = 0; k < json_object_array_length(names); k++) {
            struct json_object *sv = json_object_array_get_idx(names, k);
            const char *sc = json_object_is_type(sv, json_type_string) ? json_object_get_string(sv) : NULL;
            if (!sc)
                FAIL("seccomp: syscalls[%zu].names[%zu] must be a string", i, k);
            int nr = seccomp_syscall_resolve_name(sc);
            if (nr == __NR_SCMP_ERROR)
                continue; /* unknown to libseccomp (newer or another architecture's): skipped, as runc does */
            if (nr > highest_nr)
                highest_nr = nr; /* negative: a pseudo-number for a call this architecture lacks */
            if (act == def)
                continue; /* libseccomp refuses a rule that repeats the default; it changes nothing */
            if (repeated) {
                /* several conditions on one argument cannot be AND-ed by libseccomp: one rule each (runc) */
                for (size_t c = 0; c < nargs; c++)
                    if ((rc = seccomp_rule_add_array(ctx, act, nr, 1, &conds[c])) < 0)
                        FAIL("seccomp: rule for %s: %s", sc, strerror(-rc));
            } else if ((rc = seccomp_rule_add_array(ctx, act, nr, (unsigned)nargs, conds)) < 0) {
                FAIL("seccomp: rule for %s: %s", sc, strerror(-rc));
            }
        }
    }

    /* libseccomp 2.5 exports to an fd only */
    memfd = memfd_create("seccomp-bpf", MFD_CLOEXEC);
    if (memfd < 0)
        FAIL("seccomp: memfd_create: %s", strerror(errno));
    if ((rc = seccomp_export_bpf(ctx, memfd)) < 0)
        FAIL("seccomp: export BPF: %s", strerror(-rc));
    struct sock_filter stub[ENOSYS_STUB_LEN];
    unsigned stub_len = 0;
    if (!default_is_permissive(name, def) && highest_nr > 0)
        stub_len = enosys_stub(stub, (uint32_t)highest_nr);
    off_t size = lseek(memfd, 0, SEEK_END);
    if (size <= 0 || size % (off_t)sizeof(struct sock_filter) ||
        size / (off_t)sizeof(struct sock_filter) + stub_len > BPF_MAXINSNS)
        FAIL("seccomp: the filter is empty or too large (%lld bytes)", (long long)size);
    prog->filter = malloc((size_t)size + sizeof stub);
    if (!prog->filter)
        FAIL("seccomp: out of memory");
    memcpy(prog->filter, stub, stub_len * sizeof *stub);
    if (pread(memfd, prog->filter + stub_len, (size_t)size, 0) != size)
        FAIL("seccomp: read back the BPF program: %s", strerror(errno));
    prog->len = (unsigned short)(size / (off_t)sizeof(struct sock_filter) + stub_len);
    ret = 0;
out:
    if (ret < 0) {
        free(prog->filter);
        memset(prog, 0, sizeof *prog);
    }
    if (memfd >= 0)
        close(memfd);
    free(conds);
    if (ctx)
        seccomp_release(ctx);
    return ret;
}

int seccomp_install(const struct seccomp_prog *prog)
{
    struct sock_fprog fp = {prog->len, prog->filter};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp) == 0)
        return 0;
    if (errno != ENOSYS)
        return -errno;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp, 0, 0) == 0 ? 0 : -errno;
}

void seccomp_prog_free(struct seccomp_prog *prog)
{
    free(prog->filter);
    memset(prog, 0, sizeof *prog);
}
