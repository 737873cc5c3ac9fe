/* badptr: bad pointers and absurd lengths in egress calls, then a normal connect.
 *
 *   badptr TCP_TARGET UDP_TARGET        (both should be reachable/allowed)
 *
 * Each case prints "<case> ok ret=N" / "<case> errno=N", then a fresh TCP connect to
 * TCP_TARGET prints "<case>.after ok ret=0" (the supervisor still serves us).  The UDP
 * cases send to UDP_TARGET; some of them do send datagrams (the kernel clamps sendmsg's
 * msg_namelen and sendmmsg's vlen), so compare the receiver's count with an unsandboxed
 * run.  Exit 0 always. */
#include "common.c"

static const char *USAGE = "badptr TCP_TARGET UDP_TARGET";

static struct sockaddr_storage tcp_sa, udp_sa;
static socklen_t tcp_len, udp_len;
static char *bad;  /* an unmapped page */
static char *edge; /* the last bytes of a mapped page followed by an unmapped one */
static char buf[64] = "badptr-payload-0123456789abcdef";

static void after(const char *name)
{
    char label[80];
    snprintf(label, sizeof label, "%s.after", name);
    int fd = socket(tcp_sa.ss_family, SOCK_STREAM, 0);
    int r = connect(fd, (struct sockaddr *)&tcp_sa, tcp_len);
    report(label, r, errno);
    close(fd);
}

static void done(const char *name, long r, int err)
{
    report(name, r, err);
    after(name);
}

static int tcp_socket(void)
{
    return socket(tcp_sa.ss_family, SOCK_STREAM, 0);
}

static void msg_init(struct msghdr *m, struct iovec *iov)
{
    iov->iov_base = buf;
    iov->iov_len = 16;
    memset(m, 0, sizeof *m);
    m->msg_name = &udp_sa;
    m->msg_namelen = udp_len;
    m->msg_iov = iov;
    m->msg_iovlen = 1;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        usage_exit(USAGE);
    tcp_len = parse_target(argv[1], &tcp_sa);
    udp_len = parse_target(argv[2], &udp_sa);
    bad = unmapped_page();
    char *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(two + 4096, 4096);
    edge = two + 4096;

    int fd, u = socket(udp_sa.ss_family, SOCK_DGRAM, 0);
    long r;
    struct msghdr m;
    struct iovec iov;

    fd = tcp_socket();
    r = connect(fd, NULL, tcp_len);
    done("connect_null", r, errno);
    close(fd);

    fd = tcp_socket();
    r = connect(fd, (struct sockaddr *)bad, tcp_len);
    done("connect_unmapped", r, errno);
    close(fd);

    /* the sockaddr's first 8 bytes readable, the rest in the unmapped page */
    fd = tcp_socket();
    memcpy(edge - 8, &tcp_sa, 8);
    r = connect(fd, (struct sockaddr *)(edge - 8), tcp_len);
    done("connect_straddle", r, errno);
    close(fd);

    fd = tcp_socket();
    r = connect(fd, (struct sockaddr *)&tcp_sa, 1u << 30);
    done("connect_len_huge", r, errno);
    close(fd);

    fd = tcp_socket();
    r = connect(fd, (struct sockaddr *)&tcp_sa, (socklen_t)-1);
    done("connect_len_negative", r, errno);
    close(fd);

    fd = tcp_socket();
    r = connect(fd, (struct sockaddr *)&tcp_sa, 1);
    done("connect_len_short", r, errno);
    close(fd);

    r = sendto(u, bad, 1ul << 40, 0, (struct sockaddr *)&udp_sa, udp_len);
    done("sendto_buf_huge", r, errno);

    r = sendto(u, bad, 16, 0, (struct sockaddr *)&udp_sa, udp_len);
    done("sendto_buf_unmapped", r, errno);

    r = sendto(u, buf, 16, 0, (struct sockaddr *)bad, udp_len);
    done("sendto_addr_unmapped", r, errno);

    r = sendto(u, buf, 16, 0, (struct sockaddr *)&udp_sa, 1u << 30);
    done("sendto_addrlen_huge", r, errno);

    r = sendmsg(u, NULL, 0);
    done("sendmsg_null", r, errno);

    r = sendmsg(u, (struct msghdr *)bad, 0);
    done("sendmsg_unmapped", r, errno);

    msg_init(&m, &iov);
    m.msg_name = bad;
    r = sendmsg(u, &m, 0);
    done("sendmsg_name_unmapped", r, errno);

    msg_init(&m, &iov);
    m.msg_iov = (struct iovec *)bad;
    r = sendmsg(u, &m, 0);
    done("sendmsg_iov_unmapped", r, errno);

    msg_init(&m, &iov);
    iov.iov_base = bad;
    r = sendmsg(u, &m, 0);
    done("sendmsg_iovbase_unmapped", r, errno);

    msg_init(&m, &iov);
    m.msg_iovlen = 1ul << 20;
    r = sendmsg(u, &m, 0);
    done("sendmsg_iovlen_huge", r, errno);

    /* the kernel clamps msg_namelen to sizeof(struct sockaddr_storage): this one is sent */
    msg_init(&m, &iov);
    m.msg_namelen = 1u << 30;
    r = sendmsg(u, &m, 0);
    done("sendmsg_namelen_huge", r, errno);

    msg_init(&m, &iov);
    m.msg_control = bad;
    m.msg_controllen = 64;
    r = sendmsg(u, &m, 0);
    done("sendmsg_control_unmapped", r, errno);

    r = sendmmsg(u, (struct mmsghdr *)bad, 4, 0);
    done("sendmmsg_vec_unmapped", r, errno);

    r = sendmmsg(u, (struct mmsghdr *)&m, 0, 0);
    done("sendmmsg_vlen_zero", r, errno);

    /* two valid entries at the very end of a mapped page, then the unmapped page; vlen
     * 1<<20 (the kernel clamps it to UIO_MAXIOV and stops at the unreadable third) */
    struct mmsghdr *tail = (struct mmsghdr *)(edge - 2 * sizeof(struct mmsghdr));
    memset(tail, 0, 2 * sizeof *tail);
    msg_init(&tail[0].msg_hdr, &iov);
    msg_init(&tail[1].msg_hdr, &iov);
    r = sendmmsg(u, tail, 1u << 20, 0);
    done("sendmmsg_vlen_huge", r, errno);

    /* entry 0 fine, entry 1 with an unmapped name */
    struct mmsghdr pair[2];
    memset(pair, 0, sizeof pair);
    msg_init(&pair[0].msg_hdr, &iov);
    msg_init(&pair[1].msg_hdr, &iov);
    pair[1].msg_hdr.msg_name = bad;
    r = sendmmsg(u, pair, 2, 0);
    done("sendmmsg_entry_unmapped", r, errno);

    close(u);
    return 0;
}
