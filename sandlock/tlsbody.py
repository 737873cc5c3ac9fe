"""HTTP rules over TLS: a response body moved between two TLS connections in big steps.

Once the relay (httprelay.py) has checked a request and read the head of its answer,
the body's bytes need no more looking at. Through h11 and trio's ``SSLStream`` each TLS
record (16 KiB at most) costs a full trip: a read of the destination's socket sized for
one record, one ``SSLObject.read``, an h11 ``Data`` event, one ``SSLObject.write``, one
write to the command, each through trio's retry loop (the download ran at 0.14x native).
``move`` does the same work on the very ``SSLObject``s and memory BIOs of the two
streams, a batch at a time: up to READ_SIZE bytes of records read from the socket at
once, every whole record decrypted, the lot encrypted again in one ``SSLObject.write``
and written in one ``write``. Decryption and encryption stay the ``ssl`` module's; only
the I/O around them is batched. trio waits only when a socket is empty or full.

The two streams are ``trio.SSLStream``s over plain sockets (``parts`` says whether they
are, and is None on a trio whose stream no longer keeps these fields: the relay then
carries the body as before, and a test that asks for this path fails). Nothing else
uses either stream while a body moves (the exchange is the connection's one task), and
both go on as ``SSLStream``s afterwards: what ``move`` did is what their own
``receive_some``/``send_all`` would have done.

h11 stays the judge of framing as for a spliced body (httpbody.py): the relay counts the
bytes left past h11's buffer and tells the command's side of them with a ``Sized``
stand-in; exactly that many plaintext bytes are moved, and the destination's side never
sees them.
"""

from __future__ import annotations

import os
import ssl
from typing import NamedTuple

import trio

from .httpbody import Short

__all__ = ["READ_SIZE", "Parts", "move", "parts"]

READ_SIZE = 1 << 18  # bytes of records read from the destination's socket at once
_RECORD = 1 << 14  # TLS's largest plaintext record (one SSLObject.read gives one)


class Parts(NamedTuple):
    """What a ``trio.SSLStream`` is made of: its TLS state, its two memory BIOs (bytes
    from the socket, bytes for it) and the socket's descriptor."""

    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    fd: int


def parts(stream: object) -> Parts | None:
    """``stream``'s parts if it is a ``trio.SSLStream`` over a plain socket, else None."""
    if not isinstance(stream, trio.SSLStream):
        return None
    transport = stream.transport_stream
    found = [getattr(stream, name, None) for name in ("_ssl_object", "_incoming", "_outgoing")]
    tls, incoming, outgoing = found
    if (
        type(transport) is not trio.SocketStream
        or not isinstance(tls, ssl.SSLObject)
        or not isinstance(incoming, ssl.MemoryBIO)
        or not isinstance(outgoing, ssl.MemoryBIO)
    ):
        return None
    return Parts(tls, incoming, outgoing, transport.socket.fileno())


async def move(src: Parts, dst: Parts, count: int) -> None:
    """Exactly ``count`` plaintext bytes from ``src``'s TLS connection to ``dst``'s;
    Short if ``src`` ends (or either fails) first, what came before still delivered."""
    left = count
    while left:
        plain = _decrypted(src, left)
        await _write(src.fd, src.outgoing)  # (what src's TLS answers: a key update)
        if plain:
            left -= len(plain)
            written = dst.tls.write(plain)  # (a memory BIO takes all of it)
            assert written == len(plain)
            await _write(dst.fd, dst.outgoing)
            await trio.lowlevel.checkpoint()  # (a fast pair must not hold the loop)
            continue
        await _read(src)


def _decrypted(src: Parts, left: int) -> bytes:
    """The plaintext of the whole records ``src`` holds (``left`` bytes at most)."""
    pieces: list[bytes] = []
    want = left
    while want:
        try:
            piece = src.tls.read(min(want, _RECORD))
        except ssl.SSLWantReadError:
            break
        except (ssl.SSLError, ValueError) as err:  # (close_notify, a bad record, closed)
            if pieces:
                break  # (these first: the next call meets the error again)
            raise Short from err
        if not piece:
            if pieces:
                break
            raise Short
        pieces.append(piece)
        want -= len(piece)
    return b"".join(pieces)


async def _read(src: Parts) -> None:
    """Bytes from ``src``'s socket into its TLS connection (its end as the BIO's end)."""
    while True:
        try:
            data = os.read(src.fd, READ_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(src.fd)
            continue
        except OSError as err:  # (a reset)
            raise Short from err
        if data:
            src.incoming.write(data)
        else:
            src.incoming.write_eof()
        return


async def _write(fd: int, outgoing: ssl.MemoryBIO) -> None:
    """All that ``outgoing`` holds, to the socket ``fd``."""
    if not outgoing.pending:
        return
    view = memoryview(outgoing.read())
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
        except OSError as err:  # (EPIPE, a reset)
            raise Short from err
