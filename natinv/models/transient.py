"""Transient models ``∂(c u)/∂t + F(u, m; v) = 0`` on ``[0, T]``, stepped with the θ-scheme.

With a fixed step ``Δt`` and ``u_0`` given (independent of ``m``), each step solves

    R_n(u_{n+1}, u_n, m; v) = ⟨c (u_{n+1} − u_n) / Δt, v⟩ + θ F(u_{n+1}, m; v)
                              + (1 − θ) F(u_n, m; v) = 0,

``θ = 1`` implicit Euler, ``θ = ½`` Crank–Nicolson, through a :class:`~natinv.models.base.Model`
of ``R_n`` in ``u_{n+1}`` (Newton when ``F`` is nonlinear in ``u``). The states of all steps
are stored (:attr:`TransientModel.memory` reports the bytes) for the backward pass:

- the gradient of a misfit of the trajectory runs the discrete adjoint backward in time,
  ``A_nᵀ λ_n = −g_n − E_nᵀ λ_{n+1}`` with ``A_n = ∂R_{n−1}/∂u_n`` and ``E_n = ∂R_n/∂u_n``, and
  sums ``(∂R_{n−1}/∂m)ᵀ λ_n`` (:meth:`TransientModel.backward`);
- the sensitivities of the trajectory to k parameter directions run forward,
  ``A_{n+1} δU_{n+1} = −E_n δU_n − (∂R_n/∂m) X`` (:meth:`TransientModel.forward_tangent`).

When ``F`` is affine in ``u``, ``A`` depends on ``m`` alone: it is assembled and factorised once
per parameter and serves every step of the state, the adjoint and the tangent passes (a nonlinear
``F`` re-assembles it at each step's state).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import numpy.typing as npt
import ufl
from ufl.algorithms import expand_derivatives

from natinv import parallel, progress
from natinv.models.base import Model

__all__ = ["SCHEMES", "TransientModel", "heat"]

SCHEMES = {"euler": 1.0, "crank-nicolson": 0.5}

Residual = Callable[..., ufl.Form]


class TransientModel:
    """``∂(c u)/∂t + F(u, m; v) = 0``, ``u(0) = u_0``, on ``steps`` steps of ``dt``.

    Args:
        state_space: ``V``.
        parameter: ``m`` on ``W`` (as for :class:`~natinv.models.base.Model`).
        residual: ``(u, m, v, t) -> F``, a UFL form linear in ``v``; ``t`` is a
            :class:`dolfinx.fem.Constant` holding the time the form is evaluated at.
        initial: ``u_0``, a Function on ``V`` (copied; Dirichlet values imposed on it).
        dt: the step ``Δt > 0``.
        steps: the number of steps (the horizon is ``T = steps · dt``).
        bcs: Dirichlet conditions on ``V`` (constant in time).
        scheme: ``"euler"`` (θ = 1) or ``"crank-nicolson"`` (θ = ½), or θ ∈ (0, 1] itself.
        capacity: ``c`` in the time derivative (a number or a UFL expression, not of ``m``).
        memory: the bytes per rank the stored states may take. When all ``N + 1`` do not fit,
            every k-th state is kept (checkpoints) and the states between two checkpoints are
            solved again when a backward or tangent pass reaches them (one more state solve
            per step and pass), k chosen to need the fewest states (about ``2√N``).
        **options: the keyword arguments of :class:`~natinv.models.base.Model` (``check``,
            ``options_prefix``, ``petsc_options``, ``name``).

    Call :meth:`destroy` when done.
    """

    def __init__(
        self,
        state_space: dolfinx.fem.FunctionSpace,
        parameter: dolfinx.fem.Function,
        residual: Residual,
        initial: dolfinx.fem.Function,
        dt: float,
        steps: int,
        bcs: Sequence[dolfinx.fem.DirichletBC] = (),
        *,
        scheme: str | float = "euler",
        capacity: float | ufl.core.expr.Expr = 1.0,
        memory: int = 2**30,
        **options: Any,
    ) -> None:
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"Invalid time step dt = {dt}: must be > 0")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"Invalid number of steps {steps}: must be an integer >= 1")
        if isinstance(scheme, str):
            if scheme not in SCHEMES:
                raise ValueError(f"Unknown time scheme {scheme!r}; choose one of {list(SCHEMES)}")
            theta = SCHEMES[scheme]
        else:
            theta = float(scheme)
        if not (0.0 < theta <= 1.0):
            raise ValueError(f"Invalid θ = {theta}: the θ-scheme needs 0 < θ <= 1")
        mesh = state_space.mesh
        self.comm = mesh.comm
        self.space = state_space
        self.dt = float(dt)
        self.steps = int(steps)
        self.theta = theta
        self.name = options.get("name", "transient")
        self.previous = dolfinx.fem.Function(state_space, name="previous")
        self.time = dolfinx.fem.Constant(mesh, 0.0)  # t_{n+1} while stepping
        self.time_previous = dolfinx.fem.Constant(mesh, 0.0)  # t_n
        step = dolfinx.fem.Constant(mesh, self.dt)
        c = dolfinx.fem.Constant(mesh, float(capacity)) if np.isscalar(capacity) else capacity
        previous = self.previous

        def stepped(u, m, v):  # type: ignore[no-untyped-def]
            form = ufl.inner(c * (u - previous) / step, v) * ufl.dx
            form += theta * residual(u, m, v, self.time)
            if theta < 1.0:
                form += (1.0 - theta) * residual(previous, m, v, self.time_previous)
            return form

        self.model = Model(state_space, parameter, stepped, bcs, **options)
        jacobian = expand_derivatives(
            ufl.derivative(self.model.residual, self.model.u, ufl.TrialFunction(state_space))
        )
        clocks = (self.time, self.time_previous)
        self.model.varying_operator |= any(c in clocks for c in jacobian.constants())
        self.model.reuse_operator = True
        # A and E the same at every step (given m): the rows by one pass per sensor
        self.time_invariant = not self.model.varying_operator
        self.m = self.model.m
        self.parameter_space = self.model.parameter_space
        self.bcs = self.model.bcs
        self.u = self.model.u
        self.initial = np.array(initial.x.array)
        for bc in self.bcs:
            bc.set(self.initial)
        # E = ∂R/∂u_n: its action (tangent) and its adjoint's action on λ (backward pass)
        du = ufl.TrialFunction(state_space)
        self._lambda = dolfinx.fem.Function(state_space, name="next adjoint")
        coupling = ufl.derivative(self.model.residual, previous, du)
        self._E = dolfinx.fem.form(coupling)
        self._E_adjoint = dolfinx.fem.form(ufl.action(ufl.adjoint(coupling), self._lambda))
        self._E_matrix: PETSc.Mat | None = None
        self._E_state: int | None = None
        # the stored states (local arrays): every one, or every `stride`-th and one segment
        state_bytes = parallel.allreduce_max(self.comm, float(self.u.x.array.nbytes))
        self.stride = _stride(self.steps, int(state_bytes), int(memory), self.name)
        self._stored: dict[int, npt.NDArray[np.float64]] = {}
        self._segment: dict[int, npt.NDArray[np.float64]] = {}
        self._segment_start: int | None = None
        self.recomputed = 0  # states solved again from checkpoints
        self.solved_parameter: npt.NDArray[np.float64] | None = None
        self.solves = 0  # trajectories

    # -- the parts a Model offers ----------------------------------------------------------------

    @property
    def times(self) -> npt.NDArray[np.float64]:
        """``t_0 = 0, ..., t_N = T``."""
        return self.dt * np.arange(self.steps + 1)

    @property
    def horizon(self) -> float:
        return self.dt * self.steps

    @property
    def memory(self) -> int:
        """Bytes held by the stored states on this rank (checkpoints and a segment)."""
        held = [*self._stored.values(), *self._segment.values()]
        return int(sum(state.nbytes for state in held))

    def _array(self, n: int) -> npt.NDArray[np.float64]:
        """``u_n`` of the last trajectory (a local array): stored, or solved again from the
        checkpoint before it together with the rest of its segment. Collective when it
        solves (every rank asks for the same states in the same order)."""
        if n in self._stored:
            return self._stored[n]
        start = n - n % self.stride
        if self._segment_start != start:
            self._segment = {}
            self._segment_start = start
            current = self._stored[start]
            for k in range(start, min(start + self.stride, self.steps + 1) - 1):
                self._step(k, current)
                current = np.array(self.u.x.array)
                self._segment[k + 1] = current
                self.recomputed += 1
        return self._segment[n]

    def _step(self, n: int, previous: npt.NDArray[np.float64]) -> None:
        """Solve step ``n → n+1`` from ``previous`` into ``u`` (Newton from ``previous``: a
        state solved again repeats the first solve). Collective."""
        progress.tick(lambda: f"{self.name}: state step {n + 1} of {self.steps}")
        self.previous.x.array[:] = previous
        self.u.x.array[:] = previous
        self.time_previous.value = self.dt * n
        self.time.value = self.dt * (n + 1)
        try:
            self.model.solve()
        except parallel.SolveError as exc:
            raise parallel.SolveError(f"{exc} (step {n + 1} of {self.steps})") from None

    def timed_step(self) -> float:
        """Seconds one step takes at the current ``m``: the second step from ``u_0`` (the
        first factorises, as once per trajectory), the slowest rank's. Collective.

        Raises:
            SolveError: as :meth:`solve`.
        """
        self._step(0, self.initial)
        first = np.array(self.u.x.array)
        start = time.perf_counter()
        self._step(min(1, self.steps - 1), first)
        return parallel.allreduce_max(self.comm, time.perf_counter() - start)

    @property
    def linear_solves(self) -> int:
        return self.model.linear_solves

    @property
    def assemblies(self) -> int:
        """Assemblies (each a factorisation) of the step operator so far."""
        return self.model.assemblies

    def set_parameter(self, values: npt.ArrayLike) -> None:
        self.model.set_parameter(values)

    def _load(self, n: int) -> None:
        """Make step ``n → n+1`` current: ``u_n`` as the previous state, ``u_{n+1}`` as the
        state (``A`` and ``∂R/∂m`` at them). Collective."""
        progress.tick(lambda: f"{self.name}: adjoint or tangent pass at step {n + 1}")
        previous, current = self._array(n), self._array(n + 1)
        self.previous.x.array[:] = previous
        self.time_previous.value = self.dt * n
        self.time.value = self.dt * (n + 1)
        self.model.restore(current)

    # -- the trajectory ------------------------------------------------------------------------

    def solve(self) -> Iterator[tuple[int, PETSc.Vec]]:
        """Step from ``u_0`` to ``u_N`` for the current ``m``, storing the states (every one,
        or the checkpoints); yields ``(n, u_n)`` for n = 0..N (the state vector is valid until
        the next step). Collective.

        Raises:
            SolveError: the parameter is not admissible, a step diverged or gave NaN (the step
                is named).
        """
        self.solved_parameter = None
        self._stored = {0: self.initial.copy()}
        self._segment, self._segment_start = {}, None
        self.u.x.array[:] = self.initial
        yield 0, self.u.x.petsc_vec
        previous = self._stored[0]
        for n in range(self.steps):
            self._step(n, previous)
            previous = np.array(self.u.x.array)
            if (n + 1) % self.stride == 0 or n + 1 == self.steps:
                self._stored[n + 1] = previous
            yield n + 1, self.u.x.petsc_vec
        self.solves += 1
        self.solved_parameter = np.array(self.m.x.array)

    def state(self, n: int) -> PETSc.Vec:
        """``u_n`` of the last trajectory as the model's state vector (overwritten by the next
        call or solve). Collective (it may solve again from a checkpoint)."""
        self._require_trajectory()
        values = self._array(n)
        self.u.x.array[:] = values
        return self.u.x.petsc_vec

    def _coupling_matrix(self) -> PETSc.Mat:
        """``E_n = ∂R_n/∂u_n`` at the loaded step (for a linear model once per ``m``)."""
        model = self.model
        if self._E_matrix is None:
            self._E_matrix = dolfinx.fem.petsc.create_matrix(self._E)
        key = model.version if model.varying_operator else model.assemblies
        if self._E_state != key:
            self._E_matrix.zeroEntries()
            dolfinx.fem.petsc.assemble_matrix(self._E_matrix, self._E)
            self._E_matrix.assemble()
            self._E_state = key
        return self._E_matrix

    def backward(self, state_gradient: Callable[[int, PETSc.Vec], None]) -> PETSc.Vec:
        """``dJ/dm`` for a misfit ``J(u_0, ..., u_N)`` of the last trajectory, by the discrete
        adjoint backward in time. ``state_gradient(n, g)`` adds ``∂J/∂u_n`` to ``g`` (a zeroed
        state vector). A vector on ``W`` (owned entries summed); the caller destroys it.
        Collective."""
        self._require_trajectory()
        model = self.model
        g = model.A.createVecLeft()
        coupled = dolfinx.fem.petsc.create_vector(self.space)  # ghosted: assembled into
        gradient: PETSc.Vec | None = None
        for n in range(self.steps, 0, -1):
            self._load(n - 1)  # A_n = ∂R_{n−1}/∂u_n and ∂R_{n−1}/∂m at (u_n, u_{n−1})
            g.zeroEntries()
            state_gradient(n, g)
            if n < self.steps:
                g.axpy(1.0, coupled)  # E_nᵀ λ_{n+1}, assembled at step n+1 → n+2 below
            model.adjoint(g)
            part = model.parameter_gradient()
            if gradient is None:
                gradient = part
            else:
                gradient.axpy(1.0, part)
                part.destroy()
            if n > 1:  # E_{n−1}ᵀ λ_n needs the step n−1 → n loaded: it is
                self._lambda.x.array[:] = model.p.x.array
                with coupled.localForm() as local:
                    local.set(0.0)
                dolfinx.fem.petsc.assemble_vector(coupled, self._E_adjoint)
                coupled.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
        for obj in (g, coupled):
            obj.destroy()
        assert gradient is not None
        return gradient

    def backward_block(self, seed: Callable[[int, PETSc.Mat], None], like: PETSc.Mat) -> PETSc.Mat:
        """:meth:`backward` for k functionals at once: ``seed(n, G)`` adds ``∂J_j/∂u_n`` to
        column j of the zeroed dense ``G`` (laid out as ``like``, state × k); returns the
        dense W × k matrix of their gradients (columns laid out as ``like``'s; the caller
        destroys it). One block of transposed solves per step. Collective."""
        self._require_trajectory()
        model = self.model
        g = like.duplicate()
        coupled: PETSc.Mat | None = None
        gradient: PETSc.Mat | None = None
        for n in range(self.steps, 0, -1):
            self._load(n - 1)
            g.zeroEntries()
            seed(n, g)
            if coupled is not None:
                g.axpy(1.0, coupled)  # E_nᵀ Λ_{n+1}
                coupled.destroy()
                coupled = None
            g.scale(-1.0)
            model._zero_bc_block(g)
            adjoint = model._mat_solve(g, transpose=True)
            model._zero_bc_block(adjoint)
            part = model._sensitivity().transposeMatMult(adjoint)
            if gradient is None:
                gradient = part
            else:
                gradient.axpy(1.0, part)
                part.destroy()
            if n > 1:  # E_{n−1}ᵀ Λ_n, with the step n−1 → n loaded
                coupled = self._coupling_matrix().transposeMatMult(adjoint)
            adjoint.destroy()
        g.destroy()
        assert gradient is not None
        return gradient

    def step_gradients(self, seeds: PETSc.Mat) -> npt.NDArray[np.float64]:
        """For a time-invariant model (:attr:`time_invariant`): the gradients in ``m`` of
        ``b_sᵀ u_n`` for the S columns ``b_s`` of the dense ``seeds`` (state × S) and every
        step n = 1..N, as the owned rows of W × (S·N) (column ``(n − 1)·S + s``).

        With ``A`` and ``E`` the same at every step, the adjoint of ``b_sᵀ u_n`` at step
        ``n − ℓ`` is ``L_s(ℓ)``, ``L(0) = A⁻ᵀ(−b)``, ``L(ℓ + 1) = −A⁻ᵀ Eᵀ L(ℓ)``, whatever
        ``n``: one block of S transposed solves per step instead of one per measured value,
        and ``∇_m b_sᵀ u_n = Σ_{i ≤ n} C_iᵀ L_s(n − i)``. Collective."""
        self._require_trajectory()
        if not self.time_invariant:
            raise RuntimeError(f"{self.name}: the step operator changes in time")
        model = self.model
        count = seeds.getSize()[1]
        adjoints: list[PETSc.Mat] = []
        rhs = seeds.copy()
        rhs.scale(-1.0)
        for _ in range(self.steps):
            model._zero_bc_block(rhs)
            adjoint = model._mat_solve(rhs, transpose=True)
            model._zero_bc_block(adjoint)
            adjoints.append(adjoint)
            rhs.destroy()
            rhs = self._coupling_matrix().transposeMatMult(adjoint)
            rhs.scale(-1.0)
        rhs.destroy()
        owned = self.parameter_space.dofmap.index_map.size_local
        owned *= self.parameter_space.dofmap.index_map_bs
        out = np.zeros((owned, count * self.steps))
        for i in range(1, self.steps + 1):
            self._load(i - 1)  # C_i = ∂R_{i−1}/∂m at (u_i, u_{i−1})
            sensitivity = model._sensitivity()
            for lag, adjoint in enumerate(adjoints[: self.steps - i + 1]):
                part = sensitivity.transposeMatMult(adjoint)
                n = i + lag
                out[:, (n - 1) * count : n * count] += part.getDenseArray(readonly=True)[:owned]
                part.destroy()
        for adjoint in adjoints:
            adjoint.destroy()
        return out

    def forward_tangent(
        self, directions: PETSc.Mat, observe: Callable[[int, PETSc.Mat], None]
    ) -> None:
        """The sensitivities ``δU_n = ∂u_n/∂m X`` of the last trajectory to the columns of the
        dense matrix ``X`` (W × k), step by step: ``observe(n, δU_n)`` for n = 1..N (``δU_0 =
        0``; the matrix is valid during the call). Two sensitivity blocks are alive at a time.
        Collective."""
        self._require_trajectory()
        model = self.model
        current: PETSc.Mat | None = None
        for n in range(self.steps):
            self._load(n)
            rhs = model._sensitivity().matMult(directions)
            if current is not None:
                coupled = self._coupling_matrix().matMult(current)
                rhs.axpy(1.0, coupled)
                coupled.destroy()
                current.destroy()
            rhs.scale(-1.0)
            model._zero_bc_block(rhs)
            current = model._mat_solve(rhs, transpose=False)
            rhs.destroy()
            observe(n + 1, current)
        if current is not None:
            current.destroy()

    def forward_tangent_vector(
        self, direction: PETSc.Vec, observe: Callable[[int, PETSc.Vec], None]
    ) -> None:
        """:meth:`forward_tangent` for one direction ``v`` on ``W``, by vector solves:
        ``observe(n, δu_n)`` for n = 1..N. Collective."""
        self._require_trajectory()
        model = self.model
        current = model.A.createVecRight()
        rhs = current.duplicate()
        coupled = current.duplicate()
        for n in range(self.steps):
            self._load(n)
            model._sensitivity().mult(direction, rhs)
            if n > 0:
                self._coupling_matrix().mult(current, coupled)
                rhs.axpy(1.0, coupled)
            rhs.scale(-1.0)
            model._zero_bc_rows(rhs)
            model._linear_solve(rhs, current)
            observe(n + 1, current)
        for obj in (current, rhs, coupled):
            obj.destroy()

    def _require_trajectory(self) -> None:
        if self.solved_parameter is None or self.steps not in self._stored:
            raise RuntimeError(f"{self.name}: solve the trajectory before adjoint or tangents")

    def destroy(self) -> None:
        if self._E_matrix is not None:
            self._E_matrix.destroy()
        self.model.destroy()
        self._stored, self._segment = {}, {}


def _stride(steps: int, state_bytes: int, memory: int, name: str) -> int:
    """Keep every k-th state: 1 when all ``steps + 1`` fit in ``memory``, else the k that
    needs the fewest (``⌈N/k⌉ + 1`` checkpoints and ``k − 1`` in a segment)."""

    def held(k: int) -> int:
        return -(-steps // k) + 1 + (k - 1 if k > 1 else 0)

    if held(1) * state_bytes <= memory:
        return 1
    best = min(range(2, steps + 1), key=held) if steps > 1 else 1
    if held(best) * state_bytes > memory:
        raise ValueError(
            f"{name}: {steps} steps need at least {held(best)} stored states of "
            f"{state_bytes / 2**20:.1f} MiB each ({held(best) * state_bytes / 2**20:.1f} MiB, "
            f"every {best}th kept), more than the memory budget of {memory / 2**20:.1f} MiB"
        )
    return best


def heat(
    space: dolfinx.fem.FunctionSpace,
    parameter: dolfinx.fem.Function,
    initial: dolfinx.fem.Function,
    dt: float,
    steps: int,
    f: Any = 0.0,
    bcs: Sequence[dolfinx.fem.DirichletBC] | None = None,
    flux: Any = None,
    coefficient: str = "identity",
    **options: Any,
) -> TransientModel:
    """The heat equation ``∂u/∂t − ∇·(κ ∇u) = f``, ``u(0) = initial``, with ``κ = m > 0``
    (checked) or ``κ = exp(m)`` (``coefficient="exp"``), ``κ ∇u·n = flux`` where no condition
    is set (default ``u = 0`` on the whole boundary). ``f`` and ``flux`` are numbers, UFL
    expressions or Functions, ``f`` also a function ``t -> UFL expression`` of the time (e.g.
    ``lambda t: ufl.sin(t) * x[0]``: the θ-scheme evaluates it at ``t_n`` and ``t_{n+1}``);
    ``options`` go to :class:`TransientModel` (``scheme``, ``capacity``, ...)."""
    from natinv.models.builtin import _bcs, _diffusion_form, positive

    residual = _diffusion_form(space.mesh, f, flux, coefficient)
    if coefficient == "identity":
        options.setdefault("check", positive("the conductivity"))
    options.setdefault("name", "heat")
    bcs = _bcs(space, bcs)
    return TransientModel(space, parameter, residual, initial, dt, steps, bcs, **options)
