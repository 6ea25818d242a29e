"""The 3D case on 1 and 2 ranks: time per iteration, its split, and peak memory.

Runs ``cases/heat_bracket_3d.toml`` (100 k P2 state dofs, 200 sensors, 1161 network
parameters) for a fixed number of iterations, one configuration after the other on the same
machine: 1 rank and 2 ranks with the default factorisation (MUMPS), and 2 ranks with
SuperLU_DIST (``model.solver = "superlu_dist"``: slower, its results repeat bitwise from run to
run). Prints, per configuration, the time per iteration and its split from
``summary.json`` (forward solves, Jacobian rows: adjoint solves and the field Jacobian, Gram,
the rest: direction solve and bookkeeping), the state solves, and the peak resident memory of
the largest process (``/usr/bin/time``'s maximum RSS), and the speed-up: the first
configuration's time over this one's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scaling3d.py [--iterations 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "cases" / "heat_bracket_3d.toml"
SUPERLU = ["--set", "model.solver='superlu_dist'"]
CONFIGURATIONS = {
    "1 rank (MUMPS)": (1, []),
    "2 ranks (MUMPS)": (2, []),
    "2 ranks, SuperLU_DIST": (2, SUPERLU),
}


def measure(ranks: int, extra: list[str], iterations: int) -> tuple[dict, float]:
    """One run: its summary and the largest process's peak RSS in GB."""
    folder = Path(tempfile.mkdtemp(prefix="scaling3d-"))
    command = ["/usr/bin/time", "-v", str(Path(sys.executable).with_name("mpirun"))]
    command += ["-n", str(ranks), sys.executable, "-m", "natinv", "run", str(CASE)]
    command += ["--iterations", str(iterations), "--quiet", "--set", "optimizer.stop='none'"]
    command += ["--set", f"output.folder='{folder}'", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit {result.returncode}\n{result.stderr}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    peak = int(rss[1]) / 1e6 if rss else float("nan")
    return json.loads((folder / "summary.json").read_text()), peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument(
        "--only", default=None, help="comma-separated configurations (default: all)"
    )
    args = parser.parse_args()
    n = args.iterations
    print(f"{CASE.name}: {n} iterations; seconds per iteration")
    print(
        f"  {'configuration':<24} {'per it':>7} {'forward':>8} {'jacobian':>9} {'adjoint':>8} "
        f"{'gram':>6} {'rest':>6} {'states':>7} {'peak GB':>8} {'error':>8} {'speed-up':>8}"
    )
    chosen = args.only.split(",") if args.only else list(CONFIGURATIONS)
    first = None
    for label in chosen:
        ranks, extra = CONFIGURATIONS[label]
        summary, peak = measure(ranks, extra, n)
        first = first or summary["timings"]["total"]
        t = summary["timings"]
        parts = [t[k] / n for k in ("forward", "jacobian", "adjoint", "gram")]
        rest = t["total"] / n - sum(parts)
        print(
            f"  {label:<24} {t['total'] / n:>7.2f} {parts[0]:>8.2f} {parts[1]:>9.2f} "
            f"{parts[2]:>8.2f} {parts[3]:>6.2f} {rest:>6.2f} "
            f"{summary['pde_solves']['state']:>7} {peak:>8.2f} "
            f"{summary['relative_l2_error']:>8.4f} {first / t['total']:>8.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
