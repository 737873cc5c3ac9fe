/*
 * The approved names: the (TLS server name, destination) pairs Python's relay checked and
 * let through under the policy deciding now (relay.py's names_check), which the relay's C
 * thread may let through again on its own (relay.h). Like destset.h, a cache of Python's
 * decisions, emptied with it whenever the policy changes (sandlock_gate_clear); a pair not
 * in it goes to Python. Internal to the C side: not in the cdef.
 */
#ifndef SANDLOCK_APPROVED_H
#define SANDLOCK_APPROVED_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "abi.h"

#define APPROVED_SLOTS 512 /* emptied when 3/4 full: Python refills it */

struct approval {
    uint8_t addr[16]; /* the destination's address, IPv4 as ::ffff:a.b.c.d */
    uint16_t port;
    uint8_t used, namelen;
    char name[SANDLOCK_FIRST_NAME_MAX];
};

struct approved {
    pthread_mutex_t lock;
    unsigned int used;
    struct approval *slots; /* allocated with the first approval */
};

void approved_init(struct approved *a);
void approved_destroy(struct approved *a);
/* Approve name (lower case, as clienthello.h gives it) for the destination addr (4 or 16
 * bytes) and port: 0, -EINVAL or -ENOMEM. */
int approved_add(struct approved *a, const char *name, size_t namelen, const uint8_t *addr,
                 uint32_t addrlen, int port);
/* 1 if name is approved for the destination sockaddr dest (an AF_INET or AF_INET6 name
 * of destlen bytes), else 0. An IPv4 address and its IPv4-mapped form are one. */
int approved_has(struct approved *a, const char *name, size_t namelen, const uint8_t *dest,
                 uint32_t destlen);
void approved_clear(struct approved *a);

#endif
