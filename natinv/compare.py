"""``natinv compare``: one case, several optimizers, side by side.

Each optimizer preset (:data:`PRESETS`: ``ngd``, ``nhb``, ``nnesterov``, ``adam``, ``lbfgs``)
runs the case through :func:`natinv.runner.run` into ``results/<case>/compare/<optimizer>/``;
the case folder gets ``comparison.csv`` (iterations, stop, loss, misfit, error, time per
optimizer) and ``comparison.png`` (the convergence curves together).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpi4py import MPI

from natinv import output, parallel
from natinv.cases import CaseError, InverseCase
from natinv.output import atomic_path
from natinv.runner import run

__all__ = ["PRESETS", "compare"]

PRESETS: dict[str, list[str]] = {
    "ngd": ["optimizer.kind='ngd'", "optimizer.momentum='none'", "optimizer.beta=0.0"],
    "nhb": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='natural-heavy-ball'",
        "optimizer.beta=0.5",
    ],
    "nnesterov": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='natural-nesterov'",
        "optimizer.beta=0.5",
    ],
    "adam": ["optimizer.kind='adam'"],
    "lbfgs": ["optimizer.kind='lbfgs'"],
}


def compare(
    path: Path,
    optimizers: list[str],
    overrides: list[str] = (),  # type: ignore[assignment]
    comm: MPI.Comm = MPI.COMM_WORLD,
    *,
    quiet: bool = True,
    iterations: int | None = None,
) -> list[dict[str, Any]]:
    """Run one case with several optimizers (``ngd``, ``nhb``, ``nnesterov``, ``adam``,
    ``lbfgs``); each writes ``results/<case>/compare/<optimizer>/``, and the case folder gets
    ``comparison.csv`` and ``comparison.png``. Returns the summaries. Collective."""
    from natinv.cases import load_case_on

    unknown = [o for o in optimizers if o not in PRESETS]
    if unknown or not optimizers:
        raise CaseError(f"--optimizers: unknown {unknown}; choose from {sorted(PRESETS)}")
    base = load_case_on(comm, path, list(overrides))
    cases = [
        load_case_on(
            comm,
            path,
            [
                *overrides,
                *PRESETS[name],
                f"output.folder='{base.output / 'compare' / name}'",
            ],
        )
        for name in optimizers
    ]
    summaries, histories = [], {}
    with output.claim_folder(comm, base.output):
        for name, case in zip(optimizers, cases, strict=True):
            summary = run(case, comm, quiet=quiet, iterations=iterations)
            summary["optimizer"] = name
            summaries.append(summary)
            histories[name] = _read_history(comm, case.output / "history.csv")
        _write_comparison(comm, base.output / "comparison.csv", summaries)
        known = not isinstance(base, InverseCase) or base.parameter.truth is not None
        key = "error" if known else "misfit"
        output.plot_convergence(comm, base.output / "comparison.png", histories, key, base.name)
    return summaries


@output.rank0_writer
def _write_comparison(comm: MPI.Comm, path: Path, summaries: list[dict[str, Any]]) -> None:
    keys = ("optimizer", "iterations", "stopped", "loss", "misfit", "relative_l2_error", "time")
    lines = [",".join(keys)] + [",".join(str(s.get(k)) for k in keys) for s in summaries]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _read_history(comm: MPI.Comm, path: Path) -> list[dict[str, Any]]:
    """A history CSV on rank 0 (empty elsewhere); its error is raised on every rank."""
    import csv

    def read() -> list[dict[str, Any]]:
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
        return [
            {k: float(v) for k, v in row.items() if k != "optimizer" and v not in ("", "None")}
            for row in rows
        ]

    return parallel.on_rank0(comm, f"{path}: cannot read", read) or []
