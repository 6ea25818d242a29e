"""Step-size rules: ``θ_new = θ − η d`` for a descent direction ``d``.

Every rule is called with the objective (its ``value(θ)``, and ``value_many(Θ)`` when it can
evaluate several θ in one pass), a base point, the loss there and a direction ``d``, and returns
``(η, base − η d, loss there)``. Losses are identical on all ranks, so every rank takes the same
decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Armijo",
    "FixedStep",
    "LogGridLineSearch",
    "NormConstraint",
    "StepRule",
    "losses",
    "make_step_rule",
    "run_steps",
]

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
        slope: float | None = None,
    ) -> Step:
        """``slope`` is ``∇L·d`` (> 0 for a descent direction ``−d``), for rules that need it."""
        raise NotImplementedError

    def limited(self, backtracks: int) -> StepRule:
        """This rule with at most ``backtracks`` reductions of the first trial step (the rule
        itself when it does not backtrack)."""
        return self

    def state_dict(self) -> dict[str, float]:
        """What a resumed run needs of the rule (a rule with memory: its last step)."""
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass


class FixedStep(StepRule):
    """A constant step size η > 0."""

    def __init__(self, eta: float = 1.0) -> None:
        if not (eta > 0 and np.isfinite(eta)):
            raise ValueError(f"Invalid step size: {eta} (must be a finite number > 0)")
        self.eta = float(eta)

    def __call__(self, objective, theta, value, direction, slope=None) -> Step:  # type: ignore[no-untyped-def]
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

    def __call__(self, objective, theta, value, direction, slope=None) -> Step:  # type: ignore[no-untyped-def]
        trials = [theta - eta * direction for eta in self.etas]
        values = losses(objective, trials)
        finite = np.flatnonzero(np.isfinite(values))
        if finite.size:
            best = int(finite[np.argmin(values[finite])])
            if values[best] < value or self.accept_increase:
                return float(self.etas[best]), trials[best], float(values[best])
        return 0.0, theta, value


class Armijo(StepRule):
    """Backtracking (Armijo 1966): the first ``η = η₀ ρʲ`` with
    ``L(θ − η d) ≤ L(θ) − c η ∇L·d``; η = 0 (no step) if none within ``max_backtracks``.

    ``adaptive=True``: η₀ is ``growth`` times the last accepted η (``initial`` before the
    first), for directions that carry no scale of their own — a natural direction in a
    function-space metric (L2, H1) measures the step in that metric, not in the loss's, and
    the step that fits is found once and then followed (1–2 trials per step instead of the
    ~20 halvings from 1 each step). Its limited versions (:meth:`limited`, the momentum step's
    trial) share the memory."""

    def __init__(
        self,
        initial: float = 1.0,
        shrink: float = 0.5,
        c: float = 1e-4,
        max_backtracks: int = 30,
        *,
        adaptive: bool = False,
        growth: float = 2.0,
    ) -> None:
        if not (initial > 0 and np.isfinite(initial)):
            raise ValueError(f"Invalid initial step size: {initial} (must be > 0)")
        if not (0 < shrink < 1):
            raise ValueError(f"Invalid backtracking factor: {shrink} (must lie in (0, 1))")
        if not (0 < c < 1):
            raise ValueError(f"Invalid Armijo constant: {c} (must lie in (0, 1))")
        if not (growth >= 1 and np.isfinite(growth)):
            raise ValueError(f"Invalid step growth: {growth} (must be >= 1)")
        self.initial, self.shrink, self.c = float(initial), float(shrink), float(c)
        self.max_backtracks = int(max_backtracks)
        self.adaptive, self.growth = adaptive, float(growth)
        self._memory: dict[str, float] = {}  # the last accepted η (adaptive), shared

    def limited(self, backtracks: int) -> StepRule:
        rule = Armijo(
            self.initial,
            self.shrink,
            self.c,
            min(backtracks, self.max_backtracks),
            adaptive=self.adaptive,
            growth=self.growth,
        )
        rule._memory = self._memory
        return rule

    def state_dict(self) -> dict[str, float]:
        return dict(self._memory)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._memory.clear()
        self._memory.update({k: float(v) for k, v in state.items()})

    def __call__(self, objective, theta, value, direction, slope=None) -> Step:  # type: ignore[no-untyped-def]
        if slope is None:
            raise ValueError("The Armijo rule needs the slope ∇L·d")
        eta = self.initial
        if self.adaptive and "last" in self._memory:
            eta = self.growth * self._memory["last"]
        for _ in range(self.max_backtracks + 1):
            new = theta - eta * direction
            new_value = float(objective.value(new))
            if np.isfinite(new_value) and new_value <= value - self.c * eta * slope:
                if self.adaptive:
                    self._memory["last"] = eta
                return eta, new, new_value
            eta *= self.shrink
        return 0.0, theta, value


class NormConstraint(StepRule):
    """Caps the parameter step: ``d`` is scaled so that ``‖η d‖ ≤ radius`` for η ≤ 1, then the
    inner rule chooses η (the reported η includes the scaling)."""

    def __init__(self, rule: StepRule, radius: float) -> None:
        if not (radius > 0 and np.isfinite(radius)):
            raise ValueError(f"Invalid step-norm radius: {radius} (must be > 0)")
        self.rule, self.radius = rule, float(radius)

    def __call__(self, objective, theta, value, direction, slope=None) -> Step:  # type: ignore[no-untyped-def]
        norm = float(np.linalg.norm(direction))
        scale = min(1.0, self.radius / norm) if norm > 0 else 1.0
        eta, new, new_value = self.rule(
            objective, theta, value, scale * direction, None if slope is None else scale * slope
        )
        return eta * scale, new, new_value


def make_step_rule(spec: str | float | StepRule) -> StepRule:
    """A step rule from ``"log-grid"``, ``"armijo"``, ``"armijo-adaptive"`` (backtracking
    from twice the last step), a number (fixed η) or a :class:`StepRule`."""
    if isinstance(spec, StepRule):
        return spec
    if spec == "log-grid":
        return LogGridLineSearch()
    if spec == "armijo":
        return Armijo()
    if spec == "armijo-adaptive":
        return Armijo(adaptive=True)
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return FixedStep(float(spec))
    raise ValueError(
        f"Unknown step rule {spec!r}; use 'log-grid', 'armijo', 'armijo-adaptive' or a "
        "positive number"
    )


def run_steps(
    optimizer: Any,
    iterations: int,
    callback: Callable[[dict[str, Any]], None] | None = None,
    *,
    tolerance: float = -np.inf,
    stop_on_zero_step: bool = True,
) -> npt.NDArray[np.float64]:
    """The loop behind every optimizer's ``run``: up to ``iterations`` calls of ``step()``, each
    record passed to ``callback``; stops when the loss is ≤ ``tolerance`` or (optionally) when no
    step was taken. Sets the final θ on the objective's field and returns a copy. Collective."""
    if iterations < 0 or int(iterations) != iterations:
        raise ValueError(f"Invalid number of iterations: {iterations} (an integer >= 0)")
    for _ in range(int(iterations)):
        record = optimizer.step()
        if callback is not None:
            callback(record)
        if record["loss"] <= tolerance or (stop_on_zero_step and record["step"] == 0.0):
            break
    optimizer.objective.field.set_parameters(optimizer.theta)
    return np.array(optimizer.theta, dtype=np.float64)
