"""The talk's 1D problems: natural gradient with and without momentum, side by side.

``--problem reaction-diffusion`` (default): −εu″ + u′ = 1 on (0, 1), u(0) = u(1) = 0, ε = 0.1,
u = x(1 − x)·N(x). ``--problem nonlinear``: −u″ + u³ = π² cos πx + cos³ πx on (−1, 1),
u(±1) = −1, exact u = cos πx, u = −1 + (1 − x²)·N(x). N is an MLP 1-20-20-1 tanh, the residual
loss sits at the midpoints of 400 cells, the metric is Gauss–Newton (ENGD), the line search is the
log grid over the gradient step. Prints, for each momentum variant and β, the iterations and the
wall time to ‖u − u*‖²_L2 ≤ 1e-11 (u* exact), and their ratio to plain natural gradient measured in
the same run. Variants: parameter-space heavy-ball and Nesterov, the re-projected natural forms,
natural Nesterov with its momentum re-projected in the L2 metric of u (``+L2``, the loss-adapted
variant), and SPRING (β is its μ).

Usage: ``python bench/talk1d.py [--problem nonlinear] [--betas 0.2,0.3,0.5]
[--spring-betas 0.5,0.9] [--max-iterations 200] [--damping 1e-10] [--seed 0]`` (serial; one
BLAS thread).
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

from natinv import parallel
from natinv.objectives.pinn import PINN, Term, gradient, laplacian
from natinv.optim import NaturalGradientDescent
from natinv.quadrature import cell_quadrature

EPS = 0.1
TARGET = 1e-11


PROBLEMS = {
    "reaction-diffusion": {
        "interval": (0.0, 1.0),
        "residual": lambda u, x: -EPS * laplacian(u, x) + gradient(u, x)[0] - 1,
        "multiplier": lambda x: x[0] * (1 - x[0]),
        "lift": None,
        "exact": lambda x: x[:, 0] - np.expm1(x[:, 0] / EPS) / np.expm1(1 / EPS),
    },
    "nonlinear": {
        "interval": (-1.0, 1.0),
        "residual": lambda u, x: (
            -laplacian(u, x)
            + u(x) ** 3
            - (np.pi**2 * torch.cos(np.pi * x[0]) + torch.cos(np.pi * x[0]) ** 3)
        ),
        "multiplier": lambda x: 1 - x[0] ** 2,
        "lift": lambda x: -torch.ones((), dtype=torch.float64),
        "exact": lambda x: np.cos(np.pi * x[:, 0]),
    },
}


def run(momentum: str, beta: float, args: argparse.Namespace) -> dict[str, float]:
    """One optimisation to ‖u − u*‖² ≤ 1e-11; ``momentum`` may end in ``+L2`` (re-project the
    momentum in the L2 metric of u at the same points instead of the Gauss–Newton metric)."""
    comm = MPI.COMM_WORLD
    problem = PROBLEMS[args.problem]
    mesh = dolfinx.mesh.create_interval(comm, 400, problem["interval"])
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([1, 20, 20, 1], seed=args.seed))
    midpoints = cell_quadrature(mesh, 1)
    hard = {"multiplier": problem["multiplier"], "lift": problem["lift"]}
    pinn = PINN(field, [Term(midpoints, problem["residual"])], **hard)
    check = cell_quadrature(mesh, 6)
    solver = natinv.NaturalSolver(pinn.gram, "cholesky", damping=args.damping)
    momentum, adapted = momentum.removesuffix("+L2"), momentum.endswith("+L2")
    values = PINN(field, [Term(midpoints, lambda u, x: u(x))], **hard) if adapted else None
    projection = (
        natinv.NaturalSolver(values.gram, "cholesky", damping=args.damping) if values else None
    )
    optimizer = NaturalGradientDescent(
        pinn, solver, momentum=momentum, beta=beta, projection=projection
    )
    field.jacobian()  # torch.func's one-time tracing, outside the clock
    elapsed, error = 0.0, np.inf
    failure = ""
    while optimizer.iteration < args.max_iterations:
        t0 = time.perf_counter()
        try:
            record = optimizer.step()
        except parallel.CollectiveError as exc:  # e.g. G + λI not positive definite: the run
            failure = str(exc)  # stops here and counts as not reaching the target
            break
        elapsed += time.perf_counter() - t0
        error = pinn.l2_error(problem["exact"], check, optimizer.theta)
        if error <= TARGET or record["step"] == 0.0:
            break
    restarts = sum(r["restart"] for r in optimizer.history)
    for obj in (solver, pinn, projection, values):
        if obj is not None:
            obj.destroy()
    return {
        "iterations": optimizer.iteration,
        "time": elapsed,
        "error": error,
        "restarts": restarts,
        "failure": failure,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="reaction-diffusion")
    parser.add_argument("--betas", default="0.2,0.3,0.5")
    parser.add_argument("--spring-betas", default="0.5,0.9")
    parser.add_argument("--max-iterations", type=int, default=200)
    parser.add_argument("--damping", type=float, default=1e-10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    betas = [float(b) for b in args.betas.split(",")]
    print(
        f"{'momentum':<26} {'beta':>5} {'its':>5} {'time [s]':>9} {'|u-u*|^2':>10} "
        f"{'restarts':>8} {'its/plain':>9} {'time/plain':>10}"
    )
    plain = run("none", 0.0, args)
    runs = [("none (plain NGD)", 0.0)] + [
        (momentum, beta)
        for momentum in (
            "heavy-ball",
            "nesterov",
            "natural-heavy-ball",
            "natural-heavy-ball-diff",
            "natural-nesterov",
            "natural-nesterov+L2",
        )
        for beta in betas
    ]
    runs += [("spring", float(b)) for b in args.spring_betas.split(",")]
    for name, beta in runs:
        r = plain if beta == 0.0 else run(name, beta, args)
        reached = r["error"] <= TARGET
        print(
            f"{name:<26} {beta:5.2f} {r['iterations']:5d}{'' if reached else '*'} "
            f"{r['time']:9.2f} {r['error']:10.2e} {r['restarts']:8d} "
            f"{r['iterations'] / plain['iterations']:9.2f} {r['time'] / plain['time']:10.2f}",
            flush=True,
        )
    print(f"* stopped at the iteration limit or on a zero step, not at {TARGET:g}")


if __name__ == "__main__":
    main()
