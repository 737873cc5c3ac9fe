/*
 * sandlock's C boundary: syscalls only, one job each, no policy and no messages.
 *
 * Every function returns a non-negative result on success and -errno on failure.
 * The block between the cdef markers is read verbatim by build_ffi.py as the cffi
 * cdef, so it holds only declarations cffi can parse (no macros, no includes).
 */
#ifndef SANDLOCK_H
#define SANDLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "abi.h"

/* cdef-begin */

/* The Landlock ABI version of this kernel (>= 1), or -errno: -ENOSYS (too old) or
 * -EOPNOTSUPP (built in but not enabled at boot). */
int sandlock_landlock_abi(void);

/*
 * Start a child under the BPF filter (flags: SECCOMP_FILTER_FLAG_*) and exec path in it.
 * A short-lived thread of ours installs the filter on itself (so the listener is ours
 * without pidfd_getfd) and forks the child, which inherits the filter (sandlock.c).
 * stdio[i] >= 0 becomes descriptor i of the child (-1: inherit).
 * Descriptors >= 3 not in keep[] are closed at exec; keep[] lose close-on-exec.
 * unblock[] are signals to unblock in the child. cwd may be NULL. With new_pgrp the
 * child leads a process group of its own (so that its whole tree can be signalled).
 * With landlock_abi >= 2 (sandlock_landlock_abi's answer) the child enters a Landlock
 * domain (entered by the same thread, before the filter, after no_new_privs): no ptrace-class access to processes outside it, and from
 * ABI 6 no signals to them nor connects to their abstract unix sockets. 0: no domain;
 * 1 fails (EOPNOTSUPP: such a domain would refuse renames into another directory).
 * On success returns the pid and fills *listener and *pidfd (both close-on-exec).
 * On failure returns -errno and sets *stage to a SANDLOCK_STAGE_* value (abi.h).
 */
int sandlock_spawn(const char *path, char *const argv[], char *const envp[],
                   const char *cwd, const int stdio[3], int new_pgrp,
                   const void *bpf, size_t bpf_len,
                   unsigned int filter_flags, int landlock_abi, const int *keep, int nkeep,
                   const int *unblock, int nunblock,
                   int *listener, int *pidfd, int *stage);

/* Make the calling process non-dumpable: processes of the same uid (the sandbox) can then
 * neither ptrace it nor read or write its memory. */
int sandlock_protect_self(void);

/* Notifications are received by the gate (gate.h); these answer them. */
/* flags: SANDLOCK_NOTIF_FLAG_CONTINUE lets the kernel run the call as usual. */
int sandlock_notif_send(int listener, uint64_t id, int64_t val, int32_t error, uint32_t flags);
/* SECCOMP_IOCTL_NOTIF_ADDFD: install a duplicate of our srcfd in the notifying thread
 * (newfd_flags: O_CLOEXEC or 0; flags: SECCOMP_ADDFD_FLAG_*; with SANDLOCK_ADDFD_FLAG_SEND
 * the notification is answered with the new fd at the same time). Returns the
 * thread's new fd number; -ENOENT when the notification is gone; with SEND, any other
 * failure leaves the notification waiting for an answer. */
int sandlock_notif_addfd(int listener, uint64_t id, int srcfd, uint32_t newfd_flags,
                         uint32_t flags);
int sandlock_notif_id_valid(int listener, uint64_t id);

int sandlock_pidfd_send_signal(int pidfd, int sig);
/* A duplicate of descriptor fd of thread tid (pidfd_open + pidfd_getfd). */
int sandlock_getfd(int tid, int fd);

/* SO_DOMAIN, SO_TYPE, SO_PROTOCOL and the file status flags (O_NONBLOCK) at once
 * (status_flags NULL: not asked). */
int sandlock_sock_info(int fd, int *domain, int *type, int *protocol, int *status_flags);
int sandlock_sock_error(int fd);
/* SO_SNDTIMEO in microseconds (0: none), or -errno. */
int64_t sandlock_sock_sndtimeo(int fd);

/* Copy len bytes at addr out of / into thread tid; returns bytes copied (maybe short). */
int64_t sandlock_read_mem(int tid, uint64_t addr, void *buf, size_t len);
int64_t sandlock_write_mem(int tid, uint64_t addr, const void *buf, size_t len);

/* The on-behalf calls, on our duplicate and our copies. With nonblock set, connect
 * runs with O_NONBLOCK for this one call (restored before returning). */
int sandlock_connect(int fd, const void *addr, uint32_t addrlen, int nonblock);
int64_t sandlock_sendmsg(int fd, const void *name, uint32_t namelen,
                         const void *data, size_t len,
                         const void *control, size_t controllen, int flags);

/* poll() on one descriptor; returns revents, 0 on timeout. */
int sandlock_poll1(int fd, int events, int timeout_ms);

/* Block sigs[] in the calling thread and return a non-blocking signalfd for them. */
int sandlock_signalfd(const int *sigs, int nsigs);

/* cdef-end */

/* C only: the pieces of the above that the gate's fast path (fastpath.c) calls one by one,
 * to spare a syscall or to read several ranges at once. */

/* A pidfd of thread tid that reaches its own descriptor table: the thread's own (kernel
 * >= 6.9, PIDFD_THREAD) even when it was cloned without CLONE_FILES, else the leader's. */
int sandlock_pidfd_open_thread(int tid);
/* Our duplicate of descriptor fd of pidfd's process. */
int sandlock_pidfd_getfd(int pidfd, int fd);
/* Copy the child's ranges r[0..n) one after another into buf (len bytes: their total) / out
 * of buf into them: the bytes copied, a prefix that ends at the first fault; -errno when
 * none could be. (Without process_vm_*, through /proc/TID/mem, a range at a time.) */
int64_t sandlock_read_ranges(int tid, void *buf, size_t len, const struct iovec *r,
                             unsigned long n);
int64_t sandlock_write_ranges(int tid, const void *buf, size_t len, const struct iovec *r,
                              unsigned long n);
/* connect(2) with O_NONBLOCK set on the open file for this one call; fl: the file's
 * status flags as the caller read them (F_GETFL), put back before returning. */
int sandlock_connect_nonblock(int fd, const void *addr, uint32_t addrlen, int fl);

#endif
