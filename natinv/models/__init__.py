"""Finite-element models from residual forms, and the built-in ones."""

from natinv.models.base import Model
from natinv.models.builtin import (
    diffusion,
    dirichlet,
    elasticity,
    nonlinear_diffusion,
    positive,
    source,
)

__all__ = [
    "Model",
    "diffusion",
    "dirichlet",
    "elasticity",
    "nonlinear_diffusion",
    "positive",
    "source",
]
