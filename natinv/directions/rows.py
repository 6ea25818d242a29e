"""What the solvers that take right-hand sides as rows share: a diagonal metric ``M`` (a residual
loss's weights), ``J̃ = M^½ J``, and a damping policy.

A *row solver* returns ``argmin_d ‖J̃d − M^½w‖² + λ‖d‖²`` for a vector ``w`` on the owned rows —
the natural direction when ``w`` is the residual (``∇L = Jᵀ M w``), the re-projection of a
function onto the tangent space when ``w`` is one (natural momentum). Solving from the rows, not
from ``Jᵀ M w``, is what lets these solvers avoid forming ``G = J̃ᵀJ̃``.

This module builds on :mod:`natinv.gram`; it must not import objectives or optimizers.
"""

from __future__ import annotations

from typing import Any

from petsc4py import PETSc

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.directions.damping import Damping, FixedDamping
from natinv.gram import Gram

Vector = npt.NDArray[np.float64]

__all__ = ["RowSolver"]


class RowSolver:
    """Base of the solvers with :meth:`solve_rows` (see the module's docstring).

    Args:
        gram: a Gram whose metric is diagonal with entries ``>= 0``.
        damping: λ, or a :class:`~natinv.directions.damping.Damping` policy.
        name: how errors name the solver.
    """

    method = ""
    needs_gram = False

    def __init__(self, gram: Gram, damping: float | Damping, name: str) -> None:
        self.damping_policy = FixedDamping(damping) if isinstance(damping, int | float) else damping
        self.gram = gram
        self.comm = gram.comm
        diagonal = gram.metric.getDiagonal()
        weights = diagonal.array.copy()
        diagonal.destroy()
        total = parallel.allreduce_sum(self.comm, float(weights @ weights))
        off_diagonal = gram.metric.norm(PETSc.NormType.FROBENIUS) ** 2 - total
        parallel.check_all(
            self.comm,
            off_diagonal <= 1e-12 * max(total, 1e-300) and bool(np.all(weights >= 0)),
            f"the {name} solver needs a diagonal metric with entries >= 0 (a residual loss's "
            "weights); use NaturalSolver for other metrics",
        )
        self._sqrt_weights = np.sqrt(weights)
        self.factorizations = 0
        self.info: dict[str, Any] = {}
        self.timings = {"solve": 0.0}  # seconds in the solves (factorisations included)

    @property
    def damping(self) -> float:
        return self.damping_policy.value

    def report(self, actual: float, predicted: float, step: float = 1.0) -> None:
        """Feed back a step's outcome to the damping policy (Levenberg–Marquardt adapts λ)."""
        self.damping_policy.update(actual, predicted, step)

    def _scaled_rows(self, rows: npt.ArrayLike) -> Vector:
        """``M^½ w`` on the owned rows, ``w``'s shape checked. Collective."""
        w = np.asarray(rows, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            w.shape == self._sqrt_weights.shape,
            lambda: f"row vector has {w.size} entries, expected {self._sqrt_weights.size}",
        )
        return self._sqrt_weights * w

    def _weighted_jacobian(self) -> Vector:
        """``J̃`` on the owned rows, at the Gram's current θ (computed first if never)."""
        if self.gram.version == 0:
            self.gram.update_jacobian()
        return self._sqrt_weights[:, None] * self.gram.jacobian_array()

    def solve_rows(self, rows: npt.ArrayLike) -> Vector:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"damping": self.damping_policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.damping_policy.load_state_dict(state["damping"])

    def destroy(self) -> None:
        """(Nothing in PETSc to free.)"""
