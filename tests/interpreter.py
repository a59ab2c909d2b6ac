"""Run a test file's ``--interpret`` entry point under Triton's CPU interpreter, in a subprocess.

``TRITON_INTERPRET`` must be set before triton is imported, so the kernels' interpreter runs live
in their own process; the file prints ``INTERPRETER OK`` when every case passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_under_interpreter(test_file: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python test_file --interpret`` with the interpreter on and no GPU; assert success."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, test_file, "--interpret"], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and "InterpreterError" in log and "not supported" in log.lower():
        pytest.skip(f"Triton's interpreter cannot run these kernels here: {log[-500:]}")
    assert proc.returncode == 0, log[-4000:]
    assert "INTERPRETER OK" in proc.stdout
    return proc
