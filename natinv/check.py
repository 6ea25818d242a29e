"""``natinv check CASE``: validate a case completely without optimizing, and say what it holds.

Everything a run reads or evaluates before its first iteration is done here the same way —
the mesh and its tags, the data files, sensors located in the mesh, formulas evaluated on it,
the network built on the field's space, the forward problem's reference — and the output
folder is checked to be writable (nothing is written). The report, printed on rank 0, lists the
mesh, the spaces, the unknown, the observations and the optimizer settings that will be used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mpi4py import MPI

from natinv.cases import Case, ForwardCase, InverseCase

__all__ = ["check_case", "output_folder_problem"]


def output_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` could not hold results (None if it can): a file in its place, or the
    nearest existing folder above it is not writable. Local (rank 0 asks)."""
    if folder.exists():
        if not folder.is_dir():
            return f"{folder}: a file is in the place of the output folder"
        return None if os.access(folder, os.W_OK) else f"{folder}: not writable"
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent}: a file is in the way of the output folder {folder}"
    return None if os.access(parent, os.W_OK) else f"{parent}: not writable (for {folder})"


def check_case(case: Case, comm: MPI.Comm = MPI.COMM_WORLD) -> list[str]:
    """Build everything of ``case`` that a run builds before iterating, then free it; the report
    lines (the same on every rank). Collective.

    Raises:
        CollectiveError, CaseError: what a run would stop with, on every rank.
    """
    from natinv import parallel
    from natinv.problems import build_problem

    problem, checkpointed = parallel.on_rank0(  # type: ignore[misc]
        comm,
        "output.folder",
        lambda: (output_folder_problem(case.output), (case.output / "checkpoint.npz").exists()),
        share=True,
    )
    if problem is not None:
        raise parallel.CollectiveError(f"{case.source}: output.folder: {problem}")
    built: Any = build_problem(case, comm)
    try:
        if isinstance(case, InverseCase):
            built.rows_per_step(case)
        lines = _report(case, built, comm, checkpointed)
    finally:
        built.close()
    return lines


def _dofs(space: Any) -> int:
    return int(space.dofmap.index_map.size_global * space.dofmap.index_map_bs)


def _report(case: Case, built: Any, comm: MPI.Comm, checkpointed: bool) -> list[str]:
    mesh = built.mesh
    tdim = mesh.topology.dim
    cells = mesh.topology.index_map(tdim).size_global
    vertices = mesh.geometry.index_map().size_global
    where = case.mesh.file.name if case.mesh.file is not None else f"built-in {case.mesh.builtin}"
    owned = comm.allgather(mesh.topology.index_map(tdim).size_local)
    lines = [
        f"case {case.name!r} ({case.problem}, {case.source}): valid",
        f"  mesh       {where}: {cells} cells, {vertices} vertices, {tdim}D; "
        f"cells per rank {owned}",
    ]
    field = built.field
    space = field.space
    degree = space.ufl_element().embedded_superdegree
    settings = case.optimizer
    if isinstance(case, ForwardCase):
        rows = getattr(built.objective, "num_global", field.num_global)
        what = "residuals" if case.problem == "pinn" else "dofs"
        lines += [
            f"  solution   MLP {case.solution.network} ({field.num_parameters} parameters) on "
            f"P{degree}, {_dofs(space)} dofs",
            f"  loss       {case.problem}: {rows} {what}"
            + (f", {len(built.mus)} test μ" if case.parametric is not None else ""),
        ]
    else:
        assert isinstance(case, InverseCase)
        count_scale = case.parameter.features
        features = (
            ""
            if count_scale is None
            else f" on {count_scale[0]} Fourier features of scale "
            f"{count_scale[1]:g} and the coordinates"
        )
        unknown = (
            f"finite-element field P{degree}, {field.num_parameters} dofs"
            if settings.kind.startswith("tao")
            else f"MLP {case.parameter.network}{features} ({field.num_parameters} parameters), "
            f"transform {case.parameter.transform}, on P{degree} ({_dofs(space)} dofs)"
        )
        kinds = []
        points = sum(e.sensors.values.size for e in built.experiments if e.sensors is not None)
        averaged = sum(e.averages.values.size for e in built.experiments if e.averages is not None)
        if points:
            kinds.append(f"{points} point values (every sensor in the mesh)")
        if averaged:
            kinds.append(f"{averaged} region averages")
        if not built.measured:
            kinds.append("a full field")
        if built.series is not None:
            kinds.append(f"time series of {built.series[1].size} sensor(s)")
        model = f"{case.model.kind}, state P{case.model.degree} ({_dofs(built.model.space)} dofs)"
        if case.model.transient:
            model += (
                f", {case.model.steps} {case.model.scheme} steps of {case.model.dt:g} "
                f"(T = {case.model.steps * case.model.dt:g})"
            )
        lines += [f"  model      {model}", *_conditions(case, built)]
        lines += [
            f"  unknown    {unknown}",
            f"  data       {', '.join(kinds)}: {built.num_sensors} rows, every sensor inside "
            "the mesh" + (f"; noise level: misfit {built.discrepancy:g}" if built.measured else ""),
        ]
    lines += _estimates(case, built, comm)
    damping = f"{settings.solver} λ={settings.damping:g}"
    step = settings.step
    if isinstance(case, InverseCase) and settings.metric in ("l2", "h1"):  # (runner.py)
        damping = f"λ={settings.damping:g}·max diag G fixed"
        step = "armijo from twice the last step" if step == "armijo" else step
    if getattr(settings, "batch", None):  # sampled steps keep λ fixed (natinv.optim.sampled)
        of = "random combinations of the" if settings.sampling == "combinations" else "of the"
        drawn = f"{settings.batch} {of} {len(built.experiments)} experiments"
        if settings.sampling == "rows":
            drawn = f"{built.rows_per_step(case)} of the {built.num_sensors} rows"
        damping = f"sampled: {drawn} a step, λ={settings.damping:g}·max diag G fixed"
    detail = (
        f" ({settings.metric}, {damping}, {settings.momentum}"
        + (f" β={settings.beta:g}" if settings.momentum != "none" else "")
        + f", {step})"
        if settings.kind == "ngd"
        else ""
    )
    stop = settings.stop + (f" at {settings.target:g}" if settings.stop == "target" else "")
    lines += [
        f"  optimizer  {settings.kind}{detail}, up to {settings.iterations} iterations, "
        f"stop: {stop}",
        f"  output     {case.output}/ (writable)"
        + ("; holds a checkpoint" if checkpointed else ""),
    ]
    return lines


def _tags(tags: Any) -> str:
    return "every boundary facet" if tags == "all" else f"tags {list(tags)}"


def _loads(model: Any) -> list[str]:
    """A model's loads, as ``natinv check`` prints them."""
    parts = [f"source {model.source}"]
    if model.kind == "elasticity":
        parts = [f"load {model.load}"]
        if model.traction is not None:
            parts.append(f"traction {model.traction[1]} on tag {model.traction[0]}")
    elif model.dirichlet != []:
        parts.append(f"u = {model.boundary_value} on the Dirichlet side")
    parts += [f"κ∇u·n = {value} on {_tags(tags)}" for tags, value in model.flux]
    return parts


def _conditions(case: InverseCase, built: Any) -> list[str]:
    """The boundary conditions of the model and each experiment's loads and data."""
    model = case.model
    sides = (
        "none (no Dirichlet side)"
        if model.dirichlet == []
        else f"u fixed on {_tags(model.dirichlet)}"
    )
    lines = [f"  boundary   Dirichlet: {sides}"]
    if model.robin is not None:
        tags, c, value = model.robin
        lines.append(f"             Robin: κ∇u·n + {c:g} (u − {value}) = flux on {_tags(tags)}")
    if not case.experiments:
        lines.append(f"  loads      {'; '.join(_loads(model))}")
        return lines
    first = built.experiments[0].model
    together = sum(e.model.shares_operator(first) for e in built.experiments)
    lines.append(
        f"  loads      {len(case.experiments)} experiments"
        + (f", one operator factorised for all {together}" if together > 1 else "")
    )
    for view, data in zip(case.each(), built.experiments, strict=True):
        files = [p.name for p in (view.data.sensors, view.data.averages) if p is not None]
        lines.append(
            f"    {view.name}: {'; '.join(_loads(view.model))}; {data.num_values} values "
            f"({', '.join(files)})"
        )
    return lines


def _estimates(case: Case, built: Any, comm: MPI.Comm) -> list[str]:
    """What a run will need: memory per rank (the Gram's parts, the stored states of a
    transient model) and, for a transient model, one timed step times the steps of a
    trajectory. Collective."""
    from natinv import models, parallel, resources

    fmt = resources.format_bytes
    budget = resources.available_memory(resources.ranks_per_node(comm))
    parts = []
    gram = getattr(built.objective, "gram", None)
    if gram is not None:
        jacobian, formed = gram.estimates
        parts += [f"{fmt(jacobian.bytes)} for J and M·J", f"{fmt(formed.bytes)} for G if formed"]
    model = getattr(built, "model", None)
    lines = []
    if isinstance(model, models.TransientModel):
        state = parallel.allreduce_max(comm, float(model.u.x.array.nbytes))
        kept = (model.steps + model.stride - 1) // model.stride + model.stride
        parts.append(f"{fmt(kept * state)} for the stored states (1 in {model.stride} kept)")
        built.problem.set_parameter(built.field.values())
        seconds = model.timed_step()
        lines.append(
            f"  time       about {seconds:.2g} s per step (one step timed): "
            f"{_duration(seconds * model.steps)} per trajectory of {model.steps} steps; an "
            "iteration solves one forward and one backward trajectory, or more"
        )
    if isinstance(case, InverseCase) and case.optimizer.kind == "ngd":
        what = "trajectory" if isinstance(model, models.TransientModel) else "state solve"
        count = len(built.experiments)
        sampled_rows = case.optimizer.sampling == "rows" and case.optimizer.batch
        used = count if sampled_rows else case.optimizer.batch or count
        what = f"one {what}" if count == 1 else f"{used} {what}s (one factorisation)"
        if sampled_rows and count > 1:
            what = f"at most {what}: those with a drawn row,"
        transposed = _transposed_solves(built, used)
        if sampled_rows:
            transposed = min(transposed, built.rows_per_step(case))
        rows = (
            f", {'at most ' if sampled_rows else ''}{transposed} transposed solves for the "
            "Gauss–Newton rows (in blocks)"
            if case.optimizer.metric == "gauss-newton" and case.optimizer.solver != "gn-cg"
            else ", one adjoint solve"
        )
        if case.optimizer.metric == "gauss-newton" and case.optimizer.solver == "gn-cg":
            rows += ", and one tangent and one adjoint solve per inner CG iteration"
        if case.model.solver == "cg":
            what = what.replace(" (one factorisation)", "")
        lines.append(
            f"  solves     per iteration: {what} per trial step of the line search (one "
            f"when the full step is taken){rows}"
            + (f"; {used} of the {count} experiments drawn per step" if used < count else "")
        )
    if isinstance(case, InverseCase):
        lines.append(f"  linear     {_linear_solver(case)}")
    if parts:
        lines.insert(
            0, f"  memory     per rank: {', '.join(parts)}; {fmt(budget)} available per rank"
        )
    return lines


def _linear_solver(case: InverseCase) -> str:
    """How the state, adjoint and tangent systems are solved (``[model] solver``)."""
    if case.model.solver == "cg":
        return (
            "every system by CG with algebraic multigrid (GAMG) to a relative residual of "
            f"{case.model.rtol:g}; no factorisation"
        )
    name = {"mumps": "MUMPS", "superlu_dist": "SuperLU_DIST"}[case.model.solver]
    repeat = " (runs on 2 ranks repeat bitwise)" if case.model.solver == "superlu_dist" else ""
    return f"LU by {name}{repeat}: adjoints and Gauss–Newton rows on its factors"


def _transposed_solves(built: Any, used: int) -> int:
    """The transposed solves of the Gauss–Newton rows of ``used`` experiments: one per
    measured value, experiments with the same sensors (and a shared operator) sharing them."""
    import numpy as np

    experiments = built.experiments[:used]
    if len(experiments) == 1 or any(e.sensors is None or e.averages for e in experiments):
        return int(sum(e.num_values for e in experiments))
    distinct: list[Any] = []
    for e in experiments:
        if not any(np.array_equal(e.sensors.points, p) for p in distinct):
            distinct.append(e.sensors.points)
    return int(sum(p.shape[0] for p in distinct))


def _duration(seconds: float) -> str:
    """``93784`` → ``"26 h"``; ``75`` → ``"75 s"``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"
