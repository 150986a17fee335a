/* The container's device policy: OCI linux.resources.devices rules, applied to its cgroups. */
#ifndef BERTH_DEVICES_H
#define BERTH_DEVICES_H

#include <linux/bpf.h>
#include <stddef.h>
#include <stdint.h>

/* Access bits as the kernel's device program sees them (BPF_DEVCG_ACC_*). */
#define DEV_ACC_MKNOD 1u
#define DEV_ACC_READ 2u
#define DEV_ACC_WRITE 4u
#define DEV_ACC_ALL 7u

#define DEV_ANY (-1LL) /* major or minor "*" */

struct device_rule {
    int allow;
    char type; /* 'a' (every device), 'c', 'b' */
    long long major, minor; /* DEV_ANY or 0..UINT32_MAX */
    unsigned access; /* DEV_ACC_* bits, never 0 */
};

/* The longest program: six loads, at most 8 instructions per rule, the default. */
#define DEVICES_MAX_RULES 1024
#define DEVICES_MAX_INSNS (6 + 8 * DEVICES_MAX_RULES + 2)

struct json_object;
/* Rules from the spec's JSON array ([{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}], absent
 * major/minor = "*"). *rules is malloc'd. Returns 0, or -1 with "spec: deviceRules[i]..." in err. */
int device_rules_from_json(struct json_object *arr, struct device_rule **rules, size_t *n, char *err, size_t errlen);

/* The BPF_PROG_TYPE_CGROUP_DEVICE program for the rules: the last matching rule decides (an allow rule
 * matches when the request's access is within its own, a deny rule when they share a bit), nothing matching
 * = deny. Returns the instruction count (<= cap), or -1 when it does not fit. */
int devices_bpf_build(const struct device_rule *rules, size_t n, struct bpf_insn *out, size_t cap);

/* Apply the rules to the cgroup directories of the given cgroup.procs files, before any process is in
 * them: cgroup2 directories get the program (BPF_F_ALLOW_MULTI, so an ancestor's program still runs too), v1
 * directories of the devices controller get devices.deny / devices.allow. Other v1 hierarchies are left
 * alone. Rules that restrict anything but reach no such directory are an error (fail closed). Returns 0, or
 * -1 with a message in err. */
int devices_apply(const char *const *cgroup_procs, size_t nprocs, const struct device_rule *rules, size_t n,
                  char *err, size_t errlen);

#endif
