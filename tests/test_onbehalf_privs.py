"""On behalf never means more privilege.

The supervisor performs the command's connect/sendmsg itself; here a root supervisor
serves a command that has less than it (another uid, or root without NET_ADMIN/NET_RAW),
and every call must come out as the command's own would: refused where it would be
refused, and seen by the peer as the command's uid. Each test checks the receiving side
too: nothing a refused call sent may arrive.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandlock import _caller, _msg

from .conftest import describe, probe_results, run_plain, run_sandboxed

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs a root supervisor"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]

UID = 12345
AS_USER = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
EACCES, EPERM = 13, 1


def unix_args(path: str, *rest: str) -> list[str]:
    """sandlock arguments for a command that uses the AF_UNIX socket ``path`` served
    outside the sandbox (which needs a rule: README, "Unix sockets")."""
    return ["--unix-allow", path, *rest]


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory uid 12345 can enter (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="sandlock-privs-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def privs(probe: Callable[[str], str], public_dir: Path) -> str:
    """tests/probes/privs.c, where uid 12345 can run it."""
    path = public_dir / "privs"
    shutil.copy(probe("privs"), path)
    path.chmod(0o755)
    return str(path)


def _listener(path: Path, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(str(path))
    if kind == socket.SOCK_STREAM:
        s.listen(8)
    s.setblocking(False)
    return s


def _pending(s: socket.socket) -> socket.socket | None:
    """A connection waiting in the backlog, if any reached it."""
    try:
        return s.accept()[0]
    except BlockingIOError:
        return None


# ---- AF_UNIX: paths and the peer's view ------------------------------------------------


def test_a_unix_socket_in_a_root_only_directory_stays_out_of_reach(
    privs: str, public_dir: Path
) -> None:
    """uid 12345 cannot search a 0700 root directory: EACCES, as without sandlock, and
    nothing reaches the server (the root supervisor could have connected)."""
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    path = private / "s"
    with _listener(path) as server:
        plain = run_plain([*AS_USER, privs, "unix", str(path)])
        assert probe_results(plain.stdout)["connect"].errno == EACCES, describe(plain)
        res = run_sandboxed(unix_args(str(path)), [*AS_USER, privs, "unix", str(path)])
        assert probe_results(res.stdout)["connect"].errno == EACCES, describe(res)
        assert _pending(server) is None
        # The root command may: the directory is root's.
        res = run_sandboxed(unix_args(str(path)), [privs, "unix", str(path)])
        assert probe_results(res.stdout)["connect"].ok, describe(res)
        conn = _pending(server)
        assert conn is not None
        conn.close()


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_the_peer_sees_the_callers_uid(privs: str, public_dir: Path, relative: bool) -> None:
    """SO_PEERCRED names the command's uid and gid, not the root supervisor's (a relative
    path goes through our /proc/self/fd view of its cwd, under its credentials)."""
    path = public_dir / "s"
    with _listener(path) as server:
        path.chmod(0o777)
        target = "s" if relative else str(path)
        res = run_sandboxed(
            unix_args(str(path)), [*AS_USER, privs, "unix", target], cwd=str(public_dir)
        )
        assert probe_results(res.stdout)["connect"].ok, describe(res)
        conn = _pending(server)
        assert conn is not None, describe(res)
        with conn:
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        _pid, uid, gid = struct.unpack("3i", raw)
        assert (uid, gid) == (UID, UID)


# ---- control messages that need a capability ---------------------------------------------


def test_an_so_mark_control_message_needs_net_admin(privs: str, sinks) -> None:  # type: ignore[no-untyped-def]
    """A root command lacks CAP_NET_ADMIN: SO_MARK is EPERM as a socket option and as a
    control message alike, and the datagram never leaves."""
    sink = sinks.udp("127.0.0.1")
    res = run_sandboxed(["--net-allow", sink.spec], [privs, "mark", sink.target])
    out = probe_results(res.stdout)
    assert out["setsockopt"].errno == EPERM, describe(res)
    assert out["sendmsg"].errno == EPERM, describe(res)
    assert sink.settle().count == 0


def test_an_ipv6_hop_by_hop_option_needs_net_raw(privs: str, sinks) -> None:  # type: ignore[no-untyped-def]
    """IPV6_HOPOPTS needs CAP_NET_RAW, which a root command loses: EPERM, nothing sent."""
    sink = sinks.udp("::1")
    res = run_sandboxed(["--net-allow", sink.spec], [privs, "hopopts", sink.target])
    assert probe_results(res.stdout)["sendmsg"].errno == EPERM, describe(res)
    assert sink.settle().count == 0


def test_control_messages_no_capability_governs_still_go(privs: str, sinks) -> None:  # type: ignore[no-untyped-def]
    """IP_TTL needs nothing: a uid-12345 command's datagram with it arrives."""
    sink = sinks.udp("127.0.0.1")
    res = run_sandboxed(["--net-allow", sink.spec], [*AS_USER, privs, "ttl", sink.target])
    assert probe_results(res.stdout)["sendmsg"].ok, describe(res)
    assert sink.settle().count == 1


def test_a_netlink_multicast_send_needs_net_admin(privs: str) -> None:
    """Sending to an rtnetlink group needs CAP_NET_ADMIN (the supervisor's would do)."""
    res = run_sandboxed([], [privs, "netlink"])
    assert probe_results(res.stdout)["sendto"].errno == EPERM, describe(res)


# ---- SCM_CREDENTIALS ------------------------------------------------------------------------


@pytest.fixture
def cred_sink(public_dir: Path) -> Iterator[tuple[str, socket.socket]]:
    """An AF_UNIX datagram socket anyone may send to, receiving credentials."""
    path = public_dir / "creds"
    with _listener(path, socket.SOCK_DGRAM) as s:
        path.chmod(0o777)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield str(path), s


def _received(s: socket.socket) -> list[tuple[int, int, int]]:
    """The (pid, uid, gid) of every datagram waiting on s."""
    out = []
    while True:
        try:
            _data, anc, _flags, _addr = s.recvmsg(64, socket.CMSG_SPACE(12))
        except BlockingIOError:
            return out
        for level, kind, value in anc:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                out.append(struct.unpack("iII", value))


@pytest.mark.parametrize(
    ("as_user", "ids"),
    [
        (True, ("1", "self", "self")),  # another pid
        (True, ("self", "0", "self")),  # root's uid
        (True, ("self", "self", "0")),  # root's gid
        (False, ("1", "self", "self")),  # root, but no CAP_SYS_ADMIN
    ],
    ids=["user-pid-1", "user-uid-0", "user-gid-0", "root-pid-1"],
)
def test_forged_credentials_are_refused(
    privs: str, cred_sink: tuple[str, socket.socket], as_user: bool, ids: tuple[str, str, str]
) -> None:
    path, server = cred_sink
    cmd = [*(AS_USER if as_user else []), privs, "creds", path, *ids]
    plain = run_plain(["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", *cmd])
    assert probe_results(plain.stdout)["sendmsg"].errno == EPERM, describe(plain)
    assert len(_received(server)) == 0
    res = run_sandboxed(unix_args(path), cmd)
    assert probe_results(res.stdout)["sendmsg"].errno == EPERM, describe(res)
    assert _received(server) == []


@pytest.mark.parametrize("as_user", [False, True], ids=["root", "user"])
def test_own_credentials_still_go_through(
    privs: str, cred_sink: tuple[str, socket.socket], as_user: bool
) -> None:
    """The command's own pid, uid and gid are sent, and arrive as such."""
    path, server = cred_sink
    cmd = [*(AS_USER if as_user else []), privs, "creds", path, "self", "self", "self"]
    res = run_sandboxed(unix_args(path), cmd)
    assert probe_results(res.stdout)["sendmsg"].ok, describe(res)
    pid = int(res.stdout.split("pid=")[1].split()[0])
    uid = UID if as_user else 0
    assert _received(server) == [(pid, uid, uid)]


def test_a_credentials_reader_sees_the_callers_uid(
    privs: str, cred_sink: tuple[str, socket.socket]
) -> None:
    """With no SCM_CREDENTIALS given, the kernel attaches the sender's own: the command's
    uid and gid, not the root supervisor's (the pid is the supervisor's: a known limit)."""
    path, server = cred_sink
    res = run_sandboxed(unix_args(path), [*AS_USER, privs, "dgram", path])
    assert probe_results(res.stdout)["sendto"].ok, describe(res)
    [(_pid, uid, gid)] = _received(server)
    assert (uid, gid) == (UID, UID)


# ---- the pure parts ---------------------------------------------------------------------------

STATUS = b"""Name:\tx
Tgid:\t500
NStgid:\t500\t1
Uid:\t1000\t1001\t1002\t1003
Gid:\t2000\t2001\t2002\t2003
Groups:\t5 6\t
CapPrm:\t0000000000000000
CapEff:\t0000000000200000
"""


def test_status_parsing() -> None:
    c = _caller.parse_status(STATUS, "ns")
    assert c is not None
    assert (c.tgid, c.tgid_inner) == (500, 1)
    assert c.uids == (1000, 1001, 1002, 1003)
    assert c.gids == (2000, 2001, 2002, 2003)
    assert c.groups == (5, 6)
    assert c.has(_caller.CAP_SYS_ADMIN) and not c.has(_caller.CAP_SETUID)
    assert _caller.parse_status(b"Name:\tx\n", "ns") is None


def test_credentials_are_checked_as_the_kernel_does() -> None:
    c = _caller.parse_status(STATUS.replace(b"0000000000200000", b"0" * 16), _caller.own().userns)
    assert c is not None
    check = _caller.check_credentials
    assert check([(1, 1002, 2000)], c) == 0  # its own pid, as it sees it
    assert check([(500, 1000, 2000)], c) == -EPERM  # our view of its pid is not its own
    assert check([(1, 0, 2000)], c) == -EPERM
    assert check([(1, 1000, 0)], c) == -EPERM
    assert check([(1, 0xFFFF_FFFF, 2000)], c) == -22  # EINVAL: not an id


def test_which_ip_control_messages_need_the_callers_capabilities() -> None:
    def cmsg(level: int, kind: int) -> bytes:
        return struct.pack("<Qii", 20, level, kind) + bytes(8)

    assert not _msg.privileged(b"")
    assert not _msg.privileged(cmsg(0, 2) + cmsg(41, 67))  # IP_TTL, IPV6_TCLASS
    assert _msg.privileged(cmsg(0, 2) + cmsg(1, 36))  # SO_MARK
    assert _msg.privileged(cmsg(41, 54))  # IPV6_HOPOPTS
    assert _msg.privileged(cmsg(99, 99))  # unknown: the caller's, to be safe


def test_credentials_in_control_data() -> None:
    one = struct.pack("<Qii", 28, 1, 2) + struct.pack("<iII", 7, 8, 9) + bytes(4)
    rights = struct.pack("<Qii", 20, 1, 1) + struct.pack("<i", 3) + bytes(4)
    found = _msg.credentials(rights + one)
    assert found == [(len(rights) + 16, (7, 8, 9))]
    moved = _msg.with_pids(rights + one, [found[0][0]], 7, 700)
    assert _msg.credentials(moved) == [(len(rights) + 16, (700, 8, 9))]
    bad = struct.pack("<Qii", 24, 1, 2) + bytes(8)
    assert _msg.credentials(bad) == -22


BIND = """
import os, socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(path)
    except OSError as e:
        print(e.errno)
    else:
        print("bound", os.stat(path).st_uid)
"""


def test_a_bind_is_made_with_the_callers_credentials(public_dir: Path) -> None:
    """A socket the command binds is bound with its credentials: EACCES in a directory it
    cannot write (the supervisor, root, could), and the file is the command's own."""
    closed, open_ = public_dir / "closed", public_dir / "open"
    closed.mkdir(mode=0o700)
    open_.mkdir()
    open_.chmod(0o777)
    argv = [*AS_USER, "/usr/bin/python3", "-c", BIND]
    plain = run_plain([*argv, str(closed / "a"), str(open_ / "a")])
    assert plain.stdout.split("\n")[:2] == [str(EACCES), f"bound {UID}"], describe(plain)
    res = run_sandboxed([], [*argv, str(closed / "b"), str(open_ / "b")])
    assert res.stdout.split("\n")[:2] == [str(EACCES), f"bound {UID}"], describe(res)
    assert not (closed / "b").exists()
