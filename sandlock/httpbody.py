"""HTTP rules: a response body moved by the kernel instead of through h11 and Python.

Once the relay (httprelay.py) has checked a request and read the head of its answer,
the body's bytes need no more looking at: h11 would copy each read into its buffer and
out again, and trio would write it from the supervisor's one thread. For a plain-HTTP
response framed by ``Content-Length`` (the common download), ``counted`` says how many
bytes are left after what h11 has buffered already, and ``move`` splices exactly that
many from the destination's socket to the command's through a pipe (``splice(2)``: no
copy into user space; one wake-up of Python per pipe-full, PIPE_SIZE bytes).

h11 stays the one judge of framing on both sides: the command's side (h11 as server) is
told of the body by a ``Data`` event whose ``data`` is a ``Sized`` stand-in of the right
length, sent with ``send_with_data_passthrough`` (h11's sendfile seam: its
Content-Length writer counts ``len(data)`` and hands the object back untouched), so it
still refuses a wrong count and knows when the response ends. The destination's side
(h11 as client) never sees the spliced bytes: the relay gives it a fresh
``h11.Connection`` for the next request when the connection is kept alive, or closes it.

Not spliced: TLS (the bytes are decrypted and encrypted again, in batches: tlsbody.py,
with the same count and the same stand-in); through h11 and Python as before: bodies
of other framings (chunked, until-close), bodies shorter than ``MIN_SPLICE`` past what
was buffered, request bodies (the command's side must read them through h11 to reach
the next request), and a response that comes while the request's body is still going.
"""

from __future__ import annotations

import os

import h11
import trio

from .relay import PIPE_SIZE, open_pipe

__all__ = ["MIN_SPLICE", "Short", "Sized", "counted", "keeps_alive", "move"]

MIN_SPLICE = 1 << 16  # bytes left (past h11's buffer) below which h11 carries the body
_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_NO_BODY = frozenset((204, 304))


class Sized:
    """The stand-in for ``n`` bytes in a ``Data`` event (h11 reads only its length)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class Short(Exception):
    """The source ended (or failed) before the count: the body was cut short."""


def counted(request: h11.Request, response: h11.Response, buffered: int) -> int:
    """The body bytes of ``response`` (to ``request``) left to read past the ``buffered``
    ones h11 holds, if the body is framed by one Content-Length and that many are worth
    a splice; else 0."""
    if request.method == b"HEAD" or response.status_code in _NO_BODY:
        return 0
    length: int | None = None
    for name, value in response.headers:  # (h11 gives names lower-cased, values checked)
        if name == b"transfer-encoding":
            return 0
        if name == b"content-length":
            length = int(value)  # (h11 accepted the response: one valid number)
    if length is None:
        return 0
    left = length - buffered
    return left if left >= MIN_SPLICE else 0


def keeps_alive(request: h11.Request, response: h11.Response) -> bool:
    """Whether the destination's connection may carry the next request after this
    exchange (HTTP/1.1 and no ``Connection: close`` from either side)."""
    if response.http_version != b"1.1" or request.http_version != b"1.1":
        return False
    for event in (request, response):
        for name, value in event.headers:
            if name == b"connection" and b"close" in value.lower():
                return False
    return True


async def move(src: int, dst: int, count: int) -> None:
    """Splice exactly ``count`` bytes from the socket ``src`` to the socket ``dst``
    (both non-blocking); Short if ``src`` ends or either fails first (what was read is
    still delivered before)."""
    r, w = open_pipe()
    try:
        left = count
        while left:
            try:
                n = os.splice(src, w, min(left, PIPE_SIZE), flags=_SPLICE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                continue
            except OSError as err:
                raise Short from err
            if n == 0:
                raise Short
            left -= n
            while n:
                try:
                    n -= os.splice(r, dst, n, flags=_SPLICE)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
                except OSError as err:
                    raise Short from err
    finally:
        os.close(r)
        os.close(w)
