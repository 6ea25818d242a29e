"""Built-in models, each a residual form on top of :class:`~natinv.models.base.Model`.

=========================  ==================================================  ================
model                      equation (weak form ``F(u, m; v) = 0``)             parameter ``m``
=========================  ==================================================  ================
:func:`diffusion`          ``−∇·(m ∇u) = f``                                   coefficient > 0
:func:`source`             ``−∇·(κ ∇u) = m``                                   source
:func:`elasticity`         ``−∇·σ(u) = f``, ``σ = 2μ(m) ε(u) + λ(m) tr ε(u) I``   Young's modulus
:func:`nonlinear_diffusion` ``−∇·(m (1 + u²) ∇u) = f``                         coefficient > 0
:func:`reaction`           ``λ Δu − m u = f``                                  reaction > 0
=========================  ==================================================  ================

Each takes the state space, the parameter Function, a source ``f`` (a number, a UFL expression of
the mesh coordinates, or a Function), the Dirichlet conditions (default: ``u = 0`` on the whole
boundary, see :func:`dirichlet`), an optional Neumann flux ``g`` on the boundary, and the keyword
arguments of :class:`~natinv.models.base.Model`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import numpy.typing as npt
import ufl

from natinv import parallel
from natinv.models.base import Model

__all__ = [
    "diffusion",
    "dirichlet",
    "elasticity",
    "nonlinear_diffusion",
    "positive",
    "reaction",
    "rigid_body_modes",
    "source",
]

Data = float | ufl.core.expr.Expr | Sequence[float]


def dirichlet(
    space: dolfinx.fem.FunctionSpace,
    value: float | Sequence[float] = 0.0,
    where: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]] | None = None,
) -> dolfinx.fem.DirichletBC:
    """``u = value`` on the boundary facets (all, or those whose midpoints satisfy ``where``,
    a function of ``x (3, n)`` returning booleans)."""
    mesh = space.mesh
    fdim = mesh.topology.dim - 1
    mesh.topology.create_connectivity(fdim, mesh.topology.dim)
    if where is None:
        facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    else:
        facets = dolfinx.mesh.locate_entities_boundary(mesh, fdim, where)
    dofs = dolfinx.fem.locate_dofs_topological(space, fdim, facets)
    bs = space.dofmap.index_map_bs
    constant = np.full(bs, value, dtype=np.float64) if np.ndim(value) == 0 and bs > 1 else value
    return dolfinx.fem.dirichletbc(np.asarray(constant, dtype=np.float64), dofs, space)


def positive(what: str) -> Callable[[dolfinx.fem.Function], str | None]:
    """A parameter check: ``m > 0`` at every dof (one verdict on all ranks)."""

    def check(m: dolfinx.fem.Function) -> str | None:
        owned = m.function_space.dofmap.index_map.size_local * m.function_space.dofmap.index_map_bs
        values = m.x.array[:owned]
        low = -parallel.allreduce_max(
            m.function_space.mesh.comm, float(-values.min(initial=np.inf))
        )
        bad = parallel.allreduce_sum(m.function_space.mesh.comm, float(np.sum(values <= 0)))
        if bad:
            return (
                f"{what} must be > 0, but is ≤ 0 at {int(bad)} dof(s) (min {low:.3g}); use a "
                "positive output transform (exp, softplus) or bounds"
            )
        return None

    return check


def _expr(mesh: dolfinx.mesh.Mesh, value: Data) -> Any:
    if isinstance(value, int | float):
        return dolfinx.fem.Constant(mesh, float(value))
    if isinstance(value, list | tuple):
        return dolfinx.fem.Constant(mesh, np.asarray(value, dtype=np.float64))
    return value


def _bcs(space: dolfinx.fem.FunctionSpace, bcs: Sequence[dolfinx.fem.DirichletBC] | None) -> list:
    return [dirichlet(space)] if bcs is None else list(bcs)


def _diffusion_form(
    mesh: dolfinx.mesh.Mesh,
    f: Data,
    flux: Data | None,
    coefficient: str,
    robin: tuple[Data, Data] | None = None,
    boundary: ufl.Measure | None = None,
    fluxes: Sequence[tuple[Data, ufl.Measure]] = (),
) -> Callable[..., ufl.Form]:
    """``(u, m, v[, t]) -> (κ∇u, ∇v) − (f, v) − (flux, v)_Γ + (c (u − g), v)_Γ − Σ_i (q_i,
    v)_Γi`` with ``κ = m`` or ``exp(m)``, ``robin = (c, g)`` and ``fluxes = [(q_i, ds_i)]``,
    Γ the ``boundary`` measure (default the whole boundary): the residual of
    :func:`diffusion` and of the heat equation's space part. ``f`` may be a function
    ``t -> UFL expression`` of the time (a Constant the transient model sets)."""
    if coefficient not in ("identity", "exp"):
        raise ValueError(f"Unknown coefficient map {coefficient!r}; use 'identity' or 'exp'")
    timed = callable(f) and not isinstance(f, ufl.core.expr.Expr)
    source_term, g = None if timed else _expr(mesh, f), None if flux is None else _expr(mesh, flux)
    c, outside = (None, None) if robin is None else (_expr(mesh, robin[0]), _expr(mesh, robin[1]))
    ds = boundary if boundary is not None else ufl.ds
    parts = [(_expr(mesh, q), measure) for q, measure in fluxes]

    def residual(u, m, v, t=None):  # type: ignore[no-untyped-def]
        kappa = ufl.exp(m) if coefficient == "exp" else m
        if timed and t is None:
            raise ValueError("a source that depends on the time needs a transient model (heat)")
        source = f(t) if timed else source_term
        form = ufl.inner(kappa * ufl.grad(u), ufl.grad(v)) * ufl.dx - source * v * ufl.dx
        if g is not None:
            form = form - g * v * ds
        if c is not None:
            form = form + c * u * v * ds - c * outside * v * ds
        for q, measure in parts:
            form = form - q * v * measure
        return form

    return residual


def _determined(
    space: dolfinx.fem.FunctionSpace, bcs: Sequence[dolfinx.fem.DirichletBC], what: str
) -> None:
    """Refuse a state that the conditions leave undetermined (a pure-Neumann problem: no
    Dirichlet dof anywhere and no Robin term), on every rank. Collective."""
    owned = 0
    for bc in bcs:
        _, first_ghost = bc.dof_indices()
        owned += int(first_ghost)
    if parallel.allreduce_sum(space.mesh.comm, owned) == 0:
        raise ValueError(
            f"{what}: no Dirichlet condition and no Robin term: the state is determined only up "
            "to a constant (a pure-Neumann problem, its operator singular); fix u somewhere "
            "(Dirichlet tags) or add a Robin term"
        )


def diffusion(
    space: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    f: Data = 1.0,
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    flux: Data | None = None,
    coefficient: str = "identity",
    robin: tuple[Data, Data] | None = None,
    boundary: ufl.Measure | None = None,
    fluxes: Sequence[tuple[Data, ufl.Measure]] = (),
    **options: Any,
) -> Model:
    """``−∇·(κ ∇u) = f`` with ``κ = m > 0`` (checked), or ``κ = exp(m)`` for
    ``coefficient="exp"`` (the parameter is log κ); on the ``boundary`` (a ``ds`` measure,
    default the whole boundary; a Dirichlet condition overrides it where set)
    ``κ ∇u·n + c (u − g) = flux`` with ``robin = (c, g)`` (or without the Robin term), and
    ``κ ∇u·n = q_i`` more on the parts of the boundary ``fluxes = [(q_i, ds_i)]`` name (fluxes
    on tagged facets: ``ufl.Measure("ds", mesh, subdomain_data=tags, subdomain_id=...)``).
    Models that differ only in ``f``, the fluxes, ``g`` and the Dirichlet values can share one
    operator (:meth:`~natinv.models.base.Model.share_operator`) when given the same Robin ``c``
    object (a dolfinx Constant or Function).
    ``bcs`` default: u = 0 on the whole boundary; ``bcs=[]`` with no Robin term (a
    pure-Neumann problem, the state only determined up to a constant) is refused.

    Raises:
        ValueError: on every rank, for a pure-Neumann problem.
    """
    residual = _diffusion_form(space.mesh, f, flux, coefficient, robin, boundary, fluxes)
    conditions = _bcs(space, bcs)
    if robin is None:
        _determined(space, conditions, options.get("name", "diffusion"))
    if coefficient == "identity":
        options.setdefault("check", positive("the diffusion coefficient"))
    options.setdefault("name", "diffusion")
    return Model(space, parameter, residual, conditions, **options)


def source(
    space: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    kappa: Data = 1.0,
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    **options: Any,
) -> Model:
    """``−∇·(κ ∇u) = m``: identify a source from the state."""
    k = _expr(space.mesh, kappa)

    def residual(u, m, v):  # type: ignore[no-untyped-def]
        return ufl.inner(k * ufl.grad(u), ufl.grad(v)) * ufl.dx - m * v * ufl.dx

    options.setdefault("name", "source")
    conditions = _bcs(space, bcs)
    _determined(space, conditions, options["name"])
    return Model(space, parameter, residual, conditions, **options)


def elasticity(
    space: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    f: Data | None = None,
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    traction: Data | None = None,
    poisson_ratio: float = 0.3,
    traction_measure: ufl.Measure | None = None,
    **options: Any,
) -> Model:
    """Linear elasticity with a Young's-modulus field ``E = m > 0`` (checked) and Poisson ratio
    ν: ``−∇·σ(u) = f``, ``σ n = traction`` on ``traction_measure`` (default the whole boundary;
    a Dirichlet condition overrides it where set). Vector state."""
    mesh = space.mesh
    gdim = mesh.geometry.dim
    if not (-1.0 < poisson_ratio < 0.5):
        raise ValueError(f"Invalid Poisson ratio {poisson_ratio}: must lie in (−1, 0.5)")
    nu = poisson_ratio
    body = _expr(mesh, f if f is not None else [0.0] * gdim)
    t = None if traction is None else _expr(mesh, traction)

    def residual(u, m, v):  # type: ignore[no-untyped-def]
        mu = m / (2 * (1 + nu))
        lmbda = m * nu / ((1 + nu) * (1 - 2 * nu))
        eps = ufl.sym(ufl.grad(u))
        sigma = 2 * mu * eps + lmbda * ufl.tr(eps) * ufl.Identity(gdim)
        form = ufl.inner(sigma, ufl.sym(ufl.grad(v))) * ufl.dx - ufl.inner(body, v) * ufl.dx
        ds = traction_measure if traction_measure is not None else ufl.ds
        return form - ufl.inner(t, v) * ds if t is not None else form

    options.setdefault("check", positive("Young's modulus"))
    options.setdefault("name", "elasticity")
    options.setdefault("near_nullspace", rigid_body_modes)
    return Model(space, parameter, residual, _bcs(space, bcs), **options)


def rigid_body_modes(space: dolfinx.fem.FunctionSpace) -> list[PETSc.Vec]:
    """The rigid-body displacements of a vector space (2D: two translations and a rotation;
    3D: three and three), orthonormalised: the near-nullspace of elasticity that algebraic
    multigrid coarsens with. New vectors (the caller destroys them). Collective."""
    gdim = space.mesh.geometry.dim
    index_map = space.dofmap.index_map
    owned = index_map.size_local
    x = space.tabulate_dof_coordinates()[:owned]
    modes: list[PETSc.Vec] = []
    rotations = [(0, 1)] if gdim == 2 else [(0, 1), (1, 2), (2, 0)]
    for k in range(gdim + len(rotations)):
        vector = dolfinx.fem.petsc.create_vector(space)
        values = np.zeros((owned, gdim))
        if k < gdim:
            values[:, k] = 1.0
        else:
            i, j = rotations[k - gdim]
            values[:, i], values[:, j] = -x[:, j], x[:, i]
        vector.array[: owned * gdim] = values.ravel()
        for previous in modes:  # (modified Gram–Schmidt)
            vector.axpy(-vector.dot(previous), previous)
        vector.scale(1.0 / vector.norm())
        modes.append(vector)
    return modes


def nonlinear_diffusion(
    space: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    f: Data = 1.0,
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    **options: Any,
) -> Model:
    """``−∇·(m (1 + u²) ∇u) = f`` with ``m > 0`` (checked), solved by Newton."""
    source_term = _expr(space.mesh, f)

    def residual(u, m, v):  # type: ignore[no-untyped-def]
        return (
            ufl.inner(m * (1 + u**2) * ufl.grad(u), ufl.grad(v)) * ufl.dx - source_term * v * ufl.dx
        )

    options.setdefault("check", positive("the diffusion coefficient"))
    options.setdefault("name", "nonlinear-diffusion")
    conditions = _bcs(space, bcs)
    _determined(space, conditions, options["name"])
    return Model(space, parameter, residual, conditions, **options)


def reaction(
    space: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    diffusion: float = 1.0,
    f: Data = 1.0,
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    **options: Any,
) -> Model:
    """``λ Δu − k u = f`` with the reaction coefficient ``k = m > 0`` (checked) and a constant
    ``λ = diffusion > 0``: the diffusion–reaction problem of the gPINN benchmark (Yu, Lu, Meng &
    Karniadakis 2022, Comput. Methods Appl. Mech. Engrg. 393). Weak form ``λ(∇u, ∇v) + (k u, v)
    + (f, v) = 0``."""
    if not (np.isfinite(diffusion) and diffusion > 0):
        raise ValueError(f"Invalid diffusion λ = {diffusion}: must be > 0")
    source_term = _expr(space.mesh, f)
    lam = dolfinx.fem.Constant(space.mesh, float(diffusion))

    def residual(u, m, v):  # type: ignore[no-untyped-def]
        form = lam * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx + m * u * v * ufl.dx
        return form + source_term * v * ufl.dx

    options.setdefault("check", positive("the reaction coefficient"))
    options.setdefault("name", "reaction")
    return Model(space, parameter, residual, _bcs(space, bcs), **options)
