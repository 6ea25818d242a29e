"""The state solvers natinv can use: time, memory and run-to-run repeatability.

A P2 diffusion operator −∇·(κ∇u) + u on the box [0, 2] × [0, 1] × [0, 1] (``2n × n × n``
cells, κ a smooth bump), set up ``--repeats`` times by each solver (a factorisation, or CG's
multigrid hierarchy for ``cg``: natinv's ``ITERATIVE_OPTIONS``); each time two solves and one
block solve of ``--columns`` right-hand sides (what the Gauss–Newton rows ask; 0: none).
Printed per solver: the best set-up + solve time, the best second solve (on the set-up), CG's
iterations, the best block solve time, the largest difference between the repeats' solutions
(0: bitwise repeatable on this rank count) and the largest peak RSS of a rank.

    OMP_NUM_THREADS=1 mpirun -n 2 .venv/bin/python bench/direct_solvers.py --cells 10
    OMP_NUM_THREADS=1 mpirun -n 3 .venv/bin/python bench/direct_solvers.py --cells 10 \\
        --solvers superlu_dist,superlu_dist:mat_superlu_dist_r=3:mat_superlu_dist_c=1
    OMP_NUM_THREADS=1 mpirun -n 2 .venv/bin/python bench/direct_solvers.py --cells 40 \\
        --solvers cg --columns 0 --repeats 1

A solver is ``name[:option=value...]`` (PETSc options without the dash).
"""

from __future__ import annotations

import argparse
import resource
import time

try:  # the PyPI wheel's PETSc (a conda or Docker DOLFINx needs none)
    import dolfinx_solver  # noqa: F401
except ImportError:
    pass

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from natinv.models import ITERATIVE_OPTIONS


def operator(comm: MPI.Comm, cells: int) -> tuple[PETSc.Mat, dolfinx.mesh.Mesh]:
    """The assembled operator and its mesh (which holds the communicator the matrix uses)."""
    mesh = dolfinx.mesh.create_box(
        comm, [[0.0, 0.0, 0.0], [2.0, 1.0, 1.0]], [2 * cells, cells, cells]
    )
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    u, v = ufl.TrialFunction(space), ufl.TestFunction(space)
    x = ufl.SpatialCoordinate(mesh)
    kappa = 1 + ufl.exp(-5 * ((x[0] - 1) ** 2 + (x[1] - 0.5) ** 2))
    form = kappa * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx + u * v * ufl.dx
    matrix = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form))
    matrix.assemble()
    return matrix, mesh


def measure(
    comm: MPI.Comm, matrix: PETSc.Mat, solver: str, repeats: int, columns: int
) -> dict[str, float]:
    """Best times and the largest difference between repeats for one solver setting."""
    name, *settings = solver.split(":")
    options = PETSc.Options()
    for item in settings:
        key, value = item.split("=")
        options[key] = value
    rhs = PETSc.Mat().createDense(
        ((matrix.getLocalSize()[0], matrix.getSize()[0]), (None, max(columns, 1))), comm=comm
    )
    rhs.setUp()
    block = rhs.getDenseArray()
    block[:] = np.random.default_rng(comm.rank).standard_normal(block.shape)
    rhs.assemble()
    b = matrix.createVecLeft()
    b.set(1.0)
    best = {"factor": np.inf, "again": np.inf, "block": np.inf}
    solutions = []
    for _ in range(repeats):
        ksp = PETSc.KSP().create(comm)
        ksp.setOperators(matrix)
        if name == "cg":  # natinv's iterative solver (models.ITERATIVE_OPTIONS)
            prefix = f"bench_cg_{len(solutions)}_"
            ksp.setOptionsPrefix(prefix)
            for key, value in ITERATIVE_OPTIONS.items():
                options[f"{prefix}{key}"] = value
        else:
            ksp.setType("preonly")
            ksp.getPC().setType("lu")
            ksp.getPC().setFactorSolverType(name)
        ksp.setFromOptions()
        x = b.duplicate()
        out = rhs.duplicate()
        comm.Barrier()
        start = time.perf_counter()
        ksp.solve(b, x)
        comm.Barrier()
        best["factor"] = min(best["factor"], time.perf_counter() - start)
        start = time.perf_counter()
        ksp.solve(b, x)
        comm.Barrier()
        best["again"] = min(best["again"], time.perf_counter() - start)
        best["iterations"] = ksp.getIterationNumber() if name == "cg" else 1
        start = time.perf_counter()
        if columns:
            ksp.matSolve(rhs, out)
        comm.Barrier()
        best["block"] = min(best["block"], time.perf_counter() - start)
        solutions.append(np.concatenate([x.array_r, out.getDenseArray().ravel()]))
        for obj in (ksp, x, out):
            obj.destroy()
    for item in settings:
        options.delValue(item.split("=")[0])
    for key in list(options.getAll()):
        if key.startswith("bench_cg_"):
            options.delValue(key)
    b.destroy()
    rhs.destroy()
    spread = max((float(np.abs(s - solutions[0]).max()) for s in solutions[1:]), default=0.0)
    best["spread"] = comm.allreduce(spread, op=MPI.MAX)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10, help="the box has 2n × n × n cells")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--columns", type=int, default=100)
    parser.add_argument("--solvers", default="mumps,superlu_dist")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    matrix, _mesh = operator(comm, args.cells)
    if comm.rank == 0:
        print(
            f"{comm.size} rank(s), P2 operator of {matrix.getSize()[0]} dofs, {args.repeats} "
            f"factorisations, {args.columns}-column blocks"
        )
        print(
            f"{'solver':<48} {'factor+solve [s]':>16} {'again [s]':>10} {'its':>4} "
            f"{'block [s]':>10} {'repeats differ':>15} {'peak GB':>8}"
        )
    for solver in args.solvers.split(","):
        result = measure(comm, matrix, solver, args.repeats, args.columns)
        peak = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, MPI.MAX)
        if comm.rank == 0:
            print(
                f"{solver:<48} {result['factor']:16.2f} {result['again']:10.2f} "
                f"{result['iterations']:4d} {result['block']:10.2f} {result['spread']:15.2e} "
                f"{peak:8.2f}"
            )
    matrix.destroy()


if __name__ == "__main__":
    main()
