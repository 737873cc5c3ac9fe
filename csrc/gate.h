/*
 * The gate: a thread of our own that receives every notification of one listener and
 * answers, without Python, the calls Python has already decided.
 *
 * Python stays the authority. The gate knows no rules: it holds a set of exact
 * destinations (socket domain, type and protocol, address, port) that Python allowed
 * and asked it to remember, and Python empties that set whenever the policy changes.
 * Everything else (a destination not in the set, any call with an unusual shape, any
 * error worth a careful answer) is handed to Python untouched, as the notification
 * itself, over a SOCK_SEQPACKET socket whose other end Python reads in its trio loop.
 * When the gate does answer, it does what Python would have done: it duplicates the
 * child's socket (pidfd_getfd), copies the destination and the data out of the child
 * once, confirms the copy came from the calling thread, and performs the call on the
 * duplicate with its copy, never blocking (a blocking TCP connect that is still in
 * progress is parked with a second thread that finishes it, connecting.h; if that cannot
 * take it, it is handed to Python with the duplicate, to be finished there).
 *
 * Why a thread in C: the profile (bench/RESULTS.md) put a trapped sendto at ~60 us,
 * nearly all of it trio's wake-up and Python glue around ~9 syscalls. Blocked in
 * RECV (or, on kernels before 6.6, in poll() on the listener), with the sync wake-up
 * flag, this thread is switched to directly by the kernel and answers in a few
 * microseconds. Stopping a thread that waits in RECV takes a signal of the gate's own
 * (see gate.c); an application that handles that signal itself keeps it, and its gates
 * wait in poll().
 *
 * With SANDLOCK_GATE_OPEN it also answers open/openat/openat2 with CONTINUE (the kernel
 * opens the file as usual) when the last path component is none of the names Python says
 * a virtual file may have, and hands the rest to Python, which serves the virtual files.
 *
 * The pieces: gate.c the thread, its waiting and the handoff; fastpath.c the answers;
 * destset.c the remembered destinations; connecting.c the connects in progress.
 */
#ifndef SANDLOCK_GATE_H
#define SANDLOCK_GATE_H

#include <stdint.h>

#include "abi.h"

/* cdef-begin */

struct sandlock_gate;

/* Counters of what the gate answered itself, and of what it handed over. */
struct sandlock_gate_stats {
    uint64_t connects;
    uint64_t sends;      /* sendto, sendmsg, and each sendmmsg entry */
    uint64_t opens;
    uint64_t handoffs;
};

/* Start a gate on listener (which stays the caller's: stop the gate before closing it),
 * with SANDLOCK_GATE_* flags and open names as sandlock_gate_set_open_names (known from
 * the first notification on). *handoff gets the non-blocking, close-on-exec socket Python
 * reads records from (struct sandlock_handoff, abi.h); it reads end-of-file once the
 * sandbox is gone (every task of the filter exited). */
struct sandlock_gate *sandlock_gate_start(int listener, unsigned int flags,
                                          const char *open_names, size_t names_len,
                                          int *handoff, int *err);
void sandlock_gate_set_flags(struct sandlock_gate *gate, unsigned int flags);
/* The last path components that may name a virtual file (VirtualFiles.names): len bytes,
 * each name NUL-terminated. With SANDLOCK_GATE_OPEN, an open of any other name is
 * CONTINUEd; names NULL: none known, every open is handed over (so it is too when they do
 * not fit: -E2BIG, or are not NUL-terminated: -EINVAL). */
int sandlock_gate_set_open_names(struct sandlock_gate *gate, const char *names, size_t len);
/* Remember an allowed destination: addr is the 4- or 16-byte address of the sockaddr;
 * relay 1: a TCP connect to it goes to the relay (sandlock_gate_set_relay), 0: to it. */
int sandlock_gate_allow(struct sandlock_gate *gate, int domain, int type, int protocol,
                        const void *addr, uint32_t addrlen, int port, int relay);
/* The relay's listener sockaddr for sockets of domain (AF_INET, AF_INET6); len 0: none
 * (then connects remembered as relayed are handed over). 0, or -errno. */
int sandlock_gate_set_relay(struct sandlock_gate *gate, int domain, const void *addr,
                            uint32_t len);
/* The relay accepted a connection from local (16 bytes, IPv4 as ::ffff:a.b.c.d) port:
 * 1 with the destination's name (name: 28 bytes of room) and the connecting thread's tid
 * if the gate sent it there (the note is taken), else 0. */
int sandlock_gate_take_note(struct sandlock_gate *gate, const uint8_t *local, int port,
                            uint8_t *name, uint32_t *namelen, uint32_t *tid);
/* Park notification id's blocking connect in progress on our duplicate fd with the
 * gate's second thread, which answers it when the handshake ends (connecting.h): 0 if
 * parked (fd is the gate's now), -1 if not (fd still the caller's). For calls whose
 * outcome nobody needs to hear. */
int sandlock_gate_park_connect(struct sandlock_gate *gate, uint64_t id, int fd);
/* Let the relay's thread let a TLS connection to addr (4 or 16 bytes) port whose
 * ClientHello names name (lower case) through on its own (approved.h): Python's relay
 * checked one. 0, or -errno. */
int sandlock_gate_approve(struct sandlock_gate *gate, const char *name, size_t namelen,
                          const uint8_t *addr, uint32_t addrlen, int port);
/* Forget every destination and approved name (the policy changed). */
void sandlock_gate_clear(struct sandlock_gate *gate);
void sandlock_gate_stats(struct sandlock_gate *gate, struct sandlock_gate_stats *out);
/* Stop the threads, wait for them, fill *final with the counters as they ended, free
 * everything but the listener and the handoff socket (the caller closes those). */
void sandlock_gate_stop(struct sandlock_gate *gate, struct sandlock_gate_stats *final);

/* cdef-end */

/* For the relay's thread (relay.c): whether name is approved for the destination
 * sockaddr dest (approved.h). */
int sandlock_gate_approved(struct sandlock_gate *gate, const char *name, size_t namelen,
                           const uint8_t *dest, uint32_t destlen);

#endif
