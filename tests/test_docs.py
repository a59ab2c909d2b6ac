"""The README's fine-tuning commands and example run as written, every nat-train command in it
is a valid configuration, and it states the state dict layout, the detection demo's expected AP,
the recipes' precision and their published choices with the switches that change them. Every
file the architecture page names exists, and the docs describe the code, not how it was made."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import timm
import torch

from classification import train as train_cli
from classification.demo_data import generate
from classification.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _commands(text: str, program: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line.split("#")[0]) for line in lines if line.startswith(program + " ")]


def _config_and_overrides(argv: list[str]) -> tuple[str, list[str]]:
    config, overrides, i = None, [], 1
    while i < len(argv):
        if argv[i] == "--config":
            config, i = argv[i + 1], i + 2
        elif argv[i] == "--set":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                overrides.append(argv[i])
                i += 1
        else:
            i += 1
    assert config is not None, argv
    return config, overrides


def test_every_readme_nat_train_command_is_a_valid_config() -> None:
    commands = _commands(README, "nat-train")
    assert len(commands) >= 5
    for argv in commands:
        config, overrides = _config_and_overrides(argv)
        load_config(ROOT / config, overrides)  # raises ConfigError naming a bad key
    assert any(
        o.startswith("model.init_checkpoint=")
        for argv in commands
        for o in _config_and_overrides(argv)[1]
    )


def test_readme_fine_tune_command_runs_after_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's run (one step of it here) then the README's fine-tuning command, as written
    but for a step limit, from a fresh folder holding the demo data."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    generate(tmp_path / "demo_data", train_per_class=4, val_per_class=1, size=48, seed=0)
    quick = ["data.workers=0", "logging.progress=false", "train.max_steps=1"]
    demo = ["--config", "configs/classification/demo.yaml", "--data", "demo_data"]
    assert train_cli.main([*demo, "--set", *quick]) == 0
    assert (tmp_path / "runs" / "demo" / "best.pth").is_file()
    finetune = _commands(_section("Fine-tuning a classifier from a checkpoint"), "nat-train")[0]
    assert "model.init_checkpoint=runs/demo/best.pth" in finetune
    assert train_cli.main([*finetune[1:], *quick]) == 0
    assert (tmp_path / "runs" / "demo-ft" / "best.pth").is_file()


def test_readme_python_fine_tune_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = _section("Fine-tuning a classifier from a checkpoint")
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    torch.manual_seed(0)
    trained = timm.create_model("nat_mini", num_classes=3)
    monkeypatch.chdir(tmp_path)
    torch.save({"model": trained.state_dict()}, "best.pth")
    scope: dict = {}
    exec(code, scope)
    loaded = scope["model"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.state_dict().items())


def test_readme_states_layout_demo_numbers_and_precision() -> None:
    models = _section("The models")
    assert "`model.state_dict()` is the original layout" in models
    assert "pretrained_strict=False" in models and "~/.cache/torch/hub/checkpoints/" in models
    detection = _section("Detection and segmentation (mmdet 3.x, mmsegmentation 1.x)")
    assert "AP stay about 0" in detection and "init_cfg" in detection
    training = _section("Training on ImageNet")
    for needed in (
        "bf16 autocast, on CUDA and on the CPU",
        "optim.rpb_weight_decay=false",
        "sched.name=linear",
        "train.amp=fp16",
        "30 + 10 epochs",
    ):
        assert needed in training, needed


# Where the architecture page names a file relative to its package or folder.
_ARCH_BASES = (
    "", "natten_ext", "natten_ext/backends", "classification", "classification/visualize",
    "detection", "segmentation", "scripts", "configs/classification", "configs/detection",
)  # fmt: skip


def test_architecture_page_names_only_existing_files() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {
        t.rstrip(",.")
        for t in re.findall(r"`([^`\s]+)`", text)
        if re.search(r"(/|\.(py|yaml|md|sh|c|h))$", t.rstrip(",.")) and not re.search("~|://", t)
    }
    assert len(named) > 40
    missing = [
        t
        for t in sorted(named)
        if not any(
            (ROOT / base / t.replace("<model>", "nat_tiny").replace("<family>", "nat")).exists()
            for base in _ARCH_BASES
        )
    ]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_docs_speak_of_the_code_not_of_its_history() -> None:
    history = re.compile(
        r"(?i:\bissues? \d+|\bsessions?\b|deliverable|previous build|\b\w+th part\b)"
        r"|\b[Rr]uns? (?:[A-F]|M\d)\b"
    )
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        hits = [m.group(0) for m in history.finditer(path.read_text())]
        assert not hits, f"{path.name}: {hits}"
