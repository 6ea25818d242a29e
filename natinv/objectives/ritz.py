"""The energy (Ritz) loss ``L(θ) = ½ a(u, u) − ℓ(u)`` of a neural solution on a DOLFINx space.

``u`` is the neural field interpolated into ``V_h`` (its coefficient vector ``k(θ)``), with the
dofs of Dirichlet conditions, if any, set to their values. With ``A`` and ``b`` the matrix and
vector of ``a`` and ``ℓ``,

    L(θ) = ½ ũᵀ A ũ − bᵀ ũ,   ũ = P k(θ) + g,   ∇L = Jᵀ P (A ũ − b),

where ``P`` zeroes the constrained dofs and ``g`` holds their values. The natural metric is the
energy inner product ``a`` itself (constrained rows and columns dropped), so ``G = (PJ)ᵀ A (PJ)``
is the Hessian of ``L`` in ``u`` pulled back: the natural step is Gauss–Newton on the energy
error (ENGD, Müller & Zeinhofer 2023). Since ``L(u) − L(u_h) = ½ ‖u − u_h‖²_a`` for the Galerkin
solution ``u_h``, the loss measures the energy error up to a constant; :meth:`Ritz.galerkin`
gives ``u_h`` for that check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from petsc4py import PETSc

import dolfinx.fem
import dolfinx.fem.petsc
import numpy as np
import numpy.typing as npt
import ufl
from ufl.algorithms import expand_derivatives
from ufl.algorithms.check_arities import ArityMismatch, check_form_arity
from ufl.algorithms.remove_complex_nodes import remove_complex_nodes

from natinv import metrics, parallel
from natinv.boundary import constrained_dofs
from natinv.fields import NeuralField
from natinv.gram import Gram

__all__ = ["Ritz"]

BilinearForm = ufl.Form | Callable[[ufl.Argument, ufl.Argument], ufl.Form]
LinearForm = ufl.Form | Callable[[ufl.Argument], ufl.Form]


def _check_arity(form: ufl.Form, arity: int, space: Any, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``form`` is linear in each of ``arity`` arguments on
    ``space`` (before compiling: a failed compilation leaves the JIT cache waiting)."""
    arguments = form.arguments()
    ok = len(arguments) == arity and all(a.ufl_function_space() == space for a in arguments)
    if ok:
        try:
            real = remove_complex_nodes(expand_derivatives(form))  # as the real-mode compiler does
            check_form_arity(real, arguments, complex_mode=False)
        except ArityMismatch:
            ok = False
    if not ok:
        raise ValueError(message)


class Ritz:
    """``L(θ) = ½ a(u, u) − ℓ(u)`` for the neural field ``u`` on its space, with ENGD's metric.

    Args:
        field: the neural solution (a continuous Lagrange space for an ``H¹`` form).
        a: a symmetric positive (semi)definite bilinear form on ``field.space``, or a callable
            ``(w, z) -> form``; add a boundary penalty to it for weakly imposed conditions.
        ell: a linear form on ``field.space``, or a callable ``z -> form``.
        bcs: Dirichlet conditions imposed exactly: their dofs take the condition's values and
            the network's values there are ignored.

    Collective construction; call :meth:`destroy` to free the matrices and the Gram.
    """

    def __init__(
        self,
        field: NeuralField,
        a: BilinearForm,
        ell: LinearForm,
        *,
        bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    ) -> None:
        self.field = field
        self.comm = field.comm
        space = field.space
        self.bcs = list(bcs or [])
        w, z = ufl.TrialFunction(space), ufl.TestFunction(space)
        self._function = dolfinx.fem.Function(space)
        with parallel.collective(self.comm, "Ritz: the forms"):
            self._a = a if isinstance(a, ufl.Form) else a(w, z)
            self._ell = ell if isinstance(ell, ufl.Form) else ell(z)
            _check_arity(self._ell, 1, space, "ell must be a linear form on the field's space")
            _check_arity(self._a, 2, space, "a must be a bilinear form on the field's space")
        # the metric (and its symmetry check): a with constrained rows and columns dropped
        self.metric = metrics.energy(space, self._a, bcs=self.bcs, diagonal=0.0)
        self.matrix = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(self._a))
        self.matrix.assemble()
        self.rhs = dolfinx.fem.petsc.assemble_vector(dolfinx.fem.form(self._ell))
        self.rhs.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
        parallel.ensure_finite(self.comm, self.rhs.array, "the load vector of ell")
        # the constrained dofs and their values: x = α (g − x0) on them, untouched elsewhere
        self._constrained, self._values = constrained_dofs(
            self.bcs, self._function.x.array.size, field.num_owned
        )
        self.gram = Gram(field, self.metric)
        self._u = self.matrix.createVecRight()
        self._au = self.matrix.createVecLeft()
        self.evaluations = 0

    def coefficients(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """``ũ = P k(θ) + g``: the owned coefficients of the solution, conditions imposed."""
        u = self.field.values(theta)
        u[self._constrained] = self._values[self._constrained]
        return u

    def _evaluate(self, theta: npt.ArrayLike | None) -> float:
        self._u.array[:] = self.coefficients(theta)
        self.matrix.mult(self._u, self._au)
        self.evaluations += 1
        return 0.5 * self._u.dot(self._au) - self.rhs.dot(self._u)

    def value(self, theta: npt.ArrayLike | None = None) -> float:
        """``L(θ)`` (identical on all ranks). Collective."""
        return float(self._evaluate(theta))

    def value_and_gradient(
        self, theta: npt.ArrayLike | None = None
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """``L(θ)`` and ``∇L = Jᵀ P (A ũ − b)`` (replicated). Collective."""
        value = float(self._evaluate(theta))
        residual = self._au.array - self.rhs.array
        residual[self._constrained] = 0.0
        return value, self.field.vjp(residual, theta)

    def solution(
        self, theta: npt.ArrayLike | None = None, out: dolfinx.fem.Function | None = None
    ) -> dolfinx.fem.Function:
        """``ũ`` as a :class:`dolfinx.fem.Function` (ghosts updated). Collective."""
        out = out if out is not None else dolfinx.fem.Function(self.field.space, name="u")
        out.x.array[: self.field.num_owned] = self.coefficients(theta)
        out.x.scatter_forward()
        return out

    def galerkin(self) -> dolfinx.fem.Function:
        """The Galerkin solution ``u_h`` of ``a(u_h, z) = ℓ(z)`` with the same conditions, by a
        direct solve (MUMPS): the minimiser of ``L`` over all of ``V_h``. Collective."""
        problem = dolfinx.fem.petsc.LinearProblem(
            self._a,
            self._ell,
            bcs=self.bcs,
            petsc_options={"ksp_type": "preonly", "pc_type": "lu"},
            petsc_options_prefix="natinv_ritz_galerkin_",
        )
        u = problem.solve()
        result = u[0] if isinstance(u, tuple) else u
        return result

    def energy_error(
        self, reference: dolfinx.fem.Function, theta: npt.ArrayLike | None = None
    ) -> float:
        """``‖ũ − u_ref‖_a`` for a Function on the field's space. Collective."""
        self._u.array[:] = self.coefficients(theta) - reference.x.array[: self.field.num_owned]
        self.matrix.mult(self._u, self._au)
        return float(np.sqrt(max(self._u.dot(self._au), 0.0)))

    def destroy(self) -> None:
        """Free the matrices, vectors and the Gram. Collective."""
        self.gram.destroy()
        for obj in (self.metric, self.matrix, self.rhs, self._u, self._au):
            obj.destroy()
