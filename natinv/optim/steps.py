"""Step-size rules: ``θ_new = θ − η d`` for a descent direction ``d``.

Every rule is called with the objective (its ``value(θ)``, and ``value_many(Θ)`` when it can
evaluate several θ in one pass), a base point, the loss there and a direction ``d``, and returns
``(η, base − η d, loss there)``. Losses are identical on all ranks, so every rank takes the same
decision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FixedStep", "LogGridLineSearch", "StepRule", "losses", "make_step_rule"]

Step = tuple[float, npt.NDArray[np.float64], float]


def losses(objective: Any, thetas: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    """The objective at several parameter vectors (one pass if it offers ``value_many``)."""
    if hasattr(objective, "value_many"):
        return np.asarray(objective.value_many(np.stack(thetas)), dtype=np.float64)
    return np.array([objective.value(t) for t in thetas], dtype=np.float64)


class StepRule:
    """Base class of step-size rules."""

    def __call__(
        self,
        objective: Any,
        theta: npt.NDArray[np.float64],
        value: float,
        direction: npt.NDArray[np.float64],
    ) -> Step:
        raise NotImplementedError


class FixedStep(StepRule):
    """A constant step size η > 0."""

    def __init__(self, eta: float = 1.0) -> None:
        if not (eta > 0 and np.isfinite(eta)):
            raise ValueError(f"Invalid step size: {eta} (must be a finite number > 0)")
        self.eta = float(eta)

    def __call__(self, objective, theta, value, direction) -> Step:  # type: ignore[no-untyped-def]
        new = theta - self.eta * direction
        return self.eta, new, float(objective.value(new))


class LogGridLineSearch(StepRule):
    """The ENGD line search (Müller & Zeinhofer 2023): η ∈ {2⁻ʲ, j = 0..J}, lowest loss wins.

    If no trial lowers the loss the smallest trial step is still the argmin of the grid; the
    step is then taken only when ``accept_increase`` is set, otherwise θ is kept (η = 0).
    """

    def __init__(self, max_halvings: int = 30, accept_increase: bool = False) -> None:
        if max_halvings < 0 or int(max_halvings) != max_halvings:
            raise ValueError(f"Invalid number of halvings: {max_halvings} (an integer >= 0)")
        self.etas = 0.5 ** np.arange(int(max_halvings) + 1)
        self.accept_increase = accept_increase

    def __call__(self, objective, theta, value, direction) -> Step:  # type: ignore[no-untyped-def]
        trials = [theta - eta * direction for eta in self.etas]
        values = losses(objective, trials)
        finite = np.flatnonzero(np.isfinite(values))
        if finite.size:
            best = int(finite[np.argmin(values[finite])])
            if values[best] < value or self.accept_increase:
                return float(self.etas[best]), trials[best], float(values[best])
        return 0.0, theta, value


def make_step_rule(spec: str | float | StepRule) -> StepRule:
    """A step rule from ``"log-grid"``, a number (fixed η) or a :class:`StepRule`."""
    if isinstance(spec, StepRule):
        return spec
    if spec == "log-grid":
        return LogGridLineSearch()
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return FixedStep(float(spec))
    raise ValueError(f"Unknown step rule {spec!r}; use 'log-grid' or a positive number")
