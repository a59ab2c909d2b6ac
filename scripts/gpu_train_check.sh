#!/usr/bin/env bash
# GPU training check: nat_tiny at 224 on synthetic data (no dataset needed), the published
# config, first on one GPU (batch 128), then with torchrun on 2 GPUs (2 x 64: the same global
# batch and, per step, the same samples) at the recipe's peak lr (no warmup). Mixup/cutmix and drop path are off so the two runs
# draw no per-rank randomness and their losses must match step for step (up to bf16 noise).
# Writes train_gpu_check.md (throughput, per-step losses, the comparison) under $OUT (or
# runs/gpu_check) and prints it.
# Usage: bash scripts/gpu_train_check.sh [steps (default 60)]
# NAT_PYTHON: the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-60}"
if [ -n "${NAT_PYTHON:-}" ]; then python="$NAT_PYTHON"
elif [ -x .venv/bin/python ]; then python=.venv/bin/python
else python=python3; fi
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import torch, timm, classification; assert torch.cuda.is_available(), 'no CUDA'"
ngpu=$("$python" -c "import torch; print(torch.cuda.device_count())")
common=(--config configs/classification/nat_tiny.yaml --data synthetic --set
        aug.mixup=0 aug.cutmix=0 model.drop_path_rate=0 train.amp=bf16 sched.warmup_epochs=0
        "train.max_steps=$steps" data.synthetic_train_size=$((128 * steps))
        data.synthetic_val_size=2048 data.workers=8 logging.log_interval=1 logging.progress=false
        checkpoint.keep=1)
rm -rf "$out/one_gpu" "$out/two_gpus"
echo "== 1 GPU, batch 128"
CUDA_VISIBLE_DEVICES=0 "$python" -m classification.train "${common[@]}" data.batch_size=128 \
    --run-dir "$out/one_gpu" 2>&1 | tail -n 3
if [ "$ngpu" -ge 2 ]; then
    echo "== torchrun, 2 GPUs x batch 64"
    "$python" -m torch.distributed.run --standalone --nproc_per_node=2 -m classification.train \
        "${common[@]}" data.batch_size=64 --run-dir "$out/two_gpus" 2>&1 | tail -n 3
else
    echo "only $ngpu GPU: skipping the torchrun run"
fi
"$python" - "$out" "$steps" <<'PY'
import sys
from pathlib import Path

import torch

from classification.training.runlog import read_csv

out, steps = Path(sys.argv[1]), int(sys.argv[2])
runs = {"1 GPU x 128": out / "one_gpu", "torchrun 2 GPUs x 64": out / "two_gpus"}
loaded = {k: read_csv(v / "steps.csv") for k, v in runs.items() if (v / "steps.csv").is_file()}
lines = [f"### nat_tiny, 224 px, synthetic data, bf16, global batch 128 ({steps} steps)", "",
         f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", "",
         "| run | img/s (mean of steps 11+) | loss step 1 | loss step 10 | "
         f"loss step {steps} |", "|---|---|---|---|---|"]
for name, rows in loaded.items():
    rates = [float(r["samples_per_s"]) for r in rows[10:]] or [float("nan")]
    loss = {int(r["step"]): float(r["loss"]) for r in rows}
    lines.append(f"| {name} | {sum(rates) / len(rates):.0f} | {loss.get(1, float('nan')):.4f} | "
                 f"{loss.get(10, float('nan')):.4f} | {loss.get(steps, float('nan')):.4f} |")
if len(loaded) == 2:
    a, b = ({int(r["step"]): float(r["loss"]) for r in rows} for rows in loaded.values())
    diffs = [abs(a[s] - b[s]) for s in sorted(set(a) & set(b))]
    worst = max(diffs)
    lines += ["", f"Per-step loss difference 1 GPU vs 2 GPUs over {len(diffs)} steps: max "
              f"{worst:.4f}, mean {sum(diffs) / len(diffs):.4f} "
              f"({'match' if worst < 0.05 else 'MISMATCH'} at tolerance 0.05, bf16)."]
text = "\n".join(lines) + "\n"
(out / "train_gpu_check.md").write_text(text)
print(text)
PY
