/*
 * Sockets created on behalf: where pidfd_getfd is refused (a default container refuses it
 * without CAP_SYS_PTRACE), the supervisor cannot copy a child's socket when it must act
 * on it. So it creates the child's sockets itself (socket(), socketpair(), accept() are
 * trapped and performed on behalf, the result installed with SECCOMP_IOCTL_NOTIF_ADDFD)
 * and keeps its own duplicate, keyed by the socket's inode. When the child later names
 * descriptor fd, /proc/TID/fd/FD says which socket that is ("socket:[INODE]"), and the
 * call is performed on our duplicate of that socket: what the child does to its table
 * meanwhile (dup2 another socket over fd) changes nothing, as with pidfd_getfd.
 *
 * A duplicate keeps the socket open after the child closes it: sandlock_owned_sweep,
 * given the inodes the sandbox's processes still hold, drops the others (sandlock/_owned.py
 * calls it periodically). The table is the process's (one daemon serves many sandboxes);
 * each entry has an owner (the session's listener) whose sweep and end drop it.
 */
#ifndef SANDLOCK_OWNED_H
#define SANDLOCK_OWNED_H

#include <errno.h>
#include <stdint.h>

/* cdef-begin */

/* sandlock_owned_find's answer for a socket we did not create. */
#define SANDLOCK_OWNED_UNKNOWN (-ESTALE)
/* The most sockets kept for one sandbox: each is a descriptor of the supervisor (of a
 * daemon that serves others too); beyond it the sandbox's socket() fails with EMFILE. */
#define SANDLOCK_OWNED_MAX 4096

/* Whether on-behalf calls use the table (1) or pidfd_getfd (0). Decided once by
 * sandlock_owned_probe (pidfd_getfd on ourselves: refused means the table), or set. */
int sandlock_owned_mode(void);
int sandlock_owned_probe(void);
void sandlock_owned_set_mode(int on);

/* Keep fd (ours from now on, closed when dropped) for owner. 0, or -errno (-EMFILE:
 * owner has SANDLOCK_OWNED_MAX already; fd is then not taken). */
int sandlock_owned_add(int owner, int fd);
/* A duplicate of our copy of the socket at descriptor fd of thread tid (close it), or
 * -EBADF (no such descriptor), -ENOTSOCK (not a socket), SANDLOCK_OWNED_UNKNOWN (a
 * socket we did not create: inherited from outside, received with SCM_RIGHTS), or
 * another -errno (the thread is gone: -ESRCH/-ENOENT; not allowed to look: -EACCES). */
int sandlock_owned_find(int tid, int fd);
/* Drop owner's entries whose inode is not among live[0..n). Returns how many are left. */
int sandlock_owned_sweep(int owner, const uint64_t *live, int n);
/* Give owner's entries to new_owner (the sandbox's listener, once it exists). */
void sandlock_owned_rekey(int owner, int new_owner);
/* Drop every entry of owner (its sandbox is over). */
void sandlock_owned_forget(int owner);
/* How many entries owner has. */
int sandlock_owned_count(int owner);

/* cdef-end */

#endif
