"""Euclidean baselines driven through the same objective protocol: Adam."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.optim.natural import Objective

__all__ = ["Adam"]


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
        for _ in range(iterations):
            record = self.step()
            if callback is not None:
                callback(record)
        return self.theta.copy()

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
