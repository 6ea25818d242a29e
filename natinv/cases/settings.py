"""The typed settings a case file becomes: one dataclass per table, and the names it accepts.

This module imports nothing from natinv's compute layer (torch, DOLFINx, PETSc): reading a case
must load none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Case",
    "DataSettings",
    "EquationSettings",
    "ExperimentSettings",
    "ForwardCase",
    "InverseCase",
    "MeshSettings",
    "ModelSettings",
    "OptimizerSettings",
    "ParameterSettings",
    "ParametricSettings",
    "SolutionSettings",
    "SynthesizeSettings",
    "UncertaintySettings",
    "sample_size",
]


@dataclass
class MeshSettings:
    file: Path | None = None
    builtin: str | None = None
    cells: list[int] = field(default_factory=lambda: [32, 32])
    extent: list[float] = field(default_factory=lambda: [1.0, 1.0])
    origin: list[float] = field(default_factory=lambda: [0.0, 0.0])
    dim: int = 2  # a mesh file's dimension (its cells'; the built-in meshes know theirs)

    @property
    def gdim(self) -> int:
        return {"interval": 1, "box": 3}.get(self.builtin or "", self.dim if self.file else 2)


@dataclass
class ModelSettings:
    kind: str = "diffusion"
    degree: int = 2
    source: str = "1"
    dirichlet: list[int | str] | str = "all"
    load: list[float] = field(default_factory=lambda: [0.0, 0.0])
    traction: tuple[int, list[float]] | None = None
    poisson_ratio: float = 0.3
    coefficient: str = "identity"
    diffusion: float = 1.0  # reaction: λ in λΔu − k u = f
    # transient models (kind = "heat"): u at t = 0, the step, the number of steps, the scheme
    initial: str = "0"
    dt: float = 0.0
    steps: int = 0
    scheme: str = "crank-nicolson"
    memory: float = 1024.0  # MiB per rank for the stored states (beyond: checkpoints)
    # u = boundary_value on the Dirichlet tags (a formula; scalar states)
    boundary_value: str = "0"
    # diffusion: κ∇u·n = flux on boundary tags, each (tags or "all", a formula)
    flux: list[tuple[list[int | str] | str, str]] = field(default_factory=list)
    # diffusion: κ∇u·n + c (u − value) = flux on boundary tags: (tags or "all", c > 0, value)
    robin: tuple[list[int | str] | str, float, str] | None = None
    # the solver of the state, adjoint and tangent systems (STATE_SOLVERS), and for "cg" the
    # relative residual each Krylov solve reaches
    solver: str = "mumps"
    rtol: float = 1e-10

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT


#: The solvers of the state, adjoint and tangent systems a case may name: the sparse direct
#: solvers MUMPS, the default (the fastest measured), and SuperLU_DIST, whose runs on 2 ranks
#: repeat bitwise (:func:`natinv.parallel.direct_solver`), or ``"cg"``, conjugate gradients
#: with algebraic multigrid (:data:`natinv.models.ITERATIVE_OPTIONS`; symmetric positive
#: definite operators: the models of ``CG_MODELS``), for states too large to factorise.
STATE_SOLVERS = ("mumps", "superlu_dist", "cg")
CG_MODELS = ("diffusion", "source", "elasticity", "heat")


@dataclass
class ParameterSettings:
    degree: int = 1
    network: list[int] = field(default_factory=lambda: [2, 20, 20, 1])
    activation: str = "tanh"
    transform: str = "exp"
    truth: str | None = None
    initial: str = "1"
    features: tuple[int, float] | None = (16, 0.5)  # Fourier features (count, scale), or None
    # the network reads (x − lower) / L (L the box's largest side): the mesh's bounding box
    # (None), or the corners (lower, upper) the case names
    box: tuple[list[float], list[float]] | None = None


@dataclass
class DataSettings:
    sensors: Path | None = None
    field: Path | None = None
    sigma: float | None = None
    averages: Path | None = None


def sample_size(batch: int | float, total: int) -> int:
    """``optimizer.batch`` as a count of ``total`` (experiments or rows): a fraction in (0, 1)
    rounded up (at least one), a count as it is."""
    if isinstance(batch, float) and 0.0 < batch < 1.0:
        return max(1, math.ceil(batch * total - 1e-9))
    return int(batch)


@dataclass
class ExperimentSettings:
    """One ``[[experiment]]`` table: what differs from the case's ``[model]`` (the loads: its
    source, fluxes and Dirichlet values; None keeps the model's) and its own data files."""

    name: str
    source: str | None = None
    flux: list[tuple[list[int | str] | str, str]] | None = None
    boundary_value: str | None = None
    load: list[float] | None = None  # elasticity: the body force
    traction: tuple[int, list[float]] | None = None  # elasticity
    sensors: Path | None = None
    averages: Path | None = None
    sigma: float | None = None


@dataclass
class UncertaintySettings:
    prior_precision: float | str = "evidence"  # neural field: δ of θ ~ N(0, δ⁻¹I)
    samples: int = 0  # posterior draws written to samples.bp
    rank: int = 50  # tao-*: eigenpairs of the finite-element field's low-rank approximation
    mass: float | None = None  # tao-*: δ of the prior precision R + δM (None: α)


@dataclass
class SynthesizeSettings:
    layout: str = "random:60"
    refine: int = 1
    degree: int = 3
    # a built-in mesh: the data's mesh has these cells (finer, not nested) before refinement
    cells: list[int] | None = None
    noise: float = 0.01
    regions: str = "probe-*"
    times: int = 10  # transient: read-outs per sensor, equally spaced in (0, T]
    time_refine: int = 4  # transient: the data's step is model.dt / time_refine
    given: bool = False  # whether the case has a [synthesize] table


@dataclass
class EquationSettings:
    """``−∇·(κ∇u) + b·∇u + c u = f``, ``u = g`` on the Dirichlet boundary, ``κ∇u·n = flux`` on
    the Neumann boundary (forward problems)."""

    diffusion: str = "1"
    velocity: list[str] | None = None
    reaction: str = "0"
    source: str = "1"
    dirichlet: list[int | str] | str = "all"
    boundary_value: str = "0"
    neumann: list[int | str] | None = None  # boundary tags with κ∇u·n = flux
    flux: str = "0"
    time: bool = False  # the last coordinate is t: u_t + (the operator in the others) = f
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
    # the unit of the network's output (fields.OutputScale), or "auto": max |u_h| / 100 from a P1
    # solve (the Ritz loss's default; 1 for PINNs: bench/ritz.py part 6)
    scale: float | str = 1.0


@dataclass
class ParametricSettings:
    """The PDE parameters μ ∈ R^q by name: the training samples and the values the surrogate is
    tested at, each a tuple of q values in the order of ``names``."""

    names: tuple[str, ...]
    samples: list[tuple[float, ...]]
    test: list[tuple[float, ...]]

    @property
    def symbols(self) -> list[str]:
        """The names as figures show them (``mu`` as μ)."""
        return ["μ" if n == "mu" else n for n in self.names]

    def label(self, mu: tuple[float, ...]) -> str:
        """``μ = 0.5`` for the one parameter ``mu``, else ``a = 1, b = 0.5``."""
        return ", ".join(f"{n} = {v:g}" for n, v in zip(self.symbols, mu, strict=True))

    def suffix(self, mu: tuple[float, ...]) -> str:
        """A file-name suffix: ``_mu+0.5``, ``_a+1_b+0.5``."""
        return "".join(f"_{n}{v:+g}" for n, v in zip(self.names, mu, strict=True))


@dataclass
class OptimizerSettings:
    kind: str = "ngd"
    metric: str = "gauss-newton"
    solver: str = "lm"
    damping: float = 1e-3
    cutoff: float = 1e-10
    momentum: str = "none"
    beta: float = 0.0
    step: str = "log-grid"
    iterations: int = 100
    stop: str = "discrepancy"
    target: float | None = None
    lr: float = 1e-2
    # sampled steps: experiments per step (None: all of them, the full Gauss–Newton step)
    batch: int | float | None = None  # (a fraction until the loader resolves it)
    check_every: int = 0  # sampled: the full misfit every N steps (0: once per pass, E / batch)
    sampling: str = "experiments"  # sampled: of the experiments, or random combinations


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
    uncertainty: UncertaintySettings | None = None  # a Laplace approximation at the end
    # [[experiment]] tables (empty: one experiment, the model's loads and [data]'s files)
    experiments: list[ExperimentSettings] = field(default_factory=list)

    def each(self) -> list[InverseCase]:
        """One case per experiment: this case with the experiment's loads in ``model`` and its
        files and σ in ``data`` (this case itself when it has no ``[[experiment]]``)."""
        import dataclasses

        if not self.experiments:
            return [self]
        views = []
        for e in self.experiments:
            model = dataclasses.replace(
                self.model,
                source=self.model.source if e.source is None else e.source,
                flux=self.model.flux if e.flux is None else e.flux,
                boundary_value=(
                    self.model.boundary_value if e.boundary_value is None else e.boundary_value
                ),
                load=self.model.load if e.load is None else e.load,
                traction=self.model.traction if e.traction is None else e.traction,
            )
            data = DataSettings(
                sensors=e.sensors,
                averages=e.averages,
                sigma=self.data.sigma if e.sigma is None else e.sigma,
            )
            views.append(
                dataclasses.replace(self, name=e.name, model=model, data=data, experiments=[])
            )
        return views


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
SOLVERS = ("cholesky", "lm", "cutoff", "cg", "least-squares", "gn-cg")  # gn-cg: inverse only
OPTIMIZERS = ("ngd", "adam", "lbfgs", "tao-nls", "tao-lmvm")
MODELS = ("diffusion", "source", "nonlinear-diffusion", "elasticity", "heat", "reaction")
TRANSIENT = ("heat",)
TIME_SCHEMES = ("euler", "crank-nicolson")
#: mesh files: gmsh, DOLFINx's XDMF (or another tool's, read by meshio) and meshio's formats
MESH_SUFFIXES = (".msh", ".xdmf", ".xmf", ".vtu", ".vtk", ".inp", ".med", ".mesh", ".meshb", ".su2")
BUILTIN_MESHES = ("unit-square", "rectangle", "box", "interval")
PROBLEMS = ("inverse", "pinn", "ritz")
