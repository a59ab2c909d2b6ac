"""Optimizer with no-decay groups and per-iteration LR schedules, through timm's factories."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

__all__ = ["build_optimizer", "build_scheduler", "no_decay_patterns"]


def no_decay_patterns(model: torch.nn.Module, keywords: list[str]) -> list[str]:
    """Name patterns exempt from weight decay: the model's no_weight_decay() names and any name
    containing a keyword (1-D parameters, i.e. norms and biases, are exempt regardless)."""
    patterns = {f"*{k}*" for k in keywords}
    if hasattr(model, "no_weight_decay"):
        patterns |= set(model.no_weight_decay())
    if hasattr(model, "no_weight_decay_keywords"):  # the NATTEN-era spelling
        patterns |= {f"*{k}*" for k in model.no_weight_decay_keywords()}
    return sorted(patterns)


_FUSABLE = ("adam", "adamw")


def _fused(optim: Mapping[str, Any], device: torch.device) -> bool:
    """``optim.fused``: torch's fused Adam/AdamW (one kernel per step); auto = on CUDA."""
    wanted, name = optim.get("fused", "auto"), optim["opt"].lower()
    if wanted == "auto":
        return device.type == "cuda" and name in _FUSABLE
    if wanted and name not in _FUSABLE:
        raise ValueError(
            f"optim.fused=true needs optim.opt in {_FUSABLE}, got {optim['opt']!r} "
            f"(set optim.fused=auto or false)"
        )
    return bool(wanted)


def build_optimizer(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """timm's create_optimizer_v2 over explicit decay / no-decay parameter groups."""
    optim = cfg["optim"]
    device = next(model.parameters()).device
    groups = param_groups_weight_decay(
        model,
        weight_decay=optim["weight_decay"],
        no_weight_decay_list=no_decay_patterns(model, optim["no_decay_keywords"]),
    )
    kwargs: dict[str, Any] = {}
    if optim["opt"].lower() in ("sgd", "momentum", "nesterov", "rmsprop", "rmsproptf"):
        kwargs["momentum"] = optim["momentum"]
    else:
        kwargs["betas"] = tuple(optim["betas"])
    if _fused(optim, device):
        kwargs["fused"] = True
    return create_optimizer_v2(
        groups,
        opt=optim["opt"],
        lr=optim["lr"],
        weight_decay=optim["weight_decay"],
        eps=optim["eps"],
        **kwargs,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], steps_per_epoch: int
) -> tuple[Scheduler, int]:
    """A per-iteration schedule (stepped with step_update after every optimizer step) and the
    total number of epochs including cooldown. `linear` is timm's poly schedule with power 1,
    decaying from lr to min_lr over sched.epochs."""
    sched = cfg["sched"]
    name, decay_rate = sched["name"], sched["decay_rate"]
    if name == "linear":
        name, decay_rate = "poly", 1.0
    decay_epochs = sched["decay_epochs"]
    return create_scheduler_v2(
        optimizer,
        sched=name,
        num_epochs=sched["epochs"],
        decay_epochs=decay_epochs,
        decay_milestones=list(range(int(decay_epochs), sched["epochs"], max(int(decay_epochs), 1))),
        cooldown_epochs=sched["cooldown_epochs"],
        decay_rate=decay_rate,
        min_lr=sched["min_lr"],
        warmup_lr=sched["warmup_lr"],
        warmup_epochs=sched["warmup_epochs"],
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
