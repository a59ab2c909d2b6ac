#!/usr/bin/env bash
# Install the project with the extras the tests need into a virtual environment, then run the tests.
# Usage: bash scripts/test.sh [pytest arguments]
# NAT_VENV picks the environment folder (default .venv); NAT_PYTHON the interpreter that creates it.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "installing natzoo (this folder) with the dev, det, seg and compat-test extras into" \
    "${NAT_VENV:-.venv}: a few minutes the first time, seconds later on"
source scripts/_venv.sh
# compat-test: transformers 4.53 (about 15 s), for natten_ext.compat's tests on the HF DiNAT/NAT.
pip_install -e ".[dev,det,seg,compat-test]"
# The upstream natten package, for the cross-check tests. Without a GPU its sdist builds in seconds
# (no CUDA kernels) against the torch installed above; with a GPU it would compile for an hour, so
# it is skipped there (the cross-check tests then skip themselves).
if [ "$("$venv/bin/python" -c 'import torch; print(torch.cuda.is_available())')" = "False" ]; then
    pip_install setuptools wheel
    pip_install --no-build-isolation --no-deps "natten>=0.20"
fi
# pytest exits 5 when it collects no test: that counts as a failure here like any other non-zero code.
set +e
if [ $# -eq 0 ]; then
    # the whole suite: one pytest-xdist worker per core
    "$venv/bin/python" -m pytest -n auto
else
    "$venv/bin/python" -m pytest "$@"
fi
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "no tests were collected: failing" >&2
fi
# timm's own model tests (from its source distribution) on one model of each family: with the full
# suite (no arguments), or when NAT_TIMM_SUITE=1; NAT_TIMM_SUITE=all runs them on every zoo model
# (slow); NAT_TIMM_SUITE=0 leaves them out.
suite="${NAT_TIMM_SUITE:-$([ $# -eq 0 ] && echo 1 || echo 0)}"
if [ "$suite" = "1" ] || [ "$suite" = "all" ]; then
    set +e
    if [ "$suite" = "all" ]; then
        "$venv/bin/python" scripts/timm_suite.py --all
    else
        "$venv/bin/python" scripts/timm_suite.py
    fi
    timm_rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        rc=$timm_rc
    fi
fi
exit "$rc"
