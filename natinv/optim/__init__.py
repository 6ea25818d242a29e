"""Optimizers driving an objective's parameters θ: natural gradient descent and baselines."""

from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.steps import Armijo, FixedStep, LogGridLineSearch, NormConstraint, make_step_rule

__all__ = [
    "Armijo",
    "FixedStep",
    "LogGridLineSearch",
    "NaturalGradientDescent",
    "NormConstraint",
    "make_step_rule",
]
