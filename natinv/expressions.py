"""Formulas of the coordinates in text, e.g. ``"exp(0.6*sin(2*pi*x)*cos(pi*y))"``.

Used for true fields, sources and initial values given on the command line or in case files.
The text is parsed once and checked against a whitelist — numbers, the coordinates ``x, y, z``,
the constants ``pi`` and ``e``, arithmetic (``+ - * / ** %``), comparisons (giving 0 or 1),
``&`` and ``|`` between comparisons, and the functions below — so a formula can compute but not
reach anything else. Evaluation is vectorised with numpy (:func:`compile_expression`), or done
in torch on one point (:func:`torch_expression`, differentiable: PDE coefficients inside residual
losses). A formula may also name *parameters* (e.g. ``mu`` of a parametric PDE), given as keyword
values when it is evaluated.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["FUNCTIONS", "compile_expression", "expression_names", "torch_expression"]

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
TORCH_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
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
    "minimum": torch.minimum,
    "maximum": torch.maximum,
    "where": torch.where,
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


def _parse(text: str, name: str, parameters: tuple[str, ...]) -> ast.Expression:
    """The checked syntax tree of ``text``; ``ValueError`` naming ``name`` otherwise."""
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
            node.id in VARIABLES
            or node.id in CONSTANTS
            or node.id in FUNCTIONS
            or node.id in parameters
        ):
            raise ValueError(
                f"{name}: unknown name {node.id!r} in {text!r}; use "
                f"{', '.join((*VARIABLES, *parameters))}, pi, e and {sorted(FUNCTIONS)}"
            )
    return tree


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
    code = compile(_parse(text, name, parameters), f"<{name}>", "eval")

    def evaluate(x: npt.NDArray[np.float64], **values: float) -> npt.NDArray[np.float64]:
        points = np.asarray(x, dtype=np.float64)
        namespace = {
            "__builtins__": {},
            **FUNCTIONS,
            **CONSTANTS,
            **{v: points[i] for i, v in enumerate(VARIABLES) if i < points.shape[0]},
            **{p: float(values.get(p, 0.0)) for p in parameters},
        }
        with np.errstate(all="ignore"):
            value = eval(code, namespace)
        return np.broadcast_to(np.asarray(value, dtype=np.float64), points.shape[1:]).copy()

    evaluate.__doc__ = text
    return evaluate


def torch_expression(
    text: str, name: str = "expression", parameters: tuple[str, ...] = ()
) -> Callable[..., torch.Tensor]:
    """A function ``(x (gdim,), *parameter values) -> scalar tensor`` of one point in torch,
    differentiable in ``x`` and usable under ``torch.func`` transforms; coordinates beyond
    ``gdim`` are 0. The parameter values are tensors or numbers, in the order of ``parameters``.

    Raises:
        ValueError: as :func:`compile_expression`.
    """
    code = compile(_parse(text, name, parameters), f"<{name}>", "eval")
    constants = {k: float(v) for k, v in CONSTANTS.items()}

    def evaluate(x: torch.Tensor, *values: torch.Tensor | float) -> torch.Tensor:
        zero = torch.zeros((), dtype=torch.float64)
        namespace = {
            # torch's C code imports through the calling frame's builtins; the formula itself
            # cannot name __import__ (only whitelisted names pass the parser)
            "__builtins__": {"__import__": __import__},
            **TORCH_FUNCTIONS,
            **constants,
            **{v: x[i] if i < x.shape[0] else zero for i, v in enumerate(VARIABLES)},
            **dict(zip(parameters, values, strict=True)),
        }
        value = eval(code, namespace)
        return torch.as_tensor(value, dtype=torch.float64) + zero

    evaluate.__doc__ = text
    return evaluate
