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

*Damping policies* say what λ is: :class:`FixedDamping`, :class:`LevenbergMarquardt`, adapted
from the gain ratio of each step, or :class:`ShrinkingDamping`, vanishing once full steps are
taken.

:class:`NaturalSolver` pairs one of each, checks shapes and finiteness, and keeps the timings;
``NaturalSolver(gram, "lm", damping=1e-3)`` is Cholesky with Levenberg–Marquardt damping. Its
string settings are read through :func:`settings_from_options`, the one place where PETSc
options (``-<prefix>method``, ``-<prefix>damping``, ``-<prefix>cutoff``, ``-<prefix>mat_type``)
override Python arguments; the KSP options of the inner solve (``-<prefix>ksp_rtol``) are read
by the method's KSP under the same prefix. Without an ``options_prefix`` a solver gets a prefix
of its own (:func:`natinv.options.unique_prefix`).

*Row solvers* (:class:`RowSolver`), for a diagonal metric (a residual loss's weights), take the
right-hand side as rows ``w`` (``∇L = Jᵀ M w``) and never form ``G``:
:class:`LeastSquaresSolver` solves ``min ‖M^½(Jd − w)‖`` by a parallel QR and an SVD (the
conditioning of ``J``, not of ``G = JᵀMJ``: what a PINN needs for its last digits), and
:class:`SampleSpaceSolver` in sample space, for fewer rows than parameters (SPRING's form,
Woodbury).

This module builds on :mod:`natinv.gram`; it must not import objectives or optimizers.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from natinv import options, parallel
from natinv.directions.damping import (
    Damping,
    FixedDamping,
    LevenbergMarquardt,
    ShrinkingDamping,
)
from natinv.directions.least_squares import LeastSquaresSolver
from natinv.directions.methods import (
    Cholesky,
    ConjugateGradient,
    GaussNewtonCG,
    Method,
    SpectralCutoff,
    _hint,
)
from natinv.directions.rows import RowSolver
from natinv.directions.sample_space import SampleSpaceSolver
from natinv.gram import Gram

Vector = npt.NDArray[np.float64]

__all__ = [
    "Cholesky",
    "ConjugateGradient",
    "Damping",
    "FixedDamping",
    "GaussNewtonCG",
    "LeastSquaresSolver",
    "LevenbergMarquardt",
    "Method",
    "NaturalSolver",
    "RowSolver",
    "SampleSpaceSolver",
    "ShrinkingDamping",
    "SpectralCutoff",
    "settings_from_options",
]


METHODS = ("cholesky", "cg", "cutoff", "lm")


def settings_from_options(
    prefix: str, method: str, damping: float, cutoff: float, mat_type: str
) -> tuple[str, Method, Damping]:
    """The method's name, the method and the damping policy from string settings, PETSc
    options under ``prefix`` overriding the arguments; every value checked and named when
    bad."""
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
        return method, solve, LevenbergMarquardt(damping if damping > 0 else 1e-3, relative=True)
    return method, solve, FixedDamping(damping)


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
            self.method, self.method_solver, self.damping_policy = settings_from_options(
                self.prefix, method, float(damping), cutoff, mat_type
            )
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
        if not self.damping_policy.calibrated:  # λ relative to G's scale
            self.damping_policy.calibrate(self.gram.scale(g))
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
