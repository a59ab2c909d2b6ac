"""Fine-tuning from a checkpoint (model.init_checkpoint) with the tiny NAT of tests/test_train.py:
a head that fits is loaded, one that does not is dropped with a warning, and weights the model
needs but the file lacks stop the run in one line unless model.init_strict=false."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import test_train
import timm
import torch
import yaml
from test_train import _train

from classification.training.config import load_config
from classification.training.model import build_model

config = test_train.config
data_dir = test_train.data_dir

TINY_KWARGS = yaml.safe_load(test_train.TINY)["model"]["kwargs"]
SHORT = ["sched.epochs=1", "sched.warmup_epochs=0", "train.max_steps=1"]


def _weights(tmp_path: Path, num_classes: int, **kwargs) -> tuple[Path, dict]:
    torch.manual_seed(1)
    model = timm.create_model("nat_mini", num_classes=num_classes, **{**TINY_KWARGS, **kwargs})
    path = tmp_path / f"weights{num_classes}.pth"
    torch.save({"model": model.state_dict()}, path)
    return path, model.state_dict()


def _built(config: Path, path: Path, num_classes: int, *overrides: str) -> torch.nn.Module:
    cfg = load_config(config, [f"model.init_checkpoint={path}", *overrides])
    return build_model(cfg, num_classes)


def test_init_checkpoint_keeps_a_head_that_fits(tmp_path: Path, config: Path, caplog) -> None:
    path, sd = _weights(tmp_path, 10)
    with caplog.at_level(logging.WARNING):
        model = _built(config, path, 10)
    assert "head" not in caplog.text
    got = model.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], v) for k, v in sd.items())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model = _built(config, path, 3)
    warning = [r for r in caplog.records if "classifier head" in r.getMessage()]
    assert warning and warning[0].levelno == logging.WARNING
    assert "10 classes" in warning[0].getMessage() and "3 classes" in warning[0].getMessage()
    assert model.head.weight.shape[0] == 3
    assert torch.equal(model.levels[0].blocks[0].attn.rpb, sd["levels.0.blocks.0.attn.rpb"])


def test_init_checkpoint_missing_weights_stop_the_run(
    tmp_path: Path, config: Path, data_dir: Path, capsys
) -> None:
    path, _ = _weights(tmp_path, 10)  # depths (1, 1, 1, 1)
    deeper = ["model.kwargs.depths=[1, 1, 2, 1]"]
    run_dir = tmp_path / "run"
    assert _train(config, data_dir, run_dir, "--set", f"model.init_checkpoint={path}", *deeper) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert "model.init_checkpoint" in line and str(path) in line
    assert "13 of the model's" in line and "levels.2.blocks.1." in line
    assert "model.init_strict=false" in line
    assert not run_dir.exists()
    # the switch loads what fits, explicitly
    settings = [f"model.init_checkpoint={path}", "model.init_strict=false", *deeper, *SHORT]
    assert _train(config, data_dir, run_dir, "--set", *settings) == 0


def test_init_checkpoint_missing_a_stage_is_an_error(tmp_path: Path, config: Path) -> None:
    path, sd = _weights(tmp_path, 10)
    torch.save({k: v for k, v in sd.items() if not k.startswith("levels.3.")}, path)
    with pytest.raises(ValueError, match=r"model\.init_checkpoint.*levels\.3\.blocks\.0\."):
        _built(config, path, 10)
