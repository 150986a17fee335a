/* A pod's end of the embedded network, made from inside its new network namespace over rtnetlink: the veth pair
 * (its host end created straight in the host's namespace), eth0's address, link state and default route. Done here,
 * in the process that already made the namespace, it costs a few syscalls instead of `nsenter ip -batch`. */
#include "shim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct nlreq {
    /* Aligned so that the header and the attributes behind it can be written in place. */
    char buf[1024] __attribute__((aligned(NLMSG_ALIGNTO)));
    struct nlmsghdr *h;
    /* Set by an attribute that did not fit; nl_talk then refuses to send a truncated request. */
    int overflow;
};

static void nl_begin(struct nlreq *r, int type, int flags, const void *body, size_t body_len)
{
    memset(r->buf, 0, sizeof r->buf);
    r->overflow = 0;
    r->h = (struct nlmsghdr *)r->buf;
    r->h->nlmsg_type = (unsigned short)type;
    r->h->nlmsg_flags = (unsigned short)(NLM_F_REQUEST | NLM_F_ACK | flags);
    r->h->nlmsg_len = NLMSG_LENGTH(body_len);
    memcpy(NLMSG_DATA(r->h), body, body_len);
}

/* Appends an attribute; returns it (for nesting), or NULL when the buffer is full (the request is then marked
 * overflowed, so callers need not check every attribute). */
static struct rtattr *nl_attr(struct nlreq *r, int type, const void *data, size_t len)
{
    size_t at = NLMSG_ALIGN(r->h->nlmsg_len);
    size_t size = RTA_LENGTH(len);
    if (r->overflow || at + RTA_ALIGN(size) > sizeof r->buf) {
        r->overflow = 1;
        return NULL;
    }
    struct rtattr *a = (struct rtattr *)(r->buf + at);
    a->rta_type = (unsigned short)type;
    a->rta_len = (unsigned short)size;
    if (len)
        memcpy(RTA_DATA(a), data, len);
    r->h->nlmsg_len = (unsigned)(at + RTA_ALIGN(size));
    return a;
}

static void nl_nest_end(struct nlreq *r, struct rtattr *nest)
{
    if (!nest)
        return;
    nest->rta_len = (unsigned short)(r->buf + r->h->nlmsg_len - (char *)nest);
}

/* Sends the request and waits for its acknowledgement. Returns 0 or -errno (the kernel's answer). */
static int nl_talk(int sk, struct nlreq *r)
{
    static unsigned seq;
    if (r->overflow)
        return -ENOBUFS;
    r->h->nlmsg_seq = ++seq;
    if (send(sk, r->buf, r->h->nlmsg_len, 0) < 0)
        return -errno;
    for (;;) {
        /* A union: the answer is read in place as nlmsghdrs, which need their alignment. */
        union {
            struct nlmsghdr h;
            char buf[4096];
        } in;
        ssize_t got = recv(sk, in.buf, sizeof in.buf, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        /* An int, as NLMSG_OK expects: NLMSG_NEXT subtracts aligned lengths and may take it below zero. */
        int n = (int)got;
        for (struct nlmsghdr *h = &in.h; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != r->h->nlmsg_seq || h->nlmsg_type != NLMSG_ERROR)
                continue;
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr)))
                return -EBADMSG;
            const struct nlmsgerr *e = NLMSG_DATA(h);
            return e->error;
        }
    }
}

static int parse_cidr(const char *text, struct in_addr *addr, unsigned char *prefix)
{
    char ip[INET_ADDRSTRLEN];
    const char *slash = strchr(text, '/');
    long p;
    if (!slash || (size_t)(slash - text) >= sizeof ip || parse_long(slash + 1, &p) < 0 || p < 0 || p > 32)
        return -1;
    memcpy(ip, text, (size_t)(slash - text));
    ip[slash - text] = 0;
    if (inet_pton(AF_INET, ip, addr) != 1)
        return -1;
    *prefix = (unsigned char)p;
    return 0;
}

int veth_plan_check(const struct veth_plan *plan, char *err, size_t errlen)
{
    struct in_addr a, gw;
    unsigned char p;
    if (!plan->host_name || !*plan->host_name || strlen(plan->host_name) >= IFNAMSIZ) {
        fmt_err(err, errlen, "bad --veth name", plan->host_name, EINVAL);
        return -1;
    }
    if (!plan->address || parse_cidr(plan->address, &a, &p) < 0) {
        fmt_err(err, errlen, "bad --address", plan->address, EINVAL);
        return -1;
    }
    if (!plan->gateway || inet_pton(AF_INET, plan->gateway, &gw) != 1) {
        fmt_err(err, errlen, "bad --gateway", plan->gateway, EINVAL);
        return -1;
    }
    /* The kernel would take either and leave the pod without a usable default route (no on-link gateway). */
    uint32_t mask = p ? htonl(0xffffffffu << (32 - p)) : 0;
    if ((gw.s_addr & mask) != (a.s_addr & mask) || gw.s_addr == a.s_addr) {
        snprintf(err, errlen, "bad --gateway %s: not another address in the --address subnet %s", plan->gateway, plan->address);
        return -1;
    }
    if (plan->mtu < 68 || plan->mtu > 65535) {
        fmt_err(err, errlen, "bad --mtu", NULL, EINVAL);
        return -1;
    }
    return 0;
}

/* The host end is the pair's outer link, created up in the host's namespace, so that nothing on the host has to
 * bring it up. eth0 is the peer: the kernel configures a veth peer before the pair is joined, and refuses IFF_UP on
 * it then (ENOTCONN), so eth0 comes up in a request of its own. */
static int create_pair(int sk, const struct veth_plan *plan, int host_netns_fd)
{
    struct nlreq r;
    struct ifinfomsg up = {.ifi_family = AF_UNSPEC, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
    struct ifinfomsg peer_ifi = {.ifi_family = AF_UNSPEC};
    unsigned mtu = (unsigned)plan->mtu;
    nl_begin(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &up, sizeof up);
    nl_attr(&r, IFLA_IFNAME, plan->host_name, strlen(plan->host_name) + 1);
    nl_attr(&r, IFLA_MTU, &mtu, sizeof mtu);
    nl_attr(&r, IFLA_NET_NS_FD, &host_netns_fd, sizeof host_netns_fd);
    struct rtattr *info = nl_attr(&r, IFLA_LINKINFO, NULL, 0);
    nl_attr(&r, IFLA_INFO_KIND, "veth", 5);
    struct rtattr *data = nl_attr(&r, IFLA_INFO_DATA, NULL, 0);
    /* VETH_INFO_PEER carries an ifinfomsg of its own before the peer's attributes; the peer stays in the namespace
     * of the request (the pod's). */
    struct rtattr *peer = nl_attr(&r, VETH_INFO_PEER, &peer_ifi, sizeof peer_ifi);
    nl_attr(&r, IFLA_IFNAME, "eth0", 5);
    nl_attr(&r, IFLA_MTU, &mtu, sizeof mtu);
    nl_nest_end(&r, peer);
    nl_nest_end(&r, data);
    nl_nest_end(&r, info);
    return nl_talk(sk, &r);
}

static int add_address(int sk, int index, const char *cidr)
{
    struct nlreq r;
    struct in_addr a;
    unsigned char prefix;
    parse_cidr(cidr, &a, &prefix);
    struct ifaddrmsg ifa = {.ifa_family = AF_INET, .ifa_prefixlen = prefix, .ifa_index = (unsigned)index};
    nl_begin(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof ifa);
    nl_attr(&r, IFA_LOCAL, &a, sizeof a);
    nl_attr(&r, IFA_ADDRESS, &a, sizeof a);
    return nl_talk(sk, &r);
}

static int link_up(int sk, int index)
{
    struct nlreq r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = index, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
    nl_begin(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
    return nl_talk(sk, &r);
}

static int add_default_route(int sk, int index, const char *gateway)
{
    struct nlreq r;
    struct in_addr gw;
    inet_pton(AF_INET, gateway, &gw);
    struct rtmsg rt = {
        .rtm_family = AF_INET,
        .rtm_table = RT_TABLE_MAIN,
        .rtm_protocol = RTPROT_BOOT,
        .rtm_scope = RT_SCOPE_UNIVERSE,
        .rtm_type = RTN_UNICAST,
    };
    unsigned oif = (unsigned)index;
    nl_begin(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rt, sizeof rt);
    nl_attr(&r, RTA_GATEWAY, &gw, sizeof gw);
    nl_attr(&r, RTA_OIF, &oif, sizeof oif);
    return nl_talk(sk, &r);
}

int veth_setup(const struct veth_plan *plan, int host_netns_fd, char *err, size_t errlen)
{
    int sk = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    int rc;
    if (sk < 0) {
        fmt_err(err, errlen, "netlink socket", NULL, errno);
        return -1;
    }
    /* The kernel answers at once; the timeout only guards against a reply that never comes. */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(sk, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if ((rc = create_pair(sk, plan, host_netns_fd)) < 0) {
        fmt_err(err, errlen, "create veth eth0 with peer", plan->host_name, -rc);
        goto out;
    }
    int index = (int)if_nametoindex("eth0");
    if (index == 0) {
        rc = -errno;
        fmt_err(err, errlen, "find", "eth0", errno);
        goto out;
    }
    if ((rc = add_address(sk, index, plan->address)) < 0) {
        fmt_err(err, errlen, "add address", plan->address, -rc);
        goto out;
    }
    if ((rc = link_up(sk, index)) < 0) {
        fmt_err(err, errlen, "bring up", "eth0", -rc);
        goto out;
    }
    if ((rc = add_default_route(sk, index, plan->gateway)) < 0) {
        fmt_err(err, errlen, "add default route via", plan->gateway, -rc);
        goto out;
    }
out:
    close(sk);
    return rc < 0 ? -1 : 0;
}
