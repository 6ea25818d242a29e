"""The natural direction in sample space (Woodbury), for a diagonal metric with fewer rows than
parameters.

This module builds on :mod:`natinv.gram`; it must not import objectives or optimizers.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import torch

from natinv import parallel
from natinv.directions.damping import Damping
from natinv.directions.rows import RowSolver
from natinv.gram import Gram

Vector = npt.NDArray[np.float64]

__all__ = ["SampleSpaceSolver"]


class SampleSpaceSolver(RowSolver):
    """``(G + λI)⁻¹ Jᵀ M w`` in sample space, for a diagonal metric ``M`` (Woodbury).

    With ``J̃ = M^½ J`` (``N × P``), ``(J̃ᵀJ̃ + λI)⁻¹ J̃ᵀ = J̃ᵀ (J̃J̃ᵀ + λI)⁻¹``: the solve costs an
    ``N × N`` Cholesky factorisation instead of a ``P × P`` one, the right choice when there are
    fewer residual rows than parameters (SPRING, Goldshlager et al. 2024). Right-hand sides come
    as row vectors ``w`` (e.g. the residuals, since ``∇L = Jᵀ M r``), which keeps the solve exact
    for any λ > 0 (the general Woodbury formula for a parameter-space right-hand side divides
    by λ and cancels catastrophically for small λ).

    Parallel: the rows of ``J̃`` are gathered on every rank (``N × P`` doubles, at most ``P²``
    when ``N < P``); each rank forms its block of rows of ``J̃J̃ᵀ``, the blocks are gathered and
    every rank factorises the same ``N × N`` matrix.

    Args:
        gram: a Gram whose metric is diagonal with entries ``>= 0`` (a residual loss's weights).
        damping: λ > 0.
    """

    method = "sample-space"

    def __init__(self, gram: Gram, damping: float | Damping = 1e-10) -> None:
        value = damping if isinstance(damping, int | float) else damping.value
        if not (value > 0 and np.isfinite(value)):
            raise ValueError(f"Invalid damping {value}: the sample-space solver needs λ > 0")
        super().__init__(gram, damping, "sample-space")
        self._key: tuple[int, float] | None = None
        self._version: int | None = None  # of the kept rows and kernel
        self._rows: torch.Tensor | None = None  # J̃, all rows
        self._kernel: npt.NDArray[np.float64] | None = None  # J̃J̃ᵀ
        self._factor: torch.Tensor | None = None  # Cholesky factor of J̃J̃ᵀ + λI

    def _factorise(self) -> None:
        if self._version != self.gram.version:
            local = self._weighted_jacobian()
            everything = np.vstack(self.comm.allgather(np.ascontiguousarray(local)))
            self._kernel = np.vstack(self.comm.allgather(local @ everything.T))
            self._rows, self._version = torch.from_numpy(everything), self.gram.version
            if not self.damping_policy.calibrated:  # λ relative to max diag(G) = max ‖J̃ e_j‖²
                diagonal = np.einsum("ij,ij->j", everything, everything)
                self.damping_policy.calibrate(float(diagonal.max()))
        if self._key == (self.gram.version, self.damping):
            return
        assert self._kernel is not None
        kernel = self._kernel.copy()
        kernel[np.diag_indices_from(kernel)] += self.damping
        factor, info = torch.linalg.cholesky_ex(torch.from_numpy(kernel))
        parallel.check_all(
            self.comm,
            int(info) == 0,
            f"sample-space Cholesky of J̃J̃ᵀ + λI (λ = {self.damping:g}) failed",
        )
        self._factor = factor
        self._key = (self.gram.version, self.damping)
        self.factorizations += 1

    def solve_rows(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(G + λI)⁻¹ Jᵀ M w`` for ``w`` on the owned rows (replicated result). Collective."""
        scaled = self._scaled_rows(rows)
        start = time.perf_counter()
        self._factorise()
        assert self._rows is not None and self._factor is not None
        scaled = np.concatenate(self.comm.allgather(scaled))
        z = torch.cholesky_solve(torch.from_numpy(scaled)[:, None], self._factor)[:, 0]
        x = (self._rows.T @ z).numpy()
        self.info = {"method": self.method, "damping": self.damping, "rows": z.numel()}
        self.timings["solve"] += time.perf_counter() - start
        parallel.check_all(
            self.comm, bool(np.all(np.isfinite(x))), "the sample-space direction is not finite"
        )
        return x

    def solve(self, gradient: npt.ArrayLike, *, assemble: bool = True) -> npt.NDArray[np.float64]:
        raise TypeError(
            "the sample-space solver takes right-hand sides as row vectors (solve_rows): use it "
            "with an optimizer on an objective that offers row_residual"
        )

    def destroy(self) -> None:
        self._rows = self._factor = self._kernel = None
