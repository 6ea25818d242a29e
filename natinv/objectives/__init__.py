"""Objectives: a loss of the network parameters θ with its gradient.

Every objective offers ``value(θ)``, ``value_and_gradient(θ)`` and a :class:`~natinv.gram.Gram`
matching its natural metric, the protocol the optimizers drive.
"""

from natinv.objectives.fitting import FieldFit
from natinv.objectives.pinn import PINN, Term
from natinv.objectives.ritz import Ritz

__all__ = ["PINN", "FieldFit", "Ritz", "Term"]
