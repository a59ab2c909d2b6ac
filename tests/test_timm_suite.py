"""scripts/timm_suite.py's model selection, run against a stand-in for timm's tests/ (so nothing is
downloaded): the default four models, --models, and --all with every zoo model, whose
forward_intermediates tests are collected through the opt-in module list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm

import classification  # noqa: F401  (registers the zoo)

ROOT = Path(__file__).resolve().parents[1]
ZOO = timm.list_models(module=["nat", "dinat_s", "isotropic"])

STAND_IN = """
import pytest
import timm

FEAT_INTER_FILTERS = ["vision_transformer"]


@pytest.mark.parametrize("model_name", timm.list_models(module=FEAT_INTER_FILTERS))
def test_model_forward_intermediates(model_name):
    pass


@pytest.mark.parametrize("model_name", timm.list_models(["*nat*", "vitrpb*", "resnet50"]))
def test_model_load_pretrained(model_name):
    pass
"""


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    root = tmp_path / f"timm-{timm.__version__}"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "tests" / "test_models.py").write_text(STAND_IN)
    return tmp_path


def _collected(sdist: Path, *args: str) -> dict[str, set[str]]:
    env = dict(os.environ, NAT_TIMM_SDIST=str(sdist))
    cmd = [sys.executable, str(ROOT / "scripts" / "timm_suite.py"), *args, "--collect-only", "-q"]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    tests: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        if "::" in line and "[" in line:
            name, param = line.split("::")[-1].rstrip("]").split("[")
            tests.setdefault(name, set()).add(param)
    return tests


def test_default_runs_one_model_of_each_family(sdist: Path) -> None:
    tests = _collected(sdist)
    four = {"nat_mini", "dinat_s_tiny", "nat_isotropic_small", "vitrpb_small"}
    assert tests["test_model_forward_intermediates"] == four
    assert _collected(sdist, "--models", "dinat_tiny")["test_model_load_pretrained"] == {
        "dinat_tiny"
    }


def test_all_runs_every_zoo_model_with_the_intermediates_opt_in(sdist: Path) -> None:
    tests = _collected(sdist, "--all")
    assert len(ZOO) == 22
    assert tests["test_model_forward_intermediates"] == set(ZOO)
    assert tests["test_model_load_pretrained"] == set(ZOO)  # collected, skipped when run


def test_all_and_models_are_exclusive(sdist: Path) -> None:
    env = dict(os.environ, NAT_TIMM_SDIST=str(sdist))
    cmd = [sys.executable, str(ROOT / "scripts" / "timm_suite.py"), "--all", "--models", "nat_mini"]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "--all" in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
