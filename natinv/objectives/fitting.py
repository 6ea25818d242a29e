"""Fitting a neural field to a target field in a metric: ``L(θ) = ½ ‖k(θ) − f‖²_M``.

With the metric ``M`` of the loss as the natural metric, ``G = Jᵀ M J`` is the Gauss–Newton
matrix of ``L`` and a natural step with unit step size lands on the ``M``-orthogonal projection
of ``f`` onto the tangent space of the network at θ.
"""

from __future__ import annotations

from collections.abc import Callable

from petsc4py import PETSc

import dolfinx.fem
import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.fields import NeuralField, same_space
from natinv.gram import Gram

__all__ = ["FieldFit"]

Target = dolfinx.fem.Function | Callable[[npt.NDArray[np.float64]], npt.ArrayLike] | npt.ArrayLike


class FieldFit:
    """``L(θ) = ½ (k(θ) − f)ᵀ M (k(θ) − f)`` for a neural field ``k`` and a target ``f``.

    Args:
        field: the neural field.
        target: a :class:`dolfinx.fem.Function` on the field's space, a callable ``x -> values``
            interpolated into it (``x`` has shape ``(3, n)`` as for ``Function.interpolate``), or
            an array of the owned coefficients.
        metric: the assembled metric matrix on the field's space (kept, not destroyed, by this
            object).

    Collective construction; call :meth:`destroy` to free the work vectors and the Gram.
    """

    def __init__(self, field: NeuralField, target: Target, metric: PETSc.Mat) -> None:
        self.field = field
        self.comm = field.comm
        self.metric = metric
        self.gram = Gram(field, metric)  # checks that the metric lives on the field's space
        self.target = self._owned_target(target)
        parallel.ensure_finite(self.comm, self.target, "the target field")
        self._r = metric.createVecRight()
        self._mr = metric.createVecLeft()
        self.evaluations = 0

    def _owned_target(self, target: Target) -> npt.NDArray[np.float64]:
        field = self.field
        if isinstance(target, dolfinx.fem.Function):
            parallel.check_all(
                self.comm,
                same_space(target.function_space, field.space),
                "the target Function lives on another function space than the field",
            )
            return np.array(target.x.array[: field.num_owned], dtype=np.float64)
        if callable(target):
            function = dolfinx.fem.Function(field.space)
            with parallel.collective(self.comm, "interpolating the target"):
                function.interpolate(target)
            return np.array(function.x.array[: field.num_owned], dtype=np.float64)
        array = np.asarray(target, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            array.shape == (field.num_owned,),
            lambda: (
                f"the target array has {array.size} entries, expected the "
                f"{field.num_owned} owned coefficients of the field's space"
            ),
        )
        return array

    def _residual(self, theta: npt.ArrayLike | None) -> float:
        self._r.array[:] = self.field.values(theta) - self.target
        self.metric.mult(self._r, self._mr)
        self.evaluations += 1
        return 0.5 * float(self._r.dot(self._mr))

    def value(self, theta: npt.ArrayLike | None = None) -> float:
        """``L(θ)`` (identical on all ranks). Collective."""
        return self._residual(theta)

    def value_and_gradient(
        self, theta: npt.ArrayLike | None = None
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """``L(θ)`` and ``∇L = Jᵀ M (k − f)`` (replicated). Collective."""
        value = self._residual(theta)
        return value, self.field.vjp(self._mr.array, theta)

    def row_residual(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """``ρ = k(θ) − f`` with ``∇L = Jᵀ M ρ`` (owned rows; for sample-space solvers)."""
        return self.field.values(theta) - self.target

    def error(self, theta: npt.ArrayLike | None = None) -> float:
        """Relative error ``‖k − f‖_M / ‖f‖_M``. Collective."""
        self._r.array[:] = self.target
        self.metric.mult(self._r, self._mr)
        norm_f = float(self._r.dot(self._mr))
        return float(np.sqrt(2.0 * self._residual(theta) / max(norm_f, 1e-300)))

    def destroy(self) -> None:
        """Free the work vectors and the Gram matrices. Collective."""
        self._r.destroy()
        self._mr.destroy()
        self.gram.destroy()
