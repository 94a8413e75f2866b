"""The torch internals this library reads, each checked on its own: when torch changes one,
this file fails and names what to update, instead of a migration silently doing the wrong thing.

pyproject.toml declares the torch versions CI tests (``torch>=2.13``); a newer torch that passes
this file and the suite is supported.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

import weightnorm as wn
from weightnorm import _reparam, _torch_compat


def test_legacy_weight_norm_is_a_forward_pre_hook_with_name_and_dim() -> None:
    with warnings.catch_warnings():  # torch deprecates its legacy API; we read it on purpose
        warnings.simplefilter("ignore", FutureWarning)
        layer = nn.utils.weight_norm(nn.Linear(3, 4))
    hooks = [
        h for h in layer._forward_pre_hooks.values() if isinstance(h, _torch_compat._LegacyHook)
    ]
    assert len(hooks) == 1, "torch's legacy weight norm hook changed: update _torch_compat"
    assert (hooks[0].name, hooks[0].dim) == ("weight", 0)
    assert set(layer._parameters) == {"weight_g", "weight_v", "bias"}


def test_parametrize_weight_norm_is_a_class_named__WeightNorm_with_dim() -> None:
    layer = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 3), dim=0)
    (p,) = layer.parametrizations["weight"]
    assert type(p).__name__ == "_WeightNorm", "update _torch_compat._is_torch_parametrize"
    assert p.dim == 0
    assert type(layer).__bases__ == (nn.Conv1d,)  # the parametrized class torch builds
    assert "weight" in type(layer).__dict__  # a property per parametrized name


def test_parametrize_weight_norm_leaves_a_compat_hook_closing_over_the_name() -> None:
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(3, 4))
    names = []
    for hook in layer._load_state_dict_pre_hooks.values():
        fn = getattr(hook, "hook", hook)
        names.append(getattr(fn, "__name__", ""))
        if fn.__name__ == "_weight_norm_compat_hook":
            assert "name" in fn.__code__.co_freevars, "update _torch_compat._drop_compat_hook"
    assert "_weight_norm_compat_hook" in names, "update _torch_compat._drop_compat_hook"
    wn.replace_torch_weight_norm(layer)
    assert not layer._load_state_dict_pre_hooks  # it was found and dropped


def test_torch_weight_norm_kernel_and_rnn_cache() -> None:
    v, g = torch.randn(4, 3), torch.rand(4, 1) + 0.5
    w = torch._weight_norm(v, g, 0)
    torch.testing.assert_close(w, g * v / v.norm(dim=1, keepdim=True))
    w2, norms = torch._weight_norm_interface(v, g, 0)
    torch.testing.assert_close(w2, w)
    assert norms.shape == (4, 1)
    # the unclamped per-unit norms (functional's eps check, optim's cached norms)
    torch.testing.assert_close(norms, v.norm(dim=1, keepdim=True))
    # and its backward, which optim calls directly with those norms: paper eq. 3
    grad_w = torch.randn(4, 3)
    grad_v, grad_g = torch.ops.aten._weight_norm_interface_backward.default(grad_w, v, g, norms, 0)
    v_ref, g_ref = v.clone().requires_grad_(True), g.clone().requires_grad_(True)
    (g_ref * v_ref / v_ref.norm(dim=1, keepdim=True)).backward(grad_w)
    torch.testing.assert_close(grad_v, v_ref.grad)
    torch.testing.assert_close(grad_g, g_ref.grad)
    lstm = nn.LSTM(2, 3)
    assert "_flat_weights_names" in lstm.__dict__
    assert callable(lstm._init_flat_weights)


def test_functional_call_swaps_through_swap_tensor() -> None:
    code = _reparam._torch_swap_tensor_code()
    assert code is not None, "torch.nn.utils._named_member_accessor.swap_tensor moved"
    from torch.nn.utils._named_member_accessor import swap_tensor

    params = inspect.signature(swap_tensor).parameters
    assert list(params)[:3] == ["module", "name", "tensor"], "update _reparam._swap"
