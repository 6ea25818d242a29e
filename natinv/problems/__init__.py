"""A case as library objects: one :class:`Problem` protocol for inverse and forward cases.

:func:`build_problem` turns a validated :class:`~natinv.cases.Case` into a :class:`Problem`:
an :class:`~natinv.problems.inverse.InverseSetup` (``problem = "inverse"``: a model, data and an
unknown field) or a :class:`~natinv.problems.forward.ForwardSetup` (``"pinn"``, ``"ritz"``: the
network is the PDE's solution). The run loop, checkpoints, compare and the results writer talk
only to the protocol. This package imports no application module above it (runner, compare,
synthesis, CLI).
"""

from __future__ import annotations

from typing import Any, Protocol

from mpi4py import MPI

import numpy as np
import numpy.typing as npt

from natinv.cases import Case, ForwardCase, InverseCase

__all__ = ["Problem", "build_problem"]


class Problem(Protocol):
    """What a run needs of a built case (every method collective)."""

    case: Case | None
    field: Any  # a NeuralField, or an FEField for the TAO baseline
    objective: Any  # the loss the optimizers see (None for a finite-element field)

    @property
    def comm(self) -> MPI.Comm: ...

    @property
    def discrepancy(self) -> float:
        """The misfit at the noise level, where a discrepancy stop ends the run (-inf: none)."""
        ...

    def describe(self) -> str:
        """What the problem fits, for the first progress line (``80 sensors``)."""
        ...

    def error(self, theta: npt.ArrayLike | None = None) -> float | None:
        """The relative L2 error at θ against the known answer (None if there is none)."""
        ...

    def misfit(self, theta: npt.NDArray[np.float64], loss: float) -> float:
        """The data misfit at the accepted θ whose loss is ``loss`` (NaN without data)."""
        ...

    def timings(self) -> dict[str, float]:
        """Seconds spent in the problem's own solves (forward, adjoint...), by phase."""
        ...

    def write(self, history: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
        """The results of a finished run into ``case.output``; returns the completed summary."""
        ...

    def close(self) -> None:
        """Free the PETSc objects the problem holds."""
        ...


def build_problem(case: Case, comm: MPI.Comm = MPI.COMM_WORLD) -> Problem:
    """The case as library objects (reads the mesh and the data, checks every formula on the
    mesh). Collective; the caller closes the result."""
    if isinstance(case, ForwardCase):
        from natinv.problems.forward import build_forward

        return build_forward(case, comm)
    assert isinstance(case, InverseCase)
    from natinv.problems.inverse import build_inverse

    return build_inverse(case, comm)
