"""Smoke test: every package of the project imports."""

import importlib

import pytest


@pytest.mark.parametrize("name", ["natten_ext", "classification", "detection", "segmentation"])
def test_package_imports(name):
    module = importlib.import_module(name)
    assert module.__name__ == name
