"""Fixtures. Each test runs serially and under `mpirun -n 2 python -m mpi4py -m pytest`."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

from mpi4py import MPI
from petsc4py import PETSc

import pytest

import natinv  # noqa: F401  (loads the DOLFINx wheel's libraries first)


@pytest.fixture(autouse=True)
def _collective_teardown() -> Iterator[None]:
    """Run PETSc destructors in step on all ranks, and leave no PETSc option behind."""
    yield
    gc.collect()
    MPI.COMM_WORLD.Barrier()


@pytest.fixture
def comm() -> MPI.Comm:
    return MPI.COMM_WORLD


@pytest.fixture
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary folder made on rank 0 and known to every rank."""
    comm = MPI.COMM_WORLD
    path = str(tmp_path_factory.mktemp("shared")) if comm.rank == 0 else None
    return Path(comm.bcast(path, root=0))


@pytest.fixture
def petsc_options() -> Iterator[PETSc.Options]:
    """The global PETSc options table; every option set through it is removed afterwards."""
    opts = PETSc.Options()
    before = set(opts.getAll())
    yield opts
    for key in set(opts.getAll()) - before:
        opts.delValue(key)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that compare N ranks with one (``several_ranks``): ``-m ranks`` selects
    them for the runs on 3 and 4 ranks."""
    for item in items:
        if "several_ranks" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ranks)


@pytest.fixture
def several_ranks(comm: MPI.Comm) -> None:
    """For tests that compare a run on all ranks with one on a single rank (COMM_SELF): run
    serially there is nothing to compare, so they skip and say so."""
    if comm.size == 1:
        pytest.skip("compares N ranks with one: runs under mpirun -n 2 (make test does)")
