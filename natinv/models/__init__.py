"""Finite-element models from residual forms, and the built-in ones."""

from natinv.models.base import ITERATIVE_OPTIONS, Model
from natinv.models.builtin import (
    diffusion,
    dirichlet,
    elasticity,
    nonlinear_diffusion,
    positive,
    reaction,
    rigid_body_modes,
    source,
)
from natinv.models.transient import TransientModel, heat

__all__ = [
    "ITERATIVE_OPTIONS",
    "Model",
    "TransientModel",
    "diffusion",
    "dirichlet",
    "elasticity",
    "heat",
    "nonlinear_diffusion",
    "positive",
    "reaction",
    "rigid_body_modes",
    "source",
]
