"""Inverse problems: the misfit of measurements through finite-element models.

For a parameter field ``m`` (coefficients on ``W``) and experiments ``e`` (a model and its
observations, all sharing ``m``),

    L(m) = Σ_e Σ_o ½ (B_o u_e(m) − d_o)ᵀ W_o (B_o u_e(m) − d_o) + ½ α mᵀ R m,

with ``u_e(m)`` the solution of experiment ``e``'s model and ``R`` the mass (``l2``) or stiffness
(``h1``, the ``H¹`` seminorm) matrix of the Tikhonov term. The gradient takes one adjoint solve
per experiment, reusing the forward factorisation (:class:`~natinv.models.base.Model`).

:class:`InverseProblem` works on the coefficients of ``m`` (distributed, one parameter per dof:
the classical finite-element inversion); :class:`InverseObjective` composes it with a neural
field ``m = k(θ)`` and is an objective for the optimizers. Its Gauss–Newton metric
``G = (BSJ)ᵀ W (BSJ)`` is a :class:`~natinv.gram.Gram` whose rows are the predicted observations
(:class:`ObservationRows`), computed by tangent solves for all parameters at once.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import numpy.typing as npt
import ufl

from natinv import metrics, parallel
from natinv.fields import NeuralField, reference_length, same_space
from natinv.gram import Gram
from natinv.models.base import Model
from natinv.models.transient import TransientModel
from natinv.observations import Observations, TimeSeries

__all__ = [
    "Experiment",
    "GaussNewtonOperator",
    "InverseObjective",
    "InverseProblem",
    "ObservationRows",
    "TransientExperiment",
]

REGULARIZATIONS = ("l2", "h1")


@dataclass
class Experiment:
    """One load case: a model and what is measured of its state.

    Its methods are what :class:`InverseProblem` and the Gauss–Newton rows ask of an experiment
    (:class:`TransientExperiment` answers them for a trajectory): lists of arrays are per
    observation block, on the owned rows; vectors on ``W`` are the owned coefficients.
    """

    model: Model
    observations: Sequence[Observations]
    name: str = field(default="experiment")

    @property
    def _owned(self) -> int:
        space = self.model.parameter_space
        return space.dofmap.index_map.size_local * space.dofmap.index_map_bs

    def current(self) -> bool:
        """Whether the state belongs to the model's current parameter (this rank's view)."""
        return self.model.solved()

    def solve(self) -> None:
        """The state for the current parameter (solved again only when it is not). Collective."""
        self.model.solve_if_needed()

    def misfit(
        self, timings: dict[str, float], gradient: bool = False
    ) -> tuple[float, npt.NDArray[np.float64] | None]:
        """Solve, and return the misfit (and its gradient in ``m``, by one adjoint solve);
        seconds spent are added to ``timings["forward"]``/``["adjoint"]``. Collective."""
        model = self.model
        start = time.perf_counter()
        self.solve()
        u = model.u.x.petsc_vec
        if not gradient:
            value = sum(obs.misfit(u) for obs in self.observations)
            timings["forward"] += time.perf_counter() - start
            return value, None
        state_gradient = model.A.createVecLeft()
        value = sum(obs.misfit(u, state_gradient) for obs in self.observations)
        middle = time.perf_counter()
        timings["forward"] += middle - start
        model.adjoint(state_gradient)
        state_gradient.destroy()
        vector = model.parameter_gradient()
        out = np.array(vector.array_r[: self._owned])
        vector.destroy()
        timings["adjoint"] += time.perf_counter() - middle
        return value, out

    def predict(self) -> list[npt.NDArray[np.float64]]:
        """``B u`` of the last state. Collective."""
        u = self.model.u.x.petsc_vec
        return [obs.predict(u) for obs in self.observations]

    def apply(self, direction: PETSc.Vec) -> list[npt.NDArray[np.float64]]:
        """``B S v`` for a direction on ``W`` (one tangent solve). Collective."""
        du = self.model.A.createVecRight()
        self.model.tangent_vector(direction, du)
        rows = [obs.predict(du) for obs in self.observations]
        du.destroy()
        return rows

    def tangent_rows(self, directions: PETSc.Mat) -> list[npt.NDArray[np.float64]]:
        """``B S X`` (owned rows × k) for a dense matrix of directions on ``W``, with one block
        of tangent solves. Collective."""
        sensitivity = self.model.tangent(directions)
        rows = []
        for obs in self.observations:
            observed = obs.apply(sensitivity)
            rows.append(np.array(observed.getDenseArray(readonly=True)[: obs.num_owned]))
            observed.destroy()
        sensitivity.destroy()
        return rows

    def pull_back(self, rows: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float64]:
        """``Sᵀ Bᵀ W w`` for ``w`` on the owned rows of each block (one adjoint solve).
        Collective."""
        model = self.model
        y = model.A.createVecLeft()
        for obs, w in zip(self.observations, rows, strict=True):
            obs.pull_back(w, y)
        model.adjoint(y)  # Cᵀ λ = Sᵀ y
        vector = model.parameter_gradient()
        out = np.array(vector.array_r[: self._owned])
        for obj in (y, vector):
            obj.destroy()
        return out

    def gauss_newton_product(self, direction: PETSc.Vec) -> npt.NDArray[np.float64]:
        """``Sᵀ Bᵀ W B S v``: one tangent and one adjoint solve. Collective."""
        model = self.model
        du = model.A.createVecRight()
        model.tangent_vector(direction, du)
        y = model.A.createVecLeft()
        for obs in self.observations:
            obs.normal(du, y)
        model.adjoint(y)  # Aᵀ λ = −Bᵀ W B δu, and Cᵀ λ = Sᵀ Bᵀ W B δu
        vector = model.parameter_gradient()
        out = np.array(vector.array_r[: self._owned])
        for obj in (du, y, vector):
            obj.destroy()
        return out


class TransientExperiment:
    """A transient model (:class:`~natinv.models.transient.TransientModel`) and time series of
    its trajectory (:class:`~natinv.observations.TimeSeries`): the methods of
    :class:`Experiment`, with the adjoint run backward in time over the stored states and the
    tangents forward."""

    def __init__(
        self, model: TransientModel, observations: Sequence[TimeSeries], name: str = "experiment"
    ) -> None:
        self.model = model
        self.observations = list(observations)
        self.name = name
        self._predicted: list[npt.NDArray[np.float64]] = []

    _owned = Experiment._owned

    def current(self) -> bool:
        """Whether the trajectory belongs to the model's current parameter (this rank's
        view)."""
        model = self.model
        return model.solved_parameter is not None and np.array_equal(
            model.solved_parameter, model.m.x.array
        )

    def solve(self) -> None:
        """The trajectory for the current parameter, and its predicted values. Collective."""
        predicted = [np.zeros(obs.num_owned) for obs in self.observations]
        for n, u in self.model.solve():
            for obs, out in zip(self.observations, predicted, strict=True):
                obs.observe(n, obs.spatial.predict(u), out)
        self._predicted = predicted

    def misfit(
        self, timings: dict[str, float], gradient: bool = False
    ) -> tuple[float, npt.NDArray[np.float64] | None]:
        """As :meth:`Experiment.misfit`: the trajectory, then the backward adjoint pass."""
        start = time.perf_counter()
        self.solve()
        pairs = list(zip(self.observations, self._predicted, strict=True))
        residual = [predicted - obs.data for obs, predicted in pairs]
        local = sum(0.5 * float(obs.weights @ (p - obs.data) ** 2) for obs, p in pairs)
        value = parallel.allreduce_sum(self.model.comm, local)
        middle = time.perf_counter()
        timings["forward"] += middle - start
        if not gradient:
            return value, None
        out = self.pull_back(residual)
        timings["adjoint"] += time.perf_counter() - middle
        return value, out

    def predict(self) -> list[npt.NDArray[np.float64]]:
        return [p.copy() for p in self._predicted]

    def tangent_rows(self, directions: PETSc.Mat) -> list[npt.NDArray[np.float64]]:
        """As :meth:`Experiment.tangent_rows`, by sensitivities forward in time."""
        k = directions.getSize()[1]
        rows = [np.zeros((obs.num_owned, k)) for obs in self.observations]

        def observe(n: int, sensitivity: PETSc.Mat) -> None:
            for obs, out in zip(self.observations, rows, strict=True):
                observed = obs.spatial.apply(sensitivity)
                obs.observe(n, observed.getDenseArray(readonly=True)[: obs.spatial.num_owned], out)
                observed.destroy()

        self.model.forward_tangent(directions, observe)
        return rows

    def adjoint_rows(self, field_jacobian: PETSc.Mat) -> list[npt.NDArray[np.float64]]:
        """``B S J`` by one block of transposed solves per step, backward in time, a column
        per measured value (fewer solves than :meth:`tangent_rows` when there are fewer values
        than parameters). Collective."""
        model = self.model
        if model.time_invariant:
            return self._time_invariant_rows(field_jacobian)
        rows = []
        for obs in self.observations:
            like = PETSc.Mat().createDense(
                ((model.u.x.petsc_vec.getLocalSize(), None), (obs.num_owned, obs.num_global)),
                comm=model.comm,
            )
            like.setUp()
            like.assemble()
            gradients = model.backward_block(obs.seed, like)  # W × n
            observed = gradients.transposeMatMult(field_jacobian)  # n × P
            rows.append(np.array(observed.getDenseArray(readonly=True)[: obs.num_owned]))
            for obj in (like, gradients, observed):
                obj.destroy()
        return rows

    def _time_invariant_rows(self, field_jacobian: PETSc.Mat) -> list[npt.NDArray[np.float64]]:
        """``B S J`` of a time-invariant model: the gradient of each sensor at each step
        (:meth:`~natinv.models.transient.TransientModel.step_gradients`, a block of S
        transposed solves per step), combined into the values. Collective."""
        model = self.model
        space = model.parameter_space
        owned = space.dofmap.index_map.size_local * space.dofmap.index_map_bs
        total = space.dofmap.index_map.size_global * space.dofmap.index_map_bs
        rows = []
        for obs in self.observations:
            values = obs.combine(model.step_gradients(obs.transposed()))  # W × n
            gradients = PETSc.Mat().createDense(
                ((owned, total), (obs.num_owned, obs.num_global)), comm=model.comm
            )
            gradients.setUp()
            gradients.getDenseArray()[:] = values
            gradients.assemble()
            observed = gradients.transposeMatMult(field_jacobian)  # n × P
            rows.append(np.array(observed.getDenseArray(readonly=True)[: obs.num_owned]))
            for obj in (gradients, observed):
                obj.destroy()
        return rows

    def apply(self, direction: PETSc.Vec) -> list[npt.NDArray[np.float64]]:
        """As :meth:`Experiment.apply`: one tangent solve per step."""
        rows = [np.zeros(obs.num_owned) for obs in self.observations]

        def observe(n: int, du: PETSc.Vec) -> None:
            for obs, out in zip(self.observations, rows, strict=True):
                obs.observe(n, obs.spatial.predict(du), out)

        self.model.forward_tangent_vector(direction, observe)
        return rows

    def pull_back(self, rows: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float64]:
        """As :meth:`Experiment.pull_back`, by the adjoint backward in time."""
        weighted = [
            obs.weights * np.asarray(w, dtype=np.float64)
            for obs, w in zip(self.observations, rows, strict=True)
        ]

        def state_gradient(n: int, g: PETSc.Vec) -> None:
            for obs, w in zip(self.observations, weighted, strict=True):
                obs.pull_back(n, w, g)

        vector = self.model.backward(state_gradient)
        out = np.array(vector.array_r[: self._owned])
        vector.destroy()
        return out

    def gauss_newton_product(self, direction: PETSc.Vec) -> npt.NDArray[np.float64]:
        return self.pull_back(self.apply(direction))


class InverseProblem:
    """The misfit (plus Tikhonov term) as a function of the coefficients of ``m``.

    Args:
        experiments: the experiments; their models share one parameter space ``W``.
        regularization: ``None``, or ``(kind, α)`` with kind ``l2`` (``½α‖m‖²_L2``) or ``h1``
            (``½α|m|²_H1``), α ≥ 0.

    Call :meth:`destroy` to free the regularisation matrix (models and observations stay the
    caller's).
    """

    def __init__(
        self,
        experiments: Sequence[Experiment],
        regularization: tuple[str, float] | None = None,
    ) -> None:
        self.experiments = list(experiments)
        if not self.experiments:
            raise ValueError("An inverse problem needs at least one experiment")
        first = self.experiments[0].model
        self.comm = first.comm
        self.space = first.parameter_space
        for experiment in self.experiments:
            parallel.check_all(
                self.comm,
                experiment.model.parameter_space == self.space,
                f"experiment {experiment.name!r}: its model's parameter lives on another space",
            )
            for obs in experiment.observations:
                parallel.check_all(
                    self.comm,
                    obs.space == experiment.model.space,
                    f"experiment {experiment.name!r}: observations {obs.name!r} are of another "
                    "state space than the model's",
                )
        self.num_owned = self.space.dofmap.index_map.size_local * self.space.dofmap.index_map_bs
        self.R: PETSc.Mat | None = None
        self.alpha = 0.0
        if regularization is not None:
            kind, alpha = regularization
            if kind not in REGULARIZATIONS:
                raise ValueError(
                    f"Unknown regularization {kind!r}; choose one of {REGULARIZATIONS}"
                )
            if not (np.isfinite(alpha) and alpha >= 0):
                raise ValueError(f"Invalid regularization weight α = {alpha}: must be >= 0")
            self.alpha = float(alpha)
            if kind == "l2":
                self.R = metrics.l2(self.space)
            else:
                w, z = ufl.TrialFunction(self.space), ufl.TestFunction(self.space)
                form = ufl.inner(ufl.grad(w), ufl.grad(z)) * ufl.dx
                self.R = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form))
                self.R.assemble()
            self.R.scale(self.alpha)
        self._m = self.R.createVecRight() if self.R is not None else None
        self._rm = self.R.createVecLeft() if self.R is not None else None
        self.solves = 0
        self.last: dict[str, float] = {}
        self.timings = {"forward": 0.0, "adjoint": 0.0}  # seconds spent, cumulative
        self.weight = 1.0  # of the misfit (a view of a sample of the experiments: see view)
        self._view = False

    def view(self, indices: Sequence[int], weight: float | None = None) -> InverseProblem:
        """The same problem restricted to the experiments ``indices`` (a sample), its misfit
        scaled by ``weight`` (default ``E / len(indices)``: an unbiased estimate of the full
        misfit when the sample is drawn uniformly; the Tikhonov term is not scaled). It shares
        the experiments, the regularisation and the timings, and owns nothing. Local."""
        chosen = [self.experiments[int(i)] for i in indices]
        if not chosen:
            raise ValueError("a view of an inverse problem needs at least one experiment")
        return self.view_of(
            chosen, float(weight) if weight is not None else len(self.experiments) / len(chosen)
        )

    def view_of(self, experiments: Sequence[Experiment], weight: float) -> InverseProblem:
        """The problem's regularisation and timings with other experiments (e.g. combinations
        of this problem's, on the same parameter), their misfit scaled by ``weight``; owns
        nothing. Local."""
        view = copy.copy(self)
        view.experiments = list(experiments)
        view.weight = float(weight)
        view.last = {}
        view._view = True
        return view

    def set_parameter(self, m: npt.ArrayLike) -> None:
        """Set the owned coefficients of ``m`` in every model. Collective."""
        values = np.asarray(m, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            values.size == self.num_owned,
            lambda: f"parameter has {values.size} owned entries, expected {self.num_owned}",
        )
        parallel.ensure_finite(self.comm, values, "the parameter field", parallel.SolveError)
        for experiment in self.experiments:
            experiment.model.set_parameter(values)

    def _regularization(self, m: npt.NDArray[np.float64]) -> float:
        if self.R is None:
            return 0.0
        assert self._m is not None and self._rm is not None
        self._m.array[:] = m
        self.R.mult(self._m, self._rm)
        return 0.5 * float(self._m.dot(self._rm))

    def value(self, m: npt.ArrayLike) -> float:
        """``L(m)`` (forward solves only). Collective."""
        m = np.asarray(m, dtype=np.float64).reshape(-1)
        self.set_parameter(m)
        misfit = self.weight * sum(e.misfit(self.timings)[0] for e in self.experiments)
        self.solves += 1
        regularization = self._regularization(m)
        self.last = {"misfit": misfit, "regularization": regularization}
        return misfit + regularization

    def value_and_gradient(self, m: npt.ArrayLike) -> tuple[float, npt.NDArray[np.float64]]:
        """``L(m)`` and ``∂L/∂m`` on the owned coefficients (forward and adjoint solves).
        Collective."""
        m = np.asarray(m, dtype=np.float64).reshape(-1)
        self.set_parameter(m)
        misfit = 0.0
        gradient = np.zeros(self.num_owned)
        for experiment in self.experiments:
            value, part = experiment.misfit(self.timings, gradient=True)
            misfit += self.weight * value
            assert part is not None
            gradient += self.weight * part
        self.solves += 1
        regularization = self._regularization(m)
        if self._rm is not None:
            gradient += self._rm.array_r
        self.last = {"misfit": misfit, "regularization": regularization}
        return misfit + regularization, gradient

    def gauss_newton_product(self, v: PETSc.Vec, out: PETSc.Vec) -> None:
        """``out = H_GN v = Σ_e S_eᵀ Bᵀ W B S_e v + R v`` at the last solved state: one tangent
        and one adjoint solve per experiment, with the existing factors. Collective."""
        out.zeroEntries()
        for experiment in self.experiments:
            out.array[:] += self.weight * experiment.gauss_newton_product(v)
        if self.R is not None:
            self.R.multAdd(v, out, out)

    @property
    def observations(self) -> list[Observations]:
        return [obs for e in self.experiments for obs in e.observations]

    def destroy(self) -> None:
        if self._view:  # (a view owns nothing)
            return
        for obj in (self.R, self._m, self._rm):
            if obj is not None:
                obj.destroy()


class InverseObjective:
    """The inverse problem for a neural field ``m = k(θ)``: an objective for the optimizers.

    Args:
        field: the neural field on the models' parameter space.
        problem: the :class:`InverseProblem`.
        metric: the matrix of the natural metric on the field's space for :attr:`gram`
            (default: the L2 mass matrix, owned and destroyed here).

    :meth:`gauss_newton` builds the Gauss–Newton Gram instead. Call :meth:`destroy` when done.
    """

    def __init__(
        self, field: NeuralField, problem: InverseProblem, metric: PETSc.Mat | None = None
    ) -> None:
        self.field = field
        self.problem = problem
        self.comm = field.comm
        parallel.check_all(
            self.comm,
            same_space(field.space, problem.space),
            "the neural field lives on another space than the models' parameter",
        )
        self._own_metric = metric is None
        unit = reference_length(field)  # (the field's length unit: a unit-free metric)
        self.metric = metrics.l2(field.space, unit=unit) if metric is None else metric
        self.gram = Gram(field, self.metric)
        self.evaluations = 0
        self._residual_rows: ObservationRows | None = None

    def value(self, theta: npt.ArrayLike | None = None) -> float:
        """``L(k(θ))``, or ``inf`` where the model cannot be solved (a non-finite or
        inadmissible field, a diverging solve: trial points of a line search). Collective."""
        self.evaluations += 1
        try:
            return self.problem.value(self.field.values(theta))
        except parallel.SolveError:  # raised on every rank alike; other errors are bugs
            return float("inf")

    def value_and_gradient(
        self, theta: npt.ArrayLike | None = None
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """``L`` and ``∇θ L = Jᵀ ∂L/∂m`` (replicated). Collective."""
        self.evaluations += 1
        value, gradient = self.problem.value_and_gradient(self.field.values(theta))
        return value, self.field.vjp(gradient, theta)

    def gauss_newton(self) -> Gram:
        """The Gauss–Newton Gram ``(BSJ)ᵀ W (BSJ)`` of the data misfit (the caller destroys
        it, its :attr:`~natinv.gram.Gram.metric` and its :attr:`~natinv.gram.Gram.rows`)."""
        rows = ObservationRows(self.field, self.problem)
        return Gram(rows, rows.metric())

    def row_residual(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """``ρ = B u(k(θ)) − d`` on the owned observation rows (the order of
        :class:`ObservationRows`), so that ``∇θ L = (BSJ)ᵀ W ρ``: what the sample-space
        solver takes. Only for a loss without a Tikhonov term. Collective."""
        parallel.check_all(
            self.comm,
            self.problem.R is None,
            "the sample-space direction needs ∇L = (BSJ)ᵀ W ρ: a loss without a Tikhonov term",
        )
        if self._residual_rows is None:
            self._residual_rows = ObservationRows(self.field, self.problem)
        data = [obs.data for obs in self.problem.observations]
        values = self._residual_rows.values(theta)
        return values - (np.concatenate(data) if data else np.zeros(0))

    def gauss_newton_operator(self) -> GaussNewtonOperator:
        """The Gauss–Newton Gram as a matrix-free operator (:class:`GaussNewtonOperator`; the
        caller destroys it)."""
        return GaussNewtonOperator(self.field, self.problem)

    def destroy(self) -> None:
        self.gram.destroy()
        if self._residual_rows is not None:
            self._residual_rows.destroy()
        if self._own_metric:
            self.metric.destroy()


class GaussNewtonOperator:
    """``G = Jᵀ H J`` as products, never formed: ``J = ∂k/∂θ`` the field's Jacobian (kept, dense,
    cheap: no PDE solve) and ``H = Σ_e S_eᵀ Bᵀ W B S_e + R`` the Gauss–Newton Hessian of the
    loss in the field (:meth:`InverseProblem.gauss_newton_product`: one tangent and one adjoint
    solve per experiment with the existing factors).

    For many observations *and* many parameters (full-field data, P in the thousands), forming
    ``BSJ`` costs ``min(n, P)`` solves and ``G`` an ``nP²`` product each step; a Krylov solve
    with this operator costs two solves per iteration instead (:class:`~natinv.directions.
    GaussNewtonCG`). It offers what the optimizers use of a :class:`~natinv.gram.Gram`:
    :meth:`update_jacobian`, :meth:`mult`, :meth:`quadratic`, and for natural momentum
    :meth:`apply` (``B S J p``, the rows) and :meth:`pull_back` (``Jᵀ Sᵀ Bᵀ W w``). Unlike the
    assembled Gram it includes the Tikhonov term's ``R`` (the Hessian of the whole loss).
    """

    def __init__(self, field: NeuralField, problem: InverseProblem) -> None:
        self.field, self.problem, self.comm = field, problem, field.comm
        self.rows = ObservationRows(field, problem)  # the states, and the rows' values
        self.num_parameters = field.num_parameters
        self.version = 0  # bumped whenever J changes
        self.timings = {"jacobian": 0.0, "gram": 0.0}
        self._jacobian: npt.NDArray[np.float64] | None = None
        self._v = PETSc.Vec().createMPI((problem.num_owned, PETSc.DECIDE), comm=self.comm)
        self._hv = self._v.duplicate()

    def update_jacobian(self, theta: npt.ArrayLike | None = None) -> None:
        """Solve the state at θ (if not current) and keep the field Jacobian there. Collective."""
        start = time.perf_counter()
        self.rows._solve(theta)
        if self._jacobian is None:
            self._jacobian = np.empty((self.field.num_owned, self.num_parameters), order="F")
        self.field.jacobian(theta, out=self._jacobian)
        self.version += 1
        self.timings["jacobian"] += time.perf_counter() - start

    def assemble(self, theta: npt.ArrayLike | None = None, *, jacobian: bool = True) -> None:
        """(Nothing to form; brings J to θ when asked.)"""
        if jacobian or self.version == 0:
            self.update_jacobian(theta)

    def _current(self) -> npt.NDArray[np.float64]:
        if self._jacobian is None:
            self.update_jacobian()
        assert self._jacobian is not None
        return self._jacobian

    def mult(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``G x`` for a replicated ``x`` (replicated result). Collective."""
        start = time.perf_counter()
        jacobian = self._current()
        self._v.array[:] = jacobian @ np.asarray(x, dtype=np.float64)
        self.problem.gauss_newton_product(self._v, self._hv)
        out = parallel.allreduce_array(self.comm, jacobian.T @ self._hv.array_r)
        self.timings["gram"] += time.perf_counter() - start
        return out

    def quadratic(self, direction: npt.ArrayLike) -> float:
        """``vᵀ G v``. Collective."""
        v = np.asarray(direction, dtype=np.float64)
        return float(v @ self.mult(v))

    def scale(self, probe: npt.ArrayLike) -> float:
        """The scale a relative damping is measured in: the Rayleigh quotient ``gᵀGg / gᵀg`` at
        a probe ``g`` (``max diag(G)`` would take P products). Collective."""
        g = np.asarray(probe, dtype=np.float64)
        norm = float(g @ g)
        return self.quadratic(g) / norm if norm > 0 else 1.0

    def apply(self, direction: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``B S J p`` on the owned observation rows (one tangent solve per experiment).
        Collective."""
        self._v.array[:] = self._current() @ np.asarray(direction, dtype=np.float64)
        parts = [rows for e in self.problem.experiments for rows in e.apply(self._v)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def pull_back(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``Jᵀ Sᵀ Bᵀ W w`` for ``w`` on the owned observation rows (one adjoint solve per
        experiment; replicated result). Collective."""
        w = np.asarray(rows, dtype=np.float64).reshape(-1)
        gradient = np.zeros(self.problem.num_owned)
        offset = 0
        for experiment in self.problem.experiments:
            parts = []
            for obs in experiment.observations:
                parts.append(w[offset : offset + obs.num_owned])
                offset += obs.num_owned
            gradient += experiment.pull_back(parts)
        return parallel.allreduce_array(self.comm, self._current().T @ gradient)

    def destroy(self) -> None:
        """Free the rows' and this object's PETSc objects. Collective."""
        self.rows.destroy()
        self._v.destroy()
        self._hv.destroy()


class ObservationRows:
    """The predicted observations ``B u(k(θ))`` of every experiment as rows (a
    :class:`~natinv.gram.Rows` provider); their Jacobian is ``B S J`` by tangent solves."""

    def __init__(
        self,
        field: NeuralField,
        problem: InverseProblem,
        method: str = "auto",
        operators: dict[int, tuple[PETSc.Mat, int]] | None = None,
    ) -> None:
        self.field = field
        self.problem = problem
        self.comm = field.comm
        self.num_parameters = field.num_parameters
        self.blocks = problem.observations
        self.num_owned = int(sum(obs.num_owned for obs in self.blocks))
        self.num_global = int(sum(obs.num_global for obs in self.blocks))
        if method not in ("auto", "tangent", "adjoint"):
            raise ValueError(f"Jacobian method {method!r}: expected auto, tangent or adjoint")
        observed = all(
            obs.operator is not None or isinstance(obs, TimeSeries) for obs in self.blocks
        )
        if method == "adjoint" and not observed:
            raise ValueError("the adjoint Jacobian needs observation operators (no full field)")
        if method == "auto":  # a solve per observation row, or per parameter: the fewer
            method = "adjoint" if observed and self.num_global < self.num_parameters else "tangent"
        self.method = method
        self._field_jacobian: PETSc.Mat | None = None  # J = ∂k/∂θ, kept across calls
        # Bᵀ of each observation block, dense, and the first block with an equal B (a cache
        # the caller may share between the rows of several views of a problem, and free)
        self._own_operators = operators is None
        self._operators: dict[int, tuple[PETSc.Mat, int]] = {} if operators is None else operators
        self._adjoints: dict[tuple[int, int, int], PETSc.Mat] = {}  # Λ, within jacobian()

    @property
    def parameters(self) -> npt.NDArray[np.float64]:
        return self.field.parameters

    def _solve(self, theta: npt.ArrayLike | None) -> None:
        """Bring every model's state to k(θ), solving only those whose state belongs to
        another parameter (e.g. after line-search trials). Collective."""
        values = self.field.values(theta)
        self.problem.set_parameter(values)
        for experiment in self.problem.experiments:
            if parallel.allreduce_max(self.comm, not experiment.current()):
                experiment.solve()

    def values(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """The owned predicted observations, experiment by experiment. Collective."""
        self._solve(theta)
        parts = [rows for e in self.problem.experiments for rows in e.predict()]
        return np.concatenate(parts) if parts else np.zeros(0)

    def jacobian(
        self, theta: npt.ArrayLike | None = None, out: npt.NDArray[np.float64] | None = None
    ) -> npt.NDArray[np.float64]:
        """``B S J`` on the owned rows (one tangent solve block per experiment). Collective."""
        self._solve(theta)
        if out is None:
            out = np.empty((self.num_owned, self.num_parameters))
        if self._field_jacobian is None:
            self._field_jacobian = PETSc.Mat().createDense(
                ((self.field.num_owned, self.field.num_global), (None, self.num_parameters)),
                comm=self.comm,
            )
            self._field_jacobian.setUp()
        field_jacobian = self._field_jacobian
        self.field.jacobian(theta, out=field_jacobian.getDenseArray())
        field_jacobian.assemble()
        row = 0
        for experiment in self.problem.experiments:
            if self.method == "adjoint" and isinstance(experiment, TransientExperiment):
                for block in experiment.adjoint_rows(field_jacobian):
                    out[row : row + block.shape[0]] = block
                    row += block.shape[0]
                continue
            if self.method == "adjoint":
                row = self._adjoint_rows(experiment, field_jacobian, out, row)
                continue
            for block in experiment.tangent_rows(field_jacobian):
                out[row : row + block.shape[0]] = block
                row += block.shape[0]
        for matrix in self._adjoints.values():
            matrix.destroy()
        self._adjoints = {}
        return out

    def destroy(self) -> None:
        """Free the field Jacobian's PETSc matrix. Collective."""
        if self._field_jacobian is not None:
            self._field_jacobian.destroy()
            self._field_jacobian = None
        if self._own_operators:
            for matrix, _ in self._operators.values():
                matrix.destroy()
            self._operators = {}

    def _adjoint_rows(
        self,
        experiment: Experiment,
        field_jacobian: PETSc.Mat,
        out: npt.NDArray[np.float64],
        row: int,
    ) -> int:
        """``B S J = ((S^T B^T)^T) J`` block by block: one transposed solve per observation
        row, ``Λ = P A⁻ᵀ Bᵀ``, then ``(−Cᵀ Λ)ᵀ J``; the rows land where each block owns them.
        Experiments that share the operator (:meth:`~natinv.models.base.Model.share_operator`)
        and the sensors (an equal ``B``) share ``Λ``: the transposed solves are made once per
        sensor, not once per sensor and experiment (``self._adjoints``, emptied by
        :meth:`jacobian`). Collective."""
        model = experiment.model
        for obs in experiment.observations:
            transposed, index = self._transposed(obs)
            key = (id(model._op), model.assemblies, index)
            if key not in self._adjoints:
                self._adjoints[key] = model.adjoint_block(transposed)  # V × n
            gradients = model.sensitivity_transpose(self._adjoints[key])  # W × n
            observed = gradients.transposeMatMult(field_jacobian)  # n × P
            out[row : row + obs.num_owned] = observed.getDenseArray(readonly=True)[: obs.num_owned]
            row += obs.num_owned
            for obj in (gradients, observed):
                obj.destroy()
        return row

    def _transposed(self, obs: Observations) -> tuple[PETSc.Mat, int]:
        """``Bᵀ`` (V × n, columns laid out as B's rows) as a dense matrix, made once per
        observation block and kept (the observation operator does not change), and the index
        of the first block with an equal ``B`` (the same sensors: their adjoints are the same).
        Collective."""
        key = id(obs)
        if key not in self._operators:
            # petsc4py's transpose() and convert() without an output matrix work in place
            rows = obs.operator.transpose(PETSc.Mat())
            rows.convert("dense")
            index = len(self._operators)
            for matrix, first in self._operators.values():
                # (global sizes first: the same verdict on every rank before anything collective)
                if matrix.getSize() != rows.getSize():
                    continue
                other_layout = matrix.getSizes() != rows.getSizes()
                if not parallel.allreduce_max(self.comm, other_layout) and matrix.equal(rows):
                    index = first
                    break
            self._operators[key] = (rows, index)
        return self._operators[key]

    def metric(self) -> PETSc.Mat:
        """The block-diagonal noise metric of all observations, in the rows' layout, times the
        problem's misfit weight (a view's). The caller destroys it."""
        matrix = _block_diagonal(self.comm, [obs.metric for obs in self.blocks])
        if self.problem.weight != 1.0:
            matrix.scale(self.problem.weight)
        return matrix


def _block_diagonal(comm: parallel.Comm, blocks: Sequence[PETSc.Mat]) -> PETSc.Mat:
    """``diag(W_1, W_2, ...)`` with each rank's rows of every block consecutive. Collective."""
    sizes = [b.getLocalSize()[0] for b in blocks]
    local = int(sum(sizes))
    starts = comm.allgather([b.getOwnershipRange()[0] for b in blocks])  # [rank][block]
    counts = comm.allgather(sizes)  # [rank][block]
    totals = [int(sum(c)) for c in counts]
    combined_start = np.concatenate([[0], np.cumsum(totals)])[:-1]
    ends = [
        [s + c for s, c in zip(rs, rc, strict=True)] for rs, rc in zip(starts, counts, strict=True)
    ]
    csr = [block.getValuesCSR() for block in blocks]
    width = max([int(np.diff(c[0]).max(initial=0)) for c in csr] + [1])
    total = int(sum(totals))
    matrix = PETSc.Mat().createAIJ(((local, total), (local, total)), nnz=(width, width), comm=comm)
    matrix.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
    matrix.setUp()
    row = int(combined_start[comm.rank])
    for index, (indptr, indices, values) in enumerate(csr):
        # a column c of block `index` is owned by the rank whose range holds it
        block_starts = np.array([s[index] for s in starts])
        block_ends = np.array([e[index] for e in ends])
        offset = np.array([sum(counts[r][:index]) for r in range(comm.size)])
        for i in range(indptr.size - 1):
            cols = indices[indptr[i] : indptr[i + 1]]
            owner = np.searchsorted(block_ends, cols, side="right")
            mapped = combined_start[owner] + offset[owner] + cols - block_starts[owner]
            matrix.setValues(row, mapped.astype(PETSc.IntType), values[indptr[i] : indptr[i + 1]])
            row += 1
    matrix.assemble()
    return matrix
