"""Sensor files: round trip, validation with file and line, experiments; point values."""

from __future__ import annotations

import dolfinx
import numpy as np
import pytest
from helpers import unit_square

from natinv.data import SensorData, read_sensors, write_sensors
from natinv.observations import point_values
from natinv.parallel import CollectiveError


def test_sensor_file_round_trip_is_exact(comm, shared_tmp):
    data = SensorData(
        points=np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]),
        values=np.array([1.0 / 3.0, -2.5e-7, 4.0]),
        sigma=np.array([0.1, 0.2, 0.3]),
        experiment=np.array(["a", "b", "a"]),
        lines=np.array([2, 3, 4]),
    )
    path = shared_tmp / "sensors.csv"
    write_sensors(comm, path, data)
    back = read_sensors(comm, path, 2)
    np.testing.assert_array_equal(back.points, data.points)
    np.testing.assert_array_equal(back.values, data.values)
    np.testing.assert_array_equal(back.sigma, data.sigma)
    groups = back.experiments(["a", "b"])
    assert list(groups) == ["a", "b"]
    np.testing.assert_array_equal(groups["a"].values, data.values[[0, 2]])
    with pytest.raises(ValueError, match=r"sensors.csv:3: experiment 'b' is not one of"):
        back.experiments(["a"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x,y,value\n0.1,0.2,1.0\n0.3,abc,2.0\n", r":3: column 'y': 'abc' is not a number"),
        ("x,y,value\n# comment\n0.1,0.2,nan\n", r":3: column 'value' is nan"),
        ("x,y,value,sigma\n0.1,0.2,1.0,0\n", r":2: sigma must be > 0"),
        ("x,y,value\n0.1,0.2\n", r":2: 2 field\(s\), expected 3"),
        ("x,y,temperature\n0.1,0.2,1.0\n", r":1: unknown column\(s\) \['temperature'\]"),
        ("x,value\n0.1,1.0\n", r":1: missing column\(s\) \['y'\]"),
        ("x,y,value\n", r": no sensor rows after the header"),
        ("x,y,value,component\n0.1,0.2,1.0,0.5\n", r":2: component must be an integer >= 0"),
    ],
)
def test_bad_sensor_files_name_file_and_line(comm, shared_tmp, text, message):
    path = shared_tmp / "bad.csv"
    if comm.rank == 0:
        path.write_text(text)
    comm.Barrier()
    with pytest.raises(CollectiveError, match=r"bad\.csv" + message):
        read_sensors(comm, path, 2)


def test_a_missing_sensor_file_is_named(comm, shared_tmp):
    with pytest.raises(CollectiveError, match=r"nothere\.csv: no such sensor file"):
        read_sensors(comm, shared_tmp / "nothere.csv", 2)


def test_point_values_are_the_function_at_the_points_on_every_rank(comm):
    """A P2 function x² + y is exact at any point; the gathered values follow the points'
    order whichever rank owns each point (1e-13)."""
    mesh = unit_square(comm, 5)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    u = dolfinx.fem.Function(space)
    u.interpolate(lambda x: x[0] ** 2 + x[1])
    points = np.random.default_rng(1).random((20, 2))
    np.testing.assert_allclose(
        point_values(u, points), points[:, 0] ** 2 + points[:, 1], atol=1e-13
    )
    vector = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (2,)))
    w = dolfinx.fem.Function(vector)
    w.interpolate(lambda x: np.vstack([x[0], 2 * x[1]]))
    np.testing.assert_allclose(point_values(w, points), points * np.array([1.0, 2.0]), atol=1e-13)


def test_expressions_compute_numpy_formulas_and_nothing_else():
    from natinv.expressions import compile_expression

    x = np.array([[0.0, 0.5, 1.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    f = compile_expression("exp(-x) * sin(pi*y) + (x > 0.4) + 2")
    np.testing.assert_allclose(f(x), np.exp(-x[0]) * np.sin(np.pi * x[1]) + (x[0] > 0.4) + 2)
    assert compile_expression("3")(x).shape == (3,)
    for text, message in [
        ("__import__('os')", "unknown function"),
        ("x.real", "Attribute is not allowed"),
        ("open", "unknown name 'open'"),
        ("'a'", "only numbers"),
        ("x +", "cannot parse"),
        ("[x for x in y]", "is not allowed"),
    ]:
        with pytest.raises(ValueError, match=message):
            compile_expression(text)


def test_full_field_from_xdmf_matches_nodes_by_coordinates(comm, shared_tmp):
    """A P1 field written by DOLFINx (XDMF/HDF5) reads back exactly on the same mesh, also
    into a P2 space (interpolated), whatever the partition; a field on another mesh is
    refused naming the file."""
    from natinv.data import read_field

    mesh = unit_square(comm, 6)
    p1 = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u = dolfinx.fem.Function(p1, name="temperature")
    u.interpolate(lambda x: 1 + x[0] + 3 * x[1])
    path = shared_tmp / "field.xdmf"
    with dolfinx.io.XDMFFile(comm, path, "w") as xdmf:
        xdmf.write_mesh(mesh)
        xdmf.write_function(u, 0.0)
    back = read_field(comm, path, p1, "temperature")
    np.testing.assert_allclose(back.x.array, u.x.array, atol=1e-14)
    p2 = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    finer = read_field(comm, path, p2)
    x = p2.tabulate_dof_coordinates()
    np.testing.assert_allclose(finer.x.array, 1 + x[:, 0] + 3 * x[:, 1], atol=1e-13)
    other = dolfinx.fem.functionspace(unit_square(comm, 5), ("Lagrange", 1))
    with pytest.raises(CollectiveError, match=r"field\.xdmf: \d+ node\(s\) of the mesh are not"):
        read_field(comm, path, other)
    with pytest.raises(CollectiveError, match=r"no field 'pressure' in the file"):
        read_field(comm, path, p1, "pressure")
    with pytest.raises(CollectiveError, match=r"nothere\.xdmf: no such file"):
        read_field(comm, shared_tmp / "nothere.xdmf", p1)


def test_region_average_files_round_trip_and_are_validated(comm, shared_tmp):
    """A file of region averages names physical groups instead of coordinates; a coordinate
    column or a missing region column is an error naming file and line."""
    data = SensorData(
        points=np.zeros((2, 0)),
        values=np.array([0.25, 1.0 / 3.0]),
        sigma=np.array([0.01, 0.02]),
        experiment=None,
        lines=np.array([2, 3]),
        region=np.array(["probe-1", "probe-2"]),
    )
    path = shared_tmp / "averages.csv"
    write_sensors(comm, path, data)
    back = read_sensors(comm, path, 2, regions=True)
    assert back.region.tolist() == ["probe-1", "probe-2"] and back.points.shape == (2, 0)
    np.testing.assert_array_equal(back.values, data.values)
    np.testing.assert_array_equal(back.sigma, data.sigma)
    for text, message in (
        (
            "x,y,value\n0.1,0.2,1\n",
            r"bad\.csv:1: unknown column\(s\) \['x', 'y'\]; a file of region",
        ),
        ("value,sigma\n1,0.1\n", r"bad\.csv:1: missing column\(s\) \['region'\]"),
        ("region,value\nprobe-1,nan\n", r"bad\.csv:2: column 'value' is nan"),
    ):
        bad = shared_tmp / "bad.csv"
        comm.Barrier()
        if comm.rank == 0:
            bad.write_text(text)
        comm.Barrier()
        with pytest.raises(CollectiveError, match=message):
            read_sensors(comm, bad, 2, regions=True)


def test_files_saved_with_a_byte_order_mark_read_as_without(comm, shared_tmp):
    """A CSV saved by a spreadsheet as 'UTF-8 with BOM', and a case file with one, give the
    same data and settings as the plain files."""
    from pathlib import Path

    from natinv.cases import load_case

    root = Path(__file__).resolve().parents[1] / "cases"
    plain = (root / "data" / "diffusion_hole.csv").read_text()
    bom = shared_tmp / "bom.csv"
    if comm.rank == 0:
        bom.write_bytes("\ufeff".encode() + plain.encode())
    comm.Barrier()
    a = read_sensors(comm, root / "data" / "diffusion_hole.csv", 2)
    b = read_sensors(comm, bom, 2)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.values, b.values)
    assert np.array_equal(a.sigma, b.sigma)
    text = (root / "diffusion_hole.toml").read_text()
    text = text.replace('"../meshes/', f'"{root.parent / "meshes"}/')
    text = text.replace('"data/', f'"{root / "data"}/')
    case = shared_tmp / "bom.toml"
    if comm.rank == 0:
        (shared_tmp / "plain.toml").write_text(text)
        case.write_bytes("\ufeff".encode() + text.encode())
    comm.Barrier()
    assert load_case(case).parameter == load_case(shared_tmp / "plain.toml").parameter


def test_sensor_files_are_checked_before_they_are_read(comm, shared_tmp, monkeypatch):
    """A device (/dev/zero), a file above the size limit (NATINV_MAX_FILE_MB) and running out
    of memory while reading (on rank 0 only) each end with one error on every rank, naming
    the file and the limit — never a MemoryError on one rank and the others waiting."""
    from natinv import resources

    with pytest.raises(CollectiveError, match=r"/dev/zero: not a regular file"):
        read_sensors(comm, "/dev/zero", 2)
    path = shared_tmp / "big.csv"
    if comm.rank == 0:
        path.write_text("x,y,value\n" + "0.5,0.5,1.0\n" * 200)
    comm.Barrier()
    monkeypatch.setenv("NATINV_MAX_FILE_MB", "0.001")
    with pytest.raises(CollectiveError, match=r"big\.csv: 2.41 kB, more than the 1 kB a sensor"):
        read_sensors(comm, path, 2)
    monkeypatch.delenv("NATINV_MAX_FILE_MB")
    assert read_sensors(comm, path, 2).values.size == 200

    def exhausted(path, what):
        raise MemoryError

    monkeypatch.setattr(resources, "read_text", exhausted)
    with pytest.raises(CollectiveError, match=r"big\.csv: out of memory while reading"):
        read_sensors(comm, path, 2)
