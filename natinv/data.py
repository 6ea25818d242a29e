"""Measurement files: sensor CSV files, read and validated once, shared by every rank.

A sensor file is a CSV table with a header naming its columns:

=============  =========================================================================
column         meaning
=============  =========================================================================
``x, y, z``    sensor coordinates (as many as the mesh's geometric dimension)
``value``      the measured value
``sigma``      optional: the noise standard deviation of that value (> 0)
``experiment`` optional: the experiment (load case) the value belongs to (any label)
``component``  optional: which component of a vector state the value measures (0, 1, ...)
``t``          the time of the value, for a transient model (a time series: the rows of one
               sensor, i.e. of one place, component and experiment, in increasing ``t``)
=============  =========================================================================

A file of *region averages* (the mean of the state over a part of the domain or boundary, e.g.
a probe's footprint) has a ``region`` column, the name of a physical group of the mesh, instead
of coordinates; ``value``, ``sigma`` and ``experiment`` as above.

Lines starting with ``#`` and blank lines are skipped. Rank 0 reads the file; every problem
(missing file, unknown or missing column, a field that is not a number, NaN/inf, σ ≤ 0, a
row of the wrong length) is raised on every rank naming the file and line.

Full fields come as XDMF files as DOLFINx writes them (``write_mesh`` then ``write_function`` of
a P1 function, point data in HDF5): :func:`read_field` matches the file's nodes to the mesh by
coordinates, so the data need the same mesh, not the same partition or numbering.
"""

from __future__ import annotations

import csv
import io
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dolfinx
import numpy as np
import numpy.typing as npt

from natinv import parallel, resources
from natinv.output import atomic_path, rank0_writer
from natinv.parallel import Comm

__all__ = ["SensorData", "read_field", "read_sensors", "write_sensors"]

COORDINATES = ("x", "y", "z")


@dataclass
class SensorData:
    """Sensor coordinates ``(n, gdim)``, values ``(n,)``, σ ``(n,)`` or None, experiment
    labels ``(n,)`` or None, and each row's line in its file (for messages)."""

    points: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    sigma: npt.NDArray[np.float64] | None
    experiment: npt.NDArray[np.str_] | None
    lines: npt.NDArray[np.int64]
    source: str = "<memory>"
    component: npt.NDArray[np.int64] | None = None
    region: npt.NDArray[np.str_] | None = None  # region averages: the regions' names
    time: npt.NDArray[np.float64] | None = None  # time series: each value's time

    def experiments(self, names: list[str] | None = None) -> dict[str, SensorData]:
        """The rows of each experiment (all rows under ``""`` if the file has no experiment
        column). With ``names``, every label in the file must be one of them.

        Raises:
            ValueError: a label that is not among ``names`` (file and line named).
        """
        if self.experiment is None:
            return {"": self}
        if names is not None:
            unknown = [i for i, e in enumerate(self.experiment) if e not in names]
            if unknown:
                i = unknown[0]
                raise ValueError(
                    f"{self.source}:{self.lines[i]}: experiment {str(self.experiment[i])!r} is not "
                    f"one of the case's experiments {names} ({len(unknown)} such row(s))"
                )
        groups = {}
        for label in dict.fromkeys(self.experiment.tolist()):
            mask = self.experiment == label
            groups[label] = SensorData(
                self.points[mask],
                self.values[mask],
                None if self.sigma is None else self.sigma[mask],
                self.experiment[mask],
                self.lines[mask],
                self.source,
                None if self.component is None else self.component[mask],
                None if self.region is None else self.region[mask],
                None if self.time is None else self.time[mask],
            )
        return groups

    def series(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Time series: for each row, its sensor (an index into the distinct places, or
        regions, and components in order of first appearance), and the first row of each
        sensor. Without a ``t`` column every row is its own sensor."""
        keys = [
            (
                str(self.region[i]) if self.region is not None else tuple(self.points[i]),
                None if self.component is None else int(self.component[i]),
                None if self.experiment is None else str(self.experiment[i]),
            )
            for i in range(self.values.size)
        ]
        if self.time is None:
            return np.arange(len(keys)), np.arange(len(keys))
        numbers: dict[Any, int] = {}
        sensor = np.array([numbers.setdefault(k, len(numbers)) for k in keys], dtype=np.int64)
        first = np.array([keys.index(k) for k in numbers], dtype=np.int64)
        return sensor, first


def _parse(text: str, source: str, gdim: int, regions: bool = False) -> SensorData:
    rows = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise ValueError(f"{source}: no header line (expected columns x, y, value, ...)")
    header_line, header = rows[0]
    columns = [c.strip().lower() for c in next(csv.reader([header]))]
    if regions:
        allowed = {"region", "value", "sigma", "experiment", "t"}
        required = ["region", "value"]
        what = "a file of region averages"
    else:
        allowed = {*COORDINATES[:gdim], "value", "sigma", "experiment", "component", "t"}
        required = [*COORDINATES[:gdim], "value"]
        what = f"a {gdim}D sensor file"
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ValueError(
            f"{source}:{header_line}: unknown column(s) {unknown}; {what} has "
            f"columns {sorted(allowed)}"
        )
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{source}:{header_line}: missing column(s) {missing}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"{source}:{header_line}: repeated column names {columns}")
    numeric = [c for c in columns if c not in ("experiment", "region")]
    table: dict[str, list] = {c: [] for c in columns}
    lines = []
    for number, line in rows[1:]:
        fields = [f.strip() for f in next(csv.reader([line]))]
        if len(fields) != len(columns):
            raise ValueError(
                f"{source}:{number}: {len(fields)} field(s), expected {len(columns)} ({columns})"
            )
        for name, text_value in zip(columns, fields, strict=True):
            if name not in numeric:
                table[name].append(text_value)
                continue
            try:
                value = float(text_value)
            except ValueError:
                raise ValueError(
                    f"{source}:{number}: column {name!r}: {text_value!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise ValueError(f"{source}:{number}: column {name!r} is {text_value}")
            if name == "sigma" and value <= 0:
                raise ValueError(f"{source}:{number}: sigma must be > 0, got {text_value}")
            if name == "t" and value < 0:
                raise ValueError(f"{source}:{number}: t must be >= 0, got {text_value}")
            if name == "component" and not (value >= 0 and value == int(value)):
                raise ValueError(
                    f"{source}:{number}: component must be an integer >= 0, got {text_value}"
                )
            table[name].append(value)
        lines.append(number)
    if not lines:
        raise ValueError(f"{source}: no sensor rows after the header")
    coordinates = [] if regions else COORDINATES[:gdim]
    data = SensorData(
        points=np.column_stack([table[c] for c in coordinates] or [np.zeros((len(lines), 0))])
        .astype(np.float64)
        .reshape(len(lines), len(coordinates)),
        values=np.asarray(table["value"], dtype=np.float64),
        sigma=np.asarray(table["sigma"], dtype=np.float64) if "sigma" in table else None,
        experiment=np.asarray(table["experiment"], dtype=str) if "experiment" in table else None,
        lines=np.asarray(lines, dtype=np.int64),
        source=source,
        component=np.asarray(table["component"], dtype=np.int64) if "component" in table else None,
        region=np.asarray(table["region"], dtype=str) if "region" in table else None,
        time=np.asarray(table["t"], dtype=np.float64) if "t" in table else None,
    )
    if data.time is not None:
        _check_series(data)
    return data


def _check_series(data: SensorData) -> None:
    """Each sensor's rows in increasing time (an unsorted series is a mistake in the file)."""
    assert data.time is not None
    sensor, _ = data.series()
    last: dict[int, int] = {}
    for row, s in enumerate(sensor):
        before = last.get(int(s))
        if before is not None and not data.time[row] > data.time[before]:
            raise ValueError(
                f"{data.source}:{data.lines[row]}: t = {data.time[row]:g} does not come after "
                f"t = {data.time[before]:g} of the same sensor (line {data.lines[before]}); "
                "a sensor's rows must be in increasing t"
            )
        last[int(s)] = row


def read_sensors(comm: Comm, path: str | Path, gdim: int, regions: bool = False) -> SensorData:
    """Read a sensor CSV file (or, with ``regions``, a file of region averages) on rank 0 and
    share it. Collective.

    Raises:
        CollectiveError: on every rank, naming the file (and line) at fault.
    """
    path = Path(path)
    data: SensorData | None = None
    error: str | None = None
    if comm.rank == 0:
        try:
            data = _parse(resources.read_text(path, "sensor file"), str(path), gdim, regions)
        except FileNotFoundError:
            error = f"{path}: no such sensor file"
        except (OSError, UnicodeDecodeError) as exc:
            error = f"{path}: cannot be read ({exc})"
        except MemoryError:
            error = f"{path}: out of memory while reading the sensor file"
        except ValueError as exc:  # (ResourceError too)
            error = str(exc)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise parallel.CollectiveError(error)
    return comm.bcast(data, root=0)


def write_sensors(comm: Comm, path: str | Path, data: SensorData) -> None:
    """Write a sensor CSV file (rank 0, atomically: a reader never sees half a file).
    Collective: an error on rank 0 is raised on every rank."""

    @rank0_writer
    def write(comm: Comm, path: Path) -> None:
        gdim = 0 if data.region is not None else data.points.shape[1]
        columns = ["region"] if data.region is not None else [*COORDINATES[:gdim]]
        columns += ["value"]
        columns += ["sigma"] if data.sigma is not None else []
        columns += ["experiment"] if data.experiment is not None else []
        columns += ["component"] if data.component is not None else []
        columns += ["t"] if data.time is not None else []
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for i in range(data.values.size):
            row = [str(data.region[i])] if data.region is not None else []
            row += [repr(float(c)) for c in data.points[i, :gdim]] + [repr(float(data.values[i]))]
            if data.sigma is not None:
                row.append(repr(float(data.sigma[i])))
            if data.experiment is not None:
                row.append(str(data.experiment[i]))
            if data.component is not None:
                row.append(str(int(data.component[i])))
            if data.time is not None:
                row.append(repr(float(data.time[i])))
            writer.writerow(row)
        with atomic_path(path) as tmp:
            tmp.write_text(buffer.getvalue())

    write(comm, Path(path))


def _xdmf_arrays(path: Path, name: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(node coordinates, node values, attribute name) of the last time step in an XDMF file."""
    import h5py

    root = ET.parse(path).getroot()

    def hdf(item: ET.Element) -> np.ndarray:
        file, _, dataset = (item.text or "").strip().partition(":")
        with h5py.File(path.parent / file, "r") as h5:
            return np.asarray(h5[dataset][()], dtype=np.float64)

    geometry = next(root.iter("Geometry"), None)
    if geometry is None or geometry.find("DataItem") is None:
        raise ValueError(f"{path}: no mesh geometry in the file")
    attributes = [a for a in root.iter("Attribute") if name is None or a.get("Name") == name]
    if not attributes:
        names = sorted({a.get("Name", "?") for a in root.iter("Attribute")})
        raise ValueError(f"{path}: no field {name!r} in the file (fields: {names})")
    attribute = attributes[-1]
    if attribute.get("Center", "Node") != "Node":
        raise ValueError(f"{path}: field {attribute.get('Name')!r} is not node (P1) data")
    item = attribute.find("DataItem")
    assert item is not None
    return hdf(geometry.find("DataItem")), hdf(item), str(attribute.get("Name"))  # type: ignore[arg-type]


def read_field(
    comm: Comm, path: str | Path, space: dolfinx.fem.FunctionSpace, name: str | None = None
) -> dolfinx.fem.Function:
    """A full field from an XDMF file (node data of a P1 function, as DOLFINx writes it),
    interpolated into ``space``. Rank 0 reads; every rank matches its nodes by coordinates.
    Collective.

    Raises:
        CollectiveError: a missing or unreadable file, no such field, non-finite values, a
            value size that does not fit the space, or nodes of the mesh not in the file.
    """
    path = Path(path)
    arrays = None
    error: str | None = None
    if comm.rank == 0:
        try:
            arrays = _xdmf_arrays(path, name)
        except FileNotFoundError as exc:
            error = f"{path}: no such file ({exc.filename})"
        except (OSError, ET.ParseError, KeyError) as exc:
            error = f"{path}: cannot be read as XDMF/HDF5 ({exc})"
        except ValueError as exc:
            error = str(exc)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise parallel.CollectiveError(error)
    coords, values, label = comm.bcast(arrays, root=0)
    mesh = space.mesh
    gdim = mesh.geometry.dim
    shape = space.ufl_element().reference_value_shape
    bs = int(np.prod(shape)) if shape else 1
    values = values.reshape(coords.shape[0], -1)
    parallel.check_all(
        comm,
        values.shape[1] == bs and bool(np.all(np.isfinite(values))),
        f"{path}: field {label!r} has {values.shape[1]} component(s) per node (the space has "
        f"{bs}) or non-finite values",
    )
    nodal = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, shape) if shape else ("Lagrange", 1))
    extent = max(float(np.ptp(coords[:, :gdim], axis=0).max()), 1e-300)
    tolerance = 1e-9 * extent
    table = {
        tuple(k): i for i, k in enumerate(np.round(coords[:, :gdim] / tolerance).astype(np.int64))
    }
    owned = nodal.dofmap.index_map.size_local
    mine = np.round(nodal.tabulate_dof_coordinates()[:owned, :gdim] / tolerance).astype(np.int64)
    rows = np.array([table.get(tuple(k), -1) for k in mine], dtype=np.int64)
    missing = int(np.sum(rows < 0))
    parallel.check_all(
        comm,
        missing == 0,
        lambda: f"{path}: {missing} node(s) of the mesh are not in the file (another mesh?)",
    )
    function = dolfinx.fem.Function(nodal, name=label)
    function.x.array[: owned * bs] = values[rows].reshape(-1)
    function.x.scatter_forward()
    if nodal.ufl_element() == space.ufl_element():
        return function
    result = dolfinx.fem.Function(space, name=label)
    result.interpolate(function)
    return result
