"""First records for firstbytes.read, shared by tests/test_firstbytes_fast.py and
bench/firstbytes_speed.py: real ClientHellos (Python's ssl, made through memory BIOs, and
one of curl's, kept as bytes) and HTTP/1.1 request heads. Nothing here opens a socket."""

from __future__ import annotations

import ssl

# curl 7.88.1 (OpenSSL 3.0.19), `curl https://example.com/`, taken once through
# `--unix-socket` (no network): ALPN h2/http1.1, the padding extension, 517 bytes.
CURL_HELLO = bytes.fromhex(
    "1603010200010001fc0303e947f5e158ff41b0345f6ee1552f92c73cab4ceb0c980d59cfe519fb0358b3d5"
    "208571c3b4549a756736d35dfd94d129640921fdf6a5e0ac166b9911bba78c5fec003e130213031301c02c"
    "c030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d00"
    "9c003d003c0035002f00ff0100017500000010000e00000b6578616d706c652e636f6d000b000403000102"
    "000a00160014001d0017001e00190018010001010102010301040010000e000c02683208687474702f312e"
    "31001600000017000000310000000d002a0028040305030603080708080809080a080b0804080508060401"
    "05010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d"
    "0020fd145c50e1a86e80a2aab564424b01ff1b864bce69b41f56ae6132bdd703aa3f001500b2"
) + bytes(178)  # (the padding extension's zeros)

HTTP_SHORT = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
HTTP_LONG = (
    b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)


def ssl_hello(server_hostname: str | None, alpn: list[str] | None = None) -> bytes:
    """The first record Python's ssl sends as a client (memory BIOs; nothing sent)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
