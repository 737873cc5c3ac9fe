/* srcroute: IPv4 loose source routing, which sends the packet to the first hop first.
 *
 *   srcroute udp_cmsg|udp_sockopt|tcp_sockopt FIRST_HOP TARGET
 *
 * The IP options carry LSRR [FIRST_HOP]: the kernel then routes the packet to FIRST_HOP
 * (the IP header's destination), TARGET being only the last address of the route.  So a
 * call whose TARGET is allowed puts a packet on the wire addressed to FIRST_HOP.
 *   udp_cmsg     sendmsg to TARGET with an IP_RETOPTS control message
 *   udp_sockopt  setsockopt(IP_OPTIONS) then sendto TARGET
 *   tcp_sockopt  setsockopt(IP_OPTIONS) then a non-blocking connect to TARGET; on
 *                EINPROGRESS waits 300 ms and reports "established" (errno 110 if not)
 * Lines "<mode> ok ret=N" / "<mode> errno=N" (and "setsockopt ..." when that fails).
 * Exit 0 iff the call succeeded or is in progress. */
#include "common.c"

#include <fcntl.h>
#include <netinet/ip.h>
#include <poll.h>

static const char *USAGE = "srcroute udp_cmsg|udp_sockopt|tcp_sockopt FIRST_HOP TARGET";

int main(int argc, char **argv)
{
    if (argc != 4)
        usage_exit(USAGE);
    const char *mode = argv[1];
    struct in_addr hop;
    if (inet_pton(AF_INET, argv[2], &hop) != 1)
        usage_exit(USAGE);
    struct sockaddr_storage sa;
    socklen_t len = parse_target(argv[3], &sa);
    if (sa.ss_family != AF_INET)
        usage_exit("srcroute: IPv4 only");

    /* NOP, then LSRR: type, length 7, pointer 4, one address */
    unsigned char opts[8] = {IPOPT_NOP, IPOPT_LSRR, 7, 4};
    memcpy(opts + 4, &hop, 4);
    char data[16] = "srcroute-data-16";
    long r;

    if (strcmp(mode, "udp_cmsg") == 0) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        union {
            char buf[CMSG_SPACE(sizeof opts)];
            struct cmsghdr align;
        } ctl;
        memset(&ctl, 0, sizeof ctl);
        struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
        struct msghdr m = {.msg_name = &sa, .msg_namelen = len, .msg_iov = &iov,
                           .msg_iovlen = 1, .msg_control = ctl.buf,
                           .msg_controllen = sizeof ctl.buf};
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_RETOPTS;
        c->cmsg_len = CMSG_LEN(sizeof opts);
        memcpy(CMSG_DATA(c), opts, sizeof opts);
        r = sendmsg(fd, &m, 0);
    } else {
        int tcp = strcmp(mode, "tcp_sockopt") == 0;
        if (!tcp && strcmp(mode, "udp_sockopt") != 0)
            usage_exit(USAGE);
        int fd = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
        r = setsockopt(fd, IPPROTO_IP, IP_OPTIONS, opts, sizeof opts);
        if (r < 0) {
            report("setsockopt", r, errno);
            return 1;
        }
        if (tcp) { /* non-blocking: the SYN leaves at once, then give it 300 ms */
            fcntl(fd, F_SETFL, O_NONBLOCK);
            r = connect(fd, (struct sockaddr *)&sa, len);
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (r < 0 && errno == EINPROGRESS) {
                report(mode, r, errno);
                r = poll(&p, 1, 300);
                int err = 0;
                socklen_t elen = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
                report("established", r == 1 && err == 0 ? 0 : -1, r == 1 ? err : ETIMEDOUT);
                return 0;
            }
        } else {
            r = sendto(fd, data, sizeof data, 0, (struct sockaddr *)&sa, len);
        }
    }
    report(mode, r, errno);
    return r < 0 ? 1 : 0;
}
