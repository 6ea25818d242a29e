"""The domain of a case: its mesh and boundary tags, and what is written or drawn on it.

:func:`load_mesh` reads a gmsh ``.msh`` or XDMF mesh, or makes a built-in box (interval,
rectangle) with its sides tagged 1 left, 2 right, 3 bottom, 4 top; :func:`boundary_facets` turns
the tags a case names into facets; :func:`write_vtx` writes functions for ParaView and
:func:`triangles` gathers a function's values on the mesh's triangles for figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpi4py import MPI

import dolfinx
import dolfinx.io
import dolfinx.io.gmsh
import numpy as np
import numpy.typing as npt

from natinv import output, parallel
from natinv.cases import CaseError, MeshSettings

__all__ = [
    "Domain",
    "Section",
    "boundary_facets",
    "load_domain",
    "load_mesh",
    "resolve_tags",
    "section",
    "triangles",
    "write_vtx",
]


@dataclass
class Domain:
    """A case's mesh with its tags: ``facets`` and ``cells`` (None where there are none) and
    ``groups``, the named physical groups ``name -> (dimension, tag)``."""

    mesh: dolfinx.mesh.Mesh
    facets: dolfinx.mesh.MeshTags | None
    cells: dolfinx.mesh.MeshTags | None = None
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)


SIDES = {"left": 1, "right": 2, "bottom": 3, "top": 4, "back": 5, "front": 6}


def load_domain(comm: MPI.Comm, settings: MeshSettings, source: str | Path = "") -> Domain:
    """The case's mesh and tags: a gmsh file's physical groups by name, or a built-in box's
    sides (``left`` 1, ``right`` 2, ``bottom`` 3, ``top`` 4, ``back`` 5, ``front`` 6);
    ``source`` (the case file) is named in errors. Collective."""
    if settings.builtin is not None:
        lower = np.array(settings.origin)
        upper = lower + np.array(settings.extent)
        if settings.builtin == "interval":
            mesh = dolfinx.mesh.create_interval(comm, settings.cells[0], [lower[0], upper[0]])
        elif settings.builtin == "box":
            mesh = dolfinx.mesh.create_box(comm, [lower, upper], settings.cells)
        else:
            mesh = dolfinx.mesh.create_rectangle(comm, [lower, upper], settings.cells)
        fdim = mesh.topology.dim - 1
        groups = {k: (fdim, v) for k, v in SIDES.items() if v <= 2 * lower.size}
        return Domain(mesh, side_tags(mesh, lower, upper), None, groups)
    assert settings.file is not None
    where = f"{source}: mesh.file {settings.file}" if source else f"mesh.file {settings.file}"
    if settings.file.suffix == ".msh":
        return read_msh(comm, settings.file, where, gdim=settings.gdim)
    if settings.file.suffix == ".xdmf" and _dolfinx_xdmf(comm, settings.file):
        return read_xdmf(comm, settings.file, where, settings.gdim)
    return read_meshio(comm, settings.file, where, settings.gdim)


def _dolfinx_xdmf(comm: MPI.Comm, path: Path) -> bool:
    """Whether an XDMF file names its mesh grid ``mesh`` as DOLFINx writes it (else it is
    read through meshio); an unreadable file counts as DOLFINx's, whose reader names what is
    wrong. The same answer on every rank. Collective."""

    def look() -> bool:
        try:
            return b'Name="mesh"' in path.read_bytes()[: 1 << 20]
        except OSError:
            return True

    found = parallel.on_rank0(comm, str(path), look, share=True)
    return bool(found)


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
        hint = "" if gdim == 3 else " (set [mesh] dim = 3 for a 3D mesh)"
        raise ValueError(f"its tagged cells have dimension {tdim}; expected {gdim}{hint}")
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


def read_xdmf(comm: MPI.Comm, path: Path, where: str, gdim: int = 2) -> Domain:
    """An XDMF mesh named ``mesh`` with optional tags ``facets`` and ``cells`` (as DOLFINx
    writes them), its cells of dimension ``gdim``. Rank 0 checks the file and the HDF5 arrays
    it points to before the parallel read. Collective.

    Raises:
        CollectiveError: naming ``where`` and what is wrong with the file.
    """
    names = parallel.on_rank0(comm, where, lambda: _check_xdmf(path), share=True)
    assert names is not None
    with dolfinx.io.XDMFFile(comm, path, "r") as xdmf:
        mesh = xdmf.read_mesh(name="mesh")
        parallel.check_all(
            comm,
            mesh.topology.dim == gdim,
            f"{where}: its cells have dimension {mesh.topology.dim}; expected {gdim}"
            + ("" if gdim == 3 else " (set [mesh] dim = 3 for a 3D mesh)"),
        )
        mesh.topology.create_connectivity(mesh.topology.dim - 1, mesh.topology.dim)
        tags = [
            xdmf.read_meshtags(mesh, name=n) if n in names else None for n in ("facets", "cells")
        ]
    return Domain(mesh, tags[0], tags[1])


#: meshio's names of the linear simplex cells natinv reads, by dimension
SIMPLICES = {1: "line", 2: "triangle", 3: "tetra"}
#: the dimension of the cell types meshio knows (those not listed are named as unsupported)
CELL_DIMENSIONS = {
    "vertex": 0,
    "line": 1,
    "line3": 1,
    "triangle": 2,
    "triangle6": 2,
    "triangle7": 2,
    "quad": 2,
    "quad8": 2,
    "quad9": 2,
    "polygon": 2,
    "tetra": 3,
    "tetra10": 3,
    "hexahedron": 3,
    "hexahedron20": 3,
    "hexahedron27": 3,
    "wedge": 3,
    "wedge15": 3,
    "pyramid": 3,
    "pyramid13": 3,
}
#: integer cell data that tag cells, in the order they are looked for (gmsh, MEDIT, MED,
#: Salome/VTK conventions)
TAG_KEYS = ("gmsh:physical", "medit:ref", "cell_tags", "CellEntityIds", "tags", "tag", "markers")


@dataclass
class _Parsed:
    """A meshio mesh as natinv needs it, made on the reading rank."""

    x: npt.NDArray[np.float64]
    cells: npt.NDArray[np.int64]
    cell_values: npt.NDArray[np.int32] | None
    facets: npt.NDArray[np.int64]
    facet_values: npt.NDArray[np.int32]
    groups: dict[str, tuple[int, int]]


def read_meshio(comm: MPI.Comm, path: Path, where: str, gdim: int = 2) -> Domain:
    """A mesh in any format meshio reads (VTU/VTK, Abaqus ``.inp``, MED, MEDIT ``.mesh``,
    XDMF of other tools, ...): linear triangles (``gdim`` 2) or tetrahedra (3), cell and facet
    tags from integer cell data (``gmsh:physical``, ``medit:ref``, MED's ``cell_tags``, ...)
    or from named cell sets, and the groups' names where the file has them. Rank 0 reads and
    checks the file; DOLFINx distributes cells and tags. Collective.

    Raises:
        CollectiveError: naming ``where`` and what is wrong (an unreadable file, no cells of
            dimension ``gdim``, unsupported or mixed cell types).
    """
    parsed = parallel.on_rank0(comm, where, lambda: _parse_meshio(path, gdim))
    nodes = gdim + 1
    if comm.rank != 0:
        parsed = _Parsed(
            np.zeros((0, gdim)),
            np.zeros((0, nodes), dtype=np.int64),
            np.zeros(0, dtype=np.int32),
            np.zeros((0, gdim), dtype=np.int64),
            np.zeros(0, dtype=np.int32),
            {},
        )
    assert parsed is not None
    tagged, groups = comm.bcast(
        (parsed.cell_values is not None, parsed.groups) if comm.rank == 0 else None, root=0
    )
    import basix.ufl
    import ufl

    cell = {2: "triangle", 3: "tetrahedron"}[gdim]
    element = ufl.Mesh(basix.ufl.element("Lagrange", cell, 1, shape=(gdim,)))
    mesh = dolfinx.mesh.create_mesh(comm, parsed.cells, element, parsed.x)
    tags = []
    for dim, entities, values in (
        (gdim, parsed.cells, parsed.cell_values),
        (gdim - 1, parsed.facets, parsed.facet_values),
    ):
        if dim == gdim and not tagged:
            tags.append(None)
            continue
        assert values is not None
        mesh.topology.create_connectivity(dim, gdim)
        local, local_values = dolfinx.io.distribute_entity_data(mesh, dim, entities, values)
        adjacency = dolfinx.graph.adjacencylist(local)
        tags.append(
            dolfinx.mesh.meshtags_from_entities(
                mesh, dim, adjacency, local_values.astype(np.int32, copy=False)
            )
        )
    return Domain(mesh, tags[1], tags[0], groups)


def _parse_meshio(path: Path, gdim: int) -> _Parsed:
    """Read ``path`` with meshio and check it (ValueError naming what was found)."""
    import meshio

    if not path.is_file():
        raise ValueError("not a readable file")
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            raw = meshio.read(path)
    except (Exception, SystemExit) as exc:  # some of meshio's readers exit on a bad file
        reason = said.getvalue().strip().replace("\n", " ") or parallel.describe_error(exc)
        raise ValueError(f"not a mesh meshio can read ({reason})") from None
    found = sorted({block.type for block in raw.cells})
    unknown = [t for t in found if t not in CELL_DIMENSIONS]
    if unknown:
        raise ValueError(f"unsupported cell type(s) {unknown} (found {found})")
    tdim = max((CELL_DIMENSIONS[t] for t in found), default=-1)
    simplex = SIMPLICES[gdim]
    if tdim != gdim:
        hint = " (set [mesh] dim = 3 for a 3D mesh)" if tdim == 3 else ""
        raise ValueError(f"its cells have dimension {tdim} ({found}); expected {gdim}{hint}")
    top = sorted({t for t in found if CELL_DIMENSIONS[t] == gdim})
    if top != [simplex]:
        kind = "a mixed mesh" if len(top) > 1 else "unsupported cells"
        raise ValueError(
            f"{kind}: cells {top} of dimension {gdim}; natinv reads linear simplices "
            f"({simplex} in {gdim}D)"
        )
    points = np.asarray(raw.points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < gdim or not np.isfinite(points).all():
        raise ValueError(f"point coordinates of shape {points.shape} (or not finite)")
    if points.shape[1] > gdim and np.abs(points[:, gdim:]).max(initial=0.0) > 0.0:
        raise ValueError(
            f"a {gdim}D mesh with nonzero coordinate(s) beyond {'xyz'[gdim - 1]}"
            + (" (set [mesh] dim = 3 for a 3D mesh)" if gdim == 2 else "")
        )
    key = next((k for k in TAG_KEYS if k in raw.cell_data), None)
    facet_type = SIMPLICES[gdim - 1]
    blocks: dict[str, list[npt.NDArray[np.int64]]] = {simplex: [], facet_type: []}
    values: dict[str, list[npt.NDArray[np.int64]]] = {simplex: [], facet_type: []}
    names: dict[str, tuple[int, int]] = {}
    sets = _set_tags(raw, gdim) if key is None else None
    for i, block in enumerate(raw.cells):
        if block.type not in blocks:
            continue
        data = np.asarray(block.data, dtype=np.int64)
        if key is not None:
            tag = np.asarray(raw.cell_data[key][i]).reshape(-1)
            if key == "cell_tags" and np.issubdtype(tag.dtype, np.integer):
                tag = -tag  # MED numbers the families of cells -1, -2, ... (0: none)
        else:
            assert sets is not None
            tag = sets[0][i]
        if tag.size != data.shape[0] or not np.issubdtype(tag.dtype, np.integer):
            raise ValueError(
                f"cell data {key!r} of block {i} ({block.type}): not one integer per cell"
            )
        blocks[block.type].append(data)
        values[block.type].append(tag.astype(np.int64))
    if key is not None:
        for name, (tag, dim) in ((n, v[:2]) for n, v in raw.field_data.items()):
            names[str(name)] = (int(dim), int(tag))
        for family, labels in getattr(raw, "cell_tags", {}).items():  # MED: family -> groups
            tag = -int(family)
            dims = [
                d
                for d, v in ((gdim, values[simplex]), (gdim - 1, values[facet_type]))
                if any((a == tag).any() for a in v)
            ]
            for label in labels:
                names.setdefault(str(label), (dims[0] if dims else gdim, tag))
    else:
        assert sets is not None
        names = sets[1]
    cells = np.concatenate(blocks[simplex])
    cell_values = np.concatenate(values[simplex])
    facets = np.concatenate([np.zeros((0, gdim), dtype=np.int64), *blocks[facet_type]])
    facet_values = np.concatenate([np.zeros(0, dtype=np.int64), *values[facet_type]])
    facet_kept = facet_values > 0
    untagged = cell_values <= 0
    if untagged.all():
        cell_tags = None
    elif untagged.any():
        raise ValueError(
            f"{int(untagged.sum())} of {cell_values.size} {simplex} cells have no tag (every "
            "cell tagged, or none)"
        )
    else:
        cell_tags = cell_values.astype(np.int32)
    used, inverse = np.unique(np.concatenate([cells.ravel(), facets.ravel()]), return_inverse=True)
    if used.size and used[-1] >= points.shape[0]:
        raise ValueError(f"cells refer to point {used[-1]}; the file has {points.shape[0]} points")
    renumbered = inverse.astype(np.int64)
    cells = renumbered[: cells.size].reshape(cells.shape)
    facets = renumbered[cells.size :].reshape(facets.shape)
    return _Parsed(
        np.ascontiguousarray(points[used, :gdim]),
        cells,
        cell_tags,
        facets[facet_kept],
        facet_values[facet_kept].astype(np.int32),
        names,
    )


def _set_tags(
    raw: Any, gdim: int
) -> tuple[list[npt.NDArray[np.int64]], dict[str, tuple[int, int]]]:
    """Tags from a meshio mesh's named cell sets (Abaqus ELSETs, ...): set number k + 1 in
    name order, per cell block; 0 where a cell is in no set. A cell in two sets of its
    dimension is an error (a cell takes one tag)."""
    tags = [np.zeros(len(block.data), dtype=np.int64) for block in raw.cells]
    names: dict[str, tuple[int, int]] = {}
    for number, name in enumerate(sorted(raw.cell_sets), start=1):
        members = raw.cell_sets[name]
        dims = set()
        for i, block in enumerate(raw.cells):
            if i >= len(members) or members[i] is None or len(members[i]) == 0:
                continue
            index = np.asarray(members[i], dtype=np.int64)
            taken = tags[i][index] > 0
            if taken.any():
                raise ValueError(
                    f"cell set {name!r} overlaps an earlier set in {int(taken.sum())} "
                    f"{block.type} cell(s) (a cell takes one tag)"
                )
            tags[i][index] = number
            dims.add(CELL_DIMENSIONS.get(block.type, -1))
        if dims & {gdim, gdim - 1}:
            names[str(name)] = (max(dims & {gdim, gdim - 1}), number)
    return tags, names


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
    """Boundary tags of a built-in box: 1 left, 2 right (an interval's ends), 3 bottom, 4 top,
    5 back, 6 front."""
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


def resolve_tags(found: Domain, tags: list[int | str] | str, where: str) -> list[int] | str:
    """Boundary tags with the names of the mesh's boundary groups replaced by their numbers
    (``"all"`` as it is). The same on every rank (the groups are).

    Raises:
        CaseError: naming ``where``, the unknown name and the boundary groups there are.
    """
    if tags == "all":
        return "all"
    fdim = found.mesh.topology.dim - 1
    boundary = {name: tag for name, (dim, tag) in found.groups.items() if dim == fdim}
    out = []
    for tag in tags:
        if isinstance(tag, str):
            if tag not in boundary:
                raise CaseError(
                    f"{where}: no boundary group named {tag!r} in the mesh (its boundary groups: "
                    f"{sorted(boundary) or 'none'})"
                )
            out.append(boundary[tag])
        else:
            out.append(int(tag))
    return out


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
    """The functions (one space) at time 0 in a VTX folder (BP4) for ParaView, written aside
    and renamed (:func:`natinv.output.written_aside`: a full disk is one error on every rank
    before ADIOS2 starts, the previous folder stays until the new one is complete).
    Collective."""
    with output.written_aside(comm, path, vtx_bytes(functions)) as tmp:
        with dolfinx.io.VTXWriter(comm, tmp, functions, engine="BP4") as writer:
            writer.write(0.0)


def vtx_bytes(functions: list[dolfinx.fem.Function], steps: int = 1) -> float:
    """About how many bytes a VTX folder of ``functions`` (one space) over ``steps`` times
    takes: the values at every step, the dof coordinates and the cells' dofs once. Collective."""
    space = functions[0].function_space
    index_map = space.dofmap.index_map
    bs = space.dofmap.index_map_bs
    tdim = space.mesh.topology.dim
    cells = space.mesh.topology.index_map(tdim).size_global
    per_cell = space.dofmap.dof_layout.num_dofs
    values = index_map.size_global * bs * 8 * len(functions) * steps
    return float(values + index_map.size_global * 3 * 8 + cells * (per_cell + 1) * 8)


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


@dataclass
class Section:
    """A function's values on a grid in a plane through a 3D mesh: ``values[j, i]`` at
    ``(u[i], v[j])`` in the in-plane ``axes`` (NaN outside the mesh), the plane
    ``x[normal] = level``."""

    axes: tuple[int, int]
    normal: int
    level: float
    u: npt.NDArray[np.float64]
    v: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]


def section(function: dolfinx.fem.Function, resolution: int = 160) -> Section | None:
    """The scalar ``function`` on the mid-plane across the mesh's thinnest direction, sampled
    on a grid with ``resolution`` points along the plane's longer side; the result on rank 0
    (None elsewhere). Each rank evaluates the grid points in its owned cells. Collective."""
    mesh = function.function_space.mesh
    comm, tdim = mesh.comm, mesh.topology.dim
    x = mesh.geometry.x
    lo = np.min(comm.allgather(x.min(axis=0)), axis=0)
    hi = np.max(comm.allgather(x.max(axis=0)), axis=0)
    normal = int(np.argmin(hi - lo))
    axes = tuple(k for k in range(3) if k != normal)
    level = 0.5 * (lo[normal] + hi[normal])
    size = float(max(hi[k] - lo[k] for k in axes))
    u, v = (
        np.linspace(lo[k], hi[k], max(2, round(resolution * (hi[k] - lo[k]) / size))) for k in axes
    )
    points = np.zeros((u.size * v.size, 3))
    points[:, axes[0]] = np.tile(u, v.size)
    points[:, axes[1]] = np.repeat(v, u.size)
    points[:, normal] = level
    owned = np.arange(mesh.topology.index_map(tdim).size_local, dtype=np.int32)
    tree = dolfinx.geometry.bb_tree(mesh, tdim, entities=owned)
    candidates = dolfinx.geometry.compute_collisions_points(tree, points)
    colliding = dolfinx.geometry.compute_colliding_cells(mesh, candidates, points)
    found = np.flatnonzero(np.diff(colliding.offsets) > 0)
    cells = np.array([colliding.links(i)[0] for i in found], dtype=np.int32)
    values = np.full(points.shape[0], np.nan)
    if found.size:
        values[found] = function.eval(points[found], cells).reshape(-1)
    gathered = comm.gather(values, root=0)
    if comm.rank != 0:
        return None
    merged = np.full(points.shape[0], np.nan)
    for part in gathered:
        merged = np.where(np.isnan(merged), part, merged)
    return Section(axes, normal, float(level), u, v, merged.reshape(v.size, u.size))  # type: ignore[arg-type]
