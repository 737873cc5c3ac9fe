/*
 * On-behalf calls made with the calling thread's credentials. See caller.h.
 *
 * Every id and capability change here is a raw syscall: it changes the calling thread's
 * credentials only (glibc's setresuid & co. would change every thread of the process).
 * The supervisor's other threads, the gate among them, never see the switch, and no
 * Python runs on this thread while it lasts (the whole switch is one cffi call).
 */
#define _GNU_SOURCE
#include "caller.h"
#include "sandlock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#include <linux/capability.h>

#define SMALL_GROUPS 64
#define NO_ID ((uint32_t)-1)

/* This thread's credentials before the switch, and what the switch changed. */
struct saved {
    uid_t uid[3]; /* real, effective, saved */
    gid_t gid[3];
    uid_t fsuid;
    gid_t fsgid;
    struct __user_cap_data_struct caps[2];
    gid_t small[SMALL_GROUPS];
    gid_t *groups;
    int ngroups;
    int dumpable;
    int set_groups, set_gids, set_uids, set_fsgid, set_fsuid;
};

static int caps_get(struct __user_cap_data_struct d[2])
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    return syscall(SYS_capget, &h, d) < 0 ? -errno : 0;
}

static int caps_set(const struct __user_cap_data_struct d[2])
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    return syscall(SYS_capset, &h, d) < 0 ? -errno : 0;
}

/* d with its effective set replaced by eff (masked by d's permitted set). */
static void caps_with_effective(struct __user_cap_data_struct d[2], uint64_t eff)
{
    d[0].effective = (uint32_t)eff & d[0].permitted;
    d[1].effective = (uint32_t)(eff >> 32) & d[1].permitted;
}

static uint32_t fsuid_now(void) { return (uint32_t)syscall(SYS_setfsuid, NO_ID); }
static uint32_t fsgid_now(void) { return (uint32_t)syscall(SYS_setfsgid, NO_ID); }

static int save(struct saved *s)
{
    memset(s, 0, sizeof *s);
    if (syscall(SYS_getresuid, &s->uid[0], &s->uid[1], &s->uid[2]) < 0 ||
        syscall(SYS_getresgid, &s->gid[0], &s->gid[1], &s->gid[2]) < 0)
        return -errno;
    s->fsuid = fsuid_now();
    s->fsgid = fsgid_now();
    int err = caps_get(s->caps);
    if (err < 0)
        return err;
    s->groups = s->small;
    long n = syscall(SYS_getgroups, SMALL_GROUPS, s->small);
    if (n < 0 && errno == EINVAL) { /* more than SMALL_GROUPS */
        n = syscall(SYS_getgroups, 0, NULL);
        s->groups = n > 0 ? malloc((size_t)n * sizeof(gid_t)) : NULL;
        if (s->groups == NULL)
            return -ENOMEM;
        n = syscall(SYS_getgroups, n, s->groups);
    }
    if (n < 0)
        return -errno;
    s->ngroups = (int)n;
    s->dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    return 0;
}

static void release(struct saved *s)
{
    if (s->groups != s->small)
        free(s->groups);
}

static int groups_equal(const struct sandlock_creds *as, const struct saved *s)
{
    if (as->ngroups != s->ngroups)
        return 0;
    for (int i = 0; i < as->ngroups; i++)
        if (as->groups[i] != s->groups[i])
            return 0;
    return 1;
}

/* Take the credentials of *as. On failure the caller restores what was changed. */
static int become(const struct sandlock_creds *as, struct saved *s)
{
    struct __user_cap_data_struct caps[2];
    s->set_groups = !groups_equal(as, s);
    s->set_gids = as->gid[0] != s->gid[0] || as->gid[1] != s->gid[1];
    s->set_uids = as->uid[0] != s->uid[0] || as->uid[1] != s->uid[1];
    int ids = s->set_groups || s->set_gids || s->set_uids || as->gid[2] != s->fsgid ||
              as->uid[2] != s->fsuid;
    memcpy(caps, s->caps, sizeof caps);
    if (ids) { /* CAP_SETUID and CAP_SETGID in the effective set, if permitted */
        caps_with_effective(caps, ~(uint64_t)0);
        if (caps_set(caps) < 0)
            return -EPERM;
    }
    if (s->set_groups && syscall(SYS_setgroups, (size_t)as->ngroups, as->groups) < 0)
        return -errno;
    if (s->set_gids && syscall(SYS_setresgid, as->gid[0], as->gid[1], NO_ID) < 0)
        return -errno;
    /* setresgid made the fsgid the new egid (and setresuid below the fsuid the euid). */
    s->set_fsgid = as->gid[2] != (s->set_gids ? as->gid[1] : s->fsgid);
    if (s->set_fsgid) {
        syscall(SYS_setfsgid, as->gid[2]);
        if (fsgid_now() != as->gid[2])
            return -EPERM;
    }
    if (s->set_uids && syscall(SYS_setresuid, as->uid[0], as->uid[1], NO_ID) < 0)
        return -errno;
    s->set_fsuid = as->uid[2] != (s->set_uids ? as->uid[1] : s->fsuid);
    if (s->set_fsuid) {
        /* Leaving euid 0 cleared our effective set: CAP_SETUID back for setfsuid. */
        if (caps_set(caps) < 0)
            return -EPERM;
        syscall(SYS_setfsuid, as->uid[2]);
        if (fsuid_now() != as->uid[2])
            return -EPERM;
    }
    /* Last: the kernel's own fix-ups of the effective set (on euid and fsuid changes)
     * are behind us, this is the set the call runs with. */
    memcpy(caps, s->caps, sizeof caps);
    caps_with_effective(caps, as->caps);
    return caps_set(caps) < 0 ? -EPERM : 0;
}

/* Cheap reads only; the fs ids only if the switch touched them (a query is a write). */
static int ids_are(const struct saved *s)
{
    uid_t u[3];
    gid_t g[3];
    struct __user_cap_data_struct caps[2];
    if (syscall(SYS_getresuid, &u[0], &u[1], &u[2]) < 0 ||
        syscall(SYS_getresgid, &g[0], &g[1], &g[2]) < 0 || caps_get(caps) < 0)
        return 0;
    int fs_ok = (!(s->set_uids || s->set_fsuid) || fsuid_now() == s->fsuid) &&
                (!(s->set_gids || s->set_fsgid) || fsgid_now() == s->fsgid);
    return fs_ok && memcmp(u, s->uid, sizeof u) == 0 && memcmp(g, s->gid, sizeof g) == 0 &&
           memcmp(caps, s->caps, sizeof caps) == 0;
}

/* Put back every credential of *s, in the reverse order; abort() if any is not back. */
static void restore(struct saved *s)
{
    int ids = s->set_uids || s->set_fsuid || s->set_gids || s->set_fsgid || s->set_groups;
    int ok = caps_set(s->caps) == 0; /* first: CAP_SETUID and CAP_SETGID again */
    if (s->set_uids)
        ok &= syscall(SYS_setresuid, s->uid[0], s->uid[1], NO_ID) == 0;
    if (s->set_uids || s->set_fsuid)
        syscall(SYS_setfsuid, s->fsuid);
    if (s->set_gids)
        ok &= syscall(SYS_setresgid, s->gid[0], s->gid[1], NO_ID) == 0;
    if (s->set_gids || s->set_fsgid)
        syscall(SYS_setfsgid, s->fsgid);
    if (s->set_groups)
        ok &= syscall(SYS_setgroups, (size_t)s->ngroups, s->groups) == 0;
    if (ids) /* again: a return to euid 0 reset the effective set */
        ok &= caps_set(s->caps) == 0;
    if (s->set_groups && s->ngroups <= SMALL_GROUPS) { /* (longer: setgroups' word) */
        gid_t now[SMALL_GROUPS];
        long n = syscall(SYS_getgroups, SMALL_GROUPS, now);
        ok &= n == s->ngroups && memcmp(now, s->groups, (size_t)n * sizeof(gid_t)) == 0;
    }
    if (!ok || !ids_are(s))
        abort(); /* never go on with credentials that are not ours */
    /* A change of euid, fsuid or capabilities resets the process's dumpable flag to
     * fs.suid_dumpable: put back ours (the supervisor is not dumpable). */
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != s->dumpable &&
        prctl(PR_SET_DUMPABLE, s->dumpable, 0, 0, 0) < 0)
        abort();
}

int sandlock_connect_as(const struct sandlock_creds *as, int fd, const void *addr,
                        uint32_t addrlen, int nonblock)
{
    struct saved s;
    int rc = save(&s);
    if (rc == 0) {
        rc = become(as, &s);
        if (rc == 0)
            rc = sandlock_connect(fd, addr, addrlen, nonblock);
        else
            rc = -EPERM;
        restore(&s);
    }
    release(&s);
    return rc;
}

int64_t sandlock_sendmsg_as(const struct sandlock_creds *as, int fd,
                            const void *name, uint32_t namelen,
                            const void *data, size_t len,
                            const void *control, size_t controllen, int flags)
{
    struct saved s;
    int64_t rc = save(&s);
    if (rc == 0) {
        rc = become(as, &s);
        if (rc == 0)
            rc = sandlock_sendmsg(fd, name, namelen, data, len, control, controllen, flags);
        else
            rc = -EPERM;
        restore(&s);
    }
    release(&s);
    return rc;
}

static int plain_bind(int fd, const void *addr, uint32_t addrlen)
{
    return bind(fd, (const struct sockaddr *)addr, addrlen) < 0 ? -errno : 0;
}

int sandlock_bind_as(const struct sandlock_creds *as, int fd, const void *addr,
                     uint32_t addrlen)
{
    if (as == NULL)
        return plain_bind(fd, addr, addrlen);
    struct saved s;
    int rc = save(&s);
    if (rc == 0) {
        rc = become(as, &s);
        if (rc == 0)
            rc = plain_bind(fd, addr, addrlen);
        else
            rc = -EPERM;
        restore(&s);
    }
    release(&s);
    return rc;
}

static int plain_socket(int domain, int type, int protocol, int *sv)
{
    if (sv != NULL)
        return socketpair(domain, type, protocol, sv) < 0 ? -errno : 0;
    int fd = socket(domain, type, protocol);
    return fd < 0 ? -errno : fd;
}

static int socket_as(const struct sandlock_creds *as, int domain, int type, int protocol,
                     int *sv)
{
    if (as == NULL)
        return plain_socket(domain, type, protocol, sv);
    struct saved s;
    int rc = save(&s);
    if (rc == 0) {
        rc = become(as, &s);
        if (rc == 0)
            rc = plain_socket(domain, type, protocol, sv);
        else
            rc = -EPERM;
        restore(&s);
    }
    release(&s);
    return rc;
}

int sandlock_socket_as(const struct sandlock_creds *as, int domain, int type, int protocol)
{
    return socket_as(as, domain, type, protocol, NULL);
}

int sandlock_socketpair_as(const struct sandlock_creds *as, int domain, int type,
                           int protocol, int sv[2])
{
    return socket_as(as, domain, type, protocol, sv);
}
