"""Fail points for the fault tests: crash the process at an exact place in the commit cycle.

``STREAM_LSTM_FAILPOINT=after_flush@3`` SIGKILLs the process the 3rd time it reaches
``after_flush`` (several: ``after_flush@3,after_save@5``). Points: ``after_flush`` (forecasts
acknowledged, states not yet written) and ``after_save`` (states written, offsets not yet
committed): the two crash windows docs/architecture.md reasons about; with exactly-once,
``before_commit`` (E1 done, the transaction open), ``after_commit`` (the transaction committed,
no state written) and ``after_states`` (states written, applied offsets not yet marked).
Unset (always, outside tests), a fail point costs one dict truthiness check.
"""

from __future__ import annotations

import os
import signal
import sys

POINTS = ("after_flush", "after_save", "before_commit", "after_commit", "after_states")


def _parse(spec: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition("@")
        if name not in POINTS:
            raise ValueError(f"unknown fail point {name!r}; known: {POINTS}")
        out[name] = int(n or 1)
    return out


_ARMED = _parse(os.environ.get("STREAM_LSTM_FAILPOINT", ""))
_SEEN: dict[str, int] = {}


def failpoint(name: str) -> None:
    if not _ARMED or name not in _ARMED:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _ARMED[name]:
        print(f"fail point {name} reached: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
