"""``natinv compare``: one case, several optimizers, side by side.

Each optimizer preset (:data:`PRESETS`: ``ngd``, ``nhb``, ``nesterov``, ``nnesterov``,
``ngd-gncg`` (matrix-free Gauss–Newton), ``sampled`` and ``sampled-plain`` (half the
experiments per step, with SPRING momentum or none), ``adam``, ``lbfgs``, and the classical
baselines ``tao-nls``, ``tao-lmvm``) runs the case through :func:`natinv.runner.run` into
``results/<case>/compare/<optimizer>/``; the case folder gets ``comparison.csv`` (iterations,
stop, loss, misfit, error, time and PDE solves per optimizer) and ``comparison.png`` (the
convergence curves together).

A baseline preset is the parameter as a P1 finite-element field with a Tikhonov term (the case's
``[regularization]`` kind, H1 without one) whose weight α is chosen by the discrepancy principle
(Morozov): the largest α of :data:`ALPHAS` whose converged solution (TAO's own tests) fits the
data to the noise level, tried from the largest down, and above the grid (×3, ×10, ... up to
×1000) when its largest already fits (for measured data; a full-field case keeps its own α).
Each tried α is a run of its own under ``compare/<optimizer>/alpha-<α>/``; the preset's row is
then the run a user makes with that α, stopped at the noise level, and the whole search (every
run, that one included) is a row of its own, ``<optimizer>:α-search``, so that the baseline's
cost is not understated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpi4py import MPI

from natinv import output, parallel
from natinv.cases import CaseError, InverseCase
from natinv.output import atomic_path
from natinv.runner import run

__all__ = ["ALPHAS", "PRESETS", "compare"]

PRESETS: dict[str, list[str]] = {
    "ngd": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='none'",
        "optimizer.beta=0.0",
        "optimizer.batch=0",
    ],
    # sampled natural Gauss–Newton on half the experiments per step
    "sampled": [
        "optimizer.kind='ngd'",
        "optimizer.batch=0.5",
        "optimizer.momentum='spring'",
        "optimizer.beta=0.9",
    ],
    "sampled-plain": [
        "optimizer.kind='ngd'",
        "optimizer.batch=0.5",
        "optimizer.momentum='none'",
        "optimizer.beta=0.0",
    ],
    "nhb": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='natural-heavy-ball'",
        "optimizer.beta=0.5",
        "optimizer.batch=0",
    ],
    "nesterov": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='nesterov'",
        "optimizer.beta=0.5",
        "optimizer.batch=0",
    ],
    "nnesterov": [
        "optimizer.kind='ngd'",
        "optimizer.momentum='natural-nesterov'",
        "optimizer.beta=0.5",
        "optimizer.batch=0",
    ],
    "ngd-gncg": [
        "optimizer.kind='ngd'",
        "optimizer.solver='gn-cg'",
        "optimizer.momentum='none'",
        "optimizer.beta=0.0",
        "optimizer.batch=0",
    ],
    "adam": ["optimizer.kind='adam'", "optimizer.batch=0"],
    "lbfgs": ["optimizer.kind='lbfgs'", "optimizer.batch=0"],
    "tao-nls": ["optimizer.kind='tao-nls'", "optimizer.batch=0"],
    "tao-lmvm": ["optimizer.kind='tao-lmvm'", "optimizer.batch=0"],
}
BASELINES = ("tao-nls", "tao-lmvm")
#: what a comparison writes into the case's output folder
COMPARISON = ("comparison.csv", "comparison.png", "compare")
#: beyond the grid's largest α when that one already fits the data (then the search goes up)
UPWARD = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
ALPHAS = (100.0, 30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4)


def compare(
    path: Path,
    optimizers: list[str],
    overrides: list[str] = (),  # type: ignore[assignment]
    comm: MPI.Comm = MPI.COMM_WORLD,
    *,
    quiet: bool = True,
    iterations: int | None = None,
    alphas: Sequence[float] = ALPHAS,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run one case with several optimizers (:data:`PRESETS`); each writes
    ``results/<case>/compare/<optimizer>/``, and the case folder gets ``comparison.csv`` and
    ``comparison.png``. Returns the summaries (a baseline's α search as one more, after it).
    ``alphas``: the baselines' grid of Tikhonov weights, searched from the largest. A folder
    that holds an earlier comparison is refused unless ``force`` replaces it (all of it, so
    that no optimizer's results of the earlier one remain). Collective."""
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
    with output.claim_folder(comm, base.output, results=COMPARISON, force=force):
        for name, case in zip(optimizers, cases, strict=True):
            if name in BASELINES and _measured(base):
                grid = sorted(alphas, reverse=True)
                summary, search = _by_discrepancy(
                    comm, path, overrides, name, base, iterations, grid
                )
                histories[name] = _read_history(comm, case.output / "history.csv")
                summaries += [summary, search]
                continue
            summary = run(case, comm, quiet=quiet, iterations=iterations)
            summary["optimizer"] = name
            summaries.append(summary)
            histories[name] = _read_history(comm, case.output / "history.csv")
        _write_comparison(comm, base.output / "comparison.csv", summaries)
        known = not isinstance(base, InverseCase) or base.parameter.truth is not None
        key = "error" if known else "misfit"
        output.plot_convergence(comm, base.output / "comparison.png", histories, key, base.name)
    return summaries


def _measured(case: Any) -> bool:
    """Whether the data are point or region measurements with a noise level, of the case or
    of every experiment (a full field keeps the case's own α: its misfit is an integral, not a
    sum over σ-scaled values)."""
    return isinstance(case, InverseCase) and all(
        one.data.sensors is not None or one.data.averages is not None for one in case.each()
    )


def _by_discrepancy(
    comm: MPI.Comm,
    path: Path,
    overrides: list[str],
    name: str,
    base: Any,
    iterations: int | None,
    alphas: Sequence[float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The baseline ``name`` with α by the discrepancy principle over ``alphas``: its
    summary (with ``alpha``) and the search's (every run's time and solves). Collective."""
    from natinv.cases import load_case_on

    kind = base.regularization[0] if base.regularization is not None else "h1"

    def baseline(alpha: float, stop: str, folder: Path) -> dict[str, Any]:
        settings = [*PRESETS[name], f"optimizer.stop='{stop}'", f"regularization.kind='{kind}'"]
        settings += [f"regularization.alpha={alpha}", f"output.folder='{folder}'"]
        case = load_case_on(comm, path, [*overrides, *settings])
        summary = run(case, comm, quiet=True, iterations=iterations)
        summary.update(optimizer=name, alpha=alpha)
        return summary

    runs: list[dict[str, Any]] = []

    def fits(trial: float) -> bool:  # converged (TAO's own tests), misfit at the noise level
        runs.append(baseline(trial, "none", base.output / "compare" / name / f"alpha-{trial:g}"))
        return bool(runs[-1]["misfit"] <= runs[-1]["discrepancy_level"])

    alpha = alphas[-1]  # when none reaches the noise level: the smallest, said by its misfit
    for trial in alphas:  # Morozov's principle: the largest α that fits
        if fits(trial):
            alpha = trial
            break
    if len(runs) == 1 and len(alphas) > 1:  # the grid's largest fits: the answer lies above
        for factor in UPWARD:
            if not fits(alphas[0] * factor):
                break
            alpha = alphas[0] * factor
    # the run a user makes with that α: stopped at the noise level
    chosen = baseline(alpha, "discrepancy", base.output / "compare" / name)
    runs.append(chosen)
    search = {
        "optimizer": f"{name}:α-search",
        "iterations": sum(r["iterations"] for r in runs),
        "stopped": f"α = {alpha:g} ({len(runs)} runs)",
        "loss": chosen["loss"],
        "misfit": chosen.get("misfit"),
        "relative_l2_error": chosen["relative_l2_error"],
        "time": sum(r["time"] or 0.0 for r in runs),
        "pde_solves": {
            key: sum(r.get("pde_solves", {}).get(key, 0) for r in runs)
            for key in ("state", "operator")
        },
        "alpha": chosen["alpha"],
    }
    return chosen, search


@output.rank0_writer
def _write_comparison(comm: MPI.Comm, path: Path, summaries: list[dict[str, Any]]) -> None:
    keys = ("optimizer", "iterations", "stopped", "loss", "misfit", "relative_l2_error", "time")
    lines = [",".join((*keys, "state_solves", "operator_solves"))] + [
        ",".join(
            [
                *(str(s.get(k)) for k in keys),
                *(str(s.get("pde_solves", {}).get(k, "")) for k in ("state", "operator")),
            ]
        )
        for s in summaries
    ]
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
