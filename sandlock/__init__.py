"""sandlock: an egress firewall for one command.

    sandlock run --net-allow example.com:443 -- cmd args...

The command runs under a seccomp filter that sends connect, sendto, sendmsg and
sendmmsg to a supervisor, which decides each on its own copy of the destination and
performs the call itself on a duplicate of the command's socket.
"""

from .api import Result as Result
from .api import Sandbox as Sandbox
from .api import TimeoutExpired as TimeoutExpired
from .audit import DecisionRecord as DecisionRecord
from .errors import LaunchError as LaunchError
from .errors import PolicyError as PolicyError
from .errors import SandlockError as SandlockError
from .errors import SupervisorError as SupervisorError

__all__ = [
    "DecisionRecord",
    "LaunchError",
    "PolicyError",
    "Result",
    "Sandbox",
    "SandlockError",
    "SupervisorError",
    "TimeoutExpired",
]
