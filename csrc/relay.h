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
 * The front (sandlock_relay_front, --verify-names with the gate remembering): the thread
 * also accepts on the relay's listeners. A connection the gate sent there (a note:
 * relaynotes.h) has its first bytes read here; a TLS ClientHello whose name clienthello.h
 * reads and the gate approved for that destination (approved.h: Python's relay checked
 * that name for it under the policy deciding now) is let through here: the destination
 * connected to (never anything the hello names), the bytes read written to it, the pair
 * spliced as above. Everything else (no note: Python noted it; another protocol; a name
 * not approved; a first record not whole in time; any
 * error) is handed to Python (sandlock_relay_next) with the bytes read so far, which
 * goes on as if it had accepted it itself: so a refusal is always Python's, and
 * reported there. An accept that fails for want of descriptors or memory pauses that
 * listener for SANDLOCK_RELAY_PAUSE_MS (no busy loop); past SANDLOCK_RELAY_MAX_PAIRS
 * connections read or handed at once, a new one is reset.
 *
 * The thread starts with the first join (or the front) and runs with every signal blocked.
 */
#ifndef SANDLOCK_RELAY_H
#define SANDLOCK_RELAY_H

#include "abi.h"

struct sandlock_gate; /* (gate.h; in the cdef before this header) */

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

#define SANDLOCK_RELAY_PAUSE_MS 50
#define SANDLOCK_RELAY_FAST_MAX 8192 /* the most a hello let through here may take */

/* A connection the front hands to Python: fd (now the caller's), the peer address the
 * accept gave (local: 16 bytes, IPv4 as ::ffff:a.b.c.d; port), the gate's note if it
 * made one (noted: dest, destlen, tid), whether its first record's time ran out, and
 * the len bytes read from it so far. */
struct sandlock_relay_handed {
    int32_t fd;
    uint32_t tid;
    uint16_t port;
    uint8_t noted;
    uint8_t timed_out;
    uint8_t local[16];
    uint32_t destlen;
    uint8_t dest[SANDLOCK_RELAY_NOTE_NAME];
    uint32_t len;
    uint8_t data[SANDLOCK_FIRST_MAX];
};

/* Accept on the listeners l4 and l6 (-1: none; they stay the caller's: close them after
 * sandlock_relay_free) with gate's notes and approvals (the gate must outlive the relay);
 * a first record not whole within first_ms goes to Python as timed out, a destination
 * not connected within connect_ms is given up (relay.py's FIRST_TIMEOUT and
 * CONNECT_TIMEOUT). An eventfd (the relay's: never close it), readable when connections
 * wait in sandlock_relay_next; or -errno. Once per relay. */
int sandlock_relay_front(struct sandlock_relay *relay, struct sandlock_gate *gate, int l4,
                         int l6, int first_ms, int connect_ms);
/* The next connection handed to Python: 1 and *out, or 0 when none waits. */
int sandlock_relay_next(struct sandlock_relay *relay, struct sandlock_relay_handed *out);
/* Connections the front let through itself. */
uint64_t sandlock_relay_fast(struct sandlock_relay *relay);
/* Stop the thread, reset every pair still open, free everything. */
void sandlock_relay_free(struct sandlock_relay *relay);

/* cdef-end */

#endif
