"""firstbytes.read against the reader it replaced (tests/_firstbytes_ref.py, kept only as
the reference): the same verdict, field for field, for every input tried. Real
ClientHellos (Python's ssl, curl's) and HTTP heads cut at every length and changed at
every byte; then, by hypothesis, several changes at once, hand-built ClientHellos and
HTTP heads with random fields and lengths, and random bytes. Pure: no socket opened."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sandlock.firstbytes import MAX_FIRST, First, host_name, read

from . import _firstbytes_ref as ref
from .firstsamples import CURL_HELLO, HTTP_LONG, HTTP_SHORT, ssl_hello


def assert_same(data: bytes) -> None:
    """``read(data)`` is what the reference says: the same kind of verdict, same fields."""
    new, old = read(data), ref.read(data)
    if isinstance(old, ref.First):
        assert type(new) is First, (data, new, old)
        assert tuple(new) == tuple(old), (data, new, old)
    else:
        assert type(new) is str, (data, new, old)
        assert new == old, (data, new, old)


def built_hello(
    extensions: list[tuple[int, bytes]] | bytes | None,
    *,
    session_id: bytes = b"",
    ciphers: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    deltas: tuple[int, int, int] = (0, 0, 0),
    trailing: bytes = b"",
) -> bytes:
    """A ClientHello record; ``deltas`` are added to the extensions', the message's and
    the record's length fields (0: true lengths); ``extensions`` as (type, data) pairs,
    or the extensions block's bytes as they are, or None: no extensions block at all."""
    ext_delta, body_delta, record_delta = deltas
    body = b"\x03\x03" + bytes(32)
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(ciphers)) + ciphers
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        exts = (
            extensions
            if isinstance(extensions, bytes)
            else b"".join(struct.pack("!HH", kind, len(data)) + data for kind, data in extensions)
        )
        body += struct.pack("!H", (len(exts) + ext_delta) % 0x10000) + exts
    body += trailing
    handshake = b"\x01" + ((len(body) + body_delta) % (1 << 24)).to_bytes(3, "big") + body
    length = (len(handshake) + record_delta) % 0x10000
    return b"\x16\x03\x01" + struct.pack("!H", length) + handshake


def sni_data(entries: list[tuple[int, bytes]], delta: int = 0) -> bytes:
    """A server_name extension's data: these (name_type, name) entries."""
    body = b"".join(bytes([kind]) + struct.pack("!H", len(name)) + name for kind, name in entries)
    return struct.pack("!H", (len(body) + delta) % 0x10000) + body


HELLOS = [
    ssl_hello("good.test"),
    ssl_hello(None),
    ssl_hello("Mixed-Case.Example.TEST", alpn=["h2", "http/1.1"]),
    CURL_HELLO,
    built_hello([(0, sni_data([(0, b"public.test")])), (0xFE0D, b"\x00" * 8)]),  # ECH
    built_hello([(0, sni_data([(1, b"x"), (0, b"a.test"), (7, b"")]))]),
    built_hello(None),  # no extensions (SSLv3-style)
]

HEADS = [
    HTTP_SHORT,
    HTTP_LONG,
    b"GET http://a.test:81/x?y HTTP/1.1\r\nHost: A.test\r\n\r\n",
    b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\nHost: bare-lf.test\n\n",
    b"POST /f HTTP/1.1\r\nHost: b.test\r\nContent-Length: 3\r\n\r\nabc",
]

NAMES = [
    b"a.test",
    b"A.Test.",
    b"127.0.0.1",
    b"1.2.3.4x",
    b"x.123",
    b"a..b",
    b".",
    b"-",
    b"_",
    b"-a._b",
    b"a" * 63 + b".test",
    b"a" * 64 + b".test",
    b"x." * 126 + b"x",  # 253
    b"x." * 126 + b"xy",  # 254
    b"caf\xc3\xa9.test",
    b"\xe2\x84\xaa.test",  # (the Kelvin sign, which lower() makes a "k")
    b"a b",
    b"a\x00b",
    b"[::1]",
    b"",
]


def test_every_cut_and_byte_change_of_real_records() -> None:
    """Each real ClientHello and HTTP head: every prefix, every byte set to each of a few
    values, and with more bytes after it: the reference's verdict."""
    for record in HELLOS + HEADS:
        for end in range(len(record) + 1):
            assert_same(record[:end])
        assert_same(record + record[:9])
        assert_same(record + b"\x00")
        if record in HELLOS:
            values = lambda b: {0, 0xFF, b ^ 1, (b + 1) % 256, (b - 1) % 256}  # noqa: E731
        else:
            values = lambda b: set(b" :\r\n\x00\x7f/@[.\x80A")  # noqa: E731
        for at in range(len(record)):
            for value in values(record[at]):
                changed = bytearray(record)
                changed[at] = value
                assert_same(bytes(changed))


def test_cut_client_hellos_with_their_lengths_fixed() -> None:
    """Each real ClientHello cut at every length, the record's and the message's lengths
    (and the extensions', once the cut is inside them) rewritten to match: the reader
    meets the end of the data at every field, with nothing after it."""
    for hello in HELLOS:
        pos = 43  # (the record, handshake headers, legacy_version and random)
        pos += 1 + hello[pos]
        pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")
        pos += 1 + hello[pos]
        for end in range(9, len(hello) + 1):
            cut = bytearray(hello[:end])
            cut[3:5] = (end - 5).to_bytes(2, "big")
            cut[6:9] = (end - 9).to_bytes(3, "big")
            assert_same(bytes(cut))
            if end >= pos + 2:
                cut[pos : pos + 2] = (end - pos - 2).to_bytes(2, "big")
                assert_same(bytes(cut))


def test_every_small_extensions_block_and_server_name() -> None:
    """Every extensions block, and every server_name extension's data, of up to 5 bytes
    from a small alphabet, as the last bytes of the data (so no overrun can read on)."""
    alphabet = [0, 1, 2, 3, 0x61, 0xFF]
    for size in range(6):
        for block in map(bytes, itertools.product(alphabet, repeat=size)):
            assert_same(built_hello(block))
            assert_same(built_hello([(0x10, b"h2"), (0, block)]))
            assert_same(built_hello([(0, block), (0xFE0D, b"")]))


_edits = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
        st.tuples(st.just("u16"), st.integers(0, 10_000), st.integers(0, 0xFFFF)),
        st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=4)),
        st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 4)),
        st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
        st.tuples(st.just("append"), st.just(0), st.binary(min_size=1, max_size=8)),
    ),
    min_size=1,
    max_size=6,
)


def edited(record: bytes, edits: list[tuple[str, int, object]]) -> bytes:
    data = bytearray(record)
    for op, at, arg in edits:
        at %= len(data) + 1
        if op == "set" and at < len(data):
            data[at] = arg  # type: ignore[call-overload]
        elif op == "u16":
            data[at : at + 2] = struct.pack("!H", arg)
        elif op == "insert":
            data[at:at] = arg  # type: ignore[call-overload]
        elif op == "delete":
            del data[at : at + arg]  # type: ignore[operator]
        elif op == "cut":
            del data[at:]
        elif op == "append":
            data += arg  # type: ignore[arg-type]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(HELLOS + HEADS), _edits)
def test_edited_real_records(record: bytes, edits: list[tuple[str, int, object]]) -> None:
    """A real record with several bytes changed, inserted or removed, cut or extended."""
    assert_same(edited(record, edits))


_name = st.one_of(
    st.sampled_from(NAMES),
    st.from_regex(rb"[A-Za-z0-9._-]{0,24}", fullmatch=True),
    st.binary(max_size=12),
)
_sni_ext = st.builds(
    lambda entries, delta: (0, sni_data(entries, delta)),
    st.lists(st.tuples(st.sampled_from([0, 0, 0, 1, 255]), _name), max_size=3),
    st.sampled_from([0, 0, 0, -1, 1, 2]),
)
_other_ext = st.tuples(
    st.one_of(st.sampled_from([0, 0xFE0D, 0x10, 0x2B, 0x15]), st.integers(0, 0xFFFF)),
    st.binary(max_size=6),
)
_delta = st.sampled_from([0, 0, 0, 0, -1, 1, -4, 3])


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.none(), st.lists(st.one_of(_sni_ext, _other_ext), max_size=5)),
    st.binary(max_size=3),
    st.binary(max_size=4),
    st.binary(max_size=2),
    st.tuples(_delta, _delta, _delta),
    st.sampled_from([b"", b"", b"\x00", b"\x16\x03"]),
    st.integers(0, 3),
)
def test_built_client_hellos(
    extensions: list[tuple[int, bytes]] | None,
    session_id: bytes,
    ciphers: bytes,
    compression: bytes,
    deltas: tuple[int, int, int],
    trailing: bytes,
    cut: int,
) -> None:
    """Hand-built ClientHellos: random extensions (server_name lists of random entries,
    ECH, duplicates), vectors of any size, length fields a little off, bytes after the
    message or the record, the last bytes missing."""
    hello = built_hello(
        extensions,
        session_id=session_id,
        ciphers=ciphers,
        compression=compression,
        deltas=deltas,
        trailing=trailing,
    )
    assert_same(hello[: len(hello) - cut])
    assert_same(hello + b"\x17\x03\x03")


_line_end = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])
_header = st.tuples(
    st.sampled_from(
        [b"Host", b"host", b"HOST", b"X-A", b"Transfer-Encoding", b"Content-Length", b"Upgrade"]
    ),
    st.one_of(
        st.sampled_from([b"chunked", b"gzip", b"3", b"-1", b"h2c", b"a.test:80", b"[::1]:80"]),
        _name,
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS", b"G(T", b""]),
    st.one_of(
        st.sampled_from([b"/", b"*", b"a.test:443", b"http://u@a.test/", b"http://a.test?x"]),
        st.builds(
            lambda scheme, host, port, path: scheme + host + port + path,
            st.sampled_from([b"http://", b"https://", b"", b"ftp://"]),
            _name,
            st.sampled_from([b"", b":80", b":x", b":"]),
            st.sampled_from([b"", b"/", b"/p?q", b"?q"]),
        ),
    ),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]),
    st.lists(st.tuples(_header, st.sampled_from([b": ", b":", b" : ", b":\t"])), max_size=4),
    _line_end,
    st.sampled_from([b"", b"body", b"\r\n"]),
    st.integers(0, 4),
)
def test_built_http_heads(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[tuple[bytes, bytes], bytes]],
    eol: bytes,
    after: bytes,
    cut: int,
) -> None:
    """Hand-built request heads: methods, targets of every form, versions, Host headers
    (none, several, any case, IP literals, ports), framing headers, LF-only lines, bytes
    after the head, the last bytes missing."""
    head = method + b" " + target + b" " + version + eol
    head += b"".join(name + sep + value + eol for (name, value), sep in headers) + eol + after
    assert_same(head[: len(head) - cut])


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=80).map(lambda b: b"\x16\x03" + b),
        st.binary(max_size=80).map(lambda b: b"\x16\x03\x01\x00" + bytes([len(b)]) + b),
        st.binary(max_size=80).map(lambda b: b"GET / HTTP/1.1\r\n" + b),
    )
)
def test_random_bytes(data: bytes) -> None:
    """Random bytes, some behind the start of a TLS record or of a request head."""
    assert_same(data)


def test_oversized_inputs() -> None:
    """At and beyond the cap: a record of the most a record may declare, a head that
    never ends."""
    top = built_hello([(0x15, bytes(MAX_FIRST - 56))])
    assert len(top) == MAX_FIRST
    over = built_hello([(0x15, bytes(MAX_FIRST - 55))])
    for data in (top, top[:-1], top + b"\x00", over):
        assert_same(data)
    head = b"GET / HTTP/1.1\r\nX: " + b"y" * MAX_FIRST
    for end in (MAX_FIRST - 1, MAX_FIRST, MAX_FIRST + 1):
        assert_same(head[:end])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=30), st.from_regex(r"[A-Za-z0-9._\-]{0,30}", fullmatch=True)))
def test_host_name_is_the_reference(text: str) -> None:
    """host_name, which read() applies to every name it finds, unchanged."""
    assert host_name(text) == ref.host_name(text)
