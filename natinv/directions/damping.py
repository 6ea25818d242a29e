"""Damping policies: what λ in ``(G + λI) d = g`` is, and how it reacts to a step's outcome.

This module imports numpy only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]

__all__ = ["Damping", "FixedDamping", "LevenbergMarquardt", "ShrinkingDamping"]


class Damping(Protocol):
    """What λ is, and how it reacts to a step's outcome. A policy whose λ is relative to the
    scale of ``G`` is not ``calibrated`` until the first solve calls :meth:`calibrate`."""

    value: float
    calibrated: bool

    def calibrate(self, scale: float) -> None: ...

    def update(self, actual: float, predicted: float, step: float = 1.0) -> None: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedDamping:
    """A constant λ ≥ 0."""

    def __init__(self, value: float = 0.0) -> None:
        if not (value >= 0 and np.isfinite(value)):
            raise ValueError(f"Invalid damping {value}: must be a finite number >= 0")
        self.value = float(value)
        self.calibrated = True

    def calibrate(self, scale: float) -> None:
        """(An absolute λ: nothing to scale.)"""

    def update(self, actual: float, predicted: float, step: float = 1.0) -> None:
        """(Nothing to adapt.)"""

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass


class LevenbergMarquardt:
    """Adaptive damping from the gain ratio ρ = actual / predicted decrease (Nielsen's rule).

    ρ > 0 (the step decreased the loss): ``λ ← λ · max(1/3, 1 − (2ρ − 1)³)``; otherwise
    ``λ ← λ · ν`` and ``ν ← 2ν``. λ stays within ``[minimum, maximum]``.

    With a line search the accepted step always lowers the loss, so ρ alone would only ever
    shrink λ: a step the line search had to shorten (η < ½) counts as a rejected full step and
    raises λ, so that λ finds the scale of ``G`` where the full step is trusted.

    ``relative=True`` (what ``NaturalSolver(gram, "lm")`` uses): λ, its minimum and maximum are
    multiples of ``max diag(G)`` at the first solve — the classical start ``λ₀ = τ max diag(G)``
    (Madsen, Nielsen & Tingleff, *Methods for non-linear least squares problems*, 2004, τ = 1e-3
    when the start is far from the solution). An absolute λ₀ has no scale: on a noise-whitened
    Gauss–Newton Gram (entries ~ 1/σ²) λ₀ = 1e-3 is nearly no damping, and the first directions
    are so long that the line search backtracks a dozen times each (measured on the shipped
    ``diffusion_hole`` case: steps 6e-5, 1e-4, 1e-3 in the first three iterations, 1 s of 1.2).
    """

    def __init__(
        self,
        initial: float = 1e-3,
        minimum: float = 1e-14,
        maximum: float = 1e8,
        *,
        relative: bool = False,
    ) -> None:
        if not (0 < minimum <= initial <= maximum):
            raise ValueError(
                f"Invalid Levenberg–Marquardt damping: need 0 < minimum ({minimum}) <= "
                f"initial ({initial}) <= maximum ({maximum})"
            )
        self.value = float(initial)
        self.minimum, self.maximum = float(minimum), float(maximum)
        self.nu = 2.0
        self.relative = relative
        self.calibrated = not relative

    def calibrate(self, scale: float) -> None:
        """Make λ and its bounds multiples of ``scale`` (the scale of ``G``), once."""
        if not self.calibrated and scale > 0 and np.isfinite(scale):
            self.value *= scale
            self.minimum *= scale
            self.maximum *= scale
        self.calibrated = True

    def update(self, actual: float, predicted: float, step: float = 1.0) -> None:
        rho = actual / predicted if predicted > 0 else -1.0
        if rho > 0 and step >= 0.5:
            self.value *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            self.nu = 2.0
        else:
            self.value *= self.nu
            self.nu *= 2.0
        self.value = min(max(self.value, self.minimum), self.maximum)

    def state_dict(self) -> dict[str, float]:
        return {
            "value": self.value,
            "nu": self.nu,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "calibrated": float(self.calibrated),
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.nu = float(state["value"]), float(state["nu"])
        self.minimum, self.maximum = float(state["minimum"]), float(state["maximum"])
        self.calibrated = bool(state["calibrated"])


class ShrinkingDamping:
    """λ divided by ``shrink`` after a step of η ≥ ½, doubled (up to λ₀) after a shorter one.

    Far from the solution λ₀ regularises the direction as a fixed damping does; once the line
    search accepts full steps λ vanishes geometrically and the direction becomes the
    Gauss–Newton one on every direction above the solver's cut-off, which is what a solver that
    resolves tiny singular values (:class:`~natinv.directions.LeastSquaresSolver`) needs to reach
    the last digits. Unlike :class:`LevenbergMarquardt`, λ never rises above λ₀.

    Measured on ENGD's penalised 2D Poisson problem (``bench/poisson2d.py``): with λ = 0 from
    the start the least-squares direction wanders for hundreds of steps on a [2, 32, 1] network
    on 8 × 8 and 12 × 12 meshes (relative L2 error 0.08–4 after 300 steps, 3 seeds); with
    λ₀ = 1e-10 every run reaches 1e-7 in 110–130 steps.

    Args:
        initial: λ₀ (relative to ``max diag G`` at the first solve when ``relative``).
        shrink: the factor λ is divided by after a step of η ≥ ½ (> 1).
    """

    def __init__(
        self,
        initial: float = 1e-10,
        shrink: float = 10.0,
        maximum: float | None = None,
        *,
        relative: bool = True,
    ):
        ceiling = initial if maximum is None else maximum
        if not (
            initial > 0 and np.isfinite(initial) and shrink > 1 and np.isfinite(shrink)
        ) or not (initial <= ceiling < np.inf):
            raise ValueError(
                f"Invalid shrinking damping: need initial ({initial}) > 0, shrink ({shrink}) > 1 "
                f"and initial <= maximum ({maximum}) < inf"
            )
        self.value = float(initial)
        self.ceiling = float(ceiling)
        self.shrink = float(shrink)
        self.calibrated = not relative

    def calibrate(self, scale: float) -> None:
        """Make λ₀ a multiple of ``scale`` (the scale of ``G``), once."""
        if not self.calibrated and scale > 0 and np.isfinite(scale):
            self.value *= scale
            self.ceiling *= scale
        self.calibrated = True

    def update(self, actual: float, predicted: float, step: float = 1.0) -> None:
        if step >= 0.5 and actual > 0:
            self.value = max(self.value / self.shrink, 1e-300)
        else:
            self.value = min(2.0 * self.value, self.ceiling)

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "ceiling": self.ceiling, "calibrated": float(self.calibrated)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.ceiling = float(state["value"]), float(state["ceiling"])
        self.calibrated = bool(state["calibrated"])
