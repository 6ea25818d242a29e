"""Optimizers driving an objective's parameters θ: natural gradient descent and baselines."""

from natinv.optim.momentum import (
    HeavyBall,
    Momentum,
    NaturalHeavyBall,
    NaturalHeavyBallDiff,
    NaturalNesterov,
    Nesterov,
    NoMomentum,
    Spring,
)
from natinv.optim.natural import NaturalGradientDescent
from natinv.optim.sampled import SampledGaussNewton
from natinv.optim.steps import Armijo, FixedStep, LogGridLineSearch, NormConstraint, make_step_rule

__all__ = [
    "Armijo",
    "FixedStep",
    "HeavyBall",
    "LogGridLineSearch",
    "Momentum",
    "NaturalGradientDescent",
    "NaturalHeavyBall",
    "NaturalHeavyBallDiff",
    "NaturalNesterov",
    "Nesterov",
    "NoMomentum",
    "NormConstraint",
    "SampledGaussNewton",
    "Spring",
    "make_step_rule",
]
