"""The daemon's wire format: one JSON object per SOCK_SEQPACKET record, plus descriptors.

A record is at most ``MAX_RECORD`` bytes; a longer one arrives truncated (MSG_TRUNC) and
is refused. Descriptors travel as SCM_RIGHTS on the same record. Both sides use these
helpers; the client side uses plain blocking sockets, the daemon trio sockets.
"""

from __future__ import annotations

import array
import json
import os
import socket

# typing costs a launch ~7 ms; the daemon client's path does without it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_RECORD = 64 * 1024
MAX_FDS = 8
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * 4)


class WireError(Exception):
    """A record that is not a well-formed request or reply."""


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_RECORD:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_RECORD}")
    return data


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def decode(
    data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int
) -> tuple[dict[str, Any], list[int]]:
    """The message and the descriptors of one record. On any error the descriptors are
    closed and WireError says what was wrong."""
    fds = _take_fds(ancdata)
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise WireError(f"record too large (limit {MAX_RECORD} bytes, {MAX_FDS} descriptors)")
        try:
            message = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WireError(f"not JSON: {err}") from None
        if not isinstance(message, dict):
            raise WireError("a message must be a JSON object")
    except WireError:
        close_all(fds)
        raise
    return message, fds


def _take_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            fds.extend(a)
    return fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    sock.sendmsg([encode(message)], rights(fds or []))


def recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One record from a blocking socket; None at end of file."""
    data, ancdata, flags, _ = sock.recvmsg(MAX_RECORD, _ANC_SIZE, socket.MSG_CMSG_CLOEXEC)
    if not data and not ancdata:
        return None
    return decode(data, ancdata, flags)


ANC_SIZE = _ANC_SIZE
