"""A progress bar over mmengine's test and validation loops, for the command lines of
:mod:`detection.runner_cli` (shared with :mod:`segmentation`).

On a terminal (rank 0 only) :class:`EvalProgressHook` draws mmengine's own
:class:`~mmengine.utils.ProgressBar` over the loop's batches on ``sys.stderr``. Off a terminal it
draws nothing: the config's ``LoggerHook`` already writes one line every ``interval``
iterations (``Epoch(test) [50/5000] eta: ...``), which is what a log file should hold.
"""

from __future__ import annotations

import sys
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from classification.training.progress import is_terminal

__all__ = ["EvalProgressHook"]


class EvalProgressHook(Hook):
    """mmengine's ProgressBar over the test / validation batches when stderr is a terminal."""

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self.bar: ProgressBar | None = None

    def _start(self, loader: Any) -> None:
        self.bar = None
        stream = sys.stderr
        if not is_main_process() or not is_terminal(stream):
            return
        try:
            total = len(loader)
        except TypeError:  # an iterable without a length: the bar counts without a total
            total = 0
        self.bar = ProgressBar(total, file=stream)

    def _step(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def _finish(self) -> None:
        if self.bar is not None:
            self.bar.file.write("\n")
            self.bar.file.flush()
            self.bar = None

    def before_test_epoch(self, runner: Any) -> None:
        self._start(runner.test_dataloader)

    def after_test_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        self._step()

    def after_test_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        self._finish()

    def before_val_epoch(self, runner: Any) -> None:
        self._start(runner.val_dataloader)

    def after_val_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        self._step()

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        self._finish()
