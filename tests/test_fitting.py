"""The fitting objective, natural gradient descent on it, and their bad input."""

from __future__ import annotations

import itertools

import dolfinx
import numpy as np
import pytest
from helpers import taylor_orders, unit_square

import natinv
from natinv.objectives import FieldFit
from natinv.optim import NaturalGradientDescent
from natinv.optim.baselines import LBFGS, Adam
from natinv.parallel import CollectiveError


def smooth(x):
    return np.sin(np.pi * x[0]) * np.cos(np.pi * x[1])


def problem(comm, metric="l2"):
    space = dolfinx.fem.functionspace(unit_square(comm, 8), ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 8, 8, 1], seed=2))
    matrix = natinv.assemble_metric(space, metric)
    return field, matrix, FieldFit(field, smooth, matrix)


def test_loss_gradient_passes_the_taylor_test(comm):
    """|L(θ + hv) − L(θ) − h ∇L·v| decays like h² (observed order within [1.9, 2.1])."""
    field, matrix, objective = problem(comm, "h1")
    theta = field.parameters
    value, gradient = objective.value_and_gradient(theta)
    v = np.random.default_rng(0).standard_normal(theta.size)
    hs = [1e-2 / 2**i for i in range(5)]
    orders = taylor_orders(objective.value, theta, value, gradient @ v, v, hs)
    assert np.all((orders > 1.9) & (orders < 2.1)), orders
    objective.destroy()
    matrix.destroy()


def test_natural_gradient_beats_adam_per_iteration_on_a_fit(comm):
    """Twenty natural steps (λ = 1e-6) bring the relative L2 error below 1e-2, and below what
    500 Adam steps reach."""
    field, matrix, objective = problem(comm)
    theta0 = field.parameters
    solver = natinv.NaturalSolver(objective.gram, "cholesky", damping=1e-6)
    ngd = NaturalGradientDescent(objective, solver)
    ngd.run(20)
    adam = Adam(objective, lr=1e-2, theta=theta0)
    adam.run(500)
    assert objective.error(ngd.theta) < 1e-2
    assert objective.error(ngd.theta) < objective.error(adam.theta)
    losses = [r["loss"] for r in ngd.history]
    # the log-grid line search accepts decrease only
    assert all(b <= a for a, b in itertools.pairwise(losses))
    solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_state_dict_round_trip_continues_identically(comm):
    """Five steps, save, five more == five steps, load into a fresh optimizer, five more."""
    field, matrix, objective = problem(comm)
    theta0 = field.parameters
    first = NaturalGradientDescent(objective, natinv.NaturalSolver(objective.gram, "lm"))
    first.run(5)
    state = first.state_dict()
    first.run(5)
    second = NaturalGradientDescent(
        objective, natinv.NaturalSolver(objective.gram, "lm"), theta=theta0
    )
    second.load_state_dict(state)
    second.run(5)
    np.testing.assert_array_equal(second.theta, first.theta)
    first.solver.destroy()
    second.solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_nan_in_the_target_on_one_rank_is_an_error_on_every_rank(comm):
    space = dolfinx.fem.functionspace(unit_square(comm), ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 4, 1]))
    matrix = natinv.l2(space)
    target = dolfinx.fem.Function(space)
    target.interpolate(smooth)
    if comm.rank == comm.size - 1 and target.x.array.size:
        target.x.array[0] = np.nan
    with pytest.raises(CollectiveError, match="target field contains"):
        FieldFit(field, target, matrix)
    matrix.destroy()


def test_target_on_another_space_is_an_error(comm):
    mesh = unit_square(comm)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 4, 1]))
    matrix = natinv.l2(space)
    other = dolfinx.fem.Function(dolfinx.fem.functionspace(mesh, ("Lagrange", 2)))
    with pytest.raises(CollectiveError, match="another function space"):
        FieldFit(field, other, matrix)
    with pytest.raises(CollectiveError, match="owned coefficients"):
        FieldFit(field, np.zeros(field.num_owned + 2), matrix)
    matrix.destroy()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lr": -1.0}, "Invalid learning rate"), ({"betas": (0.9, 1.0)}, "Invalid Adam betas")],
)
def test_bad_adam_settings_name_the_value(comm, kwargs, message):
    _field, matrix, objective = problem(comm)
    with pytest.raises(ValueError, match=message):
        Adam(objective, **kwargs)
    objective.destroy()
    matrix.destroy()


@pytest.mark.parametrize(("step", "message"), [(-0.5, "Invalid step size"), ("wolfe", "Unknown")])
def test_bad_step_rules_name_the_value(comm, step, message):
    _field, matrix, objective = problem(comm)
    with pytest.raises(ValueError, match=message):
        NaturalGradientDescent(objective, step=step)
    objective.destroy()
    matrix.destroy()


def test_lbfgs_baseline_fits_and_resumes_identically(comm):
    """L-BFGS (Armijo) lowers the fitting loss every step; a resumed run continues bitwise."""
    field, matrix, objective = problem(comm)
    theta0 = field.parameters
    first = LBFGS(objective, memory=5, theta=theta0)
    first.run(10)
    state = first.state_dict()
    first.run(5)
    losses = [r["loss_before"] for r in first.history] + [first.history[-1]["loss"]]
    assert all(b < a for a, b in itertools.pairwise(losses))
    second = LBFGS(objective, memory=5, theta=theta0)
    second.load_state_dict(state)
    second.run(5)
    np.testing.assert_array_equal(second.theta, first.theta)
    with pytest.raises(ValueError, match="Invalid L-BFGS memory"):
        LBFGS(objective, memory=0)
    objective.destroy()
    matrix.destroy()
