"""Fixtures for the end-to-end tests: loopback sinks that count, C probes, and the runner.

The end-to-end tests run real commands under ``python -m sandlock run`` and check, on the
receiving side, what actually arrived.  Everything here stays on loopback:

- ``sinks``: TCP and UDP listeners on 127.0.0.0/8 or ::1, port 0, each served by a thread
  that counts connections, datagrams and bytes.  ``sink.settle()`` makes the count exact:
  it sends a marker through the same queue (accept queue or receive queue, both FIFO) and
  waits until the thread has seen it, so everything that arrived before it is counted.
  A sink refuses to bind anything but a loopback address.
- ``probe("name")``: compiles ``tests/probes/name.c`` once per session and returns its path.
- ``need_tool("curl")``: a program's path; missing, the test is skipped, or fails in CI.
- ``run_sandboxed(sandlock_args, cmd)`` / ``run_plain(cmd)``: run a command with or without
  the sandbox under a generous timeout (to catch hangs, not to time things); a hang kills
  the whole process group and fails the test with the output so far.
- ``full_listener``: a 127.0.0.1 listener whose accept queue is full (connects hang).
- ``lo_sniffer``: every packet arriving on lo (AF_PACKET), for what no socket receives.
- ``features``: what this kernel can do, so that a test whose vector does not exist here
  is skipped with the reason (never silently).
- ``parse_probe`` / ``probe_kv``: read the probes' "label ok ret=N" / "label errno=N" lines.
- ``gate_mode``: runs a test twice, with the gate answering what Python remembered (the
  default) and with every call handed to Python (SANDLOCK_GATE=python): the differential
  tests, which must see the same at the sinks and in the command both ways.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBES = Path(__file__).resolve().parent / "probes"
SANDLOCK = [sys.executable, "-m", "sandlock", "run"]
CFLAGS = ["-O2", "-Wall", "-Werror", "-pthread"]

# A sink thread never outlives this, even if a test forgets to close it.
SINK_LIFETIME = 600.0
# How long settle() waits for the sink thread to see its marker.
SETTLE_TIMEOUT = 20.0
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in Python's socket module


def _loopback_only(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host)
    if not ip.is_loopback:
        raise ValueError(f"test sinks are loopback only, not {host}")
    return ip


def target(host: str, port: int) -> str:
    """`127.0.0.1:80` or `[::1]:80`: the probes' TARGET form and the rules' host:port form."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Sink:
    """One listening socket and the thread that counts what reaches it."""

    kind = ""

    def __init__(self, host: str) -> None:
        ip = _loopback_only(host)
        self.host = host
        self.family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        stype = socket.SOCK_STREAM if self.kind == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(self.family, stype)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.count = 0
        self.nbytes = 0
        self.peers: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._markers: dict[tuple[str, int], threading.Event] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"{self.kind}-sink-{self.target}", daemon=True
        )

    @property
    def target(self) -> str:
        """`host:port` as the probes take it."""
        return target(self.host, self.port)

    @property
    def spec(self) -> str:
        """A --net-allow/--net-deny spec naming exactly this sink."""
        return self.target if self.kind == "tcp" else f"udp://{self.target}"

    def _start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + SINK_LIFETIME
        try:
            self._loop(deadline)
        except Exception as err:  # reported by settle(), never lost in the thread
            self.errors.append(f"sink thread crashed: {err!r}")

    def _loop(self, deadline: float) -> None:
        raise NotImplementedError

    def _marker_event(self, peer: tuple[Any, ...]) -> threading.Event | None:
        with self._lock:
            return self._markers.pop((peer[0], peer[1]), None)

    def _barrier(self) -> None:
        ev, marker = self._new_marker()
        try:
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while not ev.wait(0.05):
                if self.errors or not self._thread.is_alive():
                    raise AssertionError(f"sink {self.target} thread ended: {self.errors}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.kind} sink {self.target} did not settle")
        finally:
            marker.close()

    def _new_marker(self) -> tuple[threading.Event, socket.socket]:
        raise NotImplementedError

    def settle(self) -> _Sink:
        """Wait until everything that reached the socket so far has been counted."""
        self._barrier()
        time.sleep(0.01)  # belt and braces: a second marker after a pause
        self._barrier()
        if self.errors:
            raise AssertionError(f"sink {self.target}: {self.errors}")
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


class TcpSink(_Sink):
    """Counts accepted connections (`count`), bytes received (`nbytes`), per-connection
    byte counts (`conn_bytes`, in accept order) and peers."""

    kind = "tcp"

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.conn_bytes: list[int] = []
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self._start()

    def _new_marker(self) -> tuple[threading.Event, socket.socket]:
        marker = socket.socket(self.family, socket.SOCK_STREAM)
        marker.bind((self.host if self.family == socket.AF_INET6 else "127.0.0.1", 0))
        ev = threading.Event()
        with self._lock:
            self._markers[marker.getsockname()[:2]] = ev
        marker.settimeout(SETTLE_TIMEOUT)
        marker.connect((self.host, self.port))
        return ev, marker

    def _loop(self, deadline: float) -> None:
        conns: dict[socket.socket, int] = {}  # conn -> index in conn_bytes
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            try:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    for key, _ in sel.select(0.1):
                        if key.fileobj is self.sock:
                            self._accept_all(sel, conns)
                        elif key.fileobj in conns:
                            # (not when a marker earlier in this batch drained and closed it)
                            self._read(sel, conns, key.fileobj)  # type: ignore[arg-type]
            finally:
                for conn in conns:
                    conn.close()

    def _accept_all(self, sel: selectors.BaseSelector, conns: dict[socket.socket, int]) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as err:
                self.errors.append(f"accept: {err}")
                return
            conn.setblocking(False)
            ev = self._marker_event(peer)
            if ev is not None:
                conn.close()
                for other in list(conns):
                    self._read(sel, conns, other)
                ev.set()
                continue
            with self._lock:
                self.count += 1
                self.peers.append(peer[:2])
                self.conn_bytes.append(0)
                conns[conn] = len(self.conn_bytes) - 1
            sel.register(conn, selectors.EVENT_READ)
            self._read(sel, conns, conn)

    def _read(
        self, sel: selectors.BaseSelector, conns: dict[socket.socket, int], conn: socket.socket
    ) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # reset by the peer: the connection still counted
                data = b""
            if not data:
                sel.unregister(conn)
                conns.pop(conn)
                conn.close()
                return
            with self._lock:
                self.nbytes += len(data)
                self.conn_bytes[conns[conn]] += len(data)


class UdpSink(_Sink):
    """Counts datagrams (`count`), bytes (`nbytes`), and keeps the payloads in order."""

    kind = "udp"

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.payloads: list[bytes] = []
        # Big enough that a burst of thousands of datagrams is never dropped while this
        # thread waits for the GIL; drops are checked in settle() all the same.
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 32 << 20)
                break
            except PermissionError:
                continue
        self.sock.setblocking(False)
        self._start()

    def _new_marker(self) -> tuple[threading.Event, socket.socket]:
        marker = socket.socket(self.family, socket.SOCK_DGRAM)
        marker.bind((self.host if self.family == socket.AF_INET6 else "127.0.0.1", 0))
        ev = threading.Event()
        with self._lock:
            self._markers[marker.getsockname()[:2]] = ev
        marker.sendto(b"settle-marker", (self.host, self.port))
        return ev, marker

    def _loop(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], 0.1)
            if not readable:
                continue
            while True:
                try:
                    data, peer = self.sock.recvfrom(65536)
                except BlockingIOError:
                    break
                ev = self._marker_event(peer)
                if ev is not None:
                    ev.set()
                    continue
                with self._lock:
                    self.count += 1
                    self.nbytes += len(data)
                    self.payloads.append(data)
                    self.peers.append(peer[:2])

    def drops(self) -> int:
        """Datagrams the kernel dropped for this socket (a full receive buffer)."""
        inode = os.fstat(self.sock.fileno()).st_ino
        table = "/proc/net/udp6" if self.family == socket.AF_INET6 else "/proc/net/udp"
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[9] == str(inode):
                    return int(cols[12])
        return 0

    def settle(self) -> UdpSink:
        super().settle()
        dropped = self.drops()
        if dropped:
            raise AssertionError(f"udp sink {self.target} dropped {dropped} datagrams (test bug)")
        return self


class Sinks:
    """Makes sinks on demand and closes them all at teardown."""

    def __init__(self) -> None:
        self._all: list[_Sink] = []

    def tcp(self, host: str = "127.0.0.1") -> TcpSink:
        sink = TcpSink(host)
        self._all.append(sink)
        return sink

    def udp(self, host: str = "127.0.0.1") -> UdpSink:
        sink = UdpSink(host)
        self._all.append(sink)
        return sink

    def close(self) -> None:
        for sink in self._all:
            sink.close()


@dataclasses.dataclass
class SinkSet:
    """The four sinks of one protocol: allow/deny on IPv4 (127.0.0.1 / 127.0.0.2) and on
    ::1 (two ports)."""

    allow4: Any
    deny4: Any
    allow6: Any
    deny6: Any


@pytest.fixture
def sinks() -> Iterator[Sinks]:
    """A sink factory: `sinks.tcp("127.0.0.2")`, `sinks.udp("::1")`."""
    factory = Sinks()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def server_ca(tmp_path: Path) -> tuple[Any, Path]:
    """A test server's own CA (httptls.Interceptor: a leaf per name, one for 127.0.0.1),
    and its certificate as a PEM file (what --http-upstream-ca is given)."""
    from sandlock.httptls import Interceptor

    ca = Interceptor()
    path = tmp_path / "server-ca.pem"
    path.write_bytes(ca.ca_pem)
    return ca, path


@pytest.fixture
def tcp_sinks(sinks: Sinks) -> SinkSet:
    return SinkSet(
        sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2"), sinks.tcp("::1"), sinks.tcp("::1")
    )


@pytest.fixture
def udp_sinks(sinks: Sinks) -> SinkSet:
    return SinkSet(
        sinks.udp("127.0.0.1"), sinks.udp("127.0.0.2"), sinks.udp("::1"), sinks.udp("::1")
    )


@pytest.fixture
def full_listener() -> Iterator[str]:
    """A TCP listener on 127.0.0.1 whose accept queue is full and never drained: a connect
    to it sends a SYN that is dropped and waits for retransmissions.  Yields its target."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)  # the queue holds one connection, then SYNs are dropped
        port = lsock.getsockname()[1]
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fillers.append(filler)
        filler.settimeout(5)
        filler.connect(("127.0.0.1", port))
        # prove it: a second connect must not complete
        check = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fillers.append(check)
        check.setblocking(False)
        assert check.connect_ex(("127.0.0.1", port)) == 115  # EINPROGRESS
        _, writable, _ = select.select([], [check], [], 0.5)
        assert not writable, "the full listener accepted a second connection"
        yield target("127.0.0.1", port)
    finally:
        for s in fillers:
            s.close()
        lsock.close()


class LoSniffer:
    """Every IPv4/IPv6 packet that arrives on lo, as (destination address, protocol,
    destination port), from an AF_PACKET socket (needs CAP_NET_RAW).  It sees what the
    sinks cannot: packets that the IP layer drops before any socket, e.g. source-routed
    ones addressed to a hop."""

    def __init__(self) -> None:
        eth_p_all = 0x0003
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
        self.sock.bind(("lo", 0))
        # Every loopback packet of the machine comes through here (other suites' too): a
        # small buffer overflows and drops them, the settle marker among them.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.settimeout(0.1)
        self.packets: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lo-sniffer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + SINK_LIFETIME
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == socket.PACKET_OUTGOING:  # each loopback packet shows twice
                continue
            parsed = self._parse(frame[14:])
            if parsed is not None:
                with self._lock:
                    self.packets.append(parsed)

    @staticmethod
    def _parse(ip: bytes) -> tuple[str, int, int] | None:
        if len(ip) >= 20 and ip[0] >> 4 == 4:
            hlen, proto = (ip[0] & 15) * 4, ip[9]
            dst = socket.inet_ntop(socket.AF_INET, ip[16:20])
        elif len(ip) >= 40 and ip[0] >> 4 == 6:
            hlen, proto = 40, ip[6]
            dst = socket.inet_ntop(socket.AF_INET6, ip[24:40])
        else:
            return None
        port = int.from_bytes(ip[hlen + 2 : hlen + 4], "big") if proto in (6, 17) else 0
        return dst, proto, port

    def to_port(self, port: int) -> list[tuple[str, int, int]]:
        """The packets seen so far for destination port `port` (TCP or UDP)."""
        with self._lock:
            return [p for p in self.packets if p[2] == port and p[1] in (6, 17)]

    def settle(self) -> LoSniffer:
        """Wait until a marker datagram sent now has been seen (all before it too)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
            marker.bind(("127.0.0.1", 0))
            port = marker.getsockname()[1]  # to ourselves: nothing else listens there
            deadline = time.monotonic() + SETTLE_TIMEOUT
            next_marker = 0.0
            while not self.to_port(port):
                now = time.monotonic()
                if now > deadline:
                    raise AssertionError("lo sniffer did not settle")
                if now >= next_marker:  # again now and then: one may be dropped
                    marker.sendto(b"sniffer-marker", ("127.0.0.1", port))
                    next_marker = now + 0.5
                time.sleep(0.005)
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


@pytest.fixture
def lo_sniffer() -> Iterator[LoSniffer]:
    """A LoSniffer on lo; skips (with the reason) without CAP_NET_RAW."""
    try:
        sniffer = LoSniffer()
    except PermissionError as err:
        pytest.skip(f"cannot sniff lo without CAP_NET_RAW: {err}")
    try:
        yield sniffer
    finally:
        sniffer.close()


# ---------------------------------------------------------------------------- containers


@pytest.fixture(scope="session")
def public_python() -> Iterator[str]:
    """A python that uid 12345 can run with sandlock importable (tests/container.py's
    public_tree), made once per session: the container tests and the container suite
    share it (copying the venv takes ~20 s)."""
    from . import container

    dest = Path(tempfile.mkdtemp(prefix="sandlock-container-"))
    try:
        yield str(container.public_tree(dest))
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# ---------------------------------------------------------------------------- tools


def in_ci() -> bool:
    """Whether the tests run in CI: the environment variable CI set (`CI=true bash
    .ci/run`, as CI services set it), and not to "0" or "false"."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def need_tool(name: str) -> str:
    """The path of the program ``name`` (curl, node, git: the real clients a test runs).
    Missing, the test is skipped, or fails in CI (:func:`in_ci`): CI must not go green
    by skipping the very clients it is meant to prove."""
    path = shutil.which(name)
    if path is None:
        if in_ci():
            pytest.fail(f"{name} is not installed, and CI is set: a missing tool fails")
        pytest.skip(f"{name} is not installed")
    return path


# ---------------------------------------------------------------------------- probes


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """`probe("netprobe")` -> path of tests/probes/netprobe.c compiled (once per session)
    with gcc -O2 -Wall -Werror -pthread."""
    gcc = shutil.which("gcc")
    outdir = tmp_path_factory.mktemp("probes")
    built: dict[str, str] = {}
    lock = threading.Lock()

    def build(name: str) -> str:
        with lock:
            if name not in built:
                if gcc is None:
                    pytest.fail("gcc is required to build the test probes (and sandlock itself)")
                src = PROBES / f"{name}.c"
                out = outdir / name
                res = subprocess.run(
                    [gcc, *CFLAGS, "-o", str(out), str(src)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if res.returncode != 0:
                    pytest.fail(f"compiling {src} failed:\n{res.stderr}")
                built[name] = str(out)
            return built[name]

    return build


@dataclasses.dataclass(frozen=True)
class ProbeLine:
    label: str
    ok: bool
    value: int  # the return value when ok, else the errno

    @property
    def errno(self) -> int | None:
        return None if self.ok else self.value


_LINE = re.compile(r"^(?P<label>.+?) (?:ok ret=(?P<ret>-?\d+)|errno=(?P<errno>\d+))$")


def parse_probe(stdout: str) -> list[ProbeLine]:
    """The "<label> ok ret=N" / "<label> errno=N" lines of a probe's output, in order."""
    lines = []
    for line in stdout.splitlines():
        m = _LINE.match(line.strip())
        if m:
            if m["ret"] is not None:
                lines.append(ProbeLine(m["label"], True, int(m["ret"])))
            else:
                lines.append(ProbeLine(m["label"], False, int(m["errno"])))
    return lines


def probe_results(stdout: str) -> dict[str, ProbeLine]:
    """parse_probe as a dict by label (labels must be unique)."""
    out: dict[str, ProbeLine] = {}
    for line in parse_probe(stdout):
        assert line.label not in out, f"duplicate probe label {line.label!r} in {stdout!r}"
        out[line.label] = line
    return out


def probe_kv(stdout: str) -> dict[str, int]:
    """The `key=N` pairs of a summary line such as `ok=10 refused=3 other=0`."""
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", stdout)}


# ---------------------------------------------------------------------------- running


def sandlock_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `python -m sandlock`: the given one (default: ours), with the
    source tree importable when it holds the package."""
    out = dict(os.environ if env is None else env)
    if (REPO / "sandlock" / "__init__.py").exists():
        path = out.get("PYTHONPATH", "")
        parts = [p for p in path.split(os.pathsep) if p]
        if str(REPO) not in parts:
            out["PYTHONPATH"] = os.pathsep.join([str(REPO), *parts])
    return out


def run_command(
    argv: Sequence[str], *, timeout: float = 60, input: str | bytes | None = None, **kw: Any
) -> subprocess.CompletedProcess[Any]:
    """subprocess.run in its own process group; a hang kills the group and fails the test."""
    text = kw.pop("text", True)
    stdin = kw.pop("stdin", subprocess.PIPE if input is not None else subprocess.DEVNULL)
    stdout = kw.pop("stdout", subprocess.PIPE)
    stderr = kw.pop("stderr", subprocess.PIPE)
    proc = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        start_new_session=True,
        **kw,
    )
    with proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            out, err = proc.communicate()
            pytest.fail(
                f"hang: {list(argv)} did not finish in {timeout}s\nstdout: {out!r}\nstderr: {err!r}"
            )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group we created (ignore it being gone already)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_sandboxed(
    sandlock_args: Sequence[str],
    cmd: Sequence[str],
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    **kw: Any,
) -> subprocess.CompletedProcess[Any]:
    """`python -m sandlock run <sandlock_args> -- <cmd>`, output captured as text."""
    return run_command(
        [*SANDLOCK, *sandlock_args, "--", *cmd], timeout=timeout, env=sandlock_env(env), **kw
    )


def run_plain(
    cmd: Sequence[str], timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[Any]:
    """The same command without the sandbox (the baseline that proves a probe can fail)."""
    return run_command(cmd, timeout=timeout, **kw)


@pytest.fixture(name="run_sandboxed")
def _run_sandboxed_fixture() -> Callable[..., subprocess.CompletedProcess[Any]]:
    """run_sandboxed(sandlock_args, cmd, timeout=60, env=None, **Popen kwargs)."""
    return run_sandboxed


@pytest.fixture(name="run_plain")
def _run_plain_fixture() -> Callable[..., subprocess.CompletedProcess[Any]]:
    """run_plain(cmd, timeout=60, **Popen kwargs): no sandbox."""
    return run_plain


def describe(res: subprocess.CompletedProcess[Any]) -> str:
    """For assertion messages: exit status and both streams."""
    return f"exit={res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"


# ---------------------------------------------------------------------------- features


class Features:
    """What this kernel offers, measured once by running the probes without the sandbox.

    `features.require("io_uring")` skips the test with the reason when the vector does not
    exist here (the sandboxed assertion could not fail).  On the reference machine (root,
    kernel 6.18, io_uring on, IA-32 emulation on) nothing the issue requires is skipped."""

    def __init__(self, probe: Callable[[str], str]) -> None:
        self._probe = probe
        self._cache: dict[str, tuple[bool, str]] = {}
        self.unshare_net: list[str] = []  # the unshare(1) argv that gives a new netns

    def _measure(self, name: str) -> tuple[bool, str]:
        checks: dict[str, Callable[[], tuple[bool, str]]] = {
            "io_uring": self._io_uring,
            "ia32": self._ia32,
            "x32": self._x32,
            "ping": self._ping,
            "netns": self._netns,
        }
        return checks[name]()

    def has(self, name: str) -> bool:
        if name not in self._cache:
            self._cache[name] = self._measure(name)
        return self._cache[name][0]

    def require(self, name: str) -> None:
        if not self.has(name):
            pytest.skip(f"kernel feature missing here: {self._cache[name][1]}")

    def _with_sink(self, fn: Callable[[TcpSink, UdpSink], tuple[bool, str]]) -> tuple[bool, str]:
        tcp, udp = TcpSink("127.0.0.1"), UdpSink("127.0.0.1")
        try:
            return fn(tcp, udp)
        finally:
            tcp.close()
            udp.close()

    def _io_uring(self) -> tuple[bool, str]:
        def check(tcp: TcpSink, udp: UdpSink) -> tuple[bool, str]:
            res = run_plain([self._probe("uring"), tcp.target], timeout=30)
            ok = "connect ok" in res.stdout and tcp.settle().count == 1
            try:
                sysctl = Path("/proc/sys/kernel/io_uring_disabled").read_text().strip()
            except OSError:
                sysctl = "absent"
            why = f"io_uring connect unsandboxed: {res.stdout.strip()!r}"
            return ok, f"{why} (io_uring_disabled={sysctl})"

        return self._with_sink(check)

    def _ia32(self) -> tuple[bool, str]:
        def check(tcp: TcpSink, udp: UdpSink) -> tuple[bool, str]:
            res = run_plain([self._probe("int80"), tcp.target, udp.target], timeout=30)
            lines = probe_results(res.stdout)
            ok = lines.get("connect", ProbeLine("", False, 0)).ok
            return ok, f"no IA-32 emulation (int 0x80 connect unsandboxed: {res.stdout.strip()!r})"

        return self._with_sink(check)

    def _x32(self) -> tuple[bool, str]:
        def check(tcp: TcpSink, udp: UdpSink) -> tuple[bool, str]:
            res = run_plain([self._probe("x32"), tcp.target, udp.target], timeout=30)
            ok = probe_results(res.stdout).get("getpid", ProbeLine("", False, 0)).ok
            return ok, "kernel built without the x32 ABI"

        return self._with_sink(check)

    def _ping(self) -> tuple[bool, str]:
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
        except OSError as err:
            return False, f"ping sockets unavailable ({err}; see net.ipv4.ping_group_range)"
        return True, ""

    def _netns(self) -> tuple[bool, str]:
        unshare = shutil.which("unshare")
        if unshare is None:
            return False, "no unshare(1)"
        for args in (["--net"], ["--user", "--map-root-user", "--net"]):
            res = subprocess.run([unshare, *args, "true"], capture_output=True, timeout=30)
            if res.returncode == 0:
                self.unshare_net = [unshare, *args]
                return True, ""
        return False, "cannot create a network namespace (unshare --net)"


@pytest.fixture(scope="session")
def features(probe: Callable[[str], str]) -> Features:
    return Features(probe)


# ---------------------------------------------------------------------------- gate modes

# Who answers the sandbox's calls (sandlock/_gatemode.py): "gate", the default, where the
# gate answers calls to destinations Python remembered, parks blocking connects and lets
# non-virtual opens continue; "python", where it hands every call to Python.
GATE_MODES = ["gate", "python"]


@pytest.fixture(params=GATE_MODES)
def gate_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test once per gate mode: $SANDLOCK_GATE set in our environment, so that a
    `sandlock run` or `sandlock serve` started with sandlock_env() (or with a copy of
    os.environ) and a Sandbox run in this process all get it. A test that uses it asserts
    the same in both modes: the gate is a cache of Python's decisions, never a second
    policy. (tests/test_gate_mode.py proves the python mode leaves the gate idle.)"""
    from sandlock._gatemode import GATE_ENV

    monkeypatch.setenv(GATE_ENV, request.param)
    return str(request.param)
