"""AF_UNIX is egress: sockets served outside the sandbox need --unix-allow.

Servers started here, by the test, are "outside"; the sandboxed command's own binds are
"inside". Each refusal is checked on the receiving side: nothing in the server's accept
or receive queue.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlock import PolicyError, Sandbox

from .conftest import describe, run_command, run_sandboxed, sandlock_env
from .test_daemon import Daemon

PY = sys.executable
SANDLOCK = [PY, "-m", "sandlock"]

# Connects to each target given (a path, or @name) and prints "ok" or the errno for each.
CONNECT = textwrap.dedent("""
    import socket, sys
    for t in sys.argv[1:]:
        c = socket.socket(socket.AF_UNIX)
        name = b"\\0" + t[1:].encode() if t.startswith("@") else t
        try:
            c.connect(name)
            c.sendall(b"hello")
            print("ok")
        except OSError as e:
            print(e.errno)
        c.close()
""")


class Server:
    """A unix stream server outside any sandbox, at a path or an abstract name."""

    def __init__(self, where: Path | str, kind: int = socket.SOCK_STREAM) -> None:
        self.sock = socket.socket(socket.AF_UNIX, kind)
        if isinstance(where, Path):
            self.sock.bind(str(where))
            self.target = str(where)
        else:
            self.sock.bind(b"\0" + where.encode())
            self.target = "@" + where
        if kind == socket.SOCK_STREAM:
            self.sock.listen(4096)
        self.sock.setblocking(False)

    def arrived(self) -> int:
        """Connections (stream) or datagrams waiting: what reached this server."""
        n = 0
        while True:
            try:
                if self.sock.type == socket.SOCK_STREAM:
                    self.sock.accept()[0].close()
                else:
                    self.sock.recv(65536)
            except BlockingIOError:
                return n
            n += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """A path server in tmp_path/out/ and an abstract one, both outside."""
    (tmp_path / "out").mkdir()
    path = Server(tmp_path / "out" / "s.sock")
    abstract = Server(f"sandlock-test-{uuid.uuid4().hex}")
    yield path, abstract
    path.close()
    abstract.close()


def _lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    return res.stdout.split()


def test_outside_servers_are_refused(servers: tuple[Server, Server], tmp_path: Path) -> None:
    """With no rule, a connect to an outside path or abstract socket fails ECONNREFUSED,
    with a denial line and an audit record each, and nothing reaches the servers."""
    path, abstract = servers
    audit = tmp_path / "audit.jsonl"
    res = run_sandboxed(
        ["--audit", str(audit)], [PY, "-c", CONNECT, path.target, abstract.target]
    )
    assert _lines(res) == ["111", "111"], describe(res)
    assert (path.arrived(), abstract.arrived()) == (0, 0)
    assert f"sandlock: denied unix {path.target} (pid " in res.stderr
    assert f"sandlock: denied unix {abstract.target} (pid " in res.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    records = [r for r in lines if "event" not in r]  # (the chain's open and close)
    assert {(r["proto"], r["dst"], r["port"], r["action"]) for r in records} == {
        ("unix", path.target, None, "deny"),
        ("unix", abstract.target, None, "deny"),
    }


@pytest.mark.parametrize("form", ["path", "dir", "existing-dir", "name", "prefix"])
def test_unix_allow_lets_them_through(servers: tuple[Server, Server], form: str) -> None:
    """--unix-allow PATH, DIR/, an existing DIR, @name and @prefix* allow what they name."""
    path, abstract = servers
    rule = {
        "path": path.target,
        "dir": str(Path(path.target).parent) + "/",
        "existing-dir": str(Path(path.target).parent),
        "name": abstract.target,
        "prefix": abstract.target[:20] + "*",
    }[form]
    res = run_sandboxed(["--unix-allow", rule], [PY, "-c", CONNECT, path.target, abstract.target])
    want = ["ok", "111"] if form in ("path", "dir", "existing-dir") else ["111", "ok"]
    assert _lines(res) == want, describe(res)
    assert (path.arrived(), abstract.arrived()) == tuple(int(w == "ok") for w in want)


def test_a_directory_rule_is_not_a_name_prefix(tmp_path: Path) -> None:
    """`DIR/` covers what is beneath DIR, not a sibling whose name starts the same."""
    (tmp_path / "out").mkdir()
    (tmp_path / "outer").mkdir()
    server = Server(tmp_path / "outer" / "s.sock")
    try:
        res = run_sandboxed(
            ["--unix-allow", str(tmp_path / "out")], [PY, "-c", CONNECT, server.target]
        )
        assert _lines(res) == ["111"], describe(res)
        assert server.arrived() == 0
    finally:
        server.close()


INSIDE = textwrap.dedent("""
    import os, socket, subprocess, sys
    os.chdir(sys.argv[1])
    client = '''
    import socket, sys
    kind = int(sys.argv[2])
    name = sys.argv[1].encode().replace(b"@", b"\\\\0", 1)
    c = socket.socket(socket.AF_UNIX, kind)
    if kind == socket.SOCK_DGRAM:
        c.sendto(b"dgram", name)
    else:
        c.connect(name)
        c.sendall(b"stream")
    '''
    def serve(bind_to, kind=socket.SOCK_STREAM):
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(bind_to)
        name = s.getsockname()
        shown = "@" + name[1:].decode() if isinstance(name, bytes) else name
        if kind == socket.SOCK_STREAM:
            s.listen()
        # another process of the sandbox connects
        subprocess.run([sys.executable, "-c", client, shown, str(int(kind))], check=True)
        if kind == socket.SOCK_STREAM:
            print(s.accept()[0].recv(10).decode())
        else:
            print(s.recv(10).decode())
    serve("rel.sock")
    serve(os.path.join(sys.argv[1], "abs.sock"))
    serve(b"\\0" + sys.argv[2].encode())
    serve(b"")  # autobind
    serve("dgram.sock", socket.SOCK_DGRAM)
""")


def test_servers_inside_the_sandbox_need_no_rule(tmp_path: Path) -> None:
    """A socket a process of the sandbox binds (relative or absolute path, abstract name,
    autobind, datagram) is reachable from another process of the sandbox, with no rule."""
    res = run_sandboxed([], [PY, "-c", INSIDE, str(tmp_path), f"inside-{uuid.uuid4().hex}"])
    assert res.returncode == 0, describe(res)
    assert _lines(res) == ["stream", "stream", "stream", "stream", "dgram"]
    assert "denied" not in res.stderr


def test_inside_socket_keeps_the_umask_of_the_child(tmp_path: Path) -> None:
    """The supervisor binds for the child: the socket file gets the child's umask."""
    script = "import os, socket; os.umask(0o077); socket.socket(socket.AF_UNIX).bind('u.sock')"
    res = run_sandboxed([], [PY, "-c", script], cwd=tmp_path)
    assert res.returncode == 0, describe(res)
    assert (tmp_path / "u.sock").stat().st_mode & 0o777 == 0o700


DGRAM = textwrap.dedent("""
    import socket, sys
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        d.sendto(b"out", sys.argv[1])
        print("sent")
    except OSError as e:
        print(e.errno)
    mine = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    mine.bind(sys.argv[2])
    d.sendto(b"in", sys.argv[2])
    print(mine.recv(10).decode())
""")


def test_datagrams_to_outside_refused_inside_allowed(tmp_path: Path) -> None:
    """sendto an outside bound datagram socket is refused (nothing received); to one the
    sandbox bound, it goes."""
    outside = Server(tmp_path / "d.sock", socket.SOCK_DGRAM)
    try:
        res = run_sandboxed([], [PY, "-c", DGRAM, outside.target, str(tmp_path / "in.sock")])
        assert _lines(res) == ["111", "in"], describe(res)
        assert outside.arrived() == 0
        assert f"denied unix {outside.target} (pid " in res.stderr and "sendto)" in res.stderr
    finally:
        outside.close()


# ---- swaps: what is decided is what is reached ---------------------------------------------

# The end of both race scripts below: connect to `target` while swap() runs.
RACE = textwrap.dedent("""
    t = threading.Thread(target=swap)
    t.start()
    ok = 0
    for _ in range(1500):
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(target)
            ok += 1
        except OSError:
            pass
        c.close()
    done = True
    t.join()
    print("connected", ok)
""")

SWAP = textwrap.dedent("""
    import os, socket, sys, threading
    work, outside = sys.argv[1], sys.argv[2]
    inside = os.path.join(work, "in.sock")
    target = os.path.join(work, "p")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(inside)
    srv.listen(4096)
    def accept():
        while True:
            srv.accept()[0].close()
    threading.Thread(target=accept, daemon=True).start()
    done = False
    def swap():
        while not done:
            for f in (outside, inside):  # each socket file in turn at `target`, and back
                try:
                    os.rename(f, target)
                    os.rename(target, f)
                except OSError:
                    pass
""") + RACE


def test_renaming_sockets_under_a_connect_reaches_nothing_outside(tmp_path: Path) -> None:
    """The child moves an outside socket file and its own one in turn onto the path it
    connects to: only its own is ever reached (the inode decided on is the one reached)."""
    (tmp_path / "w").mkdir()
    outside = Server(tmp_path / "w" / "out.sock")
    try:
        res = run_sandboxed(
            ["--quiet"], [PY, "-c", SWAP, str(tmp_path / "w"), outside.target], timeout=120
        )
        assert res.returncode == 0, describe(res)
        assert int(res.stdout.split()[1]) > 0, describe(res)  # the race did run
        assert outside.arrived() == 0
    finally:
        outside.close()


LINKS = textwrap.dedent("""
    import os, socket, sys, threading
    allowed, outside = sys.argv[1], sys.argv[2]
    target = os.path.join(allowed, "s")
    os.link(outside, os.path.join(allowed, "hard"))  # a hard link into the allowed dir
    c = socket.socket(socket.AF_UNIX)
    try:
        c.connect(os.path.join(allowed, "hard"))
        print("hard-link ok")
    except OSError as e:
        print("hard-link", e.errno)
    done = False
    def swap():  # a symlink at `target`, to the allowed socket and to the outside one
        i = 0
        while not done:
            i += 1
            tmp = os.path.join(allowed, f".t{i}")
            os.symlink(outside if i % 2 else os.path.join(allowed, "a.sock"), tmp)
            os.rename(tmp, target)
""") + RACE


def test_links_into_an_allowed_directory_lead_nowhere_else(tmp_path: Path) -> None:
    """Under `--unix-allow DIR/`, neither a hard link in DIR to an outside socket nor a
    symbolic link swapped in and out reaches that socket; DIR's own socket is reached."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "other").mkdir()
    good = Server(tmp_path / "allowed" / "a.sock")
    outside = Server(tmp_path / "other" / "out.sock")
    try:
        res = run_sandboxed(
            ["--quiet", "--unix-allow", str(tmp_path / "allowed") + "/"],
            [PY, "-c", LINKS, str(tmp_path / "allowed"), outside.target],
            timeout=120,
        )
        assert res.returncode == 0, describe(res)
        lines = res.stdout.splitlines()
        assert lines[0] == "hard-link 111", describe(res)
        assert outside.arrived() == 0
        assert good.arrived() == int(lines[1].split()[1]) > 0
    finally:
        good.close()
        outside.close()


# ---- the sandlock daemon ---------------------------------------------------------------------


RAW = textwrap.dedent("""
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(sys.argv[1])
    except OSError as e:
        print(e.errno)
        sys.exit(0)
    s.send(json.dumps({"op": "policy", "id": sys.argv[2], "allow": ["*"], "deny": []}).encode())
    print(s.recv(65536).decode())
""")


def _ps(daemon: Daemon) -> list[list[str]]:
    ps = run_command([*SANDLOCK, "ps", "--daemon", str(daemon.path)], env=sandlock_env())
    assert ps.returncode == 0, describe(ps)
    return [line.split()[:5] for line in ps.stdout.splitlines()[1:]]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    """A daemon in tmp_path/d/ and the id of a sandbox it serves (sleeping)."""
    (tmp_path / "d").mkdir()
    daemon = Daemon(tmp_path / "d" / "d.sock")
    sleeper = ["--", PY, "-c", "import time; time.sleep(60)"]
    proc = subprocess.Popen(
        [*SANDLOCK, "run", "--daemon", str(daemon.path), "--net-allow", "127.0.0.1:1", *sleeper],
        env=sandlock_env(),
    )
    try:
        daemon.wait_for_sandboxes(1)
        yield daemon, _ps(daemon)[0][0]
    finally:
        proc.kill()
        proc.wait()
        daemon.stop()


def _attacks(daemon: Daemon, box: str) -> list[list[str]]:
    """Every way in: the CLI's ps and policy, and a raw wire request."""
    path = str(daemon.path)
    return [
        [PY, "-m", "sandlock", "ps", "--daemon", path],
        [PY, "-m", "sandlock", "policy", "--daemon", path, box, "--net-allow", "*"],
        [PY, "-c", RAW, path, box],
    ]


@pytest.mark.parametrize("rule", ["none", "dir", "path"])
def test_a_standalone_sandbox_cannot_reach_the_daemon(
    served: tuple[Daemon, str], rule: str
) -> None:
    """With no rule, and even with --unix-allow naming the daemon's socket or its
    directory, a sandboxed command can neither list nor change sandboxes: the daemon sees
    nothing."""
    daemon, box = served
    before = _ps(daemon)
    allow = {
        "none": [],
        "dir": ["--unix-allow", str(daemon.path.parent) + "/"],
        "path": ["--unix-allow", str(daemon.path)],
    }[rule]
    why = "no --unix-allow rule" if rule == "none" else "a sandlock daemon's socket is never"
    for cmd in _attacks(daemon, box):
        res = run_sandboxed(allow, cmd)
        assert "cannot reach a daemon" in res.stderr or res.stdout.strip() == "111", describe(res)
        assert res.returncode != 0 or res.stdout.strip() == "111", describe(res)
        assert why in res.stderr, describe(res)
    assert _ps(daemon) == before


@pytest.mark.parametrize("rule", ["none", "dir"])
def test_a_daemon_served_sandbox_cannot_reach_its_daemon(
    served: tuple[Daemon, str], rule: str
) -> None:
    """The same from a sandbox the daemon itself supervises."""
    daemon, box = served
    before = _ps(daemon)
    allow = [] if rule == "none" else ["--unix-allow", str(daemon.path.parent) + "/"]
    why = "no --unix-allow rule" if rule == "none" else "a sandlock daemon's socket is never"
    for cmd in _attacks(daemon, box):
        res = daemon.run(allow, cmd)
        assert "cannot reach a daemon" in res.stderr or res.stdout.strip() == "111", describe(res)
        assert why in res.stderr, describe(res)
    after = _ps(daemon)
    assert [row[:3] for row in after] == [row[:3] for row in before]


def test_a_sandbox_cannot_take_a_daemon_mark() -> None:
    """Binding the daemon's mark name from inside is refused (it would hide the mark)."""
    script = (
        "import socket\n"
        "try:\n"
        "    socket.socket(socket.AF_UNIX).bind(b'\\0sandlock-daemon:1:2')\n"
        "    print('bound')\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    res = run_sandboxed([], [PY, "-c", script])
    assert res.stdout.strip() == "1", describe(res)


# ---- learn, profiles, the API, bad rules -----------------------------------------------------


def test_learn_proposes_unix_allow(servers: tuple[Server, Server], tmp_path: Path) -> None:
    """learn reaches outside sockets and proposes a --unix-allow line for each; the profile
    it writes lets a run do the same."""
    path, abstract = servers
    profile = tmp_path / "p.toml"
    cmd = [PY, "-c", CONNECT, path.target, abstract.target]
    res = run_command(
        [*SANDLOCK, "learn", "--profile-out", str(profile), "--", *cmd], env=sandlock_env()
    )
    assert _lines(res)[:2] == ["ok", "ok"], describe(res)
    assert f"  --unix-allow {path.target}\n" in res.stderr, describe(res)
    assert f"  --unix-allow {abstract.target}\n" in res.stderr, describe(res)
    res = run_sandboxed(["--profile", str(profile)], cmd)
    assert _lines(res) == ["ok", "ok"], describe(res)
    assert (path.arrived(), abstract.arrived()) == (2, 2)


def test_profile_and_api(servers: tuple[Server, Server], tmp_path: Path) -> None:
    """unix_allow in a TOML profile and Sandbox(unix_allow=...) mean --unix-allow."""
    path, abstract = servers
    profile = tmp_path / "p.toml"
    profile.write_text(f"unix_allow = [{json.dumps(abstract.target)}]\n")
    cmd = [PY, "-c", CONNECT, path.target, abstract.target]
    res = run_sandboxed(["--profile", str(profile)], cmd)
    assert _lines(res) == ["111", "ok"], describe(res)
    got = Sandbox(unix_allow=[path.target]).run(cmd, capture_output=True)
    assert got.stdout is not None and got.stdout.split() == [b"ok", b"111"]
    assert [(d.proto, d.dst, d.port) for d in got.denied] == [("unix", abstract.target, None)]
    got = Sandbox.from_profile(profile).run(cmd, capture_output=True)
    assert got.stdout is not None and got.stdout.split() == [b"111", b"ok"]
    assert (path.arrived(), abstract.arrived()) == (1, 2)


@pytest.mark.parametrize("value", ["relative.sock", "", "@", "./x"])
def test_bad_rules_are_one_line_and_exit_2(value: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for how in (["run"], ["learn"]):
        res = run_command(
            [*SANDLOCK, *how, "--unix-allow", value, "--", "touch", str(marker)],
            env=sandlock_env(),
        )
        assert res.returncode == 2, describe(res)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("sandlock: --unix-allow")
    profile = tmp_path / "p.toml"
    profile.write_text(f"unix_allow = [{json.dumps(value)}]\n")
    res = run_sandboxed(["--profile", str(profile)], ["touch", str(marker)])
    assert res.returncode == 2 and res.stderr.count("\n") == 1, describe(res)
    with pytest.raises(PolicyError):
        Sandbox(unix_allow=[value])
    assert not marker.exists()


def test_bad_rule_through_the_daemon(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "d.sock")
    try:
        res = daemon.run(["--unix-allow", "rel"], ["touch", str(tmp_path / "ran")])
        assert res.returncode == 2 and res.stderr.count("\n") == 1, describe(res)
        assert "--unix-allow" in res.stderr
    finally:
        daemon.stop()
    assert not (tmp_path / "ran").exists()


def test_rules_unit(tmp_path: Path) -> None:
    """The rule grammar and matching, without a sandbox."""
    from sandlock.unixrules import UnixRules, parse_unix_rule

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = str(tmp_path / "real")
    rules = UnixRules.from_specs([f"{tmp_path}/link/s.sock", f"{real}/dir/", "@a*", "@exact"])
    assert rules.decide_path(f"{real}/s.sock").allowed  # the rule's symlink resolved
    assert rules.decide_path(f"{real}/dir/x/y.sock").allowed
    assert not rules.decide_path(f"{real}/dirx.sock").allowed
    assert not rules.decide_path(f"{real}/s.sock", links=2).allowed
    assert rules.decide_abstract(b"abc").allowed and rules.decide_abstract(b"exact").allowed
    assert not rules.decide_abstract(b"exactly").allowed
    assert parse_unix_rule(real).directory == real + "/"  # an existing directory
    for bad in ("", "x", "@", "/a\0b"):
        with pytest.raises(PolicyError):
            parse_unix_rule(bad)


def test_unix_allow_in_help() -> None:
    res = run_command([*SANDLOCK, "run", "--help"], env=sandlock_env())
    assert "--unix-allow" in res.stdout and "AF_UNIX is egress" in res.stdout


PROC_SELF = textwrap.dedent("""
    import os, socket, sys
    fd = os.open(sys.argv[1], os.O_PATH)
    c = socket.socket(socket.AF_UNIX)
    try:
        c.connect(f"/proc/self/fd/{fd}")
        print("ok")
    except OSError as e:
        print(e.errno)
""")


def test_proc_self_is_the_child(tmp_path: Path) -> None:
    """A path through /proc/self means the child's own descriptors (here an O_PATH one of
    an allowed socket), as the kernel would read it; it is decided like the socket."""
    server = Server(tmp_path / "s.sock")
    try:
        res = run_sandboxed(
            ["--unix-allow", server.target], [PY, "-c", PROC_SELF, server.target]
        )
        assert res.stdout.split() == ["ok"], describe(res)
        res = run_sandboxed([], [PY, "-c", PROC_SELF, server.target])
        assert res.stdout.split() == ["111"], describe(res)
        assert server.arrived() == 1
    finally:
        server.close()
