"""Training checkpoints under this import path; the code is in :mod:`.state`."""

from ..atomic import atomic_write  # noqa: F401
from .state import *  # noqa: F403
from .state import __all__  # noqa: F401
