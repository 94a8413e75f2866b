"""The optimizer-level weight norm: same trajectory as the reparameterized model, exact resume."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
from torch import nn

import weightnorm as wn


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1), nn.Tanh(),
        nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1, groups=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 16, 3),
    )  # fmt: skip


X = torch.randn(8, 2, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.1),
    "sgd-momentum": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda groups: torch.optim.Adam(groups, lr=0.01),
    # torch.optim classes: every g and v in one flat tensor (``flat``'s default for them)
    "sgd-packed": functools.partial(torch.optim.SGD, lr=0.1),
    "sgd-momentum-packed": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    "adam-packed": functools.partial(torch.optim.Adam, lr=0.01),
    "adamw-packed": functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1),
}


def loss(model: nn.Module) -> torch.Tensor:
    return nn.functional.cross_entropy(model(X), Y)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trajectory_equals_the_reparameterized_model(name: str) -> None:
    make = OPTIMIZERS[name]
    reparam = wn.apply_weight_norm(net())
    reparam_opt = make(list(reparam.parameters()))
    plain = net()
    plain_opt = wn.optim.WeightNormOptimizer(plain, make)
    packed = name.endswith("-packed")
    assert len(plain_opt.inner.param_groups[0]["params"]) == (1 if packed else 6)
    for _ in range(6):
        for model, opt in ((reparam, reparam_opt), (plain, plain_opt)):
            opt.zero_grad()
            loss(model).backward()
            opt.step()
    for a, b in zip(reparam, plain, strict=True):
        if isinstance(b, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            torch.testing.assert_close(b.weight, a.weight.detach(), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(b.bias, a.bias, atol=1e-5, rtol=1e-4)


def test_flat_is_the_default_for_torch_optim_classes_only() -> None:
    def count(opt: wn.optim.WeightNormOptimizer) -> int:
        return len(opt.inner.param_groups[0]["params"])

    flat = wn.optim.WeightNormOptimizer(net(), torch.optim.Adam, lr=0.1)
    assert count(flat) == 1
    (param,) = flat.inner.param_groups[0]["params"]
    g0, v = flat.weight_norm_parameters()["0.weight"]
    assert g0.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()
    assert v.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()
    assert param.numel() == sum(g.numel() + v.numel() for g, v in
                                flat.weight_norm_parameters().values())  # fmt: skip
    custom = wn.optim.WeightNormOptimizer(net(), lambda gr: torch.optim.Adam(gr, lr=0.1))
    assert count(custom) == 6
    forced = wn.optim.WeightNormOptimizer(net(), torch.optim.Adam, flat=False, lr=0.1)
    assert count(forced) == 6


def test_flat_keeps_half_precision_v_apart_from_float32_g() -> None:
    model = nn.Linear(4, 3).to(torch.bfloat16)
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, lr=0.1)
    params = opt.inner.param_groups[0]["params"]
    assert sorted(str(p.dtype) for p in params) == ["torch.bfloat16", "torch.float32"]
    model(torch.randn(2, 4, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    opt.step()
    g, v = opt.weight_norm_parameters()["weight"]
    torch.testing.assert_close(
        model.weight.float(), (g * v.float() / v.float().norm(dim=1, keepdim=True)),
        atol=1e-2, rtol=1e-2,
    )  # fmt: skip


@pytest.mark.parametrize("flat", [True, False])
def test_a_weight_without_gradient(flat: bool) -> None:
    """The last layer unused in a step: separate g and v are not stepped; flat ones take a
    zero-gradient step (plain SGD: unchanged)."""
    model = net()
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, flat=flat, lr=0.1)
    loss(model).backward()  # a full step first: its gradients must not be stepped again
    opt.step()
    opt.zero_grad()
    before = model[5].weight.detach().clone()
    model[0](X).pow(2).mean().backward()  # only the first layer gets a gradient
    opt.step()
    assert torch.equal(model[5].weight, before)
    assert not torch.equal(model[0].weight, net()[0].weight)


def test_weights_stay_normalized_and_g_is_the_norm() -> None:
    plain = net()
    opt = wn.optim.WeightNormOptimizer(plain, torch.optim.Adam, lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        loss(plain).backward()
        opt.step()
    g, v = opt.weight_norm_parameters()["0.weight"]
    w = plain[0].weight.detach()
    torch.testing.assert_close(w.norm(dim=(1, 2)), g.detach().abs().flatten())
    torch.testing.assert_close(
        w / w.norm(dim=(1, 2), keepdim=True), v / v.norm(dim=(1, 2), keepdim=True)
    )


def test_checkpoint_and_resume_exactly() -> None:
    model = net()
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.Adam, lr=0.01)

    def train(m: nn.Module, o: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            o.zero_grad()
            loss(m).backward()
            o.step()

    train(model, opt, 3)
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    train(model, opt, 3)

    resumed = net()
    resumed_opt = wn.optim.WeightNormOptimizer(resumed, torch.optim.Adam, lr=0.01)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    train(resumed, resumed_opt, 3)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_works_with_lr_schedulers() -> None:
    model = net()
    opt = wn.optim.WeightNormOptimizer(model, torch.optim.SGD, lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.zero_grad()
    loss(model).backward()
    opt.step()
    scheduler.step()
    assert all(group["lr"] == 0.5 for group in opt.inner.param_groups)


def test_misuse_raises() -> None:
    with pytest.raises(wn.WeightNormError, match="already weight-normalized"):
        wn.optim.WeightNormOptimizer(wn.apply_weight_norm(net()), torch.optim.SGD, lr=0.1)
    with pytest.raises(wn.WeightNormError, match="no Linear"):
        wn.optim.WeightNormOptimizer(nn.Sequential(nn.ReLU()), torch.optim.SGD, lr=0.1)
    opt = wn.optim.WeightNormOptimizer(net(), torch.optim.SGD, lr=0.1)
    with pytest.raises(wn.WeightNormError, match="expected a WeightNormOptimizer state dict"):
        opt.load_state_dict({"state": {}})
