"""Inner products on the field space, assembled by DOLFINx into PETSc matrices.

A metric is a symmetric positive (semi)definite bilinear form ``b(w, z)`` on ``W_h``. Its matrix
``M`` (MPIAIJ, rows in the space's index-map layout) defines the Gram matrix ``G = Jᵀ M J``.

Built in:

- :func:`l2` — ``∫ w·z dx``
- :func:`h1` — ``∫ w·z + ℓ² ∇w:∇z dx`` with a length scale ``ℓ``
- :func:`energy` — any user UFL bilinear form, e.g. a PDE operator plus a boundary penalty.

Each function returns a new matrix; the caller must ``destroy()`` it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from petsc4py import PETSc

import dolfinx.fem
import dolfinx.fem.petsc
import ufl

from natinv import parallel

__all__ = ["METRICS", "assemble_metric", "energy", "h1", "l2"]


def _assemble(
    form: ufl.Form,
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    diagonal: float = 1.0,
) -> PETSc.Mat:
    matrix = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form), bcs=bcs or [], diag=diagonal)
    matrix.assemble()
    return matrix


def _in_units(matrix: PETSc.Mat, space: dolfinx.fem.FunctionSpace, unit: float) -> PETSc.Mat:
    """``matrix`` with ``dx`` measured in ``unit^d`` (d the mesh's dimension)."""
    if not (unit > 0):
        raise ValueError(f"Invalid length unit {unit}: must be > 0")
    if unit != 1.0:
        matrix.scale(float(unit) ** -space.mesh.topology.dim)
    return matrix


def l2(space: dolfinx.fem.FunctionSpace, unit: float = 1.0) -> PETSc.Mat:
    """The L2 mass matrix ``∫ w·z dx`` on ``space``, the volume measured in ``unit^d`` (a
    neural field's reference length: the same matrix whatever the mesh's unit). Collective;
    caller must destroy()."""
    w, z = ufl.TrialFunction(space), ufl.TestFunction(space)
    return _in_units(_assemble(ufl.inner(w, z) * ufl.dx), space, unit)


def h1(space: dolfinx.fem.FunctionSpace, length: float = 1.0, unit: float = 1.0) -> PETSc.Mat:
    """The H1 matrix ``∫ w·z + ℓ² ∇w:∇z dx``, the volume measured in ``unit^d``. Collective;
    caller must destroy().

    Args:
        space: a continuous space (the gradient of a DG field is not its weak gradient).
        length: the length scale ``ℓ > 0`` weighting the gradient term against the L2 term.
        unit: the length unit of ``dx`` (with ``length = unit``, the matrix of a mesh in other
            units is the same).
    """
    if not (length > 0):
        raise ValueError(f"Invalid H1 length scale {length}: must be > 0")
    if space.ufl_element().discontinuous:
        raise ValueError(
            "The h1 metric needs a continuous space; this space is discontinuous "
            "(use l2, or an energy form with interior-penalty terms)"
        )
    w, z = ufl.TrialFunction(space), ufl.TestFunction(space)
    ell2 = dolfinx.fem.Constant(space.mesh, float(length) ** 2)
    form = (ufl.inner(w, z) + ell2 * ufl.inner(ufl.grad(w), ufl.grad(z))) * ufl.dx
    return _in_units(_assemble(form), space, unit)


def energy(
    space: dolfinx.fem.FunctionSpace,
    form: ufl.Form | Callable[[ufl.Argument, ufl.Argument], ufl.Form],
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    diagonal: float = 1.0,
    symmetry_tol: float = 1e-10,
) -> PETSc.Mat:
    """The matrix of a user bilinear form, checked to be symmetric. Collective; caller destroys.

    Args:
        space: the field space; the form's arguments must live on it.
        form: a bilinear UFL form on ``space × space``, or a callable ``(w, z) -> form``.
        bcs: Dirichlet conditions whose dofs are constrained. Their rows and columns are zeroed
            and ``diagonal`` is put on the diagonal: ``diagonal = 1`` measures constrained dofs in
            the Euclidean norm of their values (the metric stays definite), ``diagonal = 0``
            ignores them (a semi-metric: pair it with damping or a cut-off).
        diagonal: the diagonal entry of constrained rows (``>= 0``).
        symmetry_tol: relative tolerance of the symmetry check ``‖M − Mᵀ‖_F ≤ tol ‖M‖_F``.
    """
    if diagonal < 0:
        raise ValueError(f"Invalid diagonal {diagonal} for constrained dofs: must be >= 0")
    if callable(form) and not isinstance(form, ufl.Form):
        form = form(ufl.TrialFunction(space), ufl.TestFunction(space))
    arguments = form.arguments()
    if len(arguments) != 2:
        raise ValueError(f"The energy metric needs a bilinear form; got a {len(arguments)}-form")
    for arg in arguments:
        if arg.ufl_function_space() != space:
            raise ValueError("The energy form's arguments live on another space than the field")
    matrix = _assemble(form, bcs, diagonal)
    transpose = matrix.copy()
    transpose.transpose()
    transpose.axpy(-1.0, matrix)
    asym = transpose.norm(PETSc.NormType.FROBENIUS)
    scale = matrix.norm(PETSc.NormType.FROBENIUS)
    transpose.destroy()
    comm = space.mesh.comm
    if not asym <= symmetry_tol * max(scale, 1e-300):
        matrix.destroy()
        parallel.check_all(
            comm, False, f"The energy form is not symmetric: ‖M − Mᵀ‖/‖M‖ = {asym / scale:.2e}"
        )
    matrix.setOption(PETSc.Mat.Option.SYMMETRIC, True)
    return matrix


METRICS = {"l2": l2, "h1": h1, "energy": energy}


def assemble_metric(space: dolfinx.fem.FunctionSpace, name: str, **options: object) -> PETSc.Mat:
    """A built-in metric by name (``l2``, ``h1``, ``energy``) with its options. Caller destroys."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; choose one of {sorted(METRICS)}")
    return METRICS[name](space, **options)  # type: ignore[operator]
