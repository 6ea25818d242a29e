"""Finite-element models ``F(u, m; v) = 0`` from UFL residual forms: solve, adjoint, tangent.

A :class:`Model` takes a residual form in the state ``u ∈ V`` and a parameter field ``m ∈ W``
(a :class:`dolfinx.fem.Function`) and derives everything else from it with ``ufl.derivative``:

- the state solve: one linear solve when ``F`` is affine in ``u`` (detected from the form), else
  Newton (PETSc SNES); both under the model's PETSc options prefix;
- ``A = ∂F/∂u`` at the solution, factorised once (LU: MUMPS by default, see
  :func:`natinv.parallel.direct_solver`) and reused for
- the adjoint solve ``Aᵀ λ = −g_u`` and the parameter gradient ``(∂F/∂m)ᵀ λ``, and
- the tangent (sensitivity) solves ``A (S X) = −(∂F/∂m) X`` for many columns at once
  (``KSPMatSolve``): the Gauss–Newton metric ``(BSJ)ᵀ W (BSJ)``.

Dirichlet conditions are imposed on the state; adjoint and tangent solutions vanish on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import numpy.typing as npt
import ufl
from ufl.algorithms import expand_derivatives

from natinv import options, parallel
from natinv.boundary import constrained_dofs

__all__ = ["ITERATIVE_OPTIONS", "Model"]

Residual = Callable[[dolfinx.fem.Function, dolfinx.fem.Function, ufl.Argument], ufl.Form]
Check = Callable[[dolfinx.fem.Function], str | None]

DEFAULT_OPTIONS = {
    "ksp_type": "preonly",
    "pc_type": "lu",
    "snes_type": "newtonls",
    "snes_linesearch_type": "basic",
    "snes_rtol": 1e-10,
    "snes_atol": 1e-12,
    "snes_max_it": 50,
}

#: The iterative alternative to a factorisation (``petsc_options=ITERATIVE_OPTIONS``, or a case's
#: ``[model] solver = "cg"``): conjugate gradients preconditioned by PETSc's algebraic multigrid
#: (GAMG, with the rigid-body modes as near-nullspace for elasticity), for symmetric positive
#: definite operators. Every solve (state, adjoint, tangent, each column of a block) is a Krylov
#: solve to a relative (preconditioned) residual of 1e-10: the answers equal LU's to 1e-8 and the
#: gradients pass the Taylor test (tested). A state solve starts from the last state, and a new
#: parameter keeps the multigrid's interpolation.
ITERATIVE_OPTIONS = {
    "ksp_type": "cg",
    "pc_type": "gamg",
    "ksp_rtol": 1e-10,
    "ksp_atol": 1e-50,
    "ksp_max_it": 1000,
    "pc_gamg_reuse_interpolation": True,  # (a new parameter: the same coarse spaces)
    "ksp_error_if_not_converged": True,  # (a column of a block solve that fails is an error)
}


class _Operator:
    """``A = ∂F/∂u`` with its factorisations (and, where needed, an explicit ``Aᵀ`` with its
    own): one per model, or shared by the models of experiments that differ only in their
    loads (:meth:`Model.share_operator`), which then factorise once per parameter."""

    def __init__(self, A: PETSc.Mat, ksp: PETSc.KSP) -> None:
        self.A, self.ksp = A, ksp
        # transposed solves where the factorisation's own is wrong (see Model._transposed)
        self.At: PETSc.Mat | None = None
        self.transpose_ksp: PETSc.KSP | None = None
        self.transpose_state: tuple[int | None, bool] | None = None
        self.assemblies = 0  # assemblies of A (each one a new factorisation)
        self.block_shapes: dict[int, tuple[int, int, int]] = {}  # per KSP, see _mat_solve
        self.refactorisations = 0  # factorisations of an unchanged A (see _same_block_shape)
        self.parameter: npt.NDArray[np.float64] | None = None  # linear models: A's m
        self.users = 1
        self.resets = 0

    @property
    def generation(self) -> tuple[int, int]:
        """Changes whenever ``A`` or its factors do (an assembly, or a reset after a failure):
        a model's state is served by ``A`` only while this is what it was at its solve."""
        return self.assemblies, self.resets

    def reset(self) -> None:
        """Drop the factorisations: the next solve factorises anew. Collective."""
        for ksp in (self.ksp, self.transpose_ksp):
            if ksp is not None:
                ksp.reset()
        self.resets += 1
        self.parameter = None
        self.transpose_state = None
        self.block_shapes.clear()

    def release(self) -> None:
        """One model less uses this operator; the last one frees it. Collective."""
        self.users -= 1
        if self.users == 0:
            for obj in (self.A, self.ksp, self.At, self.transpose_ksp):
                if obj is not None:
                    obj.destroy()


#: ``A`` counts as symmetric when ``‖A − Aᵀ‖∞ ≤ SYMMETRY·‖A‖∞``: assembled stiffness matrices
#: are symmetric only to round-off (measured 1.1–1.9e-16 relative on the plate's diffusion, the
#: beam's elasticity, the 3D box and the disk: 50× below this), and solving ``Aᵀx = b`` with
#: ``A``'s factors then errs by at most ``cond(A)·‖A − Aᵀ‖/‖A‖``, within a few hundred times the
#: factorisation's own round-off; a second factorisation of ``Aᵀ`` (SuperLU_DIST) is spared.
SYMMETRY = 1e-14


class Model:
    """A finite-element model ``F(u, m; v) = 0`` for the state ``u`` given the field ``m``.

    Args:
        state_space: ``V``, where ``u`` lives.
        parameter: ``m``, a Function on the parameter space ``W`` (the model reads its current
            values; :meth:`set_parameter` changes them): a finite-element field, the space of a
            neural field, or a few scalars on a real space
            (``functionspace(mesh, basix.ufl.real_element(mesh.basix_cell(), (k,)))``).
        residual: ``(u, m, v) -> F``, a UFL form linear in the test function ``v``.
        bcs: Dirichlet conditions on ``V``.
        options_prefix: PETSc options prefix of the solvers (default: one of its own,
            :func:`natinv.options.unique_prefix`; the command line uses ``natinv_model_``);
            ``-<prefix>ksp_type``, ``-<prefix>pc_type``, ``-<prefix>snes_rtol``... override the
            defaults (LU with MUMPS, Newton with full steps).
        petsc_options: defaults for options not set on the command line.
        check: ``m -> message or None``; a message stops the solve with an error on every rank
            (e.g. a diffusion coefficient that is not positive).
        name: a label for messages.
        near_nullspace: ``V -> vectors`` spanning the operator's near-nullspace (elasticity's
            rigid-body modes), given to ``A`` for algebraic multigrid (:data:`ITERATIVE_OPTIONS`).

    Call :meth:`destroy` when done (PETSc objects).
    """

    def __init__(
        self,
        state_space: dolfinx.fem.FunctionSpace,
        parameter: dolfinx.fem.Function,
        residual: Residual,
        bcs: Sequence[dolfinx.fem.DirichletBC] = (),
        *,
        options_prefix: str | None = None,
        petsc_options: dict[str, Any] | None = None,
        check: Check | None = None,
        name: str = "model",
        near_nullspace: Callable[[dolfinx.fem.FunctionSpace], list[PETSc.Vec]] | None = None,
    ) -> None:
        self.comm = state_space.mesh.comm
        self.space = state_space
        self.m = parameter
        self.parameter_space = parameter.function_space
        self.bcs = list(bcs)
        self.prefix = options_prefix or options.unique_prefix("natinv_model")
        self.check = check
        self.name = name
        self.u = dolfinx.fem.Function(state_space, name="u")
        self.p = dolfinx.fem.Function(state_space, name="adjoint")
        v = ufl.TestFunction(state_space)
        with parallel.collective(self.comm, f"{name}: the residual form"):
            self.residual = residual(self.u, self.m, v)
            if not isinstance(self.residual, ufl.Form) or len(self.residual.arguments()) != 1:
                raise ValueError("the residual must be a UFL form linear in the test function")
        du = ufl.TrialFunction(state_space)
        dm = ufl.TrialFunction(self.parameter_space)
        jacobian = ufl.derivative(self.residual, self.u, du)
        sensitivity = ufl.derivative(self.residual, self.m, dm)
        self.linear = self.u not in expand_derivatives(jacobian).coefficients()
        self._F = dolfinx.fem.form(self.residual)
        self._dFdu = dolfinx.fem.form(jacobian)
        self._dFdm = dolfinx.fem.form(sensitivity)
        self._gradient = dolfinx.fem.form(ufl.action(ufl.adjoint(sensitivity), self.p))
        self._dFdm_adjoint = dolfinx.fem.form(ufl.adjoint(sensitivity))  # Cᵀ, assembled as is
        self._options = {
            **DEFAULT_OPTIONS,
            "pc_factor_mat_solver_type": parallel.direct_solver(self.comm),
            **(petsc_options or {}),
        }
        self._jacobian = expand_derivatives(jacobian)  # (compared by share_operator)
        ksp = PETSc.KSP().create(self.comm)
        self._op = _Operator(dolfinx.fem.petsc.create_matrix(self._dFdu), ksp)
        self.ksp.setOptionsPrefix(self.prefix)
        linear = {k: v for k, v in self._options.items() if k.startswith(("ksp_", "pc_")) and v}
        with options.pushed(self.prefix, linear):  # the user's -<prefix>ksp_*/pc_* options win
            self.ksp.setFromOptions()
        if near_nullspace is not None:  # (used by algebraic multigrid: GAMG)
            basis = near_nullspace(state_space)
            self.A.setNearNullSpace(PETSc.NullSpace().create(vectors=basis, comm=self.comm))
            for vector in basis:
                vector.destroy()
        self._b = dolfinx.fem.petsc.create_vector(state_space)
        self._du = self._b.duplicate()
        self._nonlinear: Any = None
        self.solved_parameter: npt.NDArray[np.float64] | None = None
        # C = ∂F/∂m and Cᵀ, each with the state version it was assembled at
        self._per_state_matrices: dict[int, tuple[PETSc.Mat, int]] = {}
        # owned dofs fixed by the Dirichlet conditions (x = α(g − x0) there, untouched elsewhere)
        owned = state_space.dofmap.index_map.size_local * state_space.dofmap.index_map_bs
        self._constrained, _ = constrained_dofs(self.bcs, self.u.x.array.size, owned)
        # (A's generation, state version) when A was last right for the state
        self._state_of_A: tuple[tuple[int, int], int] | None = None
        self.version = 0  # bumped whenever the state changes (solve or restore)
        # keep A's factors across solves with the same m (linear models; only when nothing
        # else in A changes between solves, e.g. the steps of a transient model)
        self.reuse_operator = False
        # A changes with more than m (e.g. with the time of a transient step): re-assembled
        # whenever the state changes
        self.varying_operator = not self.linear
        self.solves = 0  # forward solves
        self.linear_solves = 0  # solves with A (forward steps, adjoints, tangent blocks)
        self.info: dict[str, Any] = {}

    @property
    def A(self) -> PETSc.Mat:
        """``∂F/∂u`` (shared with the models of :meth:`share_operator`)."""
        return self._op.A

    @property
    def ksp(self) -> PETSc.KSP:
        return self._op.ksp

    @property
    def assemblies(self) -> int:
        """Assemblies of ``A``, each one a new factorisation (shared ones counted once)."""
        return self._op.assemblies

    @property
    def refactorisations(self) -> int:
        return self._op.refactorisations

    def share_operator(self, leader: Model) -> None:
        """Solve with ``leader``'s ``A`` and factors from now on: for experiments that differ
        only in their loads (sources, fluxes, Robin or Dirichlet values), which then factorise
        once per parameter for all of them, and keep the factors while the parameter does not
        change (:attr:`reuse_operator`, set on both). Checked: both linear, on the same state
        space and parameter Function, with the same Dirichlet dofs and the same ``∂F/∂u``
        (the same UFL form of the same coefficients and constants). Collective.

        Raises:
            CollectiveError: on every rank, naming what differs.
        """
        if leader._op is self._op:
            return
        problems = []
        if not (self.linear and leader.linear):
            problems.append("a nonlinear model's operator depends on its own state")
        if self.space is not leader.space or self.m is not leader.m:
            problems.append("another state space or parameter Function")
        elif not np.array_equal(self._constrained, leader._constrained):
            problems.append("other Dirichlet dofs")
        mine, theirs = self._jacobian, leader._jacobian
        if mine.signature() != theirs.signature() or [
            id(c) for c in (*mine.coefficients(), *mine.constants())
        ] != [id(c) for c in (*theirs.coefficients(), *theirs.constants())]:
            problems.append(
                "another operator ∂F/∂u (its form, or other coefficient or constant objects: "
                "give both models the same dolfinx Constant for a coefficient in ∂F/∂u)"
            )
        parallel.check_all(
            self.comm,
            not problems,
            lambda: f"{self.name} cannot share the operator of {leader.name}: {problems[0]}",
        )
        self._op.release()
        self._op = leader._op
        self._op.users += 1
        self._state_of_A = None
        self.reuse_operator = leader.reuse_operator = True

    def shares_operator(self, other: Model) -> bool:
        """Whether this model solves with ``other``'s ``A`` and factors (:meth:`share_operator`).
        Local."""
        return self._op is other._op

    def twin(self, name: str | None = None) -> Model:
        """A model of the same residual form, Dirichlet conditions and parameter that solves
        with this one's operator (:meth:`share_operator`): the carrier of a state set from
        outside with :meth:`restore`, e.g. a combination of the states of experiments that
        differ only in their loads (``∂F/∂m`` is linear in ``u`` for such models, so the
        carrier's adjoints and sensitivities are those of the combination). Collective."""
        form, state = self.residual, self.u
        twin = Model(
            self.space,
            self.m,
            lambda u, m, v: ufl.replace(form, {state: u}),
            self.bcs,
            check=self.check,
            name=name or f"{self.name} (twin)",
        )
        twin.share_operator(self)
        return twin

    # -- helpers -------------------------------------------------------------------------------

    def set_parameter(self, values: npt.ArrayLike) -> None:
        """Set the owned coefficients of ``m`` (ghosts updated). Collective."""
        owned = self.parameter_space.dofmap.index_map.size_local
        owned *= self.parameter_space.dofmap.index_map_bs
        self.m.x.array[:owned] = np.asarray(values, dtype=np.float64)
        self.m.x.scatter_forward()

    def _zero_bc_rows(self, vector: PETSc.Vec) -> None:
        """Zero the owned entries of the Dirichlet dofs (homogeneous conditions)."""
        vector.array[: self._constrained.size][self._constrained] = 0.0

    def _zero_bc_block(self, block: PETSc.Mat) -> None:
        """Zero the owned Dirichlet rows of a dense block (state × k) and assemble it."""
        if self._constrained.any():
            block.getDenseArray()[self._constrained, :] = 0.0
        block.assemble()

    def _assemble_operator(self) -> None:
        """``A = ∂F/∂u`` at the current ``u``, with the Dirichlet rows and columns replaced by
        the identity; the KSP refactorises on its next solve."""
        self._op.assemblies += 1
        self.A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(self.A, self._dFdu, bcs=self.bcs)
        self.A.assemble()
        self.ksp.setOperators(self.A)
        self._state_of_A = (self._op.generation, self.version)
        self._op.parameter = np.array(self.m.x.array) if self.linear else None

    def _operator_current(self) -> bool:
        """Whether ``A`` (and its factors) can serve this solve as they are: only with
        :attr:`reuse_operator`, for a linear model (``A`` depends on ``m`` alone) whose ``m``
        is the one ``A`` was assembled for. One verdict on all ranks. Collective."""
        if not self.reuse_operator or self.varying_operator or self._op.parameter is None:
            return False
        changed = not np.array_equal(self._op.parameter, self.m.x.array)
        return not parallel.allreduce_max(self.comm, changed)

    def _transposed(self) -> tuple[PETSc.KSP, bool]:
        """How to solve with ``Aᵀ``: ``(ksp, use_transpose_solve)``. MUMPS and other Krylov
        methods solve transposed on their own; CG is for symmetric operators, so ``A``'s own
        solve serves. SuperLU_DIST's transposed solve in PETSc 3.25 silently solves with ``A``
        (measured on a 6×6 nonsymmetric matrix: residual of Aᵀx = b 0.15): there ``A`` itself
        if it is symmetric to round-off (``‖A − Aᵀ‖∞ ≤ SYMMETRY·‖A‖∞``, checked once per
        assembly), else a second factorisation, of an explicit ``Aᵀ``."""
        pc = self.ksp.getPC()
        if pc.getType() not in ("lu", "cholesky"):
            return self.ksp, self.ksp.getType() != "cg"
        if pc.getFactorSolverType() != "superlu_dist":
            return self.ksp, True
        op = self._op
        if op.transpose_state is None or op.transpose_state[0] != self.assemblies:
            scale = self.A.norm(PETSc.NormType.INFINITY)
            symmetric = bool(self.A.isSymmetric(SYMMETRY * scale))
            if not symmetric:
                op.At = self.A.transpose(op.At if op.At is not None else PETSc.Mat())
                if op.transpose_ksp is None:
                    op.transpose_ksp = PETSc.KSP().create(self.comm)
                    op.transpose_ksp.setType("preonly")
                    op.transpose_ksp.getPC().setType("lu")
                    op.transpose_ksp.getPC().setFactorSolverType("superlu_dist")
                op.transpose_ksp.setOperators(op.At)
            op.transpose_state = (self.assemblies, symmetric)
        if op.transpose_state[1]:
            return self.ksp, False
        assert op.transpose_ksp is not None
        return op.transpose_ksp, False

    def _linear_solve(self, rhs: PETSc.Vec, out: PETSc.Vec, transpose: bool = False) -> None:
        failure = None
        ksp, native = self._transposed() if transpose else (self.ksp, False)
        try:
            (ksp.solveTranspose if native else ksp.solve)(rhs, out)
        except PETSc.Error as exc:
            failure = str(exc).strip().splitlines()[0]
        reason = ksp.getConvergedReason()
        self.linear_solves += 1
        with self._recovering(locked=rhs if failure is not None else None):
            parallel.check_all(
                self.comm,
                failure is None and reason >= 0,
                lambda: (
                    f"{self.name}: the {'adjoint' if transpose else 'linear'} solve failed "
                    f"({failure or _reason(PETSc.KSP.ConvergedReason, reason)}"
                    f"{self._iterations(ksp)}); the operator may be singular or indefinite for "
                    "this parameter field"
                ),
                parallel.SolveError,
            )

    @staticmethod
    def _iterations(ksp: PETSc.KSP) -> str:
        """``" after n iterations"`` for a Krylov solve, else nothing."""
        return "" if ksp.getType() == "preonly" else f" after {ksp.getIterationNumber()} iterations"

    @contextlib.contextmanager
    def _recovering(self, locked: PETSc.Vec | None = None) -> Iterator[None]:
        """Leave the model usable after a failed solve: when the block raises (on every rank
        alike), the factorisations are dropped so that the next solve factorises anew (MUMPS
        skips the numeric factorisation of a matrix whose analysis once failed, so every later
        solve would fail too), and the model's right-hand side is replaced if it is
        ``locked``, the vector a solve that stopped with a PETSc error left locked for reading
        (its next ghost update would fail). Collective."""
        try:
            yield
        except parallel.SolveError:
            self._op.reset()
            self._state_of_A = None
            if locked is not None and locked is self._b:
                old, self._b = self._b, dolfinx.fem.petsc.create_vector(self.space)
                old.destroy()
            raise

    def _checked_parameter(self) -> None:
        owned = self.parameter_space.dofmap.index_map.size_local
        parallel.ensure_finite(
            self.comm,
            self.m.x.array[: owned * self.parameter_space.dofmap.index_map_bs],
            f"{self.name}: the parameter field",
            parallel.SolveError,
        )
        if self.check is not None:
            message = self.check(self.m)
            parallel.check_all(
                self.comm, message is None, lambda: f"{self.name}: {message}", parallel.SolveError
            )

    # -- solves --------------------------------------------------------------------------------

    def solve(self) -> dolfinx.fem.Function:
        """Solve ``F(u, m; v) = 0`` for the current ``m``; returns ``u`` (ghosts updated).

        Starts from the last solution (Newton) or zero (linear). Collective.

        Raises:
            SolveError: the parameter is not admissible, the solve diverged or gave NaN.
        """
        self._checked_parameter()
        if self.linear:
            krylov = self.ksp.getType() != "preonly"
            if krylov:  # a Krylov solve starts from the last state (the correction's guess)
                self.u.x.petsc_vec.copy(self._du)
                self._zero_bc_rows(self._du)
                self.ksp.setInitialGuessNonzero(self.version > 0)
            self.u.x.array[:] = 0.0
            for bc in self.bcs:
                bc.set(self.u.x.array)
            if not self._operator_current():
                self._assemble_operator()
            with self._b.localForm() as local:  # ghosts too: they are summed into owners
                local.set(0.0)
            dolfinx.fem.petsc.assemble_vector(self._b, self._F)
            self._b.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
            self._b.scale(-1.0)
            self._zero_bc_rows(self._b)
            try:
                self._linear_solve(self._b, self._du)
            finally:
                if krylov:
                    self.ksp.setInitialGuessNonzero(False)
            self.u.x.petsc_vec.axpy(1.0, self._du)
            self.u.x.scatter_forward()
            self.info = {"iterations": 1}
        else:
            self._solve_nonlinear()
        owned = self.space.dofmap.index_map.size_local * self.space.dofmap.index_map_bs
        parallel.check_all(
            self.comm,
            bool(np.all(np.isfinite(self.u.x.array[:owned]))),
            f"{self.name}: the state solve gave non-finite values",
            parallel.SolveError,
        )
        self.solves += 1
        self.version += 1
        self.solved_parameter = np.array(self.m.x.array)  # the m the state belongs to
        if not self.linear:
            self._assemble_operator()  # A at the solution, for adjoints and tangents
        else:
            self._state_of_A = (self._op.generation, self.version)
        return self.u

    def restore(self, values: npt.ArrayLike) -> None:
        """Make ``values`` (a whole local array of ``u``, ghosts included, e.g. a stored
        solution for the current ``m``) the state for adjoint and tangent solves: ``A`` is
        re-assembled at it for a nonlinear model, kept for a linear one. Collective."""
        self.u.x.array[:] = values
        self.version += 1
        self.solved_parameter = None  # (a state set from outside; its owner says whose it is)
        if self.varying_operator:
            self._assemble_operator()
        elif self._operator_current() or not self.reuse_operator:
            self._state_of_A = (self._op.generation, self.version)
        else:
            self._assemble_operator()

    def solved(self) -> bool:
        """Whether the state is the solution for the current ``m`` and ``A`` (with its factors)
        is still the operator at it, so that adjoint and tangent solves may follow without a
        new solve. This rank's view (see :meth:`solve_if_needed`). Local."""
        return (
            self.solved_parameter is not None
            and self._state_of_A == (self._op.generation, self.version)
            and np.array_equal(self.solved_parameter, self.m.x.array)
        )

    def solve_if_needed(self) -> dolfinx.fem.Function:
        """:meth:`solve` unless the state is already the solution for the current ``m``
        (:meth:`solved` on every rank): a gradient right after the line search's accepted
        trial costs no second factorisation. Collective."""
        if parallel.allreduce_max(self.comm, not self.solved()):
            return self.solve()
        return self.u

    def _solve_nonlinear(self) -> None:
        if self._nonlinear is None:
            self._nonlinear = dolfinx.fem.petsc.NonlinearProblem(
                self.residual,
                self.u,
                bcs=self.bcs,
                J=ufl.derivative(self.residual, self.u, ufl.TrialFunction(self.space)),
                petsc_options_prefix=self.prefix,
                petsc_options={
                    key: value
                    for key, value in self._options.items()
                    if not PETSc.Options().hasName(f"{self.prefix}{key}")
                },
            )
        snes = self._nonlinear.solver
        failure = None
        start = np.array(self.u.x.array)  # a failed Newton solve leaves u where it began
        try:
            self._nonlinear.solve()
        except PETSc.Error as exc:
            failure = str(exc).strip().splitlines()[0]
        reason = snes.getConvergedReason()
        self.info = {"iterations": snes.getIterationNumber(), "reason": int(reason)}
        try:
            parallel.check_all(
                self.comm,
                failure is None and reason > 0,
                lambda: (
                    f"{self.name}: Newton did not converge "
                    f"({failure or _reason(PETSc.SNES.ConvergedReason, reason)} after "
                    f"{snes.getIterationNumber()} iterations); check the parameter field, or "
                    f"tune -{self.prefix}snes_* options"
                ),
                parallel.SolveError,
            )
        except parallel.SolveError:
            snes.getKSP().reset()  # (stale factors, as in _recovering)
            self.u.x.array[:] = start
            raise
        self.u.x.scatter_forward()

    def _require_solution(self) -> None:
        if self.version == 0 or self._state_of_A != (self._op.generation, self.version):
            raise RuntimeError(f"{self.name}: call solve() before adjoint or tangent solves")

    def adjoint(self, state_gradient: PETSc.Vec) -> dolfinx.fem.Function:
        """Solve ``Aᵀ λ = −g`` for ``g = ∂J/∂u`` (state layout); returns λ (ghosts updated),
        zero on Dirichlet dofs. Collective."""
        self._require_solution()
        rhs = state_gradient.copy()
        rhs.scale(-1.0)
        self._zero_bc_rows(rhs)
        self._linear_solve(rhs, self.p.x.petsc_vec, transpose=True)
        self.p.x.scatter_forward()
        rhs.destroy()
        return self.p

    def parameter_gradient(self) -> PETSc.Vec:
        """``(∂F/∂m)ᵀ λ`` for the last adjoint λ, as a vector on ``W`` (owned entries summed
        over ranks); the caller destroys it. Collective."""
        vector = dolfinx.fem.petsc.assemble_vector(self._gradient)
        vector.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
        return vector

    def _per_state(self, form: Any) -> PETSc.Mat:
        """The matrix of ``form`` at the current solution, owned by the model: its sparsity is
        built once and its values re-assembled once per state. Collective."""
        matrix, state = self._per_state_matrices.get(id(form), (None, None))
        if matrix is None:
            matrix = dolfinx.fem.petsc.create_matrix(form)
        if state != self.version:
            matrix.zeroEntries()
            dolfinx.fem.petsc.assemble_matrix(matrix, form)
            matrix.assemble()
        self._per_state_matrices[id(form)] = (matrix, self.version)
        return matrix

    def _sensitivity(self) -> PETSc.Mat:
        """``C = ∂F/∂m`` at the current solution (see :meth:`_per_state`). Collective."""
        return self._per_state(self._dFdm)

    def tangent_vector(self, direction: PETSc.Vec, out: PETSc.Vec) -> None:
        """``δu = S v = −A⁻¹ (∂F/∂m) v`` for one direction ``v`` on ``W`` (one solve with the
        existing factors; ``∂F/∂m`` is assembled once per state). Collective."""
        self._require_solution()
        sensitivity = self._sensitivity()
        rhs = sensitivity.createVecLeft()
        sensitivity.mult(direction, rhs)
        rhs.scale(-1.0)
        self._zero_bc_rows(rhs)
        self._linear_solve(rhs, out)
        rhs.destroy()

    def tangent(self, directions: PETSc.Mat) -> PETSc.Mat:
        """``S X = −A⁻¹ (∂F/∂m) X`` for a dense matrix ``X`` of parameter directions (W × k),
        all columns with one factorisation; a new dense matrix (V × k). Collective."""
        self._require_solution()
        rhs = self._sensitivity().matMult(directions)
        rhs.scale(-1.0)
        self._zero_bc_block(rhs)
        solution = self._mat_solve(rhs, transpose=False)
        rhs.destroy()
        return solution

    def _same_block_shape(self, ksp: PETSc.KSP, rhs: PETSc.Mat) -> None:
        """Refactorise before a block solve whose shape differs from the last one on the same
        SuperLU_DIST factorisation: in PETSc 3.25 such a block gives wrong results (another
        column layout) or frees memory twice (a narrower block, 2 ranks). Factors kept across
        solves (a transient model's steps) see several shapes; one refactorisation each time
        the shape changes on any rank (every rank's column count is in the shape: a layout
        that changed on one rank alone is refactorised by all). Collective."""
        pc = ksp.getPC()
        if pc.getType() != "lu" or pc.getFactorSolverType() != "superlu_dist":
            return
        layout = tuple(self.comm.allgather(rhs.getLocalSize()[1]))
        shape = (self.assemblies, rhs.getSize()[1], layout)
        last = self._op.block_shapes.get(id(ksp))
        if last is not None and last[0] == shape[0] and last != shape:
            operators = ksp.getOperators()
            ksp.reset()
            ksp.setOperators(*operators)
            self._op.refactorisations += 1
        self._op.block_shapes[id(ksp)] = shape

    def _mat_solve(self, rhs: PETSc.Mat, transpose: bool) -> PETSc.Mat:
        """``A⁻¹ X`` (or ``A⁻ᵀ X``) for the dense columns of ``rhs`` on the existing factors;
        a failure is one message on every rank. Collective."""
        solution = rhs.duplicate()
        failure = None
        ksp, native = self._transposed() if transpose else (self.ksp, False)
        self._same_block_shape(ksp, rhs)
        try:
            (ksp.matSolveTranspose if native else ksp.matSolve)(rhs, solution)
        except PETSc.Error as exc:
            failure = str(exc).strip().splitlines()[0]
        self.linear_solves += 1
        with self._recovering():  # (a locked block is the caller's to destroy)
            parallel.check_all(
                self.comm,
                failure is None,
                lambda: (
                    f"{self.name}: the {'adjoint' if transpose else 'tangent'} solves failed "
                    f"({failure})"
                ),
                parallel.SolveError,
            )
        return solution

    def adjoint_tangent(self, rows: PETSc.Mat) -> PETSc.Mat:
        """``(R S)ᵀ = −Cᵀ P A⁻ᵀ Rᵀ`` for observation rows ``R``, given as the dense matrix
        ``Rᵀ`` (V × n): the W × n matrix whose columns are the parameter gradients of the n
        observations, with n transposed solves on the existing factors instead of one tangent
        solve per parameter direction (``P`` zeroes the Dirichlet rows, as in :meth:`tangent`).
        Its column layout is that of ``rows``. Collective."""
        solution = self.adjoint_block(rows)
        gradients = self.sensitivity_transpose(solution)
        solution.destroy()
        return gradients

    def adjoint_block(self, rows: PETSc.Mat) -> PETSc.Mat:
        """``P A⁻ᵀ Rᵀ`` for the dense ``Rᵀ`` (V × n), zero on the Dirichlet rows: the first half
        of :meth:`adjoint_tangent`, which depends on ``A`` and the rows only (experiments that
        share the operator and the sensors share it). A new matrix. Collective."""
        self._require_solution()
        solution = self._mat_solve(rows, transpose=True)
        self._zero_bc_block(solution)
        return solution

    def sensitivity_transpose(self, solution: PETSc.Mat) -> PETSc.Mat:
        """``−Cᵀ Λ`` with ``C = ∂F/∂m`` at this model's state: the second half of
        :meth:`adjoint_tangent`, with ``Cᵀ`` assembled from the adjoint form (a sparse times
        dense product: PETSc's transposed product would transpose ``C`` each time). A new
        matrix (W × n). Collective."""
        self._require_solution()
        gradients = self._per_state(self._dFdm_adjoint).matMult(solution)
        gradients.scale(-1.0)
        return gradients

    def destroy(self) -> None:
        self._op.release()
        for obj in (self._b, self._du, *(m for m, _ in self._per_state_matrices.values())):
            if obj is not None:
                obj.destroy()
        self._nonlinear = None


def _reason(kind: Any, value: int) -> str:
    names = {v: k for k, v in vars(kind).items() if isinstance(v, int)}
    return names.get(value, str(value))
