/* ping: one ICMP echo through the unprivileged ping socket to each target.
 *
 *   ping sendto|connect TARGET...        (TARGET: 127.0.0.1:0 or [::1]:0, port ignored)
 *
 * SOCK_DGRAM + IPPROTO_ICMP / IPPROTO_ICMPV6 (needs net.ipv4.ping_group_range to include
 * our group).  sendto: the echo request is sent with the address; connect: connect first,
 * then send().  Then waits up to 2 s for the reply.
 * Lines "<i> socket|sendto|connect|send ok ret=N / errno=N", "<i> reply ok ret=BYTES" or
 * "<i> reply errno=110" (no reply).  Exit 0 iff every target replied. */
#include "common.c"

#include <netinet/icmp6.h>
#include <netinet/ip_icmp.h>
#include <poll.h>

static const char *USAGE = "ping sendto|connect TARGET...";

static void line(int idx, const char *what, long r, int err)
{
    char label[64];
    snprintf(label, sizeof label, "%d %s", idx, what);
    report(label, r, err);
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "sendto") && strcmp(argv[1], "connect")))
        usage_exit(USAGE);
    int use_connect = argv[1][0] == 'c';
    int failures = 0;
    for (int i = 2; i < argc; i++) {
        int idx = i - 2;
        struct sockaddr_storage sa;
        socklen_t len = parse_target(argv[i], &sa);
        int v6 = sa.ss_family == AF_INET6;
        int fd = socket(sa.ss_family, SOCK_DGRAM, v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);
        if (fd < 0) {
            line(idx, "socket", -1, errno);
            failures++;
            continue;
        }
        unsigned char pkt[24];
        memset(pkt, 0, sizeof pkt);
        pkt[0] = v6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO; /* code 0; id and checksum: kernel */
        pkt[7] = (unsigned char)(idx + 1);            /* sequence number */
        memcpy(pkt + 8, "sandlock-ping-16", 16);
        long r;
        if (use_connect) {
            r = connect(fd, (struct sockaddr *)&sa, len);
            line(idx, "connect", r, errno);
            if (r == 0) {
                r = send(fd, pkt, sizeof pkt, 0);
                line(idx, "send", r, errno);
            }
        } else {
            r = sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&sa, len);
            line(idx, "sendto", r, errno);
        }
        if (r < 0) {
            failures++;
            close(fd);
            continue;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        unsigned char reply[256];
        if (poll(&p, 1, 2000) == 1) {
            r = recv(fd, reply, sizeof reply, 0);
            line(idx, "reply", r, errno);
        } else {
            line(idx, "reply", -1, ETIMEDOUT);
            r = -1;
        }
        if (r < 0)
            failures++;
        close(fd);
    }
    return failures ? 1 : 0;
}
