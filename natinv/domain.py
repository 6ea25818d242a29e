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
from natinv.cases import MeshSettings

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


def load_domain(comm: MPI.Comm, settings: MeshSettings, source: str | Path = "") -> Domain:
    """The case's mesh and tags: a gmsh file's physical groups by name, or a built-in box's
    sides (``left`` 1, ``right`` 2, ``bottom`` 3, ``top`` 4); ``source`` (the case file) is
    named in errors. Collective."""
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
    where = f"{source}: mesh.file {settings.file}" if source else f"mesh.file {settings.file}"
    if settings.file.suffix == ".msh":
        return read_msh(comm, settings.file, where, gdim=2)
    return read_xdmf(comm, settings.file, where)


def read_msh(comm: MPI.Comm, path: Path, where: str, gdim: int = 2) -> Domain:
    """A gmsh ``.msh`` file: rank 0 reads and checks it (physical groups, every cell tagged once,
    cells of dimension ``gdim``) and shares the verdict before DOLFINx distributes the mesh, so a
    truncated or foreign file is one error on every rank. Collective.

    Raises:
        CollectiveError: naming ``where`` and what is wrong with the file.
    """
    import gmsh

    started = comm.rank == 0 and not gmsh.isInitialized()

    def load() -> None:
        if started:
            gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)  # no "Info: Reading..." lines
        gmsh.model.add("natinv")
        if not path.is_file():
            raise ValueError("not a readable file")
        try:
            gmsh.merge(str(path))
        except Exception as exc:  # gmsh raises a bare Exception with its parser's message
            raise ValueError(f"not a readable gmsh mesh ({exc})") from None
        _check_gmsh_model(gmsh.model, gdim)

    try:
        parallel.on_rank0(comm, where, load)
        data = dolfinx.io.gmsh.model_to_mesh(
            gmsh.model if comm.rank == 0 else None, comm, 0, gdim=gdim
        )
    finally:
        if comm.rank == 0 and gmsh.isInitialized():
            if started:
                gmsh.finalize()
            elif "natinv" in gmsh.model.list():
                gmsh.model.setCurrent("natinv")
                gmsh.model.remove()
    groups = {name: (g.dim, g.tag) for name, g in data.physical_groups.items()}
    return Domain(data.mesh, data.facet_tags, data.cell_tags, groups)


def _check_gmsh_model(model: object, gdim: int) -> None:
    """What DOLFINx needs of a gmsh model, checked on the reading rank alone (ValueError)."""
    from dolfinx.io.gmsh import extract_topology_and_markers, ufl_mesh

    topologies, groups = extract_topology_and_markers(model)
    if not groups:
        raise ValueError("no physical groups (the domain must be a physical group of cells)")
    dims = {}
    for element in topologies:
        _, dim, _, _, _, _ = model.mesh.getElementProperties(element)  # type: ignore[attr-defined]
        dims[element] = dim
    tdim = max(dims.values())
    if tdim != gdim:
        raise ValueError(f"its tagged cells have dimension {tdim}; expected {gdim}")
    types, tags, _ = model.mesh.getElements(dim=tdim, tag=-1)  # type: ignore[attr-defined]
    for element, cells in zip(types, tags, strict=True):
        if element not in topologies:
            raise ValueError("cells without a physical group (every cell must be tagged once)")
        tagged = topologies[element]["entity_tags"]
        if len(tagged) != len(cells) or len(np.unique(tagged)) != len(tagged):
            raise ValueError(
                f"{len(tagged)} tags for {len(cells)} cells (every cell must be tagged once)"
            )
        try:
            ufl_mesh(int(element), gdim, np.float64)
        except Exception as exc:
            raise ValueError(f"unsupported cell type {element} ({exc})") from None


def read_xdmf(comm: MPI.Comm, path: Path, where: str) -> Domain:
    """An XDMF mesh named ``mesh`` with optional tags ``facets`` and ``cells`` (as DOLFINx
    writes them). Rank 0 checks the file and the HDF5 arrays it points to before the parallel
    read. Collective.

    Raises:
        CollectiveError: naming ``where`` and what is wrong with the file.
    """
    names = parallel.on_rank0(comm, where, lambda: _check_xdmf(path), share=True)
    assert names is not None
    with dolfinx.io.XDMFFile(comm, path, "r") as xdmf:
        mesh = xdmf.read_mesh(name="mesh")
        mesh.topology.create_connectivity(mesh.topology.dim - 1, mesh.topology.dim)
        tags = [
            xdmf.read_meshtags(mesh, name=n) if n in names else None for n in ("facets", "cells")
        ]
    return Domain(mesh, tags[0], tags[1])


def _check_xdmf(path: Path) -> set[str]:
    """The names of the grids of an XDMF file whose topology and geometry arrays can be read;
    ValueError unless one is the mesh (``Grid Name="mesh"``)."""
    import xml.etree.ElementTree as ET

    import h5py

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"not an XDMF file ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({parallel.describe_error(exc)})") from None
    readable = set()
    for grid in root.iter("Grid"):
        if grid.find("Topology/DataItem") is None:
            continue
        for item in grid.iter("DataItem"):
            if item.get("Format", "XML") != "HDF":
                continue
            file, _, dataset = (item.text or "").strip().partition(":")
            dims = tuple(int(d) for d in item.get("Dimensions", "").split())
            try:
                with h5py.File(path.parent / file, "r") as h5:
                    shape = h5[dataset].shape
            except (OSError, KeyError) as exc:
                raise ValueError(
                    f"grid {grid.get('Name')!r}: array {file}:{dataset} cannot be read "
                    f"({parallel.describe_error(exc)})"
                ) from None
            if dims and tuple(shape) != dims:
                raise ValueError(
                    f"grid {grid.get('Name')!r}: array {file}:{dataset} has shape {shape}, the "
                    f"file says {dims}"
                )
        readable.add(str(grid.get("Name")))
    if "mesh" not in readable:
        raise ValueError(
            f"no grid named 'mesh' with topology and geometry (found {sorted(readable)})"
        )
    return readable


def load_mesh(
    comm: MPI.Comm, settings: MeshSettings, source: str | Path = ""
) -> tuple[dolfinx.mesh.Mesh, dolfinx.mesh.MeshTags | None]:
    """The mesh and its facet tags. Collective."""
    found = load_domain(comm, settings, source)
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
    mesh: dolfinx.mesh.Mesh,
    facets: dolfinx.mesh.MeshTags | None,
    tags: list[int] | str,
    where: str,
) -> npt.NDArray[np.int32]:
    """The local boundary facets of ``tags`` (``"all"``, or a list of tags, each checked
    against the mesh's facet tags; ``where`` names the setting in the error). Collective."""
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
        f"{where}: boundary tags {tags} not all in the mesh's facet tags {known}",
    )
    empty = np.zeros(0, dtype=np.int32)
    found = [facets.find(t) if facets is not None else empty for t in tags]
    return np.unique(np.concatenate([empty, *found])).astype(np.int32)


def write_vtx(comm: MPI.Comm, path: Path, functions: list[dolfinx.fem.Function]) -> None:
    """The functions (one space) at time 0 in a VTX folder (BP4) for ParaView. Collective."""
    parallel.on_rank0(
        comm, f"{path}: cannot write", lambda: path.parent.mkdir(parents=True, exist_ok=True)
    )
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
    dofs = np.array([space.dofmap.cell_dofs(c)[:3] for c in cells], dtype=np.int32).reshape(-1)
    local_x = coords[dofs, :2]
    local_v = function.x.array[dofs]
    all_x = mesh.comm.gather(local_x, root=0)
    all_v = mesh.comm.gather(local_v, root=0)
    if mesh.comm.rank != 0:
        return np.zeros((0, 2)), np.zeros(0)
    return np.concatenate(all_x), np.concatenate(all_v)
