"""HTTP rules: grammar, normalisation and matching (pure; sandlock/httprules.py)."""

from __future__ import annotations

import posixpath
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandlock.errors import PolicyError
from sandlock.httprules import (
    BAD_PATH,
    DEFAULT_DENY,
    HOST_MISMATCH,
    HttpRules,
    normalise_host,
    normalise_path,
    parse_http_rule,
    parse_ports,
)


def rules(allow: list[str], deny: list[str] = (), ports: tuple[int, ...] = (80,)) -> HttpRules:  # type: ignore[assignment]
    return HttpRules.parse(allow, deny, ports)


def test_parse_the_forms() -> None:
    """Method, host kinds, port and path kinds parse as the docstring says."""
    r = parse_http_rule("GET api.example.com/v1/*", flag="--http-allow")
    assert (r.method, r.host, r.port, r.path, r.prefix) == (
        "GET",
        "api.example.com",
        None,
        "/v1/",
        True,
    )
    r = parse_http_rule("* *.Example.com:8080/x", flag="--http-allow", ports=(80, 8080))
    assert (r.method, r.host, r.port, r.path, r.prefix) == (
        None,
        "*.example.com",
        8080,
        "/x",
        False,
    )
    r = parse_http_rule("post */upload", flag="--http-deny")
    assert (r.method, r.host, r.path) == ("POST", None, "/upload")
    assert parse_http_rule("GET 127.0.0.1", flag="f").path == "/"
    assert parse_http_rule("GET 127.0.0.1", flag="f").prefix
    assert parse_http_rule("GET [::1]:80/a/../b", flag="f").host == "::1"
    assert parse_http_rule("GET [::1]:80/a/../b", flag="f").path == "/b"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("GET", "is not `METHOD HOST"),
        ("GET a b c", "is not `METHOD HOST"),
        ("", "is not `METHOD HOST"),
        ("G(T example.com/", "is not an HTTP method"),
        ("GET /x", "names no host"),
        ("GET example.com/x?q=1", "query"),
        ("GET example.com/a*b", "must be its last character"),
        ("GET example.com:81/x", "not an HTTP port"),
        ("GET example.com:80,443/x", "more than one port"),
        ("GET example.com:0/x", "--http-allow"),
        ("GET a.*.example.com/x", "--http-allow"),
        ("GET tcp://example.com/x", "--http-allow"),
        ("GET udp:/x", "--http-allow"),
        ("GET 10.0.0.0/8", None),  # (a host and the path /8: not an error)
        ("GET example.com/%ff", "bad path"),
        ("GET example.com/a%00b", "bad path"),
    ],
)
def test_bad_rules_say_one_line(spec: str, needle: str | None) -> None:
    """Every bad rule is a PolicyError naming the flag and quoting the spec."""
    if needle is None:
        parse_http_rule(spec, flag="--http-allow")
        return
    with pytest.raises(PolicyError) as info:
        parse_http_rule(spec, flag="--http-allow")
    message = str(info.value)
    assert message.startswith("--http-allow: ") and "\n" not in message
    assert needle in message


@pytest.mark.parametrize("spec", ["0", "65536", "x", "", "80,", "1234567"])
def test_bad_ports(spec: str) -> None:
    """--http-ports takes ports 1-65535 only."""
    with pytest.raises(PolicyError, match="--http-ports"):
        parse_ports([spec])


def test_ports_join() -> None:
    """--http-ports values are comma lists, joined and sorted."""
    assert parse_ports(["8080,80", "80"]) == (80, 8080)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("/", "/"),
        ("/ok/../secret", "/secret"),
        ("/ok/%2e%2e/secret", "/secret"),
        ("/ok/%2E%2E/secret", "/secret"),
        ("/ok//x", "/ok/x"),
        ("//secret", "/secret"),
        ("/ok/./x", "/ok/x"),
        ("/ok/..;/secret", "/secret"),
        ("/secret;jsessionid=1", "/secret"),
        ("/ok\\..\\secret", "/secret"),
        ("/ok%2f..%2fsecret", "/secret"),
        ("/../../etc", "/etc"),
        ("/a/b/?q=/../x", "/a/b/"),
        ("/a#frag", None),
        ("/a?q#frag", None),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/%41", "/A"),
    ],
)
def test_normalise_path(raw: str, want: str) -> None:
    """Path tricks normalise to what a server would serve."""
    assert normalise_path(raw) == want


@pytest.mark.parametrize(
    "raw", ["", "x", "*", "http://h/x", "/%ff", "/a%0a", "/a\x00", "/ok/%252e%252e/x", "/a%255C"]
)
def test_normalise_path_refuses(raw: str) -> None:
    """Non-rooted, undecodable or control-character paths are refused."""
    assert normalise_path(raw) is None


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2E%2e", "c;p"]), max_size=8))
def test_normalise_matches_posix_resolution(segments: list[str]) -> None:
    """Normalisation equals decoding, dropping ;params, then POSIX path resolution."""
    raw = "/" + "/".join(segments)
    plain = "/" + "/".join(urllib.parse.unquote(s).split(";")[0] for s in segments)
    want = posixpath.normpath(plain).replace("//", "/")
    got = normalise_path(raw)
    assert got is not None
    assert (got.rstrip("/") or "/") == (want.rstrip("/") or "/")


@given(st.text(max_size=40))
def test_normalise_is_idempotent_and_safe(text: str) -> None:
    """A normalised path is rooted, has no dot segments, no `//`, and normalises to itself."""
    got = normalise_path("/" + text)
    if got is None:
        return
    assert got.startswith("/")
    assert "//" not in got
    parts = got.split("/")
    assert "." not in parts and ".." not in parts
    assert normalise_path(urllib.parse.quote(got)) == got


@pytest.mark.parametrize(
    ("authority", "want"),
    [
        ("Example.COM.", ("example.com", None)),
        ("example.com:8080", ("example.com", 8080)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:443", ("::1", 443)),
        ("[::ffff:127.0.0.2]", ("127.0.0.2", None)),
        ("user@evil.example", None),
        ("example.com:0", None),
        ("example.com:x", None),
        ("", None),
        ("[::1", None),
        ("a b", None),
    ],
)
def test_normalise_host(authority: str, want: tuple[str, int | None] | None) -> None:
    """Host headers and URI authorities normalise; userinfo and bad ports are refused."""
    assert normalise_host(authority) == want


def test_deny_first_and_default_deny() -> None:
    """Deny wins; a non-empty allow list denies the rest."""
    r = rules(["GET api.example.com/v1/*", "* */public/*"], ["POST */upload", "GET */v1/secret"])
    assert r.decide("GET", "api.example.com", 80, "/v1/x", bound=True) == (
        True,
        "GET api.example.com/v1/*",
    )
    assert r.decide("GET", "api.example.com", 80, "/v1", bound=True).allowed
    assert r.decide("GET", "api.example.com", 80, "/v1/secret", bound=True) == (
        False,
        "GET */v1/secret",
    )
    assert r.decide("POST", "api.example.com", 80, "/upload", bound=True) == (
        False,
        "POST */upload",
    )
    assert r.decide("POST", "api.example.com", 80, "/v1/x", bound=True) == (False, DEFAULT_DENY)
    assert r.decide("GET", "api.example.com", 80, "/v2", bound=True) == (False, DEFAULT_DENY)
    assert r.decide("GET", "api.example.com", 80, None, bound=True) == (False, BAD_PATH)
    assert r.decide("PUT", "other", 80, "/public/a", bound=False) == (True, "* */public/*")


def test_deny_folds_case_allow_does_not() -> None:
    """Deny matches method and path case-insensitively, allow case-sensitively."""
    r = rules(["GET */ok/*"], ["GET */ok/secret"])
    assert not r.decide("GET", "h", 80, "/ok/SECRET", bound=True).allowed
    assert not r.decide("get", "h", 80, "/ok/secret", bound=True).allowed
    assert not r.decide("get", "h", 80, "/ok/x", bound=True).allowed
    assert not r.decide("GET", "h", 80, "/OK/x", bound=True).allowed


def test_unbound_host_is_a_mismatch() -> None:
    """A named rule matches only a request bound to the destination; `*` any."""
    r = rules(["GET api.example.com/*"])
    assert r.decide("GET", "api.example.com", 80, "/", bound=False) == (False, HOST_MISMATCH)
    assert r.decide("GET", "other.example", 80, "/", bound=False) == (False, DEFAULT_DENY)


def test_wildcard_host_and_port() -> None:
    """`*.domain` covers names under it, not the domain; `:port` limits the rule."""
    r = rules(["GET *.example.com:8080/*"], ports=(80, 8080))
    assert r.decide("GET", "a.b.example.com", 8080, "/", bound=True).allowed
    assert not r.decide("GET", "example.com", 8080, "/", bound=True).allowed
    assert not r.decide("GET", "a.example.com", 80, "/", bound=True).allowed
    assert not r.decide("GET", "aexample.com", 8080, "/", bound=True).allowed


def test_connect_needs_its_own_rule() -> None:
    """Method `*` never covers CONNECT."""
    assert not rules(["* */*"]).decide("CONNECT", "h", 80, "/", bound=True).allowed
    assert rules(["CONNECT */*"]).decide("CONNECT", "h", 80, "/", bound=True).allowed


def test_deny_only_allows_the_rest() -> None:
    """With deny rules only, other requests pass (rule None)."""
    r = rules([], ["POST */upload"])
    assert r.decide("GET", "h", 80, "/x", bound=False) == (True, None)


def test_implied_net_rules() -> None:
    """An allow rule implies TCP to its host on its port or every HTTP port."""
    r = rules(["GET example.com/*", "GET [::1]:8080/", "GET */x"], ["GET evil/*"], ports=(80, 8080))
    assert r.implied_net_rules() == [
        "tcp://example.com:80,8080",
        "tcp://[::1]:8080",
        "tcp://*:80,8080",
    ]


def test_wire_round_trip_and_checks() -> None:
    """The HTTP rules ride in the name options over the daemon wire, checked by type."""
    from sandlock._request import RequestError, check_names
    from sandlock.plan import NameOptions

    options = NameOptions(http_allow=["GET */x"], http_deny=["POST */y"], http_ports=[8080])
    wire = options.to_wire()
    check_names(wire)
    back = NameOptions.from_wire(wire)
    assert (back.http_allow, back.http_deny, back.http_ports) == (
        ("GET */x",),
        ("POST */y",),
        (8080,),
    )
    assert "http_allow" not in NameOptions().to_wire()  # (an older daemon reads it)
    wrong_types: list[dict[str, object]] = [
        {"http_allow": "GET */x"},
        {"http_deny": [1]},
        {"http_ports": [0]},
        {"http_ports": [True]},
        {"http_ports": "80"},
    ]
    for bad in wrong_types:
        with pytest.raises(RequestError):
            check_names(bad)
        with pytest.raises(PolicyError):
            NameOptions.from_wire(bad)
    with pytest.raises(RequestError, match="longer than"):
        check_names({"http_allow": ["GET */" + "x" * 2000]})


def test_the_upstream_ca_rides_as_text() -> None:
    """Through the daemon --http-upstream-ca is the file's text (its client reads the
    file): a path is refused (the daemon opens no path a client names), the text is
    checked for its type and length, and round-trips."""
    from sandlock._request import RequestError, check_names
    from sandlock._wire import MAX_CA_TEXT
    from sandlock.plan import NameOptions

    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    wire = NameOptions(http_allow=["GET */"], http_tls=True, http_upstream_ca_pem=pem).to_wire()
    check_names(wire)
    assert NameOptions.from_wire(wire).http_upstream_ca_pem == pem
    with pytest.raises(RequestError, match="opens no file a client names"):
        check_names({"http_upstream_ca": "/etc/ssl/certs/ca-certificates.crt"})
    for bad in (1, ["x"], "x" * (MAX_CA_TEXT + 1)):
        with pytest.raises(RequestError, match="http_upstream_ca_pem must be a string"):
            check_names({"http_upstream_ca_pem": bad})


def test_api_sandbox_takes_http_rules() -> None:
    """Sandbox(http_allow=..., http_deny=...): parsed at once, implying TCP to the host."""
    from sandlock import Sandbox

    box = Sandbox(http_allow=["GET 127.0.0.1/ok/*"], http_deny=["POST */x"], http_ports=[8080])
    assert box.policy.decide("tcp", bytes([127, 0, 0, 1]), 8080).allowed
    assert not box.policy.decide("tcp", bytes([127, 0, 0, 1]), 8081).allowed
    with pytest.raises(PolicyError, match="--http-allow"):
        Sandbox(http_allow=["GET"])
    with pytest.raises(PolicyError, match="not a string"):
        Sandbox(http_allow="GET */")  # type: ignore[arg-type]
