"""Many experiments: what one Gauss–Newton step costs with 16 load cases, shared or not.

An electrical-impedance-like problem on the unit disk (``meshes/disk.msh``, P2 state, P1
field): −∇·(κ∇u) = 0 with κ∇u·n + c u = g_k on the boundary (c = 1e-3, no Dirichlet side), 16
current patterns g_k = cos(jθ), sin(jθ) (j = 1..8), the same 64 sensors at r = 0.95 for every
pattern, 1 % noise; κ = exp(N(x, y)) with the cases' default network (16 Fourier features,
2-20-20-1, P = 1141). The data come from the same discretisation (a cost benchmark, not an
accuracy claim). Three set-ups, each timed over the same two natural Gauss–Newton steps
(``natinv run``'s default direction and step rule) in one process, one after the other:

- one experiment (the first pattern alone);
- 16 experiments, each with a model of its own (16 factorisations per parameter, 16 blocks
  of 64 transposed solves for the rows);
- 16 experiments sharing one operator (``Model.share_operator``: one factorisation per
  parameter, one block of 64 transposed solves for the rows, ∂F/∂m per experiment).

Printed: seconds per step, its ratio to one experiment's, factorisations and operator solves.

    OMP_NUM_THREADS=1 .venv/bin/python bench/experiments.py [--steps 2]

Part 2 (``--part sampling``) follows sampled steps on the same problem over seeds; part 3
(``--part case --seeds 3``) runs the shipped ``cases/eit_disk.toml`` through ``natinv run``,
full steps against sampled ones (``--methods name:batch:momentum:beta[:sampling],...``, the
sampling ``experiments``, ``combinations`` or ``rows``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mpi4py import MPI

import dolfinx
import dolfinx.io.gmsh
import numpy as np
import ufl

import natinv
from natinv import models
from natinv.directions import LevenbergMarquardt, SampleSpaceSolver
from natinv.expressions import compile_expression
from natinv.fields import FourierFeatures, InputChain, ReferenceBox
from natinv.objectives.inverse import Experiment, InverseObjective, InverseProblem
from natinv.observations import point_sensors
from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.sampled import SampledGaussNewton

ROOT = Path(__file__).resolve().parents[1]
TRUTH = "1 + 2*((x-0.3)**2 + (y-0.2)**2 < 0.06) + 0.8*exp(-10*((x+0.4)**2 + (y+0.3)**2))"


def patterns(mesh: dolfinx.mesh.Mesh, count: int) -> list:
    """The boundary currents cos(jθ), sin(jθ), j = 1, 2, ... as UFL expressions."""
    x = ufl.SpatialCoordinate(mesh)
    theta = ufl.atan2(x[1], x[0])
    return [(ufl.cos if k % 2 == 0 else ufl.sin)((k // 2 + 1) * theta) for k in range(count)]


def build(comm: MPI.Comm, count: int, shared: bool) -> tuple:
    """The problem with ``count`` patterns: (objective, problem, models)."""
    mesh = dolfinx.io.gmsh.read_from_msh(str(ROOT / "meshes" / "disk.msh"), comm, gdim=2).mesh
    state = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    m = dolfinx.fem.Function(space)
    angles = 2 * np.pi * np.arange(64) / 64
    points = 0.95 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    truth = compile_expression(TRUTH)
    rng = np.random.default_rng(0)
    experiments, first = [], None
    contact = dolfinx.fem.Constant(mesh, 1e-3)  # one object: the operators may be shared
    for k, flux in enumerate(patterns(mesh, count)):
        model = models.diffusion(
            state, m, f=0.0, bcs=[], flux=flux, robin=(contact, 0.0), name=f"pattern {k}"
        )
        if shared and first is not None:
            model.share_operator(first)
        first = first or model
        m.interpolate(lambda x: truth(x))
        sensors = point_sensors(state, points, np.zeros(len(points)), sigma=1.0)
        values = np.zeros(len(points))  # (in the sensors' order: rows are owned by ranks)
        values[sensors.index] = sensors.predict(model.solve().x.petsc_vec)
        values = comm.allreduce(values)
        sigma = 0.01 * np.abs(values).max()
        noisy = values + sigma * rng.standard_normal(values.size)
        sensors.destroy()
        obs = point_sensors(state, points, noisy, sigma=sigma)
        experiments.append(Experiment(model, [obs], f"pattern {k}"))
    problem = InverseProblem(experiments)
    features = FourierFeatures(2, 16, 0.5, seed=0)
    network = natinv.mlp([features.width, 20, 20, 1], seed=0)
    field = natinv.NeuralField(
        space, network, "exp", input_map=InputChain(ReferenceBox.of(mesh), features)
    )
    return InverseObjective(field, problem), problem, [e.model for e in experiments]


def release(owned: list, objective: Any, problem: Any, models_: list) -> None:
    """Free what :func:`build` made and the optimizer's ``owned`` objects. Collective."""
    for obj in owned:
        obj.destroy()
    objective.destroy()
    for experiment in problem.experiments:
        for obs in experiment.observations:
            obs.destroy()
    problem.destroy()
    for model in models_:
        model.destroy()


def measure(comm: MPI.Comm, count: int, shared: bool, steps: int) -> dict:
    objective, problem, models_ = build(comm, count, shared)
    gram = objective.gauss_newton()
    solver = SampleSpaceSolver(gram, LevenbergMarquardt(1e-3, relative=True))
    optimizer = NaturalGradientDescent(objective, solver, "armijo")
    optimizer.step()  # (warm-up: forms compiled, first factorisation)
    operators = list({id(m._op): m._op for m in models_}.values())  # shared: counted once

    def counts() -> tuple[int, int]:
        return sum(op.assemblies for op in operators), sum(m.linear_solves for m in models_)

    before = counts()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    seconds = comm.allreduce((time.perf_counter() - start) / steps, op=MPI.MAX)
    after = counts()
    release([solver, gram, gram.metric, gram.rows], objective, problem, models_)
    return {
        "seconds": seconds,
        "factorisations": (after[0] - before[0]) / steps,
        "operator_solves": (after[1] - before[1]) / steps,
    }


def error_of(comm: MPI.Comm, field: natinv.NeuralField, theta: np.ndarray) -> float:
    """The relative nodal error of κ against the truth (owned dofs, all ranks)."""
    truth = compile_expression(TRUTH)
    owned = field.space.dofmap.index_map.size_local
    x = field.space.tabulate_dof_coordinates()[:owned].T
    exact = truth(x)
    values = field.values(theta)
    num = comm.allreduce(float(np.sum((values - exact) ** 2)))
    return float(np.sqrt(num / comm.allreduce(float(np.sum(exact**2)))))


def trace(
    comm: MPI.Comm, method: str, batch: int, seed: int, budget: float, beta: float = 0.5
) -> list[dict]:
    """One method on the 16-pattern problem (shared operator) until the whole misfit reaches
    the noise level (checked after every step for the full method, once per pass over the
    experiments for the sampled ones: those checks' solves and time are counted) or the
    time ``budget`` is spent. Records time, operator solves, error, misfit when checked."""
    objective, problem, models_ = build(comm, 16, True)
    level = 0.5 * sum(obs.num_global for obs in problem.observations)
    if method == "full":
        gram = objective.gauss_newton()
        solver = SampleSpaceSolver(gram, LevenbergMarquardt(1e-3, relative=True))
        optimizer: Any = NaturalGradientDescent(objective, solver, "armijo")
        owned = [solver, gram, gram.metric, gram.rows]
    else:
        beta = 0.0 if method == "none" else beta
        optimizer = SampledGaussNewton(objective, batch, momentum=method, beta=beta, seed=seed)
        owned = [optimizer]
    records, start = [], time.perf_counter()
    solves0 = sum(m.linear_solves for m in models_)
    every = 1 if method == "full" else max(1, 16 // batch)
    for k in range(1, 400):
        record = optimizer.step()
        entry = {"step": k, "error": error_of(comm, objective.field, optimizer.theta)}
        if k % every == 0:
            if method == "full":
                entry["misfit"] = float(record["loss"])
            else:
                entry["misfit"] = optimizer.full_misfit()
        entry["time"] = time.perf_counter() - start
        entry["solves"] = sum(m.linear_solves for m in models_) - solves0
        records.append(entry)
        if entry.get("misfit", np.inf) <= level or entry["time"] > budget:
            break
    release(owned, objective, problem, models_)
    return records


METHODS = "none:4:0,heavy-ball:4:0.5,spring:4:0.5,spring:2:0.5"


def sampling(comm: MPI.Comm, seeds: int, methods: str) -> None:
    """Part 2: full steps against sampled ones (``method:batch:β``, e.g. 4 of 16 experiments
    per step), with and without momentum, to the noise level: the time and the operator solves
    each needs to reach the full method's final error, over seeds (the sample draws; the
    network is the same)."""
    full = trace(comm, "full", 16, 0, np.inf)
    target, total = full[-1]["error"], full[-1]["time"]
    rows = {"full (16 of 16)": [full]}
    for item in methods.split(","):
        method, batch, beta = item.split(":")
        name = f"{method} ({batch} of 16, β {beta})"
        rows[name] = [
            trace(comm, method, int(batch), s, 3 * total, float(beta)) for s in range(seeds)
        ]
    if comm.rank != 0:
        return
    print(
        f"full: {len(full)} steps, error {target:.4f}, {total:.1f} s, {full[-1]['solves']} solves"
    )
    print(
        f"{'method':<28} {'to the full error: s':>21} {'÷ full':>7} {'solves':>7} "
        f"{'final error':>12} {'steps':>6} {'stopped by':>11}"
    )
    for name, runs in rows.items():
        reach = []
        for run in runs:
            hit = next((r for r in run if r["error"] <= target), None)
            reach.append((hit["time"], hit["solves"]) if hit else (np.inf, np.inf))
        seconds = float(np.median([r[0] for r in reach]))
        solves = float(np.median([r[1] for r in reach]))
        finals = [run[-1]["error"] for run in runs]
        stops = ["noise" if run[-1].get("misfit", np.inf) <= 512 else "budget" for run in runs]
        print(
            f"{name:<28} {seconds:21.1f} {seconds / total:7.2f} {solves:7.0f} "
            f"{float(np.median(finals)):12.4f} {int(np.median([len(r) for r in runs])):6d} "
            f"{'/'.join(stops):>11}"
        )


CASE_METHODS = "full:0:none:0,sampled:4:spring:0.9,sampled:8:spring:0.9,sampled:4:none:0"


def shipped_case(
    comm: MPI.Comm, seeds: int, methods: str, iterations: int, name: str = "eit_disk"
) -> None:
    """Part 3: a shipped case with several experiments (``cases/eit_disk.toml``,
    ``cases/heat_sources.toml``) as ``natinv run`` runs it (data synthesized on a finer
    mesh, the discrepancy stop; sampled runs check the whole misfit once per pass), full
    steps against sampled ones, seed by seed (the network's start and the samples): the time
    and solves to the stop, the error there, and the time at which each first reaches the
    full run's final error (÷ the full run's time to its stop)."""
    import csv
    import tempfile

    from natinv.cases import load_case
    from natinv.runner import run

    chosen = [m.split(":") for m in methods.split(",")]
    folder = Path(comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None, root=0))
    table = []
    for seed in range(seeds):
        full_error, full_time = None, None
        for label, batch, momentum, beta, *rest in chosen:
            sampling = rest[0] if rest else "experiments"
            overrides = [
                f"seed={seed}",
                f"optimizer.batch={batch}",
                f"optimizer.momentum='{momentum}'",
                f"optimizer.beta={beta}",
                f"optimizer.iterations={iterations}",
                *([f"optimizer.sampling='{sampling}'"] if batch != "0" else []),
                f"output.folder='{folder / 'run'}'",
                "output.checkpoint_every=0",
            ]
            case = load_case(ROOT / "cases" / f"{name}.toml", overrides)
            summary = run(case, comm, force=True, quiet=True)
            with open(folder / "run" / "history.csv") as stream:
                history = list(csv.DictReader(stream))
            errors = np.array([float(h["error"]) for h in history])
            elapsed = np.array([float(h["elapsed"]) for h in history])
            if full_error is None:  # (the first method is the reference)
                full_error, full_time = float(errors[-1]), float(elapsed[-1])
            reached = np.where(errors <= full_error)[0]
            row = {
                "seed": seed,
                "method": f"{label} b={batch} {momentum} β={beta}"
                + {"combinations": " combined", "rows": " rows"}.get(sampling, ""),
                "its": len(history),
                "stopped": summary["stopped"],
                "time": float(elapsed[-1]),
                "error": float(errors[-1]),
                "solves": summary["pde_solves"]["state"],
                "operator": summary["pde_solves"]["operator"],
                "reach": elapsed[reached[0]] / full_time if reached.size else float("nan"),
            }
            table.append(row)
    if comm.rank == 0:
        print(f"cases/{name}.toml, {comm.size} rank(s); reach: time to the full run's final")
        print("error ÷ the full run's time to its stop (same seed)")
        print(
            f"{'seed':>4} {'method':<28} {'its':>4} {'stopped':>12} {'time':>6} {'error':>7} "
            f"{'state solves':>12} {'operator':>8} {'reach':>6}"
        )
        for r in table:
            print(
                f"{r['seed']:>4} {r['method']:<28} {r['its']:>4} {r['stopped']:>12} "
                f"{r['time']:6.1f} {r['error']:7.3f} {r['solves']:>12} {r['operator']:>8} "
                f"{r['reach']:6.2f}"
            )
        print("medians over the seeds:")
        for method in dict.fromkeys(r["method"] for r in table):
            rows = [r for r in table if r["method"] == method]
            print(
                f"  {method:<28} time {np.median([r['time'] for r in rows]):6.1f}  error "
                f"{np.median([r['error'] for r in rows]):.3f}  state solves "
                f"{np.median([r['solves'] for r in rows]):6.0f}  operator solves "
                f"{np.median([r['operator'] for r in rows]):6.0f}  reach "
                f"{np.nanmedian([r['reach'] for r in rows]):.2f}  stopped at the noise level "
                f"{sum(r['stopped'] == 'discrepancy' for r in rows)}/{len(rows)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--part", choices=("cost", "sampling", "case"), default="cost")
    parser.add_argument("--iterations", type=int, default=60, help="part 3: at most")
    parser.add_argument("--case", default="eit_disk", help="part 3: a case of cases/")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=METHODS, help="method:batch:beta,... (part 2)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    if args.part == "sampling":
        sampling(comm, args.seeds, args.methods)
        return
    if args.part == "case":
        methods = CASE_METHODS if args.methods == METHODS else args.methods
        shipped_case(comm, args.seeds, methods, args.iterations, args.case)
        return
    rows = [("1 experiment", 1, False), ("16, own models", 16, False), ("16, shared", 16, True)]
    results = {name: measure(comm, count, shared, args.steps) for name, count, shared in rows}
    one = results["1 experiment"]["seconds"]
    if comm.rank == 0:
        print(f"{comm.size} rank(s), {args.steps} steps each (after one warm-up step)")
        print(
            f"{'set-up':<16} {'s/step':>8} {'÷ one':>7} {'factorisations/step':>20} "
            f"{'operator solves/step':>21}"
        )
        for name, r in results.items():
            print(
                f"{name:<16} {r['seconds']:8.2f} {r['seconds'] / one:7.2f} "
                f"{r['factorisations']:20.1f} {r['operator_solves']:21.1f}"
            )


if __name__ == "__main__":
    main()
