"""Former home of ``FastLinear``, which lives in :mod:`classification.layers.linear` now.

The operator package builds its projections as ``nn.Linear``; this module only keeps
``from natten_ext.fast_linear import FastLinear`` (and whole models pickled with that path)
working. Reading the name imports the zoo's layers package and warns that the path is old.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name != "FastLinear":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        "natten_ext.fast_linear.FastLinear moved to classification.layers.FastLinear",
        DeprecationWarning,
        stacklevel=2,
    )
    from classification.layers.linear import FastLinear

    return FastLinear
