"""``sandlock serve``: one long-lived supervisor for many sandboxes.

A client (``sandlock run --daemon PATH``) starts its command itself, then hands the
daemon the command's seccomp listener and pidfd (and its own stderr and audit-log
descriptors, so reports land where they would in standalone mode) over an AF_UNIX
SOCK_SEQPACKET socket, and closes its own copy of the listener. From then on the daemon
answers the sandbox's notifications until the command exits; the client only waits.

If the daemon dies, the last reference to each listener goes with it and the kernel
fails every pending and later call of those sandboxes with ENOSYS: closed, never open.

Requests (one JSON object per record, see _wire.py), each answered with
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``:

* ``{"op": "rules", "allow": [...], "deny": [...]}``: build (parse, resolve) the policy
  for this connection's next sandbox. A bad rule is answered with ``"policy_error":
  true`` and the client's one-line message, before the client starts anything: so the
  client never loads the policy code itself, which keeps its start-up short.
* ``{"op": "supervise", "cmd": [...], "quiet": bool, "summary": bool}`` with descriptors
  [listener, pidfd, stderr, audit?], after "rules"; later, when the command has exited,
  the daemon sends ``{"event": "exit"}``.
* ``{"op": "ps"}``: the caller's live sandboxes (root sees all).
* ``{"op": "policy", "id": ..., "allow": [...], "deny": [...]}``: replace a sandbox's
  policy; it decides from the sandbox's next call.

The socket is created 0600, and every request is checked against the peer's credentials
(SO_PEERCRED): a client may supervise and change only processes of its own uid.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import stat
import struct
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import trio

from . import _syscalls as sys_
from . import _wire
from .audit import AuditLog
from .errors import PolicyError, SandlockError
from .names import NameOptions, Names, Plan
from .report import DenialReport, Observer, Summary
from .supervisor import Supervisor
from .unixrules import daemon_marker

__all__ = ["Daemon", "serve"]


def _encode_reply(reply: dict[str, Any]) -> bytes:
    """The reply's record; one that cannot be sent whole (an error quoting a huge rule)
    becomes a short error of the same kind."""
    try:
        return _wire.encode(reply)
    except _wire.WireError as err:
        short = {"ok": False, "error": f"the reply could not be sent: {err}"}
        if "policy_error" in reply:
            short["policy_error"] = reply["policy_error"]
        return _wire.encode(short)


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to the client."""

    def __init__(self, message: str, *, policy_error: bool = False) -> None:
        super().__init__(message)
        self.policy_error = policy_error


@dataclass
class _Sandbox:
    id: str
    pid: int
    uid: int
    cmd: list[str]
    supervisor: Supervisor
    observer: Observer
    rules: int
    stderr: Any = field(default=None)
    names: Names | None = None


async def build_plan(req: dict[str, Any]) -> Plan:
    """The rules (and hostname options) a request describes, parsed and resolved off the
    loop (see names.Plan)."""
    allow, deny = req.get("allow", []), req.get("deny", [])
    unix_allow = req.get("unix_allow", [])
    if not (_strings(allow) and _strings(deny) and _strings(unix_allow)):
        raise RequestError("allow, deny and unix_allow must be lists of strings")
    try:
        options = NameOptions.from_wire(req.get("names"))
        plan = functools.partial(Plan, allow, deny, options, unix_allow=unix_allow)
        return await trio.to_thread.run_sync(plan)
    except PolicyError as err:
        raise RequestError(str(err), policy_error=True) from None


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _peer_uid(sock: trio.socket.SocketType) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _pidfd_owner(pidfd: int) -> tuple[int, int]:
    """(pid, real uid) of the process a pidfd refers to."""
    pid = uid = -1
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
    except (OSError, ValueError):
        pass
    if pid <= 0 or uid < 0:
        raise RequestError("the pidfd does not name a live process")
    return pid, uid


class Daemon:
    """The daemon's state: its live sandboxes."""

    def __init__(self) -> None:
        self.sandboxes: dict[str, _Sandbox] = {}

    async def serve(
        self,
        listener: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept clients on ``listener`` until cancelled; each gets its own task."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            try:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._client, conn, nursery)
            finally:
                listener.close()

    async def _client(self, conn: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        with conn:
            try:
                uid = _peer_uid(conn)
            except OSError:
                return
            checked: list[Plan] = []  # what "rules" built for the next sandbox
            while True:
                try:
                    data, anc, flags, _ = await conn.recvmsg(
                        _wire.MAX_RECORD, _wire.ANC_SIZE, socket.MSG_CMSG_CLOEXEC
                    )
                except OSError:
                    return
                if not data and not anc:
                    return  # the client went away (mid-handshake is fine)
                try:
                    req, fds = _wire.decode(data, anc, flags)
                    reply = await self._handle(req, fds, uid, conn, nursery, checked)
                except _wire.WireError as err:
                    reply = {"ok": False, "error": str(err)}
                except RequestError as err:
                    reply = {"ok": False, "error": str(err), "policy_error": err.policy_error}
                except Exception:  # a bug one request finds must not end every sandbox
                    traceback.print_exc(file=sys.stderr)
                    reply = {"ok": False, "error": "internal error (see the daemon's stderr)"}
                try:
                    await conn.sendmsg([_encode_reply(reply)])
                except OSError:
                    return

    async def _handle(
        self,
        req: dict[str, Any],
        fds: list[int],
        uid: int,
        conn: trio.socket.SocketType,
        nursery: trio.Nursery,
        checked: list[Plan],
    ) -> dict[str, Any]:
        op = req.get("op")
        if op == "supervise":
            if not checked:
                _wire.close_all(fds)
                raise RequestError("supervise comes after a rules request")
            return self._supervise(req, fds, uid, conn, nursery, checked.pop())
        _wire.close_all(fds)
        if op == "rules":
            plan = await build_plan(req)
            checked[:] = [plan]
            return {"ok": True, "trap_open": plan.trap_open}
        if op == "ps":
            return {"ok": True, "sandboxes": [self._describe(s) for s in self._visible(uid)]}
        if op == "policy":
            box = self.sandboxes.get(str(req.get("id")))
            if box is None or box not in self._visible(uid):
                raise RequestError(f"no sandbox {req.get('id')!r} of yours is running")
            plan = await build_plan(req)  # (hostnames: it may await a while)
            if self.sandboxes.get(box.id) is not box:
                raise RequestError(f"sandbox {box.id} ended before its policy was replaced")
            box.supervisor.policy = plan.policy
            box.rules = len(box.supervisor.policy.allow_rules) + len(
                box.supervisor.policy.deny_rules
            )
            return {"ok": True, "id": box.id}
        raise RequestError(f"unknown op {op!r} (expected rules, supervise, ps, policy)")

    def _visible(self, uid: int) -> list[_Sandbox]:
        return [s for s in self.sandboxes.values() if uid == 0 or s.uid == uid]

    @staticmethod
    def _describe(s: _Sandbox) -> dict[str, Any]:
        return {
            "id": s.id,
            "pid": s.pid,
            "cmd": s.cmd,
            "rules": s.rules,
            "allowed": s.observer.allowed_count + s.supervisor.answered_by_gate,
            "denied": s.observer.denied_count,
        }

    def _supervise(
        self,
        req: dict[str, Any],
        fds: list[int],
        uid: int,
        conn: trio.socket.SocketType,
        nursery: trio.Nursery,
        plan: Plan,
    ) -> dict[str, Any]:
        policy = plan.policy
        names = None
        try:
            if len(fds) not in (3, 4):
                raise RequestError("supervise needs descriptors: listener, pidfd, stderr[, audit]")
            listener, pidfd, err_fd = fds[0], fds[1], fds[2]
            pid, owner = _pidfd_owner(pidfd)
            if uid != 0 and owner != uid:
                raise RequestError(f"process {pid} is not yours")
            cmd = req.get("cmd", [])
            if not _strings(cmd):
                raise RequestError("cmd must be a list of strings")
            try:
                names = plan.start(policy)
            except SandlockError as err:
                raise RequestError(str(err)) from None
            gate = sys_.Gate(listener, sys_.GATE_OPEN if plan.trap_open else 0)
        except BaseException:
            _wire.close_all(fds)
            if names is not None:
                names.close()
            raise
        box_id = uuid.uuid4().hex[:8]
        stderr = os.fdopen(err_fd, "w", buffering=1, closefd=True)
        audit = AuditLog.from_fd(fds[3]) if len(fds) == 4 else None
        observer = Observer(
            box_id,
            audit=audit,
            report=None if req.get("quiet") else DenialReport(stderr),
            summary=Summary() if req.get("summary") else None,
        )
        box = _Sandbox(
            box_id,
            pid,
            owner,
            cmd,
            Supervisor(
                gate, policy, observer, remember=not observer.hears_every_call
            ),
            observer,
            len(policy.allow_rules) + len(policy.deny_rules),
            stderr,
            names,
        )
        if names is not None:
            box.supervisor.use_names(names, observer.dns)
        self.sandboxes[box_id] = box
        nursery.start_soon(self._run_sandbox, box, pidfd, conn)
        return {"ok": True, "id": box_id}

    async def _run_sandbox(self, box: _Sandbox, pidfd: int, conn: trio.socket.SocketType) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(box.supervisor.serve)
                await trio.lowlevel.wait_readable(pidfd)  # the command exited
                nursery.cancel_scope.cancel()
        finally:
            del self.sandboxes[box.id]
            _finish(box)
            trio.lowlevel.notify_closing(box.supervisor.gate.fd)
            box.supervisor.gate.close()
            if box.names is not None:
                box.names.close()
            for fd in (box.supervisor.listener, pidfd):
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
            try:
                await conn.sendmsg([_wire.encode({"event": "exit", "id": box.id})])
            except OSError:
                pass


def _finish(box: _Sandbox) -> None:
    obs = box.observer
    seal = obs.audit.close() if obs.audit is not None else None  # (its lines go below)
    try:
        if obs.report is not None:
            obs.report.close()
        if obs.summary is not None:
            print(obs.summary.render(), file=box.stderr)
        if seal is not None:  # as cli._finish_observer: the warning always, the head unless quiet
            for line in (seal.warning(None), None if obs.report is None else seal.head_line()):
                if line is not None:
                    print(line, file=box.stderr)
        box.stderr.close()
    except OSError:
        pass  # the client's stderr is gone: nothing to tell


async def _bind(path: str) -> trio.socket.SocketType:
    """A listening socket at ``path``, mode 0600; a stale socket file is replaced."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except FileNotFoundError:
        pass
    except ConnectionRefusedError:
        # Nobody listens: a stale socket of a dead daemon, which we replace -- or any
        # other file (connecting to a regular file is refused too), which we never touch.
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SandlockError(f"serve: {path} exists and is not a socket") from None
        os.unlink(path)
    except OSError as err:
        if err.errno != errno.ENOTSOCK:
            raise SandlockError(f"serve: cannot use {path}: {err.strerror}") from None
        raise SandlockError(f"serve: {path} exists and is not a socket") from None
    else:
        raise SandlockError(f"serve: a daemon is already listening on {path}")
    finally:
        probe.close()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)  # the socket file is born 0600: no window with wider access
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


async def serve(path: str) -> None:
    """Run a daemon on ``path`` until cancelled (SIGINT/SIGTERM end it)."""
    from . import _syscalls

    _syscalls.protect_self()  # sandboxes of our uid must not ptrace their supervisor
    listener = await _bind(path)  # outside any nursery: its errors stay one line
    try:  # sandboxes are refused this socket, whatever their rules (unixrules.py)
        mark = daemon_marker(path)
    except OSError as err:
        listener.close()
        raise SandlockError(f"serve: cannot mark {path} as a daemon's: {err.strerror}") from None
    daemon = Daemon()
    with trio.open_signal_receiver(2, 15) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve, listener)
            print(f"sandlock: serving on {path}", file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    mark.close()
    try:
        os.unlink(path)
    except OSError:
        pass
