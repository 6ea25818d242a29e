"""The classical baseline: the parameter field as a finite-element function, optimised by TAO.

One unknown per dof of ``W`` (distributed as PETSc distributes ``W``), the objective and gradient
of an :class:`~natinv.objectives.inverse.InverseProblem` (forward and adjoint solves), and, for
the Newton-type methods, the Gauss–Newton Hessian as a matrix-free operator (one tangent and one
adjoint solve per product), preconditioned by the regularisation plus a small mass term — the
way reduced-space inversions are done with hIPPYlib or dolfin-adjoint.

Methods: ``lmvm`` (L-BFGS with TAO's default scaled-identity initial Hessian: the preconditioner
matrix, of the regularisation's small scale, would make the first step enormous), ``nls``
(Newton–CG with line search), ``ntr`` (Newton trust region). Every TAO/KSP option applies
under ``-natinv_tao_``. A field the model refuses (a coefficient ≤ 0) is an infinite objective;
TAO's default (Moré–Thuente) line search fails on one, so a run whose line search failed at
such a point goes on from its last iterate with backtracking (``armijo``), which steps back
from it (measured on the gPINN reaction case: Moré–Thuente fails at the first step for every
α, Armijo converges), unless a line search was chosen on the command line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from petsc4py import PETSc

import numpy as np
import numpy.typing as npt

from natinv import metrics, options, parallel
from natinv.objectives.inverse import InverseProblem

__all__ = ["FieldBaseline"]

METHODS = ("lmvm", "nls", "ntr")


class _HessianContext:
    """The Gauss–Newton Hessian as a PETSc shell matrix, plus the diagonal shift TAO's NLS adds
    when CG meets negative curvature or fails (``MatShift``), cleared at each new Hessian."""

    def __init__(self, problem: InverseProblem) -> None:
        self.problem = problem
        self.products = 0
        self.shift_value = 0.0

    def mult(self, mat: PETSc.Mat, x: PETSc.Vec, y: PETSc.Vec) -> None:
        self.products += 1
        self.problem.gauss_newton_product(x, y)
        if self.shift_value:
            y.axpy(self.shift_value, x)

    def shift(self, mat: PETSc.Mat, value: float) -> None:
        self.shift_value += float(value)


class FieldBaseline:
    """TAO on the coefficients of ``m`` for an inverse problem.

    Args:
        problem: the inverse problem.
        method: ``lmvm``, ``nls`` or ``ntr``.
        mass: weight ``δ`` of the mass matrix in the preconditioner ``R + δM`` (and in L-BFGS's
            initial Hessian); ``R`` is the problem's regularisation matrix (zero if none).
        options_prefix: PETSc options prefix (``-<prefix>tao_max_it``...; default: one of its
            own, :func:`natinv.options.unique_prefix`).

    Call :meth:`destroy` when done.
    """

    def __init__(
        self,
        problem: InverseProblem,
        method: str = "nls",
        *,
        mass: float = 1e-8,
        options_prefix: str | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"Unknown TAO method {method!r}; choose one of {METHODS}")
        if not (np.isfinite(mass) and mass > 0):
            raise ValueError(f"Invalid mass weight {mass}: must be > 0")
        self.problem = problem
        self.comm = problem.comm
        self.method = method
        n = problem.num_owned
        self.x = PETSc.Vec().createMPI((n, self.comm.allreduce(n)), comm=self.comm)
        self.gradient = self.x.duplicate()
        self.preconditioner = metrics.l2(problem.space)
        self.preconditioner.scale(mass)
        if problem.R is not None:
            self.preconditioner.axpy(1.0, problem.R)
        self.tao = PETSc.TAO().create(self.comm)
        self.tao.setOptionsPrefix(options_prefix or options.unique_prefix("natinv_tao"))
        self.tao.setType(method)
        self.tao.setObjectiveGradient(self._objective_gradient, self.gradient)
        self._shell: PETSc.Mat | None = None
        self._context: _HessianContext | None = None
        if method != "lmvm":
            context = self._context = _HessianContext(problem)
            self._shell = PETSc.Mat().createPython(
                ((n, self.x.getSize()), (n, self.x.getSize())), context, comm=self.comm
            )
            self._shell.setUp()
            self.tao.setHessian(self._hessian, self._shell, self.preconditioner)
            ksp = self.tao.getKSP()
            ksp.setType(PETSc.KSP.Type.CG)
            if self.comm.size == 1:
                ksp.getPC().setType(PETSc.PC.Type.CHOLESKY)
            else:  # (PETSc's own Cholesky is serial)
                ksp.getPC().setType(PETSc.PC.Type.LU)
                ksp.getPC().setFactorSolverType(parallel.direct_solver(self.comm))
        self.tao.setFromOptions()
        self._last: npt.NDArray[np.float64] | None = None
        self.inadmissible: str | None = None  # the last trial point the model refused
        self.history: list[dict[str, Any]] = []
        self._start = 0.0
        self._accepted: npt.NDArray[np.float64] | None = None  # the last iterate
        self._offset = 0  # iterations before a restart with another line search
        self.line_search_fallback = False

    def _objective_gradient(self, tao: PETSc.TAO, x: PETSc.Vec, g: PETSc.Vec) -> float:
        try:
            value, gradient = self.problem.value_and_gradient(x.array_r)
        except parallel.SolveError as exc:  # a trial point of the line search: TAO backtracks
            self.inadmissible = str(exc)
            g.set(0.0)
            return float("inf")
        g.array[:] = gradient
        self._last = np.array(x.array_r)
        return value

    def _hessian(self, tao: PETSc.TAO, x: PETSc.Vec, H: PETSc.Mat, P: PETSc.Mat) -> None:
        if self._context is not None:
            self._context.shift_value = 0.0  # a new Hessian: no perturbation yet
        # the Gauss–Newton products need the state (and factors) at x
        if self._last is None or not np.array_equal(self._last, x.array_r):
            self.problem.value(x.array_r)
            self._last = np.array(x.array_r)

    def _monitor(self, tao: PETSc.TAO) -> None:
        its, value, gnorm, *_ = tao.getSolutionStatus()
        self._accepted = np.array(tao.getSolution().array_r)
        if self.history and self._offset and int(its) == 0:
            return  # the restart's first point is the last iterate, already recorded
        record = {
            "iteration": int(its) + self._offset,
            "loss": float(value),
            "gradient_norm": float(gnorm),
            "time": time.perf_counter() - self._start,
            "linear_iterations": self.linear_iterations,
        }
        self.history.append(record)
        if self._callback is not None and self._callback(record):
            tao.setConvergedReason(PETSc.TAO.ConvergedReason.CONVERGED_USER)

    @property
    def linear_iterations(self) -> int:
        """Gauss–Newton Hessian products so far, one per CG iteration (0 for lmvm)."""
        return 0 if self._context is None else self._context.products

    def run(
        self,
        start: npt.ArrayLike,
        iterations: int = 50,
        gatol: float = 0.0,
        grtol: float = 0.0,
        gttol: float = 1e-8,
        callback: Callable[[dict[str, Any]], bool | None] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Optimise from the owned coefficients ``start``; returns the owned solution.

        Stops after ``iterations``, or when ``‖g‖ ≤ gatol``, ``‖g‖/|f| ≤ grtol`` or
        ``‖g‖/‖g₀‖ ≤ gttol`` (TAO's tests), or when ``callback(record)`` returns True (the same
        answer on every rank). Collective."""
        values = np.asarray(start, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            values.size == self.problem.num_owned,
            f"start has {values.size} owned entries, expected {self.problem.num_owned}",
        )
        self.x.array[:] = values
        self._callback = callback
        self.tao.setMaximumIterations(int(iterations))
        self.tao.setTolerances(gatol=gatol, grtol=grtol, gttol=gttol)
        self.tao.setMonitor(self._monitor)
        self._start = time.perf_counter()
        self._offset = 0
        self.history = []  # this run's records
        self.tao.solve(self.x)
        prefix = self.tao.getOptionsPrefix() or ""
        chosen = PETSc.Options().hasName(f"{prefix}tao_ls_type")
        done = int(self.history[-1]["iteration"]) if self.history else 0  # accepted iterations
        if (
            self.reason == "DIVERGED_LS_FAILURE"
            and self.inadmissible is not None
            and not chosen
            and done < iterations
            and self._accepted is not None
        ):
            self.line_search_fallback = True
            self.x.array[:] = self._accepted
            self._offset = done
            self.tao.getLineSearch().setType("armijo")
            self.tao.setMaximumIterations(int(iterations) - done)
            self.tao.solve(self.x)
        self.tao.cancelMonitor()
        return np.array(self.x.array_r)

    @property
    def iterations(self) -> int:
        """Accepted iterations of the last run (both parts of a run restarted with Armijo)."""
        return int(self.history[-1]["iteration"]) if self.history else 0

    @property
    def reason(self) -> str:
        value = self.tao.getConvergedReason()
        names = {v: k for k, v in vars(PETSc.TAO.ConvergedReason).items() if isinstance(v, int)}
        return names.get(value, str(value))

    def destroy(self) -> None:
        for obj in (self.tao, self._shell, self.preconditioner, self.x, self.gradient):
            if obj is not None:
                obj.destroy()
