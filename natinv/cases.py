"""Case files: a TOML description of an inverse problem, parsed into validated, typed settings.

Every value is checked where it is read; an error names its key path, e.g.
``optimizer.beta: expected a number in [0, 1), got 1.2``. Unknown keys are errors too (a typo
must not be silently ignored). ``--set key.path=value`` overrides (TOML values) are applied
before validation. Paths inside a case are relative to the case file.

A case (all tables but ``[mesh]``, ``[model]``, ``[parameter]`` and ``[data]`` optional)::

    name = "diffusion-hole"
    seed = 0

    [mesh]
    file = "../meshes/plate_with_hole.msh"     # gmsh .msh or XDMF, or a built-in rectangle:
    # builtin = "rectangle"; extent = [2.0, 0.5]; cells = [40, 10]   (or "unit-square", cells = 32)
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
    # or a full field: field = "data/u.xdmf" (P1 node data, as DOLFINx writes it), sigma = 1

    [synthesize]                               # `natinv synthesize CASE`
    layout = "random:60"; refine = 1; degree = 3; noise = 0.01

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
    stop = "discrepancy"                       # or "none"
    lr = 1e-2                                  # adam

    [output]
    folder = "results/diffusion-hole"          # relative to the working directory
    checkpoint_every = 10
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natinv.expressions import compile_expression
from natinv.fields import ACTIVATIONS
from natinv.optim.natural import MOMENTA

__all__ = ["Case", "CaseError", "load_case", "parse_override"]


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

    def formula(self, name: str, default: Any = _MISSING) -> str | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(float(value))
        if not isinstance(value, str):
            raise self.fail(name, f"expected a formula of x, y (a string), got {value!r}")
        try:
            compile_expression(value, self.key(name))
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


@dataclass
class SynthesizeSettings:
    layout: str = "random:60"
    refine: int = 1
    degree: int = 3
    noise: float = 0.01


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
    lr: float = 1e-2


@dataclass
class Case:
    """A validated case."""

    name: str
    source: Path
    seed: int
    mesh: MeshSettings
    model: ModelSettings
    parameter: ParameterSettings
    data: DataSettings
    synthesize: SynthesizeSettings
    regularization: tuple[str, float] | None
    optimizer: OptimizerSettings
    output: Path
    checkpoint_every: int


OPTIMIZERS = ("ngd", "adam", "lbfgs", "tao-nls", "tao-lmvm")
MODELS = ("diffusion", "source", "nonlinear-diffusion", "elasticity")
BUILTIN_MESHES = ("unit-square", "rectangle")


def _pair(value: Any) -> bool:
    """Whether ``value`` is a list of two numbers."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


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
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CaseError(f"{source}: no such case file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"{source}: not valid TOML ({exc})") from None
    for text in overrides:
        keys, value = parse_override(text)
        _apply(data, keys, value, source)
    base = path.resolve().parent
    root = _Table(data, "", source)
    name = root.string("name", path.stem)
    seed = root.integer("seed", 0)

    t = root.table("mesh")
    cells = t.get("cells", 32)
    if isinstance(cells, int) and not isinstance(cells, bool):
        cells = [cells, cells]
    if not (
        isinstance(cells, list)
        and len(cells) == 2
        and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in cells)
    ):
        raise t.fail("cells", f"expected a positive integer or [nx, ny], got {cells!r}")
    extent = t.get("extent", [1.0, 1.0])
    if not (
        isinstance(extent, list)
        and len(extent) == 2
        and all(isinstance(e, int | float) and not isinstance(e, bool) and e > 0 for e in extent)
    ):
        raise t.fail("extent", f"expected [length, height] (positive numbers), got {extent!r}")
    mesh = MeshSettings(
        file=t.file("file", base, None),
        builtin=t.get("builtin", None),
        cells=cells,
        extent=[float(e) for e in extent],
    )
    if (mesh.file is None) == (mesh.builtin is None):
        raise t.fail("file", 'give either a mesh file or builtin = "unit-square" or "rectangle"')
    if mesh.builtin is not None:
        t.string("builtin", choices=BUILTIN_MESHES)
    if mesh.file is not None and mesh.file.suffix not in (".msh", ".xdmf"):
        raise t.fail("file", f"expected a gmsh .msh or an .xdmf file, got {mesh.file.name}")
    t.finish()

    t = root.table("model")
    dirichlet = t.get("dirichlet", "all")
    if not (
        dirichlet == "all"
        or (
            isinstance(dirichlet, list) and dirichlet and all(isinstance(i, int) for i in dirichlet)
        )
    ):
        raise t.fail("dirichlet", f'expected "all" or a list of boundary tags, got {dirichlet!r}')
    load = t.get("load", [0.0, 0.0])
    if not _pair(load):
        raise t.fail("load", f"expected [fx, fy] (numbers), got {load!r}")
    traction = None
    if "traction" in t.data:
        tt = t.table("traction")
        value = tt.get("value")
        if not _pair(value):
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
    network = t.get("network", [2, 20, 20, 1])
    if not (
        isinstance(network, list)
        and len(network) >= 2
        and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in network)
        and network[0] == 2
        and network[-1] == 1
    ):
        raise t.fail(
            "network", f"expected layer widths [2, ..., 1] (positive integers), got {network!r}"
        )
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
    data_field = t.file("field", base, None, exists=False)
    if (sensors is None) == (data_field is None):
        raise t.fail("sensors", "give either sensors (a CSV file) or field (an XDMF file)")
    sigma = t.get("sigma", None)
    data_settings = DataSettings(
        sensors=sensors,
        field=data_field,
        sigma=None if sigma is None else t.number("sigma", low=0.0, low_open=True),
    )
    if data_field is not None and data_settings.sigma is None:
        raise t.fail("sigma", "a full field needs its noise level sigma")
    t.finish()

    t = root.table("synthesize", required=False)
    synthesize = SynthesizeSettings(
        layout=t.string("layout", "random:60"),
        refine=t.integer("refine", 1, low=0),
        degree=t.integer("degree", 3, low=1),
        noise=t.number("noise", 0.01, low=0.0),
    )
    t.finish()

    t = root.table("regularization", required=False)
    kind = t.string("kind", "h1", ("l2", "h1"))
    alpha = t.number("alpha", 0.0, low=0.0)
    regularization = (kind, alpha) if alpha > 0 else None
    t.finish()

    t = root.table("optimizer", required=False)
    optimizer = OptimizerSettings(
        kind=t.string("kind", "ngd", OPTIMIZERS),
        metric=t.string("metric", "gauss-newton", ("gauss-newton", "l2", "h1")),
        solver=t.string("solver", "lm", ("cholesky", "lm", "cutoff", "cg")),
        damping=t.number("damping", 1e-3, low=0.0),
        momentum=t.string("momentum", "none", MOMENTA),
        beta=t.number("beta", 0.0, low=0.0, high=1.0, high_open=True),
        step=t.string("step", "log-grid", ("log-grid", "armijo")),
        iterations=t.integer("iterations", 100, low=0),
        stop=t.string("stop", "discrepancy", ("discrepancy", "none")),
        lr=t.number("lr", 1e-2, low=0.0, low_open=True),
    )
    t.finish()

    t = root.table("output", required=False)
    output = Path(t.string("folder", f"results/{name}"))
    checkpoint_every = t.integer("checkpoint_every", 10, low=0)
    t.finish()
    root.finish()
    return Case(
        name=name,
        source=path,
        seed=seed,
        mesh=mesh,
        model=model,
        parameter=parameter,
        data=data_settings,
        synthesize=synthesize,
        regularization=regularization,
        optimizer=optimizer,
        output=output,
        checkpoint_every=checkpoint_every,
    )
