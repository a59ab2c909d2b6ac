"""Whether and how nat-train compiles the model, and the lines around the compiling first step.

``train.compile``: true, false, or auto (compile on CUDA, where it is faster).
``train.compile_mode`` auto takes CUDA graphs (``reduce-overhead``) where the step is host-bound
and they are safe (one GPU, no gradient accumulation), inductor's default mode elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["announce_compilation", "compile_model", "inductor_cache_dir"]


def compile_model(
    model: torch.nn.Module, cfg: Mapping[str, Any], device: torch.device, distributed: bool
) -> tuple[torch.nn.Module, str | None]:
    """The model to train (compiled per ``train.compile*``, else ``model`` itself) and a note
    naming the backend and mode when it is compiled (None when it is not)."""
    train = cfg["train"]
    wanted = train["compile"]
    if wanted == "auto":
        wanted = device.type == "cuda"
    if not wanted:
        return model, None
    mode = train["compile_mode"]
    if mode == "auto":  # CUDA graphs where the step is host-bound and they are safe
        single = not distributed and cfg["optim"]["accum_steps"] == 1
        mode = "reduce-overhead" if single and device.type == "cuda" else "default"
    note = f"torch.compile, backend {train['compile_backend']}, mode {mode}"
    mode = None if mode == "default" else mode
    # static shapes: the last, smaller validation batch gets its own graph
    compiled = torch.compile(model, backend=train["compile_backend"], mode=mode, dynamic=False)
    return compiled, note


def inductor_cache_dir() -> str:
    """Where inductor keeps compiled code (TORCHINDUCTOR_CACHE_DIR, or its default)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return cache_dir()
    except Exception:  # a torch without this helper: name the variable alone
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor's default cache folder")


@contextlib.contextmanager
def announce_compilation(note: str, device: torch.device) -> Iterator[None]:
    """One line before the block (the first step of a compiled model, which waits minutes for
    compilation on a cold cache) and one with its duration after it, when it succeeds."""
    print(f"compiling the model ({note}); the first step waits for it; "
          f"compiled code is cached in {inductor_cache_dir()} (TORCHINDUCTOR_CACHE_DIR), "
          f"so a later run of the same model skips most of it", flush=True)  # fmt: skip
    started = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"compiled: the first step took {time.perf_counter() - started:.1f} s", flush=True)
