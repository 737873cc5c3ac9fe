/* tfo: the TCP Fast Open ways of connecting without connect(2)... or with a deferred one.
 *
 *   tfo TARGET
 *
 * Four fresh sockets, each sending 16 bytes to TARGET:
 *   sendto         sendto(MSG_FASTOPEN, addr)
 *   sendmsg        sendmsg(MSG_FASTOPEN, msg_name = addr)
 *   sendto_nb      the same sendto on a non-blocking socket (EINPROGRESS counts as sent)
 *   fo_connect     setsockopt(TCP_FASTOPEN_CONNECT) then connect(addr): the SYN leaves only
 *                  with the first write, reported as "fo_write"
 * Lines "<name> ok ret=N" / "<name> errno=N".  Exit 0 iff every call succeeded. */
#include "common.c"

#include <netinet/tcp.h>
#include <poll.h>

static const char *USAGE = "tfo TARGET";

static int failures;

static void check(const char *name, long r, int err)
{
    report(name, r, err);
    if (r < 0 && err != EINPROGRESS)
        failures++;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        usage_exit(USAGE);
    struct sockaddr_storage sa;
    socklen_t len = parse_target(argv[1], &sa);
    const char data[16] = "tfo-payload-16by";
    int fd;
    long r;

    fd = socket(sa.ss_family, SOCK_STREAM, 0);
    r = sendto(fd, data, 16, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    check("sendto", r, errno);
    close(fd);

    fd = socket(sa.ss_family, SOCK_STREAM, 0);
    struct iovec iov = {.iov_base = (void *)data, .iov_len = 16};
    struct msghdr m = {.msg_name = &sa, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
    r = sendmsg(fd, &m, MSG_FASTOPEN | MSG_NOSIGNAL);
    check("sendmsg", r, errno);
    close(fd);

    fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    r = sendto(fd, data, 16, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    int e = errno;
    check("sendto_nb", r, e);
    if (r >= 0 || e == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, 10000);
        if (r < 0) /* no cookie yet: the data still waits for the handshake */
            send(fd, data, 16, MSG_NOSIGNAL);
    }
    close(fd);

    fd = socket(sa.ss_family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &one, sizeof one);
    r = connect(fd, (struct sockaddr *)&sa, len);
    check("fo_connect", r, errno);
    r = send(fd, data, 16, MSG_NOSIGNAL);
    check("fo_write", r, errno);
    close(fd);
    return failures ? 1 : 0;
}
