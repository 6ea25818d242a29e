"""Inverse cases: a case file's mesh, model, data and unknown as library objects.

:func:`build_inverse` turns an :class:`~natinv.cases.InverseCase` into an
:class:`InverseSetup` (a :class:`~natinv.problems.Problem`): the mesh and its tags, the state
space and the model (diffusion, source, nonlinear diffusion, elasticity) with its Dirichlet
conditions, the observations (point sensors, region averages over the mesh's physical groups, a
full field), the unknown (a :class:`~natinv.fields.NeuralField`, or a :class:`FEField` for the
TAO baseline) and the objective; :func:`write_results` writes a finished run. The helpers that
build a model from a case (:func:`model_of`, :func:`state_space`, :func:`interpolate`) serve
synthesis too. This module imports no application module above it (runner, compare, CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpi4py import MPI

import dolfinx
import dolfinx.io
import numpy as np
import numpy.typing as npt

from natinv import domain, figures, metrics, models, output, parallel
from natinv.cases import CaseError, InverseCase
from natinv.cases.settings import sample_size
from natinv.data import SensorData, read_field, read_sensors
from natinv.fields import FourierFeatures, InputChain, NeuralField, ReferenceBox, mlp
from natinv.objectives.inverse import (
    Experiment,
    InverseObjective,
    InverseProblem,
    TransientExperiment,
)
from natinv.observations import TimeSeries, full_field, point_sensors
from natinv.observations import averages as average_observations
from natinv.problems.experiments import (
    dirichlet,
    interpolate,
    model_of,
    models_of,
    named_tags,
    state_space,
)

__all__ = [
    "ExperimentData",
    "FEField",
    "InverseSetup",
    "build_inverse",
    "dirichlet",
    "interpolate",
    "model_of",
    "named_tags",
    "regions",
    "state_space",
    "write_results",
]


def _observations(
    case: InverseCase, state: dolfinx.fem.FunctionSpace, sensors: SensorData, sigma: Any
) -> list[tuple[Any, npt.NDArray[np.int64]]]:
    """Point sensors; for a vector state, one block per measured component. Each block comes
    with the rows of the sensor file it holds."""
    comm = state.mesh.comm
    name = str(case.data.sensors.name)
    bs = state.dofmap.index_map_bs
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), sensors.values.shape)
    if bs == 1:
        parallel.check_all(
            comm,
            sensors.component is None or bool(np.all(sensors.component == 0)),
            f"{case.data.sensors}: a component column for a scalar state",
        )
        block = point_sensors(state, sensors.points, sensors.values, sig, name=name)
        return [(block, np.arange(sensors.values.size))]
    parallel.check_all(
        comm,
        sensors.component is not None and bool(np.all(sensors.component < bs)),
        f"{case.data.sensors}: a vector state needs a component column with values in 0..{bs - 1}",
    )
    assert sensors.component is not None
    blocks = []
    for c in range(bs):
        rows = sensors.component == c
        if rows.any():
            block = point_sensors(
                state, sensors.points[rows], sensors.values[rows], sig[rows], [c], f"{name}[{c}]"
            )
            blocks.append((block, np.where(rows)[0]))
    return blocks


def regions(
    case: InverseCase, found: domain.Domain, averages: SensorData
) -> tuple[list[Any], npt.NDArray[np.float64]]:
    """The UFL measure of each average's region (a named physical group of cells or boundary
    facets) and the regions' centroids. Collective."""
    import ufl

    mesh = found.mesh
    tdim = mesh.topology.dim
    assert averages.region is not None
    names = [str(r) for r in averages.region]
    known = {k: v for k, v in found.groups.items() if v[0] in (tdim, tdim - 1)}
    unknown = [i for i, name in enumerate(names) if name not in known]
    parallel.check_all(
        mesh.comm,
        not unknown,
        lambda: (
            f"{averages.source}:{averages.lines[unknown[0]]}: region {names[unknown[0]]!r} is not "
            f"a physical group of the mesh's cells or facets {sorted(known)}"
        ),
    )
    measures = []
    for name in names:
        dim, tag = known[name]
        if dim == tdim:
            measures.append(ufl.dx(domain=mesh, subdomain_data=found.cells, subdomain_id=tag))
        else:
            measures.append(ufl.ds(domain=mesh, subdomain_data=found.facets, subdomain_id=tag))
    x = ufl.SpatialCoordinate(mesh)
    one = dolfinx.fem.Constant(mesh, 1.0)
    gdim = mesh.geometry.dim
    centroids = np.zeros((len(names), gdim))
    for i, measure in enumerate(measures):
        size, *moments = (
            mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(f * measure)))
            for f in (one, *(x[k] for k in range(gdim)))
        )
        centroids[i] = np.array(moments) / size if size > 0 else np.nan
    return measures, centroids


class FEField:
    """The parameter as a finite-element function (one unknown per dof), in the shape the
    runner asks of a neural field: its "θ" is the owned coefficient vector (distributed)."""

    def __init__(self, space: dolfinx.fem.FunctionSpace, initial: str) -> None:
        self.space = space
        self.comm = space.mesh.comm
        self.num_owned = space.dofmap.index_map.size_local * space.dofmap.index_map_bs
        self.num_global = space.dofmap.index_map.size_global * space.dofmap.index_map_bs
        self.num_parameters = self.num_global
        start = dolfinx.fem.Function(space)
        interpolate(start, initial, "parameter.initial")
        self._values = np.array(start.x.array[: self.num_owned])

    @property
    def parameters(self) -> npt.NDArray[np.float64]:
        return self._values.copy()

    def values(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        return self._values.copy() if theta is None else np.asarray(theta, dtype=np.float64)

    def set_parameters(self, theta: npt.ArrayLike) -> None:
        self._values = np.asarray(theta, dtype=np.float64).copy()

    def function(self) -> dolfinx.fem.Function:
        out = dolfinx.fem.Function(self.space, name="field")
        out.x.array[: self.num_owned] = self._values
        out.x.scatter_forward()
        return out


@dataclass
class ExperimentData:
    """One experiment of a built case: its model, its observation blocks, the data files they
    came from and, per block, the block's rows among the experiment's measured values (point
    sensors first, then the region averages)."""

    name: str
    model: models.Model | models.TransientModel
    observations: list[Any]
    rows: list[npt.NDArray[np.int64]]
    sensors: SensorData | None = None  # point values (None for full-field data)
    averages: SensorData | None = None  # region averages
    centroids: npt.NDArray[np.float64] | None = None  # of the averages' regions

    @property
    def measured(self) -> bool:
        """Whether the data are point values and/or region averages (not a full field)."""
        return self.sensors is not None or self.averages is not None

    @property
    def sites(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Where each measured value sits (point sensors, then the regions' centroids) and
        which of them are regions."""
        gdim = self.model.space.mesh.geometry.dim
        points = [np.zeros((0, gdim))]
        points += [self.sensors.points] if self.sensors is not None else []
        points += [self.centroids] if self.centroids is not None else []
        stacked = np.concatenate(points)
        regions = np.zeros(stacked.shape[0], dtype=bool)
        if self.centroids is not None:
            regions[stacked.shape[0] - self.centroids.shape[0] :] = True
        return stacked, regions

    @property
    def series(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """Time series: for each measured value (point sensors, then regions) its sensor, and
        each sensor's first value (:meth:`~natinv.data.SensorData.series`); None if steady."""
        if not isinstance(self.model, models.TransientModel):
            return None
        sensors, firsts, offset = [], [], 0
        for data in (self.sensors, self.averages):
            if data is not None:
                sensor, first = data.series()
                sensors.append(sensor + len(np.concatenate(firsts or [np.zeros(0)])))
                firsts.append(first + offset)
                offset += data.values.size
        return np.concatenate(sensors), np.concatenate(firsts)

    @property
    def num_values(self) -> int:
        return int(sum(obs.num_global for obs in self.observations))


@dataclass
class InverseSetup:
    """An inverse case as library objects (a :class:`~natinv.problems.Problem`): the mesh, the
    unknown (a neural field, or a finite-element field for the TAO baseline), the experiments
    (each a model and its observations) and the objective. Free with :meth:`close`."""

    mesh: dolfinx.mesh.Mesh
    field: NeuralField | FEField
    experiments: list[ExperimentData]
    problem: InverseProblem
    objective: InverseObjective | None
    truth: dolfinx.fem.Function | None
    case: InverseCase | None = None
    _errors: _Errors | None = None

    @property
    def model(self) -> models.Model | models.TransientModel:
        """The first experiment's model (the only one of a single-experiment case)."""
        return self.experiments[0].model

    @property
    def observations(self) -> list[Any]:
        """Every experiment's observation blocks, experiment by experiment."""
        return [obs for e in self.experiments for obs in e.observations]

    @property
    def sensors(self) -> SensorData | None:
        """The first experiment's point values."""
        return self.experiments[0].sensors

    @property
    def averages(self) -> SensorData | None:
        return self.experiments[0].averages

    @property
    def measured(self) -> bool:
        """Whether the data are point values and/or region averages (not a full field)."""
        return self.experiments[0].measured

    @property
    def sites(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Where values were measured (:attr:`ExperimentData.sites`): the one experiment's
        sites in its order, or every experiment's, each place once."""
        if len(self.experiments) == 1:
            return self.experiments[0].sites
        parts = [e.sites for e in self.experiments]
        stacked = np.concatenate([p for p, _ in parts])
        regions = np.concatenate([r for _, r in parts])
        _, first = np.unique(np.column_stack([stacked, regions]), axis=0, return_index=True)
        first.sort()
        return stacked[first], regions[first]

    @property
    def series(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        return self.experiments[0].series

    @property
    def discrepancy(self) -> float:
        """The misfit at the noise level, ``n/2`` for n measured values (-inf: none for full
        fields)."""
        return 0.5 * self.num_sensors if self.measured else -np.inf

    @property
    def num_sensors(self) -> int:
        """The measured values of every experiment."""
        return int(sum(e.num_values for e in self.experiments))

    def rows_per_step(self, case: InverseCase) -> int | None:
        """``optimizer.batch`` with ``sampling = "rows"``: the rows per sampled step (a
        fraction of every experiment's rows resolved), or None for other settings. Local.

        Raises:
            CaseError: more rows per step than the case has (the same on every rank)."""
        batch, total = case.optimizer.batch, self.num_sensors
        if not batch or case.optimizer.sampling != "rows":
            return None
        rows = sample_size(batch, total)
        if rows > total:
            raise CaseError(
                f"{case.source}: optimizer.batch: {rows} rows per step, the case has {total}"
            )
        return rows

    @property
    def comm(self) -> MPI.Comm:
        return self.mesh.comm

    def describe(self) -> str:
        series = self.series
        if len(self.experiments) > 1:
            return f"{len(self.experiments)} experiments, {self.num_sensors} values"
        if series is None:
            return f"{self.num_sensors} sensors"
        return f"{series[1].size} sensors, {self.num_sensors} values in time"

    def error(self, theta: npt.ArrayLike | None = None) -> float | None:
        """The relative L2 error of the parameter against the truth (None without one).
        Collective."""
        if self._errors is None:
            self._errors = _Errors(self)
        return self._errors(self.field.values(theta))

    def misfit(self, theta: npt.NDArray[np.float64], loss: float) -> float:
        """The data misfit at the accepted θ (the loss, unless it includes a Tikhonov term).
        Collective."""
        if self.case.regularization is None:
            return loss
        self.problem.value(self.field.values(theta))
        return float(self.problem.last["misfit"])

    def timings(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.problem.timings.items()}

    def write(self, history: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
        """The results of the run into ``case.output`` (see :func:`write_results`), with the
        PDE solves the run took: nonlinear/linear state solves, and every solve with the
        operator (states, adjoints, tangent blocks, each block of right-hand sides one), the
        factorisations, and for a transient model its steps and the memory of the stored
        states (all ranks)."""
        models_ = [e.model for e in self.experiments]
        summary["pde_solves"] = {
            "state": int(sum(m.solves for m in models_)),
            "operator": int(sum(m.linear_solves for m in models_)),
        }
        if isinstance(self.model, models.TransientModel):  # the states the adjoint runs over
            summary["trajectory"] = {
                "steps": self.model.steps,
                "dt": self.model.dt,
                "scheme": self.case.model.scheme,
                "stored_states_bytes": int(self.comm.allreduce(self.model.memory)),
                "checkpoint_every": self.model.stride,
                "states_solved_again": self.model.recomputed,
            }
        return write_results(self, history, summary)

    def close(self) -> None:
        """Free the PETSc objects of the case. Collective."""
        if self._errors is not None:
            self._errors.destroy()
            self._errors = None
        if self.objective is not None:
            self.objective.destroy()
        self.problem.destroy()
        for experiment in self.experiments:
            for obs in experiment.observations:
                obs.destroy()
            experiment.model.destroy()


def build_inverse(case: InverseCase, comm: MPI.Comm = MPI.COMM_WORLD) -> InverseSetup:
    """Mesh, spaces, the experiments' models and observations and the neural field of a case.
    Collective.

    Raises:
        CaseError: (before anything is built) a baseline case whose ``[uncertainty]`` prior
            precision ``R + δM`` would be singular.
    """
    settings, regularization = case.uncertainty, case.regularization
    if settings is not None and case.optimizer.kind.startswith("tao"):
        l2 = regularization is not None and regularization[0] == "l2"
        alpha = regularization[1] if regularization is not None else 0.0
        if (settings.mass if settings.mass is not None else alpha) == 0 and not l2:
            raise CaseError(
                f"{case.source}: uncertainty.mass: the finite-element field's prior precision "
                "R + δM (R the Tikhonov matrix) needs δ > 0 here (the default δ is the "
                "Tikhonov weight α)"
            )
    found = domain.load_domain(comm, case.mesh, case.source)
    case = named_tags(case, found)
    mesh = found.mesh
    state = state_space(case, mesh, case.model.degree)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", case.parameter.degree))
    m = dolfinx.fem.Function(space, name="parameter")
    built_models = models_of(case, state, m, found.facets)
    experiments = []
    try:
        for view, model in zip(case.each(), built_models, strict=True):
            experiments.append(_experiment(view, found, state, model))
    except BaseException:
        for data in experiments:
            for obs in data.observations:
                obs.destroy()
        for model in built_models:
            model.destroy()
        raise
    problem = InverseProblem(
        [
            (TransientExperiment if isinstance(e.model, models.TransientModel) else Experiment)(
                e.model, e.observations, e.name
            )
            for e in experiments
        ],
        case.regularization,
    )
    field: NeuralField | FEField
    if case.optimizer.kind.startswith("tao"):
        field = FEField(space, case.parameter.initial)
    else:
        widths = list(case.parameter.network)
        box = case.parameter.box
        input_map: Any = ReferenceBox.of(mesh) if box is None else ReferenceBox.of_corners(*box)
        if case.parameter.features is not None:
            count, scale = case.parameter.features
            features = FourierFeatures(widths[0], count, scale, seed=case.seed)
            input_map, widths[0] = InputChain(input_map, features), features.width
        network = mlp(widths, case.parameter.activation, seed=case.seed)
        field = NeuralField(space, network, case.parameter.transform, input_map=input_map)
    truth = None
    if case.parameter.truth is not None:
        truth = dolfinx.fem.Function(space, name="truth")
        interpolate(truth, case.parameter.truth, "parameter.truth", case)
    objective = InverseObjective(field, problem) if isinstance(field, NeuralField) else None
    return InverseSetup(mesh, field, experiments, problem, objective, truth, case)


def _experiment(
    case: InverseCase,
    found: domain.Domain,
    state: dolfinx.fem.FunctionSpace,
    model: models.Model | models.TransientModel,
) -> ExperimentData:
    """The observations of one experiment (``case`` its view: :meth:`InverseCase.each`): its
    point sensors, region averages or full field. Collective."""
    comm = found.mesh.comm
    sensors: SensorData | None = None
    averages: SensorData | None = None
    centroids = None
    observations: list[Any] = []
    rows: list[npt.NDArray[np.int64]] = []  # per block: its rows among the measured values
    try:
        if case.data.field is not None:
            data = read_field(comm, case.data.field, state)
            assert case.data.sigma is not None
            observations = [full_field(state, data, case.data.sigma, str(case.data.field.name))]
            rows = [np.zeros(0, dtype=np.int64)]
        if case.data.sensors is not None:
            sensors = read_sensors(comm, case.data.sensors, case.mesh.gdim)
            _check_times(case, sensors)
            sigma = _sigma(case, sensors, comm)
            if isinstance(model, models.TransientModel):
                name = str(case.data.sensors.name)
                read = sensors

                def spatial(first: npt.NDArray[np.int64]) -> Any:
                    points = read.points[first]
                    return point_sensors(state, points, np.zeros(first.size), name=name)

                observations.append(_time_series(sensors, sigma, model, spatial))
                rows.append(np.arange(sensors.values.size))
            else:
                for block, where in _observations(case, state, sensors, sigma):
                    observations.append(block)
                    rows.append(where)
        if case.data.averages is not None:
            averages = read_sensors(comm, case.data.averages, case.mesh.gdim, regions=True)
            _check_times(case, averages)
            measures, centroids = regions(case, found, averages)
            sigma = _sigma(case, averages, comm)
            offset = 0 if sensors is None else sensors.values.size
            if isinstance(model, models.TransientModel):
                source = averages.source

                def spatial(first: npt.NDArray[np.int64]) -> Any:
                    chosen = [measures[i] for i in first]
                    return average_observations(state, chosen, np.zeros(first.size), name=source)

                observations.append(_time_series(averages, sigma, model, spatial))
            else:
                observations.append(
                    average_observations(state, measures, averages.values, sigma, averages.source)
                )
            rows.append(offset + np.arange(averages.values.size))
    except BaseException:
        for obs in observations:
            obs.destroy()
        raise
    return ExperimentData(case.name, model, observations, rows, sensors, averages, centroids)


def _check_times(case: InverseCase, data: SensorData) -> None:
    """A ``t`` column exactly for a transient model, its times within the horizon (one error
    naming the file and line; the data are the same on every rank)."""
    transient = case.model.transient
    if data.time is None and transient:
        raise parallel.CollectiveError(
            f"{data.source}: a transient model (model.kind = {case.model.kind!r}) needs time "
            "series: add a t column (the time of each value)"
        )
    if data.time is not None and not transient:
        raise parallel.CollectiveError(
            f"{data.source}: a t column (time series) needs a transient model "
            f"(model.kind = 'heat'), not {case.model.kind!r}"
        )
    if data.time is None:
        return
    horizon = case.model.dt * case.model.steps
    late = np.where(data.time > horizon * (1 + 1e-12))[0]
    if late.size:
        row = late[0]
        raise parallel.CollectiveError(
            f"{data.source}:{data.lines[row]}: t = {data.time[row]:g} is after the model's "
            f"horizon T = model.steps × model.dt = {horizon:g} ({late.size} such row(s))"
        )
    if data.component is not None and bool(np.any(data.component != 0)):
        raise parallel.CollectiveError(f"{data.source}: a component column for a scalar state")


def _time_series(
    data: SensorData, sigma: Any, model: models.TransientModel, spatial: Any
) -> TimeSeries:
    """The values of a file with a ``t`` column as time series of ``spatial(first)``, the
    spatial rows of each sensor's first row; each value lives with its sensor's row.
    Collective."""
    sensor, first = data.series()
    rows = spatial(first)
    assert rows.index is not None and data.time is not None
    local = {int(g): i for i, g in enumerate(rows.index)}
    mine = np.array([i for i in range(sensor.size) if int(sensor[i]) in local], dtype=np.int64)
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), data.values.shape)
    return TimeSeries(
        rows,
        [local[int(sensor[i])] for i in mine],
        data.time[mine],
        data.values[mine],
        sig[mine],
        model.dt,
        model.steps,
        f"{Path(data.source).name} (time series)",
        index=mine,
    )


def _sigma(case: InverseCase, data: SensorData, comm: MPI.Comm) -> Any:
    """The noise level of a measurement file: its sigma column, or ``data.sigma``. Collective."""
    sigma = data.sigma if data.sigma is not None else case.data.sigma
    parallel.check_all(
        comm,
        sigma is not None,
        f"{case.source}: data.sigma: {Path(data.source).name} has no sigma column; give data.sigma",
    )
    return sigma


class _Errors:
    """Relative L2 error of the parameter against the truth (None without a truth)."""

    def __init__(self, built: InverseSetup) -> None:
        self.truth = built.truth
        if self.truth is None:
            return
        self.mass = metrics.l2(built.field.space)
        self.x, self.y = self.mass.createVecs()
        n = built.field.num_owned
        self.x.array[:] = self.truth.x.array[:n]
        self.mass.mult(self.x, self.y)
        self.norm = float(np.sqrt(self.x.dot(self.y)))
        self.n = n

    def __call__(self, values: npt.NDArray[np.float64]) -> float | None:
        if self.truth is None:
            return None
        self.x.array[:] = values - self.truth.x.array[: self.n]
        self.mass.mult(self.x, self.y)
        return float(np.sqrt(self.x.dot(self.y)) / self.norm)

    def destroy(self) -> None:
        if self.truth is not None:
            for obj in (self.mass, self.x, self.y):
                obj.destroy()


def write_uncertainty(built: InverseSetup, mean: dolfinx.fem.Function) -> dict[str, Any]:
    """The Laplace approximation at the recovered field (:mod:`natinv.uncertainty`): for a
    neural field in θ, for the finite-element field (TAO) its low-rank form with the prior
    precision ``R + δM``. Writes ``std.bp`` (mean, σ and the truth), ``samples.bp``
    (``uncertainty.samples`` posterior draws: through the network for a neural field, from
    the low-rank Gaussian for the finite-element one) and ``uncertainty.png``;
    returns what ``summary.json`` reports: the prior used, the mean and largest σ over the
    dofs, and the fraction of dofs with ``|m − m_true| ≤ 2σ`` where the truth is known.
    Collective."""
    from natinv.uncertainty import coverage

    case, comm, field = built.case, built.comm, built.field
    settings = case.uncertainty
    assert settings is not None
    n = field.num_owned
    if isinstance(field, NeuralField):
        std, result = _neural_std(built)
    else:
        std, result = _finite_element_std(built)
    sigma = dolfinx.fem.Function(field.space, name="std")
    sigma.x.array[:n] = std
    sigma.x.scatter_forward()
    mean.name = "mean"
    extra = [built.truth] if built.truth is not None else []
    domain.write_vtx(comm, case.output / "std.bp", [mean, sigma, *extra])
    result["mean_std"] = parallel.allreduce_sum(comm, float(std.sum())) / field.num_global
    result["max_std"] = parallel.allreduce_max(comm, float(std.max(initial=0.0)))
    if built.truth is not None:
        result["coverage_2sigma"] = coverage(comm, mean.x.array[:n], std, built.truth.x.array[:n])
    figures.uncertainty(comm, case.output / "uncertainty.png", built, mean, sigma)
    return result


def _neural_std(built: InverseSetup) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    """σ of a neural field at its owned dofs, and the draws asked for (``samples.bp``)."""
    from natinv.uncertainty import Laplace

    case, field, settings = built.case, built.field, built.case.uncertainty
    assert settings is not None and isinstance(field, NeuralField) and built.objective is not None
    prior = settings.prior_precision
    laplace = Laplace.at(built.objective, prior_precision=None if prior == "damping" else prior)
    result: dict[str, Any] = {
        "kind": "neural",
        "prior": prior if isinstance(prior, str) else "given",
        "prior_precision": laplace.prior_precision,
        "samples": settings.samples,
    }
    if settings.samples:
        draws = laplace.samples(settings.samples, seed=case.seed)
        functions = [field.function(theta) for theta in draws]
        for i, function in enumerate(functions):
            function.name = f"sample-{i}"
        domain.write_vtx(built.comm, case.output / "samples.bp", functions)
    return laplace.std(field), result


def _finite_element_std(built: InverseSetup) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    """σ of the finite-element field at its owned dofs from the low-rank approximation with the
    prior precision ``R + δM`` (``R`` the case's Tikhonov matrix, δ = ``uncertainty.mass``, by
    default α)."""
    from natinv.uncertainty import LowRankLaplace, prior_noise

    case, problem, settings = built.case, built.problem, built.case.uncertainty
    assert settings is not None
    alpha = problem.alpha if problem.R is not None else 0.0
    delta = settings.mass if settings.mass is not None else alpha
    prior = metrics.l2(problem.space)
    prior.scale(delta)
    if problem.R is not None:
        prior.axpy(1.0, problem.R)
    rank = min(settings.rank, problem.space.dofmap.index_map.size_global)
    problem.value(built.field.values())  # the state at the solution
    laplace = LowRankLaplace(problem, prior, rank=rank, seed=case.seed)
    try:
        std = np.sqrt(laplace.variance())
        if settings.samples:
            # R + δM = a K + c M, K the H1 seminorm's matrix
            h1 = case.regularization is not None and case.regularization[0] == "h1"
            a, c = (alpha, delta) if h1 else (0.0, alpha + delta)
            noise = prior_noise(problem.space, a, c, settings.samples, seed=case.seed)
            draws = laplace.samples(built.field.values(), noise)
            functions = []
            for i in range(draws.shape[1]):
                function = dolfinx.fem.Function(problem.space, name=f"sample-{i}")
                function.x.array[: draws.shape[0]] = draws[:, i]
                function.x.scatter_forward()
                functions.append(function)
            domain.write_vtx(built.comm, case.output / "samples.bp", functions)
    finally:
        laplace.destroy()
        prior.destroy()
    result = {
        "kind": "finite-element, low rank",
        "prior": f"R + δM, R the {case.regularization[0] if case.regularization else 'zero'} "
        f"Tikhonov matrix (α = {alpha:g})",
        "mass": delta,
        "rank": rank,
        "eigenvalues": [float(laplace.eigenvalues[0]), float(laplace.eigenvalues[-1])],
        "samples": settings.samples,
    }
    return std, result


def _write_trajectory(comm: MPI.Comm, path: Path, model: models.TransientModel) -> None:
    """Every stored state of the last trajectory, at its time, as P1 in a VTX folder.
    Collective."""
    p1 = dolfinx.fem.functionspace(model.space.mesh, ("Lagrange", 1))
    u1 = dolfinx.fem.Function(p1, name="u")
    needed = domain.vtx_bytes([u1], len(model.times))
    with (
        output.written_aside(comm, path, needed) as tmp,
        dolfinx.io.VTXWriter(comm, tmp, [u1], engine="BP4") as writer,
    ):
        for n, t in enumerate(model.times):
            model.state(n)
            u1.interpolate(model.u)
            writer.write(float(t))


def write_results(
    built: InverseSetup, history: list[dict[str, Any]], summary: dict[str, Any]
) -> dict[str, Any]:
    """``history.csv``, ``summary.json`` (with the sensors, the misfit, the noise level and the
    error), ``parameter.bp`` (recovered and true field), ``state.bp``, ``convergence.png``,
    ``fields.png`` and ``misfit.png`` in ``case.output``. Returns the summary. Collective."""
    case, comm = built.case, built.comm
    folder = case.output
    field = built.field
    recovered = field.function()
    recovered.name = "recovered"
    built.problem.value(field.values())
    if isinstance(built.model, models.TransientModel):
        _write_trajectory(comm, folder / "state.bp", built.model)
    else:
        state = built.model.u
        shape = state.function_space.ufl_element().reference_value_shape
        p1 = dolfinx.fem.functionspace(built.mesh, ("Lagrange", 1, shape))
        u1 = dolfinx.fem.Function(p1, name="u")
        u1.interpolate(state)
        domain.write_vtx(comm, folder / "state.bp", [u1])
    summary.update(
        {
            "sensors": built.num_sensors,
            # (a sampled run's last step may not have checked the whole misfit: computed here)
            "misfit": float(built.problem.last["misfit"]),
            "discrepancy_level": built.discrepancy if built.measured else None,
            "relative_l2_error": built.error(),
        }
    )
    output.write_history(comm, folder / "history.csv", {case.optimizer.kind: history})
    if case.uncertainty is not None:
        summary["uncertainty"] = write_uncertainty(built, recovered)
    fields = [recovered] + ([built.truth] if built.truth is not None else [])
    domain.write_vtx(comm, folder / "parameter.bp", fields)
    if history:
        output.plot_convergence(
            comm,
            folder / "convergence.png",
            {case.optimizer.kind: history},
            "misfit",
            case.name,
            level=built.discrepancy if built.measured else None,
        )
    figures.inverse_fields(comm, folder / "fields.png", built, recovered)
    figures.misfit(comm, folder / "misfit.png", built)
    output.write_summary(comm, folder / "summary.json", summary)  # last: the run is complete
    comm.Barrier()  # every file is there when any rank returns
    return summary
