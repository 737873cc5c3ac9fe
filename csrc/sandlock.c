/*
 * sandlock's C boundary. See sandlock.h: syscalls only, -errno on failure.
 */
#define _GNU_SOURCE
#include "sandlock.h"
#include "owned.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

/* Debian 12's headers predate some of what we use: define it ourselves (and in abi.h). */
#ifndef SECCOMP_IOCTL_NOTIF_ADDFD
#define SECCOMP_ADDFD_FLAG_SETFD (1UL << 0)
struct seccomp_notif_addfd {
    __u64 id;
    __u32 flags;
    __u32 srcfd;
    __u32 newfd;
    __u32 newfd_flags;
};
#define SECCOMP_IOCTL_NOTIF_ADDFD SECCOMP_IOW(3, struct seccomp_notif_addfd)
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
/* Landlock (linux/landlock.h may be missing or predate the scopes): the UAPI as of ABI 6. */
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1
#define LL_ACCESS_FS_REFER (1ULL << 13)
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define LL_SCOPE_SIGNAL (1ULL << 1)
#define LL_ABI_REFER 2
#define LL_ABI_SCOPES 6
struct ll_ruleset_attr { /* struct landlock_ruleset_attr */
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};
struct ll_path_beneath_attr { /* struct landlock_path_beneath_attr */
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#define NEG_ERRNO (-errno)

/* ---- spawn ------------------------------------------------------------------ */

/* Capabilities that reach around the checks: trace the supervisor (SYS_PTRACE), rewrite
 * where packets go (NET_ADMIN: nftables DNAT, routes; BPF and SYS_ADMIN: cgroup connect
 * hooks), raw packets (NET_RAW), or the kernel itself (SYS_MODULE). A root command loses
 * them; anyone else never had them. */
static const int dropped_caps[] = {
    CAP_SYS_PTRACE, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_SYS_MODULE,
#ifdef CAP_BPF
    CAP_BPF,
#else
    39,
#endif
};

static int drop_caps(void)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    int n = (int)(sizeof dropped_caps / sizeof dropped_caps[0]);

    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (syscall(SYS_capget, &hdr, data) < 0)
        return -1;
    for (int i = 0; i < n; i++) {
        int cap = dropped_caps[i];
        /* EINVAL: a capability this kernel does not know; EPERM: no CAP_SETPCAP, so
         * nothing to drop from the bounding set that exec could grant back anyway. */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
            return -1;
        unsigned int bit = 1U << (cap % 32);
        data[cap / 32].effective &= ~bit;
        data[cap / 32].permitted &= ~bit;
        data[cap / 32].inheritable &= ~bit;
    }
    return (int)syscall(SYS_capset, &hdr, data);
}

/* Put the calling process in a Landlock domain of its own that allows every file and
 * network access: what it changes is reach into other processes. The kernel refuses
 * ptrace-class access (ptrace, /proc/PID/mem, process_vm_*, pidfd_getfd) from inside a
 * domain to processes outside it, and with scopes (ABI >= 6) signals and abstract unix
 * sockets too. Before ABI 6 a ruleset must handle some access right to make a domain,
 * and a domain that handles any file access refuses linking or renaming into another
 * directory unless REFER is granted: so it handles REFER (ABI >= 2) and grants it
 * beneath /. ABI 1 cannot grant it (EOPNOTSUPP: the caller uses the filter instead).
 * A kernel older than the struct ignores its zero tail. */
static int enter_landlock(int abi)
{
    struct ll_ruleset_attr attr = {0};
    if (abi >= LL_ABI_SCOPES)
        attr.scoped = LL_SCOPE_SIGNAL | LL_SCOPE_ABSTRACT_UNIX_SOCKET;
    else if (abi >= LL_ABI_REFER)
        attr.handled_access_fs = LL_ACCESS_FS_REFER;
    else {
        errno = EOPNOTSUPP;
        return -1;
    }
    int fd = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (fd < 0)
        return -1;
    long rc = 0;
    if (attr.handled_access_fs) {
        struct ll_path_beneath_attr rule = {.allowed_access = LL_ACCESS_FS_REFER};
        rule.parent_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        rc = rule.parent_fd < 0 ? -1
                                : syscall(SYS_landlock_add_rule, fd, LL_RULE_PATH_BENEATH, &rule, 0);
        if (rule.parent_fd >= 0) {
            int err = errno;
            close(rule.parent_fd);
            errno = err;
        }
    }
    if (rc == 0)
        rc = syscall(SYS_landlock_restrict_self, fd, 0);
    int err = errno;
    close(fd);
    errno = err;
    return rc < 0 ? -1 : 0;
}

int sandlock_landlock_abi(void)
{
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    return abi < 0 ? NEG_ERRNO : (int)abi;
}

/* The child's report of a failure before exec: a SANDLOCK_STAGE_* and an errno. */
struct report {
    int stage;
    int value;
};

static void child_fail(int wfd, int stage, int err)
{
    struct report r = {stage, err};
    ssize_t n = write(wfd, &r, sizeof r);
    (void)n;
    _exit(127);
}

/* Everything the spawning thread and the child need (see sandlock_spawn). */
struct spawn_job {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    const int *stdio;
    int new_pgrp;
    const struct sock_fprog *prog;
    unsigned int flags;
    int landlock_abi;
    const int *keep;
    int nkeep;
    const int *unblock;
    int nunblock;
    int wfd;      /* the report pipe's write end (close-on-exec) */
    /* out */
    pid_t pid;
    int listener;
    int stage;
    int err;
};

/* Runs between fork and exec, already under the filter and in the domain (inherited from
 * the spawning thread): async-signal-safe calls only, none of them trapped. */
static void child_main(const struct spawn_job *j)
{
    int wfd = j->wfd;
    /* The supervisor made itself non-dumpable; the child inherited that, and a parent
     * without CAP_SYS_PTRACE could not read its memory or copy its sockets. exec would
     * reset it anyway: reset it now. */
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        child_fail(wfd, SANDLOCK_STAGE_SETUP, errno);
    /* Our copy of the listener (fork copied the table; it is close-on-exec anyway). */
    close(j->listener);
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < j->nunblock; i++)
        sigaddset(&set, j->unblock[i]);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    /* Python ignores these; a command expects the defaults (as subprocess does). */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);

    if (j->new_pgrp && setpgid(0, 0) < 0)
        child_fail(wfd, SANDLOCK_STAGE_SETUP, errno);
    /* dup2 clears close-on-exec on the copy; a descriptor already in place keeps its
     * flag, so clear it by hand. */
    for (int i = 0; i < 3; i++) {
        if (j->stdio[i] < 0)
            continue;
        if (j->stdio[i] == i ? fcntl(i, F_SETFD, 0) < 0 : dup2(j->stdio[i], i) < 0)
            child_fail(wfd, SANDLOCK_STAGE_SETUP, errno);
    }
    if (j->cwd && chdir(j->cwd) < 0)
        child_fail(wfd, SANDLOCK_STAGE_SETUP, errno);
    /* Everything above stderr closes at exec, except what the caller keeps. */
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        child_fail(wfd, SANDLOCK_STAGE_SETUP, errno);
    for (int i = 0; i < j->nkeep; i++)
        if (j->keep[i] != wfd && fcntl(j->keep[i], F_SETFD, 0) < 0)
            child_fail(wfd, SANDLOCK_STAGE_SETUP, errno);
    if (drop_caps() < 0)
        child_fail(wfd, SANDLOCK_STAGE_SETUP, errno);
    execve(j->path, j->argv, j->envp);
    child_fail(wfd, SANDLOCK_STAGE_EXEC, errno);
}

/* The spawning thread. A seccomp filter installed without TSYNC, no_new_privs and a
 * Landlock domain belong to the calling thread only, and fork copies them from the
 * thread that forks: so this short-lived thread of ours takes them on, installs the
 * filter (its listener lands in our own descriptor table: no pidfd_getfd, which a
 * default container refuses), forks the child, and ends. The rest of the process never
 * runs under the filter. Landlock comes before the filter, so the filter need not let
 * the landlock calls through. */
static void *spawn_thread(void *arg)
{
    struct spawn_job *j = arg;
    j->pid = -1;
    j->listener = -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        j->stage = SANDLOCK_STAGE_SETUP;
        j->err = errno;
        return NULL;
    }
    if (j->landlock_abi > 0 && enter_landlock(j->landlock_abi) < 0) {
        j->stage = SANDLOCK_STAGE_LANDLOCK;
        j->err = errno;
        return NULL;
    }
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                            j->flags | SECCOMP_FILTER_FLAG_NEW_LISTENER, j->prog);
    if (listener < 0) {
        j->stage = SANDLOCK_STAGE_FILTER;
        j->err = errno;
        return NULL;
    }
    j->listener = (int)listener;
    /* From here this thread must make no trapped call: nobody reads the listener yet. */
    pid_t pid = fork();
    if (pid == 0)
        child_main(j);
    if (pid < 0) {
        j->stage = SANDLOCK_STAGE_PARENT;
        j->err = errno;
        return NULL;
    }
    j->pid = pid;
    return NULL;
}

static int read_report(int fd, struct report *r)
{
    ssize_t n;
    do
        n = read(fd, r, sizeof *r);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return NEG_ERRNO;
    return (int)n; /* 0: end of file (exec happened), sizeof *r: a report */
}

int sandlock_spawn(const char *path, char *const argv[], char *const envp[],
                   const char *cwd, const int stdio[3], int new_pgrp,
                   const void *bpf, size_t bpf_len,
                   unsigned int filter_flags, int landlock_abi, const int *keep, int nkeep,
                   const int *unblock, int nunblock,
                   int *listener, int *pidfd, int *stage)
{
    struct sock_fprog prog = {
        .len = (unsigned short)(bpf_len / sizeof(struct sock_filter)),
        .filter = (struct sock_filter *)bpf,
    };
    int up[2]; /* child -> parent: a failure report, or end of file at exec */
    struct report r;
    int err;

    *stage = SANDLOCK_STAGE_PARENT;
    *listener = *pidfd = -1;
    if (pipe2(up, O_CLOEXEC) < 0)
        return NEG_ERRNO;
    struct spawn_job j = {
        .path = path, .argv = argv, .envp = envp, .cwd = cwd, .stdio = stdio,
        .new_pgrp = new_pgrp, .prog = &prog, .flags = filter_flags,
        .landlock_abi = landlock_abi, .keep = keep, .nkeep = nkeep, .unblock = unblock,
        .nunblock = nunblock, .wfd = up[1], .stage = SANDLOCK_STAGE_PARENT,
    };
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, spawn_thread, &j);
    if (rc != 0) {
        close(up[0]);
        close(up[1]);
        return -rc;
    }
    pthread_join(thread, NULL);
    close(up[1]);
    *listener = j.listener;
    pid_t pid = j.pid;
    if (pid < 0) {
        *stage = j.stage;
        err = -j.err;
        goto close_all;
    }
    /* Only we reap the child, so its pid names it until we do. */
    *pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (*pidfd < 0) {
        err = NEG_ERRNO;
        goto kill_child;
    }
    /* End of file: the exec happened (the pipe is close-on-exec). */
    int n = read_report(up[0], &r);
    if (n == (int)sizeof r) {
        *stage = r.stage;
        err = -r.value;
        goto reap_child;
    }
    if (n < 0) {
        err = n;
        goto kill_child;
    }
    close(up[0]);
    return pid;

kill_child:
    kill(pid, SIGKILL);
reap_child:
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
close_all:
    if (*listener >= 0)
        close(*listener);
    if (*pidfd >= 0)
        close(*pidfd);
    *listener = *pidfd = -1;
    close(up[0]);
    return err;
}

int sandlock_protect_self(void)
{
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ? NEG_ERRNO : 0;
}

/* ---- the listener ------------------------------------------------------------ */

int sandlock_notif_send(int listener, uint64_t id, int64_t val, int32_t error, uint32_t flags)
{
    struct seccomp_notif_resp resp = {.id = id, .val = val, .error = error, .flags = flags};
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 ? NEG_ERRNO : 0;
}

int sandlock_notif_addfd(int listener, uint64_t id, int srcfd, uint32_t newfd_flags,
                         uint32_t flags)
{
    struct seccomp_notif_addfd addfd = {
        .id = id,
        .flags = flags,
        .srcfd = (uint32_t)srcfd,
        .newfd = 0,
        .newfd_flags = newfd_flags,
    };
    int fd = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
    return fd < 0 ? NEG_ERRNO : fd;
}

int sandlock_notif_id_valid(int listener, uint64_t id)
{
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 ? NEG_ERRNO : 0;
}

/* ---- pidfds ------------------------------------------------------------------ */

int sandlock_pidfd_send_signal(int pidfd, int sig)
{
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? NEG_ERRNO : 0;
}

int sandlock_pidfd_open_thread(int tid)
{
    long fd = syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (fd < 0 && errno == EINVAL) /* before 6.9: the leader's */
        fd = syscall(SYS_pidfd_open, tid, 0);
    return fd < 0 ? NEG_ERRNO : (int)fd;
}

int sandlock_pidfd_getfd(int pidfd, int fd)
{
    long dup = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    return dup < 0 ? NEG_ERRNO : (int)dup;
}

int sandlock_getfd(int tid, int fd)
{
    if (sandlock_owned_mode())
        return sandlock_owned_find(tid, fd);
    int pidfd = sandlock_pidfd_open_thread(tid);
    if (pidfd < 0)
        return pidfd;
    int dup = sandlock_pidfd_getfd(pidfd, fd);
    close(pidfd);
    return dup;
}

/* ---- sockets ----------------------------------------------------------------- */

static int sockopt_int(int fd, int opt, int *out)
{
    socklen_t len = sizeof *out;
    return getsockopt(fd, SOL_SOCKET, opt, out, &len) < 0 ? NEG_ERRNO : 0;
}

int sandlock_sock_info(int fd, int *domain, int *type, int *protocol, int *status_flags)
{
    int err;
    if ((err = sockopt_int(fd, SO_DOMAIN, domain)) < 0)
        return err;
    if ((err = sockopt_int(fd, SO_TYPE, type)) < 0)
        return err;
    if ((err = sockopt_int(fd, SO_PROTOCOL, protocol)) < 0)
        return err;
    if (status_flags == NULL)
        return 0;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return NEG_ERRNO;
    *status_flags = fl;
    return 0;
}

int sandlock_sock_error(int fd)
{
    int value = 0;
    int err = sockopt_int(fd, SO_ERROR, &value);
    return err < 0 ? err : value;
}

int64_t sandlock_sock_sndtimeo(int fd)
{
    struct timeval tv;
    socklen_t len = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) < 0)
        return NEG_ERRNO;
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

int sandlock_connect_nonblock(int fd, const void *addr, uint32_t addrlen, int fl)
{
    if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return NEG_ERRNO;
    int rc = connect(fd, (const struct sockaddr *)addr, addrlen) < 0 ? NEG_ERRNO : 0;
    fcntl(fd, F_SETFL, fl);
    return rc;
}

int sandlock_connect(int fd, const void *addr, uint32_t addrlen, int nonblock)
{
    if (nonblock) {
        int fl = fcntl(fd, F_GETFL);
        return fl < 0 ? NEG_ERRNO : sandlock_connect_nonblock(fd, addr, addrlen, fl);
    }
    return connect(fd, (const struct sockaddr *)addr, addrlen) < 0 ? NEG_ERRNO : 0;
}

int64_t sandlock_sendmsg(int fd, const void *name, uint32_t namelen,
                         const void *data, size_t len,
                         const void *control, size_t controllen, int flags)
{
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    struct msghdr msg = {
        .msg_name = (void *)name,
        .msg_namelen = name ? namelen : 0,
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = controllen ? (void *)control : NULL,
        .msg_controllen = controllen,
    };
    ssize_t n = sendmsg(fd, &msg, flags);
    return n < 0 ? NEG_ERRNO : (int64_t)n;
}

int sandlock_poll1(int fd, int events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = (short)events};
    int n = poll(&p, 1, timeout_ms);
    if (n < 0)
        return NEG_ERRNO;
    return n == 0 ? 0 : p.revents;
}

/* ---- child memory ------------------------------------------------------------- */

static int64_t proc_mem(int tid, uint64_t addr, void *buf, size_t len, int writing)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", tid);
    int fd = open(path, (writing ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return NEG_ERRNO;
    ssize_t n = writing ? pwrite(fd, buf, len, (off_t)addr) : pread(fd, buf, len, (off_t)addr);
    int64_t res = n < 0 ? NEG_ERRNO : (int64_t)n;
    close(fd);
    return res == -EIO ? -EFAULT : res;
}

/* process_vm_readv/writev of the ranges, or through /proc/TID/mem a range at a time where
 * those are missing (ENOSYS) or refused (EPERM). */
static int64_t copy_ranges(int tid, void *buf, size_t len, const struct iovec *r,
                           unsigned long n, int writing)
{
    if (len == 0)
        return 0;
    struct iovec local = {.iov_base = buf, .iov_len = len};
    ssize_t got = writing ? process_vm_writev(tid, &local, 1, r, n, 0)
                          : process_vm_readv(tid, &local, 1, r, n, 0);
    if (got >= 0)
        return got;
    if (errno != ENOSYS && errno != EPERM)
        return NEG_ERRNO;
    size_t off = 0;
    for (unsigned long i = 0; i < n; i++) {
        if (r[i].iov_len == 0)
            continue;
        int64_t one = proc_mem(tid, (uint64_t)(uintptr_t)r[i].iov_base, (uint8_t *)buf + off,
                               r[i].iov_len, writing);
        if (one < 0)
            return off ? (int64_t)off : one;
        off += (size_t)one;
        if ((size_t)one != r[i].iov_len)
            break;
    }
    return (int64_t)off;
}

int64_t sandlock_read_ranges(int tid, void *buf, size_t len, const struct iovec *r,
                             unsigned long n)
{
    return copy_ranges(tid, buf, len, r, n, 0);
}

int64_t sandlock_write_ranges(int tid, const void *buf, size_t len, const struct iovec *r,
                              unsigned long n)
{
    return copy_ranges(tid, (void *)buf, len, r, n, 1);
}

int64_t sandlock_read_mem(int tid, uint64_t addr, void *buf, size_t len)
{
    struct iovec remote = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
    return copy_ranges(tid, buf, len, &remote, 1, 0);
}

int64_t sandlock_write_mem(int tid, uint64_t addr, const void *buf, size_t len)
{
    struct iovec remote = {.iov_base = (void *)(uintptr_t)addr, .iov_len = len};
    return copy_ranges(tid, (void *)buf, len, &remote, 1, 1);
}

/* ---- signals ------------------------------------------------------------------ */

int sandlock_signalfd(const int *sigs, int nsigs)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < nsigs; i++)
        sigaddset(&set, sigs[i]);
    int err = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (err)
        return -err;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? NEG_ERRNO : fd;
}
