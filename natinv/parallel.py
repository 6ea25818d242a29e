"""MPI plumbing: import order, rank-0 output, collective errors, reductions and conversions.

Everything that moves data between ranks, or between torch, numpy and PETSc, lives here, so that
the rest of natinv never writes its own reduction or conversion.

The PyPI wheel of DOLFINx (``dolfinx-solver-real``) must be imported before ``dolfinx`` and
``petsc4py`` so that its bundled libraries are found; a conda or Docker DOLFINx has no such module,
which is fine.

**The one rule for failures under MPI** (every module follows it):

1. A block that may fail on some ranks only (reading a file, evaluating a user formula or a
   network on local points, a local factorisation) contains no collective call. It records its
   outcome, and one collective check afterwards (:func:`check_all`, :func:`collective`) raises the
   same :class:`CollectiveError` on every rank.
2. I/O done by rank 0 alone (:func:`on_rank0`) broadcasts its success or its error before any
   rank waits in a barrier or a collective; the others never wait for a rank that has died.
3. A collective library call that may fail (a parallel mesh read, a distributed solve) is called
   only after its inputs were checked under rules 1 and 2, so that it fails on every rank alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

with contextlib.suppress(ImportError):
    import dolfinx_solver  # noqa: F401  (must precede dolfinx and petsc4py)

from mpi4py import MPI

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # torch and PETSc load when first used: `natinv --help` stays quick
    from petsc4py import PETSc

    import torch

__all__ = [
    "CollectiveError",
    "Comm",
    "SolveError",
    "allgather_vec",
    "allreduce_array",
    "allreduce_max",
    "allreduce_max_array",
    "allreduce_sum",
    "bcast_array",
    "check_all",
    "check_replicated",
    "collective",
    "describe_error",
    "direct_solver",
    "ensure_finite",
    "numpy_from_torch",
    "on_rank0",
    "rank0_print",
    "torch_from_numpy",
]

Comm = MPI.Comm


DTYPE = np.float64


class CollectiveError(ValueError):
    """An input error detected on one or more ranks and raised on every rank with one message."""


class SolveError(CollectiveError):
    """A model cannot be solved for this parameter (not admissible, a diverging or failed
    solve), raised on every rank. Line searches treat it as an infinite loss; any other
    :class:`CollectiveError` is a real error."""


def rank0_print(comm: Comm, *args: Any, **kwargs: Any) -> None:
    """Print on rank 0 only (flushes, so progress lines appear live under mpirun)."""
    if comm.rank == 0:
        print(*args, **kwargs, flush=True)


def check_all(
    comm: Comm,
    ok: bool,
    message: str | Callable[[], str],
    error: type[CollectiveError] = CollectiveError,
) -> None:
    """Raise :class:`CollectiveError` on every rank if ``ok`` is false on any rank. Collective.

    Args:
        comm: communicator over which the check is made.
        ok: this rank's verdict.
        message: the error text, or a callable producing it (evaluated only where ``ok`` is
            false). The text of the lowest failing rank is raised everywhere, prefixed with that
            rank when running on more than one.
        error: the exception class raised (a :class:`CollectiveError`).
    """
    local = None if ok else (message() if callable(message) else message)
    if comm.size == 1:
        if local is not None:
            raise error(local)
        return
    failures = comm.allgather(local)
    for rank, text in enumerate(failures):
        if text is not None:
            raise error(f"{text} (on rank {rank})")


@contextlib.contextmanager
def collective(comm: Comm, what: str) -> Iterator[None]:
    """Turn an exception raised on some ranks inside the block into one raised on all ranks.

    Every rank must enter and leave the block (it ends with one collective check), so the block
    must not itself contain collectives that a failing rank would skip. Use it around local work
    such as reading a file or evaluating a network.
    """
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # re-raised below on every rank
        error = exc
    check_all(comm, error is None, lambda: f"{what}: {describe_error(error)}")  # type: ignore[arg-type]


def on_rank0[T](comm: Comm, what: str, work: Callable[[], T], *, share: bool = False) -> T | None:
    """Run ``work()`` on rank 0 alone and broadcast its outcome. Collective.

    The other ranks wait only in the broadcast, so an error on rank 0 (an unwritable folder, an
    unreadable file) is raised on every rank as one :class:`CollectiveError` reading
    ``"{what}: {error}"``; no rank is left in a barrier. ``work`` must not call collectives.

    Returns:
        ``work()``'s result on rank 0; on the other ranks None, or the result itself when
        ``share`` (it is then pickled and broadcast).
    """
    result: T | None = None
    error: str | None = None
    if comm.rank == 0:
        try:
            result = work()
        except Exception as exc:  # raised below on every rank
            error = f"{what}: {describe_error(exc)}"
    if comm.size > 1:
        error, shared = comm.bcast((error, result if share else None), root=0)
        if comm.rank != 0:
            result = shared
    if error is not None:
        raise CollectiveError(error)
    return result


def describe_error(exc: BaseException) -> str:
    """An exception as one line: OS errors by their reason (the path is named by the caller)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() + (f" ({exc.filename})" if exc.filename else "")
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def direct_solver(comm: Comm) -> str:
    """The sparse direct solver natinv factorises with by default: MUMPS, on any number of
    ranks. On the 3D bracket (100 k P2 dofs, 2 ranks) an iteration takes 2.3× less time than
    with SuperLU_DIST, whose factorisation and block solves are slower and whose transposed
    solve is wrong in PETSc 3.25 (a second factorisation for nonsymmetric operators).

    The price is repeatability: MUMPS schedules its parallel factorisation dynamically, so two
    launches on 2 or more ranks differ in the last bits (measured 1e-16 relative), and a line
    search can turn that into different iterates (a TAO run took 25 to 41 iterations from one
    launch to the next). SuperLU_DIST's parallel factorisation is static and repeats bitwise on
    2 ranks (on 3 or more its solves, too, sum in the order messages arrive): choose it with
    ``[model] solver = "superlu_dist"`` or ``-natinv_model_pc_factor_mat_solver_type
    superlu_dist``. On one rank both repeat bitwise."""
    return "mumps"


def allreduce_sum(comm: Comm, value: float) -> float:
    """Sum a scalar over ranks (result identical everywhere). Collective."""
    return float(comm.allreduce(float(value), op=MPI.SUM))


def allreduce_max(comm: Comm, value: float) -> float:
    """Maximum of a scalar over ranks. Collective."""
    return float(comm.allreduce(float(value), op=MPI.MAX))


def allreduce_max_array(comm: Comm, array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Elementwise maximum of a float64 array over ranks; returns a new array. Collective."""
    send = np.ascontiguousarray(array, dtype=DTYPE)
    out = np.empty_like(send)
    comm.Allreduce(send, out, op=MPI.MAX)
    return out


def allreduce_array(comm: Comm, array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Elementwise sum of a float64 array over ranks; returns a new array. Collective."""
    send = np.ascontiguousarray(array, dtype=DTYPE)
    out = np.empty_like(send)
    comm.Allreduce(send, out, op=MPI.SUM)
    return out


def bcast_array(
    comm: Comm, array: npt.NDArray[np.float64], root: int = 0
) -> npt.NDArray[np.float64]:
    """Broadcast a float64 array from ``root``; every rank must pass an array of the same shape."""
    buf = np.ascontiguousarray(array, dtype=DTYPE).copy()
    comm.Bcast(buf, root=root)
    return buf


def check_replicated(comm: Comm, array: npt.NDArray[np.float64], name: str) -> None:
    """Raise on every rank unless ``array`` is bitwise identical on all ranks. Collective."""
    reference = bcast_array(comm, array)
    same = reference.shape == np.shape(array) and bool(
        np.array_equal(reference, array, equal_nan=True)
    )
    check_all(comm, same, f"{name} differs between ranks (it must be replicated)")


def allgather_vec(vec: PETSc.Vec) -> npt.NDArray[np.float64]:
    """All entries of a distributed PETSc vector on every rank, as a new array. Collective."""
    comm = vec.comm.tompi4py()
    local = np.ascontiguousarray(vec.getArray(readonly=True), dtype=DTYPE)
    sizes = comm.allgather(local.size)
    out = np.empty(sum(sizes), dtype=DTYPE)
    comm.Allgatherv(local, (out, sizes))
    return out


def torch_from_numpy(array: npt.ArrayLike) -> torch.Tensor:
    """A float64 torch tensor sharing memory with ``array`` where possible."""
    import torch

    return torch.as_tensor(np.asarray(array, dtype=DTYPE), dtype=torch.float64)


def numpy_from_torch(tensor: torch.Tensor) -> npt.NDArray[np.float64]:
    """A float64 numpy array from a tensor (detached, on the CPU)."""
    import torch

    return np.asarray(tensor.detach().to(device="cpu", dtype=torch.float64).numpy())


def ensure_finite(
    comm: Comm, array: npt.ArrayLike, name: str, error: type[CollectiveError] = CollectiveError
) -> None:
    """Raise on every rank if ``array`` holds a NaN or an infinity on any rank. Collective."""
    values = np.asarray(array)
    finite = bool(np.all(np.isfinite(values)))

    def message() -> str:
        bad = np.flatnonzero(~np.isfinite(values.ravel()))
        return (
            f"{name} contains {bad.size} non-finite value(s) (NaN or inf), "
            f"first at flat index {int(bad[0])} on rank {comm.rank}"
        )

    check_all(comm, finite, message, error)


def stream_rows(
    rng: np.random.Generator, count: int, width: int, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Rows ``rows`` of a ``(count, width)`` standard normal array drawn from ``rng`` row by
    row: a row's values depend on its index alone, not on which rank asks for it (noise that
    is the same on any partition). Every rank draws the whole stream, in chunks of about 8 MB:
    memory independent of ``count``. Not collective."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, width))
    chunk = max(1, 2**20 // max(width, 1))
    for start in range(0, count, chunk):
        draws = rng.standard_normal((min(chunk, count - start), width))
        mine = (rows >= start) & (rows < start + draws.shape[0])
        out[mine] = draws[rows[mine] - start]
    return out
