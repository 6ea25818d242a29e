"""hIPPYlib's deterministic Poisson inversion with the finite-element-field baseline (TAO).

−∇·(eᵐ∇u) = 1 on the unit square, u = 0 on the boundary, 64 × 64 mesh, state P2, parameter P1,
m_true = log(2 + 7·[r > 0.2]) (r the distance to the centre), full-field data
u_d = u_true + 0.05·max|u_true|·η (η standard normal at the interior dofs), misfit
½∫(u − u_d)², regularisation ½γ∫|∇m|² with γ = 1e-8, start m = log 2 (as the hIPPYlib tutorial;
its inexact Newton–CG — 5 Gauss–Newton then Newton steps, Eisenstat–Walker CG tolerances —
converges in 8 Newton / 44 CG iterations to ‖g‖_{M⁻¹} ≈ 3e-9).

Runs TAO ``nls`` (Gauss–Newton–CG with line search, CG preconditioned by Cholesky of
γK + 1e-8·M) and ``lmvm`` (L-BFGS with that matrix as initial Hessian) until
‖g‖_{M⁻¹} ≤ 1e-8, and prints per iteration the cost, ‖g‖_{M⁻¹} and CG iterations, then the
relative L2 error of m.

Usage: ``python bench/hippylib_poisson.py [--seed 0] [--methods nls,lmvm]`` (serial or mpirun).
"""

from __future__ import annotations

import argparse
import time

# isort: split
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import ufl

from natinv import metrics, models
from natinv.objectives.inverse import Experiment, InverseProblem
from natinv.observations import full_field
from natinv.optim.tao import FieldBaseline


def m_true(x: np.ndarray) -> np.ndarray:
    r = np.sqrt((x[0] - 0.5) ** 2 + (x[1] - 0.5) ** 2)
    return np.log(2 + 7 * (r > 0.2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="nls,lmvm")
    parser.add_argument("--max-iterations", type=int, default=200)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    mesh = dolfinx.mesh.create_unit_square(comm, 64, 64)
    Vm = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    Vu = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    truth = dolfinx.fem.Function(Vm)
    truth.interpolate(m_true)
    m = dolfinx.fem.Function(Vm)
    model = models.diffusion(Vu, m, f=1.0, check=None)  # κ = exp(m) below
    model.destroy()

    def residual(u, m, v):  # type: ignore[no-untyped-def]
        return ufl.inner(ufl.exp(m) * ufl.grad(u), ufl.grad(v)) * ufl.dx - v * ufl.dx

    model = models.Model(Vu, m, residual, [models.dirichlet(Vu)], name="poisson")
    owned = Vm.dofmap.index_map.size_local
    model.set_parameter(truth.x.array[:owned])
    u_true = model.solve()
    data = dolfinx.fem.Function(Vu)
    data.x.array[:] = u_true.x.array
    top = comm.allreduce(float(np.abs(u_true.x.array).max()), op=MPI.MAX)
    rng = np.random.default_rng(args.seed + comm.rank)
    n_u = Vu.dofmap.index_map.size_local
    noise = 0.05 * top * rng.standard_normal(n_u)
    noise[model._constrained] = 0.0
    data.x.array[:n_u] += noise
    data.x.scatter_forward()
    observations = full_field(Vu, data, sigma=1.0)
    problem = InverseProblem([Experiment(model, [observations])], regularization=("h1", 1e-8))
    mass = metrics.l2(Vm)
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(mass)
    ksp.setType("preonly")
    ksp.getPC().setType("cholesky")
    g_vec, riesz = mass.createVecs()

    def dual_norm(gradient: np.ndarray) -> float:
        g_vec.array[:] = gradient
        ksp.solve(g_vec, riesz)
        return float(np.sqrt(g_vec.dot(riesz)))

    l2_truth = np.sqrt(comm.allreduce(float(truth.x.petsc_vec.dot(_mult(mass, truth.x.petsc_vec)))))
    for method in args.methods.split(","):
        baseline = FieldBaseline(problem, method)
        start = np.full(owned, np.log(2.0))
        print(f"TAO {method}: {'it':>3} {'cost':>12} {'misfit':>12} {'|g|_M^-1':>10} {'CG':>5}")
        t0 = time.perf_counter()

        def monitor(record: dict, baseline: FieldBaseline = baseline) -> bool:
            # (extra forward and adjoint solves, for the M⁻¹-norm hIPPYlib reports)
            value, gradient = problem.value_and_gradient(baseline.x.array_r)
            norm = dual_norm(gradient)
            rank0 = comm.rank == 0
            if rank0:
                print(
                    f"{'':9}{record['iteration']:3d} {value:12.5e} "
                    f"{problem.last['misfit']:12.5e} {norm:10.3e} {record['linear_iterations']:5d}",
                    flush=True,
                )
            return norm <= 1e-8 and record["iteration"] > 0

        solution = baseline.run(start, args.max_iterations, gttol=0.0, callback=monitor)
        elapsed = time.perf_counter() - t0
        diff = truth.x.petsc_vec.copy()
        diff.array[:] = solution - truth.x.array[:owned]
        error = np.sqrt(comm.allreduce(float(diff.dot(_mult(mass, diff))))) / l2_truth
        if comm.rank == 0:
            print(
                f"  {method}: {baseline.tao.getIterationNumber()} iterations, "
                f"{baseline.linear_iterations} CG, {elapsed:.1f} s, reason {baseline.reason}, "
                f"relative L2 error of m {error:.3e}",
                flush=True,
            )
        diff.destroy()
        baseline.destroy()
    for obj in (ksp, mass, g_vec, riesz):
        obj.destroy()
    problem.destroy()
    observations.destroy()
    model.destroy()


def _mult(matrix: PETSc.Mat, x: PETSc.Vec) -> PETSc.Vec:
    y = matrix.createVecLeft()
    matrix.mult(x, y)
    return y


if __name__ == "__main__":
    main()
