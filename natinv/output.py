"""Results on disk: history CSV, summary JSON, convergence and field figures.

Only rank 0 writes these (non-parallel) files, through :func:`rank0_writer`: every rank learns
whether the write succeeded before anyone goes on (an error on rank 0 is raised on every rank,
no rank is left in a barrier). Files are written to a temporary name and renamed, so an
interrupted run never leaves a half-written result; they get the permissions the umask allows,
like any file the user creates. :func:`claim_folder` takes a run's output folder: it must be
writable, only one run writes to it at a time, and it never holds the results of two runs.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from natinv import parallel, resources
from natinv.parallel import Comm

__all__ = [
    "RESULTS",
    "atomic_path",
    "check_space",
    "claim_folder",
    "plot_convergence",
    "plot_fields",
    "pyplot",
    "rank0_writer",
    "remove_results",
    "results_in",
    "save_figure",
    "write_history",
    "write_summary",
    "written_aside",
]


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (0o644 under 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that is renamed onto it when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, _file_mode())  # mkstemp's files are private (0600)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rank0_writer[**P](func: Callable[P, None]) -> Callable[P, None]:
    """Make ``func(comm, path, ...)`` run on rank 0 alone, with its outcome shared: an error
    there (an unwritable folder, a full disk, a figure that cannot be drawn) is raised on every
    rank as one :class:`~natinv.parallel.CollectiveError` naming ``path``. Collective."""

    @functools.wraps(func)
    def write(*args: P.args, **kwargs: P.kwargs) -> None:
        comm, path = args[0], args[1]
        parallel.on_rank0(comm, f"{path}: cannot write", lambda: func(*args, **kwargs))  # type: ignore[arg-type]

    return write


class _Claim:
    """A held output folder (see :func:`claim_folder`)."""

    def __init__(self, comm: Comm, folder: Path, stream: IO[str] | None) -> None:
        self.comm, self.folder, self._stream = comm, folder, stream

    def release(self) -> None:
        """Let another run write to the folder: rank 0 removes the lock file, then closes it
        (a run waiting for it sees the file gone and takes a new one). Local."""
        if self._stream is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.folder / LOCK)
            self._stream.close()
            self._stream = None

    def __enter__(self) -> _Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


LOCK = ".natinv.lock"

#: What a run writes into its output folder (files and VTX folders): a folder holding any of
#: them holds another run's results.
RESULTS = (
    "summary.json",
    "history.csv",
    "checkpoint.npz",
    "convergence.png",
    "fields.png",
    "misfit.png",
    "uncertainty.png",
    "mu_errors.png",
    "parameter.bp",
    "state.bp",
    "solution.bp",
    "std.bp",
    "samples.bp",
)


def results_in(folder: Path, names: Sequence[str] = RESULTS) -> list[str]:
    """The result files of ``names`` present in ``folder`` (in that order). Local."""
    return [name for name in names if (folder / name).exists()]


def remove_results(folder: Path, names: Sequence[str] = RESULTS) -> None:
    """Remove the result files (and VTX folders) of ``names`` from ``folder``. Local."""
    for name in results_in(folder, names):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def claim_folder(
    comm: Comm,
    folder: Path,
    *,
    results: Sequence[str] = (),
    resume: bool = False,
    force: bool = False,
) -> _Claim:
    """Create ``folder`` if needed and hold it for this run: it must be a writable folder, and a
    second run writing to it at the same time is refused (an advisory lock held by rank 0 until
    :meth:`~_Claim.release`, dropped by the system if the process dies; the lock file is removed
    on release). ``results`` are the names of the files this run writes: when the folder holds
    any of them from another run, the run is refused unless it continues that run (``resume``)
    or replaces it (``force``: they are removed first), so that a folder never holds the
    results of two runs. Collective.

    Raises:
        CollectiveError: on every rank, naming the folder and what is wrong.
    """

    def take() -> IO[str]:
        import fcntl

        if folder.exists() and not folder.is_dir():
            raise ValueError("a file is in the place of the output folder")
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            stream = open(folder / LOCK, "a+")
            try:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                stream.seek(0)
                holder = stream.read().strip() or "?"
                stream.close()
                raise ValueError(
                    f"another natinv run is writing to this folder (process {holder}); wait for "
                    "it or choose another output.folder"
                ) from None
            except OSError:  # a file system without locks (some network mounts): unguarded
                break
            try:  # the lock file a finishing run removed meanwhile is no lock: take a new one
                if os.stat(folder / LOCK).st_ino == os.fstat(stream.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            stream.close()
        stream.seek(0)
        stream.truncate()
        stream.write(f"{os.getpid()}\n")
        stream.flush()
        try:
            probe = folder / f".natinv-write-test-{os.getpid()}"
            probe.write_text("")  # the folder may have changed: is it writable now?
            probe.unlink()
            _remove_debris(folder, results)
            found = results_in(folder, results)
            if found and not resume:
                if not force:
                    raise ValueError(
                        f"holds the results of another run ({', '.join(found)}): continue it "
                        "with --resume, replace it with --force, or choose another "
                        "output.folder"
                    )
                remove_results(folder, found)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(folder / LOCK)
            stream.close()
            raise
        return stream

    stream = parallel.on_rank0(comm, f"output folder {folder}", take)
    return _Claim(comm, folder, stream)


def _remove_debris(folder: Path, names: Sequence[str]) -> None:
    """Remove what a killed run's writes left behind in ``folder``: the temporary files of
    :func:`atomic_path` and :func:`written_aside` beside the results ``names`` (hidden names
    ``.<name>.…``), and write probes. Only a run holding the folder's lock calls this. Local."""
    prefixes = (*(f".{name}." for name in names), ".natinv-write-test-")
    for path in folder.iterdir():
        if path.name.startswith(prefixes):
            _remove(path)


def check_space(comm: Comm, path: Path, needed: float) -> None:
    """Raise on every rank unless the file system ``path`` is written to has room for
    ``needed`` bytes
    (with a margin of half as much again and 64 kB: a VTX folder of the demo's fields holds
    about 20 kB of ADIOS2 metadata beside its values): a library that cannot report a full
    disk (ADIOS2 aborts or hangs) is not started on one. Collective (rank 0 looks)."""

    def look() -> None:
        free = shutil.disk_usage(path.parent).free
        wanted = 1.5 * needed + 64e3
        if free < wanted:
            detail = (
                f"{resources.format_bytes(free)} free, about {resources.format_bytes(wanted)} "
                "needed"
            )
            raise OSError(errno.ENOSPC, "No space left on device", detail)

    parallel.on_rank0(comm, f"{path}: cannot write", look)


@contextmanager
def written_aside(comm: Comm, path: Path, needed: float) -> Iterator[Path]:
    """A temporary path beside ``path`` (a file or a folder, e.g. a VTX folder) for a
    collective writer; when the block succeeds rank 0 puts it in the place of ``path`` (an old
    ``path`` is removed only then), so a failed or killed write leaves the previous result. The
    disk is checked for ``needed`` bytes first (:func:`check_space`). Collective."""

    def prepare() -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path.with_name(f".{path.name}.{os.getpid()}.tmp"))

    tmp = Path(parallel.on_rank0(comm, f"{path}: cannot write", prepare, share=True) or "")
    check_space(comm, path, needed)
    try:
        yield tmp
    except BaseException:
        if comm.rank == 0:
            _remove(tmp)
        raise

    def swap() -> None:
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)

    comm.Barrier()  # every rank has closed its part of the writer
    parallel.on_rank0(comm, f"{path}: cannot write", swap)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


@rank0_writer
def write_history(comm: Comm, path: Path, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """One CSV row per iteration and optimizer (columns: optimizer, then the record keys).
    Collective."""
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


@rank0_writer
def write_summary(comm: Comm, path: Path, summary: Mapping[str, Any]) -> None:
    """``summary`` as indented JSON. Collective."""
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


@rank0_writer
def plot_convergence(
    comm: Comm,
    path: Path,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str = "loss",
    title: str = "",
    level: float | None = None,
) -> None:
    """``key`` against iteration and against cumulative wall time, one curve per optimizer;
    ``level`` draws a dashed horizontal line (e.g. the misfit at the noise level).
    Collective."""
    plt = pyplot()

    fig, (ax_it, ax_t) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, records in runs.items():
        values = np.array([r[key] for r in records], dtype=np.float64)
        times = np.cumsum([r.get("time", 0.0) for r in records])
        iterations = np.array([r["iteration"] for r in records])
        known = np.isfinite(values)  # (a sampled run checks its whole misfit every few steps)
        style = {"marker": "."} if not known.all() else {}
        ax_it.semilogy(iterations[known], values[known], label=name, **style)
        ax_t.semilogy(times[known], values[known], label=name, **style)
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


@rank0_writer
def plot_fields(
    comm: Comm,
    path: Path,
    points: npt.NDArray[np.float64],
    fields: Mapping[str, npt.NDArray[np.float64]],
    title: str = "",
) -> None:
    """Scalar fields at 2D points (gathered on rank 0), side by side on one colour scale; a
    panel named 'error' gets its own diverging scale centred on zero. Collective."""
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
