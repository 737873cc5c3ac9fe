"""Virtual /etc/hosts and /etc/resolv.conf: the contents, and real children served by ADDFD.

The kernel tests spawn the child the way sandlock.launch.start does (sys_.spawn with the
``trap_open`` filter) and answer its notifications with a small synchronous loop: opens go
to VirtualFiles.handle_open, anything it does not answer is CONTINUEd, and the network
calls are refused outright, so these tests send no traffic at all. The gate hands every
notification over, unless a test turns its open filter on (GATE_OPEN, as launch does).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import mmap
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from sandlock import _bpf, _filter, vfiles
from sandlock import _syscalls as sys_
from sandlock.answer import Install, Reply
from sandlock.supervisor import send_answer
from sandlock.vfiles import VirtualFiles, hosts_text, maybe_virtual, read_path, resolv_text

# sandlock.launch._FILTER_FLAGS (launch.py is not imported here: it is being reworked).
FILTER_FLAGS = sys_.FILTER_FLAG_WAIT_KILLABLE_RECV
TIMEOUT = 30.0
NETWORK = {sys_.NR_CONNECT, sys_.NR_SENDTO, sys_.NR_SENDMSG, sys_.NR_SENDMMSG}  # refused
HOSTS = hosts_text({"api.example.test": ["127.0.0.3"], "db.example.test": ["::1", "127.0.0.4"]})
REAL_HOSTS = Path("/etc/hosts")


def test_hosts_text_layout() -> None:
    """localhost first, then one `ADDR NAME` line per address, names sorted, wildcards
    skipped, duplicate addresses dropped, addresses normalised."""
    text = hosts_text(
        {
            "b.example": ["10.0.0.2", "0:0::1", "10.0.0.2"],
            "*.wild.example": ["10.0.0.9"],
            "A.example": ["10.0.0.1"],
        }
    )
    assert text == (
        b"127.0.0.1 localhost\n::1 localhost\n"
        b"10.0.0.1 A.example\n10.0.0.2 b.example\n::1 b.example\n"
    )
    assert hosts_text({}) == b"127.0.0.1 localhost\n::1 localhost\n"


def test_hosts_text_lists_a_localhost_rule_as_resolved() -> None:
    """A rule naming localhost: its resolved addresses only, no default ::1 line."""
    assert hosts_text({"LocalHost": ["127.0.0.1"]}) == b"127.0.0.1 LocalHost\n"


@pytest.mark.parametrize(
    "mapping",
    [{"x.example": ["not-an-ip"]}, {"bad name": ["10.0.0.1"]}, {"x#y": ["10.0.0.1"]}, {"": []}],
)
def test_hosts_text_rejects_what_would_break_a_line(mapping: Mapping[str, Sequence[str]]) -> None:
    """A bad address or a name with whitespace or `#` is a ValueError, not a broken file."""
    with pytest.raises(ValueError):
        hosts_text(mapping)


def test_resolv_text() -> None:
    """One nameserver, `options edns0`, no search list; the address is validated."""
    assert resolv_text("127.0.0.53") == b"nameserver 127.0.0.53\noptions edns0\n"
    assert resolv_text("::1") == b"nameserver ::1\noptions edns0\n"
    with pytest.raises(ValueError):
        resolv_text("localhost")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/etc/hosts", True),
        (b"hosts", True),
        (b"../etc/resolv.conf", True),
        (b"/etc/hosts/", False),
        (b"/etc/hosts.allow", False),
        (b"/etc/ghosts", False),
        (b"", False),
    ],
)
def test_maybe_virtual(path: bytes, expected: bool) -> None:
    """Only the last component counts: `hosts` or `resolv.conf`, exactly."""
    assert maybe_virtual(path) is expected


def test_filter_traps_every_open_that_could_be_served() -> None:
    """The filter leaves untrapped exactly the flags vfiles never serves."""
    assert _filter.OPEN_NOT_TRAPPED == vfiles.NOT_SERVED_FLAGS


def test_bpf_cache_keeps_the_variants_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trap_open program is cached under its own name; the default is unchanged."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _bpf.forget()
    try:
        plain, trapping = _bpf.filter_bpf(), _bpf.filter_bpf(trap_open=True)
        assert _bpf.cache_path() != _bpf.cache_path(trap_open=True)
        assert Path(_bpf.cache_path()).read_bytes() == plain == _filter.build_bpf()
        assert Path(_bpf.cache_path(True)).read_bytes() == trapping == _filter.build_bpf(True)
        assert plain != trapping
    finally:
        _bpf.forget()


# ---- reading a path out of a process (our own, here) ----------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PAGE = mmap.PAGESIZE


@pytest.fixture
def two_pages() -> Iterator[tuple[mmap.mmap, int]]:
    """Two pages of our memory, the second one inaccessible; yields (map, address)."""
    m = mmap.mmap(-1, 2 * PAGE)
    anchor = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(anchor)
    del anchor
    assert _libc.mprotect(ctypes.c_void_p(addr + PAGE), PAGE, 0) == 0
    try:
        yield m, addr
    finally:
        _libc.mprotect(ctypes.c_void_p(addr + PAGE), PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        m.close()


def test_read_path_ending_at_a_mapping_end(two_pages: tuple[mmap.mmap, int]) -> None:
    """A path whose NUL is the last byte before an unmapped page is read whole; without a
    NUL there, the read fails with EFAULT (as the kernel's would)."""
    m, addr = two_pages
    path = b"/etc/hosts\0"
    m[PAGE - len(path) : PAGE] = path
    assert read_path(os.getpid(), addr + PAGE - len(path)) == b"/etc/hosts"
    m[PAGE - 1] = ord("x")
    assert read_path(os.getpid(), addr + PAGE - len(path)) == -errno.EFAULT


def test_read_path_across_pages_and_too_long() -> None:
    """A path across a page boundary is joined; none within PATH_MAX is ENAMETOOLONG."""
    buf = ctypes.create_string_buffer(3 * PAGE)
    base = ctypes.addressof(buf)
    start = base + PAGE - base % PAGE + PAGE - 5  # 5 bytes before a page boundary
    ctypes.memmove(start, b"/etc/hosts\0", 11)
    assert read_path(os.getpid(), start) == b"/etc/hosts"
    ctypes.memset(base, ord("a"), 3 * PAGE - 1)
    assert read_path(os.getpid(), base) == -errno.ENAMETOOLONG
    assert read_path(os.getpid(), 0) == -errno.EFAULT


def test_handle_open_leaves_other_calls_and_write_intent_alone() -> None:
    """Not an open, or an open with write intent: CONTINUE, with no answer attempted
    (the listener here is not even valid)."""
    path = ctypes.create_string_buffer(b"/etc/hosts")
    addr = ctypes.addressof(path)
    at_fdcwd = (1 << 64) - 100
    arch = vfiles.AUDIT_ARCH_X86_64
    with VirtualFiles() as vf:
        vf.set("/etc/hosts", HOSTS)
        for nr, args in [
            (42, (3, addr, 16, 0, 0, 0)),
            (2, (addr, os.O_RDWR, 0, 0, 0, 0)),
            (257, (at_fdcwd, addr, os.O_WRONLY | os.O_CREAT, 0o644, 0, 0)),
            (257, (at_fdcwd, addr, os.O_RDONLY | os.O_APPEND, 0, 0, 0)),
            (257, (at_fdcwd, addr, os.O_PATH, 0, 0, 0)),
        ]:
            assert vf.handle_open(-1, sys_.Notif(1, os.getpid(), nr, arch, args)) is Reply.CONTINUE


def test_set_replaces_without_leaking() -> None:
    """set() on the same path many times keeps one sealed memfd; close() frees it."""
    before = _fd_count()
    with VirtualFiles() as vf:
        for i in range(200):
            vf.set("/etc/hosts", b"%d\n" % i)
        assert _fd_count() == before + 1
        assert vf.paths == ["/etc/hosts"]
        assert vf.names == {b"hosts"}
    assert _fd_count() == before


# ---- real children ----------------------------------------------------------------------


@dataclasses.dataclass
class Ran:
    status: int
    stdout: str
    stderr: str
    served: int  # notifications VirtualFiles answered
    continued: int  # notifications the loop CONTINUEd
    gate_opens: int  # opens the gate CONTINUEd itself (its open filter on)

    def json(self) -> dict[str, object]:
        assert self.status == 0, f"exit={self.status}\n{self.stdout}\n{self.stderr}"
        out: dict[str, object] = json.loads(self.stdout)
        return out


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_child(
    argv: Sequence[str], vf: VirtualFiles, cwd: str | None = None, gate: str = "python"
) -> Ran:
    """Run argv under the trap_open filter, serving vf, within TIMEOUT seconds; ``gate``
    as for _serve."""
    path = shutil.which(argv[0]) or argv[0]
    env = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in os.environ.items()]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _pid, pidfd, listener = sys_.spawn(
                os.fsencode(path),
                [os.fsencode(a) for a in argv],
                env,
                cwd=os.fsencode(cwd) if cwd is not None else None,
                stdio=(devnull, out.fileno(), err.fileno()),
                bpf=_bpf.filter_bpf(trap_open=True),
                filter_flags=FILTER_FLAGS,
                keep_fds=(),
                unblock=(),
            )
        finally:
            os.close(devnull)
        try:
            served, continued, gate_opens = _serve(pidfd, listener, vf, gate)
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            assert info is not None
            status = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
        finally:
            os.close(listener)
            os.close(pidfd)
        out.seek(0)
        err.seek(0)
        return Ran(status, out.read().decode(), err.read().decode(), served, continued, gate_opens)


def _serve(pidfd: int, listener: int, vf: VirtualFiles, mode: str) -> tuple[int, int, int]:
    """Answer the child's notifications until it exits; kill it and fail on a hang.
    mode "python": a gate with no flags hands every notification over (nothing answered
    in C); "gate": its open filter on, told vf's names when started (as launch.start
    does); "gate-watch": told them by vf.watch (as Supervisor.use_names does);
    "gate-full": told more names than it holds (it hands every open over)."""
    flags = 0 if mode == "python" else sys_.GATE_OPEN
    names = {"gate": vf.names, "gate-full": vf.names | _TOO_MANY_NAMES}.get(mode)
    gate = sys_.Gate(listener, flags, names)
    if mode == "gate-watch":
        vf.watch(gate.set_open_names)
    try:
        served, continued = _serve_gate(pidfd, gate, vf)
        return served, continued, gate.stats()[2]
    finally:
        vf.watch(None)
        gate.close()


def _serve_gate(pidfd: int, gate: sys_.Gate, vf: VirtualFiles) -> tuple[int, int]:
    deadline = time.monotonic() + TIMEOUT
    poller = select.poll()
    poller.register(gate.fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    listener = gate.listener
    served = continued = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            sys_.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            pytest.fail(f"hang: the child did not finish in {TIMEOUT}s")
        ready = dict(poller.poll(left * 1000))
        if gate.fd in ready:
            handed = gate.read()
            for n in (h.notif for h in handed or ()):
                opened = vf.handle_open(listener, n) if n.nr in vfiles.OPEN_SYSCALLS else None
                if opened is not None and opened is not Reply.CONTINUE:
                    assert isinstance(opened, (int, Install))  # (never waits, decides nothing)
                    send_answer(listener, n.id, opened)
                    served += 1
                elif n.nr in NETWORK:
                    sys_.notif_send(listener, n.id, 0, -errno.ECONNREFUSED)
                else:
                    sys_.notif_continue(listener, n.id)
                    continued += 1
            if handed is None:
                poller.unregister(gate.fd)  # the sandbox is gone
        if pidfd in ready:
            return served, continued


_TOO_MANY_NAMES = {bytes([ord("a") + i]) * 255 for i in range(5)}  # more than the gate holds


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-I", "-c", script, *args]


@pytest.fixture
def vf() -> Iterator[VirtualFiles]:
    with VirtualFiles() as files:
        files.set("/etc/hosts", HOSTS)
        files.set("/etc/resolv.conf", resolv_text("127.0.0.53"))
        yield files


@pytest.fixture(autouse=True)
def real_hosts_untouched() -> Iterator[None]:
    """Every test: the real /etc/hosts is exactly as it was (contents and mtime)."""
    before = REAL_HOSTS.read_bytes(), REAL_HOSTS.stat().st_mtime_ns
    yield
    assert (REAL_HOSTS.read_bytes(), REAL_HOSTS.stat().st_mtime_ns) == before


def test_cat_sees_the_virtual_hosts(vf: VirtualFiles) -> None:
    """`cat /etc/hosts` prints our contents, served by ADDFD; resolv.conf too."""
    ran = run_child(["cat", "/etc/hosts", "/etc/resolv.conf"], vf)
    assert ran.status == 0, ran.stderr
    assert ran.stdout.encode() == HOSTS + resolv_text("127.0.0.53")
    assert ran.served == 2


def test_getent_resolves_a_virtual_name(vf: VirtualFiles) -> None:
    """glibc's resolver (getent hosts) finds a name that only the virtual file has."""
    assert b"api.example.test" not in REAL_HOSTS.read_bytes()
    ran = run_child(["getent", "hosts", "api.example.test"], vf)
    assert ran.status == 0, ran.stderr
    assert ran.stdout.split() == ["127.0.0.3", "api.example.test"]


def test_replaced_contents_reach_the_next_open(vf: VirtualFiles) -> None:
    """After set() replaces a file, the next open sees the new contents."""
    vf.set("/etc/hosts", hosts_text({"new.example.test": ["127.0.0.9"]}))
    ran = run_child(["cat", "/etc/hosts"], vf)
    assert ran.stdout.endswith("127.0.0.9 new.example.test\n")


_OPENS = r"""
import ctypes, errno, fcntl, json, os, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def kind(fd):
    return "memfd" if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:") else "real"
def read_all(fd):
    data = b""
    while chunk := os.read(fd, 7):
        data += chunk
    return data.decode()
def openat2(path, flags, resolve=0):
    how = ctypes.create_string_buffer(struct.pack("=QQQ", flags, 0, resolve), 24)
    fd = libc.syscall(437, -100, path, how, ctypes.c_size_t(24))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "openat2")
    return fd
r = {}
a = os.open("/etc/hosts", os.O_RDONLY)
r["a_first5"] = os.read(a, 5).decode()
b = os.open("/etc/hosts", os.O_RDONLY)
r["b"] = read_all(b)
r["a_rest"] = read_all(a)
r["kinds"] = [kind(a), kind(b)]
os.close(a); os.close(b)
with open("/etc/hosts") as f:
    r["builtin_open"] = f.read()
d = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
fd = os.open("hosts", os.O_RDONLY, dir_fd=d)
r["dir_fd"] = read_all(fd); os.close(fd); os.close(d)
os.chdir("/etc")
fd = os.open("hosts", os.O_RDONLY); r["relative"] = read_all(fd); os.close(fd)
fd = os.open("../etc/./hosts", os.O_RDONLY); r["dotted"] = read_all(fd); os.close(fd)
def in_thread():
    fd = os.open("hosts", os.O_RDONLY); r["thread"] = read_all(fd); os.close(fd)
t = threading.Thread(target=in_thread); t.start(); t.join()
os.chdir("/")
def err_of(rc):
    return "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
r["errors"] = [
    err_of(libc.syscall(257, -1, b"hosts", 0)),
    err_of(libc.syscall(257, -100, ctypes.c_void_p(8), 0)),
    err_of(libc.syscall(2, b"/etc/hosts/", 0)),
]
fd = openat2(b"/etc/hosts", os.O_RDONLY); r["openat2"] = read_all(fd); os.close(fd)
fd = openat2(b"/etc/hosts", os.O_RDONLY, resolve=0x04)  # RESOLVE_NO_SYMLINKS
r["openat2_resolve"] = kind(fd); os.close(fd)
fd = libc.syscall(257, -100, b"/etc/hosts", 0)
r["no_cloexec"] = fcntl.fcntl(fd, fcntl.F_GETFD); os.close(fd)
fd = libc.syscall(257, -100, b"/etc/hosts", os.O_CLOEXEC)
r["cloexec"] = fcntl.fcntl(fd, fcntl.F_GETFD); os.close(fd)
fd = libc.syscall(2, b"/etc/hosts", os.O_RDONLY | os.O_NONBLOCK)
r["nonblock"] = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK); os.close(fd)
fd = os.open("/etc/hosts", os.O_RDWR)  # never written: just opened and closed
r["rdwr"] = [kind(fd), os.fstat(fd).st_ino == os.stat("/etc/hosts").st_ino]; os.close(fd)
with open(sys.argv[1]) as f:
    r["other"] = f.read()
print(json.dumps(r))
"""


def test_every_way_of_opening_gets_its_own_virtual_file(vf: VirtualFiles, tmp_path: Path) -> None:
    """Absolute, dir_fd, cwd-relative, dotted, other-thread and openat2 opens are served,
    each from offset 0 with an offset of its own; O_CLOEXEC and O_NONBLOCK are honoured;
    openat2 with RESOLVE_*, a write-intent open and other files reach the real files; bad
    calls get the kernel's errors."""
    other = tmp_path / "other.txt"
    other.write_text("just a file\n")
    r = run_child(python(_OPENS, str(other)), vf).json()
    text = HOSTS.decode()
    assert r["a_first5"] + r["a_rest"] == text  # type: ignore[operator]
    for key in ("b", "builtin_open", "dir_fd", "relative", "dotted", "thread", "openat2"):
        assert r[key] == text, key
    assert r["kinds"] == ["memfd", "memfd"]
    assert r["openat2_resolve"] == "real"
    assert r["no_cloexec"] == 0
    assert r["cloexec"] == 1  # FD_CLOEXEC
    assert r["nonblock"] is True
    assert r["rdwr"] == ["real", True]
    assert r["other"] == "just a file\n"
    assert r["errors"] == ["EBADF", "EFAULT", "ENOTDIR"]  # the kernel's own answers


_SYMLINKS = r"""
import errno, json, os, sys
data, link = sys.argv[1], sys.argv[2]
r = {}
for name, path in (("data", data), ("link", link)):
    with open(path) as f:
        r[name] = f.read()
try:
    os.open(link, os.O_RDONLY | os.O_NOFOLLOW)
    r["nofollow"] = "opened"
except OSError as err:
    r["nofollow"] = errno.errorcode[err.errno]
print(json.dumps(r))
"""


def test_a_symlinked_virtual_path_serves_its_target_too(tmp_path: Path) -> None:
    """A virtual path that is a symlink: opening it or its target is served; O_NOFOLLOW on
    the link fails with ELOOP as it would without us; a file merely named hosts is real."""
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "hosts"
    target.write_text("real\n")
    link = tmp_path / "hosts"
    link.symlink_to(target)
    with VirtualFiles() as files:
        files.set(str(link), HOSTS)
        r = run_child(python(_SYMLINKS, str(target), str(link)), files).json()
        assert r == {"data": HOSTS.decode(), "link": HOSTS.decode(), "nofollow": "ELOOP"}
        unrelated = tmp_path / "elsewhere" / "hosts"
        unrelated.parent.mkdir()
        unrelated.write_text("mine\n")
        ran = run_child(["cat", str(unrelated)], files)
        assert (ran.stdout, ran.served) == ("mine\n", 0)


_MANY = r"""
import os, sys
want = None
for _ in range(int(sys.argv[1])):
    fd = os.open("/etc/hosts", os.O_RDONLY)
    data = os.read(fd, 65536)
    os.close(fd)
    assert want is None or data == want
    want = data
print(len(want))
"""


def test_many_opens_leak_no_supervisor_fds(vf: VirtualFiles) -> None:
    """Hundreds of served opens: every temporary description is closed again."""
    run_child(["true"], vf)  # warm up: the cached BPF program, the tempfile module
    before = _fd_count()
    ran = run_child(python(_MANY, "500"), vf)
    assert ran.status == 0, ran.stderr
    assert ran.stdout.strip() == str(len(HOSTS))
    assert ran.served >= 500
    assert _fd_count() == before


_ALIASES = r"""
import json, os, sys
r = {}
for name in sys.argv[1:]:
    with open(name) as f:
        r[name] = f.read()
print(json.dumps(r))
"""


@pytest.mark.parametrize("gate", ["python", "gate", "gate-watch", "gate-full"])
def test_the_gate_continues_only_opens_python_would(tmp_path: Path, gate: str) -> None:
    """The gate's open filter is a cache of Python's answer: with it on (as in production)
    or off, a virtual path's realpath of another name (as a stub-resolv.conf that
    /etc/resolv.conf links to) reads the virtual file, and a symlink of a name no virtual
    file has reads the real one."""
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "stub-hosts"
    target.write_text("real\n")
    link = tmp_path / "hosts"  # the virtual path: a symlink of another name
    link.symlink_to(target)
    alias = tmp_path / "alias"  # Python never resolves this name: the real file
    alias.symlink_to(target)
    opened = [str(link), str(target), "data/stub-hosts", str(alias)]
    with VirtualFiles() as files:
        files.set(str(link), HOSTS)
        assert files.names == {b"hosts", b"stub-hosts"}
        ran = run_child(python(_ALIASES, *opened), files, cwd=str(tmp_path), gate=gate)
    virtual = HOSTS.decode()
    assert ran.json() == dict(zip(opened, [virtual, virtual, virtual, "real\n"], strict=True))
    assert ran.served == 3
    if gate in ("gate", "gate-watch"):  # the other opens never reached Python
        assert ran.gate_opens > 0 and ran.continued < ran.gate_opens
    else:  # no filter, or names it could not hold: every open reached Python
        assert ran.gate_opens == 0
