"""Config-driven ImageNet training internals behind `nat-train` and `nat-validate`."""

from .config import ConfigError, load_config
from .engine import evaluate, train

__all__ = ["ConfigError", "evaluate", "load_config", "train"]
