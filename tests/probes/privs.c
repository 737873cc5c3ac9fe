/* Calls whose outcome depends on the caller's privileges (tests/test_onbehalf_privs.py).
 *
 *   privs unix PATH                  connect an AF_UNIX stream socket to PATH, write "hi"
 *   privs mark HOST:PORT             setsockopt(SO_MARK), then a UDP sendmsg with an
 *                                    SO_MARK control message
 *   privs hopopts [::1]:PORT         a UDP sendmsg with an IPV6_HOPOPTS control message
 *   privs creds PATH PID UID GID     an AF_UNIX datagram to PATH with SCM_CREDENTIALS;
 *                                    "self" means getpid()/getuid()/getgid()
 *   privs dgram PATH                 an AF_UNIX datagram to PATH, no control data
 *   privs ttl HOST:PORT              a UDP sendmsg with an IP_TTL control message
 *   privs netlink                    an rtnetlink sendto() to multicast group 1
 *
 * One "<label> ok ret=N" / "<label> errno=N" line per call (common.c). */
#include "common.c"

#include <linux/netlink.h>
#include <netinet/ip6.h>
#include <sys/un.h>

/* The call's result and its errno, read in that order. */
#define SAY(label, call)                                                                  \
    ({                                                                                    \
        long r_ = (call);                                                                 \
        report(label, r_, errno);                                                         \
        r_;                                                                               \
    })

static socklen_t unix_name(const char *path, struct sockaddr_un *sun)
{
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    strncpy(sun->sun_path, path, sizeof sun->sun_path - 1);
    return sizeof *sun;
}

static long send_with_cmsg(int fd, const struct sockaddr *to, socklen_t tolen, int level,
                           int type, const void *value, size_t vlen)
{
    char buf[CMSG_SPACE(64)] __attribute__((aligned(8)));
    memset(buf, 0, sizeof buf);
    struct iovec iov = {.iov_base = "privs", .iov_len = 5};
    struct msghdr msg = {
        .msg_name = (void *)to,
        .msg_namelen = tolen,
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = buf,
        .msg_controllen = CMSG_SPACE(vlen),
    };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = level;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(vlen);
    memcpy(CMSG_DATA(c), value, vlen);
    return sendmsg(fd, &msg, 0);
}

static long id_arg(const char *s, long self)
{
    return strcmp(s, "self") == 0 ? self : strtol(s, NULL, 10);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage_exit("privs unix|mark|hopopts|creds|netlink ...");
    const char *cmd = argv[1];
    if (strcmp(cmd, "unix") == 0 && argc == 3) {
        struct sockaddr_un sun;
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        long rc = SAY("connect", connect(fd, (struct sockaddr *)&sun, unix_name(argv[2], &sun)));
        if (rc == 0)
            SAY("write", write(fd, "hi", 2));
        return rc == 0 ? 0 : 1;
    }
    if (strcmp(cmd, "mark") == 0 && argc == 3) {
        struct sockaddr_storage ss;
        socklen_t len = parse_target(argv[2], &ss);
        int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
        int mark = 42;
        SAY("setsockopt", setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark));
        SAY("sendmsg", send_with_cmsg(fd, (struct sockaddr *)&ss, len, SOL_SOCKET, SO_MARK,
                                         &mark, sizeof mark));
        return 0;
    }
    if (strcmp(cmd, "hopopts") == 0 && argc == 3) {
        struct sockaddr_storage ss;
        socklen_t len = parse_target(argv[2], &ss);
        int fd = socket(AF_INET6, SOCK_DGRAM, 0);
        /* An empty hop-by-hop header: next header, length 0, six bytes of PadN. */
        uint8_t hop[8] = {0, 0, 1, 4, 0, 0, 0, 0};
        SAY("sendmsg", send_with_cmsg(fd, (struct sockaddr *)&ss, len, IPPROTO_IPV6,
                                         IPV6_HOPOPTS, hop, sizeof hop));
        return 0;
    }
    if (strcmp(cmd, "creds") == 0 && argc == 6) {
        struct sockaddr_un sun;
        socklen_t len = unix_name(argv[2], &sun);
        struct ucred cr = {
            .pid = (pid_t)id_arg(argv[3], getpid()),
            .uid = (uid_t)id_arg(argv[4], getuid()),
            .gid = (gid_t)id_arg(argv[5], getgid()),
        };
        int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
        SAY("sendmsg", send_with_cmsg(fd, (struct sockaddr *)&sun, len, SOL_SOCKET,
                                         SCM_CREDENTIALS, &cr, sizeof cr));
        printf("pid=%d\n", (int)getpid());
        return 0;
    }
    if (strcmp(cmd, "dgram") == 0 && argc == 3) {
        struct sockaddr_un sun;
        socklen_t len = unix_name(argv[2], &sun);
        int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
        SAY("sendto", sendto(fd, "privs", 5, 0, (struct sockaddr *)&sun, len));
        printf("pid=%d\n", (int)getpid());
        return 0;
    }
    if (strcmp(cmd, "ttl") == 0 && argc == 3) {
        struct sockaddr_storage ss;
        socklen_t len = parse_target(argv[2], &ss);
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        int ttl = 9;
        SAY("sendmsg", send_with_cmsg(fd, (struct sockaddr *)&ss, len, IPPROTO_IP, IP_TTL,
                                      &ttl, sizeof ttl));
        return 0;
    }
    if (strcmp(cmd, "netlink") == 0 && argc == 2) {
        int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        struct sockaddr_nl to = {.nl_family = AF_NETLINK, .nl_groups = 1};
        struct nlmsghdr h = {.nlmsg_len = sizeof h, .nlmsg_type = NLMSG_NOOP};
        SAY("sendto", sendto(fd, &h, sizeof h, 0, (struct sockaddr *)&to, sizeof to));
        return 0;
    }
    usage_exit("privs unix|mark|hopopts|creds|netlink ...");
}
