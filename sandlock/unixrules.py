"""``--unix-allow`` rules: which AF_UNIX sockets served outside the sandbox it may reach.

A socket bound by a process of the sandbox during the run is always reachable (the
supervisor records those binds, see _local.py). Any other one is refused unless a rule
allows it::

    --unix-allow /run/user/1000/ssh-agent.sock   one socket (an absolute path)
    --unix-allow /run/user/1000/                 every socket beneath a directory (a
                                                 trailing slash, or an existing directory)
    --unix-allow @my-proxy                       one abstract name
    --unix-allow @my-proxy*                      every abstract name that starts so

A path rule is compared with where the socket file really is: the real path of the inode
the supervisor opened (so a symbolic link planted in an allowed directory leads nowhere
else), against the rule with its own symbolic links resolved when the policy is built
(so ``/var/run/docker.sock`` is ``/run/docker.sock``). A socket file with more than one
hard link matches no rule: a link made in an allowed directory to a socket elsewhere
would bring that socket in. Abstract names are text (UTF-8), compared byte for byte.

Whatever the rules say, a sandlock daemon's socket is never reachable (see
``daemon_marker``): a sandboxed command must not list, change or start sandboxes.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from typing import NamedTuple, NoReturn

from .errors import PolicyError
from .policy import Decision

__all__ = [
    "DAEMON_RULE",
    "EVERYTHING",
    "LINKED_RULE",
    "UnixRule",
    "UnixRules",
    "daemon_marker",
    "is_daemon_socket",
    "parse_unix_rule",
]

FLAG = "--unix-allow"
DAEMON_RULE = "sandlock-daemon"  # the reason a daemon's socket was refused
LINKED_RULE = "hard-link"  # the reason a socket file with several links was refused
EVERYTHING = ("/", "@*")  # learn mode: every socket (the daemon's still refused)
_NAME_MAX = 107  # sun_path is 108 bytes; an abstract name starts after its leading NUL
_MARKER = b"\0sandlock-daemon:"
MARKER_PREFIX = _MARKER[1:]
_DENY = Decision(allowed=False, rule=None, host=None)


class UnixRule(NamedTuple):
    """One rule: ``path`` (exact), ``directory`` (ends with ``/``) or ``abstract`` (a
    name, or a prefix when ``prefix``) is set."""

    spec: str
    path: str | None = None
    directory: str | None = None
    abstract: bytes | None = None
    prefix: bool = False


def _fail(spec: str, message: str) -> NoReturn:
    raise PolicyError(f"{FLAG}: {message}", flag=FLAG, spec=spec)


def parse_unix_rule(spec: str) -> UnixRule:
    """Parse one ``--unix-allow`` value (see the module docstring); PolicyError if bad.

    Path rules are made canonical here (symbolic links of the existing part resolved):
    this reads the file system, once, when the policy is built."""
    if not spec:
        _fail(spec, "empty rule (write an absolute socket path, DIR/ or @name)")
    if "\0" in spec:
        _fail(spec, f"a NUL byte in `{spec!r}`")
    if spec.startswith("@"):
        name = spec[1:]
        prefix = name.endswith("*")
        raw = name.removesuffix("*").encode("utf-8", "surrogateescape")
        if not raw and not prefix:
            _fail(spec, "`@` needs a name (`@name`, or `@prefix*`)")
        if len(raw) > _NAME_MAX - 1 + prefix:
            _fail(spec, f"abstract name too long in `{spec}` (at most {_NAME_MAX - 1} bytes)")
        return UnixRule(spec, abstract=raw, prefix=prefix)
    if not spec.startswith("/"):
        _fail(spec, f"`{spec}` is not an absolute path (or `@name` for an abstract socket)")
    real = os.path.realpath(spec)
    if spec.endswith("/") or os.path.isdir(real):
        return UnixRule(spec, directory=real.rstrip("/") + "/")
    return UnixRule(spec, path=real)


class UnixRules:
    """The ``--unix-allow`` rules of one policy, in the order given (the first match
    decides)."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[UnixRule] = ()) -> None:
        self._rules = tuple(rules)

    @classmethod
    def from_specs(cls, specs: Iterable[str]) -> UnixRules:
        """Parse every spec; the first bad one raises PolicyError."""
        return cls(parse_unix_rule(spec) for spec in specs)

    @property
    def specs(self) -> tuple[str, ...]:
        """The rules as written."""
        return tuple(rule.spec for rule in self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def decide_path(self, real: str, links: int = 1) -> Decision:
        """May the socket file whose real path is ``real`` (with ``links`` hard links)
        be reached?"""
        for rule in self._rules:
            if rule.path == real or (
                rule.directory is not None and real.startswith(rule.directory)
            ):
                if links != 1:
                    return Decision(allowed=False, rule=LINKED_RULE, host=None)
                return Decision(allowed=True, rule=rule.spec, host=None)
        return _DENY

    def decide_abstract(self, name: bytes) -> Decision:
        """May the abstract socket ``name`` (without its leading NUL) be reached?"""
        for rule in self._rules:
            if rule.abstract is None:
                continue
            if name == rule.abstract or (rule.prefix and name.startswith(rule.abstract)):
                return Decision(allowed=True, rule=rule.spec, host=None)
        return _DENY


# ---- the sandlock daemon's mark ---------------------------------------------------------
#
# A daemon holds, for as long as it serves, an abstract datagram socket named after the
# device and inode of its socket file. A supervisor about to connect a sandboxed command
# to a socket file that some rule allows first asks whether that name exists (a connect
# on a datagram socket of its own: no data is sent, the daemon reads nothing). The name
# survives whatever the command does to the file (rename, link, chmod), and only a
# process outside every sandbox can hold it: a sandboxed bind of that prefix is refused.


def _marker_name(dev: int, ino: int) -> bytes:
    return _MARKER + b"%x:%x" % (dev, ino)


def daemon_marker(path: str) -> socket.socket:
    """The mark of the daemon whose socket file is ``path`` (keep it open while serving).
    OSError if it cannot be made (a process outside any sandbox holds the name)."""
    st = os.stat(path)
    mark = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        mark.bind(_marker_name(st.st_dev, st.st_ino))
    except OSError:
        mark.close()
        raise
    return mark


def is_daemon_socket(dev: int, ino: int) -> bool:
    """Whether the socket file (dev, ino) is a sandlock daemon's: it bears the mark, or it
    is the socket ``$SANDLOCK_DAEMON`` names for this process."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(_marker_name(dev, ino))
        return True
    except OSError as err:
        if err.errno != errno.ECONNREFUSED:
            return True  # cannot tell: fail closed
    finally:
        probe.close()
    known = os.environ.get("SANDLOCK_DAEMON")
    if known:
        try:
            st = os.stat(known)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (dev, ino)
    return False
