"""Gram matrices G = JᵀMJ and the natural direction: dense references, serial vs distributed,
the projection property, rank deficiency, solver selection and bad input."""

from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import pytest
import torch
import ufl
from helpers import dense_matrix, gather_rows, unit_square

import natinv
from natinv.objectives import FieldFit
from natinv.optim import FixedStep, LogGridLineSearch, NaturalGradientDescent
from natinv.parallel import CollectiveError


def metric_for(name, space):
    if name == "l2":
        return natinv.l2(space)
    if name == "h1":
        return natinv.h1(space, length=0.3)
    # energy: a diffusion operator with a Dirichlet boundary, constrained rows on the diagonal
    mesh = space.mesh
    mesh.topology.create_connectivity(mesh.topology.dim - 1, mesh.topology.dim)
    facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    dofs = dolfinx.fem.locate_dofs_topological(space, mesh.topology.dim - 1, facets)
    zero = np.zeros(space.dofmap.index_map_bs)
    bc = dolfinx.fem.dirichletbc(zero if zero.size > 1 else 0.0, dofs, space)
    x = ufl.SpatialCoordinate(mesh)
    return natinv.energy(
        space,
        lambda w, z: (
            (1 + x[0]) * ufl.inner(ufl.grad(w), ufl.grad(z)) * ufl.dx + ufl.inner(w, z) * ufl.dx
        ),
        bcs=[bc],
    )


@pytest.mark.parametrize("metric", ["l2", "h1", "energy"])
@pytest.mark.parametrize("element", [("Lagrange", 2), ("Lagrange", 1, (2,))])
def test_gram_equals_the_dense_reference(comm, metric, element):
    """PETSc's Jᵀ(MJ) equals numpy's JᵀMJ from the gathered J and M (relative 1e-12)."""
    space = dolfinx.fem.functionspace(unit_square(comm), element)
    field = natinv.NeuralField(space, natinv.mlp([2, 8, 8, space.dofmap.index_map_bs]), "softplus")
    matrix = metric_for(metric, space)
    gram = natinv.Gram(field, matrix)
    gram.assemble()
    jac = gather_rows(comm, field.jacobian())
    reference = jac.T @ dense_matrix(matrix) @ jac
    dense = gram.dense()
    assert np.abs(dense - reference).max() <= 1e-12 * np.abs(reference).max()
    x = np.random.default_rng(0).standard_normal(field.num_parameters)
    np.testing.assert_allclose(gram.quadratic(x), x @ reference @ x, rtol=1e-12)
    np.testing.assert_allclose(gram.diagonal(), np.diag(reference), rtol=1e-12, atol=1e-15)
    gram.destroy()
    matrix.destroy()


def _fit_problem(comm, n=6):
    space = dolfinx.fem.functionspace(unit_square(comm, n), ("Lagrange", 2))
    field = natinv.NeuralField(space, natinv.mlp([2, 10, 10, 1], seed=1), "identity")
    matrix = natinv.h1(space, length=0.5)
    objective = FieldFit(field, lambda x: np.sin(3 * x[0]) * np.cos(2 * x[1]), matrix)
    return field, matrix, objective


@pytest.mark.parametrize(
    ("method", "tolerance"),
    [
        ("cholesky", 1e-10),
        ("cutoff", 1e-10),
        ("lm", 1e-10),
        # CG stops at a residual of 1e-10 relative, and the sums in its dot products run in another
        # order on two ranks: its directions agree to κ(G)·rtol, not to round-off.
        ("cg", 1e-6),
    ],
)
def test_distributed_result_equals_the_serial_one(several_ranks, comm, method, tolerance):
    """G, g and d on COMM_WORLD equal those on the same mesh on COMM_SELF (1e-10).

    The damping keeps cond(G + λI) near 1e4, so round-off in d stays far below the tolerance."""
    results = []
    for c in (comm, MPI.COMM_SELF):
        _field, matrix, objective = _fit_problem(c)
        value, gradient = objective.value_and_gradient()
        gram = objective.gram
        gram.assemble()
        solver = natinv.NaturalSolver(gram, method, damping=1e-4, cutoff=1e-9)
        direction = solver.solve(gradient)
        results.append((value, gradient, gram.dense(), direction))
        solver.destroy()
        objective.destroy()
        matrix.destroy()
    (v1, g1, G1, d1), (v2, g2, G2, d2) = results
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    assert np.abs(g1 - g2).max() <= 1e-10 * np.abs(g2).max()
    assert np.abs(G1 - G2).max() <= 1e-10 * np.abs(G2).max()
    assert np.abs(d1 - d2).max() <= tolerance * np.abs(d2).max()


class RandomFeatures(torch.nn.Module):
    """k(x) = c · tanh(Wx + b) + c₀ with W, b frozen: a field linear in its parameters c, c₀."""

    def __init__(self, features: int = 8, seed: int = 5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", 3 * torch.randn(2, features, generator=g, dtype=torch.float64))
        self.register_buffer("b", torch.randn(features, generator=g, dtype=torch.float64))
        self.out = torch.nn.Linear(features, 1, dtype=torch.float64)

    def forward(self, x):
        return self.out(torch.tanh(x @ self.w + self.b))


@pytest.mark.parametrize("metric", ["l2", "h1"])
def test_one_natural_step_lands_on_the_metric_projection(comm, metric):
    """For k linear in θ, θ − G⁻¹∇L (η = 1) gives k = the M-orthogonal projection of f onto
    span(J) (relative 1e-10; the features are chosen so that cond(G) ≈ 1e5), whatever the start."""
    space = dolfinx.fem.functionspace(unit_square(comm, 8), ("Lagrange", 1))
    field = natinv.NeuralField(space, RandomFeatures())
    matrix = metric_for(metric, space)
    objective = FieldFit(field, lambda x: np.exp(x[0]) * np.sin(4 * x[1]), matrix)
    optimizer = NaturalGradientDescent(
        objective, natinv.NaturalSolver(objective.gram, "cholesky"), step=FixedStep(1.0)
    )
    optimizer.step()
    jac = gather_rows(comm, field.jacobian())
    mass = dense_matrix(matrix)
    f = gather_rows(comm, objective.target)
    coefficients = np.linalg.solve(jac.T @ mass @ jac, jac.T @ mass @ f)
    projection = jac @ coefficients
    fitted = gather_rows(comm, field.values(optimizer.theta))
    assert np.linalg.norm(fitted - projection) <= 1e-10 * np.linalg.norm(projection)
    optimizer.solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_all_solvers_agree_on_a_well_conditioned_gram(comm):
    _field, matrix, objective = _fit_problem(comm)
    _, gradient = objective.value_and_gradient()
    gram = objective.gram
    gram.assemble()
    directions = {}
    for method in ("cholesky", "cg", "cutoff", "lm"):
        solver = natinv.NaturalSolver(gram, method, damping=1e-3, cutoff=1e-15)
        directions[method] = solver.solve(gradient)
        solver.destroy()
    reference = np.linalg.solve(gram.dense() + 1e-3 * np.eye(gradient.size), gradient)
    for method, d in directions.items():
        assert np.linalg.norm(d - reference) <= 1e-8 * np.linalg.norm(reference), method
    objective.destroy()
    matrix.destroy()


@pytest.mark.parametrize("mat_type", ["auto", "scalapack", "aij", "dense"])
def test_every_cholesky_backend_gives_the_same_direction(comm, mat_type):
    """LAPACK (one rank), ScaLAPACK and MUMPS on AIJ solve (G + λI) d = g alike (1e-10); the
    LAPACK backend on several ranks is refused by name."""
    _field, matrix, objective = _fit_problem(comm)
    _, gradient = objective.value_and_gradient()
    gram = objective.gram
    gram.assemble()
    if mat_type == "dense" and comm.size > 1:
        with pytest.raises(ValueError, match="one rank only"):
            natinv.NaturalSolver(gram, "cholesky", damping=1e-4, mat_type=mat_type)
    else:
        solver = natinv.NaturalSolver(gram, "cholesky", damping=1e-4, mat_type=mat_type)
        d = solver.solve(gradient, assemble=False)
        reference = np.linalg.solve(gram.dense() + 1e-4 * np.eye(gradient.size), gradient)
        assert np.linalg.norm(d - reference) <= 1e-10 * np.linalg.norm(reference)
        solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_matrix_free_operator_applies_the_gram(comm):
    field, matrix, objective = _fit_problem(comm)
    gram = objective.gram
    gram.assemble()
    operator = natinv.GramOperator(gram, damping=0.25)
    shell = operator.matrix()
    x, y = shell.createVecs()
    v = np.random.default_rng(2).standard_normal(field.num_parameters)
    lo, hi = x.getOwnershipRange()
    x.array[:] = v[lo:hi]
    shell.mult(x, y)
    expected = gram.dense() @ v + 0.25 * v
    np.testing.assert_allclose(natinv.parallel.allgather_vec(y), expected, rtol=1e-11)
    for obj in (x, y, shell):
        obj.destroy()
    operator.free()
    objective.destroy()
    matrix.destroy()


def duplicate_neuron_field(comm):
    """An MLP whose hidden neurons 0 and 1 are identical: G has a null direction."""
    space = dolfinx.fem.functionspace(unit_square(comm), ("Lagrange", 1))
    network = natinv.mlp([2, 6, 1], seed=4)
    with torch.no_grad():
        network[0].weight[1] = network[0].weight[0]
        network[0].bias[1] = network[0].bias[0]
    return natinv.NeuralField(space, network)


@pytest.mark.parametrize(
    ("method", "damping"), [("cutoff", 0.0), ("cholesky", 1e-8), ("cg", 1e-8), ("lm", 1e-8)]
)
def test_rank_deficient_gram_gives_a_finite_descent_direction(comm, method, damping):
    """Duplicate neurons make G singular; the cut-off and the damped solves stay finite, and the
    direction decreases the loss."""
    field = duplicate_neuron_field(comm)
    matrix = natinv.l2(field.space)
    objective = FieldFit(field, lambda x: np.cos(3 * x[0] * x[1]), matrix)
    value, gradient = objective.value_and_gradient()
    gram = objective.gram
    gram.assemble()
    eigenvalues = np.linalg.eigvalsh(gram.dense())
    assert eigenvalues[0] <= 1e-14 * eigenvalues[-1]  # singular indeed
    solver = natinv.NaturalSolver(gram, method, damping=damping, cutoff=1e-10)
    d = solver.solve(gradient)
    assert np.all(np.isfinite(d))
    assert gradient @ d > 0
    eta, _, new_value = LogGridLineSearch()(objective, field.parameters, value, d)
    assert eta > 0 and new_value < value
    if method == "cutoff":
        assert solver.info["rank"] < field.num_parameters
    solver.destroy()
    objective.destroy()
    matrix.destroy()


@pytest.mark.parametrize("mat_type", ["auto", "aij"])
def test_an_indefinite_gram_is_one_clear_error_on_every_rank(comm, mat_type):
    """G − I (made indefinite on purpose) cannot be factorised: every rank raises the same
    error naming the remedy (LAPACK or ScaLAPACK, and MUMPS)."""
    _field, matrix, objective = _fit_problem(comm)
    _, gradient = objective.value_and_gradient()
    gram = objective.gram
    gram.assemble()
    gram.G.shift(-1.0)
    solver = natinv.NaturalSolver(gram, "cholesky", mat_type=mat_type)
    with pytest.raises(CollectiveError, match="add damping"):
        solver.solve(gradient, assemble=False)
    solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_petsc_options_override_the_arguments(comm, petsc_options):
    _field, matrix, objective = _fit_problem(comm)
    petsc_options["natinv_gram_method"] = "cutoff"
    petsc_options["natinv_gram_cutoff"] = "1e-7"
    petsc_options["natinv_gram_damping"] = "0.5"
    solver = natinv.NaturalSolver(objective.gram, "cholesky", options_prefix="natinv_gram_")
    assert (solver.method, solver.cutoff, solver.damping) == ("cutoff", 1e-7, 0.5)
    solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_petsc_options_reach_the_inner_krylov_solver(comm, petsc_options):
    """-natinv_gram_ksp_max_it limits CG: the solve stops there (truncated CG)."""
    _field, matrix, objective = _fit_problem(comm)
    _, gradient = objective.value_and_gradient()
    objective.gram.update_jacobian()
    petsc_options["natinv_gram_ksp_max_it"] = "3"
    solver = natinv.NaturalSolver(objective.gram, "cg", damping=1e-8, options_prefix="natinv_gram_")
    solver.solve(gradient)
    assert solver.info["iterations"] == 3 and solver.info["truncated"]
    solver.destroy()
    objective.destroy()
    matrix.destroy()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "qr"}, "Unknown natural-gradient solver"),
        ({"damping": -1.0}, "Invalid damping"),
        ({"cutoff": 2.0}, "Invalid spectral cutoff"),
        ({"mat_type": "elemental"}, "Unknown Gram matrix type"),
    ],
)
def test_bad_solver_settings_name_the_value(comm, kwargs, message):
    _field, matrix, objective = _fit_problem(comm)
    with pytest.raises(ValueError, match=message):
        natinv.NaturalSolver(objective.gram, **kwargs)
    objective.destroy()
    matrix.destroy()


def test_metric_on_another_space_is_an_error_on_every_rank(comm):
    mesh = unit_square(comm)
    field = natinv.NeuralField(
        dolfinx.fem.functionspace(mesh, ("Lagrange", 1)), natinv.mlp([2, 4, 1])
    )
    matrix = natinv.l2(dolfinx.fem.functionspace(mesh, ("Lagrange", 2)))
    with pytest.raises(CollectiveError, match="assembled on another space"):
        natinv.Gram(field, matrix)
    matrix.destroy()


def test_non_symmetric_energy_form_is_rejected(comm):
    space = dolfinx.fem.functionspace(unit_square(comm), ("Lagrange", 1))
    with pytest.raises(CollectiveError, match="not symmetric"):
        natinv.energy(space, lambda w, z: w.dx(0) * z * ufl.dx + w * z * ufl.dx)


def test_h1_metric_rejects_a_discontinuous_space(comm):
    space = dolfinx.fem.functionspace(unit_square(comm), ("DG", 1))
    with pytest.raises(ValueError, match="continuous space"):
        natinv.h1(space)


@pytest.mark.parametrize("method", ["cholesky", "cutoff"])
def test_a_second_right_hand_side_reuses_the_factorisation(comm, method):
    """Solving for b after g with the same G reuses the factors and is exact; re-assembling G
    makes the solver factorise again."""
    _field, matrix, objective = _fit_problem(comm)
    _, gradient = objective.value_and_gradient()
    gram = objective.gram
    gram.assemble()
    solver = natinv.NaturalSolver(gram, method, damping=1e-4, cutoff=1e-15)
    solver.solve(gradient, assemble=False)
    # b in the range of G, like a gradient Jᵀr, so the cut-off drops nothing that matters
    b = gram.dense() @ np.random.default_rng(3).standard_normal(gradient.size)
    d = solver.solve(b, assemble=False)
    assert solver.factorizations == 1
    reference = np.linalg.solve(gram.dense() + 1e-4 * np.eye(b.size), b)
    assert np.linalg.norm(d - reference) <= 1e-10 * np.linalg.norm(reference)
    solver.solve(b)  # assembles G again: new factors
    assert solver.factorizations == 2
    solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_each_solver_has_its_own_options_prefix(comm, petsc_options):
    """Options set for one solver's prefix reach that solver and no other in the process."""
    _field, matrix, objective = _fit_problem(comm)
    first = natinv.NaturalSolver(objective.gram, "cholesky")
    second = natinv.NaturalSolver(objective.gram, "cholesky")
    assert first.prefix != second.prefix
    petsc_options[f"{first.prefix}method"] = "cutoff"
    third = natinv.NaturalSolver(objective.gram, "cholesky", options_prefix=first.prefix)
    fourth = natinv.NaturalSolver(objective.gram, "cholesky")
    assert (third.method, fourth.method) == ("cutoff", "cholesky")
    for solver in (first, second, third, fourth):
        solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_pushed_options_are_removed_and_the_users_stay(petsc_options):
    """natinv.options.pushed: a solver's own settings live in the database only inside the
    block; a value the user set first is neither replaced nor removed."""
    from natinv import options

    petsc_options["scoped_ksp_rtol"] = "1e-3"
    with options.pushed("scoped_", {"ksp_rtol": 1e-9, "ksp_type": "cg"}) as view:
        assert view.getReal("ksp_rtol") == 1e-3 and view.getString("ksp_type") == "cg"
    database = PETSc.Options()
    assert database.getReal("scoped_ksp_rtol") == 1e-3 and not database.hasName("scoped_ksp_type")


def test_a_composed_solver_equals_the_named_one(comm):
    """NaturalSolver(gram, Cholesky(), LevenbergMarquardt(λ)) is the "lm" solver: the same
    directions and the same damping after feedback, to the bit."""
    from natinv.directions import Cholesky, LevenbergMarquardt

    _field, matrix, objective = _fit_problem(comm)
    _, gradient = objective.value_and_gradient()
    objective.gram.assemble()
    named = natinv.NaturalSolver(objective.gram, "lm", damping=1e-3)
    composed = natinv.NaturalSolver(
        objective.gram, Cholesky(), LevenbergMarquardt(1e-3, relative=True)
    )
    for solver in (named, composed):
        solver.report(1.0, 2.0, 1.0)
    a = named.solve(gradient, assemble=False)
    b = composed.solve(gradient, assemble=False)
    assert named.damping == composed.damping and np.array_equal(a, b)
    named.destroy()
    composed.destroy()
    objective.destroy()
    matrix.destroy()
