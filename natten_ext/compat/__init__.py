"""A drop-in ``natten`` (NATTEN 0.14-0.17 API) running on natten_ext, for old code left unchanged.

Code written against the old NATTEN releases, such as the original NAT/DiNAT model files
(``from natten import NeighborhoodAttention2D``) or the Hugging Face DiNAT/NAT port
(``from natten.functional import natten2dqkrpb, natten2dav``), runs on natten_ext after::

    import natten_ext.compat
    natten_ext.compat.install()          # before the old code (or transformers) is imported
    from natten import NeighborhoodAttention2D   # natten_ext underneath

or, for a whole script: ``python -m natten_ext.compat [--natten-version V] script.py [args]``
(``-m module`` works too).

What is installed: a package ``natten`` (``__version__`` = the emulated release) with
``natten.functional`` (every op name of 0.14-0.17, see :mod:`natten_ext.compat.functional`),
``natten.context`` and the top-level feature queries (:mod:`natten_ext.compat.context`),
``natten.flops`` (fvcore handles), ``natten.natten1d/2d/3d`` and the modules
``NeighborhoodAttention1D/2D/3D`` (plus 0.14's alias ``NeighborhoodAttention``). Functions and
queries are the union of all those releases; only the modules' constructor signatures differ
between releases, so ``version`` picks them (:mod:`natten_ext.compat.modules`): 0.14.0-0.14.4,
0.14.5-0.15.x (the default, 0.15.1: RPB on by default) or 0.17.x (RPB off by default).

How it is found: the modules go into ``sys.modules`` and a finder goes first on
``sys.meta_path``. The finder also reports a ``natten`` distribution of the emulated version to
``importlib.metadata``, which is what ``transformers.utils.is_natten_available()`` checks (with
``importlib.util.find_spec``), so the HF port works with or without a real natten installed.
A real natten that was imported already is set aside and put back by :func:`uninstall`;
natten_ext's own optional ``natten`` backend is resolved against the real package first.
transformers decides natten's availability once, when it is imported: install the drop-in before
importing transformers on a machine without a real natten (a warning says so otherwise).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import pathlib
import re
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

from .. import __version__ as _natten_ext_version
from .. import dispatch
from . import context, flops, functional, modules

__all__ = ["DEFAULT_VERSION", "build", "install", "installed_version", "uninstall"]

DEFAULT_VERSION = "0.15.1"

_RELEASES = "0.14.0-0.14.6, 0.15.0-0.15.1 or 0.17.0-0.17.5"


def _family(version: str) -> str:
    """The module-signature family of a NATTEN release number ``X.Y.Z``."""
    match = re.fullmatch(r"0\.(\d+)\.(\d+)", version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"version must be a NATTEN release 'X.Y.Z' ({_RELEASES}), got {version!r}")
    minor, patch = int(match[1]), int(match[2])
    if minor == 14 and patch <= 4:
        return "0.14"
    if (minor == 14 and patch <= 6) or (minor == 15 and patch <= 1):
        return "0.15"
    if minor == 17 and patch <= 5:
        return "0.17"
    raise ValueError(f"version must be one of the NATTEN releases {_RELEASES}, got {version!r}")


class _Loader(importlib.abc.Loader):
    """Hands out the prebuilt module (the import system asks again after a sys.modules purge)."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        pass


class _Distribution(importlib.metadata.Distribution):
    """Metadata of the stand-in: name ``natten``, the emulated version."""

    def __init__(self, version: str) -> None:
        self._natten_version = version

    def read_text(self, filename: str) -> str | None:
        if filename in ("METADATA", "PKG-INFO"):
            return (
                f"Metadata-Version: 2.1\nName: natten\nVersion: {self._natten_version}\n"
                f"Summary: NATTEN {self._natten_version} API provided by natten_ext.compat "
                f"(natten_ext {_natten_ext_version})\n"
            )
        if filename == "top_level.txt":
            return "natten\n"
        return None

    def locate_file(self, path: str | pathlib.PurePath) -> pathlib.Path:
        return pathlib.Path(__file__).parent / path


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the stand-in's modules and its distribution, ahead of the real package."""

    def __init__(self, package: ModuleType, submodules: dict[str, ModuleType]) -> None:
        self.package = package
        self.modules = {"natten": package, **submodules}

    def find_spec(self, fullname, path=None, target=None):
        module = self.modules.get(fullname)
        return None if module is None else module.__spec__

    def find_distributions(self, context=None) -> Iterator[importlib.metadata.Distribution]:
        name = getattr(context, "name", None)
        if name is None or re.sub(r"[-_.]+", "-", name).lower() == "natten":
            yield _Distribution(self.package.__version__)

    def invalidate_caches(self) -> None:
        pass


def _new_module(name: str, attrs: dict[str, object], package: bool = False) -> ModuleType:
    module = ModuleType(name)
    module.__dict__.update(attrs)
    module.__all__ = sorted(k for k in attrs if not k.startswith("_"))
    spec = importlib.machinery.ModuleSpec(name, _Loader(module), origin=__file__)
    if package:
        spec.submodule_search_locations = []
        module.__path__ = []
    module.__spec__, module.__loader__ = spec, spec.loader
    module.__package__ = name if package else name.rpartition(".")[0]
    return module


def _public(module: ModuleType) -> dict[str, object]:
    return {name: getattr(module, name) for name in module.__all__}


def _build(version: str) -> tuple[ModuleType, dict[str, ModuleType]]:
    classes = modules.FAMILIES[_family(version)]
    na1, na2, na3 = (classes[f"NeighborhoodAttention{n}D"] for n in (1, 2, 3))
    helpers = _public(context)
    subs = {
        "natten.functional": _new_module("natten.functional", {**_public(functional), **helpers}),
        "natten.context": _new_module("natten.context", helpers),
        "natten.flops": _new_module("natten.flops", _public(flops)),
        "natten.natten1d": _new_module("natten.natten1d", {"NeighborhoodAttention1D": na1}),
        "natten.natten2d": _new_module(
            "natten.natten2d", {"NeighborhoodAttention2D": na2, "NeighborhoodAttention": na2}
        ),
        "natten.natten3d": _new_module("natten.natten3d", {"NeighborhoodAttention3D": na3}),
    }
    attrs: dict[str, object] = {
        **helpers,
        "NeighborhoodAttention1D": na1,
        "NeighborhoodAttention2D": na2,
        "NeighborhoodAttention3D": na3,
        "NeighborhoodAttention": na2,
        **{name.rpartition(".")[2]: sub for name, sub in subs.items()},
    }
    package = _new_module("natten", attrs, package=True)
    package.__version__ = version
    package.__natten_ext__ = _natten_ext_version  # tells the stand-in from the real package
    return package, subs


def build(version: str = DEFAULT_VERSION) -> ModuleType:
    """A fresh stand-in ``natten`` package for NATTEN ``version``, registered nowhere.

    Its submodules are attributes (``.functional``, ``.context``, ``.flops``, ``.natten2d``...).
    """
    return _build(version)[0]


_installed: dict[str, object] = {}


def installed_version() -> str | None:
    """The NATTEN release the installed stand-in emulates, or None when none is installed."""
    finder = _installed.get("finder")
    return None if finder is None else finder.package.__version__


def install(version: str = DEFAULT_VERSION) -> ModuleType:
    """Make ``import natten`` (and its submodules) give the stand-in for NATTEN ``version``.

    Idempotent for the same version; a different version needs :func:`uninstall` first.
    Returns the ``natten`` package.
    """
    _family(version)
    current = installed_version()
    if current is not None:
        if current != version:
            raise RuntimeError(
                f"natten_ext.compat is installed as natten {current}; call uninstall() before "
                f"installing version {version}"
            )
        return _installed["finder"].package
    dispatch.available_backends()  # natten_ext's own optional backend binds the real natten
    stash = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "natten" or name.startswith("natten.")
    }
    package, subs = _build(version)
    finder = _Finder(package, subs)
    sys.modules.update(finder.modules)
    sys.meta_path.insert(0, finder)
    _installed.update(finder=finder, stash=stash)
    _warn_if_transformers_decided()
    return package


def uninstall() -> None:
    """Remove the stand-in and put back any real ``natten`` modules it set aside (no-op if none)."""
    finder = _installed.pop("finder", None)
    stash = _installed.pop("stash", {})
    if finder is None:
        return
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
    for name, module in finder.modules.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
    sys.modules.update(stash)


def _warn_if_transformers_decided() -> None:
    utils = sys.modules.get("transformers.utils.import_utils")
    if utils is not None and getattr(utils, "_natten_available", None) is False:
        warnings.warn(
            "transformers was imported before natten_ext.compat.install() and found no natten; "
            "it will not use the drop-in in this process. Install it before importing "
            "transformers.",
            RuntimeWarning,
            stacklevel=3,
        )
