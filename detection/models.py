"""Register natzoo's backbones in mmdet's ``MODELS`` (after preparing mmcv-lite).

Import this module -- or name it in a config's ``custom_imports`` -- before ``mmdet.models`` is
first imported: it installs the ``mmcv._ext`` stand-in when no compiled mmcv is present.
"""

from __future__ import annotations

from detection.mmcv_compat import setup

setup()

from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

from detection.backbones import BACKBONES, register_backbones  # noqa: E402, F401

register_backbones(MODELS)
register_all_modules(init_default_scope=False)
