"""Measurements of a finite-element state: ``d ≈ B u`` with Gaussian noise.

An :class:`Observations` holds a linear observation operator ``B`` (a PETSc matrix from the state
space to the observation rows, or the identity), the data ``d`` and the noise metric ``W`` of the
misfit

    ½ (B u − d)ᵀ W (B u − d).

Built in:

- :func:`point_sensors` — point values at any coordinates; each sensor's row lives on the rank
  that owns the cell containing it (DOLFINx point ownership); ``W = diag(1/σ²)``.
- :func:`averages` — means over subdomains or boundary parts (``∫_ω u / |ω|``, one row each, on
  rank 0); ``W = diag(1/σ²)``.
- :func:`full_field` — the whole state as data (``B = I``) in the L2 norm: ``W = M/σ²`` with
  ``M`` the mass matrix, the misfit ``½‖u − d‖²_L2/σ²``.

The rows of ``B`` are distributed (a rank owns the rows of its sensors), so ``W`` is the metric of
a Gauss–Newton Gram ``(BSJ)ᵀ W (BSJ)`` through the same :class:`~natinv.gram.Gram` path as any
other metric.
"""

from __future__ import annotations

from collections.abc import Sequence

from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import numpy.typing as npt
import ufl

from natinv import parallel
from natinv.fields import same_space

__all__ = [
    "Observations",
    "TimeSeries",
    "averages",
    "diagonal_metric",
    "full_field",
    "locate_points",
    "point_sensors",
    "point_values",
]


class Observations:
    """Data ``d`` of ``B u`` for a state in ``space``, with the noise metric ``W``.

    Args:
        space: the state space.
        operator: ``B`` (rows × state dofs, distributed rows), or ``None`` for the identity.
        data: the owned entries of ``d`` (in the row order of ``B``).
        metric: ``W`` on the rows (rows × rows).
        name: a label for messages and histories.
        index: for each owned row, its index in the user's ordering (e.g. the sensor's line in
            a file), or ``None``.

    The object owns ``B`` and ``W``; call :meth:`destroy` when done.
    """

    def __init__(
        self,
        space: dolfinx.fem.FunctionSpace,
        operator: PETSc.Mat | None,
        data: npt.ArrayLike,
        metric: PETSc.Mat,
        name: str = "observations",
        index: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.space = space
        self.comm = space.mesh.comm
        self.operator = operator
        self.metric = metric
        self.name = name
        self.data = np.asarray(data, dtype=np.float64).reshape(-1)
        self.num_owned = int(metric.getLocalSize()[0])
        self.num_global = int(metric.getSize()[0])
        self.index = index
        parallel.check_all(
            self.comm,
            self.data.size == self.num_owned,
            lambda: f"{name}: {self.data.size} data values here, expected {self.num_owned}",
        )
        parallel.ensure_finite(self.comm, self.data, f"{name}: the data")
        self._r = metric.createVecRight()
        self._wr = metric.createVecLeft()
        self._bu = metric.createVecRight()

    def predict(self, u: PETSc.Vec) -> npt.NDArray[np.float64]:
        """``B u`` on the owned rows for a state vector (PETSc, the state's layout). Collective."""
        if self.operator is None:
            return np.array(u.array_r[: self.num_owned])
        self.operator.mult(u, self._bu)
        return np.array(self._bu.array_r)

    def apply(self, columns: PETSc.Mat) -> PETSc.Mat:
        """``B X`` for a dense matrix of state columns (a new matrix; caller destroys)."""
        if self.operator is None:
            return columns.copy()
        return self.operator.matMult(columns)

    def misfit(self, u: PETSc.Vec, gradient: PETSc.Vec | None = None) -> float:
        """``½ (Bu − d)ᵀ W (Bu − d)``; adds ``Bᵀ W (Bu − d)`` to ``gradient`` if given.
        Collective."""
        residual = self.predict(u) - self.data
        if gradient is None:
            self._r.array[:] = residual
            self.metric.mult(self._r, self._wr)
        else:
            self.pull_back(residual, gradient)
        return float(0.5 * self._r.dot(self._wr))

    def normal(self, du: PETSc.Vec, out: PETSc.Vec) -> None:
        """Add ``Bᵀ W B δu`` to ``out`` (the Gauss–Newton product in the state). Collective."""
        self.pull_back(self.predict(du), out)

    def pull_back(self, rows: npt.ArrayLike, out: PETSc.Vec) -> None:
        """Add ``Bᵀ W w`` to the state vector ``out`` for ``w`` on the owned rows. Collective."""
        self._r.array[:] = rows
        self.metric.mult(self._r, self._wr)
        if self.operator is None:
            out.array[: self.num_owned] += self._wr.array_r
        else:
            self.operator.multTransposeAdd(self._wr, out, out)

    def subset(self, chosen: npt.NDArray[np.int64], name: str | None = None) -> Observations:
        """The observations of the rows ``chosen`` alone, numbered as the user's (``index``:
        e.g. the sensors' lines in their file; global row numbers where the block has no
        index), the same on every rank: each rank keeps those it owns, in its order. ``B``'s
        rows, the data and the noise metric's diagonal. Needs an observation operator and
        independent errors (a diagonal ``W``: a subset of correlated rows would need the
        inverse of the covariance's block). The new object owns its matrices. Collective."""
        chosen = np.asarray(chosen, dtype=np.int64)
        start, end = self.metric.getOwnershipRange()
        if self.index is not None:  # (the same rows whatever the ranks that own them)
            local = np.nonzero(np.isin(self.index, chosen))[0]
        else:
            local = chosen[(chosen >= start) & (chosen < end)] - start
        diagonal = True
        if self.operator is not None:
            try:  # (a dense metric, correlated noise, has no CSR form)
                indptr, columns, _ = self.metric.getValuesCSR()
            except PETSc.Error:
                diagonal = False
            else:
                counts = np.diff(indptr)
                diagonal = bool(
                    np.all(counts <= 1) and np.array_equal(columns, np.nonzero(counts)[0] + start)
                )
        parallel.check_all(
            self.comm,
            self.operator is not None and diagonal,
            f"{self.name}: a subset of the rows needs point or region observations with "
            "independent errors (a diagonal noise metric), not a full field or correlated noise",
        )
        parallel.check_all(
            self.comm,
            chosen.size == 0 or (chosen.min() >= 0 and chosen.max() < self.num_global),
            lambda: f"{self.name}: rows outside 0..{self.num_global - 1} chosen",
        )
        assert self.operator is not None
        weights = self.metric.getDiagonal()
        local_weights = np.array(weights.array_r[local])
        weights.destroy()
        first = self.operator.getOwnershipRangeColumn()[0]
        width = self.operator.getLocalSize()[1]
        rows = PETSc.IS().createGeneral((local + start).astype(PETSc.IntType), comm=self.comm)
        columns = PETSc.IS().createStride(width, first=first, step=1, comm=self.comm)
        operator = self.operator.createSubMatrix(rows, columns)
        for obj in (rows, columns):
            obj.destroy()
        return Observations(
            self.space,
            operator,
            self.data[local],
            diagonal_metric(self.comm, local_weights),
            self.name if name is None else name,
            index=None if self.index is None else self.index[local],
        )

    def destroy(self) -> None:
        for obj in (self.operator, self.metric, self._r, self._wr, self._bu):
            if obj is not None:
                obj.destroy()


def diagonal_metric(comm: parallel.Comm, weights: npt.NDArray[np.float64]) -> PETSc.Mat:
    """``diag(weights)`` on the owned rows (a noise metric ``W``); the caller destroys it."""
    n = weights.size
    total = int(comm.allreduce(n))
    matrix = PETSc.Mat().createAIJ(((n, total), (n, total)), nnz=(1, 0), comm=comm)
    matrix.setUp()
    diagonal = matrix.createVecLeft()
    diagonal.array[:] = weights
    matrix.setDiagonal(diagonal)
    matrix.assemble()
    diagonal.destroy()
    return matrix


def _sigmas(
    comm: parallel.Comm, sigma: float | npt.ArrayLike, count: int, name: str
) -> npt.NDArray[np.float64]:
    values = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (count,)).copy()
    bad = np.where(~(np.isfinite(values) & (values > 0)))[0]
    parallel.check_all(
        comm,
        bad.size == 0,
        lambda: f"{name}: σ must be finite and > 0; not at entries {bad[:10].tolist()}",
    )
    return values


def locate_points(
    mesh: dolfinx.mesh.Mesh, points: npt.ArrayLike, name: str = "sensors"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
    """The points (replicated, ``(n, gdim)``) owned by this rank: their indices, cells and
    coordinates (``(k, 3)``). A point is owned by exactly one rank. Collective.

    Raises:
        CollectiveError: some points lie outside the mesh (listed, at most 10).
    """
    comm = mesh.comm
    gdim = mesh.geometry.dim
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(-1, gdim) if gdim > 1 else array[:, None]
    parallel.check_all(
        comm,
        array.ndim == 2 and array.shape[1] == gdim,
        lambda: f"{name}: coordinates have shape {array.shape}, expected (n, {gdim})",
    )
    parallel.ensure_finite(comm, array, f"{name}: coordinates")
    parallel.check_replicated(comm, array, f"{name}: coordinates")
    padded = np.zeros((array.shape[0], 3))
    padded[:, :gdim] = array
    extent = np.ptp(mesh.geometry.x, axis=0).max() if mesh.geometry.x.size else 1.0
    extent = parallel.allreduce_max(comm, float(extent))
    send = padded if comm.rank == 0 else np.zeros((0, 3))
    ownership = dolfinx.geometry.determine_point_ownership(mesh, send, 1e-10 * extent)
    owners = comm.bcast(np.asarray(ownership.src_owner) if comm.rank == 0 else None, root=0)
    outside = np.where(owners < 0)[0]
    parallel.check_all(
        comm,
        outside.size == 0,
        lambda: (
            f"{name}: {outside.size} point(s) lie outside the mesh: "
            + ", ".join(f"#{i} at {array[i].tolist()}" for i in outside[:10])
            + (" ..." if outside.size > 10 else "")
        ),
    )
    mine = np.where(owners == comm.rank)[0]
    cells = np.asarray(ownership.dest_cells, dtype=np.int32)
    coords = np.asarray(ownership.dest_points).reshape(-1, 3)
    # points arrive from rank 0 in the order sent: check, so rows match the right data
    ok = cells.size == mine.size and np.allclose(coords, padded[mine])
    parallel.check_all(comm, ok, f"{name}: point ownership came back out of order")
    return mine.astype(np.int64), cells, coords


def point_sensors(
    space: dolfinx.fem.FunctionSpace,
    points: npt.ArrayLike,
    values: npt.ArrayLike,
    sigma: float | npt.ArrayLike = 1.0,
    components: Sequence[int] | None = None,
    name: str = "sensors",
) -> Observations:
    """Point values of the state at ``points`` (``(n, gdim)``, the same on every rank).

    Args:
        space: a Lagrange state space (scalar or blocked).
        points: the sensor coordinates.
        values: the measured values, one per sensor (``(n,)``), or ``(n, len(components))``.
        sigma: the noise standard deviation, one number or one per value.
        components: for a blocked space, which components each sensor measures (default all).
        name: a label for messages.

    Raises:
        CollectiveError: sensors outside the mesh (listed), NaN data, shape mismatches, σ ≤ 0.
    """
    comm = space.mesh.comm
    element = space.element
    parallel.check_all(
        comm,
        not element.needs_dof_transformations and element.interpolation_ident,
        f"{name}: point sensors need a Lagrange state space",
    )
    bs = int(space.dofmap.index_map_bs)
    comps = list(range(bs)) if components is None else [int(c) for c in components]
    parallel.check_all(
        comm,
        len(comps) > 0 and all(0 <= c < bs for c in comps),
        f"{name}: components {comps} out of range for {bs} component(s)",
    )
    owned, cells, coords = locate_points(space.mesh, points, name)
    npoints = int(
        np.asarray(points, dtype=np.float64).reshape(-1, space.mesh.geometry.dim).shape[0]
    )
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 1 and len(comps) == 1:
        data = data[:, None]
    parallel.check_all(
        comm,
        data.shape == (npoints, len(comps)),
        lambda: (
            f"{name}: values have shape {np.shape(values)}, expected ({npoints},)"
            + (f" or ({npoints}, {len(comps)})" if len(comps) > 1 else "")
        ),
    )
    parallel.ensure_finite(comm, data, f"{name}: the data")
    sig = _sigmas(comm, sigma, data.size, name).reshape(data.shape)

    geometry = space.mesh.geometry
    gdim = geometry.dim
    basis = element.basix_element
    index_map = space.dofmap.index_map
    rows_here = owned.size * len(comps)
    row_start = int(comm.exscan(rows_here) or 0)
    total_rows = int(comm.allreduce(rows_here))
    ncols_local = index_map.size_local * bs
    ncols = index_map.size_global * bs
    matrix = PETSc.Mat().createAIJ(
        ((rows_here, total_rows), (ncols_local, ncols)),
        nnz=(basis.dim, basis.dim),
        comm=comm,
    )
    matrix.setUp()
    for k, (cell, x) in enumerate(zip(cells, coords, strict=True)):
        nodes = geometry.x[geometry.dofmaps[0][cell], :gdim]
        reference = geometry.cmaps[0].pull_back(x[None, :gdim], nodes)
        phi = basis.tabulate(0, reference)[0, 0, :, 0]
        dofs = index_map.local_to_global(space.dofmap.cell_dofs(cell).astype(np.int32))
        for j, c in enumerate(comps):
            matrix.setValues(
                row_start + k * len(comps) + j, (dofs * bs + c).astype(PETSc.IntType), phi
            )
    matrix.assemble()
    order = np.repeat(owned, len(comps))
    local_data = data[owned].reshape(-1)
    weights = 1.0 / sig[owned].reshape(-1) ** 2
    return Observations(space, matrix, local_data, diagonal_metric(comm, weights), name, order)


def averages(
    space: dolfinx.fem.FunctionSpace,
    measures: Sequence[ufl.Measure],
    values: npt.ArrayLike,
    sigma: float | npt.ArrayLike = 1.0,
    name: str = "averages",
) -> Observations:
    """Means of a scalar state over parts of the domain or boundary, ``∫_ω u / |ω|``.

    Args:
        measures: one UFL measure per average, e.g. ``ufl.ds(domain=mesh, subdomain_data=tags,
            subdomain_id=1)`` or ``ufl.dx(domain=mesh)``.
        values: the measured means (one each).
        sigma: the noise standard deviation, one number or one per average.

    The rows live on rank 0. Raises CollectiveError for an empty region, NaN, σ ≤ 0.
    """
    comm = space.mesh.comm
    parallel.check_all(
        comm, int(space.dofmap.index_map_bs) == 1, f"{name}: averages need a scalar state"
    )
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    parallel.check_all(
        comm,
        data.size == len(measures) and len(measures) > 0,
        lambda: f"{name}: {data.size} values for {len(measures)} region(s)",
    )
    parallel.ensure_finite(comm, data, f"{name}: the data")
    sig = _sigmas(comm, sigma, data.size, name)
    index_map = space.dofmap.index_map
    n_local, n_global = index_map.size_local, index_map.size_global
    rows_here = len(measures) if comm.rank == 0 else 0
    matrix = PETSc.Mat().createAIJ(((rows_here, len(measures)), (n_local, n_global)), comm=comm)
    matrix.setPreallocationNNZ((n_local if comm.rank == 0 else 0, n_global))
    matrix.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
    matrix.setUp()
    v = ufl.TestFunction(space)
    one = dolfinx.fem.Constant(space.mesh, 1.0)
    lo = index_map.local_range[0]
    for i, measure in enumerate(measures):
        size = comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(one * measure)))
        parallel.check_all(comm, size > 0, f"{name}: region {i} has zero size")
        vector = dolfinx.fem.petsc.assemble_vector(dolfinx.fem.form(v * measure))
        vector.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
        entries = vector.array_r[:n_local] / size
        nonzero = np.nonzero(entries)[0]
        matrix.setValues(
            i,
            (lo + nonzero).astype(PETSc.IntType),
            entries[nonzero],
            addv=PETSc.InsertMode.ADD_VALUES,
        )
        vector.destroy()
    matrix.assemble()
    local = data if comm.rank == 0 else np.zeros(0)
    weights = 1.0 / sig**2 if comm.rank == 0 else np.zeros(0)
    index = np.arange(len(measures)) if comm.rank == 0 else np.zeros(0, dtype=np.int64)
    return Observations(space, matrix, local, diagonal_metric(comm, weights), name, index)


def full_field(
    space: dolfinx.fem.FunctionSpace,
    data: dolfinx.fem.Function,
    sigma: float = 1.0,
    name: str = "field",
) -> Observations:
    """The whole state as data, ``½‖u − d‖²_L2 / σ²`` (``B = I``, ``W = M/σ²``)."""
    comm = space.mesh.comm
    parallel.check_all(
        comm, np.isfinite(sigma) and sigma > 0, f"{name}: σ must be finite and > 0, got {sigma}"
    )
    parallel.check_all(
        comm,
        same_space(data.function_space, space),
        f"{name}: the data Function lives on another space than the state",
    )
    w, z = ufl.TrialFunction(space), ufl.TestFunction(space)
    scale = dolfinx.fem.Constant(space.mesh, 1.0 / float(sigma) ** 2)
    metric = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(scale * ufl.inner(w, z) * ufl.dx))
    metric.assemble()
    owned = space.dofmap.index_map.size_local * space.dofmap.index_map_bs
    return Observations(space, None, data.x.array[:owned], metric, name)


def point_values(
    u: dolfinx.fem.Function, points: npt.ArrayLike, name: str = "points"
) -> npt.NDArray[np.float64]:
    """The values of ``u`` at ``points`` (``(n, gdim)``, replicated), gathered on every rank in
    the points' order, shape ``(n,)`` or ``(n, block_size)`` (e.g. to synthesize sensor data).
    Collective."""
    space = u.function_space
    bs = int(space.dofmap.index_map_bs)
    npoints = int(
        np.asarray(points, dtype=np.float64).reshape(-1, space.mesh.geometry.dim).shape[0]
    )
    probe = point_sensors(space, points, np.zeros((npoints, bs)) if bs > 1 else np.zeros(npoints))
    values = np.zeros(npoints * bs)
    local = probe.predict(u.x.petsc_vec)
    assert probe.index is not None
    rows = (
        probe.index * bs + np.tile(np.arange(bs), probe.index.size // bs) if bs > 1 else probe.index
    )
    for index, value in zip(
        space.mesh.comm.allgather(rows), space.mesh.comm.allgather(local), strict=True
    ):
        values[index] = value
    probe.destroy()
    return values.reshape(npoints, bs) if bs > 1 else values


class TimeSeries:
    """Rows of a spatial observation at times: ``d_k ≈ (B u(t_k))_{s_k}`` for a trajectory
    ``u_0, ..., u_N`` on steps of ``dt``, ``u(t)`` linear between steps, ``W = diag(1/σ_k²)``.

    Args:
        spatial: the spatial rows ``B`` (:func:`point_sensors`, :func:`averages`; its data are
            not used). Each value ``k`` lives on the rank that owns its row ``s_k``.
        rows: for each owned value, its row among ``spatial``'s owned rows.
        times: for each owned value, its time, in ``[0, dt · steps]``.
        data, sigma: the owned values and their noise standard deviations.
        dt, steps: the model's time step and number of steps.
        name: a label; index: each owned value's index in the user's ordering (e.g. its line).

    It owns ``spatial``. The misfit and its gradient are taken step by step
    (:meth:`observe`, :meth:`pull_back`) by :class:`~natinv.objectives.inverse.
    TransientExperiment`.
    """

    operator = None  # no single observation operator: rows of the trajectory

    def __init__(
        self,
        spatial: Observations,
        rows: npt.ArrayLike,
        times: npt.ArrayLike,
        data: npt.ArrayLike,
        sigma: npt.ArrayLike,
        dt: float,
        steps: int,
        name: str = "time series",
        index: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.spatial = spatial
        self.space = spatial.space
        self.comm = spatial.comm
        self.name = name
        parallel.check_all(
            self.comm,
            spatial.operator is not None,
            f"{name}: time series of a full field are not supported (point or region rows)",
        )
        self.index = index
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.times = np.asarray(times, dtype=np.float64).reshape(-1)
        self.data = np.asarray(data, dtype=np.float64).reshape(-1)
        count = self.data.size
        parallel.check_all(
            self.comm,
            self.rows.size == count and self.times.size == count,
            lambda: f"{name}: {count} values, {self.rows.size} rows and {self.times.size} times",
        )
        parallel.ensure_finite(self.comm, self.data, f"{name}: the data")
        parallel.ensure_finite(self.comm, self.times, f"{name}: the times")
        horizon = dt * steps
        outside = np.where((self.times < 0) | (self.times > horizon * (1 + 1e-12)))[0]
        parallel.check_all(
            self.comm,
            outside.size == 0,
            lambda: f"{name}: time {self.times[outside[0]]} outside the horizon [0, {horizon}]",
        )
        parallel.check_all(
            self.comm,
            bool(np.all((self.rows >= 0) & (self.rows < spatial.num_owned))),
            f"{name}: a value refers to a row the spatial observation does not have",
        )
        sig = _sigmas(self.comm, sigma, count, name)
        self.weights = 1.0 / sig**2
        self.metric = diagonal_metric(self.comm, self.weights)
        self.num_owned = count
        self.num_global = int(self.comm.allreduce(count))
        self.steps = int(steps)
        # u(t_k) = (1 − w) u_n + w u_{n+1}: each value's two steps and weights
        position = np.clip(self.times / dt, 0.0, float(steps))
        lower = np.minimum(np.floor(position + 1e-9).astype(np.int64), steps - 1)
        upper_weight = np.clip(position - lower, 0.0, 1.0)
        upper_weight[np.abs(upper_weight) < 1e-9] = 0.0
        upper_weight[np.abs(upper_weight - 1) < 1e-9] = 1.0
        values = np.concatenate([np.arange(count), np.arange(count)])
        steps_of = np.concatenate([lower, lower + 1])
        weight = np.concatenate([1.0 - upper_weight, upper_weight])
        keep = weight != 0.0
        self._touch: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
        for n in np.unique(steps_of[keep]):
            here = keep & (steps_of == n)
            self._touch[int(n)] = (values[here], weight[here])
        # the same for every rank's values, in global numbering (value columns, spatial rows)
        offset = int(self.comm.exscan(count) or 0)
        start = int(spatial.metric.getOwnershipRange()[0])
        mine = (
            values[keep] + offset,
            self.rows[values[keep]] + start,
            steps_of[keep],
            weight[keep],
        )
        gathered = [np.concatenate(part) for part in zip(*self.comm.allgather(mine), strict=True)]
        self._global_touch = {
            int(n): (
                gathered[0][gathered[2] == n],
                gathered[1][gathered[2] == n],
                gathered[3][gathered[2] == n],
            )
            for n in np.unique(gathered[2])
        }
        self._transposed: PETSc.Mat | None = None

    @property
    def steps_observed(self) -> list[int]:
        """The steps some owned value depends on."""
        return sorted(self._touch)

    def observe(self, n: int, spatial_rows: npt.NDArray[np.float64], out: npt.NDArray) -> None:
        """Add step ``n``'s part to the owned values ``out`` (``(num_owned,)`` or
        ``(num_owned, k)``) given ``B u_n`` on the owned spatial rows (same trailing shape)."""
        if n not in self._touch:
            return
        values, weight = self._touch[n]
        picked = spatial_rows[self.rows[values]]
        np.add.at(out, values, weight.reshape((-1,) + (1,) * (picked.ndim - 1)) * picked)

    def pull_back(self, n: int, weighted: npt.NDArray[np.float64], out: PETSc.Vec) -> None:
        """Add step ``n``'s ``Bᵀ`` part of the owned values ``weighted`` (already multiplied by
        ``W``) to the state vector ``out``. Collective (every rank calls it for every step)."""
        z = self.spatial._r
        z.array[:] = 0.0
        if n in self._touch:
            values, weight = self._touch[n]
            np.add.at(z.array, self.rows[values], weight * weighted[values])
        assert self.spatial.operator is not None
        self.spatial.operator.multTransposeAdd(z, out, out)

    def transposed(self) -> PETSc.Mat:
        """``Bᵀ`` as a dense matrix (state × spatial rows), made once and kept."""
        if self._transposed is None:
            assert self.spatial.operator is not None
            self._transposed = self.spatial.operator.transpose(PETSc.Mat())
            self._transposed.convert("dense")
        return self._transposed

    def combine(self, per_step: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """From the columns ``(n − 1)·S + s`` of ``per_step`` (a quantity of ``(B u_n)_s``
        for n = 1..N, e.g. its gradient), the same of every value, ``Σ_n w_{k,n} (·)``: one
        column per value (all ranks' values, in their global order)."""
        count = int(self.spatial.metric.getSize()[0])
        out = np.zeros((per_step.shape[0], self.num_global))
        for n, (columns, rows, weight) in self._global_touch.items():
            if n > 0:  # u_0 is given
                out[:, columns] += per_step[:, (n - 1) * count + rows] * weight
        return out

    def seed(self, n: int, out: PETSc.Mat) -> None:
        """Add to the dense ``out`` (state × values, the values' columns laid out as this
        object's owned rows) step ``n``'s ``Bᵀ`` part of every value: column ``k`` gets
        ``w_{k,n} Bᵀ e_{s_k}``. No communication after the first call. Collective."""
        transposed = self.transposed()
        if n not in self._global_touch:
            return
        columns, rows, weight = self._global_touch[n]
        local = transposed.getDenseArray(readonly=True)
        out.getDenseArray()[:, columns] += local[:, rows] * weight

    def destroy(self) -> None:
        self.spatial.destroy()
        self.metric.destroy()
        if self._transposed is not None:
            self._transposed.destroy()
