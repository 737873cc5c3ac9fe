/*
 * Blocking TCP connects in progress, finished by a thread of their own.
 *
 * A blocking connect the gate (or Python) started on its duplicate of the child's socket
 * and that is still in progress is parked here: a second thread polls every parked
 * duplicate and answers each notification when its handshake ends, exactly as
 * onbehalf.py's _finish_connect would (SO_ERROR once writable; EINPROGRESS when the
 * socket's SO_SNDTIMEO expires first; nothing once the child stopped waiting, checked
 * every second). Neither the gate's thread nor Python ever waits on a handshake, and a
 * sandbox whose calls need no other waiting never starts trio (bench/RESULTS.md).
 *
 * Used only while nobody needs each call's outcome (the gate's remembered destinations):
 * the result is given to the child, not reported. Internal to the C side: not in the cdef.
 */
#ifndef SANDLOCK_CONNECTING_H
#define SANDLOCK_CONNECTING_H

#include <stdatomic.h>
#include <stdint.h>

struct connecting;

/* A set for notifications of listener; *answered counts the calls it answers. The thread
 * starts with the first park. NULL if out of memory. */
struct connecting *connecting_new(int listener, _Atomic uint64_t *answered);
/* Park notification id's connect in progress on our duplicate fd, which the set now owns
 * (timeout_us: the socket's SO_SNDTIMEO, 0 for none). 0 if parked; -1 if not (full, or
 * no thread could start): fd is then still the caller's. Any thread may call it. */
int connecting_park(struct connecting *c, uint64_t id, int fd, int64_t timeout_us);
/* Stop the thread, close every parked duplicate (unanswered: the sandbox is gone, or
 * the listener closes next and the kernel answers), free the set. */
void connecting_free(struct connecting *c);

#endif
