"""The first bytes of a TCP connection, read for the name they give: pure, no I/O.

A connection that only a hostname rule allows must name its host before anything else
(``--verify-names``, relay.py): a TLS ClientHello by its SNI, a plain HTTP/1.x request by
its ``Host`` header. ``read(data)`` says what ``data`` (everything received so far) is:

* ``NEED_MORE``: a prefix of something that may still name a host; read on (the caller
  caps the size and the time);
* ``First(kind, name, size)``: the first record is whole; ``name`` is the host it names
  (lower case, no trailing dot, no port), or None when it names none; ``size`` is how
  many bytes the record took (the caller sends exactly what it read);
* ``First(kind="ech", ...)``: a ClientHello that carries Encrypted ClientHello: its
  outer SNI is only a "public name", never the host the client means;
* ``NOT_NAMED``: neither (raw bytes, another protocol, a malformed record).

Why a hand-written ClientHello reader: no well-kept Python library parses a ClientHello
on its own. ``ssl``'s server-side ``sni_callback`` would (OpenSSL parses), but it needs a
server context, hides the ECH extension (which must be refused) and stops nothing from
being answered; the record layout (RFC 8446 4.1.2, RFC 6066 3) is small, fixed, and read
here with every length checked against what remains (tests/test_firstbytes.py fuzzes it;
tests/test_firstbytes_fast.py holds it to the slower reader it replaced).
A ClientHello split over several records is not read (NOT_NAMED: refused, never
allowed); no client in use splits one below 16 KiB. HTTP is read by h11.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from ._syscalls import FIRST_MAX, FIRST_NAME_MAX

__all__ = ["MAX_FIRST", "NEED_MORE", "NOT_NAMED", "First", "host_name", "read"]

MAX_FIRST: int = FIRST_MAX
"""The most we read before deciding: one TLS record (2^14 bytes and its header); an HTTP
request head must fit in it too (csrc/abi.h: the relay's C reader reads as much)."""

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SNI = 0
_EXT_ECH = 0xFE0D  # encrypted_client_hello (RFC 9849)
_SNI_HOST = 0
_MAX_NAME = FIRST_NAME_MAX  # 253


class First(NamedTuple):
    """A whole first record: ``kind`` "tls", "ech" or "http"; ``name`` the host it names."""

    kind: str
    name: str | None
    size: int


NEED_MORE = "need-more"
NOT_NAMED = "not-named"


def read(data: bytes) -> First | str:
    """What ``data``, the connection's first bytes, is (see the module docstring)."""
    if not data:
        return NEED_MORE
    if data[0] == _HANDSHAKE:
        return _tls(data)
    return _http(data)


def host_name(text: str) -> str | None:
    """``text`` as a hostname the rules could name: ASCII letters, digits, ``-`` and
    ``_``, dot-separated labels of 1-63, 253 at most, one trailing dot dropped; lower
    case. None for anything else (an IP literal is not a name: IP rules decide those)."""
    name = text.removesuffix(".").lower()
    if not 0 < len(name) <= _MAX_NAME or not name.isascii():
        return None
    labels = name.split(".")
    for label in labels:
        if not 0 < len(label) <= 63 or not label.replace("-", "").replace("_", "").isalnum():
            return None
    if labels[-1].isdigit():  # 127.0.0.1, or a name whose top label is numeric
        return None
    return name


# ---- TLS ---------------------------------------------------------------------------------
#
# The reader walks one buffer with plain offsets: ``pos`` is where the next field starts,
# ``end`` where the enclosing vector ends, and every length read is checked against ``end``
# before anything past it is looked at (``data`` may hold bytes after the record: the next
# record, or the command's early data). It used to be a small reader class with a method
# per field; the checks are the same, written inline, because the method calls were most
# of its cost (~200 calls per ClientHello; see bench/firstbytes_speed.py). A failed check
# raises _Malformed and the verdict is NOT_NAMED, whichever check it was.
#
# The layout read (RFC 8446 4.1.2; RFC 6066 3 for server_name):
#
#     record:      type(1)=22 version(2) length(2)         (read by _tls)
#     handshake:   msg_type(1)=1 length(3)                 (fills the record exactly)
#     ClientHello: legacy_version(2) random(32) session_id<0..2^8-1>
#                  cipher_suites<2..2^16-2> compression_methods<1..2^8-1>
#                  [extensions<8..2^16-1>]                  (fills the message exactly)
#     extension:   type(2) extension_data<0..2^16-1>        (each type at most once)
#     server_name: server_name_list<1..2^16-1>              (fills the extension exactly)
#     ServerName:  name_type(1) HostName<1..2^16-1>         (one host_name(0) exactly)
#
# Only the vectors' lengths are checked, not their minimums (an empty cipher_suites is read
# like any other): the reader asks "which host does this name?", and a server refuses the
# rest.


class _Malformed(Exception):
    pass


_TYPE_AND_LENGTH = struct.Struct(">HH")


def _tls(data: bytes) -> First | str:
    if len(data) < 5:
        return NEED_MORE if data[1:2] in (b"", b"\x03") else NOT_NAMED
    if data[1] != 3:
        return NOT_NAMED
    size = 5 + (data[3] << 8 | data[4])
    if size > MAX_FIRST:
        return NOT_NAMED
    if len(data) < size:
        return NEED_MORE
    try:
        ech, name = _client_hello(data, size)
    except _Malformed:
        return NOT_NAMED
    return First("ech" if ech else "tls", name, size)


def _client_hello(data: bytes, end: int) -> tuple[bool, str | None]:
    """(has ECH, SNI host name or None) of the ClientHello that fills ``data[5:end]``."""
    # The handshake header: a ClientHello whose length fills the record, nothing after it
    # (another message in the record: not a client's first).
    if end < 9 or data[5] != _CLIENT_HELLO or 9 + (data[6] << 16 | data[7] << 8 | data[8]) != end:
        raise _Malformed
    pos = 9 + 2 + 32  # legacy_version, random
    if pos >= end:  # (and a session_id length byte)
        raise _Malformed
    pos += 1 + data[pos]  # legacy_session_id
    if pos + 2 > end:
        raise _Malformed
    pos += 2 + (data[pos] << 8 | data[pos + 1])  # cipher_suites
    if pos >= end:
        raise _Malformed
    pos += 1 + data[pos]  # legacy_compression_methods
    if pos == end:
        return False, None  # no extensions at all (SSLv3-style): no SNI
    if pos + 2 > end or pos + 2 + (data[pos] << 8 | data[pos + 1]) != end:
        raise _Malformed  # (the extensions must fill the rest exactly)
    pos += 2
    # Each extension's type and length in one unpack_from; an extension that overruns is
    # caught before its data is read (_sni reads only up to ``pos``). Whether a type came
    # twice is checked once, at the end: every failure is the same NOT_NAMED.
    ech, name, kinds, unpack = False, None, [], _TYPE_AND_LENGTH.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise _Malformed
        kind, length = unpack(data, pos)
        start = pos + 4
        pos = start + length
        if pos > end:
            raise _Malformed
        kinds.append(kind)
        if kind == _EXT_ECH:
            ech = True
        elif kind == _EXT_SNI:
            name = _sni(data, start, pos)
    if len(set(kinds)) != len(kinds):  # RFC 8446 4.2: at most one of each
        raise _Malformed
    return ech, name


def _sni(data: bytes, pos: int, end: int) -> str:
    """The one host_name of the server_name extension in ``data[pos:end]``."""
    if pos + 2 > end or pos + 2 + (data[pos] << 8 | data[pos + 1]) != end:
        raise _Malformed  # (the list must fill the extension exactly)
    pos += 2  # (an empty list finds no host_name: malformed below)
    found = None
    while pos < end:
        if pos + 3 > end:
            raise _Malformed
        kind = data[pos]
        start = pos + 3
        pos = start + (data[pos + 1] << 8 | data[pos + 2])
        if pos > end:
            raise _Malformed
        if kind != _SNI_HOST:
            continue
        if found is not None:  # RFC 6066 3: one host_name only
            raise _Malformed
        try:
            found = host_name(data[start:pos].decode("ascii"))
        except UnicodeDecodeError:
            raise _Malformed from None
        if found is None:
            raise _Malformed
    if found is None:
        raise _Malformed
    return found


# ---- HTTP --------------------------------------------------------------------------------


_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e]+ HTTP/1\.[01]\r\n")


def _http(data: bytes) -> First | str:
    import h11

    line_end = data.find(b"\r\n")
    if line_end >= 0 and not _REQUEST_LINE.match(data, 0, line_end + 2):
        return NOT_NAMED  # (a whole first line that is no request line: say so now)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_FIRST)
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 4]
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return NOT_NAMED
    if event is h11.NEED_DATA:
        return NEED_MORE if len(data) < MAX_FIRST else NOT_NAMED
    if not isinstance(event, h11.Request):
        return NOT_NAMED
    # (raw_items: a list, where iterating the Headers sequence itself goes through
    # __getitem__ per header; the raw name lowered is the name h11 matches on.)
    hosts = [value for key, value in event.headers.raw_items() if key.lower() == b"host"]
    if len(hosts) != 1:  # (h11 requires one for HTTP/1.1; HTTP/1.0 may have none)
        return First("http", None, len(head))
    name = _authority_host(hosts[0])
    target = event.target
    if not target.startswith(b"/"):  # absolute-form (or authority-form): must agree
        if name is None or _target_host(target) != name:
            return First("http", None, len(head))
    return First("http", name, len(head))


def _authority_host(value: bytes) -> str | None:
    """The host of ``host[:port]`` as host_name() reads it (an IP literal: None)."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        return None
    host, _colon, port = text.partition(":")
    if port and not port.isdigit():
        return None
    return host_name(host)


def _target_host(target: bytes) -> str | None:
    """The host of an absolute-form (``http://h:p/x``) or authority-form target."""
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        rest = scheme
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
    if b"@" in authority:
        return None
    return _authority_host(authority)
