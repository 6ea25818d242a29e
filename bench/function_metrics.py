"""Natural momentum with function-space metrics: why it changed nothing, and the step rule
that lets it act.

With ``metric = "l2"`` or ``"h1"`` the natural direction ``d = (JᵀMJ + λI)⁻¹∇L`` measures the
step in the metric of the field, not of the misfit: its length has no relation to the step that
lowers the loss (on the plate the first accepted η is ~1e-5). Two rules then undid momentum:

- Armijo from η = 1 needs ~17 halvings per step, and the step with momentum is allowed 3
  (``momentum_backtracks``): it never fits, every momentum step is restarted, and the iterates
  are those without momentum;
- the Levenberg–Marquardt rule reads a shortened step as a rejected one and raises λ until
  ``G + λI ≈ λI``: the direction becomes the Euclidean gradient, the metric is lost.

The fix (``"old"`` against ``"new"`` below): λ fixed at 1e-3·max diag G (the gain ratio of a
model that is not the loss's Hessian says nothing about λ) and backtracking from twice the
last accepted step (``Armijo(adaptive=True)``), its trials for the momentum step too.
``--rules grid``: the same λ with the talk's form of the step, the ENGD log grid over η
(2⁰ … 2⁻³⁰, the best of 31 trials) with the momentum part held.

Printed per case, metric, rule and momentum: iterations and state solves to the noise level
(at most ``--iterations``), the misfit reached, the relative L2 error at the stop.

    OMP_NUM_THREADS=1 .venv/bin/python bench/function_metrics.py [--iterations 100]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mpi4py import MPI

from natinv.cases import load_case
from natinv.directions import LevenbergMarquardt, NaturalSolver
from natinv.directions.methods import Cholesky
from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.steps import Armijo, LogGridLineSearch
from natinv.problems import build_problem
from natinv.runner import _optimizer

ROOT = Path(__file__).resolve().parents[1]
MOMENTA = (("none", 0.0), ("natural-heavy-ball", 0.9), ("natural-nesterov", 0.9))


def trace(case_file: Path, metric: str, rule: str, momentum: str, beta: float, its: int) -> dict:
    """One run to the noise level (or ``its`` steps) with the old or the new step rule."""
    comm = MPI.COMM_WORLD
    overrides = [f"optimizer.metric='{metric}'", "optimizer.momentum='none'"]
    case = load_case(case_file, overrides)
    built = build_problem(case, comm)
    runner_optimizer, owned = _optimizer(case, built)  # (for the metric's Gram)
    gram = runner_optimizer.gram
    try:
        if rule == "old":  # Levenberg–Marquardt λ from 1e-3·max diag G, Armijo from η = 1
            solver = NaturalSolver(gram, "lm", damping=1e-3)
            step = Armijo()
        else:  # λ fixed at 1e-3·max diag G, Armijo from twice the last step (or the log grid)
            fixed = LevenbergMarquardt(1e-3, minimum=1e-3, maximum=1e-3, relative=True)
            solver = NaturalSolver(gram, Cholesky("auto"), fixed)
            step = Armijo(adaptive=True) if rule == "new" else LogGridLineSearch()
        owned.append(solver)
        optimizer = NaturalGradientDescent(
            built.objective, solver, step, momentum=momentum, beta=beta
        )
        start, reached = time.perf_counter(), None
        for k in range(its):
            record = optimizer.step()
            if record["loss"] <= built.discrepancy:
                reached = k + 1
                break
        return {
            "its": reached,
            "solves": built.problem.solves,
            "misfit": record["loss"],
            "level": built.discrepancy,
            "error": built.error(optimizer.theta),
            "time": time.perf_counter() - start,
        }
    finally:
        for obj in owned:
            obj.destroy()
        built.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--cases", default="diffusion_hole,diffusion_lshape_probes")
    parser.add_argument("--rules", default="old,new", help="old, new, grid (the talk's form)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        print(f"{comm.size} rank(s); at most {args.iterations} iterations; its: to the noise level")
        print(
            f"{'case':<24} {'metric':<6} {'rule':<4} {'momentum':<24} {'its':>4} "
            f"{'solves':>6} {'misfit/level':>12} {'error':>7} {'time':>6}"
        )
    for name in args.cases.split(","):
        for metric in ("l2", "h1"):
            for rule in args.rules.split(","):
                for momentum, beta in MOMENTA:
                    r = trace(
                        ROOT / "cases" / f"{name}.toml",
                        metric,
                        rule,
                        momentum,
                        beta,
                        args.iterations,
                    )
                    if comm.rank == 0:
                        its = "-" if r["its"] is None else str(r["its"])
                        print(
                            f"{name:<24} {metric:<6} {rule:<4} {momentum + f' {beta:g}':<24} "
                            f"{its:>4} {r['solves']:>6} {r['misfit'] / r['level']:12.2f} "
                            f"{r['error']:7.4f} {r['time']:6.1f}",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
