"""Installing the project: the wheel setuptools builds carries the CPU kernel's C sources and
is built without setuptools' package-discovery warnings; scripts/demo.sh says what it installs
before pip starts."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("natten_ext", "classification", "detection", "segmentation")


def _source_copy(dest: Path) -> None:
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )


def test_wheel_has_the_c_sources_and_builds_without_warnings(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _source_copy(src)
    out = tmp_path / "dist"
    out.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=True
    )
    log = result.stdout + result.stderr
    assert "absent from the `packages` configuration" not in log, log[-3000:]
    assert "Warning" not in log, log[-3000:]
    wheel = out / result.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert "natten_ext/backends/csrc/na_cpu.c" in names
    assert "natten_ext/backends/csrc/na_cpu_body.h" in names


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_demo_script_says_what_it_installs_before_installing(tmp_path: Path) -> None:
    """demo.sh with a stand-in environment (its python, nat-demo-data and nat-train record
    their calls): the announcement comes before the first pip call."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _stub(venv / "bin" / "python", 'echo "STUB python $*"')
    _stub(venv / "bin" / "nat-demo-data", 'echo "STUB nat-demo-data $*"')
    _stub(venv / "bin" / "nat-train", 'echo "STUB nat-train $*"')
    env = dict(os.environ, NAT_VENV=str(venv))
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    first_pip = next(i for i, line in enumerate(lines) if line.startswith("STUB python -m pip"))
    said = [line for line in lines[:first_pip] if "install" in line.lower()]
    assert said and "natzoo" in said[0] and str(venv) in said[0], lines
    assert any(line.startswith("STUB nat-train") for line in lines)
