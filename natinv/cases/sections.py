"""The tables of a case file, each read into its settings and checked value by value.

This module imports nothing from natinv's compute layer (formulas are compiled by
:mod:`natinv.expressions`, which needs only numpy).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from natinv.cases.settings import (
    ACTIVATIONS,
    BUILTIN_MESHES,
    CG_MODELS,
    MESH_SUFFIXES,
    MODELS,
    MOMENTA,
    OPTIMIZERS,
    SOLVERS,
    STATE_SOLVERS,
    TIME_SCHEMES,
    TRANSIENT,
    DataSettings,
    EquationSettings,
    ExperimentSettings,
    MeshSettings,
    ModelSettings,
    OptimizerSettings,
    ParameterSettings,
    ParametricSettings,
    SolutionSettings,
)
from natinv.cases.table import CaseError, _Table
from natinv.expressions import (
    CONSTANTS,
    FUNCTIONS,
    POLAR,
    VARIABLES,
    check_ufl,
    expression_names,
)


def _numbers(value: Any, count: int | None = None, positive: bool = False) -> bool:
    """Whether ``value`` is a list of (``count``) numbers (all > 0 if ``positive``)."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and (count is None or len(value) == count)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) and (v > 0 or not positive) for v in value)
    )


def _mesh(t: _Table, base: Path) -> MeshSettings:
    builtin = t.get("builtin", None)
    if builtin is not None:
        t.string("builtin", choices=BUILTIN_MESHES)
    dim = {"interval": 1, "box": 3}.get(builtin or "", 2)
    cells = t.get("cells", 32)
    if isinstance(cells, int) and not isinstance(cells, bool):
        cells = [cells] * dim
    if not (
        isinstance(cells, list)
        and len(cells) == dim
        and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in cells)
    ):
        expected = "a positive integer" + {1: "", 2: " or [nx, ny]", 3: " or [nx, ny, nz]"}[dim]
        raise t.fail("cells", f"expected {expected}, got {cells!r}")
    extent = t.get("extent", [1.0] * dim)
    if isinstance(extent, int | float) and not isinstance(extent, bool) and dim == 1:
        extent = [extent]
    if not _numbers(extent, dim, positive=True):
        shape = {1: "a length", 2: "[length, height]", 3: "[length, height, depth]"}[dim]
        raise t.fail("extent", f"expected {shape} (positive numbers), got {extent!r}")
    origin = t.get("origin", [0.0] * dim)
    if isinstance(origin, int | float) and not isinstance(origin, bool) and dim == 1:
        origin = [origin]
    if not _numbers(origin, dim):
        raise t.fail("origin", f"expected {dim} number(s), the lower corner, got {origin!r}")
    mesh = MeshSettings(
        file=t.file("file", base, None),
        builtin=builtin,
        cells=cells,
        extent=[float(e) for e in extent],
        origin=[float(o) for o in origin],
        dim=t.integer("dim", 2, low=2),
    )
    if (mesh.file is None) == (mesh.builtin is None):
        raise t.fail(
            "file",
            'give either a mesh file or builtin = "unit-square", "rectangle", "box" or "interval"',
        )
    if mesh.dim > 3:
        raise t.fail("dim", f"a mesh file's dimension is 2 or 3, got {mesh.dim}")
    if builtin is not None and "dim" in t.data:
        raise t.fail("dim", "only for a mesh file (a built-in mesh knows its dimension)")
    if mesh.file is not None and mesh.file.suffix.lower() not in MESH_SUFFIXES:
        raise t.fail(
            "file",
            f"expected a mesh file ({', '.join(MESH_SUFFIXES)}: gmsh, XDMF, or what meshio "
            f"reads), got {mesh.file.name}",
        )
    t.finish()
    return mesh


def _dirichlet_tags(t: _Table, name: str) -> list[int | str] | str:
    """``"all"``, or boundary tags: numbers, or the names of the mesh's boundary groups (gmsh
    physical groups, named sets of a meshio file), resolved when the mesh is read."""
    tags = t.get(name, "all")
    if not (
        tags == "all"
        or (
            isinstance(tags, list)
            and tags
            and all(
                (isinstance(i, int) and not isinstance(i, bool)) or (isinstance(i, str) and i)
                for i in tags
            )
        )
    ):
        raise t.fail(
            name, f'expected "all" or a list of boundary tags (numbers or names), got {tags!r}'
        )
    return tags


def _boundary(t: _Table, name: str) -> list[int | str] | str:
    """``boundary`` (required): ``"all"`` or a list of boundary tags (numbers or names)."""
    t.get(name)
    return _dirichlet_tags(t, name)


def _fluxes(t: _Table) -> list[tuple[list[int | str] | str, str]]:
    """``flux = { boundary = ..., value = "formula" }`` or a list of such tables (one per part
    of the boundary): ``κ∇u·n = value`` there."""
    value = t.get("flux")
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, dict) for i in items):
        raise t.fail(
            "flux",
            'expected { boundary = "all" or [tags], value = "formula" } or a list of them, '
            f"got {value!r}",
        )
    fluxes = []
    for k, item in enumerate(items):
        f = _Table(item, t.key("flux") + (f"[{k}]" if isinstance(value, list) else ""), t.source)
        fluxes.append((_boundary(f, "boundary"), f.formula("value") or "0"))
        f.finish()
    return fluxes


def _robin(t: _Table) -> tuple[list[int | str] | str, float, str]:
    """``robin = { boundary = ..., coefficient = c, value = "formula" }``: ``κ∇u·n + c (u −
    value) = flux`` there (c > 0; value defaults to 0)."""
    r = t.table("robin")
    robin = (
        _boundary(r, "boundary"),
        r.number("coefficient", low=0.0, low_open=True),
        r.formula("value", "0") or "0",
    )
    r.finish()
    return robin


def _load(t: _Table, gdim: int) -> list[float] | None:
    """``load = [fx, fy(, fz)]``: an elastic body force (None where not given)."""
    if "load" not in t.data:
        return None
    load = t.get("load")
    if not _numbers(load, gdim):
        shown = ", ".join(f"f{c}" for c in ("x", "y", "z")[:gdim])
        raise t.fail("load", f"expected [{shown}] (numbers), got {load!r}")
    return [float(v) for v in load]


def _traction(t: _Table, gdim: int) -> tuple[int, list[float]] | None:
    """``traction = { boundary = 2, value = [tx, ty(, tz)] }`` (None where not given)."""
    if "traction" not in t.data:
        return None
    tt = t.table("traction")
    value = tt.get("value")
    if not _numbers(value, gdim):
        shown = ", ".join(f"t{c}" for c in ("x", "y", "z")[:gdim])
        raise tt.fail("value", f"expected [{shown}] (numbers), got {value!r}")
    traction = (tt.integer("boundary", low=0), [float(v) for v in value])
    tt.finish()
    return traction


def _state_solver(t: _Table, kind: str) -> str:
    """``solver``: a sparse direct solver, or ``"cg"`` for the symmetric positive definite
    models."""
    solver = t.string("solver", "mumps", STATE_SOLVERS)
    if solver == "cg" and kind not in CG_MODELS:
        raise t.fail(
            "solver",
            f"'cg' (conjugate gradients) needs a symmetric positive definite operator: "
            f"model.kind one of {list(CG_MODELS)}, not {kind!r}",
        )
    return solver


def _krylov_rtol(t: _Table) -> float:
    """``rtol``: the relative residual of the Krylov solves, for ``solver = "cg"`` only."""
    if t.get("solver", "mumps") != "cg":
        if "rtol" in t.data:
            raise t.fail("rtol", "only for solver = 'cg' (a factorisation solves exactly)")
        return 1e-10
    return t.number("rtol", 1e-10, low=0.0, high=1.0, low_open=True, high_open=True)


# what an experiment may change of each model kind's loads
EXPERIMENT_LOADS = {
    "diffusion": ("source", "flux", "boundary_value"),
    "elasticity": ("load", "traction"),
}


def _experiments(
    root: _Table, base: Path, model: ModelSettings, gdim: int
) -> list[ExperimentSettings]:
    """The ``[[experiment]]`` tables: each experiment's loads (what differs from ``[model]``)
    and its data files."""
    if "experiment" not in root.data:
        return []
    value = root.get("experiment")
    if not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        raise root.fail("experiment", "expected [[experiment]] tables (an array of tables)")
    if model.kind not in EXPERIMENT_LOADS:
        raise root.fail(
            "experiment",
            f"several experiments need model.kind = 'diffusion' or 'elasticity' (got "
            f"{model.kind!r}); other models take one experiment, the [model] and [data] tables",
        )
    loads = EXPERIMENT_LOADS[model.kind]
    experiments: list[ExperimentSettings] = []
    for k, item in enumerate(value):
        t = _Table(item, f"experiment[{k}]", root.source)
        name = t.string("name", f"experiment-{k + 1:02d}")
        if not name or any(c in name for c in '/\\:*?"<>|') or name.strip() != name:
            raise t.fail("name", f"expected a name usable in file names, got {name!r}")
        other = [key for keys in EXPERIMENT_LOADS.values() for key in keys if key not in loads]
        for key in other:
            if key in t.data:
                raise t.fail(key, f"not a load of model.kind = {model.kind!r} (its loads: {loads})")
        sigma = t.get("sigma", None)
        elastic = model.kind == "elasticity"
        experiment = ExperimentSettings(
            name=name,
            source=None if elastic else t.formula("source", None),
            flux=_fluxes(t) if "flux" in t.data and not elastic else None,
            boundary_value=None if elastic else t.formula("boundary_value", None),
            load=_load(t, gdim) if elastic else None,
            traction=_traction(t, gdim) if elastic else None,
            sensors=t.file("sensors", base, None, exists=False),
            averages=t.file("averages", base, None, exists=False),
            sigma=None if sigma is None else t.number("sigma", low=0.0, low_open=True),
        )
        if experiment.sensors is None and experiment.averages is None:
            raise t.fail(
                "sensors", "each experiment needs its data: sensors and/or averages (CSV files)"
            )
        t.finish()
        if any(e.name == name for e in experiments):
            raise t.fail("name", f"{name!r} is the name of an earlier experiment")
        experiments.append(experiment)
    files = [f for e in experiments for f in (e.sensors, e.averages) if f is not None]
    if len(set(files)) != len(files):
        twice = next(f for f in files if files.count(f) > 1)
        raise root.fail("experiment", f"{twice.name} is the data file of two experiments")
    return experiments


def _features(t: _Table) -> tuple[int, float] | None:
    """``features = { count = 16, scale = 0.5 }`` (the default: bench/inverse_prior.py), Fourier
    features of the coordinates, or ``features = "none"``."""
    if "features" not in t.data:
        return ParameterSettings.features
    if t.data["features"] == "none":
        t.get("features")
        return None
    value = t.data["features"]
    if not isinstance(value, dict):
        raise t.fail("features", f'expected {{ count = 16, scale = 0.5 }} or "none", got {value!r}')
    f = t.table("features")
    features = (f.integer("count", low=1), f.number("scale", low=0.0, low_open=True))
    f.finish()
    return features


def _scale(t: _Table, default: float | str) -> float | str:
    """``scale``: the unit of the network's output, a number > 0 or ``"auto"`` (max |u_h| / 100
    from a P1 solve; the Ritz loss's default, bench/ritz.py part 6)."""
    value = t.get("scale", default)
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise t.fail("scale", f'expected a number > 0 or "auto", got {value!r}')
    return t.number("scale", default, low=0.0, low_open=True)


def _network(t: _Table, default: list[int], inputs: int, what: str) -> list[int]:
    network = t.get("network", default)
    if not (
        isinstance(network, list)
        and len(network) >= 2
        and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in network)
        and network[0] == inputs
        and network[-1] == 1
    ):
        if (
            isinstance(network, list)
            and len(network) >= 2
            and isinstance(network[0], int)
            and network[0] != inputs
            and network[-1] == 1
        ):
            raise t.fail(
                "network",
                f"a dimension mismatch: the network takes {network[0]} input(s), the case gives "
                f"{inputs} ({what}; the mesh's dimension from mesh.dim and its file, or the "
                f"parametric names); set mesh.dim to the mesh's dimension or the first width "
                f"to {inputs}",
            )
        raise t.fail(
            "network",
            f"expected layer widths [{inputs}, ..., 1] (positive integers; {inputs} inputs: "
            f"{what}), got {network!r}",
        )
    return network


def _inverse(
    root: _Table, base: Path, wanted: bool, gdim: int = 2
) -> tuple[ModelSettings, ParameterSettings, DataSettings, list[ExperimentSettings]] | None:
    """The ``[model]``, ``[parameter]``, ``[data]`` and ``[[experiment]]`` tables of an inverse
    problem on a ``gdim``-dimensional mesh."""
    if not wanted:
        for table in ("model", "parameter", "data"):
            if table in root.data:
                raise root.fail(
                    table, "only for inverse problems (a forward case has [equation], [solution])"
                )
        return None
    t = root.table("model")
    dirichlet: list[int | str] | str = []
    if t.get("dirichlet", "all") != []:  # (an empty list: no Dirichlet side)
        dirichlet = _dirichlet_tags(t, "dirichlet")
    names = ("x", "y", "z")[:gdim]
    load = _load(t, gdim) or [0.0] * gdim
    traction = _traction(t, gdim)
    kind = t.string("kind", "diffusion", MODELS)
    timing: dict[str, Any] = {}
    if kind in TRANSIENT:
        timing = {
            "dt": t.number("dt", low=0.0, low_open=True),
            "steps": t.integer("steps", low=1),
            "scheme": t.string("scheme", "crank-nicolson", TIME_SCHEMES),
            "initial": t.formula("initial", "0") or "0",
            "memory": t.number("memory", 1024.0, low=0.0, low_open=True),
        }
    else:
        for key in ("dt", "steps", "scheme", "initial", "memory"):
            if key in t.data:
                raise t.fail(key, f"only for a transient model (kind = {TRANSIENT[0]!r})")
    if kind == "reaction":
        timing["diffusion"] = t.number("diffusion", 1.0, low=0.0, low_open=True)
    elif "diffusion" in t.data:
        raise t.fail("diffusion", "only for kind = 'reaction' (λ in λΔu − k u = f)")
    source = t.formula("source", "1", ("t",) if kind in TRANSIENT else ()) or "1"
    if "t" in expression_names(source):
        try:
            check_ufl(source, t.key("source"), ("t",))
        except ValueError as exc:
            raise CaseError(f"{t.source}: {exc}") from None
    boundary_loads: dict[str, Any] = {}
    for key in ("flux", "robin"):
        if key in t.data and kind != "diffusion":
            raise t.fail(key, f"only for kind = 'diffusion' (got {kind!r})")
    if "flux" in t.data:
        boundary_loads["flux"] = _fluxes(t)
    if "robin" in t.data:
        boundary_loads["robin"] = _robin(t)
    if "boundary_value" in t.data and kind == "elasticity":
        raise t.fail("boundary_value", "only for a scalar state (not elasticity)")
    if dirichlet == [] and "robin" not in boundary_loads:
        raise t.fail(
            "dirichlet",
            "no Dirichlet side and no Robin term: the state would be determined only up to a "
            "constant (a pure-Neumann problem); name the Dirichlet tags or add robin = "
            '{ boundary = "all", coefficient = c }',
        )
    model = ModelSettings(
        kind=kind,
        degree=t.integer("degree", 2, low=1),
        source=source,
        dirichlet=dirichlet,
        boundary_value=t.formula("boundary_value", "0") or "0",
        **boundary_loads,
        load=load,
        traction=traction,
        coefficient=t.string("coefficient", "identity", ("identity", "exp")),
        solver=_state_solver(t, kind),
        rtol=_krylov_rtol(t),
        poisson_ratio=t.number(
            "poisson_ratio", 0.3, low=-1.0, high=0.5, low_open=True, high_open=True
        ),
        **timing,
    )
    t.finish()

    t = root.table("parameter")
    network = _network(t, [gdim, 20, 20, 1], gdim, ", ".join(names))
    parameter = ParameterSettings(
        degree=t.integer("degree", 1, low=1),
        network=network,
        activation=t.string("activation", "tanh", tuple(ACTIVATIONS)),
        transform=t.string("transform", "exp", ("identity", "exp", "softplus")),
        truth=t.formula("truth", None),
        initial=t.formula("initial", "1") or "1",
        features=_features(t),
        box=_box(t, gdim),
    )
    t.finish()

    experiments = _experiments(root, base, model, gdim)
    t = root.table("data", required=not experiments)
    if experiments:
        for key in ("sensors", "averages", "field"):
            if key in t.data:
                raise t.fail(
                    key, "with [[experiment]] tables each experiment names its own data files"
                )
        sigma = t.get("sigma", None)
        data_settings = DataSettings(
            sigma=None if sigma is None else t.number("sigma", low=0.0, low_open=True)
        )
        t.finish()
        return model, parameter, data_settings, experiments
    sensors = t.file("sensors", base, None, exists=False)
    averages = t.file("averages", base, None, exists=False)
    data_field = t.file("field", base, None, exists=False)
    if (sensors is None and averages is None) == (data_field is None):
        raise t.fail(
            "sensors",
            "give sensors (a CSV file of point values) and/or averages (a CSV file of region "
            "averages), or field (an XDMF file)",
        )
    sigma = t.get("sigma", None)
    data_settings = DataSettings(
        sensors=sensors,
        field=data_field,
        sigma=None if sigma is None else t.number("sigma", low=0.0, low_open=True),
        averages=averages,
    )
    if data_field is not None and data_settings.sigma is None:
        raise t.fail("sigma", "a full field needs its noise level sigma")
    t.finish()
    return model, parameter, data_settings, []


def _box(t: _Table, gdim: int) -> tuple[list[float], list[float]] | None:
    """``box = "mesh"`` (the default: the mesh's bounding box) or ``[[lower...], [upper...]]``,
    the box whose coordinates the network reads in units of its largest side."""
    box = t.get("box", "mesh")
    if box == "mesh":
        return None
    if (
        isinstance(box, list)
        and len(box) == 2
        and all(_numbers(corner, gdim) for corner in box)
        and max(float(b) - float(a) for a, b in zip(box[0], box[1], strict=True)) > 0
        and all(float(b) >= float(a) for a, b in zip(box[0], box[1], strict=True))
    ):
        return [float(v) for v in box[0]], [float(v) for v in box[1]]
    raise t.fail(
        "box",
        f'expected "mesh" or [[lower corner], [upper corner]] ({gdim} numbers each, upper >= '
        f"lower, not all equal), got {box!r}",
    )


def _parameter_names(t: _Table) -> tuple[str, ...]:
    """``[parametric] names``: the parameters' names in formulas (default ``["mu"]``)."""
    names = t.get("names", ["mu"])
    taken = {*VARIABLES, *POLAR, "t", *CONSTANTS, *FUNCTIONS}
    if not (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) and n.isidentifier() and n not in taken for n in names)
        and len(set(names)) == len(names)
    ):
        raise t.fail(
            "names",
            "expected a list of distinct parameter names (identifiers other than x, y, z, t, "
            f"the constants and the functions of formulas), got {names!r}",
        )
    return tuple(names)


def _parameter_values(
    t: _Table, key: str, names: tuple[str, ...], default: list[tuple[float, ...]] | None
) -> list[tuple[float, ...]]:
    """``samples`` or ``test``: a list of values (one parameter), a list of rows of ``q`` values,
    or a table ``{name = [values], ...}`` of every name, whose product is taken (a grid)."""
    if key not in t.data and default is not None:
        return list(default)
    value = t.get(key)
    q = len(names)
    if isinstance(value, dict):
        if set(value) != set(names) or not all(_numbers(value[n]) for n in names):
            raise t.fail(
                key, f"a grid needs a list of numbers for each of {list(names)}, got {value!r}"
            )
        return [tuple(map(float, row)) for row in itertools.product(*(value[n] for n in names))]
    if q == 1 and _numbers(value):
        return [(float(v),) for v in value]
    if isinstance(value, list) and value and all(_numbers(row, q) for row in value):
        return [tuple(map(float, row)) for row in value]
    expected = "values of μ (numbers)" if q == 1 else f"rows of {q} numbers ({', '.join(names)})"
    raise t.fail(key, f"expected a list of {expected} or a grid {{name = [...]}}, got {value!r}")


def _forward(
    root: _Table, mesh: MeshSettings, problem: str
) -> tuple[EquationSettings, SolutionSettings, ParametricSettings | None] | None:
    """The ``[equation]``, ``[solution]`` and ``[parametric]`` tables of a forward problem."""
    if problem == "inverse":
        for table in ("equation", "solution", "parametric"):
            if table in root.data:
                raise root.fail(table, 'only for forward problems (problem = "pinn" or "ritz")')
        return None
    parametric = None
    if "parametric" in root.data:
        t = root.table("parametric")
        names = _parameter_names(t)
        samples = _parameter_values(t, "samples", names, None)
        test = _parameter_values(t, "test", names, samples)
        t.finish()
        if problem == "ritz":
            raise t.fail("samples", 'a parametric surrogate needs problem = "pinn"')
        parametric = ParametricSettings(names, samples, test)
    names = parametric.names if parametric else ()

    t = root.table("equation")
    time = t.get("time", False)
    if not isinstance(time, bool):
        raise t.fail("time", f"expected true or false, got {time!r}")
    if time and problem != "pinn":
        raise t.fail("time", 'a space–time problem needs problem = "pinn" (no energy in time)')
    if time and mesh.gdim < 2:
        raise t.fail("time", "needs a mesh of space and time: (x, t) or (x, y, t)")
    spatial = mesh.gdim - (1 if time else 0)
    velocity = t.get("velocity", None)
    if velocity is not None:
        if not (isinstance(velocity, list) and len(velocity) == spatial):
            raise t.fail(
                "velocity",
                f"expected {spatial} formula(s), one per space coordinate, got {velocity!r}",
            )
        velocity = [t.check_formula("velocity", v, names) for v in velocity]
    # exact: Ritz at the dofs (any mesh), PINN through a multiplier (built-in boxes only)
    default_boundary = "exact" if problem == "ritz" or mesh.builtin is not None else "penalty"
    neumann = None
    if "neumann" in t.data:
        neumann = _dirichlet_tags(t, "neumann")
        if neumann == "all":
            raise t.fail("neumann", "expected a list of boundary tags (numbers or names)")
    equation = EquationSettings(
        diffusion=t.formula("diffusion", "1", names) or "1",
        velocity=velocity,
        reaction=t.formula("reaction", "0", names) or "0",
        source=t.formula("source", "1", names) or "1",
        dirichlet=_dirichlet_tags(t, "dirichlet"),
        boundary_value=t.formula("boundary_value", "0", names) or "0",
        neumann=neumann,  # type: ignore[arg-type]
        flux=t.formula("flux", "0", names) or "0",
        time=time,
        boundary=t.string("boundary", default_boundary, ("exact", "penalty")),
        penalty=t.number("penalty", 1.0, low=0.0, low_open=True),
        quadrature=t.integer("quadrature", 2, low=1),
        boundary_quadrature=t.integer("boundary_quadrature", 2, low=1),
    )
    if problem == "pinn" and equation.boundary == "exact" and mesh.builtin is None:
        raise t.fail(
            "boundary",
            '"exact" multiplies the network by a function that vanishes on the Dirichlet sides '
            'of a built-in box; on a mesh file use "penalty"',
        )
    if problem == "pinn" and equation.dirichlet != "all" and neumann is None and not time:
        raise t.fail(
            "dirichlet",
            'a PINN case imposes u = g on every boundary facet ("all") unless the rest is in '
            "neumann (κ∇u·n = flux)",
        )
    if time and equation.dirichlet == "all":
        raise t.fail(
            "dirichlet",
            "name the sides with a condition: the initial time and the space boundary (e.g. "
            "[1, 2, 3] on a rectangle of (x, t)), none at the final time",
        )
    if "flux" in t.data and neumann is None:
        raise t.fail("flux", "a flux needs the neumann boundary tags it applies on")
    if neumann is not None and equation.dirichlet == "all":
        raise t.fail("neumann", 'the Neumann tags leave no boundary to dirichlet = "all"')
    if problem == "pinn" and equation.boundary == "exact" and equation.dirichlet != "all":
        sides = {1, 2, 3, 4, 5, 6}
        if not all(isinstance(tag, int) and tag in sides for tag in equation.dirichlet):
            raise t.fail(
                "dirichlet",
                '"exact" boundary values need the Dirichlet sides of the box as its side tags '
                "(1 left, 2 right, 3 bottom, 4 top, 5 back, 6 front)",
            )
    if problem == "ritz" and velocity is not None:
        raise t.fail("velocity", "the Ritz loss needs a symmetric form: no advection term")
    t.finish()

    t = root.table("solution")
    inputs = mesh.gdim + len(names)
    what = ", ".join([*("x", "y", "z")[: mesh.gdim], *names])
    solution = SolutionSettings(
        network=_network(t, [inputs, 32, 1], inputs, what),
        activation=t.string("activation", "tanh", tuple(ACTIVATIONS)),
        degree=t.integer("degree", 1, low=1),
        exact=t.formula("exact", None, names),
        reference_degree=t.integer("reference_degree", 4, low=1),
        scale=_scale(t, "auto" if problem == "ritz" else 1.0),
    )
    if time and solution.exact is None:
        raise t.fail("exact", "a space–time case needs its exact solution (no reference in time)")
    if time and solution.scale == "auto":
        raise t.fail(
            "scale", '"auto" solves the equation in space; a space–time case needs a number'
        )
    t.finish()
    return equation, solution, parametric


STEPS = ("log-grid", "armijo")


def _batch(t: _Table) -> int | float | None:
    """``batch``: experiments (or rows) per sampled step, a count (0: full steps) or a
    fraction of them in (0, 1) (resolved against the case's experiments by the loader, against
    the observation rows by the optimizer)."""
    value = t.get("batch", 0)
    if isinstance(value, float) and 0 < value < 1:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise t.fail(
            "batch",
            f"expected a number of experiments or rows (an integer >= 0, 0: full steps) or a "
            f"fraction of them in (0, 1), got {value!r}",
        )
    return value or None


def _optimizer(t: _Table, problem: str, truth: str | None, parametric: bool) -> OptimizerSettings:
    kinds = OPTIMIZERS if problem == "inverse" else ("ngd", "adam", "lbfgs")
    metrics = ("gauss-newton", "l2", "h1") if problem == "inverse" else ("gauss-newton",)
    stops = ("discrepancy", "none", "target") if problem == "inverse" else ("none", "target")
    solver = t.string("solver", "lm", SOLVERS if problem == "inverse" else SOLVERS[:-1])
    batch = _batch(t)
    metric = t.string("metric", "gauss-newton", metrics)
    # measured best (bench/RESULTS.md): SPRING β = 0.9 for sampled steps (bench/experiments.py),
    # natural heavy-ball β = 0.9 in a function-space metric (bench/function_metrics.py)
    default = ("spring", 0.9) if batch else ("none", 0.0)
    if metric in ("l2", "h1") and not batch:
        default = ("natural-heavy-ball", 0.9)
    momentum = t.string("momentum", default[0], MOMENTA)
    beta = default[1] if momentum == default[0] else 0.0
    optimizer = OptimizerSettings(
        kind=t.string("kind", "ngd", kinds),
        metric=metric,
        solver=solver,
        # (least-squares: λ₀ relative to max diag G, shrinking once full steps are taken)
        damping=t.number("damping", 1e-10 if solver == "least-squares" else 1e-3, low=0.0),
        cutoff=t.number("cutoff", 1e-10, low=0.0, high=1.0, low_open=True, high_open=True),
        momentum=momentum,
        beta=t.number("beta", beta, low=0.0, high=1.0, high_open=True),
        step=t.string("step", "armijo" if problem == "inverse" else "log-grid", STEPS),
        iterations=t.integer("iterations", 100, low=0),
        stop=t.string("stop", stops[0], stops),
        target=None if t.get("target", None) is None else t.number("target", low=0.0),
        lr=t.number("lr", 1e-2, low=0.0, low_open=True),
        batch=batch,
        check_every=t.integer("check_every", 0, low=0),
        sampling=t.string("sampling", "experiments", ("experiments", "combinations", "rows")),
    )
    if optimizer.batch is not None and problem != "inverse":
        raise t.fail("batch", "sampled steps need an inverse case with several experiments")
    for key in ("check_every", "sampling"):
        if key in t.data and optimizer.batch is None:
            raise t.fail(key, "only for sampled steps (batch)")
    if optimizer.solver == "gn-cg" and optimizer.metric != "gauss-newton":
        raise t.fail("solver", '"gn-cg" (matrix-free Gauss–Newton) needs metric = "gauss-newton"')
    if optimizer.solver == "least-squares" and (
        problem == "ritz" or optimizer.metric != "gauss-newton"
    ):
        raise t.fail(
            "solver",
            '"least-squares" solves from the residual rows: it needs a residual loss (a PINN, '
            'or metric = "gauss-newton" for an inverse case), not '
            + ("the Ritz loss's energy metric" if problem == "ritz" else f"{optimizer.metric!r}"),
        )
    if optimizer.stop == "target":
        if optimizer.target is None:
            raise t.fail("target", 'stop = "target" needs the relative L2 error to reach')
        if problem == "inverse" and truth is None:
            raise t.fail("stop", '"target" needs parameter.truth to measure the error against')
    t.finish()
    return optimizer
