"""The launch path without argparse, json and socket: the fast reader of common `run`
lines agrees with the parser, the small JSON codec with json, main() with its callers.
(Runs through a real daemon are in test_daemon.py.)"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from sandlock import _wire
from sandlock._fastrun import parse_run
from sandlock.cli import build_parser

from .conftest import describe, run_command, sandlock_env

COMMON = [
    ["run", "--", "/bin/true"],
    ["run", "--"],
    ["run", "--daemon", "/d.sock", "--", "sh", "-c", "exit 3"],
    ["run", "--daemon=/d.sock", "--net-allow", "127.0.0.1:80", "--", "true"],
    ["run", "--net-allow=udp://127.0.0.1:53", "--net-allow", "[::1]:443", "--", "x"],
    ["run", "--net-deny", "127.0.0.2", "--net-deny=10.0.0.0/8", "--", "x", "--net-allow", "y"],
    ["run", "--daemon", "/a", "--daemon", "/b", "--", "x"],  # the last one wins
    ["run", "--daemon=", "--", "x"],  # empty: supervise here
    ["run", "--net-allow=a=b", "--net-allow", "", "--", "x"],
    ["run", "--net-allow", "*", "--", "--", "-h", "--quiet"],
    ["run", "--net-allow=--", "--daemon=--", "--", "x"],  # argparse would drop "--"
]


@pytest.mark.parametrize("daemon_env", [None, "", "/env.sock"])
@pytest.mark.parametrize("argv", COMMON)
def test_the_fast_reader_gives_what_the_parser_gives(
    argv: list[str], daemon_env: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For the common `run` lines the fast reader makes exactly the parser's namespace,
    $SANDLOCK_DAEMON included."""
    if daemon_env is None:
        monkeypatch.delenv("SANDLOCK_DAEMON", raising=False)
    else:
        monkeypatch.setenv("SANDLOCK_DAEMON", daemon_env)
    fast = parse_run(argv, {} if daemon_env is None else {"SANDLOCK_DAEMON": daemon_env})
    assert fast is not None
    assert vars(fast) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-h"],
        ["run", "-h"],
        ["run", "--help", "--", "x"],
        ["run", "--daemon", "/d.sock", "-h", "--", "x"],
        ["run", "--quiet", "--", "x"],
        ["run", "--audit", "a.jsonl", "--", "x"],
        ["run", "--daemon", "/d.sock", "--summary", "--", "x"],
        ["run", "--net-allow", "h:1", "--no-dns-proxy", "--", "x"],
        ["run", "--keep-fds", "3", "--", "x"],
        ["run", "--profile=p.toml", "--", "x"],
        ["run", "--daem", "/d.sock", "--", "x"],  # an abbreviation argparse would take
        ["run", "--net-allow", "--", "x"],  # a missing value
        ["run", "--net-allow", "-1", "--", "x"],  # a value that looks like an option
        ["run", "--daemon"],
        ["run", "--daemon", "/d.sock", "x"],  # no "--"
        ["run", "x", "--", "y"],
        ["learn", "--", "x"],
        ["ps", "--daemon", "/d.sock"],
        ["policy", "--daemon", "/d.sock", "abc", "--net-allow", "x"],
    ],
)
def test_other_lines_are_left_to_the_parser(argv: list[str]) -> None:
    """Anything but the common forms gets None: the parser reads it, help and errors."""
    assert parse_run(argv, {"SANDLOCK_DAEMON": "/env.sock"}) is None


def test_help_and_usage_errors_are_the_parsers() -> None:
    """A line the fast reader leaves alone shows the parser's help and its one-line usage
    errors, unchanged."""
    base = [sys.executable, "-m", "sandlock", "run"]
    plain = run_command([*base, "-h"], env=sandlock_env())
    with_daemon = run_command([*base, "--daemon", "/nonexistent.sock", "-h"], env=sandlock_env())
    assert plain.returncode == with_daemon.returncode == 0, describe(with_daemon)
    assert "--net-allow" in plain.stdout and with_daemon.stdout == plain.stdout
    bad = run_command([*base, "--daemon", "/d.sock", "--net-allow"], env=sandlock_env())
    assert bad.returncode == 2, describe(bad)
    assert bad.stderr == (
        "sandlock run: argument --net-allow: expected one argument (see 'sandlock run --help')\n"
    )


MESSAGES: list[object] = [
    {},
    {"op": "rules", "allow": ["127.0.0.1:80", "udp://[::1]:53"], "deny": [], "names": None},
    {"names": {"virtual_hosts": True, "dns_proxy": None, "ttl_min": 30.0, "ttl_max": 3600.0}},
    {"cmd": ["é", "日本", "\U0001f600", "tab\there", 'quote"back\\slash', "\x00\x1f\x7f"]},
    {"n": [0, -1, 2**70, 1.5, 1e300, -0.0, 5e-324], "t": (1, "two"), "b": [True, False]},
    {"lone": "\ud800"},
    {"nested": [[[]], {"a": {"b": [{}]}}]},
    # Beyond the small encoder, left to json.dumps: the same bytes either way.
    {"nan": float("nan"), "inf": [float("inf"), -float("inf")]},
    {"keys": {1: "a", None: "b", 2.5: "c", False: "d"}},
]


class _Str(str):
    def __str__(self) -> str:
        return "other"


class _Int(int):
    def __repr__(self) -> str:
        return "other"


@pytest.mark.parametrize("message", [*MESSAGES, {"s": _Str("x")}, {"i": [_Int(5)]}])
def test_encode_writes_exactly_what_json_writes(message: dict[str, object]) -> None:
    """The wire encoder's bytes are json.dumps's (compact separators, ASCII escapes)."""
    assert _wire.encode(message) == json.dumps(message, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "data",
    [
        *(json.dumps(m).encode() for m in MESSAGES[:-2]),
        b'{"ok":true,"trap_open":false}',
        b'{"a": NaN, "b": -Infinity, "c": Infinity, "d": 1e5, "e": -0}',
        b'  {"ws": 1}\n',  # outer whitespace: json.loads's business
        '{"x": "\u00e9"}'.encode("utf-16"),  # json.loads guesses the encoding
        b'\xef\xbb\xbf{"bom": 1}',
        b'{"surrogate": "\xed\xa0\x80"}',
        b'"just a string"',
        b"[1, 2]",
    ],
)
def test_loads_reads_what_json_reads(data: bytes) -> None:
    """The reply reader's values are json.loads's, whatever the record."""
    got, want = _outcome(_wire.loads, data), _outcome(json.loads, data)
    assert repr(got) == repr(want)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b'{"a": 1} x', b'{"a": 1', b'{"a": "\x01"}', b"\xff\xfe\xfd", b"{'a': 1}"],
)
def test_loads_fails_as_json_fails(data: bytes) -> None:
    """A bad record raises json's own error (a ValueError), with json's message."""
    got, want = _outcome(_wire.loads, data), _outcome(json.loads, data)
    assert isinstance(want, ValueError) and type(got) is type(want)
    assert str(got) == str(want)


def _outcome(loads: object, data: bytes) -> object:
    try:
        return loads(data)  # type: ignore[operator]
    except ValueError as err:
        return err


def test_records_round_trip_with_descriptors() -> None:
    """Descriptors go out as one SCM_RIGHTS payload of C ints and are read back from it
    (a trailing partial int ignored)."""
    payload = _wire.rights([5, 7])[0]
    assert _wire._take_fds([payload]) == [5, 7]
    level, kind, data = payload
    assert _wire._take_fds([(level, kind, data + b"\x01\x02")]) == [5, 7]
    assert _wire.rights([]) == []


IN_PROCESS = textwrap.dedent(
    """
    import sys
    from sandlock.cli import main
    try:
        main(["run", "--", "sh", "-c", "exit 3"])
    except SystemExit as e:
        print("SystemExit", e.code)
    """
)


def test_main_called_in_process_raises_system_exit() -> None:
    """main(argv) from Python raises SystemExit with the status (only the console script,
    main(), leaves through os._exit)."""
    res = run_command([sys.executable, "-c", IN_PROCESS], env=sandlock_env())
    assert (res.returncode, res.stdout) == (0, "SystemExit 3\n"), describe(res)
