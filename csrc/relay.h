/*
 * The relay's data path (--verify-names, sandlock/relay.py): a thread that moves bytes
 * both ways between pairs of connected TCP sockets, without Python.
 *
 * Python accepts the command's connection, reads and checks its first record, connects
 * to the original destination and writes the bytes it read; then it hands both sockets
 * here (sandlock_relay_join), and this thread owns them. One epoll set, edge-triggered,
 * for every pair; per direction a pipe (SANDLOCK_RELAY_PIPE_SIZE, F_SETPIPE_SZ, the
 * default size where the limit refuses it) and non-blocking splice from one socket into
 * the pipe and from the pipe into the other: no copy into user space, at most a pipe's
 * worth of bytes held per direction, no busy loop (it sleeps in epoll_wait until a
 * socket's state changes). A side's end (EOF) is passed on as a half-close
 * (shutdown(SHUT_WR)) once its bytes are out; when both directions have ended, both
 * sockets are closed. An error on either side (a reset, a broken pipe) resets both
 * (SO_LINGER 0): the other peer sees ECONNRESET, never a clean end of a stream that
 * did not end. sandlock_relay_free resets whatever is still open (the sandbox ended).
 *
 * The thread starts with the first join and runs with every signal blocked.
 */
#ifndef SANDLOCK_RELAY_H
#define SANDLOCK_RELAY_H

#include "abi.h"

/* cdef-begin */

struct sandlock_relay;

/* A relay with no pairs and no thread yet; NULL (and *err = -errno) if it cannot be. */
struct sandlock_relay *sandlock_relay_new(int *err);
/* Move bytes between the connected sockets a and b until both ends or either fails: 0,
 * and both fds are the relay's now; -errno (-EMFILE for SANDLOCK_RELAY_MAX_PAIRS pairs
 * already, or no pipe), and both are still the caller's. */
int sandlock_relay_join(struct sandlock_relay *relay, int a, int b);
/* Pairs still open (the thread closes a pair's four fds and two sockets as it ends). */
int sandlock_relay_pairs(struct sandlock_relay *relay);
/* Stop the thread, reset every pair still open, free everything. */
void sandlock_relay_free(struct sandlock_relay *relay);

/* cdef-end */

#endif
