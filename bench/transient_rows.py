"""The Gauss–Newton rows of a transient case, three ways, side by side in one process.

On ``cases/heat_transient.toml`` (heat on the plate with a hole, 20 Crank–Nicolson steps, 30
thermocouples read 10 times: 300 values, a network of P parameters) at the network's initial
θ, the rows ``B S J`` by

- ``tangent``: sensitivities forward in time, a column per parameter (P per step);
- ``adjoint``: the adjoint backward in time, a column per measured value (300 per step);
- ``shifted``: for a time-invariant model, a column per sensor (30 per step), each sensor's
  adjoint shifted in time to every read-out (the default for the heat equation);

each timed ``--repeats`` times (the best kept), with the largest difference from the
``tangent`` rows, the factorisations taken, and the stored states' memory.

    OMP_NUM_THREADS=1 .venv/bin/python bench/transient_rows.py [--repeats 3]
    OMP_NUM_THREADS=1 .venv/bin/mpirun -n 2 .venv/bin/python bench/transient_rows.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpi4py import MPI  # noqa: E402

import numpy as np  # noqa: E402

from natinv.cases import load_case  # noqa: E402
from natinv.objectives.inverse import ObservationRows  # noqa: E402
from natinv.problems.inverse import build_inverse  # noqa: E402

CASE = ROOT / "cases" / "heat_transient.toml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    built = build_inverse(load_case(CASE), comm)
    objective, model = built.objective, built.model
    assert objective is not None
    theta = objective.field.parameters
    objective.value(theta)  # the trajectory
    states = comm.allreduce(model.memory)
    results = {}
    for name, method, invariant in (
        ("tangent", "tangent", False),
        ("adjoint", "adjoint", False),
        ("shifted", "adjoint", True),
    ):
        model.time_invariant = invariant
        rows = ObservationRows(objective.field, built.problem, method)
        best, jacobian = np.inf, None
        for _ in range(args.repeats):
            comm.Barrier()
            start = time.perf_counter()
            jacobian = rows.jacobian(theta)
            best = min(best, comm.allreduce(time.perf_counter() - start, op=MPI.MAX))
        results[name] = (best, jacobian)
        rows.destroy()
    reference = results["tangent"][1]
    scale = comm.allreduce(float(np.abs(reference).max(initial=0.0)), op=MPI.MAX)
    if comm.rank == 0:
        print(
            f"{CASE.name} on {comm.size} rank(s): {built.num_sensors} values, "
            f"{objective.field.num_parameters} parameters, {model.steps} steps; stored states "
            f"{states / 1e6:.1f} MB; factorisations {model.assemblies}"
        )
        print(f"  {'rows':<8} {'time [s]':>9} {'× shifted':>10} {'max diff':>10}")
    for name, (seconds, jacobian) in results.items():
        difference = comm.allreduce(float(np.abs(jacobian - reference).max(initial=0.0)), MPI.MAX)
        if comm.rank == 0:
            ratio = seconds / results["shifted"][0]
            print(f"  {name:<8} {seconds:9.3f} {ratio:10.1f} {difference / scale:10.1e}")
    built.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
