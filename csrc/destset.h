/*
 * The remembered destinations: the exact (socket domain, type, protocol, address, port)
 * tuples that Python allowed and asked the gate to remember. The gate knows no rules:
 * a call to a destination in the set is one Python has already decided, and Python
 * empties the set whenever the policy changes. Internal to the C side: not in the cdef.
 */
#ifndef SANDLOCK_DESTSET_H
#define SANDLOCK_DESTSET_H

#include <pthread.h>
#include <stdint.h>

#define DESTSET_SLOTS 1024 /* emptied when 3/4 full: Python refills it */

/* What Python decided for a destination: call it, or (a TCP connect) send it to the
 * relay (relaynotes.h). */
enum { DESTSET_DIRECT = 1, DESTSET_RELAY = 2 };

struct dest {
    uint8_t addr[16];
    uint16_t port;
    uint8_t domain, type, protocol;
    uint8_t used; /* 0: an empty slot; else the kind (DESTSET_*), not part of the key */
    uint8_t pad[4];
};

/* An open-addressing hash set, guarded by its lock: Python adds and clears from its own
 * thread while the gate's thread looks up. */
struct destset {
    pthread_mutex_t lock;
    unsigned int used;
    struct dest slots[DESTSET_SLOTS];
};

void destset_init(struct destset *s);
void destset_destroy(struct destset *s);
/* Remember a destination (addr: the 4- or 16-byte address of an AF_INET or AF_INET6
 * sockaddr) and its kind (DESTSET_*): 0, or -EINVAL for one that cannot be. */
int destset_add(struct destset *s, int domain, int type, int protocol, const void *addr,
                uint32_t addrlen, int port, int kind);
/* The kind that destination is remembered with, or 0 if it is not. */
int destset_has(struct destset *s, int domain, int type, int protocol, const void *addr,
                uint32_t addrlen, int port);
void destset_clear(struct destset *s);

#endif
