"""ENGD's 2D Poisson problem: natural gradient with and without momentum, side by side.

−Δu = 2π² sin πx sin πy on the unit square, u = 0 on the boundary (exact u = sin πx sin πy),
N an MLP [2, 64, 1] tanh (P = 257), residual loss at the midpoints of the 882 triangles of a
21 × 21 mesh, Gauss–Newton (ENGD) metric, log-grid line search. Boundary conditions:

``--boundary hard`` (default): u = x(1 − x)y(1 − y)·N(x, y), exact boundary values.
``--boundary penalty``: u = N(x, y) and a penalty term ½·¼∫_∂Ω u² ds at 2 Gauss points on each of
    the 84 boundary facets (168 points): ENGD's setting (Müller & Zeinhofer 2023: 900 interior and
    120 boundary points, the mean of each squared residual; the ¼ turns the perimeter-4 integral
    into that mean).

Prints, per method, the iterations and wall time to a relative L2 error of 1e-6 and 1e-7, and the
final error after ``--budget`` seconds.

Usage: ``python bench/poisson2d.py [--budget 300] [--damping 1e-10] [--method cutoff
[--cutoff 1e-13]] [--boundary penalty]
[--betas 0.3,0.5] [--spring-betas 0.9]`` (serial; one BLAS thread).
"""

from __future__ import annotations

import argparse
import time

import natinv  # first: the DOLFINx wheel's libraries

# isort: split
from mpi4py import MPI

import dolfinx
import numpy as np
import torch

from natinv.objectives.pinn import PINN, Term, laplacian
from natinv.optim import NaturalGradientDescent
from natinv.quadrature import boundary_quadrature, cell_quadrature


def exact(x: np.ndarray) -> np.ndarray:
    return np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1])


def residual(u, x):  # type: ignore[no-untyped-def]
    source = 2 * np.pi**2 * torch.sin(np.pi * x[0]) * torch.sin(np.pi * x[1])
    return -laplacian(u, x) - source


def run(momentum: str, beta: float, args: argparse.Namespace) -> dict[str, float]:
    comm = MPI.COMM_WORLD
    mesh = dolfinx.mesh.create_unit_square(comm, 21, 21)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 64, 1], seed=args.seed))
    interior = Term(cell_quadrature(mesh, 1), residual, name="interior")
    if args.boundary == "hard":
        pinn = PINN(field, [interior], multiplier=lambda x: x[0] * (1 - x[0]) * x[1] * (1 - x[1]))
    else:
        boundary = Term(boundary_quadrature(mesh, 3), lambda u, x: u(x), 0.25, "boundary")
        pinn = PINN(field, [interior, boundary])
    check = cell_quadrature(mesh, 6)
    solver = natinv.NaturalSolver(pinn.gram, args.method, damping=args.damping, cutoff=args.cutoff)
    optimizer = NaturalGradientDescent(pinn, solver, momentum=momentum, beta=beta)
    field.jacobian()  # torch.func's one-time tracing, outside the clock
    elapsed, error = 0.0, np.inf
    reached: dict[float, tuple[int, float]] = {}
    while elapsed < args.budget:
        t0 = time.perf_counter()
        record = optimizer.step()
        elapsed += time.perf_counter() - t0
        error = pinn.l2_error(exact, check, optimizer.theta, relative=True)
        for level in (1e-6, 1e-7):
            if error <= level and level not in reached:
                reached[level] = (optimizer.iteration, elapsed)
        if 1e-7 in reached or record["step"] == 0.0:
            break
    solver.destroy()
    pinn.destroy()
    return {"iterations": optimizer.iteration, "time": elapsed, "error": error, "reached": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per method")
    parser.add_argument("--damping", type=float, default=1e-10)
    parser.add_argument("--method", default="cholesky", help="cholesky, cutoff, lm, cg")
    parser.add_argument("--cutoff", type=float, default=1e-13, help="relative, for cutoff")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--betas", default="0.3,0.5")
    parser.add_argument("--spring-betas", default="0.9")
    parser.add_argument("--boundary", choices=("hard", "penalty"), default="hard")
    args = parser.parse_args()
    print(
        f"{'method':<28} {'its to 1e-6':>11} {'s to 1e-6':>9} {'its to 1e-7':>11} "
        f"{'s to 1e-7':>9} {'final rel L2':>12} {'its':>5} {'s':>7}"
    )
    runs = [("none", 0.0)] + [
        (m, float(b))
        for m in ("natural-nesterov", "natural-heavy-ball")
        for b in args.betas.split(",")
        if b
    ]
    runs += [("spring", float(b)) for b in args.spring_betas.split(",") if b]
    for momentum, beta in runs:
        r = run(momentum, beta, args)
        cells = []
        for level in (1e-6, 1e-7):
            its, t = r["reached"].get(level, (None, None))
            cells.append(f"{its if its else '-':>11} {t if t else float('nan'):9.1f}")
        name = "plain NGD" if momentum == "none" else f"{momentum} β={beta}"
        print(
            f"{name:<28} {' '.join(cells)} {r['error']:12.2e} {r['iterations']:5d} "
            f"{r['time']:7.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
