"""Data-dependent initialization (Salimans & Kingma 2016, section 3), correct under DDP.

One forward pass over one batch initializes every weight-normalized layer in network order. A
hook on each layer runs it with ``g = 1`` and ``b = 0``, so its output is ``t = v.x/||v||`` per
output unit; it takes the mean ``mu`` and (population) standard deviation ``sigma`` of ``t`` over
the batch and every position, sets ``g = init_scale/sigma`` and ``b = -mu * init_scale/sigma``,
and hands the initialized output ``(t - mu) * init_scale/sigma`` to the next layer, so every
later layer initializes on already-initialized inputs. Under ``torch.distributed`` the sums,
sums of squares and counts are all-reduced, so every rank computes the statistics of the union of
all ranks' batches and ends with identical parameters.

``v`` keeps its values unless ``redraw_v=True`` (then ``v ~ N(0, 0.05)`` as in the paper): only
its direction matters to ``w``, and the direction of torch's default initialization is as good a
random start as the paper's Gaussian.

A unit whose pre-activations are (almost) constant on the batch (a dead unit: standard deviation
at most 1e-4 of their root mean square) has no scale to measure: dividing by its deviation would
make its ``g`` about 1e5. Such a unit keeps the ``g`` it had, its bias still centres it, and a
warning names the layer and how many units it has.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from ._errors import WeightNormError
from ._model import DEFAULT_LAYERS, apply_weight_norm, fold
from ._reparam import default_dim, weight_norm_specs
from .batchnorm import _MeanOnlyBatchNorm

__all__ = ["data_dependent_init", "data_dependent_init_plain"]

M = TypeVar("M", bound=nn.Module)

_VAR_EPS = 1e-10  # added to the variance, as the paper's code does
_DEAD = 1e-4  # a unit whose std is at most this fraction of its root mean square is dead


def _unit_axis(module: nn.Module) -> int:
    """The axis of the layer's output that indexes its output units."""
    return -1 if isinstance(module, nn.Linear) else 1


def _distributed() -> bool:
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def _moments(t: Tensor, axis: int, where: str) -> tuple[Tensor, Tensor]:
    """Mean and population variance per unit along ``axis`` (all-reduced under DDP), float64."""
    if t.shape[0] < 2:
        raise WeightNormError(
            f"data-dependent init needs a batch of at least 2 samples to estimate a standard "
            f"deviation; {where} got a batch of {t.shape[0]} (output shape {tuple(t.shape)})"
        )
    x = t.detach().movedim(axis, -1).reshape(-1, t.shape[axis]).double()  # (samples, units)
    stats = torch.cat([x.sum(0), (x * x).sum(0), x.new_tensor([x.shape[0]])])
    if _distributed():
        torch.distributed.all_reduce(stats)
    units = t.shape[axis]
    count = stats[-1]
    mean = stats[:units] / count
    var = (stats[units : 2 * units] / count - mean * mean).clamp_min(0.0)
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        raise WeightNormError(f"data-dependent init: {where} produced NaN or Inf statistics")
    return mean, var


def _broadcast(axis: int, ndim: int, values: Tensor) -> Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _check_finite(obj: Any, where: str) -> None:
    if isinstance(obj, Tensor):
        if obj.is_floating_point() and not torch.isfinite(obj).all():
            raise WeightNormError(
                f"data-dependent init got NaN or Inf in {where}; expected a finite batch"
            )
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _check_finite(item, f"{where}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            _check_finite(item, f"{where}[{key!r}]")


def _init_targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    targets = []
    for qualname, module in model.named_modules():
        spec = weight_norm_specs(module).get("weight")
        if spec is None:
            continue
        if not isinstance(module, DEFAULT_LAYERS):
            continue  # recurrent and embedding weights keep their standard init (paper, sec. 3)
        if spec.gain is not None:
            raise WeightNormError(
                f"data-dependent init sets g, and {qualname or 'the model'} has a fixed gain "
                "(weight_norm(..., gain=c)); expected a learned g on every weight-normalized "
                "layer (exclude the fixed-gain ones when applying weight norm, or skip this init)"
            )
        per_output = (spec.dim, spec.groups) == default_dim(module)
        if not per_output:
            raise WeightNormError(
                f"data-dependent init needs one g per output unit; {qualname or 'the model'} is "
                f"normalized along dim={spec.dim}, expected dim={default_dim(module)[0]}"
            )
        targets.append((qualname or type(module).__name__, module))
    return targets


@contextmanager
def _hooks(
    targets: list[tuple[str, nn.Module]], mobns: list[_MeanOnlyBatchNorm], init_scale: float
) -> Iterator[None]:
    handles = []
    done: set[int] = set()
    g_before: dict[int, Tensor] = {}

    # keyed by g: a layer called twice, or layers tied by apply_weight_norm (one g), initialize
    # on the first call only
    def pre_hook(module: nn.Module, args: Any) -> None:
        g = cast(Tensor, module.weight_g)
        if id(g) in done:
            return
        g_before[id(g)] = g.detach().reshape(-1).clone()
        g.fill_(1.0)
        if module.bias is not None:
            module.bias.zero_()  # type: ignore[operator]

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
            g = cast(Tensor, module.weight_g)
            if id(g) in done:
                return None
            done.add(id(g))
            axis = _unit_axis(module)
            mean, var = _moments(output, axis, name)
            scale = init_scale / torch.sqrt(var + _VAR_EPS)
            dead = var <= _DEAD**2 * (var + mean * mean)
            if bool(dead.any()):  # (the same units on every rank: the statistics are all-reduced)
                scale = torch.where(dead, g_before[id(g)].to(scale.dtype), scale)
                warnings.warn(
                    f"data-dependent init: {int(dead.sum())} of {dead.numel()} units of {name} "
                    f"have constant pre-activations on the init batch (std <= {_DEAD:g} x their "
                    "root mean square): they keep the g they had (the paper's 1/std would make it "
                    f"about {1 / _VAR_EPS**0.5:.0e}), and their bias centres them; a larger or "
                    "more varied batch may give them a scale",
                    stacklevel=2,
                )
            g.copy_(scale.reshape(g.shape))  # g's flat order is output-unit order
            bias = cast("Tensor | None", module.bias)
            if bias is not None:
                bias.copy_(-mean * scale)
                shift = _broadcast(axis, output.ndim, mean)
            else:
                shift = torch.zeros((), dtype=torch.float64)  # a following mean-only BN centres
            new = (output.double() - shift) * _broadcast(axis, output.ndim, scale)
            return new.to(output.dtype)

        return hook

    def mobn_hook(module: _MeanOnlyBatchNorm, args: Any, output: Tensor) -> Tensor:
        # a mean-only BN after an initialized layer: its bias plays the role of b (zero at init),
        # and its running mean starts at the exact (all-reduced) batch mean
        x = args[0]
        mean, _ = _moments(x, 1, type(module).__name__)
        module.bias.zero_()
        if module.running_mean is not None:
            module.running_mean.copy_(mean)
        return cast(Tensor, (x.double() - _broadcast(1, x.ndim, mean)).to(x.dtype))

    try:
        for name, module in targets:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(make_hook(name)))
        for module in mobns:
            handles.append(module.register_forward_hook(mobn_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def data_dependent_init(
    model: M,
    *inputs: Any,
    init_scale: float = 1.0,
    redraw_v: bool = False,
    **forward_kwargs: Any,
) -> M:
    r"""Initialize every weight-normalized layer of ``model`` from one batch (paper, section 3).

    Runs ``model(*inputs, **forward_kwargs)`` once, without building a graph. Each
    weight-normalized Linear/Conv/ConvTranspose layer, in the order the forward pass reaches it,
    computes ``t = v.x/||v||`` per output unit, then sets

    .. math::
        g = \frac{s}{\sigma[t]}, \qquad b = -\frac{\mu[t]\, s}{\sigma[t]}

    (``s = init_scale``; statistics over the batch and every position), so its output has
    mean 0 and standard deviation ``s`` on this batch, and passes that output on. A layer
    without bias sets only ``g``; a following mean-only batch norm then centres (its bias starts
    at 0 and its running mean at the batch mean). Under ``torch.distributed`` the statistics are
    all-reduced and parameters are first broadcast from rank 0, so every rank ends identical,
    equal to one process initializing on the union of the batches. The model's train/eval mode
    is kept; run it in the mode you train in (dropout then perturbs the statistics as in
    training).

    Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, section 3.

    Args:
        model (nn.Module): a model with weight-normalized layers (``wn.apply_weight_norm`` or
            ``WN*`` layers); a ``DistributedDataParallel`` wrapper is unwrapped.
        *inputs: the positional inputs of one batch (at least 2 samples, finite).
        init_scale (float, optional): target standard deviation of each layer's output, e.g.
            0.1 for the last layer of a residual branch. Default: ``1.0``.
        redraw_v (bool, optional): first draw every ``v`` from ``N(0, 0.05)`` as the paper did
            (only the direction of ``v`` matters). Default: ``False``.
        **forward_kwargs: keyword arguments of ``model.forward``.

    Returns:
        The same model.

    Raises:
        WeightNormError: no weight-normalized layer, a batch of one sample, NaN/Inf in the
            inputs or statistics, a layer normalized along a dim other than its output units,
            a layer with a fixed gain (``gain=c``: there is no g to set), or a non-positive
            ``init_scale``.

    Example::

        >>> import torch, weightnorm as wn
        >>> layers = [torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)]
        >>> net = wn.apply_weight_norm(torch.nn.Sequential(*layers))
        >>> x = torch.randn(256, 10) * 3 + 1
        >>> net = wn.data_dependent_init(net, x)
        >>> h = net[0](x)
        >>> abs(h.mean().item()) < 1e-5, round(h.std(0, unbiased=False).mean().item(), 4)
        (True, 1.0)
    """
    if not init_scale > 0:
        raise WeightNormError(f"init_scale must be > 0, got {init_scale!r}")
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    targets = _init_targets(inner)
    if not targets:
        raise WeightNormError(
            "data-dependent init found no weight-normalized Linear/Conv/ConvTranspose layer; "
            "apply wn.apply_weight_norm(model) first (or use wn.data_dependent_init_plain)"
        )
    _check_finite(list(inputs), "inputs")
    _check_finite(forward_kwargs, "forward_kwargs")
    mobns = [m for m in inner.modules() if isinstance(m, _MeanOnlyBatchNorm)]
    with torch.no_grad():
        if redraw_v:
            for _, module in targets:
                module.weight_v.normal_(0.0, 0.05)  # type: ignore[operator]
        if _distributed():
            for tensor in [*inner.parameters(), *inner.buffers()]:
                torch.distributed.broadcast(tensor, src=0)
        with _hooks(targets, mobns, float(init_scale)):
            inner(*inputs, **forward_kwargs)
    return model


def data_dependent_init_plain(
    model: M, *inputs: Any, init_scale: float = 1.0, **forward_kwargs: Any
) -> M:
    """The paper's "normal parameterization" baseline: data-dependent init of a plain network.

    Weight-normalizes every Linear/Conv/ConvTranspose layer not already normalized, runs
    :func:`data_dependent_init`, and folds those layers back into plain weights: the model keeps
    its ``torch.nn`` classes and parameters, initialized from the data.

    Example::

        >>> import torch, weightnorm as wn
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh())
        >>> net = wn.data_dependent_init_plain(net, torch.randn(64, 10))
        >>> type(net[0]) is torch.nn.Linear
        True
    """
    added = []
    for module in list(model.modules()):
        if isinstance(module, DEFAULT_LAYERS) and not weight_norm_specs(module):
            apply_weight_norm(module)
            added.append(module)
    data_dependent_init(model, *inputs, init_scale=init_scale, **forward_kwargs)
    for module in added:
        fold(module)
    return model
