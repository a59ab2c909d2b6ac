"""Progress of long work: a bar on a terminal, quiet lines in logs, for nat-train, nat-validate
(classification.training.progress) and the OpenMMLab test/validation loops (mmengine's
ProgressBar in detection.progress_hook)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import test_train
import timm
import torch
from test_train import _train

from classification import validate as validate_cli
from classification.training import progress
from classification.training.progress import Progress

config = test_train.config  # the tiny nat-train config and generated images of test_train.py
data_dir = test_train.data_dir
TINY = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], mlp_ratio=1.0, kernel_size=3)
LINE = re.compile(
    r"^(?P<desc>[^:]+): (?P<n>\d+)/(?P<total>\d+) \(\d+%\) \| [\d.]+ it/s \| elapsed \d+:\d\d"
    r"( \| eta \d+:\d\d)?(?P<postfix>.*)$"
)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_that_goes_away() -> None:
    out = Terminal()
    with Progress(4, "work", file=out) as bar:
        for _ in range(4):
            bar.update(loss="0.5")
    text = out.getvalue()
    assert text.startswith("\rwork:   0%|") and "| 0/4 [" in text  # tqdm's bar, redrawn in place
    assert text.endswith("\r") and "\n" not in text  # leave=False: erased at the end


def test_a_log_gets_a_plain_line_per_interval_and_none_for_short_loops() -> None:
    out = io.StringIO()
    with Progress(4, "work", file=out, interval=0.0) as bar:
        for step in range(4):
            bar.update(loss=f"{step}.5")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    for n, line in enumerate(lines, 1):
        match = LINE.match(line)
        assert match, line
        assert (match["desc"], int(match["n"]), int(match["total"])) == ("work", n, 4)
        assert match["postfix"] == f" | loss {n - 1}.5"
    quiet = io.StringIO()
    with Progress(4, "work", file=quiet) as bar:  # the default interval is a minute
        for _ in range(4):
            bar.update()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("stream", [Terminal, io.StringIO])
def test_disabled_progress_writes_nothing(stream) -> None:
    out = stream()
    with Progress(3, "work", enabled=False, file=out, interval=0.0) as bar:
        for _ in range(3):
            bar.update(loss=1)
    assert out.getvalue() == ""


# -------------------------------------------------------------------------------- nat-validate
@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(timm.create_model("nat_mini", num_classes=10, **TINY).state_dict(), path)
    return path


def _validate(weights: Path, data: Path) -> int:
    return validate_cli.main(
        ["--model", "nat_mini", "--model-kwargs", json.dumps(TINY), "--checkpoint", str(weights),
         "--num-classes", "10", "--data", str(data), "--img-size", "16", "--workers", "0",
         "-b", "4"]
    )  # fmt: skip


def test_validate_shows_a_bar_on_a_terminal(
    weights: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _validate(weights, data_dir) == 0
    assert "\rvalidate:   0%|" in terminal.getvalue() and "/5 [" in terminal.getvalue()  # 20 / 4
    assert "top-1" in capsys.readouterr().out


def test_validate_writes_quiet_lines_to_a_log(
    weights: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    assert _validate(weights, data_dir) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [m for m in map(LINE.match, err.splitlines()) if m]
    assert [(m["desc"], m["n"], m["total"]) for m in lines] == [
        ("validate", str(n), "5") for n in range(1, 6)
    ]


# ----------------------------------------------------------------------------------- nat-train
def test_train_writes_quiet_lines_to_a_log(
    config: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    settings = ["sched.epochs=1", "sched.warmup_epochs=0", "logging.progress=true"]
    assert _train(config, data_dir, tmp_path / "run", "--set", *settings) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [m for m in map(LINE.match, err.splitlines()) if m]
    steps = [m for m in lines if m["desc"] == "epoch 1/1"]
    assert [int(m["n"]) for m in steps] == [1, 2, 3] and steps[0]["total"] == "3"
    assert all(" | loss " in m["postfix"] and " | lr " in m["postfix"] for m in steps)
    val = [m for m in lines if m["desc"] == "validate"]
    assert val and [int(m["n"]) for m in val] == list(range(1, int(val[0]["total"]) + 1))


def test_train_shows_a_bar_on_a_terminal(
    config: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    settings = ["sched.epochs=1", "sched.warmup_epochs=0", "logging.progress=true"]
    assert _train(config, data_dir, tmp_path / "run", "--set", *settings) == 0
    text = terminal.getvalue()
    assert "\repoch 1/1:   0%|" in text and "| 0/3 [" in text and "\rvalidate:   0%|" in text


# ------------------------------------------------------------------------------------ OpenMMLab
def test_openmmlab_hook_draws_mmengine_bar_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("mmengine")
    from detection.progress_hook import EvalProgressHook

    runner = SimpleNamespace(test_dataloader=[None] * 3, val_dataloader=[None] * 2)
    for stream, loop, count in ((Terminal(), "test", 3), (Terminal(), "val", 2)):
        monkeypatch.setattr(sys, "stderr", stream)
        hook = EvalProgressHook()
        getattr(hook, f"before_{loop}_epoch")(runner)
        for i in range(count):
            getattr(hook, f"after_{loop}_iter")(runner, i)
        getattr(hook, f"after_{loop}_epoch")(runner, {})
        text = stream.getvalue()
        assert f"\r[{'>' * 2}" in text and f"] {count}/{count}, " in text and text.endswith("\n")
    log = io.StringIO()  # not a terminal: LoggerHook's lines are the record, no bar
    monkeypatch.setattr(sys, "stderr", log)
    hook = EvalProgressHook()
    hook.before_test_epoch(runner)
    for i in range(3):
        hook.after_test_iter(runner, i)
    hook.after_test_epoch(runner, {})
    assert log.getvalue() == ""
