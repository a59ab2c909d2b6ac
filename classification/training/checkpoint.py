"""Former name of :mod:`classification.training.state` (training checkpoints), re-exported."""

from ..atomic import atomic_write  # noqa: F401
from .state import *  # noqa: F403
from .state import __all__  # noqa: F401
