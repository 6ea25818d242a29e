"""Posterior uncertainty: the Laplace approximation of a neural field's posterior."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inverse import build, free, nn_problem

import natinv
from natinv.cases import CaseError, load_case
from natinv.cli import main
from natinv.objectives.inverse import InverseObjective
from natinv.uncertainty import Laplace, coverage

ROOT = Path(__file__).resolve().parents[1]
HOLE = ROOT / "cases" / "diffusion_hole.toml"


def features(x: torch.Tensor) -> torch.Tensor:
    """Fixed features of the coordinates: a field linear in θ after one linear layer."""
    return torch.cat([x, x**2, x[:, :1] * x[:, 1:], torch.sin(np.pi * x)], dim=1)


def linear_problem(comm):
    """A source identified from 12 point sensors (σ = 0.05): u is linear in the source m and m
    linear in θ (a linear layer on fixed features, P = 8), so the posterior for a Gaussian
    prior is exactly Gaussian."""
    problem, m = build(comm, "source", "points", regularization=None)
    torch.manual_seed(3)
    network = torch.nn.Linear(7, 1, dtype=torch.float64)
    field = natinv.NeuralField(m.function_space, network, input_map=features)
    return InverseObjective(field, problem), problem


def forward_map(objective: InverseObjective, theta) -> np.ndarray:
    """``B u(k(θ))`` at every sensor (replicated), from the state itself."""
    problem = objective.problem
    problem.value(objective.field.values(theta))
    obs = problem.observations[0]
    local = obs.predict(problem.experiments[0].model.u.x.petsc_vec)
    rows = np.zeros(obs.num_global)
    for index, values in zip(
        objective.comm.allgather(obs.index), objective.comm.allgather(local), strict=True
    ):
        rows[index] = values
    return rows


def test_on_a_problem_linear_in_theta_the_laplace_covariance_is_the_exact_posterior(comm):
    """The exact posterior covariance ``(AᵀWA + δI)⁻¹``, with ``A`` built column by column from
    forward solves (exact for an affine map), equals the Laplace covariance from the Gauss–Newton
    Gram to 1e-10, for a prior precision given and for the default one."""
    objective, problem = linear_problem(comm)
    theta = objective.field.parameters
    base = forward_map(objective, np.zeros_like(theta))
    columns = [forward_map(objective, e) - base for e in np.eye(theta.size)]
    a = np.stack(columns, axis=1)
    sigma = 0.05
    gram = a.T @ a / sigma**2
    for delta in (1e-2, None):
        laplace = Laplace.at(objective, theta, prior_precision=delta)
        expected_delta = 1e-3 * np.diag(gram).max() if delta is None else delta
        assert abs(laplace.prior_precision - expected_delta) <= 1e-10 * expected_delta
        exact = np.linalg.inv(gram + expected_delta * np.eye(theta.size))
        error = np.abs(laplace.covariance() - exact).max()
        assert error <= 1e-10 * np.abs(exact).max(), error
    objective.destroy()
    free(problem)


def test_the_field_std_is_the_dense_push_forward(comm):
    """``sqrt(diag(J C Jᵀ))`` computed rank by rank, in chunks, equals the dense reference made
    from the gathered field Jacobian (1e-12 relative), on every rank's own dofs."""
    objective, problem = nn_problem(comm, widths=(2, 6, 1))
    field = objective.field
    laplace = Laplace.at(objective, prior_precision=0.1)
    std = laplace.std(field, chunk=7)
    jacobian = field.jacobian()
    gathered = np.vstack(comm.allgather(jacobian))
    dense = np.sqrt(np.diag(gathered @ laplace.covariance() @ gathered.T))
    start = comm.exscan(jacobian.shape[0]) or 0
    mine = dense[start : start + jacobian.shape[0]]
    assert np.abs(std - mine).max() <= 1e-12 * dense.max()
    assert dense.min() > 0
    objective.destroy()
    free(problem)


def test_samples_have_the_laplace_covariance(comm):
    """Draws ``θ* + L⁻ᵀz`` are the same on every rank and their sample covariance approaches C
    (20 000 draws: within 5 % of C's scale)."""
    objective, problem = linear_problem(comm)
    laplace = Laplace.at(objective, prior_precision=1.0)
    draws = laplace.samples(20_000, seed=4)
    assert np.array_equal(draws, comm.bcast(draws, root=0))
    covariance = np.cov(draws.T)
    exact = laplace.covariance()
    assert np.abs(covariance - exact).max() <= 0.05 * np.abs(exact).max()
    assert np.abs(draws.mean(axis=0) - laplace.theta).max() <= 0.05 * np.sqrt(exact.max())
    objective.destroy()
    free(problem)


def test_coverage_counts_dofs_within_two_sigma(comm):
    values = np.array([0.0, 1.0, 2.0, 3.0]) + comm.rank
    truth = values + np.array([0.1, 0.3, -0.1, 0.5])
    std = np.full(4, 0.1)
    assert coverage(comm, values, std, truth) == pytest.approx(0.5)


def test_bad_laplace_input_is_named():
    with pytest.raises(ValueError, match=r"prior precision must be > 0"):
        Laplace(np.eye(2), np.zeros(2), 0.0)
    with pytest.raises(ValueError, match=r"the Gram is \(3, 3\).*expected \(2, 2\)"):
        Laplace(np.eye(3), np.zeros(2), 1.0)


def test_a_case_with_an_uncertainty_table_writes_std_samples_and_coverage(comm, shared_tmp):
    """The headline case with ``[uncertainty]``: ``std.bp``, ``samples.bp``, ``uncertainty.png``
    and, in ``summary.json``, the prior precision used and the 2σ coverage of the truth (a
    fraction, reported, not asserted beyond its range: it is a measurement)."""
    folder = shared_tmp / "uq"
    args = ["run", str(HOLE), "--iterations", "4", "--quiet"]
    for item in (f"output.folder='{folder}'", "uncertainty.samples=3"):
        args += ["--set", item]
    assert main(args) == 0
    summary = json.loads((folder / "summary.json").read_text())
    found = summary["uncertainty"]
    assert found["prior_precision"] > 0 and found["samples"] == 3
    assert 0.0 <= found["coverage_2sigma"] <= 1.0 and found["mean_std"] > 0
    for name in ("std.bp", "samples.bp"):
        assert (folder / name).is_dir(), name
    assert (folder / "uncertainty.png").is_file()


def test_uncertainty_settings_are_checked(comm, shared_tmp):
    with pytest.raises(CaseError, match=r"uncertainty\.samples: expected an integer >= 0"):
        load_case(HOLE, ["uncertainty.samples=-1"])
    with pytest.raises(
        CaseError, match=r"uncertainty\.prior_precision: expected a number in \(0, inf\]"
    ):
        load_case(HOLE, ["uncertainty.prior_precision=0"])
    with pytest.raises(CaseError, match=r"prior_precision: expected one of \['evidence', 'damp"):
        load_case(HOLE, ["uncertainty.prior_precision='maybe'"])
    assert load_case(HOLE, ["uncertainty.prior_precision='evidence'"]).uncertainty is not None
    tao = ["optimizer.kind='tao-nls'", "regularization.alpha=0.5"]
    from natinv.problems import build_problem

    with pytest.raises(CaseError, match=r"uncertainty\.mass: .* needs δ > 0"):
        build_problem(load_case(HOLE, [*tao, "regularization.alpha=0"]), comm)
    with pytest.raises(CaseError, match=r"uncertainty\.mass: expected a number in \[0"):
        load_case(HOLE, [*tao, "uncertainty.mass=-1"])
    # the shipped case's settings for the neural field do not stop a baseline run of it
    case = load_case(HOLE, tao)
    assert case.uncertainty is not None and case.uncertainty.mass is None


def test_one_and_two_ranks_give_the_same_posterior(several_ranks, comm):
    """The Laplace covariance (replicated) and the σ summed over all dofs on COMM_WORLD equal
    those on COMM_SELF (1e-10)."""
    from mpi4py import MPI

    results = []
    for c in (comm, MPI.COMM_SELF):
        objective, problem = nn_problem(c, widths=(2, 6, 1))
        laplace = Laplace.at(objective, prior_precision=0.1)
        std = laplace.std(objective.field)
        results.append((laplace.covariance(), c.allreduce(float(std.sum()))))
        objective.destroy()
        free(problem)
    (c1, s1), (c2, s2) = results
    assert np.abs(c1 - c2).max() <= 1e-10 * np.abs(c2).max()
    assert abs(s1 - s2) <= 1e-10 * abs(s2)


def test_the_evidence_precision_maximises_the_laplace_evidence():
    """MacKay's fixed point maximises ``P/2 log δ − δ/2 ‖θ‖² − ½ log det(G + δI)`` (the δ-part of
    the Laplace log-evidence): its derivative vanishes there (|δ F′(δ)| ≤ 1e-6 P) and
    δ·(1 ± 10 %) give less."""
    from natinv.uncertainty import evidence_precision

    rng = np.random.default_rng(2)
    a = rng.standard_normal((30, 12)) * np.logspace(0, -3, 12)
    gram, theta = a.T @ a, rng.standard_normal(12)

    def evidence(delta: float) -> float:
        _, logdet = np.linalg.slogdet(gram + delta * np.eye(12))
        return 6 * np.log(delta) - 0.5 * delta * theta @ theta - 0.5 * logdet

    delta = evidence_precision(gram, theta)
    h = 1e-6 * delta
    slope = (evidence(delta + h) - evidence(delta - h)) / (2 * h)
    assert abs(slope) * delta <= 1e-6 * 12
    assert evidence(delta) > max(evidence(0.9 * delta), evidence(1.1 * delta))


def fe_linear_problem(comm, alpha=1e-2):
    """The source problem of :func:`linear_problem` with the source as a P1 field (49 dofs),
    12 point sensors (σ = 0.05) and a prior of precision ``R = α(K + M)``."""
    import dolfinx
    import dolfinx.fem.petsc
    import ufl

    problem, m = build(comm, "source", "points", regularization=None)
    space = m.function_space
    w, z = ufl.TrialFunction(space), ufl.TestFunction(space)
    form = alpha * (ufl.inner(ufl.grad(w), ufl.grad(z)) + w * z) * ufl.dx
    prior = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form))
    prior.assemble()
    return problem, m, prior


def dense_posterior(comm, problem, m, prior):
    """``(AᵀWA + R)⁻¹`` densely (replicated, in the global dof order), ``A`` column by column
    from forward solves with unit sources (exact: the map is linear)."""
    n_owned = problem.num_owned
    start = comm.exscan(n_owned) or 0
    n = comm.allreduce(n_owned)
    obs = problem.observations[0]

    def observe(values):
        problem.value(values)
        local = obs.predict(problem.experiments[0].model.u.x.petsc_vec)
        rows = np.zeros(obs.num_global)
        for index, part in zip(comm.allgather(obs.index), comm.allgather(local), strict=True):
            rows[index] = part
        return rows

    base = observe(np.zeros(n_owned))
    columns = []
    for j in range(n):
        unit = np.zeros(n_owned)
        if start <= j < start + n_owned:
            unit[j - start] = 1.0
        columns.append(observe(unit) - base)
    a = np.stack(columns, axis=1)
    r = np.zeros((n, n))
    local = prior.getValues(range(start, start + n_owned), range(n))
    for part, first in zip(comm.allgather(local), comm.allgather(start), strict=True):
        r[first : first + part.shape[0]] = part
    return np.linalg.inv(a.T @ a / 0.05**2 + r), start, n_owned


def test_the_low_rank_laplace_of_a_fe_field_is_the_exact_posterior_of_a_linear_problem(comm):
    """For a problem linear in the field, 12 observations and an H1 prior, the low-rank
    approximation with 20 eigenpairs (more than the data's rank) applies the exact posterior
    covariance and gives its diagonal (1e-10 relative), and keeps exactly 12 eigenvalues above
    round-off."""
    from natinv.uncertainty import LowRankLaplace

    problem, m, prior = fe_linear_problem(comm)
    exact, start, n_owned = dense_posterior(comm, problem, m, prior)
    problem.value(m.x.array[:n_owned])  # the state at the point of the approximation
    laplace = LowRankLaplace(problem, prior, rank=20, seed=1)
    assert np.sum(laplace.eigenvalues > 1e-8 * laplace.eigenvalues.max()) == 12
    scale = np.abs(exact).max()
    variance = laplace.variance()
    assert np.abs(variance - np.diag(exact)[start : start + n_owned]).max() <= 1e-10 * scale
    probe = np.random.default_rng(5).standard_normal(exact.shape[0])
    applied = laplace.covariance_apply(probe[start : start + n_owned])
    assert (
        np.abs(applied - (exact @ probe)[start : start + n_owned]).max()
        <= 1e-10 * np.abs(exact @ probe).max()
    )
    laplace.destroy()
    prior.destroy()
    free(problem)


def test_the_baseline_case_reports_the_low_rank_posterior(comm, shared_tmp):
    """The headline case solved by the TAO baseline with ``[uncertainty] rank = 20``: σ from the
    low-rank approximation with the prior precision α(K + M), ``std.bp``, ``uncertainty.png``
    and, in ``summary.json``, the rank, the largest and smallest kept eigenvalue and the 2σ
    coverage (a measurement: only its range is asserted)."""
    folder = shared_tmp / "uq-tao"
    args = ["run", str(HOLE), "--iterations", "30", "--quiet"]
    for item in (
        f"output.folder='{folder}'",
        "optimizer.kind='tao-nls'",
        "regularization.alpha=30",
        "uncertainty.rank=20",
        "uncertainty.samples=2",
    ):
        args += ["--set", item]
    assert main(args) == 0
    found = json.loads((folder / "summary.json").read_text())["uncertainty"]
    assert found["rank"] == 20 and found["mass"] == 30.0
    largest, smallest = found["eigenvalues"]
    assert largest >= smallest > 0
    assert 0.0 <= found["coverage_2sigma"] <= 1.0 and found["mean_std"] > 0
    assert (folder / "std.bp").is_dir() and (folder / "uncertainty.png").is_file()
    assert found["samples"] == 2 and (folder / "samples.bp").is_dir()


def test_prior_noise_has_the_prior_precision_as_its_covariance(comm):
    """The map from white noise at quadrature points to ``b`` (:class:`PriorNoise`), applied
    to every unit noise vector: ``T Tᵀ`` equals ``a K + c M`` (1e-12 relative) for P1 and
    P2, each term alone and both; draws are the same on any number of ranks."""
    import dolfinx
    import dolfinx.fem.petsc
    import ufl
    from helpers import dense_matrix, unit_square

    from natinv.uncertainty import PriorNoise, prior_noise

    mesh = unit_square(comm, 3)
    for degree, a, c in ((1, 0.7, 2.0), (2, 0.7, 0.0), (1, 0.0, 3.0)):
        space = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
        w, z = ufl.TrialFunction(space), ufl.TestFunction(space)
        form = (a * ufl.inner(ufl.grad(w), ufl.grad(z)) + c * w * z) * ufl.dx
        matrix = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form))
        matrix.assemble()
        reference = dense_matrix(matrix)
        matrix.destroy()
        noise = PriorNoise(space, a, c)
        columns = []
        for term, xi in enumerate(noise.points):
            local = xi.x.array.size
            owned = xi.function_space.dofmap.index_map.size_local
            owned *= xi.function_space.dofmap.index_map_bs
            for rank in range(comm.size):
                for k in range(comm.bcast(owned, root=rank)):
                    etas = [np.zeros(p.x.array.size) for p in noise.points]
                    if comm.rank == rank:
                        etas[term][k] = 1.0
                    assert etas[term].size == local
                    columns.append(np.concatenate(comm.allgather(noise.apply(etas))))
        noise.destroy()
        t = np.stack(columns, axis=1)
        assert np.abs(t @ t.T - reference).max() <= 1e-12 * np.abs(reference).max()
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    draws = prior_noise(space, 0.5, 1.0, count=2, seed=3)
    assert draws.shape == (space.dofmap.index_map.size_local, 2)


def test_one_and_two_ranks_draw_the_same_prior_noise(several_ranks, comm):
    """A draw of :func:`prior_noise` is the same function on 2 ranks as on 1 (1e-12): the
    noise of each cell comes from its input index."""
    from mpi4py import MPI

    import dolfinx
    from helpers import unit_square

    from natinv.uncertainty import prior_noise

    results = []
    for c in (comm, MPI.COMM_SELF):
        space = dolfinx.fem.functionspace(unit_square(c, 4), ("Lagrange", 1))
        owned = space.dofmap.index_map.size_local
        draw = prior_noise(space, 0.5, 1.0, count=1, seed=2)[:, 0]
        coords = np.round(space.tabulate_dof_coordinates()[:owned, :2], 12) + 0.0
        pairs = np.concatenate(c.allgather(np.column_stack([coords, draw])))
        results.append(pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))])
    assert np.abs(results[0] - results[1]).max() <= 1e-12 * np.abs(results[1]).max()


def test_low_rank_samples_have_the_posterior_covariance(comm):
    """``m* + R⁻¹b − V P Vᵀb`` over the columns b of a factor of R (``L Lᵀ = R``): the
    samples' covariance ``S Sᵀ`` is the low-rank posterior ``R⁻¹ − V D Vᵀ`` (1e-10), which for
    this linear problem is the exact one."""
    from natinv.uncertainty import LowRankLaplace

    problem, m, prior = fe_linear_problem(comm)
    exact, start, n_owned = dense_posterior(comm, problem, m, prior)
    problem.value(m.x.array[:n_owned])
    laplace = LowRankLaplace(problem, prior, rank=20, seed=1)
    n = exact.shape[0]
    r = np.zeros((n, n))
    local = prior.getValues(range(start, start + n_owned), range(n))
    for part, first in zip(comm.allgather(local), comm.allgather(start), strict=True):
        r[first : first + part.shape[0]] = part
    factor = np.linalg.cholesky(0.5 * (r + r.T))
    draws = laplace.samples(np.zeros(n_owned), factor[start : start + n_owned])
    s = np.concatenate(comm.allgather(draws))
    assert np.abs(s @ s.T - exact).max() <= 1e-10 * np.abs(exact).max()
    laplace.destroy()
    prior.destroy()
    free(problem)
