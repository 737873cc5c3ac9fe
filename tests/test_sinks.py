"""The test sinks themselves: a count the end-to-end tests trust must be exact."""

from __future__ import annotations

import socket

from .conftest import TcpSink, UdpSink


def test_tcp_sink_settles_amid_closing_connections():
    """A marker that arrives in the same wake-up as other connections' EOFs: the sink
    drains and closes those while handling the marker, and must not then trip over them
    (it once did, and the thread died: "did not settle" after 20 s)."""
    sink = TcpSink("127.0.0.1")
    try:
        total = 0
        for _ in range(30):
            conns = [socket.create_connection(("127.0.0.1", sink.port)) for _ in range(100)]
            for conn in conns:
                conn.close()
            total += len(conns)
            assert sink.settle().count == total
    finally:
        sink.close()


def test_udp_sink_counts_every_datagram():
    sink = UdpSink("127.0.0.1")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(500):
                s.sendto(b"x" * (i % 7), ("127.0.0.1", sink.port))
        settled = sink.settle()
        assert (settled.count, settled.nbytes) == (500, sum(i % 7 for i in range(500)))
    finally:
        sink.close()
