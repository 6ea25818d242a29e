"""Gram matrices ``G = Jᵀ M J`` and the natural direction ``(G + λI) d = g``, with PETSc.

:class:`Gram` holds the Jacobian of a row provider (:class:`Rows`: a
:class:`~natinv.fields.NeuralField`, whose rows are its dofs, or the residuals of a PINN loss at
quadrature points) as a PETSc MPIDENSE matrix (a rank holds only its owned rows) and forms
``G = Jᵀ (M J)`` with ``matMult`` and ``transposeMatMult``, reusing the product matrices across
iterations. :class:`GramOperator` is the matrix-free ``x ↦ Jᵀ(M(Jx)) + λx`` for Krylov solves.

The natural direction ``(G + λI) d = g`` is solved in :mod:`natinv.directions`.

This module must not import objectives, optimizers or the direction solvers.
"""

from __future__ import annotations

import time
from typing import Protocol

from petsc4py import PETSc

import numpy as np
import numpy.typing as npt

from natinv import parallel, resources
from natinv.parallel import Comm

__all__ = ["Gram", "GramOperator", "Rows"]


class Rows(Protocol):
    """What a Gram matrix needs: a vector-valued function of θ, distributed by rows."""

    comm: Comm
    num_owned: int  # rows owned by this rank
    num_global: int  # rows over all ranks
    num_parameters: int

    def values(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """The owned rows at θ."""
        ...

    def jacobian(
        self, theta: npt.ArrayLike | None = None, out: npt.NDArray[np.float64] | None = None
    ) -> npt.NDArray[np.float64]:
        """The owned rows of ``∂rows/∂θ`` (``num_owned × P``), written into ``out``."""
        ...


class Gram:
    """The Gram matrix ``G = Jᵀ M J`` of a row provider (e.g. a neural field) in the metric ``M``.

    Args:
        rows: the row provider (:class:`Rows`), e.g. a :class:`~natinv.fields.NeuralField`,
            whose rows follow its space's index map.
        metric: an assembled matrix on the rows' layout (not owned: the caller keeps and
            destroys it).

    The object owns ``J``, ``MJ`` and ``G`` (PETSc MPIDENSE); call :meth:`destroy` when done.
    """

    def __init__(self, rows: Rows, metric: PETSc.Mat) -> None:
        self.rows = rows
        self.comm = rows.comm
        self.metric = metric
        local, cols = metric.getLocalSize()
        grows, gcols = metric.getSize()
        parallel.check_all(
            self.comm,
            (local, cols, grows, gcols)
            == (rows.num_owned, rows.num_owned, rows.num_global, rows.num_global),
            lambda: (
                f"metric matrix is {grows}×{gcols} with {local} local rows, but there are "
                f"{rows.num_global} rows (dofs or points) with {rows.num_owned} owned here: the "
                "metric was assembled on another space"
            ),
        )
        n, p = rows.num_owned, rows.num_parameters
        #: what J and M·J, and G with its factors once formed, take on the largest rank
        #: (checked before each is allocated; row solvers never form G)
        self.estimates = resources.gram_estimates(self.comm, n, p)
        self._budget = resources.available_memory(resources.ranks_per_node(self.comm))
        self._where = f"natural gradient with {p} parameters and {rows.num_global} rows"
        resources.check_memory(self.estimates[:1], self._budget, self._where)  # (every rank)
        self.J = PETSc.Mat().createDense(((n, rows.num_global), (None, p)), comm=metric.comm)
        self.J.setUp()
        self.J.assemble()
        self.MJ: PETSc.Mat | None = None
        self.G: PETSc.Mat | None = None
        self.version = 0  # bumped whenever J changes
        self.assemblies = 0  # bumped whenever G is formed
        self.timings = {"jacobian": 0.0, "gram": 0.0}  # seconds spent, cumulative
        self._vectors: tuple[PETSc.Vec, PETSc.Vec] | None = None

    @property
    def num_parameters(self) -> int:
        return self.rows.num_parameters

    def jacobian_array(self) -> npt.NDArray[np.float64]:
        """The owned rows of ``J`` as a (column-major) view of the PETSc storage. Local."""
        return self.J.getDenseArray()

    def update_jacobian(self, theta: npt.ArrayLike | None = None) -> PETSc.Mat:
        """Recompute ``J`` at ``θ`` (default: the rows' current θ) into the PETSc matrix.

        Collective (the matrix is re-assembled so PETSc sees the new state).
        """
        start = time.perf_counter()
        self.rows.jacobian(theta, out=self.jacobian_array())
        self.J.assemble()
        self.version += 1
        self.timings["jacobian"] += time.perf_counter() - start
        return self.J

    def assemble(self, theta: npt.ArrayLike | None = None, *, jacobian: bool = True) -> PETSc.Mat:
        """``G = Jᵀ (M J)``, reusing the product matrices. Collective.

        Args:
            theta: parameters at which to evaluate ``J`` (default: the rows' current θ).
            jacobian: recompute ``J`` first (``False`` reuses the one already stored, if any).

        Returns:
            The Gram matrix (owned by this object; valid until the next call).
        """
        if jacobian or self.version == 0:  # never form G from a J that was never computed
            self.update_jacobian(theta)
        if self.G is None:
            resources.check_memory(self.estimates, self._budget, self._where)
        start = time.perf_counter()
        self.MJ = self.metric.matMult(self.J, result=self.MJ)
        self.G = self.J.transposeMatMult(self.MJ, result=self.G)
        self.assemblies += 1
        self.timings["gram"] += time.perf_counter() - start
        return self.G

    def apply_transpose(self, weights: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``Jᵀ w`` for ``w`` on the owned rows, summed over ranks (replicated result)."""
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        local = self.jacobian_array().T @ w
        return parallel.allreduce_array(self.comm, local)

    def apply(self, direction: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``J v`` on the owned rows for a replicated parameter vector ``v``. Local."""
        return np.asarray(self.jacobian_array() @ np.asarray(direction, dtype=np.float64))

    def _work(self) -> tuple[PETSc.Vec, PETSc.Vec]:
        """Two work vectors in the rows' layout (created once, freed by :meth:`destroy`)."""
        if self._vectors is None:
            self._vectors = (self.metric.createVecRight(), self.metric.createVecLeft())
        return self._vectors

    def quadratic(self, direction: npt.ArrayLike) -> float:
        """``vᵀ G v = ‖J v‖²_M`` for a replicated ``v`` (two mat-vecs, no ``G``). Collective."""
        jv, mjv = self._work()
        jv.array[:] = self.apply(direction)
        self.metric.mult(jv, mjv)
        return float(jv.dot(mjv))

    def pull_back(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``Jᵀ M w`` for a vector ``w`` on the owned rows (replicated result). Collective.

        With ``w = J' p`` this is the cross-Gram ``Jᵀ M J' p`` that re-projects a velocity onto
        the current tangent space, without forming any matrix.
        """
        w, mw = self._work()
        w.array[:] = np.asarray(rows, dtype=np.float64).reshape(-1)
        self.metric.mult(w, mw)
        return self.apply_transpose(mw.array)

    def dense(self) -> npt.NDArray[np.float64]:
        """``G`` as a replicated numpy array (gathered from its distributed rows). Collective."""
        if self.G is None:
            raise RuntimeError("Gram.dense: call assemble() first")
        local = np.ascontiguousarray(self.G.getDenseArray(readonly=True))
        blocks = self.comm.allgather(local)
        return np.vstack(blocks)

    def scale(self, probe: npt.ArrayLike | None = None) -> float:
        """``max diag(G)``, the scale a relative damping is measured in (``probe`` is for
        operators that only have products). Collective."""
        return float(self.diagonal().max())

    def diagonal(self) -> npt.NDArray[np.float64]:
        """``diag(G)`` without forming ``G``: column sums of ``J ⊙ (M J)``. Collective."""
        self.MJ = self.metric.matMult(self.J, result=self.MJ)
        local = np.einsum("ij,ij->j", self.jacobian_array(), self.MJ.getDenseArray(readonly=True))
        return parallel.allreduce_array(self.comm, local)

    def destroy(self) -> None:
        """Free the PETSc matrices this object owns. Collective."""
        for obj in (self.G, self.MJ, self.J, *(self._vectors or ())):
            if obj is not None:
                obj.destroy()
        self.G = self.MJ = None
        self._vectors = None


class GramOperator:
    """Python context of a PETSc shell matrix ``x ↦ Jᵀ(M(Jx)) + λx`` (never forms ``G``)."""

    def __init__(self, gram: Gram, damping: float = 0.0) -> None:
        self.gram = gram
        self.damping = float(damping)
        self._jx = gram.metric.createVecRight()
        self._mjx = gram.metric.createVecLeft()
        self._diag: npt.NDArray[np.float64] | None = None

    def mult(self, mat: PETSc.Mat, x: PETSc.Vec, y: PETSc.Vec) -> None:
        self.gram.J.mult(x, self._jx)
        self.gram.metric.mult(self._jx, self._mjx)
        self.gram.J.multTranspose(self._mjx, y)
        if self.damping:
            y.axpy(self.damping, x)

    def getDiagonal(self, mat: PETSc.Mat, d: PETSc.Vec) -> None:
        if self._diag is None:
            self._diag = self.gram.diagonal()
        lo, hi = d.getOwnershipRange()
        d.array[:] = self._diag[lo:hi] + self.damping

    def reset(self) -> None:
        """Forget the cached diagonal (call after ``J`` changed)."""
        self._diag = None

    def matrix(self) -> PETSc.Mat:
        """A new shell matrix with this context; the caller must destroy() it."""
        p = self.gram.num_parameters
        local = self.gram.J.getLocalSize()[1]
        shell = PETSc.Mat().createPython(((local, p), (local, p)), self, comm=self.gram.J.comm)
        shell.setUp()
        return shell

    def free(self) -> None:
        """Free the work vectors (not named ``destroy``: PETSc calls that on shell contexts)."""
        self._jx.destroy()
        self._mjx.destroy()
