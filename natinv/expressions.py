"""Formulas of the coordinates in text, e.g. ``"exp(0.6*sin(2*pi*x)*cos(pi*y))"``.

Used for true fields, sources and initial values given on the command line or in case files.
The text is parsed once and checked against a whitelist — numbers, the coordinates ``x, y, z``,
the constants ``pi`` and ``e``, arithmetic (``+ - * / ** %``), comparisons (giving 0 or 1),
``&`` and ``|`` between comparisons, and the functions below — so a formula can compute but not
reach anything else. Evaluation is vectorised with numpy.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["FUNCTIONS", "compile_expression"]

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
    "minimum": np.minimum,
    "maximum": np.maximum,
    "where": np.where,
}
VARIABLES = ("x", "y", "z")
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


def compile_expression(
    text: str, name: str = "expression"
) -> Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]:
    """A function ``x (3, n) -> values (n,)`` (the form ``Function.interpolate`` takes).

    Raises:
        ValueError: a syntax error, or anything outside the whitelist, naming ``name``.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{name}: cannot parse {text!r} ({exc.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ValueError(f"{name}: {type(node).__name__} is not allowed in {text!r}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise ValueError(f"{name}: only numbers are allowed as constants in {text!r}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ValueError(
                    f"{name}: unknown function in {text!r}; allowed: {sorted(FUNCTIONS)}"
                )
            if node.keywords:
                raise ValueError(f"{name}: keyword arguments are not allowed in {text!r}")
        if isinstance(node, ast.Name) and not (
            node.id in VARIABLES or node.id in CONSTANTS or node.id in FUNCTIONS
        ):
            raise ValueError(
                f"{name}: unknown name {node.id!r} in {text!r}; use x, y, z, pi, e and "
                f"{sorted(FUNCTIONS)}"
            )
    code = compile(tree, f"<{name}>", "eval")

    def evaluate(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        points = np.asarray(x, dtype=np.float64)
        namespace = {
            "__builtins__": {},
            **FUNCTIONS,
            **CONSTANTS,
            **{v: points[i] for i, v in enumerate(VARIABLES) if i < points.shape[0]},
        }
        with np.errstate(all="ignore"):
            value = eval(code, namespace)
        return np.broadcast_to(np.asarray(value, dtype=np.float64), points.shape[1:]).copy()

    evaluate.__doc__ = text
    return evaluate
