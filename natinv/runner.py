"""Running a case: mesh → spaces → model → data → neural field → optimizer → results.

:func:`build` turns a :class:`~natinv.cases.Case` into the objects of the library; :func:`run`
optimises with a progress line on rank 0, checkpoints every N iterations (atomically: a killed
run keeps the previous checkpoint) and writes ``results/<case>/``: ``history.csv``,
``summary.json``, the fields for ParaView (VTX: ``parameter.bp`` with the recovered and, when
known, the true field; ``state.bp``), and figures (``convergence.png``, ``fields.png`` with the
sensors and averaged regions marked, ``misfit.png``). Forward cases (PINN, Ritz) are built by
:mod:`natinv.forward` and run through the same loop, checkpoints and history.
:func:`synthesize_case` writes a case's measurement files (point sensors, region averages or a
full field) from its true field on a refined mesh.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpi4py import MPI

import dolfinx
import dolfinx.io
import dolfinx.io.gmsh
import numpy as np
import numpy.typing as npt
import torch

from natinv import checkpoint, domain, metrics, models, output, parallel
from natinv.cases import Case, CaseError
from natinv.data import SensorData, read_field, read_sensors, write_sensors
from natinv.expressions import compile_expression
from natinv.fields import NeuralField, mlp
from natinv.forward import ForwardBuilt, build_forward
from natinv.forward import write_results as write_forward_results
from natinv.gram import Gram, NaturalSolver
from natinv.objectives.inverse import Experiment, InverseObjective, InverseProblem
from natinv.objectives.pinn import PINN
from natinv.objectives.ritz import Ritz
from natinv.observations import averages as average_observations
from natinv.observations import full_field, point_sensors, point_values
from natinv.optim.baselines import LBFGS, Adam
from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.tao import FieldBaseline
from natinv.output import atomic_path

__all__ = ["Built", "build", "run", "synthesize_case"]


def _dirichlet(
    case: Case, space: dolfinx.fem.FunctionSpace, facets: dolfinx.mesh.MeshTags | None
) -> list[dolfinx.fem.DirichletBC]:
    """``u = 0`` on the facets of ``model.dirichlet``."""
    mesh = space.mesh
    where = domain.boundary_facets(case, mesh, facets, "model.dirichlet")
    dofs = dolfinx.fem.locate_dofs_topological(space, mesh.topology.dim - 1, where)
    bs = space.dofmap.index_map_bs
    zero = np.zeros(bs) if bs > 1 else 0.0
    return [dolfinx.fem.dirichletbc(zero, dofs, space)]


def _interpolate(
    function: dolfinx.fem.Function, text: str, key: str, case: Case | None = None
) -> None:
    """``function`` := the formula ``text`` of the case key ``key``, which must be finite at
    every interpolation point of the mesh: one error naming the key and a point otherwise, on
    every rank. Collective."""
    space = function.function_space
    with parallel.collective(space.mesh.comm, str(case.source) if case else "natinv"):
        function.interpolate(compile_expression(text, key))
        values = function.x.array.reshape(-1, space.dofmap.index_map_bs)
        bad = np.flatnonzero(~np.all(np.isfinite(values), axis=1))
        if bad.size:
            point = space.tabulate_dof_coordinates()[bad[0], : space.mesh.geometry.dim]
            raise ValueError(
                f"{key}: {text!r} is not finite at some points of the mesh, e.g. x = "
                f"{point.tolist()}"
            )


def _model(
    case: Case,
    state: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    facets: dolfinx.mesh.MeshTags | None,
) -> models.Model:
    bcs = _dirichlet(case, state, facets)
    if case.model.kind == "elasticity":
        import ufl

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
        )
    source = dolfinx.fem.Function(state, name="source")
    _interpolate(source, case.model.source, "model.source", case)
    if case.model.kind == "source":
        return models.source(state, parameter, kappa=source, bcs=bcs)
    if case.model.kind == "diffusion":
        return models.diffusion(
            state, parameter, f=source, bcs=bcs, coefficient=case.model.coefficient
        )
    return models.nonlinear_diffusion(state, parameter, f=source, bcs=bcs)


def _state_space(case: Case, mesh: dolfinx.mesh.Mesh, degree: int) -> dolfinx.fem.FunctionSpace:
    if case.model.kind == "elasticity":
        return dolfinx.fem.functionspace(mesh, ("Lagrange", degree, (mesh.geometry.dim,)))
    return dolfinx.fem.functionspace(mesh, ("Lagrange", degree))


def _observations(
    case: Case, state: dolfinx.fem.FunctionSpace, sensors: SensorData, sigma: Any
) -> list[Any]:
    """Point sensors; for a vector state, one block per measured component."""
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
        block.sensor_rows = np.arange(sensors.values.size)  # type: ignore[attr-defined]
        return [block]
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
            block.sensor_rows = np.where(rows)[0]  # type: ignore[attr-defined]
            blocks.append(block)
    return blocks


def _regions(
    case: Case, found: domain.Domain, averages: SensorData
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
    centroids = np.zeros((len(names), 2))
    for i, measure in enumerate(measures):
        size, cx, cy = (
            mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(f * measure)))
            for f in (one, x[0], x[1])
        )
        centroids[i] = (cx / size, cy / size) if size > 0 else (np.nan, np.nan)
    return measures, centroids


class _FEField:
    """The parameter as a finite-element function (one unknown per dof), in the shape the
    runner asks of a neural field: its "θ" is the owned coefficient vector (distributed)."""

    def __init__(self, space: dolfinx.fem.FunctionSpace, initial: str) -> None:
        self.space = space
        self.comm = space.mesh.comm
        self.num_owned = space.dofmap.index_map.size_local * space.dofmap.index_map_bs
        self.num_global = space.dofmap.index_map.size_global * space.dofmap.index_map_bs
        self.num_parameters = self.num_global
        start = dolfinx.fem.Function(space)
        _interpolate(start, initial, "parameter.initial")
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
class Built:
    """The objects of a case (destroy with :meth:`destroy`)."""

    mesh: dolfinx.mesh.Mesh
    field: NeuralField | _FEField
    model: models.Model
    observations: list[Any]
    problem: InverseProblem
    objective: InverseObjective | None
    sensors: SensorData | None  # point values (None for full-field data)
    truth: dolfinx.fem.Function | None
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
        points = [np.zeros((0, 2))]
        points += [self.sensors.points] if self.sensors is not None else []
        points += [self.centroids] if self.centroids is not None else []
        stacked = np.concatenate(points)
        regions = np.zeros(stacked.shape[0], dtype=bool)
        if self.centroids is not None:
            regions[stacked.shape[0] - self.centroids.shape[0] :] = True
        return stacked, regions

    @property
    def discrepancy(self) -> float:
        """The misfit at the noise level, ``n/2`` for n measured values (-inf: none for full
        fields)."""
        return 0.5 * self.num_sensors if self.measured else -np.inf

    @property
    def num_sensors(self) -> int:
        return int(sum(obs.num_global for obs in self.observations))

    def destroy(self) -> None:
        if self.objective is not None:
            self.objective.destroy()
        self.problem.destroy()
        for obs in self.observations:
            obs.destroy()
        self.model.destroy()


def build(case: Case, comm: MPI.Comm = MPI.COMM_WORLD) -> Built:
    """Mesh, spaces, model, observations and the neural field of a case. Collective."""
    found = domain.load_domain(comm, case)
    mesh, facets = found.mesh, found.facets
    state = _state_space(case, mesh, case.model.degree)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", case.parameter.degree))
    m = dolfinx.fem.Function(space, name="parameter")
    model = _model(case, state, m, facets)
    sensors: SensorData | None = None
    averages: SensorData | None = None
    centroids = None
    observations: list[Any] = []
    if case.data.field is not None:
        data = read_field(comm, case.data.field, state)
        assert case.data.sigma is not None
        observations = [full_field(state, data, case.data.sigma, str(case.data.field.name))]
    if case.data.sensors is not None:
        sensors = read_sensors(comm, case.data.sensors, 2)
        observations += _observations(case, state, sensors, _sigma(case, sensors, comm))
    if case.data.averages is not None:
        averages = read_sensors(comm, case.data.averages, 2, regions=True)
        measures, centroids = _regions(case, found, averages)
        block = average_observations(
            state, measures, averages.values, _sigma(case, averages, comm), averages.source
        )
        offset = 0 if sensors is None else sensors.values.size
        block.sensor_rows = offset + np.arange(averages.values.size)  # type: ignore[attr-defined]
        observations.append(block)
    problem = InverseProblem([Experiment(model, observations, case.name)], case.regularization)
    field: NeuralField | _FEField
    if case.optimizer.kind.startswith("tao"):
        field = _FEField(space, case.parameter.initial)
    else:
        network = mlp(case.parameter.network, case.parameter.activation, seed=case.seed)
        field = NeuralField(space, network, case.parameter.transform)
    truth = None
    if case.parameter.truth is not None:
        truth = dolfinx.fem.Function(space, name="truth")
        _interpolate(truth, case.parameter.truth, "parameter.truth", case)
    objective = InverseObjective(field, problem) if isinstance(field, NeuralField) else None
    return Built(
        mesh, field, model, observations, problem, objective, sensors, truth, averages, centroids
    )


def _sigma(case: Case, data: SensorData, comm: MPI.Comm) -> Any:
    """The noise level of a measurement file: its sigma column, or ``data.sigma``. Collective."""
    assert case.data is not None
    sigma = data.sigma if data.sigma is not None else case.data.sigma
    parallel.check_all(
        comm,
        sigma is not None,
        f"{case.source}: data.sigma: {Path(data.source).name} has no sigma column; give data.sigma",
    )
    return sigma


def _optimizer(case: Case, built: Built | ForwardBuilt) -> tuple[Any, list[Any]]:
    """The optimizer and the PETSc-holding objects to destroy after it."""
    settings = case.optimizer
    objective, field = built.objective, built.field
    if settings.kind.startswith("tao"):
        assert isinstance(built, Built)
        baseline = FieldBaseline(built.problem, settings.kind.removeprefix("tao-"))
        return baseline, [baseline]
    assert objective is not None and isinstance(field, NeuralField)
    if settings.kind == "adam":
        return Adam(objective, lr=settings.lr), []
    if settings.kind == "lbfgs":
        return LBFGS(objective, memory=20), []
    owned: list[Any] = []
    if isinstance(objective, PINN | Ritz):  # the loss's own metric: ENGD, or the energy
        gram = objective.gram
    elif settings.metric == "gauss-newton":
        gram = objective.gauss_newton()
        owned += [gram, gram.metric, gram.rows]
    elif settings.metric == "h1":
        matrix = metrics.h1(field.space)
        gram = Gram(field, matrix)
        owned += [gram, matrix]
    else:
        gram = objective.gram
    solver = NaturalSolver(gram, settings.solver, damping=settings.damping)
    optimizer = NaturalGradientDescent(
        objective, solver, settings.step, momentum=settings.momentum, beta=settings.beta
    )
    return optimizer, [solver, *owned]


class _Errors:
    """Relative L2 error of the parameter against the truth (None without a truth)."""

    def __init__(self, built: Built) -> None:
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


def _save_checkpoint(
    comm: MPI.Comm, folder: Path, case: Case, history: list[dict[str, Any]], **state: Any
) -> None:
    """The iterate's ``state`` (optimizer or field), the history and the torch generator's
    state, written atomically by rank 0 (:mod:`natinv.checkpoint`). Collective."""
    checkpoint.save(comm, folder, case, history, state, rng=torch.get_rng_state().numpy())


def run(
    case: Case,
    comm: MPI.Comm = MPI.COMM_WORLD,
    *,
    resume: bool = False,
    quiet: bool = False,
    iterations: int | None = None,
) -> dict[str, Any]:
    """Run a case to its stopping rule and write its results; returns the summary.

    ``resume`` continues from ``results/<case>/checkpoint.npz`` to the same iterates as an
    uninterrupted run. ``iterations`` overrides ``optimizer.iterations``. Collective."""
    folder = case.output
    built: Built | ForwardBuilt = build_forward(case, comm) if case.forward else build(case, comm)
    try:
        with output.claim_folder(comm, folder):
            return _run(case, built, comm, resume, quiet, iterations)
    finally:
        built.destroy()


def _run(
    case: Case,
    built: Built | ForwardBuilt,
    comm: MPI.Comm,
    resume: bool,
    quiet: bool,
    iterations: int | None,
) -> dict[str, Any]:
    optimizer, owned = _optimizer(case, built)
    try:
        return _iterate(case, built, comm, optimizer, owned, resume, quiet, iterations)
    finally:
        for obj in owned:
            obj.destroy()


def _iterate(
    case: Case,
    built: Built | ForwardBuilt,
    comm: MPI.Comm,
    optimizer: Any,
    owned: list[Any],
    resume: bool,
    quiet: bool,
    iterations: int | None,
) -> dict[str, Any]:
    folder = case.output
    errors = _Errors(built) if isinstance(built, Built) else None
    history: list[dict[str, Any]] = []
    limit = case.optimizer.iterations if iterations is None else iterations
    if resume:
        saved = checkpoint.load(comm, folder, case)
        state = saved["state"]
        if isinstance(optimizer, FieldBaseline):  # TAO restarts from the saved field
            parallel.check_all(
                comm,
                saved["ranks"] == comm.size and len(state.get("field", [])) == comm.size,
                f"{folder / checkpoint.FILENAME}: written on {saved['ranks']} rank(s); a "
                f"finite-element field resumes on as many, not {comm.size}",
            )
            built.field.set_parameters(state["field"][comm.rank])
        else:
            optimizer.load_state_dict(state["optimizer"])
        if saved["rng"] is not None:
            torch.set_rng_state(torch.from_numpy(np.asarray(saved["rng"], dtype=np.uint8)))
        history = saved["history"]
    say = (lambda text: None) if quiet else (lambda text: parallel.rank0_print(comm, text))
    if isinstance(built, Built):
        what = f"{built.num_sensors} sensors"
    else:
        rows = getattr(built.objective, "num_global", built.field.num_global)
        what = f"{case.problem}, {rows} {'residuals' if case.problem == 'pinn' else 'dofs'}"
    say(
        f"natinv run {case.name}: {comm.size} rank(s), {built.field.num_parameters} parameters, "
        f"{what}, optimizer {case.optimizer.kind}"
        + (
            f" ({case.optimizer.metric}, {case.optimizer.momentum})"
            if case.optimizer.kind == "ngd"
            else ""
        )
    )
    say(f"{'it':>5} {'loss':>11} {'misfit':>11} {'step':>9} {'|d|':>9} {'error':>9} {'time':>7}")
    start = time.perf_counter() - (history[-1]["elapsed"] if history else 0.0)
    stopped = "iterations"
    if isinstance(optimizer, FieldBaseline):
        assert isinstance(built, Built) and errors is not None
        stopped = _run_tao(case, built, optimizer, errors, history, limit, say, start, resume)
    while not isinstance(optimizer, FieldBaseline) and len(history) < limit:
        record = optimizer.step()
        theta = optimizer.theta
        if isinstance(built, ForwardBuilt):
            misfit, error = float("nan"), built.error(theta)
        else:
            assert errors is not None
            misfit, error = (
                _misfit(case, built, record["loss"], theta),
                errors(built.field.values(theta)),
            )
        entry = _log(
            history,
            say,
            start,
            loss=record["loss"],
            misfit=misfit,
            step=record.get("step", 0.0),
            direction_norm=record.get("direction_norm", 0.0),
            error=error,
            time_spent=record.get("time", 0.0),
        )
        if _checkpoint_due(case, entry["iteration"]):
            _save_checkpoint(comm, folder, case, history, optimizer=optimizer.state_dict())
        reason = _stop(case, built, misfit, error)
        if reason is not None:
            stopped = reason
            break
        if entry["step"] == 0.0 and case.optimizer.kind == "ngd":
            stopped = "no descent"
            break
    if not isinstance(optimizer, FieldBaseline):
        built.field.set_parameters(optimizer.theta)
    timed = [o for o in owned if hasattr(o, "timings")]
    timed += [built.objective.gram] if built.objective is not None else []
    timings = {"total": float(sum(r.get("time", 0.0) for r in history))}
    for obj in timed:
        for k, v in obj.timings.items():
            timings[k] = timings.get(k, 0.0) + float(v)
    if isinstance(built, ForwardBuilt):
        summary = _summary(case, built, history, stopped, timings)
        summary = write_forward_results(built, history, summary)
    else:
        assert errors is not None
        try:
            summary = _write_results(case, built, history, errors, stopped, comm, timings)
        finally:
            errors.destroy()
    return summary


def _misfit(case: Case, built: Built, loss: float, theta: npt.NDArray[np.float64]) -> float:
    """The data misfit at the accepted θ (the loss, unless it includes a Tikhonov term)."""
    if case.regularization is None:
        return loss
    built.problem.value(built.field.values(theta))
    return float(built.problem.last["misfit"])


def _stop(case: Case, built: Any, misfit: float, error: float | None) -> str | None:
    """The stopping rule met by this iteration, if any."""
    settings = case.optimizer
    if settings.stop == "discrepancy" and misfit <= built.discrepancy:
        return "discrepancy"
    if settings.stop == "target" and error is not None and error <= float(settings.target or 0):
        return "target"
    return None


def _summary(
    case: Case, built: Any, history: list[dict[str, Any]], stopped: str, timings: dict[str, float]
) -> dict[str, Any]:
    """The fields every summary has."""
    last = history[-1] if history else {}
    return {
        "case": case.name,
        "problem": case.problem,
        "ranks": built.field.comm.size,
        "parameters": built.field.num_parameters,
        "iterations": len(history),
        "stopped": stopped,
        "loss": last.get("loss"),
        "time": last.get("elapsed"),
        "timings": timings,
    }


def _log(
    history: list[dict[str, Any]],
    say: Any,
    start: float,
    *,
    loss: float,
    misfit: float,
    step: float,
    direction_norm: float,
    error: float | None,
    time_spent: float,
) -> dict[str, Any]:
    """Append one iteration's entry to the history and print the progress line."""
    entry = {
        "iteration": len(history) + 1,
        "loss": loss,
        "misfit": misfit,
        "step": step,
        "direction_norm": direction_norm,
        "error": error if error is not None else float("nan"),
        "time": time_spent,
        "elapsed": time.perf_counter() - start,
    }
    history.append(entry)
    say(
        f"{entry['iteration']:5d} {loss:11.4e} "
        + (f"{misfit:11.4e} " if np.isfinite(misfit) else f"{'-':>11} ")
        + (f"{step:9.2e} " if np.isfinite(step) else f"{'-':>9} ")
        + f"{direction_norm:9.2e} "
        + (f"{error:9.3e}" if error is not None else f"{'-':>9}")
        + f" {entry['elapsed']:7.1f}"
    )
    return entry


def _checkpoint_due(case: Case, iteration: int) -> bool:
    return bool(case.checkpoint_every) and iteration % case.checkpoint_every == 0


def _run_tao(
    case: Case,
    built: Built,
    baseline: FieldBaseline,
    errors: _Errors,
    history: list[dict[str, Any]],
    limit: int,
    say: Any,
    start: float,
    resume: bool,
) -> str:
    """The finite-element-field baseline: TAO from the field's current values, one history
    entry per TAO iteration. Returns why it stopped."""
    comm = built.problem.comm
    stopped = ["iterations"]
    first = len(history)
    clock = [0.0]  # TAO's time at the last record

    def monitor(record: dict[str, Any]) -> bool:
        if record["iteration"] == 0:
            return False
        values = np.array(baseline.x.array_r)
        built.problem.value(values)
        misfit = built.problem.last["misfit"]
        error = errors(values)
        entry = _log(
            history,
            say,
            start,
            loss=record["loss"],
            misfit=misfit,
            step=float("nan"),  # (TAO's line search does not report its step)
            direction_norm=record["gradient_norm"],
            error=error,
            time_spent=record["time"] - clock[0],
        )
        clock[0] = record["time"]
        if _checkpoint_due(case, entry["iteration"]):
            _save_checkpoint(comm, case.output, case, history, field=comm.allgather(values))
        reason = _stop(case, built, misfit, error)
        if reason is not None:
            stopped[0] = reason
            return True
        return entry["iteration"] >= limit

    solution = baseline.run(
        built.field.parameters, max(limit - first, 0), gttol=1e-10, callback=monitor
    )
    built.field.set_parameters(solution)
    if stopped[0] == "iterations" and len(history) < limit:
        stopped[0] = baseline.reason
    return stopped[0]


def _write_results(
    case: Case,
    built: Built,
    history: list[dict[str, Any]],
    errors: _Errors,
    stopped: str,
    comm: MPI.Comm,
    timings: dict[str, float],
) -> dict[str, Any]:
    folder = case.output
    field = built.field
    recovered = field.function()
    recovered.name = "recovered"
    built.problem.value(field.values())
    state = built.model.u
    last = history[-1] if history else {}
    timings.update({k: float(v) for k, v in built.problem.timings.items()})
    summary = _summary(case, built, history, stopped, timings)
    summary.update(
        {
            "sensors": built.num_sensors,
            "misfit": last.get("misfit", float(built.problem.last["misfit"])),
            "discrepancy_level": built.discrepancy if built.measured else None,
            "relative_l2_error": errors(field.values()),
        }
    )
    output.write_history(comm, folder / "history.csv", {case.optimizer.kind: history})
    output.write_summary(comm, folder / "summary.json", summary)
    fields = [recovered] + ([built.truth] if built.truth is not None else [])
    domain.write_vtx(comm, folder / "parameter.bp", fields)
    shape = state.function_space.ufl_element().reference_value_shape
    p1 = dolfinx.fem.functionspace(built.mesh, ("Lagrange", 1, shape))
    u1 = dolfinx.fem.Function(p1, name="u")
    u1.interpolate(state)
    domain.write_vtx(comm, folder / "state.bp", [u1])
    if history:
        output.plot_convergence(
            comm,
            folder / "convergence.png",
            {case.optimizer.kind: history},
            "misfit",
            case.name,
            level=built.discrepancy if built.measured else None,
        )
    _plot_fields(comm, folder / "fields.png", built, recovered)
    _plot_misfit(comm, folder / "misfit.png", built)
    comm.Barrier()  # every file is there when any rank returns
    return summary


def _plot_fields(comm: MPI.Comm, path: Path, built: Built, recovered: dolfinx.fem.Function) -> None:
    p1 = dolfinx.fem.functionspace(built.mesh, ("Lagrange", 1))
    symbol = {"elasticity": "E", "source": "f"}.get(built.model.name, "κ")
    panels: dict[str, Any] = {}
    for name, function in ((f"true {symbol}", built.truth), (f"recovered {symbol}", recovered)):
        if function is None:
            continue
        f1 = dolfinx.fem.Function(p1)
        f1.interpolate(function)
        panels[name] = domain.triangles(f1)
    _draw_fields(comm, path, built, panels)


@output.rank0_writer
def _draw_fields(comm: MPI.Comm, path: Path, built: Built, panels: dict[str, Any]) -> None:
    plt = output.pyplot()
    from matplotlib.tri import Triangulation

    values = [v for _, v in panels.values()]
    lo, hi = min(v.min() for v in values), max(v.max() for v in values)
    x_all = np.concatenate([x for x, _ in panels.values()])
    width, height = np.ptp(x_all[:, 0]), np.ptp(x_all[:, 1])
    if width > 1.5 * height:  # a long domain: the panels one above the other
        size = (8.0, 1.0 + 6.5 * height / width * len(panels))
        fig, axes = plt.subplots(len(panels), 1, figsize=size, constrained_layout=True)
    else:
        size = (4.6 * len(panels), 4.0)
        fig, axes = plt.subplots(1, len(panels), figsize=size, constrained_layout=True)
    for ax, (name, (x, v)) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        tri = Triangulation(x[:, 0], x[:, 1], np.arange(x.shape[0]).reshape(-1, 3))
        image = ax.tripcolor(tri, v, shading="gouraud", vmin=lo, vmax=hi)
        sites, regions = built.sites
        if (~regions).any():
            ax.plot(*sites[~regions].T, "k.", ms=3, label="sensors")
        if regions.any():
            ax.plot(*sites[regions].T, "ks", ms=4, mfc="none", label="averaged regions")
        ax.set_title(name)
        ax.set_aspect("equal")
        fig.colorbar(image, ax=ax, shrink=0.85)
    if built.measured:
        np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(built.problem.experiments[0].name)
    output.save_figure(fig, path)


def _plot_misfit(comm: MPI.Comm, path: Path, built: Built) -> None:
    if not built.measured:  # full-field data: the state in state.bp shows it
        return
    u = built.model.u.x.petsc_vec
    local = []
    for obs in built.observations:
        weights = obs.metric.getDiagonal()
        residual = (obs.predict(u) - obs.data) * np.sqrt(weights.array_r)
        weights.destroy()
        assert obs.index is not None
        local.append((obs.sensor_rows[obs.index], residual))
    _draw_misfit(comm, path, built, comm.gather(local, root=0))


@output.rank0_writer
def _draw_misfit(comm: MPI.Comm, path: Path, built: Built, gathered: list[Any]) -> None:
    plt = output.pyplot()

    sites, regions = built.sites
    z = np.zeros(sites.shape[0])
    for blocks in gathered:
        for index, values in blocks:
            z[index] = values
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    bound = float(np.abs(z).max()) or 1.0
    style = {"c": z, "cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
    image = ax.scatter(*sites[~regions].T, s=25, **{**style, "c": z[~regions]})
    if regions.any():
        image = ax.scatter(
            *sites[regions].T, s=40, marker="s", edgecolors="k", **{**style, "c": z[regions]}
        )
    ax.set_aspect("equal")
    ax.set_title("(Bu − d)/σ" + (" (squares: region averages)" if regions.any() else ""))
    fig.colorbar(image, ax=ax, shrink=0.85)
    hist.hist(z, bins=20)
    hist.set_xlabel("(Bu − d)/σ")
    hist.set_title(f"RMS {np.sqrt(np.mean(z**2)):.2f} (1 = noise level)")
    output.save_figure(fig, path)


def _layout(mesh: dolfinx.mesh.Mesh, spec: str, seed: int) -> npt.NDArray[np.float64]:
    """Sensor points inside the mesh: ``random:N`` (uniform in the domain, by rejection) or
    ``grid:NxM`` (cell centres of a grid over the bounding box, those inside kept)."""
    comm = mesh.comm
    corners = comm.allgather(
        (mesh.geometry.x[:, :2].min(axis=0), mesh.geometry.x[:, :2].max(axis=0))
    )
    lo = np.min([c[0] for c in corners], axis=0)
    hi = np.max([c[1] for c in corners], axis=0)
    rng = np.random.default_rng(seed)
    parts = spec.split(":")
    if parts[0] == "random" and len(parts) == 2 and parts[1].isdigit():
        wanted = int(parts[1])
        candidates = lo + (hi - lo) * (0.02 + 0.96 * rng.random((8 * wanted + 16, 2)))
    elif parts[0] == "grid" and len(parts) == 2 and "x" in parts[1]:
        nx, ny = (int(v) for v in parts[1].split("x"))
        xs = lo[0] + (hi - lo)[0] * (np.arange(nx) + 0.5) / nx
        ys = lo[1] + (hi - lo)[1] * (np.arange(ny) + 0.5) / ny
        candidates = np.array([[x, y] for x in xs for y in ys])
        wanted = candidates.shape[0]
    else:
        raise CaseError(f"synthesize.layout: expected random:N or grid:NxM, got {spec!r}")
    padded = np.zeros((candidates.shape[0], 3))
    padded[:, :2] = candidates
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
    # the global stream, drawn in chunks: memory per rank independent of the mesh size
    rng = np.random.default_rng(seed)
    out = np.empty((local, bs))
    chunk = max(1, 2**20 // bs)
    for start in range(0, nodes, chunk):
        draws = rng.standard_normal((min(chunk, nodes - start), bs))
        mine = (inputs >= start) & (inputs < start + draws.shape[0])
        out[mine] = draws[inputs[mine] - start]
    return out.reshape(-1)


def _synthesize_field(case: Case, comm: MPI.Comm) -> SensorData:
    """Full-field data on the case's own mesh (its nodes are the data points), from a state of
    degree ``synthesize.degree`` (above the inversion's), with noise σ = ``noise``·max|u| at
    the nodes off the Dirichlet boundary; written as XDMF (P1 node data)."""
    assert case.data.field is not None and case.parameter.truth is not None
    mesh, facets = domain.load_mesh(comm, case)
    state = _state_space(case, mesh, case.synthesize.degree)
    parameter = dolfinx.fem.Function(
        dolfinx.fem.functionspace(mesh, ("Lagrange", case.synthesize.degree))
    )
    _interpolate(parameter, case.parameter.truth, "parameter.truth", case)
    model = _model(case, state, parameter, facets)
    u = model.solve()
    p1 = _state_space(case, mesh, 1)
    data = dolfinx.fem.Function(p1, name="u")
    data.interpolate(u)
    model.destroy()
    owned = p1.dofmap.index_map.size_local * p1.dofmap.index_map_bs
    top = comm.allreduce(float(np.abs(data.x.array[:owned]).max(initial=0.0)), op=MPI.MAX)
    sigma = case.synthesize.noise * top
    fixed = np.zeros(data.x.array.size)
    shifted = np.zeros(data.x.array.size)
    for bc in _dirichlet(case, p1, facets):
        bc.set(fixed)
        bc.set(shifted, x0=np.ones(fixed.size))
    free = ~((fixed - shifted)[:owned] > 0.5)
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
    if case.forward or case.data is None or case.parameter is None:
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
    targets = [t for t in (case.data.sensors, case.data.averages, case.data.field) if t]
    if case.data.field is not None:
        targets.append(case.data.field.with_suffix(".h5"))
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise CaseError(
            f"{case.source}: synthesize: {', '.join(existing)} exist(s); pass --force to "
            "overwrite measurement files"
        )
    if case.data.field is not None:
        return [_synthesize_field(case, comm)]
    found = domain.load_domain(comm, case)
    mesh, facets, cells = found.mesh, found.facets, found.cells
    # the coarser meshes stay alive while the refined one is in use (freeing them made the
    # parallel solve on the refined mesh crash)
    ancestors = []
    for _ in range(case.synthesize.refine):
        ancestors.append((mesh, facets, cells))
        mesh.topology.create_entities(1)
        option = dolfinx.mesh.RefinementOption.parent_cell_and_facet
        refined, parent_cell, parent_facet = dolfinx.mesh.refine(mesh, option=option)
        refined.topology.create_entities(1)
        refined.topology.create_connectivity(1, 2)
        if facets is not None:
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


def _synthesize_on(case: Case, fine: domain.Domain) -> list[SensorData]:
    """The true state on ``fine`` and the case's point and region data from it."""
    assert case.parameter is not None and case.parameter.truth is not None
    degree = case.synthesize.degree
    state = _state_space(case, fine.mesh, degree)
    parameter = dolfinx.fem.Function(dolfinx.fem.functionspace(fine.mesh, ("Lagrange", degree)))
    _interpolate(parameter, case.parameter.truth, "parameter.truth", case)
    model = _model(case, state, parameter, fine.facets)
    u = model.solve()
    written = []
    if case.data.sensors is not None:
        written.append(_synthesize_points(case, fine.mesh, u))
    if case.data.averages is not None:
        written.append(_synthesize_averages(case, fine, u))
    model.destroy()
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


def _noisy(case: Case, values: npt.NDArray[np.float64], stream: int) -> tuple[Any, Any]:
    """Values with seeded Gaussian noise σ = ``synthesize.noise``·max|values|, and σ."""
    sigma = case.synthesize.noise * float(np.abs(values).max())
    rng = np.random.default_rng(case.seed + stream)
    return values + sigma * rng.standard_normal(values.size), np.full(values.size, sigma)


def _synthesize_points(case: Case, mesh: dolfinx.mesh.Mesh, u: dolfinx.fem.Function) -> SensorData:
    assert case.data is not None and case.data.sensors is not None
    points = _layout(mesh, case.synthesize.layout, case.seed)
    values = point_values(u, points)
    component = None
    if values.ndim == 2:  # a vector state: one row per sensor and component
        bs = values.shape[1]
        component = np.tile(np.arange(bs), points.shape[0])
        points = np.repeat(points, bs, axis=0)
        values = values.reshape(-1)
    noisy, sigma = _noisy(case, values, 1)
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


def _synthesize_averages(case: Case, found: domain.Domain, u: dolfinx.fem.Function) -> SensorData:
    """The means of ``u`` over the physical groups matching ``synthesize.regions``."""
    import fnmatch

    assert case.data is not None and case.data.averages is not None
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
    measures, _ = _regions(case, found, request)
    one = dolfinx.fem.Constant(found.mesh, 1.0)
    values = np.array(
        [
            comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(u * m)))
            / comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(one * m)))
            for m in measures
        ]
    )
    noisy, sigma = _noisy(case, values, 2)
    data = SensorData(
        points=np.zeros((len(names), 0)),
        values=noisy,
        sigma=sigma,
        experiment=None,
        lines=np.arange(2, len(names) + 2),
        source=str(case.data.averages),
        region=np.array(names),
    )
    write_sensors(comm, case.data.averages, data)
    return data


COMPARE_PRESETS: dict[str, list[str]] = {
    "ngd": ["optimizer.kind='ngd'", "optimizer.momentum='none'", "optimizer.beta=0.0"],
    "nhb": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='natural-heavy-ball'",
        "optimizer.beta=0.5",
    ],
    "nnesterov": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='natural-nesterov'",
        "optimizer.beta=0.5",
    ],
    "adam": ["optimizer.kind='adam'"],
    "lbfgs": ["optimizer.kind='lbfgs'"],
}


def compare(
    path: Path,
    optimizers: list[str],
    overrides: list[str] = (),  # type: ignore[assignment]
    comm: MPI.Comm = MPI.COMM_WORLD,
    *,
    quiet: bool = True,
    iterations: int | None = None,
) -> list[dict[str, Any]]:
    """Run one case with several optimizers (``ngd``, ``nhb``, ``nnesterov``, ``adam``,
    ``lbfgs``); each writes ``results/<case>/compare/<optimizer>/``, and the case folder gets
    ``comparison.csv`` and ``comparison.png``. Returns the summaries. Collective."""
    from natinv.cases import load_case

    unknown = [o for o in optimizers if o not in COMPARE_PRESETS]
    if unknown or not optimizers:
        raise CaseError(f"--optimizers: unknown {unknown}; choose from {sorted(COMPARE_PRESETS)}")
    base = load_case(path, list(overrides))
    cases = [
        load_case(
            path,
            [
                *overrides,
                *COMPARE_PRESETS[name],
                f"output.folder='{base.output / 'compare' / name}'",
            ],
        )
        for name in optimizers
    ]
    summaries, histories = [], {}
    with output.claim_folder(comm, base.output):
        for name, case in zip(optimizers, cases, strict=True):
            summary = run(case, comm, quiet=quiet, iterations=iterations)
            summary["optimizer"] = name
            summaries.append(summary)
            histories[name] = _read_history(comm, case.output / "history.csv")
        _write_comparison(comm, base.output / "comparison.csv", summaries)
        known = base.forward or (base.parameter is not None and base.parameter.truth is not None)
        key = "error" if known else "misfit"
        output.plot_convergence(comm, base.output / "comparison.png", histories, key, base.name)
    return summaries


@output.rank0_writer
def _write_comparison(comm: MPI.Comm, path: Path, summaries: list[dict[str, Any]]) -> None:
    keys = ("optimizer", "iterations", "stopped", "loss", "misfit", "relative_l2_error", "time")
    lines = [",".join(keys)] + [",".join(str(s.get(k)) for k in keys) for s in summaries]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _read_history(comm: MPI.Comm, path: Path) -> list[dict[str, Any]]:
    """A history CSV on rank 0 (empty elsewhere); its error is raised on every rank."""
    import csv

    def read() -> list[dict[str, Any]]:
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
        return [
            {k: float(v) for k, v in row.items() if k != "optimizer" and v not in ("", "None")}
            for row in rows
        ]

    return parallel.on_rank0(comm, f"{path}: cannot read", read) or []
