"""Figures of a run: the fields on the mesh, the residuals at the sensors, forward solutions.

Each function gathers what it draws (collectively) and draws it on rank 0 through
:func:`~natinv.output.rank0_writer`, so a figure that cannot be written is one error on every
rank. ``convergence.png`` and the comparison figure are drawn by
:func:`natinv.output.plot_convergence`. Imports no problem or application module (the types in
the signatures are for readers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpi4py import MPI

import dolfinx
import numpy as np

from natinv import domain
from natinv.output import pyplot, rank0_writer, save_figure

if TYPE_CHECKING:
    from natinv.cases import ForwardCase
    from natinv.problems.inverse import InverseSetup

__all__ = [
    "inverse_fields",
    "misfit",
    "mu_errors",
    "shown",
    "solution_lines",
    "solution_surfaces",
    "uncertainty",
]


def inverse_fields(
    comm: MPI.Comm, path: Path, built: InverseSetup, recovered: dolfinx.fem.Function
) -> None:
    """True and recovered parameter on one colour scale, sensors and regions marked; on a 3D
    mesh, on the mid-plane across its thinnest direction (the sites projected onto it).
    Collective."""
    p1 = dolfinx.fem.functionspace(built.mesh, ("Lagrange", 1))
    symbol = {"elasticity": "E", "source": "f", "reaction": "k"}.get(built.model.name, "κ")
    panels: dict[str, Any] = {}
    for name, function in ((f"true {symbol}", built.truth), (f"recovered {symbol}", recovered)):
        if function is None:
            continue
        f1 = dolfinx.fem.Function(p1)
        f1.interpolate(function)
        panels[name] = _panel(f1)
    if built.mesh.geometry.dim == 1:
        _draw_curves(comm, path, built, panels)
        return
    _draw_fields(comm, path, built, panels)


def _panel(function: dolfinx.fem.Function) -> Any:
    """What a figure draws of a P1 function: its triangles (2D), its mid-plane section (3D),
    its values along x (1D). Collective."""
    dim = function.function_space.mesh.geometry.dim
    if dim == 1:
        return _curve(function)
    return domain.triangles(function) if dim == 2 else domain.section(function)


def _curve(function: dolfinx.fem.Function) -> tuple[Any, Any]:
    """The owned P1 values against x, gathered and sorted on rank 0. Collective."""
    space = function.function_space
    owned = space.dofmap.index_map.size_local
    x = space.tabulate_dof_coordinates()[:owned, 0]
    comm = space.mesh.comm
    xs, values = comm.gather(x, root=0), comm.gather(function.x.array[:owned], root=0)
    if comm.rank != 0:
        return np.zeros(0), np.zeros(0)
    x, v = np.concatenate(xs), np.concatenate(values)
    order = np.argsort(x)
    return x[order], v[order]


@rank0_writer
def _draw_curves(
    comm: MPI.Comm, path: Path, built: InverseSetup, panels: dict[str, Any], band: Any = None
) -> None:
    """1D: the curves on one axis (``band``: a (lower, upper) pair shaded about them), the
    sensors marked on the x axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for name, (x, v) in panels.items():
        ax.plot(x, v, label=name)
    if band is not None:
        x, lower, upper, label = band
        ax.fill_between(x, lower, upper, alpha=0.3, label=label)
    sites, _ = built.sites
    if sites.size:
        ax.plot(sites[:, 0], np.full(sites.shape[0], ax.get_ylim()[0]), "k|", ms=8, label="sensors")
    ax.set_xlabel("x")
    ax.legend(fontsize=8)
    ax.set_title(_title(built))
    save_figure(fig, path)


def uncertainty(
    comm: MPI.Comm,
    path: Path,
    built: InverseSetup,
    mean: dolfinx.fem.Function,
    std: dolfinx.fem.Function,
) -> None:
    """The posterior mean, its pointwise σ and, where the truth is known, |error| / σ, each on
    its own colour scale (a 3D mesh: on its mid-plane section). Collective."""
    p1 = dolfinx.fem.functionspace(built.mesh, ("Lagrange", 1))
    symbol = {"elasticity": "E", "source": "f", "reaction": "k"}.get(built.model.name, "κ")
    shown = [(f"mean {symbol}", mean), (f"σ of {symbol}", std)]
    if built.truth is not None:
        ratio = dolfinx.fem.Function(mean.function_space)
        ratio.x.array[:] = np.abs(mean.x.array - built.truth.x.array) / np.maximum(
            std.x.array, 1e-300
        )
        shown.append(("|error| / σ", ratio))
    panels: dict[str, Any] = {}
    for name, function in shown:
        f1 = dolfinx.fem.Function(p1)
        f1.interpolate(function)
        panels[name] = _panel(f1)
    if built.mesh.geometry.dim == 1:  # the mean, mean ± 2σ and the truth on one axis
        x, centre = panels[shown[0][0]]
        _, sigma = panels[shown[1][0]]
        curves = {shown[0][0]: (x, centre)}
        if built.truth is not None:
            truth = dolfinx.fem.Function(p1)
            truth.interpolate(built.truth)
            curves[f"true {symbol}"] = _curve(truth)
        band = (x, centre - 2 * sigma, centre + 2 * sigma, "mean ± 2σ")
        _draw_curves(comm, path, built, curves, band)
        return
    _draw_fields(comm, path, built, panels, shared=False)


@rank0_writer
def _draw_fields(
    comm: MPI.Comm, path: Path, built: InverseSetup, panels: dict[str, Any], shared: bool = True
) -> None:
    plt = pyplot()
    from matplotlib.tri import Triangulation

    planes = [p for p in panels.values() if isinstance(p, domain.Section)]
    if planes:
        values = [p.values[np.isfinite(p.values)] for p in planes]
        width, height = np.ptp(planes[0].u), np.ptp(planes[0].v)
    else:
        values = [v for _, v in panels.values()]
        x_all = np.concatenate([x for x, _ in panels.values()])
        width, height = np.ptp(x_all[:, 0]), np.ptp(x_all[:, 1])
    lo, hi = min(v.min() for v in values), max(v.max() for v in values)
    if width > 1.5 * height:  # a long domain: the panels one above the other
        size = (8.0, 1.0 + 6.5 * height / width * len(panels))
        fig, axes = plt.subplots(len(panels), 1, figsize=size, constrained_layout=True)
    else:
        size = (4.6 * len(panels), 4.0)
        fig, axes = plt.subplots(1, len(panels), figsize=size, constrained_layout=True)
    sites, regions = built.sites
    shown = [0, 1]
    for k, (ax, (name, panel)) in enumerate(zip(np.atleast_1d(axes), panels.items(), strict=True)):
        if not shared:  # each panel its own colour scale
            lo, hi = float(values[k].min()), float(values[k].max())
        if isinstance(panel, domain.Section):
            shown = list(panel.axes)
            image = ax.pcolormesh(
                panel.u, panel.v, panel.values, shading="gouraud", vmin=lo, vmax=hi
            )
            letters = "xyz"
            name += f", {letters[panel.normal]} = {panel.level:.3g}"
            ax.set_xlabel(letters[panel.axes[0]])
            ax.set_ylabel(letters[panel.axes[1]])
        else:
            x, v = panel
            tri = Triangulation(x[:, 0], x[:, 1], np.arange(x.shape[0]).reshape(-1, 3))
            image = ax.tripcolor(tri, v, shading="gouraud", vmin=lo, vmax=hi)
        if (~regions).any():
            ax.plot(*sites[~regions][:, shown].T, "k.", ms=3, label="sensors")
        if regions.any():
            ax.plot(*sites[regions][:, shown].T, "ks", ms=4, mfc="none", label="averaged regions")
        ax.set_title(name)
        ax.set_aspect("equal")
        fig.colorbar(image, ax=ax, shrink=0.85)
    if built.measured:
        np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(_title(built))
    save_figure(fig, path)


def misfit(comm: MPI.Comm, path: Path, built: InverseSetup) -> None:
    """The normalised residual (Bu − d)/σ at each sensor and region, and its histogram; with
    several experiments one panel per experiment (the first 15) and the RMS of each.
    Collective."""
    if not built.measured:  # full-field data: the state in state.bp shows it
        return
    gathered = []
    for experiment, solved in zip(built.experiments, built.problem.experiments, strict=True):
        local = []
        predicted = solved.predict()
        for obs, rows, values in zip(
            experiment.observations, experiment.rows, predicted, strict=True
        ):
            weights = obs.metric.getDiagonal()
            residual = (values - obs.data) * np.sqrt(weights.array_r)
            weights.destroy()
            assert obs.index is not None
            local.append((rows[obs.index], residual))
        gathered.append(comm.gather(local, root=0))
    if len(built.experiments) == 1:
        _draw_misfit(comm, path, built, gathered[0])
    else:
        _draw_misfits(comm, path, built, gathered)


def _residuals(experiment: Any, gathered: list[Any]) -> Any:
    """The experiment's residuals in the order of its sites, from every rank's blocks."""
    z = np.zeros(experiment.sites[0].shape[0])
    for blocks in gathered:
        for index, values in blocks:
            z[index] = values
    return z


@rank0_writer
def _draw_misfits(comm: MPI.Comm, path: Path, built: InverseSetup, gathered: list[Any]) -> None:
    """Several experiments: each one's residuals at its sites (the first 15), the RMS of each,
    and the histogram of all."""
    plt = pyplot()
    experiments = built.experiments
    residuals = [_residuals(e, g) for e, g in zip(experiments, gathered, strict=True)]
    shown = min(len(experiments), 15)
    columns = min(shown, 5)
    lines = -(-shown // columns)
    fig = plt.figure(figsize=(2.6 * columns, 2.5 * lines + 3.2), constrained_layout=True)
    grid = fig.add_gridspec(lines + 1, columns, height_ratios=[1.0] * lines + [1.25])
    bound = max(float(np.abs(z).max(initial=0.0)) for z in residuals) or 1.0
    image = None
    for k in range(shown):
        ax = fig.add_subplot(grid[k // columns, k % columns])
        sites, regions = experiments[k].sites
        if sites.shape[1] == 3:
            sites = sites[:, sorted(np.argsort(np.ptp(sites, axis=0))[1:])]
        z = residuals[k]
        style = {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
        image = ax.scatter(*sites[~regions].T, c=z[~regions], s=12, **style)
        if regions.any():
            ax.scatter(*sites[regions].T, c=z[regions], s=20, marker="s", edgecolors="k", **style)
        rms = np.sqrt(np.mean(z**2)) if z.size else 0.0
        ax.set_title(f"{experiments[k].name}: RMS {rms:.2f}", fontsize=8)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.6, label="(Bu − d)/σ")
    bars = fig.add_subplot(grid[lines, : max(columns // 2, 1)])
    rms = [np.sqrt(np.mean(z**2)) if z.size else 0.0 for z in residuals]
    bars.bar(np.arange(len(rms)) + 1, rms)
    bars.axhline(1.0, color="k", lw=0.8, ls="--")
    bars.set_xlabel("experiment")
    bars.set_ylabel("RMS of (Bu − d)/σ")
    bars.set_title("1 = the noise level", fontsize=9)
    hist = fig.add_subplot(grid[lines, max(columns // 2, 1) :])
    every = np.concatenate(residuals)
    hist.hist(every, bins=30)
    hist.set_xlabel("(Bu − d)/σ, every experiment")
    hist.set_title(f"RMS {np.sqrt(np.mean(every**2)):.2f} over {every.size} values", fontsize=9)
    save_figure(fig, path)


@rank0_writer
def _draw_misfit(comm: MPI.Comm, path: Path, built: InverseSetup, gathered: list[Any]) -> None:
    plt = pyplot()

    sites, regions = built.sites
    if sites.shape[1] == 3:  # seen along the direction in which the sites spread least
        kept = sorted(np.argsort(np.ptp(sites, axis=0))[1:])
        sites = sites[:, kept]
    z = _residuals(built.experiments[0], gathered)
    every = z
    series = built.series
    if series is not None:  # time series: each sensor's RMS over its times, at its place
        sensor, first = series
        counts = np.bincount(sensor)
        sign = np.sign(np.bincount(sensor, weights=z))
        z = sign * np.sqrt(np.bincount(sensor, weights=z**2) / counts)
        sites, regions = sites[first], regions[first]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    line = sites.shape[1] == 1
    if line:  # 1D: the residual against x
        sites = np.column_stack([sites[:, 0], z])
    bound = float(np.abs(z).max()) or 1.0
    style = {"c": z, "cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
    image = ax.scatter(*sites[~regions].T, s=25, **{**style, "c": z[~regions]})
    if regions.any():
        image = ax.scatter(
            *sites[regions].T, s=40, marker="s", edgecolors="k", **{**style, "c": z[regions]}
        )
    if line:
        ax.set_xlabel("x")
    else:
        ax.set_aspect("equal")
    title = "(Bu − d)/σ" if series is None else "RMS over time of (Bu − d)/σ (sign of the mean)"
    ax.set_title(title + (" (squares: region averages)" if regions.any() else ""))
    fig.colorbar(image, ax=ax, shrink=0.85)
    hist.hist(every, bins=20)
    hist.set_xlabel("(Bu − d)/σ")
    hist.set_title(f"RMS {np.sqrt(np.mean(every**2)):.2f} (1 = noise level)")
    save_figure(fig, path)


def shown(mus: list[Any]) -> set[int]:
    """Up to three test μ to draw: the first, the middle and the last."""
    return {0, len(mus) // 2, len(mus) - 1}


def _label(label: str) -> str:
    """A panel's label (``"μ = 0.5"``, ``"a = 1, b = 2"``, or none) in parentheses."""
    return f" ({label})" if label else ""


def _p1(function: dolfinx.fem.Function) -> dolfinx.fem.Function:
    mesh = function.function_space.mesh
    out = dolfinx.fem.Function(dolfinx.fem.functionspace(mesh, ("Lagrange", 1)))
    out.interpolate(function)
    return out


def solution_lines(comm: MPI.Comm, path: Any, title: str, panels: list[Any]) -> None:
    """1D: u_θ and the reference against x, and the pointwise error (log scale)."""
    curves = []
    for mu, u, reference in panels:
        p1u, p1r = _p1(u), _p1(reference)
        owned = p1u.function_space.dofmap.index_map.size_local
        x = p1u.function_space.tabulate_dof_coordinates()[:owned, 0]
        gathered = comm.gather((x, p1u.x.array[:owned], p1r.x.array[:owned]), root=0)
        if comm.rank == 0:
            x, a, b = (np.concatenate(parts) for parts in zip(*gathered, strict=True))
            order = np.argsort(x)
            curves.append((mu, x[order], a[order], b[order]))
    _draw_lines(comm, path, title, curves)


@rank0_writer
def _draw_lines(comm: MPI.Comm, path: Any, title: str, curves: list[Any]) -> None:
    plt = pyplot()

    fig, (ax, err) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for mu, x, a, b in curves:
        (line,) = ax.plot(x, b, "-", lw=2.5, alpha=0.4, label=f"reference{_label(mu)}")
        ax.plot(x, a, "--", color=line.get_color(), lw=1.2, label=f"network{_label(mu)}")
        gap = np.abs(a - b)
        gap[gap == 0.0] = np.nan  # exact boundary values: off the log scale
        err.semilogy(x, gap, color=line.get_color(), label=_label(mu) or None)
    ax.set_xlabel("x")
    ax.set_ylabel("u")
    ax.legend(fontsize=8)
    err.set_xlabel("x")
    err.set_ylabel("|u_θ − u*| at the P1 nodes")
    err.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    save_figure(fig, path)


def solution_surfaces(comm: MPI.Comm, path: Any, title: str, panels: list[Any]) -> None:
    """2D: one row per μ: u_θ, the reference, and their difference."""
    rows = []
    for mu, u, reference in panels:
        x, a = domain.triangles(_p1(u))
        _, b = domain.triangles(_p1(reference))
        rows.append((mu, x, a, b))
    _draw_surfaces(comm, path, title, rows)


@rank0_writer
def _draw_surfaces(comm: MPI.Comm, path: Any, title: str, rows: list[Any]) -> None:
    plt = pyplot()
    from matplotlib.tri import Triangulation

    fig, axes = plt.subplots(
        len(rows), 3, figsize=(13, 3.8 * len(rows)), constrained_layout=True, squeeze=False
    )
    for (mu, x, a, b), line in zip(rows, axes, strict=True):
        tri = Triangulation(x[:, 0], x[:, 1], np.arange(x.shape[0]).reshape(-1, 3))
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        bound = float(np.abs(a - b).max()) or 1.0
        for ax, values, name, kwargs in (
            (line[0], a, "network u_θ", {"vmin": lo, "vmax": hi}),
            (line[1], b, "reference u*", {"vmin": lo, "vmax": hi}),
            (line[2], a - b, "u_θ − u*", {"vmin": -bound, "vmax": bound, "cmap": "RdBu_r"}),
        ):
            image = ax.tripcolor(tri, values, shading="gouraud", **kwargs)
            ax.set_title(name + _label(mu))
            ax.set_aspect("equal")
            fig.colorbar(image, ax=ax, shrink=0.85)
    fig.suptitle(title)
    save_figure(fig, path)


@rank0_writer
def mu_errors(
    comm: MPI.Comm, path: Any, case: ForwardCase, mus: list[Any], errors: list[float]
) -> None:
    plt = pyplot()

    parametric = case.parametric
    assert parametric is not None  # (a parametric case draws this figure)
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    if len(parametric.names) == 1:  # the error against μ, the training values marked
        values = np.array([mu[0] for mu in mus])
        order = np.argsort(values)
        ax.semilogy(values[order], np.array(errors)[order], "o-", label="test μ")
        for i, (mu,) in enumerate(parametric.samples):
            ax.axvline(mu, color="k", lw=0.6, ls=":", label="training μ" if i == 0 else None)
        ax.set_xlabel(parametric.symbols[0])
    else:  # several parameters: the error per test sample, trained ones filled
        trained = np.array([tuple(mu) in set(parametric.samples) for mu in mus])
        index = np.arange(len(mus))
        ax.semilogy(index, errors, "-", color="0.7")
        ax.semilogy(index[trained], np.array(errors)[trained], "o", label="trained")
        ax.semilogy(index[~trained], np.array(errors)[~trained], "o", mfc="none", label="new")
        ax.set_xticks(index, [parametric.label(tuple(mu)) for mu in mus], rotation=60, ha="right")
        ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("relative L2 error of u(·; μ)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.suptitle(f"{case.name}: the surrogate across μ")
    save_figure(fig, path)


def _title(built: InverseSetup) -> str:
    """The case's name (of its first experiment's model when built without a case)."""
    return built.case.name if built.case is not None else built.problem.experiments[0].name
