"""Do the shipped cases take the same iterates as at another commit? (A refactoring check.)

Runs every shipped case in reduced form (a few iterations, stopping rules off) with the code of
``--against`` (a git worktree) and with the working tree, side by side on this machine, and
compares the histories column by column (loss, misfit, step, |d|, error; not the timings):
bitwise on one rank, to ``--rtol`` on more.

    OMP_NUM_THREADS=1 .venv/bin/python bench/same_iterates.py --against main~3
    OMP_NUM_THREADS=1 .venv/bin/python bench/same_iterates.py --against main~3 --ranks 2
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

# case -> (iterations, overrides): a few iterations of each, enough to exercise its optimizer
CASES: dict[str, tuple[int, list[str]]] = {
    "diffusion_hole": (4, []),
    "diffusion_lshape_probes": (4, []),
    "elasticity_beam": (3, []),
    "hippylib_poisson": (3, []),
    "talk_pinn_1d": (6, []),
    "poisson_pinn_2d": (4, []),
    "parametric_diffusion": (3, ["mesh.cells=8"]),
    "ritz_hole": (4, []),
}
COLUMNS = ("loss", "misfit", "step", "direction_norm", "error")


def history(tree: Path, case: str, iterations: int, overrides: list[str], ranks: int) -> list:
    out = Path(tempfile.mkdtemp(prefix=f"same-{case}-"))
    command = [str(Path(sys.executable).with_name("mpirun")), "-n", str(ranks), sys.executable]
    command += ["-m", "natinv", "run", str(tree / "cases" / f"{case}.toml"), "--quiet"]
    command += ["--iterations", str(iterations)]
    for item in [*overrides, "optimizer.stop='none'", f"output.folder='{out}'"]:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    if result.returncode != 0:
        raise SystemExit(f"{case} at {tree}: exit {result.returncode}\n{result.stderr[-3000:]}")
    with open(out / "history.csv", newline="") as stream:
        return [[float(row[c]) for c in COLUMNS] for row in csv.DictReader(stream)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the commit to compare with")
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--rtol", type=float, default=1e-10, help="on more than one rank")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    args = parser.parse_args()
    names = [n for n in args.cases.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="same-iterates-") as folder:
        old = Path(folder) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.against],
            check=True,
            capture_output=True,
        )
        try:
            failed = 0
            print(f"{'case':<26} {'its':>4} {'max relative difference':>24}  verdict", flush=True)
            for name in names:
                iterations, overrides = CASES[name]
                a = history(old, name, iterations, overrides, args.ranks)
                b = history(ROOT, name, iterations, overrides, args.ranks)
                worst = 0.0
                for row_a, row_b in zip(a, b, strict=False):
                    for x, y in zip(row_a, row_b, strict=True):
                        if x != y and not (x != x and y != y):  # NaN == NaN here
                            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
                same = len(a) == len(b) and (
                    worst == 0.0 if args.ranks == 1 else worst <= args.rtol
                )
                failed += not same
                verdict = "same" if same else "DIFFERENT"
                print(f"{name:<26} {len(b):4d} {worst:24.3e}  {verdict}", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
