"""Run timm's own model tests (``tests/test_models.py`` of its source distribution) on the zoo.

Usage: ``python scripts/timm_suite.py [--models a,b,... | --all] [pytest arguments]``

The default models are one of each family, which suits CI's time; ``--all`` runs all 22 zoo
models, the Large ones included: a slow check for a release, not for every commit.

The source distribution of the installed timm version is fetched with ``pip download`` (it ships
``tests/``) into ``.cache/timm-sdist`` (``NAT_TIMM_SDIST`` picks another folder) and its
``test_models.py`` runs, unmodified, with three adjustments made from outside:

- ``import classification`` registers the zoo before timm's test module lists the models;
- the project's model modules (``nat``, ``dinat_s``, ``isotropic``) join timm's opt-in list of
  modules with ``forward_intermediates`` (``FEAT_INTER_FILTERS``), which the listing reads;
- only tests parametrized with one of ``--models`` (default: one model of each family; every
  zoo model with ``--all``) are kept, and the tests that download pretrained weights are
  skipped, with that reason.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MODELS = ("nat_mini", "dinat_s_tiny", "nat_isotropic_small", "vitrpb_small")
# timm's tests that fetch pretrained weights or reference tensors from the network
DOWNLOADS = ("test_model_load_pretrained", "test_model_features_pretrained", "test_model_inference")
# the modules (as timm's registry names them) that define the zoo
PROJECT_MODULES = ("nat", "dinat_s", "isotropic")


def fetch_tests(version: str, cache: Path) -> Path:
    """``tests/`` of timm's sdist for ``version``, downloaded and unpacked once into ``cache``."""
    root = cache / f"timm-{version}"
    tests = root / "tests"
    if (tests / "test_models.py").is_file():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"timm-{version}.tar.gz"
    if not archive.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", f"timm=={version}", "-d", str(cache)]
        subprocess.run(cmd, check=True)
    with tarfile.open(archive) as tar:
        members = [
            m for m in tar.getmembers() if m.name.startswith(f"timm-{version}/") and m.isfile()
        ]
        tar.extractall(cache, members=members, filter="data")
    if not (tests / "test_models.py").is_file():
        raise RuntimeError(f"{archive} has no tests/test_models.py")
    return tests


def _opt_in_project_modules() -> None:
    """Add the project's modules to every module list that names timm's ``vision_transformer``
    (timm's FEAT_INTER_FILTERS, the opt-in list of models with ``forward_intermediates``)."""
    import timm
    import timm.models

    original = timm.list_models

    def list_models(filter="", module="", *args, **kwargs):
        if isinstance(module, (list, tuple)) and "vision_transformer" in module:
            module = [*module, *PROJECT_MODULES]
        return original(filter, module, *args, **kwargs)

    timm.list_models = timm.models.list_models = list_models


class RestrictToModels:
    """pytest plugin: keep the tests parametrized with one of ``models``; skip the downloads."""

    def __init__(self, models: tuple[str, ...]) -> None:
        self.models = models

    def pytest_collection_modifyitems(self, config, items) -> None:
        keep, drop = [], []
        for item in items:
            params = getattr(item, "callspec", None)
            name = params.params.get("model_name") if params is not None else None
            if isinstance(name, str) and name.split(".")[0] in self.models:
                if item.originalname in DOWNLOADS:
                    item.add_marker(pytest.mark.skip(reason="downloads pretrained weights"))
                keep.append(item)
            else:
                drop.append(item)
        if not keep:
            raise pytest.UsageError(f"no timm test is parametrized with {self.models}")
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    which.add_argument("--all", action="store_true", help="every zoo model (slow)")
    args, pytest_args = parser.parse_known_args(argv)

    import timm

    import classification  # noqa: F401  (registers the zoo)

    if args.all:
        models = tuple(timm.list_models(module=list(PROJECT_MODULES)))
    else:
        models = tuple(m for m in args.models.split(",") if m)

    unknown = [m for m in models if m not in timm.list_models()]
    if unknown:
        parser.error(f"--models: not registered with timm: {unknown}")
    cache = Path(os.environ.get("NAT_TIMM_SDIST", ROOT / ".cache" / "timm-sdist"))
    tests = fetch_tests(timm.__version__, cache)
    _opt_in_project_modules()
    base = [str(tests / "test_models.py"), "-c", str(tests.parent / "pyproject.toml")]
    base += ["--rootdir", str(tests.parent), "-p", "no:cacheprovider", "-ra"]
    base += [
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
    ]  # timm marks tests with pytest-timeout
    return pytest.main(base + pytest_args, plugins=[RestrictToModels(models)])


if __name__ == "__main__":
    sys.exit(main())
