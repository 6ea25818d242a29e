"""The least-squares natural direction (QR of J across the ranks, SVD of its factor) against
dense references, across rank counts, inside momentum, and on the penalised 2D Poisson PINN
where the normal equations stall; the shrinking damping policy."""

from __future__ import annotations

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import torch
from helpers import gather_rows
from test_momentum import free, nonlinear_problem
from test_pinn import reaction_diffusion

import natinv
from natinv.directions import LeastSquaresSolver, ShrinkingDamping
from natinv.objectives.pinn import PINN, Term, laplacian
from natinv.optim import FixedStep, NaturalGradientDescent
from natinv.parallel import CollectiveError
from natinv.quadrature import boundary_quadrature, cell_quadrature


def dense_rows(pinn):
    """``M^½J`` and ``M^½r`` on every rank (all rows, rank order)."""
    pinn.gram.update_jacobian()
    root = np.sqrt(pinn.weights)
    a = gather_rows(pinn.comm, root[:, None] * pinn.gram.jacobian_array())
    b = gather_rows(pinn.comm, root * pinn.row_residual())
    return a, b


@pytest.mark.parametrize(
    "widths, rows", [((1, 8, 8, 1), "fewer"), ((1, 6, 1), "more")], ids=["N<P", "N>P"]
)
def test_direction_equals_the_dense_damped_normal_equations(comm, widths, rows):
    """With λ = 1e-3 and nothing cut, ``argmin ‖J̃d − r̃‖² + λ‖d‖²`` from the rows equals the
    dense solve of ``(J̃ᵀJ̃ + λI) d = J̃ᵀr̃`` (relative 1e-10), with fewer rows than parameters
    and with more (each rank's rows reduced by its own QR first); :meth:`solve` on the
    gradient gives the same direction."""
    pinn = reaction_diffusion(comm, cells=10 if rows == "fewer" else 40, degree=2, widths=widths)
    assert (pinn.num_global < pinn.num_parameters) == (rows == "fewer")
    solver = LeastSquaresSolver(pinn.gram, 1e-3, cutoff=1e-15)
    a, b = dense_rows(pinn)
    reference = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ b)
    d = solver.solve_rows(pinn.row_residual())
    assert np.linalg.norm(d - reference) <= 1e-10 * np.linalg.norm(reference)
    _, gradient = pinn.value_and_gradient()
    assert np.linalg.norm(solver.solve(gradient) - reference) <= 1e-10 * np.linalg.norm(reference)
    assert solver.factorizations == 1  # one QR and SVD per Jacobian
    free(solver, pinn)


def test_cutoff_gives_the_truncated_pseudo_inverse(comm):
    """λ = 0, cut-off 1e-4: the direction is numpy's ``lstsq`` with ``rcond = 1e-4`` on the
    gathered rows (relative 1e-9), and the solver reports how many directions it kept."""
    pinn = reaction_diffusion(comm, cells=40, degree=2, widths=(1, 6, 1))
    solver = LeastSquaresSolver(pinn.gram, 0.0, cutoff=1e-4)
    a, b = dense_rows(pinn)
    reference = np.linalg.lstsq(a, b, rcond=1e-4)[0]
    d = solver.solve_rows(pinn.row_residual())
    assert np.linalg.norm(d - reference) <= 1e-9 * np.linalg.norm(reference)
    sigma = np.linalg.svd(a, compute_uv=False)
    assert solver.info["rank"] == int(np.sum(sigma > 1e-4 * sigma[0]))
    free(solver, pinn)


def test_same_direction_on_one_and_two_ranks(several_ranks, comm):
    """The rows split over the ranks (TSQR) or all on one: the same direction (relative
    1e-10), the same on every rank."""
    directions = []
    for c in (comm, MPI.COMM_SELF):
        pinn = reaction_diffusion(c, cells=40, degree=2, widths=(1, 6, 1))
        solver = LeastSquaresSolver(pinn.gram, 1e-6)
        directions.append(solver.solve_rows(pinn.row_residual()))
        free(solver, pinn)
    assert np.linalg.norm(directions[0] - directions[1]) <= 1e-10 * np.linalg.norm(directions[1])
    gathered = comm.allgather(directions[0])
    assert all(np.array_equal(g, gathered[0]) for g in gathered)


def test_natural_momentum_reprojects_from_the_rows(comm):
    """Natural heavy-ball (β = 0.5, fixed step 0.5, no restart) with the least-squares solver,
    which re-projects the velocity from its rows, takes the Cholesky solver's iterates (the
    same λ = 1e-4, nothing cut; relative 1e-8 over 5 steps), and the momentum acts."""
    runs = []
    for name, beta in (("least-squares", 0.5), ("cholesky", 0.5), ("least-squares", 0.0)):
        pinn = reaction_diffusion(comm, cells=40, degree=2, widths=(1, 6, 1))
        if name == "least-squares":
            solver = LeastSquaresSolver(pinn.gram, 1e-4, cutoff=1e-15)
        else:
            solver = natinv.NaturalSolver(pinn.gram, "cholesky", damping=1e-4)
        optimizer = NaturalGradientDescent(
            pinn,
            solver,
            FixedStep(0.5),
            momentum="natural-heavy-ball",
            beta=beta,
            restart="none",
            theta=pinn.field.parameters,
        )
        runs.append([optimizer.step() and optimizer.theta.copy() for _ in range(5)])
        free(solver, pinn)
    for x, y in zip(runs[0], runs[1], strict=True):
        assert np.linalg.norm(x - y) <= 1e-8 * np.linalg.norm(y)
    assert np.linalg.norm(runs[0][-1] - runs[2][-1]) > 1e-3 * np.linalg.norm(runs[2][-1])


def penalised_poisson(comm, seed=0):
    """ENGD's 2D Poisson problem, boundary values penalised, reduced: a [2, 32, 1] network on
    an 8 × 8 mesh (128 interior and 96 boundary points)."""
    mesh = dolfinx.mesh.create_unit_square(comm, 8, 8)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 32, 1], seed=seed))

    def residual(u, x):
        return -laplacian(u, x) - 2 * np.pi**2 * torch.sin(np.pi * x[0]) * torch.sin(np.pi * x[1])

    terms = [
        Term(cell_quadrature(mesh, 1), residual),
        Term(boundary_quadrature(mesh, 3), lambda u, x: u(x), 0.25),
    ]
    return PINN(field, terms), cell_quadrature(mesh, 6)


def exact(x):
    return np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_penalised_poisson_reaches_what_the_normal_equations_cannot(comm, seed):
    """Penalised boundary values, plain ENGD with the log-grid line search, 300 steps: the
    least-squares direction (shrinking damping from 1e-10) ends at a loss at least 10× below
    that of Cholesky of G + 1e-10 I (measured 150–18000× over seeds 0–3, 1 and 2 ranks) and at
    a relative L2 error below 5e-6 (measured 7e-8 – 3.7e-7; Cholesky 4e-7 – 3e-5)."""
    results = []
    for name in ("least-squares", "cholesky"):
        pinn, check = penalised_poisson(comm, seed)
        if name == "least-squares":
            solver = LeastSquaresSolver(pinn.gram)
        else:
            solver = natinv.NaturalSolver(pinn.gram, "cholesky", damping=1e-10)
        optimizer = NaturalGradientDescent(pinn, solver)
        for _ in range(300):
            optimizer.step()
        error = pinn.l2_error(exact, check, optimizer.theta, relative=True)
        results.append((pinn.value(optimizer.theta), error))
        free(solver, pinn)
    (loss, error), (cholesky_loss, _) = results
    assert loss < cholesky_loss / 10, results
    assert error < 5e-6, results


def test_shrinking_damping_vanishes_with_full_steps_and_never_exceeds_its_start():
    policy = ShrinkingDamping(1e-10, relative=True)
    policy.calibrate(4.0)
    assert policy.value == pytest.approx(4e-10) and policy.calibrated
    policy.calibrate(100.0)  # once only
    assert policy.value == pytest.approx(4e-10)
    for _ in range(3):
        policy.update(1.0, 1.0, step=1.0)
    assert policy.value == pytest.approx(4e-13)
    policy.update(1.0, 1.0, step=0.25)  # a shortened step doubles λ
    assert policy.value == pytest.approx(8e-13)
    for _ in range(20):
        policy.update(0.0, 1.0, step=0.0)
    assert policy.value == pytest.approx(4e-10)  # capped at λ₀
    other = ShrinkingDamping()
    other.load_state_dict(policy.state_dict())
    assert (other.value, other.ceiling, other.calibrated) == (
        policy.value,
        policy.ceiling,
        True,
    )
    with pytest.raises(ValueError, match="shrink"):
        ShrinkingDamping(1e-10, shrink=1.0)
    with pytest.raises(ValueError, match="initial"):
        ShrinkingDamping(0.0)


def test_bad_least_squares_settings_are_clear_errors(comm):
    _field, objective, l2 = nonlinear_problem(comm)
    with pytest.raises(CollectiveError, match="least-squares solver needs a diagonal metric"):
        LeastSquaresSolver(objective.gram)
    pinn = reaction_diffusion(comm, cells=10, degree=2)
    for cutoff in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="singular-value cutoff"):
            LeastSquaresSolver(pinn.gram, cutoff=cutoff)
    solver = LeastSquaresSolver(pinn.gram)
    with pytest.raises(CollectiveError, match="row vector has"):
        solver.solve_rows(np.ones(pinn.num_owned + 1))
    with pytest.raises(CollectiveError, match="gradient has length"):
        solver.solve(np.ones(3))
    free(solver, pinn, objective, l2)
