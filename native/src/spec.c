/* spec.json parsing with json-c. */
#include "spec.h"

#include <errno.h>
#include <json.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>

const struct ns_kind ns_kinds[NS_COUNT] = {
    [NS_USER] = {"user", NULL, "user", CLONE_NEWUSER},
    [NS_MNT] = {"mount", "mnt", "mnt", CLONE_NEWNS},
    [NS_IPC] = {"ipc", NULL, "ipc", CLONE_NEWIPC},
    [NS_UTS] = {"uts", NULL, "uts", CLONE_NEWUTS},
    [NS_NET] = {"network", "net", "net", CLONE_NEWNET},
    [NS_CGROUP] = {"cgroup", NULL, "cgroup", CLONE_NEWCGROUP},
    [NS_PID] = {"pid", NULL, "pid", CLONE_NEWPID},
};

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

/* Whether a relative path has a ".." component. */
static int path_has_dotdot(const char *p)
{
    for (const char *c = p; *c;) {
        size_t n = strcspn(c, "/");
        if (n == 2 && c[0] == '.' && c[1] == '.')
            return 1;
        c += n;
        while (*c == '/')
            c++;
    }
    return 0;
}

struct json_object *json_member(struct json_object *o, const char *key, json_type t, int *bad)
{
    struct json_object *v = NULL;
    if (!o || !json_object_object_get_ex(o, key, &v) || !v)
        return NULL;
    if (!json_object_is_type(v, t)) {
        *bad = 1;
        return NULL;
    }
    return v;
}

int json_get_string(struct json_object *o, const char *key, const char **out, int required, const char *ctx,
                      char *err, size_t errlen)
{
    int bad = 0;
    struct json_object *v = json_member(o, key, json_type_string, &bad);
    if (bad)
        FAIL("spec: %s%s must be a string", ctx, key);
    if (!v) {
        if (required)
            FAIL("spec: %s%s is required", ctx, key);
        *out = NULL;
        return 0;
    }
    *out = json_object_get_string(v);
    return 0;
}

int json_get_int(struct json_object *o, const char *key, long long *out, int *present, const char *ctx, char *err,
                   size_t errlen)
{
    int bad = 0;
    struct json_object *v = json_member(o, key, json_type_int, &bad);
    if (bad)
        FAIL("spec: %s%s must be an integer", ctx, key);
    *present = v != NULL;
    if (v)
        *out = (long long)json_object_get_int64(v);
    return 0;
}

static int get_bool(struct json_object *o, const char *key, int *out, const char *ctx, char *err, size_t errlen)
{
    int bad = 0;
    struct json_object *v = json_member(o, key, json_type_boolean, &bad);
    if (bad)
        FAIL("spec: %s%s must be a boolean", ctx, key);
    *out = v ? json_object_get_boolean(v) : 0;
    return 0;
}

/* A uid/gid: 0..0xfffffffe ((uid_t)-1 means "unchanged" to set*id and chown). */
#define ID_MAX 0xfffffffeLL

static int get_id(struct json_object *o, const char *key, uint32_t *out, const char *ctx, char *err, size_t errlen)
{
    long long v;
    int present;
    if (json_get_int(o, key, &v, &present, ctx, err, errlen) < 0)
        return -1;
    if (present && (v < 0 || v > ID_MAX))
        FAIL("spec: %s%s must be in [0, %lld]: %lld", ctx, key, ID_MAX, v);
    *out = present ? (uint32_t)v : 0;
    return 0;
}

/* NULL-terminated array of string pointers (malloc'd array, strings in the tree). */
static int get_strings(struct json_object *o, const char *key, const char ***out, size_t *n, const char *ctx,
                       char *err, size_t errlen)
{
    int bad = 0;
    struct json_object *a = json_member(o, key, json_type_array, &bad);
    if (bad)
        FAIL("spec: %s%s must be an array", ctx, key);
    size_t len = a ? json_object_array_length(a) : 0;
    const char **v = calloc(len + 1, sizeof *v);
    if (!v)
        FAIL("spec: out of memory");
    for (size_t i = 0; i < len; i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        if (!json_object_is_type(e, json_type_string)) {
            free(v);
            FAIL("spec: %s%s[%zu] must be a string", ctx, key, i);
        }
        v[i] = json_object_get_string(e);
    }
    *out = v;
    *n = len;
    return 0;
}

int caps_from_json(struct json_object *c, struct capsets *caps, char *err, size_t errlen)
{
    static const char *const sets[] = {"bounding", "effective", "permitted", "inheritable", "ambient"};
    uint64_t *dst[] = {&caps->bounding, &caps->effective, &caps->permitted, &caps->inheritable, &caps->ambient};
    memset(caps, 0, sizeof *caps);
    if (!c)
        return 0;
    caps->present = 1;
    for (int i = 0; i < 5; i++) {
        const char **names;
        size_t n;
        if (get_strings(c, sets[i], &names, &n, "capabilities.", err, errlen) < 0)
            return -1;
        for (size_t j = 0; j < n; j++) {
            int cap = cap_from_name(names[j]);
            if (cap >= 0)
                *dst[i] |= 1ULL << cap; /* unknown names are ignored (newer than this build) */
        }
        free(names);
    }
    return 0;
}

static const struct {
    const char *name;
    int res;
} rlimit_names[] = {
    {"RLIMIT_CPU", RLIMIT_CPU},         {"RLIMIT_FSIZE", RLIMIT_FSIZE},
    {"RLIMIT_DATA", RLIMIT_DATA},       {"RLIMIT_STACK", RLIMIT_STACK},
    {"RLIMIT_CORE", RLIMIT_CORE},       {"RLIMIT_RSS", RLIMIT_RSS},
    {"RLIMIT_NPROC", RLIMIT_NPROC},     {"RLIMIT_NOFILE", RLIMIT_NOFILE},
    {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK}, {"RLIMIT_AS", RLIMIT_AS},
    {"RLIMIT_LOCKS", RLIMIT_LOCKS},     {"RLIMIT_SIGPENDING", RLIMIT_SIGPENDING},
    {"RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE}, {"RLIMIT_NICE", RLIMIT_NICE},
    {"RLIMIT_RTPRIO", RLIMIT_RTPRIO},   {"RLIMIT_RTTIME", RLIMIT_RTTIME},
};

int rlimit_resource(const char *name)
{
    for (size_t k = 0; k < sizeof rlimit_names / sizeof rlimit_names[0]; k++)
        if (strcmp(name, rlimit_names[k].name) == 0)
            return rlimit_names[k].res;
    return -1;
}

static const struct {
    const char *name;
    int clear;
    unsigned long flag;
} mount_flags[] = {
    {"ro", 0, MS_RDONLY},          {"rw", 1, MS_RDONLY},         {"nosuid", 0, MS_NOSUID},
    {"suid", 1, MS_NOSUID},        {"nodev", 0, MS_NODEV},       {"dev", 1, MS_NODEV},
    {"noexec", 0, MS_NOEXEC},      {"exec", 1, MS_NOEXEC},       {"sync", 0, MS_SYNCHRONOUS},
    {"async", 1, MS_SYNCHRONOUS},  {"dirsync", 0, MS_DIRSYNC},   {"remount", 0, MS_REMOUNT},
    {"mand", 0, MS_MANDLOCK},      {"nomand", 1, MS_MANDLOCK},   {"noatime", 0, MS_NOATIME},
    {"atime", 1, MS_NOATIME},      {"nodiratime", 0, MS_NODIRATIME}, {"diratime", 1, MS_NODIRATIME},
    {"relatime", 0, MS_RELATIME},  {"norelatime", 1, MS_RELATIME}, {"strictatime", 0, MS_STRICTATIME},
    {"nostrictatime", 1, MS_STRICTATIME}, {"silent", 0, MS_SILENT}, {"loud", 1, MS_SILENT},
};

static const struct {
    const char *name;
    unsigned long prop;
} mount_props[] = {
    {"private", MS_PRIVATE},          {"rprivate", MS_PRIVATE | MS_REC},
    {"slave", MS_SLAVE},              {"rslave", MS_SLAVE | MS_REC},
    {"shared", MS_SHARED},            {"rshared", MS_SHARED | MS_REC},
    {"unbindable", MS_UNBINDABLE},    {"runbindable", MS_UNBINDABLE | MS_REC},
};

int parse_mount_options(struct json_object *opts, struct mount_spec *m, char *err, size_t errlen)
{
    size_t n = opts ? json_object_array_length(opts) : 0;
    size_t datalen = 0;
    m->flags = 0;
    m->prop = 0;
    m->rro = 0;
    m->data = NULL;
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(opts, i);
        if (!json_object_is_type(e, json_type_string))
            FAIL("spec: mount %s: options must be strings", m->dest);
        const char *o = json_object_get_string(e);
        int done = 0;
        if (strcmp(o, "bind") == 0) {
            if (m->bind < 1)
                m->bind = 1;
            continue;
        }
        if (strcmp(o, "rbind") == 0) {
            m->bind = 2;
            continue;
        }
        if (strcmp(o, "rro") == 0) {
            m->rro = 1;
            continue;
        }
        for (size_t k = 0; k < sizeof mount_flags / sizeof mount_flags[0] && !done; k++)
            if (strcmp(o, mount_flags[k].name) == 0) {
                if (mount_flags[k].clear)
                    m->flags &= ~mount_flags[k].flag;
                else
                    m->flags |= mount_flags[k].flag;
                done = 1;
            }
        for (size_t k = 0; k < sizeof mount_props / sizeof mount_props[0] && !done; k++)
            if (strcmp(o, mount_props[k].name) == 0) {
                m->prop = mount_props[k].prop;
                done = 1;
            }
        if (done)
            continue;
        /* anything else is filesystem data (mode=755, size=65536k, newinstance, ...) */
        size_t olen = strlen(o);
        char *d = realloc(m->data, datalen + olen + 2);
        if (!d)
            FAIL("spec: out of memory");
        if (datalen)
            d[datalen++] = ',';
        memcpy(d + datalen, o, olen + 1);
        datalen += olen;
        m->data = d;
    }
    return 0;
}

static int parse_namespaces(struct json_object *root, struct spec *s, char *err, size_t errlen)
{
    int bad = 0;
    struct json_object *a = json_member(root, "namespaces", json_type_array, &bad);
    if (bad)
        FAIL("spec: namespaces must be an array");
    size_t n = a ? json_object_array_length(a) : 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        const char *type, *path;
        if (!json_object_is_type(e, json_type_object))
            FAIL("spec: namespaces[%zu] must be an object", i);
        if (json_get_string(e, "type", &type, 1, "namespaces[].", err, errlen) < 0 ||
            json_get_string(e, "path", &path, 0, "namespaces[].", err, errlen) < 0)
            return -1;
        int k;
        for (k = 0; k < NS_COUNT; k++)
            if (strcmp(type, ns_kinds[k].type) == 0 || (ns_kinds[k].alt && strcmp(type, ns_kinds[k].alt) == 0))
                break;
        if (k == NS_COUNT)
            FAIL("spec: namespaces[%zu]: unsupported type %s", i, type);
        if (s->ns_new[k] || s->ns_path[k])
            FAIL("spec: namespace %s listed twice", type);
        if (path && *path && path[0] != '/')
            FAIL("spec: namespaces[%zu].path must be absolute: %s", i, path);
        if (path && *path)
            s->ns_path[k] = path;
        else
            s->ns_new[k] = 1;
    }
    return 0;
}

long long map_id(const struct idmap *m, size_t n, uint32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (id >= m[i].container && id - m[i].container < m[i].size)
            return (long long)m[i].host + (id - m[i].container);
    return -1;
}

int format_idmap(const struct idmap *m, size_t n, char *buf, size_t len)
{
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int k = snprintf(buf + off, len - off, "%u %u %u\n", m[i].container, m[i].host, m[i].size);
        if (k < 0 || (size_t)k >= len - off)
            return -1;
        off += (size_t)k;
    }
    return (int)off;
}

/* uidMappings / gidMappings: [{containerID, hostID, size}] */
static int parse_idmaps(struct json_object *root, const char *key, struct idmap **out, size_t *n, char *err,
                        size_t errlen)
{
    int bad = 0;
    struct json_object *a = json_member(root, key, json_type_array, &bad);
    if (bad)
        FAIL("spec: %s must be an array", key);
    *n = a ? json_object_array_length(a) : 0;
    if (*n > 340)
        FAIL("spec: %s: at most 340 ranges", key);
    *out = calloc(*n + 1, sizeof **out);
    if (!*out)
        FAIL("spec: out of memory");
    for (size_t i = 0; i < *n; i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        static const char *const fields[] = {"containerID", "hostID", "size"};
        long long v[3];
        int present;
        if (!json_object_is_type(e, json_type_object))
            FAIL("spec: %s[%zu] must be an object", key, i);
        for (int f = 0; f < 3; f++) {
            if (json_get_int(e, fields[f], &v[f], &present, "", err, errlen) < 0)
                return -1;
            if (!present || v[f] < 0 || v[f] > 0xffffffffLL)
                FAIL("spec: %s[%zu].%s must be an integer in [0, 2^32)", key, i, fields[f]);
        }
        if (v[2] == 0 || v[0] + v[2] > 0x100000000LL || v[1] + v[2] > 0x100000000LL)
            FAIL("spec: %s[%zu]: size must be positive and the ranges within 32 bits", key, i);
        (*out)[i] = (struct idmap){(uint32_t)v[0], (uint32_t)v[1], (uint32_t)v[2]};
    }
    return 0;
}

static int parse_process(struct json_object *p, struct spec *s, char *err, size_t errlen)
{
    const char **v;
    size_t n;
    long long num;
    int bad = 0;

    if (!p)
        FAIL("spec: process is required");
    if (get_strings(p, "args", &v, &n, "process.", err, errlen) < 0)
        return -1;
    if (n == 0) {
        free(v);
        FAIL("spec: process.args must not be empty");
    }
    s->args = (char **)v;
    if (get_strings(p, "env", &v, &n, "process.", err, errlen) < 0)
        return -1;
    s->env = (char **)v;
    if (json_get_string(p, "cwd", &s->cwd, 0, "process.", err, errlen) < 0)
        return -1;
    if (!s->cwd || !*s->cwd)
        s->cwd = "/";
    if (get_id(p, "uid", &s->uid, "process.", err, errlen) < 0 || get_id(p, "gid", &s->gid, "process.", err, errlen) < 0)
        return -1;
    struct json_object *g = json_member(p, "additionalGids", json_type_array, &bad);
    if (bad)
        FAIL("spec: process.additionalGids must be an array");
    s->ngids = g ? json_object_array_length(g) : 0;
    s->gids = calloc(s->ngids + 1, sizeof *s->gids);
    if (!s->gids)
        FAIL("spec: out of memory");
    for (size_t i = 0; i < s->ngids; i++) {
        struct json_object *e = json_object_array_get_idx(g, i);
        if (!json_object_is_type(e, json_type_int))
            FAIL("spec: process.additionalGids[%zu] must be an integer", i);
        int64_t v = json_object_get_int64(e);
        if (v < 0 || v > ID_MAX)
            FAIL("spec: process.additionalGids[%zu] must be in [0, %lld]: %lld", i, ID_MAX, (long long)v);
        s->gids[i] = (gid_t)v;
    }
    if (get_bool(p, "terminal", &s->terminal, "process.", err, errlen) < 0 ||
        get_bool(p, "stdin", &s->stdin_open, "process.", err, errlen) < 0 ||
        get_bool(p, "noNewPrivileges", &s->nnp, "process.", err, errlen) < 0)
        return -1;
    if (json_get_string(p, "apparmorProfile", &s->apparmor, 0, "process.", err, errlen) < 0)
        return -1;
    if (s->apparmor && (!*s->apparmor || strpbrk(s->apparmor, "\n\r") || strlen(s->apparmor) > 255))
        FAIL("spec: process.apparmorProfile must be a profile name of 1-255 characters on one line");
    if (json_get_int(p, "oomScoreAdj", &num, &s->has_oom, "process.", err, errlen) < 0)
        return -1;
    if (s->has_oom) {
        if (num < -1000 || num > 1000)
            FAIL("spec: process.oomScoreAdj must be in [-1000, 1000]");
        s->oom = (int)num;
    }
    struct json_object *rl = json_member(p, "rlimits", json_type_array, &bad);
    if (bad)
        FAIL("spec: process.rlimits must be an array");
    s->nrlimits = rl ? json_object_array_length(rl) : 0;
    s->rlimits = calloc(s->nrlimits + 1, sizeof *s->rlimits);
    if (!s->rlimits)
        FAIL("spec: out of memory");
    for (size_t i = 0; i < s->nrlimits; i++) {
        struct json_object *e = json_object_array_get_idx(rl, i);
        const char *type;
        long long soft, hard;
        int ps, ph;
        if (!json_object_is_type(e, json_type_object))
            FAIL("spec: process.rlimits[%zu] must be an object", i);
        if (json_get_string(e, "type", &type, 1, "process.rlimits[].", err, errlen) < 0 ||
            json_get_int(e, "soft", &soft, &ps, "process.rlimits[].", err, errlen) < 0 ||
            json_get_int(e, "hard", &hard, &ph, "process.rlimits[].", err, errlen) < 0)
            return -1;
        if (!ps || !ph)
            FAIL("spec: process.rlimits[%zu]: soft and hard are required", i);
        size_t k;
        for (k = 0; k < sizeof rlimit_names / sizeof rlimit_names[0]; k++)
            if (strcmp(type, rlimit_names[k].name) == 0)
                break;
        if (k == sizeof rlimit_names / sizeof rlimit_names[0])
            FAIL("spec: process.rlimits[%zu]: unknown type %s", i, type);
        s->rlimits[i].resource = rlimit_names[k].res;
        s->rlimits[i].soft = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
        s->rlimits[i].hard = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
    }
    struct json_object *c = json_member(p, "capabilities", json_type_object, &bad);
    if (bad)
        FAIL("spec: process.capabilities must be an object");
    return caps_from_json(c, &s->caps, err, errlen);
}

/* An image volume: "layers" (absolute directories, top first; overlayfs wants at least two lower layers
 * without an upper one, berth adds an empty one to a single-layer image) and "subPath" (relative, no ".."
 * component; resolved again beneath the overlay by the init). Attached like a bind: remount flags apply. */
static int parse_image_volume(struct json_object *e, struct mount_spec *m, size_t i, char *err, size_t errlen)
{
    int bad = 0;
    struct json_object *layers = json_member(e, "layers", json_type_array, &bad);
    size_t n = layers ? json_object_array_length(layers) : 0;
    if (bad || n < 2)
        FAIL("spec: mounts[%zu] (%s): an image volume needs \"layers\", at least two directories", i, m->dest);
    m->layers = calloc(n + 1, sizeof *m->layers);
    if (!m->layers)
        FAIL("spec: out of memory");
    for (size_t k = 0; k < n; k++) {
        struct json_object *l = json_object_array_get_idx(layers, k);
        if (!json_object_is_type(l, json_type_string) || json_object_get_string(l)[0] != '/')
            FAIL("spec: mounts[%zu].layers[%zu] must be an absolute path", i, k);
        m->layers[k] = json_object_get_string(l);
    }
    m->nlayers = n;
    if (json_get_string(e, "subPath", &m->subpath, 1, "mounts[].", err, errlen) < 0)
        return -1;
    const char *p = m->subpath;
    if (!*p || *p == '/')
        FAIL("spec: mounts[%zu].subPath must be relative (\".\" for the whole image)", i);
    for (const char *c = p; *c;) {
        size_t len = strcspn(c, "/");
        if (len == 2 && c[0] == '.' && c[1] == '.')
            FAIL("spec: mounts[%zu].subPath must not contain \"..\"", i);
        c += len;
        c += *c == '/';
    }
    m->bind = 1;
    m->source = m->layers[0];
    return 0;
}

static int parse_mounts(struct json_object *root, struct spec *s, char *err, size_t errlen)
{
    int bad = 0;
    struct json_object *a = json_member(root, "mounts", json_type_array, &bad);
    if (bad)
        FAIL("spec: mounts must be an array");
    s->nmounts = a ? json_object_array_length(a) : 0;
    s->mounts = calloc(s->nmounts + 1, sizeof *s->mounts);
    if (!s->mounts)
        FAIL("spec: out of memory");
    for (size_t i = 0; i < s->nmounts; i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        struct mount_spec *m = &s->mounts[i];
        if (!json_object_is_type(e, json_type_object))
            FAIL("spec: mounts[%zu] must be an object", i);
        if (json_get_string(e, "destination", &m->dest, 1, "mounts[].", err, errlen) < 0 ||
            json_get_string(e, "type", &m->type, 0, "mounts[].", err, errlen) < 0 ||
            json_get_string(e, "source", &m->source, 0, "mounts[].", err, errlen) < 0)
            return -1;
        if (m->dest[0] != '/')
            FAIL("spec: mounts[%zu].destination must be absolute: %s", i, m->dest);
        if (m->type && (strcmp(m->type, "bind") == 0 || strcmp(m->type, "rbind") == 0))
            m->bind = m->type[0] == 'r' ? 2 : 1;
        struct json_object *opts = json_member(e, "options", json_type_array, &bad);
        if (bad)
            FAIL("spec: mounts[%zu].options must be an array", i);
        if (parse_mount_options(opts, m, err, errlen) < 0)
            return -1;
        if (m->type && strcmp(m->type, "image") == 0 && parse_image_volume(e, m, i, err, errlen) < 0)
            return -1;
        if (!m->bind && (!m->type || !*m->type))
            FAIL("spec: mounts[%zu] (%s): type is required", i, m->dest);
        if (m->bind && (!m->source || m->source[0] != '/'))
            FAIL("spec: mounts[%zu] (%s): a bind mount needs an absolute source", i, m->dest);
        if (!m->source)
            m->source = m->type;
    }
    return 0;
}

static int parse_devices(struct json_object *root, struct spec *s, char *err, size_t errlen)
{
    int bad = 0;
    struct json_object *a = json_member(root, "devices", json_type_array, &bad);
    if (bad)
        FAIL("spec: devices must be an array");
    s->ndevices = a ? json_object_array_length(a) : 0;
    s->devices = calloc(s->ndevices + 1, sizeof *s->devices);
    if (!s->devices)
        FAIL("spec: out of memory");
    for (size_t i = 0; i < s->ndevices; i++) {
        struct json_object *e = json_object_array_get_idx(a, i);
        struct device_spec *d = &s->devices[i];
        const char *type;
        long long v;
        int present;
        if (!json_object_is_type(e, json_type_object))
            FAIL("spec: devices[%zu] must be an object", i);
        if (json_get_string(e, "path", &d->path, 1, "devices[].", err, errlen) < 0 ||
            json_get_string(e, "type", &type, 1, "devices[].", err, errlen) < 0)
            return -1;
        if (d->path[0] != '/')
            FAIL("spec: devices[%zu].path must be absolute", i);
        if (strlen(type) != 1 || !strchr("cbup", type[0]))
            FAIL("spec: devices[%zu].type must be one of c, b, u, p", i);
        d->type = type[0];
        if (json_get_int(e, "major", &v, &present, "devices[].", err, errlen) < 0)
            return -1;
        d->major = present ? (unsigned)v : 0;
        if (json_get_int(e, "minor", &v, &present, "devices[].", err, errlen) < 0)
            return -1;
        d->minor = present ? (unsigned)v : 0;
        if (json_get_int(e, "mode", &v, &present, "devices[].", err, errlen) < 0)
            return -1;
        d->mode = present ? (unsigned)v & 07777 : 0666;
        if (get_id(e, "uid", &d->uid, "devices[].", err, errlen) < 0 ||
            get_id(e, "gid", &d->gid, "devices[].", err, errlen) < 0)
            return -1;
    }
    return 0;
}

int spec_load(const char *bundle, struct spec *s, char *err, size_t errlen)
{
    char path[PATH_MAX];
    struct json_object *root, *o;
    int bad = 0;
    long long num;
    int present;

    memset(s, 0, sizeof *s);
    if (path_join(path, sizeof path, bundle, "spec.json") < 0)
        FAIL("spec: bundle path too long");
    root = json_object_from_file(path);
    if (!root)
        FAIL("spec: read %s: %s", path, json_util_get_last_err() ? json_util_get_last_err() : "invalid JSON");
    s->json = root;
    if (!json_object_is_type(root, json_type_object))
        FAIL("spec: %s: top level must be an object", path);
    if (json_get_string(root, "id", &s->id, 0, "", err, errlen) < 0)
        return -1;
    if (json_get_string(root, "bundle", &s->bundle, 0, "", err, errlen) < 0)
        return -1;
    s->bundle = bundle; /* the directory we were given is authoritative */
    if (parse_process(json_member(root, "process", json_type_object, &bad), s, err, errlen) < 0)
        return -1;
    o = json_member(root, "root", json_type_object, &bad);
    if (bad || !o)
        FAIL("spec: root must be an object with a path");
    if (json_get_string(o, "path", &s->root, 1, "root.", err, errlen) < 0 ||
        get_bool(o, "readonly", &s->root_ro, "root.", err, errlen) < 0)
        return -1;
    if (s->root[0] != '/')
        FAIL("spec: root.path must be absolute");
    o = json_member(root, "overlay", json_type_object, &bad);
    if (bad)
        FAIL("spec: overlay must be an object");
    if (o) {
        if (get_strings(o, "lower", &s->lower, &s->nlower, "overlay.", err, errlen) < 0 ||
            json_get_string(o, "upper", &s->upper, 0, "overlay.", err, errlen) < 0 ||
            json_get_string(o, "work", &s->work, 0, "overlay.", err, errlen) < 0 ||
            get_bool(o, "volatile", &s->overlay_volatile, "overlay.", err, errlen) < 0)
            return -1;
        if (s->nlower == 0)
            FAIL("spec: overlay.lower must not be empty");
        if (!s->upper != !s->work)
            FAIL("spec: overlay.upper and overlay.work go together");
        for (size_t i = 0; i < s->nlower; i++)
            if (s->lower[i][0] != '/')
                FAIL("spec: overlay.lower[%zu] must be absolute: %s", i, s->lower[i]);
        if (s->upper && (s->upper[0] != '/' || s->work[0] != '/'))
            FAIL("spec: overlay.upper and overlay.work must be absolute");
    }
    if (json_get_string(root, "hostname", &s->hostname, 0, "", err, errlen) < 0)
        return -1;
    if (parse_namespaces(root, s, err, errlen) < 0)
        return -1;
    if (parse_idmaps(root, "uidMappings", &s->uidmap, &s->nuidmap, err, errlen) < 0 ||
        parse_idmaps(root, "gidMappings", &s->gidmap, &s->ngidmap, err, errlen) < 0)
        return -1;
    if (s->ns_new[NS_USER] && (!s->nuidmap || !s->ngidmap))
        FAIL("spec: a new user namespace needs uidMappings and gidMappings");
    if (!s->ns_new[NS_USER] && (s->nuidmap || s->ngidmap))
        FAIL("spec: uidMappings/gidMappings need a new user namespace ({\"type\":\"user\"} without a path)");
    o = json_member(root, "seccomp", json_type_object, &bad);
    if (bad)
        FAIL("spec: seccomp must be an object");
    if (o && seccomp_build(o, &s->seccomp, err, errlen) < 0)
        return -1;
    if (get_strings(root, "cgroupProcs", &s->cgroup_procs, &s->ncgroup_procs, "", err, errlen) < 0)
        return -1;
    for (size_t i = 0; i < s->ncgroup_procs; i++)
        if (s->cgroup_procs[i][0] != '/')
            FAIL("spec: cgroupProcs[%zu] must be absolute: %s", i, s->cgroup_procs[i]);
    if (parse_mounts(root, s, err, errlen) < 0 || parse_devices(root, s, err, errlen) < 0)
        return -1;
    o = json_member(root, "deviceRules", json_type_array, &bad);
    if (bad)
        FAIL("spec: deviceRules must be an array");
    if (o && device_rules_from_json(o, &s->device_rules, &s->ndevice_rules, err, errlen) < 0)
        return -1;
    if (get_strings(root, "maskedPaths", &s->masked, &s->nmasked, "", err, errlen) < 0 ||
        get_strings(root, "readonlyPaths", &s->readonly, &s->nreadonly, "", err, errlen) < 0)
        return -1;
    o = json_member(root, "sysctl", json_type_object, &bad);
    if (bad)
        FAIL("spec: sysctl must be an object");
    s->nsysctl = o ? (size_t)json_object_object_length(o) : 0;
    s->sysctl = calloc(s->nsysctl + 1, sizeof *s->sysctl);
    if (!s->sysctl)
        FAIL("spec: out of memory");
    if (o) {
        size_t i = 0;
        json_object_object_foreach(o, key, val)
        {
            if (!json_object_is_type(val, json_type_string))
                FAIL("spec: sysctl %s must be a string", key);
            s->sysctl[i].key = key;
            s->sysctl[i].value = json_object_get_string(val);
            i++;
        }
    }
    o = json_member(root, "log", json_type_object, &bad);
    if (bad || !o)
        FAIL("spec: log must be an object with a path");
    if (json_get_string(o, "path", &s->log_path, 1, "log.", err, errlen) < 0 ||
        json_get_string(o, "directory", &s->log_dir, 0, "log.", err, errlen) < 0 ||
        json_get_int(o, "maxLineBytes", &num, &present, "log.", err, errlen) < 0)
        return -1;
    if (s->log_dir) {
        /* the monitor enforces it with RESOLVE_BENEATH; refusing here gives the clearer message */
        if (s->log_dir[0] != '/')
            FAIL("spec: log.directory must be absolute");
        if (!s->log_path[0] || s->log_path[0] == '/' || path_has_dotdot(s->log_path))
            FAIL("spec: log.path must be relative to log.directory, without \"..\"");
    } else if (s->log_path[0] != '/') {
        FAIL("spec: log.path must be absolute (or relative with log.directory)");
    }
    s->max_line = present && num > 0 ? (size_t)num : DEFAULT_MAX_LINE;
    if (s->max_line > (64u << 20))
        FAIL("spec: log.maxLineBytes too large");
    return 0;
}

void spec_free(struct spec *s)
{
    free(s->args);
    free(s->env);
    free(s->gids);
    free(s->rlimits);
    free(s->lower);
    free(s->cgroup_procs);
    for (size_t i = 0; s->mounts && i < s->nmounts; i++)
        free(s->mounts[i].data);
    free(s->mounts);
    free(s->devices);
    free(s->device_rules);
    free(s->masked);
    free(s->readonly);
    free(s->sysctl);
    free(s->uidmap);
    free(s->gidmap);
    seccomp_prog_free(&s->seccomp);
    if (s->json)
        json_object_put(s->json);
    memset(s, 0, sizeof *s);
}
