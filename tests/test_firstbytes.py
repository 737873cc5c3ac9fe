"""firstbytes.read: the name in a connection's first bytes (pure; no socket opened).

ClientHellos are the real ones of Python's ssl (OpenSSL), taken from a memory BIO; the
ECH case and the malformed ones are built by hand from the RFC 8446 layout."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandlock.firstbytes import MAX_FIRST, NEED_MORE, NOT_NAMED, First, host_name, read


def client_hello(server_hostname: str | None) -> bytes:
    """The first record OpenSSL sends as a client (SNI ``server_hostname``)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def hello_with(extensions: list[tuple[int, bytes]], *, trailing: bytes = b"") -> bytes:
    """A ClientHello record with exactly these extensions."""
    exts = b"".join(struct.pack("!HH", kind, len(data)) + data for kind, data in extensions)
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"  # session id
        + b"\x00\x02\x13\x01"  # one cipher suite
        + b"\x01\x00"  # null compression
        + struct.pack("!H", len(exts))
        + exts
        + trailing
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def sni(*names: bytes, kind: int = 0) -> tuple[int, bytes]:
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(n)) + n for n in names)
    return 0, struct.pack("!H", len(entries)) + entries


def test_openssl_client_hello_names_its_sni() -> None:
    """A real ClientHello: its SNI, lower case, and the record's size."""
    hello = client_hello("Good.Example.TEST")
    assert read(hello) == First("tls", "good.example.test", len(hello))


def test_client_hello_without_sni_names_nothing() -> None:
    """No server_hostname: a whole ClientHello that names no host."""
    hello = client_hello(None)
    assert read(hello) == First("tls", None, len(hello))


def test_every_prefix_needs_more() -> None:
    """Any strict prefix of a ClientHello or an HTTP head: read on."""
    hello = client_hello("good.test")
    for end in range(1, len(hello)):
        assert read(hello[:end]) == NEED_MORE, end
    request = b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n"
    for end in range(1, len(request)):
        assert read(request[:end]) == NEED_MORE, end


def test_ech_is_named_as_such() -> None:
    """An encrypted_client_hello extension: kind "ech", whatever the outer SNI says."""
    hello = hello_with([sni(b"public.test"), (0xFE0D, b"\x00" * 8)])
    assert read(hello) == First("ech", "public.test", len(hello))


@pytest.mark.parametrize(
    "hello",
    [
        hello_with([sni(b"a.test", b"b.test")]),  # two host_names
        hello_with([sni(b"a.test"), sni(b"b.test")]),  # the extension twice
        hello_with([sni(b"127.0.0.1")]),  # an IP literal is not a name
        hello_with([sni(b"bad name.test")]),
        hello_with([sni(b"caf\xc3\xa9.test")]),
        hello_with([sni(b"")]),
        hello_with([(0, b"\x00\x00")]),  # an empty list
        hello_with([sni(b"a.test")], trailing=b"\x00"),  # bytes after the extensions
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x02\x00\x00\x00",  # not TLS 1.x
        b"\x16\x03\x01\xff\xff",  # a record beyond the cap
    ],
)
def test_malformed_client_hellos_name_nothing(hello: bytes) -> None:
    """Anything but exactly one well-formed host name: NOT_NAMED (the relay resets)."""
    assert read(hello) == NOT_NAMED


def test_http_host_header() -> None:
    """The Host header's name, its port dropped; the head's size."""
    head = b"GET /x HTTP/1.1\r\nHost: Good.Test:8080\r\nAccept: */*\r\n\r\n"
    assert read(head + b"body") == First("http", "good.test", len(head))


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", None),  # none (HTTP/1.0 may omit it)
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", None),
        (b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", None),  # they disagree
        (b"GET http://a.test:81/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "a.test"),
        (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", "a.test"),
        (b"GET http://u@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", None),
    ],
)
def test_http_names(head: bytes, name: str | None) -> None:
    """Exactly one Host, a name (not an IP literal), agreeing with an absolute target."""
    assert read(head) == First("http", name, len(head))


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x01\x02\x03",
        b"GET / HTTP/1.1\r\nHost a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",  # two (h11 refuses)
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * MAX_FIRST,  # a head beyond the cap
    ],
)
def test_other_bytes_name_nothing(data: bytes) -> None:
    """Raw bytes, another protocol, a bad or oversized head: NOT_NAMED."""
    assert read(data) == NOT_NAMED


def test_host_name() -> None:
    """Names as rules could name them; anything else None."""
    assert host_name("A.Example.Test.") == "a.example.test"
    assert host_name("_srv.x-y.test") == "_srv.x-y.test"
    for bad in ("", ".", "a..b", "a" * 64 + ".test", "1.2.3.4", "é.test", "a b", "-"):
        assert host_name(bad) is None, bad


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_read_without_error(data: bytes) -> None:
    """Arbitrary first bytes: a verdict, never an exception."""
    verdict = read(data)
    assert verdict in (NEED_MORE, NOT_NAMED) or isinstance(verdict, First)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_client_hellos_are_read_without_error(data: st.DataObject) -> None:
    """A real ClientHello with bytes changed: a verdict, never an exception; a name
    found is always a valid host name."""
    hello = bytearray(HELLO)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(hello) - 1))
        hello[at] = data.draw(st.integers(0, 255))
    verdict = read(bytes(hello))
    if isinstance(verdict, First):
        assert verdict.name is None or host_name(verdict.name) == verdict.name
    else:
        assert verdict in (NEED_MORE, NOT_NAMED)


HELLO = client_hello("good.test")
