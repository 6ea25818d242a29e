"""Running a case: build it, optimise it with a progress line, checkpoint it, write results.

:func:`run` builds the case's :class:`~natinv.problems.Problem`, holds its output folder
(:func:`natinv.output.claim_folder`), chooses the optimizer from the case's settings (natural
gradient in the Gauss–Newton, L2 or H1 metric or the loss's own; Adam; L-BFGS; the TAO
finite-element baseline), iterates to the stopping rule (discrepancy, target, iterations, no
descent) with one history entry and progress line per iteration, checkpoints every N iterations
(:mod:`natinv.checkpoint`; ``--resume`` continues to the same iterates) and lets the problem
write its results. It talks to the problem only through the protocol; TAO runs its own loop and
reports each iteration through a monitor that takes the same path (:func:`_log`, checkpoints,
:func:`_stop`). Comparing optimizers is :mod:`natinv.compare`; measurement synthesis is
:mod:`natinv.synthesis`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mpi4py import MPI

import numpy as np
import torch

from natinv import checkpoint, metrics, output, parallel, progress
from natinv.cases import Case
from natinv.directions import (
    Cholesky,
    GaussNewtonCG,
    LeastSquaresSolver,
    LevenbergMarquardt,
    NaturalSolver,
    RowSolver,
    SampleSpaceSolver,
    ShrinkingDamping,
)
from natinv.fields import NeuralField, reference_length
from natinv.gram import Gram
from natinv.objectives.inverse import InverseObjective
from natinv.objectives.pinn import PINN
from natinv.objectives.ritz import Ritz
from natinv.observations import TimeSeries
from natinv.optim.baselines import LBFGS, Adam
from natinv.optim.momentum import make_momentum
from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.sampled import SampledGaussNewton
from natinv.optim.steps import Armijo
from natinv.optim.tao import FieldBaseline
from natinv.problems import Problem, build_problem
from natinv.problems.inverse import InverseSetup

__all__ = ["run"]


def _optimizer(case: Case, built: Problem) -> tuple[Any, list[Any]]:
    """The optimizer and the PETSc-holding objects to destroy after it."""
    settings = case.optimizer
    objective, field = built.objective, built.field
    if settings.kind.startswith("tao"):
        assert isinstance(built, InverseSetup)
        baseline = FieldBaseline(
            built.problem, settings.kind.removeprefix("tao-"), options_prefix="natinv_tao_"
        )
        return baseline, [baseline]
    assert objective is not None and isinstance(field, NeuralField)
    if settings.kind == "adam":
        return Adam(objective, lr=settings.lr), []
    if settings.kind == "lbfgs":
        return LBFGS(objective, memory=20), []
    if settings.batch is not None:  # natural Gauss–Newton on samples of the experiments
        assert isinstance(objective, InverseObjective)
        sampled = SampledGaussNewton(
            objective,
            settings.batch,
            momentum=settings.momentum,
            beta=settings.beta,
            damping=settings.damping or 1e-3,
            step=settings.step,
            seed=case.seed,
            sampling=settings.sampling,
        )
        return sampled, [sampled]
    owned: list[Any] = []
    gram: Any
    if settings.solver == "gn-cg":  # matrix-free Gauss–Newton (the case parser made sure)
        assert isinstance(objective, InverseObjective)
        gram = objective.gauss_newton_operator()
        owned.append(gram)
    elif isinstance(objective, PINN | Ritz):  # the loss's own metric: ENGD, or the energy
        gram = objective.gram
    elif settings.metric == "gauss-newton":
        gram = objective.gauss_newton()
        owned += [gram, gram.metric, gram.rows]
    elif settings.metric == "h1":
        unit = reference_length(field)  # (the same matrix whatever the mesh's unit)
        matrix = metrics.h1(field.space, length=unit, unit=unit)
        gram = Gram(field, matrix)
        owned += [gram, matrix]
    else:
        gram = objective.gram
    solver: NaturalSolver | RowSolver
    relative = LevenbergMarquardt(settings.damping or 1e-3, relative=True)
    if settings.solver == "gn-cg":  # CG with Eisenstat–Walker forcing
        solver = NaturalSolver(gram, GaussNewtonCG(), relative, options_prefix="natinv_gram_")
    elif settings.solver == "least-squares":  # from the rows, G never formed
        damping = ShrinkingDamping(settings.damping) if settings.damping > 0 else 0.0
        solver = LeastSquaresSolver(gram, damping, settings.cutoff)
    elif _sample_space(settings, objective, gram):  # the same direction, an n × n factorisation
        solver = SampleSpaceSolver(gram, relative)
    elif settings.solver == "lm" and _function_space(settings, objective):
        # λ fixed at damping·max diag G: the gain ratio of a metric that is not the loss's
        # Hessian says nothing about λ (bench/function_metrics.py)
        value = settings.damping or 1e-3
        fixed = LevenbergMarquardt(value, minimum=value, maximum=value, relative=True)
        solver = NaturalSolver(gram, Cholesky("auto"), fixed, options_prefix="natinv_gram_")
    else:
        solver = NaturalSolver(
            gram,
            settings.solver,
            damping=settings.damping,
            cutoff=settings.cutoff,
            options_prefix="natinv_gram_",
        )
    step: Any = settings.step
    if step == "armijo" and _function_space(settings, objective):
        step = Armijo(adaptive=True)  # (the direction has no scale of the loss's)
    optimizer = NaturalGradientDescent(
        objective, solver, step, momentum=settings.momentum, beta=settings.beta
    )
    return optimizer, [solver, *owned]


def _function_space(settings: Any, objective: Any) -> bool:
    """An inverse case's natural gradient in the L2 or H1 metric of the field."""
    return isinstance(objective, InverseObjective) and settings.metric in ("l2", "h1")


def _sample_space(settings: Any, objective: Any, gram: Gram) -> bool:
    """Whether the ``lm`` direction of a Gauss–Newton inverse case is solved in sample space:
    fewer observation rows than parameters, a diagonal noise metric (point sensors, region
    averages), no Tikhonov term (so that ∇L = (BSJ)ᵀ W ρ), no natural momentum.
    ``(G + λI)⁻¹ ∇L`` is then ``J̃ᵀ(J̃J̃ᵀ + λI)⁻¹ W^½ρ``: an n × n factorisation instead of
    forming and factorising the P × P Gram (measured on the plate, 80 sensors, P = 1141: the
    Cholesky was a third of an iteration)."""
    return (
        settings.solver == "lm"
        and settings.metric == "gauss-newton"
        and isinstance(objective, InverseObjective)
        and objective.problem.R is None
        and all(
            obs.operator is not None or isinstance(obs, TimeSeries)  # (not a full field)
            for obs in objective.problem.observations
        )
        and gram.rows.num_global < gram.num_parameters
        # natural momenta keep the P × P path: their re-projection from the rows is exact in
        # sample space too (tested), but not measured on the inverse suite
        and not make_momentum(settings.momentum).natural
    )


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
    force: bool = False,
    quiet: bool = False,
    iterations: int | None = None,
) -> dict[str, Any]:
    """Run a case to its stopping rule and write its results; returns the summary.

    ``resume`` continues from ``results/<case>/checkpoint.npz`` to the same iterates as an
    uninterrupted run. An output folder that holds another run's results is refused unless
    the run resumes it or ``force`` replaces it (the old results are removed first).
    ``iterations`` overrides ``optimizer.iterations``. Collective."""
    folder = case.output
    built = build_problem(case, comm)
    try:
        if isinstance(built, InverseSetup):  # (before the folder is claimed)
            built.rows_per_step(case)  # type: ignore[arg-type]
        with (
            output.claim_folder(comm, folder, results=output.RESULTS, resume=resume, force=force),
            progress.reporting(comm, enabled=not quiet),
        ):
            return _run(case, built, comm, resume, quiet, iterations)
    finally:
        built.close()


def _run(
    case: Case,
    built: Problem,
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
    built: Problem,
    comm: MPI.Comm,
    optimizer: Any,
    owned: list[Any],
    resume: bool,
    quiet: bool,
    iterations: int | None,
) -> dict[str, Any]:
    folder = case.output
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
    say(
        f"natinv run {case.name}: {comm.size} rank(s), {built.field.num_parameters} parameters, "
        f"{built.describe()}, optimizer {case.optimizer.kind}"
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
        assert isinstance(built, InverseSetup)
        stopped = _run_tao(case, built, optimizer, history, limit, say, start)
    sampled = isinstance(optimizer, SampledGaussNewton)
    every = _check_every(case, optimizer) if sampled else 1
    while not isinstance(optimizer, FieldBaseline) and len(history) < limit:
        progress.restart()
        record = optimizer.step()
        theta = optimizer.theta
        if sampled:  # the whole misfit (every experiment's state) once per pass or as set
            due = (len(history) + 1) % every == 0
            misfit = optimizer.full_misfit() if due else float("nan")
        else:
            misfit = built.misfit(theta, record["loss"])
        error = built.error(theta)
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
        # (sampled: no step on any sample of a whole pass)
        if case.optimizer.kind == "ngd" and all(h["step"] == 0.0 for h in history[-every:]):
            stopped = "no descent"
            break
    if not isinstance(optimizer, FieldBaseline):
        built.field.set_parameters(optimizer.theta)
    # the last iterate too (a finished run can be resumed with more iterations)
    if case.checkpoint_every and history and not _checkpoint_due(case, len(history)):
        if isinstance(optimizer, FieldBaseline):
            values = np.array(built.field.parameters)
            _save_checkpoint(comm, folder, case, history, field=comm.gather(values, root=0))
        else:
            _save_checkpoint(comm, folder, case, history, optimizer=optimizer.state_dict())
    timed = [o for o in owned if hasattr(o, "timings")]
    timed += [built.objective.gram] if built.objective is not None else []
    timings = {"total": float(sum(r.get("time", 0.0) for r in history))}
    for obj in timed:
        for k, v in obj.timings.items():
            timings[k] = timings.get(k, 0.0) + float(v)
    timings.update(built.timings())
    return built.write(history, _summary(case, built, history, stopped, timings))


def _check_every(case: Case, optimizer: SampledGaussNewton) -> int:
    """Sampled steps: check the whole misfit every ``optimizer.check_every`` steps, by default
    once per pass over the experiments or rows (E / batch or N / batch steps)."""
    return case.optimizer.check_every or optimizer.per_pass


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
    built: InverseSetup,
    baseline: FieldBaseline,
    history: list[dict[str, Any]],
    limit: int,
    say: Any,
    start: float,
) -> str:
    """The finite-element-field baseline: TAO from the field's current values, one history
    entry per TAO iteration. Returns why it stopped."""
    comm = built.problem.comm
    stopped = ["iterations"]
    first = len(history)
    clock = [0.0]  # TAO's time at the last record

    def monitor(record: dict[str, Any]) -> bool:
        progress.restart()  # (TAO's next iteration begins after this)
        if record["iteration"] == 0:
            return False
        values = np.array(baseline.x.array_r)
        built.problem.value(values)
        misfit = built.problem.last["misfit"]
        error = built.error(values)
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
            _save_checkpoint(comm, case.output, case, history, field=comm.gather(values, root=0))
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
