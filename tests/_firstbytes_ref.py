"""REFERENCE ONLY: sandlock/firstbytes.py as it was before the 2026-12-05 speed-up
(main at 157e767), pasted unchanged below this docstring; nothing in sandlock imports it.

tests/test_firstbytes_fast.py reads every input with both and requires the same verdict;
bench/firstbytes_speed.py --reference times both. Do not edit the code below: it is the
definition of what ``firstbytes.read`` must answer. (Its own docstring, describing the
behaviour, is the module's: see sandlock/firstbytes.py.)
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_FIRST", "NEED_MORE", "NOT_NAMED", "First", "host_name", "read"]

MAX_FIRST = 16 * 1024 + 5
"""The most we read before deciding: one TLS record (2^14 bytes and its header); an HTTP
request head must fit in it too."""

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SNI = 0
_EXT_ECH = 0xFE0D  # encrypted_client_hello (RFC 9849)
_SNI_HOST = 0
_MAX_NAME = 253


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


class _Malformed(Exception):
    pass


class _Reader:
    """Bounded reads over one buffer: every read checks what remains."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise _Malformed
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def num(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> _Reader:
        size = self.num(len_bytes)
        start = self.pos
        self.take(size)
        return _Reader(self.data, start, start + size)

    @property
    def left(self) -> int:
        return self.end - self.pos


def _tls(data: bytes) -> First | str:
    if len(data) < 5:
        return NEED_MORE if data[1:2] in (b"", b"\x03") else NOT_NAMED
    if data[1] != 3:
        return NOT_NAMED
    size = 5 + int.from_bytes(data[3:5], "big")
    if size > MAX_FIRST:
        return NOT_NAMED
    if len(data) < size:
        return NEED_MORE
    try:
        ech, name = _client_hello(_Reader(data, 5, size))
    except _Malformed:
        return NOT_NAMED
    return First("ech" if ech else "tls", name, size)


def _client_hello(record: _Reader) -> tuple[bool, str | None]:
    """(has ECH, SNI host name or None) of the ClientHello that fills ``record``."""
    if record.num(1) != _CLIENT_HELLO:
        raise _Malformed
    body = record.vector(3)
    if record.left:  # (another message after it in the record: not a client's first)
        raise _Malformed
    body.take(2 + 32)  # legacy_version, random
    body.vector(1)  # legacy_session_id
    body.vector(2)  # cipher_suites
    body.vector(1)  # legacy_compression_methods
    if not body.left:
        return False, None  # no extensions at all (SSLv3-style): no SNI
    extensions = body.vector(2)
    if body.left:
        raise _Malformed
    ech, name, seen = False, None, set()
    while extensions.left:
        kind = extensions.num(2)
        ext = extensions.vector(2)
        if kind in seen:  # RFC 8446 4.2: at most one of each
            raise _Malformed
        seen.add(kind)
        if kind == _EXT_ECH:
            ech = True
        elif kind == _EXT_SNI:
            name = _sni(ext)
    return ech, name


def _sni(ext: _Reader) -> str:
    names = ext.vector(2)
    if ext.left or not names.left:
        raise _Malformed
    found = None
    while names.left:
        kind = names.num(1)
        value = names.vector(2)
        if kind != _SNI_HOST:
            continue
        if found is not None:  # RFC 6066 3: one host_name only
            raise _Malformed
        try:
            found = host_name(value.take(value.left).decode("ascii"))
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
    hosts = [value for key, value in event.headers if key == b"host"]
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
