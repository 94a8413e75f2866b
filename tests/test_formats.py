"""Checkpoint formats: convert_state_dict and ``weightnorm convert``."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import weightnorm as wn


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Linear(5, 3))


def ours() -> nn.Sequential:
    m = model()
    wn.weight_norm(m[0])
    wn.weight_norm(m[2])
    return m


def test_detects_each_parameter_format_in_a_mixed_dict() -> None:
    sd = ours().state_dict()
    theirs = nn.utils.parametrizations.weight_norm(nn.Linear(5, 3)).state_dict()
    mixed = OrderedDict(sd)
    del mixed["2.weight_g"], mixed["2.weight_v"]
    mixed["2.parametrizations.weight.original0"] = theirs["parametrizations.weight.original0"]
    mixed["2.parametrizations.weight.original1"] = theirs["parametrizations.weight.original1"]
    assert wn.formats.detect_formats(mixed) == {"0.weight": "weightnorm", "2.weight": "parametrize"}
    out = wn.convert_state_dict(mixed, to="weightnorm")
    assert out["2.weight_g"] is theirs["parametrizations.weight.original0"]  # exact: a rename
    assert out["2.weight_v"] is theirs["parametrizations.weight.original1"]


@pytest.mark.parametrize("source", ["weightnorm", "parametrize", "plain"])
@pytest.mark.parametrize("target", ["weightnorm", "parametrize", "plain"])
def test_round_trip_through_formats_loads_into_our_model(source: str, target: str) -> None:
    reference = ours()
    with torch.no_grad():
        reference[0].weight_g.mul_(1.7)  # g != ||v||
    sd = wn.convert_state_dict(reference.state_dict(), to=source)  # type: ignore[arg-type]
    sd = wn.convert_state_dict(sd, to=target)  # type: ignore[arg-type]
    loaded = ours()
    loaded.load_state_dict(sd)
    x = torch.randn(2, 2, 7)
    reference.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), reference(x))


def test_passes_buffers_and_metadata_through() -> None:
    sd = ours().state_dict()
    out = wn.convert_state_dict(sd, to="parametrize")
    assert out["1.running_mean"] is sd["1.running_mean"]
    assert out["1.num_batches_tracked"] is sd["1.num_batches_tracked"]
    assert out._metadata is sd._metadata  # type: ignore[attr-defined]
    assert list(out) == [
        "0.parametrizations.weight.original0", "0.parametrizations.weight.original1", "0.bias",
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "2.parametrizations.weight.original0", "2.parametrizations.weight.original1", "2.bias",
    ]  # fmt: skip


def test_plain_to_parametrize_loads_into_torch() -> None:
    plain = model()
    theirs = model()
    nn.utils.parametrizations.weight_norm(theirs[0])
    sd = wn.convert_state_dict(plain.state_dict(), to="parametrize", include=["0.weight"])
    theirs.load_state_dict(sd)
    torch.testing.assert_close(theirs[0].weight, plain[0].weight)


def test_plain_convtranspose_needs_its_dim() -> None:
    plain = nn.ConvTranspose1d(3, 5, 4)
    sd = wn.convert_state_dict(plain.state_dict(), to="weightnorm", dims={"weight": 1})
    assert sd["weight_g"].shape == (1, 5, 1)
    back = wn.convert_state_dict(sd, to="plain")
    torch.testing.assert_close(back["weight"], plain.weight.detach())


def test_grouped_convtranspose_folds() -> None:
    layer = wn.WNConvTranspose1d(4, 6, 3, groups=2)
    with torch.no_grad():
        layer.weight_g.mul_(2.0)
    plain = wn.convert_state_dict(layer.state_dict(), to="plain")
    torch.testing.assert_close(plain["weight"], layer.weight.detach())


def test_bad_format_and_bad_g_raise() -> None:
    with pytest.raises(wn.WeightNormError, match="to must be one of"):
        wn.convert_state_dict({}, to="onnx")  # type: ignore[arg-type]
    bad = {"w_g": torch.ones(2, 2), "w_v": torch.ones(4, 6)}
    with pytest.raises(wn.WeightNormError, match=r"w: g of shape \(2, 2\) matches no unit"):
        wn.convert_state_dict(bad, to="plain")


# --- command line ------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightnorm", "convert", *args], capture_output=True, text=True
    )


def test_cli_converts_nested_checkpoint(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"generator": ours().state_dict(), "steps": 1000}, src)
    proc = cli(str(src), str(dst), "--to", "parametrize")
    assert proc.returncode == 0, proc.stderr
    assert "under 'generator'" in proc.stdout
    saved = torch.load(dst, weights_only=True)
    assert saved["steps"] == 1000
    assert "0.parametrizations.weight.original0" in saved["generator"]


def test_cli_key_flag(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"a": ours().state_dict(), "b": ours().state_dict()}, src)
    proc = cli(str(src), str(dst), "--to", "plain")
    assert proc.returncode == 2
    assert "several state dicts (a, b); choose one with --key" in proc.stderr
    proc = cli(str(src), str(dst), "--to", "plain", "--key", "b")
    assert proc.returncode == 0, proc.stderr
    assert "0.weight" in torch.load(dst, weights_only=True)["b"]


class Custom:
    """An arbitrary pickled object: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", ["--to", "plain"], "cannot read"),
        ("text", ["--to", "plain"], "is not a PyTorch checkpoint"),
        ("tensor", ["--to", "plain"], "expected a state dict"),
        ("object", ["--to", "plain"], "--unsafe-load"),
        ("ok", ["--to", "onnx"], "invalid choice: 'onnx'"),
        ("ok-unwritable", ["--to", "plain"], "cannot write"),
    ],
)
def test_cli_errors_are_clear(tmp_path: Path, setup: str, args: list[str], message: str) -> None:
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    if setup == "text":
        src.write_text("hello")
    elif setup == "tensor":
        torch.save(torch.ones(2), src)
    elif setup == "object":
        torch.save({"model": ours().state_dict(), "extra": Custom()}, src)
    elif setup.startswith("ok"):
        torch.save(ours().state_dict(), src)
    if setup == "ok-unwritable":
        dst = tmp_path / "file" / "out.pt"
        (tmp_path / "file").write_text("a file, not a folder")
    proc = cli(str(src), str(dst), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
