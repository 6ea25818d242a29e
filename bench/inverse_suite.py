"""Inverse problems side by side: the TAO finite-element baseline and the neural natural methods.

One ``natinv compare`` per problem (one process, the methods one after the other on the same
machine): the baseline ``tao-nls`` (Gauss–Newton–CG on a P1 field, H1 Tikhonov weight α by the
discrepancy principle over a grid, the search's cost counted) and the neural natural methods
``ngd`` (no momentum), ``nhb`` (natural heavy-ball), ``nesterov`` (the velocity kept in
parameter space, the natural step at the look-ahead point: one Jacobian per step) and
``nnesterov`` (the velocity re-projected onto the tangent space at θ_k, then the step at the
look-ahead point: two Jacobians per step), and ``ngd-gncg`` (no momentum, the matrix-free
Gauss–Newton direction by CG), each stopped at the noise level, with the default prior (16
Fourier features of scale 0.5).

Problems: the shipped ``diffusion_hole`` (80 point sensors), ``diffusion_lshape_probes`` (probe
averages), ``elasticity_beam`` and ``hippylib_poisson`` (full field: the baseline keeps the
case's α), and two with features a smooth network cannot represent, data synthesized here on a
mesh refined once at P3: ``hole_sharp`` (the plate with a disc inclusion and a jump) and
``lshape_sharp`` (an L-shape with a narrow Gaussian bump and a jump, 300 point sensors,
2-20-20-1 network: a problem set up without regard to the method), the shipped 3D case
``heat_bracket_3d`` (an L-shaped bracket, 100 k state dofs, 200 interior sensors) and the
transient ``heat_transient`` (30 thermocouples read 10 times, 20 Crank–Nicolson steps), and
the 1D gPINN benchmark ``reaction_gpinn_1d`` (a reaction coefficient from 100 values of u) with
its shipped, nearly exact data and with 0.1 % noise, and the two cases with several
experiments, ``eit_disk`` (16 current patterns, 1,024 values) and ``heat_sources`` (8 heat
spots, 320 values), which also run sampled steps (``sampled``: half the experiments a step
with SPRING; ``sampled-plain``: without momentum), and ``heat_box_3d`` (a 3D box, 1,000
interior sensors).

Printed per problem and method: iterations, PDE solves (solves with the state operator: states,
adjoints, tangent blocks), time, time per iteration and its ratio to a TAO iteration, the final
error, and the time at which the method first reached the baseline's final error (``-``: never).

    OMP_NUM_THREADS=1 .venv/bin/python bench/inverse_suite.py [--ranks 2] [--problems a,b]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HOLE_SHARP = (
    "exp(0.6*sin(2*pi*x)*cos(pi*y)) + where((x-0.25)**2 + (y-0.75)**2 < 0.0144, 1.5, 0.0)"
    " + where(x < 0.5, 0.0, 0.5)"
)
LSHAPE_SHARP = f"""
name = "lshape-sharp"
seed = 0
[mesh]
file = "{ROOT / "meshes" / "l_shape.msh"}"
[model]
kind = "diffusion"
degree = 2
source = "10"
dirichlet = [1]
[parameter]
degree = 1
network = [2, 20, 20, 1]
activation = "tanh"
transform = "exp"
truth = "1 + where(x < 0.3, 1.0, 0.0) + 2*exp(-((x-0.7)**2 + (y-0.25)**2)/0.004)"
[data]
sensors = "sensors.csv"
[synthesize]
layout = "random:300"
refine = 1
degree = 3
noise = 0.01
[optimizer]
kind = "ngd"
iterations = 150
[output]
folder = "results"
"""
# problem -> (case file or TOML text, overrides, synthesize the data first)
PROBLEMS: dict[str, tuple[str, list[str], bool]] = {
    "diffusion_hole": ("diffusion_hole", [], False),
    "lshape_probes": ("diffusion_lshape_probes", [], False),
    "elasticity_beam": ("elasticity_beam", [], False),
    "hippylib_poisson": ("hippylib_poisson", ["optimizer.iterations=60"], False),
    "hole_sharp": ("diffusion_hole", [f"parameter.truth='{HOLE_SHARP}'"], True),
    "lshape_sharp": (LSHAPE_SHARP, [], True),
    "bracket_3d": ("heat_bracket_3d", [], False),
    "heat_transient": ("heat_transient", [], False),
    "reaction_1d": ("reaction_gpinn_1d", [], False),
    "reaction_1d_noise1e-3": ("reaction_gpinn_1d", ["synthesize.noise=1e-3"], True),
    "eit_disk": ("eit_disk", [], False),
    "heat_sources": ("heat_sources", [], False),
    "box_3d": ("heat_box_3d", [], False),
}
METHODS = ("tao-nls", "ngd", "ngd-gncg", "nhb", "nesterov", "nnesterov")
# the problems with several experiments also run sampled steps (half the experiments a step)
SAMPLED = {"eit_disk": ["sampled", "sampled-plain"], "heat_sources": ["sampled", "sampled-plain"]}
NEURAL = [  # what every neural run shares (the case's network, the shipped solver settings)
    "optimizer.metric='gauss-newton'",
    "optimizer.solver='lm'",
    "optimizer.damping=1e-3",
    "optimizer.step='armijo'",
    "optimizer.stop='discrepancy'",
]


def natinv(args: list[str], ranks: int) -> None:
    command = [str(Path(sys.executable).with_name("mpirun")), "-n", str(ranks), sys.executable]
    command += ["-m", "natinv", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"natinv {' '.join(args)}: exit {result.returncode}\n{result.stderr}")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def prepare(name: str, settings: list[str]) -> tuple[Path, list[str], Path]:
    """A problem's case file, its overrides (with ``settings``) and a work folder; the data
    synthesized there first when the problem needs it."""
    source, overrides, synthesize = PROBLEMS[name]
    work = Path(tempfile.mkdtemp(prefix=f"suite-{name}-"))
    if source.strip().startswith("name"):
        case = work / "case.toml"
        case.write_text(source)
    else:
        case = ROOT / "cases" / f"{source}.toml"
    overrides = [*overrides, *settings]
    if synthesize:
        overrides.append(f"data.sensors='{work / 'sensors.csv'}'")
        natinv(["synthesize", str(case), *[a for o in overrides for a in ("--set", o)]], 1)
    return case, overrides, work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    print(f"{args.ranks} rank(s); times in s, per iteration in ms; ratio: per iteration / TAO's")
    for name in args.problems.split(","):
        case, overrides, work = prepare(name, NEURAL)
        overrides.append(f"output.folder='{work / 'out'}'")
        settings = [a for o in overrides for a in ("--set", o)]
        chosen = methods + [m for m in SAMPLED.get(name, []) if m not in methods]
        natinv(["compare", str(case), "--optimizers", ",".join(chosen), *settings], args.ranks)
        table = {r["optimizer"]: r for r in rows(work / "out" / "comparison.csv")}
        baseline = table.get("tao-nls")
        search = table.get("tao-nls:α-search", baseline)
        tao_its = int(baseline["iterations"]) if baseline else 0
        tao_iteration = float(baseline["time"]) / max(tao_its, 1) if baseline else float("nan")
        target = float(baseline["relative_l2_error"]) if baseline else 0.0
        print(f"\n{name}" + (f": baseline {search['stopped']}" if search else ""))
        print(
            f"  {'method':<18} {'its':>4} {'solves':>6} {'time':>7} {'per it':>7} {'ratio':>6} "
            f"{'error':>8} {'to base':>8}"
        )
        for method, row in table.items():
            its, time = int(row["iterations"]), float(row["time"])
            per = time / max(its, 1)
            hit = "-"
            if not method.startswith("tao"):
                history = rows(work / "out" / "compare" / method / "history.csv")
                times = [float(h["elapsed"]) for h in history if float(h["error"]) <= target]
                hit = f"{times[0]:.2f}" if times else "-"
            print(
                f"  {method:<18} {its:>4} {row['operator_solves']:>6} {time:>7.2f} "
                f"{per * 1e3:>7.1f} {per / tao_iteration:>6.2f} "
                f"{float(row['relative_l2_error']):>8.4f} {hit:>8}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
