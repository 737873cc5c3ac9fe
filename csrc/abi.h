/*
 * Every number C and Python share, written once.
 *
 * The block between the cdef markers is read by build_ffi.py as part of the cffi cdef,
 * and sandlock/_syscalls.py reads each value from lib (never retyping it): the syscall
 * numbers the filter traps, the seccomp flags, the layouts of what is copied out of the
 * child, the limits both sides apply, the gate's flags and its handoff record.
 *
 * Each "#define NAME VALUE" of the block reaches the cdef as "#define NAME ...": cffi asks
 * the compiler for the value, so kernel constants come from the system headers (or from
 * the fallbacks below, where Debian 12's are too old) and the text here is plain C.
 */
#ifndef SANDLOCK_ABI_H
#define SANDLOCK_ABI_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <linux/audit.h>
#include <linux/seccomp.h>

#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE (1UL << 0)
#endif
#ifndef SECCOMP_ADDFD_FLAG_SEND
#define SECCOMP_ADDFD_FLAG_SEND (1UL << 1)
#endif
#ifndef UIO_MAXIOV
#define UIO_MAXIOV 1024 /* the kernel's (linux/uio.h) */
#endif

/* cdef-begin */

/* The syscalls the filter sends to us, by their x86-64 numbers: the filter traps only the
 * x86-64 entry, and the gate and Python answer only AUDIT_ARCH_X86_64 notifications (so
 * these are x86-64's whatever the build machine; checked against its headers below). */
#define SANDLOCK_AUDIT_ARCH AUDIT_ARCH_X86_64
#define SANDLOCK_NR_OPEN 2
#define SANDLOCK_NR_SOCKET 41 /* trapped only where sockets are made on behalf (owned.h) */
#define SANDLOCK_NR_CONNECT 42
#define SANDLOCK_NR_ACCEPT 43
#define SANDLOCK_NR_SENDTO 44
#define SANDLOCK_NR_SENDMSG 46
#define SANDLOCK_NR_BIND 49
#define SANDLOCK_NR_SOCKETPAIR 53 /* (owned.h, as socket) */
#define SANDLOCK_NR_OPENAT 257
#define SANDLOCK_NR_ACCEPT4 288
#define SANDLOCK_NR_SENDMMSG 307
#define SANDLOCK_NR_OPENAT2 437

/* seccomp(2): the filter's mode and flags, and the answers' flags. */
#define SANDLOCK_SET_MODE_FILTER SECCOMP_SET_MODE_FILTER
#define SANDLOCK_FILTER_FLAG_NEW_LISTENER SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SANDLOCK_FILTER_FLAG_WAIT_KILLABLE_RECV SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SANDLOCK_NOTIF_FLAG_CONTINUE SECCOMP_USER_NOTIF_FLAG_CONTINUE /* the kernel runs it */
#define SANDLOCK_ADDFD_FLAG_SEND SECCOMP_ADDFD_FLAG_SEND /* install and answer at once */

/* The relay's data path (relay.h): each direction's pipe (F_SETPIPE_SZ; capped by
 * /proc/sys/fs/pipe-max-size), and how many pairs it moves bytes for at once. */
#define SANDLOCK_RELAY_PIPE_SIZE (1 << 20)
#define SANDLOCK_RELAY_MAX_PAIRS 4096
/* The room for a destination's name in the gate's notes for the relay (relaynotes.h):
 * a sockaddr_in6. */
#define SANDLOCK_RELAY_NOTE_NAME 28
/* A connection's first record (firstbytes.py, clienthello.h): the most read before
 * deciding (one TLS record, 2^14 bytes and its header; an HTTP request head must fit in
 * it too), the longest host name, and what the C reader says of it. */
#define SANDLOCK_FIRST_MAX (16 * 1024 + 5)
#define SANDLOCK_FIRST_NAME_MAX 253
enum { SANDLOCK_FIRST_NEED_MORE = 0, SANDLOCK_FIRST_NAMED = 1, SANDLOCK_FIRST_OTHER = 2 };

/* What is copied out of the child, and how much of it at most. */
#define SANDLOCK_SOCKADDR_MAX sizeof(struct sockaddr_storage)
#define SANDLOCK_SOCKADDR_IN_SIZE sizeof(struct sockaddr_in)
/* An AF_INET6 name may stop before sin6_scope_id (RFC 2133's sockaddr_in6): 24 bytes. */
#define SANDLOCK_SIN6_LEN_RFC2133 offsetof(struct sockaddr_in6, sin6_scope_id)
#define SANDLOCK_MSGHDR_SIZE sizeof(struct msghdr)
#define SANDLOCK_MMSGHDR_SIZE sizeof(struct mmsghdr)
#define SANDLOCK_MSG_LEN_OFFSET offsetof(struct mmsghdr, msg_len)
#define SANDLOCK_UIO_MAXIOV UIO_MAXIOV
#define SANDLOCK_PATH_MAX 4096 /* a path read out of the child, its NUL included */

/* A struct msghdr as the child lays it out, each pointer and size the 64-bit word it is
 * on x86-64 (checked against <sys/socket.h>'s below). */
struct sandlock_msghdr {
    uint64_t name;
    uint32_t namelen;
    uint64_t iov;
    uint64_t iovlen;
    uint64_t control;
    uint64_t controllen;
    int32_t flags;
};

/* What the spawned child reports when a step before exec fails (sandlock_spawn). */
enum {
    SANDLOCK_STAGE_PARENT = 1,   /* pipe/thread/fork/pidfd in the parent */
    SANDLOCK_STAGE_SETUP = 2,    /* chdir, no_new_privs, close_range in the child */
    SANDLOCK_STAGE_FILTER = 3,   /* seccomp(2) refused the filter */
    /* 4 was the pidfd_getfd of the listener, which the spawning thread no longer needs */
    SANDLOCK_STAGE_EXEC = 5,     /* execve failed */
    SANDLOCK_STAGE_LANDLOCK = 6  /* entering the Landlock domain failed */
};

/* What the gate may answer itself (sandlock_gate_start, sandlock_gate_set_flags). */
enum {
    SANDLOCK_GATE_CACHE = 1, /* calls to remembered destinations */
    SANDLOCK_GATE_OPEN = 2,  /* opens that cannot name a virtual file: CONTINUE */
    SANDLOCK_GATE_POLL = 4   /* wait in poll() even where RECV could wait (tests) */
};

/* What the gate hands to Python, one record per SOCK_SEQPACKET message: a notification
 * untouched (fd -1: Python answers it from the start), or a blocking connect the gate has
 * started (fd >= 0: its duplicate of the child's socket, now Python's to close; rc: what
 * the non-blocking connect returned), for Python to finish. */
struct sandlock_handoff {
    uint64_t id;
    uint32_t pid;
    int32_t nr;
    uint32_t arch;
    int32_t fd;
    uint64_t args[6];
    int32_t rc;
};

/* cdef-end */

#ifdef __x86_64__
_Static_assert(SANDLOCK_NR_OPEN == SYS_open && SANDLOCK_NR_CONNECT == SYS_connect &&
                   SANDLOCK_NR_ACCEPT == SYS_accept && SANDLOCK_NR_SENDTO == SYS_sendto &&
                   SANDLOCK_NR_SENDMSG == SYS_sendmsg && SANDLOCK_NR_BIND == SYS_bind &&
                   SANDLOCK_NR_OPENAT == SYS_openat && SANDLOCK_NR_ACCEPT4 == SYS_accept4 &&
                   SANDLOCK_NR_SENDMMSG == SYS_sendmmsg && SANDLOCK_NR_SOCKET == SYS_socket &&
                   SANDLOCK_NR_SOCKETPAIR == SYS_socketpair,
               "x86-64 syscall numbers");
#define SANDLOCK_SAME_FIELD(ours, theirs)                                                   \
    (offsetof(struct sandlock_msghdr, ours) == offsetof(struct msghdr, theirs) &&            \
     sizeof(((struct sandlock_msghdr *)0)->ours) == sizeof(((struct msghdr *)0)->theirs))
_Static_assert(sizeof(struct sandlock_msghdr) == sizeof(struct msghdr) &&
                   SANDLOCK_SAME_FIELD(name, msg_name) &&
                   SANDLOCK_SAME_FIELD(namelen, msg_namelen) &&
                   SANDLOCK_SAME_FIELD(iov, msg_iov) && SANDLOCK_SAME_FIELD(iovlen, msg_iovlen) &&
                   SANDLOCK_SAME_FIELD(control, msg_control) &&
                   SANDLOCK_SAME_FIELD(controllen, msg_controllen) &&
                   SANDLOCK_SAME_FIELD(flags, msg_flags),
               "struct sandlock_msghdr is x86-64's struct msghdr");
#undef SANDLOCK_SAME_FIELD
#endif

#endif
