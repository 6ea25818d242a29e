"""Gram matrices ``G = Jᵀ M J`` and the natural direction ``(G + λI) d = g``, with PETSc.

:class:`Gram` holds the Jacobian of a row provider (:class:`Rows`: a
:class:`~natinv.fields.NeuralField`, whose rows are its dofs, or the residuals of a PINN loss at
quadrature points) as a PETSc MPIDENSE matrix (a rank holds only its owned rows) and forms
``G = Jᵀ (M J)`` with ``matMult`` and ``transposeMatMult``, reusing the product matrices across
iterations. :class:`GramOperator` is the matrix-free ``x ↦ Jᵀ(M(Jx)) + λx`` for Krylov solves.

:class:`NaturalSolver` computes the natural direction by one of

``cholesky``
    ``G + λI`` factorised by Cholesky: ScaLAPACK on several ranks, LAPACK on one (MUMPS cannot
    factor PETSc's dense matrices, so ``-natinv_gram_mat_type aij`` converts to AIJ for it).
``cg``
    conjugate gradients on the matrix-free operator, Jacobi-preconditioned by ``diag(G)``;
    never forms ``G`` (cost per iteration O(nP) instead of O(nP²) for the product).
``cutoff``
    spectral pseudo-inverse: the eigenpairs of ``G`` with eigenvalue above ``cutoff × λ_max``
    are kept (ANaGRAM-style), plus optional damping.
``lm``
    Cholesky with a Levenberg–Marquardt damping adapted from the gain ratio the caller
    reports through :meth:`NaturalSolver.report`.

:class:`SampleSpaceSolver` solves in *sample space* instead, for a diagonal metric (residual
losses) with fewer rows than parameters: ``(G + λI)⁻¹ Jᵀ M w = J̃ᵀ (J̃ J̃ᵀ + λI)⁻¹ M^½ w`` with
``J̃ = M^½ J`` (Woodbury), an ``N × N`` factorisation instead of ``P × P`` (SPRING's form).

Every choice is also a PETSc option under the prefix ``natinv_gram_`` (``-natinv_gram_method``,
``-natinv_gram_damping``, ``-natinv_gram_cutoff``, ``-natinv_gram_mat_type``, and the KSP/PC
options of the inner solver such as ``-natinv_gram_ksp_rtol``); options override arguments.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Protocol

from petsc4py import PETSc

import numpy as np
import numpy.typing as npt
import torch

from natinv import parallel
from natinv.parallel import Comm

__all__ = [
    "Gram",
    "GramOperator",
    "LevenbergMarquardt",
    "NaturalSolver",
    "Rows",
    "SampleSpaceSolver",
]


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


class LevenbergMarquardt:
    """Adaptive damping from the gain ratio ρ = actual / predicted decrease (Nielsen's rule).

    ρ > 0 (the step decreased the loss): ``λ ← λ · max(1/3, 1 − (2ρ − 1)³)``; otherwise
    ``λ ← λ · ν`` and ``ν ← 2ν``. λ stays within ``[minimum, maximum]``.

    With a line search the accepted step always lowers the loss, so ρ alone would only ever
    shrink λ: a step the line search had to shorten (η < ½) counts as a rejected full step and
    raises λ, so that λ finds the scale of ``G`` where the full step is trusted.
    """

    def __init__(self, initial: float = 1e-3, minimum: float = 1e-14, maximum: float = 1e8) -> None:
        if not (0 < minimum <= initial <= maximum):
            raise ValueError(
                f"Invalid Levenberg–Marquardt damping: need 0 < minimum ({minimum}) <= "
                f"initial ({initial}) <= maximum ({maximum})"
            )
        self.value = float(initial)
        self.minimum, self.maximum = float(minimum), float(maximum)
        self.nu = 2.0

    def update(self, actual: float, predicted: float, step: float = 1.0) -> None:
        rho = actual / predicted if predicted > 0 else -1.0
        if rho > 0 and step >= 0.5:
            self.value *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            self.nu = 2.0
        else:
            self.value *= self.nu
            self.nu *= 2.0
        self.value = min(max(self.value, self.minimum), self.maximum)

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "nu": self.nu}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.nu = float(state["value"]), float(state["nu"])


class NaturalSolver:
    """Solves ``(G + λI) d = g`` for the natural direction ``d``.

    Args:
        gram: the Gram object (its ``J`` must be current; ``G`` is assembled by :meth:`solve`
            when the method needs it).
        method: ``cholesky``, ``cg``, ``cutoff`` or ``lm`` (see the module docstring).
        damping: λ ≥ 0 (the initial λ for ``lm``).
        cutoff: relative eigenvalue threshold of the ``cutoff`` method, in (0, 1).
        mat_type: the matrix type ``G`` is converted to before Cholesky: ``auto`` (LAPACK dense on
            one rank, ScaLAPACK otherwise), ``scalapack``, ``dense`` or ``aij`` (for MUMPS).
        options_prefix: PETSc options prefix; options under it override the arguments.

    The solver owns a KSP (``options_prefix``) and destroys it in :meth:`destroy`.
    """

    METHODS: ClassVar[tuple[str, ...]] = ("cholesky", "cg", "cutoff", "lm")
    MAT_TYPES: ClassVar[tuple[str, ...]] = ("auto", "scalapack", "dense", "aij")

    def __init__(
        self,
        gram: Gram,
        method: str = "cholesky",
        damping: float = 0.0,
        cutoff: float = 1e-10,
        mat_type: str = "auto",
        options_prefix: str = "natinv_gram_",
    ) -> None:
        self.gram = gram
        self.comm = gram.comm
        self.prefix = options_prefix
        opts = PETSc.Options(options_prefix)
        method = opts.getString("method", method)
        damping = opts.getReal("damping", damping)
        cutoff = opts.getReal("cutoff", cutoff)
        mat_type = opts.getString("mat_type", mat_type)
        if method not in self.METHODS:
            raise ValueError(
                f"Unknown natural-gradient solver {method!r}; choose one of {self.METHODS}"
            )
        if not (damping >= 0 and np.isfinite(damping)):
            raise ValueError(f"Invalid damping {damping}: must be a finite number >= 0")
        if method == "lm" and damping <= 0:
            damping = 1e-3
        if not (0 < cutoff < 1):
            raise ValueError(f"Invalid spectral cutoff {cutoff}: must lie in (0, 1)")
        if mat_type not in self.MAT_TYPES:
            raise ValueError(
                f"Unknown Gram matrix type {mat_type!r}; choose one of {self.MAT_TYPES}"
            )
        if mat_type == "dense" and self.comm.size > 1:
            raise ValueError(
                "Gram matrix type 'dense' (LAPACK Cholesky) runs on one rank only; on "
                f"{self.comm.size} ranks use 'scalapack' or 'aij' (MUMPS)"
            )
        self.method = method
        self.cutoff = float(cutoff)
        self.mat_type = mat_type
        self.lm = LevenbergMarquardt(initial=damping) if method == "lm" else None
        self._damping = float(damping)
        self.ksp: PETSc.KSP | None = None
        self._operator: GramOperator | None = None
        self._shell: PETSc.Mat | None = None
        self._factored: PETSc.Mat | None = None
        self._factored_key: tuple[int, int, float] | None = None
        self._eigen: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
        self._eigen_key: tuple[int, int, float] | None = None
        self.factorizations = 0  # Cholesky factorisations or eigendecompositions so far
        self.info: dict[str, Any] = {}
        self.timings = {"solve": 0.0}  # seconds in solve() (factorisation, triangular solves)

    @property
    def damping(self) -> float:
        """The λ of the next solve."""
        return self.lm.value if self.lm is not None else self._damping

    @property
    def needs_gram(self) -> bool:
        """Whether :meth:`solve` uses the assembled ``G`` (all methods except ``cg``)."""
        return self.method != "cg"

    def report(self, actual: float, predicted: float, step: float = 1.0) -> None:
        """Feed back a step's actual and predicted loss decrease and the step size taken along
        the direction (adapts λ for ``lm``)."""
        if self.lm is not None:
            self.lm.update(actual, predicted, step)

    def solve(self, gradient: npt.ArrayLike, *, assemble: bool = True) -> npt.NDArray[np.float64]:
        """The natural direction for a replicated gradient ``g``; replicated result. Collective.

        Args:
            gradient: ``g = ∇θ L`` (identical on all ranks).
            assemble: form ``G`` from the current ``J`` first (``False`` if the caller already
                called :meth:`Gram.assemble` for this ``J``).

        Raises:
            CollectiveError: the factorisation or the Krylov solve failed, or the direction is
                not finite (on every rank).
        """
        g = np.asarray(gradient, dtype=np.float64).reshape(-1)
        p = self.gram.num_parameters
        parallel.check_all(
            self.comm, g.shape == (p,), f"gradient has length {g.size}, expected {p}"
        )
        if self.gram.version == 0:  # J never computed: take it at the rows' current θ
            self.gram.update_jacobian()
        if self.method == "cg":
            start = time.perf_counter()
            d = self._solve_cg(g)
        else:
            if assemble:
                self.gram.assemble(jacobian=False)
            start = time.perf_counter()
            d = self._solve_cutoff(g) if self.method == "cutoff" else self._solve_cholesky(g)
        self.timings["solve"] += time.perf_counter() - start
        parallel.check_all(
            self.comm,
            bool(np.all(np.isfinite(d))),
            f"the natural direction ({self.method}) is not finite; G may be singular: add damping "
            f"(-{self.prefix}damping) or use -{self.prefix}method cutoff",
        )
        return d

    # -- methods ------------------------------------------------------------------------------

    def _ksp(self) -> PETSc.KSP:
        if self.ksp is None:
            self.ksp = PETSc.KSP().create(self.gram.J.comm)
            self.ksp.setOptionsPrefix(self.prefix)
        return self.ksp

    def _vectors(
        self, matrix: PETSc.Mat, g: npt.NDArray[np.float64]
    ) -> tuple[PETSc.Vec, PETSc.Vec]:
        x, b = matrix.createVecs()
        lo, hi = b.getOwnershipRange()
        b.array[:] = g[lo:hi]
        return x, b

    def _finish(self, ksp: PETSc.KSP, x: PETSc.Vec, b: PETSc.Vec) -> npt.NDArray[np.float64]:
        reason = ksp.getConvergedReason()
        self.info = {
            "method": self.method,
            "damping": self.damping,
            "iterations": ksp.getIterationNumber(),
            "reason": int(reason),
        }
        d = parallel.allgather_vec(x)
        x.destroy()
        b.destroy()
        # Truncated CG (iteration limit reached) still gives a descent direction: keep it.
        truncated = self.method == "cg" and reason == PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT
        self.info["truncated"] = truncated
        if reason < 0 and not truncated:
            name = {v: k for k, v in vars(PETSc.KSP.ConvergedReason).items() if isinstance(v, int)}
            parallel.check_all(
                self.comm,
                False,
                f"natural-gradient {self.method} solve failed ({name.get(reason, reason)}): "
                f"G + λI (λ = {self.damping:g}) is not positive definite or the solve did not "
                f"converge; add damping (-{self.prefix}damping) or use -{self.prefix}method cutoff",
            )
        return d

    def _key(self) -> tuple[int, int, float]:
        """What the factorisation depends on: G's assembly and λ."""
        return (self.gram.version, self.gram.assemblies, self.damping)

    def _solve_cholesky(self, g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        assert self.gram.G is not None
        if self._factored is not None and self._factored_key == self._key():
            # Same G and λ: solve with the existing factors (a second right-hand side).
            assert self.ksp is not None
            x, b = self._vectors(self._factored, g)
            self.ksp.solve(b, x)
            return self._checked_spd(g, self._finish(self.ksp, x, b))
        target = self.mat_type
        if target == "auto":
            target = "dense" if self.comm.size == 1 else "scalapack"
        if self._factored is not None:
            self._factored.destroy()
        a = self.gram.G.copy()
        if self.damping:
            a.shift(self.damping)
        if target != "dense":
            a.convert(target)
        if target == "dense":
            a.setOption(PETSc.Mat.Option.SPD, True)
        elif target == "aij":  # MUMPS LDLᵀ (not told SPD, which it would not check) + inertia
            a.setOption(PETSc.Mat.Option.SYMMETRIC, True)
        # (MatSetOption_ScaLAPACK rejects SPD; its Cholesky, pdpotrf, checks definiteness itself)
        self._factored = a
        self._factored_key = self._key()
        self.factorizations += 1
        ksp = self._ksp()
        ksp.setOperators(a)
        ksp.setType(PETSc.KSP.Type.PREONLY)
        pc = ksp.getPC()
        pc.setType(PETSc.PC.Type.CHOLESKY)
        pc.setFactorSolverType({"dense": "petsc", "scalapack": "scalapack", "aij": "mumps"}[target])
        ksp.setFromOptions()
        x, b = self._vectors(a, g)
        ksp.setErrorIfNotConverged(False)
        failure: str | None = None
        try:
            if pc.getFactorSolverType() == "mumps":
                pc.setFactorSetUpSolverType()
                factor = pc.getFactorMatrix()
                factor.setMumpsIcntl(24, 1)  # detect null pivots
                factor.setMumpsIcntl(13, 1)  # inertia of the whole matrix in parallel
            ksp.solve(b, x)
            if pc.getFactorSolverType() == "mumps":
                negative, zero, _ = pc.getFactorMatrix().getInertia()
                if negative or zero:
                    failure = f"MUMPS found {negative} negative and {zero} zero pivots"
        except PETSc.Error as exc:  # raised where the factorisation broke: tell every rank
            failure = str(exc).strip().splitlines()[0]
        if parallel.allreduce_max(self.comm, failure is not None):
            x.destroy()
            b.destroy()
            parallel.check_all(
                self.comm,
                failure is None,
                f"Cholesky factorisation of G + λI (λ = {self.damping:g}) failed ({failure}); "
                f"add damping (-{self.prefix}damping) or use -{self.prefix}method cutoff",
            )
        return self._checked_spd(g, self._finish(ksp, x, b))

    def _checked_spd(
        self, g: npt.NDArray[np.float64], d: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        # An SPD solve gives gᵀd = gᵀ(G + λI)⁻¹g > 0; a factorisation that missed an indefinite
        # matrix shows here.
        curvature = float(g @ d)
        parallel.check_all(
            self.comm,
            curvature > 0 or not np.any(g),
            f"G + λI (λ = {self.damping:g}) is not positive definite (gᵀd = {curvature:.3e} "
            f"after Cholesky); add damping (-{self.prefix}damping) or use "
            f"-{self.prefix}method cutoff",
        )
        return d

    def _solve_cg(self, g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._operator is None:
            self._operator = GramOperator(self.gram)
            self._shell = self._operator.matrix()
        assert self._shell is not None
        self._operator.damping = self.damping
        self._operator.reset()
        self._shell.assemble()
        ksp = self._ksp()
        ksp.setOperators(self._shell)
        ksp.setType(PETSc.KSP.Type.CG)
        ksp.getPC().setType(PETSc.PC.Type.JACOBI)
        ksp.setTolerances(rtol=1e-10, atol=0.0, max_it=max(100, 10 * self.gram.num_parameters))
        ksp.setFromOptions()
        x, b = self._vectors(self._shell, g)
        ksp.solve(b, x)
        return self._finish(ksp, x, b)

    def _solve_cutoff(self, g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._eigen_key != self._key():  # (only rank 0 holds the eigenpairs)
            dense = self.gram.dense()
            self._eigen = None
            if self.comm.rank == 0:  # one decomposition, broadcast results: ranks stay identical
                eigenvalues, vectors = np.linalg.eigh(0.5 * (dense + dense.T))
                top = max(float(eigenvalues[-1]), 0.0)
                keep = eigenvalues > self.cutoff * top
                self._eigen = (eigenvalues[keep], vectors[:, keep])
            self._eigen_key = self._key()
            self.factorizations += 1
        if self.comm.rank == 0:
            assert self._eigen is not None
            values, vectors = self._eigen
            d = vectors @ (vectors.T @ g / (values + self.damping))
            kept = int(values.size)
        else:
            d = np.empty_like(g)
            kept = 0
        d = parallel.bcast_array(self.comm, d)
        self.info = {
            "method": "cutoff",
            "damping": self.damping,
            "rank": self.comm.bcast(kept, root=0),
            "cutoff": self.cutoff,
        }
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"lm": self.lm.state_dict() if self.lm is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.lm is not None and state.get("lm") is not None:
            self.lm.load_state_dict(state["lm"])

    def destroy(self) -> None:
        """Free the KSP, the shell operator and the factored copy of ``G``. Collective."""
        for obj in (self.ksp, self._shell, self._factored):
            if obj is not None:
                obj.destroy()
        if self._operator is not None:
            self._operator.free()
        self.ksp = self._shell = self._factored = self._operator = None


class SampleSpaceSolver:
    """``(G + λI)⁻¹ Jᵀ M w`` in sample space, for a diagonal metric ``M`` (Woodbury).

    With ``J̃ = M^½ J`` (``N × P``), ``(J̃ᵀJ̃ + λI)⁻¹ J̃ᵀ = J̃ᵀ (J̃J̃ᵀ + λI)⁻¹``: the solve costs an
    ``N × N`` Cholesky factorisation instead of a ``P × P`` one, the right choice when there are
    fewer residual rows than parameters (SPRING, Goldshlager et al. 2024). Right-hand sides come
    as row vectors ``w`` (e.g. the residuals, since ``∇L = Jᵀ M r``), which keeps the solve exact
    for any λ > 0 (the general Woodbury formula for a parameter-space right-hand side divides
    by λ and cancels catastrophically for small λ).

    Parallel: the rows of ``J̃`` are gathered on every rank (``N × P`` doubles, at most ``P²``
    when ``N < P``); each rank forms its block of rows of ``J̃J̃ᵀ``, the blocks are gathered and
    every rank factorises the same ``N × N`` matrix.

    Args:
        gram: a Gram whose metric is diagonal with entries ``>= 0`` (a residual loss's weights).
        damping: λ > 0.
    """

    method = "sample-space"
    needs_gram = False

    def __init__(self, gram: Gram, damping: float = 1e-10) -> None:
        if not (damping > 0 and np.isfinite(damping)):
            raise ValueError(f"Invalid damping {damping}: the sample-space solver needs λ > 0")
        self.gram = gram
        self.comm = gram.comm
        diagonal = gram.metric.getDiagonal()
        weights = diagonal.array.copy()
        diagonal.destroy()
        total = parallel.allreduce_sum(self.comm, float(weights @ weights))
        off_diagonal = gram.metric.norm(PETSc.NormType.FROBENIUS) ** 2 - total
        parallel.check_all(
            self.comm,
            off_diagonal <= 1e-12 * max(total, 1e-300) and bool(np.all(weights >= 0)),
            "the sample-space solver needs a diagonal metric with entries >= 0 (a residual "
            "loss's weights); use NaturalSolver for other metrics",
        )
        self._sqrt_weights = np.sqrt(weights)
        self._damping = float(damping)
        self._key: int | None = None
        self._rows: torch.Tensor | None = None  # J̃, all rows
        self._factor: torch.Tensor | None = None  # Cholesky factor of J̃J̃ᵀ + λI
        self.factorizations = 0
        self.info: dict[str, Any] = {}

    @property
    def damping(self) -> float:
        return self._damping

    def report(self, actual: float, predicted: float, step: float = 1.0) -> None:
        """(Fixed damping: nothing to adapt.)"""

    def _factorise(self) -> None:
        if self.gram.version == 0:
            self.gram.update_jacobian()
        if self._key == self.gram.version:
            return
        local = self._sqrt_weights[:, None] * self.gram.jacobian_array()
        everything = np.vstack(self.comm.allgather(np.ascontiguousarray(local)))
        kernel = np.vstack(self.comm.allgather(local @ everything.T))
        kernel[np.diag_indices_from(kernel)] += self._damping
        factor, info = torch.linalg.cholesky_ex(torch.from_numpy(kernel))
        parallel.check_all(
            self.comm,
            int(info) == 0,
            f"sample-space Cholesky of J̃J̃ᵀ + λI (λ = {self._damping:g}) failed",
        )
        self._rows, self._factor = torch.from_numpy(everything), factor
        self._key = self.gram.version
        self.factorizations += 1

    def solve_rows(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(G + λI)⁻¹ Jᵀ M w`` for ``w`` on the owned rows (replicated result). Collective."""
        w = np.asarray(rows, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            w.shape == self._sqrt_weights.shape,
            lambda: f"row vector has {w.size} entries, expected {self._sqrt_weights.size}",
        )
        self._factorise()
        assert self._rows is not None and self._factor is not None
        scaled = np.concatenate(self.comm.allgather(self._sqrt_weights * w))
        z = torch.cholesky_solve(torch.from_numpy(scaled)[:, None], self._factor)[:, 0]
        x = (self._rows.T @ z).numpy()
        self.info = {"method": self.method, "damping": self._damping, "rows": z.numel()}
        parallel.check_all(
            self.comm, bool(np.all(np.isfinite(x))), "the sample-space direction is not finite"
        )
        return x

    def solve(self, gradient: npt.ArrayLike, *, assemble: bool = True) -> npt.NDArray[np.float64]:
        raise TypeError(
            "the sample-space solver takes right-hand sides as row vectors (solve_rows); use it "
            "with momentum='spring' on an objective that offers row_residual"
        )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def destroy(self) -> None:
        self._rows = self._factor = None
