/* rawsock: socket() with families, types and protocols the sandbox must refuse, and the
 * ordinary ones it must let through.
 *
 *   rawsock [NAME...]          (no name: every case)
 *
 * One line per case, "<name> ok ret=FD" / "<name> errno=N"; the socket is closed again.
 * Exit 0 always (the caller compares errnos). */
#include "common.c"

#include <linux/if_ether.h>
#include <netinet/in.h>

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOCK_PACKET
#define SOCK_PACKET 10
#endif

struct tcase {
    const char *name;
    int family, type, protocol;
};

static const struct tcase cases[] = {
    /* allowed: the filter must not get in the way */
    {"tcp4", AF_INET, SOCK_STREAM, 0},
    {"tcp4_proto", AF_INET, SOCK_STREAM, IPPROTO_TCP},
    {"tcp4_flags", AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0},
    {"udp4", AF_INET, SOCK_DGRAM, 0},
    {"udp4_proto", AF_INET, SOCK_DGRAM, IPPROTO_UDP},
    {"tcp6", AF_INET6, SOCK_STREAM, 0},
    {"udp6_flags", AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP},
    {"unix_stream", AF_UNIX, SOCK_STREAM, 0},
    {"unix_dgram", AF_UNIX, SOCK_DGRAM, 0},
    {"unix_seqpacket", AF_UNIX, SOCK_SEQPACKET, 0},
    {"netlink_route", AF_NETLINK, SOCK_RAW, 0},
    /* the ping socket: allowed by the filter, the kernel decides (ping_group_range) */
    {"icmp4_dgram", AF_INET, SOCK_DGRAM, IPPROTO_ICMP},
    {"icmp6_dgram", AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6},
    /* AF_INET/6 with another type: EPERM */
    {"raw4_icmp", AF_INET, SOCK_RAW, IPPROTO_ICMP},
    {"raw4_raw", AF_INET, SOCK_RAW, IPPROTO_RAW},
    {"raw4_udp", AF_INET, SOCK_RAW, IPPROTO_UDP},
    {"raw4_flags", AF_INET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP},
    {"raw6_icmp", AF_INET6, SOCK_RAW, IPPROTO_ICMPV6},
    {"seqpacket4", AF_INET, SOCK_SEQPACKET, 0},
    {"rdm4", AF_INET, SOCK_RDM, 0},
    {"packet4", AF_INET, SOCK_PACKET, 0},
    /* AF_INET/6 with another protocol: EPROTONOSUPPORT */
    {"sctp4", AF_INET, SOCK_STREAM, IPPROTO_SCTP},
    {"sctp6_flags", AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_SCTP},
    {"mptcp4", AF_INET, SOCK_STREAM, IPPROTO_MPTCP},
    {"mptcp6", AF_INET6, SOCK_STREAM, IPPROTO_MPTCP},
    {"udplite4", AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE},
    {"udplite6", AF_INET6, SOCK_DGRAM, IPPROTO_UDPLITE},
    {"stream_udp", AF_INET, SOCK_STREAM, IPPROTO_UDP},
    {"dgram_tcp", AF_INET, SOCK_DGRAM, IPPROTO_TCP},
    {"stream_icmp", AF_INET, SOCK_STREAM, IPPROTO_ICMP},
    /* other address families: EAFNOSUPPORT */
    {"packet_raw", AF_PACKET, SOCK_RAW, 0x0300 /* htons(ETH_P_ALL) */},
    {"packet_dgram", AF_PACKET, SOCK_DGRAM, 0x0008 /* htons(ETH_P_IP) */},
    {"af_key", AF_KEY, SOCK_RAW, 2 /* PF_KEY_V2 */},
    {"af_alg", AF_ALG, SOCK_SEQPACKET, 0},
    {"af_vsock", AF_VSOCK, SOCK_STREAM, 0},
    {"af_xdp", AF_XDP, SOCK_RAW, 0},
};

int main(int argc, char **argv)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(argv[a], cases[i].name) == 0;
        if (!wanted)
            continue;
        int fd = socket(cases[i].family, cases[i].type, cases[i].protocol);
        report(cases[i].name, fd, errno);
        if (fd >= 0)
            close(fd);
    }
    return 0;
}
