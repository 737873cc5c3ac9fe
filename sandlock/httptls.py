"""TLS interception for HTTP rules (``--http-tls``): an ephemeral CA per run, leaf
certificates minted per name, and the CA put into the trust bundles the command opens.

- **The CA** (:class:`Interceptor`): an EC P-256 key and a self-signed certificate made
  when a run starts, valid for a day, ``CA:TRUE, pathlen 0``, name-constrained to
  nothing (leaves carry exact names). Its private key lives only in this object: it is
  never written anywhere, not even to a memfd (the ``cryptography`` signer takes it from
  memory).
- **Leaves**: one per name (the ClientHello's SNI, or the address connected to when
  there is none), signed by the CA, cached per run; each one's ``ssl`` server context is
  loaded through a memfd that is closed right after (the ``ssl`` module reads
  certificates from paths only). ALPN offers ``http/1.1`` only: the relay parses
  HTTP/1.1 (h11), and a client that wanted h2 falls back to it.
- **Upstream**: the supervisor's own TLS client, verifying the server against the
  host's trust store (``ssl.create_default_context``) plus ``--http-upstream-ca`` (tests),
  for the SNI the command sent (or the address, with none): the command's own trust
  decisions (``-k``, pinned keys) do not reach the server, sandlock's do.
- **Trust injection** (:func:`bundle_paths`, :func:`inject`): each known CA bundle path that
  exists on the host (Debian/Ubuntu, Fedora/RHEL, Alpine, openSUSE, OpenSSL's default
  file, ``SSL_CERT_FILE``, certifi's bundle in the sandlock venv and in ``VIRTUAL_ENV``)
  is served to the command as its content plus the CA, through the virtual files
  (vfiles.py); the host's files stay untouched.
"""

from __future__ import annotations

import datetime
import glob
import ipaddress
import os
import ssl
import sys
from collections.abc import Mapping

__all__ = ["BUNDLES", "Interceptor", "bundle_paths"]

BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine (and Arch, Gentoo)
    "/usr/lib/ssl/cert.pem",  # OpenSSL's default file on Debian/Ubuntu (Python's ssl)
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL, CentOS
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # Fedora, RHEL
    "/etc/pki/tls/cert.pem",  # Fedora, RHEL: OpenSSL's default file
    "/etc/ssl/cert.pem",  # Alpine, OpenSSL's default file
    "/etc/ssl/ca-bundle.pem",  # openSUSE
)
_LIFETIME = datetime.timedelta(days=1)
_MAX_LEAVES = 4096  # names minted per run before the cache starts over


def bundle_paths(environ: Mapping[str, str]) -> list[str]:
    """The CA bundle files, existing on this host, the command may open: the known
    paths, ``SSL_CERT_FILE`` of ``environ``, and certifi's ``cacert.pem`` of the venv
    sandlock runs from and of ``VIRTUAL_ENV``."""
    found = [*BUNDLES]
    if environ.get("SSL_CERT_FILE"):
        found.append(environ["SSL_CERT_FILE"])
    for prefix in {sys.prefix, environ.get("VIRTUAL_ENV", "")}:
        if prefix:
            found += glob.glob(
                os.path.join(prefix, "lib", "python3*", "site-packages", "certifi", "cacert.pem")
            )
    out: dict[str, None] = {}
    for path in found:
        if os.path.isabs(path) and os.path.isfile(path):
            out[os.path.normpath(path)] = None
    return list(out)


def _quiet_undecodable_sni() -> None:
    """An SNI that is not ASCII never reaches our callback: ``ssl`` fails to decode it,
    fails the handshake (good), and reports the UnicodeDecodeError through
    ``sys.unraisablehook``, whose default prints a traceback on stderr: a command could
    fill our stderr with them. This hook (installed once, in front of the one there)
    drops exactly that report (a decoding error of the very bytes reported) and passes
    every other on."""
    previous = sys.unraisablehook
    if getattr(previous, "_sandlock_sni", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        err, obj = unraisable.exc_value, unraisable.object
        if isinstance(err, UnicodeDecodeError) and isinstance(obj, bytes) and err.object == obj:
            return
        previous(unraisable)

    hook._sandlock_sni = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class Interceptor:
    """One run's CA, its leaves and the upstream TLS context."""

    def __init__(self, upstream_ca: str | None = None, upstream_pem: str | None = None) -> None:
        """``upstream_ca``: a CA file the upstream is verified against too (tests);
        ``upstream_pem``: the same as text (a daemon's client read the file)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sandlock"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"sandlock run CA {os.getpid()}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self._ca.public_bytes(serialization.Encoding.PEM)
        """The CA's certificate (public), PEM: what the bundles get, --http-ca-out writes."""
        self._leaves: dict[str, ssl.SSLContext] = {}
        self._bases: dict[str, ssl.SSLContext] = {}
        self._named: dict[int, str] = {}  # id(leaf context) -> its name
        self.upstream = ssl.create_default_context()
        if upstream_ca is not None:
            self.upstream.load_verify_locations(cafile=upstream_ca)
        if upstream_pem is not None:
            self.upstream.load_verify_locations(cadata=upstream_pem)
        self.upstream.set_alpn_protocols(["http/1.1"])
        _quiet_undecodable_sni()

    def base_context(self, address: str) -> ssl.SSLContext:
        """The server context a connection to ``address`` starts with: a leaf for the
        address (what a client that sends no SNI gets), switched to a leaf for the SNI
        by its callback when there is one (:meth:`sni_of` then names it)."""
        ctx = self._bases.get(address)
        if ctx is None:
            if len(self._bases) >= _MAX_LEAVES:
                self._bases.clear()
            ctx = self._bases[address] = self._mint(address)
            ctx.sni_callback = self._on_sni
        return ctx

    def _on_sni(
        self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object
    ) -> int | None:
        if name is None:
            return None
        name = name.lower().removesuffix(".")
        try:
            conn.context = self._leaf(name)
        except ValueError:  # (not a name a certificate can hold)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    def _leaf(self, name: str) -> ssl.SSLContext:
        ctx = self._leaves.get(name)
        if ctx is None:
            if len(self._leaves) >= _MAX_LEAVES:
                self._leaves.clear()
                self._named.clear()
            ctx = self._leaves[name] = self._mint(name)
            self._named[id(ctx)] = name
        return ctx

    def sni_of(self, ctx: ssl.SSLContext) -> str | None:
        """The SNI a handshake ended with, from the context it ended with (None: none)."""
        name = self._named.get(id(ctx))
        return name if name is not None and self._leaves.get(name) is ctx else None

    def _mint(self, name: str) -> ssl.SSLContext:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            if not name.isascii() or not name or len(name) > 253:
                raise ValueError(f"not a certificate name: {name!r}") from None
            alt = x509.DNSName(name)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        pem = leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        fd = os.memfd_create("sandlock-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return ctx

    def inject(self, set_file: object, environ: Mapping[str, str]) -> list[str]:
        """Serve each bundle of :func:`bundle_paths` with the CA appended, through
        ``set_file(path, content)`` (VirtualFiles.set); the paths served."""
        assert callable(set_file)
        served = []
        for path in bundle_paths(environ):
            try:
                with open(path, "rb") as f:
                    content = f.read()
            except OSError:
                continue
            if content and not content.endswith(b"\n"):
                content += b"\n"
            set_file(path, content + b"# sandlock --http-tls: this run's CA\n" + self.ca_pem)
            served.append(path)
        return served
