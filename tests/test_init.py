"""Data-dependent initialization: per-layer statistics after init, structure, DDP, misuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import weightnorm as wn
from ddp_worker import build_model, full_batch, worker
from launch import launch


def unit_stats(t: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = t.detach().movedim(axis, -1).reshape(-1, t.shape[axis]).double()
    return x.mean(0), x.std(0, unbiased=False)


def outputs(model: nn.Module, types: tuple[type, ...], *args: object, **kwargs: object) -> dict:  # type: ignore[type-arg]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out))
        for n, m in model.named_modules()
        if isinstance(m, types)
    ]
    with torch.no_grad():
        model(*args, **kwargs)
    for h in handles:
        h.remove()
    return seen


LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d)


def assert_standardized(seen: dict, scale: float, model: nn.Module) -> None:  # type: ignore[type-arg]
    assert seen, "no layer output captured"
    modules = dict(model.named_modules())
    for name, out in seen.items():
        axis = -1 if isinstance(modules[name], nn.Linear) else 1
        mean, std = unit_stats(out, axis)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(std, torch.full_like(std, scale), atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_mlp_layers_standardized(scale: float) -> None:
    torch.manual_seed(0)
    model = wn.apply_weight_norm(
        nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
    )
    x = torch.randn(200, 10) * 4 + 2
    wn.data_dependent_init(model, x, init_scale=scale)
    assert_standardized(outputs(model, LAYERS, x), scale, model)


def test_cnn_with_transposed_conv_standardized() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        wn.WNConv1d(2, 8, 5, padding=2), nn.LeakyReLU(0.1),
        wn.WNConvTranspose1d(8, 6, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
        wn.WNConvTranspose1d(6, 4, 3, groups=2), nn.LeakyReLU(0.1),
    )  # fmt: skip
    x = torch.randn(16, 2, 30) * 3
    wn.data_dependent_init(model, x)
    assert_standardized(outputs(model, LAYERS, x), 1.0, model)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = wn.WNLinear(6, 16)
        self.branch = nn.Sequential(wn.WNLinear(16, 16), nn.ReLU(), wn.WNLinear(16, 16))
        self.out = wn.WNLinear(16, 2)

    def forward(self, x: torch.Tensor, *, shift: float = 0.0) -> torch.Tensor:
        h = torch.relu(self.inp(x + shift))
        h = h + self.branch(h)  # a residual connection: not a Sequential chain
        return self.out(h)


def test_residual_model_with_forward_kwargs() -> None:
    torch.manual_seed(0)
    model = Residual()
    x = torch.randn(128, 6)
    wn.data_dependent_init(model, x, shift=3.0)
    seen = outputs(model, LAYERS, x, shift=3.0)
    assert set(seen) == {"inp", "branch.0", "branch.2", "out"}
    assert_standardized(seen, 1.0, model)


def test_wn_plus_mean_only_bn_checks_the_bn_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        wn.WNConv1d(3, 8, 3, bias=False), wn.MeanOnlyBatchNorm1d(8), nn.ReLU(),
        wn.WNConv1d(8, 4, 3, bias=False), wn.MeanOnlyBatchNorm1d(4),
    )  # fmt: skip
    x = torch.randn(32, 3, 20) + 1.0
    wn.data_dependent_init(model, x)
    seen = outputs(model, (wn.MeanOnlyBatchNorm1d,), x)
    for name, out in seen.items():
        mean, std = unit_stats(out, 1)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=1e-4, msg=name)
        assert torch.equal(model[int(name)].bias, torch.zeros_like(model[int(name)].bias))
    # the running mean starts at the init batch's mean: eval output is centred on that batch too
    model.eval()
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.mean((0, 2)), torch.zeros(4), atol=1e-5, rtol=0)


def test_keeps_mode_builds_no_graph_returns_model() -> None:
    model = wn.apply_weight_norm(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    model.eval()
    assert wn.data_dependent_init(model, torch.randn(8, 4)) is model
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert not model[0]._forward_hooks
    assert not model[0]._forward_pre_hooks


def test_plain_model_baseline() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(100, 5) * 3
    wn.data_dependent_init_plain(model, x)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert set(dict(model.named_parameters())) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert_standardized(outputs(model, LAYERS, x), 1.0, model)


def test_redraw_v_follows_the_paper() -> None:
    torch.manual_seed(0)
    model = wn.apply_weight_norm(nn.Sequential(nn.Linear(50, 400)))
    wn.data_dependent_init(model, torch.randn(16, 50), redraw_v=True)
    v = model[0].weight_v.detach()
    assert abs(v.std().item() - 0.05) < 0.002


def test_shared_layer_initialized_once() -> None:
    torch.manual_seed(0)
    shared = wn.WNLinear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(64, 4)
    wn.data_dependent_init(model, x)
    _mean, std = unit_stats(shared(x), -1)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=1e-4)


# --- misuse -----------------------------------------------------------------------------------


def test_batch_of_one_raises() -> None:
    model = wn.apply_weight_norm(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(wn.WeightNormError, match=r"at least 2 samples.*batch of 1"):
        wn.data_dependent_init(model, torch.randn(1, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batch_raises(bad: float) -> None:
    model = wn.apply_weight_norm(nn.Sequential(nn.Linear(3, 2)))
    x = torch.randn(4, 3)
    x[2, 1] = bad
    with pytest.raises(wn.WeightNormError, match=r"NaN or Inf in inputs\[0\]"):
        wn.data_dependent_init(model, x)


def test_no_weight_normed_layer_raises() -> None:
    with pytest.raises(wn.WeightNormError, match="no weight-normalized"):
        wn.data_dependent_init(nn.Linear(2, 2), torch.randn(4, 2))


def test_non_output_dim_raises() -> None:
    model = nn.Sequential(wn.weight_norm(nn.Linear(3, 2), dim=1))
    with pytest.raises(wn.WeightNormError, match="one g per output unit"):
        wn.data_dependent_init(model, torch.randn(4, 3))


def test_bad_init_scale_raises() -> None:
    with pytest.raises(wn.WeightNormError, match="init_scale must be > 0"):
        wn.data_dependent_init(wn.WNLinear(2, 2), torch.randn(4, 2), init_scale=0.0)


# --- two processes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:  # type: ignore[type-arg]
    folder = tmp_path_factory.mktemp("ddp")
    launch(worker, 2, (str(folder),), timeout=240)
    return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_ddp_ranks_agree_and_match_single_process(ddp_results: list[dict]) -> None:  # type: ignore[type-arg]
    first, second = (r["state"] for r in ddp_results)
    assert list(first) == list(second)
    for key in first:
        assert torch.equal(first[key], second[key]), f"ranks differ in {key}"
    single = build_model()
    wn.data_dependent_init(single, full_batch())
    for key, value in single.state_dict().items():
        torch.testing.assert_close(first[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_sync_mean_only_bn_matches_concatenated_batch(ddp_results: list[dict]) -> None:  # type: ignore[type-arg]
    bn = wn.MeanOnlyBatchNorm1d(4)
    with torch.no_grad():
        bn.bias.copy_(torch.arange(4.0))
    y = (torch.randn(8, 4, 5, generator=torch.Generator().manual_seed(2)) + 3).requires_grad_(True)
    upstream = torch.randn(8, 4, 5, generator=torch.Generator().manual_seed(3))
    out = bn(y)
    out.backward(upstream)
    torch.testing.assert_close(torch.cat([r["bn_out"] for r in ddp_results]), out.detach())
    torch.testing.assert_close(torch.cat([r["bn_grad"] for r in ddp_results]), y.grad)
    torch.testing.assert_close(sum(r["bn_bias_grad"] for r in ddp_results), bn.bias.grad)
    for r in ddp_results:
        torch.testing.assert_close(r["bn_running_mean"], bn.running_mean)
