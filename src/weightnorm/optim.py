"""Weight normalization at the optimizer: zero cost in the forward and backward passes.

The model keeps its plain weights. :class:`WeightNormOptimizer` owns ``g`` and ``v`` for each
normalized weight, and at every step converts ``grad_w`` into ``grad_g`` and ``grad_v`` with the
paper's eq. 3, lets the wrapped optimizer update ``g`` and ``v``, and writes ``w = g v/||v||``
back into the weight. The forward and backward passes are those of the plain network; the
trajectory is that of the reparameterized model (the paper authors' own Keras implementation
worked this way).

Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, eq. 2-3.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import functional as F
from ._errors import WeightNormError
from ._model import DEFAULT_LAYERS
from ._reparam import default_dim, weight_norm_specs

__all__ = ["WeightNormOptimizer"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_INTERFACE_BACKWARD = torch.ops.aten._weight_norm_interface_backward.default

#: torch.optim optimizers whose update of each element depends on that element (and its own
#: state) only, with per-tensor state that is the same for every tensor (a step count): one
#: flat tensor holding every ``g`` and ``v`` is updated exactly as the separate tensors would be.
_ELEMENTWISE: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta,
    torch.optim.ASGD, torch.optim.Rprop,
)  # fmt: skip


def _is_elementwise(factory: Callable[..., Any]) -> bool:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory in _ELEMENTWISE


class _Entry:
    """One normalized weight: the model's tensor ``w`` and the optimizer's ``g`` and ``v``.

    ``g`` and ``v`` are Parameters of their own, or views into the flat Parameter of a
    :class:`_Pack` (then ``g_grad``/``v_grad`` are the matching views of its gradient). On
    the CPU in float32/float64 with one g per first or last dim, the gradient conversion and the
    weight write use PyTorch's fused weight-norm kernels; the norms come from the last write, so
    they are not computed twice. Elsewhere the closed form is evaluated.
    """

    def __init__(self, name: str, w: nn.Parameter, dim: int | None, groups: int, eps: float):
        self.name, self.w, self.dim, self.groups, self.eps = name, w, dim, groups, eps
        with torch.no_grad():
            norm = F.norm_except_dim(w.detach(), dim, groups=groups)
        g_dtype = torch.float32 if w.dtype in _LOW_PRECISION else w.dtype
        self.g: Tensor = nn.Parameter(norm.to(g_dtype))
        self.v: Tensor = nn.Parameter(w.detach().clone())
        self.g_grad: Tensor | None = None
        self.v_grad: Tensor | None = None
        self.dims = tuple(F._reduce_dims(w.ndim, dim, groups))
        self.fusable = (
            groups == 1
            and dim is not None
            and dim in (0, w.ndim - 1)
            and len(self.dims) > 0
            and w.dtype in (torch.float32, torch.float64)
            and w.device.type == "cpu"
        )
        self.norms: Tensor | None = None  # from the last fused write, when every norm > eps
        self.write_weight()

    def to_g_v_grads(self) -> None:
        """grad_g = grad_w . v/||v||; grad_v = g/||v|| (grad_w - (grad_w . v)/||v||^2 v)."""
        grad_w = self.w.grad
        if grad_w is None:
            # separate g, v: not stepped; flat ones take a zero-gradient step (see the class)
            for t, view in ((self.g, self.g_grad), (self.v, self.v_grad)):
                if view is None:
                    t.grad = None
                else:
                    view.zero_()
            return
        v, g = self.v.detach(), self.g.detach()
        if self.norms is not None:
            grad_v, grad_g = _INTERFACE_BACKWARD(grad_w.contiguous(), v, g, self.norms, self.dim)
        else:
            x = F._grouped_view(v, self.groups) if self.groups > 1 else v
            gw = F._grouped_view(grad_w, self.groups) if self.groups > 1 else grad_w
            grad_v, grad_g = F.closed_form_grads(
                gw, x, g, F._norm(x, self.dims), self.dims, self.eps
            )
            grad_v, grad_g = grad_v.reshape(v.shape), grad_g.reshape(g.shape)
        if self.v_grad is None:
            self.v.grad = grad_v
        else:
            self.v_grad.copy_(grad_v)
        if self.g_grad is None:
            self.g.grad = grad_g.to(self.g.dtype)
        else:
            self.g_grad.copy_(grad_g)

    @torch.no_grad()
    def write_weight(self) -> None:
        """``w = g v/||v||`` into the model's weight (in place: the same Parameter)."""
        self.norms = None
        if self.fusable and self.g.dtype == self.v.dtype:
            norms = torch.linalg.vector_norm(self.v, 2, dim=self.dims, keepdim=True)
            if norms.min().item() > self.eps:
                torch.mul(self.v, self.g / norms, out=self.w.data)  # one pass, no temporary
                self.norms = norms
                return
        self.w.copy_(F.weight_norm(self.v, self.g, self.dim, self.eps, groups=self.groups))


class _Pack:
    """One flat Parameter holding the ``g`` and ``v`` of several weights (one dtype, one
    device). The wrapped optimizer steps it instead of two tensors per layer: on the CPU a
    torch.optim step costs some 15-30 microseconds per tensor besides the arithmetic, which for
    small layers is most of what weight norm would add to a step."""

    def __init__(self, tensors: list[tuple[_Entry, str]]) -> None:
        self.param = nn.Parameter(
            torch.cat([getattr(e, which).detach().reshape(-1) for e, which in tensors])
        )
        # one gradient buffer for every step: each slice is written at each step (no zeroing),
        # and no fresh memory for the allocator to fault in
        self.buffer = torch.empty_like(self.param)
        flat = self.param.detach()
        offset = 0
        for e, which in tensors:
            t = getattr(e, which)
            n = t.numel()
            setattr(e, which, flat[offset : offset + n].view(t.shape))
            setattr(e, which + "_grad", self.buffer[offset : offset + n].view(t.shape))
            offset += n

    def attach(self) -> None:
        """Make the buffer the flat Parameter's gradient (``zero_grad`` may have unset it)."""
        if self.param.grad is not self.buffer:
            self.param.grad = self.buffer


class WeightNormOptimizer(torch.optim.Optimizer):
    r"""Train a plain model as if it were weight-normalized, through any ``torch.optim`` optimizer.

    .. math::
        \nabla_g L = \frac{\nabla_{\mathbf w} L \cdot \mathbf v}{\|\mathbf v\|}, \qquad
        \nabla_{\mathbf v} L = \frac{g}{\|\mathbf v\|}\nabla_{\mathbf w} L
            - \frac{g\,\nabla_g L}{\|\mathbf v\|^2}\mathbf v

    The weights of every ``layers`` module of ``model`` (per output unit, as
    :func:`weightnorm.weight_norm` would) are represented by ``g = ||w||`` and ``v = w``, which the
    wrapped optimizer updates; every other parameter is updated directly. After each
    :meth:`step` the model's weights equal ``g v / ||v||``. Forward and backward cost nothing
    extra. The trajectory equals that of the model reparameterized by
    :func:`weightnorm.apply_weight_norm` under the same optimizer, up to float rounding.

    ``state_dict()`` holds the wrapped optimizer's state and every ``g`` and ``v``;
    ``load_state_dict`` restores both, so training resumes exactly (also write the model's own
    state dict). Use ``zero_grad`` as usual; the model's gradients are read at each step.

    Args:
        model (nn.Module): a plain model (layers normalized by this library are refused: they
            already are weight-normalized).
        optimizer (callable): builds the wrapped optimizer from a list of parameter groups,
            e.g. ``torch.optim.Adam`` or ``lambda groups: torch.optim.SGD(groups, momentum=0.9)``.
        layers (tuple of types, optional): modules whose ``weight`` is normalized.
            Default: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d.
        eps (float, optional): lower bound on ``||v||``. Default: ``1e-12``.
        flat (bool, optional): hand the wrapped optimizer every ``g`` and ``v`` (of one dtype
            and device) as one flat tensor instead of two tensors per layer: the same update
            for optimizers that act element by element, and fewer tensors to step (on the CPU
            that saves more than the conversion costs). Default ``None``: flat when
            ``optimizer`` is one of torch.optim's element-wise optimizers (SGD, Adam, AdamW,
            Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta, ASGD, Rprop, or a
            ``functools.partial`` of one), separate tensors otherwise (a factory function,
            optimizers with per-tensor rules such as LAMB or Shampoo). When flat, a weight that
            gets no gradient in a step still has its ``g`` and ``v`` stepped with a zero
            gradient (momentum carries them), as any flat-parameter optimizer does; pass
            ``False`` to skip them instead.
        **defaults: keyword arguments of ``optimizer`` (``lr=...``).

    Example::

        >>> import torch, weightnorm as wn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> opt = wn.optim.WeightNormOptimizer(net, torch.optim.Adam, lr=1e-2)
        >>> net(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step(); opt.zero_grad()
        >>> g = opt.weight_norm_parameters()["0.weight"][0]
        >>> bool(torch.allclose(net[0].weight.norm(dim=1), g.flatten()))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,
        layers: tuple[type[nn.Module], ...] = DEFAULT_LAYERS,
        eps: float = F.DEFAULT_EPS,
        flat: bool | None = None,
        **defaults: Any,
    ) -> None:
        entries: list[_Entry] = []
        normalized: set[int] = set()
        for qualname, module in model.named_modules():
            if weight_norm_specs(module):
                raise WeightNormError(
                    f"{qualname or 'the model'} is already weight-normalized by wn.weight_norm; "
                    "WeightNormOptimizer takes a plain model (wn.fold(model) first)"
                )
            if not isinstance(module, layers):
                continue
            w = module._parameters.get("weight")
            if w is None or not w.requires_grad or id(w) in normalized:
                continue
            dim, n_groups = default_dim(module)
            name = f"{qualname}.weight" if qualname else "weight"
            entries.append(_Entry(name, w, dim, n_groups, eps))
            normalized.add(id(w))
        if not entries:
            raise WeightNormError(
                f"no {', '.join(t.__name__ for t in layers)} weight to normalize in the model"
            )
        self._entries = entries
        if flat is None:
            flat = _is_elementwise(optimizer)
        stepped: list[Tensor]
        if flat:
            by_kind: dict[tuple[torch.dtype, torch.device], list[tuple[_Entry, str]]] = {}
            for e in entries:
                for which in ("g", "v"):
                    t = getattr(e, which)
                    by_kind.setdefault((t.dtype, t.device), []).append((e, which))
            self._packs = [_Pack(tensors) for tensors in by_kind.values()]
            stepped = [pack.param for pack in self._packs]
        else:
            self._packs = []
            stepped = [t for e in entries for t in (e.g, e.v)]
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in normalized]
        groups: list[dict[str, Any]] = [{"params": stepped}]
        if others:
            groups.append({"params": others})
        self.inner = optimizer(groups, **defaults)
        super().__init__([{"params": stepped}], {})
        # share the wrapped optimizer's groups and state: LR schedulers act on the real ones
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.defaults = self.inner.defaults

    def weight_norm_parameters(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{weight name: (g, v)}`` for every normalized weight (with ``flat``, views into the
        flat tensor the wrapped optimizer steps)."""
        return {e.name: (e.g, e.v) for e in self._entries}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Convert the weight gradients (eq. 3), step the wrapped optimizer, write the weights."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for pack in self._packs:
            pack.attach()
        for entry in self._entries:
            entry.to_g_v_grads()
        self.inner.step()
        for entry in self._entries:
            entry.write_weight()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the model's gradients and those of ``g`` and ``v``."""
        self.inner.zero_grad(set_to_none)  # also the flat gradients
        for entry in self._entries:
            if set_to_none:
                entry.w.grad = None
            elif entry.w.grad is not None:
                entry.w.grad.zero_()

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped optimizer's state and every ``g`` and ``v``."""
        return {
            "inner": self.inner.state_dict(),
            "weight_norm": {
                e.name: (e.g.detach().clone(), e.v.detach().clone()) for e in self._entries
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore :meth:`state_dict`'s content (and write the weights from ``g`` and ``v``)."""
        saved = state_dict.get("weight_norm")
        if not isinstance(saved, dict) or "inner" not in state_dict:
            raise WeightNormError(
                "expected a WeightNormOptimizer state dict with keys 'inner' and 'weight_norm'"
            )
        names = [e.name for e in self._entries]
        if sorted(saved) != sorted(names):
            raise WeightNormError(
                f"the state dict normalizes {sorted(saved)}, this optimizer {sorted(names)}"
            )
        with torch.no_grad():
            for entry in self._entries:
                g, v = saved[entry.name]
                entry.g.copy_(g)
                entry.v.copy_(v)
                entry.write_weight()
        self.inner.load_state_dict(state_dict["inner"])

    def __repr__(self) -> str:
        return f"WeightNormOptimizer({len(self._entries)} weights, {self.inner!r})"
