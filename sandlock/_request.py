"""What the daemon checks of a request before it does anything with it.

Every field is checked for its exact type (a bool is true or false, never "false"), its
size and its count, and every descriptor for its kind, before the daemon starts a
thread, binds a socket or keeps a descriptor: a refused request leaves nothing behind.

A ``supervise`` request's descriptors must be, in order:

* a seccomp listener: ``/proc/self/fd/N`` reads ``anon_inode:seccomp notify``;
* a pidfd (``anon_inode:[pidfd]``) of a process not yet reaped (a command may end
  before the daemon hears of it: then its sandbox ends at once) that is a child of the
  client (its parent is the peer of the connection, by SO_PEERCRED), runs under a
  seccomp filter (unless it has already exited), and whose real, effective, saved and
  filesystem uids are all the client's (root may supervise any uid's child). The
  kernel offers no way to ask which process a listener's filter belongs to; these
  checks are as close as it gets.
* the client's stderr and, optionally, its audit log: open for writing, and a regular
  file, pipe, FIFO, socket or character device (never a directory); see _sink.py.
"""

from __future__ import annotations

import math
import os
import select
from typing import Any

from . import _sink, _wire

__all__ = [
    "MAX_HOSTS",
    "RequestError",
    "check_names",
    "check_request",
    "check_supervise_fds",
]

MAX_RULES = 1024  # rules (allow + deny) in one request
MAX_HOSTS = 64  # hostnames to resolve in one request
MAX_RULE_LENGTH = 1024  # characters of one rule
MAX_ARGS = 4096  # words of a command, as ps shows it

LISTENER_LINK = "anon_inode:seccomp notify"
PIDFD_LINK = "anon_inode:[pidfd]"

# The fields of each op, and the type each must have (absent: its default).
_FIELDS: dict[str, set[str]] = {
    "rules": {"op", "allow", "deny", "unix_allow", "names"},
    "supervise": {"op", "cmd", "quiet", "summary"},
    "ps": {"op"},
    "ping": {"op"},
    "policy": {"op", "id", "allow", "deny", "unix_allow", "http_allow", "http_deny"},
}
_NAME_FIELDS = {
    "virtual_hosts",
    "dns_proxy",
    "dns_upstream",
    "ttl_min",
    "ttl_max",
    "dns_allow_private",
    "verify_names",
    "http_allow",
    "http_deny",
    "http_ports",
    "http_tls",
    "http_upstream_ca_pem",
}


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to the client."""

    def __init__(self, message: str, *, policy_error: bool = False) -> None:
        super().__init__(message)
        self.policy_error = policy_error


def check_request(req: dict[str, Any], fds: list[int]) -> str:
    """The op of a well-formed request; RequestError says what is wrong otherwise."""
    op = req.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise RequestError(f"unknown op {op!r} (expected rules, supervise, ps, ping, policy)")
    unknown = sorted(set(req) - _FIELDS[op])
    if unknown:
        raise RequestError(f"{op}: unknown field {unknown[0]!r}")
    if fds and op != "supervise":
        raise RequestError(f"{op} takes no descriptors")
    if op in ("rules", "policy"):
        _check_rules(req)
    if op == "rules":
        check_names(req.get("names"))
    elif op == "policy":
        if not isinstance(req.get("id"), str):
            raise RequestError("policy: id must be a string")
        _check_http_rules(req)  # (absent both: the sandbox keeps its HTTP rules)
    elif op == "supervise":
        cmd = req.get("cmd")
        if not (_strings(cmd) and cmd and len(cmd) <= MAX_ARGS):
            raise RequestError(f"cmd must be a list of 1 to {MAX_ARGS} strings")
        for flag in ("quiet", "summary"):
            if not isinstance(req.get(flag, False), bool):
                raise RequestError(f"{flag} must be true or false")
        if len(fds) not in (3, 4):
            raise RequestError("supervise needs descriptors: listener, pidfd, stderr[, audit]")
    return op


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_rules(req: dict[str, Any]) -> None:
    allow, deny = req.get("allow", []), req.get("deny", [])
    unix_allow = req.get("unix_allow", [])
    if not (_strings(allow) and _strings(deny) and _strings(unix_allow)):
        raise RequestError("allow, deny and unix_allow must be lists of strings")
    count = len(allow) + len(deny) + len(unix_allow)
    if count > MAX_RULES:
        raise RequestError(
            f"--net-allow: {count} rules (the daemon's limit is {MAX_RULES})",
            policy_error=True,
        )
    for flag, specs in (("--net-allow", allow), ("--net-deny", deny), ("--unix-allow", unix_allow)):
        if any(len(spec) > MAX_RULE_LENGTH for spec in specs):
            raise RequestError(
                f"{flag}: a rule longer than {MAX_RULE_LENGTH} characters", policy_error=True
            )


def check_names(data: object) -> None:
    """The hostname options (plan.NameOptions.to_wire), each of its exact type."""
    if data is None:
        return
    if not isinstance(data, dict):
        raise RequestError("name options must be an object")
    if "http_upstream_ca" in data:  # (a client of ours sends the file's text instead)
        raise RequestError(
            "--http-upstream-ca: the daemon opens no file a client names; send its text "
            "(http_upstream_ca_pem)",
            policy_error=True,
        )
    pem = data.get("http_upstream_ca_pem")
    if not (pem is None or (isinstance(pem, str) and len(pem) <= _wire.MAX_CA_TEXT)):
        raise RequestError(
            f"http_upstream_ca_pem must be a string of at most {_wire.MAX_CA_TEXT} characters"
        )
    unknown = sorted(set(data) - _NAME_FIELDS)
    if unknown:
        raise RequestError(f"name options: unknown field {unknown[0]!r}")
    for key in ("virtual_hosts", "dns_allow_private", "verify_names", "http_tls"):
        if not isinstance(data.get(key, True), bool):
            raise RequestError(f"{key} must be true or false")
    if not isinstance(data.get("dns_proxy"), bool | None):
        raise RequestError("dns_proxy must be true, false or null")
    upstream = data.get("dns_upstream")
    if not (upstream is None or (isinstance(upstream, str) and len(upstream) <= 256)):
        raise RequestError("dns_upstream must be a string (IP[:PORT]) or null")
    for key in ("ttl_min", "ttl_max"):
        value = data.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(f"{key} must be a number")
        if not math.isfinite(value):
            raise RequestError(f"{key} must be finite")
    _check_http(data)


def _check_http(data: dict[str, Any]) -> None:
    """The HTTP rules of the name options: lists of strings within the rule limits, and
    a list of ports (httprules.py parses them, as the plan does)."""
    _check_http_rules(data)
    ports = data.get("http_ports", [])
    if not (
        isinstance(ports, list)
        and len(ports) <= 64
        and all(type(p) is int and 0 < p < 65536 for p in ports)
    ):
        raise RequestError("http_ports must be a list of at most 64 ports (1-65535)")


def _check_http_rules(data: dict[str, Any]) -> None:
    """``http_allow`` and ``http_deny`` of the name options or of a policy request: lists
    of strings within the rule limits."""
    allow, deny = data.get("http_allow", []), data.get("http_deny", [])
    if not (_strings(allow) and _strings(deny)):
        raise RequestError("http_allow and http_deny must be lists of strings")
    if len(allow) + len(deny) > MAX_RULES:
        raise RequestError(
            f"--http-allow: {len(allow) + len(deny)} rules (the daemon's limit is {MAX_RULES})",
            policy_error=True,
        )
    for flag, specs in (("--http-allow", allow), ("--http-deny", deny)):
        if any(len(spec) > MAX_RULE_LENGTH for spec in specs):
            raise RequestError(
                f"{flag}: a rule longer than {MAX_RULE_LENGTH} characters", policy_error=True
            )


def _link(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def check_supervise_fds(fds: list[int], peer_pid: int, peer_uid: int) -> tuple[int, int]:
    """(pid, uid) of the process a supervise request's descriptors describe, if they are
    what the module docstring says; RequestError otherwise. Only reads."""
    listener, pidfd, stderr = fds[0], fds[1], fds[2]
    if _link(listener) != LISTENER_LINK:
        raise RequestError("the first descriptor is not a seccomp listener")
    if _link(pidfd) != PIDFD_LINK:
        raise RequestError("the second descriptor is not a pidfd")
    writers = [(stderr, "stderr")] + [(fd, "the audit log") for fd in fds[3:]]
    for fd, what in writers:
        why = _sink.check(fd, what)
        if why is not None:
            raise RequestError(why)
    pid = _fdinfo_pid(pidfd)
    status = _status(pid)
    if status is None:
        raise RequestError("the pidfd does not name a live process")
    uids = {int(u) for u in status.get("Uid", "-1").split()}
    if peer_uid != 0 and uids != {peer_uid}:
        raise RequestError(f"process {pid} is not yours")
    if status.get("PPid") != str(peer_pid):
        raise RequestError(f"process {pid} is not a child of the client")
    if status.get("Seccomp") != "2" and not _exited(pidfd):
        raise RequestError(f"process {pid} runs under no seccomp filter")
    if _fdinfo_pid(pidfd) != pid:  # reaped while we read: that pid may be another's now
        raise RequestError("the pidfd does not name a live process")
    return pid, int(status["Uid"].split()[0])


def _fdinfo_pid(pidfd: int) -> int:
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def _status(pid: int) -> dict[str, str] | None:
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return None


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))
