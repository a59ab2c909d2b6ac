"""The mmcv._ext stand-in (nms, roi_align forward/backward over torchvision) and the checkpoint
loading fixes (allow-listed mmengine types, weights-only downloads)."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

pytest.importorskip("mmcv")
pytest.importorskip("mmengine")

from detection import mmcv_compat

mmcv_compat.setup()
if not getattr(sys.modules["mmcv._ext"], "__natzoo_standin__", False):
    pytest.skip("a compiled mmcv is installed: the stand-in is not in use", allow_module_level=True)

from mmcv.ops import nms, roi_align  # noqa: E402


def _boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g)


def _nms_offset_reference(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Greedy NMS in plain Python with mmcv's legacy +1 box size."""
    order = scores.argsort(descending=True).tolist()
    area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            a, b = boxes[i], boxes[j]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
            inter = w * h
            if inter / (area(a) + area(b) - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_torchvision_and_legacy_offset(seed: int) -> None:
    boxes, scores = _boxes(60, seed)
    dets, keep = nms(boxes, scores, iou_threshold=0.4)
    assert keep.tolist() == torchvision.ops.nms(boxes, scores, 0.4).tolist()
    assert torch.equal(dets[:, 4], scores[keep])
    _, keep1 = nms(boxes, scores, iou_threshold=0.4, offset=1)
    assert keep1.tolist() == _nms_offset_reference(boxes.double(), scores, 0.4)


def test_nms_empty_and_score_threshold() -> None:
    dets, keep = nms(torch.zeros(0, 4), torch.zeros(0), iou_threshold=0.5)
    assert dets.shape == (0, 5) and keep.shape == (0,) and keep.dtype == torch.long
    boxes, scores = _boxes(20, 7)
    _, keep = nms(boxes, scores, iou_threshold=0.5, score_threshold=0.5)
    assert bool((scores[keep] > 0.5).all())


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_forward_backward_match_torchvision(aligned: bool, sampling_ratio: int) -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 4, 16, 20, generator=g, dtype=torch.float64)
    boxes, _ = _boxes(7, 11)
    rois = torch.cat([torch.tensor([0, 1, 0, 1, 1, 0, 1.0])[:, None], boxes / 4], 1).double()
    x1 = feats.clone().requires_grad_(True)
    x2 = feats.clone().requires_grad_(True)
    out = roi_align(x1, rois, (5, 6), 0.5, sampling_ratio, "avg", aligned)
    ref = torchvision.ops.roi_align(x2, rois, (5, 6), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad)
    assert x1.grad.abs().sum() > 0


def test_roi_align_empty_rois() -> None:
    feats = torch.randn(1, 3, 8, 8, requires_grad=True)
    out = roi_align(feats, torch.zeros(0, 5), (7, 7), 1.0, 0, "avg", True)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert feats.grad is not None and not feats.grad.any()


def test_unprovided_kernels_raise_naming_the_op() -> None:
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        roi_align(torch.randn(1, 1, 4, 4), torch.tensor([[0, 0, 0, 2, 2.0]]), 2, 1.0, 0, "max")
    ext = sys.modules["mmcv._ext"]
    with pytest.raises(NotImplementedError, match=r"'deform_conv_forward'.*compiled mmcv"):
        ext.deform_conv_forward(torch.zeros(1))
    from mmcv.ops import sigmoid_focal_loss

    with pytest.raises(NotImplementedError, match="sigmoid_focal_loss_forward"):
        sigmoid_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


def test_mmengine_checkpoint_types_load_with_weights_only() -> None:
    from mmengine.logging import HistoryBuffer

    buffer = HistoryBuffer()
    buffer.update(1.5)
    buffer.update(2.5)
    data = io.BytesIO()
    torch.save({"hub": buffer, "eta": np.float64(3.0), "arr": np.arange(3)}, data)
    data.seek(0)
    loaded = torch.load(data)  # torch's default weights_only=True
    assert loaded["hub"].mean() == 2.0 and loaded["eta"] == 3.0
    assert loaded["arr"].tolist() == [0, 1, 2]


class _Evil:
    def __reduce__(self):
        return (getattr, (torch.Tensor, "add_"))


def test_other_getattr_calls_are_refused() -> None:
    data = io.BytesIO()
    torch.save({"x": _Evil()}, data)
    data.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="only HistoryBuffer"):
        torch.load(data)


def test_url_loader_reads_weights_only(tmp_path: Path) -> None:
    safe = tmp_path / "safe.pth"
    torch.save({"w": torch.ones(2)}, safe)
    loaded = mmcv_compat.load_url_weights_only(safe.as_uri(), model_dir=str(tmp_path / "hub"))
    assert torch.equal(loaded["w"], torch.ones(2))

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"p": Payload()}, unsafe)
    with pytest.raises(pickle.UnpicklingError):
        mmcv_compat.load_url_weights_only(unsafe.as_uri(), model_dir=str(tmp_path / "hub"))


def test_runner_resume_checkpoint_loads(tmp_path: Path) -> None:
    """An mmengine Runner checkpoint (message_hub with HistoryBuffer and numpy) loads through
    mmengine's own loader under torch's weights_only default."""
    from mmengine.model import BaseModel
    from mmengine.runner import CheckpointLoader, Runner
    from torch import nn
    from torch.utils.data import Dataset

    class Tiny(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x, y=None, mode="tensor"):
            out = self.fc(torch.stack(x) if isinstance(x, list) else x)
            return {"loss": ((out - y) ** 2).mean()} if mode == "loss" else out

    class Data(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict:
            return {"x": torch.full((2,), float(i)), "y": torch.ones(1)}

    runner = Runner(
        model=Tiny(),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=Data(),
            sampler=dict(type="DefaultSampler", shuffle=False),
            batch_size=2,
            collate_fn=dict(type="default_collate"),
        ),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
        log_level="WARNING",
    )
    runner.train()
    checkpoint = CheckpointLoader.load_checkpoint(str(tmp_path / "iter_2.pth"))
    assert checkpoint["meta"]["iter"] == 2
    assert "train/loss" in checkpoint["message_hub"]["log_scalars"]


@pytest.mark.gpu
def test_stand_in_runs_on_cuda_like_on_cpu() -> None:
    boxes, scores = _boxes(200, 5)
    _, keep_cpu = nms(boxes, scores, iou_threshold=0.5)
    _, keep_gpu = nms(boxes.cuda(), scores.cuda(), iou_threshold=0.5)
    assert keep_gpu.is_cuda and keep_gpu.cpu().tolist() == keep_cpu.tolist()
    feats = torch.randn(2, 8, 32, 32)
    rois = torch.cat([torch.tensor([0.0, 1.0] * 50)[:, None], boxes[:100] / 2], 1)
    grads = []
    for device in ("cpu", "cuda"):
        x = feats.to(device, copy=True).requires_grad_(True)
        out = roi_align(x, rois.to(device), (7, 7), 0.5, 2, "avg", True)
        out.square().sum().backward()
        grads.append((out.detach().cpu(), x.grad.cpu()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.float16):
        half = roi_align(feats.cuda().half(), rois.cuda(), (7, 7), 0.5, 2, "avg", True)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
