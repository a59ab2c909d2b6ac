"""Detection training under torchrun on CPU (two Gloo ranks): the small Mask R-CNN of
tests/test_detection_train.py, one iteration; both ranks finish, only rank 0 saves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("pycocotools")

import test_detection_train
import torch
from test_detection_train import REPO, small_config

coco_root = test_detection_train.coco_root  # fixture: the generated COCO-format shapes

# Imported by every process through PYTHONPATH: records, per rank, each torch.save call and the
# normal end of the process (a rank that dies or hangs records no "exit").
SITECUSTOMIZE = """
import atexit, os
_log = os.environ.get("NATZOO_TEST_SAVE_LOG")
if _log and "RANK" in os.environ:
    _path = f"{_log}.rank{os.environ['RANK']}"

    def _note(text):
        with open(_path, "a") as f:
            f.write(text + "\\n")

    import torch

    _save = torch.save

    def _recording_save(obj, f, *args, **kwargs):
        _note(f"save {type(obj).__name__} {sorted(obj)[:8] if isinstance(obj, dict) else ''}")
        return _save(obj, f, *args, **kwargs)

    torch.save = _recording_save
    _note(f"start world_size={os.environ['WORLD_SIZE']}")
    atexit.register(_note, "exit")
"""


def test_detection_torchrun_two_cpu_ranks(coco_root: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    config = tmp_path / "mask_rcnn_small.py"
    small_config("mask_rcnn", coco_root, work).dump(str(config))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "saves"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO)]),
        "NATZOO_TEST_SAVE_LOG": str(log),
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "detection.train",
            str(config),
            "--no-amp",
            "--cfg-options",
            "env_cfg.dist_cfg.backend=gloo",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = (tmp_path / "saves.rank0").read_text().splitlines()
    rank1 = (tmp_path / "saves.rank1").read_text().splitlines()
    assert rank0[0] == rank1[0] == "start world_size=2"
    assert rank0[-1] == rank1[-1] == "exit"  # both ranks ran to completion
    saves0 = [line for line in rank0 if line.startswith("save")]
    assert len(saves0) == 1 and "'state_dict'" in saves0[0]  # the epoch-1 checkpoint
    assert not [line for line in rank1 if line.startswith("save")]  # rank 1 writes nothing
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_1.pth"]
    ckpt = torch.load(work / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["epoch"] == 1 and ckpt["meta"]["iter"] == 1
    assert any(k.startswith("backbone.levels") for k in ckpt["state_dict"])
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # DDP wrapper stripped
