"""A case's models: one per experiment, with its loads on the case's mesh.

An inverse case poses one experiment (its ``[model]`` and ``[data]``) or several (``[[experiment]]``
tables: each its own source, boundary fluxes, Dirichlet values and data files, sharing the mesh,
the model's kind and operator, and the unknown; :meth:`~natinv.cases.InverseCase.each` gives
each experiment as a case of its own). :func:`model_of` builds the model of one of them with
its Dirichlet conditions (:func:`dirichlet`), Neumann fluxes and Robin term on named or
numbered boundary tags (:func:`boundary_measure`); :func:`models_of` builds every experiment's
and lets those with the same operator share one factorisation
(:meth:`~natinv.models.base.Model.share_operator`). Synthesis uses the same builders. This
module imports no application module above it (runner, compare, CLI).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import dolfinx
import numpy as np
import ufl

from natinv import domain, expressions, models
from natinv.cases import InverseCase

__all__ = [
    "boundary_measure",
    "dirichlet",
    "interpolate",
    "model_of",
    "models_of",
    "named_tags",
    "state_space",
]


def named_tags(case: InverseCase, found: domain.Domain) -> InverseCase:
    """The case with the boundary group names of ``model.dirichlet``, the fluxes' and the Robin
    term's boundaries (the experiments' too) as the mesh's numbers."""
    source = case.source

    def fluxes(items: Any, where: str) -> Any:
        if items is None:
            return None
        return [
            (domain.resolve_tags(found, tags, f"{where}[{k}].boundary"), value)
            for k, (tags, value) in enumerate(items)
        ]

    model = case.model
    robin = model.robin
    if robin is not None:
        tags = domain.resolve_tags(found, robin[0], f"{source}: model.robin.boundary")
        robin = (tags, robin[1], robin[2])
    model = dataclasses.replace(
        model,
        dirichlet=domain.resolve_tags(found, model.dirichlet, f"{source}: model.dirichlet"),
        flux=fluxes(model.flux, f"{source}: model.flux"),
        robin=robin,
    )
    experiments = [
        dataclasses.replace(e, flux=fluxes(e.flux, f"{source}: experiment[{k}].flux"))
        for k, e in enumerate(case.experiments)
    ]
    return dataclasses.replace(case, model=model, experiments=experiments)


def dirichlet(
    case: InverseCase, space: dolfinx.fem.FunctionSpace, facets: dolfinx.mesh.MeshTags | None
) -> list[dolfinx.fem.DirichletBC]:
    """``u = model.boundary_value`` (default 0) on the facets of ``model.dirichlet``. Collective."""
    mesh = space.mesh
    where = domain.boundary_facets(
        mesh, facets, case.model.dirichlet, f"{case.source}: model.dirichlet"
    )
    dofs = dolfinx.fem.locate_dofs_topological(space, mesh.topology.dim - 1, where)
    bs = space.dofmap.index_map_bs
    if bs == 1 and case.model.boundary_value != "0":
        value = dolfinx.fem.Function(space, name="boundary value")
        interpolate(value, case.model.boundary_value, "model.boundary_value", case)
        return [dolfinx.fem.dirichletbc(value, dofs)]
    zero = np.zeros(bs) if bs > 1 else 0.0
    return [dolfinx.fem.dirichletbc(zero, dofs, space)]


def boundary_measure(
    mesh: dolfinx.mesh.Mesh, facets: dolfinx.mesh.MeshTags | None, tags: Any, where: str
) -> ufl.Measure:
    """The ``ds`` measure of the boundary tags (``"all"``: the whole boundary; each tag checked
    against the mesh's facet tags, one error naming ``where``). Collective."""
    if tags == "all":
        return ufl.Measure("ds", domain=mesh)
    domain.boundary_facets(mesh, facets, tags, where)  # (checks the tags)
    return ufl.Measure("ds", domain=mesh, subdomain_data=facets, subdomain_id=tuple(tags))


def interpolate(
    function: dolfinx.fem.Function, text: str, key: str, case: InverseCase | None = None
) -> None:
    """``function`` := the formula at the case key ``key`` (finite on the mesh, or one error
    naming the case file, the key and a point). Collective."""
    expressions.interpolate(function, text, key, where=str(case.source) if case else "")


def _heat_source(
    case: InverseCase, state: dolfinx.fem.FunctionSpace, dt: float, steps: int
) -> dolfinx.fem.Function | Callable[[Any], Any]:
    """The heat equation's source: a Function of x, or for a formula naming ``t`` the map from
    the model's time Constant to the formula's UFL expression (checked finite at every dof at
    each of the times ``0, dt, …, steps·dt`` the θ-scheme evaluates it at). Collective."""
    text = case.model.source
    if "t" not in expressions.expression_names(text):
        source = dolfinx.fem.Function(state, name="source")
        interpolate(source, text, "model.source", case)
        return source
    probe = dolfinx.fem.Function(state)
    for n in range(steps + 1):
        expressions.interpolate(
            probe,
            text,
            f"model.source (t = {n * dt:g})",
            parameters=("t",),
            values={"t": n * dt},
            where=str(case.source),
        )
    build = expressions.ufl_expression(text, "model.source", state.mesh, ("t",))
    return lambda t: build(t=t)


def _boundary_loads(
    case: InverseCase,
    state: dolfinx.fem.FunctionSpace,
    facets: dolfinx.mesh.MeshTags | None,
    shared: dict[str, Any],
) -> dict[str, Any]:
    """The diffusion model's fluxes and Robin term as keyword arguments: each flux a Function
    on the state space with its measure; the Robin coefficient one Constant in ``shared`` (the
    same object for every experiment, so that their operators can be shared)."""
    mesh = state.mesh
    loads: dict[str, Any] = {}
    fluxes = []
    for k, (tags, text) in enumerate(case.model.flux):
        key = f"model.flux[{k}]"
        q = dolfinx.fem.Function(state, name=f"flux {k}")
        interpolate(q, text, f"{key}.value", case)
        fluxes.append((q, boundary_measure(mesh, facets, tags, f"{case.source}: {key}.boundary")))
    if fluxes:
        loads["fluxes"] = fluxes
    if case.model.robin is not None:
        tags, coefficient, text = case.model.robin
        if "robin" not in shared:
            measure = boundary_measure(mesh, facets, tags, f"{case.source}: model.robin.boundary")
            shared["robin"] = (dolfinx.fem.Constant(mesh, float(coefficient)), measure)
        c, measure = shared["robin"]
        value = dolfinx.fem.Function(state, name="robin value")
        interpolate(value, text, "model.robin.value", case)
        loads["robin"], loads["boundary"] = (c, value), measure
    return loads


def model_of(
    case: InverseCase,
    state: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    facets: dolfinx.mesh.MeshTags | None,
    time_refine: int = 1,
    shared: dict[str, Any] | None = None,
) -> models.Model | models.TransientModel:
    """The case's model (of one experiment: see :meth:`~natinv.cases.InverseCase.each`), its
    solvers under the command line's ``natinv_model_`` prefix; a transient one steps
    ``model.dt / time_refine``. ``shared``: objects the experiments' models share (the Robin
    coefficient), filled by the first. Collective."""
    bcs = dirichlet(case, state, facets)
    prefix = "natinv_model_"
    # (the command line's -natinv_model_* options win)
    solver = {
        "petsc_options": {**models.ITERATIVE_OPTIONS, "ksp_rtol": case.model.rtol}
        if case.model.solver == "cg"
        else {"pc_factor_mat_solver_type": case.model.solver}
    }
    if case.model.kind == "elasticity":
        traction, measure = None, None
        if case.model.traction is not None:
            tag, value = case.model.traction
            measure = ufl.Measure("ds", domain=state.mesh, subdomain_data=facets, subdomain_id=tag)
            traction = value
        return models.elasticity(
            state,
            parameter,
            f=case.model.load,
            bcs=bcs,
            traction=traction,
            traction_measure=measure,
            poisson_ratio=case.model.poisson_ratio,
            options_prefix=prefix,
            **solver,
        )
    if case.model.kind == "heat":
        initial = dolfinx.fem.Function(state, name="initial")
        interpolate(initial, case.model.initial, "model.initial", case)
        dt, steps = case.model.dt / time_refine, case.model.steps * time_refine
        return models.heat(
            state,
            parameter,
            initial,
            dt,
            steps,
            f=_heat_source(case, state, dt, steps),
            bcs=bcs,
            coefficient=case.model.coefficient,
            scheme=case.model.scheme,
            memory=int(case.model.memory * 2**20),
            options_prefix=prefix,
            **solver,
        )
    source = dolfinx.fem.Function(state, name="source")
    interpolate(source, case.model.source, "model.source", case)
    if case.model.kind == "source":
        return models.source(
            state, parameter, kappa=source, bcs=bcs, options_prefix=prefix, **solver
        )
    if case.model.kind == "reaction":
        return models.reaction(
            state,
            parameter,
            diffusion=case.model.diffusion,
            f=source,
            bcs=bcs,
            options_prefix=prefix,
            **solver,
        )
    if case.model.kind == "diffusion":
        return models.diffusion(
            state,
            parameter,
            f=source,
            bcs=bcs,
            coefficient=case.model.coefficient,
            options_prefix=prefix,
            **solver,
            **_boundary_loads(case, state, facets, {} if shared is None else shared),
        )
    return models.nonlinear_diffusion(
        state, parameter, f=source, bcs=bcs, options_prefix=prefix, **solver
    )


def models_of(
    case: InverseCase,
    state: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    facets: dolfinx.mesh.MeshTags | None,
    time_refine: int = 1,
) -> list[models.Model | models.TransientModel]:
    """The model of every experiment (:meth:`~natinv.cases.InverseCase.each`); with several,
    each named after its experiment and solving with the first one's operator and factors
    (the loads differ, the operator does not). Collective."""
    shared: dict[str, Any] = {}
    built: list[Any] = []
    try:
        for view in case.each():
            model = model_of(view, state, parameter, facets, time_refine, shared)
            built.append(model)
            if len(case.experiments) > 1:
                model.name = view.name
                if len(built) > 1:
                    model.share_operator(built[0])
    except BaseException:
        for model in built:
            model.destroy()
        raise
    return built


def state_space(
    case: InverseCase, mesh: dolfinx.mesh.Mesh, degree: int
) -> dolfinx.fem.FunctionSpace:
    if case.model.kind == "elasticity":
        return dolfinx.fem.functionspace(mesh, ("Lagrange", degree, (mesh.geometry.dim,)))
    return dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
