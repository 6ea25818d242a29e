"""Where an iteration's time goes on many ranks: a cost model, calibrated on this machine.

A natural Gauss–Newton iteration of an inverse case has five parts (n state dofs, r observation
rows, P network parameters, w parameter-space nodes, p ranks):

- the factorisation of the state operator, once per parameter (with the line search's trials:
  ``t`` per iteration): measured time F(n) on one rank; a sparse direct solver's parallel
  speed-up is taken as ``p^0.5`` (MUMPS's strong scaling: 1.7 on 2 ranks measured here for the
  factorisation alone, 1.2–1.3 for the whole solve);
- the r transposed solves of the Gauss–Newton rows on the factors: S(n)·r on one rank, shared
  ideally by the ranks;
- the network Jacobian on the w nodes (2·w·P flops per layer width, measured as J(w, P)) and
  the rows' ``Cᵀ Λ`` products: local work, shared ideally;
- the Gram matrix: ``JᵀJ`` (2·r·P² flops, shared) and its allreduce (P² doubles: ``α log₂ p +
  8P²/β`` with a cluster's α = 2 µs and β = 10 GB/s, assumed), or the r × r sample-space kernel
  (2·r²·P flops and r² doubles);
- the dense solve of the direction: a Cholesky factorisation of the P × P Gram (P³/3 flops) or
  of the r × r kernel (r³/3), done redundantly on every rank: it does not shrink with p.

The one-rank constants are measured here (``--calibrate``: F, S and the dense rates on a P2
operator of the given size, as ``bench/direct_solvers.py`` builds it); the rest is the model,
printed per part for p = 1, 2, 64 and 1,024, with the rank count where the redundant dense
solve becomes the largest part (P's ceiling). It is a model: its p > 2 columns are
extrapolations, not measurements.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cost_model.py --cells 18 --rows 200 --parameters 1161
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RANKS = (1, 2, 64, 1024)
LATENCY, BANDWIDTH = 2e-6, 10e9  # a cluster's allreduce latency [s] and bandwidth [B/s]


def calibrate(cells: int, rows: int) -> dict[str, float]:
    """One-rank times: factorisation F, one solve S on the factors (from a block of ``rows``),
    and the dense rates (GEMM, Cholesky) of this machine."""
    from mpi4py import MPI
    from petsc4py import PETSc

    from direct_solvers import operator

    matrix, _mesh = operator(MPI.COMM_SELF, cells)
    n = matrix.getSize()[0]
    ksp = PETSc.KSP().create(MPI.COMM_SELF)
    ksp.setOperators(matrix)
    ksp.setType("preonly")
    ksp.getPC().setType("lu")
    ksp.getPC().setFactorSolverType("mumps")
    b = matrix.createVecLeft()
    b.set(1.0)
    x = b.duplicate()
    ksp.solve(b, x)  # (analysis and a first factorisation)
    matrix.assemble()
    ksp.setOperators(matrix)
    start = time.perf_counter()
    ksp.solve(b, x)
    factor = time.perf_counter() - start
    rhs = PETSc.Mat().createDense((n, rows), comm=MPI.COMM_SELF)
    rhs.setUp()
    rhs.getDenseArray()[:] = np.random.default_rng(0).standard_normal((n, rows))
    rhs.assemble()
    out = rhs.duplicate()
    start = time.perf_counter()
    ksp.matSolve(rhs, out)
    solve = (time.perf_counter() - start) / rows
    for obj in (ksp, b, x, rhs, out, matrix):
        obj.destroy()
    a = np.random.default_rng(1).standard_normal((2000, 2000))
    start = time.perf_counter()
    a @ a
    gemm = 2 * 2000**3 / (time.perf_counter() - start)
    spd = a @ a.T + 2000 * np.eye(2000)
    start = time.perf_counter()
    np.linalg.cholesky(spd)
    cholesky = 2000**3 / 3 / (time.perf_counter() - start)
    return {"n": n, "factor": factor, "solve": solve, "gemm": gemm, "cholesky": cholesky}


def parts(c: dict[str, float], p: int, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per iteration of each part on p ranks."""
    r, big_p, w = args.rows, args.parameters, args.nodes
    sample_space = r < big_p
    width = r if sample_space else big_p
    reduce = LATENCY * math.log2(p) + 8 * width**2 / BANDWIDTH if p > 1 else 0.0
    return {
        "factorise": args.trials * c["factor"] / math.sqrt(p),
        "row solves": r * c["solve"] / p,
        "jacobian": 2 * w * big_p * args.width / c["gemm"] / p,
        "gram": (2 * r * big_p * width / c["gemm"]) / p + reduce,
        "dense solve": width**3 / 3 / c["cholesky"],
    }


def _largest(row: dict[str, float]) -> str:
    return max(row, key=lambda k: row[k])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=18, help="the box has 2n × n × n cells")
    parser.add_argument("--rows", type=int, default=200, help="observation rows r")
    parser.add_argument("--parameters", type=int, default=1161, help="network parameters P")
    parser.add_argument("--nodes", type=int, default=14476, help="parameter-space nodes w")
    parser.add_argument("--width", type=int, default=20, help="the network's hidden width")
    parser.add_argument("--trials", type=float, default=1.7, help="state solves per iteration")
    args = parser.parse_args()
    c = calibrate(args.cells, args.rows)
    print(
        f"calibrated on one rank: P2 operator of {c['n']:.0f} dofs, factorisation "
        f"{c['factor']:.2f} s, one solve on the factors {1e3 * c['solve']:.1f} ms (in a block "
        f"of {args.rows}), GEMM {c['gemm'] / 1e9:.1f} GFlop/s, Cholesky "
        f"{c['cholesky'] / 1e9:.1f} GFlop/s"
    )
    print(
        f"model of one iteration (r = {args.rows} rows, P = {args.parameters} parameters, "
        f"{args.trials} factorisations), seconds:"
    )
    header = f"  {'ranks':>6}" + "".join(f" {k:>12}" for k in parts(c, 1, args)) + f" {'total':>8}"
    print(header)
    for p in RANKS:
        row = parts(c, p, args)
        print(
            f"  {p:>6}"
            + "".join(f" {v:>12.4f}" for v in row.values())
            + f" {sum(row.values()):>8.3f}"
        )
    for big_p in (1161, 10_000, 100_000):
        wide = argparse.Namespace(**{**vars(args), "parameters": big_p, "rows": 10 * big_p})
        ceiling = next(
            (p for p in (2**k for k in range(21)) if _largest(parts(c, p, wide)) == "dense solve"),
            None,
        )
        dense = parts(c, 1, wide)["dense solve"]
        print(
            f"  P = {big_p:>7} with r = 10P rows (the P × P Gram): its Cholesky takes "
            f"{dense:.2f} s on every rank, the largest part from p = {ceiling} ranks on"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
