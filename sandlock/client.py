"""The daemon's clients: ``run --daemon``, ``ps`` and ``policy``. No trio here.

``run_via_daemon`` keeps the command exactly as standalone mode would: it starts it
itself (same stdio, process group and environment), hands the listener to the daemon,
closes its own copy, then only waits for the command and forwards signals. Closing our
copy matters: if the daemon dies, the listener must die with it, so that the kernel
fails the sandbox's calls instead of leaving them waiting for nobody.

A daemon that is alive but does not serve (stopped, its event loop stuck) would leave
those calls waiting for ever instead: a command that runs longer than half the grace
period (``SANDLOCK_DAEMON_TIMEOUT`` seconds, 10 by default) is waited for by
_watchdog.py, which pings the daemon and ends the sandbox if it stops answering.
"""

from __future__ import annotations

import _socket  # not socket, which loads selectors and enum: milliseconds of every launch
import os
import sys
import time

from . import _wire
from ._fastrun import command_environ
from ._signals import FORWARDED_SIGNALS, open_signalfd
from .errors import DaemonError, PolicyError, UsageError
from .launch import original_environ, start
from .session import TIMED_OUT, exit_status, wait_child

# typing costs a launch ~7 ms; the daemon client's path does without it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

_REPLY_TIMEOUT = 30.0
_EXIT_NOTICE_TIMEOUT = 5.0
GRACE = 10.0  # seconds a daemon may leave a ping unanswered before its sandbox is ended
GRACE_VARIABLE = "SANDLOCK_DAEMON_TIMEOUT"

__all__ = ["connect", "ps", "run_via_daemon", "set_policy"]


def connect(path: str) -> _socket.socket:
    """A connection to the daemon at ``path``, or DaemonError saying why not."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise DaemonError(f"--daemon: cannot reach a daemon at {path}: {err.strerror}") from None
    return sock


def request(
    sock: _socket.socket, message: dict[str, Any], fds: Sequence[int] = ()
) -> dict[str, Any]:
    """Send one request and wait for its reply (an error reply raises DaemonError)."""
    try:
        _wire.send(sock, message, list(fds))
        sock.settimeout(_REPLY_TIMEOUT)
        got = _wire.recv(sock)
    except (OSError, _wire.WireError) as err:
        raise DaemonError(f"--daemon: the daemon did not answer: {err}") from None
    if got is None:
        raise DaemonError("--daemon: the daemon closed the connection")
    reply, extra = got
    _wire.close_all(extra)
    if not reply.get("ok"):
        if reply.get("policy_error"):
            raise PolicyError(str(reply.get("error")))
        raise DaemonError(f"--daemon: {reply.get('error', 'request refused')}")
    return reply


def run_via_daemon(
    path: str,
    cmd: Sequence[str],
    allow: Sequence[str],
    deny: Sequence[str],
    *,
    unix_allow: Sequence[str] = (),
    keep_fds: Sequence[int] = (),
    audit: str | None = None,
    quiet: bool = False,
    summary: bool = False,
    names: dict[str, object] | None = None,
    ca_out: Callable[[bytes], None] | None = None,
) -> int:
    """Run ``cmd`` supervised by the daemon at ``path``; return its exit status.

    The daemon checks the rules first (a bad one raises PolicyError before anything is
    started); this process never loads the policy code, which keeps its start-up short.
    ``names`` is the wire form of names.NameOptions (the hostname options); ``ca_out``
    is given the run's CA (--http-tls, the daemon's reply to the rules) before the
    command starts."""
    grace = _grace(os.environ.get(GRACE_VARIABLE))
    sock = connect(path)
    rules = {"op": "rules", "allow": list(allow), "deny": list(deny), "names": names}
    if unix_allow:
        rules["unix_allow"] = list(unix_allow)
    checked = request(sock, rules)
    trap_open = bool(checked.get("trap_open"))
    if ca_out is not None:
        ca_pem = checked.get("ca_pem")
        if not isinstance(ca_pem, str):
            raise DaemonError("--daemon: the daemon gave no CA for --http-ca-out")
        ca_out(ca_pem.encode("ascii"))
    audit_fd = -1
    if audit is not None:
        try:
            audit_fd = os.open(audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise UsageError(f"--audit: cannot open {audit}: {err.strerror}") from None
    signal_fd = open_signalfd()
    child = start(
        cmd,
        env=command_environ(original_environ()),
        keep_fds=keep_fds,
        unblock_signals=FORWARDED_SIGNALS,
        gate=False,  # the daemon serves the listener; it starts a gate of its own
        trap_open=trap_open,  # the daemon serves virtual files
    )
    try:
        message = {"op": "supervise", "cmd": list(cmd), "quiet": quiet, "summary": summary}
        fds = [child.listener, child.pidfd, sys.stderr.fileno()]
        if audit_fd >= 0:
            fds.append(audit_fd)
        try:
            request(sock, message, fds)
        except DaemonError:
            os.kill(child.pid, 9)
            exit_status(child.pidfd)
            raise
        os.close(child.listener)  # the daemon's copy must be the last one
        # (no ping is due before half the grace period: a short command needs no watchdog)
        deadline = time.monotonic() + grace / 2
        status = wait_child(child, signal_fd, until_notified=False, deadline=deadline)
        noticed = False
        if status == TIMED_OUT:
            from ._watchdog import watch

            status, noticed = watch(child, signal_fd, sock, path, grace)
        assert status is not None
        if not noticed:
            _await_exit_notice(sock)
        return status
    finally:
        for fd in (child.pidfd, signal_fd, audit_fd):
            if fd >= 0:
                os.close(fd)
        sock.close()


def _await_exit_notice(sock: _socket.socket) -> None:
    """Wait (briefly) for the daemon to finish its reports for this sandbox (a ping's
    late reply may come first)."""
    end = time.monotonic() + _EXIT_NOTICE_TIMEOUT
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got = _wire.recv(sock)
        except _wire.WireError:
            continue
        except OSError:
            return
        if got is None:
            return
        _wire.close_all(got[1])
        if "event" in got[0]:
            return


def _grace(text: str | None) -> float:
    """The grace period $SANDLOCK_DAEMON_TIMEOUT gives (seconds), GRACE without it."""
    if text is None:
        return GRACE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"{GRACE_VARIABLE}: expected a positive number of seconds, not {text!r}")
    return value


def ps(path: str) -> list[dict[str, Any]]:
    """The caller's live sandboxes, as the daemon describes them."""
    sock = connect(path)
    try:
        sandboxes: list[dict[str, Any]] = request(sock, {"op": "ps"})["sandboxes"]
        return sandboxes
    finally:
        sock.close()  # a bare _socket.socket is no context manager


def set_policy(
    path: str,
    sandbox_id: str,
    allow: Sequence[str],
    deny: Sequence[str],
    unix_allow: Sequence[str] = (),
    *,
    http_allow: Sequence[str] | None = None,
    http_deny: Sequence[str] | None = None,
) -> None:
    """Replace the policy of a running sandbox (PolicyError or DaemonError if refused).
    ``http_allow``/``http_deny``: either given replaces both of its HTTP lists (None is
    empty then); neither keeps them."""
    sock = connect(path)
    message = {"op": "policy", "id": sandbox_id, "allow": list(allow), "deny": list(deny)}
    if unix_allow:
        message["unix_allow"] = list(unix_allow)
    if http_allow is not None or http_deny is not None:
        message["http_allow"] = list(http_allow or ())
        message["http_deny"] = list(http_deny or ())
    try:
        request(sock, message)
    finally:
        sock.close()
