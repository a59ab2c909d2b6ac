"""Optimizer with no-decay groups and per-iteration LR schedules, through timm's factories."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

__all__ = ["build_optimizer", "build_scheduler", "describe_schedule", "no_decay_patterns"]


def no_decay_patterns(
    model: torch.nn.Module, keywords: list[str], rpb_weight_decay: bool = False
) -> list[str]:
    """Name patterns exempt from weight decay: the model's no_weight_decay() names and any name
    containing a keyword (1-D parameters, i.e. norms and biases, are exempt regardless);
    ``rpb_weight_decay`` leaves the rpb tables out of them, so that they decay."""
    patterns = {f"*{k}*" for k in keywords}
    if hasattr(model, "no_weight_decay"):
        patterns |= set(model.no_weight_decay())
    if hasattr(model, "no_weight_decay_keywords"):  # the NATTEN-era spelling
        patterns |= {f"*{k}*" for k in model.no_weight_decay_keywords()}
    if rpb_weight_decay:
        patterns = {p for p in patterns if not p.rstrip("*").endswith("rpb")}
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
        no_weight_decay_list=no_decay_patterns(
            model, optim["no_decay_keywords"], optim["rpb_weight_decay"]
        ),
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
    total number of epochs: sched.epochs plus sched.cooldown_epochs, as timm counts them.
    `linear` is timm's poly schedule with power 1, decaying from lr to min_lr over sched.epochs;
    `constant` is timm's step schedule with a decay factor of 1 (the lr after the warmup)."""
    sched = cfg["sched"]
    name, decay_rate = sched["name"], sched["decay_rate"]
    decay_epochs = sched["decay_epochs"]
    if name == "linear":
        name, decay_rate = "poly", 1.0
    elif name == "constant":
        name, decay_rate, decay_epochs = "step", 1.0, sched["epochs"]
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


def _epochs(n: float) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def describe_schedule(cfg: Mapping[str, Any]) -> str:
    """The resolved schedule in words: its length with the cooldown spelled out (sched.epochs
    excludes it, as in timm), the warmup and where the lr goes."""
    sched, lr = cfg["sched"], cfg["optim"]["lr"]
    name, epochs, cooldown = sched["name"], sched["epochs"], sched["cooldown_epochs"]
    text = (
        f"{name} schedule, {_epochs(epochs)} + {cooldown} cooldown = {_epochs(epochs + cooldown)}"
    )
    if sched["warmup_epochs"]:
        text += f", warmup {_epochs(sched['warmup_epochs'])} from {sched['warmup_lr']:g}"
    if name == "constant":
        return f"{text}, lr {lr:g} throughout"
    if name in ("step", "multistep"):
        every = _epochs(sched["decay_epochs"])
        return f"{text}, lr {lr:g} times {sched['decay_rate']:g} every {every}"
    return f"{text}, lr {lr:g} -> {sched['min_lr']:g}"
