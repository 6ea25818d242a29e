"""FE-coupled inverse problems: models, observations, adjoint gradients, Gauss–Newton rows."""

from __future__ import annotations

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl
from helpers import central_differences, gather_rows, taylor_orders, unit_square

import natinv
from natinv import models
from natinv.objectives.inverse import (
    Experiment,
    InverseObjective,
    InverseProblem,
    ObservationRows,
)
from natinv.observations import averages, full_field, point_sensors
from natinv.parallel import CollectiveError

LEFT = 1


def left(x):
    return np.isclose(x[0], 0.0)


def sensor_points(count=12, seed=3):
    return 0.05 + 0.9 * np.random.default_rng(seed).random((count, 2))


def build(comm, kind, observation, n=6, regularization=("h1", 1e-3), options=None):
    """One experiment of a built-in model on the unit square, clamped on the left edge, with a
    load that makes the state nonzero, and one observation kind with made-up data; ``options``:
    the model's PETSc options."""
    extra = {"petsc_options": options} if options else {}
    mesh = unit_square(comm, n)
    parameter_space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    m = dolfinx.fem.Function(parameter_space)
    m.interpolate(lambda x: 1.0 + 0.5 * x[0] + 0.3 * np.sin(3 * x[1]))
    x = ufl.SpatialCoordinate(mesh)
    if kind == "elasticity":
        space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (2,)))
        bcs = [models.dirichlet(space, 0.0, left)]
        model = models.elasticity(space, m, f=ufl.as_vector([0.0, -1.0]), bcs=bcs, **extra)
    else:
        space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
        bcs = [models.dirichlet(space, 0.0, left)]
        if kind == "diffusion":
            model = models.diffusion(space, m, f=1 + x[1], bcs=bcs, **extra)
        elif kind == "source":
            model = models.source(space, m, kappa=2.0, bcs=bcs, **extra)
        elif kind == "reaction":
            model = models.reaction(space, m, diffusion=0.5, f=1 + x[1], bcs=bcs, **extra)
        else:
            model = models.nonlinear_diffusion(space, m, f=1 + x[1], bcs=bcs, **extra)
    bs = space.dofmap.index_map_bs
    if observation == "points":
        points = sensor_points()
        values = np.linspace(0.0, 0.1, points.shape[0] * bs).reshape(-1, bs)
        obs = point_sensors(space, points, values if bs > 1 else values[:, 0], sigma=0.05)
    elif observation == "averages":
        fdim = mesh.topology.dim - 1
        facets = dolfinx.mesh.locate_entities_boundary(mesh, fdim, lambda x: np.isclose(x[0], 1))
        tags = dolfinx.mesh.meshtags(mesh, fdim, facets, np.full(facets.size, 2, dtype=np.int32))
        measures = [ufl.dx(domain=mesh), ufl.ds(domain=mesh, subdomain_data=tags, subdomain_id=2)]
        obs = averages(space, measures, [0.02, 0.05], sigma=[0.01, 0.02])
    else:
        data = dolfinx.fem.Function(space)
        data.interpolate(lambda x: 0.05 * np.tile(x[0] * x[1], (bs, 1)) if bs > 1 else 0.05 * x[0])
        obs = full_field(space, data, sigma=0.1)
    problem = InverseProblem([Experiment(model, [obs])], regularization=regularization)
    return problem, m


CASES = [
    (kind, observation)
    for kind in ("diffusion", "source", "elasticity", "nonlinear", "reaction")
    for observation in ("points", "averages", "full")
    if not (kind == "elasticity" and observation == "averages")
]


def free(problem):
    for experiment in problem.experiments:
        for obs in experiment.observations:
            obs.destroy()
        experiment.model.destroy()
    problem.destroy()


@pytest.mark.parametrize(("kind", "observation"), CASES)
def test_adjoint_gradient_passes_the_taylor_test(comm, kind, observation):
    """|L(m + hv) − L(m) − h ∇L·v| decays like h² (observed order ≥ 1.9) for every built-in
    model and observation kind, with an H1 Tikhonov term."""
    problem, m = build(comm, kind, observation)
    m0 = m.x.array[: problem.num_owned].copy()
    value, gradient = problem.value_and_gradient(m0)
    v = np.random.default_rng(comm.rank).standard_normal(m0.size) * 0.5
    slope = comm.allreduce(float(gradient @ v))
    hs = [1e-2 / 2**i for i in range(4)]
    orders = taylor_orders(problem.value, m0, value, slope, v, hs)
    assert np.all(orders >= 1.9), orders
    assert abs(slope) > 1e-8  # the gradient is not trivially zero
    free(problem)


def nn_problem(comm, widths=(2, 4, 1)):
    """Diffusion with κ = exp(N(x)) and 12 point sensors."""
    problem, m = build(comm, "diffusion", "points", regularization=None)
    field = natinv.NeuralField(m.function_space, natinv.mlp(widths, seed=5), "exp")
    return InverseObjective(field, problem), problem


def test_neural_field_gradient_passes_the_taylor_test(comm):
    objective, problem = nn_problem(comm)
    theta = objective.field.parameters
    value, gradient = objective.value_and_gradient(theta)
    v = np.random.default_rng(0).standard_normal(theta.size)
    hs = [1e-2 / 2**i for i in range(4)]
    orders = taylor_orders(objective.value, theta, value, gradient @ v, v, hs)
    assert np.all(orders >= 1.9), orders
    objective.destroy()
    free(problem)


def test_gauss_newton_rows_equal_finite_difference_sensitivities(comm):
    """The tangent-solve Jacobian B S J equals central differences of the predicted sensor
    values (relative 1e-6), and the Gram equals (BSJ)ᵀ W (BSJ) built from them (1e-6)."""
    objective, problem = nn_problem(comm)
    gram = objective.gauss_newton()
    rows = gram.rows
    theta = objective.field.parameters
    gram.assemble(theta)
    jac = gather_rows(comm, rows.jacobian(theta))
    reference = gather_rows(comm, central_differences(rows.values, theta))
    assert np.abs(jac - reference).max() <= 1e-6 * np.abs(reference).max()
    weights = 1.0 / 0.05**2
    assert np.allclose(gram.dense(), weights * reference.T @ reference, rtol=1e-6, atol=1e-8)
    gram.destroy()
    gram.metric.destroy()
    objective.destroy()
    free(problem)


@pytest.mark.parametrize(
    ("kind", "observation"),
    [c for c in CASES if c[1] != "full"],
    ids=["-".join(c) for c in CASES if c[1] != "full"],
)
def test_adjoint_and_tangent_jacobians_agree(comm, kind, observation):
    """B S J by one transposed solve per observation row equals B S J by one tangent solve
    per parameter (relative 1e-12), for every model (the nonlinear one through its Newton
    Jacobian) and point or averaged observations; "auto" picks the one with fewer solves."""
    problem, m = build(comm, kind, observation, regularization=None)
    field = natinv.NeuralField(m.function_space, natinv.mlp((2, 5, 1), seed=2), "exp")
    theta = field.parameters
    jacobians = {}
    for method in ("tangent", "adjoint"):
        rows = ObservationRows(field, problem, method)
        jacobians[method] = gather_rows(comm, rows.jacobian(theta))
    scale = np.abs(jacobians["tangent"]).max()
    assert scale > 0
    assert np.abs(jacobians["adjoint"] - jacobians["tangent"]).max() <= 1e-12 * scale
    rows = ObservationRows(field, problem)
    assert rows.method == ("adjoint" if rows.num_global < field.num_parameters else "tangent")
    free(problem)


@pytest.mark.parametrize("observation", ["points", "full"])
def test_matrix_free_gauss_newton_direction_equals_the_dense_one(comm, observation):
    """The matrix-free Gauss–Newton operator (products by one tangent and one adjoint solve)
    with CG to 1e-13 gives the direction of the assembled Gram's Cholesky solve (relative
    1e-8), and its rows products B S J p and (BSJ)ᵀ W w equal the assembled J's (1e-10): point
    sensors (adjoint-row Jacobian) and a full field (tangent-column Jacobian)."""
    from natinv.directions import FixedDamping, GaussNewtonCG

    problem, m = build(comm, "diffusion", observation, regularization=None)
    field = natinv.NeuralField(m.function_space, natinv.mlp((2, 6, 1), seed=5), "exp")
    objective = InverseObjective(field, problem)
    theta = field.parameters
    _, gradient = objective.value_and_gradient(theta)
    dense = objective.gauss_newton()
    dense.assemble(theta)
    operator = objective.gauss_newton_operator()
    operator.update_jacobian(theta)
    damping = 1e-3 * float(dense.diagonal().max())
    reference = natinv.NaturalSolver(dense, "cholesky", damping=damping)
    exact = GaussNewtonCG(rtol=1e-13, max_it=10_000, forcing="fixed", warm_start=False)
    free_solver = natinv.NaturalSolver(operator, exact, FixedDamping(damping))
    expected, direction = reference.solve(gradient, assemble=False), free_solver.solve(gradient)
    assert np.linalg.norm(direction - expected) <= 1e-8 * np.linalg.norm(expected)
    p = np.random.default_rng(3).standard_normal(theta.size)
    rows = dense.apply(p)
    scale = max(float(np.abs(gather_rows(comm, rows)).max()), 1e-300)
    assert np.abs(gather_rows(comm, operator.apply(p) - rows)).max() <= 1e-10 * scale
    pulled = dense.pull_back(rows)
    assert np.abs(operator.pull_back(rows) - pulled).max() <= 1e-10 * np.abs(pulled).max()
    for obj in (reference, free_solver, operator, dense, dense.metric, dense.rows, objective):
        obj.destroy()
    free(problem)


def test_sample_space_direction_of_an_inverse_objective_equals_the_cholesky_one(comm):
    """With fewer sensors than parameters, (BSJ)ᵀ W ρ from the row residual is the adjoint
    gradient (1e-10), and the sample-space direction J̃ᵀ(J̃J̃ᵀ + λI)⁻¹W^½ρ with relative
    Levenberg–Marquardt damping equals the Cholesky one of G + λI (1e-8)."""
    from natinv.directions import LevenbergMarquardt, SampleSpaceSolver

    objective, problem = nn_problem(comm, widths=(2, 8, 1))
    theta = objective.field.parameters
    _, gradient = objective.value_and_gradient(theta)
    gram = objective.gauss_newton()
    gram.assemble(theta)
    assert gram.rows.num_global < gram.num_parameters
    rho = objective.row_residual(theta)
    assert np.abs(gram.pull_back(rho) - gradient).max() <= 1e-10 * np.abs(gradient).max()
    sample = SampleSpaceSolver(gram, LevenbergMarquardt(1e-3, relative=True))
    dense = natinv.NaturalSolver(gram, "lm", damping=1e-3)
    a, b = sample.solve_rows(rho), dense.solve(gradient, assemble=False)
    assert abs(sample.damping - dense.damping) <= 1e-12 * dense.damping  # λ₀ = 1e-3 max diag G
    assert np.linalg.norm(a - b) <= 1e-8 * np.linalg.norm(b)
    for obj in (sample, dense, gram, gram.metric, gram.rows, objective):
        obj.destroy()
    free(problem)


def test_kept_operators_follow_the_parameter(comm):
    """The rows object keeps Bᵀ, the field Jacobian's matrix and the model keeps ∂F/∂m's
    sparsity across calls: rows at θ, then at another θ (they differ), then at θ again equal
    the first (1e-12 relative), for the adjoint and the tangent method."""
    problem, m = build(comm, "diffusion", "points", regularization=None)  # ∂F/∂m depends on u
    field = natinv.NeuralField(m.function_space, natinv.mlp((2, 5, 1), seed=2), "exp")
    theta = field.parameters
    other = theta + 0.3 * np.random.default_rng(1).standard_normal(theta.size)
    for method in ("tangent", "adjoint"):
        kept = ObservationRows(field, problem, method)
        reference = gather_rows(comm, kept.jacobian(theta)).copy()
        moved = gather_rows(comm, kept.jacobian(other))
        again = gather_rows(comm, kept.jacobian(theta))
        assert np.abs(moved - reference).max() > 1e-3 * np.abs(reference).max()
        assert np.abs(again - reference).max() <= 1e-12 * np.abs(reference).max()
        kept.destroy()
    free(problem)


@pytest.mark.parametrize("kind", ["diffusion", "nonlinear"])
def test_a_gradient_at_the_last_solved_parameter_solves_no_state_again(comm, kind):
    """A line search ends on the accepted trial, whose state was solved: the gradient there
    (value_and_gradient after value at the same m) solves no state again, and equals the one
    of a fresh solve (bitwise for a linear model; a Newton solve restarts from another state:
    to its tolerance, 1e-10); another m, or a state set from outside (restore), solves anew."""
    problem, m = build(comm, kind, "points", regularization=None)
    model = problem.experiments[0].model
    values = np.array(m.x.array[: m.function_space.dofmap.index_map.size_local])
    problem.value(values)
    solves = model.solves
    value, gradient = problem.value_and_gradient(values)
    assert model.solves == solves
    problem.value(1.1 * values)
    assert model.solves == solves + 1
    model.restore(np.array(model.u.x.array))
    fresh_value, fresh_gradient = problem.value_and_gradient(values)
    assert model.solves == solves + 2
    if kind == "nonlinear":
        assert abs(fresh_value - value) <= 1e-9 * abs(value)
        assert np.abs(fresh_gradient - gradient).max() <= 1e-9 * np.abs(gradient).max()
    else:
        assert fresh_value == value
        assert np.array_equal(fresh_gradient, gradient)
    free(problem)


@pytest.mark.parametrize("kind", ["diffusion", "source", "elasticity"])
def test_conjugate_gradients_with_multigrid_give_the_factorisation_s_answers(comm, kind):
    """CG with algebraic multigrid (models.ITERATIVE_OPTIONS, elasticity with its rigid-body
    modes) instead of LU: the misfit, the adjoint gradient and the Gauss–Newton rows (adjoint
    and tangent blocks, solved column by column) equal the factorisation's to 1e-8 relative
    (measured at most 1.8e-10 on 1 to 3 ranks and 1 or 2 BLAS threads)
    (each solve to a relative preconditioned residual of 1e-10), and the gradient passes the
    Taylor test."""
    results = []
    for options in (None, models.ITERATIVE_OPTIONS):
        problem, m = build(comm, kind, "points", n=8, regularization=None, options=options)
        model = problem.experiments[0].model
        assert model.ksp.getType() == ("cg" if options else "preonly")
        field = natinv.NeuralField(m.function_space, natinv.mlp((2, 5, 1), seed=2), "exp")
        theta = field.parameters
        objective = InverseObjective(field, problem)
        value, gradient = objective.value_and_gradient(theta)
        rows = []
        for method in ("adjoint", "tangent"):
            kept = ObservationRows(field, problem, method)
            rows.append(gather_rows(comm, kept.jacobian(theta)).copy())
            kept.destroy()
        if options:
            direction = np.random.default_rng(5).standard_normal(theta.size)
            slope = float(gradient @ direction)
            orders = taylor_orders(objective.value, theta, value, slope, direction, [1e-2, 5e-3])
            assert orders.min() >= 1.9, orders
            assert model.ksp.getIterationNumber() > 1
        results.append((value, gradient, rows))
        free(problem)
    (value, gradient, rows), (cg_value, cg_gradient, cg_rows) = results
    assert abs(cg_value - value) <= 1e-8 * abs(value)
    assert np.abs(cg_gradient - gradient).max() <= 1e-8 * np.abs(gradient).max()
    for cg, lu in zip(cg_rows, rows, strict=True):
        assert np.abs(cg - lu).max() <= 1e-8 * np.abs(lu).max()


def test_full_field_rows_use_tangent_solves(comm):
    problem, m = build(comm, "diffusion", "full", regularization=None)
    field = natinv.NeuralField(m.function_space, natinv.mlp((2, 3, 1), seed=2), "exp")
    assert ObservationRows(field, problem).method == "tangent"
    with pytest.raises(ValueError, match="the adjoint Jacobian needs observation operators"):
        ObservationRows(field, problem, "adjoint")
    free(problem)


def test_one_and_two_ranks_give_the_same_misfit_and_gradient(several_ranks, comm):
    """The objective and its θ-gradient on COMM_WORLD equal those on COMM_SELF (1e-10)."""
    results = []
    for c in (comm, MPI.COMM_SELF):
        objective, problem = nn_problem(c)
        results.append(objective.value_and_gradient())
        objective.destroy()
        free(problem)
    (v1, g1), (v2, g2) = results
    assert abs(v1 - v2) <= 1e-10 * abs(v2)
    assert np.linalg.norm(g1 - g2) <= 1e-10 * np.linalg.norm(g2)


def test_natural_gradient_steps_lower_the_misfit(comm):
    """Ten Gauss–Newton natural steps on the NN field reduce the sensor misfit by 10×."""
    objective, problem = nn_problem(comm, widths=(2, 6, 1))
    gram = objective.gauss_newton()
    solver = natinv.NaturalSolver(gram, "lm", damping=1e-3)
    start = objective.value()
    optimizer = natinv.optim.NaturalGradientDescent(objective, solver)
    optimizer.run(10)
    assert optimizer.history[-1]["loss"] < 0.1 * start
    solver.destroy()
    gram.destroy()
    gram.metric.destroy()
    objective.destroy()
    free(problem)


def test_sensors_outside_the_mesh_are_listed(comm):
    mesh = unit_square(comm, 4)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    points = np.array([[0.5, 0.5], [1.5, 0.2], [0.1, -0.3]])
    with pytest.raises(CollectiveError, match=r"2 point\(s\) lie outside the mesh: #1 at \[1.5"):
        point_sensors(space, points, [0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("values", "sigma", "message"),
    [
        ([0.0, np.nan], 1.0, "the data"),
        ([0.0], 1.0, r"values have shape \(1,\), expected \(2,\)"),
        ([0.0, 0.0], [1.0, -1.0], "σ must be finite and > 0; not at entries \\[1\\]"),
    ],
)
def test_bad_sensor_data_is_one_clear_error(comm, values, sigma, message):
    mesh = unit_square(comm, 4)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    with pytest.raises(CollectiveError, match=message):
        point_sensors(space, [[0.2, 0.2], [0.7, 0.4]], values, sigma)


def test_a_non_positive_coefficient_stops_the_solve_on_every_rank(comm):
    problem, m = build(comm, "diffusion", "points")
    bad = m.x.array[: problem.num_owned].copy()
    bad -= 2.0  # now negative on part of the domain
    with pytest.raises(CollectiveError, match=r"diffusion coefficient must be > 0, but is ≤ 0"):
        problem.value(bad)
    free(problem)


def test_a_diverging_newton_solve_is_one_clear_error(comm, petsc_options):
    """Newton limited to one iteration cannot solve the nonlinear model: the SNES reason is
    reported, on every rank."""
    petsc_options["capped_snes_max_it"] = 1
    mesh = unit_square(comm, 4)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    m = dolfinx.fem.Function(space)
    m.x.array[:] = 1.0
    model = models.nonlinear_diffusion(space, m, f=50.0, options_prefix="capped_")
    with pytest.raises(CollectiveError, match="Newton did not converge"):
        model.solve()
    model.destroy()


def test_gauss_newton_hessian_product_is_the_observed_tangent_norm(comm):
    """vᵀ H w = wᵀ H v and vᵀ H v = ‖B S v‖²_W + vᵀRv (relative 1e-10), H by one tangent and
    one adjoint solve per product."""
    problem, m = build(comm, "diffusion", "points")
    model, obs = problem.experiments[0].model, problem.experiments[0].observations[0]
    problem.value(m.x.array[: problem.num_owned])
    rng = np.random.default_rng(comm.rank)
    v, w, hv, hw = (problem.R.createVecRight() for _ in range(4))
    v.array[:] = rng.standard_normal(problem.num_owned)
    w.array[:] = rng.standard_normal(problem.num_owned)
    problem.gauss_newton_product(v, hv)
    problem.gauss_newton_product(w, hw)
    np.testing.assert_allclose(w.dot(hv), v.dot(hw), rtol=1e-10)
    du = model.A.createVecRight()
    model.tangent_vector(v, du)
    r = obs.predict(du)
    observed = comm.allreduce(float(np.sum(r * r))) / 0.05**2
    rv = problem.R.createVecLeft()
    problem.R.mult(v, rv)
    np.testing.assert_allclose(v.dot(hv), observed + v.dot(rv), rtol=1e-10)
    for obj in (v, w, hv, hw, du, rv):
        obj.destroy()
    free(problem)


@pytest.mark.parametrize("method", ["nls", "lmvm"])
def test_tao_baseline_drives_the_gradient_down(comm, method):
    """The FE-field baseline (one unknown per dof) reduces ‖∇L‖ by 1e-6 on a small diffusion
    inversion with H1 regularisation."""
    from natinv.optim.tao import FieldBaseline

    problem, m = build(comm, "diffusion", "full", regularization=("h1", 1e-4))
    start = m.x.array[: problem.num_owned].copy()
    _, g0 = problem.value_and_gradient(start)
    baseline = FieldBaseline(problem, method)
    solution = baseline.run(start, 200, gttol=1e-8)
    _, g1 = problem.value_and_gradient(solution)
    norm = np.sqrt(comm.allreduce(float(g1 @ g1)) / comm.allreduce(float(g0 @ g0)))
    assert norm <= 1e-6, (norm, baseline.reason)
    baseline.destroy()
    free(problem)


def test_tao_hessian_takes_the_shift_nls_adds(comm):
    """TAO's NLS shifts the Hessian (MatShift) when CG meets negative curvature: the shell
    matrix applies H + σI (1e-12), and a new Hessian starts unshifted (the elasticity case
    stopped with 'MatShift_Python: method shift()' before)."""
    from natinv.optim.tao import FieldBaseline

    problem, _ = build(comm, "diffusion", "points", regularization=("h1", 1e-3))
    baseline = FieldBaseline(problem, "nls")
    problem.value(np.ones(problem.num_owned))
    shell = baseline._shell
    x, plain, shifted = shell.createVecRight(), shell.createVecLeft(), shell.createVecLeft()
    x.array[:] = np.random.default_rng(4).standard_normal(x.getLocalSize())
    shell.mult(x, plain)
    shell.shift(0.25)
    shell.mult(x, shifted)
    expected = plain.copy()
    expected.axpy(0.25, x)
    expected.axpy(-1.0, shifted)
    assert expected.norm() <= 1e-12 * plain.norm()
    baseline.x.array[:] = 1.0
    baseline._hessian(baseline.tao, baseline.x, shell, shell)
    shell.mult(x, shifted)
    shifted.axpy(-1.0, plain)
    assert shifted.norm() <= 1e-12 * plain.norm()
    for obj in (x, plain, shifted, expected):
        obj.destroy()
    baseline.destroy()
    free(problem)


def test_a_few_scalars_as_the_parameter(comm):
    """κ = a + b·x with (a, b) on a real space: the adjoint gradient passes the Taylor test
    (order ≥ 1.9), and TAO recovers (a, b) = (1, 2) from noise-free full-field data (1e-6)."""
    import basix.ufl

    from natinv.optim.tao import FieldBaseline

    mesh = unit_square(comm, 8)
    scalars = dolfinx.fem.functionspace(mesh, basix.ufl.real_element(mesh.basix_cell(), (2,)))
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    m = dolfinx.fem.Function(scalars)
    x = ufl.SpatialCoordinate(mesh)

    def residual(u, m, v):
        kappa = m[0] + m[1] * x[0]
        return kappa * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx - v * ufl.dx

    model = models.Model(space, m, residual, [models.dirichlet(space)])
    owned = scalars.dofmap.index_map.size_local * scalars.dofmap.index_map_bs
    truth = np.array([1.0, 2.0])[:owned]
    model.set_parameter(truth)
    data = dolfinx.fem.Function(space)
    data.x.array[:] = model.solve().x.array
    obs = full_field(space, data, sigma=1e-3)
    problem = InverseProblem([Experiment(model, [obs])])
    start = np.array([2.0, 0.5])[:owned]
    value, gradient = problem.value_and_gradient(start)
    v = np.array([0.3, -0.7])[:owned]
    slope = comm.allreduce(float(gradient @ v))
    orders = taylor_orders(problem.value, start, value, slope, v, (1e-2, 5e-3, 2.5e-3))
    assert np.all(orders >= 1.9), orders
    baseline = FieldBaseline(problem, "nls")
    solution = baseline.run(start, 50, gttol=1e-10)
    recovered = np.concatenate(comm.allgather(solution))
    np.testing.assert_allclose(recovered, [1.0, 2.0], atol=1e-6)
    baseline.destroy()
    obs.destroy()
    model.destroy()


def test_two_experiments_share_the_parameter(comm):
    """Two load cases (different sources) on one κ: the misfit is the sum of the single-case
    misfits (1e-12) and the summed adjoint gradient passes the Taylor test."""
    mesh = unit_square(comm, 6)
    w = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    v = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    m = dolfinx.fem.Function(w)
    m.interpolate(lambda x: 1.0 + 0.5 * x[0])
    x = ufl.SpatialCoordinate(mesh)
    points = sensor_points()
    experiments = []
    for k, f in enumerate((1.0 + x[1], ufl.sin(3 * x[0]))):
        model = models.diffusion(v, m, f=f, options_prefix=f"load{k}_")
        obs = point_sensors(v, points, np.full(points.shape[0], 0.01 * (k + 1)), sigma=0.05)
        experiments.append(Experiment(model, [obs], f"load {k}"))
    both = InverseProblem(experiments)
    singles = [InverseProblem([e]) for e in experiments]
    m0 = m.x.array[: both.num_owned].copy()
    np.testing.assert_allclose(both.value(m0), sum(p.value(m0) for p in singles), rtol=1e-12)
    value, gradient = both.value_and_gradient(m0)
    d = np.random.default_rng(comm.rank).standard_normal(m0.size) * 0.3
    slope = comm.allreduce(float(gradient @ d))
    orders = taylor_orders(both.value, m0, value, slope, d, (1e-2, 5e-3, 2.5e-3))
    assert np.all(orders >= 1.9), orders
    for p in singles:
        p.destroy()
    free(both)


def _loads(comm, shared: bool):  # type: ignore[no-untyped-def]
    """Four experiments on one κ that differ in their sources and Dirichlet values only, with
    the same sensors; the models share one operator when ``shared``."""
    mesh = unit_square(comm, 8)
    w = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    v = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    m = dolfinx.fem.Function(w)
    m.interpolate(lambda x: 1.0 + 0.5 * x[0] * x[1])
    x = ufl.SpatialCoordinate(mesh)
    points = sensor_points(20)
    experiments = []
    sources = (1.0 + x[1], ufl.sin(3 * x[0]), x[0] * x[1], 2.0)
    for k, f in enumerate(sources):
        bcs = [models.dirichlet(v, 0.1 * k)]
        model = models.diffusion(v, m, f=f, bcs=bcs, options_prefix=f"shared{int(shared)}{k}_")
        if shared and experiments:
            model.share_operator(experiments[0].model)
        obs = point_sensors(v, points, np.full(points.shape[0], 0.02 * (k + 1)), sigma=0.05)
        experiments.append(Experiment(model, [obs], f"load {k}"))
    return w, m, InverseProblem(experiments)


def test_experiments_with_one_operator_factorise_it_once(comm):
    """Four load cases (other sources and Dirichlet values, the same κ and sensors) sharing
    one operator: one factorisation per parameter instead of four, one block of transposed
    solves for the Gauss–Newton rows instead of four (the sensors are the same), and the
    misfit, its gradient and the rows equal those of four models of their own to 1e-12
    (relative); the summed gradient passes the Taylor test."""
    results = {}
    for shared in (False, True):
        w, m, problem = _loads(comm, shared)
        m0 = m.x.array[: problem.num_owned].copy()
        leader = problem.experiments[0].model
        before = sum(e.model.assemblies for e in problem.experiments)
        value, gradient = problem.value_and_gradient(m0)
        field = natinv.NeuralField(w, natinv.mlp([2, 6, 1], seed=1), transform="exp")
        problem.set_parameter(field.values())
        rows = ObservationRows(field, problem, method="adjoint")
        rows._solve(None)
        solves = sum(e.model.linear_solves for e in problem.experiments)
        jacobian = gather_rows(comm, rows.jacobian())
        blocks = sum(e.model.linear_solves for e in problem.experiments) - solves
        problem.value_and_gradient(m0 * 1.1)  # a second parameter
        after = sum(e.model.assemblies for e in problem.experiments)
        factorisations = leader.assemblies if shared else after - before
        results[shared] = (value, gather_rows(comm, gradient), jacobian, factorisations, blocks)
        if shared:
            d = np.random.default_rng(comm.rank).standard_normal(m0.size) * 0.3
            slope = comm.allreduce(float(gradient @ d))
            orders = taylor_orders(problem.value, m0, value, slope, d, (1e-2, 5e-3, 2.5e-3))
            assert np.all(orders >= 1.9), orders
        rows.destroy()
        free(problem)
    (v0, g0, j0, f0, b0), (v1, g1, j1, f1, b1) = results[False], results[True]
    assert (f0, f1) == (3 * 4, 3)  # (value, rows at k(θ), value at 1.1 m: three parameters)
    assert (b0, b1) == (4, 1)  # blocks of transposed solves for the rows: one per sensor set
    np.testing.assert_allclose(v1, v0, rtol=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=1e-12, atol=1e-12 * np.abs(g0).max())
    np.testing.assert_allclose(j1, j0, rtol=1e-12, atol=1e-12 * np.abs(j0).max())


def test_an_operator_is_shared_only_when_it_is_the_same(comm):
    """A model whose ∂F/∂u differs (another coefficient map, other Dirichlet dofs, another
    parameter Function) refuses to share the operator, naming why, on every rank."""
    mesh = unit_square(comm, 4)
    w = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    v = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    m, other = dolfinx.fem.Function(w), dolfinx.fem.Function(w)
    leader = models.diffusion(v, m)
    cases = [
        (models.diffusion(v, m, coefficient="exp"), "another operator"),
        (models.diffusion(v, m, bcs=[models.dirichlet(v, 0.0, left)]), "other Dirichlet dofs"),
        (models.diffusion(v, other), "another state space or parameter Function"),
    ]
    for model, message in cases:
        with pytest.raises(CollectiveError, match=message):
            model.share_operator(leader)
        model.destroy()
    leader.destroy()


def test_a_pure_neumann_model_is_refused_and_a_robin_term_makes_it_regular(comm):
    """−∇·(κ∇u) = 0 with a flux on the whole boundary and no Dirichlet dof is determined only
    up to a constant: refused with one message on every rank (it used to solve the singular
    system without a word), as is a Dirichlet condition on no dof. With a Robin term
    κ∂u/∂n + c (u − g) = 0 instead, the state is determined: with no source and g = 1 it is
    u = 1 (to 1e-10)."""
    mesh = unit_square(comm, 6)
    w = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    v = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    m = dolfinx.fem.Function(w)
    m.x.array[:] = 1.0
    with pytest.raises(ValueError, match=r"pure-Neumann problem"):
        models.diffusion(v, m, f=0.0, bcs=[], flux=1.0)
    with pytest.raises(ValueError, match=r"no Dirichlet condition and no Robin term"):
        models.diffusion(v, m, f=0.0, bcs=[models.dirichlet(v, 0.0, lambda x: x[0] > 2)])
    model = models.diffusion(v, m, f=0.0, bcs=[], robin=(1.0, 1.0))
    u = model.solve()
    assert np.max(np.abs(u.x.array - 1.0)) < 1e-10
    model.destroy()


def test_adjoints_reuse_a_round_off_symmetric_factorisation(comm):
    """With SuperLU_DIST (the solver on several ranks; forced here on any), whose transposed
    solve PETSc 3.25 gets wrong, the adjoint of a diffusion operator — symmetric only to
    round-off (‖A − Aᵀ‖∞ ≈ 2e-16‖A‖∞) — is solved with A's own factors, no second
    factorisation, and satisfies Aᵀλ = −g to 1e-10; an advection–diffusion operator still gets
    the factorisation of an explicit Aᵀ, and its adjoint satisfies Aᵀλ = −g too."""
    from petsc4py import PETSc

    import ufl

    mesh = unit_square(comm, 8)
    v = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    w = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    m = dolfinx.fem.Function(w)
    m.interpolate(lambda x: 1.0 + x[0] * x[1])
    options = {"pc_factor_mat_solver_type": "superlu_dist"}
    flow = dolfinx.fem.Constant(mesh, np.array([3.0, 1.0]))

    def advection(u, m, t):  # type: ignore[no-untyped-def]
        return (
            ufl.inner(m * ufl.grad(u), ufl.grad(t)) * ufl.dx
            + ufl.dot(flow, ufl.grad(u)) * t * ufl.dx
            - t * ufl.dx
        )

    symmetric = models.diffusion(v, m, f=1.0, petsc_options=options)
    nonsymmetric = models.Model(v, m, advection, [models.dirichlet(v)], petsc_options=options)
    for model, shared in ((symmetric, True), (nonsymmetric, False)):
        model.solve()
        g = model.A.createVecLeft()
        g.setRandom(PETSc.Random().create(comm))
        model.adjoint(g)
        assert model._op.transpose_state[1] is shared
        assert (model._op.transpose_ksp is None) is shared
        residual = model.A.createVecLeft()
        model.A.multTranspose(model.p.x.petsc_vec, residual)
        model._zero_bc_rows(g)  # (the adjoint's Dirichlet rows are homogeneous)
        residual.axpy(1.0, g)
        assert residual.norm() <= 1e-10 * g.norm()
        for obj in (g, residual):
            obj.destroy()
        model.destroy()


def test_tangent_and_adjoint_blocks_of_any_shape_on_one_superlu_factorisation(comm):
    """Elasticity (symmetric to round-off) with SuperLU_DIST: tangent blocks of 21, 7 and 5
    columns and adjoint blocks of 24 and 3, one after the other on the one factorisation they
    now share, equal the same blocks solved by MUMPS to 1e-10 (relative), on 1 and 2 ranks —
    PETSc 3.25's SuperLU_DIST block solve gives wrong columns or frees memory twice when a
    block's shape changes on the same factors, so the model refactorises then (counted)."""
    from petsc4py import PETSc

    mesh = unit_square(comm, 6)
    v = dolfinx.fem.functionspace(mesh, ("Lagrange", 2, (2,)))
    w = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    m = dolfinx.fem.Function(w)
    m.interpolate(lambda x: 1.0 + x[0])
    clamp = [models.dirichlet(v, where=lambda x: np.isclose(x[0], 0.0))]
    results = {}
    for solver in ("superlu_dist", "mumps"):
        model = models.elasticity(
            v, m, f=[0.0, -1.0], bcs=clamp, petsc_options={"pc_factor_mat_solver_type": solver}
        )
        model.solve()
        blocks = []
        rng = np.random.default_rng(7)  # (the same columns on every rank's rows: by seed)
        for kind, k in (
            ("tangent", 21),
            ("adjoint", 24),
            ("tangent", 7),
            ("tangent", 5),
            ("adjoint", 3),
        ):
            space = w if kind == "tangent" else v
            n = space.dofmap.index_map.size_local * space.dofmap.index_map_bs
            total = space.dofmap.index_map.size_global * space.dofmap.index_map_bs
            columns = PETSc.Mat().createDense(((n, total), (None, k)), comm=comm)
            columns.setUp()
            start = space.dofmap.index_map.local_range[0] * space.dofmap.index_map_bs
            values = rng.standard_normal((total, k))
            columns.getDenseArray()[:] = values[start : start + n]
            columns.assemble()
            out = model.tangent(columns) if kind == "tangent" else model.adjoint_block(columns)
            blocks.append(np.array(out.getDenseArray(readonly=True)))
            for obj in (columns, out):
                obj.destroy()
        results[solver] = (blocks, model.refactorisations)
        model.destroy()
    for got, reference in zip(results["superlu_dist"][0], results["mumps"][0], strict=True):
        scale = natinv.parallel.allreduce_max(comm, float(np.abs(reference).max()))
        worst = natinv.parallel.allreduce_max(comm, float(np.abs(got - reference).max()))
        assert worst <= 1e-10 * scale
    assert results["superlu_dist"][1] == 4 and results["mumps"][1] == 0
