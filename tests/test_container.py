"""The simulated default container (tests/container.py) and sandlock inside it (issue 15).

First the launcher itself: what it refuses must be refused under it and allowed outside
it, or the container-mode runs prove nothing.
"""

from __future__ import annotations

import array
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from . import container
from .conftest import SANDLOCK, Sinks, describe, run_command, sandlock_env

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the launcher starts as root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]

UID = 12345
MODES = [None, UID]
MODE_IDS = ["root", "uid12345"]


def in_container(uid: int | None, public_python: str, *args: str) -> list[str]:
    """``sandlock ARGS`` inside the simulated container, as root or as ``uid``."""
    return [*container.launcher(uid), public_python, "-m", "sandlock", *args]


# Run by /usr/bin/python3 (uid 12345 cannot enter a venv under /root): each call's errno.
_PROBE = textwrap.dedent("""
    import ctypes, os, socket
    libc = ctypes.CDLL(None, use_errno=True)
    def call(name, nr, *args):
        rc = libc.syscall(nr, *args)
        print(name, "ok" if rc >= 0 else "errno=%d" % ctypes.get_errno())
    pidfd = os.pidfd_open(os.getpid())
    call("pidfd_getfd", 438, pidfd, 0, 0)
    call("kcmp", 312, os.getpid(), os.getpid(), 0, 0, 0)
    call("clone3", 435, 0, 0)
    call("unshare", 272, 0x40000000)
    call("io_uring_setup", 425, 1, 0)
    try:
        socket.socket(40, socket.SOCK_STREAM)
        print("vsock ok")
    except OSError as e:
        print("vsock errno=%d" % e.errno)
    for line in open("/proc/self/status"):
        if line.startswith(("CapEff", "Uid")):
            print(line.split()[0], line.split()[1])
""")


def _probe(prefix: list[str]) -> dict[str, str]:
    res = run_command([*prefix, "/usr/bin/python3", "-c", _PROBE], timeout=30)
    assert res.returncode == 0, describe(res)
    return dict(line.split(" ", 1) for line in res.stdout.splitlines())


@pytest.mark.parametrize("uid", [None, UID], ids=["root", "uid12345"])
def test_launcher_refuses_what_docker_refuses(uid: int | None) -> None:
    """Under the launcher pidfd_getfd, kcmp, unshare(CLONE_NEWNET), io_uring and AF_VSOCK
    are refused (EPERM), clone3 answers ENOSYS and the capabilities are Docker's default
    set (root) or none (uid 12345); outside it the same calls are not refused."""
    inside = _probe(container.launcher(uid))
    assert inside["pidfd_getfd"] == "errno=1"
    assert inside["kcmp"] == "errno=1"
    assert inside["clone3"] == "errno=38"
    assert inside["unshare"] == "errno=1"
    assert inside["io_uring_setup"] == "errno=1"
    assert inside["vsock"] == "errno=1"
    assert inside["CapEff:"] == ("00000000a80425fb" if uid is None else "0000000000000000")
    assert inside["Uid:"] == str(0 if uid is None else UID)

    outside = _probe([])
    assert outside["pidfd_getfd"] == "ok"
    assert outside["kcmp"] == "ok"
    assert outside["clone3"] != "errno=38"  # (EFAULT or EINVAL: it reached the kernel)
    assert outside["io_uring_setup"] != "errno=1"


def test_supervisor_threads_stay_outside_the_filter() -> None:
    """The filter, no_new_privs and the Landlock domain are taken on by a short-lived
    spawning thread only: every thread left in the supervisor has no filter and no
    no_new_privs, while the command has both. (The spawning thread may still be listed
    for a moment after it was joined, while the kernel finishes its exit: wait for it.)"""
    script = (
        "for i in $(seq 50); do"
        " grep -q -E '^Seccomp:.2' /proc/$PPID/task/*/status || break; sleep 0.1; done;"
        "grep -h -E '^(Seccomp|NoNewPrivs):' /proc/$PPID/task/*/status | sort | uniq -c;"
        " echo self; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"
    )
    res = run_command(
        [*SANDLOCK, "--net-allow", "127.0.0.1:1", "--", "sh", "-c", script], env=sandlock_env()
    )
    assert res.returncode == 0, describe(res)
    supervisor, _, child = res.stdout.partition("self\n")
    assert "Seccomp:\t0" in supervisor and "NoNewPrivs:\t0" in supervisor, supervisor
    assert "Seccomp:\t2" not in supervisor and "NoNewPrivs:\t1" not in supervisor, supervisor
    assert "Seccomp:\t2" in child and "NoNewPrivs:\t1" in child, child


@pytest.mark.parametrize("uid", MODES, ids=MODE_IDS)
def test_cli_runs_in_a_container(uid: int | None, public_python: str) -> None:
    """`sandlock run` starts its command inside a default container, as root and as uid
    12345, with the command's exit status passed through and the command under the
    filter (before: "taking the seccomp listener (pidfd_getfd) failed", exit 1)."""
    script = "grep -E '^Seccomp:' /proc/self/status; id -u; exit 3"
    res = run_command(
        in_container(
            uid, public_python, "run", "--net-allow", "127.0.0.1:1", "--", "sh", "-c", script
        )
    )
    assert res.returncode == 3, describe(res)
    assert "Seccomp:\t2" in res.stdout, describe(res)
    assert res.stdout.split()[-1] == str(uid or 0), describe(res)
    assert res.stderr == "", describe(res)


# ---- sockets made on behalf (sandlock/_owned.py) ---------------------------------------


def _run_py(uid: int | None, public_python: str, rules: list[str], code: str, **kw: Any) -> Any:
    """``sandlock run RULES -- /usr/bin/python3 -c CODE`` inside the container."""
    argv = in_container(uid, public_python, "run", *rules, "--", "/usr/bin/python3", "-c", code)
    return run_command(argv, **kw)


def test_the_probe_chooses_sockets_made_on_behalf() -> None:
    """Inside the container pidfd_getfd is refused and sockets are made on behalf; outside
    they are copied (the probe, csrc/owned.c)."""
    code = "from sandlock import _owned; print(_owned.enabled())"
    inside = run_command([*container.launcher(), sys.executable, "-c", code], env=sandlock_env())
    outside = run_command([sys.executable, "-c", code], env=sandlock_env())
    assert (inside.stdout, outside.stdout) == ("True\n", "False\n"), describe(inside)


@pytest.mark.parametrize("uid", MODES, ids=MODE_IDS)
def test_connect_and_send_in_a_container(uid: int | None, public_python: str, sinks: Sinks) -> None:
    """In the container, as root and as uid 12345: an allowed connect and datagram arrive,
    a denied one does not, socketpair works, and the filter's socket() refusals hold."""
    ok, bad, dgram = sinks.tcp("127.0.0.1"), sinks.tcp("127.0.0.2"), sinks.udp("127.0.0.1")
    code = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {ok.port}), timeout=10)
        s.sendall(b"x"); s.close()
        try:
            socket.create_connection(("127.0.0.2", {bad.port}), timeout=10)
            print("denied reached")
        except OSError as e:
            print("denied", e.errno)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"d", ("127.0.0.1", {dgram.port}))
        a, b = socket.socketpair()
        a.sendall(b"p")
        print("pair", b.recv(1).decode())
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError as e:
            print("raw", e.errno)
    """)
    res = _run_py(uid, public_python, ["--net-allow", ok.spec, "--net-allow", dgram.spec], code)
    assert res.stdout.split("\n")[:3] == ["denied 111", "pair p", "raw 1"], describe(res)
    assert (ok.settle().count, bad.settle().count, dgram.settle().count) == (1, 0, 1)


def test_a_closed_socket_reaches_eof_while_the_sandbox_runs(public_python: str) -> None:
    """Our copy of a socket the command closed is dropped: the peer sees EOF while the
    command still runs (without the sweep it would see it only when the sandbox ends)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    code = (
        f"import socket, time; s = socket.create_connection(('127.0.0.1', {port}));"
        " s.sendall(b'x'); s.close(); time.sleep(4)"
    )
    got: list[str] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            got.append(conn.recv(1).decode())
            conn.settimeout(2.0)
            try:
                got.append("eof" if conn.recv(1) == b"" else "data")
            except TimeoutError:
                got.append("no eof")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with server:
        res = _run_py(None, public_python, ["--net-allow", f"127.0.0.1:{port}"], code)
        thread.join(15)
    assert res.returncode == 0, describe(res)
    assert got == ["x", "eof"], describe(res)


def test_a_closed_listener_stops_accepting(public_python: str) -> None:
    """A listening socket the command closed stops accepting soon after (our copy is
    dropped), although the command still runs."""
    code = (
        "import socket, sys, time; l = socket.create_server(('127.0.0.1', 0));"
        " print(l.getsockname()[1], flush=True); l.close(); time.sleep(4)"
    )
    argv = in_container(None, public_python, "run", "--", "/usr/bin/python3", "-c", code)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True) as p:
        try:
            assert p.stdout is not None
            port = int(p.stdout.readline())
            time.sleep(1.0)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        finally:
            p.kill()


_AS_CALLER = textwrap.dedent("""
    import os, socket, struct
    s = socket.socket()
    print(os.fstat(s.fileno()).st_uid)
    a, b = socket.socketpair()
    print(struct.unpack("3i", a.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1])
""")
AS_USER = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]


def test_sockets_are_made_as_the_caller() -> None:
    """A root supervisor (here on the host, made to make the sockets on behalf: it may
    look at another uid's processes) makes the socket and the pair of a uid-12345 command
    as that uid: the socket's owner and the pair's SO_PEERCRED are 12345, not 0."""
    env = sandlock_env({**os.environ, "SANDLOCK_OWN_SOCKETS": "1"})
    argv = [*SANDLOCK, "--", *AS_USER, "/usr/bin/python3", "-c", _AS_CALLER]
    res = run_command(argv, env=env)
    assert res.stdout.split() == [str(UID), str(UID)], describe(res)


def test_another_uid_under_a_root_supervisor_in_a_container_is_one_line(
    public_python: str,
) -> None:
    """In the container, root has no CAP_SYS_PTRACE: a command that became uid 12345
    cannot be acted for. Its socket() is refused (EPERM) and one line says why and what
    to grant, instead of a generic failure."""
    argv = in_container(
        None, public_python, "run", "--", *AS_USER, "/usr/bin/python3", "-c", _AS_CALLER
    )
    res = run_command(argv)
    assert "PermissionError" in res.stderr, describe(res)
    ours = [line for line in res.stderr.splitlines() if line.startswith("sandlock:")]
    assert len(ours) == 1 and "--cap-add SYS_PTRACE" in ours[0], describe(res)
    assert "another user" in ours[0], describe(res)


def test_inherited_socket_works_one_from_outside_is_refused(public_python: str) -> None:
    """A socket the command inherits (--keep-fds) is ours too: a trapped sendmsg on it
    works. A socket received from outside with SCM_RIGHTS cannot be acted on: its connect
    is refused (EPERM) and one line says that pidfd_getfd is refused and what to grant."""
    ours, theirs = socket.socketpair()
    stranger = socket.socket()
    ours.sendmsg(
        [b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stranger.fileno()]))]
    )
    fd = theirs.fileno()
    code = textwrap.dedent(f"""
        import array, socket
        q = socket.socket(fileno={fd})
        q.sendmsg([b"hi"])
        msg, anc, _, _ = q.recvmsg(1, socket.CMSG_SPACE(4))
        got = socket.socket(fileno=array.array("i", anc[0][2])[0])
        try:
            got.connect(("127.0.0.1", 9))
            print("connected")
        except OSError as e:
            print("stranger", e.errno)
    """)
    with ours, theirs, stranger:
        res = _run_py(
            None,
            public_python,
            ["--keep-fds", str(fd), "--net-allow", "127.0.0.1:9"],
            code,
            pass_fds=[fd],
        )
        ours.settimeout(5)
        assert ours.recv(2) == b"hi", describe(res)
    assert res.stdout == "stranger 1\n", describe(res)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "pidfd_getfd is refused" in lines[0], describe(res)
    assert "--cap-add SYS_PTRACE" in lines[0], describe(res)


def test_the_sockets_kept_for_one_sandbox_are_capped(public_python: str) -> None:
    """Each socket made on behalf is a descriptor of the supervisor (a daemon's, serving
    others too): one sandbox gets at most OWNED_MAX of them; its next socket() fails
    with EMFILE, and closing one lets it make another."""
    from sandlock import _syscalls as sys_

    code = textwrap.dedent(f"""
        import errno, resource, socket
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, {sys_.OWNED_MAX} + 200), hard))
        made = []
        try:
            while len(made) < {sys_.OWNED_MAX} + 10:
                made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        except OSError as e:
            print(len(made), errno.errorcode[e.errno])
        made.pop().close()
        import time; time.sleep(1)  # (the sweep drops our copy)
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        print("again")
    """)
    res = _run_py(None, public_python, [], code, timeout=120)
    assert res.stdout.split("\n")[:2] == [f"{sys_.OWNED_MAX} EMFILE", "again"], describe(res)


def test_accepted_and_cloexec_sockets_in_a_container(public_python: str) -> None:
    """A connection accepted on behalf is kept too: a trapped sendmsg with an address on
    it (UDP) and a sendto on the accepted TCP socket work; SOCK_CLOEXEC is honoured on a
    socket made on behalf (and absent without it)."""
    code = textwrap.dedent("""
        import fcntl, socket
        l = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(l.getsockname())
        a, _ = l.accept()
        c.sendall(b"ping")
        print(a.recv(4).decode())
        a.sendmsg([b"pong"])
        print(c.recv(4).decode())
        import ctypes  # (Python's socket() always adds SOCK_CLOEXEC: libc's does not)
        libc = ctypes.CDLL(None)
        for kind in (socket.SOCK_DGRAM, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC):
            fd = libc.socket(socket.AF_INET, kind, 0)
            print(bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
    """)
    res = _run_py(None, public_python, ["--net-allow", "127.0.0.1:*"], code)
    assert res.stdout.split() == ["ping", "pong", "False", "True"], describe(res)
