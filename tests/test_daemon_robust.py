"""The daemon survives any one of its clients, and checks everything it is handed.

One daemon serves a victim sandbox throughout: it connects to a loopback sink every
0.2 s, with an audit log, so that every connect is decided in the daemon's event loop.
Each case below (the seven ways the daemon used to break) and the fuzzer then check
that the victim's connects kept succeeding, the daemon is alive, and its descriptors
and threads are back where they were.
"""

from __future__ import annotations

import array
import json
import os
import resource
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandlock import launch

from .conftest import Sinks, TcpSink, describe
from .dnsfake import FakeUpstream
from .test_daemon import PY, Daemon

VICTIM = """
import socket, sys, time
out = open(sys.argv[1], "a", buffering=1)
while True:
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=30).close()
        out.write("ok\\n")
    except OSError as e:
        out.write(f"err {{e.errno}}\\n")
    time.sleep(0.2)
"""


def _count(path: str) -> int:
    try:
        return len(os.listdir(path))
    except FileNotFoundError:
        return -1


@dataclass
class Served:
    daemon: Daemon
    ok: TcpSink
    bad: TcpSink
    victim: subprocess.Popen[str]
    victim_log: Path
    base: tuple[int, int] = (0, 0)

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid

    def usage(self) -> tuple[int, int]:
        """(descriptors, threads) of the daemon."""
        return _count(f"/proc/{self.pid}/fd"), _count(f"/proc/{self.pid}/task")

    def lines(self) -> list[str]:
        return self.victim_log.read_text().splitlines()

    def victim_goes_on(self, since: int, need: int = 3) -> None:
        """The victim made ``need`` more connects since line ``since``, all allowed."""
        deadline = time.monotonic() + 30
        while len(self.lines()) < since + need:
            assert self.victim.poll() is None, "the victim sandbox ended"
            assert time.monotonic() < deadline, "the victim's connects stalled"
            time.sleep(0.1)
        assert set(self.lines()) == {"ok"}, self.lines()[-5:]

    def check(self, since: int, wait: float = 20) -> None:
        """Alive, the victim going on, descriptors and threads back to the baseline."""
        assert self.daemon.proc.poll() is None, "the daemon died"
        self.victim_goes_on(since)
        deadline = time.monotonic() + wait
        while not self.at_baseline():
            assert time.monotonic() < deadline, (
                f"daemon (fds, threads) {self.usage()}, was {self.base}"
            )
            time.sleep(0.2)

    def at_baseline(self) -> bool:
        fds, threads = self.usage()
        return fds <= self.base[0] and threads <= self.base[1]

    def cpu(self) -> float:
        """Seconds of CPU the daemon has used."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def raw(self) -> socket.socket:
        return self.daemon.raw()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("robust")
    sinks = Sinks()
    daemon = Daemon(tmp / "d.sock")
    ok, bad = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2")
    log = tmp / "victim.log"
    log.touch()
    victim = subprocess.Popen(
        [
            *[PY, "-m", "sandlock"],
            "run",
            "--daemon",
            str(daemon.path),
            "--quiet",
            "--audit",
            str(tmp / "victim.jsonl"),
            "--net-allow",
            ok.spec,
            "--",
            PY,
            "-c",
            VICTIM.format(port=ok.port),
            str(log),
        ],
        env=daemon_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the command too is ended by the killpg below
    )
    s = Served(daemon, ok, bad, victim, log)
    try:
        s.victim_goes_on(0)
        time.sleep(0.5)
        s.base = s.usage()
        yield s
    finally:
        # Killing the client alone would leave its command looping (fail-closed, but for
        # ever): end the whole group.
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        daemon.stop()
        sinks.close()


def daemon_env() -> dict[str, str]:
    from .conftest import sandlock_env

    return sandlock_env()


def _send(sock: socket.socket, message: object, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def _ask(sock: socket.socket, message: object, fds: list[int] | tuple[int, ...] = ()) -> Any:
    _send(sock, message, fds)
    return json.loads(sock.recv(1 << 17))


@pytest.fixture
def child() -> Iterator[launch.Child]:
    """A sandboxed `sleep` of ours, its listener not served by anyone (as a client has
    it just before it hands it to the daemon)."""
    c = launch.start(["sleep", "60"], gate=False)
    yield c
    os.kill(c.pid, 9)
    os.waitpid(c.pid, 0)
    c.close()


def _refused_supervise(s: Served, fds: list[int], expect: str) -> None:
    with s.raw() as sock:
        assert _ask(sock, {"op": "rules", "allow": []})["ok"] is True
        reply = _ask(sock, {"op": "supervise", "cmd": ["fake"]}, fds)
        assert reply["ok"] is False and expect in reply["error"], reply
        assert _ask(sock, {"op": "ps"})["sandboxes"][1:] == []  # only the victim


# ---------------------------------------------------------------- the seven old breaks


def test_fd_exhaustion_is_survived(served: Served) -> None:
    """(1) At a descriptor limit of 64, 80 connections: accept fails EMFILE or the
    connection cap refuses them; the daemon lives, and serves new sandboxes after."""
    since = len(served.lines())
    soft, hard = resource.prlimit(served.pid, resource.RLIMIT_NOFILE)
    conns = []
    try:
        resource.prlimit(served.pid, resource.RLIMIT_NOFILE, (64, hard))
        for _ in range(80):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(1)
            try:
                sock.connect(str(served.daemon.path))
            except OSError:
                pass
            conns.append(sock)
        time.sleep(1)
        assert served.daemon.proc.poll() is None, "the daemon died"
        served.victim_goes_on(since)
    finally:
        for sock in conns:
            sock.close()
        resource.prlimit(served.pid, resource.RLIMIT_NOFILE, (soft, hard))
    deadline = time.monotonic() + 20
    while (res := served.daemon.run([], ["/bin/true"])).returncode != 0:
        assert time.monotonic() < deadline, describe(res)
        time.sleep(0.2)
    served.check(since)


def test_a_slow_audit_reader_stalls_nothing(served: Served, tmp_path: Path) -> None:
    """(2) A sandbox whose --audit FIFO nobody reads: its records are dropped (and the
    count said once the reader is back), the daemon's other sandboxes go on."""
    since = len(served.lines())
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    go = tmp_path / "go"
    noisy = textwrap.dedent(f"""
        import os, socket, sys, time
        def attempt():
            with socket.socket() as s:
                try:
                    s.connect(("127.0.0.2", {served.bad.port}))
                except OSError:
                    pass
        for _ in range(3000):  # ~200 bytes of audit each: far more than 64 KiB
            attempt()
        print("flooded", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        for _ in range(5):
            attempt()
    """)
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "sandlock",
            "run",
            "--daemon",
            str(served.daemon.path),
            "--quiet",
            "--audit",
            str(fifo),
            "--",
            PY,
            "-c",
            noisy,
        ],
        env=daemon_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    got = bytearray()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if not chunk:
                time.sleep(0.02)
            got.extend(chunk)

    drainer = threading.Thread(target=drain)
    try:
        assert proc.stdout is not None
        ready = threading.Event()
        threading.Thread(target=lambda: (proc.stdout.readline(), ready.set())).start()
        assert ready.wait(60), "the flooding sandbox stalled"
        served.victim_goes_on(since)  # while nobody reads the FIFO
        drainer.start()
        time.sleep(0.5)
        go.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        if not drainer.is_alive():
            drainer.start()  # (the old daemon blocks until someone reads)
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        time.sleep(0.5)
        stop.set()
        drainer.join()
        os.close(reader)
    records = [json.loads(line) for line in got.decode().splitlines()]
    dropped = [r["dropped"] for r in records if "dropped" in r]
    assert dropped and dropped[0] > 1000, records[-3:]
    decisions = [r for r in records if "action" in r]  # (not the chain's open and close)
    assert decisions[-1]["action"] == "deny"  # the records after the gap came through
    served.check(since)


def test_a_directory_as_stderr_is_refused_and_leaks_nothing(
    served: Served, child: launch.Child, tmp_path: Path
) -> None:
    """(3) A directory as the stderr descriptor: refused before anything starts."""
    since = len(served.lines())
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _refused_supervise(served, [child.listener, child.pidfd, d], "stderr is a directory")
    finally:
        os.close(d)
    served.check(since)


def _burns_no_cpu(served: Served) -> None:
    before = served.cpu()
    time.sleep(2)
    assert served.cpu() - before < 0.6, "the daemon spins"


def test_dev_null_as_listener_is_refused_and_burns_no_cpu(
    served: Served, child: launch.Child
) -> None:
    """(4) /dev/null as the listener: refused (it is no seccomp listener), no CPU."""
    since = len(served.lines())
    null = os.open("/dev/null", os.O_RDWR)
    try:
        _refused_supervise(served, [null, child.pidfd, 2], "not a seccomp listener")
    finally:
        os.close(null)
    _burns_no_cpu(served)
    served.check(since)


def test_a_pipe_as_listener_is_refused(served: Served, child: launch.Child) -> None:
    """(7) A pipe as the listener: refused, never listed in ps, no CPU."""
    since = len(served.lines())
    r, w = os.pipe()
    try:
        _refused_supervise(served, [r, child.pidfd, w], "not a seccomp listener")
    finally:
        os.close(r)
        os.close(w)
    _burns_no_cpu(served)
    served.check(since)


def test_slow_hostnames_do_not_starve_new_sandboxes(served: Served) -> None:
    """(5) 45 clients naming 50 hosts each of a slow upstream (minutes a request), gone:
    most are refused at once (the resolver pool is bounded), the rest cancelled, and a
    new sandbox starts at once. A request naming too many hosts is refused outright."""
    since = len(served.lines())
    with FakeUpstream() as fake:
        for i in range(50):  # each answers, after 2.5 s (under the 3 s timeout)
            fake.add(f"h{i}.slow.test", "A", ["127.0.0.1"])
            fake.delays[f"h{i}.slow.test"] = 2.5
        names = {"dns_proxy": False, "dns_upstream": f"127.0.0.1:{fake.port}"}
        rules = {"op": "rules", "names": names}
        hosts = [f"h{i}.slow.test:80" for i in range(50)]
        conns = []
        for _ in range(45):
            sock = served.raw()
            _send(sock, {**rules, "allow": hosts})
            conns.append(sock)
        time.sleep(0.5)
        refused = 0
        for sock in conns:
            sock.settimeout(0.5)
            try:
                reply = json.loads(sock.recv(65536))
                refused += "resolutions in progress" in reply["error"]
            except TimeoutError:
                pass
            sock.close()
        res = served.daemon.run(
            ["--net-allow", served.ok.spec], [PY, "-c", "print('started')"], timeout=30
        )
        assert (res.returncode, res.stdout) == (0, "started\n"), describe(res)
        assert refused >= 40
        with served.raw() as sock:
            many = [f"h{i}.slow.test:80" for i in range(100)]
            reply = _ask(sock, {**rules, "allow": many})
            assert reply["policy_error"] is True and "100 hostnames" in reply["error"]
        # An abandoned lookup ends with its answer; trio keeps idle threads for 10 s. The
        # upstream stays until then: its late answers must find their socket.
        served.check(since, wait=40)
        time.sleep(3)


def test_string_booleans_are_refused(served: Served) -> None:
    """(6) "false" (a string) is no boolean: refused, never taken as true."""
    since = len(served.lines())
    with served.raw() as sock:
        reply = _ask(sock, {"op": "rules", "allow": [], "names": {"dns_proxy": "false"}})
        assert reply["ok"] is False and "dns_proxy must be" in reply["error"], reply
        reply = _ask(sock, {"op": "rules", "allow": [], "names": {"virtual_hosts": 0}})
        assert reply["ok"] is False and "virtual_hosts must be" in reply["error"], reply
        assert _ask(sock, {"op": "rules", "allow": []})["ok"] is True
        reply = _ask(sock, {"op": "supervise", "cmd": ["x"], "quiet": "no"}, [0, 1, 2])
        assert reply["ok"] is False and "quiet must be" in reply["error"], reply
    served.check(since)


# ---------------------------------------------------------------- the fuzzer

_TEXT = st.text(max_size=12).map(lambda t: "!" + t)  # never a hostname: no lookup leaves
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_RULES = st.lists(
    st.sampled_from(["127.0.0.1:80", "udp://127.0.0.2:53", "tcp://[::1]:1", "127.0.0.0/8"]) | _TEXT,
    max_size=4,
)
_NAMES = st.fixed_dictionaries(
    {},
    optional={
        "dns_proxy": st.none() | st.booleans() | _JSON,
        "virtual_hosts": st.booleans() | _JSON,
        "ttl_min": st.floats() | st.integers() | _JSON,
        "ttl_max": st.floats() | st.integers() | _JSON,
        "dns_upstream": _TEXT | _JSON,
    },
)
_REQUEST = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries(
        {"op": st.sampled_from(["rules", "supervise", "ps", "policy"]) | _JSON},
        optional={
            "allow": _RULES | _JSON,
            "deny": _RULES | _JSON,
            "names": _NAMES | _JSON,
            "cmd": st.lists(st.text(max_size=8), max_size=3) | _JSON,
            "quiet": st.booleans() | _JSON,
            "summary": st.booleans() | _JSON,
            "id": _TEXT | _JSON,
        },
    ),
    st.dictionaries(_TEXT, _JSON, max_size=2),
)
_FD_KINDS = [
    "listener",
    "pidfd",
    "devnull",
    "dir",
    "pipe_r",
    "pipe_w",
    "socket",
    "eventfd",
    "memfd",
    "stderr",
]


def _make_fds(kinds: list[str], tmp: str) -> tuple[list[int], list[launch.Child]]:
    fds: list[int] = []
    children: list[launch.Child] = []

    def kid() -> launch.Child:
        if not children:
            children.append(launch.start(["sleep", "60"], gate=False))
        return children[0]

    for kind in kinds:
        if kind == "listener":
            fds.append(os.dup(kid().listener))
        elif kind == "pidfd":
            fds.append(os.dup(kid().pidfd))
        elif kind == "devnull":
            fds.append(os.open("/dev/null", os.O_RDWR))
        elif kind == "dir":
            fds.append(os.open(tmp, os.O_RDONLY | os.O_DIRECTORY))
        elif kind in ("pipe_r", "pipe_w"):
            r, w = os.pipe()
            keep, other = (r, w) if kind == "pipe_r" else (w, r)
            os.close(other)
            fds.append(keep)
        elif kind == "socket":
            fds.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).detach())
        elif kind == "eventfd":
            fds.append(os.eventfd(0))
        elif kind == "memfd":
            fds.append(os.memfd_create("fuzz"))
        else:
            fds.append(os.dup(2))
    return fds, children


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    request=_REQUEST | st.binary(max_size=64),
    rules_first=st.booleans(),
    kinds=st.lists(st.sampled_from(_FD_KINDS), max_size=5),
)
def test_fuzzed_requests_leave_the_daemon_serving(
    served: Served, tmp_path: Path, request: Any, rules_first: bool, kinds: list[str]
) -> None:
    """Random requests with random descriptors: each gets a reply (or the connection
    closes); the victim goes on, and nothing stays behind (checked once at the end
    by test_after_the_fuzz)."""
    fds, children = _make_fds(kinds, str(tmp_path))
    try:
        with served.raw() as sock:
            sock.settimeout(15)
            if rules_first:
                assert _ask(sock, {"op": "rules", "allow": []})["ok"] is True
            _send(sock, request, fds)
            data = sock.recv(1 << 17)
            if data:
                reply = json.loads(data)
                assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    finally:
        for fd in fds:
            os.close(fd)
        for c in children:
            os.kill(c.pid, 9)
            os.waitpid(c.pid, 0)
            c.close()
    assert served.daemon.proc.poll() is None


def test_after_the_fuzz(served: Served) -> None:
    """After the fuzzer: alive, the victim going on, nothing left behind."""
    served.check(len(served.lines()))


# ---------------------------------------------------------------- the command's environment

_SHOW = "import os; print(os.environ.get('SANDLOCK_DAEMON', 'absent'), os.environ['KEEP'])"


def test_control_variables_never_reach_the_command(served: Served) -> None:
    """SANDLOCK_DAEMON is sandlock's, not the command's: dropped from the environment a
    command gets through the daemon, standalone (set but empty) and through the API;
    every other variable passes."""
    from sandlock import Sandbox

    from .conftest import run_command, sandlock_env

    base = {**sandlock_env(), "KEEP": "kept"}
    via_daemon = run_command(
        [PY, "-m", "sandlock", "run", "--", PY, "-c", _SHOW],
        env={**base, "SANDLOCK_DAEMON": str(served.daemon.path)},
    )
    standalone = run_command(
        [PY, "-m", "sandlock", "run", "--", PY, "-c", _SHOW],
        env={**base, "SANDLOCK_DAEMON": ""},
    )
    api = Sandbox().run(
        [PY, "-c", _SHOW],
        capture_output=True,
        env={**base, "SANDLOCK_DAEMON": "/x.sock"},
        timeout=60,
    )
    assert via_daemon.stdout == standalone.stdout == "absent kept\n", (via_daemon, standalone)
    assert api.stdout == b"absent kept\n", api
