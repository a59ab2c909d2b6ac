#!/usr/bin/env bash
# Fine-tune Mask R-CNN NAT-Mini and UPerNet NAT-Mini for a few iterations on CUDA (float16 AMP)
# on the generated demo data, evaluate both, and run the CUDA checks of the mmcv._ext stand-in.
# Needs an environment with the project's det+seg extras (mmengine, mmcv-lite, mmdet, mmseg).
# Usage: bash scripts/gpu_openmmlab_check.sh   (PYTHON picks the interpreter; results and a
# Markdown summary for docs/gpu-tests.md go to $OUT, default work_dirs/gpu_openmmlab_check)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
out="${OUT:-work_dirs/gpu_openmmlab_check}"
mkdir -p "$out"
summary="$out/gpu_openmmlab_check.md"

"$python" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")
PY

"$python" -m detection.demo_data --out demo_data/coco --num-train 16 --num-val 8 --size 256
"$python" -m segmentation.demo_data --out demo_data/ade --num-train 16 --num-val 8 --size 256

run() {  # name, then the command; keeps the log and the wall time
    local name=$1; shift
    local start=$SECONDS
    "$@" 2>&1 | tee "$out/$name.log"
    echo "$name: $((SECONDS - start)) s" >> "$out/times.txt"
}
: > "$out/times.txt"
run mask_rcnn_train "$python" -m detection.train configs/detection/demo/mask_rcnn_nat_mini_demo.py \
    --amp --work-dir "$out/mask_rcnn"
run mask_rcnn_test "$python" -m detection.test configs/detection/demo/mask_rcnn_nat_mini_demo.py \
    "$out/mask_rcnn/epoch_2.pth" --work-dir "$out/mask_rcnn_test" --out-json "$out/mask_rcnn_metrics.json"
run upernet_train "$python" -m segmentation.train configs/segmentation/demo/upernet_nat_mini_demo.py \
    --amp --work-dir "$out/upernet" --cfg-options train_cfg.max_iters=40 train_cfg.val_interval=20 \
    "param_scheduler.1.end=40" default_hooks.checkpoint.interval=20
run upernet_test "$python" -m segmentation.test configs/segmentation/demo/upernet_nat_mini_demo.py \
    "$out/upernet/iter_40.pth" --work-dir "$out/upernet_test" --out-json "$out/upernet_metrics.json"
run stand_in_cuda "$python" -m pytest -q tests/test_mmcv_compat.py -m gpu -p no:cacheprovider

"$python" - "$out" "$summary" <<'PY'
import json, re, sys, torch
from pathlib import Path
out, summary = Path(sys.argv[1]), Path(sys.argv[2])
def losses(log):
    found = re.findall(r"Epoch\(train\).*?\s loss: ([0-9.]+)|Iter\(train\).*?\s loss: ([0-9.]+)", log)
    values = [float(a or b) for a, b in found]
    return values[0], values[-1], len(values)
lines = [f"## OpenMMLab fine-tuning on CUDA ({torch.cuda.get_device_name(0)}, torch {torch.__version__})", "",
         "Command: `bash scripts/gpu_openmmlab_check.sh` (float16 AMP, demo data, random init).", ""]
for name, metrics in (("mask_rcnn", "mask_rcnn_metrics.json"), ("upernet", "upernet_metrics.json")):
    first, last, n = losses((out / f"{name}_train.log").read_text())
    m = json.loads((out / metrics).read_text())
    shown = {k: v for k, v in m.items() if k in ("coco/bbox_mAP", "coco/segm_mAP", "mIoU", "aAcc")}
    lines.append(f"- {name}: {n} logged iterations, loss {first:.4f} -> {last:.4f}; test {shown}")
lines += ["", "Wall times:", "", *[f"- {t}" for t in (out / "times.txt").read_text().split("\n") if t]]
summary.write_text("\n".join(lines) + "\n")
print(summary.read_text())
PY
