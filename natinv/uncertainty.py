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

The prior precision δ is stated with every result: by default ``τ · max diag(G)`` with
``τ = 1e-3``, the damping of the last natural step (Levenberg–Marquardt relative to G), so that
``H`` is the matrix of that step; a number gives δ itself.

    laplace = Laplace.at(objective, prior_precision=None)
    sigma = laplace.std(field)                # owned dofs
    thetas = laplace.samples(4, seed=0)       # (4, P)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from natinv import parallel

if TYPE_CHECKING:
    from natinv.fields import NeuralField
    from natinv.gram import Gram
    from natinv.objectives.inverse import InverseObjective

__all__ = ["RELATIVE_PRIOR", "Laplace", "coverage", "evidence_precision"]

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
        prior_precision: float | str | None = None,
    ) -> Laplace:
        """The approximation for a neural field's inverse objective at ``θ`` (default: the
        field's current θ), with ``δ``, ``"evidence"`` (:func:`evidence_precision`) or, for
        None, ``RELATIVE_PRIOR · max diag(G)``. Collective."""
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


def _destroy(gram: Gram) -> None:
    """A Gauss–Newton Gram with the rows and metric it owns."""
    metric, rows = gram.metric, gram.rows
    gram.destroy()
    metric.destroy()
    rows.destroy()  # type: ignore[attr-defined]
