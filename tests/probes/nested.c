/* nested: a nested seccomp listener that would answer CONTINUE to our connect.
 *
 *   nested TARGET
 *
 * Installs a filter that sends connect to a new listener (SECCOMP_FILTER_FLAG_NEW_LISTENER).
 * If that works, a thread answers every notification with SECCOMP_USER_NOTIF_FLAG_CONTINUE:
 * the most recently installed filter's listener gets the notification, so a sandbox that
 * allowed this would never see the connect.  Then connects to TARGET over TCP.
 * Lines "listener ok ret=FD" / "listener errno=N", "connect ok ret=0" / "connect errno=N".
 * Exit 0 iff the connect succeeded. */
#include "common.c"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static const char *USAGE = "nested TARGET";

static void *responder(void *arg)
{
    int lfd = *(int *)arg;
    for (;;) {
        struct seccomp_notif req;
        struct seccomp_notif_resp resp;
        memset(&req, 0, sizeof req);
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
            if (errno == EINTR || errno == ENOENT)
                continue;
            return NULL;
        }
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(lfd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2)
        usage_exit(USAGE);
    struct sockaddr_storage sa;
    socklen_t len = parse_target(argv[1], &sa);

    struct sock_filter insns[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof insns / sizeof insns[0], .filter = insns};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    static int lfd;
    lfd = (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER,
                       SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    report("listener", lfd, errno);
    if (lfd >= 0) {
        pthread_t t;
        pthread_create(&t, NULL, responder, &lfd);
        pthread_detach(t);
    }

    int fd = socket(sa.ss_family, SOCK_STREAM, 0);
    int r = connect(fd, (struct sockaddr *)&sa, len);
    report("connect", r, errno);
    close(fd);
    return r == 0 ? 0 : 1;
}
