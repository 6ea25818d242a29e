"""The energy (Ritz) loss on a DOLFINx space and its energy-metric Gram."""

from __future__ import annotations

import dolfinx
import numpy as np
import pytest
import ufl
from helpers import dense_matrix, gather_rows, taylor_orders, unit_square

import natinv
from natinv.objectives.ritz import Ritz
from natinv.optim import NaturalGradientDescent
from natinv.parallel import CollectiveError


def poisson(comm, n=6, widths=(2, 8, 8, 1), bcs=True, seed=1):
    """−Δu = 2π² sin(πx) sin(πy) on the unit square (P2), u = 0 on the boundary."""
    mesh = unit_square(comm, n)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    x = ufl.SpatialCoordinate(mesh)
    f = 2 * ufl.pi**2 * ufl.sin(ufl.pi * x[0]) * ufl.sin(ufl.pi * x[1])
    conditions = []
    if bcs:
        mesh.topology.create_connectivity(1, 2)
        facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
        dofs = dolfinx.fem.locate_dofs_topological(space, 1, facets)
        conditions = [dolfinx.fem.dirichletbc(0.0, dofs, space)]
    field = natinv.NeuralField(space, natinv.mlp(widths, seed=seed))
    return Ritz(
        field,
        lambda w, z: ufl.inner(ufl.grad(w), ufl.grad(z)) * ufl.dx,
        lambda z: f * z * ufl.dx,
        bcs=conditions,
    )


def test_ritz_gradient_passes_the_taylor_test(comm):
    """|L(θ + hv) − L(θ) − h ∇L·v| decays like h² (observed order within [1.9, 2.1])."""
    ritz = poisson(comm)
    theta = ritz.field.parameters
    value, g = ritz.value_and_gradient(theta)
    v = np.random.default_rng(0).standard_normal(theta.size)
    hs = [1e-2 / 2**i for i in range(5)]
    orders = taylor_orders(ritz.value, theta, value, g @ v, v, hs)
    assert np.all((orders > 1.9) & (orders < 2.1)), orders
    ritz.destroy()


def test_energy_gram_equals_the_dense_reference_with_constrained_dofs_dropped(comm):
    """G = (PJ)ᵀ A (PJ) with A the stiffness matrix and P zeroing the boundary dofs
    (relative 1e-12), and L = ½ũᵀAũ − bᵀũ."""
    ritz = poisson(comm)
    ritz.gram.assemble()
    jac = gather_rows(comm, ritz.field.jacobian())
    constrained = gather_rows(comm, ritz._constrained)
    stiffness = dense_matrix(ritz.matrix)
    jac[constrained] = 0.0
    reference = jac.T @ stiffness @ jac
    assert constrained.sum() == 4 * 2 * 6  # the P2 boundary dofs of a 6 × 6 mesh
    assert np.abs(ritz.gram.dense() - reference).max() <= 1e-12 * np.abs(reference).max()
    u = gather_rows(comm, ritz.coefficients())
    b = gather_rows(comm, ritz.rhs.array)
    assert np.all(u[constrained] == 0.0)
    np.testing.assert_allclose(ritz.value(), 0.5 * u @ stiffness @ u - b @ u, rtol=1e-12)
    ritz.destroy()


def test_loss_is_the_energy_error_up_to_the_galerkin_energy(comm):
    """L(u) − L(u_h) = ½‖u − u_h‖²_a for the Galerkin solution u_h (relative 1e-10)."""
    ritz = poisson(comm)
    uh = ritz.galerkin()
    ritz_h = ritz.value() - 0.5 * ritz.energy_error(uh) ** 2
    theta = ritz.field.parameters + 0.1
    np.testing.assert_allclose(
        ritz.value(theta) - ritz_h, 0.5 * ritz.energy_error(uh, theta) ** 2, rtol=1e-10
    )
    # and u_h is the minimiser: the loss there is below the network's
    ritz._u.array[:] = uh.x.array[: ritz.field.num_owned]
    ritz.matrix.mult(ritz._u, ritz._au)
    at_uh = 0.5 * ritz._u.dot(ritz._au) - ritz.rhs.dot(ritz._u)
    np.testing.assert_allclose(at_uh, ritz_h, rtol=1e-10)
    ritz.destroy()


def test_one_natural_step_minimises_a_linear_in_parameter_model(comm):
    """With only the last layer trained, L is quadratic in θ and G its Hessian: one natural
    step with unit step size (λ = 1e-12) makes the gradient vanish (‖∇L‖ drops by 1e-8)."""
    ritz = poisson(comm, widths=(2, 12, 1))
    network = ritz.field.network
    network[0].weight.requires_grad_(False)
    network[0].bias.requires_grad_(False)
    field = natinv.NeuralField(ritz.field.space, network)
    linear = Ritz(field, ritz._a, ritz._ell, bcs=ritz.bcs)
    _, g0 = linear.value_and_gradient()
    solver = natinv.NaturalSolver(linear.gram, "cholesky", damping=1e-12)
    optimizer = NaturalGradientDescent(linear, solver, step=1.0)
    optimizer.step()
    _, g1 = linear.value_and_gradient(optimizer.theta)
    assert np.linalg.norm(g1) <= 1e-8 * np.linalg.norm(g0)
    solver.destroy()
    linear.destroy()
    ritz.destroy()


def test_natural_steps_approach_the_galerkin_solution(comm):
    """Thirty ENGD steps in the energy metric (λ = 1e-3: with P = 337 parameters for 289 dofs
    the undamped Gauss–Newton step overshoots and the line search creeps) bring ‖u − u_h‖_a
    below 2 % of ‖u_h‖_a from a random network (the start is above 100 %)."""
    ritz = poisson(comm, n=8, widths=(2, 16, 16, 1))
    uh = ritz.galerkin()
    norm = ritz.energy_error(uh, np.zeros(ritz.field.num_parameters))
    assert ritz.energy_error(uh) > norm
    solver = natinv.NaturalSolver(ritz.gram, "cholesky", damping=1e-3)
    optimizer = NaturalGradientDescent(ritz, solver)
    optimizer.run(30)
    assert ritz.energy_error(uh, optimizer.theta) < 0.02 * norm
    solver.destroy()
    ritz.destroy()


def test_bad_forms_are_one_clear_error(comm):
    mesh = unit_square(comm, 4)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 4, 1]))
    grad = ufl.grad
    with pytest.raises(CollectiveError, match="linear form on the field's space"):
        Ritz(field, lambda w, z: ufl.inner(grad(w), grad(z)) * ufl.dx, lambda z: z * z * ufl.dx)
    with pytest.raises(CollectiveError, match="not symmetric"):
        Ritz(
            field,
            lambda w, z: (ufl.inner(grad(w), grad(z)) + w.dx(0) * z) * ufl.dx,
            lambda z: z * ufl.dx,
        )
