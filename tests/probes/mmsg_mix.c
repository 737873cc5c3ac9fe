/* mmsg_mix: one UDP sendmmsg whose entries go to different destinations.
 *
 *   mmsg_mix [-C TARGET] ENTRY...
 *
 * ENTRY is a target (127.0.0.1:P, [::1]:P) or "-" for an entry with a NULL msg_name (a
 * connected send: use -C to connect the socket first).  The socket's family is that of the
 * first target given (-C included).  Entry i carries a 16-byte payload starting with i.
 * Every msg_len is preset to 777777 so that entries the kernel did not send stay visible.
 * Lines: "preconnect ..." (with -C), "sendmmsg ok ret=N" / "sendmmsg errno=N",
 * "msg_len L0,L1,...".  Exit 0 iff every entry was sent. */
#include "common.c"

static const char *USAGE = "mmsg_mix [-C TARGET] ENTRY...";

int main(int argc, char **argv)
{
    const char *pre = NULL;
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "-C") == 0) {
        pre = argv[2];
        first = 3;
    }
    int n = argc - first;
    if (n < 1)
        usage_exit(USAGE);

    struct sockaddr_storage *sa = calloc((size_t)n, sizeof *sa);
    socklen_t *len = calloc((size_t)n, sizeof *len);
    int family = 0;
    struct sockaddr_storage pre_sa;
    socklen_t pre_len = 0;
    if (pre != NULL) {
        pre_len = parse_target(pre, &pre_sa);
        family = pre_sa.ss_family;
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(argv[first + i], "-") == 0)
            continue;
        len[i] = parse_target(argv[first + i], &sa[i]);
        if (family == 0)
            family = sa[i].ss_family;
    }
    if (family == 0)
        usage_exit(USAGE);

    int fd = socket(family, SOCK_DGRAM, 0);
    if (pre != NULL) {
        int pr = connect(fd, (struct sockaddr *)&pre_sa, pre_len);
        report("preconnect", pr, errno);
    }

    struct mmsghdr *v = calloc((size_t)n, sizeof *v);
    struct iovec *iov = calloc((size_t)n, sizeof *iov);
    char (*bufs)[16] = calloc((size_t)n, 16);
    for (int i = 0; i < n; i++) {
        memcpy(bufs[i], "mmsg-mix-entry..", 16);
        uint32_t seq = (uint32_t)i;
        memcpy(bufs[i], &seq, 4);
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = 16;
        v[i].msg_hdr.msg_name = len[i] ? (void *)&sa[i] : NULL;
        v[i].msg_hdr.msg_namelen = len[i];
        v[i].msg_hdr.msg_iov = &iov[i];
        v[i].msg_hdr.msg_iovlen = 1;
        v[i].msg_len = 777777;
    }
    int r = sendmmsg(fd, v, (unsigned)n, 0);
    report("sendmmsg", r, errno);
    printf("msg_len");
    for (int i = 0; i < n; i++)
        printf("%s%u", i ? "," : " ", v[i].msg_len);
    printf("\n");
    return r == n ? 0 : 1;
}
