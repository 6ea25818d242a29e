"""ENGD's 2D Poisson problem: the natural direction's solver, with and without momentum, side by
side.

−Δu = 2π² sin πx sin πy on the unit square, u = 0 on the boundary (exact u = sin πx sin πy),
N an MLP [2, 64, 1] tanh (P = 257), residual loss at the cell midpoints (882 triangles of the
21 × 21 box, or the 946 of ``meshes/unit_square.msh`` with ``--mesh gmsh``), Gauss–Newton (ENGD)
metric, log-grid line search. Boundary conditions:

``--boundary hard`` (default): u = x(1 − x)y(1 − y)·N(x, y), exact boundary values.
``--boundary penalty``: u = N(x, y) and a penalty term ½·¼∫_∂Ω u² ds at 2 Gauss points on each
    boundary facet (168 on the box): ENGD's setting (Müller & Zeinhofer 2023: 900 interior and
    120 boundary points, the mean of each squared residual; the ¼ turns the perimeter-4 integral
    into that mean).

Directions (``--methods``, comma-separated):
``cholesky``: Cholesky of ``G + λI`` (``--damping`` λ);
``cutoff``: the pseudo-inverse of ``G`` above ``--cutoff`` × its largest eigenvalue (the
    reference code's rule, 1e-13);
``least-squares``: ``min ‖M^½(Jd − r)‖² + λ‖d‖²`` by QR and SVD of ``J`` itself, singular
    values above ``--ls-cutoff`` × the largest (default 1e-10), λ shrinking from
    ``--ls-damping`` × max diag G (default 1e-10; 0: no damping).

Prints, per method, momentum and seed, the iterations and wall time to a relative L2 error of
1e-6, 1e-7 and 1e-8 and the final error, then the median over the seeds. A run stops after
``--budget`` seconds, at ``--target``, or when no step lowers the loss.

Usage: ``python bench/poisson2d.py [--budget 300] [--methods cholesky,least-squares]
[--boundary penalty] [--mesh gmsh] [--seeds 0,1,2,3,4] [--momenta none,natural-heavy-ball]
[--beta 0.5]`` (serial; one BLAS thread).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import natinv  # first: the DOLFINx wheel's libraries

# isort: split
from mpi4py import MPI

import dolfinx
import numpy as np
import torch

from natinv.directions import LeastSquaresSolver, ShrinkingDamping
from natinv.domain import read_msh
from natinv.objectives.pinn import PINN, Term, laplacian
from natinv.optim import NaturalGradientDescent
from natinv.quadrature import boundary_quadrature, cell_quadrature

LEVELS = (1e-6, 1e-7, 1e-8)
MESH = Path(__file__).resolve().parents[1] / "meshes" / "unit_square.msh"


def exact(x: np.ndarray) -> np.ndarray:
    return np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1])


def residual(u, x):  # type: ignore[no-untyped-def]
    source = 2 * np.pi**2 * torch.sin(np.pi * x[0]) * torch.sin(np.pi * x[1])
    return -laplacian(u, x) - source


def run(method: str, momentum: str, seed: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    comm = MPI.COMM_WORLD
    if args.mesh == "box":
        mesh = dolfinx.mesh.create_unit_square(comm, 21, 21)
    else:
        mesh = read_msh(comm, MESH, str(MESH)).mesh
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 64, 1], seed=seed))
    interior = Term(cell_quadrature(mesh, 1), residual, name="interior")
    if args.boundary == "hard":
        pinn = PINN(field, [interior], multiplier=lambda x: x[0] * (1 - x[0]) * x[1] * (1 - x[1]))
    else:
        boundary = Term(boundary_quadrature(mesh, 3), lambda u, x: u(x), 0.25, "boundary")
        pinn = PINN(field, [interior, boundary])
    check = cell_quadrature(mesh, 6)
    if method == "least-squares":
        damping = ShrinkingDamping(args.ls_damping) if args.ls_damping > 0 else 0.0
        solver = LeastSquaresSolver(pinn.gram, damping, args.ls_cutoff)
    else:
        solver = natinv.NaturalSolver(pinn.gram, method, damping=args.damping, cutoff=args.cutoff)
    beta = args.beta if momentum != "none" else 0.0
    optimizer = NaturalGradientDescent(pinn, solver, momentum=momentum, beta=beta)
    field.jacobian()  # torch.func's one-time tracing, outside the clock
    elapsed, error = 0.0, np.inf
    reached: dict[float, tuple[int, float]] = {}
    while elapsed < args.budget:
        t0 = time.perf_counter()
        record = optimizer.step()
        elapsed += time.perf_counter() - t0
        error = pinn.l2_error(exact, check, optimizer.theta, relative=True)
        for level in LEVELS:
            if error <= level and level not in reached:
                reached[level] = (optimizer.iteration, elapsed)
        if error <= args.target or record["step"] == 0.0:
            break
    solver.destroy()
    pinn.destroy()
    return {"iterations": optimizer.iteration, "time": elapsed, "error": error, "reached": reached}


def _reached(result: dict, level: float) -> str:  # type: ignore[type-arg]
    if level not in result["reached"]:
        return "-"
    its, seconds = result["reached"][level]
    return f"{its} / {seconds:.1f}"


def _median(runs: list[dict], level: float) -> str:  # type: ignore[type-arg]
    """Median iterations / seconds to ``level`` over the runs (one that never got there counts
    as infinite), and how many got there."""
    its = [r["reached"][level][0] if level in r["reached"] else np.inf for r in runs]
    times = [r["reached"][level][1] if level in r["reached"] else np.inf for r in runs]
    hit = sum(level in r["reached"] for r in runs)
    return f"{statistics.median(its):g} / {statistics.median(times):.1f} ({hit}/{len(runs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--target", type=float, default=1e-10, help="stop at this error")
    parser.add_argument("--methods", default="cholesky,least-squares")
    parser.add_argument("--damping", type=float, default=1e-10, help="λ of cholesky")
    parser.add_argument("--cutoff", type=float, default=1e-13, help="of G's eigenvalues")
    parser.add_argument("--ls-cutoff", type=float, default=1e-10, help="of J's singular values")
    parser.add_argument("--ls-damping", type=float, default=1e-10, help="λ₀ (relative), 0: none")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--momenta", default="none")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--boundary", choices=("hard", "penalty"), default="hard")
    parser.add_argument("--mesh", choices=("box", "gmsh"), default="box")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = " ".join(f"{f'its/s to {level:.0e}':>17}" for level in LEVELS)
    print(f"{args.mesh}, boundary {args.boundary}, budget {args.budget:g} s")
    print(
        f"{'method':<16} {'momentum':<20} {'seed':>4} {cells} {'final L2':>9} {'its':>5} {'s':>6}"
    )
    for method in args.methods.split(","):
        for momentum in args.momenta.split(","):
            runs = [run(method, momentum, seed, args) for seed in seeds]
            for seed, r in zip(seeds, runs, strict=True):
                hits = " ".join(f"{_reached(r, level):>17}" for level in LEVELS)
                print(
                    f"{method:<16} {momentum:<20} {seed:>4} {hits} {r['error']:9.1e} "
                    f"{r['iterations']:5d} {r['time']:6.1f}",
                    flush=True,
                )
            if len(seeds) > 1:
                medians = " ".join(f"{_median(runs, level):>17}" for level in LEVELS)
                final = statistics.median(r["error"] for r in runs)
                print(f"{method:<16} {momentum:<20} {'med':>4} {medians} {final:9.1e}")


if __name__ == "__main__":
    main()
