"""Synthetic measurements from a known field, on a finer discretisation than an inversion uses.

:func:`synthesize` solves a built-in model with the true parameter field interpolated on its
own mesh and degree (by default 64 × 64 cells, P2 state and parameter: finer than a typical
inversion, so the data do not share the inversion's discretisation error — no "inverse crime"),
samples the state at the sensors and adds Gaussian noise of a given σ, seeded.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mpi4py import MPI

import dolfinx
import numpy as np
import numpy.typing as npt

from natinv import models, parallel
from natinv.data import SensorData, read_sensors
from natinv.expressions import compile_expression
from natinv.observations import point_values

__all__ = ["MODELS", "sensor_layout", "synthesize"]

MODELS: dict[str, Callable[..., models.Model]] = {
    "diffusion": models.diffusion,
    "source": models.source,
    "nonlinear-diffusion": models.nonlinear_diffusion,
}


def sensor_layout(comm: MPI.Comm, spec: str, seed: int = 0, jitter: float = 0.0) -> np.ndarray:
    """Sensor coordinates in the unit square from ``grid:NxM`` (cell centres of an N × M grid,
    moved by up to ``jitter`` in each direction), ``random:N`` (uniform in [0.05, 0.95]²) or
    the coordinates of a sensor CSV file. The same on every rank."""
    rng = np.random.default_rng(seed)
    if match := re.fullmatch(r"grid:(\d+)x(\d+)", spec):
        nx, ny = int(match[1]), int(match[2])
        xs, ys = (np.arange(nx) + 0.5) / nx, (np.arange(ny) + 0.5) / ny
        points = np.array([[x, y] for x in xs for y in ys])
        return points + rng.uniform(-jitter, jitter, points.shape)
    if match := re.fullmatch(r"random:(\d+)", spec):
        return 0.05 + 0.9 * rng.random((int(match[1]), 2))
    if spec.endswith(".csv"):
        return read_sensors(comm, spec, 2).points
    raise ValueError(
        f"Unknown sensor layout {spec!r}: use grid:NxM, random:N or a .csv file of sensors"
    )


def synthesize(
    comm: MPI.Comm,
    model: str,
    truth: str,
    points: npt.ArrayLike,
    *,
    source: str = "1",
    cells: int = 64,
    degree: int = 2,
    noise: float = 0.01,
    relative: bool = True,
    seed: int = 0,
) -> SensorData:
    """Noisy point data of ``model`` on the unit square (``u = 0`` on the boundary) for the
    true parameter ``truth`` (a formula of x, y). ``noise`` is σ, or σ / max|u| at the
    sensors when ``relative``. Collective; the same result on every rank."""
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {sorted(MODELS)}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"Invalid noise level {noise}: must be >= 0")
    if cells < 1 or degree < 1:
        raise ValueError(f"Invalid discretisation: cells = {cells}, degree = {degree}")
    true_field = compile_expression(truth, "truth")
    forcing = compile_expression(source, "source")
    mesh = dolfinx.mesh.create_unit_square(comm, cells, cells)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
    parameter = dolfinx.fem.Function(space, name="truth")
    with parallel.collective(comm, "evaluating the true field"):
        parameter.interpolate(true_field)
    f = dolfinx.fem.Function(space, name="source")
    with parallel.collective(comm, "evaluating the source"):
        f.interpolate(forcing)
    option = "kappa" if model == "source" else "f"
    forward = MODELS[model](space, parameter, **{option: f})
    values = point_values(forward.solve(), points)
    forward.destroy()
    scale = float(np.abs(values).max()) if relative else 1.0
    sigma = noise * scale
    noisy = values + sigma * np.random.default_rng(seed).standard_normal(values.size)
    array = np.asarray(points, dtype=np.float64)
    return SensorData(
        points=array,
        values=noisy,
        sigma=np.full(values.size, sigma) if sigma > 0 else None,
        experiment=None,
        lines=np.arange(2, values.size + 2),
    )
