#!/usr/bin/env bash
# The built-in demo: install the project (core dependencies only), generate the small
# shapes/textures dataset, and train a small NAT on it from scratch on the CPU (a few minutes
# on 2 cores). Prints the run directory (logs, checkpoints) at the end.
# Usage: bash scripts/demo.sh [extra nat-train overrides, e.g. sched.epochs=10]
# NAT_VENV picks the environment folder (default .venv); NAT_PYTHON the interpreter that creates it.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "installing natzoo (this folder) and its core dependencies (torch, torchvision, timm," \
    "...) into ${NAT_VENV:-.venv}: a minute or more the first time, seconds later on"
source scripts/_venv.sh
pip_install -e .
echo "generating the demo dataset (demo_data/) and training configs/classification/demo.yaml on it"
# One compute thread plus one data-loading worker fits 2 cores; more threads than free cores
# slows the small operations of this model down many times. Override with OMP_NUM_THREADS.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$venv/bin/nat-demo-data" --out demo_data
start=$(date +%s)
"$venv/bin/nat-train" --config configs/classification/demo.yaml --data demo_data "$@"
echo "demo training took $(( $(date +%s) - start ))s"
