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
    # dim = 3                                  # a 3D mesh file (the default is 2)
    # builtin = "rectangle"; extent = [2.0, 0.5]; cells = [40, 10]; origin = [0.0, 0.0]
    # (or "unit-square", cells = 32; "box", cells = [8, 8, 8], extent = [1.0, 1.0, 1.0];
    # or "interval", cells = 400, extent = 1.0)
    # built-in boundary tags: 1 left, 2 right (x), 3 bottom, 4 top (y), 5 back, 6 front (z)

    [model]
    kind = "diffusion"          # diffusion | source | nonlinear-diffusion | elasticity | heat
    degree = 2                                 # Lagrange degree of the state
    source = "1"                               # a formula of x, y (κ for kind = "source")
    dirichlet = [1]                            # boundary tags with u = 0 ("all": every facet),
                                               # numbers or group names (["outer"]); [] none
    # boundary_value = "0"                     # u on the Dirichlet tags (a formula)
    # diffusion: fluxes and a Robin term on boundary tags (numbers, names or "all"):
    # flux = { boundary = [2], value = "1 + y" }     (κ∇u·n = value; a list of such tables
    #                                                 for several parts of the boundary)
    # robin = { boundary = "all", coefficient = 1e-3, value = "0" }   (κ∇u·n + c (u − value)
    #                                                 = flux: with dirichlet = [] the Robin
    #                                                 term makes the state unique)
    # coefficient = "exp": κ = exp(m), the parameter is log κ (diffusion)
    # elasticity (the parameter is Young's modulus): load = [0.0, -1.0] (body force),
    # traction = { boundary = 2, value = [0.0, -0.1] }, poisson_ratio = 0.3
    # heat (∂u/∂t − ∇·(κ∇u) = source, data with a t column): dt = 0.01, steps = 20 (both
    # required), scheme = "crank-nicolson" (or "euler"), initial = "0" (u at t = 0, a
    # formula), memory = 1024 (MiB per rank for the stored states; beyond it checkpoints);
    # its source may name t: source = "50*exp(-((x - 0.2 - 3*t)**2 + (y - 0.5)**2)/0.02)"
    # (a moving hot spot; evaluated in the forms at each step's times, no %)
    # solver = "mumps"                         # the state's solver: "mumps" (a factorisation,
                                               # the fastest), "superlu_dist" (runs on 2 ranks
                                               # repeat bitwise; MUMPS's differ in the last
                                               # bits) or "cg" (conjugate gradients with
                                               # algebraic multigrid: no factorisation, for
                                               # states too large for one; diffusion, source,
                                               # elasticity, heat); with "cg", rtol = 1e-10:
                                               # the relative residual of every Krylov solve

    [parameter]
    degree = 1
    network = [2, 20, 20, 1]
    activation = "tanh"
    transform = "exp"
    features = { count = 16, scale = 0.5 }     # the default; "none": the coordinates only
    truth = "exp(0.5*sin(2*pi*x)*cos(pi*y))"   # optional: errors against it, synthesize
    initial = "1"                              # the start of a finite-element field (tao-*)

    [data]
    sensors = "data/diffusion_hole.csv"
    sigma = 0.001                              # when the file has no sigma column
    # and/or averages = "data/probes.csv": means over the mesh's named physical groups
    # or a full field: field = "data/u.xdmf" (P1 node data, as DOLFINx writes it), sigma = 1

    [[experiment]]                             # several experiments (diffusion): each a
    name = "cos1"                              # load case of the same model and unknown,
    flux = { boundary = "all", value = "cos(theta)" }  # its source, flux or boundary_value
    sensors = "data/eit/cos1.csv"              # replacing the model's, its own data files
    # averages = "...", sigma = 0.01; [data] then holds only a default sigma. Elasticity:
    # each experiment's load = [fx, fy] and traction = { boundary = 2, value = [tx, ty] }.
    # Experiments share one factorisation of the operator per parameter, and those with the
    # same sensors share the transposed solves of the Gauss–Newton rows (cases/eit_disk.toml).

    [synthesize]                               # `natinv synthesize CASE`
    layout = "random:60"; refine = 1; degree = 3; noise = 0.01   # layout: or grid:NxM, or
                                               # a sensor CSV file's points (every experiment)
    # cells = [62, 62, 62]                     # a built-in mesh: the data's mesh has these
                                               # cells (finer, not nested; then refine times)
    regions = "probe-*"                        # the physical groups averaged (a pattern)
    # heat: times = 10 (read-outs per sensor in (0, T]), time_refine = 4 (steps of dt / 4)

    [regularization]
    kind = "h1"; alpha = 0.0

    [optimizer]                                # every value below is the default
    kind = "ngd"                               # ngd | adam | lbfgs | tao-nls | tao-lmvm
    # (tao-*: the classical baseline, the parameter as a finite-element field, no network)
    metric = "gauss-newton"                    # gauss-newton | l2 | h1 (these two: momentum
                                               # "natural-heavy-ball", beta = 0.9 by default)
    solver = "lm"; damping = 1e-3              # or cholesky | cutoff | cg | least-squares
                                               # | gn-cg (least-squares: damping = 1e-10)
    cutoff = 1e-10                             # cutoff: of G's eigenvalues, least-squares:
                                               # of J's singular values (relative)
    momentum = "none"; beta = 0.0
    step = "armijo"                            # (forward cases: "log-grid")
    iterations = 100
    stop = "discrepancy"                       # or "none", or "target" (with target = 1e-2:
                                               # the relative L2 error against the truth)
    lr = 1e-2                                  # adam
    # batch = 4                                # sampled natural Gauss–Newton steps on 4 of
                                               # the experiments (or 0.5: half of them;
                                               # momentum "spring", β = 0.9 unless set;
                                               # "none", "heavy-ball"); 0: all
    # check_every = 4                          # the whole misfit (the discrepancy stop) every
                                               # N sampled steps (default E / batch: a pass)
    # sampling = "experiments"                 # or "combinations": batch random combinations
                                               # Σ ±(experiment k)/σ_k of all of them; or
                                               # "rows": batch of the observation rows (of
                                               # all experiments; 0.1: a tenth of them)

    [uncertainty]                              # optional: a Laplace approximation at the end
    prior_precision = "evidence"               # neural field: δ of θ ~ N(0, δ⁻¹I), a number,
                                               # "evidence" (MacKay's maximiser) or "damping"
                                               # (1e-3·max diag G, the last step's damping)
    samples = 0                                # posterior draws written to samples.bp
    rank = 50                                  # tao-*: eigenpairs of the low-rank update
    mass = 1.0                                 # tao-*: the prior precision R + δM, δ = mass
                                               # (default: the Tikhonov weight α)
    # writes std.bp (mean, σ, truth), uncertainty.png, and in summary.json the prior used and
    # the fraction of dofs with |m − m_true| ≤ 2σ (see natinv.uncertainty)

    [output]
    folder = "results/diffusion-hole"          # relative to the working directory
    checkpoint_every = 10                      # and at the end; 0: no checkpoints

Why the defaults are what they are (``bench/inverse_suite.py``, ``bench/inverse_prior.py``,
numbers in ``bench/RESULTS.md``):

- ``features``: 16 random Fourier features of scale 0.5 beside the coordinates. On the suite's
  five 2D problems they cut the iterations to the noise level 2–9× (79 → 9 on the L-shape with
  a bump and a jump); the error was lower on two (0.090 → 0.049 on the plate, 0.199 → 0.159 on
  the beam) and within 10 % on the other three; scale 2 overfits on every problem, scale 1 is
  best on one and 2.6× off the best on another.
- ``solver = "lm"``, ``damping = 1e-3``: Levenberg–Marquardt with λ₀ = 10⁻³ · max diag(G)
  (Madsen, Nielsen & Tingleff's τ): an absolute λ has no scale on a noise-whitened Gram, and
  with λ = 10⁻³ the first steps backtracked a dozen times each. With fewer observations than
  parameters (diagonal noise, no Tikhonov term) the same direction is solved in sample space,
  an n × n kernel instead of the P × P Gram. ``gn-cg`` (matrix-free Gauss–Newton, CG with
  Eisenstat–Walker forcing) pays off when the observations and the parameters are both many
  (a full field): on ``hippylib_poisson`` 60 iterations took 52 s against 156 s, and the
  baseline's error was reached in 5.5 s against 37 s. ``least-squares`` (QR and SVD of the
  rows, ``G`` never formed) is what a PINN needs for its last digits (ENGD's penalised Poisson
  problem: 1e-7 in 14–21 s where Cholesky stalls near 1e-6), but from its small starting
  damping it can stall at the start where ``lm`` does not (a two-parameter penalised
  surrogate), so it is chosen per case (``poisson_pinn_2d``), not by default.
- ``step = "armijo"``: backtracking from the full Gauss–Newton step costs one forward solve when
  the step is taken; the ENGD log-grid line search tries some 30 step sizes per iteration
  (plate: 495 state solves, 9.2 s, against 34 and 1.0 s, the same error).
- ``momentum = "none"``: no momentum variant needed fewer PDE solves to the noise level on
  the suite (the noise level is reached in a few Gauss–Newton steps; a momentum step the loss
  rejects costs a second line search). Natural momentum pays on the forward (PINN) cases, and
  in a function-space metric: with ``metric = "l2"`` or ``"h1"`` the default is
  ``natural-heavy-ball`` with β = 0.9, λ is fixed at ``damping``·max diag G and Armijo starts
  from twice the last step (``bench/function_metrics.py``: on the plate in L2 10 iterations
  and 50 state solves to the noise level against 28 and 94 without momentum; in H1 73
  iterations, where no momentum had not reached it after 100; before this step rule the
  iterates with and without momentum agreed to three digits and neither reached the level).

- ``batch``: not by default (``bench/experiments.py --part case``, ``bench/RESULTS.md``): full
  steps reach the noise level first or as soon as any sampled mode on ``eit_disk`` (16
  current patterns) and ``heat_sources`` (8 local heat spots). Sampled runs end more accurate
  on the impedance problem (0.24–0.25 against 0.28), where SPRING also needs 0.38 of the
  solves of no momentum; on the heat spots random combinations (``sampling =
  "combinations"``) are the best sampled mode. ``batch = 0.5`` is half the experiments.
  ``sampling = "rows"`` draws ``batch`` of the observation rows of all experiments instead
  (``batch = 0.25``: a quarter); on ``heat_box_3d`` (1,000 sensors) and ``eit_disk`` a
  quarter of the rows per step takes 1.4× and 1.5× the full run's time (SPRING needing 0.43 and
  0.29 of the state solves of no momentum), so rows are not sampled by default either.

A forward case (``problem = "pinn"`` or ``"ritz"``: the network is the PDE's solution) has
``[equation]`` and ``[solution]`` (and ``[parametric]``) instead of ``[model]``, ``[parameter]``,
``[data]``, ``[synthesize]`` and ``[regularization]``::

    problem = "pinn"                           # residual loss (ENGD); "ritz": energy loss

    [equation]                                 # −∇·(κ∇u) + b·∇u + c u = f, u = g on the boundary
    diffusion = "0.1"                          # κ; formulas may name the parameters μ
    velocity = ["1"]                           # b, one formula per coordinate (not for ritz)
    reaction = "0"                             # c
    source = "1"                               # f
    dirichlet = "all"                          # or boundary tags (ritz: natural elsewhere)
    boundary_value = "0"                       # g, a formula of x, y (and μ)
    # neumann = [3, 4]; flux = "2*y"           # κ∇u·n = flux on those tags (pinn: rows with
                                               # the outward normals; dirichlet + neumann
                                               # must cover the boundary)
    # time = true                              # the last coordinate is t (pinn, space–time
                                               # mesh): u_t + the operator in the others;
                                               # dirichlet names the sides (none at final t)
    boundary = "exact"                         # exact | penalty (pinn: exact on built-in
                                               # boxes, on the dirichlet sides)
    penalty = 1.0; quadrature = 2; boundary_quadrature = 2

    [parametric]                               # PDE parameters μ ∈ R^q (pinn)
    samples = [-2.0, 0.0, 2.0]; test = [-1.0, 1.0]     # one parameter, named mu
    # names = ["a", "b"]: several, each sample a row, samples = [[1, 0.5], [2, 0.5]], or a
    # grid of every combination, samples = { a = [1, 2, 3], b = [0.5, 1] }

    [solution]
    network = [1, 20, 20, 1]                   # inputs: the coordinates (and the q μ)
    activation = "tanh"; degree = 1            # the Lagrange space of outputs (and of Ritz)
    exact = "x - (exp(x/0.1) - 1)/(exp(1/0.1) - 1)"   # optional: else a P4 reference
    reference_degree = 4
    scale = 1.0                                # the unit of the network's output: u = scale·N
                                               # (ritz: "auto", max |u_h| / 100 of a P1 solve)

    [optimizer]                                # ngd | adam | lbfgs; the loss's own metric
    stop = "target"; target = 1e-5             # or "none"

``scale``: a network whose initial output is as large as the solution fits it by barely moving
its hidden layers (lazy training). On the Ritz loss (``bench/ritz.py`` part 6, [2, 32, 32, 1],
Levenberg–Marquardt, 200 steps) ``ritz_hole`` (max u = 0.049) ends at 1.1–1.2e-2 in units of 1
(3 seeds) and within 10× its Galerkin floor in units from 1e-2 to 1e-4 (max u / 5 to
max u / 490; 1.3–1.4× the floor at 1e-3 on 3 seeds); on the unit square −Δu = 1 ends at 2.0e-3
in units of 1 and 6.2e-5 (1.04× the floor) in units of max u / 100, and a smooth solution
(max u = 1) gains too (5.2e-5 against 4.2e-5, floor 4.1e-5). PINNs keep units of 1: on
``poisson_pinn_2d`` (max u = 1) units of 0.01 ended at 7.8e-5 instead of reaching 5.9e-9 with
the least-squares direction, and at 6.8e-6 instead of 1.7e-6 after 100 ``lm`` steps.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from natinv import resources
from natinv.cases.sections import _forward, _inverse, _mesh, _optimizer
from natinv.cases.settings import (
    ACTIVATIONS,
    MOMENTA,
    PROBLEMS,
    Case,
    ForwardCase,
    InverseCase,
    MeshSettings,
    SynthesizeSettings,
    UncertaintySettings,
    sample_size,
)
from natinv.cases.table import CaseError, _Table

__all__ = [
    "ACTIVATIONS",
    "MOMENTA",
    "Case",
    "CaseError",
    "ForwardCase",
    "InverseCase",
    "MeshSettings",
    "load_case",
    "load_case_on",
    "parse_override",
]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.beta=0.3"`` → (["optimizer", "beta"], 0.3); the value is read as TOML,
    and a bare word (letters, digits, ``_ - . + /``, e.g. ``optimizer.kind=ngd``) is a string.
    Anything else that is not valid TOML (``[bad``, an unclosed quote) is an error."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise CaseError(f"--set {text!r}: expected key.path=value")
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if not _BARE.fullmatch(value):
            raise CaseError(
                f"--set {text!r}: the value is not valid TOML ({exc}); quote a string "
                f"(--set '{key.strip()}=\"...\"')"
            ) from None
        parsed = value
    return key.strip().split("."), parsed


_BARE = re.compile(r"[A-Za-z0-9_.+/-]+")


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
        data = tomllib.loads(resources.read_text(path, "case file"))
    except FileNotFoundError:
        raise CaseError(f"{source}: no such case file") from None
    except resources.ResourceError as exc:
        raise CaseError(str(exc)) from None
    except MemoryError:
        raise CaseError(f"{source}: out of memory while reading the case file") from None
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
    inverse = _inverse(root, base, problem == "inverse", mesh.gdim)
    forward = _forward(root, mesh, problem)
    if not inverse:
        for table in ("synthesize", "regularization"):
            if table in root.data:
                raise root.fail(table, f"only for inverse problems (this case is {problem!r})")
    t = root.table("synthesize", required=False)
    if inverse and not inverse[0].transient:
        for key in ("times", "time_refine"):
            if key in t.data:
                raise t.fail(key, "only for a transient model (model.kind = 'heat')")
    cells = None
    if "cells" in t.data:
        value = t.get("cells")
        if mesh.builtin is None:
            raise t.fail("cells", "only for a built-in mesh (mesh.builtin; a file: use refine)")
        if not (
            isinstance(value, list)
            and len(value) == len(mesh.cells)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and all(v >= c for v, c in zip(value, mesh.cells, strict=True))
        ):
            raise t.fail(
                "cells",
                f"expected {len(mesh.cells)} integers, each at least mesh.cells' "
                f"({mesh.cells}: the data's mesh is finer), got {value!r}",
            )
        cells = value
    synthesize = SynthesizeSettings(
        layout=t.string("layout", "random:60"),
        refine=t.integer("refine", 1, low=0),
        cells=cells,
        degree=t.integer("degree", 3, low=1),
        noise=t.number("noise", 0.01, low=0.0),
        regions=t.string("regions", "probe-*"),
        times=t.integer("times", 10, low=1),
        time_refine=t.integer("time_refine", 4, low=1),
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

    uncertainty = None
    if "uncertainty" in root.data:
        if not inverse:
            raise root.fail("uncertainty", f"only for inverse problems (this case is {problem!r})")
        t = root.table("uncertainty")
        prior = t.get("prior_precision", "evidence")
        if isinstance(prior, str):
            prior = t.string("prior_precision", prior, choices=("evidence", "damping"))
        else:
            prior = t.number("prior_precision", prior, low=0.0, low_open=True)
        mass = t.get("mass", None)
        uncertainty = UncertaintySettings(
            prior_precision=prior,
            samples=t.integer("samples", 0, low=0),
            rank=t.integer("rank", 50, low=1),
            mass=None if mass is None else t.number("mass", mass, low=0.0),
        )
        t.finish()

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
        model, parameter, data_settings, experiments = inverse
        _check_batch(root, optimizer, experiments)
        return InverseCase(
            **common,
            model=model,
            parameter=parameter,
            data=data_settings,
            synthesize=synthesize,
            regularization=regularization,
            uncertainty=uncertainty,
            experiments=experiments,
        )
    assert forward is not None
    equation, solution, parametric_settings = forward
    return ForwardCase(
        **common, equation=equation, solution=solution, parametric=parametric_settings
    )


def _check_batch(root: _Table, optimizer: Any, experiments: list[Any]) -> None:
    """``optimizer.batch``: sampled natural Gauss–Newton steps, at most every experiment."""
    if optimizer.batch is None:
        return
    count = max(len(experiments), 1)
    where = f"{root.source}: optimizer.batch"
    rows = optimizer.sampling == "rows"  # (rows: counted once the data are read)
    if isinstance(optimizer.batch, float) and not rows:  # a fraction of the experiments
        optimizer.batch = sample_size(optimizer.batch, count)
    if optimizer.batch > count and not rows:
        raise CaseError(f"{where}: {optimizer.batch} experiments per step, the case has {count}")
    if optimizer.kind != "ngd" or optimizer.metric != "gauss-newton" or optimizer.solver != "lm":
        raise CaseError(
            f"{where}: sampled steps are natural Gauss–Newton steps (kind = 'ngd', metric = "
            "'gauss-newton', solver = 'lm')"
        )
    if optimizer.momentum not in ("none", "heavy-ball", "spring"):
        raise CaseError(
            f"{where}: sampled steps take momentum 'none', 'heavy-ball' or 'spring', not "
            f"{optimizer.momentum!r}"
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
