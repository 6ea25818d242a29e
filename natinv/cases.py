"""Case files: a TOML description of an inverse problem, parsed into validated, typed settings.

Every value is checked where it is read; an error names its key path, e.g.
``optimizer.beta: expected a number in [0, 1), got 1.2``. Unknown keys are errors too (a typo
must not be silently ignored). ``--set key.path=value`` overrides (TOML values) are applied
before validation. Paths inside a case are relative to the case file.

An inverse case (``problem = "inverse"``, the default; all tables but ``[mesh]``, ``[model]``,
``[parameter]`` and ``[data]`` optional)::

    name = "diffusion-hole"
    seed = 0

    [mesh]
    file = "../meshes/plate_with_hole.msh"     # gmsh .msh or XDMF, or a built-in box:
    # builtin = "rectangle"; extent = [2.0, 0.5]; cells = [40, 10]; origin = [0.0, 0.0]
    # (or "unit-square", cells = 32; or "interval", cells = 400, extent = 1.0: forward only)
    # built-in boundary tags: 1 left, 2 right, 3 bottom, 4 top

    [model]
    kind = "diffusion"               # diffusion | source | nonlinear-diffusion | elasticity
    degree = 2                                 # Lagrange degree of the state
    source = "1"                               # a formula of x, y (κ for kind = "source")
    dirichlet = [1]                            # boundary tags with u = 0 ("all": every facet)
    # coefficient = "exp": κ = exp(m), the parameter is log κ (diffusion)
    # elasticity (the parameter is Young's modulus): load = [0.0, -1.0] (body force),
    # traction = { boundary = 2, value = [0.0, -0.1] }, poisson_ratio = 0.3

    [parameter]
    degree = 1
    network = [2, 20, 20, 1]
    activation = "tanh"
    transform = "exp"
    truth = "exp(0.5*sin(2*pi*x)*cos(pi*y))"   # optional: errors against it, synthesize
    initial = "1"                              # the start of a finite-element field (tao-*)

    [data]
    sensors = "data/diffusion_hole.csv"
    sigma = 0.001                              # when the file has no sigma column
    # and/or averages = "data/probes.csv": means over the mesh's named physical groups
    # or a full field: field = "data/u.xdmf" (P1 node data, as DOLFINx writes it), sigma = 1

    [synthesize]                               # `natinv synthesize CASE`
    layout = "random:60"; refine = 1; degree = 3; noise = 0.01
    regions = "probe-*"                        # the physical groups averaged (a pattern)

    [regularization]
    kind = "h1"; alpha = 0.0

    [optimizer]
    kind = "ngd"                               # ngd | adam | lbfgs | tao-nls | tao-lmvm
    # (tao-*: the classical baseline, the parameter as a finite-element field, no network)
    metric = "gauss-newton"                    # gauss-newton | l2 | h1
    solver = "lm"; damping = 1e-3
    momentum = "natural-nesterov"; beta = 0.5
    step = "log-grid"
    iterations = 100
    stop = "discrepancy"                       # or "none", or "target" (with target = 1e-2:
                                               # the relative L2 error against the truth)
    lr = 1e-2                                  # adam

    [output]
    folder = "results/diffusion-hole"          # relative to the working directory
    checkpoint_every = 10

A forward case (``problem = "pinn"`` or ``"ritz"``: the network is the PDE's solution) has
``[equation]`` and ``[solution]`` (and ``[parametric]``) instead of ``[model]``, ``[parameter]``,
``[data]``, ``[synthesize]`` and ``[regularization]``::

    problem = "pinn"                           # residual loss (ENGD); "ritz": energy loss

    [equation]                                 # −∇·(κ∇u) + b·∇u + c u = f, u = g on the boundary
    diffusion = "0.1"                          # κ; formulas may name mu in a parametric case
    velocity = ["1"]                           # b, one formula per coordinate (not for ritz)
    reaction = "0"                             # c
    source = "1"                               # f
    dirichlet = "all"                          # or boundary tags (ritz: natural elsewhere)
    boundary_value = "0"                       # g, a formula of x, y
    boundary = "exact"                         # exact | penalty (pinn: exact on built-in boxes)
    penalty = 1.0; quadrature = 2; boundary_quadrature = 2

    [parametric]                               # one PDE parameter μ (pinn)
    samples = [-2.0, 0.0, 2.0]; test = [-1.0, 1.0]

    [solution]
    network = [1, 20, 20, 1]                   # inputs: the coordinates (and μ)
    activation = "tanh"; degree = 1            # the Lagrange space of outputs (and of Ritz)
    exact = "x - (exp(x/0.1) - 1)/(exp(1/0.1) - 1)"   # optional: else a P4 reference
    reference_degree = 4

    [optimizer]                                # ngd | adam | lbfgs; the loss's own metric
    stop = "target"; target = 1e-5             # or "none"
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natinv.expressions import compile_expression

__all__ = [
    "Case",
    "CaseError",
    "ForwardCase",
    "InverseCase",
    "load_case",
    "load_case_on",
    "parse_override",
]


class CaseError(ValueError):
    """A problem in a case file, with its key path."""


_MISSING = object()


class _Table:
    """Reads one TOML table, remembering which keys were used and naming paths in errors."""

    def __init__(self, data: Mapping[str, Any], path: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise CaseError(f"{source}: {path}: expected a table, got {type(data).__name__}")
        self.data, self.path, self.source = data, path, source
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, message: str) -> CaseError:
        return CaseError(f"{self.source}: {self.key(name)}: {message}")

    def get(self, name: str, default: Any = _MISSING) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.fail(name, "missing (required)")
            return default
        return self.data[name]

    def table(self, name: str, required: bool = True) -> _Table:
        value = self.get(name, _MISSING if required else {})
        return _Table(value, self.key(name), self.source)

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        value = self.get(name, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (
                value < high if high_open else value <= high
            )
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise self.fail(
                name, f"expected a number in {left}{low:g}, {high:g}{right}, got {value!r}"
            )
        return float(value)

    def integer(self, name: str, default: Any = _MISSING, low: int = 0) -> int:
        value = self.get(name, default)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise self.fail(name, f"expected an integer >= {low}, got {value!r}")
        return int(value)

    def string(self, name: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> str:
        value = self.get(name, default)
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(name, f"expected one of {list(choices)}, got {value!r}")
        return value

    def formula(
        self, name: str, default: Any = _MISSING, parameters: tuple[str, ...] = ()
    ) -> str | None:
        value = self.get(name, default)
        if value is None:
            return None
        return self.check_formula(name, value, parameters)

    def check_formula(self, name: str, value: Any, parameters: tuple[str, ...] = ()) -> str:
        """``value`` as the text of a valid formula (numbers become formulas)."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(float(value))
        if not isinstance(value, str):
            raise self.fail(name, f"expected a formula of x, y (a string), got {value!r}")
        try:
            compile_expression(value, self.key(name), parameters)
        except ValueError as exc:
            raise CaseError(f"{self.source}: {exc}") from None
        return value

    def file(
        self, name: str, base: Path, default: Any = _MISSING, exists: bool = True
    ) -> Path | None:
        value = self.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(name, f"expected a file path (a string), got {value!r}")
        path = (base / value).resolve()
        if exists and not path.is_file():
            raise self.fail(name, f"no such file: {path}")
        return path

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise CaseError(
                f"{self.source}: {self.key(unknown[0])}: unknown key"
                + (f" (also {unknown[1:]})" if len(unknown) > 1 else "")
            )


@dataclass
class MeshSettings:
    file: Path | None = None
    builtin: str | None = None
    cells: list[int] = field(default_factory=lambda: [32, 32])
    extent: list[float] = field(default_factory=lambda: [1.0, 1.0])
    origin: list[float] = field(default_factory=lambda: [0.0, 0.0])

    @property
    def gdim(self) -> int:
        return 1 if self.builtin == "interval" else 2


@dataclass
class ModelSettings:
    kind: str = "diffusion"
    degree: int = 2
    source: str = "1"
    dirichlet: list[int] | str = "all"
    load: list[float] = field(default_factory=lambda: [0.0, 0.0])
    traction: tuple[int, list[float]] | None = None
    poisson_ratio: float = 0.3
    coefficient: str = "identity"


@dataclass
class ParameterSettings:
    degree: int = 1
    network: list[int] = field(default_factory=lambda: [2, 20, 20, 1])
    activation: str = "tanh"
    transform: str = "exp"
    truth: str | None = None
    initial: str = "1"


@dataclass
class DataSettings:
    sensors: Path | None = None
    field: Path | None = None
    sigma: float | None = None
    averages: Path | None = None


@dataclass
class SynthesizeSettings:
    layout: str = "random:60"
    refine: int = 1
    degree: int = 3
    noise: float = 0.01
    regions: str = "probe-*"
    given: bool = False  # whether the case has a [synthesize] table


@dataclass
class EquationSettings:
    """``−∇·(κ∇u) + b·∇u + c u = f``, ``u = g`` on the Dirichlet boundary (forward problems)."""

    diffusion: str = "1"
    velocity: list[str] | None = None
    reaction: str = "0"
    source: str = "1"
    dirichlet: list[int] | str = "all"
    boundary_value: str = "0"
    boundary: str = "exact"
    penalty: float = 1.0
    quadrature: int = 2
    boundary_quadrature: int = 2


@dataclass
class SolutionSettings:
    """The neural solution of a forward problem and what it is checked against."""

    network: list[int] = field(default_factory=lambda: [2, 32, 1])
    activation: str = "tanh"
    degree: int = 1
    exact: str | None = None
    reference_degree: int = 4


@dataclass
class ParametricSettings:
    """One PDE parameter μ: the training samples and the values the surrogate is tested at."""

    samples: list[float]
    test: list[float]


@dataclass
class OptimizerSettings:
    kind: str = "ngd"
    metric: str = "gauss-newton"
    solver: str = "lm"
    damping: float = 1e-3
    momentum: str = "none"
    beta: float = 0.0
    step: str = "log-grid"
    iterations: int = 100
    stop: str = "discrepancy"
    target: float | None = None
    lr: float = 1e-2


@dataclass
class Case:
    """What every validated case has; an :class:`InverseCase` or a :class:`ForwardCase`."""

    name: str
    source: Path
    seed: int
    mesh: MeshSettings
    optimizer: OptimizerSettings
    output: Path
    checkpoint_every: int
    problem: str

    @property
    def forward(self) -> bool:
        """A forward problem: the neural network is the PDE's solution (PINN or Ritz loss)."""
        return self.problem != "inverse"


@dataclass
class InverseCase(Case):
    """An inverse case (``problem = "inverse"``): a model, data and the unknown field."""

    model: ModelSettings
    parameter: ParameterSettings
    data: DataSettings
    synthesize: SynthesizeSettings
    regularization: tuple[str, float] | None = None


@dataclass
class ForwardCase(Case):
    """A forward case (``problem = "pinn"`` or ``"ritz"``): the network is the solution."""

    equation: EquationSettings
    solution: SolutionSettings
    parametric: ParametricSettings | None = None


# the names the compute layer defines (natinv.fields.ACTIVATIONS, natinv.optim.natural.MOMENTA),
# repeated so that reading a case loads neither torch nor DOLFINx (a test keeps them equal)
ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "silu", "sin")
MOMENTA = (
    "none",
    "heavy-ball",
    "nesterov",
    "natural-heavy-ball",
    "natural-heavy-ball-diff",
    "natural-nesterov",
    "spring",
)
OPTIMIZERS = ("ngd", "adam", "lbfgs", "tao-nls", "tao-lmvm")
MODELS = ("diffusion", "source", "nonlinear-diffusion", "elasticity")
BUILTIN_MESHES = ("unit-square", "rectangle", "interval")
PROBLEMS = ("inverse", "pinn", "ritz")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.beta=0.3"`` → (["optimizer", "beta"], 0.3); the value is read as TOML
    (a bare word is a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise CaseError(f"--set {text!r}: expected key.path=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def _apply(data: dict[str, Any], keys: list[str], value: Any, source: str) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise CaseError(
                f"{source}: --set {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a table"
            )
        node = child
    node[keys[-1]] = value


def load_case(path: str | Path, overrides: list[str] = ()) -> Case:  # type: ignore[assignment]
    """Read, override and validate a case file.

    Raises:
        CaseError: a missing or malformed file, or any invalid value (with its key path).
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise CaseError(f"{source}: a folder, not a case file (a .toml file)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaseError(f"{source}: no such case file") from None
    except UnicodeDecodeError:
        raise CaseError(f"{source}: not a text file (a case is a TOML text file)") from None
    except OSError as exc:
        raise CaseError(f"{source}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"{source}: not valid TOML ({exc})") from None
    if not data:
        raise CaseError(f"{source}: an empty case file (it needs at least a [mesh] table)")
    for text in overrides:
        keys, value = parse_override(text)
        _apply(data, keys, value, source)
    base = path.resolve().parent
    root = _Table(data, "", source)
    name = root.string("name", path.stem)
    seed = root.integer("seed", 0)
    problem = root.string("problem", "inverse", PROBLEMS)
    mesh = _mesh(root.table("mesh"), base)
    if problem == "inverse" and mesh.gdim != 2:
        raise root.fail("mesh.builtin", "an inverse problem needs a 2D mesh")
    inverse = _inverse(root, base, problem == "inverse")
    forward = _forward(root, mesh, problem)
    if not inverse:
        for table in ("synthesize", "regularization"):
            if table in root.data:
                raise root.fail(table, f"only for inverse problems (this case is {problem!r})")
    t = root.table("synthesize", required=False)
    synthesize = SynthesizeSettings(
        layout=t.string("layout", "random:60"),
        refine=t.integer("refine", 1, low=0),
        degree=t.integer("degree", 3, low=1),
        noise=t.number("noise", 0.01, low=0.0),
        regions=t.string("regions", "probe-*"),
        given="synthesize" in root.data,
    )
    t.finish()

    t = root.table("regularization", required=False)
    kind = t.string("kind", "h1", ("l2", "h1"))
    alpha = t.number("alpha", 0.0, low=0.0)
    regularization = (kind, alpha) if alpha > 0 else None
    t.finish()

    truth = inverse[1].truth if inverse else forward[1].exact if forward else None
    parametric = forward[2] is not None if forward else False
    optimizer = _optimizer(root.table("optimizer", required=False), problem, truth, parametric)

    t = root.table("output", required=False)
    output = Path(t.string("folder", f"results/{name}"))
    checkpoint_every = t.integer("checkpoint_every", 10, low=0)
    t.finish()
    root.finish()
    common = {
        "name": name,
        "source": path,
        "seed": seed,
        "mesh": mesh,
        "optimizer": optimizer,
        "output": output,
        "checkpoint_every": checkpoint_every,
        "problem": problem,
    }
    if inverse:
        model, parameter, data_settings = inverse
        return InverseCase(
            **common,
            model=model,
            parameter=parameter,
            data=data_settings,
            synthesize=synthesize,
            regularization=regularization,
        )
    assert forward is not None
    equation, solution, parametric_settings = forward
    return ForwardCase(
        **common, equation=equation, solution=solution, parametric=parametric_settings
    )


def load_case_on(comm: Any, path: str | Path, overrides: list[str] = ()) -> Case:  # type: ignore[assignment]
    """:func:`load_case` on every rank of ``comm``, which must agree: a file that one rank
    cannot see or read (a folder not shared by all nodes, a file rewritten meanwhile) is one
    error on every rank instead of one rank stopping while the others go on into the run.
    Collective.

    Raises:
        CaseError: the first failing rank's message, on every rank.
    """
    case, error = None, None
    try:
        case = load_case(path, overrides)
    except CaseError as exc:
        error = str(exc)
    errors = comm.allgather(error) if comm.size > 1 else [error]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise CaseError(first)
    assert case is not None
    return case


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
    dim = 1 if builtin == "interval" else 2
    cells = t.get("cells", 32)
    if isinstance(cells, int) and not isinstance(cells, bool):
        cells = [cells] * dim
    if not (
        isinstance(cells, list)
        and len(cells) == dim
        and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in cells)
    ):
        expected = "a positive integer" + (" or [nx, ny]" if dim == 2 else "")
        raise t.fail("cells", f"expected {expected}, got {cells!r}")
    extent = t.get("extent", [1.0] * dim)
    if isinstance(extent, int | float) and not isinstance(extent, bool) and dim == 1:
        extent = [extent]
    if not _numbers(extent, dim, positive=True):
        shape = "a length" if dim == 1 else "[length, height]"
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
    )
    if (mesh.file is None) == (mesh.builtin is None):
        raise t.fail(
            "file", 'give either a mesh file or builtin = "unit-square", "rectangle" or "interval"'
        )
    if mesh.file is not None and mesh.file.suffix not in (".msh", ".xdmf"):
        raise t.fail("file", f"expected a gmsh .msh or an .xdmf file, got {mesh.file.name}")
    t.finish()
    return mesh


def _dirichlet_tags(t: _Table, name: str) -> list[int] | str:
    tags = t.get(name, "all")
    if not (
        tags == "all"
        or (
            isinstance(tags, list)
            and tags
            and all(isinstance(i, int) and not isinstance(i, bool) for i in tags)
        )
    ):
        raise t.fail(name, f'expected "all" or a list of boundary tags, got {tags!r}')
    return tags


def _network(t: _Table, default: list[int], inputs: int, what: str) -> list[int]:
    network = t.get("network", default)
    if not (
        isinstance(network, list)
        and len(network) >= 2
        and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in network)
        and network[0] == inputs
        and network[-1] == 1
    ):
        raise t.fail(
            "network",
            f"expected layer widths [{inputs}, ..., 1] (positive integers; {inputs} inputs: "
            f"{what}), got {network!r}",
        )
    return network


def _inverse(
    root: _Table, base: Path, wanted: bool
) -> tuple[ModelSettings, ParameterSettings, DataSettings] | None:
    """The ``[model]``, ``[parameter]`` and ``[data]`` tables of an inverse problem."""
    if not wanted:
        for table in ("model", "parameter", "data"):
            if table in root.data:
                raise root.fail(
                    table, "only for inverse problems (a forward case has [equation], [solution])"
                )
        return None
    t = root.table("model")
    dirichlet = _dirichlet_tags(t, "dirichlet")
    load = t.get("load", [0.0, 0.0])
    if not _numbers(load, 2):
        raise t.fail("load", f"expected [fx, fy] (numbers), got {load!r}")
    traction = None
    if "traction" in t.data:
        tt = t.table("traction")
        value = tt.get("value")
        if not _numbers(value, 2):
            raise tt.fail("value", f"expected [tx, ty] (numbers), got {value!r}")
        traction = (tt.integer("boundary", low=0), [float(v) for v in value])
        tt.finish()
    model = ModelSettings(
        kind=t.string("kind", "diffusion", MODELS),
        degree=t.integer("degree", 2, low=1),
        source=t.formula("source", "1") or "1",
        dirichlet=dirichlet,
        load=[float(v) for v in load],
        traction=traction,
        coefficient=t.string("coefficient", "identity", ("identity", "exp")),
        poisson_ratio=t.number(
            "poisson_ratio", 0.3, low=-1.0, high=0.5, low_open=True, high_open=True
        ),
    )
    t.finish()

    t = root.table("parameter")
    network = _network(t, [2, 20, 20, 1], 2, "x, y")
    parameter = ParameterSettings(
        degree=t.integer("degree", 1, low=1),
        network=network,
        activation=t.string("activation", "tanh", tuple(ACTIVATIONS)),
        transform=t.string("transform", "exp", ("identity", "exp", "softplus")),
        truth=t.formula("truth", None),
        initial=t.formula("initial", "1") or "1",
    )
    t.finish()

    t = root.table("data")
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
    return model, parameter, data_settings


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
        samples = t.get("samples")
        if not _numbers(samples):
            raise t.fail("samples", f"expected a list of values of μ (numbers), got {samples!r}")
        test = t.get("test", samples)
        if not _numbers(test):
            raise t.fail("test", f"expected a list of values of μ (numbers), got {test!r}")
        t.finish()
        if problem == "ritz":
            raise t.fail("samples", 'a parametric surrogate needs problem = "pinn"')
        parametric = ParametricSettings([float(v) for v in samples], [float(v) for v in test])
    names = ("mu",) if parametric else ()

    t = root.table("equation")
    velocity = t.get("velocity", None)
    if velocity is not None:
        if not (isinstance(velocity, list) and len(velocity) == mesh.gdim):
            raise t.fail(
                "velocity", f"expected {mesh.gdim} formula(s), one per coordinate, got {velocity!r}"
            )
        velocity = [t.check_formula("velocity", v, names) for v in velocity]
    # exact: Ritz at the dofs (any mesh), PINN through a multiplier (built-in boxes only)
    default_boundary = "exact" if problem == "ritz" or mesh.builtin is not None else "penalty"
    equation = EquationSettings(
        diffusion=t.formula("diffusion", "1", names) or "1",
        velocity=velocity,
        reaction=t.formula("reaction", "0", names) or "0",
        source=t.formula("source", "1", names) or "1",
        dirichlet=_dirichlet_tags(t, "dirichlet"),
        boundary_value=t.formula("boundary_value", "0", names) or "0",
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
    if problem == "pinn" and equation.dirichlet != "all":
        raise t.fail("dirichlet", 'a PINN case imposes u = g on every boundary facet: use "all"')
    if problem == "ritz" and velocity is not None:
        raise t.fail("velocity", "the Ritz loss needs a symmetric form: no advection term")
    t.finish()

    t = root.table("solution")
    inputs = mesh.gdim + (1 if parametric else 0)
    what = ", ".join(("x", "y")[: mesh.gdim]) + (", μ" if parametric else "")
    solution = SolutionSettings(
        network=_network(t, [inputs, 32, 1], inputs, what),
        activation=t.string("activation", "tanh", tuple(ACTIVATIONS)),
        degree=t.integer("degree", 1, low=1),
        exact=t.formula("exact", None, names),
        reference_degree=t.integer("reference_degree", 4, low=1),
    )
    t.finish()
    return equation, solution, parametric


def _optimizer(t: _Table, problem: str, truth: str | None, parametric: bool) -> OptimizerSettings:
    kinds = OPTIMIZERS if problem == "inverse" else ("ngd", "adam", "lbfgs")
    metrics = ("gauss-newton", "l2", "h1") if problem == "inverse" else ("gauss-newton",)
    stops = ("discrepancy", "none", "target") if problem == "inverse" else ("none", "target")
    optimizer = OptimizerSettings(
        kind=t.string("kind", "ngd", kinds),
        metric=t.string("metric", "gauss-newton", metrics),
        solver=t.string("solver", "lm", ("cholesky", "lm", "cutoff", "cg")),
        damping=t.number("damping", 1e-3, low=0.0),
        momentum=t.string("momentum", "none", MOMENTA),
        beta=t.number("beta", 0.0, low=0.0, high=1.0, high_open=True),
        step=t.string("step", "log-grid", ("log-grid", "armijo")),
        iterations=t.integer("iterations", 100, low=0),
        stop=t.string("stop", stops[0], stops),
        target=None if t.get("target", None) is None else t.number("target", low=0.0),
        lr=t.number("lr", 1e-2, low=0.0, low_open=True),
    )
    if optimizer.stop == "target":
        if optimizer.target is None:
            raise t.fail("target", 'stop = "target" needs the relative L2 error to reach')
        if problem == "inverse" and truth is None:
            raise t.fail("stop", '"target" needs parameter.truth to measure the error against')
    t.finish()
    return optimizer
