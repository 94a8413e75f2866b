"""``weightnorm convert``: training checkpoints with several state dicts, and everything it
refuses (one line on stderr, exit code 2, nothing written), checked before any work."""

from __future__ import annotations

import io
import json
import pickle
import random
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import weightnorm as wn
from weightnorm.cli import build_parser, main

# --- helpers --------------------------------------------------------------------------------------


def stderr_lines(text: str) -> list[str]:
    """stderr's lines, without the warning torch itself prints where numpy is not installed
    (the bare-install check runs there)."""
    torch_noise = ("Failed to initialize NumPy", "_conversion_method_template")
    return [line for line in text.strip().splitlines() if not any(n in line for n in torch_noise)]


def generator() -> nn.Sequential:
    """A vocoder-like generator normalized by torch's legacy weight norm (HiFi-GAN's)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm: deprecated
        return nn.Sequential(
            nn.utils.weight_norm(nn.Conv1d(2, 4, 3)),
            nn.LeakyReLU(0.1),
            nn.utils.weight_norm(nn.ConvTranspose1d(4, 2, 4)),
        )


def discriminator() -> nn.Sequential:
    """A discriminator normalized by torch's parametrize version, with a plain last layer."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Conv1d(1, 4, 3)), nn.Conv1d(4, 1, 3)
    )


def optimizer_state(model: nn.Module) -> dict[str, Any]:
    """An Adam state after one step (tensors in its state)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return opt.state_dict()


def training_checkpoint() -> dict[str, Any]:
    """The layout of HiFi-GAN / BigVGAN / VITS training checkpoints."""
    return {
        "generator": generator().state_dict(),
        "discriminator": discriminator().state_dict(),
        "optim_g": optimizer_state(generator()),
        "steps": 1000,
    }


def same(a: object, b: object) -> bool:
    """Equal structures, tensor for tensor."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))  # type: ignore[arg-type]
    return a == b


def convert(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def refused(result: tuple[int, str, str], *fragments: str) -> str:
    """The error line, after checking it is one line, exit code 2, with every fragment."""
    code, out, err = result
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("weightnorm: error: "), err
    assert "\x1b" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- several state dicts --------------------------------------------------------------------------


def test_every_state_dict_of_a_training_checkpoint_converts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only ``generator`` used to convert, silently: now every state dict does, each reported;
    the optimizer state and other entries are copied unchanged."""
    ckpt = training_checkpoint()
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(ckpt, src)
    code, out, err = convert(capsys, src, dst, "--to", "plain")
    assert code == 0, err
    assert out == (
        f"wrote {dst} (plain format): generator: 0 renamed, 2 folded, 0 normalized; "
        "discriminator: 0 renamed, 1 folded, 0 normalized; "
        "copied unchanged: optim_g (optimizer state)\n"
    )
    saved = torch.load(dst, weights_only=True)
    assert list(saved) == list(ckpt)
    assert same(saved["optim_g"], ckpt["optim_g"])
    assert saved["steps"] == 1000
    for build, key in ((generator, "generator"), (discriminator, "discriminator")):
        source = build()
        plain = wn.fold(build())
        plain.load_state_dict(saved[key])  # strict
        x = torch.randn(2, 2 if key == "generator" else 1, 9)
        torch.testing.assert_close(plain(x), source(x))


def test_key_converts_one_state_dict_and_copies_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = training_checkpoint()
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(ckpt, src)
    code, out, err = convert(capsys, src, dst, "--to", "weightnorm", "--key", "discriminator")
    assert code == 0, err
    assert out == (
        f"wrote {dst} (weightnorm format): discriminator: 1 renamed, 0 folded, 0 normalized; "
        "copied unchanged: generator (not --key), optim_g (optimizer state)\n"
    )
    saved = torch.load(dst, weights_only=True)
    assert same(saved["generator"], ckpt["generator"])
    assert same(saved["optim_g"], ckpt["optim_g"])
    assert wn.formats.detect_formats(saved["discriminator"]) == {"0.weight": "weightnorm"}


@pytest.mark.parametrize(
    ("key", "fragments"),
    [
        ("optim_g", ["in.pt: --key optim_g: an optimizer state, not a model's state dict"]),
        ("steps", ["--key steps: not a state dict"]),
        ("nope", ["--key nope: no such entry", "its state dicts: generator, discriminator"]),
    ],
)
def test_key_that_names_no_state_dict_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, fragments: list[str]
) -> None:
    torch.save(training_checkpoint(), tmp_path / "in.pt")
    dst = tmp_path / "out.pt"
    refused(convert(capsys, tmp_path / "in.pt", dst, "--to", "plain", "--key", key), *fragments)
    assert not dst.exists()


def test_key_on_a_single_state_dict_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(generator().state_dict(), tmp_path / "in.pt")
    result = convert(capsys, tmp_path / "in.pt", tmp_path / "out.pt", "--to", "plain", "--key", "g")
    refused(result, "--key g: the checkpoint is one state dict")


@pytest.mark.parametrize("extra", [["--include", "*.weight"], ["--like", "like.pt"]])
def test_like_and_include_with_several_state_dicts_need_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    torch.save(training_checkpoint(), tmp_path / "in.pt")
    torch.save(wn.fold(generator()).state_dict(), tmp_path / "like.pt")
    extra = [str(tmp_path / e) if e.endswith(".pt") else e for e in extra]
    result = convert(capsys, tmp_path / "in.pt", tmp_path / "out.pt", "--to", "weightnorm", *extra)
    refused(result, "holds several state dicts (generator, discriminator)", "choose", "--key")
    assert not (tmp_path / "out.pt").exists()


def test_weight_norm_at_the_top_level_beside_state_dicts_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt: dict[str, Any] = dict(generator().state_dict())
    ckpt["ema"] = generator().state_dict()
    torch.save(ckpt, tmp_path / "in.pt")
    result = convert(capsys, tmp_path / "in.pt", tmp_path / "out.pt", "--to", "plain")
    refused(result, "weight-normalized tensors at the top level (0.weight, 2.weight)", "ema")


def test_optimizer_state_alone_is_no_state_dict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({"optim": optimizer_state(generator())}, tmp_path / "in.pt")
    result = convert(capsys, tmp_path / "in.pt", tmp_path / "out.pt", "--to", "plain")
    refused(result, "the file holds no state dict")


# --- what the library refuses, reported per state dict --------------------------------------------


@pytest.mark.parametrize("where", ["flat", "discriminator"])
def test_integer_tensors_are_refused_naming_key_and_dtype(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """Used to be a ``linalg.vector_norm`` traceback."""
    ckpt = training_checkpoint()
    sd = ckpt["discriminator"]
    key = "0.parametrizations.weight.original1"
    sd[key] = sd[key].round().to(torch.int64)
    torch.save(sd if where == "flat" else ckpt, tmp_path / "in.pt")
    dst = tmp_path / "out.pt"
    inside = "" if where == "flat" else "['discriminator']"
    message = f"in.pt{inside}: {key}: expected a floating-point tensor (the v of a weight norm)"
    refused(convert(capsys, tmp_path / "in.pt", dst, "--to", "plain"), message, "got dtype int64")
    assert not dst.exists()


def test_integer_weight_chosen_by_include_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sd = wn.fold(discriminator()).state_dict()
    sd["1.weight"] = sd["1.weight"].to(torch.int32)
    torch.save(sd, tmp_path / "in.pt")
    result = convert(
        capsys, tmp_path / "in.pt", tmp_path / "out.pt", "--to", "weightnorm", "--include", "*"
    )
    refused(result, "1.weight: expected a floating-point tensor (a weight to normalize)", "int32")


@pytest.mark.parametrize(
    ("drop", "lone"),
    [
        ("0.weight_v", "0.weight_g"),
        ("0.weight_g", "0.weight_v"),
        ("0.parametrizations.weight.original1", "0.parametrizations.weight.original0"),
        ("0.parametrizations.weight.original0", "0.parametrizations.weight.original1"),
    ],
)
def test_lone_g_or_v_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drop: str, lone: str
) -> None:
    """A lone g (or v) used to pass through ``--to plain`` unchanged, exit 0."""
    ckpt = training_checkpoint()
    if drop.startswith("0.weight"):
        del ckpt["generator"][drop]
        where = "generator"
    else:
        del ckpt["discriminator"][drop]
        where = "discriminator"
    torch.save(ckpt, tmp_path / "in.pt")
    dst = tmp_path / "out.pt"
    dst.write_bytes(b"the previous output")
    result = convert(capsys, tmp_path / "in.pt", dst, "--to", "plain")
    refused(result, f"in.pt['{where}']: {lone} is the", f"expected {drop} beside it")
    assert dst.read_bytes() == b"the previous output"  # nothing written, nothing half-converted


# --- unreadable inputs ----------------------------------------------------------------------------


class Custom:
    """An arbitrary pickled object: weights-only loading refuses it."""

    def __init__(self) -> None:
        self.value = 1


def _torch_bytes(obj: object, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _zip(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return buffer.getvalue()


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\x00" * 4


_LINEAR = "torch.nn.modules.linear.Linear"
_MODULE = [f"holds a pickled module ({_LINEAR})", "save model.state_dict()", "--unsafe-load"]

# name: (the file's bytes, what the error says, what it must not say)
UNREADABLE: dict[str, tuple[Callable[[], bytes], list[str], list[str]]] = {
    "random-bytes": (
        lambda: b"\x07" + random.Random(0).randbytes(255),
        ["is not a PyTorch checkpoint: unrecognized content"],
        ["--unsafe-load", "weights_only", "Weights only"],
    ),
    "empty": (lambda: b"", ["is not a PyTorch checkpoint: empty file"], ["--unsafe-load"]),
    "text": (lambda: b"hello\n", ["is not a PyTorch checkpoint: it holds text"], ["101"]),
    "pickled-module": (lambda: _torch_bytes(nn.Linear(2, 2)), _MODULE, ["Weights only"]),
    "pickled-module-legacy": (
        lambda: _torch_bytes(nn.Linear(2, 2), _use_new_zipfile_serialization=False),
        _MODULE,
        [],
    ),
    "pickled-object": (
        lambda: _torch_bytes({"model": nn.Linear(2, 2).state_dict(), "extra": Custom()}),
        ["holds pickled Python objects", "Custom", "if you trust the file, pass --unsafe-load"],
        [],
    ),
    "truncated-zip": (
        lambda: _torch_bytes(nn.Linear(2, 2).state_dict())[:300],
        ["is not a PyTorch checkpoint: a damaged or truncated zip archive"],
        ["--unsafe-load"],
    ),
    "truncated-legacy": (
        lambda: _torch_bytes(nn.Linear(2, 2).state_dict(), _use_new_zipfile_serialization=False)[
            :200
        ],
        ["is a damaged or truncated PyTorch checkpoint (legacy format)"],
        ["--unsafe-load"],
    ),
    "python-pickle": (
        lambda: pickle.dumps({"w": 1}),
        ["is not a PyTorch checkpoint but a Python pickle"],
        ["--unsafe-load"],
    ),
    "other-zip": (lambda: _zip("notes.txt"), ["no data.pkl"], ["--unsafe-load"]),
    "torchscript": (
        lambda: _zip("m/data.pkl", "m/constants.pkl"),
        ["a TorchScript archive", "torch.jit.load"],
        ["--unsafe-load"],
    ),
    "safetensors": (lambda: _safetensors(), ["a safetensors file"], ["--unsafe-load"]),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
@pytest.mark.parametrize("role", ["input", "like"])
def test_unreadable_file_is_named_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, role: str
) -> None:
    """Each kind of unreadable file gets its own reason; --unsafe-load is advised only for a
    valid torch file that holds pickled objects, and torch's text never leaks through."""
    content, says, never = UNREADABLE[case]
    bad, good, dst = tmp_path / "bad.pt", tmp_path / "good.pt", tmp_path / "out.pt"
    bad.write_bytes(content())
    torch.save(generator().state_dict(), good)
    args: list[object] = [bad, dst] if role == "input" else [good, dst, "--like", bad]
    line = refused(convert(capsys, *args, "--to", "weightnorm"), *says)
    assert f"{'' if role == 'input' else '--like '}{bad}" in line
    for fragment in never:
        assert fragment not in line
    assert not dst.exists()


def test_missing_input_and_folder_input_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out.pt"
    refused(convert(capsys, tmp_path / "nope.pt", dst, "--to", "plain"), "nope.pt does not exist")
    refused(convert(capsys, tmp_path, dst, "--to", "plain"), f"{tmp_path} is a folder")
    assert not dst.exists()


def test_pickled_module_with_unsafe_load_says_what_to_save(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "in.pt")
    result = convert(
        capsys, tmp_path / "in.pt", tmp_path / "o.pt", "--to", "plain", "--unsafe-load"
    )
    refused(result, "got a pickled Linear module: save model.state_dict()")


def test_errors_are_one_line_without_traceback_in_a_fresh_process(tmp_path: Path) -> None:
    """The same through the console entry point: no torch warning, no traceback, one line."""
    (tmp_path / "rand.pt").write_bytes(UNREADABLE["random-bytes"][0]())
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    for name in ("rand.pt", "module.pt"):
        command = ["convert", str(tmp_path / name), str(tmp_path / "x.pt"), "--to", "plain"]
        proc = subprocess.run(
            [sys.executable, "-m", "weightnorm", *command], capture_output=True, text=True
        )
        assert proc.returncode == 2
        assert len(stderr_lines(proc.stderr)) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "\x1b" not in proc.stderr
        assert not (tmp_path / "x.pt").exists()


# --- the output -----------------------------------------------------------------------------------


def test_output_is_checked_before_the_input_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing output folder used to be created, after the conversion."""
    torch.save(generator().state_dict(), tmp_path / "in.pt")
    missing = tmp_path / "missing" / "out.pt"
    refused(
        convert(capsys, tmp_path / "in.pt", missing, "--to", "plain"),
        f"output {missing}: the folder {missing.parent} does not exist",
    )
    assert not missing.parent.exists()
    result = convert(capsys, tmp_path / "nope.pt", missing, "--to", "plain")
    refused(result, f"the folder {missing.parent} does not exist")  # before the input is read
    refused(convert(capsys, tmp_path / "in.pt", tmp_path, "--to", "plain"), "is a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a read-only folder)")
def test_unwritable_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(generator().state_dict(), tmp_path / "in.pt")
    result = convert(capsys, tmp_path / "in.pt", "/proc/out.pt", "--to", "plain")
    refused(result, "output /proc/out.pt: not writable")


def test_output_may_be_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The write is atomic, so converting in place is safe."""
    ckpt = training_checkpoint()
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    code, _, err = convert(capsys, path, path, "--to", "parametrize")
    assert code == 0, err
    saved = torch.load(path, weights_only=True)
    assert wn.formats.detect_formats(saved["generator"]) == {
        "0.weight": "parametrize",
        "2.weight": "parametrize",
    }
    assert same(saved["discriminator"], ckpt["discriminator"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


# --- help -----------------------------------------------------------------------------------------


def test_every_convert_argument_has_help() -> None:
    parser = next(
        child
        for action in build_parser()._actions
        if hasattr(action, "choices") and isinstance(action.choices, dict)
        for name, child in action.choices.items()
        if name == "convert"
    )
    for action in parser._actions:
        assert action.help, action.dest
    text = " ".join(parser.format_help().split())
    assert text.count("default:") == text.count("(default:") <= 1
    assert "several state dicts" in text
    assert "optimizer states" in text


# --- layering -------------------------------------------------------------------------------------


def test_convert_uses_only_the_public_library_api() -> None:
    """``weightnorm convert`` is a user of the library: public modules, names in their
    ``__all__`` (it used to import ``formats._convert``)."""
    import ast
    import importlib

    import weightnorm.cli.convert as command

    tree = ast.parse(Path(command.__file__).read_text())
    seen = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level < 2:
            continue  # not weightnorm's library (stdlib, torch, the CLI's own ._common)
        module = "weightnorm" + (f".{node.module}" if node.module else "")
        if module.startswith("weightnorm.experiments"):
            continue  # the layer beside the CLI (its atomic file writes)
        public = importlib.import_module(module).__all__
        for alias in node.names:
            assert not any(part.startswith("_") for part in module.split(".")), module
            assert alias.name in public, f"{module}.{alias.name} is not public"
            seen.append(f"{module}.{alias.name}")
    assert "weightnorm.formats.convert_with_report" in seen
