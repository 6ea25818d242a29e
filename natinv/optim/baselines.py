"""Euclidean baselines driven through the same objective protocol: Adam and L-BFGS."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.optim.natural import Objective
from natinv.optim.steps import StepRule, make_step_rule, run_steps

__all__ = ["LBFGS", "Adam"]


class Adam:
    """Adam (Kingma & Ba 2015) on θ with the objective's replicated gradient.

    Args:
        objective: the loss.
        lr: step size (> 0).
        betas: the moment decay rates, each in [0, 1).
        eps: denominator guard (> 0).
        theta: start (default: the objective field's θ).
    """

    def __init__(
        self,
        objective: Objective,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        theta: npt.ArrayLike | None = None,
    ) -> None:
        if not (lr > 0):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid Adam betas: {betas} (each must lie in [0, 1))")
        if not (eps > 0):
            raise ValueError(f"Invalid epsilon: {eps}")
        self.objective = objective
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        field = objective.field
        start = field.parameters if theta is None else np.asarray(theta, dtype=float)
        parallel.ensure_finite(field.comm, start, "initial θ")
        self.theta = start.copy()
        self.m = np.zeros_like(self.theta)
        self.v = np.zeros_like(self.theta)
        self.iteration = 0
        self.history: list[dict[str, Any]] = []

    def step(self) -> dict[str, Any]:
        """One Adam step; the record's loss is the loss at the new θ. Collective."""
        t0 = time.perf_counter()
        value, g = self.objective.value_and_gradient(self.theta)
        b1, b2 = self.betas
        self.iteration += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1**self.iteration)
        v_hat = self.v / (1 - b2**self.iteration)
        self.theta = self.theta - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        new_value = self.objective.value(self.theta)
        record = {
            "iteration": self.iteration,
            "loss": new_value,
            "loss_before": value,
            "step": self.lr,
            "gradient_norm": float(np.linalg.norm(g)),
            "time": time.perf_counter() - t0,
        }
        self.history.append(record)
        return record

    def run(
        self, iterations: int, callback: Callable[[dict[str, Any]], None] | None = None
    ) -> npt.NDArray[np.float64]:
        """Take ``iterations`` steps; returns θ and sets it on the field. Collective."""
        return run_steps(self, iterations, callback, stop_on_zero_step=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta.copy(),
            "m": self.m.copy(),
            "v": self.v.copy(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = np.array(state["theta"], dtype=float)
        self.m = np.array(state["m"], dtype=float)
        self.v = np.array(state["v"], dtype=float)
        self.iteration = int(state["iteration"])


class LBFGS:
    """Limited-memory BFGS (Nocedal 1980) with the two-loop recursion and a step rule.

    Args:
        objective: the loss.
        memory: the number of curvature pairs kept (> 0).
        step: a step rule (default Armijo backtracking from η = 1).
        theta: start (default: the objective field's θ).

    Pairs with ``sᵀy ≤ 1e-12 ‖s‖‖y‖`` are skipped, which keeps the inverse-Hessian model positive.
    """

    def __init__(
        self,
        objective: Objective,
        memory: int = 10,
        step: str | float | StepRule = "armijo",
        theta: npt.ArrayLike | None = None,
    ) -> None:
        if memory < 1 or int(memory) != memory:
            raise ValueError(f"Invalid L-BFGS memory: {memory} (a positive integer)")
        self.objective = objective
        self.memory = int(memory)
        self.step_rule = make_step_rule(step)
        field = objective.field
        start = field.parameters if theta is None else np.asarray(theta, dtype=float)
        parallel.ensure_finite(field.comm, start, "initial θ")
        self.theta = start.copy()
        self.pairs: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
        self._gradient: npt.NDArray[np.float64] | None = None
        self._value = 0.0
        self.iteration = 0
        self.history: list[dict[str, Any]] = []

    def _direction(self, g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``H g`` by the two-loop recursion (``d`` such that ``θ − η d`` descends)."""
        q = g.copy()
        alphas = []
        for s, y in reversed(self.pairs):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q -= a * y
        if self.pairs:
            s, y = self.pairs[-1]
            q *= float(s @ y) / float(y @ y)
        for (s, y), a in zip(self.pairs, reversed(alphas), strict=True):
            q += (a - float(y @ q) / float(y @ s)) * s
        return q

    def step(self) -> dict[str, Any]:
        """One L-BFGS step. Collective."""
        t0 = time.perf_counter()
        if self._gradient is None:
            self._value, self._gradient = self.objective.value_and_gradient(self.theta)
        value, g = self._value, self._gradient
        d = self._direction(g)
        if float(g @ d) <= 0:  # not a descent direction: forget the curvature pairs
            self.pairs.clear()
            d = g.copy()
        eta, theta, _ = self.step_rule(self.objective, self.theta, value, d, float(g @ d))
        new_value, new_g = self.objective.value_and_gradient(theta)
        s, y = theta - self.theta, new_g - g
        if float(s @ y) > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            self.pairs.append((s, y))
            del self.pairs[: -self.memory]
        self.theta, self._value, self._gradient = theta, new_value, new_g
        self.iteration += 1
        record = {
            "iteration": self.iteration,
            "loss": new_value,
            "loss_before": value,
            "step": eta,
            "gradient_norm": float(np.linalg.norm(new_g)),
            "time": time.perf_counter() - t0,
        }
        self.history.append(record)
        return record

    def run(
        self, iterations: int, callback: Callable[[dict[str, Any]], None] | None = None
    ) -> npt.NDArray[np.float64]:
        """Take up to ``iterations`` steps (stop when no step is found); returns θ and sets it
        on the field. Collective."""
        return run_steps(self, iterations, callback, stop_on_zero_step=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta.copy(),
            "pairs": [(s.copy(), y.copy()) for s, y in self.pairs],
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = np.array(state["theta"], dtype=float)
        self.pairs = [(np.array(s), np.array(y)) for s, y in state["pairs"]]
        self.iteration = int(state["iteration"])
        self._gradient = None
