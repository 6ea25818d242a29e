"""natinv: identify unknown fields of PDE models with neural networks and natural gradients.

The public API is re-exported here and loaded on first use (``natinv.NeuralField`` imports torch
and DOLFINx then), so that the command line answers ``--help`` and case-file errors without
loading them. The PyPI DOLFINx wheel's libraries (``dolfinx_solver``) are loaded right away, so
that ``import natinv`` before ``dolfinx``/``petsc4py`` is always safe.
"""

import contextlib
import importlib
from typing import Any

with contextlib.suppress(ImportError):
    import dolfinx_solver  # noqa: F401  (must precede dolfinx and petsc4py)

__version__ = "0.1.0"

_API = {
    "Bounded": "natinv.fields",
    "Exp": "natinv.fields",
    "FourierFeatures": "natinv.fields",
    "InputChain": "natinv.fields",
    "ReferenceBox": "natinv.fields",
    "OutputScale": "natinv.fields",
    "Identity": "natinv.fields",
    "NeuralField": "natinv.fields",
    "Softplus": "natinv.fields",
    "Transform": "natinv.fields",
    "mlp": "natinv.fields",
    "Gram": "natinv.gram",
    "GramOperator": "natinv.gram",
    "LevenbergMarquardt": "natinv.directions",
    "NaturalSolver": "natinv.directions",
    "assemble_metric": "natinv.metrics",
    "energy": "natinv.metrics",
    "h1": "natinv.metrics",
    "l2": "natinv.metrics",
}
_MODULES = ("objectives", "optim", "parallel")

__all__ = sorted([*_API, *_MODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"natinv.{name}")
    else:
        raise AttributeError(f"module 'natinv' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
