"""A neural diffusion coefficient from point sensors: natural momentum against the baselines.

−∇·(κ∇u) = 1 on the unit square, u = 0 on the boundary, κ_true = exp(0.6 sin 2πx cos πy).
Data: the state of κ_true on a finer discretisation (64 × 64, P2 state, κ interpolated in P2 —
no inverse crime) at 100 sensors (a jittered 10 × 10 grid), with Gaussian noise of 0.5 % of
max|u| (σ known). Inversion: 24 × 24 mesh, P2 state, κ in P1.

Methods, each for the same wall-time budget:

- κ = exp(N(x)), N an MLP [2, 20, 20, 1] tanh (P = 501): natural gradient in the Gauss–Newton
  metric ``(BSJ)ᵀΓ⁻¹(BSJ)`` (Levenberg–Marquardt damping, log-grid line search or, with
  ``--step armijo``, backtracking from the full step: fewer forward solves), without and with
  natural Nesterov momentum; Adam (lr 1e-2); L-BFGS (memory 20, Armijo);
- the classical baseline: m = log κ as a P1 function (625 unknowns), H1 Tikhonov
  ``½α|m|²_H1``, TAO Gauss–Newton–CG (``nls``) run to ‖g‖/‖g₀‖ ≤ 1e-6, for α on a grid; the
  baseline is the α whose misfit is nearest the discrepancy level ``n/2`` (Morozov: 100 sensors,
  σ known), the usual way to choose α without the truth.

The neural methods stop by the same discrepancy principle (the misfit reaches ``n/2``) or at the
budget. Prints, per method, the relative L2 error of κ over time, the error where it stopped and
the time to reach the baseline's error.

Usage: ``python bench/inverse_nn.py [--budget 60] [--seed 0] [--step armijo]`` (serial; one BLAS
thread).
"""

from __future__ import annotations

import argparse
import time

import natinv  # first: the DOLFINx wheel's libraries

# isort: split
from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from natinv import metrics, models
from natinv.objectives.inverse import Experiment, InverseObjective, InverseProblem
from natinv.observations import point_sensors
from natinv.optim import NaturalGradientDescent
from natinv.optim.baselines import LBFGS, Adam
from natinv.optim.tao import FieldBaseline

SIGMA_FRACTION = 0.005
ALPHAS = (1e-1, 1.0, 1e1, 1e2, 1e3)


def kappa_true(x: np.ndarray) -> np.ndarray:
    return np.exp(0.6 * np.sin(2 * np.pi * x[0]) * np.cos(np.pi * x[1]))


def sensors(seed: int) -> np.ndarray:
    grid = (np.arange(10) + 0.5) / 10
    points = np.array([[x, y] for x in grid for y in grid])
    return points + np.random.default_rng(seed).uniform(-0.03, 0.03, points.shape)


def synthesize(comm: MPI.Comm, points: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Noisy sensor data of the fine model (the same on every rank) and σ."""
    mesh = dolfinx.mesh.create_unit_square(comm, 64, 64)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    kappa = dolfinx.fem.Function(space)
    kappa.interpolate(kappa_true)
    model = models.diffusion(space, kappa, f=1.0)
    u = model.solve()
    probe = point_sensors(space, points, np.zeros(points.shape[0]))
    values = np.zeros(points.shape[0])
    for index, value in zip(
        comm.allgather(probe.index), comm.allgather(probe.predict(u.x.petsc_vec)), strict=True
    ):
        values[index] = value
    sigma = SIGMA_FRACTION * float(np.abs(values).max())
    noisy = values + sigma * np.random.default_rng(seed + 1).standard_normal(values.size)
    probe.destroy()
    model.destroy()
    return noisy, sigma


class Problem:
    """The inversion discretisation and an error measure for κ."""

    def __init__(self, comm: MPI.Comm, points: np.ndarray, data: np.ndarray, sigma: float):
        self.mesh = dolfinx.mesh.create_unit_square(comm, 24, 24)
        self.parameter_space = dolfinx.fem.functionspace(self.mesh, ("Lagrange", 1))
        self.state_space = dolfinx.fem.functionspace(self.mesh, ("Lagrange", 2))
        self.comm = comm
        self.points, self.data, self.sigma = points, data, sigma
        self.truth = dolfinx.fem.Function(self.parameter_space)
        self.truth.interpolate(kappa_true)
        self.mass = metrics.l2(self.parameter_space)
        self.owned = self.parameter_space.dofmap.index_map.size_local
        self._x, self._y = self.mass.createVecs()
        self._x.array[:] = self.truth.x.array[: self.owned]
        self.mass.mult(self._x, self._y)
        self.norm = np.sqrt(self._x.dot(self._y))

    def error(self, kappa: np.ndarray) -> float:
        self._x.array[:] = kappa - self.truth.x.array[: self.owned]
        self.mass.mult(self._x, self._y)
        return float(np.sqrt(self._x.dot(self._y)) / self.norm)

    def inverse(self, exponential: bool, regularization=None):  # type: ignore[no-untyped-def]
        m = dolfinx.fem.Function(self.parameter_space)
        if exponential:  # the unknown is log κ (the FE baseline)

            def residual(u, m, v):  # type: ignore[no-untyped-def]
                return ufl.inner(ufl.exp(m) * ufl.grad(u), ufl.grad(v)) * ufl.dx - v * ufl.dx

            model = models.Model(
                self.state_space, m, residual, [models.dirichlet(self.state_space)]
            )
        else:
            model = models.diffusion(self.state_space, m, f=1.0)
        obs = point_sensors(self.state_space, self.points, self.data, self.sigma)
        return InverseProblem([Experiment(model, [obs])], regularization), model, obs


def run_neural(
    problem: Problem, method: str, budget: float, seed: int, step: str = "log-grid"
) -> list[tuple]:
    discrepancy = 0.5 * problem.points.shape[0]
    inverse, model, obs = problem.inverse(exponential=False)
    field = natinv.NeuralField(
        problem.parameter_space, natinv.mlp([2, 20, 20, 1], seed=seed), "exp"
    )
    objective = InverseObjective(field, inverse)
    gram = solver = None
    if method in ("ngd", "natural-nesterov"):
        gram = objective.gauss_newton()
        solver = natinv.NaturalSolver(gram, "lm", damping=1e-3)
        momentum = "none" if method == "ngd" else "natural-nesterov"
        optimizer = NaturalGradientDescent(objective, solver, step, momentum=momentum, beta=0.5)
    elif method == "adam":
        optimizer = Adam(objective, lr=1e-2)
    else:
        optimizer = LBFGS(objective, memory=20)
    field.jacobian()  # torch.func's one-time tracing, outside the clock
    trace = [(0, 0.0, problem.error(field.values()), objective.value())]
    elapsed = 0.0
    while elapsed < budget:
        t0 = time.perf_counter()
        record = optimizer.step()
        elapsed += time.perf_counter() - t0
        trace.append(
            (
                optimizer.iteration,
                elapsed,
                problem.error(field.values(optimizer.theta)),
                record["loss"],
            )
        )
        if record["step"] == 0.0 or record["loss"] <= discrepancy:
            break
    for obj in (solver, gram, objective, inverse, obs, model):
        if obj is not None:
            obj.destroy()
    if gram is not None:
        gram.metric.destroy()
    return trace


def run_baseline(problem: Problem, budget: float, alpha: float) -> list[tuple]:
    inverse, model, obs = problem.inverse(exponential=True, regularization=("h1", alpha))
    baseline = FieldBaseline(inverse, "nls")
    trace = [
        (0, 0.0, problem.error(np.ones(problem.owned)), inverse.value(np.zeros(problem.owned)))
    ]

    def monitor(record: dict) -> bool:
        kappa = np.exp(baseline.x.array_r)
        inverse.value(baseline.x.array_r)  # (for the misfit alone)
        trace.append(
            (record["iteration"], record["time"], problem.error(kappa), inverse.last["misfit"])
        )
        return record["time"] > budget

    baseline.run(np.zeros(problem.owned), 500, gttol=1e-6, callback=monitor)
    for obj in (baseline, inverse, obs, model):
        obj.destroy()
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--step", choices=["log-grid", "armijo"], default="log-grid", help="natural methods' step"
    )
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    points = sensors(args.seed)
    data, sigma = synthesize(comm, points, args.seed)
    problem = Problem(comm, points, data, sigma)
    discrepancy = 0.5 * points.shape[0]
    candidates = {alpha: run_baseline(problem, args.budget, alpha) for alpha in ALPHAS}
    chosen = min(ALPHAS, key=lambda a: abs(np.log(candidates[a][-1][3] / discrepancy)))
    if comm.rank == 0:
        print("FE-field baseline (TAO nls) over α: misfit, relative L2 error of κ, time")
        for alpha, trace in candidates.items():
            mark = "  <- chosen (misfit nearest n/2)" if alpha == chosen else ""
            print(
                f"  α = {alpha:7.0e}: misfit {trace[-1][3]:10.3e}  error {trace[-1][2]:.3e}  "
                f"{trace[-1][1]:5.1f} s{mark}"
            )
    traces = {f"FE field + TAO nls, α={chosen:.0e}": candidates[chosen]}
    for method in ("natural-nesterov", "ngd", "lbfgs", "adam"):
        traces[method] = run_neural(problem, method, args.budget, args.seed, args.step)
    baseline_trace = next(iter(traces.values()))
    target, base_time = baseline_trace[-1][2], baseline_trace[-1][1]
    if comm.rank == 0:
        print(
            f"σ = {sigma:.3e}; baseline final relative L2 error of κ {target:.3e} "
            f"in {base_time:.1f} s"
        )
        print(
            f"{'method':<32} {'its':>5} {'time':>7} {'final error':>11} {'misfit':>10} "
            f"{'t to baseline err':>17} {'ratio':>6}"
        )
        for name, trace in traces.items():
            its, t, err, loss = trace[-1]
            reach = next((tt for _, tt, e, _ in trace if e <= target), None)
            ratio = f"{reach / base_time:6.2f}" if reach is not None else "     -"
            reach_text = f"{reach:17.1f}" if reach is not None else f"{'not reached':>17}"
            print(f"{name:<32} {its:5d} {t:7.1f} {err:11.3e} {loss:10.3e} {reach_text} {ratio}")
        print("errors over time (s: error):")
        for name, trace in traces.items():
            marks = [trace[0]] + [
                next((r for r in trace if r[1] >= s), trace[-1])
                for s in (1, 3, 10, 30, args.budget)
            ]
            print(f"  {name:<32} " + "  ".join(f"{r[1]:.0f}:{r[2]:.2e}" for r in marks))
    problem.mass.destroy()


if __name__ == "__main__":
    main()
