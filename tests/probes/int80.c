/* int80: the IA-32 compat entry from a 64-bit process.
 *
 *   int80 TCP_TARGET UDP_TARGET        (IPv4 targets)
 *
 * Each socket call goes through `int $0x80` with i386 numbers: socketcall(2) (102) with
 * SYS_SOCKET/CONNECT/SENDTO/SENDMSG/SENDMMSG, and the direct i386 calls socket 359,
 * connect 362, sendto 369, sendmsg 370, sendmmsg 345, plus io_uring_setup 425.  The
 * sockets for connect and the sends are made with the ordinary 64-bit socket syscall.
 * Compat pointers are 32 bits wide, so everything they point at lives in MAP_32BIT memory.
 * Lines "<name> ok ret=N" / "<name> errno=N"; exit 0 iff every call succeeded. */
#include "common.c"

static const char *USAGE = "int80 TCP_TARGET UDP_TARGET";

/* i386 syscall numbers */
#define I386_SOCKETCALL 102
#define I386_SENDMMSG 345
#define I386_SOCKET 359
#define I386_CONNECT 362
#define I386_SENDTO 369
#define I386_SENDMSG 370
#define I386_IO_URING_SETUP 425
/* socketcall(2) call numbers */
#define SC_SOCKET 1
#define SC_CONNECT 3
#define SC_SENDTO 11
#define SC_SENDMSG 16
#define SC_SENDMMSG 20

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

static volatile uint32_t arg6; /* RIP-relative, so still addressable after we move %rsp */
static int failures;

/* The int 0x80 ABI: eax = nr, ebx, ecx, edx, esi, edi, ebp.  %rbp is saved by hand below
 * the red zone; r8-r15 are listed as clobbered (the compat entry does not promise them). */
static long int80(long nr, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5,
                  uint32_t a6)
{
    long ret;
    arg6 = a6;
    __asm__ volatile("sub $128, %%rsp\n\t"
                     "push %%rbp\n\t"
                     "mov %[a6], %%ebp\n\t"
                     "int $0x80\n\t"
                     "pop %%rbp\n\t"
                     "add $128, %%rsp"
                     : "=a"(ret)
                     : "a"(nr), "b"(a1), "c"(a2), "d"(a3), "S"(a4), "D"(a5), [a6] "m"(arg6)
                     : "memory", "cc", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15");
    return ret;
}

static void check(const char *name, long ret)
{
    report(name, ret < 0 && ret > -4096 ? -1 : ret, (int)-ret);
    if (ret < 0)
        failures++;
}

static uint32_t lo32(const void *p)
{
    return (uint32_t)(uintptr_t)p;
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
    uint32_t *args = (void *)(low + 512);
    char *buf = low + 1024;
    struct compat_iovec *iov = (void *)(low + 2048);
    struct compat_mmsghdr *mm = (void *)(low + 3072);
    socklen_t tlen = parse_target(argv[1], tcp);
    socklen_t ulen = parse_target(argv[2], udp);
    if (tcp->ss_family != AF_INET || udp->ss_family != AF_INET)
        usage_exit("int80: IPv4 targets only");
    memcpy(buf, "int80-payload-16", 16);
    iov->iov_base = lo32(buf);
    iov->iov_len = 16;
    memset(mm, 0, sizeof *mm);
    mm->hdr.msg_name = lo32(udp);
    mm->hdr.msg_namelen = ulen;
    mm->hdr.msg_iov = lo32(iov);
    mm->hdr.msg_iovlen = 1;
    long r;
    int fd;

    args[0] = AF_INET; args[1] = SOCK_STREAM; args[2] = 0;
    r = int80(I386_SOCKETCALL, SC_SOCKET, lo32(args), 0, 0, 0, 0);
    check("socketcall_socket", r);
    if (r >= 0) close((int)r);

    r = int80(I386_SOCKET, AF_INET, SOCK_STREAM, 0, 0, 0, 0);
    check("socket", r);
    if (r >= 0) close((int)r);

    fd = socket(AF_INET, SOCK_STREAM, 0);
    args[0] = (uint32_t)fd; args[1] = lo32(tcp); args[2] = tlen;
    check("socketcall_connect", int80(I386_SOCKETCALL, SC_CONNECT, lo32(args), 0, 0, 0, 0));
    close(fd);

    fd = socket(AF_INET, SOCK_STREAM, 0);
    check("connect", int80(I386_CONNECT, (uint32_t)fd, lo32(tcp), tlen, 0, 0, 0));
    close(fd);

    fd = socket(AF_INET, SOCK_DGRAM, 0);
    args[0] = (uint32_t)fd; args[1] = lo32(buf); args[2] = 16; args[3] = 0;
    args[4] = lo32(udp); args[5] = ulen;
    check("socketcall_sendto", int80(I386_SOCKETCALL, SC_SENDTO, lo32(args), 0, 0, 0, 0));
    check("sendto", int80(I386_SENDTO, (uint32_t)fd, lo32(buf), 16, 0, lo32(udp), ulen));

    args[0] = (uint32_t)fd; args[1] = lo32(&mm->hdr); args[2] = 0;
    check("socketcall_sendmsg", int80(I386_SOCKETCALL, SC_SENDMSG, lo32(args), 0, 0, 0, 0));
    check("sendmsg", int80(I386_SENDMSG, (uint32_t)fd, lo32(&mm->hdr), 0, 0, 0, 0));

    args[0] = (uint32_t)fd; args[1] = lo32(mm); args[2] = 1; args[3] = 0;
    check("socketcall_sendmmsg", int80(I386_SOCKETCALL, SC_SENDMMSG, lo32(args), 0, 0, 0, 0));
    check("sendmmsg", int80(I386_SENDMMSG, (uint32_t)fd, lo32(mm), 1, 0, 0, 0));
    close(fd);

    char *params = low + 4096; /* struct io_uring_params is 120 bytes, zeroed */
    memset(params, 0, 256);
    r = int80(I386_IO_URING_SETUP, 4, lo32(params), 0, 0, 0, 0);
    check("io_uring_setup", r);
    if (r >= 0) close((int)r);
    return failures ? 1 : 0;
}
