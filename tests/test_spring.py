"""SPRING (momentum in the direction) in parameter and sample space, and the loss-adapted
projection of natural momentum."""

from __future__ import annotations

from types import SimpleNamespace

from mpi4py import MPI

import numpy as np
import pytest
from test_momentum import free, linear_problem, nonlinear_problem
from test_pinn import reaction_diffusion

import natinv
from natinv.directions import SampleSpaceSolver
from natinv.optim import FixedStep, NaturalGradientDescent
from natinv.parallel import CollectiveError


def few_rows(comm):
    """A PINN with fewer residual rows (N = 20) than parameters (P = 97)."""
    pinn = reaction_diffusion(comm, cells=10, degree=2, widths=(1, 8, 8, 1))
    assert pinn.num_global < pinn.num_parameters
    return pinn


def test_sample_space_solve_equals_the_parameter_space_solve(comm):
    """J̃ᵀ(J̃J̃ᵀ + λI)⁻¹ W^½ r = (JᵀWJ + λI)⁻¹ JᵀW r (Woodbury; relative 1e-10 at λ = 1e-3)."""
    pinn = few_rows(comm)
    sample = SampleSpaceSolver(pinn.gram, damping=1e-3)
    parameter = natinv.NaturalSolver(pinn.gram, "cholesky", damping=1e-3)
    r = pinn.row_residual()
    _, gradient = pinn.value_and_gradient()
    x = sample.solve_rows(r)
    y = parameter.solve(gradient)
    assert np.linalg.norm(x - y) <= 1e-10 * np.linalg.norm(y)
    assert sample.factorizations == 1
    sample.solve_rows(2 * r)  # the same J: no new factorisation
    assert sample.factorizations == 1
    free(sample, parameter, pinn)


def spring_iterates(pinn, solver, beta, steps=5, step="log-grid", restart="loss"):
    optimizer = NaturalGradientDescent(
        pinn,
        solver,
        step,
        momentum="spring",
        beta=beta,
        restart=restart,
        theta=pinn.field.parameters,
    )
    return [optimizer.step() and optimizer.theta.copy() for _ in range(steps)], optimizer


def test_spring_without_momentum_is_natural_gradient_descent(comm):
    """β = 0: SPRING's direction is (G + λI)⁻¹∇L, the same iterates as plain NGD (1e-12)."""
    pinn = few_rows(comm)
    solver = natinv.NaturalSolver(pinn.gram, "cholesky", damping=1e-4)
    spring, _ = spring_iterates(pinn, solver, 0.0)
    plain = NaturalGradientDescent(pinn, solver, theta=pinn.field.parameters)
    for a in spring:
        plain.step()
        assert np.linalg.norm(a - plain.theta) <= 1e-12 * np.linalg.norm(a)
    free(solver, pinn)


def test_spring_in_sample_space_takes_the_parameter_space_steps(comm):
    """SPRING with μ = 0.9 (fixed step 0.5, no restart): the sample-space (N × N) and the
    parameter-space (P × P) forms give the same iterates over 5 steps (relative 1e-8), and the
    momentum acts (the iterates differ from β = 0)."""
    pinn = few_rows(comm)
    sample = SampleSpaceSolver(pinn.gram, damping=1e-3)
    parameter = natinv.NaturalSolver(pinn.gram, "cholesky", damping=1e-3)
    a, _ = spring_iterates(pinn, sample, 0.9, step=0.5, restart="none")
    b, _ = spring_iterates(pinn, parameter, 0.9, step=0.5, restart="none")
    c, _ = spring_iterates(pinn, parameter, 0.0, step=0.5, restart="none")
    for x, y in zip(a, b, strict=True):
        assert np.linalg.norm(x - y) <= 1e-8 * np.linalg.norm(y)
    assert np.linalg.norm(a[-1] - c[-1]) > 1e-3 * np.linalg.norm(c[-1])
    free(sample, parameter, pinn)


def test_spring_takes_the_same_steps_on_one_and_two_ranks(several_ranks, comm):
    """Sample-space SPRING (μ = 0.8, log-grid) on COMM_WORLD and on COMM_SELF: the same
    iterates over 5 steps (relative 1e-10)."""
    runs = []
    for c in (comm, MPI.COMM_SELF):
        pinn = few_rows(c)
        solver = SampleSpaceSolver(pinn.gram, damping=1e-3)
        runs.append(spring_iterates(pinn, solver, 0.8)[0])
        free(solver, pinn)
    for a, b in zip(*runs, strict=True):
        assert np.linalg.norm(a - b) <= 1e-10 * np.linalg.norm(b)


def test_projected_momentum_in_another_metric_is_parameter_momentum_when_linear(comm):
    """Loss-adapted variant: gradient in the H1 metric, momentum re-projected in the L2 metric.
    With J constant any metric re-projects a tangent velocity onto itself, so the iterates are
    parameter heavy-ball's (relative 1e-12); a wrongly paired J and G would break this."""
    field, objective, gram, matrices = linear_problem(comm)
    runs = []
    for momentum, projection in (
        ("natural-heavy-ball", natinv.NaturalSolver(objective.gram, "cholesky")),
        ("heavy-ball", None),
    ):
        solver = natinv.NaturalSolver(gram, "cholesky")
        optimizer = NaturalGradientDescent(
            objective,
            solver,
            FixedStep(0.5),
            momentum=momentum,
            beta=0.6,
            restart="none",
            theta=field.parameters,
            projection=projection,
        )
        runs.append([optimizer.step() and optimizer.theta.copy() for _ in range(6)])
        free(solver, *([projection] if projection is not None else []))
    for a, b in zip(*runs, strict=True):
        assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b)
    free(objective, gram, *matrices)


def test_natural_momentum_in_sample_space_takes_the_parameter_space_steps(comm):
    """Natural heavy-ball (β = 0.5, fixed step 0.5, no restart) with the sample-space solver,
    which re-projects the velocity from the rows, gives the Cholesky solver's iterates over 5
    steps (λ = 1e-3 both; relative 1e-8)."""
    pinn = few_rows(comm)
    runs = []
    for solver in (
        SampleSpaceSolver(pinn.gram, damping=1e-3),
        natinv.NaturalSolver(pinn.gram, "cholesky", damping=1e-3),
    ):
        optimizer = NaturalGradientDescent(
            pinn,
            solver,
            FixedStep(0.5),
            momentum="natural-heavy-ball",
            beta=0.5,
            restart="none",
            theta=pinn.field.parameters,
        )
        runs.append([optimizer.step() and optimizer.theta.copy() for _ in range(5)])
        free(solver)
    for x, y in zip(*runs, strict=True):
        assert np.linalg.norm(x - y) <= 1e-8 * np.linalg.norm(y)
    free(pinn)


def test_bad_spring_and_projection_settings_are_clear_errors(comm):
    _field, objective, l2 = nonlinear_problem(comm)
    with pytest.raises(CollectiveError, match="needs a diagonal metric"):
        SampleSpaceSolver(objective.gram)
    with pytest.raises(ValueError, match="needs λ > 0"):
        SampleSpaceSolver(objective.gram, damping=0.0)
    pinn = few_rows(comm)
    sample = SampleSpaceSolver(pinn.gram)
    without_rows = SimpleNamespace(field=pinn.field, gram=pinn.gram)  # (no row_residual)
    with pytest.raises(ValueError, match="needs an objective with row_residual"):
        NaturalGradientDescent(without_rows, sample)
    projection = natinv.NaturalSolver(pinn.gram)
    with pytest.raises(ValueError, match="has none to project"):
        NaturalGradientDescent(pinn, momentum="spring", beta=0.5, projection=projection)
    with pytest.raises(ValueError, match="needs direction='natural'"):
        NaturalGradientDescent(pinn, momentum="spring", direction="euclidean")
    free(sample, projection, pinn, objective, l2)
