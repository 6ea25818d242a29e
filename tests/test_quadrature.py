"""Quadrature on owned cells and owned boundary facets: each point counted once over ranks."""

from __future__ import annotations

from pathlib import Path

import dolfinx
import numpy as np
import pytest
import torch

import natinv
from natinv.objectives.pinn import PINN, Term, laplacian
from natinv.optim import NaturalGradientDescent
from natinv.quadrature import boundary_quadrature, cell_quadrature


def test_cell_quadrature_integrates_polynomials_exactly(comm):
    q = cell_quadrature(dolfinx.mesh.create_unit_square(comm, 5, 3), 4)
    x, y = q.points[:, 0], q.points[:, 1]
    assert q.integrate(x**3 * y + y**4) == pytest.approx(1 / 8 + 1 / 5, rel=1e-13)


def test_boundary_quadrature_integrates_over_the_boundary(comm):
    """∮(x³ + y²) ds over the unit square = 1/4 + 5/4 + 1/3 + 4/3; the cube's area is 6; the
    interval's boundary is its two end points; a marker keeps one side."""
    square = dolfinx.mesh.create_unit_square(comm, 7, 5)
    q = boundary_quadrature(square, 4)
    assert q.integrate(np.ones(q.num_local)) == pytest.approx(4.0, rel=1e-13)
    assert q.integrate(q.points[:, 0] ** 3 + q.points[:, 1] ** 2) == pytest.approx(
        19 / 6, rel=1e-13
    )
    cube = boundary_quadrature(dolfinx.mesh.create_unit_cube(comm, 3, 2, 2), 2)
    assert cube.integrate(np.ones(cube.num_local)) == pytest.approx(6.0, rel=1e-13)
    ends = boundary_quadrature(dolfinx.mesh.create_unit_interval(comm, 5), 1)
    assert ends.num_global == 2 and ends.integrate(ends.points[:, 0] + 1) == pytest.approx(3.0)
    left = boundary_quadrature(square, 2, marker=lambda x: np.isclose(x[0], 0.0))
    assert left.integrate(left.points[:, 1]) == pytest.approx(0.5, rel=1e-13)


def test_a_boundary_penalty_term_imposes_dirichlet_values(comm):
    """−u″ = π² sin πx with u(0) = u(1) = 0 as a penalised boundary term (no multiplier):
    natural gradient brings u to sin πx (relative L2 error < 1e-4 in 40 steps)."""
    mesh = dolfinx.mesh.create_unit_interval(comm, 60)
    field = natinv.NeuralField(
        dolfinx.fem.functionspace(mesh, ("Lagrange", 1)), natinv.mlp([1, 16, 1], seed=0)
    )
    interior = Term(
        cell_quadrature(mesh, 2), lambda u, x: -laplacian(u, x) - np.pi**2 * torch.sin(np.pi * x[0])
    )
    boundary = Term(boundary_quadrature(mesh, 1), lambda u, x: u(x), weight=10.0, name="bc")
    pinn = PINN(field, [interior, boundary])
    solver = natinv.NaturalSolver(pinn.gram, "cholesky", damping=1e-10)
    NaturalGradientDescent(pinn, solver).run(40)
    error = pinn.l2_error(
        lambda x: np.sin(np.pi * x[:, 0]), cell_quadrature(mesh, 6), field.parameters, relative=True
    )
    assert error < 1e-4
    solver.destroy()
    pinn.destroy()


def test_cell_quadrature_evaluates_a_function_at_its_points(comm):
    """A P2 function interpolating x² + xy is exact at the quadrature points (1e-13)."""
    mesh = dolfinx.mesh.create_unit_square(comm, 4, 4)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    u = dolfinx.fem.Function(space)
    u.interpolate(lambda x: x[0] ** 2 + x[0] * x[1])
    q = cell_quadrature(mesh, 3)
    x = q.points
    np.testing.assert_allclose(q.evaluate(u), x[:, 0] ** 2 + x[:, 0] * x[:, 1], atol=1e-13)


def test_boundary_normals_satisfy_the_divergence_theorem(comm):
    """∫_∂Ω x·n ds = d |Ω| with the boundary quadrature's outward normals, on an interval, a
    square, a cube and the gmsh plate with a hole (whose hole's normals point into it)."""
    import dolfinx
    import ufl

    from natinv.cases import MeshSettings
    from natinv.domain import load_mesh

    root = Path(__file__).resolve().parents[1]
    meshes = [
        dolfinx.mesh.create_unit_interval(comm, 5),
        dolfinx.mesh.create_unit_square(comm, 4, 3),
        dolfinx.mesh.create_unit_cube(comm, 2, 2, 3),
        load_mesh(comm, MeshSettings(file=root / "meshes" / "plate_with_hole.msh"))[0],
    ]
    for mesh in meshes:
        quadrature = boundary_quadrature(mesh, 2)
        flux = quadrature.integrate(np.einsum("pg,pg->p", quadrature.points, quadrature.normals))
        one = dolfinx.fem.Constant(mesh, 1.0)
        volume = comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(one * ufl.dx)))
        assert abs(flux - mesh.geometry.dim * volume) <= 1e-12 * volume
        assert np.allclose(np.linalg.norm(quadrature.normals, axis=1), 1.0)
