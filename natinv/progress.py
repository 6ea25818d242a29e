"""A heartbeat for long iterations: a line on rank 0 when one piece of work runs for long.

A run's progress line comes once per iteration; an iteration of a transient model with many
steps (or of any long pass) may take minutes. Loops that may run long call :func:`tick` with
what they are doing; while :func:`reporting` is on (``natinv run`` without ``--quiet``), rank 0
prints that text at most every ``interval`` seconds, the first time ``interval`` seconds after
the iteration began (:func:`restart`). Ticks are local: only rank 0 looks at its clock, nothing
is communicated, so a tick may sit anywhere, inside collective loops too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["reporting", "restart", "tick"]

_state: dict[str, Any] = {"on": False, "interval": 5.0, "start": 0.0, "last": 0.0}


@contextlib.contextmanager
def reporting(comm: Any, interval: float = 5.0, *, enabled: bool = True) -> Iterator[None]:
    """Print the ticks of the block (on rank 0 of ``comm``, when ``enabled``) every
    ``interval`` seconds."""
    before = dict(_state)
    _state.update(on=enabled and comm.rank == 0, interval=float(interval))
    restart()
    try:
        yield
    finally:
        _state.update(before)


def restart() -> None:
    """A new iteration begins: the next line comes ``interval`` seconds from now."""
    _state["start"] = _state["last"] = time.perf_counter()


def tick(what: str | Any) -> None:
    """Report ``what`` (a string, or a callable giving one, called only when it is printed)
    if the last line is ``interval`` seconds old. Local."""
    if not _state["on"]:
        return
    now = time.perf_counter()
    if now - _state["last"] < _state["interval"]:
        return
    _state["last"] = now
    text = what() if callable(what) else what
    print(f"      … {text} ({now - _state['start']:.0f} s into the iteration)", flush=True)
