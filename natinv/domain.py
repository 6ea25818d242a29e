"""The domain of a case: its mesh and boundary tags, and what is written or drawn on it.

:func:`load_mesh` reads a gmsh ``.msh`` or XDMF mesh, or makes a built-in box (interval,
rectangle) with its sides tagged 1 left, 2 right, 3 bottom, 4 top; :func:`boundary_facets` turns
the tags a case names into facets; :func:`write_vtx` writes functions for ParaView and
:func:`triangles` gathers a function's values on the mesh's triangles for figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mpi4py import MPI

import dolfinx
import dolfinx.io
import dolfinx.io.gmsh
import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.cases import Case

__all__ = ["Domain", "boundary_facets", "load_domain", "load_mesh", "triangles", "write_vtx"]


@dataclass
class Domain:
    """A case's mesh with its tags: ``facets`` and ``cells`` (None where there are none) and
    ``groups``, the named physical groups ``name -> (dimension, tag)``."""

    mesh: dolfinx.mesh.Mesh
    facets: dolfinx.mesh.MeshTags | None
    cells: dolfinx.mesh.MeshTags | None = None
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)


SIDES = {"left": 1, "right": 2, "bottom": 3, "top": 4}


def load_domain(comm: MPI.Comm, case: Case) -> Domain:
    """The case's mesh and tags: a gmsh file's physical groups by name, or a built-in box's
    sides (``left`` 1, ``right`` 2, ``bottom`` 3, ``top`` 4). Collective."""
    settings = case.mesh
    if settings.builtin is not None:
        lower = np.array(settings.origin)
        upper = lower + np.array(settings.extent)
        if settings.builtin == "interval":
            mesh = dolfinx.mesh.create_interval(comm, settings.cells[0], [lower[0], upper[0]])
        else:
            mesh = dolfinx.mesh.create_rectangle(comm, [lower, upper], settings.cells)
        fdim = mesh.topology.dim - 1
        groups = {k: (fdim, v) for k, v in SIDES.items() if v <= 2 * lower.size}
        return Domain(mesh, side_tags(mesh, lower, upper), None, groups)
    assert settings.file is not None
    with parallel.collective(comm, f"{case.source}: mesh.file {settings.file}"):
        if settings.file.suffix == ".msh":
            import gmsh

            if not gmsh.isInitialized():
                gmsh.initialize()
            gmsh.option.setNumber("General.Terminal", 0)  # no "Info: Reading..." lines
            data = dolfinx.io.gmsh.read_from_msh(settings.file, comm, 0, gdim=2)
            groups = {name: (g.dim, g.tag) for name, g in data.physical_groups.items()}
            return Domain(data.mesh, data.facet_tags, data.cell_tags, groups)
        with dolfinx.io.XDMFFile(comm, settings.file, "r") as xdmf:
            mesh = xdmf.read_mesh(name="mesh")
            mesh.topology.create_connectivity(1, 2)
            tags = []
            for name in ("facets", "cells"):
                try:
                    tags.append(xdmf.read_meshtags(mesh, name=name))
                except RuntimeError:
                    tags.append(None)
    return Domain(mesh, tags[0], tags[1])


def load_mesh(comm: MPI.Comm, case: Case) -> tuple[dolfinx.mesh.Mesh, dolfinx.mesh.MeshTags | None]:
    """The case's mesh and its facet tags. Collective."""
    found = load_domain(comm, case)
    return found.mesh, found.facets


def side_tags(
    mesh: dolfinx.mesh.Mesh, lower: npt.NDArray[np.float64], upper: npt.NDArray[np.float64]
) -> dolfinx.mesh.MeshTags:
    """Boundary tags of a built-in box: 1 left, 2 right (an interval's ends), 3 bottom, 4 top."""
    fdim = mesh.topology.dim - 1
    mesh.topology.create_connectivity(fdim, fdim + 1)
    sides = [
        (1 + 2 * axis + end, lambda x, a=axis, v=bound[axis]: np.isclose(x[a], v))
        for axis in range(lower.size)
        for end, bound in enumerate((lower, upper))
    ]
    facets, values = [], []
    for tag, where in sides:
        found = dolfinx.mesh.locate_entities_boundary(mesh, fdim, where)
        facets.append(found)
        values.append(np.full(found.size, tag, dtype=np.int32))
    order = np.argsort(np.concatenate(facets), kind="stable")
    entities = np.concatenate(facets)[order]
    unique, first = np.unique(entities, return_index=True)  # corners: the first side wins
    return dolfinx.mesh.meshtags(mesh, fdim, unique, np.concatenate(values)[order][first])


def boundary_facets(
    case: Case, mesh: dolfinx.mesh.Mesh, facets: dolfinx.mesh.MeshTags | None, key: str
) -> npt.NDArray[np.int32]:
    """The local boundary facets of the tags at ``key`` (``model.dirichlet`` or
    ``equation.dirichlet``: ``"all"`` or a list of tags, each checked against the mesh's facet
    tags). Collective."""
    settings = case.model if key.startswith("model") else case.equation
    assert settings is not None
    tags = settings.dirichlet
    fdim = mesh.topology.dim - 1
    mesh.topology.create_connectivity(fdim, fdim + 1)
    if tags == "all":
        return dolfinx.mesh.exterior_facet_indices(mesh.topology)
    comm = mesh.comm
    local = set() if facets is None else {int(v) for v in np.unique(facets.values)}
    known = sorted(set().union(*comm.allgather(local)))
    parallel.check_all(
        comm,
        all(t in known for t in tags),
        f"{case.source}: {key}: boundary tags {tags} not all in the mesh's facet tags {known}",
    )
    empty = np.zeros(0, dtype=np.int32)
    found = [facets.find(t) if facets is not None else empty for t in tags]
    return np.unique(np.concatenate([empty, *found])).astype(np.int32)


def write_vtx(comm: MPI.Comm, path: Path, functions: list[dolfinx.fem.Function]) -> None:
    """The functions (one space) at time 0 in a VTX folder (BP4) for ParaView. Collective."""
    path.parent.mkdir(parents=True, exist_ok=True) if comm.rank == 0 else None
    comm.Barrier()
    with dolfinx.io.VTXWriter(comm, path, functions, engine="BP4") as writer:
        writer.write(0.0)


def triangles(
    function: dolfinx.fem.Function,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Vertex coordinates (3 per owned cell) and the function's values there, gathered on
    rank 0 (P1 on affine triangles). Collective."""
    space = function.function_space
    mesh = space.mesh
    cells = np.arange(mesh.topology.index_map(2).size_local, dtype=np.int32)
    coords = space.tabulate_dof_coordinates()
    dofs = np.array([space.dofmap.cell_dofs(c)[:3] for c in cells]).reshape(-1)
    local_x = coords[dofs, :2]
    local_v = function.x.array[dofs]
    all_x = mesh.comm.gather(local_x, root=0)
    all_v = mesh.comm.gather(local_v, root=0)
    if mesh.comm.rank != 0:
        return np.zeros((0, 2)), np.zeros(0)
    return np.concatenate(all_x), np.concatenate(all_v)
