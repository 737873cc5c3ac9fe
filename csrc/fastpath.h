/*
 * The gate's answers: what it does with one notification that Python has already decided.
 *
 * Every path either answers the notification itself, exactly as Python would (onbehalf.py
 * for the network calls, vfiles.py for the opens, are the reference), or hands it over
 * before it has done anything the child could observe. The one exception is a blocking TCP
 * connect already started: parked with the second thread (connecting.h), or else handed
 * over with its duplicate and its result, for Python to finish.
 *
 * What it answers:
 *   connect, sendto, sendmsg, sendmmsg (SANDLOCK_GATE_CACHE) to a destination in the set
 *     Python filled (destset.h), on a duplicate of the child's socket (pidfd_getfd), with
 *     the destination and the data copied out of the child once, never blocking;
 *   a TCP connect Python decided must go through the relay (DESTSET_RELAY): connected to
 *     the relay's listener instead, the destination noted for the relay (relaynotes.h);
 *   open, openat, openat2 (SANDLOCK_GATE_OPEN) that cannot name a virtual file: CONTINUE
 *     (see do_open in fastpath.c for why the names Python gives make that exact).
 *
 * Internal to the C side (not in the cdef): gate.c owns one and calls it from its thread.
 */
#ifndef SANDLOCK_FASTPATH_H
#define SANDLOCK_FASTPATH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>
#include <linux/seccomp.h>

#include "abi.h"
#include "approved.h"
#include "connecting.h"
#include "destset.h"
#include "relaynotes.h"

#define FP_MAX_NAME SANDLOCK_SOCKADDR_MAX
#define FP_MAX_DATA 65536        /* larger sends go to Python (which caps at 16 MiB) */
#define FP_MAX_IOV 64            /* more iovecs: Python */
#define FP_MMSG_BATCH 64         /* sendmmsg entries read at once */
#define FP_PIDFDS 64             /* pidfds kept open, one per thread of the sandbox */
#define FP_KINDS 64              /* sockets whose kind is remembered, by cookie */
#define FP_OPEN_NAMES 1024       /* bytes of virtual names held; more: every open is Python's */

/* The result of trying to answer: answered (or nothing left to answer), or hand over. */
enum { FASTPATH_DONE = 0, FASTPATH_HAND_OVER = 1 };

/* tid -> pidfd; see getfd in fastpath.c. */
struct pidfd_slot {
    int tid;
    int fd;
    uint64_t used; /* the clock at its last use; 0: empty */
};

/* A socket's cookie -> its domain, type and protocol; see sock_kind_cached. */
struct sock_kind {
    uint64_t cookie;
    int domain, type, protocol;
};

/* The last path components an open must have to be handed over (sandlock_gate_set_open_names):
 * names[0..len) is a run of NUL-terminated names. Not known: every open is handed over. */
struct open_names {
    pthread_mutex_t lock;
    int known;
    size_t len;
    char names[FP_OPEN_NAMES];
};

struct fastpath {
    /* Shared with Python's thread (flags, dests, open, park) and the second thread. */
    int listener;
    _Atomic unsigned int flags;                 /* SANDLOCK_GATE_* */
    _Atomic uint64_t connects, sends, opens;    /* what it answered */
    struct connecting *connecting;              /* NULL: Python finishes blocking connects */
    struct destset dests;
    struct relaynotes relay;                    /* the connects sent to the relay */
    struct approved approved;                   /* names the relay may let through */
    struct open_names open;
    /* The gate thread's own: its pidfds, and its scratch memory for what it copies out of
     * the child (names and iovec arrays in meta, the data in data; the ranges to read). */
    struct pidfd_slot pidfds[FP_PIDFDS];
    uint64_t clock;
    struct sock_kind kinds[FP_KINDS];
    struct iovec ranges[SANDLOCK_UIO_MAXIOV];
    uint8_t vec[FP_MMSG_BATCH * SANDLOCK_MMSGHDR_SIZE];
    uint8_t meta[FP_MMSG_BATCH * (FP_MAX_NAME + FP_MAX_IOV * 16)];
    uint8_t data[FP_MAX_DATA + FP_MAX_NAME];
};

/* Set up f (zeroed by the caller) for listener; open_names as sandlock_gate_set_open_names. */
void fastpath_init(struct fastpath *f, int listener, unsigned int flags, const char *open_names,
                   size_t len);
/* Answer n, or say FASTPATH_HAND_OVER: then *fd is -1 (untouched), or a blocking connect's
 * duplicate (now the caller's) with what the non-blocking connect returned in *rc. */
int fastpath_answer(struct fastpath *f, const struct seccomp_notif *n, int *fd, int *rc);
/* Park notification id's blocking connect in progress on our duplicate fd with the second
 * thread: 0 if parked (fd is its own now), -1 if not (fd still the caller's). */
int fastpath_park(struct fastpath *f, uint64_t id, int fd);
int fastpath_set_open_names(struct fastpath *f, const char *names, size_t len);
/* Close the gate thread's pidfds (at its end). */
void fastpath_drop_pidfds(struct fastpath *f);
/* Free the rest, once no thread calls in any more. */
void fastpath_release(struct fastpath *f);

#endif
