"""Optimizers driving an objective's parameters θ: natural gradient descent and baselines."""

from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.steps import FixedStep, LogGridLineSearch, make_step_rule

__all__ = ["FixedStep", "LogGridLineSearch", "NaturalGradientDescent", "make_step_rule"]
