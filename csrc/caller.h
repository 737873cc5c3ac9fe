/*
 * On-behalf calls made with the calling thread's credentials.
 *
 * The supervisor performs a child's connect/sendmsg itself, and the kernel checks such a
 * call against whoever makes it: path permissions of an AF_UNIX socket, the SO_PEERCRED a
 * peer sees, control messages that need a capability (SO_MARK, IPV6_HOPOPTS, ...),
 * SCM_CREDENTIALS. When the supervisor holds more than the child (a root supervisor, a
 * root daemon), these run with the child's ids, groups and effective capabilities: the
 * calling thread of the supervisor (only it: raw syscalls, not glibc's process-wide
 * set*id) takes them for the one syscall and puts its own back before returning. If
 * putting them back fails, the process aborts: it never goes on with wrong credentials.
 *
 * Real and effective ids are taken; saved ids stay ours (so a root supervisor keeps its
 * permitted capabilities and can switch back); the fs ids and the effective capability
 * set are the child's (its CapEff, masked by our permitted set).
 */
#ifndef SANDLOCK_CALLER_H
#define SANDLOCK_CALLER_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */

/* Whom to act as. uid/gid: real, effective, fs (saved ids stay ours). caps: the effective
 * capabilities wanted (bit n: capability n), masked by our permitted set. */
struct sandlock_creds {
    uint32_t uid[3];
    uint32_t gid[3];
    uint64_t caps;
    const uint32_t *groups;
    int ngroups;
};

/* sandlock_connect / sandlock_sendmsg (sandlock.h) performed as *as. -EPERM (nothing
 * done) if this thread cannot take those credentials. */
int sandlock_connect_as(const struct sandlock_creds *as, int fd, const void *addr,
                        uint32_t addrlen, int nonblock);
int64_t sandlock_sendmsg_as(const struct sandlock_creds *as, int fd,
                            const void *name, uint32_t namelen,
                            const void *data, size_t len,
                            const void *control, size_t controllen, int flags);

/* bind(2) of fd to addr, as *as (NULL: as ourselves): a socket the child binds is made
 * with the child's credentials (the directory's permissions, the file's owner). */
int sandlock_bind_as(const struct sandlock_creds *as, int fd, const void *addr,
                     uint32_t addrlen);

/* socket(2) / socketpair(2) as *as (NULL: as ourselves): a socket made on behalf
 * (owned.h) is made as the child would make it (no raw or netlink socket a root
 * supervisor could make and the child could not). socket returns the fd; socketpair
 * fills sv[2] and returns 0. */
int sandlock_socket_as(const struct sandlock_creds *as, int domain, int type, int protocol);
int sandlock_socketpair_as(const struct sandlock_creds *as, int domain, int type,
                           int protocol, int sv[2]);

/* cdef-end */

#endif
