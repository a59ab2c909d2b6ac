"""Every package of the project imports, the operator without the packages above it, and the
re-exporting modules give the objects of the modules that hold the code."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["natten_ext", "classification", "detection", "segmentation"])
def test_package_imports(name):
    module = importlib.import_module(name)
    assert module.__name__ == name


def test_the_operator_imports_nothing_of_the_models():
    """natten_ext (and its NATTEN stand-in) sit below the model zoo: importing them loads no
    module of classification, detection or segmentation."""
    code = (
        "import sys, natten_ext, natten_ext.compat, natten_ext.export, natten_ext.flops\n"
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('classification', 'detection', 'segmentation')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "alias, home, names",
    [
        ("classification.fast_layernorm", "classification.layers.norm", ["FastLayerNorm"]),
        (
            "classification.training.checkpoint",
            "classification.training.state",
            ["atomic_save", "load_training_checkpoint", "list_checkpoints", "CheckpointError"],
        ),
    ],
)
def test_re_exporting_modules_give_the_same_objects(alias, home, names):
    there, here = importlib.import_module(alias), importlib.import_module(home)
    assert all(getattr(there, name) is getattr(here, name) for name in names)
