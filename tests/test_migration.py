"""Issue 21: a user's training script, unchanged but for one line, in the middle of a project:
the optimizer already built, a training checkpoint on disk (model and optimizer state), the
package's own model. Each test reproduces one of the cases that failed before."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
from torch import nn

import weightnorm as wn
from weightnorm.experiments import zoo

# one model per kind of torch weight norm: BigVGAN (torch's legacy hook, its ConvTranspose
# normalized per input channel) and transformers' SpeechT5 HiFi-GAN (torch's parametrize)
MODELS = ["bigvgan", "speecht5-hifigan"]
MISSING = zoo.missing_packages(MODELS)
needs_zoo = pytest.mark.skipif(
    bool(MISSING), reason=f"zoo packages not installed: {', '.join(MISSING)} (extra 'zoo')"
)


def train(model: nn.Module, opt: torch.optim.Optimizer, name: str, steps: range) -> list[float]:
    spec = zoo.ZOO[name]
    losses = []
    for step in steps:
        opt.zero_grad()
        loss = spec.loss(model, spec.inputs(step))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))  # HiFi-GAN's


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every effective weight ``g v/||v||`` and other parameter, by its plain key."""
    return wn.convert_state_dict(model.state_dict(), to="plain")


@needs_zoo
@pytest.mark.parametrize("name", MODELS)
def test_an_optimizer_built_before_the_switch_keeps_training_g_and_v(name: str) -> None:
    """Item 1: HiFi-GAN's train.py builds the optimizer, then (here) migrates the model. The
    migration kept v's object but made g a new one, so the optimizer silently stopped training
    g. Now both objects are kept and training matches torch's own weight norm step for step."""
    spec = zoo.ZOO[name]
    theirs, ours = spec.build(), spec.build()
    opt_theirs, opt_ours = adamw(theirs), adamw(ours)
    wn.replace_torch_weight_norm(ours)
    held = {id(p) for group in opt_ours.param_groups for p in group["params"]}
    assert all(id(p) in held for p in ours.parameters())  # the model reads what opt steps
    g = next(p for n, p in ours.named_parameters() if n.endswith("weight_g"))
    g0 = g.detach().clone()
    losses_ours = train(ours, opt_ours, name, range(3))
    losses_theirs = train(theirs, opt_theirs, name, range(3))
    assert not torch.equal(g.detach(), g0)  # g trains
    torch.testing.assert_close(losses_ours, losses_theirs, rtol=1e-6, atol=0)
    for key, w in weights(theirs).items():
        torch.testing.assert_close(weights(ours)[key], w, rtol=1e-5, atol=1e-7)


def checkpoint(name: str) -> bytes:
    """A HiFi-GAN style training checkpoint of the package's model with torch's weight norm,
    two steps in, as train.py writes it (each run reads its own copy: an optimizer shares the
    state tensors it loads)."""
    model = zoo.ZOO[name].build()
    opt = adamw(model)
    train(model, opt, name, range(2))
    buffer = io.BytesIO()
    torch.save({"generator": model.state_dict(), "optim_g": opt.state_dict(), "steps": 2}, buffer)
    return buffer.getvalue()


def load(data: bytes) -> dict[str, Any]:
    return cast(dict[str, Any], torch.load(io.BytesIO(data), weights_only=True))


@needs_zoo
@pytest.mark.parametrize("name", MODELS)
def test_resuming_a_torch_training_checkpoint_after_the_switch(name: str) -> None:
    """Item 2: resuming a torch optimizer state after switching failed at the first step with a
    broadcast error: optimizer states map to parameters by position, and ours were registered
    [g, v, bias] where torch's are [bias, g, v]. Now the checkpoint (model and optimizer
    state) loads strictly after the switch and training continues step for step as if it had
    never switched."""
    data = checkpoint(name)
    spec = zoo.ZOO[name]
    theirs = spec.build()
    opt_theirs = adamw(theirs)
    ckpt = load(data)
    theirs.load_state_dict(ckpt["generator"])
    opt_theirs.load_state_dict(ckpt["optim_g"])
    ours = wn.replace_torch_weight_norm(spec.build())  # the one line
    opt_ours = adamw(ours)
    ckpt = load(data)
    ours.load_state_dict(ckpt["generator"])
    opt_ours.load_state_dict(ckpt["optim_g"])
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert p.shape == q.shape  # the optimizer state's order is the model's
    losses_theirs = train(theirs, opt_theirs, name, range(2, 5))
    losses_ours = train(ours, opt_ours, name, range(2, 5))
    torch.testing.assert_close(losses_ours, losses_theirs, rtol=1e-6, atol=0)
    for key, w in weights(theirs).items():
        torch.testing.assert_close(weights(ours)[key], w, rtol=1e-5, atol=1e-7)


def test_a_model_built_with_ours_loads_a_torch_optimizer_state() -> None:
    """Item 2 without the zoo: a small generator with torch's legacy hook and one with
    parametrize, each checkpointed; the same generator built with wn.weight_norm loads the
    model and the optimizer state and continues as torch would."""
    for apply in (nn.utils.weight_norm, nn.utils.parametrizations.weight_norm):

        def build(norm: Callable[..., nn.Module]) -> nn.Module:
            torch.manual_seed(0)
            return nn.Sequential(
                norm(nn.Conv1d(4, 8, 7, padding=3)),
                nn.LeakyReLU(0.1),
                norm(nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1), dim=0),
                nn.Tanh(),
                norm(nn.Conv1d(4, 1, 7, padding=3)),
            )

        def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> float:
            x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            return loss.item()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's legacy hook is deprecated
            theirs = build(apply)
        opt_theirs = adamw(theirs)
        for i in range(2):
            step(theirs, opt_theirs, i)
        model_sd = copy.deepcopy(theirs.state_dict())
        opt_sd = copy.deepcopy(opt_theirs.state_dict())  # (a copy: loading shares its tensors)
        ours = build(wn.weight_norm)
        opt_ours = adamw(ours)
        ours.load_state_dict(model_sd)
        opt_ours.load_state_dict(opt_sd)
        for i in range(2, 5):
            assert step(ours, opt_ours, i) == pytest.approx(step(theirs, opt_theirs, i), rel=1e-6)


def test_torch_jit_script_says_to_fold_first() -> None:
    """Item 3: scripting a normalized module failed with TorchScript's "Don't support conversion
    in JoinedStr", pointing into our code. Now one clear error says what to do, and the folded
    model scripts."""
    model = nn.Sequential(wn.WNConv1d(2, 4, 3), nn.ReLU(), wn.weight_norm(nn.Conv1d(4, 2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit,
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.15 too
        with pytest.raises(wn.WeightNormError, match=r"torch\.jit\.script .*wn\.fold\(model\)"):
            torch.jit.script(model)
        x = torch.randn(1, 2, 9)
        expected = model(x)
        scripted = torch.jit.script(wn.fold(model))
    torch.testing.assert_close(scripted(x), expected)


def test_data_dependent_init_leaves_a_dead_unit_alone() -> None:
    """Item 4: a unit whose pre-activations have zero variance on the init batch got g of
    about 1e5 (the paper's 1/std with 1e-10 added to the variance), and one SGD step later its
    weight was ~85,000x the others'. Now it keeps its g, its bias centres it, and a warning
    names the layer and the unit count."""
    torch.manual_seed(0)
    net = wn.apply_weight_norm(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    with torch.no_grad():
        net[0].weight = torch.tensor(
            [[1.0, 0.0, 0.0, 0.0], [0.5, -1.0, 2.0, 0.3], [0.2, 1.0, 0.1, -0.7]]
        )
    x = torch.randn(64, 4)
    x[:, 0] = 2.0  # unit 0 of the first layer reads this constant column only: dead
    g_before = net[0].weight_g.detach().clone()
    with pytest.warns(UserWarning, match=r"1 of 3 units of 0 have constant pre-activations"):
        wn.data_dependent_init(net, x)
    assert net[0].weight_g[0].item() == pytest.approx(g_before[0].item())  # left alone
    h = net[0](x).detach()
    assert h[:, 0].abs().max().item() < 1e-5  # centred by its bias
    torch.testing.assert_close(h[:, 1:].std(0, unbiased=False), torch.ones(2), rtol=1e-4, atol=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x).pow(2).mean().backward()
    opt.step()
    norms = net[0].weight.detach().norm(dim=1)
    assert norms.max() / norms.min() < 100  # it was ~85,000


def test_writes_through_data_are_applied_where_torchs_are_lost() -> None:
    """``m.weight.data.normal_(0, 0.01)`` (HiFi-GAN's init_weights, applied after weight norm):
    torch's weight norm loses it (its init_weights has always been a no-op there); ours writes
    it into g and v when it is made (issue 27; 0.2.0 lost it as torch does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(0)
        theirs = nn.utils.weight_norm(nn.Conv1d(4, 4, 3))
        torch.manual_seed(0)
        ours = wn.replace_torch_weight_norm(nn.utils.weight_norm(nn.Conv1d(4, 4, 3)))
    before = theirs.weight.detach().clone()
    x = torch.randn(1, 4, 8)
    for m in (theirs, ours):
        torch.manual_seed(3)
        m.weight.data.normal_(0.0, 0.01)
    torch.manual_seed(3)
    expected = torch.empty_like(before).normal_(0.0, 0.01)
    theirs(x)  # (its hook recomputes the weight from the unchanged g and v)
    torch.testing.assert_close(theirs.weight.detach(), before)  # lost
    torch.testing.assert_close(ours.weight_v.detach(), expected)  # applied, bit for bit in v
    torch.testing.assert_close(ours.weight_g.detach().flatten(), expected.norm(dim=(1, 2)))
    torch.testing.assert_close(ours(x), nn.functional.conv1d(x, expected, ours.bias))
