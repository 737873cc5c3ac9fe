"""The daemon's listening socket: bound safely at a path, its peers' credentials, and
the descriptors that bound how many clients it can take (daemon.py)."""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
import struct

import trio

from .errors import SandlockError

__all__ = ["bind", "fd_room", "hung_up", "peer"]

FDS_PER_CLIENT = 12  # descriptors a client with a live sandbox may cost (worst case)
RESERVED_FDS = 32  # kept for the daemon itself (trio, resolvers, the DNS forwarders)


async def bind(path: str) -> trio.socket.SocketType:
    """A listening socket at ``path``, mode 0600; a stale socket file is replaced."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except FileNotFoundError:
        pass
    except ConnectionRefusedError:
        # Nobody listens: a stale socket of a dead daemon, which we replace -- or any
        # other file (connecting to a regular file is refused too), which we never touch.
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SandlockError(f"serve: {path} exists and is not a socket") from None
        os.unlink(path)
    except OSError as err:
        if err.errno != errno.ENOTSOCK:
            raise SandlockError(f"serve: cannot use {path}: {err.strerror}") from None
        raise SandlockError(f"serve: {path} exists and is not a socket") from None
    else:
        raise SandlockError(f"serve: a daemon is already listening on {path}")
    finally:
        probe.close()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)  # the socket file is born 0600: no window with wider access
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def peer(sock: trio.socket.SocketType) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return int(pid), int(uid)


def fd_room(most: int) -> int:
    """How many clients the descriptor limit leaves room for (``most`` if it sets none)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return most
    return max(1, (soft - RESERVED_FDS) // FDS_PER_CLIENT)


async def hung_up(conn: trio.socket.SocketType) -> None:
    """Return once the client has hung up (wait for ever if it sends another record
    meanwhile: that one waits its turn)."""
    await trio.lowlevel.wait_readable(conn)
    try:  # no room for descriptors: a peek must not install any
        data = await conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return
    if data:
        await trio.sleep_forever()
