"""The torch internals this library reads (all named in ``weightnorm._torch_compat``), each
checked on its own on every torch release CI runs: when torch changes one, this file fails and
names what to update, instead of a migration silently doing the wrong thing."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import cast

import pytest
import torch
from torch import nn
from torch.nn.utils import _named_member_accessor, parametrize

import weightnorm as wn
from weightnorm import _torch_compat as compat


def test_legacy_weight_norm_is_a_forward_pre_hook_with_name_and_dim() -> None:
    with warnings.catch_warnings():  # torch deprecates its legacy API; we read it on purpose
        warnings.simplefilter("ignore", FutureWarning)
        layer = nn.utils.weight_norm(nn.Linear(3, 4))
    hooks = [h for h in layer._forward_pre_hooks.values() if isinstance(h, compat.LegacyHook)]
    assert len(hooks) == 1, "torch's legacy weight norm hook changed: update _torch_compat"
    assert (hooks[0].name, hooks[0].dim) == ("weight", 0)
    assert list(layer._parameters) == ["bias", "weight_g", "weight_v"]  # the order we register
    (found,) = compat.find_torch_weight_norms(layer)
    assert (found.kind, found.name, found.dim) == ("legacy", "weight", 0)
    assert found.g is layer.weight_g
    assert found.v is layer.weight_v


def test_parametrize_weight_norm_is_a_class_named__WeightNorm_with_dim() -> None:
    layer = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 3), dim=0)
    (p,) = layer.parametrizations["weight"]
    assert type(p).__name__ == "_WeightNorm", "update _torch_compat._is_torch_weight_norm"
    assert p.dim == 0
    assert type(layer).__bases__ == (nn.Conv1d,)  # the parametrized class torch builds
    assert "weight" in type(layer).__dict__  # a property per parametrized name
    names = [n for n, _ in layer.named_parameters()]
    assert names == [
        "bias",
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    ]
    whole = nn.utils.parametrizations.weight_norm(nn.Linear(3, 2), dim=None)
    assert whole.parametrizations.weight.original0.shape == ()  # torch's whole-tensor g is 0-d


def test_parametrize_weight_norm_leaves_a_compat_hook_closing_over_the_name() -> None:
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(3, 4))
    names = []
    for hook in layer._load_state_dict_pre_hooks.values():
        fn = getattr(hook, "hook", hook)
        names.append(getattr(fn, "__name__", ""))
        if fn.__name__ == "_weight_norm_compat_hook":
            assert "name" in fn.__code__.co_freevars, "update _torch_compat.take_apart"
    assert "_weight_norm_compat_hook" in names, "update _torch_compat.take_apart"
    wn.replace_torch_weight_norm(layer)
    assert not layer._load_state_dict_pre_hooks  # it was found and dropped


def test_fused_kernels_and_torchs_removal() -> None:
    v, g = torch.randn(4, 3), torch.rand(4, 1) + 0.5
    w = compat.torch_removal(v, g, 0)
    torch.testing.assert_close(w, g * v / v.norm(dim=1, keepdim=True))
    w2, norms = compat.fused_weight_norm(v, g, 0)
    torch.testing.assert_close(w2, w)
    # the unclamped per-unit norms (the eps check, the optimizer's kept norms)
    torch.testing.assert_close(norms, v.norm(dim=1, keepdim=True))
    # its backward, which the optimizer-level mode calls with those norms: paper eq. 3
    grad_w = torch.randn(4, 3)
    grad_v, grad_g = compat.fused_weight_norm_backward(grad_w, v, g, norms, 0)
    v_ref, g_ref = v.clone().requires_grad_(True), g.clone().requires_grad_(True)
    (g_ref * v_ref / v_ref.norm(dim=1, keepdim=True)).backward(grad_w)
    torch.testing.assert_close(grad_v, v_ref.grad)
    torch.testing.assert_close(grad_g, g_ref.grad)
    # its autograd node takes a post hook that replaces its outputs (the exact second order)
    vr = v.clone().requires_grad_(True)
    out, _ = compat.fused_weight_norm(vr, g, 0)
    assert out.grad_fn is not None
    out.grad_fn.register_hook(lambda inputs, outputs: (torch.full_like(vr, 7.0), None))
    out.sum().backward()
    assert vr.grad is not None
    assert bool((vr.grad == 7.0).all())


def test_capturing() -> None:
    v = torch.randn(3)
    assert not compat.capturing()
    seen: list[bool] = []
    torch.func.vmap(lambda x: seen.append(compat.capturing()) or x)(v.unsqueeze(0))
    torch.jit.trace(lambda x: seen.append(compat.capturing()) or x, (v,), check_trace=False)
    assert seen == [True, True]


def test_rnn_cache() -> None:
    """nn.RNNBase's cache of its weights: its names, the two rebuilds we override, and the
    list its forward reads (rebuilt by ours reading each weight once)."""
    lstm = nn.LSTM(2, 3)
    assert compat.rnn_weight_names(lstm) == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_ih_l0",
        "bias_hh_l0",
    ]
    assert callable(lstm._init_flat_weights)
    assert callable(lstm._update_flat_weights)  # called by every forward
    compat.read_rnn_weights(lstm, partial(getattr, lstm), graph=False)
    assert lstm._flat_weights[0] is lstm.weight_ih_l0
    assert lstm._flat_weight_refs[0]() is lstm.weight_ih_l0
    state = lstm.__getstate__()
    compat.drop_rnn_weights(state, {"weight_hh_l0"})
    assert state["_flat_weights"][1] is None
    assert state["_flat_weights"][0] is lstm.weight_ih_l0
    same = nn.LSTM(2, 3)
    same.load_state_dict(lstm.state_dict())
    x = torch.randn(4, 1, 2)
    torch.testing.assert_close(lstm(x)[0], same(x)[0])  # the forward reads the cache


def test_foreach_copy() -> None:
    a, b = [torch.zeros(2), torch.zeros(3)], [torch.ones(2), torch.full((3,), 2.0)]
    compat.foreach_copy_(a, b)
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_functional_call_swaps_a_parameter_slot_in_place() -> None:
    """swap_tensor writes ``module._parameters[name]`` directly for a name in ``_parameters``
    (our slot of a normalized weight holds None), and back afterwards."""
    layer = nn.Linear(3, 2)
    layer._parameters["weight"] = None
    w = torch.ones(2, 3)
    orig = _named_member_accessor.swap_tensor(layer, "weight", w)
    assert orig is None
    assert layer._parameters["weight"] is w
    _named_member_accessor.swap_tensor(layer, "weight", orig)
    assert layer._parameters["weight"] is None


def test_local_rows_of_a_dtensor() -> None:
    assert compat.local_rows(torch.randn(3)) is None
    if torch.distributed.is_available():  # the import that moved in torch 2.5
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:
            from torch.distributed._tensor import DTensor
        assert isinstance(DTensor, type)


# --- how torch's removal functions find what they remove (weightnorm._torch_removal) ----------


def test_legacy_removal_finds_its_hook_through_items_and_deletes_its_key() -> None:
    """``torch.nn.utils.remove_weight_norm`` looks through ``_forward_pre_hooks.items()`` for an
    instance of its hook class with the name, calls its ``remove(module)``, deletes its key."""
    layer = nn.Linear(3, 2)
    removed: list[tuple[nn.Module, str]] = []
    hooks = compat.HookDict()
    hooks.hidden = {"weightnorm.weight": compat.RemovalHook("weight", 0, _record(removed))}
    layer.__dict__["_forward_pre_hooks"] = hooks
    assert not hooks  # hidden entries do not count
    assert nn.utils.remove_weight_norm(layer, "weight") is layer
    assert removed == [(layer, "weight")]
    assert hooks.hidden == {}  # its key deleted (the removal itself may have dropped it first)
    with pytest.raises(ValueError, match="weight_norm of 'weight' not found"):
        nn.utils.remove_weight_norm(layer, "weight")


def _record(log: list[tuple[nn.Module, str]]) -> Callable[[nn.Module, str], None]:
    return lambda module, name: log.append((module, name))


def test_module_call_skips_hooks_when_the_hook_dicts_test_empty() -> None:
    """``nn.Module.__call__`` calls ``forward`` directly when its hook dicts are empty (their
    truthiness): a hidden entry is not called then; with a hook of the module's own, every
    entry ``items()`` lists is called."""
    layer = nn.Linear(3, 2)
    called: list[str] = []
    hooks = compat.HookDict()
    hooks.hidden = {"x": lambda module, inputs: called.append("hidden")}
    layer.__dict__["_forward_pre_hooks"] = hooks
    layer(torch.randn(1, 3))
    assert called == []
    handle = layer.register_forward_pre_hook(lambda module, inputs: called.append("own"))
    layer(torch.randn(1, 3))
    assert called == ["own", "hidden"]
    handle.remove()
    assert not hooks
    assert len(hooks.hidden) == 1


def _recording_linear() -> tuple[nn.Linear, nn.Parameter, list[str]]:
    """A Linear whose ``parametrizations`` and ``weight`` record what torch's removal does
    with them, built as ``weightnorm._torch_removal`` builds its view: an empty ModuleDict that
    contains "weight", an entry with ``is_tensor`` and ``original``, then (once ``original``
    was read) a ``parametrizations`` that is not a ModuleDict."""
    events: list[str] = []
    layer = nn.Linear(3, 2)
    weight = cast(nn.Parameter, layer._parameters.pop("weight"))

    class Entry:
        is_tensor = True

        @property
        def original(self) -> torch.Tensor:
            events.append("original")
            return weight

    class Deleting:
        def __delitem__(self, key: str) -> None:
            gone = "weight" not in type(layer).__dict__
            events.append(f"del parametrizations[{key!r}], class attribute deleted: {gone}")

    class View(nn.ModuleDict):
        def __len__(self) -> int:
            return 0

        def __contains__(self, key: object) -> bool:
            return key == "weight"

        def __getitem__(self, key: str) -> Entry:
            events.append(f"parametrizations[{key!r}]")
            return Entry()

    def read(module: nn.Module) -> torch.Tensor:
        events.append("read weight")
        return weight

    def view(module: nn.Module) -> object:
        return Deleting() if "original" in events else View()

    def delete(module: nn.Module) -> None:
        events.append("delattr parametrizations")

    namespace = {"weight": property(read), "parametrizations": property(view, None, delete)}
    layer.__class__ = type("Recording", (nn.Linear,), namespace)
    return layer, weight, events


def test_remove_parametrizations_runs_the_sequence_torch_removal_follows() -> None:
    """The steps of ``parametrize.remove_parametrizations(module, name)`` that
    ``weightnorm._torch_removal`` relies on, in order."""
    layer, weight, events = _recording_linear()
    parametrize.remove_parametrizations(layer, "weight")
    update = "torch's remove_parametrizations changed: update weightnorm._torch_removal"
    assert events == [
        "parametrizations['weight']",
        "original",
        "read weight",
        "del parametrizations['weight'], class attribute deleted: True",
        "delattr parametrizations",
    ], update
    assert layer._parameters["weight"] is weight, update  # original registered
    assert type(layer) is nn.Linear, update  # the class's first base restored
    # leave_parametrized=False: the same without the read
    layer, weight, events = _recording_linear()
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    assert events == [
        "parametrizations['weight']",
        "original",
        "del parametrizations['weight'], class attribute deleted: True",
        "delattr parametrizations",
    ], update
