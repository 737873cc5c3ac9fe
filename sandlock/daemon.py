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
* ``{"op": "ping"}``: answered ``{"ok": true}`` by the event loop; a client asks it
  while its command runs, to learn that the daemon still serves it (client.py).
* ``{"op": "policy", "id": ..., "allow": [...], "deny": [...]}``: replace a sandbox's
  policy; it decides from the sandbox's next call. The new rules are planned with the
  sandbox's own name options. With ``"http_allow"`` or ``"http_deny"`` (either: both
  lists are replaced, one left out is empty) its HTTP rules too, from its next request
  on; with neither, they stay (plan.swap_options). A sandbox that started without HTTP
  rules cannot be given any (a policy error).

The socket is created 0600, and every request is checked against the peer's credentials
(SO_PEERCRED): a client may supervise and change only processes of its own uid.

Nothing a client does may stop the daemon serving the others:

* every request is checked whole (types, sizes, counts, descriptor kinds; _request.py)
  before anything is started, bound or kept: a refused request leaves nothing behind;
* connections are capped (per uid and in total, and by the descriptors the daemon may
  open), and one that stays idle (no request, no live sandbox) for ``IDLE_TIMEOUT`` is
  closed; each connection has one request in flight at a time;
* hostnames are resolved in threads bounded per uid and in total (a request beyond is
  refused, not queued), at most ``MAX_HOSTS`` per request; a client that leaves cancels
  its resolution (the thread stops before its next lookup);
* sandboxes are capped per uid and in total;
* accept failing for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is
  retried after ``ACCEPT_RETRY`` seconds, as trio's own listeners do;
* reports and audit records go to the client's descriptors through _sink.py, which
  never blocks: a reader that stops reading loses records (counted, and said), nothing
  else; replies and exit notices wait at most ``SEND_TIMEOUT`` for a client.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import sys
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from . import _syscalls as sys_
from . import _wire
from ._fdlimit import raise_fd_limit
from ._gatemode import gate_answers
from ._listen import bind, fd_room, hung_up, peer
from ._plans import Resolvers
from ._request import RequestError, check_request, check_supervise_fds
from ._sink import DEFAULT_LIMIT, AuditSink, Sink, SinkText, audit_note, report_note
from .errors import PolicyError, SandlockError
from .launch import Child
from .names import Names
from .plan import NameOptions, Plan, swap_options
from .report import DenialReport, Observer, Summary
from .session import Session
from .unixrules import daemon_marker

__all__ = ["Daemon", "Limits", "RequestError", "serve"]

MAX_CLIENTS = 1024  # connections at once, every uid together
MAX_CLIENTS_PER_UID = 256
MAX_SANDBOXES = 1024
MAX_SANDBOXES_PER_UID = 256
MAX_RESOLVING = 16  # resolver threads at once (each resolves one request's hostnames)
MAX_RESOLVING_PER_UID = 4
IDLE_TIMEOUT = 30.0  # seconds a connection may stay with no request and no sandbox
SEND_TIMEOUT = 10.0  # seconds a reply may wait for a client to make room
DRAIN_GRACE = 1.0  # seconds a finished sandbox's last records may wait for their reader
ACCEPT_RETRY = 0.1  # seconds to wait when accept fails for want of descriptors or memory


@dataclass(frozen=True)
class Limits:
    """The caps of one daemon (the module constants by default)."""

    clients: int = MAX_CLIENTS
    clients_per_uid: int = MAX_CLIENTS_PER_UID
    sandboxes: int = MAX_SANDBOXES
    sandboxes_per_uid: int = MAX_SANDBOXES_PER_UID
    resolving: int = MAX_RESOLVING
    resolving_per_uid: int = MAX_RESOLVING_PER_UID
    idle_timeout: float = IDLE_TIMEOUT
    send_timeout: float = SEND_TIMEOUT
    sink_bytes: int = DEFAULT_LIMIT


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


@dataclass
class _Client:
    conn: trio.socket.SocketType
    pid: int
    uid: int
    sandboxes: int = 0
    checked: Plan | None = None  # what "rules" built for the next sandbox


@dataclass
class _Sandbox:
    id: str
    pid: int
    uid: int
    cmd: list[str]
    session: Session
    observer: Observer
    rules: int
    options: NameOptions  # the name options it started with (its swaps are planned so)
    sinks: list[Sink] = field(default_factory=list)


class Daemon:
    """The daemon's state: its clients and live sandboxes."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        self.sandboxes: dict[str, _Sandbox] = {}
        self.clients: Counter[int] = Counter()  # connections per uid
        self.resolvers = Resolvers(self.limits.resolving, self.limits.resolving_per_uid)
        self._last_accept_error = -1e9

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
                    try:
                        conn, _ = await listener.accept()
                    except OSError as err:
                        await self._accept_failed(err)
                        continue
                    nursery.start_soon(self._client, conn, nursery)
            finally:
                listener.close()

    async def _accept_failed(self, err: OSError) -> None:
        if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR):
            return  # that connection is gone: the next one
        now = trio.current_time()
        if now - self._last_accept_error > 10:  # (say so once in a while, not each time)
            self._last_accept_error = now
            print(
                f"sandlock: serve: accept: {err.strerror}; retrying every {ACCEPT_RETRY:g} s",
                file=sys.stderr,
                flush=True,
            )
        await trio.sleep(ACCEPT_RETRY)

    def _refusal(self, uid: int) -> str | None:
        total = sum(self.clients.values())
        if total >= min(self.limits.clients, fd_room(MAX_CLIENTS)):
            return "the daemon has too many connections; try again shortly"
        if self.clients[uid] >= self.limits.clients_per_uid:
            return f"too many connections of uid {uid} (limit {self.limits.clients_per_uid})"
        return None

    async def _client(self, conn: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        with conn:
            try:
                pid, uid = peer(conn)
            except OSError:
                return
            why = self._refusal(uid)
            if why is not None:
                await self._send(conn, {"ok": False, "error": why})
                return
            self.clients[uid] += 1
            try:
                await self._session(_Client(conn, pid, uid), nursery)
            except Exception:  # a bug one client finds must not end every sandbox
                traceback.print_exc(file=sys.stderr)
            finally:
                self.clients[uid] -= 1
                if not self.clients[uid]:
                    del self.clients[uid]

    async def _send(self, conn: trio.socket.SocketType, message: dict[str, Any]) -> bool:
        """Send one record, waiting at most the send timeout for the client to take it.
        A reply and an exit notice may meet on one connection: while one waits for a
        client that reads nothing, the other is not sent (BusyResourceError), and one
        still waiting when its session ends fails (ClosedResourceError)."""
        with trio.move_on_after(self.limits.send_timeout):
            try:
                await conn.sendmsg([_encode_reply(message)])
                return True
            except (OSError, trio.BusyResourceError, trio.ClosedResourceError):
                return False
        return False

    async def _session(self, c: _Client, nursery: trio.Nursery) -> None:
        """The client's requests, one at a time, until it leaves or idles."""
        while True:
            record = await self._receive(c)
            if record is None:
                return
            reply = await self._answer(c, record, nursery)
            if reply is None or not await self._send(c.conn, reply):
                return

    async def _answer(
        self, c: _Client, record: tuple[bytes, list[Any], int], nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        """The reply to one record; None if the client hung up first (which cancels
        whatever the request was waiting for: a resolution, typically)."""
        reply: list[dict[str, Any]] = []
        async with trio.open_nursery() as request:

            async def answer() -> None:
                reply.append(await self._reply(c, *record, nursery))
                request.cancel_scope.cancel()

            async def watch() -> None:
                await hung_up(c.conn)
                request.cancel_scope.cancel()

            request.start_soon(watch)
            request.start_soon(answer)
        return reply[0] if reply else None

    async def _receive(self, c: _Client) -> tuple[bytes, list[Any], int] | None:
        """The next record; None when the client has gone or stayed idle too long."""
        while True:
            with trio.move_on_after(self.limits.idle_timeout):
                try:
                    data, anc, flags, _ = await c.conn.recvmsg(
                        _wire.MAX_RECORD, _wire.ANC_SIZE, socket.MSG_CMSG_CLOEXEC
                    )
                except OSError:
                    return None
                if not data and not anc:
                    return None  # the client went away (mid-handshake is fine)
                return data, anc, flags
            if not c.sandboxes:
                return None

    async def _reply(
        self, c: _Client, data: bytes, anc: list[Any], flags: int, nursery: trio.Nursery
    ) -> dict[str, Any]:
        try:
            req, fds = _wire.decode(data, anc, flags)
        except _wire.WireError as err:
            return {"ok": False, "error": str(err)}
        try:  # fds are ours until _supervise takes them (it empties the list)
            return await self._handle(req, fds, c, nursery)
        except RequestError as err:
            return {"ok": False, "error": str(err), "policy_error": err.policy_error}
        except Exception:  # a bug one request finds must not end every sandbox
            traceback.print_exc(file=sys.stderr)
            return {"ok": False, "error": "internal error (see the daemon's stderr)"}
        finally:
            _wire.close_all(fds)

    async def _handle(
        self, req: dict[str, Any], fds: list[int], c: _Client, nursery: trio.Nursery
    ) -> dict[str, Any]:
        if req.get("op") == "supervise":
            plan, c.checked = c.checked, None  # (one try per rules request)
            if plan is None:
                raise RequestError("supervise comes after a rules request")
            check_request(req, fds)
            return self._supervise(req, fds, c, plan, nursery)
        op = check_request(req, fds)
        if op == "rules":
            c.checked = None
            plan = await self.resolvers.plan(req, c.uid)
            reply: dict[str, Any] = {"ok": True, "trap_open": plan.trap_open}
            try:
                authority = plan.authority()  # (--http-tls: the run's CA, made now)
            except SandlockError as err:
                raise RequestError(str(err), policy_error=True) from None
            if authority is not None:  # (public: the client's --http-ca-out writes it)
                reply["ca_pem"] = authority.ca_pem.decode("ascii")
            c.checked = plan
            return reply
        if op == "ping":
            return {"ok": True}
        if op == "ps":
            return {"ok": True, "sandboxes": [self._describe(s) for s in self._visible(c.uid)]}
        box = self.sandboxes.get(req["id"])
        if box is None or box not in self._visible(c.uid):
            raise RequestError(f"no sandbox {req['id']!r} of yours is running")
        current = box.session.policy
        try:
            options = swap_options(
                box.options, current, req.get("http_allow"), req.get("http_deny")
            )
        except PolicyError as err:
            raise RequestError(str(err), policy_error=True) from None
        interposed = current.http_rules is not None  # (the sandbox has an HTTP relay)
        # (hostnames: it may await a while)
        plan = await self.resolvers.plan(req, c.uid, options=options, interposed=interposed)
        if self.sandboxes.get(box.id) is not box:
            raise RequestError(f"sandbox {box.id} ended before its policy was replaced")
        box.session.policy = plan.policy
        box.rules = len(plan.policy.allow_rules) + len(plan.policy.deny_rules)
        return {"ok": True, "id": box.id}

    def _visible(self, uid: int) -> list[_Sandbox]:
        return [s for s in self.sandboxes.values() if uid == 0 or s.uid == uid]

    @staticmethod
    def _describe(s: _Sandbox) -> dict[str, Any]:
        return {
            "id": s.id,
            "pid": s.pid,
            "cmd": s.cmd,
            "rules": s.rules,
            "allowed": s.observer.allowed_count + s.session.answered_by_gate,
            "denied": s.observer.denied_count,
        }

    def _room_for_sandbox(self, uid: int) -> None:
        if len(self.sandboxes) >= self.limits.sandboxes:
            raise RequestError("the daemon supervises too many sandboxes; try again later")
        mine = sum(1 for s in self.sandboxes.values() if s.uid == uid)
        if mine >= self.limits.sandboxes_per_uid:
            raise RequestError(
                f"uid {uid} has too many sandboxes (limit {self.limits.sandboxes_per_uid})"
            )

    def _supervise(
        self,
        req: dict[str, Any],
        fds: list[int],
        c: _Client,
        plan: Plan,
        nursery: trio.Nursery,
    ) -> dict[str, Any]:
        pid, owner = check_supervise_fds(fds, c.pid, c.uid)  # only reads: nothing to undo
        self._room_for_sandbox(owner)
        box_id = uuid.uuid4().hex[:8]
        policy = plan.policy
        names: Names | None = None
        sinks: list[Sink] = []
        try:
            try:
                names = plan.start(policy)
            except SandlockError as err:
                raise RequestError(str(err)) from None
            limit = self.limits.sink_bytes
            sinks.append(Sink(fds[2], report_note, limit=limit))
            stderr = SinkText(sinks[0])
            for note in plan.notes:  # what start-up resolution left out (plan.py)
                stderr.write(note + "\n")
            audit = None
            if len(fds) == 4:
                sinks.append(Sink(fds[3], functools.partial(audit_note, box_id), limit=limit))
                audit = AuditSink(sinks[1], box_id)
            open_names = names.vfiles.names if names is not None and names.vfiles else None
            flags = sys_.GATE_OPEN if gate_answers() and plan.trap_open else 0
            gate = sys_.Gate(fds[0], flags, open_names)
        except BaseException:
            for sink in sinks:
                sink.abort()
            if names is not None:
                names.close()
            raise
        child = Child(pid, fds[1], fds[0], gate)
        _wire.close_all(fds[2:])  # the sinks hold descriptors of their own
        fds.clear()  # the rest is the sandbox's now
        observer = Observer(
            box_id,
            audit=audit,
            report=None if req.get("quiet") else DenialReport(stderr),  # type: ignore[arg-type]
            summary=Summary() if req.get("summary") else None,
        )
        # The sandbox's last lines (the report's count, the summary) go to the client's
        # stderr when the session closes.
        session = Session(policy, names=names, observe=lambda: observer, report_to=stderr)
        session.adopt(child)
        rules = len(policy.allow_rules) + len(policy.deny_rules)
        box = _Sandbox(
            box_id, pid, owner, req["cmd"], session, observer, rules, plan.options, sinks
        )
        self.sandboxes[box_id] = box
        c.sandboxes += 1
        nursery.start_soon(self._run_sandbox, box, c)
        return {"ok": True, "id": box_id}

    async def _run_sandbox(self, box: _Sandbox, c: _Client) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for sink in box.sinks:
                    nursery.start_soon(sink.run)
                await box.session.supervise()  # until the command exits
                nursery.cancel_scope.cancel()
        except Exception:  # a bug in one sandbox must not end the others
            traceback.print_exc(file=sys.stderr)
        finally:
            del self.sandboxes[box.id]
            c.sandboxes -= 1
            box.session.close()
            for sink in box.sinks:  # closed once their reader took the rest, or after DRAIN_GRACE
                await sink.close(DRAIN_GRACE)
            with trio.CancelScope(shield=True):  # (bounded by the send timeout)
                await self._send(c.conn, {"event": "exit", "id": box.id})


async def serve(path: str) -> None:
    """Run a daemon on ``path`` until cancelled (SIGINT/SIGTERM end it)."""
    from . import _syscalls

    gate_answers()  # a bad $SANDLOCK_GATE fails the start, not each sandbox
    _syscalls.protect_self()  # sandboxes of our uid must not ptrace their supervisor
    raise_fd_limit()
    listener = await bind(path)  # outside any nursery: its errors stay one line
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
