/*
 * The name a TLS ClientHello gives (SNI), read in C for the relay's own fast path
 * (relay.h, --verify-names). sandlock/firstbytes.py is the reference: this reader
 * answers NAMED only where that one gives First("tls", name) with the very same name,
 * and otherwise NEED_MORE where it gives NEED_MORE, OTHER for everything else (which
 * the relay hands to Python, which reads it again and decides). tests/test_clienthello.py
 * compares the two on real hellos and hypothesis' mutations of them.
 */
#ifndef SANDLOCK_CLIENTHELLO_H
#define SANDLOCK_CLIENTHELLO_H

#include <stddef.h>
#include <stdint.h>

#include "abi.h"

/* cdef-begin */

/* What data (a connection's first len bytes) is: SANDLOCK_FIRST_* (abi.h). With
 * SANDLOCK_FIRST_NAMED, name (SANDLOCK_FIRST_NAME_MAX bytes of room) holds the host
 * name, lower case, no trailing dot, not NUL-terminated, and *namelen its length. */
int sandlock_first_tls(const uint8_t *data, size_t len, char *name, size_t *namelen);

/* cdef-end */

#endif
