/*
 * The table of sockets created on behalf. See owned.h.
 */
#define _GNU_SOURCE
#include "owned.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sandlock.h"

struct entry {
    uint64_t ino;
    int fd;
    int owner;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *table;
static int used, size;
static int mode = -1; /* -1: not probed yet */

int sandlock_owned_probe(void)
{
    pthread_mutex_lock(&lock);
    if (mode < 0) {
        /* The container's filter refuses pidfd_getfd whatever the target: ask about our
         * own stdin-or-whatever descriptor 0 (EBADF if closed still means allowed). */
        int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
        int rc = pidfd < 0 ? -errno : sandlock_pidfd_getfd(pidfd, 0);
        if (pidfd >= 0)
            close(pidfd);
        if (rc >= 0)
            close(rc);
        mode = rc == -EPERM || rc == -ENOSYS || rc == -EACCES;
    }
    int m = mode;
    pthread_mutex_unlock(&lock);
    return m;
}

int sandlock_owned_mode(void)
{
    int m = __atomic_load_n(&mode, __ATOMIC_ACQUIRE);
    return m < 0 ? sandlock_owned_probe() : m;
}

void sandlock_owned_set_mode(int on)
{
    pthread_mutex_lock(&lock);
    mode = on ? 1 : 0;
    pthread_mutex_unlock(&lock);
}

int sandlock_owned_add(int owner, int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISSOCK(st.st_mode))
        return -ENOTSOCK;
    pthread_mutex_lock(&lock);
    int mine = 0;
    for (int i = 0; i < used; i++)
        mine += table[i].owner == owner;
    if (mine >= SANDLOCK_OWNED_MAX) {
        pthread_mutex_unlock(&lock);
        return -EMFILE;
    }
    if (used == size) {
        int grown = size ? size * 2 : 64;
        struct entry *t = realloc(table, (size_t)grown * sizeof *t);
        if (t == NULL) {
            pthread_mutex_unlock(&lock);
            return -ENOMEM;
        }
        table = t;
        size = grown;
    }
    table[used++] = (struct entry){.ino = (uint64_t)st.st_ino, .fd = fd, .owner = owner};
    pthread_mutex_unlock(&lock);
    return 0;
}

int sandlock_owned_find(int tid, int fd)
{
    char path[64], link[64];
    if (fd < 0)
        return -EBADF;
    snprintf(path, sizeof path, "/proc/%d/fd/%d", tid, fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        return errno == ENOENT ? -EBADF : -errno;
    link[n] = '\0';
    unsigned long long ino;
    if (sscanf(link, "socket:[%llu]", &ino) != 1)
        return -ENOTSOCK;
    int dup = SANDLOCK_OWNED_UNKNOWN;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < used; i++) {
        if (table[i].ino == ino) {
            dup = fcntl(table[i].fd, F_DUPFD_CLOEXEC, 3);
            if (dup < 0)
                dup = -errno;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return dup;
}

static int is_live(uint64_t ino, const uint64_t *live, int n)
{
    for (int i = 0; i < n; i++)
        if (live[i] == ino)
            return 1;
    return 0;
}

int sandlock_owned_sweep(int owner, const uint64_t *live, int n)
{
    int left = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < used;) {
        if (table[i].owner == owner && !is_live(table[i].ino, live, n)) {
            close(table[i].fd);
            table[i] = table[--used];
            continue;
        }
        left += table[i].owner == owner;
        i++;
    }
    pthread_mutex_unlock(&lock);
    return left;
}

void sandlock_owned_forget(int owner)
{
    sandlock_owned_sweep(owner, NULL, 0);
}

int sandlock_owned_count(int owner)
{
    int count = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < used; i++)
        count += table[i].owner == owner;
    pthread_mutex_unlock(&lock);
    return count;
}

void sandlock_owned_rekey(int owner, int new_owner)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < used; i++)
        if (table[i].owner == owner)
            table[i].owner = new_owner;
    pthread_mutex_unlock(&lock);
}
