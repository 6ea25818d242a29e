"""Step-size rules: ``θ_new = θ − η d`` for a descent direction ``d``.

Every rule is called with the loss (a collective callable of θ), the current θ, its loss and the
direction, and returns ``(η, θ_new, loss_new)``. Losses are identical on all ranks, so every rank
takes the same decision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["FixedStep", "LogGridLineSearch", "StepRule", "make_step_rule"]

Loss = Callable[[npt.NDArray[np.float64]], float]
Step = tuple[float, npt.NDArray[np.float64], float]


class StepRule:
    """Base class of step-size rules."""

    def __call__(
        self,
        loss: Loss,
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

    def __call__(self, loss: Loss, theta, value, direction) -> Step:  # type: ignore[no-untyped-def]
        new = theta - self.eta * direction
        return self.eta, new, loss(new)


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

    def __call__(self, loss: Loss, theta, value, direction) -> Step:  # type: ignore[no-untyped-def]
        best = (0.0, theta, value)
        trials: list[Step] = []
        for eta in self.etas:
            new = theta - eta * direction
            trials.append((float(eta), new, loss(new)))
        finite = [t for t in trials if np.isfinite(t[2])]
        if finite:
            candidate = min(finite, key=lambda t: t[2])
            if candidate[2] < value or self.accept_increase:
                best = candidate
        return best


def make_step_rule(spec: str | float | StepRule) -> StepRule:
    """A step rule from ``"log-grid"``, a number (fixed η) or a :class:`StepRule`."""
    if isinstance(spec, StepRule):
        return spec
    if spec == "log-grid":
        return LogGridLineSearch()
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return FixedStep(float(spec))
    raise ValueError(f"Unknown step rule {spec!r}; use 'log-grid' or a positive number")
