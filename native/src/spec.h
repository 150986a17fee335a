/* The container spec (bundle/spec.json), parsed. Strings point into the json tree. */
#ifndef BERTH_SPEC_H
#define BERTH_SPEC_H

#include "devices.h"
#include "shim.h"
#include <json_types.h>
#include <sys/resource.h>

/* Namespace kinds, in the order they are joined. */
enum { NS_USER, NS_MNT, NS_IPC, NS_UTS, NS_NET, NS_CGROUP, NS_PID, NS_COUNT };

struct ns_kind {
    const char *type;     /* spec name */
    const char *alt;      /* accepted alias */
    const char *procname; /* /proc/<pid>/ns/<procname> */
    int flag;             /* CLONE_NEW* */
};
extern const struct ns_kind ns_kinds[NS_COUNT];

struct mount_spec {
    const char *dest, *type, *source;
    unsigned long flags;   /* MS_* for the mount / remount */
    unsigned long prop;    /* MS_PRIVATE/MS_SLAVE/MS_SHARED/MS_UNBINDABLE (| MS_REC) or 0 */
    int bind;              /* 0, 1 = bind, 2 = rbind */
    int rro;               /* option "rro": the mount and every submount read-only (mount_setattr, AT_RECURSIVE) */
    char *data;            /* filesystem options, comma-joined (malloc'd, may be NULL) */
    /* type "image" (CRI image volume): the image's layers, top first, as a read-only overlay of its own, of
     * which subpath (relative, resolved beneath it) is attached at dest. NULL for every other mount. */
    const char **layers;
    size_t nlayers;
    const char *subpath;
};

struct device_spec {
    const char *path;
    char type;             /* c, b, u, p */
    unsigned major, minor;
    unsigned mode;         /* permission bits */
    uid_t uid;
    gid_t gid;
};

struct rlimit_spec {
    int resource;
    rlim_t soft, hard;
};

struct idmap {
    uint32_t container, host, size;
};

struct kv {
    const char *key, *value;
};

struct spec {
    struct json_object *json;
    const char *id, *bundle;
    /* process */
    char **args, **env;
    const char *cwd;
    uid_t uid;
    gid_t gid;
    gid_t *gids;
    size_t ngids;
    int terminal, stdin_open, nnp;
    const char *apparmor; /* process.apparmorProfile: confines the program from its execve; NULL = none */
    struct rlimit_spec *rlimits;
    size_t nrlimits;
    int has_oom;
    int oom;
    struct capsets caps;
    /* root */
    const char *root;
    int root_ro;
    const char **lower;
    size_t nlower;
    const char *upper, *work;
    int overlay_volatile;   /* overlay "volatile": no syncfs of the upper filesystem at unmount */
    const char *hostname;
    /* namespaces: new[k] = 1 when created, path[k] when joined */
    int ns_new[NS_COUNT];
    const char *ns_path[NS_COUNT];
    const char **cgroup_procs;
    size_t ncgroup_procs;
    struct mount_spec *mounts;
    size_t nmounts;
    struct device_spec *devices;
    size_t ndevices;
    /* deviceRules: NULL when absent (the cgroups' device access is left alone) */
    struct device_rule *device_rules;
    size_t ndevice_rules;
    const char **masked, **readonly;
    size_t nmasked, nreadonly;
    struct kv *sysctl;
    size_t nsysctl;
    const char *log_dir;  /* NULL: log_path is absolute; else log_path is relative, opened beneath it */
    const char *log_path;
    size_t max_line;
    /* a new user namespace: its mappings (OCI uidMappings/gidMappings) */
    struct idmap *uidmap, *gidmap;
    size_t nuidmap, ngidmap;
    /* seccomp: prog.filter NULL = unconfined */
    struct seccomp_prog seccomp;
};

/* json-c helpers shared with seccomp.c. Member of the given type; NULL when absent or null, *bad set when
 * present with another type. */
struct json_object *json_member(struct json_object *o, const char *key, json_type t, int *bad);
/* A string member (ctx prefixes the key in messages). Returns 0, or -1 with "spec: <ctx><key> ..." in err. */
int json_get_string(struct json_object *o, const char *key, const char **out, int required, const char *ctx,
                    char *err, size_t errlen);
/* An integer member; *present tells whether it was there. */
int json_get_int(struct json_object *o, const char *key, long long *out, int *present, const char *ctx, char *err,
                 size_t errlen);

/* Returns 0, or -1 with a message in err. */
int spec_load(const char *bundle, struct spec *s, char *err, size_t errlen);
void spec_free(struct spec *s);
/* Parse mount options into flags/prop/bind/data. */
int parse_mount_options(struct json_object *opts, struct mount_spec *m, char *err, size_t errlen);
/* RLIMIT_* number of an OCI rlimit type ("RLIMIT_NOFILE"), or -1. */
int rlimit_resource(const char *name);
/* Host id of a container id through the mappings; -1 when unmapped. */
long long map_id(const struct idmap *m, size_t n, uint32_t id);
/* "0 100000 65536\n..." for /proc/<pid>/{uid,gid}_map. Returns the length, or -1 when it does not fit. */
int format_idmap(const struct idmap *m, size_t n, char *buf, size_t len);

#endif
