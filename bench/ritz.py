"""Why the Ritz loss on the plate with a hole stayed far from its Galerkin floor, and the cure.

Six measurements, one run (serial, one BLAS thread):

1. ``cases/ritz_hole.toml`` with the network's output unit 1 (``scale = 1``, as the case was
   before part 6's finding; P2, energy metric, Levenberg–Marquardt): the relative L2 error
   against the P4 reference after 50, 100 and 200 steps, and the Galerkin floor (the P2
   Galerkin solution's own error).
2. The same network fitted *directly* to the Galerkin solution u_h, by least squares at the P2
   dofs (``LeastSquaresSolver``, the most accurate direction natinv has): if this is as slow,
   the Ritz loss and its metric are not the cause.
3. The tangent-space model along the natural direction after 30 Ritz steps: the loss change
   predicted by ``−η gᵀd + ½η² dᵀGd`` against the actual one, at the step's damping and at a
   larger one (the network's nonlinearity is what shortens the steps).
4. The Ritz loss on the unit square (P2, 24 × 24, the same network and solver, 100 steps) for a
   smooth solution (f = 2π² sin πx sin πy, max u = 1) and for f = 1 (max u = 0.074).
5. The plate with a hole again, with a smooth manufactured solution: u = sin πx sin πy (zero on
   the outer square), f and the flux through the hole to match: the errors after 50, 100 and
   200 steps and this problem's Galerkin floor.
6. The output unit ``[solution] scale`` (u = scale · N(x)): ``ritz_hole`` over scales from 1 to
   1e-4 (max u = 0.049), seeds 1 and 2 at 1 and 1e-3, and the unit square's two solutions at 1
   and at max u / 100; ``poisson_pinn_2d`` (max u = 1) at 1 and 0.01 with the least-squares
   direction (as shipped, to 1e-8 or 200 steps) and with ``lm`` (100 steps). What parts 1–5
   left open (f = 1 slow, a smooth u fast) is the size of the solution against the network's
   initial output: with max u ≈ 0.05 a network that starts at O(0.3) fits it by barely moving
   its hidden layers (lazy training); the corners of f = 1 were not it.

Usage: ``OMP_NUM_THREADS=1 python bench/ritz.py [--iterations 200] [--parts 1,2,3,4,5,6]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import natinv  # first: the DOLFINx wheel's libraries

# isort: split
from petsc4py import PETSc

from natinv.cases import load_case
from natinv.cli import main as cli_main
from natinv.directions import LeastSquaresSolver
from natinv.objectives import FieldFit
from natinv.optim import NaturalGradientDescent
from natinv.problems.forward import build_forward

ROOT = Path(__file__).resolve().parents[1]
SQUARE = """
name = "ritz-square"
problem = "ritz"
[mesh]
builtin = "unit-square"
cells = 24
[equation]
source = "{source}"
[solution]
network = [2, 32, 32, 1]
degree = 2
{exact}
[optimizer]
iterations = 100
[output]
folder = "{folder}"
"""
# u = sin πx sin πy on the plate, κ = 1 + xy: f = −∇·(κ∇u), κ∇u·n through the hole (n = −r̂)
PLATE = """
name = "ritz-plate-smooth"
problem = "ritz"
[mesh]
file = "{mesh}"
[equation]
diffusion = "1 + x*y"
source = "{source}"
dirichlet = [1]
neumann = [2]
flux = "{flux}"
[solution]
network = [2, 32, 32, 1]
degree = 2
exact = "sin(pi*x)*sin(pi*y)"
[output]
folder = "{folder}"
"""

PLATE_SOURCE = (
    "-(y*pi*cos(pi*x)*sin(pi*y) + x*pi*sin(pi*x)*cos(pi*y)) + (1 + x*y)*2*pi**2*sin(pi*x)*sin(pi*y)"
)
PLATE_FLUX = (
    "-(1 + x*y)*(pi*cos(pi*x)*sin(pi*y)*(x - 0.5) + pi*sin(pi*x)*cos(pi*y)*(y - 0.5))"
    "/sqrt((x - 0.5)**2 + (y - 0.5)**2)"
)


def floor(built) -> float:  # type: ignore[no-untyped-def]
    """The relative L2 error of the Galerkin solution itself (the best the space allows)."""
    galerkin = built.objective.galerkin()
    owned = galerkin.x.array[: built.field.num_owned].copy()
    keep = built.objective.coefficients
    built.objective.coefficients = lambda theta=None: owned
    error = built.error(built.field.parameters)
    built.objective.coefficients = keep
    return error


def ritz_run(built, iterations: int, marks: tuple[int, ...]) -> dict[int, float]:  # type: ignore[no-untyped-def]
    solver = natinv.NaturalSolver(built.objective.gram, "lm", damping=1e-3)
    optimizer = NaturalGradientDescent(built.objective, solver)
    errors = {}
    for k in range(1, iterations + 1):
        optimizer.step()
        if k in marks:
            errors[k] = built.error(optimizer.theta)
    solver.destroy()
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--parts", default="1,2,3,4,5,6", help="which measurements")
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",") if p}
    if 5 in parts:
        smooth_plate(args.iterations)
    if 6 in parts:
        output_scale(args.iterations)
    if not parts & {1, 2, 3, 4}:
        return

    # 1. the shipped case with the output unit 1
    case = with_scale(load_case(ROOT / "cases" / "ritz_hole.toml"), 1.0)
    built = build_forward(case)
    ritz, field = built.objective, built.field
    theta0 = field.parameters.copy()
    galerkin = ritz.galerkin()
    lowest = floor(built)
    start = time.perf_counter()
    marks = tuple(m for m in (50, 100, 200, args.iterations) if m <= args.iterations)
    errors = ritz_run(built, args.iterations, marks)
    seconds = time.perf_counter() - start
    shown = ", ".join(f"{k}: {e:.2e}" for k, e in errors.items())
    print(f"1. ritz_hole, scale 1 (lm): errors after steps {{{shown}}} ({seconds:.0f} s)")
    print(f"   Galerkin floor {lowest:.2e}; goal (10x the floor) {10 * lowest:.2e}")

    # 2. the same network fitted to u_h at the dofs, by least squares
    n = field.num_owned
    identity = PETSc.Mat().createAIJ(((n, None), (n, None)), nnz=(1, 0), comm=built.comm)
    identity.setUp()
    ones = identity.createVecLeft()
    ones.set(1.0)
    identity.setDiagonal(ones)
    identity.assemble()
    fit = FieldFit(field, galerkin, identity)
    solver = LeastSquaresSolver(fit.gram)
    optimizer = NaturalGradientDescent(fit, solver, theta=theta0)
    fitted = {}
    for k in range(1, 101):
        optimizer.step()
        if k in (50, 100):
            fitted[k] = built.error(optimizer.theta)
    print(
        "2. the network fitted to u_h at the dofs (least squares): errors after steps "
        + "{"
        + ", ".join(f"{k}: {e:.2e}" for k, e in fitted.items())
        + "}"
    )
    fit.destroy()
    identity.destroy()
    ones.destroy()

    # 3. the tangent-space model after 30 Ritz steps
    solver = natinv.NaturalSolver(ritz.gram, "lm", damping=1e-3)
    optimizer = NaturalGradientDescent(ritz, solver, theta=theta0)
    for _ in range(30):
        optimizer.step()
    theta = optimizer.theta
    ritz.gram.update_jacobian(theta)
    ritz.gram.assemble(jacobian=False)
    value, gradient = ritz.value_and_gradient(theta)
    for label, damping in (("the step's", solver.damping), ("50x", 50 * solver.damping)):
        probe = natinv.NaturalSolver(ritz.gram, "cholesky", damping=damping)
        d = probe.solve(gradient, assemble=False)
        curvature = ritz.gram.quadratic(d)
        cells = []
        for eta in (0.5, 1.0):
            actual = ritz.value(theta - eta * d) - value
            predicted = -eta * float(gradient @ d) + 0.5 * eta**2 * curvature
            cells.append(f"η = {eta}: actual {actual:.2e}, predicted {predicted:.2e}")
        print(f"3. after 30 steps, damping {label} ({damping:.1e}): " + "; ".join(cells))
        probe.destroy()
    solver.destroy()
    built.close()

    # 4. smooth against singular solutions on the unit square
    with tempfile.TemporaryDirectory() as folder:
        for name, source, exact in (
            ("smooth", "2*pi**2*sin(pi*x)*sin(pi*y)", 'exact = "sin(pi*x)*sin(pi*y)"'),
            ("f = 1", "1", ""),
        ):
            path = Path(folder) / "square.toml"
            path.write_text(SQUARE.format(source=source, exact=exact, folder=folder))
            square = build_forward(load_case(path))
            errors = ritz_run(square, 100, (50, 100))
            shown = ", ".join(f"{k}: {e:.2e}" for k, e in errors.items())
            print(f"4. unit square, {name}: errors after steps {{{shown}}}")
            square.close()


def with_scale(case, scale: float, seed: int | None = None):  # type: ignore[no-untyped-def]
    """The case with another output unit (and seed)."""
    solution = dataclasses.replace(case.solution, scale=scale)
    return dataclasses.replace(case, solution=solution, seed=case.seed if seed is None else seed)


def output_scale(iterations: int) -> None:
    """6. The network's output unit against the solution's size."""
    marks = tuple(m for m in (50, 100, 200, iterations) if m <= iterations)
    case = load_case(ROOT / "cases" / "ritz_hole.toml")
    runs = [(scale, 0) for scale in (1.0, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)]
    runs += [(scale, seed) for seed in (1, 2) for scale in (1.0, 1e-3)]
    for scale, seed in runs:
        built = build_forward(with_scale(case, scale, seed))
        start = time.perf_counter()
        errors = ritz_run(built, iterations, marks)
        seconds = time.perf_counter() - start
        shown = ", ".join(f"{k}: {e:.2e}" for k, e in errors.items())
        print(f"6. ritz_hole, scale {scale:g}, seed {seed}: after {{{shown}}} ({seconds:.0f} s)")
        built.close()
    with tempfile.TemporaryDirectory() as folder:
        for name, source, exact, size in (
            ("smooth", "2*pi**2*sin(pi*x)*sin(pi*y)", 'exact = "sin(pi*x)*sin(pi*y)"', 1.0),
            ("f = 1", "1", "", 0.074),
        ):
            path = Path(folder) / "square.toml"
            path.write_text(SQUARE.format(source=source, exact=exact, folder=folder))
            square = load_case(path)
            for scale in (1.0, size / 100):
                built = build_forward(with_scale(square, scale))
                errors = ritz_run(built, iterations, marks)
                shown = ", ".join(f"{k}: {e:.2e}" for k, e in errors.items())
                print(f"6. unit square, {name}, scale {scale:g}: errors after {{{shown}}}")
                if scale == 1.0:
                    print(f"   its Galerkin floor {floor(built):.2e}")
                built.close()
        # the PINN keeps units of 1: poisson_pinn_2d (max u = 1) as shipped and with lm
        for solver, steps in (("least-squares", 200), ("lm", 100)):
            for scale in (1.0, 0.01):
                out = Path(folder) / f"pinn_{solver}_{scale}"
                args = ["run", str(ROOT / "cases" / "poisson_pinn_2d.toml"), "--quiet"]
                for item in (
                    f"solution.scale={scale}",
                    f"optimizer.solver='{solver}'",
                    f"optimizer.iterations={steps}",
                    f"output.folder='{out}'",
                ):
                    args += ["--set", item]
                cli_main(args)
                summary = json.loads((out / "summary.json").read_text())
                print(
                    f"6. poisson_pinn_2d, {solver}, scale {scale:g}: error "
                    f"{summary['relative_l2_error']:.2e} after {summary['iterations']} steps"
                )


def smooth_plate(iterations: int) -> None:
    """5. The plate with a smooth manufactured solution."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plate.toml"
        mesh = ROOT / "meshes" / "plate_with_hole.msh"
        text = PLATE.format(mesh=mesh, folder=folder, source=PLATE_SOURCE, flux=PLATE_FLUX)
        path.write_text(text)
        built = build_forward(load_case(path))
        lowest = floor(built)
        marks = tuple(m for m in (50, 100, 200, iterations) if m <= iterations)
        errors = ritz_run(built, iterations, marks)
        shown = ", ".join(f"{k}: {e:.2e}" for k, e in errors.items())
        print(f"5. plate, smooth u = sin πx sin πy: errors after steps {{{shown}}}")
        print(f"   its Galerkin floor {lowest:.2e}")
        built.close()


if __name__ == "__main__":
    main()
