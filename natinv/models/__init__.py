"""Finite-element models from residual forms, and the built-in ones."""

from natinv.models.base import Model
from natinv.models.builtin import (
    diffusion,
    dirichlet,
    elasticity,
    nonlinear_diffusion,
    positive,
    reaction,
    source,
)
from natinv.models.transient import TransientModel, heat

__all__ = [
    "Model",
    "TransientModel",
    "diffusion",
    "dirichlet",
    "elasticity",
    "heat",
    "nonlinear_diffusion",
    "positive",
    "reaction",
    "source",
]
