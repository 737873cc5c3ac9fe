"""The C boundary's wrappers, called the way several supervisors in threads call them;
the numbers and layouts they share with C (csrc/abi.h); the gate's entry points, leak-free."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import pyseccomp as sc
import pytest

from sandlock import _syscalls as sys_
from sandlock import launch


def test_sock_info_is_thread_safe() -> None:
    """Two threads asking about different sockets never get each other's answer (cffi
    drops the GIL during the call: a shared result buffer would mix them)."""
    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    mixed = [0, 0]

    def ask(i: int, sock: socket.socket, want: tuple[int, int, int]) -> None:
        for _ in range(20000):
            info = sys_.sock_info(sock.fileno())
            assert not isinstance(info, int)
            if (info.domain, info.type, info.protocol) != want:
                mixed[i] += 1

    threads = [
        threading.Thread(target=ask, args=(0, udp4, (2, 2, 17))),
        threading.Thread(target=ask, args=(1, tcp6, (10, 1, 6))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    udp4.close()
    tcp6.close()
    assert mixed == [0, 0]


@pytest.mark.parametrize(
    "name",
    [
        "open",
        "openat",
        "openat2",
        "connect",
        "sendto",
        "sendmsg",
        "sendmmsg",
        "bind",
        "accept",
        "accept4",
    ],
)
def test_abi_numbers_are_the_calls_the_filter_traps(name: str) -> None:
    """The filter traps calls by name (libseccomp numbers them); the gate and Python
    dispatch on abi.h's x86-64 numbers: the two agree, and so do the arches."""
    assert getattr(sys_, f"NR_{name.upper()}") == sc.resolve_syscall(sc.Arch.X86_64, name)
    assert sys_.AUDIT_ARCH == int(sc.Arch.X86_64)


def test_layouts_are_read_from_the_compiler() -> None:
    """A handoff written by C is unpacked field for field; msghdr is x86-64's 56 bytes."""
    ffi = sys_._ffi
    fields = {
        "id": 1 << 40,
        "pid": 7,
        "nr": -3,
        "arch": sys_.AUDIT_ARCH,
        "fd": 9,
        "args": [1, 2, 3, 4, 5, 1 << 63],
        "rc": -115,
    }
    raw = bytes(ffi.buffer(ffi.new("struct sandlock_handoff *", fields)))
    assert sys_._HANDOFF.unpack(raw) == (
        1 << 40,
        7,
        -3,
        sys_.AUDIT_ARCH,
        9,
        1,
        2,
        3,
        4,
        5,
        1 << 63,
        -115,
    )
    assert sys_.MSGHDR.size == sys_.MSGHDR_SIZE == 56
    assert (sys_.MMSGHDR_SIZE, sys_.MSG_LEN_OFFSET, sys_.SOCKADDR_MAX) == (64, 56, 128)


@pytest.mark.parametrize("names", [[b"a/b"], [b"a\0b"], [b"hosts", b"/"]])
def test_open_names_must_be_last_path_components(names: list[bytes]) -> None:
    """A name with a slash or a NUL could never be an open's last component: ValueError."""
    with pytest.raises(ValueError):
        sys_._names_arg(names)


def test_gate_entry_points_leak_nothing() -> None:
    """Every entry point of the gate, many times over (start, flags, names of every kind,
    destinations, clear, stats, stop): the descriptor table ends as it began."""
    child = launch.start([sys.executable, "-c", "import time; time.sleep(60)"], gate=False)
    try:
        before = set(os.listdir("/proc/self/fd"))
        for i in range(200):
            gate = sys_.Gate(child.listener, sys_.GATE_OPEN, [b"hosts", b"resolv.conf"])
            gate.set_flags(sys_.GATE_OPEN | sys_.GATE_CACHE)
            gate.set_open_names([b"x" * 255] * 8 if i % 2 else None)  # too many; none known
            gate.set_open_names(frozenset())
            gate.allow(socket.AF_INET, socket.SOCK_DGRAM, 17, bytes([127, 0, 0, i % 256]), 9)
            gate.clear()
            assert gate.stats() == (0, 0, 0, 0)
            gate.close()
        assert set(os.listdir("/proc/self/fd")) == before
    finally:
        os.kill(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)
        child.close()
