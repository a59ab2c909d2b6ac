"""Atomic file writes: a hidden temporary file beside the target, fsync, then a rename over it, so
readers see the old file or the complete new one, never a partial one.

The result gets the permissions any newly created file would (0666 less the umask), or keeps
those of the file it replaces; interrupted writes leave temporaries that
:func:`stale_temporaries` finds."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_copy", "atomic_write", "current_umask", "stale_temporaries"]

# mkstemp(prefix=".<name>.", suffix=".tmp"): eight random characters in between
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> None:
    """Call write(file) on a temporary file beside `path` (opened "wb"), fsync it, then rename it
    over `path`. On any failure the temporary is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy `src` to `dst` atomically."""
    with open(src, "rb") as source:
        atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20))


def stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """The temporaries that interrupted atomic writes left in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _TEMPORARY.match(p.name) and p.is_file())
