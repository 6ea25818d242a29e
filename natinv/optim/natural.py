"""Natural gradient descent with momentum.

The natural direction is ``d = (G + λI)⁻¹ ∇L`` with ``G = Jᵀ M J`` the metric pulled back to
parameter space (natural gradient as the projection of the functional gradient onto the tangent
space ``T_k = span(J_k)``).

Momentum adds ``β m_k`` to the step ``−α d``; the rules (``none``, ``heavy-ball``, ``nesterov``,
``natural-heavy-ball``, ``natural-heavy-ball-diff``, ``natural-nesterov``, ``spring``) are the
small objects of :mod:`natinv.optim.momentum`, which say what ``m_k`` is. SPRING (Goldshlager et
al. 2024) carries the momentum in the direction instead,
``φ_k = (G_k + λI)⁻¹(∇L − β G_k φ_{k−1}) + β φ_{k−1}`` and ``θ_{k+1} = θ_k − α φ_k``; with a
row solver (:class:`~natinv.directions.RowSolver`) from the rows,
``φ_k = argmin ‖J̃φ − (ρ̃ − β J̃ φ_{k−1})‖² + λ‖φ‖² + β φ_{k−1}``.

``p_k = θ_{k+1} − θ_k = β m_k − α d`` with α from the step rule (fixed, or the ENGD log grid over
α with the momentum part held). Restart (O'Donoghue & Candès 2015): the velocity is dropped when
the step with momentum would not lower the loss (``restart="loss"``, the default) or when it points
uphill, ``⟨∇L, p⟩ > 0`` (``restart="gradient"``). The re-projection costs one more solve with the
factors of ``G_k`` and one sparse plus one dense mat-vec.

Loss-adapted metric: ``projection`` (a second solver, on another Gram) re-projects the momentum
in its own metric while the gradient part keeps the loss's metric, e.g. the ENGD (residual
Gauss–Newton) metric for ``∇L`` and the L2 metric of the solution for the velocity.

One step reads top to bottom in :meth:`NaturalGradientDescent.step`. θ, the velocity and every
decision are identical on all ranks; ``φ`` and ``v`` live on each rank's rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.directions import NaturalSolver, RowSolver
from natinv.fields import NeuralField
from natinv.gram import Gram
from natinv.optim.momentum import MOMENTA, Momentum, Spring, make_momentum
from natinv.optim.steps import StepRule, make_step_rule, run_steps

__all__ = ["MOMENTA", "NaturalGradientDescent", "Objective"]


class Objective(Protocol):
    """What an optimizer needs of an objective (all methods collective)."""

    gram: Gram
    field: NeuralField

    def value(self, theta: npt.ArrayLike | None = None) -> float: ...

    def value_and_gradient(
        self, theta: npt.ArrayLike | None = None
    ) -> tuple[float, npt.NDArray[np.float64]]: ...


class NaturalGradientDescent:
    """Natural (or Euclidean) gradient descent with optional momentum on an objective.

    Args:
        objective: the loss (see :class:`Objective`).
        solver: the natural-direction solver; default a :class:`NaturalSolver` on
            ``objective.gram`` (configurable with ``-natinv_gram_*`` PETSc options). Its Gram
            defines the metric, which may differ from the loss's own.
        step: ``"log-grid"`` (default), a fixed step size α, or a :class:`StepRule`.
        momentum: one of :data:`MOMENTA` (default ``"none"``) or a
            :class:`~natinv.optim.momentum.Momentum` rule.
        beta: the momentum factor in [0, 1).
        restart: ``"loss"`` (default), ``"gradient"`` or ``"none"``.
        direction: ``"natural"`` (default) or ``"euclidean"`` (``d = ∇L``; parameter-space
            momentum only).
        theta: the starting parameters (default: the objective field's current θ).
        momentum_backtracks: with a backtracking step rule, at most this many reductions of the
            step taken with momentum before the plain natural step is taken instead (default 3:
            a momentum step that needs η < 1/8 is not worth its trial solves).
        projection: a solver on a second Gram (same parameters) that re-projects the momentum
            of the ``natural-*`` kinds in its metric (the loss-adapted variant); default the
            direction's own solver.
    """

    RESTARTS: ClassVar[tuple[str, ...]] = ("loss", "gradient", "none")
    DIRECTIONS: ClassVar[tuple[str, ...]] = ("natural", "euclidean")

    def __init__(
        self,
        objective: Objective,
        solver: NaturalSolver | None = None,
        step: str | float | StepRule = "log-grid",
        *,
        momentum: str | Momentum = "none",
        beta: float = 0.0,
        restart: str = "loss",
        direction: str = "natural",
        theta: npt.ArrayLike | None = None,
        projection: NaturalSolver | None = None,
        momentum_backtracks: int = 3,
    ) -> None:
        rule = make_momentum(momentum)
        momentum = rule.name
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"Invalid momentum factor beta: {beta} (must lie in [0, 1))")
        if restart not in self.RESTARTS:
            raise ValueError(f"Unknown restart rule {restart!r}; choose one of {self.RESTARTS}")
        if direction not in self.DIRECTIONS:
            raise ValueError(f"Unknown direction {direction!r}; choose one of {self.DIRECTIONS}")
        if direction == "euclidean" and rule.natural:
            raise ValueError(
                f"Momentum {momentum!r} re-projects with G: it needs direction='natural'"
            )
        if isinstance(solver, RowSolver) and not hasattr(objective, "row_residual"):
            raise ValueError(
                f"The {solver.method} solver needs an objective with row_residual(θ) "
                f"(∇L = Jᵀ M ρ); {type(objective).__name__} has none"
            )
        if projection is not None:
            if not rule.natural or isinstance(rule, Spring):
                raise ValueError(
                    f"A projection metric re-projects natural momentum; momentum {momentum!r} "
                    "has none to project"
                )
            if projection.gram.num_parameters != objective.field.num_parameters:
                raise ValueError(
                    f"The projection's Gram has {projection.gram.num_parameters} parameters, "
                    f"the objective {objective.field.num_parameters}"
                )
        self.step_rule = make_step_rule(step)
        self.objective = objective
        self.solver = solver if solver is not None else NaturalSolver(objective.gram)
        self._own_solver = solver is None
        self.gram = self.solver.gram
        self.projector = projection if projection is not None else self.solver
        self.comm = self.gram.comm
        self.rule = rule
        if momentum_backtracks < 0:
            raise ValueError(f"Invalid momentum_backtracks: {momentum_backtracks} (must be >= 0)")
        self.momentum_backtracks = int(momentum_backtracks)
        self.momentum, self.beta, self.restart, self.direction = momentum, beta, restart, direction
        start = objective.field.parameters if theta is None else np.asarray(theta, dtype=float)
        parallel.ensure_finite(self.comm, start, "initial θ")
        self.theta = start.copy()
        self.iteration = 0
        self.history: list[dict[str, Any]] = []

    def step(self) -> dict[str, Any]:
        """One step; returns its record (loss, step size, restart, timings). Collective."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - clock
            clock = now

        theta, beta, rule = self.theta, self.beta, self.rule
        natural = self.direction == "natural"
        has_velocity = rule.velocity is not None and rule.name != "none" and beta > 0
        tangent_at: npt.NDArray[np.float64] | None = None  # where J was last evaluated

        def tangent(point: npt.NDArray[np.float64]) -> None:
            nonlocal tangent_at
            if natural and (tangent_at is None or tangent_at is not point):
                for solver in {id(s): s for s in (self.solver, self.projector)}.values():
                    solver.gram.update_jacobian(point)
                    if solver.needs_gram:
                        solver.gram.assemble(jacobian=False)
                tangent_at = point

        if isinstance(rule, Spring):
            tangent(theta)
            return self._spring_step(theta, lap, timings)

        def natural_step(point: npt.NDArray[np.float64]) -> tuple[float, Any, Any]:
            """Loss, gradient and direction (G⁻¹∇L, or ∇L) with the tangent space at ``point``."""
            tangent(point)
            value_at, gradient = self.objective.value_and_gradient(point)
            if not natural:
                return value_at, gradient, gradient
            if isinstance(self.solver, RowSolver):  # ∇L = Jᵀ M ρ: solve from the rows
                rows = self.objective.row_residual(point)  # type: ignore[attr-defined]
                return value_at, gradient, self.solver.solve_rows(rows)
            return value_at, gradient, self.solver.solve(gradient, assemble=False)

        # 1. The momentum term m_k of the rule (the last velocity, re-projected onto T_k for
        #    the natural kinds, with the projection solver: by default the direction's own).
        rule.begin(theta, self.projector)
        m = rule.term(theta, self.projector, tangent) if has_velocity else None
        lap("momentum")

        # 2. The natural step: from θ_k (heavy-ball), or from y = θ_k + β m_k (Nesterov: loss,
        #    gradient and tangent space all at y).
        start = theta + beta * m if rule.lookahead and m is not None else theta
        restarted = False
        try:
            value_start, gradient, d = natural_step(start)
        except parallel.SolveError:  # the model cannot be solved at the look-ahead point y
            if start is theta:
                raise
            restarted, m, start = True, None, theta  # a restart: the plain step from θ_k
            value_start, gradient, d = natural_step(theta)
        value = value_start if start is theta else self.objective.value(theta)
        lap("direction")

        # 3. Step size along −d from the base θ_k + β m_k (held), compared with L(θ_k); restart
        #    with a plain natural step when the momentum does not pay.
        if m is not None and self.restart == "gradient" and float(gradient @ (beta * m - d)) > 0:
            restarted = True
        base = theta + beta * m if m is not None and not restarted else theta
        # a momentum step that needs its trial step cut more than ``momentum_backtracks`` times
        # is not worth the trial solves: the plain natural step is taken instead (restart)
        trial = self.step_rule.limited(self.momentum_backtracks) if base is not theta else None
        eta, new_theta, new_value = (trial or self.step_rule)(
            self.objective, base, value, d, float(gradient @ d)
        )
        if m is not None and self.restart == "loss" and not (new_value < value):
            restarted = True
        if restarted:
            if start is not theta:
                value, gradient, d = natural_step(theta)
            eta, new_theta, new_value = self.step_rule(
                self.objective, theta, value, d, float(gradient @ d)
            )
        if not np.isfinite(new_value) or (eta == 0.0 and not (new_value < value)):
            eta, new_theta, new_value = 0.0, theta, value  # (no step taken)
        lap("step")

        # 4. Damping feedback and the new velocity, as parameters and as a function (J p).
        if natural:
            predicted = eta * float(gradient @ d) - 0.5 * eta**2 * self.gram.quadratic(d)
            self.solver.report(value - new_value, predicted, eta)
        p = new_theta - theta
        # J where the step was taken (θ_k, or y for Nesterov) is kept as the anchor, so that a
        # resumed run rebuilds the same φ_k = J p_k.
        rule.remember(theta, p, tangent_at if natural else None, self.projector)
        self.theta = new_theta
        self.iteration += 1
        lap("update")
        return self._record(new_value, value, eta, restarted, d, gradient, p, timings)

    def _record(
        self,
        new_value: float,
        value: float,
        eta: float,
        restarted: bool,
        d: npt.NDArray[np.float64],
        gradient: npt.NDArray[np.float64],
        velocity: npt.NDArray[np.float64],
        timings: dict[str, float],
    ) -> dict[str, Any]:
        record = {
            "iteration": self.iteration,
            "loss": new_value,
            "loss_before": value,
            "step": eta,
            "restart": restarted,
            "direction_norm": float(np.linalg.norm(d)),
            "gradient_norm": float(np.linalg.norm(gradient)),
            "velocity_norm": float(np.linalg.norm(velocity)),
            "slope": float(gradient @ velocity),  # ⟨∇L, p⟩ (∇L where the direction was taken)
            "damping": self.solver.damping if self.direction == "natural" else 0.0,
            "time": sum(timings.values()),
            **{f"time_{k}": v for k, v in timings.items()},
        }
        self.history.append(record)
        return record

    def _spring_step(
        self,
        theta: npt.NDArray[np.float64],
        lap: Callable[[str], None],
        timings: dict[str, float],
    ) -> dict[str, Any]:
        """One SPRING step (the tangent space at θ is current). Collective."""
        value, gradient = self.objective.value_and_gradient(theta)
        from_rows = isinstance(self.solver, RowSolver)
        rho = self.objective.row_residual(theta) if from_rows else None  # type: ignore[attr-defined]

        def direction(previous: npt.NDArray[np.float64] | None) -> npt.NDArray[np.float64]:
            beta = self.beta if previous is not None else 0.0
            if from_rows:
                assert isinstance(self.solver, RowSolver) and rho is not None
                rows = rho if previous is None else rho - beta * self.gram.apply(previous)
                phi = self.solver.solve_rows(rows)
            else:
                rhs = gradient
                if previous is not None:  # ∇L − β G φ_{k−1}, G applied without forming it
                    rhs = gradient - beta * self.gram.pull_back(self.gram.apply(previous))
                phi = self.solver.solve(rhs, assemble=False)
            return phi + beta * previous if previous is not None else phi

        previous = self.rule.velocity if self.beta > 0 else None
        phi = direction(previous)
        lap("direction")
        restarted = False
        slope = float(gradient @ phi)
        if previous is not None and self.restart == "gradient" and not slope > 0:
            restarted = True
        if not restarted:
            eta, new_theta, new_value = self.step_rule(self.objective, theta, value, phi, slope)
        if previous is not None and (
            restarted or (self.restart == "loss" and not (new_value < value))
        ):
            restarted = True
            phi = direction(None)
            slope = float(gradient @ phi)
            eta, new_theta, new_value = self.step_rule(self.objective, theta, value, phi, slope)
        if not np.isfinite(new_value) or (eta == 0.0 and not (new_value < value)):
            new_theta, new_value = theta, value
        lap("step")
        predicted = eta * slope - 0.5 * eta**2 * self.gram.quadratic(phi)
        self.solver.report(value - new_value, predicted, eta)
        self.rule.remember(theta, phi, theta, self.projector)
        self.theta = new_theta
        self.iteration += 1
        lap("update")
        return self._record(
            new_value, value, eta, restarted, phi, gradient, new_theta - theta, timings
        )

    def run(
        self,
        iterations: int,
        callback: Callable[[dict[str, Any]], None] | None = None,
        tolerance: float = -np.inf,
    ) -> npt.NDArray[np.float64]:
        """Take up to ``iterations`` steps (stop early when the loss ≤ ``tolerance`` or no step
        lowers the loss); returns θ and sets it on the field. Collective."""
        return run_steps(self, iterations, callback, tolerance=tolerance)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (replicated arrays only)."""
        return {
            "theta": self.theta.copy(),
            "iteration": self.iteration,
            "momentum": self.rule.state_dict(),
            "solver": self.solver.state_dict(),
            "step": self.step_rule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = np.array(state["theta"], dtype=np.float64)
        self.iteration = int(state["iteration"])
        self.rule.load_state_dict(state["momentum"])
        self.solver.load_state_dict(state["solver"])
        self.step_rule.load_state_dict(state.get("step", {}))

    def destroy(self) -> None:
        if self._own_solver:
            self.solver.destroy()
