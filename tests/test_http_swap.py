"""HTTP rules swapped while the command runs (``Process.set_policy``, ``sandlock policy``):
the next request is decided by the new rules, on a fresh connection and on one kept alive
since before the swap; a bad rule changes nothing; a run started without HTTP rules
cannot be given any.

The command is a loopback HTTP client that makes one request per line of its stdin. The
server is the test's own (tests/httpfake.py): what reached it is the proof that a refused
request never did. Traffic goes to 127.0.0.1 only; hostname rules name ``localhost``,
which is never asked of any resolver (plan.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from sandlock import AsyncProcess, PolicyError, Process, Sandbox

from .conftest import describe, run_command, sandlock_env
from .httpfake import EchoServer
from .test_daemon import DAEMON, Daemon

PY = sys.executable
TIMEOUT = 60

# Each line "fresh PATH" or "keep PATH" is a GET of PATH (Host: localhost:PORT) on a new
# connection, or on the one connection kept alive for every "keep"; answered with one
# JSON line: [status, whether that is still the first kept connection, the body].
CLIENT = r"""
import http.client, json, sys
port = int(sys.argv[1])
kept = first = None
for line in sys.stdin:
    how, path = line.split()
    if how == "keep":
        kept = kept or http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn = kept
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"localhost:{port}")
    conn.endheaders()
    if how == "keep" and first is None:
        first = conn.sock
    r = conn.getresponse()
    body = r.read().decode().strip()
    same = how == "keep" and conn.sock is not None and conn.sock is first
    if how != "keep":
        conn.close()
    print(json.dumps([r.status, same, body]), flush=True)
"""

DEFAULT_DENY = "sandlock: refused by HTTP rule `http-default-deny`"


@pytest.fixture
def web() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def _get(stdin: IO[bytes] | None, stdout: IO[bytes] | None, how: str, path: str) -> list[Any]:
    """One request by the CLIENT: [status, same kept connection, body]."""
    assert stdin is not None and stdout is not None
    stdin.write(f"{how} {path}\n".encode())
    stdin.flush()
    line = stdout.readline()
    assert line, "the client ended"
    answer: list[Any] = json.loads(line)
    return answer


def _ask(proc: Process, how: str, path: str) -> list[Any]:
    return _get(proc.stdin, proc.stdout, how, path)


def _start(web: EchoServer, **rules: Any) -> Process:
    sandbox = Sandbox(http_ports=[web.port], **rules)
    return sandbox.start([PY, "-c", CLIENT, str(web.port)])


def test_set_policy_swaps_http_rules_for_the_next_request(
    web: EchoServer, tmp_path: Path
) -> None:
    """/a/x 200 and /b/x 403, then after set_policy(http_allow=[b]) /a/x 403 and /b/x 200:
    on fresh connections and on the one kept alive since before the swap; refusals never
    reach the server, and the audit log's records name the new rules."""
    audit = tmp_path / "audit.jsonl"
    with _start(web, http_allow=["GET localhost/a/*"], audit=audit) as proc:
        assert _ask(proc, "keep", "/a/x")[:2] == [200, True]
        assert _ask(proc, "fresh", "/a/x")[0] == 200
        assert _ask(proc, "fresh", "/b/x") == [403, False, DEFAULT_DENY]
        assert _ask(proc, "keep", "/b/x") == [403, True, DEFAULT_DENY]
        proc.set_policy(http_allow=["GET localhost/b/*"], http_deny=["GET */b/secret"])
        assert _ask(proc, "fresh", "/a/x") == [403, False, DEFAULT_DENY]
        assert _ask(proc, "fresh", "/b/x")[0] == 200
        assert _ask(proc, "keep", "/a/x") == [403, True, DEFAULT_DENY]
        assert _ask(proc, "keep", "/b/x")[:2] == [200, True]
        denied = "sandlock: refused by HTTP rule `GET */b/secret`"
        assert _ask(proc, "keep", "/b/secret") == [403, True, denied]
    assert [s.target for s in web.log] == ["/a/x", "/a/x", "/b/x", "/b/x"]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    http = [(r["path"], r["status"], r["rule"]) for r in records if r.get("syscall") == "http"]
    assert http == [
        ("/a/x", 200, "GET localhost/a/*"),
        ("/a/x", 200, "GET localhost/a/*"),
        ("/b/x", 403, "http-default-deny"),
        ("/b/x", 403, "http-default-deny"),
        ("/a/x", 403, "http-default-deny"),
        ("/b/x", 200, "GET localhost/b/*"),
        ("/a/x", 403, "http-default-deny"),
        ("/b/x", 200, "GET localhost/b/*"),
        ("/b/secret", 403, "GET */b/secret"),
    ]


def test_set_policy_without_http_lists_keeps_the_http_rules_in_force(web: EchoServer) -> None:
    """A swap that gives neither HTTP list keeps the HTTP rules in force (an earlier
    swap's); giving one list empties the other."""
    with _start(web, http_allow=["GET localhost/a/*"], http_deny=["GET */a/no"]) as proc:
        proc.set_policy(http_allow=["GET localhost/b/*"])  # (the deny list: emptied)
        proc.set_policy([f"127.0.0.2:{web.port}"])  # net rules only
        assert _ask(proc, "fresh", "/b/x")[0] == 200
        assert _ask(proc, "fresh", "/a/x")[0] == 403
        net = [f"127.0.0.1:{web.port}"]  # (a deny list implies no net rule: give one)
        proc.set_policy(net, http_deny=["GET */b/no"])  # deny only: the rest passes
        assert _ask(proc, "keep", "/a/no")[0] == 200
        assert _ask(proc, "keep", "/b/no")[0] == 403
    assert [s.target for s in web.log] == ["/b/x", "/a/no"]


def test_bad_http_rule_in_set_policy_changes_nothing(web: EchoServer) -> None:
    """A bad HTTP rule, or a bad net rule beside good HTTP ones, raises PolicyError and the
    old rules, net and HTTP, go on deciding."""
    with _start(web, http_allow=["GET localhost/a/*"]) as proc:
        assert _ask(proc, "keep", "/a/x")[0] == 200
        with pytest.raises(PolicyError, match="--http-allow: `GET` is not"):
            proc.set_policy(http_allow=["GET"])
        with pytest.raises(PolicyError, match="--http-deny"):
            proc.set_policy(http_allow=["GET localhost/b/*"], http_deny=["G@T */x"])
        with pytest.raises(PolicyError, match="--net-allow"):
            proc.set_policy(["127.0.0.1:99999"], http_allow=["GET localhost/b/*"])
        with pytest.raises(PolicyError, match="not a string"):
            proc.set_policy(http_allow="GET localhost/b/*")  # (a str is a Sequence)
        assert _ask(proc, "keep", "/a/x")[:2] == [200, True]
        assert _ask(proc, "keep", "/b/x")[0] == 403
        assert _ask(proc, "fresh", "/a/x")[0] == 200
    assert [s.target for s in web.log] == ["/a/x", "/a/x", "/a/x"]


def test_a_run_without_http_rules_cannot_gain_them(web: EchoServer) -> None:
    """set_policy(http_allow=...) on a run started without HTTP rules: one-line
    PolicyError, and its requests still reach the server unchecked."""
    sandbox = Sandbox([f"127.0.0.1:{web.port}"])
    with sandbox.start([PY, "-c", CLIENT, str(web.port)]) as proc:
        with pytest.raises(PolicyError, match="started without HTTP rules") as err:
            proc.set_policy([f"127.0.0.1:{web.port}"], http_allow=["GET localhost/b/*"])
        assert "\n" not in str(err.value)
        assert _ask(proc, "fresh", "/a/x")[0] == 200
    assert [s.target for s in web.log] == ["/a/x"]


async def test_open_process_set_policy_swaps_http_rules(web: EchoServer) -> None:
    """The trio form shares set_policy: the next request on the kept-alive connection is
    decided by the swapped HTTP rules."""

    async def ask(proc: AsyncProcess, path: str) -> list[Any]:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send_all(f"keep {path}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive_some()
        answer: list[Any] = json.loads(line)
        return answer

    sandbox = Sandbox(http_ports=[web.port], http_allow=["GET localhost/a/*"])
    with trio.fail_after(TIMEOUT):
        async with sandbox.open_process([PY, "-c", CLIENT, str(web.port)]) as proc:
            assert (await ask(proc, "/a/x"))[:2] == [200, True]
            proc.set_policy(http_allow=["GET localhost/b/*"])
            assert (await ask(proc, "/a/x"))[:2] == [403, True]
            assert (await ask(proc, "/b/x"))[:2] == [200, True]
    assert [s.target for s in web.log] == ["/a/x", "/b/x"]


# ---------------------------------------------------------------------------- the daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "d.sock")
    yield d
    d.stop()


def test_policy_request_http_fields_are_checked_as_the_run_request_s() -> None:
    """A policy request's http_allow and http_deny are checked as the run request's name
    options are: lists of strings, within the rule count and length limits."""
    from sandlock._request import MAX_RULES, RequestError, check_request

    req: dict[str, Any] = {"op": "policy", "id": "x", "http_allow": ["GET */a"]}
    assert check_request(req, []) == "policy"
    assert check_request(req | {"http_allow": [], "http_deny": []}, []) == "policy"
    with pytest.raises(RequestError, match="lists of strings"):
        check_request(req | {"http_deny": "GET */b"}, [])
    with pytest.raises(RequestError, match="lists of strings"):
        check_request(req | {"http_allow": [1]}, [])
    with pytest.raises(RequestError, match="longer than 1024") as err:
        check_request(req | {"http_deny": ["GET */" + "x" * 2000]}, [])
    assert err.value.policy_error
    with pytest.raises(RequestError, match="the daemon's limit") as err:
        check_request(req | {"http_deny": ["GET */b"] * MAX_RULES}, [])
    assert err.value.policy_error
    with pytest.raises(RequestError, match="unknown field 'http_ports'"):
        check_request(req | {"http_ports": [80]}, [])  # (the run's: fixed)


def _run_client(daemon: Daemon, web: EchoServer, rules: list[str]) -> subprocess.Popen[bytes]:
    """The CLIENT under `sandlock run --daemon`, its stdin and stdout ours."""
    client = [PY, "-c", CLIENT, str(web.port)]
    return subprocess.Popen(
        [*DAEMON, "run", "--daemon", str(daemon.path), "--quiet", *rules, "--", *client],
        env=sandlock_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def _only_sandbox(daemon: Daemon) -> str:
    daemon.wait_for_sandboxes(1)
    with daemon.raw() as s:
        s.send(b'{"op": "ps"}')
        (box,) = json.loads(s.recv(65536))["sandboxes"]
    return str(box["id"])


def _policy(daemon: Daemon, box: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_command(
        [*DAEMON, "policy", "--daemon", str(daemon.path), box, *args], env=sandlock_env()
    )


def test_sandlock_policy_swaps_http_rules(daemon: Daemon, web: EchoServer) -> None:
    """`sandlock policy ID --http-allow` through the daemon decides the next request, on a
    kept-alive connection and a fresh one; a bad rule is one line, exit 2, and changes
    nothing."""
    rules = ["--http-ports", str(web.port), "--http-allow", "GET localhost/a/*"]
    with _run_client(daemon, web, rules) as proc:

        def ask(how: str, path: str) -> list[Any]:
            return _get(proc.stdin, proc.stdout, how, path)

        try:
            box = _only_sandbox(daemon)
            assert ask("keep", "/a/x")[:2] == [200, True]
            assert ask("fresh", "/b/x")[0] == 403
            res = _policy(daemon, box, "--http-allow", "GET localhost/b/*")
            assert res.returncode == 0, describe(res)
            assert ask("keep", "/a/x") == [403, True, DEFAULT_DENY]
            assert ask("keep", "/b/x")[:2] == [200, True]
            assert ask("fresh", "/b/x")[0] == 200
            assert ask("fresh", "/a/x")[0] == 403
            bad = _policy(daemon, box, "--http-allow", "GET")
            assert bad.returncode == 2, describe(bad)
            assert bad.stderr.count("\n") == 1 and "--http-allow: `GET` is not" in bad.stderr
            assert ask("keep", "/b/x")[:2] == [200, True]
            assert ask("keep", "/a/x")[0] == 403
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            proc.kill()
    assert [s.target for s in web.log] == ["/a/x", "/b/x", "/b/x", "/b/x"]


def test_sandlock_policy_cannot_give_http_rules_to_a_sandbox_without_them(
    daemon: Daemon, web: EchoServer
) -> None:
    """`sandlock policy ID --http-allow` on a sandbox started without HTTP rules: one
    line, exit 2, and the sandbox's rules stay."""
    with _run_client(daemon, web, ["--net-allow", f"127.0.0.1:{web.port}"]) as proc:
        try:
            box = _only_sandbox(daemon)
            res = _policy(daemon, box, "--http-allow", "GET localhost/b/*")
            assert res.returncode == 2, describe(res)
            assert res.stderr.count("\n") == 1, describe(res)
            assert "started without HTTP rules" in res.stderr, describe(res)
            assert _get(proc.stdin, proc.stdout, "fresh", "/a/x")[0] == 200
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            proc.kill()
    assert [s.target for s in web.log] == ["/a/x"]
