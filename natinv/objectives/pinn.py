"""Residual (PINN) losses at the quadrature points of a DOLFINx mesh, with the ENGD metric.

``L(θ) = ½ Σ_t Σ_i w_ti |r_t(u_θ, x_ti)|²`` over *terms* ``t`` (the PDE residual in the interior,
boundary residuals, ...), where the points ``x_ti`` and weights ``w_ti`` come from a quadrature on
the cells each rank owns (:func:`natinv.quadrature.cell_quadrature`), so that the weighted sum
approximates ``½ Σ_t ∫ |r_t|²``. Derivatives of ``u`` in ``x`` come from torch autograd
(:func:`gradient`, :func:`hessian`, :func:`laplacian`).

The residuals are the rows of a :class:`~natinv.gram.Gram` whose metric is the diagonal of the
weights, so ``G = Jᵀ W J`` is the Gauss–Newton matrix of ``L``: the natural gradient in this
metric is the energy natural gradient (ENGD, Müller & Zeinhofer 2023) and uses the same PETSc
path as any other metric.

Boundary conditions: either as residual terms on boundary points, or exactly through
``u(x) = lift(x) + multiplier(x) · N(x)`` with a multiplier that vanishes on the boundary, e.g.
``x(1 − x)`` on ``[0, 1]``.

Parametric PDEs: with a parametric field (``NeuralField(..., mu=...)``, a network of ``(x, μ)``)
and ``samples`` of μ, every term is evaluated at every (point, sample) pair, the loss and the
Gram matrix are the mean over the samples, and residuals receive μ: ``residual(u, x, mu)``.
The trained network is a surrogate ``u(x; μ)``: :meth:`PINN.solution` and :meth:`PINN.l2_error`
evaluate it at any μ.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from petsc4py import PETSc

import numpy as np
import numpy.typing as npt
import torch
from torch.func import jacfwd, jacrev, vmap

from natinv import parallel
from natinv.fields import NeuralField, fill_jacobian
from natinv.gram import Gram
from natinv.quadrature import Quadrature

__all__ = ["PINN", "Term", "gradient", "hessian", "laplacian"]

PointFunction = Callable[[torch.Tensor], torch.Tensor]
Residual = Callable[[PointFunction, torch.Tensor], torch.Tensor]


def gradient(u: PointFunction, x: torch.Tensor) -> torch.Tensor:
    """``∇u(x)`` of a scalar point function, shape ``(gdim,)``."""
    return jacrev(u)(x)


def _load_forward_rules() -> None:
    """Load torch's forward-mode derivative rules now, without their warning: torch loads them
    through a deprecated ``torch.jit.script`` call of its own (nothing a user can act on), on
    the first ``jacfwd``. Scoped here rather than a process-wide filter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        jacfwd(torch.sin)(torch.zeros((), dtype=torch.float64))


_load_forward_rules()


def hessian(u: PointFunction, x: torch.Tensor) -> torch.Tensor:
    """``∇²u(x)`` of a scalar point function, shape ``(gdim, gdim)``."""
    return jacfwd(jacrev(u))(x)


def laplacian(u: PointFunction, x: torch.Tensor) -> torch.Tensor:
    """``Δu(x)`` of a scalar point function."""
    return torch.trace(hessian(u, x))


@dataclass
class Term:
    """One block of residual rows: ``weight · Σ_i w_i |residual(u, x_i)|²``.

    Args:
        quadrature: the points and weights (owned by this rank).
        residual: ``(u, x) -> r`` for one point ``x`` of shape ``(gdim,)``; ``u`` is the
            solution as a point function; ``r`` a scalar or a vector tensor. For a parametric
            PINN, ``(u, x, mu) -> r`` with ``mu`` of shape ``(q,)``. A term may carry more per
            point than its coordinates (``x`` is then a row of its quadrature's points, e.g.
            ``[x, n]`` with the outward normal for a Neumann term).
        weight: a positive factor (a penalty for boundary terms).
        name: a label for histories.
    """

    quadrature: Quadrature
    residual: Residual
    weight: float = 1.0
    name: str = "residual"


class PINN:
    """A residual loss of a neural solution ``u_θ`` over one or more :class:`Term` s.

    Args:
        field: the network and its parameters (its function space is where ``u_θ`` is
            interpolated for output and errors).
        terms: the residual terms.
        multiplier: ``x -> m(x)`` (one point, torch): ``u = lift + m · N`` imposes the boundary
            values exactly where ``m = 0``.
        lift: ``x -> g(x)`` (one point, torch), the boundary data for a multiplier; for a
            parametric field ``(x, μ) -> g(x; μ)`` (``μ`` of shape ``(q,)``).
        samples: for a parametric field, the μ samples ``(S, q)`` the loss averages over.

    Also a row provider (:class:`~natinv.gram.Rows`): the rows are the residuals at the owned
    points, and ``gram`` is the Gauss–Newton Gram ``Jᵀ W J``. Call :meth:`destroy` when done.
    """

    def __init__(
        self,
        field: NeuralField,
        terms: Sequence[Term],
        *,
        multiplier: PointFunction | None = None,
        lift: PointFunction | None = None,
        samples: npt.ArrayLike | None = None,
    ) -> None:
        self.field = field
        self.comm = field.comm
        self.terms = list(terms)
        self.multiplier = multiplier
        self.lift = lift
        parallel.check_all(self.comm, len(self.terms) > 0, "a PINN needs at least one term")
        for term in self.terms:
            parallel.check_all(
                self.comm,
                term.weight > 0 and np.isfinite(term.weight),
                f"term {term.name!r}: invalid weight {term.weight} (must be a finite number > 0)",
            )
            parallel.ensure_finite(self.comm, term.quadrature.points, f"term {term.name!r} points")
        self.samples = self._checked_samples(samples)
        self.num_parameters = field.num_parameters
        count = self.samples.shape[0]
        self._points = [
            parallel.torch_from_numpy(np.tile(t.quadrature.points, (count, 1))) for t in self.terms
        ]
        self._mus = [
            parallel.torch_from_numpy(np.repeat(self.samples, t.quadrature.points.shape[0], 0))
            for t in self.terms
        ]
        with parallel.collective(self.comm, "evaluating the residuals"):
            self._components = [self._probe(i) for i in range(len(self.terms))]
        weights = [
            np.repeat(np.tile(t.quadrature.weights, count) * (t.weight / count), c)
            for t, c in zip(self.terms, self._components, strict=True)
        ]
        self.weights = np.concatenate(weights) if weights else np.zeros(0)
        self.num_owned = int(self.weights.size)
        self.num_global = int(self.comm.allreduce(self.num_owned))
        self.metric = self._diagonal_metric()
        self.gram = Gram(self, self.metric)
        self.evaluations = 0

    def _checked_samples(self, samples: npt.ArrayLike | None) -> npt.NDArray[np.float64]:
        """The μ samples ``(S, q)``; ``(1, 0)`` (one empty sample) for a plain PINN."""
        q = self.field.num_mu
        if samples is None:
            parallel.check_all(
                self.comm,
                q == 0,
                f"the field is parametric (q = {q}): the PINN needs samples of μ, shape (S, {q})",
            )
            return np.zeros((1, 0))
        array = np.asarray(samples, dtype=np.float64)
        if array.ndim == 1 and q == 1:
            array = array[:, None]
        parallel.check_all(
            self.comm,
            q > 0 and array.ndim == 2 and array.shape[0] > 0 and array.shape[1] == q,
            lambda: (
                f"samples of μ have shape {array.shape}, expected (S, {q}) with S > 0"
                if q
                else "samples of μ given, but the field is not parametric (build it with mu=)"
            ),
        )
        parallel.ensure_finite(self.comm, array, "samples of μ")
        parallel.check_replicated(self.comm, array, "samples of μ")
        return array

    @property
    def parametric(self) -> bool:
        return self.field.num_mu > 0

    # -- the model ----------------------------------------------------------------------------

    def _solution(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, mu: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``u(x; μ)`` at one point (scalar for a scalar field, else ``(block_size,)``)."""
        value = self.field.apply(params, x.unsqueeze(0), mu)[0]
        if self.multiplier is not None:
            value = self.multiplier(x) * value
        if self.lift is not None:
            value = (self.lift(x, mu) if self.parametric else self.lift(x)) + value
        return value[0] if value.shape == (1,) else value

    def _point_residual(
        self, index: int
    ) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]:
        residual = self.terms[index].residual
        parametric = self.parametric

        def at(params: dict[str, torch.Tensor], x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
            if parametric:
                r = residual(lambda y: self._solution(params, y, mu), x, mu)
            else:
                r = residual(lambda y: self._solution(params, y), x)
            return torch.as_tensor(r, dtype=torch.float64).reshape(-1)

        return at

    def _probe(self, index: int) -> int:
        x, mu = self._points[index][:1], self._mus[index][:1]
        if x.shape[0] == 0:  # no point here: ask a point of the domain's bounding box instead
            x = parallel.torch_from_numpy(np.zeros((1, self._points[index].shape[1])))
            mu = parallel.torch_from_numpy(self.samples[:1])
        params = self.field.unflatten(parallel.torch_from_numpy(self.field.parameters))
        r = self._point_residual(index)(params, x[0], mu[0])
        return int(r.numel())

    def _params(self, theta: npt.ArrayLike | None) -> dict[str, torch.Tensor]:
        t = parallel.torch_from_numpy(self.field.validated(theta))
        return self.field.unflatten(t)

    def _residuals(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        blocks = [
            vmap(self._point_residual(i), in_dims=(None, 0, 0))(params, x, mu).reshape(-1)
            for i, (x, mu) in enumerate(zip(self._points, self._mus, strict=True))
            if x.shape[0]  # (vmap cannot map over no point: a rank may own no cell)
        ]
        return torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)

    # -- row provider (for the Gram matrix) ---------------------------------------------------

    @property
    def parameters(self) -> npt.NDArray[np.float64]:
        return self.field.parameters

    def values(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """The owned residual rows at θ (terms one after the other)."""
        with torch.no_grad():
            return parallel.numpy_from_torch(self._residuals(self._params(theta)))

    def row_residual(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """``ρ`` with ``∇L = Jᵀ W ρ``: the residuals themselves (for sample-space solvers)."""
        return self.values(theta)

    def jacobian(
        self, theta: npt.ArrayLike | None = None, out: npt.NDArray[np.float64] | None = None
    ) -> npt.NDArray[np.float64]:
        """Owned rows of ``∂r/∂θ`` (``num_owned × P``), chunked like the field's Jacobian."""
        params = {k: v.detach() for k, v in self._params(theta).items()}
        if out is None:
            out = np.empty((self.num_owned, self.num_parameters), dtype=np.float64)
        gdim = self.field.points.shape[1]
        row = 0
        for index, (x, mu, c) in enumerate(
            zip(self._points, self._mus, self._components, strict=True)
        ):
            per_point = vmap(jacrev(self._point_residual(index), argnums=0), in_dims=(None, 0, 0))
            # second derivatives in x keep about gdim + 2 copies of each gradient row alive
            budget = 8 * self.num_parameters * c * 3 * (gdim + 2) + 8 * 1024
            step = max(1, self.field.jacobian_memory // budget)
            fill_jacobian(out, per_point, params, (x, mu), c, step, self.field, row)
            row += x.shape[0] * c
        return out

    def _diagonal_metric(self) -> PETSc.Mat:
        matrix = PETSc.Mat().createAIJ(
            ((self.num_owned, self.num_global), (self.num_owned, self.num_global)),
            nnz=(1, 0),
            comm=self.comm,
        )
        matrix.setUp()
        diagonal = matrix.createVecLeft()
        diagonal.array[:] = self.weights
        matrix.setDiagonal(diagonal)
        matrix.assemble()
        diagonal.destroy()
        return matrix

    # -- objective ----------------------------------------------------------------------------

    def value(self, theta: npt.ArrayLike | None = None) -> float:
        """``L(θ)`` (identical on all ranks). Collective."""
        r = self.values(theta)
        self.evaluations += 1
        return parallel.allreduce_sum(self.comm, 0.5 * float(np.dot(self.weights, r * r)))

    def value_many(self, thetas: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``L`` at each row of ``thetas (m, P)`` in one vectorised pass (line searches).

        Collective (one allreduce for all m values)."""
        stacked = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
        parallel.ensure_finite(self.comm, stacked, "trial parameters")
        w = parallel.torch_from_numpy(self.weights)

        def loss(t: torch.Tensor) -> torch.Tensor:
            r = self._residuals(self.field.unflatten(t))
            return 0.5 * torch.dot(w, r * r)

        with torch.no_grad():
            local = parallel.numpy_from_torch(vmap(loss)(parallel.torch_from_numpy(stacked)))
        self.evaluations += stacked.shape[0]
        return parallel.allreduce_array(self.comm, local)

    def value_and_gradient(
        self, theta: npt.ArrayLike | None = None
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """``L(θ)`` and ``∇L = Jᵀ W r`` (replicated). Collective."""
        t = parallel.torch_from_numpy(self.field.validated(theta)).clone().requires_grad_(True)
        r = self._residuals(self.field.unflatten(t))
        local = 0.5 * torch.dot(parallel.torch_from_numpy(self.weights), r * r)
        (grad,) = torch.autograd.grad(local, t) if r.numel() else (torch.zeros_like(t),)
        self.evaluations += 1
        value = parallel.allreduce_sum(self.comm, float(local.detach()))
        return value, parallel.allreduce_array(self.comm, parallel.numpy_from_torch(grad))

    def solution(
        self,
        points: npt.ArrayLike,
        theta: npt.ArrayLike | None = None,
        mu: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float64]:
        """``u_θ`` at points ``(n, gdim)`` (local, no MPI), shape ``(n,)`` or ``(n, bs)``; for a
        parametric PINN at ``mu`` (``q`` values; default the field's current μ)."""
        params = self._params(theta)
        x = parallel.torch_from_numpy(np.atleast_2d(np.asarray(points, dtype=np.float64)))
        m = self.field.mu
        if mu is not None:
            m = parallel.torch_from_numpy(np.asarray(mu, dtype=np.float64).reshape(-1))
            if not self.parametric or m.numel() != self.field.num_mu:
                raise ValueError(
                    f"solution: μ has {m.numel()} values, the field takes {self.field.num_mu}"
                )
            if not bool(torch.isfinite(m).all()):
                raise ValueError(f"solution: μ is not finite: {m.tolist()}")
        if x.shape[0] == 0:
            return np.zeros((0, *(() if self.field.block_size == 1 else (self.field.block_size,))))
        with torch.no_grad():
            return parallel.numpy_from_torch(
                vmap(self._solution, in_dims=(None, 0, None))(params, x, m)
            )

    def l2_error(
        self,
        exact: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
        quadrature: Quadrature,
        theta: npt.ArrayLike | None = None,
        relative: bool = False,
        mu: npt.ArrayLike | None = None,
    ) -> float:
        """``‖u_θ − u‖²_L2`` (or ``‖u_θ − u‖_L2 / ‖u‖_L2`` if ``relative``) by ``quadrature``.

        ``exact`` maps points ``(n, gdim)`` to values ``(n,)``; ``mu`` as for :meth:`solution`.
        Collective.
        """
        u = exact(quadrature.points)
        diff = quadrature.integrate((self.solution(quadrature.points, theta, mu) - u) ** 2)
        if not relative:
            return diff
        return float(np.sqrt(diff / quadrature.integrate(u**2)))

    def destroy(self) -> None:
        """Free the Gram matrices and the metric. Collective."""
        self.gram.destroy()
        self.metric.destroy()
