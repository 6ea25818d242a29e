"""Posterior uncertainty of a neural field: the Laplace approximation at the solution.

With the misfit ``½‖W^½(B u(k(θ)) − d)‖²`` (``W = Σ⁻¹``, the noise whitened) and a Gaussian
prior ``θ ~ N(θ₀, δ⁻¹ I)``, the posterior near its mode ``θ*`` is approximated by the Gaussian
``N(θ*, C)``, ``C = H⁻¹``, ``H = G + δ I`` with ``G = (BSJ)ᵀ W (BSJ)`` the Gauss–Newton Gram
natinv assembles for the natural step (exact for a problem linear in θ), plus ``Jᵀ R J`` where
the loss has a Tikhonov term ``½ mᵀ R m`` on the field. The field's
pointwise standard deviation is that of the linearised push-forward ``k(θ) ≈ k(θ*) + J δθ``:
``σ_i = sqrt((J C Jᵀ)_ii) = ‖L⁻¹ J_iᵀ‖`` with ``H = L Lᵀ``, computed by each rank for its own
dofs (the P × P factor is replicated; no n × n matrix is ever formed). Samples
``θ* + L⁻ᵀ z`` go through the network itself, not its linearisation.

The prior precision δ is stated with every result: by default the maximiser of the Laplace
evidence (MacKay's fixed point, :func:`evidence_precision`); ``None`` gives ``τ · max diag(G)``
with ``τ = 1e-3``, the damping of the last natural step (then ``H`` is that step's matrix), a
number δ itself. ``bench/uncertainty.py`` measures the 2σ coverage of the truth each gives.

A finite-element field (the TAO baseline) gets :class:`LowRankLaplace`: a prior precision
``R`` on the field's space and the ``rank`` dominant eigenpairs of the misfit Hessian relative
to it; its posterior draws ``m* + R⁻¹b − V P Vᵀb`` need ``b ~ N(0, R)``, made by
:func:`prior_noise` from white noise at quadrature points.

    laplace = Laplace.at(objective)            # δ by the evidence
    sigma = laplace.std(field)                # owned dofs
    thetas = laplace.samples(4, seed=0)       # (4, P)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from natinv import parallel

if TYPE_CHECKING:
    from petsc4py import PETSc

    from natinv.fields import NeuralField
    from natinv.gram import Gram
    from natinv.objectives.inverse import InverseObjective

__all__ = [
    "RELATIVE_PRIOR",
    "Laplace",
    "LowRankLaplace",
    "PriorNoise",
    "coverage",
    "evidence_precision",
    "prior_noise",
]

#: the default prior precision, relative to max diag(G) (the natural step's relative damping)
RELATIVE_PRIOR = 1e-3


class Laplace:
    """The Gaussian ``N(θ*, (G + δI)⁻¹)`` for a replicated Gauss–Newton Gram ``G`` (P × P).

    Args:
        gram: ``G`` as a replicated array (the same on every rank).
        theta: the mode ``θ*``.
        prior_precision: δ > 0.
    """

    def __init__(self, gram: npt.ArrayLike, theta: npt.ArrayLike, prior_precision: float) -> None:
        g = np.asarray(gram, dtype=np.float64)
        self.theta = np.asarray(theta, dtype=np.float64).copy()
        p = self.theta.size
        if g.shape != (p, p) or not np.isfinite(g).all():
            raise ValueError(f"Laplace: the Gram is {g.shape} (or not finite); expected ({p}, {p})")
        if not (np.isfinite(prior_precision) and prior_precision > 0):
            raise ValueError(f"Laplace: the prior precision must be > 0, got {prior_precision}")
        self.prior_precision = float(prior_precision)
        precision = 0.5 * (g + g.T) + self.prior_precision * np.eye(p)
        self._factor = torch.linalg.cholesky(torch.from_numpy(precision))  # H = L Lᵀ

    @classmethod
    def at(
        cls,
        objective: InverseObjective,
        theta: npt.ArrayLike | None = None,
        prior_precision: float | str | None = "evidence",
    ) -> Laplace:
        """The approximation for a neural field's inverse objective at ``θ`` (default: the
        field's current θ), with ``δ``, ``"evidence"`` (:func:`evidence_precision`, the
        default) or, for None, ``RELATIVE_PRIOR · max diag(G)``. Collective."""
        from natinv.gram import Gram

        field = objective.field
        at = field.parameters if theta is None else np.asarray(theta, dtype=np.float64)
        gram = objective.gauss_newton()
        try:
            gram.assemble(at)
            dense = gram.dense()
        finally:
            _destroy(gram)
        tikhonov = objective.problem.R
        if tikhonov is not None:  # the loss's Tikhonov term in the field: Jᵀ R J
            term = Gram(field, tikhonov)
            try:
                term.assemble(at)
                dense = dense + term.dense()
            finally:
                term.destroy()
        if prior_precision == "evidence":
            delta = evidence_precision(dense, at)
        elif prior_precision is None:
            delta = RELATIVE_PRIOR * float(np.diag(dense).max())
        else:
            delta = float(prior_precision)
        return cls(dense, at, delta)

    @property
    def num_parameters(self) -> int:
        return self.theta.size

    def covariance(self) -> npt.NDArray[np.float64]:
        """``C = H⁻¹`` (P × P, replicated). Local."""
        eye = torch.eye(self.num_parameters, dtype=torch.float64)
        return torch.cholesky_solve(eye, self._factor).numpy()

    def whiten(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``L⁻¹ Aᵀ`` for the rows of ``A`` (n × P): its column norms are ``sqrt(diag(A C
        Aᵀ))``. Local."""
        a = torch.from_numpy(np.ascontiguousarray(np.asarray(rows, dtype=np.float64).T))
        return torch.linalg.solve_triangular(self._factor, a, upper=False).numpy()

    def std(
        self, field: NeuralField, theta: npt.ArrayLike | None = None, chunk: int = 4096
    ) -> npt.NDArray[np.float64]:
        """The pointwise standard deviation of the field at its owned dofs,
        ``sqrt(diag(J C Jᵀ))`` with ``J = ∂k/∂θ`` at ``θ`` (default: the mode), ``chunk`` rows
        at a time. Local (each rank its own dofs)."""
        at = self.theta if theta is None else theta
        jacobian = field.jacobian(at)
        out = np.empty(jacobian.shape[0])
        for start in range(0, jacobian.shape[0], chunk):
            block = self.whiten(jacobian[start : start + chunk])
            out[start : start + chunk] = np.sqrt(np.einsum("ij,ij->j", block, block))
        return out

    def samples(self, count: int, seed: int = 0) -> npt.NDArray[np.float64]:
        """``count`` draws ``θ* + L⁻ᵀ z``, ``z ~ N(0, I)`` from a seeded generator (the same
        on every rank), shape ``(count, P)``. Local."""
        z = np.random.default_rng(seed).standard_normal((self.num_parameters, count))
        step = torch.linalg.solve_triangular(self._factor.T, torch.from_numpy(z), upper=True)
        return self.theta[None, :] + step.numpy().T


def evidence_precision(
    gram: npt.ArrayLike, theta: npt.ArrayLike, iterations: int = 100, rtol: float = 1e-10
) -> float:
    """The prior precision δ of ``θ ~ N(0, δ⁻¹I)`` that maximises the Laplace evidence
    (MacKay's fixed point, MacKay 1992, "A practical Bayesian framework for backpropagation
    networks", Neural Computation 4(3)): ``δ = γ / ‖θ*‖²`` with ``γ = Σ λᵢ / (λᵢ + δ)`` the
    number of parameters the data determine (``λᵢ`` the eigenvalues of ``G``). Local."""
    g = np.asarray(gram, dtype=np.float64)
    eigenvalues = np.clip(np.linalg.eigvalsh(0.5 * (g + g.T)), 0.0, None)
    norm2 = float(np.dot(theta, theta))
    if norm2 == 0.0:
        raise ValueError("evidence_precision: θ* = 0, the evidence has no finite maximiser")
    delta = max(float(eigenvalues.max()), 1e-300) * 1e-3
    for _ in range(iterations):
        gamma = float(np.sum(eigenvalues / (eigenvalues + delta)))
        updated = max(gamma, 1e-12) / norm2
        if abs(updated - delta) <= rtol * delta:
            return updated
        delta = updated
    return delta


def coverage(
    comm: parallel.Comm,
    values: npt.ArrayLike,
    std: npt.ArrayLike,
    truth: npt.ArrayLike,
    width: float = 2.0,
) -> float:
    """The fraction of dofs (owned, summed over ranks) where ``|m − m_true| ≤ width·σ``.
    Collective."""
    inside = np.abs(np.asarray(values) - np.asarray(truth)) <= width * np.asarray(std)
    total = comm.allreduce(int(inside.size))
    return comm.allreduce(int(inside.sum())) / max(total, 1)


def prior_noise(
    space: Any, stiffness: float, mass: float, count: int = 1, seed: int = 0
) -> npt.NDArray[np.float64]:
    """``count`` draws of ``b ~ N(0, R)`` for ``R = a K + c M`` (``a = stiffness``, ``c =
    mass``; ``K`` the ``H¹`` seminorm and ``M`` the mass matrix of a Lagrange space), as the
    owned entries ``(n_owned, count)``.

    With white noise ``η`` at the points of a quadrature exact for both forms and ``ω_q`` the
    quadrature weight times the cell's Jacobian there, ``b = √a Σ_q √ω_q η_q·∇φ(x_q) +
    √c Σ_q √ω_q η'_q φ(x_q)`` has the covariance ``a K + c M`` exactly (:class:`PriorNoise`).
    The noise of a cell is drawn by its index in the mesh's input, so a draw is the same on
    any number of ranks. Collective."""
    noise = PriorNoise(space, stiffness, mass)
    out = np.zeros((noise.num_owned, count))
    for j in range(count):
        etas = [
            _cell_noise(xi.function_space, np.random.default_rng([seed, j, stream]))
            for stream, xi in enumerate(noise.points)
        ]
        out[:, j] = noise.apply(etas)
    noise.destroy()
    return out


class PriorNoise:
    """The linear map ``η → b`` of :func:`prior_noise`: ``η`` one array per quadrature space
    (:attr:`points`: the vector one for ``a K`` if ``a > 0``, the scalar one for ``c M`` if
    ``c > 0``; local dofs), ``b`` the owned entries on ``space``. Collective."""

    def __init__(self, space: Any, stiffness: float, mass: float) -> None:
        from petsc4py import PETSc

        import basix.ufl
        import dolfinx
        import dolfinx.fem.petsc
        import ufl

        if not (stiffness >= 0 and mass >= 0 and stiffness + mass > 0):
            raise ValueError(f"prior_noise: need a, c >= 0, not both 0 (got {stiffness}, {mass})")
        mesh = space.mesh
        degree = 2 * space.ufl_element().embedded_superdegree
        dx = ufl.dx(domain=mesh, metadata={"quadrature_degree": degree})

        def points(shape: tuple[int, ...]) -> Any:
            element = basix.ufl.quadrature_element(mesh.basix_cell(), shape, degree=degree)
            return dolfinx.fem.functionspace(mesh, element)

        # ω at each point: the weight times the Jacobian (∫ τ dx for each point's basis τ)
        scalar = points(())
        weights = dolfinx.fem.petsc.assemble_vector(dolfinx.fem.form(ufl.TestFunction(scalar) * dx))
        weights.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
        weights.ghostUpdate(PETSc.InsertMode.INSERT, PETSc.ScatterMode.FORWARD)
        with weights.localForm() as local:
            omega = np.array(local.array_r)
        weights.destroy()
        v = ufl.TestFunction(space)
        self.points: list[Any] = []  # the noise's Functions, one per term
        self._terms = []
        for scale, shape in ((stiffness, (mesh.geometry.dim,)), (mass, ())):
            if scale > 0:
                xi = dolfinx.fem.Function(points(shape) if shape else scalar)
                form = ufl.inner(xi, ufl.grad(v)) * dx if shape else xi * v * dx
                root = np.sqrt(np.repeat(omega, xi.function_space.dofmap.index_map_bs))
                self.points.append(xi)
                self._terms.append((np.sqrt(scale), root, dolfinx.fem.form(form)))
        self.num_owned = space.dofmap.index_map.size_local * space.dofmap.index_map_bs
        self._vector = dolfinx.fem.petsc.create_vector(space)

    def apply(self, etas: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
        """``b`` for the noise ``etas`` (one local array per :attr:`points` entry)."""
        from petsc4py import PETSc

        import dolfinx.fem.petsc

        out = np.zeros(self.num_owned)
        for xi, eta, (scale, root, form) in zip(self.points, etas, self._terms, strict=True):
            xi.x.array[:] = eta / root
            with self._vector.localForm() as local:
                local.set(0.0)
            dolfinx.fem.petsc.assemble_vector(self._vector, form)
            self._vector.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
            out += scale * self._vector.array_r[: self.num_owned]
        return out

    def destroy(self) -> None:
        self._vector.destroy()


def _cell_noise(space: Any, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Standard normal values for the local dofs of a quadrature space, each cell's drawn from
    the global stream at its input index (:func:`natinv.parallel.stream_rows`: the same values
    on any partition). Not collective."""
    mesh = space.mesh
    tdim = mesh.topology.dim
    cells = mesh.topology.index_map(tdim)
    local = cells.size_local + cells.num_ghosts
    per_cell = space.dofmap.list.shape[1] * space.dofmap.index_map_bs
    total = cells.size_global
    original = np.asarray(mesh.topology.original_cell_index, dtype=np.int64)[:local]
    values = parallel.stream_rows(rng, total, per_cell, original)
    bs = space.dofmap.index_map_bs
    out = np.zeros(space.dofmap.index_map.size_local * bs + space.dofmap.index_map.num_ghosts * bs)
    dofs = space.dofmap.list[:local]
    blocked = (dofs[:, :, None] * bs + np.arange(bs)).reshape(local, -1)
    out[blocked] = values
    return out


def _destroy(gram: Gram) -> None:
    """A Gauss–Newton Gram with the rows and metric it owns."""
    metric, rows = gram.metric, gram.rows
    gram.destroy()
    metric.destroy()
    rows.destroy()  # type: ignore[attr-defined]


class LowRankLaplace:
    """The Laplace approximation of a finite-element field's posterior with a Gaussian prior of
    precision ``Γ_pr⁻¹ = R`` (an SPD matrix on the field's space): ``Γ_post = (H_d + R)⁻¹ ≈ R⁻¹
    − V D Vᵀ``, with ``H_d`` the data misfit's Gauss–Newton Hessian at the solution, ``(λᵢ, vᵢ)``
    its ``rank`` largest generalized eigenpairs ``H_d v = λ R v`` (``vᵢ`` R-orthonormal) and
    ``D = diag(λᵢ / (1 + λᵢ))`` — what hIPPYlib does (Bui-Thanh, Ghattas, Martin & Stadler 2013,
    SIAM J. Sci. Comput. 35(6)), the eigenpairs by the randomized double-pass algorithm with
    ``oversampling`` extra columns (Saibaba, Lee & Kitanidis 2016, Numer. Linear Algebra Appl.
    23(2)): ``rank + oversampling`` Hessian products (one tangent and one adjoint solve each)
    and as many solves with R, twice. Distributed: every vector is a rank's owned entries.

    Args:
        problem: the inverse problem, its state solved at the field where the approximation is
            made (``problem.value(m)`` first).
        prior: ``R`` (not owned; the caller destroys it).
        rank: the number of eigenpairs kept.
        oversampling: extra random columns (their eigenpairs are dropped).
        seed: the random columns' seed.
    """

    def __init__(
        self,
        problem: Any,
        prior: PETSc.Mat,
        rank: int = 50,
        oversampling: int = 10,
        seed: int = 0,
    ) -> None:
        from petsc4py import PETSc

        self.comm = problem.comm
        self.problem = problem
        self.prior = prior
        n_global = prior.getSize()[0]
        if not (1 <= rank <= n_global):
            raise ValueError(f"LowRankLaplace: rank {rank} outside [1, {n_global}]")
        columns = min(rank + oversampling, n_global)
        self._ksp = PETSc.KSP().create(self.comm)
        self._ksp.setOperators(prior)
        self._ksp.setType("preonly")
        self._ksp.getPC().setType("lu")
        # MUMPS whatever the case's solver: SuperLU_DIST's block solve (MatMatSolve)
        # corrupted memory on 2 ranks with PETSc 3.25 here; the prior's solves give σ only
        self._ksp.getPC().setFactorSolverType("mumps")
        self._x, self._y = prior.createVecs()
        start, stop = prior.getOwnershipRange()
        omega = np.random.default_rng(seed).standard_normal((n_global, columns))[start:stop]
        y = self._apply_all(self._misfit_product, omega)
        q = self._r_orthonormal(self._apply_all(self.solve_prior, y))
        t = self._gather_inner(q, self._apply_all(self._misfit_product, q))
        values, vectors = np.linalg.eigh(0.5 * (t + t.T))
        order = np.argsort(values)[::-1][:rank]
        self.eigenvalues = values[order]
        self.vectors = q @ vectors[:, order]  # owned rows of V, R-orthonormal columns

    # -- products ------------------------------------------------------------------------------

    def _misfit_product(self, v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``H_d v`` (the Gauss–Newton product less the problem's own Tikhonov term)."""
        self._x.array[:] = v
        self.problem.gauss_newton_product(self._x, self._y)
        out = self._y.array.copy()
        if self.problem.R is not None:
            self.problem.R.mult(self._x, self._y)
            out -= self._y.array
        return out

    def solve_prior(self, v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``R⁻¹ v`` (owned entries). Collective."""
        self._y.array[:] = v
        self._ksp.solve(self._y, self._x)
        return self._x.array.copy()

    def _prior_product(self, v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        self._x.array[:] = v
        self.prior.mult(self._x, self._y)
        return self._y.array.copy()

    def _apply_all(self, operator: Any, block: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.stack([operator(block[:, j]) for j in range(block.shape[1])], axis=1)

    def _gather_inner(
        self, a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """``aᵀ b`` summed over ranks (replicated)."""
        return parallel.allreduce_array(self.comm, a.T @ b)

    def _r_orthonormal(self, z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Columns spanning ``z``'s range, orthonormal in ``R`` (twice: ``z U Λ^-½`` from the
        eigenpairs of ``zᵀ R z``; directions below 1e-12 of the largest are dropped: ``H_d``
        has at most as many nonzero eigenvalues as there are observations)."""
        for _ in range(2):
            gram = self._gather_inner(z, self._apply_all(self._prior_product, z))
            values, vectors = np.linalg.eigh(0.5 * (gram + gram.T))
            keep = values > 1e-12 * max(float(values.max()), 1e-300)
            z = z @ (vectors[:, keep] / np.sqrt(values[keep]))
        return z

    # -- results -------------------------------------------------------------------------------

    def prior_variance(self, block: int = 256) -> npt.NDArray[np.float64]:
        """``diag(R⁻¹)`` at the owned dofs, exactly: solves with unit vectors, ``block`` at a
        time on one pair of dense matrices (for a few ten thousand dofs). Collective."""
        from petsc4py import PETSc

        n_global = self.prior.getSize()[0]
        start, stop = self.prior.getOwnershipRange()
        local = stop - start
        width = min(block, n_global)
        rhs = PETSc.Mat().createDense(((local, n_global), (None, width)), comm=self.comm)
        rhs.setUp()
        solution = rhs.duplicate()
        out = np.zeros(local)
        try:
            for first in range(0, n_global, width):
                array = rhs.getDenseArray()
                array[:] = 0.0  # columns past the last unit vector stay zero
                mine = np.arange(max(first, start), min(first + width, stop))
                array[mine - start, mine - first] = 1.0
                rhs.assemble()
                self._ksp.matSolve(rhs, solution)
                values = solution.getDenseArray(readonly=True)
                out[mine - start] = values[mine - start, mine - first]
        finally:
            rhs.destroy()
            solution.destroy()
        return out

    def variance(self) -> npt.NDArray[np.float64]:
        """The posterior's pointwise variance at the owned dofs, ``diag(R⁻¹) − Σ dᵢ vᵢ²``
        (clipped at 0). Collective."""
        weights = self.eigenvalues / (1.0 + self.eigenvalues)
        reduction = np.einsum("ij,j,ij->i", self.vectors, weights, self.vectors)
        return np.clip(self.prior_variance() - reduction, 0.0, None)

    def samples(
        self, mean: npt.ArrayLike, noise: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """Posterior draws ``m* + R⁻¹b − V P Vᵀ b`` (owned entries, one column per draw) for
        the columns ``b ~ N(0, R)`` of ``noise`` (:func:`prior_noise`), ``P = diag(1 −
        1/√(1 + λᵢ))``: ``s = R⁻¹b ~ N(0, R⁻¹)`` and ``s − V P Vᵀ R s`` has the covariance
        ``R⁻¹ − V(2P − P²)Vᵀ = R⁻¹ − V D Vᵀ`` (``VᵀRV = I``; Bui-Thanh et al. 2013, §5).
        Collective."""
        mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1)
        shrink = 1.0 - 1.0 / np.sqrt(1.0 + self.eigenvalues)
        coefficients = parallel.allreduce_array(self.comm, self.vectors.T @ noise)
        prior = self._apply_all(self.solve_prior, noise)
        return mean + prior - self.vectors @ (shrink[:, None] * coefficients)

    def covariance_apply(self, v: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``Γ_post v ≈ R⁻¹ v − V D Vᵀ v`` for owned entries ``v``. Collective."""
        v = np.asarray(v, dtype=np.float64)
        weights = self.eigenvalues / (1.0 + self.eigenvalues)
        coefficients = parallel.allreduce_array(self.comm, self.vectors.T @ v)
        return self.solve_prior(v) - self.vectors @ (weights * coefficients)

    def destroy(self) -> None:
        for obj in (self._ksp, self._x, self._y):
            obj.destroy()
