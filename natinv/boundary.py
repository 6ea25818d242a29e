"""Dirichlet conditions as data: which owned dofs they fix, and to which values.

DOLFINx applies a condition as ``x = α (g − x0)`` on its dofs and leaves the others untouched;
applying it twice, with ``x0 = 0`` and ``x0 = 1``, tells the fixed dofs apart (they differ by
α = 1) from the free ones, whatever the boundary values. Models (homogeneous adjoint and tangent
solves), Ritz losses (values imposed at the dofs) and synthesis (no noise where the state is
prescribed) all ask this one question.
"""

from __future__ import annotations

from collections.abc import Sequence

import dolfinx
import numpy as np
import numpy.typing as npt

__all__ = ["constrained_dofs"]


def constrained_dofs(
    bcs: Sequence[dolfinx.fem.DirichletBC], size: int, owned: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """``(fixed, values)`` on the first ``owned`` of ``size`` local entries (owned dofs × block
    size): whether each is fixed by one of ``bcs``, and the value it is fixed to (0 where free).
    Local."""
    values, shifted = np.zeros(size), np.zeros(size)
    for bc in bcs:
        bc.set(values)
        bc.set(shifted, x0=np.ones(size))
    fixed = (values - shifted)[:owned] > 0.5
    return fixed, values[:owned].copy()
