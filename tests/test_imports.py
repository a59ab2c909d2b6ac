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
        "import natten_ext.fast_linear\n"
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


def test_the_former_fast_linear_path_still_gives_the_class():
    """``natten_ext.fast_linear.FastLinear`` (the former home) is the zoo's class, with a
    warning that names the new one; whole models pickled with that path load again."""
    import torch

    from classification.layers import FastLinear

    old = importlib.import_module("natten_ext.fast_linear")
    with pytest.warns(DeprecationWarning, match="classification.layers.FastLinear"):
        assert old.FastLinear is FastLinear
    with pytest.raises(AttributeError, match="Linear2"):
        old.Linear2  # noqa: B018
    layer = FastLinear(4, 3)
    buffer = __import__("io").BytesIO()
    torch.save(layer, buffer, _use_new_zipfile_serialization=False)  # a plain pickle stream
    data = buffer.getvalue().replace(b"classification.layers.linear", b"natten_ext.fast_linear")
    with pytest.warns(DeprecationWarning):
        again = torch.load(__import__("io").BytesIO(data), weights_only=False)
    assert type(again) is FastLinear and torch.equal(again.weight, layer.weight)
