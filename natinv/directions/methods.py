"""Methods that solve ``(G + λI) d = g`` for a given λ, each owning its PETSc objects:
``Cholesky`` (with its back-end), ``ConjugateGradient`` (matrix-free ``G``, formed ``J``),
``SpectralCutoff``, and ``GaussNewtonCG`` (``G`` given only by products).

This module builds on :mod:`natinv.gram`; it must not import objectives or optimizers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from petsc4py import PETSc

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.gram import Gram, GramOperator

Vector = npt.NDArray[np.float64]

__all__ = ["Cholesky", "ConjugateGradient", "GaussNewtonCG", "Method", "SpectralCutoff"]


class Method(Protocol):
    """Solves ``(G + λI) d = g`` for a replicated ``g``; owns its PETSc objects."""

    name: str
    needs_gram: bool  # whether it reads the assembled G (else only J)
    factorizations: int
    info: dict[str, Any]

    def bind(self, gram: Gram, prefix: str) -> None:
        """Attach to the Gram and the options prefix of the solver that uses it."""
        ...

    def solve(self, g: Vector, damping: float) -> Vector: ...

    def destroy(self) -> None: ...


def _hint(prefix: str) -> str:
    return f"add damping (-{prefix}damping) or use -{prefix}method cutoff"


class _KrylovBase:
    """A KSP under the solver's prefix, right-hand sides in G's layout, and the failure check."""

    name = ""

    def __init__(self) -> None:
        self.ksp: PETSc.KSP | None = None
        self.factorizations = 0
        self.info: dict[str, Any] = {}

    def bind(self, gram: Gram, prefix: str) -> None:
        self.gram, self.comm, self.prefix = gram, gram.comm, prefix

    def _ksp(self) -> PETSc.KSP:
        if self.ksp is None:
            self.ksp = PETSc.KSP().create(self.gram.J.comm)
            self.ksp.setOptionsPrefix(self.prefix)
        return self.ksp

    @staticmethod
    def _vectors(matrix: PETSc.Mat, g: Vector) -> tuple[PETSc.Vec, PETSc.Vec]:
        x, b = matrix.createVecs()
        lo, hi = b.getOwnershipRange()
        b.array[:] = g[lo:hi]
        return x, b

    def _finish(
        self, ksp: PETSc.KSP, x: PETSc.Vec, b: PETSc.Vec, damping: float, truncation_ok: bool
    ) -> Vector:
        reason = ksp.getConvergedReason()
        self.info = {
            "method": self.name,
            "damping": damping,
            "iterations": ksp.getIterationNumber(),
            "reason": int(reason),
        }
        d = parallel.allgather_vec(x)
        x.destroy()
        b.destroy()
        # Truncated CG (iteration limit reached) still gives a descent direction: keep it.
        truncated = truncation_ok and reason == PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT
        self.info["truncated"] = truncated
        if reason < 0 and not truncated:
            name = {v: k for k, v in vars(PETSc.KSP.ConvergedReason).items() if isinstance(v, int)}
            parallel.check_all(
                self.comm,
                False,
                f"natural-gradient {self.name} solve failed ({name.get(reason, reason)}): "
                f"G + λI (λ = {damping:g}) is not positive definite or the solve did not "
                f"converge; {_hint(self.prefix)}",
            )
        return d

    def destroy(self) -> None:
        if self.ksp is not None:
            self.ksp.destroy()
        self.ksp = None


class Cholesky(_KrylovBase):
    """Cholesky of ``G + λI`` with a back-end (see :data:`BACKENDS`), factors reused while ``G``
    and λ are unchanged."""

    name = "cholesky"
    needs_gram = True
    BACKENDS: ClassVar[tuple[str, ...]] = ("auto", "scalapack", "dense", "aij")

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        if backend not in self.BACKENDS:
            raise ValueError(f"Unknown Gram matrix type {backend!r}; choose one of {self.BACKENDS}")
        self.backend = backend
        self._factored: PETSc.Mat | None = None
        self._key: tuple[int, int, float] | None = None

    def bind(self, gram: Gram, prefix: str) -> None:
        super().bind(gram, prefix)
        if self.backend == "dense" and self.comm.size > 1:
            raise ValueError(
                "Gram matrix type 'dense' (LAPACK Cholesky) runs on one rank only; on "
                f"{self.comm.size} ranks use 'scalapack' or 'aij' (MUMPS)"
            )

    def solve(self, g: Vector, damping: float) -> Vector:
        assert self.gram.G is not None
        key = (self.gram.version, self.gram.assemblies, damping)
        if self._factored is not None and self._key == key:
            # Same G and λ: solve with the existing factors (a second right-hand side).
            assert self.ksp is not None
            x, b = self._vectors(self._factored, g)
            self.ksp.solve(b, x)
            return self._checked_spd(g, self._finish(self.ksp, x, b, damping, False), damping)
        target = self.backend
        if target == "auto":
            target = "dense" if self.comm.size == 1 else "scalapack"
        if self._factored is not None:
            self._factored.destroy()
        a = self.gram.G.copy()
        if damping:
            a.shift(damping)
        if target != "dense":
            a.convert(target)
        if target == "dense":
            a.setOption(PETSc.Mat.Option.SPD, True)
        elif target == "aij":  # MUMPS LDLᵀ (not told SPD, which it would not check) + inertia
            a.setOption(PETSc.Mat.Option.SYMMETRIC, True)
        # (MatSetOption_ScaLAPACK rejects SPD; its Cholesky, pdpotrf, checks definiteness itself)
        self._factored, self._key = a, key
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
                f"Cholesky factorisation of G + λI (λ = {damping:g}) failed ({failure}); "
                f"{_hint(self.prefix)}",
            )
        return self._checked_spd(g, self._finish(ksp, x, b, damping, False), damping)

    def _checked_spd(self, g: Vector, d: Vector, damping: float) -> Vector:
        # An SPD solve gives gᵀd = gᵀ(G + λI)⁻¹g > 0; a factorisation that missed an indefinite
        # matrix shows here.
        curvature = float(g @ d)
        parallel.check_all(
            self.comm,
            curvature > 0 or not np.any(g),
            f"G + λI (λ = {damping:g}) is not positive definite (gᵀd = {curvature:.3e} "
            f"after Cholesky); {_hint(self.prefix)}",
        )
        return d

    def destroy(self) -> None:
        super().destroy()
        if self._factored is not None:
            self._factored.destroy()
        self._factored = None


class ConjugateGradient(_KrylovBase):
    """CG on ``x ↦ Jᵀ(M(Jx)) + λx``, Jacobi-preconditioned; a truncated solve (iteration limit)
    is kept, being a descent direction still."""

    name = "cg"
    needs_gram = False

    def __init__(self, rtol: float = 1e-10) -> None:
        super().__init__()
        self.rtol = rtol
        self._operator: GramOperator | None = None
        self._shell: PETSc.Mat | None = None

    def solve(self, g: Vector, damping: float) -> Vector:
        if self._operator is None:
            self._operator = GramOperator(self.gram)
            self._shell = self._operator.matrix()
        assert self._shell is not None
        self._operator.damping = damping
        self._operator.reset()
        self._shell.assemble()
        ksp = self._ksp()
        ksp.setOperators(self._shell)
        ksp.setType(PETSc.KSP.Type.CG)
        ksp.getPC().setType(PETSc.PC.Type.JACOBI)
        ksp.setTolerances(rtol=self.rtol, atol=0.0, max_it=max(100, 10 * self.gram.num_parameters))
        ksp.setFromOptions()
        x, b = self._vectors(self._shell, g)
        ksp.solve(b, x)
        return self._finish(ksp, x, b, damping, True)

    def destroy(self) -> None:
        super().destroy()
        if self._shell is not None:
            self._shell.destroy()
        if self._operator is not None:
            self._operator.free()
        self._shell = self._operator = None


class SpectralCutoff:
    """``Σ_{λᵢ > c λ_max} vᵢ vᵢᵀ g / (λᵢ + λ)``: one eigendecomposition of ``G`` per assembly,
    on rank 0, broadcast (every rank holds the same direction)."""

    name = "cutoff"
    needs_gram = True

    def __init__(self, cutoff: float = 1e-10) -> None:
        if not (0 < cutoff < 1):
            raise ValueError(f"Invalid spectral cutoff {cutoff}: must lie in (0, 1)")
        self.cutoff = float(cutoff)
        self.factorizations = 0
        self.info: dict[str, Any] = {}
        self._eigen: tuple[Vector, Vector] | None = None
        self._key: tuple[int, int] | None = None

    def bind(self, gram: Gram, prefix: str) -> None:
        self.gram, self.comm, self.prefix = gram, gram.comm, prefix

    def solve(self, g: Vector, damping: float) -> Vector:
        key = (self.gram.version, self.gram.assemblies)
        if self._key != key:  # (only rank 0 holds the eigenpairs)
            dense = self.gram.dense()
            self._eigen = None
            if self.comm.rank == 0:  # one decomposition, broadcast results: ranks stay identical
                eigenvalues, vectors = np.linalg.eigh(0.5 * (dense + dense.T))
                top = max(float(eigenvalues[-1]), 0.0)
                keep = eigenvalues > self.cutoff * top
                self._eigen = (eigenvalues[keep], vectors[:, keep])
            self._key = key
            self.factorizations += 1
        if self.comm.rank == 0:
            assert self._eigen is not None
            values, vectors = self._eigen
            d = vectors @ (vectors.T @ g / (values + damping))
            kept = int(values.size)
        else:
            d = np.empty_like(g)
            kept = 0
        d = parallel.bcast_array(self.comm, d)
        self.info = {
            "method": self.name,
            "damping": damping,
            "rank": self.comm.bcast(kept, root=0),
            "cutoff": self.cutoff,
        }
        return d

    def destroy(self) -> None:
        self._eigen = None


class GaussNewtonCG:
    """Conjugate gradients on ``(G + λI) d = g`` with ``G`` given only by products
    (:class:`~natinv.objectives.inverse.GaussNewtonOperator`: two PDE solves each), in
    parameter space with replicated vectors.

    The tolerance follows Eisenstat & Walker (1996, choice 2): ``η_k = γ (‖g_k‖/‖g_{k−1}‖)^α``
    (γ = 0.9, α = 2), safeguarded by ``γ η_{k−1}^α`` when that is larger than 0.1 and kept in
    ``[rtol, η_max]``: loose far from the solution, where an exact Gauss–Newton step is wasted,
    tight near it. ``forcing="fixed"`` uses ``rtol`` throughout. The solve starts from the last
    direction when that lowers the initial residual (warm start; the previous direction is the
    re-projected velocity's best available stand-in when no momentum is used). Every CG iterate
    from zero is a descent direction, so a truncated solve (``max_it``) is kept.
    """

    name = "gn-cg"
    needs_gram = False

    def __init__(
        self,
        rtol: float = 1e-6,
        max_it: int = 200,
        forcing: str = "eisenstat-walker",
        eta_max: float = 0.5,
        warm_start: bool = True,
    ) -> None:
        if forcing not in ("eisenstat-walker", "fixed"):
            raise ValueError(f"Unknown forcing {forcing!r}; choose eisenstat-walker or fixed")
        if not (0 < rtol < 1 and 0 < eta_max < 1 and max_it >= 1):
            raise ValueError(
                f"Invalid CG settings: rtol {rtol} and eta_max {eta_max} must lie in (0, 1), "
                f"max_it {max_it} >= 1"
            )
        self.rtol, self.max_it, self.forcing, self.eta_max = rtol, max_it, forcing, eta_max
        self.warm_start = warm_start
        self.factorizations = 0
        self.info: dict[str, Any] = {}
        self._previous: tuple[float, float] | None = None  # (‖g‖, η) of the last solve
        self._last: Vector | None = None

    def bind(self, gram: Any, prefix: str) -> None:
        if not hasattr(gram, "mult"):
            raise TypeError("GaussNewtonCG needs an operator with mult(x) (GaussNewtonOperator)")
        self.gram, self.comm, self.prefix = gram, gram.comm, prefix

    def _tolerance(self, norm: float) -> float:
        if self.forcing == "fixed" or self._previous is None:
            return self.rtol if self.forcing == "fixed" else self.eta_max
        last_norm, last_eta = self._previous
        eta = 0.9 * (norm / last_norm) ** 2 if last_norm > 0 else self.eta_max
        safeguard = 0.9 * last_eta**2
        if safeguard > 0.1:
            eta = max(eta, safeguard)
        return float(min(max(eta, self.rtol), self.eta_max))

    def solve(self, g: Vector, damping: float) -> Vector:
        norm = float(np.linalg.norm(g))
        eta = self._tolerance(norm)

        def operator(x: Vector) -> Vector:
            return self.gram.mult(x) + damping * x

        x = np.zeros_like(g)
        r = g.copy()
        if self.warm_start and self._last is not None and self._last.shape == g.shape:
            trial = g - operator(self._last)
            if float(np.linalg.norm(trial)) < norm and float(g @ self._last) > 0:
                x, r = self._last.copy(), trial
        p = r.copy()
        rr = float(r @ r)
        iterations, reason = 0, "converged"
        while np.sqrt(rr) > eta * norm:
            if iterations == self.max_it:
                reason = "truncated"
                break
            q = operator(p)
            curvature = float(p @ q)
            if not curvature > 0:  # G + λI not positive definite along p: keep what we have
                reason = "negative curvature"
                break
            step = rr / curvature
            x += step * p
            r -= step * q
            new = float(r @ r)
            p = r + (new / rr) * p
            rr = new
            iterations += 1
        if not float(g @ x) > 0:  # (a warm start gone wrong, or no iteration): the gradient
            x = g / max(float(g @ operator(g)) / max(norm**2, 1e-300), 1e-300)
        self._previous = (norm, eta)
        self._last = x.copy()
        self.info = {
            "method": self.name,
            "damping": damping,
            "iterations": iterations,
            "rtol": eta,
            "reason": reason,
            "truncated": reason != "converged",
        }
        return x

    def destroy(self) -> None:
        self._last = None
