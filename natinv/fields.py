"""Neural fields on DOLFINx function spaces: values, Jacobians and vector-Jacobian products.

A :class:`NeuralField` is a torch module ``x -> z`` (a built-in :func:`mlp` or any user module),
followed by an output transform (identity, exp, softplus, bounded sigmoid), attached to a
DOLFINx function space ``W_h`` whose degrees of freedom are point evaluations (Lagrange of any
degree, continuous or discontinuous, scalar or blocked). The field's coefficient vector is
``k(θ) = transform(network(x_i; θ))`` at the interpolation points ``x_i`` of ``W_h``.

Parallel contract: θ is identical on all ranks. Each rank evaluates the network only at the
interpolation points of the dofs it owns; ghost entries of a :class:`dolfinx.fem.Function` are
filled by a forward scatter. Arrays returned by :meth:`NeuralField.values` and
:meth:`NeuralField.jacobian` hold owned rows only, in PETSc's unrolled order (dof, component),
the order of the matrices DOLFINx assembles on ``W_h``.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import basix
import dolfinx.fem
import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from natinv import layered, parallel
from natinv.parallel import Comm

__all__ = [
    "ACTIVATIONS",
    "TRANSFORMS",
    "Bounded",
    "Exp",
    "FourierFeatures",
    "Identity",
    "InputChain",
    "NeuralField",
    "OutputScale",
    "ReferenceBox",
    "Softplus",
    "Transform",
    "fill_jacobian",
    "make_transform",
    "mlp",
    "reference_length",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sin": lambda: _Sin(),
}


class _Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class OutputScale(nn.Module):
    """Multiplies by a fixed ``scale`` (a buffer, not trained): the unit of a network's output.

    The network then has to reach ``u / scale``: a scale well below the solution's magnitude
    takes a network from its random start far enough that its hidden layers learn (in the lazy
    regime, a network whose initial output is as large as its target fits it by barely moving
    its features: Chizat, Oyallon & Bach, *On lazy training in differentiable programming*,
    NeurIPS 2019). Measured in ``bench/ritz.py``."""

    def __init__(self, scale: float, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"Invalid output scale {scale}: must be a finite number > 0")
        self.register_buffer("scale", torch.tensor(float(scale), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):g}"


def mlp(
    widths: Sequence[int],
    activation: str = "tanh",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    scale: float = 1.0,
) -> nn.Sequential:
    """A fully connected network with the given layer widths, e.g. ``[2, 32, 32, 1]``.

    Weights are drawn with torch's default (Kaiming-uniform) initialisation from a generator
    seeded with ``seed``, so every rank builds the same network. ``scale ≠ 1`` multiplies the
    output by it (:class:`OutputScale`).

    Raises:
        ValueError: fewer than two widths, a non-positive width, an unknown activation, or a
            scale that is not a finite number > 0.
    """
    widths = list(widths)
    if len(widths) < 2 or any(int(w) != w or w < 1 for w in widths):
        raise ValueError(f"Invalid MLP widths {widths}: need at least two positive integers")
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b, dtype=dtype))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        if scale != 1.0:
            layers.append(OutputScale(scale, dtype=dtype))
        return nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(state)


class FourierFeatures:
    """An input map ``x ↦ (x, sin 2πBx, cos 2πBx)`` with ``B`` (``count × d``) drawn once from
    ``N(0, scale²)`` by a generator seeded with ``seed`` (the same on every rank): random Fourier
    features (Tancik et al. 2020), which let a small network represent finer detail — ``scale``
    sets the frequencies it starts from. ``width`` is the network's input width,
    ``d + 2·count``."""

    def __init__(self, inputs: int, count: int, scale: float, seed: int = 0) -> None:
        if not (count >= 1 and inputs >= 1 and scale > 0 and math.isfinite(scale)):
            raise ValueError(
                f"Invalid Fourier features: {count} features of {inputs} inputs, scale {scale}"
            )
        generator = torch.Generator().manual_seed(seed)
        self.frequencies = (
            2.0
            * math.pi
            * scale
            * torch.randn((count, inputs), generator=generator, dtype=torch.float64)
        )
        self.width = inputs + 2 * count
        self.count, self.scale = count, scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.frequencies.T
        return torch.cat([x, torch.sin(z), torch.cos(z)], dim=-1)

    def __repr__(self) -> str:
        return f"FourierFeatures(count={self.count}, scale={self.scale})"


class ReferenceBox:
    """An input map ``x ↦ (x − lower) / length``: coordinates in units of the domain's size,
    so that a network (and its Fourier features' frequencies) sees the same inputs whether the
    mesh is in metres, millimetres or microns. ``length`` is the largest side of the box (one
    factor for every axis: shapes keep their aspect), so a mesh on ``[0, 1]^d`` is read as it
    is. :meth:`of` takes a mesh's bounding box."""

    def __init__(self, lower: npt.ArrayLike, length: float) -> None:
        lower = np.asarray(lower, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(lower)) and length > 0 and math.isfinite(length)):
            raise ValueError(f"Invalid reference box: lower corner {lower}, length {length}")
        self.lower = torch.as_tensor(lower, dtype=torch.float64)
        self.length = float(length)

    @classmethod
    def of(cls, mesh: Any) -> ReferenceBox:
        """The bounding box of a DOLFINx mesh over all ranks. Collective."""
        gdim = mesh.geometry.dim
        x = mesh.geometry.x[:, :gdim]
        big = np.finfo(np.float64).max
        lower = np.min(x, axis=0, initial=big)
        upper = np.max(x, axis=0, initial=-big)
        lower = -parallel.allreduce_max_array(mesh.comm, -lower)
        upper = parallel.allreduce_max_array(mesh.comm, upper)
        return cls(lower, float(np.max(upper - lower)))

    @classmethod
    def of_corners(cls, lower: npt.ArrayLike, upper: npt.ArrayLike) -> ReferenceBox:
        """The box with these corners (its largest side the length)."""
        lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        return cls(lower, float(np.max(upper - lower)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d = self.lower.shape[0]
        if x.shape[-1] == d:
            return (x - self.lower) / self.length
        # a parametric field's inputs (x, μ): only the coordinates are mapped
        return torch.cat([(x[..., :d] - self.lower) / self.length, x[..., d:]], dim=-1)

    def __repr__(self) -> str:
        return f"ReferenceBox(lower={self.lower.tolist()}, length={self.length:g})"


class InputChain:
    """Input maps applied in turn, e.g. a :class:`ReferenceBox`, then
    :class:`FourierFeatures`."""

    def __init__(self, *maps: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.maps = maps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.maps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return " → ".join(repr(m) for m in self.maps)


def reference_length(field: Any) -> float:
    """The length unit of a field's inputs: its :class:`ReferenceBox`'s length (alone or
    first in an :class:`InputChain`), else 1."""
    step = getattr(field, "input_map", None)
    if isinstance(step, InputChain) and step.maps:
        step = step.maps[0]
    return step.length if isinstance(step, ReferenceBox) else 1.0


def fill_jacobian(
    out: npt.NDArray[np.float64],
    per_point: Callable[..., dict[str, torch.Tensor]],
    params: dict[str, torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    rows_per_point: int,
    step: int,
    field: NeuralField,
    first_row: int = 0,
) -> None:
    """Write the rows of a Jacobian into ``out`` chunk by chunk of ``step`` points:
    ``per_point(params, *chunk)`` maps each input to ``{parameter name: (n, rows_per_point,
    *shape)}``, laid out in ``field``'s flat θ order, starting at ``first_row``. Local."""
    count = inputs[0].shape[0]
    for start in range(0, count, step):
        stop = min(start + step, count)
        rows = slice(first_row + start * rows_per_point, first_row + stop * rows_per_point)
        blocks = per_point(params, *(x[start:stop] for x in inputs))
        offset = 0
        for name, size in zip(field.parameter_names, field.parameter_sizes, strict=True):
            out[rows, offset : offset + size] = parallel.numpy_from_torch(
                blocks[name].reshape((stop - start) * rows_per_point, size)
            )
            offset += size


class Transform:
    """An elementwise output transform ``z -> k``, differentiable by torch."""

    name = "transform"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse(self, k: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``z`` with ``transform(z) = k`` (used to initialise a network near a given field)."""
        raise NotImplementedError

    derivative: Callable[[torch.Tensor], torch.Tensor] | None = None
    """``T'(z)`` value by value, when known: the field's Jacobian then takes the explicit
    layered path (:mod:`natinv.layered`); without it, torch.func's."""

    def __repr__(self) -> str:
        return self.name


class Identity(Transform):
    """``k = z``."""

    name = "identity"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def derivative(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.ones_like(z)

    def inverse(self, k: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.asarray(k, dtype=np.float64)


class Exp(Transform):
    """``k = exp(z)``: a positive field whose logarithm is the network."""

    name = "exp"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return torch.exp(z)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.exp(z)

    def inverse(self, k: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.log(np.asarray(k, dtype=np.float64))


class Softplus(Transform):
    """``k = log(1 + exp(z))``: positive, and linear for large ``z``."""

    name = "softplus"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(z)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # torch's softplus is z itself above its threshold (20)
        return torch.where(z > 20.0, torch.ones_like(z), torch.sigmoid(z))

    def inverse(self, k: npt.ArrayLike) -> npt.NDArray[np.float64]:
        k = np.asarray(k, dtype=np.float64)
        return k + np.log(-np.expm1(-k))


class Bounded(Transform):
    """``k = a + (b - a) sigmoid(z)``: a field with values in ``(a, b)``."""

    name = "bounded"

    def __init__(self, lower: float, upper: float) -> None:
        lower, upper = float(lower), float(upper)
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise ValueError(f"Invalid bounds for the bounded transform: [{lower}, {upper}]")
        self.lower, self.upper = lower, upper

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.lower + (self.upper - self.lower) * torch.sigmoid(z)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        s = torch.sigmoid(z)
        return (self.upper - self.lower) * s * (1.0 - s)

    def inverse(self, k: npt.ArrayLike) -> npt.NDArray[np.float64]:
        s = (np.asarray(k, dtype=np.float64) - self.lower) / (self.upper - self.lower)
        return np.log(s) - np.log1p(-s)

    def __repr__(self) -> str:
        return f"bounded({self.lower}, {self.upper})"


TRANSFORMS: dict[str, type[Transform]] = {
    "identity": Identity,
    "exp": Exp,
    "softplus": Softplus,
    "bounded": Bounded,
}


def make_transform(spec: str | Transform | tuple[str, float, float]) -> Transform:
    """A transform from a name (``"exp"``), ``("bounded", a, b)``, or a :class:`Transform`."""
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, tuple | list) and len(spec) == 3 and spec[0] == "bounded":
        return Bounded(spec[1], spec[2])
    if spec == "bounded":
        raise ValueError("The bounded transform needs its bounds: ('bounded', lower, upper)")
    if isinstance(spec, str) and spec in TRANSFORMS:
        return TRANSFORMS[spec]()
    raise ValueError(
        f"Unknown output transform {spec!r}; choose one of identity, exp, softplus, "
        "('bounded', lower, upper)"
    )


def same_space(a: dolfinx.fem.FunctionSpace, b: dolfinx.fem.FunctionSpace) -> bool:
    """Whether two spaces are the same: one object, or one mesh and one element."""
    return a == b or (a.mesh is b.mesh and a.ufl_element() == b.ufl_element())


def _check_space(space: dolfinx.fem.FunctionSpace) -> None:
    element = space.ufl_element()
    family = getattr(element, "element_family", None)
    if (
        getattr(element, "is_mixed", False)
        or getattr(element, "is_quadrature", False)
        or family != basix.ElementFamily.P
        or not space.element.interpolation_ident
    ):
        name = family.name if family is not None else type(element).__name__
        raise ValueError(
            f"NeuralField: unsupported element {name} ({element}); a neural field needs a space "
            "whose dofs are point values: Lagrange of any degree, continuous or discontinuous "
            "(DG0 included), scalar, vector or tensor valued"
        )


class NeuralField:
    """A neural network evaluated at the interpolation points of a DOLFINx function space.

    Args:
        space: the field's function space ``W_h`` (Lagrange/DG, scalar or blocked).
        network: a torch module mapping points ``(n, gdim)`` to ``(n, value_size)`` (or ``(n,)``
            for a scalar space). Its trainable parameters (``requires_grad``) form θ. Built-in:
            ``mlp([gdim, 32, 32, value_size])``.
        transform: output transform, a name (``"identity"``, ``"exp"``, ``"softplus"``),
            ``("bounded", a, b)`` or a :class:`Transform`.
        input_map: optional ``(x: Tensor (n, gdim)) -> Tensor (n, d)`` applied before the network
            (e.g. scaling to ``[-1, 1]``); must be a torch function. For a parametric field it
            receives the points and the PDE parameters side by side, ``(n, gdim + q)``.
        mu: for a *parametric* field ``k(x; μ)``: the value of the ``q`` PDE parameters ``μ``
            at which the field is evaluated on its space (:meth:`set_mu` changes it). The
            network then takes ``(x, μ)``, ``gdim + q`` inputs per point.
        jacobian_memory: bytes of working memory a Jacobian chunk may use (default 1 GiB); the
            result array itself is the caller's and not counted.
        check: verify at construction and on every :meth:`set_parameters` that θ is identical on
            all ranks (one broadcast and compare; off by default).

    The constructor is collective over ``space.mesh.comm``: θ is taken from rank 0's network and
    broadcast, so ranks always start from the same parameters.
    """

    def __init__(
        self,
        space: dolfinx.fem.FunctionSpace,
        network: nn.Module,
        transform: str | Transform | tuple[str, float, float] = "identity",
        *,
        input_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
        jacobian_memory: int = 2**30,
        check: bool = False,
        mu: npt.ArrayLike | None = None,
    ) -> None:
        self.comm: Comm = space.mesh.comm
        with parallel.collective(self.comm, "NeuralField"):
            _check_space(space)
            self.transform = make_transform(transform)
            if not isinstance(network, nn.Module):
                raise TypeError(f"NeuralField: network must be a torch.nn.Module, got {network!r}")
            if jacobian_memory < 2**20:
                raise ValueError(f"Invalid jacobian_memory {jacobian_memory}: need >= 1 MiB")
        self.space = space
        # a float64 copy: the caller's module is neither converted nor overwritten by θ
        self.network = copy.deepcopy(network).to(dtype=torch.float64)
        self.input_map = input_map
        self.jacobian_memory = int(jacobian_memory)
        self.check = check

        index_map = space.dofmap.index_map
        self.block_size = int(space.dofmap.index_map_bs)
        self.num_owned_nodes = int(index_map.size_local)
        self.num_owned = self.num_owned_nodes * self.block_size
        self.num_global = int(index_map.size_global) * self.block_size
        gdim = space.mesh.geometry.dim
        coords = space.tabulate_dof_coordinates()[: self.num_owned_nodes, :gdim]
        self.points = parallel.torch_from_numpy(np.ascontiguousarray(coords))
        self.mu: torch.Tensor | None = None
        self.num_mu = 0
        if mu is not None:
            self.num_mu = int(np.asarray(mu).size)
            parallel.check_all(
                self.comm, self.num_mu > 0, "NeuralField: mu= needs at least one PDE parameter"
            )
            self.set_mu(mu)

        self.parameter_names = [n for n, p in self.network.named_parameters() if p.requires_grad]
        self.parameter_shapes = [
            p.shape for n, p in self.network.named_parameters() if p.requires_grad
        ]
        self.parameter_sizes = [int(math.prod(s)) for s in self.parameter_shapes]
        self._frozen = {
            n: p.detach() for n, p in self.network.named_parameters() if not p.requires_grad
        }
        self._frozen.update(dict(self.network.named_buffers()))
        self.num_parameters = int(sum(self.parameter_sizes))
        parallel.check_all(
            self.comm,
            self.num_parameters > 0,
            "NeuralField: the network has no trainable parameters",
        )

        local = torch.cat([p.detach().reshape(-1) for _, p in self._trainable()]).numpy()
        self._theta = parallel.bcast_array(self.comm, local)
        self._load_into_network(self._theta)

        with parallel.collective(
            self.comm,
            f"NeuralField: evaluating the network at inputs of shape (n, {gdim + self.num_mu})",
        ):
            # a rank may own no dof: it probes the origin (any point shows the output shape)
            sample = (
                self.points[:1]
                if self.points.shape[0]
                else torch.zeros((1, gdim), dtype=torch.float64)
            )
            probe = self._point_function(self._theta_tensor(self._theta), sample)
            if probe.shape != (1, self.block_size):
                raise ValueError(
                    f"the network maps a point to shape {tuple(probe.shape[1:])}, but the space "
                    f"has {self.block_size} component(s) per dof"
                )

    # -- parameters ---------------------------------------------------------------------------

    def _trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.network.named_parameters() if p.requires_grad]

    @property
    def parameters(self) -> npt.NDArray[np.float64]:
        """A copy of θ (float64, length ``num_parameters``, identical on all ranks)."""
        return self._theta.copy()

    def set_parameters(self, theta: npt.ArrayLike) -> None:
        """Set θ (the same vector on every rank; checked for shape and finiteness). Collective."""
        theta = self.validated(theta)
        if self.check:
            parallel.check_replicated(self.comm, theta, "NeuralField parameters θ")
        self._theta = theta.copy()
        self._load_into_network(self._theta)

    def validated(self, theta: npt.ArrayLike | None) -> npt.NDArray[np.float64]:
        """θ as a float64 array, checked for shape and finiteness on every rank (None: the
        current θ). Collective."""
        if theta is None:
            return self._theta
        array = np.asarray(theta, dtype=np.float64)
        parallel.check_all(
            self.comm,
            array.shape == (self.num_parameters,),
            lambda: f"θ has shape {array.shape}, expected ({self.num_parameters},)",
        )
        parallel.ensure_finite(self.comm, array, "θ (network parameters)")
        return array

    def _load_into_network(self, theta: npt.NDArray[np.float64]) -> None:
        with torch.no_grad():
            offset = 0
            for (_, p), size in zip(self._trainable(), self.parameter_sizes, strict=True):
                p.copy_(parallel.torch_from_numpy(theta[offset : offset + size]).reshape(p.shape))
                offset += size

    def set_mu(self, mu: npt.ArrayLike) -> None:
        """Evaluate a parametric field at the PDE parameters ``μ`` (``q`` values, the same on
        every rank) from now on: values, Jacobians, functions. Collective."""
        array = np.asarray(mu, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            self.num_mu > 0 and array.size == self.num_mu,
            lambda: (
                f"μ has {array.size} values, but the field takes {self.num_mu} PDE parameters"
                + ("" if self.num_mu else " (it was built without mu=)")
            ),
        )
        parallel.ensure_finite(self.comm, array, "the PDE parameters μ")
        self.mu = parallel.torch_from_numpy(array.copy())

    def _theta_tensor(self, theta: npt.NDArray[np.float64]) -> torch.Tensor:
        return parallel.torch_from_numpy(theta)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trainable parameters as named views into the flat vector θ."""
        params: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape, size in zip(
            self.parameter_names, self.parameter_shapes, self.parameter_sizes, strict=True
        ):
            params[name] = theta[offset : offset + size].reshape(shape)
            offset += size
        return params

    # -- evaluation ---------------------------------------------------------------------------

    def apply(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        mu: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Field values ``(n, block_size)`` at points ``x (n, gdim)`` for named parameters
        (as from :meth:`unflatten`); differentiable, for composing with ``torch.func``.

        A parametric field takes ``mu`` as ``(q,)`` (one μ for all points) or ``(n, q)``;
        default the field's current μ."""
        inputs = self.network_inputs(x, mu)
        z = functional_call(self.network, {**self._frozen, **params}, (inputs,))
        if z.ndim == 1:
            z = z.unsqueeze(-1)
        return self.transform(z.flatten(1))  # (n, block size), also for n = 0

    def network_inputs(self, x: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        """What the network reads at points ``x``: ``(x, μ)`` for a parametric field, through
        the input map if any."""
        if self.num_mu:
            mu = self.mu if mu is None else mu
            assert mu is not None
            x = torch.cat([x, mu.expand(x.shape[0], self.num_mu)], dim=1)
        return self.input_map(x) if self.input_map is not None else x

    def _point_function(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Field values ``(n, block_size)`` at points ``x (n, gdim)`` for flat parameters."""
        return self.apply(self.unflatten(theta), x)

    def torch_values(self, theta: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable field values, flattened in (dof, component) order.

        Args:
            theta: flat parameters as a float64 tensor (may require grad).
            points: evaluation points ``(n, gdim)``; default the owned interpolation points.
        """
        x = self.points if points is None else points
        return self._point_function(theta, x).reshape(-1)

    def values(self, theta: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """Owned coefficients ``k(θ)`` (length ``num_owned``); θ defaults to the current one."""
        t = self._theta_tensor(self.validated(theta))
        with torch.no_grad():
            return parallel.numpy_from_torch(self.torch_values(t))

    def evaluate(
        self, points: npt.ArrayLike, theta: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float64]:
        """The field at arbitrary points ``(n, gdim)`` → ``(n, block_size)`` (local, no MPI)."""
        x = parallel.torch_from_numpy(np.atleast_2d(np.asarray(points, dtype=np.float64)))
        t = self._theta_tensor(self.validated(theta) if theta is not None else self._theta)
        with torch.no_grad():
            return parallel.numpy_from_torch(self._point_function(t, x))

    def function(
        self, theta: npt.ArrayLike | None = None, out: dolfinx.fem.Function | None = None
    ) -> dolfinx.fem.Function:
        """The field as a :class:`dolfinx.fem.Function` with ghosts updated. Collective.

        Args:
            theta: parameters (default: the current ones).
            out: a Function on the same space to fill in place (a new one otherwise).
        """
        if out is None:
            out = dolfinx.fem.Function(self.space, name="field")
        elif out.function_space != self.space:
            raise ValueError("NeuralField.function: `out` lives on another function space")
        out.x.array[: self.num_owned] = self.values(theta)
        out.x.scatter_forward()
        return out

    # -- derivatives --------------------------------------------------------------------------

    def chunk_size(self) -> int:
        """Points per Jacobian chunk so that a chunk's working memory fits ``jacobian_memory``.

        Per point, the vectorised reverse pass holds the point's gradient rows
        (``block_size × P`` doubles) and temporaries of about the same size: ``bench/gram.py``
        measures about two such copies per point, and three are reserved here. torch's own fixed
        workspace (some 10–100 MiB) comes on top, so very small budgets are not kept exactly.
        """
        per_point = 8 * self.num_parameters * self.block_size * 3 + 8 * 1024
        return max(1, self.jacobian_memory // per_point)

    def jacobian(
        self, theta: npt.ArrayLike | None = None, out: npt.NDArray[np.float64] | None = None
    ) -> npt.NDArray[np.float64]:
        """The owned rows of ``J = ∂k/∂θ``, shape ``(num_owned, P)``. Local (no MPI).

        Computed point-chunk by point-chunk, so the working memory stays within
        ``jacobian_memory``: for Linear/activation networks with a built-in transform by one
        batched backward sweep (:mod:`natinv.layered`), otherwise with ``torch.func`` (per-point
        reverse mode).

        Args:
            theta: parameters (default: the current ones).
            out: array of shape ``(num_owned, P)`` to write into (any memory order, e.g. the
                column-major local block of a PETSc dense matrix); a new C-ordered array if None.
        """
        t = self._theta_tensor(self.validated(theta))
        if out is None:
            out = np.empty((self.num_owned, self.num_parameters), dtype=np.float64)
        elif out.shape != (self.num_owned, self.num_parameters):
            raise ValueError(
                f"jacobian: out has shape {out.shape}, expected "
                f"({self.num_owned}, {self.num_parameters})"
            )

        derivative = self.transform.derivative
        if derivative is not None and layered.supports(self.network):

            def per_point(params: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
                inputs = self.network_inputs(x)
                return layered.layered_jacobian(self.network, params, inputs, derivative)

        else:
            # Differentiate with respect to each parameter tensor, not the flat θ: the backward
            # of slicing θ would scatter every per-point gradient into a P-long zero vector.
            def at_point(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return self.apply(params, x.unsqueeze(0))[0]

            per_point = vmap(jacrev(at_point, argnums=0), in_dims=(None, 0))
        params = {name: p.detach() for name, p in self.unflatten(t).items()}
        with torch.no_grad():
            fill_jacobian(
                out, per_point, params, (self.points,), self.block_size, self.chunk_size(), self
            )
        return out

    def jvp(
        self, direction: npt.ArrayLike, theta: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float64]:
        """``J v`` on the owned rows (a field-space vector) for a parameter direction ``v``."""
        t = self._theta_tensor(self.validated(theta))
        v = parallel.torch_from_numpy(np.asarray(direction, dtype=np.float64).reshape(-1))
        if v.shape != t.shape:
            raise ValueError(f"jvp: direction has length {v.numel()}, expected {t.numel()}")
        _, tangent = jvp(self.torch_values, (t,), (v,))
        return parallel.numpy_from_torch(tangent)

    def vjp(
        self, weights: npt.ArrayLike, theta: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float64]:
        """``Jᵀ w`` summed over ranks, for ``w`` given on the owned rows. Collective.

        The result is identical on every rank (an allreduce of the local products).
        """
        t = self._theta_tensor(self.validated(theta)).clone().requires_grad_(True)
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        parallel.check_all(
            self.comm,
            w.shape == (self.num_owned,),
            lambda: f"vjp: weights have length {w.size}, expected {self.num_owned} owned entries",
        )
        values = self.torch_values(t)
        # a scalar, not grad_outputs=w: the latter makes torch import sympy (about 1 s, once)
        (grad,) = torch.autograd.grad((values * parallel.torch_from_numpy(w)).sum(), t)
        return parallel.allreduce_array(self.comm, parallel.numpy_from_torch(grad))

    def __repr__(self) -> str:
        return (
            f"NeuralField(P={self.num_parameters}, dofs={self.num_global}, "
            f"block_size={self.block_size}, transform={self.transform}"
            + (f", mu={self.mu.tolist()}" if self.mu is not None else "")
            + ")"
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (sizes, transform, network)."""
        return {
            "parameters": self.num_parameters,
            "dofs": self.num_global,
            "block_size": self.block_size,
            "transform": repr(self.transform),
            "network": str(self.network),
            **({"mu": self.mu.tolist()} if self.mu is not None else {}),
        }
