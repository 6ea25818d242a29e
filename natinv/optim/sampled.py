"""Natural Gauss–Newton steps on a sample of the experiments, momentum as the averaging.

With E experiments sharing the unknown, ``L(θ) = Σ_e L_e(k(θ))`` (plus a Tikhonov term). A
sampled step draws ``b`` experiments ``S`` (uniformly, without replacement, the same on every
rank) and takes the natural Gauss–Newton step of ``L_S = (E/b) Σ_{e∈S} L_e``, an unbiased
estimate of ``L`` (:meth:`~natinv.objectives.inverse.InverseProblem.view`): its rows are the
``b`` experiments' observations, so forming them, the sample-space kernel and the state solves
cost about ``b/E`` of a full step (Haber, Chung & Herrmann 2012 sample the sources of a
many-right-hand-side problem the same way). The direction is ``d = J̃_Sᵀ (J̃_S J̃_Sᵀ + λI)⁻¹
ρ̃_S`` (:class:`~natinv.directions.SampleSpaceSolver`, rows scaled by ``√(E/b)`` and the noise),
with λ fixed at ``damping``·max diag G of the first sample (as SPRING's λ; Levenberg–Marquardt's
rule, ``adaptive=True``, shrinks λ while the samples' steps succeed until a step fits its sample
alone: on ``cases/heat_sources.toml``, 4 of 8 local heat spots per step, the whole misfit then
rose again after 20 steps where the fixed λ stayed at the noise level; ``bench/RESULTS.md``).

Momentum is what averages the sampled directions:

``none``
    ``θ_{k+1} = θ_k − η d_k``;
``heavy-ball``
    the step along ``−d_k`` from ``θ_k + β p_{k−1}`` (``p`` the last parameter step; Polyak);
``spring``
    SPRING (Goldshlager, Abrahamsen & Lin 2024): the direction carries it,
    ``φ_k = J̃_Sᵀ (J̃_S J̃_Sᵀ + λI)⁻¹ (ρ̃_S − β J̃_S φ_{k−1}) + β φ_{k−1}`` — the sampled
    Kaczmarz step with momentum, ``φ_{k−1}`` re-weighed by the current sample's rows.

Both are restarted (the plain step taken instead) when the step with momentum does not lower
``L_S`` (O'Donoghue & Candès 2015). The step size is Armijo's on ``L_S`` (base and trials on the
same sample) or fixed. The natural momenta that keep the last velocity as a function on the
rows (``natural-heavy-ball``...) do not apply: consecutive samples have other rows.

``sampling="rows"`` draws ``b`` of the ``N`` observation rows instead (sensors, region
averages, of any experiment): ``L_S = (N/b) Σ_{i∈S} ½ w_i ρ_i²``, unbiased the same way. A step
then solves the states of the experiments with a drawn row and one transposed solve per drawn
row (fewer where experiments share the operator and the sensors), and forms ``b`` rows: what
it saves over a full step is the rows' transposed solves and products, not the state solves.

:meth:`SampledGaussNewton.full_misfit` evaluates the whole misfit (E state solves), what a
discrepancy stop needs every few steps. θ, the samples, the velocity and every decision are
identical on all ranks.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from natinv import parallel
from natinv.cases.settings import sample_size
from natinv.directions import LevenbergMarquardt, SampleSpaceSolver
from natinv.gram import Gram
from natinv.objectives.inverse import (
    Experiment,
    InverseObjective,
    InverseProblem,
    ObservationRows,
)
from natinv.observations import Observations, diagonal_metric
from natinv.optim.steps import StepRule, make_step_rule

__all__ = ["SampledGaussNewton"]

Vector = npt.NDArray[np.float64]


class _SampledLoss:
    """``L_S`` at θ for the step rules (``inf`` where a model cannot be solved)."""

    def __init__(self, field: Any, view: InverseProblem) -> None:
        self.field, self.view = field, view

    def value(self, theta: Vector) -> float:
        try:
            return self.view.value(self.field.values(theta))
        except parallel.SolveError:
            return float("inf")


class _Combination(Experiment):
    """``Σ_k w_k`` (experiment k) for experiments that share the operator and the sensors and
    differ only in their loads: the state ``Σ_k w_k u_k`` (each ``u_k`` solved with the shared
    factors) carried by a twin of the first model, the data ``Σ_k w_k W_k^½ d_k`` and the
    identity as noise metric (``w_k = ξ_k σ_k⁻¹``: the whitened residuals combined)."""

    def __init__(self, sources: list[Experiment], carrier: Any, observations: Observations):
        super().__init__(carrier, [observations], "combination")
        self.sources = sources
        self.weights = np.zeros(len(sources))
        self._key: tuple[Any, ...] | None = None

    def combine(self, signs: Vector, scales: Vector, data: list[Vector]) -> None:
        """Set the weights ``ξ_k / σ_k`` and the combined data. Local."""
        self.weights = signs * scales
        self.observations[0].data[:] = sum(w * d for w, d in zip(self.weights, data, strict=True))
        self._key = None

    def _sources_key(self) -> tuple[Any, ...]:
        return (tuple(e.model.version for e in self.sources), self.model.m.x.array.tobytes())

    def current(self) -> bool:
        return self._key is not None and self._key == self._sources_key()

    def solve(self) -> None:
        """Every source's state at the current parameter (one factorisation for all), then
        their combination as the carrier's state. Collective."""
        for source in self.sources:
            source.solve()  # (only where its state is not the current parameter's)
        combined = sum(
            w * e.model.u.x.array for w, e in zip(self.weights, self.sources, strict=True)
        )
        self.model.restore(combined)
        self.model.solved_parameter = np.array(self.model.m.x.array)
        self._key = self._sources_key()

    @property
    def comm(self) -> Any:
        return self.model.comm


class SampledGaussNewton:
    """Natural Gauss–Newton steps on ``batch`` experiments drawn per step (see the module).

    Args:
        objective: the inverse objective of a neural field (its problem's experiments are
            sampled; point or region observations, no full field).
        batch: experiments (or combinations, or rows) per step, ``1 ≤ batch ≤ E`` (``N``
            rows), or a fraction of them in (0, 1) (``E``: with ``sampling="experiments"``
            every step is the full one).
        sampling: ``"experiments"`` (a sample of them per step) or ``"combinations"`` (random
            combinations of all of them, Haber, Chung & Herrmann 2012: ``batch`` experiments
            ``Σ_k ξ_k σ_k⁻¹ (experiment k)`` with Rademacher signs ξ, an unbiased estimate of
            the whole misfit; for experiments that share the operator and the sensors, each
            with one noise level) or ``"rows"`` (``batch`` of the ``N`` observation rows of all
            experiments, uniformly without replacement, misfit × N / b; the experiments with
            no drawn row are not solved; point or region sensors with independent errors).
        momentum: ``"none"``, ``"heavy-ball"`` or ``"spring"``.
        beta: the momentum factor in [0, 1).
        damping: λ relative to ``max diag(G)`` of the first sample.
        adaptive: adapt λ by Levenberg–Marquardt's rule (from ``damping``), as full steps do.
        step: ``"armijo"`` or a fixed step size.
        seed: of the samples' generator.
    """

    MOMENTA: ClassVar[tuple[str, ...]] = ("none", "heavy-ball", "spring")
    SAMPLINGS: ClassVar[tuple[str, ...]] = ("experiments", "combinations", "rows")

    def __init__(
        self,
        objective: InverseObjective,
        batch: int | float,
        *,
        momentum: str = "none",
        beta: float = 0.0,
        damping: float = 1e-3,
        step: str | float | StepRule = "armijo",
        seed: int = 0,
        sampling: str = "experiments",
        adaptive: bool = False,
    ) -> None:
        self.problem = objective.problem
        self.field = objective.field
        self.comm = objective.comm
        if sampling not in self.SAMPLINGS:
            raise ValueError(f"Unknown sampling {sampling!r}; choose one of {self.SAMPLINGS}")
        self.sampling = sampling
        # the rows sampled from: every block's, experiment by experiment
        self._blocks = [(e, obs) for e in self.problem.experiments for obs in e.observations]
        self._offsets = np.cumsum([0] + [obs.num_global for _, obs in self._blocks])
        count = int(self._offsets[-1]) if sampling == "rows" else len(self.problem.experiments)
        what = "observation rows" if sampling == "rows" else "experiments"
        if isinstance(batch, float) and 0.0 < batch < 1.0:  # a fraction of them
            batch = sample_size(batch, count)
        if not (isinstance(batch, int) and 1 <= batch <= count):
            raise ValueError(f"Invalid batch {batch}: {what} per step, in 1..{count}")
        self.count = count
        if momentum not in self.MOMENTA:
            raise ValueError(f"Unknown momentum {momentum!r}; choose one of {self.MOMENTA}")
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"Invalid momentum factor beta: {beta} (must lie in [0, 1))")
        self.batch, self.momentum, self.beta = batch, momentum, float(beta)
        self.step_rule = make_step_rule(step)
        bounds = {} if adaptive else {"minimum": damping, "maximum": damping}
        self.damping = LevenbergMarquardt(damping, relative=True, **bounds)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.theta = np.array(self.field.parameters, dtype=np.float64)
        self.velocity: Vector | None = None  # p_{k−1} (heavy-ball) or φ_{k−1} (spring)
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}  # the rows' and the Gram matrices' seconds, summed
        self._operators: dict[int, tuple[Any, int]] = {}  # Bᵀ per sensor set, all samples
        self.sample: list[int] = []
        self._combinations: list[_Combination] = []
        self.signs = np.zeros((0, len(self.problem.experiments)))  # the combinations' ξ
        self._subsets: list[Observations] = []  # the rows of the current step (sampling rows)
        if sampling == "combinations":
            self._combinations = self._build_combinations()
        if sampling == "rows":
            self._check_rows()

    @property
    def per_pass(self) -> int:
        """Steps per pass: ``⌈E / batch⌉`` experiments (or combinations), ``⌈N / batch⌉``
        rows."""
        return max(1, -(-self.count // self.batch))

    def draw(self) -> list[int]:
        """The next sample: experiment indices, or (combinations) the rows of :attr:`signs`
        (rank 0's draw, broadcast). Collective."""
        chosen = self.comm.bcast(self._next(), root=0)
        if self.sampling == "combinations":
            self.signs = np.asarray(chosen, dtype=np.float64)
            return list(range(self.batch))
        return [int(i) for i in chosen]

    def _next(self) -> npt.NDArray[Any]:
        if self.sampling == "combinations":
            return self.rng.choice([-1.0, 1.0], size=(self.batch, len(self.problem.experiments)))
        return np.sort(self.rng.choice(self.count, size=self.batch, replace=False))

    def _check_rows(self) -> None:
        """Sampling rows: every experiment steady, every block of point or region sensors with
        independent errors (one message on every rank). Collective."""
        parallel.check_all(
            self.comm,
            all(type(e) is Experiment for e in self.problem.experiments),
            "sampled observation rows: every experiment must be a steady one (time series: "
            "sample the experiments)",
        )
        for _, obs in self._blocks:  # (an empty subset runs the block's own checks)
            obs.subset(np.zeros(0, dtype=np.int64)).destroy()

    def _row_view(self) -> InverseProblem:
        """The sampled rows as experiments of their own (each drawn block's rows of an
        experiment that has any, sharing its model), misfit × N / b."""
        chosen = np.asarray(self.sample, dtype=np.int64)
        block = np.searchsorted(self._offsets, chosen, side="right") - 1
        experiments: dict[int, Experiment] = {}
        for b in np.unique(block):
            experiment, obs = self._blocks[b]
            subset = obs.subset(chosen[block == b] - self._offsets[b])
            self._subsets.append(subset)
            key = id(experiment)
            if key not in experiments:
                experiments[key] = Experiment(experiment.model, [], experiment.name)
            experiments[key].observations.append(subset)  # type: ignore[attr-defined]
        return self.problem.view_of(list(experiments.values()), self.count / self.batch)

    def _build_combinations(self) -> list[_Combination]:
        """``batch`` combination slots: a twin of the first model and a copy of its sensors
        with the identity as metric. Checked first (one message on every rank): every
        experiment steady, sharing the first one's operator, with one observation block of
        the same sensors and one noise level. Collective."""
        experiments = self.problem.experiments
        first = experiments[0]
        problems = []
        if not all(type(e) is Experiment for e in experiments):
            problems.append("every experiment must be a steady one (no time series)")
        elif not all(e.model.shares_operator(first.model) for e in experiments):
            problems.append("the experiments must share one operator (Model.share_operator)")
        elif not all(len(e.observations) == 1 for e in experiments):
            problems.append("each experiment needs exactly one observation block")
        elif any(e.observations[0].operator is None for e in experiments):
            problems.append("full-field observations cannot be combined")
        parallel.check_all(
            self.comm,
            not problems,
            lambda: f"random combinations of the experiments: {problems[0]}",
        )
        reference = first.observations[0]
        same = all(
            e.observations[0].operator.getSize() == reference.operator.getSize()
            for e in experiments
        ) and all(e.observations[0].operator.equal(reference.operator) for e in experiments[1:])
        self._scales = np.zeros(len(experiments))
        for k, e in enumerate(experiments):
            diagonal = e.observations[0].metric.getDiagonal()
            low, high = diagonal.min()[1], diagonal.max()[1]
            diagonal.destroy()
            self._scales[k] = np.sqrt(high)
            same = same and np.isclose(low, high, rtol=1e-12)
        parallel.check_all(
            self.comm,
            same,
            "random combinations of the experiments: every experiment needs the same sensors "
            "(an equal observation operator) and one noise level σ over them",
        )
        slots = []
        for j in range(self.batch):
            carrier = first.model.twin(f"combination {j}")
            rows = reference.num_owned
            identity = diagonal_metric(self.comm, np.ones(rows))
            observations = Observations(
                reference.space,
                reference.operator.copy(),
                np.zeros(rows),
                identity,
                f"combination {j}",
                index=reference.index,
            )
            slots.append(_Combination(list(experiments), carrier, observations))
        return slots

    def _view(self) -> InverseProblem:
        """The sampled problem of this step: the drawn experiments (misfit × E/b), or the
        drawn combinations (misfit × 1/b: each an unbiased estimate of the whole misfit)."""
        if self.sampling == "experiments":
            return self.problem.view(self.sample)
        if self.sampling == "rows":
            return self._row_view()
        data = [e.observations[0].data for e in self.problem.experiments]
        for combination, signs in zip(self._combinations, self.signs, strict=True):
            combination.combine(signs, self._scales, data)
        return self.problem.view_of(self._combinations, 1.0 / self.batch)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (replicated arrays only): θ, the velocity, the steps
        taken (the samples are drawn again from the seed) and the damping."""
        return {
            "theta": self.theta.copy(),
            "iteration": self.iteration,
            "velocity": np.zeros(0) if self.velocity is None else self.velocity.copy(),
            "damping": self.damping.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = np.array(state["theta"], dtype=np.float64)
        self.iteration = int(state["iteration"])
        velocity = np.asarray(state["velocity"], dtype=np.float64)
        self.velocity = velocity.copy() if velocity.size else None
        self.damping.load_state_dict(state["damping"])
        self.rng = np.random.default_rng(self.seed)
        for _ in range(self.iteration):  # the samples drawn so far
            self._next()

    def step(self) -> dict[str, Any]:
        """One sampled step; returns its record (the sampled loss before and after, the step
        size, restart, the sample, timings). Collective."""
        start = time.perf_counter()
        self.sample = self.draw()
        view = self._view()
        # (the rows' subsets are new each step: their Bᵀ are not kept for the next)
        operators = {} if self.sampling == "rows" else self._operators
        rows = ObservationRows(self.field, view, operators=operators)
        metric = rows.metric()
        gram = Gram(rows, metric)
        solver = SampleSpaceSolver(gram, self.damping)
        try:
            record = self._step(view, rows, gram, solver)
            for key, seconds in gram.timings.items():  # (each step's Gram is a new one)
                self.timings[key] = self.timings.get(key, 0.0) + seconds
        finally:
            for obj in (solver, gram, metric, rows, *self._subsets):
                obj.destroy()
            if operators is not self._operators:
                for matrix, _ in operators.values():
                    matrix.destroy()
            self._subsets = []
        record["time"] = time.perf_counter() - start
        self.history.append(record)
        return record

    def _step(
        self, view: InverseProblem, rows: ObservationRows, gram: Gram, solver: SampleSpaceSolver
    ) -> dict[str, Any]:
        theta, beta = self.theta, self.beta
        loss = _SampledLoss(self.field, view)
        # 1. L_S, its gradient, the rows and their residual at θ_k (one state solve and one
        #    adjoint per sampled experiment; the rows reuse the states)
        value, gradient_m = view.value_and_gradient(self.field.values(theta))
        gradient = self.field.vjp(gradient_m, theta)
        gram.update_jacobian(theta)
        data = [obs.data for obs in view.observations]
        residual = rows.values(theta) - (np.concatenate(data) if data else np.zeros(0))
        velocity = self.velocity if beta > 0 else None

        # 2. The direction: natural Gauss–Newton of L_S (SPRING: with the momentum in it)
        def direction(previous: Vector | None) -> Vector:
            if previous is None or self.momentum != "spring":
                return solver.solve_rows(residual)
            return solver.solve_rows(residual - beta * gram.apply(previous)) + beta * previous

        d = direction(velocity)
        heavy = velocity is not None and self.momentum == "heavy-ball"
        base = theta + beta * velocity if heavy and velocity is not None else theta
        # 3. The step on L_S from the base (θ_k + β p_{k−1} held: at most 3 backtracks); a
        #    momentum step that does not lower L_S is given up for the plain one (restart)
        rule = self.step_rule.limited(3) if base is not theta else self.step_rule
        eta, new, new_value = rule(loss, base, value, d, float(gradient @ d))
        restarted = False
        if velocity is not None and not (new_value < value):
            restarted = True
            d = direction(None)
            eta, new, new_value = self.step_rule(loss, theta, value, d, float(gradient @ d))
        if not np.isfinite(new_value) or not (new_value < value):
            eta, new, new_value = 0.0, theta, value
        predicted = eta * float(gradient @ d) - 0.5 * eta**2 * gram.quadratic(d)
        solver.report(value - new_value, predicted, eta)
        step = new - theta
        if self.momentum == "spring":
            self.velocity = None if eta == 0.0 else d
        else:
            self.velocity = step if np.any(step) else None
        self.theta = new
        self.iteration += 1
        return {
            "iteration": self.iteration,
            "loss": new_value,
            "loss_before": value,
            "step": eta,
            "restart": restarted,
            "direction_norm": float(np.linalg.norm(d)),
            "sample": list(self.sample),
            "damping": solver.damping,
        }

    def full_misfit(self, theta: Vector | None = None) -> float:
        """The whole misfit ``Σ_e L_e`` at θ (default the current one): every experiment's
        state solve. Collective."""
        point = self.theta if theta is None else np.asarray(theta, dtype=np.float64)
        self.problem.value(self.field.values(point))
        return float(self.problem.last["misfit"])

    def destroy(self) -> None:
        """Free the cached observation operators and the combinations' carriers. Collective."""
        for matrix, _ in self._operators.values():
            matrix.destroy()
        self._operators = {}
        for combination in self._combinations:
            combination.observations[0].destroy()
            combination.model.destroy()
        self._combinations = []
