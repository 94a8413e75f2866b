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


#: What a clone without git-lfs leaves in place of a model hub's file.
_LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 377607901\n"
)

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
    "safetensors": (
        lambda: _safetensors(),
        ["is not a PyTorch checkpoint but a safetensors file: name it *.safetensors"],
        ["--unsafe-load"],
    ),
    "git-lfs-pointer": (
        lambda: _LFS_POINTER,
        ["is not a PyTorch checkpoint but a Git LFS pointer", "git lfs pull"],
        ["text"],
    ),
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
    # damaged, or (on the bare install) the extra it needs missing: one line either way
    (tmp_path / "cut.safetensors").write_bytes(_safetensors()[:-2])
    for name in ("rand.pt", "module.pt", "cut.safetensors"):
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


# --- safetensors ----------------------------------------------------------------------------------


@pytest.fixture
def st() -> Any:
    """``safetensors.torch`` (the 'safetensors' extra; absent from the bare install)."""
    pytest.importorskip("numpy", reason="the 'safetensors' extra is not installed")
    return pytest.importorskip(
        "safetensors.torch", reason="the 'safetensors' extra is not installed"
    )


def parametrize_generator() -> nn.Sequential:
    """:func:`generator` normalized by torch's parametrize version (the keys of ``--to
    parametrize``)."""
    torch.manual_seed(0)
    weight_norm = nn.utils.parametrizations.weight_norm
    return nn.Sequential(
        weight_norm(nn.Conv1d(2, 4, 3)), nn.LeakyReLU(0.1), weight_norm(nn.ConvTranspose1d(4, 2, 4))
    )


def header(path: Path) -> dict[str, Any]:
    """A safetensors file's JSON header, read by the format's definition (not by safetensors):
    an 8-byte little-endian size, then that many bytes of JSON."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    parsed: dict[str, Any] = json.loads(raw[8 : 8 + size])
    return parsed


def read(st: Any, path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        loaded: dict[str, torch.Tensor] = st.load_file(path)
        return loaded
    saved: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return saved


def write(st: Any, path: Path, sd: dict[str, torch.Tensor], **metadata: str) -> None:
    if path.suffix == ".safetensors":
        st.save_file(sd, path, metadata=metadata or None)
    else:
        torch.save(sd, path)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same keys (a safetensors file keeps no order) and tensors, bit for bit, dtype too."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


DIRECTIONS = [("pt", "safetensors"), ("safetensors", "pt"), ("safetensors", "safetensors")]


@pytest.mark.parametrize("to", ["weightnorm", "parametrize", "plain"])
@pytest.mark.parametrize(("src_ext", "dst_ext"), DIRECTIONS)
def test_safetensors_converts_in_every_direction(
    st: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], src_ext: str, dst_ext: str, to: str
) -> None:
    """The file holds what ``wn.convert_state_dict`` returns, bit for bit, and loads strictly
    into the model of that format (torch's legacy hook, torch's parametrize, plain)."""
    source = generator()
    src, dst = tmp_path / f"in.{src_ext}", tmp_path / f"out.{dst_ext}"
    write(st, src, source.state_dict())
    code, out, err = convert(capsys, src, dst, "--to", to)
    assert code == 0, err
    assert out.startswith(f"wrote {dst} ({to} format): ")
    converted = read(st, dst)
    same_tensors(converted, wn.convert_state_dict(source.state_dict(), to=to))  # type: ignore[arg-type]
    target = {"weightnorm": generator, "parametrize": parametrize_generator}.get(to)
    model = wn.fold(generator()) if target is None else target()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 2, 9)
    with torch.no_grad():
        if to == "plain":  # the folded weight: the same math, another rounding
            torch.testing.assert_close(model(x), source(x))
        else:
            assert torch.equal(model(x), source(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_safetensors_keeps_dtypes_bit_for_bit(
    st: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: torch.dtype
) -> None:
    """.pt -> .safetensors -> .pt returns the checkpoint's tensors unchanged, dtype included."""
    sd = {k: v.to(dtype) for k, v in generator().state_dict().items()}
    sd["steps"] = torch.tensor(1000)  # an int64 scalar beside them
    a, b, c = tmp_path / "a.pt", tmp_path / "b.safetensors", tmp_path / "c.pt"
    torch.save(sd, a)
    assert convert(capsys, a, b, "--to", "weightnorm")[0] == 0
    assert convert(capsys, b, c, "--to", "weightnorm")[0] == 0
    same_tensors(torch.load(c, weights_only=True), sd)


def test_safetensors_metadata_is_kept_or_named_when_dropped(
    st: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """.safetensors -> .safetensors keeps the header's metadata as it was; .pt ->
    .safetensors writes transformers' {"format": "pt"}; .safetensors -> .pt says what a .pt
    file cannot keep ({"format": "pt"} goes without saying)."""
    sd = generator().state_dict()
    src = tmp_path / "in.safetensors"
    st.save_file(sd, src, metadata={"format": "pt", "trained_steps": "1000"})
    assert convert(capsys, src, tmp_path / "a.safetensors", "--to", "plain")[0] == 0
    assert header(tmp_path / "a.safetensors")["__metadata__"] == {
        "format": "pt",
        "trained_steps": "1000",
    }
    torch.save(sd, tmp_path / "in.pt")
    assert convert(capsys, tmp_path / "in.pt", tmp_path / "b.safetensors", "--to", "plain")[0] == 0
    assert header(tmp_path / "b.safetensors")["__metadata__"] == {"format": "pt"}
    st.save_file(sd, tmp_path / "bare.safetensors")  # no metadata: none invented
    bare = tmp_path / "bare.safetensors"
    assert convert(capsys, bare, tmp_path / "c.safetensors", "--to", "plain")[0] == 0
    assert "__metadata__" not in header(tmp_path / "c.safetensors")
    code, out, _ = convert(capsys, src, tmp_path / "d.pt", "--to", "plain")
    assert code == 0
    assert out.endswith("; safetensors metadata not kept (a .pt file has none): trained_steps\n")


def test_tied_and_non_contiguous_tensors_are_written_as_their_own(
    st: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """safetensors refuses tensors that share memory (tied weights) and non-contiguous ones;
    each key gets its own copy, so the file still loads strictly into the tied model."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(6, 4)
            self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3))
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.embed.weight  # tied, as a language model's
            self.register_buffer("mel_basis", torch.randn(5, 4).t())  # non-contiguous

    torch.manual_seed(0)
    source = Tied()
    sd = source.state_dict()
    assert sd["head.weight"].data_ptr() == sd["embed.weight"].data_ptr()
    assert not sd["mel_basis"].is_contiguous()
    src, dst = tmp_path / "in.pt", tmp_path / "out.safetensors"
    torch.save(sd, src)
    code, out, err = convert(capsys, src, dst, "--to", "weightnorm")
    assert code == 0, err
    assert out.endswith("tensors that shared storage written as copies: head.weight\n")
    converted = st.load_file(dst)
    same_tensors(converted, wn.convert_state_dict(sd, to="weightnorm"))
    model = Tied()
    wn.replace_torch_weight_norm(model)
    model.load_state_dict(converted, strict=True)
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, source.embed.weight)


# The models of the users who hold .safetensors files, built by transformers from small configs
# (random weights, nothing downloaded).


@pytest.fixture
def zoo() -> Any:
    pytest.importorskip("transformers", reason="the 'zoo' extra is not installed")
    from weightnorm.experiments import zoo

    return zoo


def zoo_output(spec: Any, model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = spec.output(model.eval(), spec.inputs(0))
    return out


@pytest.mark.parametrize("dst_ext", ["safetensors", "pt"])
@pytest.mark.parametrize("to", ["weightnorm", "parametrize", "plain"])
def test_old_wav2vec2_hub_file_converts_and_loads_strictly(
    st: Any, zoo: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], to: str, dst_ext: str
) -> None:
    """A wav2vec2 model.safetensors as older hub uploads carry it (the positional conv's
    weight_g/weight_v), converted to each format: it loads strictly into transformers' own
    Wav2Vec2Model (parametrize), the model migrated to ours (weightnorm), the folded one
    (plain), and computes what the original did."""
    spec = zoo.ZOO["wav2vec2"]
    theirs = spec.build()
    old = wn.convert_state_dict(theirs.state_dict(), to="weightnorm")
    assert "encoder.pos_conv_embed.conv.weight_g" in old
    src, dst = tmp_path / "model.safetensors", tmp_path / f"out.{dst_ext}"
    st.save_file(old, src, metadata={"format": "pt"})
    code, _, err = convert(capsys, src, dst, "--to", to)
    assert code == 0, err
    target = {
        "parametrize": spec.build(seed=1),
        "weightnorm": wn.replace_torch_weight_norm(spec.build(seed=1)),
        "plain": wn.fold(spec.build(seed=1)),
    }[to]
    target.load_state_dict(read(st, dst), strict=True)
    if to == "plain":
        torch.testing.assert_close(zoo_output(spec, target), zoo_output(spec, theirs))
    else:
        assert torch.equal(zoo_output(spec, target), zoo_output(spec, theirs))
    if dst_ext == "safetensors":
        assert header(dst)["__metadata__"] == {"format": "pt"}


def test_hifigan_saved_by_transformers_folds_in_place_and_loads_with_from_pretrained(
    st: Any, zoo: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SpeechT5HifiGan trained with weight norm and saved with save_pretrained: its
    model.safetensors folded in place (the output is the input) loads strictly into the
    inference model transformers builds from the config, and through from_pretrained."""
    import transformers

    spec = zoo.ZOO["speecht5-hifigan"]
    trained = spec.build()
    trained.save_pretrained(tmp_path, safe_serialization=True)
    path = tmp_path / "model.safetensors"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = convert(capsys, path, path, "--to", "plain")
    assert code == 0, err
    assert out.startswith(f"wrote {path} (plain format): 0 renamed, ")
    assert ", 0 folded" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left
    assert header(path)["__metadata__"] == {"format": "pt"}
    inference = transformers.SpeechT5HifiGan(trained.config)  # no weight norm: plain weights
    inference.load_state_dict(st.load_file(path), strict=True)
    expected = zoo_output(spec, trained)
    torch.testing.assert_close(zoo_output(spec, inference), expected)
    loaded = transformers.SpeechT5HifiGan.from_pretrained(tmp_path)
    assert torch.equal(zoo_output(spec, loaded), zoo_output(spec, inference))


@pytest.mark.parametrize("like_ext", ["safetensors", "pt"])
def test_plain_univnet_safetensors_becomes_trainable_like_a_template(
    st: Any, zoo: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], like_ext: str
) -> None:
    """An inference (folded) UnivNet model.safetensors, normalized with --like a checkpoint
    of the training model (either format): it loads strictly into transformers' UnivNetModel
    with its weight norm applied, as transformers trains it."""
    spec = zoo.ZOO["univnet"]
    trained = spec.build()
    src, like = tmp_path / "plain.safetensors", tmp_path / f"like.{like_ext}"
    dst = tmp_path / "trainable.safetensors"
    st.save_file(wn.fold(spec.build()).state_dict(), src, metadata={"format": "pt"})
    write(st, like, spec.build(seed=1).state_dict())
    code, out, err = convert(capsys, src, dst, "--to", "parametrize", "--like", like)
    assert code == 0, err
    assert ", 0 normalized" not in out
    target = spec.build(seed=2)
    target.load_state_dict(st.load_file(dst), strict=True)
    torch.testing.assert_close(zoo_output(spec, target), zoo_output(spec, trained))


def test_convert_state_dict_output_saves_with_safetensors_directly(st: Any, tmp_path: Path) -> None:
    """The Python route the README gives: load_file, wn.convert_state_dict, save_file (no
    shared or non-contiguous tensor in the result), each format loading strictly."""
    sd = st.load_file(_saved(st, tmp_path / "in.safetensors", generator().state_dict()))
    for to, build in (
        ("weightnorm", generator),
        ("parametrize", parametrize_generator),
        ("plain", lambda: wn.fold(generator())),
    ):
        st.save_file(wn.convert_state_dict(sd, to=to), tmp_path / f"{to}.safetensors")
        build().load_state_dict(st.load_file(tmp_path / f"{to}.safetensors"), strict=True)


def _saved(st: Any, path: Path, sd: dict[str, torch.Tensor]) -> Path:
    st.save_file(sd, path)
    return path


# What a safetensors file cannot hold: refused before any work, the previous output untouched.


def _sparse() -> dict[str, Any]:
    sd: dict[str, Any] = dict(generator().state_dict())
    sd["lookup"] = torch.eye(3).to_sparse()
    return sd


def _complex() -> dict[str, Any]:
    sd: dict[str, Any] = dict(generator().state_dict())
    sd["filters"] = torch.zeros(3, dtype=torch.complex128)
    return sd


def _with_epoch() -> dict[str, Any]:
    sd: dict[str, Any] = dict(generator().state_dict())
    sd["epoch"] = 3
    return sd


# name: (the checkpoint, extra arguments, what the error says)
NOT_SAFETENSORS: dict[str, tuple[Callable[[], object], list[str], list[str]]] = {
    "training-checkpoint": (
        training_checkpoint,
        [],
        [
            "out.safetensors: a safetensors file holds one flat dict of tensors, and",
            "in.pt holds several entries (generator, discriminator, optim_g, steps)",
            "write a .pt file",
        ],
    ),
    "training-checkpoint-key": (
        training_checkpoint,
        ["--key", "generator"],
        ["holds several entries (generator, discriminator, optim_g, steps)"],
    ),
    "non-tensor": (_with_epoch, [], ["holds only tensors; got epoch (int): write a .pt file"]),
    "sparse": (_sparse, [], ["dense tensors only; got lookup (sparse_coo)"]),
    "complex128": (_complex, [], ["cannot hold the dtype of filters (complex128)"]),
}


@pytest.mark.parametrize("case", list(NOT_SAFETENSORS))
def test_what_safetensors_cannot_hold_is_refused_before_writing(
    st: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    build, extra, says = NOT_SAFETENSORS[case]
    src, dst = tmp_path / "in.pt", tmp_path / "out.safetensors"
    torch.save(build(), src)
    dst.write_bytes(b"the previous output")
    refused(convert(capsys, src, dst, "--to", "plain", *extra), *says)
    assert dst.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt", "out.safetensors"]


def _torch_zip() -> bytes:
    return _torch_bytes(generator().state_dict())


def _valid() -> bytes:
    import safetensors.torch

    data: bytes = safetensors.torch.save(generator().state_dict(), metadata={"format": "pt"})
    return data


# name: (the bytes of a file named *.safetensors, what the error says)
BAD_SAFETENSORS: dict[str, tuple[Callable[[], bytes], list[str]]] = {
    "empty": (lambda: b"", ["is not a safetensors file: empty file"]),
    "text": (lambda: b"<html>Not found</html>\n", ["is not a safetensors file: it holds text"]),
    "git-lfs-pointer": (
        lambda: _LFS_POINTER,
        ["is not a safetensors file but a Git LFS pointer", "run git lfs pull"],
    ),
    "torch-checkpoint": (
        _torch_zip,
        ["is not a safetensors file but a PyTorch checkpoint (torch.save): name it *.pt"],
    ),
    "torch-legacy": (
        lambda: _torch_bytes(generator().state_dict(), _use_new_zipfile_serialization=False),
        ["is not a safetensors file but a PyTorch checkpoint (torch.save, legacy format)"],
    ),
    "python-pickle": (
        lambda: pickle.dumps({"w": 1}),
        ["is not a safetensors file but a Python pickle"],
    ),
    "torchscript": (lambda: _zip("m/data.pkl", "m/constants.pkl"), ["a TorchScript archive"]),
    "random-bytes": (
        lambda: b"\x07" + random.Random(0).randbytes(255),
        ["is not a safetensors file: unrecognized content"],
    ),
    "cut-in-header": (
        lambda: _valid()[:100],
        ["is a truncated safetensors file: 100 bytes, shorter than its own header ("],
    ),
    "cut-in-data": (
        lambda: _valid()[:-10],
        ["is a damaged or truncated safetensors file ("],  # safetensors' reason, worded per version
    ),
    "bad-header": (
        lambda: (20).to_bytes(8, "little") + b'{"w": [1, 2, 3], "x"' + b"\x00" * 8,
        ["is a damaged or truncated safetensors file ("],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
@pytest.mark.parametrize("role", ["input", "like"])
def test_bad_safetensors_file_is_named_with_what_it_is(
    st: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, role: str
) -> None:
    content, says = BAD_SAFETENSORS[case]
    bad, good = tmp_path / "bad.safetensors", tmp_path / "good.safetensors"
    dst = tmp_path / "out.safetensors"
    bad.write_bytes(content())
    st.save_file(generator().state_dict(), good)
    args: list[object] = [bad, dst] if role == "input" else [good, dst, "--like", bad]
    line = refused(convert(capsys, *args, "--to", "weightnorm"), *says)
    assert f"error: {'' if role == 'input' else '--like '}{bad} " in line
    for leak in ("Traceback", "SafetensorError", "Error while deserializing"):
        assert leak not in line
    assert not dst.exists()


@pytest.mark.parametrize(
    ("role", "blocked", "says"),
    [
        ("input", "safetensors", "reading {path}"),
        ("like", "safetensors", "reading {path}"),
        ("output", "safetensors", "writing {path}"),
        ("output", "numpy", "writing {path}"),  # safetensors writes through numpy
    ],
)
def test_missing_extra_is_named_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    role: str,
    blocked: str,
    says: str,
) -> None:
    """As on a bare install (torch alone; .ci/run checks the real one): a .safetensors file
    names the extra to install, before anything is read, and .pt files still convert."""
    pt, path = tmp_path / "in.pt", tmp_path / f"{role}.safetensors"
    torch.save(generator().state_dict(), pt)
    monkeypatch.setitem(sys.modules, blocked, None)  # what the import system reads as absent
    args: dict[str, list[object]] = {
        "input": [path, tmp_path / "out.pt"],
        "like": [pt, tmp_path / "out.pt", "--like", path],
        "output": [pt, path],
    }
    line = refused(
        convert(capsys, *args[role], "--to", "parametrize"),
        f"{says.format(path=path)} needs the 'safetensors' extra (missing: ",
        "install it with: pip install 'weightnorm[safetensors]'",
    )
    assert blocked in line.split("missing: ", 1)[1].split(")", 1)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]
    code, _, err = convert(capsys, pt, tmp_path / "out.pt", "--to", "parametrize")
    assert code == 0, err


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


# --- nothing to do is an error -------------------------------------------------------------------


def plain_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.LeakyReLU(0.1), nn.Conv1d(4, 1, 3))


@pytest.mark.parametrize("to", ["weightnorm", "parametrize"])
def test_a_plain_checkpoint_needs_like_or_include(
    to: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 30: a plain checkpoint converted to a weight-norm format without --like or
    --include was written unchanged, with exit code 0 ("0 renamed, 0 folded, 0 normalized")."""
    src, dst = tmp_path / "plain.pt", tmp_path / "out.pt"
    torch.save(plain_model().state_dict(), src)
    line = refused(
        convert(capsys, src, dst, "--to", to),
        f"{src} holds no weight-normalized parameter",
        "--like MODEL",
        "--include PATTERN",
    )
    assert "would change nothing" in line
    assert not dst.exists()
    # told which, it normalizes them
    code, out, err = convert(capsys, src, dst, "--to", to, "--include", "0.weight")
    assert code == 0, err
    assert "1 normalized" in out


def test_a_plain_checkpoint_to_plain_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = tmp_path / "plain.pt", tmp_path / "out.pt"
    torch.save(plain_model().state_dict(), src)
    refused(convert(capsys, src, dst, "--to", "plain"), "plain already", "nothing to fold")
    assert not dst.exists()


def test_a_template_that_matches_nothing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--like a model whose weight norms are on other keys: nothing would change."""
    src, dst, like = tmp_path / "plain.pt", tmp_path / "out.pt", tmp_path / "like.pt"
    torch.save(plain_model().state_dict(), src)
    other = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity(), wn.WNConv1d(1, 1, 3))
    torch.save(other.state_dict(), like)
    refused(
        convert(capsys, src, dst, "--to", "weightnorm", "--like", like),
        "holds no weight-normalized parameter",
        f"--like {like}",
    )
    assert not dst.exists()


def test_a_checkpoint_already_in_the_format_is_written_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not an error: the output is in the format asked for, and the line says it was already."""
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(wn.apply_weight_norm(plain_model()).state_dict(), src)
    code, out, err = convert(capsys, src, dst, "--to", "weightnorm")
    assert code == 0, err
    assert out.strip().endswith("0 renamed, 0 folded, 0 normalized, 2 already weightnorm")
