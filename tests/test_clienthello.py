"""The C ClientHello reader (csrc/clienthello.c) against the reference, firstbytes.read.

The relay's C thread lets a TLS connection through on its own only when the C reader
says NAMED; so NAMED must come only where firstbytes.read gives First("tls", name) with
the very same name, and NEED_MORE exactly where it gives NEED_MORE. Everything else is
OTHER (handed to Python, which reads it again). Real hellos of Python's ssl, hand-built
ones (tests/test_firstbytes.py's builders) and hypothesis' mutations of both; no socket.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandlock import _syscalls as sys_
from sandlock.firstbytes import NEED_MORE, First, read

from .firstsamples import CURL_HELLO, ssl_hello
from .test_firstbytes import client_hello, hello_with, sni

c_read = sys_.first_tls  # what the C reader says: its verdict, and the name when NAMED


def expected(data: bytes) -> tuple[int, str | None]:
    """What the C reader must say, given the reference's verdict."""
    ref = read(data)
    if ref == NEED_MORE and (not data or data[0] == 22):
        return sys_.FIRST_NEED_MORE, None
    if isinstance(ref, First) and ref.kind == "tls" and ref.name is not None:
        return sys_.FIRST_NAMED, ref.name
    return sys_.FIRST_OTHER, None


def agree(data: bytes) -> None:
    assert c_read(data) == expected(data), data.hex()


HELLOS = [
    CURL_HELLO,  # (example.com, ALPN, padding)
    ssl_hello("alpn.test", ["h2", "http/1.1"]),
    client_hello("good.test"),
    client_hello("Good.Example.TEST"),
    client_hello("a-b_c.x1"),
    client_hello(None),
]

CRAFTED = [
    hello_with([sni(b"good.test")]),
    hello_with([sni(b"good.test.")]),  # one trailing dot: dropped
    hello_with([sni(b"good.test..")]),
    hello_with([sni(b"GOOD.test")]),
    hello_with([sni(b"127.0.0.1")]),  # an IP literal: no name
    hello_with([sni(b"host.123")]),  # a numeric top label
    hello_with([sni(b"123.host")]),
    hello_with([sni(b"-.test")]),
    hello_with([sni(b"_a.test")]),
    hello_with([sni(b"a" * 63 + b".test")]),
    hello_with([sni(b"a" * 64 + b".test")]),
    hello_with([sni(b".".join([b"a" * 61] * 4) + b".xy")]),  # 253
    hello_with([sni(b".".join([b"a" * 61] * 4) + b".xyz")]),  # 254
    hello_with([sni(b"g\xc3\xa9.test")]),
    hello_with([sni(b"good\x00.test")]),
    hello_with([sni(b"")]),
    hello_with([sni()]),
    hello_with([sni(b"good.test", b"evil.test")]),  # two host_names
    hello_with([sni(b"good.test"), sni(b"evil.test")]),  # two SNI extensions
    hello_with([sni(b"good.test", kind=1)]),  # no host_name entry
    hello_with([(0, struct.pack("!H", 12) + b"\x01\x00\x03abc\x00\x00\x04good" + b"x")]),
    hello_with([sni(b"good.test"), (0xFE0D, bytes(8))]),  # ECH
    hello_with([(0xFE0D, bytes(8)), sni(b"good.test")]),
    hello_with([(10, b"\x00\x02\x00\x17"), sni(b"good.test"), (10, b"")]),  # a duplicate
    hello_with([sni(b"good.test")], trailing=b"\x00"),
    hello_with([]),
    hello_with([sni(b"good.test")]) + b"\x17\x03\x03\x00\x01x",  # more after the record
]


@pytest.mark.parametrize("hello", HELLOS + CRAFTED)
def test_whole_hellos_agree(hello: bytes) -> None:
    agree(hello)


def test_names_and_refusals() -> None:
    """The cases that matter most, said outright (not only 'as the reference')."""
    named = sys_.FIRST_NAMED
    assert c_read(CURL_HELLO) == (named, "example.com")
    assert c_read(HELLOS[3]) == (named, "good.example.test")
    assert c_read(hello_with([sni(b"good.test.")])) == (named, "good.test")
    for refused in CRAFTED[4:5] + CRAFTED[17:19] + CRAFTED[21:23]:  # IP, two names, ECH
        assert c_read(refused)[0] == sys_.FIRST_OTHER, refused.hex()
    assert c_read(HELLOS[5])[0] == sys_.FIRST_OTHER  # no SNI: Python refuses it


def test_every_prefix_needs_more() -> None:
    hello = HELLOS[2]
    for end in range(0, len(hello)):
        assert c_read(hello[:end])[0] == sys_.FIRST_NEED_MORE, end
    assert c_read(b"\x16\x02")[0] == sys_.FIRST_OTHER
    assert c_read(b"GET / HTTP/1.1\r\n")[0] == sys_.FIRST_OTHER  # (Python reads HTTP)


def test_a_record_longer_than_the_most_read_is_other() -> None:
    assert c_read(b"\x16\x03\x01\x40\x01")[0] == sys_.FIRST_OTHER  # 2^14 + 1
    assert c_read(b"\x16\x03\x01\x40\x00")[0] == sys_.FIRST_NEED_MORE


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_hellos_agree(data: st.DataObject) -> None:
    """Flip, cut, insert and delete bytes of real and crafted hellos."""
    hello = bytearray(data.draw(st.sampled_from(HELLOS + CRAFTED)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(hello) - 1, 0)))
        if op == "flip" and hello:
            hello[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del hello[at:]
        elif op == "insert":
            hello[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif hello:
            del hello[at : at + data.draw(st.integers(1, 4))]
    agree(bytes(hello))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b"\x16\x03" + b))
def test_random_records_agree(data: bytes) -> None:
    agree(data)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.text(alphabet="aZ09-_.\u00e9\x00", min_size=0, max_size=70), min_size=1, max_size=3
    )
)
def test_names_agree(names: list[str]) -> None:
    """Host names of every shape, in one SNI extension (several entries: refused)."""
    agree(hello_with([sni(*(n.encode() for n in names))]))
