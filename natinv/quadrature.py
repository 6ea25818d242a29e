"""Quadrature points and weights on the cells a rank owns (for residual losses).

Each rank gets the physical quadrature points of its *owned* cells only, so no point is counted
twice when cells are ghosted; the weights include the cell's Jacobian determinant.
"""

from __future__ import annotations

from dataclasses import dataclass

import basix
import dolfinx
import numpy as np
import numpy.typing as npt
import ufl

from natinv import parallel
from natinv.parallel import Comm

__all__ = ["Quadrature", "cell_quadrature"]


@dataclass(frozen=True)
class Quadrature:
    """Points ``(n_local, gdim)`` and weights ``(n_local,)`` owned by this rank."""

    comm: Comm
    points: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]

    @property
    def num_local(self) -> int:
        return int(self.weights.size)

    @property
    def num_global(self) -> int:
        return int(self.comm.allreduce(self.num_local))

    def integrate(self, values: npt.ArrayLike) -> float:
        """``Σ w_i v_i`` over all ranks (the integral of a function sampled at the points)."""
        return parallel.allreduce_sum(self.comm, float(np.dot(self.weights, values)))


def cell_quadrature(mesh: dolfinx.mesh.Mesh, degree: int) -> Quadrature:
    """Gauss quadrature of the given degree on every owned cell of ``mesh``. Collective.

    Degree 1 is the midpoint rule (one point per simplex).
    """
    if degree < 0 or int(degree) != degree:
        raise ValueError(f"Invalid quadrature degree {degree}: must be an integer >= 0")
    tdim = mesh.topology.dim
    gdim = mesh.geometry.dim
    cell_type = getattr(basix.CellType, mesh.topology.cell_name())
    reference, weights = basix.make_quadrature(cell_type, max(int(degree), 1))
    cells = np.arange(mesh.topology.index_map(tdim).size_local, dtype=np.int32)
    x = dolfinx.fem.Expression(ufl.SpatialCoordinate(mesh), reference)
    det = dolfinx.fem.Expression(abs(ufl.JacobianDeterminant(mesh)), reference)
    points = x.eval(mesh, cells).reshape(-1, gdim)
    scale = det.eval(mesh, cells).reshape(cells.size, -1)
    return Quadrature(
        mesh.comm,
        np.ascontiguousarray(points, dtype=np.float64),
        np.ascontiguousarray((scale * weights).reshape(-1), dtype=np.float64),
    )
