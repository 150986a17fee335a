/* Test tool (not shipped): builds the cgroup device program for a rule list with the shim's own code and
 * runs it in a small eBPF interpreter, so the decisions can be checked without root or a kernel.
 *
 *   devices-eval <rules.json>      stdin: one request per line, "<c|b> <major> <minor> <access rwm>"
 *                                  stdout: "allow" or "deny" per line; then "insns N" on stderr
 * Exit 0; 1 when the rules are refused or the program does something the interpreter does not know (every
 * instruction the kernel would accept from devices.c is covered; anything else is a bug worth failing on). */
#include "../src/devices.h"

#include <json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctx {
    uint32_t access_type, major, minor;
};

/* Returns r0, or -1 on an instruction outside the subset or a fault (bad register, jump out of range,
 * a read before a write, a read outside the context). */
static long long run(const struct bpf_insn *p, int len, const struct ctx *c)
{
    uint64_t reg[11] = {0};
    int known[11] = {0}; /* written with a scalar */
    int r1_ctx = 1;      /* r1 still points at the context */
    for (int pc = 0; pc < len; pc++) {
        const struct bpf_insn *i = &p[pc];
        int d = i->dst_reg, s = i->src_reg;
        if (d > 10 || s > 10)
            return -1;
        uint8_t cls = BPF_CLASS(i->code);
        /* reserved fields must be zero, as the kernel's verifier insists */
        if ((cls == BPF_LDX && i->imm != 0) || (cls == BPF_ALU && i->off != 0) ||
            ((cls == BPF_ALU || cls == BPF_JMP) && BPF_SRC(i->code) == BPF_K && s != 0) ||
            (cls == BPF_ALU && BPF_SRC(i->code) == BPF_X && i->imm != 0) ||
            (i->code == (BPF_JMP | BPF_EXIT) && (d || s || i->off || i->imm)))
            return -1;
        if (i->code == (BPF_LDX | BPF_MEM | BPF_W)) {
            if (s != 1 || !r1_ctx || (i->off != 0 && i->off != 4 && i->off != 8))
                return -1;
            reg[d] = i->off == 0 ? c->access_type : i->off == 4 ? c->major : c->minor;
            known[d] = 1;
            if (d == 1)
                r1_ctx = 0;
            continue;
        }
        if (cls == BPF_ALU) {
            uint32_t src = BPF_SRC(i->code) == BPF_X ? (uint32_t)reg[s] : (uint32_t)i->imm;
            if (BPF_SRC(i->code) == BPF_X && !known[s])
                return -1;
            uint32_t dst = (uint32_t)reg[d];
            switch (BPF_OP(i->code)) {
            case BPF_MOV:
                dst = src;
                break;
            case BPF_AND:
                if (!known[d])
                    return -1;
                dst &= src;
                break;
            case BPF_RSH:
                if (!known[d] || src > 31)
                    return -1;
                dst >>= src;
                break;
            default:
                return -1;
            }
            reg[d] = dst; /* 32-bit operations zero the upper half */
            known[d] = 1;
            if (d == 1)
                r1_ctx = 0;
            continue;
        }
        if (cls == BPF_JMP) {
            uint8_t op = BPF_OP(i->code);
            if (op == BPF_EXIT)
                return known[0] ? (long long)(uint32_t)reg[0] : -1;
            int taken;
            if (op == BPF_JA) {
                taken = 1;
            } else {
                if (BPF_SRC(i->code) != BPF_K || !known[d])
                    return -1;
                uint64_t k = (uint64_t)(int64_t)i->imm;
                if (op == BPF_JEQ)
                    taken = reg[d] == k;
                else if (op == BPF_JNE)
                    taken = reg[d] != k;
                else
                    return -1;
            }
            if (taken) {
                /* forward only: the kernel's verifier would accept back edges only when bounded */
                if (i->off < 0 || pc + 1 + i->off >= len)
                    return -1;
                pc += i->off;
            }
            continue;
        }
        return -1;
    }
    return -1; /* fell off the end */
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: devices-eval <rules.json>\n");
        return 2;
    }
    struct json_object *arr = json_object_from_file(argv[1]);
    if (!arr || !json_object_is_type(arr, json_type_array)) {
        fprintf(stderr, "devices-eval: %s: not a JSON array\n", argv[1]);
        return 1;
    }
    struct device_rule *rules = NULL;
    size_t n = 0;
    char err[512];
    if (device_rules_from_json(arr, &rules, &n, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    static struct bpf_insn prog[DEVICES_MAX_INSNS];
    int len = devices_bpf_build(rules, n, prog, DEVICES_MAX_INSNS);
    if (len < 0) {
        fprintf(stderr, "devices-eval: the program does not fit\n");
        return 1;
    }
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char type, access[8] = "";
        unsigned major, minor;
        if (sscanf(line, " %c %u %u %7s", &type, &major, &minor, access) != 4)
            continue;
        uint32_t acc = 0;
        for (char *a = access; *a; a++)
            acc |= *a == 'r' ? BPF_DEVCG_ACC_READ : *a == 'w' ? BPF_DEVCG_ACC_WRITE : *a == 'm' ? BPF_DEVCG_ACC_MKNOD : 0;
        struct ctx c = {acc << 16 | (type == 'b' ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR), major, minor};
        long long r = run(prog, len, &c);
        if (r < 0) {
            fprintf(stderr, "devices-eval: the program faulted on %s", line);
            return 1;
        }
        printf("%s\n", r ? "allow" : "deny");
    }
    fprintf(stderr, "insns %d\n", len);
    free(rules);
    json_object_put(arr);
    return 0;
}
