/* x32: syscall numbers with the x32 bit (0x40000000) from a 64-bit process.
 *
 *   x32 TCP_TARGET UDP_TARGET        (IPv4 targets)
 *
 * getpid, socket, connect, sendto, sendmsg (x32 518), sendmmsg (x32 538) and
 * io_uring_setup, each with __X32_SYSCALL_BIT set.  On a kernel built without the x32 ABI
 * all of them fail with ENOSYS even unsandboxed.  The x32 msghdr has 32-bit pointers,
 * hence MAP_32BIT memory.  Lines "<name> ok ret=N" / "<name> errno=N"; exit 0 iff all
 * succeeded. */
#include "common.c"

#include <sys/syscall.h>

static const char *USAGE = "x32 TCP_TARGET UDP_TARGET";

#define X32_BIT 0x40000000L
#define X32_SENDMSG 518
#define X32_SENDMMSG 538

struct compat_msghdr {
    uint32_t msg_name, msg_namelen, msg_iov, msg_iovlen, msg_control, msg_controllen, msg_flags;
};
struct compat_iovec {
    uint32_t iov_base, iov_len;
};
struct compat_mmsghdr {
    struct compat_msghdr hdr;
    uint32_t msg_len;
};

static int failures;

static void check(const char *name, long r)
{
    report(name, r, errno);
    if (r < 0)
        failures++;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        usage_exit(USAGE);
    char *low = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED) {
        perror("mmap MAP_32BIT");
        return 2;
    }
    struct sockaddr_storage *tcp = (void *)low;
    struct sockaddr_storage *udp = (void *)(low + 256);
    char *buf = low + 1024;
    struct compat_iovec *iov = (void *)(low + 2048);
    struct compat_mmsghdr *mm = (void *)(low + 3072);
    socklen_t tlen = parse_target(argv[1], tcp);
    socklen_t ulen = parse_target(argv[2], udp);
    memcpy(buf, "x32-payload-16by", 16);
    iov->iov_base = (uint32_t)(uintptr_t)buf;
    iov->iov_len = 16;
    memset(mm, 0, sizeof *mm);
    mm->hdr.msg_name = (uint32_t)(uintptr_t)udp;
    mm->hdr.msg_namelen = ulen;
    mm->hdr.msg_iov = (uint32_t)(uintptr_t)iov;
    mm->hdr.msg_iovlen = 1;
    long r;

    check("getpid", syscall(__NR_getpid | X32_BIT));

    r = syscall(__NR_socket | X32_BIT, AF_INET, SOCK_STREAM, 0);
    check("socket", r);
    if (r >= 0) close((int)r);

    int fd = socket(tcp->ss_family, SOCK_STREAM, 0);
    check("connect", syscall(__NR_connect | X32_BIT, fd, tcp, tlen));
    close(fd);

    fd = socket(udp->ss_family, SOCK_DGRAM, 0);
    check("sendto", syscall(__NR_sendto | X32_BIT, fd, buf, 16, 0, udp, ulen));
    check("sendmsg", syscall(X32_SENDMSG | X32_BIT, fd, &mm->hdr, 0));
    check("sendmmsg", syscall(X32_SENDMMSG | X32_BIT, fd, mm, 1, 0));
    close(fd);

    char params[256] = {0};
    r = syscall(__NR_io_uring_setup | X32_BIT, 4, params);
    check("io_uring_setup", r);
    if (r >= 0) close((int)r);
    return failures ? 1 : 0;
}
