"""What nat-train, nat-validate and scripts/export.py tell the user: the run header's resolved
schedule and precision, one-line errors for missing weights downloads and checkpoints of another
model, the class counts of a checkpoint and a dataset that differ, data-loader workers sized to
the machine. On CPU with the tiny NAT of tests/test_train.py."""

from __future__ import annotations

import json
import urllib.error
import warnings
from pathlib import Path

import pytest
import test_train
import torch
from scripts_loader import load_script
from test_train import _train

from classification import validate as validate_cli

config = test_train.config
data_dir = test_train.data_dir
full_run = test_train.full_run

TINY_KWARGS = json.dumps(
    {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "mlp_ratio": 1.0,
     "kernel_size": 3}
)  # fmt: skip


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_run_header_states_the_schedule_and_precision(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    settings = ["sched.cooldown_epochs=1", "train.amp=bf16", "train.max_steps=1"]
    assert _train(config, data_dir, tmp_path / "run", "--set", *settings) == 0
    out = capsys.readouterr().out
    assert "2 epochs + 1 cooldown = 3 epochs" in out
    assert "warmup 1 epoch" in out
    assert "bf16 autocast" in out


def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network and an empty download cache; returns the cache folder for checkpoints."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_offline_pretrained_is_one_line_naming_file_and_cache(
    tmp_path: Path, config: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    cache = _offline(monkeypatch, tmp_path)
    assert _train(config, data_dir, tmp_path / "run", "--set", "model.pretrained=true") == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("nat-train: error:")
    assert "nat_mini.pth" in line and str(cache) in line
    args = ["--model", "nat_mini", "--pretrained", "--data", str(data_dir), "--workers", "0",
            "--model-kwargs", TINY_KWARGS, "--num-classes", "10"]  # fmt: skip
    assert validate_cli.main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("nat-validate: error:")
    assert "nat_mini.pth" in line and str(cache) in line
    export = load_script("export")
    assert export.main(["nat_mini", "--pretrained", "--out", str(tmp_path / "x")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "nat_mini.pth" in line and str(cache) in line
    # placed where the message says, the file is found without the network
    import timm

    model = timm.create_model("nat_mini", num_classes=10, **json.loads(TINY_KWARGS))
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache / "nat_mini.pth")
    assert validate_cli.main(args) == 0


def test_validate_with_another_models_checkpoint_is_a_short_error(
    full_run: Path, data_dir: Path, capsys
) -> None:
    ckpt = full_run / "checkpoint-00000006.pth"
    args = ["--model", "nat_tiny", "--checkpoint", str(ckpt), "--data", str(data_dir)]
    assert validate_cli.main([*args, "--workers", "0"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert len(line) < 700 and "missing" in line and str(ckpt) in line
    assert "nat_tiny" in line


def test_validate_says_the_class_counts_differ(
    tmp_path: Path, full_run: Path, data_dir: Path, capsys
) -> None:
    subset = tmp_path / "subset" / "val"
    for folder in sorted((data_dir / "val").iterdir())[:3]:
        subset.joinpath(folder.name).mkdir(parents=True)
        for image in folder.iterdir():
            subset.joinpath(folder.name, image.name).write_bytes(image.read_bytes())
    ckpt = full_run / "checkpoint-00000006.pth"
    data = ["--data", str(subset.parent), "--workers", "0"]
    # a nat-train checkpoint knows its classes by name: the labels follow them, and the run
    # names the classes the folder lacks
    assert validate_cli.main(["--checkpoint", str(ckpt), *data]) == 0
    assert "7 of the checkpoint's" in capsys.readouterr().out
    # plain weights do not: the folder's sorted indices are the labels, and it says so
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    plain = tmp_path / "plain.pth"
    torch.save(state["model"], plain)
    model = ["--model", state["config"]["model"]["name"]]
    if state["config"]["model"]["kwargs"]:
        model += ["--model-kwargs", json.dumps(state["config"]["model"]["kwargs"])]
    args = [*model, "--checkpoint", str(plain), "--num-classes", "10", *data]
    assert validate_cli.main(args) == 0
    captured = capsys.readouterr()
    assert "3 class folders" in captured.err and "10 classes" in captured.err


def test_validate_sizes_its_workers_to_the_machine(
    full_run: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    args = validate_cli.parse_args(
        ["--checkpoint", str(full_run / "checkpoint-00000006.pth"), "--data", str(data_dir)]
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        validate_cli.validate(args)
    assert not [w for w in seen if "worker" in str(w.message)], [str(w.message) for w in seen]


def test_offline_hugging_face_weights_name_the_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    import timm.models._builder as builder
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    from classification.pretrained import WeightsDownloadError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and the file is not in the cache")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    overlay = dict(hf_hub_id="someone/nat-mini", url=None)
    with pytest.raises(WeightsDownloadError) as info:
        timm.create_model(
            "nat_mini", pretrained=True, pretrained_cfg_overlay=overlay, **json.loads(TINY_KWARGS)
        )
    message = str(info.value)
    assert "\n" not in message and "someone/nat-mini" in message
    assert f"Hugging Face cache ({HF_HUB_CACHE})" in message
