"""Nothing in a checkpoint is trusted: a pickle that would run code is refused on every load path
with the blocked global named; a nat-train checkpoint's stored config is validated and its model
arguments must be the model's own hyper-parameters (no second file is loaded, no URL fetched);
bad model arguments and weights of other shapes are one-line errors before anything is written."""

from __future__ import annotations

import configparser
import os
import pickle
import socket
from importlib.metadata import version
from pathlib import Path

import pytest
import test_train
import torch
from packaging.version import Version
from scripts_loader import load_script
from test_train import ROOT, _train

from classification import train as train_cli
from classification import validate as validate_cli
from classification.checkpoint import CheckpointFileError, load_checkpoint_file
from classification.training.state import (
    CheckpointError,
    atomic_save,
    load_training_checkpoint,
)

config = test_train.config
data_dir = test_train.data_dir
full_run = test_train.full_run


def _error_line(capsys: pytest.CaptureFixture[str], prefix: str = "nat-") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def malicious(tmp_path: Path, marker: Path, full_run: Path) -> Path:
    """A nat-train checkpoint with one object more: one that touches `marker` when unpickled."""
    ckpt = load_training_checkpoint(full_run / "checkpoint-00000003.pth")
    ckpt["extra"] = _RunsCode(f"touch {marker}")
    path = tmp_path / "evil" / "checkpoint-00000009.pth"
    path.parent.mkdir()
    torch.save(ckpt, path)
    return path


def _assert_blocked(line: str, marker: Path, path: Path) -> None:
    """The blocked global is named, torch's advice to load the file unsafely is not repeated."""
    assert str(path) in line and "posix.system" in line, line
    message = line.replace(str(path), "FILE")
    assert "weights_only" not in message and "trusted source" not in message, line
    assert not marker.exists()


# ------------------------------------------------------------------ pickles that run code
def test_weights_only_errors_name_the_blocked_global(tmp_path: Path, marker: Path) -> None:
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as f:  # a plain pickle, not torch's zip format
        pickle.dump({"w": _RunsCode(f"touch {marker}")}, f, protocol=2)
    zipped = tmp_path / "zipped.pth"
    torch.save({"w": torch.ones(1), "x": _RunsCode(f"touch {marker}")}, zipped)
    for path in (legacy, zipped):
        with pytest.raises(CheckpointFileError) as info:
            load_checkpoint_file(path)
        _assert_blocked(str(info.value), marker, path)
        with pytest.raises(CheckpointError) as info:
            load_training_checkpoint(path)
        _assert_blocked(str(info.value), marker, path)
        assert "\n" not in str(info.value)


def test_validate_refuses_a_malicious_checkpoint(
    malicious: Path, marker: Path, data_dir: Path, capsys
) -> None:
    args = ["--checkpoint", str(malicious), "--data", str(data_dir), "--workers", "0"]
    assert validate_cli.main(args) == 2
    _assert_blocked(_error_line(capsys), marker, malicious)
    assert validate_cli.main([*args, "--model", "nat_mini"]) == 2
    _assert_blocked(_error_line(capsys), marker, malicious)


@pytest.mark.parametrize("how", ["file", "file-with-config", "auto", "init"])
def test_train_refuses_a_malicious_checkpoint(
    tmp_path: Path, malicious: Path, marker: Path, config: Path, data_dir: Path, capsys, how
) -> None:
    run_dir = malicious.parent
    if how == "file":
        rc = train_cli.main(["--resume", str(malicious)])
    elif how == "file-with-config":
        rc = _train(config, data_dir, run_dir, "--resume", str(malicious))
    elif how == "auto":
        rc = _train(config, data_dir, run_dir, "--resume", "auto")
    else:
        run_dir = tmp_path / "run"
        rc = _train(config, data_dir, run_dir, "--set", f"model.init_checkpoint={malicious}")
        assert not run_dir.exists()
    assert rc == 2
    _assert_blocked(_error_line(capsys), marker, malicious)


def test_convert_checkpoint_refuses_a_malicious_checkpoint(
    tmp_path: Path, malicious: Path, marker: Path, capsys
) -> None:
    cli = load_script("convert_checkpoint")
    out = tmp_path / "out.pth"
    assert cli.main([str(malicious), str(out)]) == 2
    _assert_blocked(_error_line(capsys, "convert_checkpoint.py: error: "), marker, malicious)
    assert not out.exists()


# ----------------------------------------------------- the model a checkpoint's config builds
def _crafted(full_run: Path, tmp_path: Path, name: str, edit) -> Path:
    """checkpoint-00000003.pth of the tiny run with its stored config changed by `edit`."""
    ckpt = load_training_checkpoint(full_run / "checkpoint-00000003.pth")
    edit(ckpt["config"])
    ckpt["config"]["run"]["dir"] = None
    path = tmp_path / name / "checkpoint-00000003.pth"
    path.parent.mkdir()
    atomic_save(ckpt, path)
    return path


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file torch.load opens from here on."""
    opened: list[str] = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        opened.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return opened


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every internet-socket connection attempted from here on."""
    attempts: list = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_a_checkpoint_path_in_the_stored_model_arguments_is_never_loaded(
    tmp_path: Path, full_run: Path, data_dir: Path, malicious: Path, marker: Path, loads, capsys
) -> None:
    def edit(cfg):
        cfg["model"]["kwargs"]["checkpoint_path"] = str(malicious)

    crafted = _crafted(full_run, tmp_path, "crafted", edit)
    loads.clear()
    args = ["--checkpoint", str(crafted), "--data", str(data_dir), "--workers", "0"]
    assert validate_cli.main(args) == 2
    line = _error_line(capsys)
    assert "model.kwargs" in line and "'checkpoint_path'" in line and "embed_dim" in line
    before = _files(crafted.parent)
    assert train_cli.main(["--resume", str(crafted)]) == 2
    line = _error_line(capsys)
    assert "model.kwargs" in line and "'checkpoint_path'" in line
    assert str(malicious) not in loads and not marker.exists()
    assert _files(crafted.parent) == before


def test_a_url_in_the_stored_model_arguments_is_never_fetched(
    tmp_path: Path, full_run: Path, data_dir: Path, connections, capsys
) -> None:
    def edit(cfg):
        cfg["model"]["pretrained"] = True
        cfg["model"]["kwargs"]["pretrained_cfg_overlay"] = {"url": "http://127.0.0.1:9/w.pth"}

    crafted = _crafted(full_run, tmp_path, "crafted", edit)
    assert train_cli.main(["--resume", str(crafted)]) == 2
    line = _error_line(capsys)
    assert "model.kwargs" in line and "'pretrained_cfg_overlay'" in line
    args = ["--checkpoint", str(crafted), "--data", str(data_dir), "--workers", "0"]
    assert validate_cli.main(args) == 2
    assert "'pretrained_cfg_overlay'" in _error_line(capsys)
    assert connections == []


def test_resume_never_loads_the_initial_weights_again(
    tmp_path: Path, full_run: Path, data_dir: Path, connections, loads
) -> None:
    """The weights come from the checkpoint: model.init_checkpoint / pretrained (which a
    downloaded checkpoint may point anywhere) are not loaded on resume."""

    def edit(cfg):
        cfg["model"]["init_checkpoint"] = "http://127.0.0.1:9/w.pth"
        cfg["model"]["pretrained"] = True
        cfg["data"]["path"] = str(data_dir)

    crafted = _crafted(full_run, tmp_path, "crafted", edit)
    loads.clear()
    assert train_cli.main(["--resume", str(crafted), "--set", "train.max_steps=4"]) == 0
    assert connections == []
    assert (crafted.parent / "checkpoint-00000004.pth").is_file()
    assert [p for p in loads if not p.startswith(str(crafted.parent))] == [], (loads, crafted)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _set(*path_and_value):
    """An edit of a checkpoint that sets config[path...] = value."""
    *path, value = path_and_value

    def edit(ckpt):
        node = ckpt["config"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


MALFORMED = {
    "not-a-mapping": (lambda ckpt: ckpt.update(config="nat_mini"), "config"),
    "section-not-a-mapping": (_set("data", 5), "'data'"),
    "name-of-another-type": (_set("model", "name", ["nat_mini"]), "model.name"),
    "huge-image": (_set("data", "img_size", 1_000_000), "data.img_size"),
    "nan-mean": (_set("data", "mean", [float("nan"), 0.5, 0.5]), "data.mean"),
    "negative-width": (_set("model", "kwargs", "embed_dim", -32), "model.kwargs.embed_dim"),
    "kwargs-not-a-mapping": (_set("model", "kwargs", [1, 2]), "model.kwargs"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_stored_config_is_one_line(
    tmp_path: Path, full_run: Path, data_dir: Path, capsys, case: str
) -> None:
    edit, key = MALFORMED[case]
    ckpt = load_training_checkpoint(full_run / "checkpoint-00000003.pth")
    ckpt["config"]["run"]["dir"] = None  # a run that gets that far writes beside the checkpoint
    edit(ckpt)
    crafted = tmp_path / "crafted" / "checkpoint-00000003.pth"
    crafted.parent.mkdir()
    atomic_save(ckpt, crafted)
    before = _files(crafted.parent)
    args = ["--checkpoint", str(crafted), "--data", str(data_dir), "--workers", "0"]
    assert validate_cli.main(args) == 2
    line = _error_line(capsys)
    assert str(crafted) in line and key in line, line
    assert train_cli.main(["--resume", str(crafted), "--data", str(data_dir)]) == 2
    line = _error_line(capsys)
    assert str(crafted) in line and key in line, line
    assert _files(crafted.parent) == before


# ------------------------------------------------------------ model arguments and init weights
@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("model.kwargs.embed_dim=-32", ["model.kwargs.embed_dim", "-32", ">= 1"]),
        ("model.kwargs.kernel_size=4", ["model.kwargs.kernel_size", "odd", "[3, 4]"]),
        ("model.kwargs.kernel_size=9", ["model.kwargs.kernel_size", "[3, 4]", "data.img_size"]),
        ("model.kwargs.in_chans=1", ["model.kwargs.in_chans", "3"]),
        ("model.kwargs.mlp_ratio=-1.0", ["model.kwargs.mlp_ratio", "> 0"]),
        ("model.kwargs.depths=[1,0,1,1]", ["model.kwargs.depths", ">= 1"]),
        ("model.kwargs.num_heads=[3,1,2,2]", ["model.kwargs", "num_heads"]),
        ("model.kwargs.norm_layer=x", ["model.kwargs", "'norm_layer'", "embed_dim"]),
        ("model.kwargs.device=meta", ["model.kwargs", "'device'"]),
    ],
)
def test_bad_model_arguments_are_one_line_before_anything_is_written(
    tmp_path: Path, config: Path, data_dir: Path, capsys, setting: str, words: list[str]
) -> None:
    top = tmp_path / "out"
    assert _train(config, data_dir, top / "run", "--set", setting) == 2
    line = _error_line(capsys)
    assert all(word in line for word in words), line
    assert not top.exists()


def test_init_checkpoint_of_other_shapes_is_one_line(
    tmp_path: Path, config: Path, data_dir: Path, full_run: Path, capsys
) -> None:
    import timm

    other = timm.create_model(
        "nat_mini", num_classes=10, embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]
    )
    weights = tmp_path / "other.pth"
    torch.save(other.state_dict(), weights)
    top = tmp_path / "out"
    assert _train(config, data_dir, top / "run", "--set", f"model.init_checkpoint={weights}") == 2
    line = _error_line(capsys)
    assert "model.init_checkpoint" in line and str(weights) in line
    assert "patch_embed" in line and " vs " in line  # the tensor and both shapes
    assert not top.exists()


# ------------------------------------------------------------------------------- dependencies
def test_dependency_floors_load_weights_only_by_default() -> None:
    """torch >= 2.6: torch.load defaults to weights_only=True (mmengine's loads rely on it);
    timm >= 1.0.26: its load_checkpoint / load_state_dict default to weights_only=True."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    floors = {}
    for line in parser["options"]["install_requires"].split():
        if ">=" in line:
            name, floor = line.split(">=")
            floors[name] = Version(floor.split(",")[0])
    assert floors["torch"] >= Version("2.6") and floors["timm"] >= Version("1.0.26")
    assert Version(version("torch").split("+")[0]) >= floors["torch"]
    assert Version(version("timm")) >= floors["timm"]
    import inspect

    from timm.models import load_checkpoint, load_state_dict

    for fn in (load_checkpoint, load_state_dict):
        assert inspect.signature(fn).parameters["weights_only"].default is True
