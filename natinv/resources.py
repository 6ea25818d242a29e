"""Resources with limits: what a run will need, estimated before the work starts.

Every input that decides memory or time is checked here before anything large is allocated or
read: text files by their size (:func:`read_text`), the Jacobian, Gram and observation-row
blocks by their bytes per rank (:func:`estimate`), a transient model by its stored states. A
figure above a limit is one error naming the input, the estimate and the limit (and how to
raise it); :func:`describe` prints the estimates for ``natinv check``.

Limits are read from the environment (a cluster job sets them once):

``NATINV_MAX_FILE_MB``   largest text file read (case, sensor files; default 512 MB)
``NATINV_MAX_MEMORY_GB`` memory per rank a run may plan for (default: the memory of this
                         machine shared by the ranks on it, as the operating system reports it)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Estimate",
    "ResourceError",
    "available_memory",
    "check_memory",
    "file_limit",
    "format_bytes",
    "gram_estimates",
    "ranks_per_node",
    "read_text",
]


class ResourceError(ValueError):
    """An input that would need more memory, disk or time than allowed."""


def format_bytes(count: float) -> str:
    """``1536`` → ``"1.5 kB"`` (powers of 1000, as file managers and ``df -H`` show them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1000
    raise AssertionError  # (unreachable)


def file_limit() -> int:
    """The largest text file natinv reads, in bytes (``NATINV_MAX_FILE_MB``, default 512)."""
    return int(_positive_env("NATINV_MAX_FILE_MB", 512.0) * 1e6)


def read_text(path: Path, what: str) -> str:
    """The text of ``path`` (UTF-8; a byte-order mark, as spreadsheet programs write it, is
    dropped), after checking that it is a regular file no larger than :func:`file_limit`: a
    device, a pipe or a huge file is refused before anything is read. Local (not collective).

    Raises:
        FileNotFoundError: no such file.
        ResourceError: not a regular file, or larger than the limit (both named).
        UnicodeDecodeError: not UTF-8 text.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ResourceError(f"{path}: not a regular file (a {what} is a text file)")
    limit = file_limit()
    if info.st_size > limit:
        raise ResourceError(
            f"{path}: {format_bytes(info.st_size)}, more than the {format_bytes(limit)} a {what} "
            "may have (NATINV_MAX_FILE_MB raises the limit)"
        )
    with open(path, "rb") as stream:
        data = stream.read(limit + 1)  # (a file that grows meanwhile is still bounded)
    if len(data) > limit:
        raise ResourceError(f"{path}: larger than the {format_bytes(limit)} a {what} may have")
    return data.decode("utf-8-sig")


def available_memory(ranks_here: int = 1) -> float:
    """Bytes of memory one of ``ranks_here`` ranks on this machine may plan for:
    ``NATINV_MAX_MEMORY_GB`` if set, else the machine's memory (cgroup limit where one is
    set) shared equally."""
    explicit = _positive_env("NATINV_MAX_MEMORY_GB", 0.0)
    if explicit > 0:
        return explicit * 1e9
    total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = float(text)
    return total / max(ranks_here, 1)


@dataclass(frozen=True)
class Estimate:
    """What one part of a run holds in memory on the largest rank."""

    what: str
    bytes: float
    hint: str = ""  # how to make it smaller


def check_memory(estimates: list[Estimate], budget: float, source: str) -> None:
    """Raise :class:`ResourceError` naming the largest parts when the estimates add up to more
    than ``budget`` bytes. Local: every rank must pass the same (reduced) estimates."""
    total = sum(e.bytes for e in estimates)
    if total <= budget:
        return
    largest = sorted(estimates, key=lambda e: -e.bytes)[:2]
    parts = "; ".join(f"{e.what} {format_bytes(e.bytes)}" for e in largest)
    hint = largest[0].hint
    raise ResourceError(
        f"{source}: the run needs about {format_bytes(total)} per rank ({parts}), more than the "
        f"{format_bytes(budget)} available per rank"
        + (f"; use {hint}" if hint else "")
        + " (NATINV_MAX_MEMORY_GB sets the budget)"
    )


def _positive_env(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ResourceError(f"{name}={text!r}: expected a number") from None
    if not value > 0:
        raise ResourceError(f"{name}={text!r}: expected a number > 0")
    return value


def ranks_per_node(comm: Any) -> int:
    """How many ranks of ``comm`` share this rank's machine (and its memory). Collective."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.size)
    finally:
        node.Free()


def gram_estimates(comm: Any, owned_rows: int, parameters: int) -> list[Estimate]:
    """The memory of a Gram matrix ``G = Jᵀ M J`` on the largest rank: ``J`` and ``M J``
    (its owned rows × P each) and ``G`` with the copies its solvers make (P × P, two of them).
    Collective (the largest rank's rows)."""
    from natinv import parallel  # (here: case parsing imports this module, not MPI)

    rows = int(parallel.allreduce_max(comm, owned_rows))
    hint = "a smaller network (fewer parameters)"
    return [
        Estimate("the Jacobian J and M·J", 16.0 * rows * parameters, f"{hint} or more ranks"),
        Estimate("the Gram matrix and its factors", 16.0 * parameters * parameters, hint),
    ]
