/*
 * The relay's notes: which destination each connection the gate sent to the relay was
 * meant for (relay.py, --verify-names and HTTP rules).
 *
 * For a TCP connect Python decided must go through the relay (and asked the gate to
 * remember: destset.h, DESTSET_RELAY), the gate connects its duplicate of the child's
 * socket to the relay's loopback listener instead of the destination, and notes the
 * destination here under the socket's local address and port, which is the peer address
 * the relay's accept sees. The relay (Python) takes the note when it accepts. The note
 * is written before the lock is let go, and the connect is made under the lock, so an
 * accept that races the gate finds it (a lookup waits for the lock).
 *
 * A bounded table: past RELAYNOTES_MAX notes waiting for their accept, a connect is
 * refused (ECONNREFUSED, as Python does when its own table is full). Internal to the C
 * side: not in the cdef; gate.c exposes it.
 */
#ifndef SANDLOCK_RELAYNOTES_H
#define SANDLOCK_RELAYNOTES_H

#include <pthread.h>
#include <stdint.h>

#include "abi.h"

#define RELAYNOTES_MAX 4096    /* notes at once, as relay.py's MAX_WAITING */
#define RELAYNOTES_SLOTS 8192  /* twice that: linear probing stays short */
#define RELAYNOTES_NAME SANDLOCK_RELAY_NOTE_NAME

struct relaynote {
    uint8_t local[16]; /* the socket's local address, IPv4 as ::ffff:a.b.c.d */
    uint16_t port;     /* its local port */
    uint8_t used;
    uint8_t namelen;
    uint32_t tid;                   /* the thread that connected */
    uint8_t name[RELAYNOTES_NAME];  /* the destination as the child named it */
};

struct relaynotes {
    pthread_mutex_t lock;
    uint32_t target_len[2]; /* the relay's sockaddr for AF_INET [0] and AF_INET6 [1]; 0: none */
    uint8_t target[2][RELAYNOTES_NAME];
    unsigned int count;      /* notes held */
    struct relaynote *slots; /* RELAYNOTES_SLOTS, allocated with the first target */
};

void relaynotes_init(struct relaynotes *r);
void relaynotes_destroy(struct relaynotes *r);
/* The relay's sockaddr for sockets of domain (len 0: forget it, the relay stopped):
 * 0, -EINVAL, or -ENOMEM. */
int relaynotes_set_target(struct relaynotes *r, int domain, const void *addr, uint32_t len);
/* Take the note of local address (16 bytes, IPv4 mapped) and port: 1 and the note's name
 * (at most RELAYNOTES_NAME bytes) and tid, or 0 if there is none. */
int relaynotes_take(struct relaynotes *r, const uint8_t *local, int port, uint8_t *name,
                    uint32_t *namelen, uint32_t *tid);

/* For the gate's thread, with r->lock held from before the connect to after the note:
 * the target for domain (NULL: none), and the note of socket fd (connected, or
 * connecting, to it): 0, or -1 if it cannot be made. */
const uint8_t *relaynotes_target_locked(struct relaynotes *r, int domain, uint32_t *len);
int relaynotes_note_locked(struct relaynotes *r, int fd, const uint8_t *name, uint32_t namelen,
                           uint32_t tid);

#endif
