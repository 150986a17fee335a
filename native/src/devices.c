/* The device policy: a cgroup2 device program (hand-assembled BPF) and the v1 devices controller. */
#include "devices.h"
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <json.h>
#include <limits.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

/* ---------- rules from spec.json ---------- */

static int number_member(struct json_object *o, const char *key, long long *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !v) {
        *out = DEV_ANY;
        return 0;
    }
    if (!json_object_is_type(v, json_type_int))
        return -1;
    long long x = (long long)json_object_get_int64(v);
    if (x < 0 || x > 0xffffffffLL)
        return -1;
    *out = x;
    return 0;
}

int device_rules_from_json(struct json_object *arr, struct device_rule **rules, size_t *n, char *err, size_t errlen)
{
    size_t len = json_object_array_length(arr);
    if (len > DEVICES_MAX_RULES)
        FAIL("spec: deviceRules: at most %d rules", DEVICES_MAX_RULES);
    struct device_rule *r = calloc(len + 1, sizeof *r);
    if (!r)
        FAIL("spec: out of memory");
    *rules = r;
    *n = len;
    for (size_t i = 0; i < len; i++) {
        struct json_object *e = json_object_array_get_idx(arr, i), *v;
        if (!json_object_is_type(e, json_type_object))
            FAIL("spec: deviceRules[%zu] must be an object", i);
        if (!json_object_object_get_ex(e, "allow", &v) || !json_object_is_type(v, json_type_boolean))
            FAIL("spec: deviceRules[%zu].allow must be a boolean", i);
        r[i].allow = json_object_get_boolean(v);
        const char *type = json_object_object_get_ex(e, "type", &v) && json_object_is_type(v, json_type_string)
                               ? json_object_get_string(v)
                               : NULL;
        if (!type || strlen(type) != 1 || !strchr("acb", type[0]))
            FAIL("spec: deviceRules[%zu].type must be one of a, c, b", i);
        r[i].type = type[0];
        if (number_member(e, "major", &r[i].major) < 0 || number_member(e, "minor", &r[i].minor) < 0)
            FAIL("spec: deviceRules[%zu]: major and minor must be integers in [0, 2^32)", i);
        const char *access = json_object_object_get_ex(e, "access", &v) && json_object_is_type(v, json_type_string)
                                 ? json_object_get_string(v)
                                 : NULL;
        if (!access || !*access)
            FAIL("spec: deviceRules[%zu].access must be a non-empty subset of \"rwm\"", i);
        for (const char *c = access; *c; c++) {
            if (*c == 'r')
                r[i].access |= DEV_ACC_READ;
            else if (*c == 'w')
                r[i].access |= DEV_ACC_WRITE;
            else if (*c == 'm')
                r[i].access |= DEV_ACC_MKNOD;
            else
                FAIL("spec: deviceRules[%zu].access must be a non-empty subset of \"rwm\": %s", i, access);
        }
        /* v1 cannot express a partial rule for every device ("a" resets the whole list) */
        if (r[i].type == 'a' && (r[i].access != DEV_ACC_ALL || r[i].major != DEV_ANY || r[i].minor != DEV_ANY))
            FAIL("spec: deviceRules[%zu]: a rule of type a must be a *:* rwm", i);
    }
    return 0;
}

/* ---------- the cgroup2 device program ---------- */

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define LDX_W(d, s, off) INSN(BPF_LDX | BPF_MEM | BPF_W, d, s, off, 0)
#define ALU32_K(op, d, k) INSN(BPF_ALU | (op) | BPF_K, d, 0, 0, k)
#define MOV32_X(d, s) INSN(BPF_ALU | BPF_MOV | BPF_X, d, s, 0, 0)
#define JMP_K(op, d, k, off) INSN(BPF_JMP | (op) | BPF_K, d, 0, off, k)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

/* Registers once the context is read: r2 device type, r3 access, r4 major, r5 minor; r1 scratch. */
enum { R0, R1, R2, R3, R4, R5 };

/* The checks a rule needs before its verdict; 0 checks = it matches every request. */
static int rule_checks(const struct device_rule *r, struct bpf_insn *out)
{
    int k = 0;
    if (r->type != 'a')
        out[k++] = JMP_K(BPF_JNE, R2, r->type == 'b' ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR, 0);
    if (r->allow && r->access != DEV_ACC_ALL) {
        /* matches when the request asks for nothing outside the rule */
        out[k++] = MOV32_X(R1, R3);
        out[k++] = ALU32_K(BPF_AND, R1, (int32_t)(~r->access & DEV_ACC_ALL));
        out[k++] = JMP_K(BPF_JNE, R1, 0, 0);
    } else if (!r->allow && r->access != DEV_ACC_ALL) {
        /* matches when the request asks for any of the denied access */
        out[k++] = MOV32_X(R1, R3);
        out[k++] = ALU32_K(BPF_AND, R1, (int32_t)r->access);
        out[k++] = JMP_K(BPF_JEQ, R1, 0, 0);
    }
    if (r->major != DEV_ANY)
        out[k++] = JMP_K(BPF_JNE, R4, (int32_t)(uint32_t)r->major, 0);
    if (r->minor != DEV_ANY)
        out[k++] = JMP_K(BPF_JNE, R5, (int32_t)(uint32_t)r->minor, 0);
    return k;
}

int devices_bpf_build(const struct device_rule *rules, size_t n, struct bpf_insn *out, size_t cap)
{
    size_t len = 0;
    if (cap < 8)
        return -1;
    /* struct bpf_cgroup_dev_ctx: access_type = access << 16 | type, then major, minor */
    out[len++] = LDX_W(R2, R1, 0);
    out[len++] = ALU32_K(BPF_AND, R2, 0xffff);
    out[len++] = LDX_W(R3, R1, 0);
    out[len++] = ALU32_K(BPF_RSH, R3, 16);
    out[len++] = LDX_W(R4, R1, 4);
    out[len++] = LDX_W(R5, R1, 8);
    /* Last rule first: the first match in this order is the last in the list. A rule without checks ends
     * the program (the verifier refuses unreachable instructions, so nothing may follow it). */
    for (size_t i = n; i-- > 0;) {
        struct bpf_insn checks[6];
        int k = rule_checks(&rules[i], checks);
        if (len + (size_t)k + 2 > cap)
            return -1;
        for (int j = 0; j < k; j++) {
            if (BPF_CLASS(checks[j].code) == BPF_JMP) /* on no match: past the rest and the verdict */
                checks[j].off = (int16_t)(k - j - 1 + 2);
            out[len++] = checks[j];
        }
        out[len++] = ALU32_K(BPF_MOV, R0, rules[i].allow ? 1 : 0);
        out[len++] = EXIT();
        if (k == 0)
            return (int)len;
    }
    if (len + 2 > cap)
        return -1;
    out[len++] = ALU32_K(BPF_MOV, R0, 0);
    out[len++] = EXIT();
    return (int)len;
}

static int bpf(int cmd, union bpf_attr *attr)
{
    return (int)syscall(SYS_bpf, cmd, attr, sizeof *attr);
}

/* The verifier's reason: the last line of its log that is not the "processed N insns" summary. */
static const char *verifier_reason(char *log)
{
    char *reason = NULL;
    for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"))
        if (strncmp(line, "processed ", 10) != 0)
            reason = line;
    return reason ? reason : "";
}

/* Loads the program; a refusal by the verifier comes back with its reason. */
static int load_program(const struct bpf_insn *insns, int len, char *err, size_t errlen)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.expected_attach_type = BPF_CGROUP_DEVICE;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = (uint32_t)len;
    attr.license = (uint64_t)(uintptr_t) "Apache";
    int fd = bpf(BPF_PROG_LOAD, &attr);
    if (fd >= 0)
        return fd;
    int e = errno;
    char log[4096] = "";
    const char *reason = "";
    if (e == EINVAL || e == EACCES) {
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = sizeof log;
        attr.log_level = 1;
        int again = bpf(BPF_PROG_LOAD, &attr);
        if (again >= 0)
            close(again);
        reason = verifier_reason(log);
    }
    snprintf(err, errlen, "devices: load the cgroup device program: %s%s%s", strerror(e), *reason ? ": " : "", reason);
    return -1;
}

static int attach_program(const char *dir, const struct device_rule *rules, size_t n, char *err, size_t errlen)
{
    struct bpf_insn *insns = malloc(sizeof *insns * DEVICES_MAX_INSNS);
    if (!insns)
        FAIL("devices: out of memory");
    int len = devices_bpf_build(rules, n, insns, DEVICES_MAX_INSNS);
    int prog = len < 0 ? -1 : load_program(insns, len, err, errlen);
    free(insns);
    if (len < 0)
        FAIL("devices: too many rules for the device program");
    if (prog < 0)
        return -1;
    int cg = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg < 0) {
        int e = errno;
        close(prog);
        FAIL("devices: open cgroup %s: %s", dir, strerror(e));
    }
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = (uint32_t)cg;
    attr.attach_bpf_fd = (uint32_t)prog;
    attr.attach_type = BPF_CGROUP_DEVICE;
    attr.attach_flags = BPF_F_ALLOW_MULTI;
    int r = bpf(BPF_PROG_ATTACH, &attr), e = errno;
    /* the attachment holds the program for as long as the cgroup exists */
    close(prog);
    close(cg);
    if (r < 0)
        FAIL("devices: attach the device program to %s: %s", dir, strerror(e));
    return 0;
}

/* ---------- the v1 devices controller ---------- */

static void v1_number(char *buf, size_t len, long long v)
{
    if (v == DEV_ANY)
        snprintf(buf, len, "*");
    else
        snprintf(buf, len, "%lld", v);
}

static int apply_v1(const char *dir, const struct device_rule *rules, size_t n, char *err, size_t errlen)
{
    char allow[PATH_MAX], deny[PATH_MAX];
    if (path_join(allow, sizeof allow, dir, "devices.allow") < 0 || path_join(deny, sizeof deny, dir, "devices.deny") < 0)
        FAIL("devices: path too long: %s", dir);
    /* The rules apply over a default of deny, as in the device program. */
    int e0 = write_file(deny, "a");
    if (e0 < 0)
        FAIL("devices: write \"a\" to %s: %s", deny, strerror(-e0));
    for (size_t i = 0; i < n; i++) {
        const struct device_rule *r = &rules[i];
        char line[64], major[16], minor[16], access[4];
        int k = 0;
        if (r->access & DEV_ACC_READ)
            access[k++] = 'r';
        if (r->access & DEV_ACC_WRITE)
            access[k++] = 'w';
        if (r->access & DEV_ACC_MKNOD)
            access[k++] = 'm';
        access[k] = 0;
        v1_number(major, sizeof major, r->major);
        v1_number(minor, sizeof minor, r->minor);
        if (r->type == 'a')
            snprintf(line, sizeof line, "a");
        else
            snprintf(line, sizeof line, "%c %s:%s %s", r->type, major, minor, access);
        const char *file = r->allow ? allow : deny;
        int e = write_file(file, line);
        if (e < 0)
            FAIL("devices: write \"%s\" to %s: %s", line, file, strerror(-e));
    }
    return 0;
}

/* Rules that end with an allow of every device restrict nothing (a privileged container's). */
static int rules_restrict(const struct device_rule *rules, size_t n)
{
    return !(n > 0 && rules[n - 1].type == 'a' && rules[n - 1].allow);
}

int devices_apply(const char *const *cgroup_procs, size_t nprocs, const struct device_rule *rules, size_t n,
                  char *err, size_t errlen)
{
    size_t enforced = 0;
    for (size_t i = 0; i < nprocs; i++) {
        char dir[PATH_MAX], probe[PATH_MAX];
        const char *slash = strrchr(cgroup_procs[i], '/');
        size_t dlen = slash ? (size_t)(slash - cgroup_procs[i]) : 0;
        if (dlen == 0 || dlen >= sizeof dir)
            FAIL("devices: no cgroup directory in %s", cgroup_procs[i]);
        memcpy(dir, cgroup_procs[i], dlen);
        dir[dlen] = 0;
        struct statfs fs;
        if (statfs(dir, &fs) < 0)
            FAIL("devices: statfs %s: %s", dir, strerror(errno));
        if (fs.f_type == CGROUP2_SUPER_MAGIC) {
            if (attach_program(dir, rules, n, err, errlen) < 0)
                return -1;
            enforced++;
            continue;
        }
        /* a v1 hierarchy: only the one with the devices controller has these files */
        if (path_join(probe, sizeof probe, dir, "devices.allow") < 0 || access(probe, F_OK) < 0)
            continue;
        if (apply_v1(dir, rules, n, err, errlen) < 0)
            return -1;
        enforced++;
    }
    /* Fail closed: a policy nothing enforces would leave every device node the container can make open to it. */
    if (!enforced && rules_restrict(rules, n))
        FAIL("devices: no cgroup among the container's cgroupProcs can enforce the device rules (neither a cgroup2 "
             "directory nor one of the v1 devices controller)");
    return 0;
}
