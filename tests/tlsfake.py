"""Loopback HTTP and HTTPS servers for tests, with a CA minted per test (cryptography).

    with WebServer(root, tls=Authority(["good.test", "evil.test"])) as web:
        ... GET https://good.test:{web.port}/ trusting web.tls.ca_file ...
        assert web.accepted == 1

The server serves ``root``'s files (a bare git repository's too: git's "dumb" HTTP
protocol) and counts every connection it accepts, before any TLS handshake: a
connection the sandbox must stop never reaches it, so ``accepted`` stays 0.
"""

from __future__ import annotations

import datetime
import functools
import http.server
import socket
import ssl
import threading
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_ca(
    common_name: str, path_length: int | None = 0
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate valid from yesterday to the day after tomorrow, and
    its key."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca, ca_key


class Authority:
    """A CA and one leaf certificate for ``names``, written under ``directory``."""

    def __init__(self, names: list[str], directory: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca, ca_key = make_ca("sandlock test CA")
        ca_name = ca.subject
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(pem))
        self.cert_file = directory / "leaf.pem"
        self.cert_file.write_bytes(leaf.public_bytes(pem))
        self.key_file = directory / "leaf.key"
        self.key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None
    accepted = 0

    def get_request(self) -> tuple[socket.socket, object]:
        conn, addr = self.socket.accept()
        self.accepted += 1
        return conn, addr

    def finish_request(self, request: object, client_address: object) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)  # type: ignore[arg-type]
            return
        assert isinstance(request, socket.socket)
        request.settimeout(20)
        with self.tls.wrap_socket(request, server_side=True) as wrapped:
            super().finish_request(wrapped, client_address)  # type: ignore[arg-type]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # (resets and failed handshakes are what some tests make)


class WebServer:
    """Serves ``root`` on 127.0.0.1, over TLS with ``tls``; counts connections."""

    def __init__(self, root: Path, tls: Authority | None = None) -> None:
        handler = functools.partial(_Handler, directory=str(root))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.tls = tls.server_context() if tls is not None else None
        self.tls = tls
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return self._server.accepted

    def __enter__(self) -> WebServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
