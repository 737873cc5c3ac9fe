"""The daemon's wire format: one JSON object per SOCK_SEQPACKET record, plus descriptors.

A record is at most ``MAX_RECORD`` bytes; a longer one arrives truncated (MSG_TRUNC) and
is refused. Descriptors travel as SCM_RIGHTS on the same record. Both sides use these
helpers; the client side uses plain blocking sockets, the daemon trio sockets.

The client is on the start-up path of every `sandlock run --daemon`, where the ``json``
and ``socket`` packages would cost milliseconds (json's decoder and encoder load ``re``,
``socket`` loads ``selectors`` and ``enum``). So this module imports neither: it talks
through ``_socket``, the C module that ``socket`` wraps, and does JSON with the C
helpers of ``_json``, the very ones ``json`` runs. Whatever they do not cover (a type
the small encoder does not know, a record the scanner does not take whole, every error)
goes to the real ``json``: the bytes written and the values read are exactly json's.
The daemon parses requests with ``json.loads`` itself; its start-up is not the point.
"""

from __future__ import annotations

import _socket
import os
import struct

# typing costs a launch ~7 ms; the daemon client's path does without it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_RECORD = 64 * 1024
# The longest certificate text (--http-upstream-ca read by a daemon's client) a request
# carries, and the run's CA in a reply: room left in a record for the rest.
MAX_CA_TEXT = 48 * 1024
MAX_FDS = 8
ANC_SIZE = _socket.CMSG_SPACE(MAX_FDS * 4)
_FD = struct.Struct("i")  # a descriptor in SCM_RIGHTS is a C int


class WireError(Exception):
    """A record that is not a well-formed request or reply."""


# ---- JSON without the json package -------------------------------------------------


class _JSONDecoderSettings:
    """The settings json.JSONDecoder() hands its C scanner. json's own parse_constant maps
    NaN, Infinity and -Infinity to the floats that ``float`` makes of them."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _quote = None
    _scan = None
else:
    _quote = _json.encode_basestring_ascii  # json.dumps's strings (ensure_ascii)
    _scan = _json.make_scanner(_JSONDecoderSettings())  # type: ignore[arg-type]

_INF = float("inf")


class _Unusual(Exception):
    """A value the small encoder leaves to json.dumps."""


def _dumps(value: Any) -> str:
    """json.dumps(value, separators=(",", ":")) for the plain types messages are made of:
    exact types only (a subclass of str or int may print itself otherwise) and finite
    floats. Anything else raises _Unusual."""
    kind = type(value)
    if _quote is None:  # pragma: no cover
        raise _Unusual
    if kind is str:
        return _quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and -_INF < value < _INF:  # json writes NaN and Infinity its own way
        return float.__repr__(value)
    if kind is list or kind is tuple:
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    if kind is dict and all(type(k) is str for k in value):
        return "{" + ",".join(_quote(k) + ":" + _dumps(v) for k, v in value.items()) + "}"
    raise _Unusual


def encode(message: dict[str, Any]) -> bytes:
    try:
        text = _dumps(message)
    except _Unusual:
        import json

        text = json.dumps(message, separators=(",", ":"))
    data = text.encode()
    if len(data) > MAX_RECORD:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_RECORD}")
    return data


def loads(data: bytes) -> Any:
    """json.loads(data), by json's C scanner alone when it takes the whole record.

    The scanner is what json.loads runs. What json.loads adds (guessing the encoding,
    skipping outer whitespace, the error messages) matters only for records the scanner
    refuses, and those go to json.loads itself."""
    if _scan is not None:
        try:
            text = data.decode()
            value, end = _scan(text, 0)
            if end == len(text):
                return value
        except (StopIteration, ValueError):  # StopIteration: no value at 0
            pass
    import json

    return json.loads(data)


# ---- records ---------------------------------------------------------------------------


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]


def decode(
    data: bytes,
    ancdata: list[tuple[int, int, bytes]],
    flags: int,
    parse: Callable[[bytes], Any] | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """The message and the descriptors of one record, the JSON read by ``parse`` (the
    default: json.loads). On any error the descriptors are closed and WireError says
    what was wrong."""
    fds = _take_fds(ancdata)
    try:
        if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
            raise WireError(f"record too large (limit {MAX_RECORD} bytes, {MAX_FDS} descriptors)")
        if parse is None:
            import json

            parse = json.loads
        try:
            message = parse(data)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise WireError(f"not JSON: {err}") from None
        except RecursionError:  # a client's "[[[[..." must not end the daemon
            raise WireError("not JSON: too deeply nested") from None
        if not isinstance(message, dict):
            raise WireError("a message must be a JSON object")
    except WireError:
        close_all(fds)
        raise
    return message, fds


def _take_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % _FD.size
            fds.extend(fd for (fd,) in _FD.iter_unpack(payload[:whole]))
    return fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def send(sock: _socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    sock.sendmsg([encode(message)], rights(fds or []))


def recv(sock: _socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One record from a blocking socket, as a client reads it (with ``loads``); None at
    end of file."""
    data, ancdata, flags, _ = sock.recvmsg(MAX_RECORD, ANC_SIZE, _socket.MSG_CMSG_CLOEXEC)
    if not data and not ancdata:
        return None
    return decode(data, ancdata, flags, loads)
