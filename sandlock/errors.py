"""The exceptions sandlock raises.

    SandlockError                 base class, never raised directly
    ├── PolicyError (ValueError)  a bad --net-allow/--net-deny spec or an unresolvable host
    ├── LaunchError               the command could not be started (not found, not executable)
    └── SupervisorError           the kernel refused something the sandbox needs

Every message is one line meant for a person: the CLI prints ``sandlock: <message>``.
"""

from __future__ import annotations


class SandlockError(Exception):
    """Base class of every error sandlock raises on purpose."""


class PolicyError(SandlockError, ValueError):
    """A rule the user wrote is wrong, or names a host that does not resolve.

    ``str(err)`` names the flag and quotes the spec, e.g.
    ``--net-allow: invalid port in `h:0` (ports are 1-65535)``.
    """

    def __init__(self, message: str, *, flag: str | None = None, spec: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag
        self.spec = spec


class LaunchError(SandlockError):
    """The command could not be started; ``exit_code`` is what a shell would return (126/127)."""

    def __init__(self, message: str, *, exit_code: int = 127) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SupervisorError(SandlockError):
    """The kernel refused a step the sandbox needs (seccomp, pidfd, the handshake)."""
