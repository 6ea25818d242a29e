"""Formulas of the coordinates in text, e.g. ``"exp(0.6*sin(2*pi*x)*cos(pi*y))"``.

Used for true fields, sources and initial values given on the command line or in case files.
The text is parsed once and checked against a whitelist — numbers, the coordinates ``x, y, z``
and the polar ``r, theta`` (of ``x, y``), the constants ``pi`` and ``e``, arithmetic
(``+ - * / ** %``), comparisons (giving 0 or 1), ``&`` and ``|`` between comparisons, and the
functions below — so a formula can compute but not
reach anything else. Evaluation is vectorised with numpy (:func:`compile_expression`), or done
in torch on one point (:func:`torch_expression`, differentiable: PDE coefficients inside residual
losses), or built as a UFL expression of the mesh's coordinates (:func:`ufl_expression`: a
coefficient that depends on the time of a transient form). A formula may also name *parameters*
(e.g. ``mu`` of a parametric PDE, ``t``), given as keyword values when it is evaluated.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # torch loads with the first torch formula
    import torch

__all__ = [
    "FUNCTIONS",
    "check_ufl",
    "compile_expression",
    "expression_names",
    "interpolate",
    "torch_expression",
    "ufl_expression",
]

FUNCTIONS: dict[str, Callable[..., npt.NDArray[np.float64]]] = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "tanh": np.tanh,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "arctan": np.arctan,
    "arcsin": np.arcsin,
    "arccos": np.arccos,
    "atan2": np.arctan2,
    "minimum": np.minimum,
    "maximum": np.maximum,
    "where": np.where,
}
VARIABLES = ("x", "y", "z")
POLAR = ("r", "theta")  # polar coordinates in the (x, y) plane: hypot(x, y), atan2(y, x)
CONSTANTS = {"pi": np.pi, "e": np.e}
_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.Mod,
    ast.USub,
    ast.UAdd,
    ast.BitAnd,
    ast.BitOr,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


MAX_LENGTH = 4000  # characters of a formula
MAX_NODES = 2000  # syntax-tree nodes
MAX_DEPTH = 60  # nesting of operations


def _parse(text: str, name: str, parameters: tuple[str, ...]) -> ast.Expression:
    """The checked syntax tree of ``text``; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected a formula (a string), got {text!r}")
    shown = text if len(text) <= 80 else text[:60] + " ..."
    if len(text) > MAX_LENGTH:
        raise ValueError(f"{name}: the formula has {len(text)} characters (at most {MAX_LENGTH})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{name}: cannot parse {shown!r} ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"{name}: {shown!r} is nested too deeply") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ValueError(f"{name}: {shown!r} has {len(nodes)} terms (at most {MAX_NODES})")
    if _depth(tree) > MAX_DEPTH:
        raise ValueError(f"{name}: {shown!r} is nested deeper than {MAX_DEPTH} operations")
    for node in nodes:
        if not isinstance(node, _NODES):
            raise ValueError(f"{name}: {type(node).__name__} is not allowed in {shown!r}")
        if isinstance(node, ast.Constant) and (
            not isinstance(node.value, int | float) or isinstance(node.value, bool)
        ):
            raise ValueError(f"{name}: only numbers are allowed as constants in {shown!r}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ValueError(
                    f"{name}: unknown function in {shown!r}; allowed: {sorted(FUNCTIONS)}"
                )
            if node.keywords:
                raise ValueError(f"{name}: keyword arguments are not allowed in {shown!r}")
        if isinstance(node, ast.Name) and not (
            node.id in VARIABLES
            or node.id in POLAR
            or node.id in CONSTANTS
            or node.id in FUNCTIONS
            or node.id in parameters
        ):
            raise ValueError(
                f"{name}: unknown name {node.id!r} in {shown!r}; use "
                f"{', '.join((*VARIABLES, *POLAR, *parameters))}, pi, e and {sorted(FUNCTIONS)}"
            )
    return tree


def _depth(node: ast.AST) -> int:
    """The nesting depth of a syntax tree (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(current))
    return deepest


def _compile(
    text: str, name: str, parameters: tuple[str, ...]
) -> tuple[types.CodeType, list[float]]:
    """The code of a checked formula whose numbers are read from names ``_c0, _c1, ...`` (so
    that they evaluate in floating point: ``9**9**9`` overflows to inf instead of computing a
    huge integer, ``1/0`` is inf instead of an exception), and those numbers."""
    tree = _parse(text, name, parameters)
    numbers: list[float] = []

    class Numbers(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.AST:
            numbers.append(float(node.value))
            return ast.copy_location(ast.Name(id=f"_c{len(numbers) - 1}", ctx=ast.Load()), node)

    tree = ast.fix_missing_locations(Numbers().visit(tree))
    return compile(tree, f"<{name}>", "eval"), numbers


def _polar(x: Any, y: Any, hypot: Callable[..., Any], atan2: Callable[..., Any]) -> dict[str, Any]:
    """``r`` and ``theta`` of the coordinates ``x, y`` with these functions (on a line y = 0:
    r = |x|, theta 0 or π)."""
    return {"r": hypot(x, y), "theta": atan2(y, x)}


def expression_names(text: str) -> set[str]:
    """The variable and parameter names a (valid) formula uses."""
    tree = ast.parse(text.strip(), mode="eval")
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return names - set(CONSTANTS) - set(FUNCTIONS)


def compile_expression(
    text: str, name: str = "expression", parameters: tuple[str, ...] = ()
) -> Callable[..., npt.NDArray[np.float64]]:
    """A function ``x (3, n) -> values (n,)`` (the form ``Function.interpolate`` takes); the
    ``parameters`` a formula may name are keyword arguments of it (numbers).

    Raises:
        ValueError: a syntax error, or anything outside the whitelist, naming ``name``.
    """
    code, numbers = _compile(text, name, parameters)
    shown = text if len(text) <= 80 else text[:60] + " ..."
    literals = {f"_c{i}": np.float64(v) for i, v in enumerate(numbers)}

    def evaluate(x: npt.NDArray[np.float64], **values: float) -> npt.NDArray[np.float64]:
        points = np.asarray(x, dtype=np.float64)
        namespace = {
            "__builtins__": {},
            **FUNCTIONS,
            **CONSTANTS,
            **literals,
            **{v: points[i] for i, v in enumerate(VARIABLES) if i < points.shape[0]},
            **_polar(
                points[0], points[1] if points.shape[0] > 1 else 0 * points[0], np.hypot, np.arctan2
            ),
            **{p: float(values.get(p, 0.0)) for p in parameters},
        }
        try:
            with np.errstate(all="ignore"):
                value = eval(code, namespace)
            return np.broadcast_to(np.asarray(value, dtype=np.float64), points.shape[1:]).copy()
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise ValueError(f"{name}: cannot evaluate {shown!r} ({exc})") from None

    evaluate.__doc__ = text
    return evaluate


def interpolate(
    function: Any,
    text: str,
    key: str,
    *,
    parameters: tuple[str, ...] = (),
    values: dict[str, float] | None = None,
    where: str = "",
) -> None:
    """``function`` (a ``dolfinx.fem.Function``) := the formula ``text`` (named ``key``, with
    the ``parameters`` at ``values``), which must be finite at every interpolation point: one
    error on every rank naming ``where``, the key and a point otherwise. Collective.

    Raises:
        CollectiveError: the formula cannot be evaluated or is NaN/inf somewhere on the mesh.
    """
    from natinv import parallel

    space = function.function_space
    formula = compile_expression(text, key, parameters)
    given = dict(values or {})
    with parallel.collective(space.mesh.comm, where or key):
        function.interpolate(lambda x: formula(x, **given))
        array = function.x.array.reshape(-1, space.dofmap.index_map_bs)
        bad = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
        if bad.size:
            point = space.tabulate_dof_coordinates()[bad[0], : space.mesh.geometry.dim]
            raise ValueError(
                f"{key}: {text!r} is not finite at some points of the mesh, e.g. x = "
                f"{point.tolist()}"
            )


def _torch_functions() -> dict[str, Callable[..., torch.Tensor]]:
    """The torch counterparts of :data:`FUNCTIONS`."""
    import torch

    return {
        "exp": torch.exp,
        "log": torch.log,
        "sqrt": torch.sqrt,
        "abs": torch.abs,
        "sin": torch.sin,
        "cos": torch.cos,
        "tan": torch.tan,
        "tanh": torch.tanh,
        "sinh": torch.sinh,
        "cosh": torch.cosh,
        "arctan": torch.atan,
        "arcsin": torch.asin,
        "arccos": torch.acos,
        "atan2": torch.atan2,
        "minimum": torch.minimum,
        "maximum": torch.maximum,
        "where": torch.where,
    }


def torch_expression(
    text: str, name: str = "expression", parameters: tuple[str, ...] = ()
) -> Callable[..., torch.Tensor]:
    """A function ``(x (gdim,), *parameter values) -> scalar tensor`` of one point in torch,
    differentiable in ``x`` and usable under ``torch.func`` transforms; coordinates beyond
    ``gdim`` are 0. The parameter values are tensors or numbers, in the order of ``parameters``.

    Raises:
        ValueError: as :func:`compile_expression`.
    """
    code, numbers = _compile(text, name, parameters)
    functions = _torch_functions()

    import torch

    constants = {k: float(v) for k, v in CONSTANTS.items()}
    literals = {f"_c{i}": v for i, v in enumerate(numbers)}  # (python floats, as torch likes)

    def evaluate(x: torch.Tensor, *values: torch.Tensor | float) -> torch.Tensor:
        zero = torch.zeros((), dtype=torch.float64)
        namespace = {
            # torch's C code imports through the calling frame's builtins; the formula itself
            # cannot name __import__ (only whitelisted names pass the parser)
            "__builtins__": {"__import__": __import__},
            **functions,
            **constants,
            **literals,
            **{v: x[i] if i < x.shape[0] else zero for i, v in enumerate(VARIABLES)},
            **_polar(
                x[0],
                x[1] if x.shape[0] > 1 else zero,
                lambda a, b: torch.sqrt(a * a + b * b),
                torch.atan2,
            ),
            **dict(zip(parameters, values, strict=True)),
        }
        value = eval(code, namespace)
        return torch.as_tensor(value, dtype=torch.float64) + zero

    evaluate.__doc__ = text
    return evaluate


def _indicator(comparison: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``(a, b) -> 1 if comparison(a, b) else 0`` as a UFL conditional."""
    import ufl

    def indicator(a: Any, b: Any) -> Any:
        return ufl.conditional(comparison(a, b), 1.0, 0.0)

    return indicator


def _ufl_functions() -> dict[str, Callable[..., Any]]:
    """The UFL counterparts of :data:`FUNCTIONS` and of the comparison and logic operators."""
    import ufl

    def where(condition: Any, a: Any, b: Any) -> Any:
        return ufl.conditional(ufl.ne(condition, 0.0), a, b)

    comparisons = {"_lt": ufl.lt, "_le": ufl.le, "_gt": ufl.gt, "_ge": ufl.ge}
    return {
        "exp": ufl.exp,
        "log": ufl.ln,
        "sqrt": ufl.sqrt,
        "abs": abs,
        "sin": ufl.sin,
        "cos": ufl.cos,
        "tan": ufl.tan,
        "tanh": ufl.tanh,
        "sinh": ufl.sinh,
        "cosh": ufl.cosh,
        "arctan": ufl.atan,
        "arcsin": ufl.asin,
        "arccos": ufl.acos,
        "atan2": ufl.atan2,
        "minimum": ufl.min_value,
        "maximum": ufl.max_value,
        "where": where,
        # a comparison is 0 or 1; & and | of such values are their product and maximum
        **{k: _indicator(op) for k, op in comparisons.items()},
        "_and": lambda a, b: a * b,
        "_or": ufl.max_value,
    }


_COMPARISONS = {ast.Lt: "_lt", ast.LtE: "_le", ast.Gt: "_gt", ast.GtE: "_ge"}


class _ToUfl(ast.NodeTransformer):
    """Comparisons, ``&`` and ``|`` as calls of the UFL functions above; ``%`` refused."""

    def __init__(self, name: str, shown: str) -> None:
        self.name, self.shown = name, shown

    @staticmethod
    def _call(function: str, *args: ast.AST) -> ast.Call:
        return ast.Call(func=ast.Name(id=function, ctx=ast.Load()), args=list(args), keywords=[])

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        left, result = node.left, None
        for op, right in zip(node.ops, node.comparators, strict=True):
            term = self._call(_COMPARISONS[type(op)], left, right)
            result = term if result is None else self._call("_and", result, term)
            left = right
        assert result is not None
        return ast.copy_location(result, node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Mod):
            raise ValueError(f"{self.name}: % has no UFL form; rewrite {self.shown!r} without it")
        if isinstance(node.op, ast.BitAnd | ast.BitOr):
            function = "_and" if isinstance(node.op, ast.BitAnd) else "_or"
            return ast.copy_location(self._call(function, node.left, node.right), node)
        return node


def check_ufl(text: str, name: str, parameters: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming ``name`` unless :func:`ufl_expression` can build ``text``."""
    shown = text if len(text) <= 80 else text[:60] + " ..."
    _ToUfl(name, shown).visit(_parse(text, name, parameters))


def ufl_expression(
    text: str, name: str, mesh: Any, parameters: tuple[str, ...] = ()
) -> Callable[..., Any]:
    """A function ``(**values) -> UFL expression`` of the formula on ``mesh``: the coordinates
    are the mesh's ``SpatialCoordinate`` (``z = 0`` in 2D), the ``parameters`` keyword values
    (numbers or UFL expressions, e.g. a ``dolfinx.fem.Constant`` holding the time). Comparisons
    become 0/1 conditionals as in :func:`compile_expression`; ``%`` is refused.

    Raises:
        ValueError: as :func:`compile_expression`, or the formula uses ``%``.
    """
    import ufl

    shown = text if len(text) <= 80 else text[:60] + " ..."
    tree = _ToUfl(name, shown).visit(_parse(text, name, parameters))
    code = compile(ast.fix_missing_locations(tree), f"<{name}>", "eval")
    x = ufl.SpatialCoordinate(mesh)
    coordinates = {v: x[i] if i < mesh.geometry.dim else 0.0 for i, v in enumerate(VARIABLES)}
    y = x[1] if mesh.geometry.dim > 1 else 0.0 * x[0]
    coordinates.update(_polar(x[0], y, lambda a, b: ufl.sqrt(a * a + b * b), ufl.atan2))
    functions = _ufl_functions()

    def build(**values: Any) -> Any:
        missing = [p for p in parameters if p not in values]
        if missing:
            raise ValueError(f"{name}: no value for {missing} in {shown!r}")
        namespace = {
            "__builtins__": {},
            **functions,
            **{k: float(v) for k, v in CONSTANTS.items()},
            **coordinates,
            **{p: values[p] for p in parameters},
        }
        return eval(code, namespace)

    build.__doc__ = text
    return build
