"""Sampled natural Gauss–Newton steps on many experiments (natinv.optim.sampled)."""

from __future__ import annotations

import itertools

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
from helpers import unit_square

import natinv
from natinv import models
from natinv.directions import LevenbergMarquardt, SampleSpaceSolver
from natinv.objectives.inverse import Experiment, InverseObjective, InverseProblem
from natinv.observations import point_sensors
from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.sampled import SampledGaussNewton

SOURCES = ("1 + y", "sin(3*x)", "x*y", "2", "cos(2*theta)", "r")


def loads(comm, count=4):  # type: ignore[no-untyped-def]
    """``count`` load cases on one κ = exp(N): other sources, the same 16 sensors, data from
    κ = 1 + x y with 1 % noise; one shared operator. Returns (objective, problem, models)."""
    from natinv.expressions import ufl_expression

    mesh = unit_square(comm, 8)
    w = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    v = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    m = dolfinx.fem.Function(w)
    rng = np.random.default_rng(5)
    points = 0.1 + 0.8 * rng.random((16, 2))
    experiments, first = [], None
    for k in range(count):
        f = ufl_expression(SOURCES[k], "source", mesh)()
        model = models.diffusion(v, m, f=f, name=f"load {k}", options_prefix=f"sampled{k}_")
        if first is not None:
            model.share_operator(first)
        first = first or model
        m.interpolate(lambda x: 1.0 + x[0] * x[1])
        clean = point_sensors(v, points, np.zeros(16))
        values = np.zeros(16)  # (in the sensors' order: rows are owned by ranks)
        values[clean.index] = clean.predict(model.solve().x.petsc_vec)
        values = comm.allreduce(values)
        clean.destroy()
        sigma = 0.01 * np.abs(values).max()
        noisy = values + sigma * rng.standard_normal(16)
        experiments.append(Experiment(model, [point_sensors(v, points, noisy, sigma)]))
    problem = InverseProblem(experiments)
    field = natinv.NeuralField(w, natinv.mlp([2, 8, 8, 1], seed=2), transform="exp")
    return InverseObjective(field, problem), problem, [e.model for e in experiments]


def free(objective, problem, models_):  # type: ignore[no-untyped-def]
    objective.destroy()
    for experiment in problem.experiments:
        for obs in experiment.observations:
            obs.destroy()
    problem.destroy()
    for model in models_:
        model.destroy()


def assert_same_steps(comm, first, second) -> None:  # type: ignore[no-untyped-def]
    """Bitwise the same iterates on 1 rank, 1e-12 relative on more: there two factorisations
    of one matrix differ in the last bits (MUMPS's dynamic scheduling; SuperLU_DIST's solves on
    3 ranks), and so do two runs of the full method itself (3.3e-14 measured on 2 ranks)."""
    if comm.size == 1:
        assert np.array_equal(first, second)
    else:
        assert np.abs(first - second).max() <= 1e-12 * np.abs(first).max()


def test_a_sample_of_every_experiment_takes_the_full_steps_bitwise(comm):
    """With batch = E the sample is the whole problem (weight 1): three sampled steps give
    bitwise the iterates of the full natural Gauss–Newton method (sample-space direction,
    Levenberg–Marquardt damping, Armijo steps: natinv run's default) on 1 rank. (On more
    ranks two runs of the full method itself differ in the last bits, 1e-14 measured: there
    the claim is 1e-12, relative.)"""
    thetas = []
    for sampled in (False, True):
        objective, problem, models_ = loads(comm)
        if sampled:  # (the full method's damping rule)
            optimizer = SampledGaussNewton(objective, 4, adaptive=True)
        else:
            gram = objective.gauss_newton()
            solver = SampleSpaceSolver(gram, LevenbergMarquardt(1e-3, relative=True))
            optimizer = NaturalGradientDescent(objective, solver, "armijo")
        for _ in range(3):
            optimizer.step()
        thetas.append(np.array(optimizer.theta))
        if sampled:
            optimizer.destroy()
        else:
            for obj in (solver, gram, gram.metric, gram.rows):
                obj.destroy()
        free(objective, problem, models_)
    assert_same_steps(comm, *thetas)


def test_the_sampled_gradient_is_unbiased(comm):
    """The gradient of L_S = (E/b) Σ_{e∈S} L_e averaged over every sample of b = 2 of E = 4
    experiments is the full gradient (to 1e-12, relative); and over 600 draws of the sampler
    its mean lies within 5 standard errors of it in every component (a statistical claim:
    the chance of failing is below 1e-4 per component, the draws are seeded)."""
    objective, problem, models_ = loads(comm)
    values = objective.field.values()
    _, full = problem.value_and_gradient(values)
    by_sample = {}
    for sample in itertools.combinations(range(4), 2):
        by_sample[sample] = problem.view(sample).value_and_gradient(values)[1]
    mean = np.mean(list(by_sample.values()), axis=0)
    scale = np.abs(full).max()
    assert comm.allreduce(float(np.abs(mean - full).max()), op=MPI.MAX) <= 1e-12 * scale
    optimizer = SampledGaussNewton(objective, 2, seed=3)
    draws = np.array([by_sample[tuple(optimizer.draw())] for _ in range(600)])
    error = np.abs(draws.mean(axis=0) - full)
    spread = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(error <= 5 * spread + 1e-12 * scale)
    optimizer.destroy()
    free(objective, problem, models_)


@pytest.mark.parametrize(
    ("sampling", "batch", "momentum", "beta", "steps"),
    [
        ("experiments", 2, "none", 0.0, 8),
        ("experiments", 2, "heavy-ball", 0.5, 8),
        ("experiments", 2, "spring", 0.5, 8),
        ("rows", 16, "spring", 0.9, 12),
    ],
)
def test_sampled_steps_lower_the_full_misfit_the_same_on_any_rank_count(
    comm, sampling, batch, momentum, beta, steps
):
    """Eight sampled steps (2 of the 4 experiments, seed 1), or twelve on 16 of the 64 rows,
    lower the whole misfit at least tenfold (measured: 71× without momentum, 91× heavy-ball,
    107× SPRING; rows 103×) and give the same iterates on 2 ranks as on rank 0 alone to 1e-10,
    relative (measured: 2e-14, rows 7e-14; the parallel factorisation sums in another order;
    rows are drawn as the sensors are numbered, whichever rank owns them; serially the two
    runs are the same run)."""
    results = []
    for part in (comm, MPI.COMM_SELF):
        if part is MPI.COMM_SELF and comm.rank != 0:
            continue
        objective, problem, models_ = loads(part)
        optimizer = SampledGaussNewton(
            objective, batch, sampling=sampling, momentum=momentum, beta=beta, seed=1
        )
        before = optimizer.full_misfit()
        for _ in range(steps):
            optimizer.step()
        after = optimizer.full_misfit()
        results.append((before, after, np.array(optimizer.theta)))
        optimizer.destroy()
        free(objective, problem, models_)
    verdict = None
    if comm.rank == 0:  # (one verdict for every rank: no rank left in the next collective)
        (before, after, theta), (_, _, alone) = results
        deviation = float(np.abs(theta - alone).max() / np.abs(alone).max())
        verdict = (before, after, deviation)
    before, after, deviation = comm.bcast(verdict, root=0)
    assert after <= 0.1 * before, (before, after)
    assert deviation <= 1e-10, deviation


def test_bad_sampling_settings_name_the_value(comm):
    objective, problem, models_ = loads(comm)
    for kwargs, message in [
        ({"batch": 0}, r"Invalid batch 0: experiments per step, in 1\.\.4"),
        ({"batch": 5}, r"Invalid batch 5"),
        ({"batch": 2, "momentum": "natural-nesterov"}, r"Unknown momentum 'natural-nesterov'"),
        ({"batch": 2, "beta": 1.0}, r"Invalid momentum factor beta: 1\.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            SampledGaussNewton(objective, **kwargs)
    free(objective, problem, models_)


def test_a_random_combination_is_the_combined_experiments_exactly(comm):
    """A combination ``Σ_k ξ_k σ_k⁻¹ (experiment k)`` (one carrier state, the combined data,
    unit noise) has the misfit ``½‖Σ_k ξ_k (B u_k − d_k)/σ_k‖²`` of the experiments' own
    predictions, and the Gauss–Newton rows ``Σ_k ξ_k σ_k⁻¹ B S_k J`` of their rows, to 1e-10
    (relative), on 1 and 2 ranks; its gradient passes the Taylor test (orders ≥ 1.9)."""
    from helpers import taylor_orders

    from natinv import parallel
    from natinv.objectives.inverse import ObservationRows

    objective, problem, models_ = loads(comm)
    optimizer = SampledGaussNewton(objective, 2, sampling="combinations", seed=4)
    try:
        optimizer.draw()
        view = optimizer._view()
        theta = objective.field.parameters
        values = objective.field.values()
        misfit = view.value(values)
        sigmas = 1.0 / optimizer._scales
        residuals = [
            (e.predict()[0] - e.observations[0].data) / s
            for e, s in zip(problem.experiments, sigmas, strict=True)
        ]
        expected = 0.0
        for signs in optimizer.signs:
            combined = sum(x * r for x, r in zip(signs, residuals, strict=True))
            expected += 0.5 * parallel.allreduce_sum(comm, float(combined @ combined))
        expected /= optimizer.batch
        assert abs(misfit - expected) <= 1e-10 * expected
        full_rows = ObservationRows(objective.field, problem)
        jacobian = full_rows.jacobian(theta)
        n = problem.experiments[0].observations[0].num_owned
        rows = ObservationRows(objective.field, view)
        combined_jacobian = rows.jacobian(theta)
        for j, signs in enumerate(optimizer.signs):
            reference = sum(
                x / s * jacobian[k * n : (k + 1) * n]
                for k, (x, s) in enumerate(zip(signs, sigmas, strict=True))
            )
            got = combined_jacobian[j * n : (j + 1) * n]
            scale = parallel.allreduce_max(comm, float(np.abs(reference).max()))
            worst = parallel.allreduce_max(comm, float(np.abs(got - reference).max(initial=0)))
            assert worst <= 1e-10 * scale
        for obj in (rows, full_rows):
            obj.destroy()
        rng = np.random.default_rng(comm.rank)
        direction = 0.1 * rng.standard_normal(values.size)
        value0, gradient = view.value_and_gradient(values)
        slope = parallel.allreduce_sum(comm, float(gradient @ direction))
        orders = taylor_orders(view.value, values, value0, slope, direction, [1e-2, 5e-3, 2.5e-3])
        assert orders.min() >= 1.9, orders
    finally:
        optimizer.destroy()
        free(objective, problem, models_)


def test_random_combinations_estimate_the_whole_misfit_without_bias(comm):
    """Over 400 draws of 2 combinations (Rademacher signs), the sampled misfit's mean lies
    within 5 standard errors of the whole misfit (a seeded statistical claim), and 8
    combination steps with SPRING lower the whole misfit at least tenfold."""
    objective, problem, models_ = loads(comm)
    optimizer = SampledGaussNewton(
        objective, 2, sampling="combinations", momentum="spring", beta=0.9, seed=6
    )
    try:
        values = objective.field.values()
        full = problem.value(values)
        draws = []
        for _ in range(400):
            optimizer.draw()
            draws.append(optimizer._view().value(values))
        draws = np.array(draws)
        spread = draws.std(ddof=1) / np.sqrt(draws.size)
        assert abs(draws.mean() - full) <= 5 * spread, (draws.mean(), full, spread)
        start = optimizer.full_misfit()
        for _ in range(8):
            optimizer.step()
        assert optimizer.full_misfit() <= 0.1 * start
    finally:
        optimizer.destroy()
        free(objective, problem, models_)


def test_combinations_of_experiments_that_cannot_be_combined_are_refused(comm):
    """Experiments with other sensors, or a noise level varying over the sensors: one message
    on every rank."""
    objective, problem, models_ = loads(comm, count=2)
    try:
        obs = problem.experiments[1].observations[0]
        diagonal = obs.metric.getDiagonal()
        diagonal.array[: diagonal.array.size // 2] *= 4.0
        obs.metric.setDiagonal(diagonal)
        diagonal.destroy()
        with pytest.raises(natinv.parallel.CollectiveError, match="one noise level"):
            SampledGaussNewton(objective, 1, sampling="combinations")
        with pytest.raises(ValueError, match="Unknown sampling"):
            SampledGaussNewton(objective, 1, sampling="sensors")
    finally:
        free(objective, problem, models_)


def test_a_sample_of_every_row_takes_the_full_steps_bitwise(comm):
    """``sampling="rows"`` with batch = N (every one of the 64 rows, weight 1): the rows'
    subsets are the blocks themselves, and three steps give bitwise the iterates of sampling
    every experiment (itself the full method, above), on 1 rank; 1e-12 relative on more."""
    thetas = []
    for sampling, batch in (("experiments", 4), ("rows", 64)):
        objective, problem, models_ = loads(comm)
        optimizer = SampledGaussNewton(objective, batch, sampling=sampling, adaptive=True)
        for _ in range(3):
            optimizer.step()
        thetas.append(np.array(optimizer.theta))
        optimizer.destroy()
        free(objective, problem, models_)
    assert_same_steps(comm, *thetas)


def test_sampled_rows_estimate_the_whole_misfit_and_gradient_without_bias(comm):
    """A sample of b = 8 of the N = 64 rows: its misfit is (N/b) × the drawn rows' share of
    the whole one (to 1e-12, relative, computed from the full predictions), and over 400 draws
    the sampled gradient's mean lies within 5 standard errors of the full gradient in every
    component (a statistical claim, seeded draws: below 1e-4 chance per component)."""
    objective, problem, models_ = loads(comm)
    values = objective.field.values()
    _, full = problem.value_and_gradient(values)
    # every row's ½ w r², in the global row order of the blocks (experiment by experiment)
    terms = []
    for experiment in problem.experiments:
        u = experiment.model.u.x.petsc_vec
        for obs in experiment.observations:
            part = np.zeros(obs.num_global)  # (rows numbered as the sensors' file)
            weights = obs.metric.getDiagonal()
            residual = obs.predict(u) - obs.data
            part[obs.index] = 0.5 * weights.array_r * residual**2
            weights.destroy()
            terms.append(comm.allreduce(part))
    terms = np.concatenate(terms)
    optimizer = SampledGaussNewton(objective, 8, sampling="rows", seed=4)
    draws = []
    for i in range(400):
        optimizer.sample = optimizer.draw()
        view = optimizer._view()
        value, gradient = view.value_and_gradient(values)
        if i < 5:
            expected = 64 / 8 * terms[optimizer.sample].sum()
            assert abs(value - expected) <= 1e-12 * abs(expected), (value, expected)
        draws.append(gradient)
        for subset in optimizer._subsets:
            subset.destroy()
        optimizer._subsets = []
    draws = np.array(draws)
    scale = np.abs(full).max()
    error = np.abs(draws.mean(axis=0) - full)
    spread = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(error <= 5 * spread + 1e-12 * scale)
    optimizer.destroy()
    free(objective, problem, models_)


def test_a_subset_of_the_rows_predicts_what_the_whole_block_does(comm):
    """``Observations.subset`` keeps the chosen rows (numbered as the sensors, on whichever
    rank owns them): its predictions, data and noise weights are the block's at those rows,
    on 1 and 2 ranks; a full-field block is refused with one message on every rank."""
    objective, problem, models_ = loads(comm)
    objective.field.values()
    problem.value(objective.field.values())
    obs = problem.experiments[1].observations[0]
    u = problem.experiments[1].model.u.x.petsc_vec
    chosen = np.array([0, 3, 4, 9, 15])

    def gathered(block, array):  # type: ignore[no-untyped-def]
        out = np.zeros(block.num_global)  # (in the sensors' order, whoever owns them)
        out[np.searchsorted(chosen, block.index) if block is subset else block.index] = array
        return comm.allreduce(out)

    subset = obs.subset(chosen, name="part")
    assert subset.num_global == chosen.size and subset.name == "part"
    np.testing.assert_array_equal(
        gathered(subset, subset.predict(u)), gathered(obs, obs.predict(u))[chosen]
    )
    np.testing.assert_array_equal(gathered(subset, subset.data), gathered(obs, obs.data)[chosen])
    weights = [b.metric.getDiagonal() for b in (subset, obs)]
    np.testing.assert_array_equal(
        gathered(subset, weights[0].array_r), gathered(obs, weights[1].array_r)[chosen]
    )
    for obj in (*weights, subset):
        obj.destroy()
    from natinv.observations import full_field

    space = problem.experiments[0].model.u.function_space
    whole = full_field(space, dolfinx.fem.Function(space), 1.0)
    with pytest.raises(natinv.parallel.CollectiveError, match="not a full field"):
        whole.subset(chosen)
    whole.destroy()
    free(objective, problem, models_)


def test_bad_row_samples_name_the_value(comm):
    """Rows per step: a count in 1..N or a fraction (0.25 of 64: 16)."""
    objective, problem, models_ = loads(comm)
    with pytest.raises(
        ValueError, match=r"Invalid batch 65: observation rows per step, in 1\.\.64"
    ):
        SampledGaussNewton(objective, 65, sampling="rows")
    with pytest.raises(ValueError, match=r"Unknown sampling 'sensors'"):
        SampledGaussNewton(objective, 2, sampling="sensors")
    optimizer = SampledGaussNewton(objective, 0.25, sampling="rows")
    assert optimizer.batch == 16 and optimizer.per_pass == 4
    optimizer.destroy()
    free(objective, problem, models_)
