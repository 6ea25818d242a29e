"""Neural fields: values at interpolation points, Jacobians, vjp/jvp, transforms, bad input."""

from __future__ import annotations

import dolfinx
import numpy as np
import pytest
import torch
from helpers import gather_rows, unit_square

import natinv
from natinv.fields import ACTIVATIONS, mlp
from natinv.parallel import CollectiveError, allreduce_array


def field_on(comm, element, transform="identity", widths=(2, 6, 6), **kwargs):
    space = dolfinx.fem.functionspace(unit_square(comm), element)
    bs = space.dofmap.index_map_bs
    return natinv.NeuralField(space, natinv.mlp([*widths, bs], seed=3), transform, **kwargs)


SPACES = [
    (("Lagrange", 1), "exp"),
    (("Lagrange", 2), ("bounded", -1.0, 2.0)),
    (("DG", 0), "softplus"),
    (("Lagrange", 1, (2,)), "identity"),
]


@pytest.mark.parametrize(("element", "transform"), SPACES)
def test_jacobian_agrees_with_central_differences(comm, element, transform):
    """J v equals (k(θ + hv) − k(θ − hv)) / 2h to O(h²) for random directions v."""
    field = field_on(comm, element, transform)
    theta = field.parameters
    jac = field.jacobian()
    assert jac.shape == (field.num_owned, field.num_parameters)
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(3):
        v = rng.standard_normal(field.num_parameters)
        fd = (field.values(theta + h * v) - field.values(theta - h * v)) / (2 * h)
        err = allreduce_array(comm, np.array([np.sum((jac @ v - fd) ** 2), np.sum(fd**2)]))
        assert np.sqrt(err[0] / err[1]) < 1e-8


def test_jacobian_chunks_do_not_change_the_result(comm):
    """A 1 MiB working-memory budget (many chunks) gives the same J as one chunk (to round-off:
    batched BLAS kernels may sum in another order)."""
    big = field_on(comm, ("Lagrange", 2), widths=(2, 64, 64))
    small = natinv.NeuralField(big.space, big.network, jacobian_memory=2**20)
    assert small.chunk_size() < big.num_owned_nodes or big.num_owned_nodes == 0
    reference = big.jacobian()
    scale = np.abs(reference).max(initial=1.0)
    np.testing.assert_allclose(small.jacobian(), reference, rtol=0, atol=1e-14 * scale)


def test_vjp_is_the_transposed_jacobian_summed_over_ranks(comm):
    field = field_on(comm, ("Lagrange", 1, (2,)), "softplus")
    w = np.random.default_rng(comm.rank).standard_normal(field.num_owned)
    expected = allreduce_array(comm, field.jacobian().T @ w)
    np.testing.assert_allclose(field.vjp(w), expected, rtol=1e-12, atol=1e-14)


def test_jvp_is_the_jacobian_times_a_direction(comm):
    field = field_on(comm, ("Lagrange", 2), "exp")
    v = np.random.default_rng(1).standard_normal(field.num_parameters)
    np.testing.assert_allclose(field.jvp(v), field.jacobian() @ v, rtol=1e-12, atol=1e-14)


def test_function_fills_ghosts_with_the_network_at_ghost_points(comm):
    """Owned dofs are evaluated locally, ghosts arrive by scatter: all equal the network."""
    field = field_on(comm, ("Lagrange", 2), "exp")
    function = field.function()
    coords = field.space.tabulate_dof_coordinates()[:, :2]
    np.testing.assert_allclose(function.x.array, field.evaluate(coords)[:, 0], rtol=1e-14)


def test_vector_field_values_follow_petsc_unrolled_order(comm):
    """Row 2i + c of k is component c of the network at node i."""
    field = field_on(comm, ("Lagrange", 1, (2,)))
    nodes = field.space.tabulate_dof_coordinates()[: field.num_owned_nodes, :2]
    np.testing.assert_allclose(field.values().reshape(-1, 2), field.evaluate(nodes), rtol=1e-14)


def test_parameters_are_broadcast_from_rank_zero(comm):
    """Networks seeded differently on each rank still give one θ: rank 0's."""
    space = dolfinx.fem.functionspace(unit_square(comm), ("Lagrange", 1))
    field = natinv.NeuralField(space, natinv.mlp([2, 4, 1], seed=comm.rank))
    reference = natinv.mlp([2, 4, 1], seed=0)
    flat = torch.cat([p.detach().reshape(-1) for p in reference.parameters()]).numpy()
    np.testing.assert_array_equal(field.parameters, flat)


def test_check_mode_rejects_parameters_that_differ_between_ranks(comm):
    """Identical θ is accepted; θ that differs on some rank is rejected on every rank (the
    rejection needs two ranks, so the serial run checks acceptance only)."""
    field = field_on(comm, ("Lagrange", 1), check=True)
    field.set_parameters(field.parameters)
    if comm.size > 1:
        theta = field.parameters + comm.rank
        with pytest.raises(CollectiveError, match="differs between ranks"):
            field.set_parameters(theta)


def test_nan_in_theta_on_one_rank_is_an_error_on_every_rank(comm):
    field = field_on(comm, ("Lagrange", 1))
    theta = field.parameters
    if comm.rank == 0:
        theta[3] = np.nan
    with pytest.raises(CollectiveError, match="non-finite"):
        field.set_parameters(theta)


def test_wrong_theta_length_is_an_error(comm):
    field = field_on(comm, ("Lagrange", 1))
    with pytest.raises(CollectiveError, match="shape"):
        field.values(np.zeros(field.num_parameters + 1))


@pytest.mark.parametrize("element", [("N1curl", 1), ("RT", 1), ("Bubble", 3)])
def test_unsupported_element_is_one_clear_error(comm, element):
    space = dolfinx.fem.functionspace(unit_square(comm), element)
    with pytest.raises(CollectiveError, match="unsupported element"):
        natinv.NeuralField(space, natinv.mlp([2, 4, 2]))


def test_network_with_the_wrong_output_size_is_an_error(comm):
    space = dolfinx.fem.functionspace(unit_square(comm), ("Lagrange", 1, (2,)))
    with pytest.raises(CollectiveError, match="component"):
        natinv.NeuralField(space, natinv.mlp([2, 4, 3]))


def test_transforms_map_into_their_ranges_and_invert():
    z = torch.linspace(-20, 20, 101, dtype=torch.float64)
    for transform, lo, hi in [
        (natinv.Exp(), 0.0, np.inf),
        (natinv.Softplus(), 0.0, np.inf),
        (natinv.Bounded(0.5, 3.0), 0.5, 3.0),
    ]:
        k = transform(z).numpy()
        assert np.all(k >= lo) and np.all(k <= hi)
        middle = z.numpy()[30:70]  # away from saturation, where the inverse is well posed
        np.testing.assert_allclose(
            transform.inverse(transform(torch.tensor(middle)).numpy()), middle, rtol=1e-9, atol=1e-9
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cubic", "Unknown output transform"),
        ("bounded", "needs its bounds"),
        (("bounded", 2.0, 1.0), "Invalid bounds"),
    ],
)
def test_bad_transforms_name_the_value(spec, message):
    with pytest.raises(ValueError, match=message):
        natinv.fields.make_transform(spec)


def test_gathered_values_equal_the_network_at_gathered_points(comm):
    """The owned blocks of all ranks tile the space: no dof missing, none twice."""
    field = field_on(comm, ("Lagrange", 2))
    points = gather_rows(comm, field.points.numpy())
    values = gather_rows(comm, field.values())
    assert values.size == field.num_global
    np.testing.assert_allclose(values, field.evaluate(points)[:, 0], rtol=1e-14)


def test_input_map_and_a_3d_mesh_keep_the_jacobian_exact(comm):
    """On tetrahedra, with inputs mapped to [-1, 1]³ first, J still matches central differences."""
    mesh = dolfinx.mesh.create_unit_cube(comm, 3, 3, 3)
    space = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    field = natinv.NeuralField(
        space, natinv.mlp([3, 6, 1], seed=1), "exp", input_map=lambda x: 2 * x - 1
    )
    np.testing.assert_allclose(
        field.evaluate(np.array([[0.5, 0.5, 0.5]])),
        np.exp(field.network(torch.zeros(1, 3, dtype=torch.float64)).detach().numpy()),
        rtol=1e-14,
    )
    theta, v, h = field.parameters, np.linspace(-1, 1, field.num_parameters), 1e-5
    fd = (field.values(theta + h * v) - field.values(theta - h * v)) / (2 * h)
    err = allreduce_array(comm, np.array([np.sum((field.jacobian() @ v - fd) ** 2), np.sum(fd**2)]))
    assert np.sqrt(err[0] / err[1]) < 1e-8


def test_the_callers_module_is_neither_converted_nor_overwritten(comm):
    """A float32 module given to NeuralField stays float32 with its own values (the field
    works on a float64 copy, whose θ comes from rank 0)."""
    torch.manual_seed(comm.rank)  # different values on each rank: the copy takes rank 0's
    network = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    before = [p.detach().clone() for p in network.parameters()]
    space = dolfinx.fem.functionspace(unit_square(comm, 4), ("Lagrange", 1))
    field = natinv.NeuralField(space, network)
    field.set_parameters(field.parameters + 1.0)
    assert all(p.dtype == torch.float32 for p in network.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))
    assert all(p.dtype == torch.float64 for p in field.network.parameters())


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("transform", ["identity", "exp", "softplus", ("bounded", 0.5, 2.0)])
def test_layered_jacobian_equals_the_torch_func_one(comm, activation, transform):
    """The explicit backward sweep of natinv.layered (Linear layers and built-in activations)
    gives the Jacobian torch.func gives, to 1e-12 relative: scalar and vector fields, a frozen
    layer, a parametric field, an output unit."""
    from natinv import layered

    mesh = unit_square(comm)
    for element, mu, unit in [
        (("Lagrange", 1), None, 1.0),
        (("Lagrange", 1, (2,)), None, 1.0),
        (("DG", 0), [0.3], 1.0),
        (("Lagrange", 1), None, 0.3),
    ]:
        space = dolfinx.fem.functionspace(mesh, element)
        bs = space.dofmap.index_map_bs
        network = natinv.mlp([2 + (mu is not None), 7, 5, bs], activation, seed=4, scale=unit)
        network[0].bias.requires_grad_(False)
        field = natinv.NeuralField(space, network, transform, mu=mu)
        assert layered.supports(field.network)
        theta = 2.0 * field.parameters
        explicit = field.jacobian(theta)
        derivative = type(field.transform).derivative
        type(field.transform).derivative = None  # the torch.func path
        try:
            reference = field.jacobian(theta)
        finally:
            type(field.transform).derivative = derivative
        scale = max(float(np.abs(reference).max(initial=0.0)), 1e-300)
        assert np.abs(explicit - reference).max(initial=0.0) <= 1e-12 * scale


def test_networks_outside_the_layered_form_keep_the_torch_func_path(comm):
    """A network that is not Linear/activation layers, alternating, is not taken for one."""
    from torch import nn

    from natinv import layered

    assert not layered.supports(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1)))
    assert not layered.supports(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    assert not layered.supports(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    assert layered.supports(natinv.mlp([2, 3, 1]))
    assert layered.supports(natinv.mlp([2, 3, 1], scale=0.1))
    assert not layered.supports(nn.Sequential(natinv.OutputScale(0.1)))


def test_an_output_unit_multiplies_the_network_and_is_not_trained():
    """mlp(..., scale=σ) is σ times the same seed's network (its weights drawn alike); σ is a
    buffer, not a parameter; a scale that is not a finite number > 0 is refused."""
    x = torch.linspace(-1.0, 1.0, 14, dtype=torch.float64).reshape(7, 2)
    plain, scaled = mlp([2, 5, 1], seed=3), mlp([2, 5, 1], seed=3, scale=0.02)
    torch.testing.assert_close(scaled(x), 0.02 * plain(x), rtol=1e-15, atol=0)
    assert sum(p.numel() for p in scaled.parameters()) == sum(p.numel() for p in plain.parameters())
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="Invalid output scale"):
            mlp([2, 5, 1], scale=bad)
