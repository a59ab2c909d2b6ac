"""The training config system under hostile input: `_base_` chains, YAML aliases and duplicate
keys, binary files, non-finite numbers and out-of-range sizes are refused with one line naming
the file or key (exit status 2), before anything is built."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from classification import train as train_cli
from classification.training.config import DEFAULTS, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """nat-train's one-line error for `argv` (--print-config: nothing would be trained)."""
    assert train_cli.main([*argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("nat-train: error: "), lines[0]
    return lines[0]


def _run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """nat-train in a subprocess that must finish within `timeout` seconds."""
    return subprocess.run(
        [sys.executable, "-m", "classification.train", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------------- _base_
def test_base_files_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file lists the next one six times, four levels deep: 6**4 reads if every mention
    were read again."""
    levels = 4
    for i in range(levels):
        bases = [f"level{i + 1}.yaml"] * 6
        _write(tmp_path / f"level{i}.yaml", f"_base_: {bases}\noptim: {{lr: {i + 1}.0e-4}}\n")
    _write(tmp_path / f"level{levels}.yaml", "sched: {epochs: 7, warmup_epochs: 0}\n")
    reads: list[Path] = []
    real_read_bytes = Path.read_bytes

    def counting_read_bytes(self: Path) -> bytes:
        reads.append(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    cfg = load_config(tmp_path / "level0.yaml")
    assert cfg["optim"]["lr"] == 1.0e-4 and cfg["sched"]["epochs"] == 7
    assert len(reads) == len(set(reads)) == levels + 1


def test_repeated_base_files_do_not_hang_the_command(tmp_path: Path) -> None:
    for i in range(12):
        _write(tmp_path / f"l{i}.yaml", f"_base_: {[f'l{i + 1}.yaml'] * 8}\n")
    _write(tmp_path / "l12.yaml", "optim: {lr: 0.5}\n")
    proc = _run_cli("--config", str(tmp_path / "l0.yaml"), "--print-config", timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lr: 0.5" in proc.stdout


def test_base_chains_deeper_than_the_bound_are_refused(tmp_path: Path, capsys) -> None:
    for i in range(40):
        _write(tmp_path / f"d{i}.yaml", f"_base_: d{i + 1}.yaml\n")
    _write(tmp_path / "d40.yaml", "optim: {lr: 0.5}\n")
    line = _cli_error(capsys, "--config", str(tmp_path / "d0.yaml"))
    assert "_base_" in line and "deeper than" in line and "d0.yaml" in line


def test_base_cycles_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "a.yaml", "_base_: [b.yaml]\n")
    _write(tmp_path / "b.yaml", "_base_: [c.yaml]\n")
    _write(tmp_path / "c.yaml", "_base_: a.yaml\n")
    line = _cli_error(capsys, "--config", str(tmp_path / "a.yaml"))
    assert "loop" in line and "a.yaml -> " in line and "c.yaml" in line


@pytest.mark.parametrize("bases", ["123", "[null]", "[base.yaml, 7]", "{a: 1}", "['']"])
def test_base_must_name_files(tmp_path: Path, capsys, bases: str) -> None:
    _write(tmp_path / "base.yaml", "optim: {lr: 0.5}\n")
    config = _write(tmp_path / "c.yaml", f"_base_: {bases}\n")
    line = _cli_error(capsys, "--config", str(config))
    assert "_base_" in line and str(config) in line and "file name" in line


# ---------------------------------------------------------------------------------- YAML
def _alias_bomb(levels: int = 9) -> str:
    lines = ["model:", "  kwargs:", "    a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path, data_dir_for_cli: Path) -> None:
    config = _write(tmp_path / "bomb.yaml", _alias_bomb())
    proc = _run_cli(
        "--config", str(config), "--data", str(data_dir_for_cli), "--run-dir", str(tmp_path / "r")
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "model.kwargs" in lines[0] and "values" in lines[0] and str(config) in lines[0]
    assert len(lines[0]) < 500
    assert not (tmp_path / "r").exists()


@pytest.fixture
def empty(tmp_path: Path) -> str:
    """An empty config file: the defaults."""
    return str(_write(tmp_path / "empty.yaml", ""))


def test_an_alias_bomb_in_an_override_is_refused(capsys, empty: str) -> None:
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 8):
        levels.append(f"&a{i} [{', '.join([f'*a{i - 1}'] * 8)}]")
    value = f"[{', '.join(levels)}]"  # 8**8 ones through aliases, in 300 characters
    line = _cli_error(capsys, "--config", empty, "--set", f"model.kwargs.depths={value}")
    assert "model.kwargs.depths" in line and "values" in line and len(line) < 500


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("optim: {lr: 0.1}\nsched: {epochs: 3}\noptim: {lr: 0.2}\n", "optim"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", "lr"),
        ("model:\n  kwargs: {depths: [1], depths: [2]}\n", "depths"),
    ],
    ids=["section", "key", "kwargs"],
)
def test_duplicate_yaml_keys_are_refused(tmp_path: Path, capsys, text: str, key: str) -> None:
    config = _write(tmp_path / "dup.yaml", text)
    line = _cli_error(capsys, "--config", str(config))
    assert "duplicate key" in line and f"'{key}'" in line and str(config) in line
    assert "line " in line


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "merge.yaml",
        "optim: &o {lr: 0.1, weight_decay: 0.2}\nsched: {epochs: 3, warmup_epochs: 0}\n"
        "model:\n  kwargs:\n    <<: {depths: [1, 1, 1, 1], embed_dim: 8}\n    embed_dim: 16\n",
    )
    cfg = load_config(config)
    assert cfg["model"]["kwargs"] == {"depths": [1, 1, 1, 1], "embed_dim": 16}


def test_binary_and_unparsable_config_files(tmp_path: Path, capsys) -> None:
    png = _write(tmp_path / "image.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    line = _cli_error(capsys, "--config", str(png))
    assert str(png) in line and "UTF-8" in line
    nul = _write(tmp_path / "nul.yaml", "optim: {lr: 0.1}\x00\n")
    line = _cli_error(capsys, "--config", str(nul))
    assert str(nul) in line and "line 1" in line
    broken = _write(tmp_path / "broken.yaml", "optim: {lr: [}\n")
    line = _cli_error(capsys, "--config", str(broken))
    assert str(broken) in line and "line 1" in line


# -------------------------------------------------------------------------------- values
def _float_keys() -> list[str]:
    keys = []

    def walk(node, prefix):
        for key, value in node.items():
            path = (*prefix, key)
            if isinstance(value, dict) and path != ("model", "kwargs"):
                walk(value, path)
            elif isinstance(value, float) or path == ("optim", "clip_grad"):
                keys.append(".".join(path))

    walk(DEFAULTS, ())
    return keys


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_every_float_key_refuses_non_finite_values(value: str) -> None:
    keys = _float_keys()
    assert len(keys) > 15
    for key in keys:
        with pytest.raises(ConfigError, match=rf"'{key}'.*finite") as info:
            load_config(None, [f"{key}={value}"])
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "key", ["data.mean", "data.std", "aug.scale", "aug.ratio", "optim.betas"], ids=str
)
def test_float_lists_refuse_non_finite_values(key: str) -> None:
    default = copy.deepcopy(DEFAULTS[key.split(".")[0]][key.split(".")[1]])
    default[0] = math.nan
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(None, [f"{key}={default}".replace("nan", ".nan")])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.ema_decay=nan", "train.ema_decay"),
        ("aug.smoothing=nan", "aug.smoothing"),
        ("sched.min_lr=nan", "sched.min_lr"),
        ("optim.clip_grad=inf", "optim.clip_grad"),
    ],
)
def test_non_finite_values_end_the_command_in_one_line(
    capsys, empty: str, override: str, key: str
) -> None:
    line = _cli_error(capsys, "--config", empty, "--set", override)
    assert f"'{key}'" in line and "finite" in line


@pytest.mark.parametrize(
    ("override", "key", "accepted"),
    [
        ("data.img_size=100000", "data.img_size", "[1, 4096]"),
        ("data.img_size=1000000", "data.img_size", "[1, 4096]"),
        ("data.workers=10000", "data.workers", "[0, 64]"),
        ("data.batch_size=1000000", "data.batch_size", "[1, 16384]"),
        ("data.val_batch_size=1000000", "data.val_batch_size", "[1, 16384]"),
        ("data.synthetic_train_size=10000000000", "data.synthetic_train_size", "10000000]"),
        ("model.num_classes=100000000", "model.num_classes", "1000000]"),
    ],
)
def test_sizes_are_bounded(capsys, empty: str, override: str, key: str, accepted: str) -> None:
    line = _cli_error(capsys, "--config", empty, "--set", override)
    assert f"'{key}'" in line and accepted in line


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("aug: {scale: [a, b]}\n", "aug.scale"),
        ("aug: {ratio: [0.5, b]}\n", "aug.ratio"),
        ("optim: {betas: [a, 0.9]}\n", "optim.betas"),
        ("data: {mean: [a, 0.5, 0.5]}\n", "data.mean"),
        ("aug: {scale: [true, 1.0]}\n", "aug.scale"),
        ("optim: {no_decay_keywords: [rpb, 3]}\n", "optim.no_decay_keywords"),
    ],
)
def test_lists_of_the_wrong_type_are_one_line(tmp_path: Path, capsys, text: str, key: str):
    line = _cli_error(capsys, "--config", str(_write(tmp_path / "c.yaml", text)))
    assert f"'{key}'" in line


@pytest.fixture(scope="module")
def data_dir_for_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from classification.demo_data import generate

    return generate(tmp_path_factory.mktemp("data") / "demo", 3, 2, size=24, seed=1)
