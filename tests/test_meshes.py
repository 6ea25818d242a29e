"""Meshes: any format meshio reads gives the gmsh original's mesh and tags, 3D meshes and
built-in boxes run inverse cases, bad mesh files are one message on every rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dolfinx
import meshio
import numpy as np
import pytest
import ufl

from natinv import domain
from natinv.cases import CaseError, load_case
from natinv.cli import main
from natinv.parallel import CollectiveError

ROOT = Path(__file__).resolve().parents[1]
PLATE = ROOT / "meshes" / "plate_with_hole.msh"
BRACKET_CASE = ROOT / "cases" / "heat_bracket_3d.toml"
FORMATS = {"vtu": "vtu", "xdmf": "xdmf", "medit": "mesh", "abaqus": "inp", "med": "med"}


def measures(found: domain.Domain) -> dict[str, dict[int, float]]:
    """Per tag, the total size (area, length, volume) of the tagged cells and facets: equal
    sizes per tag mean the same entities carry the same tags, whatever the numbering."""
    mesh = found.mesh
    out: dict[str, dict[int, float]] = {}
    for kind, tags, measure in (("cells", found.cells, ufl.dx), ("facets", found.facets, ufl.ds)):
        if tags is None:
            continue
        local = {int(v) for v in np.unique(tags.values)}
        values = sorted(set().union(*mesh.comm.allgather(local)))
        dm = measure(domain=mesh, subdomain_data=tags)
        one = dolfinx.fem.Constant(mesh, 1.0)
        out[kind] = {
            v: mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(one * dm(v))))
            for v in values
        }
    return out


def convert(source: Path, target: Path, file_format: str, gdim: int) -> dict[int, str]:
    """Write the gmsh mesh ``source`` as ``file_format`` with meshio, one block per cell type
    as other tools write them: tags as cell data, or (Abaqus) as named element sets. Returns
    the gmsh tag of each group name."""
    raw = meshio.read(source)
    simplex, facet = domain.SIMPLICES[gdim], domain.SIMPLICES[gdim - 1]
    cells, tags = [], []
    for kind in (facet, simplex):
        blocks = [i for i, b in enumerate(raw.cells) if b.type == kind]
        cells.append((kind, np.concatenate([raw.cells[i].data for i in blocks])))
        tags.append(np.concatenate([raw.cell_data["gmsh:physical"][i] for i in blocks]))
    names = {int(v[0]): name for name, v in raw.field_data.items()}
    if file_format == "abaqus":
        sets = {names[t]: [np.flatnonzero(v == t) for v in tags] for t in names}
        mesh = meshio.Mesh(raw.points, cells, cell_sets=sets)
    elif file_format == "med":  # families of cells numbered -1, -2, ..., each one group
        mesh = meshio.Mesh(raw.points, cells, cell_data={"cell_tags": [-t for t in tags]})
        mesh.cell_tags = {-t: [name] for t, name in names.items()}
    else:
        key = "medit:ref" if file_format == "medit" else "gmsh:physical"
        mesh = meshio.Mesh(raw.points, cells, cell_data={key: tags})
    meshio.write(target, mesh, file_format=file_format)
    return names


@pytest.fixture(scope="module")
def small_bracket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A coarse bracket from the shipped gmsh script (rank 0 makes it, every rank knows it)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path = None
    if comm.rank == 0:
        path = tmp_path_factory.mktemp("bracket") / "bracket.msh"
        script = ROOT / "meshes" / "bracket.py"
        command = [sys.executable, str(script), "--size", "0.2", "--out", str(path)]
        subprocess.run(command, check=True, capture_output=True)
    return Path(comm.bcast(str(path), root=0))


@pytest.mark.parametrize("file_format", list(FORMATS))
@pytest.mark.parametrize("dimension", [2, 3])
def test_meshio_formats_give_the_gmsh_mesh_and_tags(
    comm, shared_tmp, small_bracket, file_format, dimension
):
    """The plate (2D) and a bracket (3D) written by meshio as VTU, XDMF, MEDIT, Abaqus and MED
    read back with the gmsh original's cells, vertices and, per tag, the same cells and facets
    (their total sizes to 1e-12); Abaqus sets keep their names (numbered in name order), MED
    groups their names and numbers."""
    source = PLATE if dimension == 2 else small_bracket
    target = shared_tmp / f"converted.{FORMATS[file_format]}"
    names = convert(source, target, file_format, dimension) if comm.rank == 0 else None
    names = comm.bcast(names, root=0)
    original = domain.read_msh(comm, source, str(source), gdim=dimension)
    found = domain.read_meshio(comm, target, str(target), gdim=dimension)
    for a, b in ((original.mesh, found.mesh),):
        for dim in (0, dimension):
            assert a.topology.index_map(dim).size_global == b.topology.index_map(dim).size_global
    expected, got = measures(original), measures(found)
    if file_format == "abaqus":  # set k + 1 in name order: map back through the names
        number = {name: k + 1 for k, name in enumerate(sorted(names.values()))}
        for kind in expected:
            expected[kind] = {number[names[t]]: v for t, v in expected[kind].items()}
        assert {n: found.groups[n][1] for n in names.values()} == number
    if file_format == "med":
        assert found.groups == original.groups
    assert set(got) == set(expected)
    for kind in expected:
        assert set(got[kind]) == set(expected[kind])
        for tag, size in expected[kind].items():
            assert abs(got[kind][tag] - size) <= 1e-12 * abs(size), (kind, tag)


def test_a_case_runs_from_a_meshio_mesh_as_from_the_gmsh_file(comm, shared_tmp):
    """The headline case with its mesh converted to VTU: the same first iterates as with the
    gmsh file (same cells and tags; the numbering may differ, so to 1e-8)."""
    target = shared_tmp / "plate.vtu"
    if comm.rank == 0:
        convert(PLATE, target, "vtu", 2)
    comm.Barrier()
    losses = []
    for label, mesh in (("msh", PLATE), ("vtu", target)):
        folder = shared_tmp / label
        args = ["run", str(ROOT / "cases" / "diffusion_hole.toml"), "--iterations", "2"]
        args += ["--quiet", "--set", f"output.folder='{folder}'", "--set", f"mesh.file='{mesh}'"]
        assert main(args) == 0
        losses.append(json.loads((folder / "summary.json").read_text())["misfit"])
    assert abs(losses[1] - losses[0]) <= 1e-8 * abs(losses[0])


def write_on_rank0(comm, path: Path, mesh: meshio.Mesh, file_format: str) -> None:
    if comm.rank == 0:
        meshio.write(path, mesh, file_format=file_format)
    comm.Barrier()


SQUARE = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("cells", "data", "message"),
    [
        ([("quad", [[0, 1, 2, 3]])], None, r"unsupported cells: cells \['quad'\]"),
        (
            [("triangle", [[0, 1, 2]]), ("quad", [[0, 1, 2, 3]])],
            None,
            r"a mixed mesh: cells \['quad', 'triangle'\]",
        ),
        ([("line", [[0, 1]])], None, r"its cells have dimension 1 \(\['line'\]\); expected 2"),
        (
            [("triangle", [[0, 1, 2], [0, 2, 3]])],
            {"gmsh:physical": [np.array([1, 0])]},
            r"1 of 2 triangle cells have no tag",
        ),
    ],
    ids=["quads", "mixed", "no cells", "half tagged"],
)
def test_unsupported_meshes_are_named_with_what_was_found(comm, shared_tmp, cells, data, message):
    path = shared_tmp / "bad.vtu"
    write_on_rank0(comm, path, meshio.Mesh(SQUARE, cells, cell_data=data or {}), "vtu")
    with pytest.raises(CollectiveError, match=rf"bad\.vtu: {message}"):
        domain.read_meshio(comm, path, str(path), gdim=2)


def test_a_3d_mesh_read_as_2d_says_to_set_dim(comm, shared_tmp, small_bracket):
    path = shared_tmp / "bracket.vtu"
    if comm.rank == 0:
        convert(small_bracket, path, "vtu", 3)
    comm.Barrier()
    with pytest.raises(CollectiveError, match=r"expected 2 \(set \[mesh\] dim = 3"):
        domain.read_meshio(comm, path, str(path), gdim=2)
    with pytest.raises(CollectiveError, match=r"expected 2 \(set \[mesh\] dim = 3"):
        domain.read_msh(comm, small_bracket, str(small_bracket), gdim=2)
    garbage = shared_tmp / "garbage.vtu"
    if comm.rank == 0:
        garbage.write_text("not a mesh")
    comm.Barrier()
    with pytest.raises(CollectiveError, match=r"garbage\.vtu: not a mesh meshio can read"):
        domain.read_meshio(comm, garbage, str(garbage), gdim=2)


@pytest.mark.parametrize(
    ("mesh", "message"),
    [
        ('builtin = "box"\ndim = 3', r"mesh\.dim: only for a mesh file"),
        ('file = "m.vtu"\ndim = 4', r"mesh\.dim: a mesh file's dimension is 2 or 3, got 4"),
        ('file = "m.stl"', r"mesh\.file: expected a mesh file \(\.msh, \.xdmf"),
        ('builtin = "box"\ncells = [4, 4]', r"mesh\.cells: expected a positive integer or \[nx"),
    ],
)
def test_mesh_settings_are_checked(comm, shared_tmp, mesh, message):
    path = shared_tmp / "case.toml"
    comm.Barrier()
    if comm.rank == 0:
        for name in ("m.vtu", "m.stl"):
            (shared_tmp / name).write_text("")
        path.write_text(f"[mesh]\n{mesh}\n[model]\n[parameter]\n[data]\nsensors = 's.csv'\n")
    comm.Barrier()
    with pytest.raises(CaseError, match=message):
        load_case(path)


BOX = """
name = "box"
[mesh]
builtin = "box"
cells = [5, 4, 4]
extent = [1.5, 1.0, 1.0]
[model]
kind = "diffusion"
dirichlet = [1, 2]
[parameter]
network = [3, 12, 1]
truth = "exp(0.4*sin(pi*x)*cos(pi*y)*(1 + z))"
[data]
sensors = "sensors.csv"
[synthesize]
layout = "grid:4x3x3"
refine = 1
degree = 2
[optimizer]
kind = "{kind}"
[regularization]
alpha = {alpha}
[output]
folder = "{folder}"
"""


@pytest.mark.parametrize("kind", ["ngd", "tao-nls"])
def test_an_inverse_case_on_a_3d_box_synthesizes_runs_and_draws(comm, shared_tmp, kind):
    """A 3D built-in box: `synthesize` puts the 36 grid sensors inside it, and the neural field
    (natural Gauss–Newton) and the finite-element baseline (TAO) both cut the misfit and the
    error from the start, and draw the field on a section."""
    folder = shared_tmp / kind
    case = shared_tmp / f"{kind}.toml"
    if comm.rank == 0:
        alpha = 0.0 if kind == "ngd" else 1e-3
        case.write_text(BOX.format(kind=kind, alpha=alpha, folder=folder))
    comm.Barrier()
    assert main(["synthesize", str(case)]) == 0
    from natinv.data import read_sensors

    sensors = read_sensors(comm, shared_tmp / "sensors.csv", 3)
    assert sensors.points.shape == (36, 3)
    comm.Barrier()
    assert main(["run", str(case), "--iterations", "4", "--quiet"]) == 0
    history = (folder / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    first, last = (
        dict(zip(header, row.split(","), strict=True)) for row in (history[1], history[-1])
    )
    assert float(last["misfit"]) < 0.5 * float(first["misfit"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["relative_l2_error"] < float(first["error"])
    assert (folder / "fields.png").is_file() and (folder / "misfit.png").is_file()


def test_the_shipped_3d_case_has_a_large_state_and_its_sensors_inside(comm):
    """The bracket case as shipped: a 3D gmsh mesh, a P2 state of at least 10⁵ dofs, and all
    200 sensors of its data file located in the mesh (building the problem checks that)."""
    from natinv.problems import build_problem

    case = load_case(BRACKET_CASE)
    built = build_problem(case, comm)
    try:
        assert built.mesh.topology.dim == 3
        assert built.model.space.dofmap.index_map.size_global >= 100_000
        assert built.sensors is not None and built.sensors.points.shape == (200, 3)
    finally:
        built.close()


def test_boundary_conditions_name_the_mesh_groups(comm, shared_tmp):
    """``dirichlet = ["outer"]`` is the headline case's ``[1]`` (its gmsh group's name): the same
    misfit after two iterations (1e-10); an unknown name is one error listing the boundary
    groups."""
    misfits = []
    for label, tags in (("number", "[1]"), ("name", "['outer']")):
        folder = shared_tmp / label
        args = ["run", str(ROOT / "cases" / "diffusion_hole.toml"), "--iterations", "2"]
        args += ["--quiet", "--set", f"output.folder='{folder}'"]
        args += ["--set", f"model.dirichlet={tags}", "--set", "uncertainty.samples=0"]
        assert main(args) == 0
        misfits.append(json.loads((folder / "summary.json").read_text())["misfit"])
    # (the same computation: bitwise on 1 and 2 ranks, 1e-13 apart on 3)
    assert abs(misfits[0] - misfits[1]) <= 1e-10 * misfits[0]
    from natinv.problems import build_problem

    case = load_case(ROOT / "cases" / "diffusion_hole.toml", ["model.dirichlet=['rim']"])
    with pytest.raises(CaseError, match=r"no boundary group named 'rim'.*\['hole', 'outer'\]"):
        build_problem(case, comm)


def _scaled_plate(folder: Path, factor: float, comm) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """The shipped plate's mesh and sensor file in units ``factor`` times smaller: coordinates
    × factor; −Δ-type solutions of f = 1 scale with factor², so values and σ × factor²."""
    mesh, sensors = folder / f"plate-{factor:g}.msh", folder / f"sensors-{factor:g}.csv"
    if comm.rank == 0:
        import csv

        import gmsh

        gmsh.initialize(["", "-v", "0"])
        try:
            gmsh.open(str(ROOT / "meshes" / "plate_with_hole.msh"))
            gmsh.model.mesh.affineTransform([factor, 0, 0, 0, 0, factor, 0, 0, 0, 0, factor, 0])
            gmsh.write(str(mesh))
        finally:
            gmsh.finalize()
        with open(ROOT / "cases" / "data" / "diffusion_hole.csv", newline="") as stream:
            rows = list(csv.DictReader(stream))
        with open(sensors, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["x", "y", "value", "sigma"])
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        "x": float(row["x"]) * factor,
                        "y": float(row["y"]) * factor,
                        "value": float(row["value"]) * factor**2,
                        "sigma": float(row["sigma"]) * factor**2,
                    }
                )
    comm.Barrier()
    return mesh, sensors


@pytest.mark.slow
def test_the_answer_does_not_depend_on_the_mesh_unit(comm, shared_tmp):
    """The headline plate in units ×1e-3, ×1 and ×1e3 (mesh, sensor places, and the values
    and σ of −∇·(κ∇u) = 1, which scale with the square): the neural field reads coordinates
    in units of the mesh's bounding box, so four iterations give the same losses and the same
    κ error to 1e-8 (measured: 3e-13), with and without the H1 metric."""
    results: dict[str, list[list[float]]] = {}
    for metric in ("gauss-newton", "h1"):
        for factor in (1e-3, 1.0, 1e3):
            mesh, sensors = _scaled_plate(shared_tmp, factor, comm)
            truth = f"exp(0.6*sin(2*pi*x/{factor!r})*cos(pi*y/{factor!r}))"
            folder = shared_tmp / f"out-{metric}-{factor:g}"
            settings = [f"mesh.file='{mesh}'", f"data.sensors='{sensors}'"]
            settings += [f"parameter.truth='{truth}'", f"output.folder='{folder}'"]
            settings += ["optimizer.stop='none'", f"optimizer.metric='{metric}'"]
            args = ["run", str(ROOT / "cases" / "diffusion_hole.toml"), "--quiet"]
            args += ["--iterations", "4", *[a for s in settings for a in ("--set", s)]]
            assert main(args) == 0
            comm.Barrier()
            history = (folder / "history.csv").read_text().splitlines()[1:]
            columns = (folder / "history.csv").read_text().splitlines()[0].split(",")
            loss, error = columns.index("loss"), columns.index("error")
            rows = [line.split(",") for line in history]
            results.setdefault(metric, []).append(
                [float(r[loss]) for r in rows] + [float(r[error]) for r in rows]
            )
    for metric, runs in results.items():
        reference = np.array(runs[1])
        for other in (runs[0], runs[2]):
            np.testing.assert_allclose(other, reference, rtol=1e-8, err_msg=metric)
