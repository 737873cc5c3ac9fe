"""The exceptions sandlock raises: the whole public tree, each also ``sandlock.<Name>``.

    SandlockError                   base class, never raised directly
    ├── UsageError (ValueError)     a usage mistake: a missing command, a bad option value,
    │   │                           an unreadable --audit file (the CLI exits with status 2)
    │   └── PolicyError             a bad --net-allow/--net-deny/--unix-allow spec or
    │       │                       profile, or a host that does not resolve
    │       └── DnsConfigError      a bad --dns-upstream (or resolv.conf) value
    ├── LaunchError                 the command could not be started (not found, not
    │                               executable): ``exit_code`` 126/127 as a shell's
    ├── SupervisorError             the kernel refused something the sandbox needs
    ├── DaemonError                 the daemon cannot be reached, or refused a request
    └── TimeoutExpired              the command ran past ``timeout`` (the API)

Every message is one line meant for a person: the CLI prints ``sandlock: <message>``.
This module imports nothing: every `sandlock run` loads it.
"""

from __future__ import annotations

# typing costs a launch ~7 ms; annotations need no import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class SandlockError(Exception):
    """Base class of every error sandlock raises on purpose."""


class UsageError(SandlockError, ValueError):
    """The caller asked for something that cannot be done as asked (a missing command, a
    bad option value, an unreadable file named by an option); the CLI exits with status 2,
    before anything starts."""


class PolicyError(UsageError):
    """A rule the user wrote is wrong, or names a host that does not resolve.

    ``str(err)`` names the flag and quotes the spec, e.g.
    ``--net-allow: invalid port in `h:0` (ports are 1-65535)``.
    """

    def __init__(self, message: str, *, flag: str | None = None, spec: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag
        self.spec = spec


class DnsConfigError(PolicyError):
    """A bad ``--dns-upstream`` value; ``flag`` and ``spec`` are set as for rules."""


class LaunchError(SandlockError):
    """The command could not be started; ``exit_code`` is what a shell would return (126/127)."""

    def __init__(self, message: str, *, exit_code: int = 127) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SupervisorError(SandlockError):
    """The kernel refused a step the sandbox needs (seccomp, pidfd, the handshake)."""


class DaemonError(SandlockError):
    """The daemon cannot be reached, or refused a request."""


class TimeoutExpired(SandlockError):
    """The command ran past ``timeout``: ``run`` killed its whole tree (``Process.wait``
    leaves it running).

    ``stdout`` and ``stderr`` hold what was captured until then (None if not captured)."""

    def __init__(
        self, cmd: Sequence[str], timeout: float, stdout: bytes | None, stderr: bytes | None
    ) -> None:
        super().__init__(f"{cmd[0] if cmd else 'command'} timed out after {timeout:g} s")
        self.cmd = list(cmd)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
