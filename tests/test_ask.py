"""Asking before refusing (issue 13, part 1): Sandbox(on_unlisted=...), sandlock run --ask.

Real commands, real sockets, loopback only: an unlisted destination is a sink on
127.0.0.1 on a port no rule names; the sinks count what arrived."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from sandlock import Allow, AskRequest, Deny, NameOptions, Sandbox

from .conftest import Sinks
from .dnsfake import FakeUpstream

PY = sys.executable
SLOW = 60  # generous: catches hangs, times nothing

pytestmark = pytest.mark.usefixtures("gate_mode")

# Each argument HOST:PORT is a connect (in order); one line per connect: its errno (0 ok).
CONNECTS = textwrap.dedent("""
    import socket, sys
    for arg in sys.argv[1:]:
        host, port = arg.rsplit(":", 1)
        s = socket.socket()
        s.settimeout(20)
        try:
            s.connect((host, int(port)))
            print(0, flush=True)
        except OSError as e:
            print(e.errno, flush=True)
        finally:
            s.close()
""")


class Recorder:
    """An ask callback that answers ``verdict`` and keeps every request."""

    def __init__(self, verdict: object = Allow.ONCE, delay: float = 0.0) -> None:
        self.verdict = verdict
        self.delay = delay
        self.requests: list[AskRequest] = []
        self._lock = threading.Lock()

    def __call__(self, request: AskRequest) -> object:
        with self._lock:
            self.requests.append(request)
        if self.delay:
            time.sleep(self.delay)
        return self.verdict


def _run(sb: Sandbox, *targets: str) -> tuple[list[int], object]:
    res = sb.run([PY, "-c", CONNECTS, *targets], capture_output=True, timeout=SLOW)
    assert res.exit_code == 0, res
    assert res.stdout is not None
    return [int(x) for x in res.stdout.split()], res


def test_allow_once_then_the_next_call_asks_again(sinks: Sinks) -> None:
    """Allow.ONCE lets one call through; the next call to the same place asks again."""
    sink = sinks.tcp()
    asked = Recorder(Allow.ONCE)
    sb = Sandbox(on_unlisted=asked)
    errnos, _ = _run(sb, sink.target, sink.target)
    assert errnos == [0, 0]
    assert sink.settle().count == 2
    assert len(asked.requests) == 2
    req = asked.requests[0]
    assert (req.proto, req.dst, req.port, req.syscall) == ("tcp", "127.0.0.1", sink.port, "connect")
    assert req.pid > 0 and req.argv[:2] == (PY, "-c") and req.process_name.startswith("python")


def test_allow_run_is_remembered(sinks: Sinks) -> None:
    """Allow.RUN: the destination is allowed for the rest of the run, asked once; the
    next run asks again (each run has answers of its own)."""
    sink = sinks.tcp()
    asked = Recorder(Allow.RUN)
    sb = Sandbox(on_unlisted=asked)
    errnos, _ = _run(sb, *[sink.target] * 4)
    assert errnos == [0] * 4
    assert sink.settle().count == 4
    assert len(asked.requests) == 1
    _run(sb, sink.target)
    assert len(asked.requests) == 2


def test_deny_refuses_and_is_recorded(sinks: Sinks, tmp_path: Path) -> None:
    """Deny: the call is refused (nothing arrives), recorded with rule ask:deny."""
    sink = sinks.tcp()
    audit = tmp_path / "audit.jsonl"
    sb = Sandbox(audit=audit, on_unlisted=Recorder(Deny))
    errnos, res = _run(sb, sink.target)
    assert errnos == [111]
    assert sink.settle().count == 0
    assert [d.rule for d in res.denied] == ["ask:deny"]  # type: ignore[attr-defined]
    rules = [json.loads(line).get("rule") for line in audit.read_text().splitlines()]
    assert "ask:deny" in rules


def test_every_answer_is_an_audit_record(sinks: Sinks, tmp_path: Path) -> None:
    """ask:once and ask:run are audit records too, with the destination."""
    once, always = sinks.tcp(), sinks.tcp()
    audit = tmp_path / "audit.jsonl"
    sb = Sandbox(
        audit=audit,
        on_unlisted=lambda r: Allow.ONCE if r.port == once.port else Allow.RUN,
    )
    errnos, _ = _run(sb, once.target, always.target)
    assert errnos == [0, 0]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    seen = {(r.get("port"), r.get("rule"), r.get("action")) for r in records}
    assert (once.port, "ask:once", "allow") in seen
    assert (always.port, "ask:run", "allow") in seen


def test_unanswered_in_time_is_refused(sinks: Sinks) -> None:
    """No answer within ask_timeout: refused (ask:timeout); the run goes on."""
    sink = sinks.tcp()
    release = threading.Event()

    def slow(request: AskRequest) -> object:
        release.wait(SLOW)
        return Allow.RUN

    sb = Sandbox(on_unlisted=slow, ask_timeout=0.3)
    try:
        started = time.monotonic()
        errnos, res = _run(sb, sink.target)
        assert time.monotonic() - started < SLOW / 2
    finally:
        release.set()
    assert errnos == [111]
    assert sink.settle().count == 0
    assert [d.rule for d in res.denied] == ["ask:timeout"]  # type: ignore[attr-defined]


def test_a_callback_that_raises_denies(sinks: Sinks, capsys: pytest.CaptureFixture[str]) -> None:
    """A callback that raises: the call is refused, the error said once on stderr, and
    the supervisor goes on (the next call is asked, and allowed)."""
    sink = sinks.tcp()
    calls = []

    def flaky(request: AskRequest) -> object:
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return Allow.ONCE

    errnos, _ = _run(Sandbox(on_unlisted=flaky), sink.target, sink.target)
    assert errnos == [111, 0]
    assert sink.settle().count == 1
    err = capsys.readouterr().err
    assert "ask: the callback failed" in err and "boom" in err and "Traceback" not in err


def test_a_net_deny_match_is_never_asked(sinks: Sinks) -> None:
    """An explicit --net-deny match is refused without asking; an allowed one is not asked."""
    denied, allowed = sinks.tcp(), sinks.tcp()
    asked = Recorder(Allow.RUN)
    sb = Sandbox([allowed.target], [denied.target], on_unlisted=asked)
    errnos, _ = _run(sb, denied.target, allowed.target)
    assert errnos == [111, 0]
    assert asked.requests == []
    assert denied.settle().count == 0 and allowed.settle().count == 1


THREADS = textwrap.dedent("""
    import socket, sys, threading
    targets = sys.argv[1:]
    n = 16
    barrier = threading.Barrier(n)
    out = [None] * n
    def one(i):
        host, port = targets[i % len(targets)].rsplit(":", 1)
        s = socket.socket()
        s.settimeout(30)
        barrier.wait()
        try:
            s.connect((host, int(port)))
            out[i] = 0
        except OSError as e:
            out[i] = e.errno
        s.close()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts: t.start()
    for t in ts: t.join()
    print(*out)
""")


def test_sixteen_threads_four_destinations_four_asks(sinks: Sinks) -> None:
    """16 threads reach 4 unlisted destinations at once: exactly 4 asks (concurrent
    asks for one destination share its answer), every connection arrives."""
    four = [sinks.tcp() for _ in range(4)]
    asked = Recorder(Allow.RUN, delay=0.5)
    res = Sandbox(on_unlisted=asked).run(
        [PY, "-c", THREADS, *[s.target for s in four]], capture_output=True, timeout=SLOW
    )
    assert res.exit_code == 0, res
    assert res.stdout is not None and res.stdout.split() == [b"0"] * 16
    assert sorted(r.port for r in asked.requests) == sorted(s.port for s in four)  # type: ignore[type-var]
    assert [s.settle().count for s in four] == [4, 4, 4, 4]


FLOW = textwrap.dedent("""
    import socket, sys, threading
    unlisted, allowed = sys.argv[1], sys.argv[2]
    def connect(target):
        host, port = target.rsplit(":", 1)
        s = socket.socket()
        s.settimeout(30)
        try:
            s.connect((host, int(port)))
            return 0
        except OSError as e:
            return e.errno
        finally:
            s.close()
    waiting = []
    t = threading.Thread(target=lambda: waiting.append(connect(unlisted)))
    t.start()
    others = [connect(allowed) for _ in range(20)]
    t.join()
    print(waiting[0], *others)
""")


def test_other_calls_flow_while_an_ask_waits(sinks: Sinks) -> None:
    """While one thread's call waits for an answer, another thread's allowed calls are
    answered: the callback answers only once 20 of them arrived at their sink."""
    unlisted, allowed = sinks.tcp(), sinks.tcp()
    seen: list[int] = []

    def wait_for_the_others(request: AskRequest) -> object:
        deadline = time.monotonic() + 20
        while allowed.settle().count < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.append(allowed.count)
        return Allow.ONCE

    sb = Sandbox([allowed.target], on_unlisted=wait_for_the_others)
    res = sb.run(
        [PY, "-c", FLOW, unlisted.target, allowed.target], capture_output=True, timeout=SLOW
    )
    assert res.exit_code == 0, res
    assert res.stdout is not None and res.stdout.split() == [b"0"] * 21
    assert seen == [20]
    assert unlisted.settle().count == 1


async def test_async_callback_under_run_async(sinks: Sinks) -> None:
    """A coroutine function is awaited in the run's trio loop (run_async)."""
    sink = sinks.tcp()
    asked: list[AskRequest] = []

    async def decide(request: AskRequest) -> object:
        asked.append(request)
        await trio.sleep(0.05)
        return Allow.ONCE if len(asked) == 1 else Deny

    with trio.fail_after(SLOW):
        res = await Sandbox(on_unlisted=decide).run_async(
            [PY, "-c", CONNECTS, sink.target, sink.target], capture_output=True
        )
    assert res.exit_code == 0, res
    assert res.stdout is not None and res.stdout.split() == [b"0", b"111"]
    assert len(asked) == 2
    assert sink.settle().count == 1


def test_process_asks_too(sinks: Sinks) -> None:
    """Sandbox.start (a Process served by a thread of its own) asks the same way."""
    sink = sinks.tcp()
    asked = Recorder(Allow.RUN)
    with Sandbox(on_unlisted=asked).start([PY, "-c", CONNECTS, sink.target]) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read().split() == [b"0"]
        assert proc.wait(SLOW) == 0
    assert len(asked.requests) == 1 and sink.settle().count == 1


def test_bad_arguments() -> None:
    """on_unlisted must be callable and ask_timeout positive: said at once."""
    with pytest.raises(TypeError, match="on_unlisted"):
        Sandbox(on_unlisted="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ask_timeout"):
        Sandbox(on_unlisted=Recorder(), ask_timeout=0)


# --- DNS mode ----------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake upstream on port 53 of its own loopback address."""
    address = f"127.0.{random.randrange(1, 255)}.153"
    with FakeUpstream(address, 53) as upstream:
        yield upstream


LOOKUP = textwrap.dedent("""
    import socket, sys
    name, port = sys.argv[1], int(sys.argv[2])
    try:
        ip = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as e:
        print("nx", e.errno)
        raise SystemExit(0)
    s = socket.socket()
    s.settimeout(20)
    try:
        s.connect((ip, port))
        print(ip, 0)
    except OSError as e:
        print(ip, e.errno)
""")


@pytest.mark.parametrize("verdict", [Allow.RUN, Allow.ONCE, Deny])
def test_dns_mode_asks_about_names(fake: FakeUpstream, sinks: Sinks, verdict: object) -> None:
    """In DNS mode a lookup of an unlisted name asks about the name. RUN adds a hostname
    rule: the connect to its address needs no second ask. ONCE answers the lookup; the
    connect asks again, naming the host. Deny: NXDOMAIN, never forwarded."""
    sink = sinks.tcp()
    fake.add("listed.test", "A", ["127.0.0.2"])  # (an answer only: nothing connects there)
    fake.add("asked.test", "A", ["127.0.0.1"])
    asked = Recorder(verdict)
    options = NameOptions(dns_upstream=f"{fake.address}:{fake.port}", dns_allow_private=True)
    sb = Sandbox(["listed.test:1"], names=options, on_unlisted=asked)
    res = sb.run(
        [PY, "-c", LOOKUP, "asked.test", str(sink.port)], capture_output=True, timeout=SLOW
    )
    assert res.exit_code == 0, res
    assert res.stdout is not None
    first = asked.requests[0]
    assert (first.proto, first.dst, first.port, first.host) == (
        "dns",
        "asked.test",
        None,
        "asked.test",
    )
    if verdict is Deny:
        assert res.stdout.split()[0] == b"nx"
        assert ("asked.test", "A", "udp") not in fake.queries
        assert {r.proto for r in asked.requests} == {"dns"}
        return
    assert res.stdout.split() == [b"127.0.0.1", b"0"]
    assert sink.settle().count == 1
    protos = [r.proto for r in asked.requests]
    if verdict is Allow.RUN:
        assert set(protos) == {"dns"}  # (A and AAAA may each ask: never the connect)
    else:
        assert protos[-1] == "tcp" and asked.requests[-1].host == "asked.test"


# --- the CLI -----------------------------------------------------------------------------


def _pty_run(
    args: list[str], answers: bytes, timeout: float = SLOW
) -> tuple[int, bytes, bytes, bytes]:
    """``sandlock run ARGS`` with a pseudo-terminal as its controlling terminal (a new
    session, TIOCSCTTY via os.login_tty) but stdout/stderr pipes; ``answers`` typed on the
    terminal as each prompt appears. (exit status, terminal output, stdout, stderr)"""
    pid, fd = os.forkpty()  # the child: new session, the pty its controlling terminal
    if pid == 0:  # pragma: no cover - the child
        try:
            out = os.open(os.environ["ASK_OUT"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(os.environ["ASK_ERR"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.execv(PY, [PY, "-m", "sandlock", "run", *args])
        finally:
            os._exit(127)
    tty = bytearray()
    todo = list(answers)
    deadline = time.monotonic() + timeout
    status = None
    try:
        while time.monotonic() < deadline:
            import select

            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                tty += chunk
                while todo and tty.count(b"[N]o") > len(answers) - len(todo):
                    os.write(fd, bytes([todo.pop(0)]) + b"\n")
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
                break
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"sandlock --ask did not finish; terminal: {bytes(tty)!r}")
    finally:
        os.close(fd)
    out = Path(os.environ["ASK_OUT"]).read_bytes()
    err = Path(os.environ["ASK_ERR"]).read_bytes()
    return status, bytes(tty), out, err


def test_cli_prompts_on_the_terminal(
    sinks: Sinks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ask prompts on the controlling terminal, never the command's stdout/stderr: one
    line (what, who, [o]nce / [a]lways / [N]o); 'o' allows once, then 'a' for the run,
    then nothing more is asked; the summary shows the answers."""
    once, always = sinks.tcp(), sinks.tcp()
    monkeypatch.setenv("ASK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("ASK_ERR", str(tmp_path / "err"))
    args = [
        "--ask",
        "--summary",
        "--",
        PY,
        "-c",
        CONNECTS,
        once.target,
        always.target,
        always.target,
    ]
    status, tty, out, err = _pty_run(args, b"oa")
    assert status == 0, (tty, err)
    assert out.split() == [b"0", b"0", b"0"]
    assert tty.count(b"[N]o") == 2, tty
    first = tty.decode().splitlines()[0]
    assert f"127.0.0.1:{once.port}" in first and "python" in first and "pid" in first
    assert b"[o]nce / [a]lways / [N]o" in tty
    assert b"[N]o" not in out + err
    assert once.settle().count == 1 and always.settle().count == 2
    assert b"ask:once" in err and b"ask:run" in err  # (the summary's ACTION column)


def test_cli_prompt_no_refuses(
    sinks: Sinks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enter alone (or anything but o/a) at the prompt is No: refused."""
    sink = sinks.tcp()
    monkeypatch.setenv("ASK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("ASK_ERR", str(tmp_path / "err"))
    status, tty, out, _err = _pty_run(["--ask", "--", PY, "-c", CONNECTS, sink.target], b"x")
    assert status == 0 and out.split() == [b"111"], tty
    assert sink.settle().count == 0


def test_cli_ask_without_a_terminal_is_an_error() -> None:
    """No controlling terminal: one clear line at start, exit 2, the command never run."""
    proc = subprocess.run(
        [PY, "-m", "sandlock", "run", "--ask", "--", PY, "-c", "print('ran')"],
        capture_output=True,
        timeout=SLOW,
        start_new_session=True,  # (no controlling terminal)
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "--ask" in err and "terminal" in err, err


def test_cli_ask_with_a_daemon_is_refused(tmp_path: Path) -> None:
    """--ask with --daemon: one line, exit 2 (the daemon cannot reach this terminal)."""
    proc = subprocess.run(
        [PY, "-m", "sandlock", "run", "--daemon", str(tmp_path / "d.sock"), "--ask", "--", "true"],
        capture_output=True,
        timeout=SLOW,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "--ask" in err and "--daemon" in err, err


INJECT = textwrap.dedent("""
    import fcntl, os, socket, sys, termios, threading, time
    tty = os.open("/dev/tty", os.O_RDWR)
    def typing():
        for _ in range(30):
            try:
                for ch in b"a\\r":
                    fcntl.ioctl(tty, termios.TIOCSTI, bytes([ch]))
            except OSError as e:
                print("tiocsti", e.errno, flush=True)
                return
            time.sleep(0.05)
        print("tiocsti", 0, flush=True)
    t = threading.Thread(target=typing)
    t.start()
    s = socket.socket()
    host, port = sys.argv[1].rsplit(":", 1)
    try:
        s.connect((host, int(port)))
        print("connect", 0, flush=True)
    except OSError as e:
        print("connect", e.errno, flush=True)
    t.join()
""")


def test_cli_the_command_cannot_type_the_answer(
    sinks: Sinks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command shares the terminal: TIOCSTI (typing `a` into it while its connect
    waits for the prompt) is refused, so nobody answers and the connect is refused."""
    sink = sinks.tcp()
    monkeypatch.setenv("ASK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("ASK_ERR", str(tmp_path / "err"))
    args = ["--ask", "--ask-timeout", "2", "--", PY, "-c", INJECT, sink.target]
    status, tty, out, err = _pty_run(args, b"")
    assert status == 0, (tty, err)
    assert sorted(out.decode().splitlines()) == ["connect 111", "tiocsti 1"], (tty, out)
    assert b"no answer in time" in tty
    assert sink.settle().count == 0


SENDTO = textwrap.dedent("""
    import socket, sys
    host, port = sys.argv[1].rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        try:
            s.sendto(b"x", (host, int(port)))
            print(0, flush=True)
        except OSError as e:
            print(e.errno, flush=True)
""")


def test_udp_sendto_asks(sinks: Sinks) -> None:
    """A UDP sendto to an unlisted destination asks too; Allow.RUN: asked once, every
    datagram arrives."""
    sink = sinks.udp()
    asked = Recorder(Allow.RUN)
    res = Sandbox(on_unlisted=asked).run(
        [PY, "-c", SENDTO, sink.target], capture_output=True, timeout=SLOW
    )
    assert res.exit_code == 0 and res.stdout is not None, res
    assert res.stdout.split() == [b"0"] * 3
    assert [(r.proto, r.port, r.syscall) for r in asked.requests] == [("udp", sink.port, "sendto")]
    assert sink.settle().count == 3


def test_profile_ask_turns_the_prompt_on(tmp_path: Path) -> None:
    """`ask = true` in a profile is --ask for `sandlock run --profile` (here: no terminal,
    so the one-line error); a non-boolean is a profile error."""
    profile = tmp_path / "p.toml"
    profile.write_text("net_allow = []\nask = true\n")
    cmd = [PY, "-m", "sandlock", "run", "--profile", str(profile), "--", PY, "-c", "print(1)"]
    proc = subprocess.run(
        cmd, capture_output=True, timeout=SLOW, start_new_session=True, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 2 and proc.stdout == b""
    assert "--ask: no terminal" in proc.stderr.decode()
    profile.write_text('ask = "yes"\n')
    proc = subprocess.run(cmd, capture_output=True, timeout=SLOW)
    assert proc.returncode == 2 and "`ask` must be true or false" in proc.stderr.decode()


RENAMED = textwrap.dedent("""
    import ctypes, socket, sys
    ctypes.CDLL(None).prctl(15, b"\\x1b[2K\\x1b[1Gok\\x07", 0, 0, 0)  # PR_SET_NAME
    host, port = sys.argv[1].rsplit(":", 1)
    s = socket.socket()
    try:
        s.connect((host, int(port)))
        print(0)
    except OSError as e:
        print(e.errno)
""")


def test_cli_prompt_shows_no_escape_sequences(
    sinks: Sinks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process name is the command's to choose: its escape sequences (erase the line,
    ring the bell) reach the terminal as `?`, never as control characters."""
    sink = sinks.tcp()
    monkeypatch.setenv("ASK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("ASK_ERR", str(tmp_path / "err"))
    status, tty, out, _err = _pty_run(["--ask", "--", PY, "-c", RENAMED, sink.target], b"n")
    assert status == 0 and out.split() == [b"111"], tty
    prompt = tty.split(b"[N]o")[0]
    assert b"\x1b" not in prompt and b"\x07" not in prompt
    assert b"?[2K?[1Gok?" in prompt


def test_dns_answers_are_audit_records(fake: FakeUpstream, sinks: Sinks, tmp_path: Path) -> None:
    """A lookup's answer is the lookup's audit record (rule ask:run), and the connect that
    follows is allowed by the hostname rule that answer added."""
    sink = sinks.tcp()
    fake.add("listed.test", "A", ["127.0.0.2"])
    fake.add("asked.test", "A", ["127.0.0.1"])
    audit = tmp_path / "audit.jsonl"
    options = NameOptions(dns_upstream=f"{fake.address}:{fake.port}", dns_allow_private=True)
    sb = Sandbox(["listed.test:1"], audit=audit, names=options, on_unlisted=Recorder(Allow.RUN))
    res = sb.run(
        [PY, "-c", LOOKUP, "asked.test", str(sink.port)], capture_output=True, timeout=SLOW
    )
    assert res.exit_code == 0 and res.stdout is not None and res.stdout.split()[1] == b"0", res
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    lookups = [r for r in records if r.get("syscall") == "dns" and r.get("host") == "asked.test"]
    assert lookups and {r["rule"] for r in lookups} == {"ask:run"}
    assert {r["action"] for r in lookups} == {"allow"}
    connects = [r for r in records if r.get("syscall") == "connect" and r.get("port") == sink.port]
    assert [(r["rule"], r["host"]) for r in connects] == [("asked.test", "asked.test")]


SWAP = textwrap.dedent("""
    import ctypes, socket, struct, sys, threading
    libc = ctypes.CDLL(None, use_errno=True)
    def name(port):
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + \\
            socket.inet_aton("127.0.0.1") + bytes(8)
    asked, other, fifo = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    buf = ctypes.create_string_buffer(name(asked), 16)
    def swap():
        with open(fifo, "rb") as f:  # the callback opens it while the connect waits
            f.read()
        ctypes.memmove(buf, name(other), 16)
    t = threading.Thread(target=swap)
    t.start()
    s = socket.socket()
    rc = libc.connect(s.fileno(), buf, 16)
    print(rc, ctypes.get_errno() if rc else 0)
    t.join()
""")


def test_an_address_changed_while_waiting_is_asked_about(sinks: Sinks, tmp_path: Path) -> None:
    """The command changes the connect's address while its ask waits: the answer about
    the first address does not cover the second, which is asked about in turn (the call
    is decided again on a fresh copy); refused, nothing arrives anywhere."""
    first, second = sinks.tcp(), sinks.tcp()
    fifo = tmp_path / "swap"
    os.mkfifo(fifo)
    asked: list[int | None] = []

    def answer(request: AskRequest) -> object:
        asked.append(request.port)
        if request.port == first.port:
            with open(fifo, "wb"):  # let the command swap the address now
                pass
            time.sleep(0.3)
            return Allow.ONCE
        return Deny

    res = Sandbox(on_unlisted=answer).run(
        [PY, "-c", SWAP, str(first.port), str(second.port), str(fifo)],
        capture_output=True,
        timeout=SLOW,
    )
    assert res.exit_code == 0 and res.stdout is not None, res
    assert res.stdout.split() == [b"-1", b"111"]
    assert asked == [first.port, second.port]
    assert first.settle().count == 0 and second.settle().count == 0


async def test_open_process_with_an_async_callback(sinks: Sinks) -> None:
    """open_process (served in the caller's loop) awaits a coroutine callback there."""
    sink = sinks.tcp()
    asked: list[AskRequest] = []

    async def decide(request: AskRequest) -> object:
        asked.append(request)
        return Allow.RUN

    with trio.fail_after(SLOW):
        sb = Sandbox(on_unlisted=decide)
        async with sb.open_process([PY, "-c", CONNECTS, sink.target, sink.target]) as proc:
            assert await proc.wait() == 0
    assert len(asked) == 1 and sink.settle().count == 2


EXITS = textwrap.dedent("""
    import os, socket, sys, threading, time
    host, port = sys.argv[1].rsplit(":", 1)
    connect = lambda: socket.create_connection((host, int(port)))  # noqa: E731
    threading.Thread(target=connect, daemon=True).start()
    time.sleep(0.5)
    os._exit(3)
""")


def test_a_command_that_exits_while_asked_does_not_wait_for_the_answer(sinks: Sinks) -> None:
    """The command exits while one of its calls waits for an answer: the run ends then,
    not when the ask times out (the unanswered callback is left behind)."""
    sink = sinks.tcp()
    release = threading.Event()

    def never(request: AskRequest) -> object:
        release.wait(SLOW)
        return Allow.RUN

    try:
        started = time.monotonic()
        res = Sandbox(on_unlisted=never, ask_timeout=SLOW).run(
            [PY, "-c", EXITS, sink.target], capture_output=True, timeout=SLOW
        )
        took = time.monotonic() - started
    finally:
        release.set()
    assert res.exit_code == 3
    assert took < SLOW / 4, took
    assert sink.settle().count == 0


MMSG = textwrap.dedent("""
    import ctypes, socket, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]
    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
    ports = [int(p) for p in sys.argv[1:]]
    names = [ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET)
             + struct.pack("!H", p) + socket.inet_aton("127.0.0.1") + bytes(8), 16)
             for p in ports]
    data = ctypes.create_string_buffer(b"x", 1)
    iov = iovec(ctypes.cast(data, ctypes.c_void_p), 1)
    vec = (mmsghdr * len(ports))()
    for i, n in enumerate(names):
        vec[i].hdr.name = ctypes.cast(n, ctypes.c_void_p)
        vec[i].hdr.namelen = 16
        vec[i].hdr.iov = ctypes.pointer(iov)
        vec[i].hdr.iovlen = 1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start, results = 0, []
    while start < len(ports):
        rc = libc.sendmmsg(s.fileno(), ctypes.byref(vec, start * ctypes.sizeof(mmsghdr)),
                           len(ports) - start, 0)
        results.append(rc if rc >= 0 else -ctypes.get_errno())
        if rc <= 0:
            break
        start += rc
    print(*results)
""")


def test_sendmmsg_asks_entry_by_entry(sinks: Sinks) -> None:
    """sendmmsg to two unlisted destinations: the first entry asks; an unlisted later
    entry ends the call with a short count (the entries before it sent once), and the
    program's next call, starting there, asks about it."""
    one, two = sinks.udp(), sinks.udp()
    asked = Recorder(Allow.RUN)
    res = Sandbox(on_unlisted=asked).run(
        [PY, "-c", MMSG, str(one.port), str(two.port)], capture_output=True, timeout=SLOW
    )
    assert res.exit_code == 0 and res.stdout is not None, res
    assert res.stdout.split() == [b"1", b"1"]
    assert [(r.port, r.syscall) for r in asked.requests] == [
        (one.port, "sendmmsg"),
        (two.port, "sendmmsg"),
    ]
    assert one.settle().count == 1 and two.settle().count == 1


def test_verify_names_leaves_asked_calls_to_the_answer(fake: FakeUpstream, sinks: Sinks) -> None:
    """With --verify-names, a connect allowed by an answer (which named the host the
    lookup asked about) goes straight to its address, not through the name relay,
    which knows no rule for that host and would reset it: the person allowed it."""
    sink = sinks.tcp()
    fake.add("listed.test", "A", ["127.0.0.2"])
    fake.add("asked.test", "A", ["127.0.0.1"])
    asked = Recorder(Allow.ONCE)
    options = NameOptions(dns_upstream=f"{fake.address}:{fake.port}", dns_allow_private=True)
    sb = Sandbox(["listed.test:1"], names=options, verify_names=True, on_unlisted=asked)
    script = LOOKUP + "s.sendall(b'hello')\ns.close()\n"
    res = sb.run(
        [PY, "-c", script, "asked.test", str(sink.port)], capture_output=True, timeout=SLOW
    )
    assert res.exit_code == 0 and res.stdout is not None, res
    assert res.stdout.split() == [b"127.0.0.1", b"0"]
    assert asked.requests[-1].host == "asked.test"
    assert sink.settle().count == 1 and sink.nbytes == 5
