"""The run directory: which one a run uses and the checkpoint it resumes from
(:func:`resolve_run_dir`, :func:`claim_run_dir`), one training at a time in it (an fcntl lock on
a file in it), what it already holds, and the temporaries that interrupted writes left behind."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import stale_temporaries
from .state import list_checkpoints

__all__ = [
    "LOCK_NAME",
    "RunDirError",
    "RunLock",
    "claim_run_dir",
    "previous_results",
    "remove_stale_temporaries",
    "resolve_run_dir",
]

LOCK_NAME = ".nat-train.lock"


class RunDirError(ValueError):
    """The run directory cannot be used: in use by another training, holding another run's
    results, or not creatable/writable."""


def previous_results(run_dir: Path) -> list[str]:
    """The files in `run_dir` that hold a training's results (a fresh run must not replace them)."""
    found = [name for name in ("best.pth", "summary.json") if (run_dir / name).is_file()]
    epochs = run_dir / "epochs.csv"
    if epochs.is_file():
        with open(epochs) as f:
            if sum(1 for line in f if line.strip()) > 1:  # a header and at least one row
                found.append("epochs.csv")
    return found


def check_fresh_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run where a previous run's checkpoints or results are."""
    if list_checkpoints(run_dir):
        raise RunDirError(
            f"run.dir {run_dir} already holds checkpoints: pass --resume auto to continue it, "
            f"or choose another run directory"
        )
    results = previous_results(run_dir)
    if results:
        raise RunDirError(
            f"run.dir {run_dir} holds a previous run's results ({', '.join(results)}) but no "
            f"checkpoint-*.pth to resume from: choose another run directory (or move those "
            f"files away)"
        )


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what interrupted atomic writes left in `run_dir` (call with the lock held)."""
    stale = stale_temporaries(run_dir)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# the lock descriptors this process holds: a forked child (a data loader worker) closes its
# copies at once, so that an orphaned child cannot keep the lock of a process killed with -9
# (flock locks belong to the open file, which fork shares; exec'd children never inherit it)
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """An exclusive, non-blocking flock on `<run_dir>/.nat-train.lock`, released by the kernel
    however the process ends, and never held by the processes it forks. acquire() creates the
    directory if needed; release(cleanup=True) also removes the directories acquire() created,
    when empty (a run that failed its checks leaves nothing behind)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        missing = []
        for parent in (self.run_dir, *self.run_dir.parents):
            if parent.exists():
                break
            missing.append(parent)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(
                f"run.dir {self.run_dir} cannot be created: {err.strerror or err} "
                f"(choose a writable location)"
            ) from err
        self._created = missing
        try:
            self._fd = self._lock()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _lock(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise RunDirError(
                    f"run.dir {self.run_dir} is not writable: {err.strerror or err} "
                    f"(choose a writable location)"
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                raise RunDirError(
                    f"run.dir {self.run_dir} is in use by another training "
                    f"({holder or 'unknown process'}): wait for it to finish, or choose another "
                    f"run directory"
                ) from None
            try:  # the file may have been removed by its last holder since we opened it
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                _HELD.add(fd)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
                return fd
            os.close(fd)

    def release(self, cleanup: bool = False) -> None:
        """Unlock (removing the lock file); with `cleanup`, also remove the directories that
        acquire() created if nothing else is in them."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see _lock
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None
        if cleanup:
            self._remove_created()
        self._created = []

    def _remove_created(self) -> None:
        for directory in self._created:  # deepest first
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): keep it
                return

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _unused(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _free_dir(base: Path) -> Path:
    """`base`, or `base-1`, `base-2`, ... : the first that does not exist or is empty."""
    candidate, n = base, 0
    while not _unused(candidate):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def resolve_run_dir(
    cfg: Mapping[str, Any], config_name: str, resume: str | None
) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None: a fresh run); reads only.

    `resume` is None, a checkpoint path (resumed in run.dir, else beside it), or "auto": the
    latest checkpoint of run.dir, or of the newest `<output>/<name>` or auto-numbered
    `<output>/<name>-<N>` directory (never another experiment's `<name>-<suffix>`); with none
    found, a fresh run starts (in run.dir, or in the first unused `<output>/<name>[-N]`)."""
    run = cfg["run"]
    explicit = Path(run["dir"]) if run["dir"] else None
    base = explicit or Path(run["output"]) / (run["name"] or config_name)
    if resume and resume != "auto":
        path = Path(resume)
        return (explicit or path.parent), path
    if resume == "auto":
        numbered = re.compile(rf"{re.escape(base.name)}-\d+")
        siblings = base.parent.glob(f"{glob.escape(base.name)}-*")
        dirs = [base] if explicit else [base, *(d for d in siblings if numbered.fullmatch(d.name))]
        latest = [ckpts[-1] for d in dirs if (ckpts := list_checkpoints(d))]
        if latest:
            newest = max(latest, key=lambda p: p.stat().st_mtime)
            return newest.parent, newest
        print(f"--resume auto: no checkpoint under {base}; starting a new run", flush=True)
    if explicit is not None:
        return explicit, None
    return _free_dir(base), None


def claim_run_dir(
    cfg: Mapping[str, Any], config_name: str, resume: str | None
) -> tuple[Path, Path | None, RunLock]:
    """resolve_run_dir, then lock the directory and check it under the lock: a fresh run must
    not replace another run's checkpoints or results, and neither may a checkpoint resumed into
    a directory other than its own; "auto" takes the latest checkpoint there now (another
    training may have added one before it let go of the lock)."""
    run_dir, resume_path = resolve_run_dir(cfg, config_name, resume)
    lock = RunLock(run_dir).acquire()
    try:
        if resume == "auto":
            ckpts = list_checkpoints(run_dir)
            resume_path = ckpts[-1] if ckpts else None
        elsewhere = resume_path is not None and not _same_dir(resume_path.parent, run_dir)
        if resume_path is None or elsewhere:
            check_fresh_run_dir(run_dir)
    except BaseException:
        lock.release(cleanup=True)
        raise
    return run_dir, resume_path, lock


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
