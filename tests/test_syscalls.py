"""The C boundary's wrappers, called the way several supervisors in threads call them."""

from __future__ import annotations

import socket
import threading

from sandlock import _syscalls as sys_


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
