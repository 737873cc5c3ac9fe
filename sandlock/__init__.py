"""sandlock: an egress firewall for one command.

    sandlock run --net-allow example.com:443 -- cmd args...

The command runs under a seccomp filter that sends connect, sendto, sendmsg and
sendmmsg to a supervisor, which decides each on its own copy of the destination and
performs the call itself on a duplicate of the command's socket.

    from sandlock import Sandbox
    result = Sandbox(net_allow=["127.0.0.1:8080"]).run(["curl", "http://127.0.0.1:8080/"])

The public names are imported on first use, so that ``sandlock`` the command starts
without loading trio unless it needs it.
"""

from __future__ import annotations

from .errors import DaemonError as DaemonError
from .errors import DnsConfigError as DnsConfigError
from .errors import LaunchError as LaunchError
from .errors import PolicyError as PolicyError
from .errors import SandlockError as SandlockError
from .errors import SupervisorError as SupervisorError
from .errors import TimeoutExpired as TimeoutExpired
from .errors import UsageError as UsageError

# typing costs a launch ~7 ms; the daemon client's path does without it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .api import DEVNULL as DEVNULL
    from .api import PIPE as PIPE
    from .api import Result as Result
    from .api import Sandbox as Sandbox
    from .ask import Allow as Allow
    from .ask import AskRequest as AskRequest
    from .ask import Deny as Deny
    from .audit import AuditSeal as AuditSeal
    from .audit import DecisionRecord as DecisionRecord
    from .plan import NameOptions as NameOptions
    from .process import AsyncProcess as AsyncProcess
    from .process import Process as Process

__all__ = [
    "DEVNULL",
    "PIPE",
    "Allow",
    "AskRequest",
    "AsyncProcess",
    "AuditSeal",
    "DaemonError",
    "DecisionRecord",
    "Deny",
    "DnsConfigError",
    "LaunchError",
    "NameOptions",
    "PolicyError",
    "Process",
    "Result",
    "Sandbox",
    "SandlockError",
    "SupervisorError",
    "TimeoutExpired",
    "UsageError",
]

_LAZY = {
    "Allow": ".ask",
    "AskRequest": ".ask",
    "Deny": ".ask",
    "DEVNULL": ".api",
    "PIPE": ".api",
    "AsyncProcess": ".process",
    "Process": ".process",
    "Result": ".api",
    "Sandbox": ".api",
    "AuditSeal": ".audit",
    "DecisionRecord": ".audit",
    "NameOptions": ".plan",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandlock' has no attribute {name!r}")
    import importlib  # here: importlib (and warnings) would cost every launch ~0.5 ms

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
