"""Progress of long loops (training epochs, validation): a tqdm bar on a terminal, quiet lines
in logs.

When the stream is a terminal, :class:`Progress` draws a tqdm bar that disappears when the loop
ends. Otherwise (output redirected to a log file, a batch scheduler) it writes a plain line at
most every :data:`LINE_INTERVAL` seconds instead of the bar's carriage-return updates, and
nothing at all for a loop shorter than that."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["LINE_INTERVAL", "Progress", "is_terminal"]

LINE_INTERVAL = 60.0  # seconds between the plain lines written when the stream is no terminal


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of a loop of ``total`` steps, written to ``file`` (default: ``sys.stderr``).

    ``enabled=False`` (other ranks, ``logging.progress: false``) makes every method a no-op.
    ``update(**postfix)`` advances by one step; the postfix values (loss, lr, ...) are shown
    after the count. Usable as a context manager, which closes it.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        enabled: bool = True,
        file: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.file = sys.stderr if file is None else file
        self.interval = LINE_INTERVAL if interval is None else interval
        self.count = 0
        self.bar = None
        self._start = self._last_line = time.perf_counter()
        if enabled and is_terminal(self.file):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc,
                dynamic_ncols=True,
                mininterval=1.0,
                leave=False,
                file=self.file,
            )

    def update(self, **postfix: Any) -> None:
        if not self.enabled:
            return
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._line(now, postfix)

    def _line(self, now: float, postfix: dict[str, Any]) -> None:
        elapsed = now - self._start
        rate = self.count / max(elapsed, 1e-9)
        parts = [f"{self.desc}: {self.count}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.count / self.total:.0f}%)"
        parts.append(f"{rate:.2f} it/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total and self.count < self.total:
            parts.append(f"eta {_duration((self.total - self.count) / max(rate, 1e-9))}")
        parts.extend(f"{key} {value}" for key, value in postfix.items())
        print(" | ".join(parts), file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
