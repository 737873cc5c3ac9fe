"""An unspecified destination is pinned to the loopback address the policy decided on."""

from __future__ import annotations

import socket
import sys
import textwrap

from .conftest import describe, run_plain, run_sandboxed


def _listener(host: str, port: int = 0) -> socket.socket:
    s = socket.socket()
    try:
        s.bind((host, port))
    except OSError:
        s.close()
        raise
    s.listen(16)
    s.settimeout(0)
    return s


def _listeners(first: str, second: str) -> tuple[socket.socket, socket.socket]:
    """Listeners on ``first`` and ``second``, one port: a free port of ``first`` may be
    taken on ``second`` (another test's connection): then another port."""
    for _ in range(50):
        a = _listener(first)
        try:
            return a, _listener(second, a.getsockname()[1])
        except OSError:
            a.close()
    raise AssertionError(f"no port free on both {first} and {second} in 50 tries")


def _accepted(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.accept()[0].close()
            n += 1
        except BlockingIOError:
            return n


def test_connect_to_0000_reaches_127_0_0_1_not_the_bound_address() -> None:
    """0.0.0.0 is decided as 127.0.0.1, so it must reach 127.0.0.1 — natively a socket
    bound to 127.0.0.3 would reach 127.0.0.3, an address the policy never allowed."""
    bound, allowed = _listeners("127.0.0.3", "127.0.0.1")
    port = bound.getsockname()[1]
    script = textwrap.dedent(f"""
        import socket
        s = socket.socket()
        s.bind(("127.0.0.3", 0))
        s.connect(("0.0.0.0", {port}))
        s.close()
    """)
    try:
        plain = run_plain([sys.executable, "-c", script])
        assert plain.returncode == 0 and _accepted(bound) == 1, describe(plain)
        _accepted(allowed)
        res = run_sandboxed(["--net-allow", f"127.0.0.1:{port}"], [sys.executable, "-c", script])
        assert res.returncode == 0, describe(res)
        assert (_accepted(bound), _accepted(allowed)) == (0, 1)
    finally:
        bound.close()
        allowed.close()
