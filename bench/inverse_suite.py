"""Inverse problems side by side: the TAO finite-element baseline and the neural natural methods.

Every problem is a shipped case (or one with another truth, synthesized here, on a mesh refined
once at P3: no inverse crime) run with ``natinv run`` in one process per method, one after the
other on the same machine. For each problem:

- the baseline, ``tao-nls`` (Gauss–Newton–CG on a P1 field) with an H1 Tikhonov term whose α is
  chosen by the discrepancy principle over a grid (the largest α whose run reaches the noise
  level; every run of the search is counted in its cost, printed on its own line);
- each neural method to the noise level (the discrepancy stop), from the case's network.

Printed per problem and method: iterations, PDE solves (state solves and solves with the
operator, each block of right-hand sides one), time, time per iteration and its ratio to a TAO
iteration, the final error, and the time at which the method first reached the baseline's final
error. ``--quick`` runs two problems with fewer methods (a smoke test).

    OMP_NUM_THREADS=1 .venv/bin/python bench/inverse_suite.py [--ranks 2] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHARP = (
    "exp(0.6*sin(2*pi*x)*cos(pi*y)) + where((x-0.25)**2 + (y-0.75)**2 < 0.0144, 1.5, 0.0)"
    " + where(x < 0.5, 0.0, 0.5)"
)
# problem -> (case file, overrides, data to synthesize: None or its overrides)
PROBLEMS: dict[str, tuple[str, list[str], list[str] | None]] = {
    "diffusion_hole": ("diffusion_hole", [], None),
    "lshape_probes": ("diffusion_lshape_probes", [], None),
    "elasticity_beam": ("elasticity_beam", [], None),
    "hippylib_poisson": ("hippylib_poisson", [], None),
    "hole_sharp": ("diffusion_hole", [f"parameter.truth='{SHARP}'"], []),
}
NEURAL: dict[str, list[str]] = {
    "ngd": ["optimizer.momentum='none'", "optimizer.beta=0.0"],
    "ngd-heavy-ball": ["optimizer.momentum='natural-heavy-ball'", "optimizer.beta=0.5"],
    "ngd-nesterov": ["optimizer.momentum='nesterov'", "optimizer.beta=0.5"],
    "ngd-natural-nesterov": ["optimizer.momentum='natural-nesterov'", "optimizer.beta=0.5"],
}
NEURAL_COMMON = [
    "optimizer.kind='ngd'",
    "optimizer.metric='gauss-newton'",
    "optimizer.solver='lm'",
    "optimizer.damping=1e-3",
    "optimizer.step='armijo'",
    "optimizer.iterations=150",
    "optimizer.stop='discrepancy'",
]
ALPHAS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def natinv(args: list[str], ranks: int) -> None:
    command = [str(Path(sys.executable).with_name("mpirun")), "-n", str(ranks), sys.executable]
    command += ["-m", "natinv", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"natinv {' '.join(args)}: exit {result.returncode}\n{result.stderr}")


def run(case: Path, overrides: list[str], ranks: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="suite-"))
    args = ["run", str(case), "--quiet", "--set", f"output.folder='{out}'"]
    for item in overrides:
        args += ["--set", item]
    natinv(args, ranks)
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "history.csv", newline="") as stream:
        summary["history"] = [
            (float(r["elapsed"]), float(r["error"] or "nan")) for r in csv.DictReader(stream)
        ]
    return summary


def reached(summary: dict, error: float) -> float:
    """The time at which the run's error first fell to ``error`` (inf if never)."""
    return next((t for t, e in summary["history"] if e <= error), float("inf"))


def line(name: str, s: dict, tao_iteration: float, target: float, extra: float = 0.0) -> str:
    its, time = s["iterations"], s["time"] + extra
    per = s["time"] / max(its, 1)
    solves = s.get("pde_solves", {})
    hit = reached(s, target) + extra
    return (
        f"  {name:<22} {its:>4} {solves.get('state', 0):>6} {solves.get('operator', 0):>6} "
        f"{time:>8.2f} {per * 1e3:>8.1f} {per / tao_iteration:>6.2f} "
        f"{s['relative_l2_error']:>9.4f} {hit:>9.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="two problems, fewer methods")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    args = parser.parse_args()
    names = ["diffusion_hole", "hole_sharp"] if args.quick else args.problems.split(",")
    methods = ["ngd", "ngd-heavy-ball"] if args.quick else list(NEURAL)
    print(f"{args.ranks} rank(s); times in s, per-iteration in ms; ratio = per-iteration / TAO's")
    for name in names:
        case_name, overrides, synthesize = PROBLEMS[name]
        case = ROOT / "cases" / f"{case_name}.toml"
        overrides = list(overrides)
        if synthesize is not None:  # the case's data layout, another truth
            data = Path(tempfile.mkdtemp(prefix="suite-data-")) / "sensors.csv"
            overrides.append(f"data.sensors='{data}'")
            settings = [a for o in overrides for a in ("--set", o)]
            natinv(["synthesize", str(case), *settings], 1)
        # the baseline: α by the discrepancy principle, the search counted
        search, chosen = 0.0, None
        for alpha in ALPHAS:
            s = run(
                case,
                [
                    *overrides,
                    "optimizer.kind='tao-nls'",
                    "optimizer.stop='discrepancy'",
                    "optimizer.iterations=200",
                    "regularization.kind='h1'",
                    f"regularization.alpha={alpha}",
                ],
                args.ranks,
            )
            search += s["time"]
            if s["stopped"] == "discrepancy":
                chosen = (alpha, s)
                break
        if chosen is None:
            chosen = (ALPHAS[-1], s)
        alpha, tao = chosen
        tao_iteration = tao["time"] / max(tao["iterations"], 1)
        target = tao["relative_l2_error"]
        print(f"\n{name}: baseline α = {alpha} (search: {search:.2f} s over the grid)")
        print(
            f"  {'method':<22} {'its':>4} {'states':>6} {'solves':>6} {'time':>8} {'per it':>8} "
            f"{'ratio':>6} {'error':>9} {'to base':>9}"
        )
        print(line("tao-nls (+ α search)", tao, tao_iteration, target, search - tao["time"]))
        for method in methods:
            s = run(case, [*overrides, *NEURAL_COMMON, *NEURAL[method]], args.ranks)
            print(line(method, s, tao_iteration, target), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
