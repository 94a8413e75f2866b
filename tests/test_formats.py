"""Checkpoint formats: convert_state_dict and ``weightnorm convert``."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import weightnorm as wn
from weightnorm.cli import main
from weightnorm.formats import Format


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
        "0.bias", "0.parametrizations.weight.original0", "0.parametrizations.weight.original1",
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "2.bias", "2.parametrizations.weight.original0", "2.parametrizations.weight.original1",
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
    sd = wn.convert_state_dict(
        plain.state_dict(), to="weightnorm", include=["weight"], dims={"weight": 1}
    )
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


# --- the set of normalized parameters is kept (issue 11, item 1) ---------------------------------


def legacy_repro() -> nn.Sequential:
    """The issue's reproduction: a torch-legacy-normalized conv beside a plain Linear."""
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm: deprecated
        return nn.Sequential(nn.utils.weight_norm(nn.Conv1d(4, 4, 3)), nn.Linear(2, 2))


def parametrized_repro() -> nn.Sequential:
    """The reproduction's model normalized with torch's parametrize version instead."""
    torch.manual_seed(2)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3))
    return nn.Sequential(conv, nn.Linear(2, 2))


def check_loads_into_replaced(sd: OrderedDict[str, Any], source: nn.Sequential) -> None:
    """``sd`` loads strictly into a copy of ``source`` turned into ours, computing the same."""
    replaced = wn.replace_torch_weight_norm(legacy_repro())
    replaced.load_state_dict(sd)  # strict
    x = torch.randn(3, 4, 4)
    assert torch.equal(replaced(x), source(x))


@pytest.mark.parametrize("to", ["weightnorm", "parametrize"])
def test_defaults_do_not_normalize_plain_weights(to: Format) -> None:
    """Issue 11, item 1: converting at the defaults split every plain >= 2-D weight (here the
    Linear's) into g and v, so the checkpoint no longer loaded into its own model."""
    m = legacy_repro()
    sd = m.state_dict()
    out = wn.convert_state_dict(sd, to=to)
    assert wn.formats.detect_formats(out) == {"0.weight": to}
    assert out["1.weight"] is sd["1.weight"]  # passed through untouched
    g, v = out[g_key("0.weight", to)], out[v_key("0.weight", to)]
    assert g is sd["0.weight_g"]
    assert v is sd["0.weight_v"]  # a rename: the same tensors
    check_loads_into_replaced(out, m)
    if to == "parametrize":  # and into the same model normalized by torch's parametrize version
        theirs = parametrized_repro()
        theirs.load_state_dict(out)  # strict
        x = torch.randn(3, 4, 4)
        assert torch.equal(theirs[0].weight, m[0].weight)
        assert torch.equal(theirs(x), m(x))


G = {"weightnorm": "{}_g", "parametrize": "parametrizations.{}.original0"}
V = {"weightnorm": "{}_v", "parametrize": "parametrizations.{}.original1"}


def g_key(base: str, to: str) -> str:
    prefix, _, name = base.rpartition(".")
    return (prefix + "." if prefix else "") + G[to].format(name)


def v_key(base: str, to: str) -> str:
    prefix, _, name = base.rpartition(".")
    return (prefix + "." if prefix else "") + V[to].format(name)


class Codec(nn.Module):
    """Normalized convs beside a VQ codebook (Embedding) and attention-like plain projections."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv1d(2, 4, 3, padding=1)
        self.codebook = nn.Embedding(8, 4)
        self.proj = nn.Linear(4, 4)
        self.plain_conv = nn.Conv1d(4, 4, 1)  # a conv that never had weight norm
        self.dec = nn.ConvTranspose1d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        h = self.proj(h.transpose(1, 2)).transpose(1, 2) + self.codebook.weight[:4].sum()
        return self.dec(self.plain_conv(h))


def normalized_codec() -> Codec:
    torch.manual_seed(3)
    c = Codec()
    wn.weight_norm(c.enc)
    wn.weight_norm(c.dec)
    return c


@pytest.mark.parametrize("source", ["weightnorm", "parametrize"])
@pytest.mark.parametrize("to", ["weightnorm", "parametrize"])
def test_defaults_keep_embedding_and_unnormalized_layers_plain(source: Format, to: Format) -> None:
    """Issue 11, item 1: VQ codebooks, projections and convs without weight norm were split."""
    reference = normalized_codec()
    sd = wn.convert_state_dict(reference.state_dict(), to=source)
    out = wn.convert_state_dict(sd, to=to)
    assert wn.formats.detect_formats(out) == {"enc.weight": to, "dec.weight": to}
    for key in ("codebook.weight", "proj.weight", "plain_conv.weight"):
        assert out[key] is sd[key]
    loaded = normalized_codec()
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    loaded.load_state_dict(out)  # strict
    x = torch.randn(2, 2, 5)
    assert torch.equal(loaded(x), reference(x))


@pytest.mark.parametrize("to", ["weightnorm", "parametrize"])
def test_round_trip_between_normalized_formats_is_identity(to: Format) -> None:
    """Issue 11, item 1: a round trip between the normalized formats changes nothing."""
    sd = normalized_codec().state_dict()
    other = "parametrize" if to == "weightnorm" else "weightnorm"
    start = wn.convert_state_dict(sd, to=to)
    back = wn.convert_state_dict(wn.convert_state_dict(start, to=other), to=to)
    assert list(back) == list(start)
    for key, value in start.items():
        assert back[key] is value  # the same objects, so identical tensors
    assert list(wn.convert_state_dict(sd, to="weightnorm")) == list(sd)


# --- like= ----------------------------------------------------------------------------------------


def plain_net(groups: int = 1, seed: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.ReLU(), nn.ConvTranspose1d(4, 6, 3, groups=groups), nn.Linear(7, 3)
    )


def _legacy(module: nn.Module, dim: int | None = 0) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module, dim=dim)


def _ours(m: nn.Sequential) -> nn.Sequential:
    wn.weight_norm(m[0])
    wn.weight_norm(m[2])  # per output channel: dim 1, grouped when groups > 1
    return m


def _ours_dim0(m: nn.Sequential) -> nn.Sequential:
    wn.weight_norm(m[0])
    wn.weight_norm(m[2], dim=0)
    return m


def _torch_legacy(m: nn.Sequential) -> nn.Sequential:
    _legacy(m[0], dim=None)  # whole tensor: torch's g is 0-d
    _legacy(m[2])  # torch's default dim 0 on a ConvTranspose: per input channel
    return m


def _torch_parametrize(m: nn.Sequential) -> nn.Sequential:
    nn.utils.parametrizations.weight_norm(m[0])
    nn.utils.parametrizations.weight_norm(m[2], dim=1)
    return m


def _torch_parametrize_dim0(m: nn.Sequential) -> nn.Sequential:
    nn.utils.parametrizations.weight_norm(m[2])  # dim 0: per input channel
    return m


# case: (groups, how the template is normalized, output formats it loads, g shapes by key)
LIKE_CASES = {
    "ours": (
        1, _ours, ("weightnorm", "parametrize"), {"0.weight": (4, 1, 1), "2.weight": (1, 6, 1)}
    ),
    "ours-grouped-convtranspose": (
        2, _ours, ("weightnorm", "parametrize"), {"0.weight": (4, 1, 1), "2.weight": (2, 1, 3, 1)}
    ),
    "ours-convtranspose-dim0": (
        1, _ours_dim0, ("weightnorm", "parametrize"), {"0.weight": (4, 1, 1), "2.weight": (4, 1, 1)}
    ),
    "torch-legacy": (1, _torch_legacy, ("weightnorm",), {"0.weight": (), "2.weight": (4, 1, 1)}),
    "torch-parametrize": (
        1, _torch_parametrize, ("weightnorm", "parametrize"),
        {"0.weight": (4, 1, 1), "2.weight": (1, 6, 1)},
    ),
    "torch-parametrize-grouped-convtranspose-dim0": (
        2, _torch_parametrize_dim0, ("parametrize",), {"2.weight": (4, 1, 1)}
    ),
}  # fmt: skip


def like_cases() -> list[Any]:
    return [
        pytest.param(case, to, as_dict, id=f"{case}-{to}-{'dict' if as_dict else 'module'}")
        for case, (_, _, formats, _) in LIKE_CASES.items()
        for to in formats
        for as_dict in (False, True)
    ]


@pytest.mark.parametrize(("case", "to", "as_dict"), like_cases())
def test_like_normalizes_a_plain_checkpoint_to_load_into_the_template(
    case: str, to: Format, as_dict: bool
) -> None:
    """``like`` normalizes exactly the template's normalized weights, along its unit dims."""
    groups, normalize, _, g_shapes = LIKE_CASES[case]
    plain = plain_net(groups)
    template = normalize(plain_net(groups, seed=5))
    like: Any = template.state_dict() if as_dict else template
    sd = plain.state_dict()
    out = wn.convert_state_dict(sd, to=to, like=like)
    assert wn.formats.detect_formats(out) == dict.fromkeys(g_shapes, to)
    for base, shape in g_shapes.items():
        assert tuple(out[g_key(base, to)].shape) == shape
        assert out[v_key(base, to)] is sd[base]  # v = w, the same tensor
    for key in ("0.bias", "2.bias", "3.weight", "3.bias"):
        assert out[key] is sd[key]
    template.load_state_dict(out)  # strict
    x = torch.randn(2, 2, 7)
    torch.testing.assert_close(template(x), plain(x))
    for i in (0, 2):
        torch.testing.assert_close(template[i].weight, plain[i].weight.detach())


def test_like_module_and_its_state_dict_agree() -> None:
    """A module and its state dict describe the same parameterization, grouped layers too."""
    template = _ours(plain_net(2, seed=5))
    sd = plain_net(2).state_dict()
    a = wn.convert_state_dict(sd, to="weightnorm", like=template)
    b = wn.convert_state_dict(sd, to="weightnorm", like=template.state_dict())
    c = wn.convert_state_dict(
        sd, to="weightnorm", like=wn.convert_state_dict(template.state_dict(), to="parametrize")
    )
    assert list(a) == list(b) == list(c)
    for key in a:
        assert torch.equal(a[key], b[key])
        assert torch.equal(a[key], c[key])


def test_like_resplits_and_folds_normalized_pairs() -> None:
    """A pair normalized along another dim than the template's is re-split along the template's
    (a torch ConvTranspose checkpoint, per input channel, into torch's own model per output
    channel); a pair whose counterpart is plain in the template is folded."""
    source = _torch_legacy(plain_net())  # 0.weight: whole tensor, 2.weight: per input channel
    _legacy(source[3])
    sd = source.state_dict()
    template = plain_net(seed=5)
    wn.weight_norm(template[0], dim=None)  # the same norm as torch's dim=None (a 0-d g too)
    nn.utils.parametrizations.weight_norm(template[2], dim=1)  # per output channel; 3 is plain
    report = wn.formats.convert_with_report(sd, to="parametrize", like=template)
    assert report == wn.formats.ConversionReport(
        report.state_dict, renamed=1, kept=0, folded=1, normalized=0, resplit=1
    )
    out = report.state_dict
    g0 = out["0.parametrizations.weight.original0"]
    assert g0 is sd["0.weight_g"]  # torch's 0-d g, and ours: a rename
    assert g0.shape == ()
    assert out["0.parametrizations.weight.original1"] is sd["0.weight_v"]
    assert out["2.parametrizations.weight.original0"].shape == (1, 6, 1)
    torch.testing.assert_close(out["3.weight"], source[3].weight.detach())
    assert "3.weight_g" not in out
    template.load_state_dict(out)  # strict
    x = torch.randn(2, 2, 7)
    torch.testing.assert_close(template(x), source(x))


def test_like_of_a_wrong_type_raises() -> None:
    sd = plain_net().state_dict()
    with pytest.raises(wn.WeightNormError, match=r"like: expected an nn\.Module or a state dict"):
        wn.convert_state_dict(sd, to="weightnorm", like=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(wn.WeightNormError, match="like: expected a state dict with str keys"):
        wn.convert_state_dict(sd, to="weightnorm", like={0: torch.ones(1)})  # type: ignore[dict-item]


# --- include= -------------------------------------------------------------------------------------


def test_include_normalizes_matching_weights_and_skips_one_dimensional_ones() -> None:
    """Explicit patterns still normalize plain weights; "*weight" leaves BatchNorm's 1-D weight."""
    sd = model().state_dict()
    out = wn.convert_state_dict(sd, to="weightnorm", include=["*weight"])
    assert wn.formats.detect_formats(out) == {"0.weight": "weightnorm", "2.weight": "weightnorm"}
    assert out["1.weight"] is sd["1.weight"]
    assert out["0.weight_g"].shape == (4, 1, 1)
    torch.testing.assert_close(out["2.weight_g"].flatten(), sd["2.weight"].norm(dim=1))
    only = wn.convert_state_dict(sd, to="parametrize", include=["2.*"], dim=1)
    assert wn.formats.detect_formats(only) == {"2.weight": "parametrize"}
    assert only["2.parametrizations.weight.original0"].shape == (1, 5)


def test_include_pattern_that_normalizes_nothing_raises() -> None:
    sd = model().state_dict()
    with pytest.raises(wn.WeightNormError, match=r"include pattern 'enc\.\*' matches no key"):
        wn.convert_state_dict(sd, to="weightnorm", include=["*weight", "enc.*"])
    with pytest.raises(
        wn.WeightNormError, match=r"'1\.weight' selects nothing .* got 1\.weight \(1-D float32\)"
    ):
        wn.convert_state_dict(sd, to="weightnorm", include=["1.weight"])
    with pytest.raises(wn.WeightNormError, match="got to='plain'"):
        wn.convert_state_dict(sd, to="plain", include=["*weight"])
    with pytest.raises(wn.WeightNormError, match=r"dims: expected keys .* got 2\.weight"):
        wn.convert_state_dict(sd, to="weightnorm", include=["0.weight"], dims={"2.weight": 1})
    # a pattern naming an already normalized parameter is satisfied
    normalized = ours().state_dict()
    out = wn.convert_state_dict(normalized, to="weightnorm", include=["0.weight"])
    assert out["0.weight_g"] is normalized["0.weight_g"]


# --- what convert_state_dict refuses, before any work ---------------------------------------------


@pytest.mark.parametrize("to", ["weightnorm", "parametrize", "plain"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
@pytest.mark.parametrize("which", ["g", "v"])
def test_integer_g_or_v_is_an_error_naming_key_and_dtype(
    to: Format, dtype: torch.dtype, which: str
) -> None:
    """Integer g or v used to reach ``linalg.vector_norm`` (a raw RuntimeError) or pass."""
    for source in ("weightnorm", "parametrize"):
        sd = dict(wn.convert_state_dict(ours().state_dict(), to=source))  # type: ignore[arg-type]
        key = (g_key if which == "g" else v_key)("2.weight", source)
        sd[key] = sd[key].to(dtype)
        name = str(dtype).removeprefix("torch.")
        expected = rf"^{re.escape(key)}: expected a floating-point tensor \(the {which} of a "
        with pytest.raises(wn.WeightNormError, match=expected + rf".*got dtype {name}$"):
            wn.convert_state_dict(sd, to=to)


def test_non_tensor_g_and_non_str_keys_are_errors() -> None:
    with pytest.raises(
        wn.WeightNormError, match=r"^w_g: expected a floating-point tensor .* got int"
    ):
        wn.convert_state_dict({"w_g": 1, "w_v": torch.ones(2, 3)}, to="plain")
    with pytest.raises(
        wn.WeightNormError, match="expected a state dict with str keys, got a key 0"
    ):
        wn.convert_state_dict({0: torch.ones(2)}, to="plain")  # type: ignore[dict-item]


def test_integer_weight_chosen_to_normalize_is_an_error() -> None:
    """A plain weight that include or like asks to normalize must be floating-point; what
    include's patterns leave by design (fewer than 2 dims, like num_batches_tracked) stays."""
    sd = dict(model().state_dict())
    sd["2.weight"] = sd["2.weight"].to(torch.int32)
    message = (
        r"^2\.weight: expected a floating-point tensor \(a weight to normalize\), got dtype int32$"
    )
    with pytest.raises(wn.WeightNormError, match=message):
        wn.convert_state_dict(sd, to="weightnorm", include=["*weight"])
    with pytest.raises(wn.WeightNormError, match=message):
        wn.convert_state_dict(sd, to="parametrize", like=ours())
    out = wn.convert_state_dict(sd, to="weightnorm", include=["0.*"])  # bias: 1-D, skipped
    assert set(wn.formats.detect_formats(out)) == {"0.weight"}
    assert out["1.num_batches_tracked"] is sd["1.num_batches_tracked"]
    sd["2.weight"] = "not a tensor"  # type: ignore[assignment]
    with pytest.raises(wn.WeightNormError, match=r"^2\.weight: .* got str$"):
        wn.convert_state_dict(sd, to="parametrize", like=ours())


LONE = [
    ("0.weight_g", "0.weight_v", "g", "v"),
    ("0.weight_v", "0.weight_g", "v", "g"),
    ("0.parametrizations.weight.original0", "0.parametrizations.weight.original1", "g", "v"),
    ("0.parametrizations.weight.original1", "0.parametrizations.weight.original0", "v", "g"),
]


@pytest.mark.parametrize(("key", "partner", "role", "other"), LONE)
@pytest.mark.parametrize("to", ["weightnorm", "parametrize", "plain"])
def test_lone_g_or_v_is_an_error_naming_the_missing_partner(
    key: str, partner: str, role: str, other: str, to: Format
) -> None:
    """A g without its v (or the reverse) used to pass through, even with ``to="plain"``."""
    sd = dict(model().state_dict())
    del sd["0.weight"]
    sd[key] = torch.ones(4, 1, 1)
    message = f"{key} is the {role} of a weight norm without its {other}: expected {partner}"
    with pytest.raises(
        wn.WeightNormError, match=f"^{re.escape(message)} beside it, got no such key$"
    ):
        wn.convert_state_dict(sd, to=to)
    with pytest.raises(wn.WeightNormError, match=f"^like: {re.escape(message)}"):
        wn.convert_state_dict(model().state_dict(), to="weightnorm", like=sd)


def test_other_g_and_v_names_are_ordinary_parameters() -> None:
    """Only ``weight...`` names are legacy weight-norm keys when alone: the relative-position
    biases of Conformer attention (``pos_bias_u``, ``pos_bias_v``) are plain parameters."""
    sd = {"attn.pos_bias_u": torch.ones(4, 8), "attn.pos_bias_v": torch.ones(4, 8)}
    out = wn.convert_state_dict(sd, to="plain")
    assert out["attn.pos_bias_v"] is sd["attn.pos_bias_v"]
    rnn = wn.weight_norm(nn.GRU(3, 4), "weight_hh_l0").state_dict()
    del rnn["weight_hh_l0_v"]
    with pytest.raises(wn.WeightNormError, match="weight_hh_l0_g is the g of a weight norm"):
        wn.convert_state_dict(rnn, to="plain")


def test_convert_with_report_is_public_and_agrees_with_convert_state_dict() -> None:
    assert "ConversionReport" in wn.formats.__all__
    assert "convert_with_report" in wn.formats.__all__
    sd = wn.convert_state_dict(ours().state_dict(), to="parametrize")
    report = wn.formats.convert_with_report(sd, to="weightnorm")
    assert (report.renamed, report.kept, report.folded, report.normalized, report.resplit) == (
        2,
        0,
        0,
        0,
        0,
    )
    expected = wn.convert_state_dict(sd, to="weightnorm")
    assert list(report.state_dict) == list(expected)
    assert all(report.state_dict[k] is v for k, v in expected.items())
    assert "state_dict" not in repr(report)  # the counts, not every tensor


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
    assert "(parametrize format): generator: 2 renamed, 0 folded, 0 normalized" in proc.stdout
    saved = torch.load(dst, weights_only=True)
    assert saved["steps"] == 1000
    assert "0.parametrizations.weight.original0" in saved["generator"]


def test_cli_key_flag(tmp_path: Path) -> None:
    """Every state dict converts; --key converts one and copies the others unchanged."""
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"a": ours().state_dict(), "b": ours().state_dict()}, src)
    proc = cli(str(src), str(dst), "--to", "plain")
    assert proc.returncode == 0, proc.stderr
    assert "a: 0 renamed, 2 folded, 0 normalized; b: 0 renamed, 2 folded" in proc.stdout
    saved = torch.load(dst, weights_only=True)
    assert "0.weight" in saved["a"]
    assert "0.weight" in saved["b"]
    proc = cli(str(src), str(dst), "--to", "plain", "--key", "b")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(
        "b: 0 renamed, 2 folded, 0 normalized; copied unchanged: a (not --key)"
    )
    saved = torch.load(dst, weights_only=True)
    assert "0.weight" in saved["b"]
    assert "0.weight_g" in saved["a"]


class Custom:
    """An arbitrary pickled object: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", ["--to", "plain"], "in.pt does not exist"),
        ("text", ["--to", "plain"], "is not a PyTorch checkpoint"),
        ("tensor", ["--to", "plain"], "expected a state dict"),
        ("object", ["--to", "plain"], "--unsafe-load"),
        ("ok", ["--to", "onnx"], "invalid choice: 'onnx'"),
        ("ok-unwritable", ["--to", "plain"], "is a file, not a folder"),
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


def test_cli_default_renames_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11, item 1: ``weightnorm convert`` split every plain weight (the reproduction's
    Linear), so the converted checkpoint no longer loaded into its own model."""
    m = legacy_repro()
    src = tmp_path / "in.pt"
    torch.save({"generator": m.state_dict(), "steps": 3}, src)
    for to in ("weightnorm", "parametrize"):
        dst = tmp_path / f"{to}.pt"
        assert main(["convert", str(src), str(dst), "--to", to]) == 0
        stdout = capsys.readouterr().out
        kept = ", 1 already weightnorm" if to == "weightnorm" else ""
        renamed = 0 if to == "weightnorm" else 1
        assert stdout.strip().endswith(
            f"({to} format): generator: {renamed} renamed, 0 folded, 0 normalized{kept}"
        )
        assert len(stdout.strip().splitlines()) == 1
        sd = torch.load(dst, weights_only=True)["generator"]
        assert set(wn.formats.detect_formats(sd)) == {"0.weight"}
        check_loads_into_replaced(sd, m)
        if to == "parametrize":
            parametrized_repro().load_state_dict(sd)  # strict


def test_cli_like_and_include(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--like normalizes what the template normalizes (nested: --key applies to both files);
    --include normalizes what its patterns select."""
    plain = plain_net()
    template = _torch_parametrize(plain_net(seed=5))
    src, like, dst = tmp_path / "in.pt", tmp_path / "like.pt", tmp_path / "out.pt"
    torch.save({"model": plain.state_dict(), "ema": plain.state_dict()}, src)
    torch.save({"model": template.state_dict(), "opt": {"lr": 1.0}}, like)
    args = ["convert", str(src), str(dst), "--to", "parametrize", "--like", str(like)]
    assert main([*args, "--key", "model"]) == 0
    assert "0 renamed, 0 folded, 2 normalized" in capsys.readouterr().out
    template.load_state_dict(torch.load(dst, weights_only=True)["model"])  # strict
    x = torch.randn(2, 2, 7)
    torch.testing.assert_close(template(x), plain(x))

    torch.save(plain.state_dict(), src)
    args = ["convert", str(src), str(dst), "--to", "weightnorm"]
    assert main([*args, "--include", "0.weight", "--include", "3.*"]) == 0
    assert "0 renamed, 0 folded, 2 normalized" in capsys.readouterr().out
    assert set(wn.formats.detect_formats(torch.load(dst, weights_only=True))) == {
        "0.weight",
        "3.weight",
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--include", "nope.*"], "in.pt['model']: include pattern 'nope.*' matches no key"),
        (["--like", "missing.pt"], "missing.pt does not exist"),
        (["--like", "text.txt"], "text.txt is not a PyTorch checkpoint"),
        (["--like", "flat.pt", "--key", "model"], "--like"),
    ],
)
def test_cli_like_and_include_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    torch.save({"model": ours().state_dict()}, tmp_path / "in.pt")
    torch.save(ours().state_dict(), tmp_path / "flat.pt")
    (tmp_path / "text.txt").write_text("hello")
    extra = [str(tmp_path / e) if e.endswith((".pt", ".txt")) else e for e in extra]
    code = main(
        ["convert", str(tmp_path / "in.pt"), str(tmp_path / "out.pt"), "--to", "weightnorm", *extra]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "out.pt").exists()
