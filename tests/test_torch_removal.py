"""PyTorch's own removal functions on this library's weight norms (weightnorm._torch_removal).

Inference scripts call ``torch.nn.utils.remove_weight_norm(layer)`` or
``parametrize.remove_parametrizations(layer, "weight")``; on our layers both must give what
``wn.remove_weight_norm`` gives, bit for bit, and cost nothing per forward."""

from __future__ import annotations

import copy
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import weightnorm as wn


def legacy(module: nn.Module, name: str) -> None:
    nn.utils.remove_weight_norm(module, name)


def parametrized(module: nn.Module, name: str) -> None:
    parametrize.remove_parametrizations(module, name)


REMOVERS = [legacy, parametrized]

LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "WNLinear": (lambda: wn.WNLinear(5, 3), (2, 5)),
    "WNConv1d": (lambda: wn.WNConv1d(2, 4, 3), (1, 2, 9)),
    "WNConvTranspose2d": (lambda: wn.WNConvTranspose2d(2, 4, 3), (1, 2, 4, 4)),
    "weight_norm(Conv2d)": (lambda: wn.weight_norm(nn.Conv2d(2, 4, 3)), (1, 2, 6, 6)),
    "weight_norm(ConvTranspose1d, groups=2)": (
        lambda: wn.weight_norm(nn.ConvTranspose1d(4, 6, 3, groups=2)),
        (1, 4, 5),
    ),
    "weight_norm(Linear, dim=None)": (lambda: wn.weight_norm(nn.Linear(5, 3), dim=None), (2, 5)),
    "WNLinear(gain=1.0)": (lambda: wn.WNLinear(5, 3, gain=1.0), (2, 5)),
}


def build(key: str) -> tuple[nn.Module, torch.Tensor]:
    make, shape = LAYERS[key]
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():  # g away from ||v||, so that a fold that ignored g would show
        layer.weight_g.mul_(torch.rand_like(layer.weight_g) + 0.5)
    return layer, torch.randn(shape)


def assert_same_module(a: nn.Module, b: nn.Module) -> None:
    assert type(a) is type(b)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert type(p) is type(q), name
        assert p.requires_grad == q.requires_grad, name
        assert torch.equal(p, q), name


@pytest.mark.parametrize("remove", REMOVERS)
@pytest.mark.parametrize("key", list(LAYERS))
def test_torch_removal_gives_what_ours_gives(key: str, remove: Callable[..., None]) -> None:
    layer, x = build(key)
    reference = wn.remove_weight_norm(copy.deepcopy(layer))
    v = layer.weight_v
    remove(layer, "weight")
    assert_same_module(layer, reference)
    assert layer.weight is v  # the same Parameter: an optimizer built before keeps it
    assert torch.equal(layer(x), reference(x))
    assert not wn.is_weight_normed(layer)
    assert not parametrize.is_parametrized(layer)
    hooks = layer._forward_pre_hooks
    assert not hooks
    assert list(hooks.items()) == []  # nothing left for torch's function to find
    # the module is a plain one again: it copies, pickles and saves whole
    assert_same_module(copy.deepcopy(layer), reference)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    assert_same_module(torch.load(buffer, weights_only=False), reference)


@pytest.mark.parametrize("remove", REMOVERS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_torch_removal_leaves_a_parameter_without_grad(
    remove: Callable[..., None], mode: str
) -> None:
    """torch's own parametrize removal leaves a buffer under no_grad; ours a Parameter."""
    layer, _ = build("WNConv1d")
    reference = wn.remove_weight_norm(copy.deepcopy(layer))
    with getattr(torch, mode)():
        remove(layer, "weight")
    assert_same_module(layer, reference)
    assert isinstance(layer.weight, nn.Parameter)


@pytest.mark.parametrize("remove", REMOVERS)
def test_torch_removal_of_one_of_two_names(remove: Callable[..., None]) -> None:
    """An LSTM with two normalized weights: each removal takes exactly its own."""
    torch.manual_seed(0)
    lstm = wn.weight_norm(wn.weight_norm(nn.LSTM(3, 4), "weight_ih_l0"), "weight_hh_l0")
    both = copy.deepcopy(lstm)
    x = torch.randn(5, 2, 3)
    remove(lstm, "weight_hh_l0")
    reference = wn.remove_weight_norm(copy.deepcopy(both), "weight_hh_l0")
    assert wn.is_weight_normed(lstm, "weight_ih_l0")
    assert not wn.is_weight_normed(lstm, "weight_hh_l0")
    assert_same_module(lstm, reference)
    assert torch.equal(lstm(x)[0], reference(x)[0])
    # the other one, with the other function
    other = parametrized if remove is legacy else legacy
    other(lstm, "weight_ih_l0")
    folded = wn.fold(copy.deepcopy(both))
    assert type(lstm) is nn.LSTM
    assert_same_module(lstm, folded)
    assert torch.equal(lstm(x)[0], folded(x)[0])


def test_parametrize_sees_each_normalized_name_and_no_parametrization() -> None:
    layer = wn.weight_norm(wn.WNLinear(3, 2), "bias", dim=None)
    assert parametrize.is_parametrized(layer, "weight")
    assert parametrize.is_parametrized(layer, "bias")
    assert not parametrize.is_parametrized(layer, "other")
    # no parametrization of torch's: code that tests for one is not misled
    assert not parametrize.is_parametrized(layer)
    assert parametrize.type_before_parametrizations(layer) is type(layer)
    assert "parametrizations" not in dict(layer.named_modules())
    assert "parametrizations" not in "".join(layer.state_dict())


def test_code_written_for_torchs_parametrize_reads_g_and_v() -> None:
    """The idiom ``if hasattr(m, "parametrizations"): g = m.parametrizations.weight.original0``
    (transformers' wav2vec2, test helpers) reads our g and v, the same objects, with no effect
    on the module."""
    layer, x = build("WNConv1d")
    before = layer(x)
    assert hasattr(layer, "parametrizations")
    entry = layer.parametrizations.weight
    assert entry.original0 is layer.weight_g
    assert entry.original1 is layer.weight_v
    assert layer.parametrizations["weight"].original1 is layer.weight_v
    assert type(layer) is wn.WNConv1d
    assert torch.equal(layer(x), before)
    assert not hasattr(layer.parametrizations, "bias")  # not normalized
    fixed = wn.WNLinear(3, 2, gain=1.0)  # a fixed gain: g is a buffer
    assert fixed.parametrizations.weight.original0 is fixed.weight_g


def test_leave_parametrized_false_is_refused_and_changes_nothing() -> None:
    """It would make v, the direction, the weight: a clear error naming wn.fold."""
    layer, x = build("WNConv1d")
    before = layer(x)
    cls = type(layer)
    with pytest.raises(wn.WeightNormError, match=r"leave_parametrized=False.*wn\.fold"):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    assert type(layer) is cls
    assert wn.is_weight_normed(layer)
    assert torch.equal(layer(x), before)
    parametrize.remove_parametrizations(layer, "weight")  # and it is still removable
    assert type(layer) is nn.Conv1d


def test_stacking_a_parametrization_on_a_normalized_name_names_fold() -> None:
    layer, x = build("WNLinear")
    before = layer(x)
    with pytest.raises(wn.WeightNormError, match=r"wn\.fold"):
        nn.utils.parametrizations.spectral_norm(layer)
    assert type(layer) is wn.WNLinear
    assert torch.equal(layer(x), before)
    wn.fold(layer)
    nn.utils.parametrizations.spectral_norm(layer)  # folded, it takes one
    assert parametrize.is_parametrized(layer, "weight")


def test_a_parametrization_of_another_tensor_still_works() -> None:
    """torch's parametrize on a tensor we do not normalize: registered, used and removed as
    torch does it, the weight norm untouched."""

    class Double(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return 2 * t

    layer, _ = build("WNLinear")
    bias = layer.bias.detach().clone()
    parametrize.register_parametrization(layer, "bias", Double())
    assert torch.equal(layer.bias, 2 * bias)
    assert parametrize.is_parametrized(layer)
    parametrize.remove_parametrizations(layer, "bias")
    assert type(layer) is wn.WNLinear
    assert torch.equal(layer.bias, 2 * bias)
    legacy(layer, "weight")
    assert type(layer) is nn.Linear


def test_the_hidden_hooks_cost_no_call_and_are_no_ops_on_the_slow_path() -> None:
    """nn.Module's fast path (no hooks: forward called directly) is kept; a module with a hook
    of its own calls it once per forward and nothing else changes."""
    layer, x = build("WNLinear")
    reference = wn.remove_weight_norm(copy.deepcopy(layer))
    assert not layer._forward_pre_hooks  # what nn.Module.__call__ tests
    calls: list[int] = []
    handle = layer.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    out = layer(x)
    assert calls == [1]
    assert torch.equal(out, reference(x))
    handle.remove()  # the user's handle still removes their hook
    assert not layer._forward_pre_hooks
    layer(x)
    assert calls == [1]
    legacy(layer, "weight")
    assert type(layer) is nn.Linear


def test_hooks_registered_before_weight_norm_keep_working() -> None:
    """A module with forward pre-hooks of its own keeps its hook dict (their handles hold it):
    the hooks run and are removed as before; torch's legacy function does not find the weight
    norm there (its own error), and the other ways remove it."""
    torch.manual_seed(0)
    calls: list[int] = []
    conv = nn.Conv1d(2, 3, 3)
    handle = conv.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    hooks = conv._forward_pre_hooks
    wn.weight_norm(conv)
    assert conv._forward_pre_hooks is hooks
    conv(torch.randn(1, 2, 5))
    assert calls == [1]
    with pytest.raises(ValueError, match="weight_norm of 'weight' not found"):
        legacy(conv, "weight")
    parametrized(conv, "weight")
    assert type(conv) is nn.Conv1d
    handle.remove()
    assert not conv._forward_pre_hooks


@pytest.mark.parametrize("remove", REMOVERS)
def test_copies_and_pickles_can_be_removed_by_torch(remove: Callable[..., None]) -> None:
    layer, x = build("WNConv1d")
    reference = wn.remove_weight_norm(copy.deepcopy(layer))
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        remove(other, "weight")
        assert_same_module(other, reference)
        assert torch.equal(other(x), reference(x))


def test_a_pickle_holds_no_trace_of_the_mechanism() -> None:
    """Pickled, the hook dict is a plain OrderedDict of the module's own hooks."""
    layer, _ = build("WNLinear")
    state = pickle.loads(pickle.dumps(layer._forward_pre_hooks))
    assert type(state) is OrderedDict
    assert state == OrderedDict()
    assert b"weightnorm._torch_compat" not in pickle.dumps(layer._forward_pre_hooks)


@pytest.mark.parametrize("remove", REMOVERS)
def test_torch_removal_follows_apply_and_remove(remove: Callable[..., None]) -> None:
    """Removed by ours and applied again, torch's functions find the new weight norm."""
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(3, 2))
    wn.remove_weight_norm(layer)
    with pytest.raises(ValueError, match="weight"):
        remove(layer, "weight")
    wn.weight_norm(layer, dim=None)
    reference = wn.remove_weight_norm(copy.deepcopy(layer))
    remove(layer, "weight")
    assert_same_module(layer, reference)


def test_replace_torch_weight_norm_then_torch_removal_is_fold() -> None:
    """The migration path: a model with torch's legacy hook and one with its parametrization,
    replaced, then removed by torch's functions as their scripts do."""
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        hooked = nn.utils.weight_norm(nn.Conv1d(2, 3, 3))
    model = nn.Sequential(hooked, nn.utils.parametrizations.weight_norm(nn.Conv1d(3, 1, 3)))
    wn.replace_torch_weight_norm(model)
    folded = wn.fold(copy.deepcopy(model))
    nn.utils.remove_weight_norm(model[0])
    parametrize.remove_parametrizations(model[1], "weight")
    x = torch.randn(1, 2, 8)
    for ours, reference in zip(model, folded, strict=True):
        assert_same_module(ours, reference)
    assert torch.equal(model(x), folded(x))
