"""The natural direction as a least-squares solution, ``G = J̃ᵀJ̃`` never formed: for a
diagonal metric (a residual loss), by a QR of ``J̃`` across the ranks and an SVD of its factor.

This module builds on :mod:`natinv.gram`; it must not import objectives or optimizers.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import torch

from natinv import parallel
from natinv.directions.damping import Damping, ShrinkingDamping
from natinv.directions.rows import RowSolver
from natinv.gram import Gram

Vector = npt.NDArray[np.float64]

__all__ = ["LeastSquaresSolver"]


class LeastSquaresSolver(RowSolver):
    """``argmin_d ‖J̃d − M^½w‖² + λ‖d‖²`` over the singular directions of ``J̃ = M^½J`` above
    ``cutoff × σ_max``.

    The Cholesky and eigen methods solve the normal equations ``(J̃ᵀJ̃ + λI)d = J̃ᵀM^½w``, whose
    condition number is the square of ``J̃``'s: in double precision nothing below
    ``σ ≈ 1e-8 σ_max`` is resolved, and a PINN's Jacobian has singular values far below that
    which carry the last digits of the solution. Here ``J̃ = QR`` and ``R = UΣVᵀ`` give
    ``d = V diag(σ/(σ² + λ)) Uᵀ Qᵀ M^½ w`` with the conditioning of ``J̃`` itself, so that a
    relative cut-off of 1e-10 on σ (1e-20 on the eigenvalues of ``G``) is meaningful. Measured on
    ENGD's 2D Poisson problem (``bench/poisson2d.py``): the penalised formulation, which stalls
    near 1e-6 with Cholesky of ``G + 1e-10 I``, reaches 1e-9 (1e-7 in 14–21 s on one core).

    Parallel (TSQR): every rank factorises its own rows, ``J̃ᵢ = QᵢRᵢ``; the ``Rᵢ`` are gathered
    and rank 0 takes the SVD of their stack, broadcast to every rank. A right-hand side costs
    one local product ``QᵢᵀM^½wᵢ`` and one gather of ``P`` numbers per rank. Memory: ``Qᵢ`` as
    large as the owned rows of ``J``, and ``P × P`` for ``R``'s factors per rank.

    :meth:`solve` also takes a parameter-space right-hand side ``g``:
    ``V diag(1/(σ² + λ)) Vᵀ g`` on the kept directions (the pseudo-inverse of ``G``, from ``J̃``'s
    singular values rather than ``G``'s eigenvalues).

    Args:
        gram: a Gram whose metric is diagonal with entries ``>= 0`` (a residual loss's weights).
        damping: λ >= 0, or a damping policy; default :class:`~natinv.directions.ShrinkingDamping`
            (λ₀ = 1e-10 max diag G, divided by 10 after each full step: the damped direction
            far from the solution, the undamped one near it).
        cutoff: singular values at or below ``cutoff × σ_max`` are dropped, in (0, 1).
    """

    method = "least-squares"

    def __init__(
        self, gram: Gram, damping: float | Damping | None = None, cutoff: float = 1e-10
    ) -> None:
        if not (0 < cutoff < 1):
            raise ValueError(f"Invalid singular-value cutoff {cutoff}: must lie in (0, 1)")
        policy = ShrinkingDamping() if damping is None else damping
        super().__init__(gram, policy, "least-squares")
        self.cutoff = float(cutoff)
        self._version: int | None = None
        self._q: Vector | None = None  # Qᵢ (owned rows × kᵢ), None where Qᵢ = I
        self._u: Vector | None = None  # U, V, σ of the stacked R (kept directions)
        self._v: Vector | None = None
        self._sigma: Vector | None = None

    def _factorise(self) -> None:
        if self._version == self.gram.version and self._version is not None:
            return
        local = self._weighted_jacobian()
        rows, p = local.shape
        self._q, r, failure = None, local, None
        if rows > p:  # reduce the owned rows to a P × P triangle first (a local block: no
            # collective inside; torch's LAPACK, as numpy's threaded OpenBLAS oversubscribes
            # the cores under MPI: poisson_pinn_2d took 134 s instead of 10 s on 2 ranks)
            try:
                q, r_ = torch.linalg.qr(torch.from_numpy(local), mode="reduced")
                self._q, r = q.numpy(), r_.numpy()
            except RuntimeError as exc:
                failure = f"{exc}"
        parallel.check_all(
            self.comm,
            failure is None,
            lambda: f"the QR of the weighted Jacobian failed ({failure}); is it finite?",
        )
        stacked = np.vstack(self.comm.allgather(np.ascontiguousarray(r)))
        outcome: tuple[Vector, Vector, Vector] | str | None = None
        if self.comm.rank == 0:  # one SVD, its outcome broadcast (a failure too)
            try:
                factors = torch.linalg.svd(torch.from_numpy(stacked), full_matrices=False)
                u, sigma, vt = (f.numpy() for f in factors)
                keep = sigma > self.cutoff * sigma[0] if sigma.size else sigma > 0
                outcome = (u[:, keep], sigma[keep], vt[keep].T)
            except (RuntimeError, ValueError) as exc:  # (torch's LinAlgError is a RuntimeError)
                outcome = f"{exc}"
        outcome = self.comm.bcast(outcome, root=0)
        parallel.check_all(
            self.comm,
            not isinstance(outcome, str),
            lambda: f"the SVD of the weighted Jacobian failed ({outcome}); is it finite?",
        )
        assert isinstance(outcome, tuple)
        self._u, self._sigma, self._v = outcome
        self._version = self.gram.version
        self.factorizations += 1
        if not self.damping_policy.calibrated:  # λ relative to max diag(G) = max ‖J̃ e_j‖²
            diagonal = parallel.allreduce_array(self.comm, np.einsum("ij,ij->j", local, local))
            self.damping_policy.calibrate(float(diagonal.max()))

    def solve_rows(self, rows: npt.ArrayLike) -> Vector:
        """``argmin_d ‖J̃d − M^½w‖² + λ‖d‖²`` on the kept directions, for ``w`` on the owned rows
        (replicated result). Collective."""
        scaled = self._scaled_rows(rows)
        start = time.perf_counter()
        self._factorise()
        assert self._u is not None and self._v is not None and self._sigma is not None
        local = self._q.T @ scaled if self._q is not None else scaled
        projected = np.concatenate(self.comm.allgather(local))  # Qᵀ M^½ w, stacked like R
        sigma = self._sigma
        d = self._v @ (sigma / (sigma**2 + self.damping) * (self._u.T @ projected))
        return self._finish(d, start)

    def solve(self, gradient: npt.ArrayLike, *, assemble: bool = True) -> Vector:
        """``V diag(1/(σ² + λ)) Vᵀ g`` for a replicated ``g`` (the kept directions' part of
        ``(G + λI)⁻¹ g``). Collective."""
        g = np.asarray(gradient, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            g.shape == (self.gram.num_parameters,),
            lambda: f"gradient has length {g.size}, expected {self.gram.num_parameters}",
        )
        start = time.perf_counter()
        self._factorise()
        assert self._v is not None and self._sigma is not None
        d = self._v @ ((self._v.T @ g) / (self._sigma**2 + self.damping))
        return self._finish(d, start)

    def _finish(self, d: Vector, start: float) -> Vector:
        assert self._sigma is not None
        d = parallel.bcast_array(self.comm, d)  # rank 0's: every rank holds the same direction
        self.timings["solve"] += time.perf_counter() - start
        self.info = {
            "method": self.method,
            "damping": self.damping,
            "rank": int(self._sigma.size),
            "cutoff": self.cutoff,
        }
        parallel.check_all(
            self.comm, bool(np.all(np.isfinite(d))), "the least-squares direction is not finite"
        )
        return d

    def destroy(self) -> None:
        self._q = self._u = self._v = self._sigma = None
