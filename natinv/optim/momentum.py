"""Momentum rules: the term ``m_k`` that inertia adds to a natural (or Euclidean) step.

Each rule is a small object with explicit state (the last velocity ``p_{k−1}``, the point
``θ_{k−1}`` it left from, the anchor where ``J`` was taken for it, and what the natural kinds keep
of the last step as a function) and three calls that
:meth:`~natinv.optim.natural.NaturalGradientDescent.step` makes in one place each:

``begin(θ_k, projector)``
    before anything else in a step (the ``-diff`` kind evaluates the rows ``v_k`` there);
``term(θ_k, projector, tangent)``
    ``m_k`` (only when a velocity exists and β > 0); ``tangent(θ)`` puts the tangent space at θ;
``remember(θ_k, p_k, anchor, projector)``
    after the step.

``state_dict`` holds exactly the state a resumed run needs (replicated arrays only).

=============================  ===================================================================
rule                           ``m_k``
=============================  ===================================================================
:class:`NoMomentum`            ``0``
:class:`HeavyBall`             ``p_{k−1}`` (parameter space: the naive baseline)
:class:`Nesterov`              ``p_{k−1}``; the natural step is taken at ``y = θ_k + β p_{k−1}``
:class:`NaturalHeavyBall`      ``G_k⁻¹ J_kᵀ M φ_{k−1}``, ``φ_{k−1} = J_{k−1} p_{k−1}``: the last
                               velocity, as a function, re-projected onto ``T_k``
:class:`NaturalHeavyBallDiff`  ``G_k⁻¹ J_kᵀ M (v_k − v_{k−1})``, ``v = rows(θ)``: the true (not
                               linearised) last displacement of the function, re-projected
:class:`NaturalNesterov`       as :class:`NaturalHeavyBall`; the natural step is taken at
                               ``y = θ_k + β m_k`` (loss, gradient and tangent space at y)
:class:`Spring`                SPRING: the *direction* carries the momentum (its own step, see
                               :mod:`natinv.optim.natural`)
=============================  ===================================================================

This module imports numpy only; the projector (a
:class:`~natinv.directions.NaturalSolver`) comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "MOMENTA",
    "HeavyBall",
    "Momentum",
    "NaturalHeavyBall",
    "NaturalHeavyBallDiff",
    "NaturalNesterov",
    "Nesterov",
    "NoMomentum",
    "Spring",
    "make_momentum",
]

Vector = npt.NDArray[np.float64]


def _copy(array: Vector | None) -> Vector | None:
    return None if array is None else array.copy()


def _array(value: Any) -> Vector | None:
    return None if value is None else np.array(value, dtype=np.float64)


class Momentum:
    """No momentum (the base of every rule): ``m_k = 0``."""

    name: ClassVar[str] = "none"
    natural: ClassVar[bool] = False  # re-projects with G: needs the natural direction
    lookahead: ClassVar[bool] = False  # the natural step is taken at θ + β m (Nesterov)

    def __init__(self) -> None:
        self.velocity: Vector | None = None  # p_{k−1} (φ_{k−1} for SPRING)
        self.previous: Vector | None = None  # θ_{k−1}
        self.anchor: Vector | None = None  # where J was taken for the last step

    def begin(self, theta: Vector, projector: Any) -> None:
        """Called first in every step."""

    def term(self, theta: Vector, projector: Any, tangent: Callable[[Vector], None]) -> Vector:
        """``m_k`` (a velocity exists). Collective."""
        raise NotImplementedError

    def remember(
        self, theta: Vector, velocity: Vector, anchor: Vector | None, projector: Any
    ) -> None:
        """Keep the step just taken: ``p_k`` from ``θ_k``, ``J`` taken at ``anchor``."""
        self.previous, self.velocity, self.anchor = theta, velocity, anchor

    def state_dict(self) -> dict[str, Any]:
        return {
            "velocity": _copy(self.velocity),
            "previous": _copy(self.previous),
            "anchor": _copy(self.anchor),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = _array(state["velocity"])
        self.previous = _array(state["previous"])
        self.anchor = _array(state["anchor"])


class NoMomentum(Momentum):
    """``m_k = 0``."""

    def term(self, theta: Vector, projector: Any, tangent: Callable[[Vector], None]) -> Vector:
        raise AssertionError("no momentum has no term")


class HeavyBall(Momentum):
    """``m_k = p_{k−1}`` in parameter space."""

    name = "heavy-ball"

    def term(self, theta: Vector, projector: Any, tangent: Callable[[Vector], None]) -> Vector:
        assert self.velocity is not None
        return self.velocity


class Nesterov(HeavyBall):
    """As :class:`HeavyBall`, the step taken at ``θ_k + β p_{k−1}``."""

    name = "nesterov"
    lookahead = True


class NaturalHeavyBall(Momentum):
    """The last velocity as a function, ``φ_{k−1} = J_{k−1} p_{k−1}``, re-projected onto
    ``T_k``: ``m_k = G_k⁻¹ J_kᵀ M φ_{k−1}`` (one more solve with the factors of ``G_k``, one
    sparse and one dense mat-vec)."""

    name = "natural-heavy-ball"
    natural = True

    def __init__(self) -> None:
        super().__init__()
        self._phi: Vector | None = None  # φ_{k−1} on the owned rows

    def displacement(self, projector: Any) -> Vector:
        """The last step as a function on the owned rows."""
        if self._phi is None:  # after a load: φ_{k−1} = J(anchor) p_{k−1}
            assert self.anchor is not None and self.velocity is not None
            gram = projector.gram
            # the same memory layout as the Gram's J, so that the product rounds the same way
            jacobian = np.empty((gram.rows.num_owned, gram.num_parameters), order="F")
            gram.rows.jacobian(self.anchor, out=jacobian)
            self._phi = np.asarray(jacobian @ self.velocity)
        return self._phi

    def term(self, theta: Vector, projector: Any, tangent: Callable[[Vector], None]) -> Vector:
        tangent(theta)
        if hasattr(projector, "solve_rows"):  # a row solver: argmin ‖M^½(J_k m − φ)‖ directly
            return projector.solve_rows(self.displacement(projector))
        # J_kᵀ M φ: one sparse mat-vec in the rows' layout, one dense product with J's rows.
        rhs = projector.gram.pull_back(self.displacement(projector))
        return projector.solve(rhs, assemble=False)

    def remember(
        self, theta: Vector, velocity: Vector, anchor: Vector | None, projector: Any
    ) -> None:
        super().remember(theta, velocity, anchor, projector)
        self._phi = projector.gram.apply(velocity)  # φ_k = J p_k, J where the step was taken

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._phi = None  # recomputed from the anchor and p_{k−1} when needed


class NaturalHeavyBallDiff(NaturalHeavyBall):
    """The true displacement of the function, ``v_k − v_{k−1}`` with ``v = rows(θ)``,
    re-projected onto ``T_k``."""

    name = "natural-heavy-ball-diff"

    def __init__(self) -> None:
        super().__init__()
        self._rows: Vector | None = None  # v_k of the step under way
        self._last_rows: Vector | None = None  # v_{k−1}

    def begin(self, theta: Vector, projector: Any) -> None:
        self._rows = projector.gram.rows.values(theta)

    def displacement(self, projector: Any) -> Vector:
        if self._last_rows is None:  # after a load: v_{k−1} from θ_{k−1}
            self._last_rows = projector.gram.rows.values(self.previous)
        assert self._rows is not None
        return self._rows - self._last_rows

    def remember(
        self, theta: Vector, velocity: Vector, anchor: Vector | None, projector: Any
    ) -> None:
        super().remember(theta, velocity, anchor, projector)
        self._last_rows = self._rows

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._last_rows = None


class NaturalNesterov(NaturalHeavyBall):
    """As :class:`NaturalHeavyBall`; the natural step is taken at ``y = θ_k + β m_k``."""

    name = "natural-nesterov"
    lookahead = True


class Spring(Momentum):
    """SPRING (Goldshlager et al. 2024): the direction carries the momentum,
    ``φ_k = (G_k + λI)⁻¹(∇L − β G_k φ_{k−1}) + β φ_{k−1}``; the step is
    :meth:`~natinv.optim.natural.NaturalGradientDescent` 's SPRING step, and the velocity is
    ``φ_k``."""

    name = "spring"
    natural = True

    def term(self, theta: Vector, projector: Any, tangent: Callable[[Vector], None]) -> Vector:
        raise AssertionError("SPRING's momentum lives in its direction")


RULES: dict[str, type[Momentum]] = {
    rule.name: rule
    for rule in (
        NoMomentum,
        HeavyBall,
        Nesterov,
        NaturalHeavyBall,
        NaturalHeavyBallDiff,
        NaturalNesterov,
        Spring,
    )
}
MOMENTA = tuple(RULES)


def make_momentum(momentum: str | Momentum) -> Momentum:
    """A rule from its name (one of :data:`MOMENTA`), or the rule itself."""
    if isinstance(momentum, Momentum):
        return momentum
    if momentum not in RULES:
        raise ValueError(f"Unknown momentum {momentum!r}; choose one of {MOMENTA}")
    return RULES[momentum]()
