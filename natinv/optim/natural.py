"""Natural gradient descent: ``θ ← θ − η (G + λI)⁻¹ ∇L`` with ``G = Jᵀ M J``.

One step, top to bottom: Jacobian and Gram at θ, loss and gradient, natural direction, step
size, damping feedback. θ and every decision are identical on all ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.fields import NeuralField
from natinv.gram import Gram, NaturalSolver
from natinv.optim.steps import StepRule, make_step_rule

__all__ = ["NaturalGradientDescent", "Objective"]


class Objective(Protocol):
    """What an optimizer needs of an objective (all methods collective)."""

    gram: Gram
    field: NeuralField

    def value(self, theta: npt.ArrayLike | None = None) -> float: ...

    def value_and_gradient(
        self, theta: npt.ArrayLike | None = None
    ) -> tuple[float, npt.NDArray[np.float64]]: ...


class NaturalGradientDescent:
    """Natural gradient descent on an objective whose ``gram`` gives the metric.

    Args:
        objective: the loss (see :class:`Objective`).
        solver: the natural-direction solver; default a :class:`NaturalSolver` on
            ``objective.gram`` (configurable with ``-natinv_gram_*`` PETSc options).
        step: ``"log-grid"`` (default), a fixed step size, or a :class:`StepRule`.
        theta: the starting parameters (default: the objective field's current θ).
    """

    def __init__(
        self,
        objective: Objective,
        solver: NaturalSolver | None = None,
        step: str | float | StepRule = "log-grid",
        theta: npt.ArrayLike | None = None,
    ) -> None:
        self.objective = objective
        self.gram = objective.gram
        self.comm = self.gram.comm
        self.solver = solver if solver is not None else NaturalSolver(self.gram)
        self._own_solver = solver is None
        self.step_rule = make_step_rule(step)
        start = self.objective.field.parameters if theta is None else np.asarray(theta, dtype=float)
        parallel.ensure_finite(self.comm, start, "initial θ")
        self.theta = start.copy()
        self.iteration = 0
        self.history: list[dict[str, Any]] = []

    def step(self) -> dict[str, Any]:
        """One natural-gradient step; returns its record (loss, step size, timings). Collective."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.gram.update_jacobian(self.theta)
        timings["jacobian"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        value, gradient = self.objective.value_and_gradient(self.theta)
        timings["gradient"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.solver.needs_gram:
            self.gram.assemble(jacobian=False)
        timings["gram"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        direction = self.solver.solve(gradient, assemble=False)
        timings["solve"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        eta, theta, new_value = self.step_rule(self.objective.value, self.theta, value, direction)
        timings["step"] = time.perf_counter() - t0
        predicted = eta * float(gradient @ direction) - 0.5 * eta**2 * self.gram.quadratic(
            direction
        )
        self.solver.report(value - new_value, predicted)

        self.theta = theta
        self.iteration += 1
        record = {
            "iteration": self.iteration,
            "loss": new_value,
            "loss_before": value,
            "step": eta,
            "direction_norm": float(np.linalg.norm(direction)),
            "gradient_norm": float(np.linalg.norm(gradient)),
            "damping": self.solver.damping,
            "time": sum(timings.values()),
            **{f"time_{k}": v for k, v in timings.items()},
        }
        self.history.append(record)
        return record

    def run(
        self,
        iterations: int,
        callback: Callable[[dict[str, Any]], None] | None = None,
        tolerance: float = 0.0,
    ) -> npt.NDArray[np.float64]:
        """Take up to ``iterations`` steps (stop early when the loss ≤ ``tolerance`` or the step
        size is 0); returns θ and sets it on the field. Collective."""
        if iterations < 0:
            raise ValueError(f"Invalid number of iterations: {iterations}")
        for _ in range(iterations):
            record = self.step()
            if callback is not None:
                callback(record)
            if record["loss"] <= tolerance or record["step"] == 0.0:
                break
        self.objective.field.set_parameters(self.theta)
        return self.theta.copy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta.copy(),
            "iteration": self.iteration,
            "solver": self.solver.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = np.array(state["theta"], dtype=np.float64)
        self.iteration = int(state["iteration"])
        self.solver.load_state_dict(state["solver"])

    def destroy(self) -> None:
        if self._own_solver:
            self.solver.destroy()
