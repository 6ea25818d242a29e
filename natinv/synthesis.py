"""Synthetic measurements: data made from a known field on a finer discretisation.

Two entry points. :func:`synthesize_case` writes a case's own measurement files from its
``parameter.truth``: the case mesh (a built-in one: of ``synthesize.cells`` if given, a finer
mesh not nested in it) refined ``synthesize.refine`` times (cell and facet tags carried to the
children), state and parameter of degree ``synthesize.degree``, point sensors by
``synthesize.layout``, averages over the physical groups matching ``synthesize.regions``, or a
full field on the case's nodes, with seeded noise σ = ``synthesize.noise``·max|data| (full
fields: drawn per mesh node, the same on any number of ranks). :func:`synthesize` (``natinv
synthesize --truth ...``) solves a built-in model on its own unit-square mesh (64 × 64, P2 by
default: finer than a typical inversion, so the data do not share its discretisation error —
no "inverse crime") and samples the state at sensors from :func:`sensor_layout`.
Imports no application module above it (runner, compare, CLI).
"""

from __future__ import annotations

import dataclasses
import gc
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpi4py import MPI

import dolfinx
import dolfinx.io
import numpy as np
import numpy.typing as npt

from natinv import domain, expressions, models, parallel
from natinv.boundary import constrained_dofs
from natinv.cases import Case, CaseError, InverseCase
from natinv.data import SensorData, read_sensors, write_sensors
from natinv.expressions import compile_expression
from natinv.observations import locate_points, point_values
from natinv.problems.experiments import (
    dirichlet,
    interpolate,
    model_of,
    models_of,
    named_tags,
    state_space,
)
from natinv.problems.inverse import regions

__all__ = ["MODELS", "sensor_layout", "synthesize", "synthesize_case"]


MODELS: dict[str, Callable[..., models.Model]] = {
    "diffusion": models.diffusion,
    "source": models.source,
    "nonlinear-diffusion": models.nonlinear_diffusion,
}


def sensor_layout(comm: MPI.Comm, spec: str, seed: int = 0, jitter: float = 0.0) -> np.ndarray:
    """Sensor coordinates in the unit square from ``grid:NxM`` (cell centres of an N × M grid,
    moved by up to ``jitter`` in each direction), ``random:N`` (uniform in [0.05, 0.95]²) or
    the coordinates of a sensor CSV file. The same on every rank."""
    rng = np.random.default_rng(seed)
    if match := re.fullmatch(r"grid:(\d+)x(\d+)", spec):
        nx, ny = int(match[1]), int(match[2])
        xs, ys = (np.arange(nx) + 0.5) / nx, (np.arange(ny) + 0.5) / ny
        points = np.array([[x, y] for x in xs for y in ys])
        return points + rng.uniform(-jitter, jitter, points.shape)
    if match := re.fullmatch(r"random:(\d+)", spec):
        return 0.05 + 0.9 * rng.random((int(match[1]), 2))
    if spec.endswith(".csv"):
        return read_sensors(comm, spec, 2).points
    raise ValueError(
        f"Unknown sensor layout {spec!r}: use grid:NxM, random:N or a .csv file of sensors"
    )


def synthesize(
    comm: MPI.Comm,
    model: str,
    truth: str,
    points: npt.ArrayLike,
    *,
    source: str = "1",
    cells: int = 64,
    degree: int = 2,
    noise: float = 0.01,
    relative: bool = True,
    seed: int = 0,
) -> SensorData:
    """Noisy point data of ``model`` on the unit square (``u = 0`` on the boundary) for the
    true parameter ``truth`` (a formula of x, y). ``noise`` is σ, or σ / max|u| at the
    sensors when ``relative``. Collective; the same result on every rank."""
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {sorted(MODELS)}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"Invalid noise level {noise}: must be >= 0")
    if cells < 1 or degree < 1:
        raise ValueError(f"Invalid discretisation: cells = {cells}, degree = {degree}")
    compile_expression(truth, "truth")  # syntax errors before the mesh is made
    compile_expression(source, "source")
    mesh = dolfinx.mesh.create_unit_square(comm, cells, cells)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
    parameter = dolfinx.fem.Function(space, name="truth")
    expressions.interpolate(parameter, truth, "truth")
    f = dolfinx.fem.Function(space, name="source")
    expressions.interpolate(f, source, "source")
    option = "kappa" if model == "source" else "f"
    forward = MODELS[model](space, parameter, **{option: f})
    values = point_values(forward.solve(), points)
    forward.destroy()
    scale = float(np.abs(values).max()) if relative else 1.0
    sigma = noise * scale
    noisy = values + sigma * np.random.default_rng(seed).standard_normal(values.size)
    array = np.asarray(points, dtype=np.float64)
    return SensorData(
        points=array,
        values=noisy,
        sigma=np.full(values.size, sigma) if sigma > 0 else None,
        experiment=None,
        lines=np.arange(2, values.size + 2),
    )


def _layout(
    mesh: dolfinx.mesh.Mesh, spec: str, seed: int, base: Path | None = None
) -> npt.NDArray[np.float64]:
    """Sensor points inside the mesh: ``random:N`` (uniform in the domain, by rejection),
    ``grid:NxM`` (``NxMxK`` in 3D: cell centres of a grid over the bounding box, those inside
    kept) or the points of a sensor CSV file (relative to ``base``; each checked inside)."""
    comm, gdim = mesh.comm, mesh.geometry.dim
    if spec.endswith(".csv"):
        path = (base or Path()) / spec
        points = read_sensors(comm, path, gdim).points
        locate_points(mesh, points, str(path))  # (one error naming any outside)
        return points
    x = mesh.geometry.x[:, :gdim]
    corners = comm.allgather((x.min(axis=0), x.max(axis=0)))
    lo = np.min([c[0] for c in corners], axis=0)
    hi = np.max([c[1] for c in corners], axis=0)
    rng = np.random.default_rng(seed)
    parts = spec.split(":")
    counts = parts[1].split("x") if len(parts) == 2 else []
    if parts[0] == "random" and len(parts) == 2 and parts[1].isdigit():
        wanted = int(parts[1])
        candidates = lo + (hi - lo) * (0.02 + 0.96 * rng.random((8 * wanted + 16, gdim)))
    elif parts[0] == "grid" and len(counts) == gdim and all(c.isdigit() for c in counts):
        axes = [
            lo[k] + (hi - lo)[k] * (np.arange(int(n)) + 0.5) / int(n) for k, n in enumerate(counts)
        ]
        candidates = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, gdim)
        wanted = candidates.shape[0]
    else:
        grid = "x".join("NMK"[:gdim])
        raise CaseError(f"synthesize.layout: expected random:N or grid:{grid}, got {spec!r}")
    padded = np.zeros((candidates.shape[0], 3))
    padded[:, :gdim] = candidates
    send = padded if comm.rank == 0 else np.zeros((0, 3))
    owners = dolfinx.geometry.determine_point_ownership(mesh, send, 1e-12).src_owner
    owners = comm.bcast(np.asarray(owners) if comm.rank == 0 else None, root=0)
    inside = candidates[owners >= 0]
    return inside[:wanted]


def _node_noise(space: dolfinx.fem.FunctionSpace, seed: int) -> npt.NDArray[np.float64]:
    """Standard normal values at the local dofs of a P1 space, drawn per mesh node in the
    mesh's input numbering: the same noise whatever the number of ranks. Collective."""
    mesh = space.mesh
    bs = space.dofmap.index_map_bs
    nodes = mesh.geometry.index_map().size_global
    local = space.dofmap.index_map.size_local + space.dofmap.index_map.num_ghosts
    inputs = np.empty(local, dtype=np.int64)
    # P1 dofs and first-order geometry nodes share the reference cell's vertex order
    inputs[space.dofmap.list] = mesh.geometry.input_global_indices[mesh.geometry.dofmaps[0]]
    return parallel.stream_rows(np.random.default_rng(seed), nodes, bs, inputs).reshape(-1)


def _synthesize_field(case: InverseCase, comm: MPI.Comm) -> SensorData:
    """Full-field data on the case's own mesh (its nodes are the data points), from a state of
    degree ``synthesize.degree`` (above the inversion's), with noise σ = ``noise``·max|u| at
    the nodes off the Dirichlet boundary; written as XDMF (P1 node data)."""
    assert case.data.field is not None and case.parameter.truth is not None
    found = domain.load_domain(comm, case.mesh, case.source)
    case = named_tags(case, found)
    mesh, facets = found.mesh, found.facets
    state = state_space(case, mesh, case.synthesize.degree)
    parameter = dolfinx.fem.Function(
        dolfinx.fem.functionspace(mesh, ("Lagrange", case.synthesize.degree))
    )
    interpolate(parameter, case.parameter.truth, "parameter.truth", case)
    model = model_of(case, state, parameter, facets)
    u = model.solve()
    p1 = state_space(case, mesh, 1)
    data = dolfinx.fem.Function(p1, name="u")
    data.interpolate(u)
    model.destroy()
    owned = p1.dofmap.index_map.size_local * p1.dofmap.index_map_bs
    top = comm.allreduce(float(np.abs(data.x.array[:owned]).max(initial=0.0)), op=MPI.MAX)
    sigma = case.synthesize.noise * top
    fixed, _ = constrained_dofs(dirichlet(case, p1, facets), data.x.array.size, owned)
    free = ~fixed
    data.x.array[:owned] += sigma * _node_noise(p1, case.seed + 1)[:owned] * free
    data.x.scatter_forward()
    target = case.data.field
    parallel.on_rank0(
        comm, f"{target}: cannot write", lambda: target.parent.mkdir(parents=True, exist_ok=True)
    )
    with dolfinx.io.XDMFFile(comm, case.data.field, "w") as xdmf:
        xdmf.write_mesh(mesh)
        xdmf.write_function(data, 0.0)
    return SensorData(
        points=np.zeros((0, 2)),
        values=np.zeros(0),
        sigma=np.full(1, sigma),
        experiment=None,
        lines=np.zeros(0, dtype=np.int64),
        source=str(case.data.field),
    )


def synthesize_case(
    case: Case, comm: MPI.Comm = MPI.COMM_WORLD, *, force: bool = False
) -> list[SensorData]:
    """Write the case's measurement files from its true field: the case mesh refined
    ``synthesize.refine`` times, state and parameter of degree ``synthesize.degree``; point
    sensors by ``synthesize.layout`` and/or averages over the physical groups matching
    ``synthesize.regions``; noise σ = ``synthesize.noise``·max|data|, seeded by the case's seed.
    Existing files are overwritten only with ``force``. Returns what was written. Collective.

    Raises:
        CaseError: a forward case, no ``[synthesize]`` table or no ``parameter.truth``, or an
            existing data file without ``force``.
    """
    if not isinstance(case, InverseCase):
        raise CaseError(
            f"{case.source}: synthesize: a {case.problem!r} case has no measurements to make"
        )
    if not case.synthesize.given:
        raise CaseError(
            f"{case.source}: synthesize: the case has no [synthesize] table saying how its data "
            "were made (layout, refine, degree, noise); add one"
        )
    if case.parameter.truth is None:
        raise CaseError(f"{case.source}: parameter.truth: needed to synthesize data")
    targets = [
        t
        for view in case.each()
        for t in (view.data.sensors, view.data.averages, view.data.field)
        if t
    ]
    if case.data.field is not None:
        targets.append(case.data.field.with_suffix(".h5"))
    existing = parallel.on_rank0(
        comm, str(case.source), lambda: [str(t) for t in targets if t.exists()], share=True
    )
    if existing and not force:
        raise CaseError(
            f"{case.source}: synthesize: {', '.join(existing)} exist(s); pass --force to "
            "overwrite measurement files"
        )
    if case.data.field is not None:
        return [_synthesize_field(case, comm)]
    data_mesh = case.mesh
    if case.synthesize.cells is not None:  # (a built-in mesh of more cells)
        data_mesh = dataclasses.replace(case.mesh, cells=list(case.synthesize.cells))
    found = domain.load_domain(comm, data_mesh, case.source)
    case = named_tags(case, found)
    mesh, facets, cells = found.mesh, found.facets, found.cells
    # the coarser meshes stay alive while the refined one is in use (freeing them made the
    # parallel solve on the refined mesh crash)
    ancestors = []
    for _ in range(case.synthesize.refine):
        ancestors.append((mesh, facets, cells))
        tdim = mesh.topology.dim
        mesh.topology.create_entities(1)
        option = dolfinx.mesh.RefinementOption.parent_cell_and_facet
        if tdim == 1:  # (DOLFINx has no parent facets in 1D: the ends are found by place)
            option = dolfinx.mesh.RefinementOption.parent_cell
        refined, parent_cell, parent_facet = dolfinx.mesh.refine(mesh, option=option)
        refined.topology.create_entities(1)
        if tdim > 1:
            refined.topology.create_connectivity(1, 2)
        if facets is not None and tdim == 1:
            facets = _child_point_tags(facets, mesh, refined)
        elif facets is not None:
            facets = _child_facet_tags(facets, mesh, refined, parent_cell, parent_facet)
        if cells is not None:
            cells = _child_cell_tags(cells, mesh, refined, parent_cell)
        mesh = refined
    written = _synthesize_on(case, domain.Domain(mesh, facets, cells, found.groups))
    # free the meshes finest first: a coarse mesh released before its refinement made the
    # 2-rank process abort when the refined one was freed
    del found, mesh, facets, cells
    gc.collect()
    while ancestors:
        ancestors.pop()
        gc.collect()
    return written


def _synthesize_on(case: InverseCase, fine: domain.Domain) -> list[SensorData]:
    """The true state on ``fine`` and the case's point and region data from it."""
    assert case.parameter.truth is not None
    degree = case.synthesize.degree
    state = state_space(case, fine.mesh, degree)
    parameter = dolfinx.fem.Function(dolfinx.fem.functionspace(fine.mesh, ("Lagrange", degree)))
    interpolate(parameter, case.parameter.truth, "parameter.truth", case)
    if case.model.transient:
        return _synthesize_series(case, fine, state, parameter)
    written = []
    built = models_of(case, state, parameter, fine.facets)
    try:
        for k, (view, model) in enumerate(zip(case.each(), built, strict=True)):
            assert isinstance(model, models.Model)
            u = model.solve()
            if view.data.sensors is not None:
                written.append(_synthesize_points(view, fine.mesh, u, 1 + 2 * k))
            if view.data.averages is not None:
                written.append(_synthesize_averages(view, fine, u, 2 + 2 * k))
    finally:
        for model in built:
            model.destroy()
    return written


def _synthesize_series(
    case: InverseCase,
    fine: domain.Domain,
    state: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
) -> list[SensorData]:
    """Time series of a transient case: the true trajectory with steps of ``model.dt /
    synthesize.time_refine``, read ``synthesize.times`` times, equally spaced in (0, T] (on
    the fine steps), at the sensors and/or over the regions; rows sensor by sensor."""
    model = model_of(case, state, parameter, fine.facets, case.synthesize.time_refine)
    assert isinstance(model, models.TransientModel)
    count = case.synthesize.times
    wanted = {round(k * model.steps / count): k for k in range(1, count + 1)}
    times = np.array(sorted(model.dt * n for n in wanted))
    comm, sensors, averages = fine.mesh.comm, case.data.sensors, case.data.averages
    points = _layout(fine.mesh, case.synthesize.layout, case.seed) if sensors else None
    names, measures = [], []
    if averages is not None:
        names, measures = _regions_to_average(case, fine)
    point_series, region_series = [], []
    for n, _ in model.solve():
        if n not in wanted:
            continue
        if points is not None:
            point_series.append(point_values(model.u, points))
        if measures:
            region_series.append(_means(fine.mesh, model.u, measures))
    model.destroy()
    written = []
    if points is not None and sensors is not None:
        values = np.array(point_series).T.reshape(-1)  # sensor-major
        noisy, sigma = _noisy(case, values, 1)
        data = SensorData(
            points=np.repeat(points, times.size, axis=0),
            values=noisy,
            sigma=sigma,
            experiment=None,
            lines=np.arange(2, values.size + 2),
            source=str(sensors),
            time=np.tile(times, points.shape[0]),
        )
        write_sensors(comm, sensors, data)
        written.append(data)
    if measures and averages is not None:
        values = np.array(region_series).T.reshape(-1)
        noisy, sigma = _noisy(case, values, 2)
        data = SensorData(
            points=np.zeros((values.size, 0)),
            values=noisy,
            sigma=sigma,
            experiment=None,
            lines=np.arange(2, values.size + 2),
            source=str(averages),
            region=np.repeat(np.array(names), times.size),
            time=np.tile(times, len(names)),
        )
        write_sensors(comm, averages, data)
        written.append(data)
    return written


def _parents(
    child: dolfinx.mesh.Mesh, parent_cell: npt.NDArray[np.int32]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """The owned cells of a refined mesh and the rows of ``refine``'s parent arrays that
    describe them (those arrays follow the cells' original, rank-contiguous numbering)."""
    owned = child.topology.index_map(child.topology.dim).size_local
    offset = child.comm.exscan(len(parent_cell)) or 0
    rows = np.asarray(child.topology.original_cell_index)[:owned].astype(np.int64) - offset
    return np.arange(owned, dtype=np.int32), rows


def _child_cell_tags(
    tags: dolfinx.mesh.MeshTags,
    parent: dolfinx.mesh.Mesh,
    child: dolfinx.mesh.Mesh,
    parent_cell: npt.NDArray[np.int32],
) -> dolfinx.mesh.MeshTags:
    """Cell tags of a refined mesh: each (owned) child cell takes its parent's tag."""
    tdim = parent.topology.dim
    imap = parent.topology.index_map(tdim)
    by_cell = np.full(imap.size_local + imap.num_ghosts, -1, dtype=np.int32)
    by_cell[tags.indices] = tags.values
    cells, rows = _parents(child, parent_cell)
    values = by_cell[np.asarray(parent_cell)[rows]]
    keep = values >= 0
    return dolfinx.mesh.meshtags(child, tdim, cells[keep], values[keep])


def _child_point_tags(
    tags: dolfinx.mesh.MeshTags, parent: dolfinx.mesh.Mesh, child: dolfinx.mesh.Mesh
) -> dolfinx.mesh.MeshTags:
    """Facet (point) tags of a refined interval mesh: a child vertex at a tagged parent
    vertex's place takes its tag. Collective."""
    comm = parent.comm
    parent.topology.create_connectivity(0, 1)
    places = parent.geometry.x[dolfinx.mesh.entities_to_geometry(parent, 0, tags.indices), 0]
    known = np.concatenate(comm.allgather(np.column_stack([places.reshape(-1), tags.values])))
    child.topology.create_connectivity(0, 1)
    vertices = np.arange(child.topology.index_map(0).size_local, dtype=np.int32)
    x = child.geometry.x[dolfinx.mesh.entities_to_geometry(child, 0, vertices), 0].reshape(-1)
    extent = max(float(np.ptp(known[:, 0])) if known.size else 1.0, 1.0)
    found, values = [], []
    for vertex, place in zip(vertices, x, strict=True):
        match = np.where(np.abs(known[:, 0] - place) <= 1e-12 * extent)[0]
        if match.size:
            found.append(vertex)
            values.append(int(known[match[0], 1]))
    return dolfinx.mesh.meshtags(
        child, 0, np.asarray(found, dtype=np.int32), np.asarray(values, dtype=np.int32)
    )


def _child_facet_tags(
    tags: dolfinx.mesh.MeshTags,
    parent: dolfinx.mesh.Mesh,
    child: dolfinx.mesh.Mesh,
    parent_cell: npt.NDArray[np.int32],
    parent_facet: npt.NDArray[np.int8],
) -> dolfinx.mesh.MeshTags:
    """Facet tags of a refined simplex mesh: a child facet lying on a tagged parent facet takes
    its tag. (``dolfinx.mesh.transfer_meshtag`` corrupted memory for facets on 2 ranks.)"""
    tdim = parent.topology.dim
    fdim = tdim - 1
    for mesh in (parent, child):
        mesh.topology.create_connectivity(tdim, fdim)
    imap = parent.topology.index_map(fdim)
    by_facet = np.full(imap.size_local + imap.num_ghosts, -1, dtype=np.int32)
    by_facet[tags.indices] = tags.values
    per_cell = tdim + 1
    parent_facets = parent.topology.connectivity(tdim, fdim).array.reshape(-1, per_cell)
    child_facets = child.topology.connectivity(tdim, fdim).array.reshape(-1, per_cell)
    cells, rows = _parents(child, parent_cell)
    parents = np.asarray(parent_cell)[rows]
    local = np.asarray(parent_facet).reshape(-1, per_cell)[rows].astype(np.int64)
    # child facet j of cell i lies on facet local[i, j] of the parent cell (-1: inside it)
    i, j = np.nonzero(local >= 0)
    tag = by_facet[parent_facets[parents[i], local[i, j]]]
    found = child_facets[cells[i], j]
    facets, first = np.unique(found[tag >= 0], return_index=True)
    return dolfinx.mesh.meshtags(
        child, fdim, facets.astype(np.int32), tag[tag >= 0][first].astype(np.int32)
    )


def _noisy(case: InverseCase, values: npt.NDArray[np.float64], stream: int) -> tuple[Any, Any]:
    """Values with seeded Gaussian noise σ = ``synthesize.noise``·max|values|, and σ."""
    sigma = case.synthesize.noise * float(np.abs(values).max())
    rng = np.random.default_rng(case.seed + stream)
    return values + sigma * rng.standard_normal(values.size), np.full(values.size, sigma)


def _synthesize_points(
    case: InverseCase, mesh: dolfinx.mesh.Mesh, u: dolfinx.fem.Function, stream: int = 1
) -> SensorData:
    assert case.data.sensors is not None
    points = _layout(mesh, case.synthesize.layout, case.seed, Path(case.source).parent)
    values = point_values(u, points)
    component = None
    if values.ndim == 2:  # a vector state: one row per sensor and component
        bs = values.shape[1]
        component = np.tile(np.arange(bs), points.shape[0])
        points = np.repeat(points, bs, axis=0)
        values = values.reshape(-1)
    noisy, sigma = _noisy(case, values, stream)
    data = SensorData(
        points=points,
        values=noisy,
        sigma=sigma,
        experiment=None,
        lines=np.arange(2, values.size + 2),
        source=str(case.data.sensors),
        component=component,
    )
    write_sensors(mesh.comm, case.data.sensors, data)
    return data


def _regions_to_average(case: InverseCase, found: domain.Domain) -> tuple[list[str], list[Any]]:
    """The physical groups matching ``synthesize.regions`` (in tag order) and their measures."""
    import fnmatch

    comm, tdim = found.mesh.comm, found.mesh.topology.dim
    candidates = sorted(n for n, (dim, _) in found.groups.items() if dim in (tdim, tdim - 1))
    names = [n for n in candidates if fnmatch.fnmatch(n, case.synthesize.regions)]
    parallel.check_all(
        comm,
        bool(names),
        f"{case.source}: synthesize.regions: no physical group matches "
        f"{case.synthesize.regions!r}; the mesh has {candidates}",
    )
    names.sort(key=lambda n: found.groups[n][1])
    request = SensorData(
        points=np.zeros((len(names), 0)),
        values=np.zeros(len(names)),
        sigma=None,
        experiment=None,
        lines=np.zeros(len(names), dtype=np.int64),
        source=f"{case.source}: synthesize.regions",
        region=np.array(names),
    )
    measures, _ = regions(case, found, request)
    return names, measures


def _means(
    mesh: dolfinx.mesh.Mesh, u: dolfinx.fem.Function, measures: list[Any]
) -> npt.NDArray[np.float64]:
    """``∫_ω u / |ω|`` over each measure. Collective."""
    comm = mesh.comm
    one = dolfinx.fem.Constant(mesh, 1.0)
    return np.array(
        [
            comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(u * m)))
            / comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(one * m)))
            for m in measures
        ]
    )


def _synthesize_averages(
    case: InverseCase, found: domain.Domain, u: dolfinx.fem.Function, stream: int = 2
) -> SensorData:
    """The means of ``u`` over the physical groups matching ``synthesize.regions``."""
    assert case.data.averages is not None
    names, measures = _regions_to_average(case, found)
    values = _means(found.mesh, u, measures)
    noisy, sigma = _noisy(case, values, stream)
    data = SensorData(
        points=np.zeros((len(names), 0)),
        values=noisy,
        sigma=sigma,
        experiment=None,
        lines=np.arange(2, len(names) + 2),
        source=str(case.data.averages),
        region=np.array(names),
    )
    write_sensors(found.mesh.comm, case.data.averages, data)
    return data
