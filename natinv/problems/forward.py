"""Forward problems from a case: the neural network is the solution of a PDE.

The equation of a forward case is ``−∇·(κ∇u) + b·∇u + c u = f`` on the mesh, ``u = g`` on the
Dirichlet boundary, with κ, b, c, f, g formulas of the coordinates (and of the parameters
μ ∈ R^q, by their names, for a parametric surrogate ``u(x; μ)``). Two losses:

``problem = "pinn"``: ``½ Σ w_i |r(u, x_i)|²`` of the strong residual at the cells' quadrature
    points (derivatives by torch autograd), the ENGD Gauss–Newton metric; the boundary values
    exactly (``u = g + m·N`` with ``m`` vanishing on the sides of a built-in box) or as a penalty
    term at the boundary facets' quadrature points. Parametric: the loss is the mean over the
    μ samples.
``problem = "ritz"``: ``½ a(u, u) − ℓ(u)`` on the Lagrange space of the solution (κ, c, f
    interpolated two degrees above it), the energy metric; the boundary values at their dofs
    (any mesh) or by a penalty ``½ γ ∫_Γ (u − g)² ds``; no advection (a must be symmetric).

Errors are relative L2 errors at a degree-``2·reference_degree`` cell quadrature against
``solution.exact`` or, without one, a finite-element reference of degree ``reference_degree`` on
the case mesh (the same equation, the boundary values imposed at dofs), for every test μ of a
parametric surrogate (the largest is the error reported while training).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mpi4py import MPI

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import numpy.typing as npt
import torch
import ufl
from torch.func import jacfwd

from natinv import domain, expressions, figures, output, parallel
from natinv.cases import ForwardCase
from natinv.expressions import compile_expression, expression_names, torch_expression
from natinv.fields import NeuralField, OutputScale, mlp
from natinv.objectives.pinn import PINN, Term, gradient, hessian, laplacian
from natinv.objectives.ritz import Ritz
from natinv.quadrature import Quadrature, boundary_quadrature, cell_quadrature

__all__ = ["ForwardSetup", "build_forward", "write_results"]


def _names(case: ForwardCase) -> tuple[str, ...]:
    return case.parametric.names if case.parametric is not None else ()


def _unpack(mu: tuple[Any, ...]) -> tuple[Any, ...]:
    """The values of μ for a compiled formula: a term's ``*mu`` holds one tensor ``(q,)``."""
    return tuple(mu[0][i] for i in range(mu[0].shape[0])) if mu else ()


def _assign(case: ForwardCase, mu: tuple[float, ...] | None) -> dict[str, float]:
    """Formula keyword values for μ (none for a plain problem)."""
    return {} if mu is None else dict(zip(_names(case), mu, strict=True))


def _residual(case: ForwardCase) -> Callable[..., torch.Tensor]:
    """``r(u, x[, μ]) = −∇·(κ∇u) + b·∇u + c u − f`` at one point, in torch; for a space–time
    case (``equation.time``: the last coordinate is t) ``u_t`` plus that operator in the
    space coordinates."""
    eq = case.equation
    names = _names(case)
    kappa = torch_expression(eq.diffusion, "equation.diffusion", names)
    source = torch_expression(eq.source, "equation.source", names)
    reaction = None
    if eq.reaction.strip() not in ("0", "0.0"):
        reaction = torch_expression(eq.reaction, "equation.reaction", names)
    velocity = [
        torch_expression(b, f"equation.velocity[{i}]", names)
        for i, b in enumerate(eq.velocity or [])
    ]
    constant = not (expression_names(eq.diffusion) & {"x", "y", "z"})
    space = slice(None, -1) if eq.time else slice(None)  # the space coordinates

    def residual(u: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *mu: Any) -> Any:
        m = _unpack(mu)
        if constant and not eq.time:  # −κΔu
            r = -kappa(x, *m) * laplacian(u, x)
        elif constant:  # −κ Δ_x u (space–time)
            r = -kappa(x, *m) * torch.trace(hessian(u, x)[space, space])
        else:  # −∇·(κ∇u) by differentiating the flux (its space part)
            flux = jacfwd(lambda y: kappa(y, *m) * gradient(u, y)[space])(x)
            r = -torch.trace(flux[:, space])
        if velocity or eq.time:
            du = gradient(u, x)
            r = r + sum(b(x, *m) * du[i] for i, b in enumerate(velocity))
            if eq.time:
                r = r + du[-1]  # ∂u/∂t
        if reaction is not None:
            r = r + reaction(x, *m) * u(x)
        return r - source(x, *m)

    return residual


def _pinn(case: ForwardCase, field: NeuralField, mesh: dolfinx.mesh.Mesh, facets: Any) -> PINN:
    eq = case.equation
    g = torch_expression(eq.boundary_value, "equation.boundary_value", _names(case))
    zero_g = eq.boundary_value.strip() in ("0", "0.0")
    terms = [Term(cell_quadrature(mesh, eq.quadrature), _residual(case), name="interior")]
    dirichlet = _covered(case, mesh, facets)
    multiplier, lift = None, None
    if eq.boundary == "exact":
        lower = np.array(case.mesh.origin)
        upper = lower + np.array(case.mesh.extent)
        # the box's Dirichlet sides: tag 2i + 1 at x_i = lower_i, 2i + 2 at x_i = upper_i
        sides = range(1, 2 * lower.size + 1) if eq.dirichlet == "all" else eq.dirichlet
        factors = [((tag - 1) // 2, (tag - 1) % 2) for tag in sides]  # (axis, upper side)

        def multiplier(x: torch.Tensor) -> torch.Tensor:
            out = torch.ones((), dtype=torch.float64)
            for axis, high in factors:
                out = out * ((upper[axis] - x[axis]) if high else (x[axis] - lower[axis]))
            return out

        if not zero_g:  # (a parametric field's lift gets μ, shape (q,))
            lift = (lambda x, mu: g(x, *_unpack((mu,)))) if case.parametric else g
    else:
        points = boundary_quadrature(mesh, eq.boundary_quadrature, facets=dirichlet)
        terms.append(
            Term(
                points,
                lambda u, x, *mu: u(x) - g(x, *_unpack(mu)),
                weight=eq.penalty,
                name="boundary",
            )
        )
    if eq.neumann is not None:
        terms.append(_neumann(case, mesh, facets))
    samples = None
    if case.parametric is not None:
        samples = np.array(case.parametric.samples)
    return PINN(field, terms, multiplier=multiplier, lift=lift, samples=samples)


def _covered(case: ForwardCase, mesh: dolfinx.mesh.Mesh, facets: Any) -> Any:
    """The local Dirichlet facets of a PINN case; with Neumann tags, every boundary facet must
    be in one of the two (a facet in neither would have no condition). Collective."""
    eq = case.equation
    where = f"{case.source}: equation.dirichlet"
    dirichlet = domain.boundary_facets(mesh, facets, eq.dirichlet, where)
    if eq.neumann is None:  # (space–time: the final time has no condition)
        return dirichlet
    neumann = domain.boundary_facets(mesh, facets, eq.neumann, f"{case.source}: equation.neumann")
    fdim = mesh.topology.dim - 1
    owned = mesh.topology.index_map(fdim).size_local
    exterior = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    missing = np.setdiff1d(exterior[exterior < owned], np.union1d(dirichlet, neumann)).size
    missing = int(mesh.comm.allreduce(missing))
    parallel.check_all(
        mesh.comm,
        missing == 0,
        f"{case.source}: equation.neumann: {missing} boundary facet(s) in neither dirichlet "
        f"{eq.dirichlet} nor neumann {eq.neumann}; a PINN needs a condition on every facet",
    )
    return dirichlet


def _neumann(case: ForwardCase, mesh: dolfinx.mesh.Mesh, facets: Any) -> Term:
    """The rows ``κ∇u·n − flux`` at the Neumann boundary's points; each point carries its
    outward normal (the rows' points are ``[x, n]``)."""
    eq = case.equation
    names = _names(case)
    assert eq.neumann is not None
    where = domain.boundary_facets(mesh, facets, eq.neumann, f"{case.source}: equation.neumann")
    quadrature = boundary_quadrature(mesh, eq.boundary_quadrature, facets=where)
    assert quadrature.normals is not None
    kappa = torch_expression(eq.diffusion, "equation.diffusion", names)
    flux = torch_expression(eq.flux, "equation.flux", names)
    gdim = mesh.geometry.dim

    def residual(u: Callable[[torch.Tensor], torch.Tensor], xn: torch.Tensor, *mu: Any) -> Any:
        x, n = xn[:gdim], xn[gdim:]
        m = _unpack(mu)
        return kappa(x, *m) * torch.dot(gradient(u, x), n) - flux(x, *m)

    carried = dataclasses.replace(
        quadrature, points=np.hstack([quadrature.points, quadrature.normals])
    )
    return Term(carried, residual, weight=eq.penalty, name="neumann")


def _interpolated(
    space: dolfinx.fem.FunctionSpace,
    text: str,
    key: str,
    names: tuple[str, ...],
    mu: tuple[float, ...] | None,
) -> dolfinx.fem.Function:
    function = dolfinx.fem.Function(space)
    values = {} if mu is None else dict(zip(names, mu, strict=True))
    expressions.interpolate(function, text, key, parameters=names, values=values)
    return function


def _ritz(
    case: ForwardCase, field: NeuralField, mesh: dolfinx.mesh.Mesh, facets: Any
) -> tuple[Ritz, list[Any]]:
    """The Ritz loss and the functions its forms hold."""
    eq = case.equation
    space = field.space
    degree = space.element.basix_element.degree
    coefficients = dolfinx.fem.functionspace(mesh, ("Lagrange", degree + 2))
    kappa = _interpolated(coefficients, eq.diffusion, "equation.diffusion", (), None)
    source = _interpolated(coefficients, eq.source, "equation.source", (), None)
    reaction = _interpolated(coefficients, eq.reaction, "equation.reaction", (), None)
    g = _interpolated(space, eq.boundary_value, "equation.boundary_value", (), None)
    where = domain.boundary_facets(
        mesh, facets, case.equation.dirichlet, f"{case.source}: equation.dirichlet"
    )
    keep: list[Any] = [kappa, source, reaction, g]

    def a(w: Any, z: Any) -> Any:
        form = kappa * ufl.inner(ufl.grad(w), ufl.grad(z)) * ufl.dx + reaction * w * z * ufl.dx
        if eq.boundary == "penalty":
            form = form + eq.penalty * w * z * _ds(case, mesh, facets)
        return form

    flux = _interpolated(coefficients, eq.flux, "equation.flux", (), None)
    keep.append(flux)

    def ell(z: Any) -> Any:
        form = source * z * ufl.dx
        if eq.boundary == "penalty":
            form = form + eq.penalty * g * z * _ds(case, mesh, facets)
        if eq.neumann is not None:
            form = form + flux * z * _ds(case, mesh, facets, eq.neumann)
        return form

    bcs = []
    if eq.boundary == "exact":
        dofs = dolfinx.fem.locate_dofs_topological(space, mesh.topology.dim - 1, where)
        bcs.append(dolfinx.fem.dirichletbc(g, dofs))
    return Ritz(field, a, ell, bcs=bcs), keep


def _ds(case: ForwardCase, mesh: dolfinx.mesh.Mesh, facets: Any, tags: Any = None) -> ufl.Measure:
    """The measure of the Dirichlet boundary (all exterior facets, or the tagged ones), or of
    the boundary of ``tags``."""
    tags = case.equation.dirichlet if tags is None else tags
    if tags == "all":
        return ufl.ds(domain=mesh)
    return ufl.Measure("ds", domain=mesh, subdomain_data=facets, subdomain_id=tuple(tags))


def _output_scale(case: ForwardCase, mesh: dolfinx.mesh.Mesh, facets: Any) -> float:
    """The unit of the network's output: the setting, or for ``"auto"`` max |u_h| / 100 of the
    P1 solution at the first μ (bench/ritz.py part 6: on ``ritz_hole``, max u = 0.049, units
    from max u / 5 to max u / 490 end within 10x the Galerkin floor, a unit of 1 does not).
    Collective."""
    scale = case.solution.scale
    if scale != "auto":
        return float(scale)
    mu = case.parametric.samples[0] if case.parametric is not None else None
    u = _reference(case, mesh, facets, mu, "scale", degree=1, purpose='solve of scale = "auto"')
    owned = u.function_space.dofmap.index_map.size_local
    size = parallel.allreduce_max(mesh.comm, float(np.max(np.abs(u.x.array[:owned]), initial=0.0)))
    return size / 100 if size > 0 else 1.0


def _reference(
    case: ForwardCase,
    mesh: dolfinx.mesh.Mesh,
    facets: Any,
    mu: tuple[float, ...] | None,
    index: int | str,
    degree: int | None = None,
    purpose: str = "reference",
) -> dolfinx.fem.Function:
    """The finite-element solution of the case's equation (degree ``reference_degree``, or
    ``degree``) at μ, by a direct solve; ``purpose`` names it when it fails. Collective."""
    eq, solution = case.equation, case.solution
    names = _names(case)
    degree = solution.reference_degree if degree is None else degree
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
    coefficients = dolfinx.fem.functionspace(mesh, ("Lagrange", degree + 1))

    def coefficient(text: str, key: str) -> dolfinx.fem.Function:
        return _interpolated(coefficients, text, key, names, mu)

    u, v = ufl.TrialFunction(space), ufl.TestFunction(space)
    kappa = coefficient(eq.diffusion, "equation.diffusion")
    a = kappa * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    a = a + coefficient(eq.reaction, "equation.reaction") * u * v * ufl.dx
    for i, b in enumerate(eq.velocity or []):
        a = a + coefficient(b, f"equation.velocity[{i}]") * u.dx(i) * v * ufl.dx
    ell = coefficient(eq.source, "equation.source") * v * ufl.dx
    if eq.neumann is not None:
        ell = ell + coefficient(eq.flux, "equation.flux") * v * _ds(case, mesh, facets, eq.neumann)
    g = _interpolated(space, eq.boundary_value, "equation.boundary_value", names, mu)
    where = domain.boundary_facets(
        mesh, facets, case.equation.dirichlet, f"{case.source}: equation.dirichlet"
    )
    dofs = dolfinx.fem.locate_dofs_topological(space, mesh.topology.dim - 1, where)
    problem = dolfinx.fem.petsc.LinearProblem(
        a,
        ell,
        bcs=[dolfinx.fem.dirichletbc(g, dofs)],
        petsc_options={
            "ksp_type": "preonly",
            "pc_type": "lu",
            "pc_factor_mat_solver_type": parallel.direct_solver(mesh.comm),
        },
        petsc_options_prefix=f"natinv_reference_{index}_",
    )
    result = problem.solve()  # collective: its failure is seen alike by every rank, below
    reference = result[0] if isinstance(result, tuple) else result
    owned = reference.function_space.dofmap.index_map.size_local
    parallel.check_all(
        mesh.comm,
        problem.solver.getConvergedReason() > 0
        and bool(np.all(np.isfinite(reference.x.array[:owned]))),
        f"{case.source}: the finite-element {purpose}: the P{degree} solve "
        f"failed (reason {problem.solver.getConvergedReason()})",
    )
    reference.name = "reference"
    return reference


def _check_formulas(case: ForwardCase, check: Quadrature, boundary: Quadrature) -> None:
    """Every formula of the case is finite at the mesh's quadrature points (boundary values at
    the boundary's), for every μ: one message naming the key and a point otherwise.
    Collective."""
    eq, solution = case.equation, case.solution
    names = _names(case)
    formulas = [
        ("equation.diffusion", eq.diffusion, check),
        ("equation.reaction", eq.reaction, check),
        ("equation.source", eq.source, check),
        ("equation.boundary_value", eq.boundary_value, boundary),
        ("equation.flux", eq.flux, boundary),
        *((f"equation.velocity[{i}]", b, check) for i, b in enumerate(eq.velocity or [])),
        *((("solution.exact", solution.exact, check),) if solution.exact else ()),
    ]
    mus: list[tuple[float, ...] | None] = [None]
    if case.parametric is not None:
        mus = sorted(set(case.parametric.samples) | set(case.parametric.test))
    for key, text, where in formulas:
        formula = compile_expression(text, key, names)
        points = np.zeros((3, where.points.shape[0]))
        points[: where.points.shape[1]] = where.points.T
        for mu in mus:
            values = formula(points, **_assign(case, mu))
            bad = np.nonzero(~np.isfinite(values))[0]
            first = where.points[bad[0]].tolist() if bad.size else None
            parallel.check_all(
                check.comm,
                bad.size == 0,
                lambda key=key, text=text, mu=mu, first=first: (
                    f"{case.source}: {key}: {text!r} is not finite at some points of the mesh"
                    + (f", e.g. x = {first}" if first is not None else "")
                    + (f" ({case.parametric.label(mu)})" if case.parametric and mu else "")
                ),
            )


@dataclass
class ForwardSetup:
    """A forward case as library objects (a :class:`~natinv.problems.Problem`): the mesh, the
    neural solution, its loss, and the exact or reference solutions it is measured against.
    Free with :meth:`close`."""

    case: ForwardCase
    mesh: dolfinx.mesh.Mesh
    field: NeuralField
    objective: PINN | Ritz
    check: Quadrature
    mus: list[tuple[float, ...] | None]  # the test μ (one None for a plain problem)
    references: list[npt.NDArray[np.float64]]  # u* at the check points, per test μ
    reference_functions: list[dolfinx.fem.Function | None]
    keep: list[Any] = field(default_factory=list)
    norms: list[float] = field(init=False)  # ‖u*‖²_L2 per test μ

    def __post_init__(self) -> None:
        self.norms = [self.check.integrate(r**2) for r in self.references]

    @property
    def comm(self) -> MPI.Comm:
        return self.mesh.comm

    def values(self, theta: npt.ArrayLike, mu: tuple[float, ...] | None) -> npt.NDArray[np.float64]:
        """``u_θ`` at the check points (at μ). Collective for a Ritz loss."""
        if isinstance(self.objective, PINN):
            return self.objective.solution(self.check.points, theta, mu)
        return self.check.evaluate(self.objective.solution(theta))

    def errors(self, theta: npt.ArrayLike) -> list[float]:
        """The relative L2 error at each test μ (absolute where u* = 0). Collective."""
        out = []
        for mu, reference, norm in zip(self.mus, self.references, self.norms, strict=True):
            difference = self.check.integrate((self.values(theta, mu) - reference) ** 2)
            out.append(float(np.sqrt(difference / (norm if norm > 0 else 1.0))))
        return out

    def error(self, theta: npt.ArrayLike | None = None) -> float:
        """The largest relative L2 error over the test μ. Collective."""
        return max(self.errors(self.field.parameters if theta is None else theta))

    discrepancy = -np.inf  # no data: no noise level to stop at

    def describe(self) -> str:
        rows = getattr(self.objective, "num_global", self.field.num_global)
        text = (
            f"{self.case.problem}, {rows} {'residuals' if self.case.problem == 'pinn' else 'dofs'}"
        )
        units = [m for m in self.field.network.modules() if isinstance(m, OutputScale)]
        return text + "".join(f", output unit {float(m.scale):.3g}" for m in units)

    def misfit(self, theta: npt.NDArray[np.float64], loss: float) -> float:
        return float("nan")  # no data

    def timings(self) -> dict[str, float]:
        return {}

    def write(self, history: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
        """The results of the run into ``case.output`` (see :func:`write_results`)."""
        return write_results(self, history, summary)

    def solution(self, theta: npt.ArrayLike, mu: tuple[float, ...] | None) -> dolfinx.fem.Function:
        """``u_θ`` (at μ) on the solution's Lagrange space. Collective."""
        if isinstance(self.objective, Ritz):
            return self.objective.solution(theta)
        space = self.field.space
        gdim = self.mesh.geometry.dim
        out = dolfinx.fem.Function(space, name="u")
        coordinates = space.tabulate_dof_coordinates()[:, :gdim]
        out.x.array[:] = self.objective.solution(coordinates, theta, mu)
        return out

    def reference(self, index: int) -> dolfinx.fem.Function:
        """The exact or reference solution at the ``index``-th test μ, on the solution's
        space. Collective."""
        source = self.reference_functions[index]
        if source is not None:
            out = dolfinx.fem.Function(self.field.space)
            out.interpolate(source)
        else:
            assert self.case.solution.exact is not None
            out = _interpolated(
                self.field.space,
                self.case.solution.exact,
                "solution.exact",
                _names(self.case),
                self.mus[index],
            )
        out.name = "reference"
        return out

    def close(self) -> None:
        """Free the PETSc objects of the loss. Collective."""
        self.objective.destroy()


def build_forward(case: ForwardCase, comm: MPI.Comm = MPI.COMM_WORLD) -> ForwardSetup:
    """Mesh, neural solution, loss and references of a forward case. Collective."""
    settings = case.solution
    found = domain.load_domain(comm, case.mesh, case.source)
    mesh, facets = found.mesh, found.facets
    where = f"{case.source}: equation.dirichlet"
    tags = domain.resolve_tags(found, case.equation.dirichlet, where)
    neumann = case.equation.neumann
    if neumann is not None:
        neumann = domain.resolve_tags(found, neumann, f"{case.source}: equation.neumann")
    case = dataclasses.replace(
        case, equation=dataclasses.replace(case.equation, dirichlet=tags, neumann=neumann)
    )
    check = cell_quadrature(mesh, 2 * settings.reference_degree)
    _check_formulas(case, check, boundary_quadrature(mesh, case.equation.boundary_quadrature))
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", settings.degree))
    scale = _output_scale(case, mesh, facets)
    network = mlp(settings.network, settings.activation, seed=case.seed, scale=scale)
    mus: list[tuple[float, ...] | None] = [None]
    if case.parametric is not None:
        mus = list(case.parametric.test)
        field = NeuralField(space, network, mu=list(case.parametric.samples[0]))
    else:
        field = NeuralField(space, network)
    keep: list[Any] = []
    objective: PINN | Ritz
    if case.problem == "pinn":
        objective = _pinn(case, field, mesh, facets)
    else:
        objective, keep = _ritz(case, field, mesh, facets)
    references, functions = [], []
    for index, mu in enumerate(mus):
        if settings.exact is not None:
            formula = compile_expression(settings.exact, "solution.exact", _names(case))
            points = np.zeros((3, check.points.shape[0]))
            points[: check.points.shape[1]] = check.points.T
            references.append(formula(points, **_assign(case, mu)))
            functions.append(None)
        else:
            reference = _reference(case, mesh, facets, mu, index)
            references.append(check.evaluate(reference))
            functions.append(reference)
    return ForwardSetup(case, mesh, field, objective, check, mus, references, functions, keep)


def write_results(
    built: ForwardSetup,
    history: list[dict[str, Any]],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """``summary.json`` (with the error at every test μ), ``solution.bp`` (u_θ and the
    reference, per test μ), ``convergence.png``, ``fields.png`` and, for a parametric
    surrogate, ``mu_errors.png``. Returns the summary. Collective."""
    case, comm = built.case, built.comm
    folder = case.output
    theta = built.field.parameters
    errors = built.errors(theta)
    summary["relative_l2_error"] = max(errors)
    parametric = case.parametric
    if parametric is not None:
        trained = set(parametric.samples)
        summary["errors_by_mu"] = [
            {
                "mu": mu[0] if parametric.names == ("mu",) else _assign(case, mu),
                "relative_l2_error": e,
                "trained": mu in trained,
            }
            for mu, e in zip(built.mus, errors, strict=True)
            if mu is not None
        ]
    summary["reference"] = (
        "exact"
        if case.solution and case.solution.exact
        else (f"P{case.solution.reference_degree if case.solution else 0} finite elements")
    )
    output.write_history(comm, folder / "history.csv", {case.optimizer.kind: history})
    functions = []
    for index, mu in enumerate(built.mus):
        suffix = "" if mu is None or parametric is None else parametric.suffix(mu)
        u, reference = built.solution(theta, mu), built.reference(index)
        u.name, reference.name = f"u{suffix}", f"reference{suffix}"
        functions += [u, reference]
    domain.write_vtx(comm, folder / "solution.bp", functions)
    if history:
        output.plot_convergence(
            comm,
            folder / "convergence.png",
            {case.optimizer.kind: history},
            "error",
            f"{case.name}: relative L2 error of u",
        )
    shown = figures.shown(built.mus)
    panels = [
        (
            "" if mu is None or parametric is None else parametric.label(mu),
            functions[2 * i],
            functions[2 * i + 1],
        )
        for i, mu in enumerate(built.mus)
        if i in shown
    ]
    if built.mesh.topology.dim == 1:
        figures.solution_lines(comm, folder / "fields.png", case.name, panels)
    else:
        figures.solution_surfaces(comm, folder / "fields.png", case.name, panels)
    if case.parametric is not None:
        figures.mu_errors(comm, folder / "mu_errors.png", case, built.mus, errors)
    output.write_summary(comm, folder / "summary.json", summary)  # last: the run is complete
    comm.Barrier()  # every file is there when any rank returns
    return summary
