"""SANDLOCK_GATE: a test and diagnostic switch that takes the gate out of the answers.

The gate (csrc/gate.h) is a cache of Python's decisions: it answers calls to
destinations Python allowed and asked it to remember, parks blocking connects with its
second thread, and lets opens of files that cannot be virtual continue. Python
(onbehalf.py) stays the reference. With ``SANDLOCK_GATE=python`` in the environment of
the process that supervises (the one running `sandlock run` or the API, or the daemon:
a `run --daemon` client's value is checked but the daemon's decides), the gate does none
of that: every trapped call is handed to Python, which decides and performs it. A run
must behave the same both ways; tests/conftest.py's ``gate_mode`` runs the enforcement
matrix and the attack tests so, and compares what reaches the sinks and the command.

An unknown value is a usage error, not a silent default: a misspelt ``python`` would
otherwise test the gate against itself. The variable is not passed on to the command
(_fastrun.CONTROL_VARIABLES), so the command sees the same environment in both modes.
"""

from __future__ import annotations

import os

from .errors import UsageError

GATE_ENV = "SANDLOCK_GATE"


def gate_answers() -> bool:
    """Whether the gate may answer calls itself: True by default ($SANDLOCK_GATE unset,
    empty or ``gate``), False under ``SANDLOCK_GATE=python``; UsageError for any other
    value."""
    value = os.environ.get(GATE_ENV, "")
    if value in ("", "gate"):
        return True
    if value == "python":
        return False
    raise UsageError(f"{GATE_ENV}={value}: unknown value (python, or gate: the default)")
