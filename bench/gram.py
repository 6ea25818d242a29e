"""Gram-matrix benchmark: Jacobian, G = JᵀMJ and the natural solve, on 1 and 2 ranks.

Prints, for n ∈ {1e4, 1e5} dofs and P ∈ {≈100, ≈1000} parameters:

- the time of the Jacobian, of the Gram assembly (product matrices reused) and of the Cholesky
  solve, on 1 and 2 ranks;
- the ratio of the Gram assembly to one numpy GEMM ``Aᵀ B`` of the same local shape, measured
  in the same process (goal ≤ 1.3);
- the 2-rank speed-up of the Gram assembly (goal ≥ 1.7 at n = 1e5, P = 1000);
- the peak working memory of the Jacobian (sampled resident memory above the level before the
  call, the result array being allocated and touched beforehand) against its budget.

Usage: ``python bench/gram.py [--quick]`` (one BLAS thread per rank; spawns mpirun itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(99, 8), (99, 29), (315, 8), (315, 29)]  # (cells per side, hidden width)
QUICK = [(40, 8), (40, 29)]
BUDGET = 2**30  # Jacobian working-memory budget: NeuralField's default (1 GiB)


def _rss() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Samples this process's resident memory every millisecond in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakSampler:
        self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def worker(cells: int, width: int, repeats: int) -> dict[str, float]:
    import natinv  # first: the DOLFINx wheel's libraries

    # isort: split
    from mpi4py import MPI

    import dolfinx
    import numpy as np

    comm = MPI.COMM_WORLD
    mesh = dolfinx.mesh.create_unit_square(comm, cells, cells)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    field = natinv.NeuralField(
        space, natinv.mlp([2, width, width, 1], seed=0), jacobian_memory=BUDGET
    )
    metric = natinv.l2(space)
    gram = natinv.Gram(field, metric)
    solver = natinv.NaturalSolver(gram, "cholesky", damping=1e-8)
    array = gram.jacobian_array()
    array[:] = 0.0  # make the result's pages resident before measuring the working memory

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        best = np.inf
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            comm.Barrier()
            best = min(best, time.perf_counter() - t0)
        return float(best)

    # Warm-up with a 1 MiB budget: torch.func's first call loads and traces code, which must not
    # count, while the measured call must not find its chunk buffers already resident.
    field.jacobian_memory = 2**20
    field.jacobian(out=array)
    field.jacobian_memory = BUDGET
    before = _rss()
    with PeakSampler() as sampler:
        field.jacobian(out=array)
    peak_extra = sampler.peak - before
    gram.J.assemble()
    t_jac = timed(lambda: gram.update_jacobian())
    gram.assemble(jacobian=False)  # symbolic phase, excluded
    t_gram = timed(lambda: gram.assemble(jacobian=False))
    g = np.ones(field.num_parameters)
    t_solve = timed(lambda: solver.solve(g, assemble=False))
    local = np.asfortranarray(array)
    other = local.copy(order="F")  # two operands: numpy would use SYRK (half the work) for AᵀA
    t_gemm = timed(lambda: local.T @ other)
    result = {
        "ranks": comm.size,
        "n": field.num_global,
        "P": field.num_parameters,
        "jacobian": t_jac,
        "gram": t_gram,
        "solve": t_solve,
        "gemm": comm.allreduce(t_gemm, op=MPI.MAX),
        "jacobian_peak_bytes": comm.allreduce(peak_extra, op=MPI.MAX),
        "budget_bytes": BUDGET,
        "chunk_points": field.chunk_size(),
    }
    solver.destroy()
    gram.destroy()
    metric.destroy()
    return result


def run(ranks: int, cells: int, width: int, repeats: int) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    bindir = Path(sys.executable).parent
    mpirun = bindir / "mpirun"
    cmd = [
        str(mpirun),
        "-n",
        str(ranks),
        sys.executable,
        __file__,
        "--worker",
        str(cells),
        str(width),
        str(repeats),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark worker failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from mpi4py import MPI

        result = worker(args.worker[0], args.worker[1], args.worker[2])
        if MPI.COMM_WORLD.rank == 0:
            print(json.dumps(result), flush=True)
        return

    header = (
        f"{'n':>7} {'P':>5} {'ranks':>5} {'jac [s]':>8} {'G [s]':>8} {'solve [s]':>9} "
        f"{'G/GEMM':>7} {'G speed-up':>10} {'jac peak MiB':>12} {'budget MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for cells, width in QUICK if args.quick else SIZES:
        serial = run(1, cells, width, args.repeats)
        parallel = run(2, cells, width, args.repeats)
        for r in (serial, parallel):
            speedup = f"{serial['gram'] / r['gram']:10.2f}" if r is parallel else f"{'':>10}"
            print(
                f"{r['n']:>7} {r['P']:>5} {r['ranks']:>5} {r['jacobian']:8.3f} {r['gram']:8.3f} "
                f"{r['solve']:9.4f} {r['gram'] / r['gemm']:7.2f} {speedup} "
                f"{r['jacobian_peak_bytes'] / 2**20:12.1f} {r['budget_bytes'] / 2**20:10.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
