"""Quadrature points and weights on the cells, or boundary facets, a rank owns.

Each rank gets the physical quadrature points of its *owned* cells (or owned exterior facets)
only, so no point is counted twice when entities are ghosted; the weights include the entity's
Jacobian determinant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import basix
import dolfinx
import numpy as np
import numpy.typing as npt
import ufl

from natinv import parallel
from natinv.parallel import Comm

__all__ = ["Quadrature", "boundary_quadrature", "cell_quadrature"]


@dataclass(frozen=True)
class Quadrature:
    """Points ``(n_local, gdim)`` and weights ``(n_local,)`` owned by this rank."""

    comm: Comm
    points: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]
    mesh: dolfinx.mesh.Mesh | None = None  # cell quadratures: where the points lie
    reference: npt.NDArray[np.float64] | None = None  # cell quadratures: reference points
    normals: npt.NDArray[np.float64] | None = None  # boundary quadratures: outward unit normals

    @property
    def num_local(self) -> int:
        return int(self.weights.size)

    @property
    def num_global(self) -> int:
        return int(self.comm.allreduce(self.num_local))

    def integrate(self, values: npt.ArrayLike) -> float:
        """``Σ w_i v_i`` over all ranks (the integral of a function sampled at the points)."""
        return parallel.allreduce_sum(self.comm, float(np.dot(self.weights, values)))

    def evaluate(self, expression: ufl.core.expr.Expr) -> npt.NDArray[np.float64]:
        """A scalar UFL expression on the mesh (e.g. a :class:`dolfinx.fem.Function`) at the
        points, in their order (cell quadratures only). Local."""
        if self.mesh is None or self.reference is None:
            raise ValueError("Quadrature.evaluate: only cell quadratures know their cells")
        cells = np.arange(self.mesh.topology.index_map(self.mesh.topology.dim).size_local)
        values = dolfinx.fem.Expression(expression, self.reference).eval(
            self.mesh, cells.astype(np.int32)
        )
        return np.ascontiguousarray(values, dtype=np.float64).reshape(-1)


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
    scale = det.eval(mesh, cells).reshape(cells.size, weights.size)
    return Quadrature(
        mesh.comm,
        np.ascontiguousarray(points, dtype=np.float64),
        np.ascontiguousarray((scale * weights).reshape(-1), dtype=np.float64),
        mesh,
        reference,
    )


def boundary_quadrature(
    mesh: dolfinx.mesh.Mesh,
    degree: int,
    marker: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]] | None = None,
    facets: npt.NDArray[np.int32] | None = None,
) -> Quadrature:
    """Gauss quadrature of the given degree on the owned exterior facets of a simplex mesh with
    affine geometry. Collective.

    Args:
        mesh: an interval, triangle or tetrahedron mesh (first-order geometry).
        degree: quadrature degree on each facet (ignored for the end points of an interval).
        marker: optional ``x (3, n) -> bool (n,)`` selecting facets by their midpoints
            (e.g. one side of the domain); default all exterior facets.
        facets: optional local facet indices (e.g. of a tag) to keep among them.

    The quadrature also holds the outward unit normal at each point (:attr:`Quadrature.
    normals`, from the facet and its cell's centroid).
    """
    if degree < 0 or int(degree) != degree:
        raise ValueError(f"Invalid quadrature degree {degree}: must be an integer >= 0")
    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    fdim = tdim - 1
    parallel.check_all(
        mesh.comm,
        mesh.topology.cell_name() in ("interval", "triangle", "tetrahedron")
        and mesh.geometry.cmaps[0].degree == 1,
        "boundary quadrature needs a simplex mesh with first-order (affine) geometry",
    )
    mesh.topology.create_connectivity(fdim, tdim)
    chosen = facets
    facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    facets = facets[facets < mesh.topology.index_map(fdim).size_local]
    if chosen is not None:
        facets = np.intersect1d(facets, np.asarray(chosen, dtype=np.int32))
    nodes = dolfinx.mesh.entities_to_geometry(mesh, fdim, facets)
    corners = mesh.geometry.x[nodes][:, : fdim + 1, :gdim]  # (facets, fdim + 1, gdim)
    outward = _normals(mesh, facets, corners)
    if marker is not None and corners.shape[0]:
        midpoints = np.zeros((3, corners.shape[0]))
        midpoints[:gdim] = corners.mean(axis=1).T
        keep = np.asarray(marker(midpoints), dtype=bool)
        corners, outward = corners[keep], outward[keep]
    if fdim == 0:
        points, weights = corners[:, 0, :], np.ones(corners.shape[0])
        per_facet = 1
    else:
        facet_cell = basix.CellType.interval if fdim == 1 else basix.CellType.triangle
        reference, ref_weights = basix.make_quadrature(facet_cell, max(int(degree), 1))
        edges = corners[:, 1:, :] - corners[:, :1, :]  # (facets, fdim, gdim)
        points = (corners[:, :1, :] + np.einsum("qk,fkg->fqg", reference, edges)).reshape(-1, gdim)
        scale = np.sqrt(np.linalg.det(np.einsum("fkg,flg->fkl", edges, edges)))
        weights = (scale[:, None] * ref_weights[None, :]).reshape(-1)
        per_facet = ref_weights.size
    return Quadrature(
        mesh.comm,
        np.ascontiguousarray(points, dtype=np.float64).reshape(-1, gdim),
        np.ascontiguousarray(weights, dtype=np.float64),
        normals=np.ascontiguousarray(np.repeat(outward, per_facet, axis=0)).reshape(-1, gdim),
    )


def _normals(
    mesh: dolfinx.mesh.Mesh, facets: npt.NDArray[np.int32], corners: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """The outward unit normal of each exterior facet ``(facets, gdim)``: perpendicular to the
    facet (a line's, or a plane's by the cross product; ±1 on an interval), pointing away from
    the centroid of its one cell."""
    tdim, gdim = mesh.topology.dim, mesh.geometry.dim
    count = corners.shape[0]
    if count == 0:
        return np.zeros((0, gdim))
    to_cell = mesh.topology.connectivity(tdim - 1, tdim)
    cells = np.array([to_cell.links(f)[0] for f in facets], dtype=np.int32)
    centroids = mesh.geometry.x[mesh.geometry.dofmaps[0][cells]][:, :, :gdim].mean(axis=1)
    middle = corners.mean(axis=1)
    if tdim == 1:
        normal = np.ones((count, gdim))
    elif tdim == 2 and gdim == 2:
        edge = corners[:, 1] - corners[:, 0]
        normal = np.column_stack([edge[:, 1], -edge[:, 0]])
    elif tdim == 3 and gdim == 3:
        normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    else:  # a manifold (e.g. a surface in 3D): the part of the outward direction off the facet
        normal = middle - centroids
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    flip = np.einsum("fg,fg->f", normal, middle - centroids) < 0
    normal[flip] *= -1.0
    return normal
