"""The natural direction ``(G + λI) d = g``: a solve method, a damping policy, and their pairing.

Three parts compose (after optax's chain of transforms):

*Methods* solve ``(G + λI) d = g`` for a given λ and own their PETSc objects:

:class:`Cholesky`
    ``G + λI`` factorised by Cholesky with a back-end: LAPACK on one rank, ScaLAPACK on several
    (``auto``), or MUMPS on the matrix converted to AIJ (``aij``). Factors are reused while
    ``G`` and λ are unchanged (a second right-hand side costs two triangular solves).
:class:`ConjugateGradient`
    conjugate gradients on the matrix-free :class:`~natinv.gram.GramOperator`,
    Jacobi-preconditioned by ``diag(G)``; never forms ``G``.
:class:`SpectralCutoff`
    the pseudo-inverse on the eigenpairs of ``G`` above ``cutoff × λ_max`` (ANaGRAM-style).

*Damping policies* say what λ is: :class:`FixedDamping`, or :class:`LevenbergMarquardt`,
adapted from the gain ratio of each step.

:class:`NaturalSolver` pairs one of each, checks shapes and finiteness, and keeps the timings;
``NaturalSolver(gram, "lm", damping=1e-3)`` is Cholesky with Levenberg–Marquardt damping. Its
string settings are read through :func:`settings_from_options`, the one place where PETSc
options (``-<prefix>method``, ``-<prefix>damping``, ``-<prefix>cutoff``, ``-<prefix>mat_type``)
override Python arguments; the KSP options of the inner solve (``-<prefix>ksp_rtol``) are read
by the method's KSP under the same prefix. Without an ``options_prefix`` a solver gets a prefix
of its own (:func:`natinv.options.unique_prefix`).

:class:`SampleSpaceSolver` solves in sample space instead, for a diagonal metric with fewer rows
than parameters (SPRING's form, Woodbury).

This module builds on :mod:`natinv.gram`; it must not import objectives or optimizers.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Protocol

from petsc4py import PETSc

import numpy as np
import numpy.typing as npt
import torch

from natinv import options, parallel
from natinv.gram import Gram, GramOperator

__all__ = [
    "Cholesky",
    "ConjugateGradient",
    "Damping",
    "FixedDamping",
    "GaussNewtonCG",
    "LevenbergMarquardt",
    "Method",
    "NaturalSolver",
    "SampleSpaceSolver",
    "SpectralCutoff",
    "settings_from_options",
]

Vector = npt.NDArray[np.float64]


# -- damping policies -----------------------------------------------------------------------------


class Damping(Protocol):
    """What λ is, and how it reacts to a step's outcome."""

    value: float

    def update(self, actual: float, predicted: float, step: float = 1.0) -> None: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedDamping:
    """A constant λ ≥ 0."""

    def __init__(self, value: float = 0.0) -> None:
        if not (value >= 0 and np.isfinite(value)):
            raise ValueError(f"Invalid damping {value}: must be a finite number >= 0")
        self.value = float(value)

    def update(self, actual: float, predicted: float, step: float = 1.0) -> None:
        """(Nothing to adapt.)"""

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass


class LevenbergMarquardt:
    """Adaptive damping from the gain ratio ρ = actual / predicted decrease (Nielsen's rule).

    ρ > 0 (the step decreased the loss): ``λ ← λ · max(1/3, 1 − (2ρ − 1)³)``; otherwise
    ``λ ← λ · ν`` and ``ν ← 2ν``. λ stays within ``[minimum, maximum]``.

    With a line search the accepted step always lowers the loss, so ρ alone would only ever
    shrink λ: a step the line search had to shorten (η < ½) counts as a rejected full step and
    raises λ, so that λ finds the scale of ``G`` where the full step is trusted.

    ``relative=True`` (what ``NaturalSolver(gram, "lm")`` uses): λ, its minimum and maximum are
    multiples of ``max diag(G)`` at the first solve — the classical start ``λ₀ = τ max diag(G)``
    (Madsen, Nielsen & Tingleff, *Methods for non-linear least squares problems*, 2004, τ = 1e-3
    when the start is far from the solution). An absolute λ₀ has no scale: on a noise-whitened
    Gauss–Newton Gram (entries ~ 1/σ²) λ₀ = 1e-3 is nearly no damping, and the first directions
    are so long that the line search backtracks a dozen times each (measured on the shipped
    ``diffusion_hole`` case: steps 6e-5, 1e-4, 1e-3 in the first three iterations, 1 s of 1.2).
    """

    def __init__(
        self,
        initial: float = 1e-3,
        minimum: float = 1e-14,
        maximum: float = 1e8,
        *,
        relative: bool = False,
    ) -> None:
        if not (0 < minimum <= initial <= maximum):
            raise ValueError(
                f"Invalid Levenberg–Marquardt damping: need 0 < minimum ({minimum}) <= "
                f"initial ({initial}) <= maximum ({maximum})"
            )
        self.value = float(initial)
        self.minimum, self.maximum = float(minimum), float(maximum)
        self.nu = 2.0
        self.relative = relative
        self.calibrated = not relative

    def calibrate(self, scale: float) -> None:
        """Make λ and its bounds multiples of ``scale`` (``max diag(G)``), once."""
        if not self.calibrated and scale > 0 and np.isfinite(scale):
            self.value *= scale
            self.minimum *= scale
            self.maximum *= scale
        self.calibrated = True

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
        return {
            "value": self.value,
            "nu": self.nu,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "calibrated": float(self.calibrated),
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.nu = float(state["value"]), float(state["nu"])
        self.minimum, self.maximum = float(state["minimum"]), float(state["maximum"])
        self.calibrated = bool(state["calibrated"])


# -- methods --------------------------------------------------------------------------------------


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


# -- sample space ---------------------------------------------------------------------------------


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

    def __init__(self, gram: Gram, damping: float | Damping = 1e-10) -> None:
        policy = FixedDamping(damping) if isinstance(damping, int | float) else damping
        if not (policy.value > 0 and np.isfinite(policy.value)):
            raise ValueError(f"Invalid damping {policy.value}: the sample-space solver needs λ > 0")
        self.damping_policy = policy
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
        self._key: tuple[int, float] | None = None
        self._version: int | None = None  # of the kept rows and kernel
        self._rows: torch.Tensor | None = None  # J̃, all rows
        self._kernel: npt.NDArray[np.float64] | None = None  # J̃J̃ᵀ
        self._factor: torch.Tensor | None = None  # Cholesky factor of J̃J̃ᵀ + λI
        self.factorizations = 0
        self.info: dict[str, Any] = {}

    @property
    def damping(self) -> float:
        return self.damping_policy.value

    def report(self, actual: float, predicted: float, step: float = 1.0) -> None:
        """Feed back a step's outcome to the damping policy (Levenberg–Marquardt adapts λ)."""
        self.damping_policy.update(actual, predicted, step)

    def _factorise(self) -> None:
        if self.gram.version == 0:
            self.gram.update_jacobian()
        if self._version != self.gram.version:
            local = self._sqrt_weights[:, None] * self.gram.jacobian_array()
            everything = np.vstack(self.comm.allgather(np.ascontiguousarray(local)))
            self._kernel = np.vstack(self.comm.allgather(local @ everything.T))
            self._rows, self._version = torch.from_numpy(everything), self.gram.version
            if not getattr(self.damping_policy, "calibrated", True):  # λ relative to max diag
                scale = float(np.einsum("ij,ij->j", everything, everything).max())
                self.damping_policy.calibrate(scale)  # type: ignore[attr-defined]
        if self._key == (self.gram.version, self.damping):
            return
        assert self._kernel is not None
        kernel = self._kernel.copy()
        kernel[np.diag_indices_from(kernel)] += self.damping
        factor, info = torch.linalg.cholesky_ex(torch.from_numpy(kernel))
        parallel.check_all(
            self.comm,
            int(info) == 0,
            f"sample-space Cholesky of J̃J̃ᵀ + λI (λ = {self.damping:g}) failed",
        )
        self._factor = factor
        self._key = (self.gram.version, self.damping)
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
        self.info = {"method": self.method, "damping": self.damping, "rows": z.numel()}
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
        return {"damping": self.damping_policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.damping_policy.load_state_dict(state["damping"])

    def destroy(self) -> None:
        self._rows = self._factor = self._kernel = None


# -- the pairing ----------------------------------------------------------------------------------

METHODS = ("cholesky", "cg", "cutoff", "lm")


def settings_from_options(
    prefix: str, method: str, damping: float, cutoff: float, mat_type: str
) -> tuple[Method, Damping]:
    """A method and a damping policy from string settings, PETSc options under ``prefix``
    overriding the arguments; every value checked and named when bad."""
    chosen = options.read(
        prefix, {"method": method, "damping": damping, "cutoff": cutoff, "mat_type": mat_type}
    )
    method, damping = chosen["method"], chosen["damping"]
    if method not in METHODS:
        raise ValueError(f"Unknown natural-gradient solver {method!r}; choose one of {METHODS}")
    if not (damping >= 0 and np.isfinite(damping)):
        raise ValueError(f"Invalid damping {damping}: must be a finite number >= 0")
    cut, cholesky = SpectralCutoff(chosen["cutoff"]), Cholesky(chosen["mat_type"])  # checked
    solve: Method = {"cutoff": cut, "cg": ConjugateGradient()}.get(method, cholesky)
    if method == "lm":
        return solve, LevenbergMarquardt(initial=damping if damping > 0 else 1e-3, relative=True)
    return solve, FixedDamping(damping)


class NaturalSolver:
    """Solves ``(G + λI) d = g`` for the natural direction ``d``: a method and a damping policy.

    Args:
        gram: the Gram object (its ``J`` must be current; ``G`` is assembled by :meth:`solve`
            when the method needs it).
        method: ``cholesky``, ``cg``, ``cutoff``, ``lm`` (Cholesky with Levenberg–Marquardt
            damping), or a :class:`Method` object.
        damping: λ ≥ 0 (the initial λ for ``lm``), or a :class:`Damping` policy.
        cutoff: relative eigenvalue threshold of the ``cutoff`` method, in (0, 1).
        mat_type: the back-end of ``cholesky``/``lm``: ``auto`` (LAPACK dense on one rank,
            ScaLAPACK otherwise), ``scalapack``, ``dense`` or ``aij`` (MUMPS).
        options_prefix: PETSc options prefix; options under it override the string arguments
            (default: a prefix of this solver's own).

    The solver owns its method's PETSc objects and destroys them in :meth:`destroy`.
    """

    METHODS: ClassVar[tuple[str, ...]] = METHODS
    MAT_TYPES: ClassVar[tuple[str, ...]] = Cholesky.BACKENDS

    def __init__(
        self,
        gram: Gram,
        method: str | Method = "cholesky",
        damping: float | Damping = 0.0,
        cutoff: float = 1e-10,
        mat_type: str = "auto",
        options_prefix: str | None = None,
    ) -> None:
        self.gram = gram
        self.comm = gram.comm
        self.prefix = options_prefix or options.unique_prefix("natinv_gram")
        if isinstance(method, str):
            if not isinstance(damping, int | float):
                raise TypeError("a damping policy goes with a Method object, not a method name")
            self.method_solver, self.damping_policy = settings_from_options(
                self.prefix, method, float(damping), cutoff, mat_type
            )
            self.method = options.read(self.prefix, {"method": method})["method"]  # "lm" too
        else:
            self.method_solver = method
            self.damping_policy = (
                FixedDamping(float(damping)) if isinstance(damping, int | float) else damping
            )
            self.method = method.name
        self.method_solver.bind(gram, self.prefix)
        self.info: dict[str, Any] = {}
        self.timings = {"solve": 0.0}  # seconds in solve() (factorisation, triangular solves)

    @property
    def damping(self) -> float:
        """The λ of the next solve."""
        return self.damping_policy.value

    @property
    def cutoff(self) -> float | None:
        return getattr(self.method_solver, "cutoff", None)

    @property
    def needs_gram(self) -> bool:
        """Whether :meth:`solve` uses the assembled ``G``."""
        return self.method_solver.needs_gram

    @property
    def factorizations(self) -> int:
        """Cholesky factorisations or eigendecompositions so far."""
        return self.method_solver.factorizations

    def report(self, actual: float, predicted: float, step: float = 1.0) -> None:
        """Feed back a step's actual and predicted loss decrease and the step size taken along
        the direction (the damping policy adapts λ)."""
        self.damping_policy.update(actual, predicted, step)

    def solve(self, gradient: npt.ArrayLike, *, assemble: bool = True) -> Vector:
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
        if self.needs_gram and assemble:
            self.gram.assemble(jacobian=False)
        if not getattr(self.damping_policy, "calibrated", True):  # λ relative to G's scale
            scale = (  # max diag(G), or a Rayleigh quotient for an operator
                self.gram.scale(g) if hasattr(self.gram, "scale") else self.gram.diagonal().max()
            )
            self.damping_policy.calibrate(float(scale))  # type: ignore[attr-defined]
        start = time.perf_counter()
        d = self.method_solver.solve(g, self.damping)
        self.info = self.method_solver.info
        self.timings["solve"] += time.perf_counter() - start
        parallel.check_all(
            self.comm,
            bool(np.all(np.isfinite(d))),
            f"the natural direction ({self.method}) is not finite; G may be singular: "
            f"{_hint(self.prefix)}",
        )
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"damping": self.damping_policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.damping_policy.load_state_dict(state["damping"])

    def destroy(self) -> None:
        """Free the method's KSP, shell operator and factored copy of ``G``. Collective."""
        self.method_solver.destroy()
