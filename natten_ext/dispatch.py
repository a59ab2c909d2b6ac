"""Backend selection: automatic (best available), or forced by a context manager / env variable."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from types import ModuleType

from . import backends

ENV_VAR = "NATTEN_EXT_BACKEND"
_state = threading.local()


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` or the environment variable, else None."""
    name = getattr(_state, "backend", None)
    if name is None:
        name = os.environ.get(ENV_VAR) or None
        if name is not None and name not in backends.names():
            raise ValueError(
                f"environment variable {ENV_VAR}={name!r} names no backend; "
                f"choose one of {', '.join(backends.names())} or unset it"
            )
    return name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force every neighborhood-attention call inside the block onto backend ``name``.

    ``None`` restores automatic selection. Forcing a backend that cannot serve a call raises.
    """
    if name is not None and name not in backends.names():
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(backends.names())}")
    previous = getattr(_state, "backend", None)
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = previous


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [n for n in backends.names() if (m := backends.get(n)) is not None and m.is_available()]


def select_backend(query, key, value, rpb, kernel_size, dilation, is_causal) -> str:
    """Name of the backend that will serve this call (raises if a forced one cannot)."""
    args = (query, key, value, rpb, kernel_size, dilation, is_causal)
    forced = forced_backend()
    if forced is not None:
        module = backends.get(forced)
        if module is None or not module.is_available():
            raise RuntimeError(
                f"backend {forced!r} was forced but is not available on this machine "
                f"(available: {', '.join(available_backends())})"
            )
        reason = module.unsupported_reason(*args)
        if reason is not None:
            raise RuntimeError(
                f"backend {forced!r} was forced but cannot serve this call: {reason}"
            )
        return forced
    for name in backends.AUTO_ORDER:
        module = backends.get(name)
        if (
            module is not None
            and module.is_available()
            and module.unsupported_reason(*args) is None
        ):
            return name
    raise RuntimeError("no neighborhood-attention backend can serve this call")


def backend_module(name: str) -> ModuleType:
    module = backends.get(name)
    if module is None:
        raise RuntimeError(f"backend {name!r} cannot be imported")
    return module
