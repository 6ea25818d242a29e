"""Results on disk: history CSV, summary JSON, convergence and field figures.

Only rank 0 writes these (non-parallel) files. Files are written to a temporary name and renamed,
so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from natinv.parallel import Comm

__all__ = [
    "atomic_path",
    "plot_convergence",
    "plot_fields",
    "pyplot",
    "save_figure",
    "write_history",
    "write_summary",
]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that is renamed onto it when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_history(comm: Comm, path: Path, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """One CSV row per iteration and optimizer (columns: optimizer, then the record keys)."""
    if comm.rank != 0:
        return
    keys: list[str] = []
    for records in runs.values():
        for record in records:
            keys.extend(k for k in record if k not in keys)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["optimizer", *keys])
        writer.writeheader()
        for name, records in runs.items():
            for record in records:
                writer.writerow({"optimizer": name, **record})


def write_summary(comm: Comm, path: Path, summary: Mapping[str, Any]) -> None:
    """``summary`` as indented JSON."""
    if comm.rank != 0:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the off-screen Agg backend (figures are drawn on rank 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG atomically (a killed run leaves the previous file) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)


def plot_convergence(
    comm: Comm,
    path: Path,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str = "loss",
    title: str = "",
    level: float | None = None,
) -> None:
    """``key`` against iteration and against cumulative wall time, one curve per optimizer;
    ``level`` draws a dashed horizontal line (e.g. the misfit at the noise level)."""
    if comm.rank != 0:
        return
    plt = pyplot()

    fig, (ax_it, ax_t) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, records in runs.items():
        values = [r[key] for r in records]
        times = np.cumsum([r.get("time", 0.0) for r in records])
        ax_it.semilogy([r["iteration"] for r in records], values, label=name)
        ax_t.semilogy(times, values, label=name)
    if level is not None and np.isfinite(level):
        for ax in (ax_it, ax_t):
            ax.axhline(level, color="k", linestyle="--", linewidth=0.8, label="noise level")
    ax_it.set_xlabel("iteration")
    ax_t.set_xlabel("wall time [s]")
    for ax in (ax_it, ax_t):
        ax.set_ylabel(key)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_fields(
    comm: Comm,
    path: Path,
    points: npt.NDArray[np.float64],
    fields: Mapping[str, npt.NDArray[np.float64]],
    title: str = "",
) -> None:
    """Scalar fields at 2D points (gathered on rank 0), side by side on one colour scale; a
    panel named 'error' gets its own diverging scale centred on zero."""
    if comm.rank != 0:
        return
    plt = pyplot()
    from matplotlib.tri import Triangulation

    tri = Triangulation(points[:, 0], points[:, 1])
    names = list(fields)
    shared = [n for n in names if n != "error"]
    lo = min(float(np.min(fields[n])) for n in shared)
    hi = max(float(np.max(fields[n])) for n in shared)
    fig, axes = plt.subplots(
        1, len(names), figsize=(4.2 * len(names), 3.8), constrained_layout=True
    )
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        if name == "error":
            bound = float(np.max(np.abs(fields[name]))) or 1.0
            kwargs = {"vmin": -bound, "vmax": bound, "cmap": "RdBu_r"}
        else:
            kwargs = {"vmin": lo, "vmax": hi}
        image = ax.tripcolor(tri, fields[name], shading="gouraud", **kwargs)
        ax.set_title(name)
        ax.set_aspect("equal")
        fig.colorbar(image, ax=ax, shrink=0.85)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
