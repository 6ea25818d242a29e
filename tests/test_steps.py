"""Step-size rules: Armijo backtracking, the log grid, the step-norm constraint."""

from __future__ import annotations

import dolfinx
import numpy as np
import pytest
from helpers import unit_square
from test_gram import RandomFeatures

import natinv
from natinv.objectives import FieldFit
from natinv.optim import Armijo, LogGridLineSearch, NormConstraint


@pytest.fixture
def quadratic(comm):
    """L(θ) = ½‖Jθ − f‖²_M with J constant: the natural direction is the Newton step."""
    space = dolfinx.fem.functionspace(unit_square(comm, 8), ("Lagrange", 1))
    field = natinv.NeuralField(space, RandomFeatures(features=8))
    matrix = natinv.l2(space)
    objective = FieldFit(field, lambda x: np.cos(2 * x[0]) + x[1], matrix)
    value, gradient = objective.value_and_gradient()
    solver = natinv.NaturalSolver(objective.gram, "cholesky")
    d = solver.solve(gradient)
    yield objective, field.parameters, value, gradient, d
    solver.destroy()
    objective.destroy()
    matrix.destroy()


def test_armijo_takes_the_full_newton_step_on_a_quadratic(quadratic):
    objective, theta, value, gradient, d = quadratic
    eta, _new, new_value = Armijo()(objective, theta, value, d, float(gradient @ d))
    assert eta == 1.0
    assert new_value <= value - 1e-4 * float(gradient @ d)
    assert new_value == pytest.approx(LogGridLineSearch()(objective, theta, value, d)[2])


def test_armijo_backtracks_and_gives_up_on_an_ascent_direction(quadratic):
    objective, theta, value, gradient, d = quadratic
    eta, _, new_value = Armijo(initial=8.0)(objective, theta, value, d, float(gradient @ d))
    assert eta in (1.0, 0.5, 0.25) and new_value < value  # 8 overshoots; halving recovers
    eta, new, new_value = Armijo()(objective, theta, value, -d, float(gradient @ -d))
    assert eta == 0.0 and new_value == value and np.array_equal(new, theta)


def test_adaptive_armijo_starts_from_twice_the_last_step_and_shares_it(quadratic):
    """``adaptive=True``: the first trial is 2 × the last accepted η (its limited versions, the
    momentum step's trials, read and write the same memory, which a checkpoint carries); on a
    direction scaled by 1e4 (as a function-space metric's may be) the second call takes 2 state
    evaluations where the plain rule takes the 14 trials again."""
    objective, theta, value, gradient, d = quadratic
    counted = _Counted(objective)
    rule = Armijo(adaptive=True)
    long = 1e4 * d
    slope = float(gradient @ long)
    eta, _, first = rule(counted, theta, value, long, slope)
    assert eta == 2.0**-13 and first < value and counted.calls == 14
    counted.calls = 0
    eta2, _, _ = rule.limited(3)(counted, theta, value, long, slope)
    assert eta2 == eta and counted.calls == 2  # 2η overshoots once, η fits
    assert rule.state_dict() == {"last": eta}
    other = Armijo(adaptive=True)
    other.load_state_dict(rule.state_dict())
    counted.calls = 0
    assert other(counted, theta, value, long, slope)[0] == eta and counted.calls == 2
    counted.calls = 0
    assert Armijo()(counted, theta, value, long, slope)[0] == eta and counted.calls == 14


class _Counted:
    """An objective that counts its evaluations."""

    def __init__(self, objective) -> None:  # type: ignore[no-untyped-def]
        self.objective, self.calls = objective, 0

    def value(self, theta):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.objective.value(theta)


def test_norm_constraint_caps_the_parameter_step(quadratic):
    objective, theta, value, gradient, d = quadratic
    radius = 0.1 * np.linalg.norm(d)
    eta, new, new_value = NormConstraint(LogGridLineSearch(), radius)(
        objective, theta, value, d, float(gradient @ d)
    )
    assert np.linalg.norm(new - theta) <= radius * (1 + 1e-12)
    assert new_value < value and eta == pytest.approx(radius / np.linalg.norm(d))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Armijo(initial=0.0), "Invalid initial step size"),
        (lambda: Armijo(shrink=1.0), "Invalid backtracking factor"),
        (lambda: Armijo(c=0.0), "Invalid Armijo constant"),
        (lambda: NormConstraint(LogGridLineSearch(), -1.0), "Invalid step-norm radius"),
        (lambda: natinv.optim.make_step_rule("wolfe"), "Unknown step rule"),
    ],
)
def test_bad_step_rule_settings_name_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_limited_armijo_rule_stops_after_its_backtracks():
    """Armijo.limited(k) tries at most k + 1 steps (1, ½, …, 2⁻ᵏ) and then takes none; a rule
    that does not backtrack is its own limited form."""
    from natinv.optim.steps import Armijo, FixedStep

    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        def value(self, theta):  # a loss no step along the direction lowers
            self.calls += 1
            return 1.0 + float(np.sum(np.asarray(theta) ** 2))

    objective = Counting()
    eta, _, value = Armijo().limited(3)(objective, np.zeros(2), 1.0, np.ones(2), slope=1.0)
    assert (eta, value, objective.calls) == (0.0, 1.0, 4)
    fixed = FixedStep(0.5)
    assert fixed.limited(3) is fixed
