"""natinv: identify unknown fields of PDE models with neural networks and natural gradients.

The public API is re-exported here. ``natinv.parallel`` is imported first: it loads the PyPI
DOLFINx wheel's libraries (``dolfinx_solver``) before anything imports ``dolfinx``/``petsc4py``.
"""

from natinv import parallel  # isort: skip  (must come first)
from natinv import objectives, optim
from natinv.fields import Bounded, Exp, Identity, NeuralField, Softplus, Transform, mlp
from natinv.gram import Gram, GramOperator, LevenbergMarquardt, NaturalSolver
from natinv.metrics import assemble_metric, energy, h1, l2

__version__ = "0.1.0"

__all__ = [
    "Bounded",
    "Exp",
    "Gram",
    "GramOperator",
    "Identity",
    "LevenbergMarquardt",
    "NaturalSolver",
    "NeuralField",
    "Softplus",
    "Transform",
    "__version__",
    "assemble_metric",
    "energy",
    "h1",
    "l2",
    "mlp",
    "objectives",
    "optim",
    "parallel",
]
