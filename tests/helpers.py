"""Dense references and gathering helpers for the tests (not part of natinv)."""

from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np

import natinv  # noqa: F401  (loads the DOLFINx wheel's libraries first)


def dense_matrix(matrix: PETSc.Mat) -> np.ndarray:
    """A distributed PETSc AIJ matrix as a dense numpy array on every rank (tests only)."""
    comm = matrix.comm.tompi4py()
    lo, hi = matrix.getOwnershipRange()
    _n, m = matrix.getSize()
    local = np.zeros((hi - lo, m))
    indptr, indices, values = matrix.getValuesCSR()
    for i in range(hi - lo):
        local[i, indices[indptr[i] : indptr[i + 1]]] = values[indptr[i] : indptr[i + 1]]
    return np.vstack(comm.allgather(local))


def gather_rows(comm: MPI.Comm, local: np.ndarray) -> np.ndarray:
    """Owned rows of every rank stacked in rank order (= PETSc's global row order)."""
    return np.concatenate(comm.allgather(np.ascontiguousarray(local)), axis=0)


def write_shared(path, text: str, comm: MPI.Comm):  # type: ignore[no-untyped-def]
    """Write a file on rank 0 once every rank is done with the last one; every rank returns
    when it is there. Returns ``path``."""
    comm.Barrier()
    if comm.rank == 0:
        path.write_text(text)
    comm.Barrier()
    return path


def unit_square(comm: MPI.Comm, n: int = 6) -> dolfinx.mesh.Mesh:
    return dolfinx.mesh.create_unit_square(comm, n, n)


def taylor_orders(value, base, value0, slope, direction, hs):
    """Observed orders of ``|L(x + h v) − L(x) − h ∇L·v|`` over the step sizes ``hs``: 2 for a
    correct gradient. ``value`` is L, ``value0 = L(x)``, ``slope = ∇L·v`` (summed over ranks)."""
    remainders = np.array([abs(value(base + h * direction) - value0 - h * slope) for h in hs])
    return np.log2(remainders[:-1] / remainders[1:])


def read_checkpoint(folder):
    """A checkpoint's header and arrays, read as plain data (no pickle, no case check)."""
    import json

    from natinv.checkpoint import FILENAME, decode

    with np.load(folder / FILENAME, allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    header = json.loads(bytes(arrays.pop("__header__")).decode())
    return {
        **header,
        "state": decode(header["state"], arrays),
        "rng": decode(header["rng"], arrays),
    }


def central_differences(values, theta, h=1e-6):
    """The owned rows' central differences ``(values(θ + h e_j) − values(θ − h e_j)) / 2h``, a
    column per parameter: the reference a Jacobian of rows is checked against."""
    columns = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        columns.append((values(theta + e) - values(theta - e)) / (2 * h))
    return np.stack(columns, axis=1)
