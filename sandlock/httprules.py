"""HTTP rules (``--http-allow`` / ``--http-deny``): the grammar, path normalisation and
matching. Pure: no sockets, no DNS (the relay, :mod:`sandlock.httprelay`, asks the
policy which names resolve to the destination and passes the answer in).

One rule is ``METHOD HOST[:PORT][PATH]``::

    GET api.example.com/v1/*      GET of /v1 and everything under /v1/ on that host
    POST */upload                 POST of exactly /upload, on any host
    * *.example.com:8080/*        any method, any name under example.com, port 8080
    GET 127.0.0.1/health          an IP literal as the host ([::1] for IPv6)

- **METHOD**: an HTTP token (``GET``, ``PROPFIND``), upper-cased, or ``*`` for any
  method except ``CONNECT`` (a tunnel to wherever the server is told: only a rule that
  names ``CONNECT`` allows it).
- **HOST**: ``*`` (any host), ``*.domain`` (one or more labels in front of the domain),
  a hostname, or an IP literal; the ``--net-allow`` grammar checks it
  (:func:`sandlock.rules.parse_rule`). ``:PORT`` is one port, which must be one of
  ``--http-ports``; without it the rule holds on every HTTP port.
- **PATH**: starts with ``/``; exact, or a prefix when it ends in ``*`` (``/v1/*``
  covers ``/v1/``, ``/v1/a/b`` and ``/v1`` itself; ``/v1*`` covers ``/v10`` too). No
  path means ``/*``. No query (the query of a request is ignored). The rule's own path is
  normalised as requests are.

Deny rules are checked first and win; then, if any allow rule exists, a request no allow
rule matches is refused (``http-default-deny``); with deny rules only, the rest passes.

**Normalisation** (:func:`normalise_path`), so that a path is matched as a server would
read it: the query dropped, ``;parameters`` dropped from each segment
(``/ok/..;/secret``), percent-decoding once (``%2e%2e``, ``%2f``), ``\\`` read as ``/``,
empty segments (``//``) and ``.`` dropped, ``..`` resolved (never above the root). A path
that is not ``/``-rooted (an absolute URI's path is taken from it first), holds a ``#``
(never in a request target, RFC 9112: a server may read ``/ok#/../secret`` as
``/secret``), decodes to
invalid UTF-8, holds a control character, or still holds an encoded dot, slash or
backslash once decoded (``%252e``: for a server that decodes twice) is refused
(``http-bad-path``). Allow rules
match the path and method as sent (case-sensitive, as HTTP is); deny rules match them
case-insensitively (a case-insensitive server must not serve ``/SECRET`` past a deny of
``/secret``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple, NoReturn

from .errors import PolicyError
from .rules import WILDCARD_PREFIX, parse_rule

__all__ = [
    "BAD_PATH",
    "DEFAULT_DENY",
    "DEFAULT_PORTS",
    "HOST_MISMATCH",
    "HttpDecision",
    "HttpRule",
    "HttpRules",
    "normalise_host",
    "normalise_path",
    "parse_http_rule",
    "parse_ports",
]

ALLOW_FLAG = "--http-allow"
DENY_FLAG = "--http-deny"
PORTS_FLAG = "--http-ports"
DEFAULT_PORTS = (80,)
DEFAULT_DENY = "http-default-deny"
HOST_MISMATCH = "http-host-mismatch"
BAD_PATH = "http-bad-path"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
# A dot, slash or backslash still encoded after one decoding (``%252e``): a server or a
# proxy that decodes twice would read a path other than the one matched.
_ENCODED_AGAIN = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


class HttpRule(NamedTuple):
    """One parsed HTTP rule: ``method`` None is any (but CONNECT); ``host`` None is any,
    else a lower-cased hostname, ``*.domain`` pattern or IP address in its canonical
    form; ``port`` None is every HTTP port; ``path`` normalised, ``prefix`` if it ended
    in ``*`` (then ``path`` is what comes before the ``*``)."""

    spec: str
    method: str | None
    host: str | None
    port: int | None
    path: str
    prefix: bool

    def implied_net_rule(self, ports: Sequence[int]) -> str:
        """The ``--net-allow`` rule this allow rule implies: its host on its port (or
        on every HTTP port)."""
        shown = "*" if self.host is None else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        on = [self.port] if self.port is not None else list(ports)
        return f"tcp://{shown}:{','.join(str(p) for p in on)}"


class HttpDecision(NamedTuple):
    """The verdict on one request: ``rule`` is the deciding rule's spec, or one of
    ``DEFAULT_DENY``, ``HOST_MISMATCH``, ``BAD_PATH``; None for a request passed because
    no allow rule exists."""

    allowed: bool
    rule: str | None


def _fail(flag: str, spec: str, message: str) -> NoReturn:
    raise PolicyError(f"{flag}: {message}", flag=flag, spec=spec)


def parse_ports(specs: Iterable[str]) -> tuple[int, ...]:
    """``--http-ports`` values (each a comma list) as one sorted tuple; PolicyError if
    one is not a port."""
    found: set[int] = set()
    for spec in specs:
        for part in spec.split(","):
            text = part.strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536):
                _fail(PORTS_FLAG, spec, f"`{text}` in `{spec}` is not a port (1-65535)")
            found.add(int(text))
    if not found:
        _fail(PORTS_FLAG, "", "no port given")
    return tuple(sorted(found))


def parse_http_rule(spec: str, *, flag: str, ports: Sequence[int] = DEFAULT_PORTS) -> HttpRule:
    """Parse ``spec`` as written after ``flag`` (``--http-allow`` / ``--http-deny``);
    ``ports`` are the HTTP ports a rule's ``:PORT`` must be among."""
    parts = spec.split()
    if len(parts) != 2:
        _fail(
            flag, spec, f"`{spec}` is not `METHOD HOST[:PORT]/PATH` (e.g. `GET example.com/v1/*`)"
        )
    method_text, target = parts
    method: str | None = None
    if method_text != "*":
        if not _TOKEN.fullmatch(method_text):
            _fail(flag, spec, f"`{method_text}` in `{spec}` is not an HTTP method (or `*`)")
        method = method_text.upper()
    slash = _path_start(target)
    host_text, path_text = target[:slash], target[slash:] or "/*"
    if not host_text:
        _fail(flag, spec, f"`{spec}` names no host (write `*` for any host)")
    if "?" in path_text or "#" in path_text:
        _fail(flag, spec, f"the path in `{spec}` has a query or fragment (queries are not matched)")
    prefix = path_text.endswith("*")
    body = path_text[:-1] if prefix else path_text
    if "*" in body:
        _fail(flag, spec, f"`*` in the path of `{spec}` must be its last character")
    path = normalise_path(body)
    if path is None:
        _fail(flag, spec, f"bad path `{path_text}` in `{spec}`")
    if prefix and body.endswith("/") and not path.endswith("/"):
        path += "/"  # (normalisation drops a trailing slash only at the root: kept)
    net = parse_rule(host_text, flag=flag)
    if net.proto != "tcp" or "://" in host_text:
        _fail(flag, spec, f"`{host_text}` in `{spec}` is not a host (no scheme in HTTP rules)")
    port: int | None = None
    if net.ports is not None:
        if len(net.ports) != 1:
            _fail(flag, spec, f"`{spec}` names more than one port (one rule per port)")
        (port,) = net.ports
        if port not in ports:
            shown = ",".join(str(p) for p in ports)
            _fail(flag, spec, f"port {port} in `{spec}` is not an HTTP port (--http-ports {shown})")
    host: str | None
    if net.host is not None:
        host = net.host
    elif net.network is not None:
        if net.network.num_addresses != 1:
            _fail(flag, spec, f"`{host_text}` in `{spec}` is a network, not a host")
        host = str(net.network.network_address)
    else:
        host = None
    return HttpRule(spec, method, host, port, path, prefix)


def _path_start(target: str) -> int:
    """Where the path of a rule's ``HOST[:PORT]/PATH`` starts (its length if none)."""
    if target.startswith("["):
        close = target.find("]")
        if close >= 0:
            slash = target.find("/", close)
            return len(target) if slash < 0 else slash
    slash = target.find("/")
    return len(target) if slash < 0 else slash


def normalise_path(target: str) -> str | None:
    """The path of a request target as matched (module docstring), or None if it is
    refused. An origin-form target (``/a/b?q``) only: the caller takes an absolute URI's
    path out first."""
    path = target.split("?", 1)[0]
    if not path.startswith("/") or "#" in target:
        return None
    try:
        raw = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), path.encode("utf-8"))
        decoded = raw.decode("utf-8")
    except UnicodeError:
        return None
    if _CONTROL.search(decoded) or _ENCODED_AGAIN.search(decoded):
        return None
    out: list[str] = []
    for segment in decoded.replace("\\", "/").split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = bool(out) and decoded.endswith(("/", "\\", "/.", "/.."))
    return "/" + "/".join(out) + ("/" if trailing else "")


def normalise_host(authority: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a Host header or URI authority: the host lower-cased, one
    trailing dot dropped, an IP literal in canonical form; None if it is not one
    (userinfo, an empty host, a bad port)."""
    text = authority.strip()
    if not text or "@" in text or _CONTROL.search(text) or " " in text:
        return None
    port: int | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = _port(rest[1:])
            if port is None:
                return None
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return str(ip6.ipv4_mapped or ip6), port
    if ":" in text:
        text, _, port_text = text.rpartition(":")
        port = _port(port_text)
        if port is None or ":" in text:
            return None
    host = text.lower().removesuffix(".")
    if not host or "/" in host or "\\" in host:
        return None
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host, port


def _port(text: str) -> int | None:
    if text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536:
        return int(text)
    return None


def _host_matches(pattern: str | None, host: str) -> bool:
    if pattern is None:
        return True
    if pattern.startswith(WILDCARD_PREFIX):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _path_matches(rule: HttpRule, path: str, *, fold: bool) -> bool:
    want, seen = (rule.path.lower(), path.lower()) if fold else (rule.path, path)
    if not rule.prefix:
        return seen == want
    return seen.startswith(want) or (want.endswith("/") and seen == want[:-1] and seen != "")


def _method_matches(rule: HttpRule, method: str, *, fold: bool) -> bool:
    if rule.method is None:
        return method.upper() != "CONNECT"
    return (method.upper() if fold else method) == rule.method


class HttpRules:
    """The HTTP rules of a run, parsed once: ``decide`` on each request."""

    __slots__ = ("allow", "deny", "ports")

    def __init__(
        self, allow: Sequence[HttpRule], deny: Sequence[HttpRule], ports: Sequence[int]
    ) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.ports = frozenset(ports)

    @classmethod
    def parse(
        cls,
        allow: Sequence[str],
        deny: Sequence[str],
        ports: Sequence[int] | None = None,
        *,
        tls: bool = False,
    ) -> HttpRules:
        """The rule strings parsed (PolicyError for the first bad one); ``ports`` None
        or empty: 80, and 443 with ``tls``."""
        on = tuple(ports) if ports else DEFAULT_PORTS + ((443,) if tls else ())
        return cls(
            [parse_http_rule(s, flag=ALLOW_FLAG, ports=on) for s in allow],
            [parse_http_rule(s, flag=DENY_FLAG, ports=on) for s in deny],
            on,
        )

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def implied_net_rules(self) -> list[str]:
        """The ``--net-allow`` rules the allow rules imply (one per rule, in order)."""
        ports = sorted(self.ports)
        return [rule.implied_net_rule(ports) for rule in self.allow]

    def decide(
        self, method: str, host: str, port: int, target_path: str | None, *, bound: bool
    ) -> HttpDecision:
        """The verdict on a request of ``method`` for ``host`` (normalised) on ``port``,
        ``target_path`` already normalised (None: refused as a bad path). ``bound`` says
        whether ``host`` names the destination (it resolves, under the policy, to the
        address connected to; or is that address): a rule naming a host matches only a
        bound request, ``*`` any; an unbound request that only a named rule would have
        matched is refused as ``HOST_MISMATCH``."""
        if target_path is None:
            return HttpDecision(False, BAD_PATH)
        for rule in self.deny:
            if self._matches(rule, method, host, port, target_path, fold=True):
                return HttpDecision(False, rule.spec)
        if not self.allow:
            return HttpDecision(True, None)
        unbound = False
        for rule in self.allow:
            if self._matches(rule, method, host, port, target_path, fold=False):
                if rule.host is None or bound:
                    return HttpDecision(True, rule.spec)
                unbound = True
        return HttpDecision(False, HOST_MISMATCH if unbound else DEFAULT_DENY)

    @staticmethod
    def _matches(
        rule: HttpRule, method: str, host: str, port: int, path: str, *, fold: bool
    ) -> bool:
        return (
            (rule.port is None or rule.port == port)
            and _method_matches(rule, method, fold=fold)
            and _host_matches(rule.host, host)
            and _path_matches(rule, path, fold=fold)
        )
