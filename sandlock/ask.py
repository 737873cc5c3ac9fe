"""Asking before refusing: a call that no rule allows waits for someone to answer.

With an ask callback (``Sandbox(on_unlisted=...)``, ``sandlock run --ask``), a call the
rules would refuse only because nothing allows it (the default deny: an explicit
``--net-deny`` match is refused without asking) is not refused at once. The handler
raises ``onbehalf.MustAsk``; ``Handlers.handle`` turns that into a ``Pending`` (answer.py),
so the notification waits in the supervisor's nursery while every other call of the
sandbox is answered as usual (the gate never answers a refusal itself: it repeats only
what Python allowed). When the answer comes, the call is handled again from the start:
a fresh copy of its arguments, a fresh decision, in which the answer now takes part:

* ``Allow.ONCE``: this one call (its notification id, for the destination asked about)
  is allowed, rule ``ask:once``. Never handed to the gate: the next call asks again.
* ``Allow.RUN``: the destination is allowed for the rest of the run, rule ``ask:run``;
  when the request named a host (a hostname rule that covers it on another port, or a
  name the DNS forwarder answered after an ask), every address of that host is.
* ``Deny`` (or no answer within ``ask_timeout``, or a callback that raised): this call
  is refused (``ask:deny``, ``ask:timeout``); the next one asks again.

Why the call is handled again rather than finished where it stopped: nothing was done
for it yet (the decision comes before any send), the child may have changed its memory
meanwhile, and a fresh decision on a fresh copy is what every other path does. If the
child swapped the address while we waited, the answer does not cover the new one, which
is asked about in turn.

Concurrent asks for one destination share one answer (one prompt): the first caller
asks, the others wait for its answer. The callback is a plain function run in a worker
thread (a prompt may block), or, under ``run_async``/``open_process``, a coroutine
function awaited in the supervisor's loop. A waiting call whose thread went away (a
signal, the process killed) stops waiting; the ask itself goes on for the others.

In DNS mode (dns.py) a lookup of an unlisted name asks too, about the name: ``RUN`` adds
a hostname rule (``tcp://NAME``) for the run, so the connect to its addresses that
follows needs no second ask; ``ONCE`` answers that lookup, and a later connect to one
of its addresses asks again, naming the host.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from .policy import Decision, Policy
from .sockaddr import shown

TYPE_CHECKING = False
if TYPE_CHECKING:
    import trio

    from .sockaddr import Dest

__all__ = [
    "DEFAULT_TIMEOUT",
    "Allow",
    "AskRequest",
    "Asker",
    "Deny",
    "OnUnlisted",
    "Verdict",
]

DEFAULT_TIMEOUT = 30.0
_WATCHDOG = 1.0  # seconds between "does the thread still wait?" checks while asking

ONCE_RULE, RUN_RULE, DENY_RULE, TIMEOUT_RULE = "ask:once", "ask:run", "ask:deny", "ask:timeout"


class Allow(enum.Enum):
    """An ask callback's yes: for this call only, or for the rest of the run."""

    ONCE = "once"
    RUN = "run"


class _Deny(enum.Enum):
    DENY = "deny"


Deny = _Deny.DENY
"""An ask callback's no: this call is refused (the next one to it asks again)."""

Verdict: TypeAlias = "Allow | _Deny"


class AskRequest:
    """What an ask is about: ``proto`` ("tcp", "udp", "icmp"; "dns" for a lookup in DNS
    mode), ``dst`` (the address as text; the name for a lookup), ``port`` (None for a
    lookup and ICMP), ``host`` (the hostname when known: a hostname rule's, or a name the
    DNS forwarder answered; the name itself for a lookup), ``syscall`` ("connect",
    "sendto", ...; "dns"), ``pid`` and ``argv`` of the process that made the call."""

    __slots__ = ("argv", "dst", "host", "pid", "port", "proto", "syscall")

    def __init__(
        self,
        proto: str,
        dst: str,
        port: int | None,
        host: str | None,
        syscall: str,
        pid: int,
        argv: tuple[str, ...],
    ) -> None:
        self.proto, self.dst, self.port, self.host = proto, dst, port, host
        self.syscall, self.pid, self.argv = syscall, pid, argv

    @property
    def process_name(self) -> str:
        """The program's name: argv[0]'s last part, or ``?``."""
        return os.path.basename(self.argv[0]) if self.argv else "?"

    def describe(self) -> str:
        """``tcp 127.0.0.2:8080 (example.test)`` or ``DNS lookup of example.test``."""
        if self.proto == "dns":
            return f"DNS lookup of {self.dst}"
        addr = f"[{self.dst}]" if ":" in self.dst else self.dst
        where = addr if self.port is None else f"{addr}:{self.port}"
        named = f" ({self.host})" if self.host and self.host != self.dst else ""
        return f"{self.proto} {where}{named}"

    def __repr__(self) -> str:
        return f"<AskRequest {self.describe()} by {self.process_name} (pid {self.pid})>"


OnUnlisted: TypeAlias = "Callable[[AskRequest], Verdict | Awaitable[Verdict]]"
"""An ask callback: a plain function, or (under trio) a coroutine function."""

_Key = tuple[str, str, "int | None"]  # (proto, host or address text, port)


class _Ask:
    """One ask in flight, shared by every call to the same destination."""

    __slots__ = ("done", "rule")

    def __init__(self, done: trio.Event) -> None:
        self.done = done
        self.rule = TIMEOUT_RULE


class Asker:
    """The answers of one run: the callback, what it said for the rest of the run, the
    one-call answers not yet used, and the asks in flight. ``report`` gets a line when
    the callback fails (stderr by default)."""

    def __init__(
        self,
        callback: OnUnlisted,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        report: Callable[[str], None] | None = None,
    ) -> None:
        if not callable(callback):
            raise TypeError(f"on_unlisted: {callback!r} is not callable")
        if not timeout > 0:
            raise ValueError(f"ask_timeout: must be more than 0 seconds, not {timeout!r}")
        self.callback = callback
        self.timeout = float(timeout)
        self._report = report if report is not None else _to_stderr
        self._run: set[_Key] = set()  # Allow.RUN: (proto, address or host, port)
        self._run_names: set[_Key] = set()  # Allow.RUN on a lookup: its hostname rule
        self._answered: dict[int, tuple[_Key, str]] = {}  # notif id -> (key, rule)
        self._inflight: dict[_Key, _Ask] = {}
        self._names: dict[str, str] = {}  # address text -> the name a lookup asked about
        self.asked = 0  # how many times the callback was called

    # ---- for the handlers (no trio) ----------------------------------------------------

    def decided(self, notif_id: int, proto: str, dest: Dest, policy: Policy) -> Decision | None:
        """The decision an answer already gives on a call the rules would refuse by
        default, or None: it must ask (raise onbehalf.MustAsk)."""
        addr = shown(dest.addr)
        host = self.host_of(addr, policy)
        key = self.key(proto, addr, dest.port, host)
        answered = self._answered.pop(notif_id, None)
        if answered is not None and answered[0] == key:
            rule = answered[1]
            return Decision(allowed=rule in (ONCE_RULE, RUN_RULE), rule=rule, host=host)
        port = _port(proto, dest.port)
        if (proto, addr, port) in self._run or (host and (proto, host, port) in self._run):
            return Decision(allowed=True, rule=RUN_RULE, host=host)
        return None

    def host_of(self, addr: str, policy: Policy) -> str | None:
        """The hostname known for an address: a name asked about whose lookup gave it,
        else a hostname rule's."""
        named = self._names.get(addr)
        if named is not None:
            return named
        for host, addrs in policy.host_addresses.items():
            if addr in addrs and not host.startswith("*"):
                return host
        return None

    @staticmethod
    def key(proto: str, addr: str, port: int, host: str | None) -> _Key:
        return (proto, host or addr, _port(proto, port))

    # ---- under trio --------------------------------------------------------------------

    async def answer(
        self,
        notif_id: int,
        request: AskRequest,
        key: _Key,
        still_waiting: Callable[[], bool],
    ) -> bool:
        """Ask about ``request`` (or wait for the ask in flight for ``key``) and keep the
        answer for the call ``notif_id``, which the caller then handles again. False if
        the call's thread stopped waiting meanwhile."""
        import trio

        ask = self._inflight.get(key)
        if ask is None:
            ask = _Ask(trio.Event())
            self._inflight[key] = ask
            trio.lowlevel.spawn_system_task(self._ask, request, key, ask)
        while not ask.done.is_set():
            with trio.move_on_after(_WATCHDOG):
                await ask.done.wait()
            if not ask.done.is_set() and not still_waiting():
                return False
        self._answered[notif_id] = (key, ask.rule)
        return True

    async def ask_name(self, name: str, transport: str, pid: int = 0) -> str:
        """Ask about a DNS lookup of ``name`` (dns.py): the rule the answer gives."""
        import trio

        key: _Key = ("dns", name, None)
        ask = self._inflight.get(key)
        if ask is None:
            ask = _Ask(trio.Event())
            self._inflight[key] = ask
            request = AskRequest("dns", name, None, name, "dns", pid, ())
            trio.lowlevel.spawn_system_task(self._ask, request, key, ask)
        await ask.done.wait()
        return ask.rule

    def forget(self, notif_id: int) -> None:
        """Drop an answer kept for the call ``notif_id`` (it has been handled again)."""
        self._answered.pop(notif_id, None)

    def rules(self) -> list[str]:
        """The --net-allow rules the Allow.RUN answers of this run amount to (sorted)."""
        out = []
        for proto, target, port in self._run | self._run_names:
            host = f"[{target}]" if ":" in target else target
            scheme = "" if proto == "tcp" else f"{proto}://"
            out.append(f"{scheme}{host}" + ("" if port is None else f":{port}"))
        return sorted(out)

    def saw(self, name: str, addrs: list[str]) -> None:
        """The forwarder answered a lookup of ``name`` allowed once: its addresses."""
        for addr in addrs:
            self._names[addr] = name

    async def _ask(self, request: AskRequest, key: _Key, ask: _Ask) -> None:
        """Call the callback once for everyone waiting on ``key``; remember a RUN."""
        import trio

        try:
            verdict: object = None
            self.asked += 1
            with trio.move_on_after(self.timeout):
                verdict = await self._call(request)
                ask.rule = _rule(verdict)
                if ask.rule == DENY_RULE and verdict is not Deny:
                    self._report(
                        f"sandlock: ask: the callback returned {verdict!r} for "
                        f"{request.describe()}, not Allow.ONCE, Allow.RUN or Deny (denied)"
                    )
            if ask.rule == RUN_RULE:
                if key[0] == "dns":
                    self._run_names.add(("tcp", key[1], None))  # (the rule dns.py adds)
                else:
                    self._run.add(key)
        except Exception as err:  # a callback's bug denies the call, never the supervisor
            ask.rule = DENY_RULE
            self._report(
                f"sandlock: ask: the callback failed on {request.describe()}: {err!r} (denied)"
            )
        finally:
            del self._inflight[key]
            ask.done.set()

    async def _call(self, request: AskRequest) -> object:
        import inspect

        import trio

        callback = self.callback
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - an object with an async __call__
        ):
            return await callback(request)  # type: ignore[misc]
        result = await trio.to_thread.run_sync(callback, request, abandon_on_cancel=True)
        if inspect.isawaitable(result):
            return await result
        return result

    def request(self, proto: str, dest: Dest, syscall: str, pid: int, policy: Policy) -> AskRequest:
        """The request for a call the handlers could not decide (MustAsk)."""
        addr = shown(dest.addr)
        port = None if proto == "icmp" else dest.port
        host = self.host_of(addr, policy)
        return AskRequest(proto, addr, port, host, syscall, pid, process_argv(pid))


def _port(proto: str, port: int) -> int | None:
    return None if proto == "icmp" else port  # (an ICMP "port" is the echo id)


def _rule(verdict: object) -> str:
    if verdict is Allow.ONCE:
        return ONCE_RULE
    if verdict is Allow.RUN:
        return RUN_RULE
    return DENY_RULE


def process_argv(pid: int) -> tuple[str, ...]:
    """The argv of ``pid`` (a thread id works too), as /proc shows it; () if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return ()
    return tuple(a.decode("utf-8", "replace") for a in raw.split(b"\0")[:-1])


def _to_stderr(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # (stderr closed: the refusal stands, unsaid)
        pass
