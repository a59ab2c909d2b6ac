"""The training loop: DDP, AMP, gradient accumulation and clipping, EMA, per-iteration LR,
evaluation with cross-rank metrics, periodic/best checkpoints and exact resumption."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3, accuracy, dispatch_clip_grad, random_seed
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import (
    FORMAT,
    atomic_save,
    atomic_write,
    capture_rng_state,
    checkpoint_name,
    list_checkpoints,
    load_training_checkpoint,
    prune_checkpoints,
    restore_rng_state,
)
from .config import config_to_yaml
from .data import build_loaders, build_mixup
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    shutdown,
)
from .model import build_model, count_parameters
from .optim import build_optimizer, build_scheduler
from .runlog import RunLogger

__all__ = ["autocast_for", "evaluate", "resolve_run_dir", "train"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device, amp: str):
    """An autocast context for train.amp (bf16 / fp16 / none) on `device`."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AMP_DTYPES[amp])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 (%) and cross-entropy over the loader, summed across ranks."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, amp):
            output = model(images)
        output = output.float()
        top1, top5 = accuracy(output, target, topk=(1, min(5, output.shape[-1])))
        n = target.shape[0]
        totals += torch.tensor(
            [
                F.cross_entropy(output, target, reduction="sum").item(),
                top1.item() * n / 100,
                top5.item() * n / 100,
                n,
            ],
            dtype=torch.float64,
            device=device,
        )
    all_reduce_sum(totals)
    count = max(totals[3].item(), 1.0)
    return {
        "loss": totals[0].item() / count,
        "top1": 100 * totals[1].item() / count,
        "top5": 100 * totals[2].item() / count,
        "count": int(totals[3].item()),
    }


def _free_dir(base: Path) -> Path:
    """`base`, or `base-1`, `base-2`, ... : the first that holds no checkpoint."""
    candidate, n = base, 0
    while list_checkpoints(candidate):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def resolve_run_dir(
    cfg: Mapping[str, Any], config_name: str, resume: str | None
) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None: a fresh run).

    `resume` is None, a checkpoint path, or "auto": the latest checkpoint of run.dir, or of the
    newest `<output>/<name>[-N]` directory; with none found, a fresh run starts."""
    run = cfg["run"]
    explicit = Path(run["dir"]) if run["dir"] else None
    base = explicit or Path(run["output"]) / (run["name"] or config_name)
    if resume and resume != "auto":
        path = Path(resume)
        return (explicit or path.parent), path
    if resume == "auto":
        dirs = [base] if explicit else [base, *base.parent.glob(f"{base.name}-*")]
        latest = [ckpts[-1] for d in dirs if (ckpts := list_checkpoints(d))]
        if latest:
            newest = max(latest, key=lambda p: p.stat().st_mtime)
            return newest.parent, newest
        print(f"--resume auto: no checkpoint under {base}; starting a new run", flush=True)
    if explicit is not None:
        if list_checkpoints(explicit):
            raise FileExistsError(
                f"run.dir {explicit} already holds checkpoints: pass --resume auto to continue "
                f"it, or choose another run directory"
            )
        return explicit, None
    return _free_dir(base), None


class _StopRequest:
    """SIGINT/SIGTERM: the first asks for a checkpoint and a clean stop after the current step,
    the second interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstop requested: saving a checkpoint after this step (again to abort)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Progress:
    """A tqdm bar on rank 0 (a no-op elsewhere or when disabled)."""

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=f"epoch {epoch + 1}/{epochs}",
                dynamic_ncols=True,
                mininterval=1.0,
                leave=False,
                file=sys.stderr,
            )

    def update(self, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _batches(loader, device: torch.device, channels_last: bool) -> Iterator[tuple[Any, Any]]:
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, target.to(device, non_blocking=True)


class Trainer:
    """One training run (every rank builds one); call run()."""

    def __init__(
        self,
        cfg: dict[str, Any],
        info: DistInfo,
        run_dir: Path,
        resume_path: Path | None = None,
        ckpt: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        train = cfg["train"]
        if ckpt is None and resume_path is not None:
            ckpt = load_training_checkpoint(resume_path)
        self.loaders = build_loaders(cfg, info.world_size, info.rank)
        self.spe = self.loaders.steps_per_epoch
        random_seed(train["seed"], 0)  # identical initial weights on every rank and world size
        raw = build_model(cfg, self.loaders.num_classes).to(info.device)
        if train["channels_last"]:
            raw = raw.to(memory_format=torch.channels_last)
        self.raw_model = raw
        self.optimizer = build_optimizer(raw, cfg)
        self.scheduler, self.total_epochs = build_scheduler(self.optimizer, cfg, self.spe)
        self.scaler = torch.amp.GradScaler(info.device.type) if train["amp"] == "fp16" else None
        self.ema = ModelEmaV3(raw, decay=train["ema_decay"]) if train["ema"] else None
        self.epoch = self.step = 0
        self.step_lr = 0.0
        self.best: dict[str, Any] = {"metric": None, "epoch": None, "value": -math.inf}
        if ckpt is not None:
            self._load_state(ckpt, resume_path)
        else:
            random_seed(train["seed"], info.rank)
        model: torch.nn.Module = raw
        if info.distributed:
            model = DistributedDataParallel(
                raw, device_ids=[info.local_rank] if info.device.type == "cuda" else None
            )
        self.ddp = model if info.distributed else None
        self.model = self._compiled(model)
        self.mixup = build_mixup(cfg, self.loaders.num_classes)
        smoothing = cfg["aug"]["smoothing"]
        if self.mixup is not None:
            self.loss_fn: torch.nn.Module = SoftTargetCrossEntropy()
        elif smoothing > 0:
            self.loss_fn = LabelSmoothingCrossEntropy(smoothing)
        else:
            self.loss_fn = torch.nn.CrossEntropyLoss()
        self.log = RunLogger(run_dir, cfg, info.is_main, self.step if ckpt else None)

    def _compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """``train.compile``: true, false, or auto (compile on CUDA, where it is faster)."""
        train = self.cfg["train"]
        wanted = train["compile"]
        if wanted == "auto":
            wanted = self.info.device.type == "cuda"
        if not wanted:
            return model
        mode = None if train["compile_mode"] == "default" else train["compile_mode"]
        # static shapes: the last, smaller validation batch gets its own graph
        return torch.compile(model, backend=train["compile_backend"], mode=mode, dynamic=False)

    # ----------------------------------------------------------------- state
    def _load_state(self, ckpt: dict[str, Any], path: Path) -> None:
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.module.load_state_dict(ckpt["ema"])
            else:
                self.ema.module.load_state_dict(ckpt["model"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best = dict(ckpt.get("best") or self.best)
        if ckpt.get("steps_per_epoch") != self.spe:
            if self.step != self.epoch * ckpt.get("steps_per_epoch", self.spe):
                raise RuntimeError(
                    f"cannot resume {path} mid-epoch: it ran {ckpt.get('steps_per_epoch')} steps "
                    f"per epoch, this setup (data, batch size, world size) runs {self.spe}"
                )
            warnings.warn(
                f"steps per epoch changed ({ckpt['steps_per_epoch']} -> {self.spe}); "
                f"resuming at the start of epoch {self.epoch + 1}",
                stacklevel=2,
            )
            self.step = self.epoch * self.spe
        self.scheduler.step_update(num_updates=self.step)
        rng = ckpt.get("rng") or []
        if len(rng) == self.info.world_size:
            restore_rng_state(rng[self.info.rank])
        else:
            random_seed(self.cfg["train"]["seed"] + self.step, self.info.rank)
        if self.info.is_main:
            print(f"resumed from {path} at epoch {self.epoch + 1}, step {self.step}", flush=True)

    def _save(self, reason: str) -> None:
        """Checkpoint the run (all ranks join: RNG states are gathered; rank 0 writes)."""
        rng = gather_objects(capture_rng_state())
        if self.info.is_main:
            state = {
                "format": FORMAT,
                "model": self.raw_model.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": self.epoch,
                "step": self.step,
                "steps_per_epoch": self.spe,
                "world_size": self.info.world_size,
                "best": self.best,
                "rng": rng,
                "config": self.cfg,
                "reason": reason,
                "num_classes": self.loaders.num_classes,
            }
            atomic_save(state, self.run_dir / checkpoint_name(self.step))
            prune_checkpoints(self.run_dir, self.cfg["checkpoint"]["keep"])
            if reason == "best":
                atomic_save(state, self.run_dir / "best.pth")
        barrier()

    # ----------------------------------------------------------------- loop
    def _train_step(
        self, batches: Iterator[tuple[Any, Any]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        accum = self.cfg["optim"]["accum_steps"]
        amp = self.cfg["train"]["amp"]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.info.device)
        for micro in range(accum):
            images, target = next(batches)
            if self.mixup is not None:
                images, target = self.mixup(images, target)
            sync = (
                self.ddp.no_sync()
                if self.ddp is not None and micro < accum - 1
                else contextlib.nullcontext()
            )
            with sync:
                with autocast_for(self.info.device, amp):
                    output = self.model(images)
                loss = self.loss_fn(output.float(), target)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        clip, mode = self.cfg["optim"]["clip_grad"], self.cfg["optim"]["clip_mode"]
        if clip is not None:
            params = self.raw_model.parameters()
            if mode == "norm":
                # a tensor: read on the host only at logging steps (no sync per step)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            else:
                dispatch_clip_grad(params, clip, mode=mode)
        self.step_lr = self._lr()  # the lr this step applies (logged with its loss)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        self.scheduler.step_update(num_updates=self.step)
        if self.ema is not None:
            self.ema.update(self.raw_model, step=self.step)
        return loss_sum / accum, grad_norm

    def _lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _stop_agreed(self, local: bool) -> bool:
        if not self.info.distributed:
            return local
        flag = torch.tensor([float(local)], device=self.info.device)
        return bool(all_reduce_sum(flag).item() > 0)

    def run(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        log_interval = cfg["logging"]["log_interval"]
        max_steps = cfg["train"]["max_steps"]
        every = cfg["checkpoint"]["every_steps"]
        global_batch = cfg["data"]["batch_size"] * cfg["optim"]["accum_steps"] * info.world_size
        if info.is_main:
            print(
                f"run directory: {self.run_dir}\n"
                f"model {cfg['model']['name']}: {count_parameters(self.raw_model) / 1e6:.2f}M "
                f"params, {self.loaders.num_classes} classes | {info.world_size} process(es) "
                f"on {info.device.type} | global batch {global_batch} | {self.spe} steps/epoch "
                f"x {self.total_epochs} epochs",
                flush=True,
            )
        last_metrics: dict[str, Any] = {}
        stopped = False
        with _StopRequest() as stop:
            while self.epoch < self.total_epochs and not stopped:
                epoch = self.epoch
                done = self.step - epoch * self.spe
                sampler_skip = done * cfg["data"]["batch_size"] * cfg["optim"]["accum_steps"]
                self.loaders.train_sampler.set_epoch(epoch, skip=sampler_skip)
                batches = _batches(self.loaders.train, info.device, cfg["train"]["channels_last"])
                self.model.train()
                bar = _Progress(
                    info.is_main and cfg["logging"]["progress"],
                    self.spe - done,
                    epoch,
                    self.total_epochs,
                )
                epoch_loss = torch.zeros((), device=info.device, dtype=torch.float64)
                epoch_steps, t_epoch = 0, time.perf_counter()
                t_log, steps_since_log = t_epoch, 0
                for _ in range(self.spe - done):
                    loss, grad_norm = self._train_step(batches)
                    epoch_loss += loss.double()
                    epoch_steps += 1
                    steps_since_log += 1
                    postfix: dict[str, Any] = {}
                    if self.step % log_interval == 0:
                        mean_loss = all_reduce_sum(loss.detach().clone()).item() / info.world_size
                        now = time.perf_counter()
                        rate = steps_since_log * global_batch / max(now - t_log, 1e-9)
                        t_log, steps_since_log = now, 0
                        if not math.isfinite(mean_loss):
                            raise FloatingPointError(
                                f"loss is {mean_loss} at step {self.step}: training diverged "
                                f"(lower optim.lr, or use train.amp=bf16 / none)"
                            )
                        self.log.log_step(
                            {
                                "step": self.step,
                                "epoch": epoch + 1,
                                "loss": mean_loss,
                                "lr": self.step_lr,
                                "grad_norm": None if grad_norm is None else float(grad_norm),
                                "samples_per_s": rate,
                                "time": now - t_epoch,
                            }
                        )
                        postfix = {
                            "loss": f"{mean_loss:.4f}",
                            "lr": f"{self.step_lr:.2e}",
                            "img/s": f"{rate:.0f}",
                        }
                    bar.update(**postfix)
                    at_max = max_steps is not None and self.step >= max_steps
                    if self._stop_agreed(stop.requested or at_max):
                        stopped = True
                        break
                    if every and self.step % every == 0 and self.step % self.spe:
                        self._save("periodic")
                bar.close()
                epoch_time = time.perf_counter() - t_epoch
                complete = self.step == (epoch + 1) * self.spe
                if not complete:  # stopped mid-epoch
                    self._save("stopped")
                    if info.is_main:
                        print(
                            f"stopped at step {self.step}: resume with --resume "
                            f"{self.run_dir / checkpoint_name(self.step)}",
                            flush=True,
                        )
                    break
                self.epoch = epoch + 1
                all_reduce_sum(epoch_loss)
                train_loss = epoch_loss.item() / max(epoch_steps, 1) / info.world_size
                row: dict[str, Any] = {
                    "epoch": self.epoch,
                    "step": self.step,
                    "train_loss": train_loss,
                    "lr": self.step_lr,
                    "epoch_time": epoch_time,
                    "samples_per_s": epoch_steps * global_batch / max(epoch_time, 1e-9),
                }
                evaluate_now = (
                    self.epoch % cfg["train"]["eval_every"] == 0
                    or self.epoch == self.total_epochs
                    or stopped
                )
                reason = "epoch"
                if evaluate_now:
                    row.update(self._evaluate())
                    key = "ema_top1" if self.ema is not None else "top1"
                    if row[key] > self.best["value"]:
                        self.best = {"metric": key, "epoch": self.epoch, "value": row[key]}
                        reason = "best"
                    last_metrics = row
                self._save(reason)
                self.log.log_epoch(row, self._summary(row))
        self.log.close()
        return self._summary(last_metrics)

    def _evaluate(self) -> dict[str, Any]:
        amp, cl = self.cfg["train"]["amp"], self.cfg["train"]["channels_last"]
        metrics = evaluate(self.model, self.loaders.val, self.info.device, amp, cl)
        out = {"val_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"]}
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.loaders.val, self.info.device, amp, cl)
            out.update(ema_val_loss=ema["loss"], ema_top1=ema["top1"], ema_top5=ema["top5"])
        return out

    def _summary(self, last: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "model": self.cfg["model"]["name"],
            "epoch": self.epoch,
            "step": self.step,
            "epochs": self.total_epochs,
            "steps_per_epoch": self.spe,
            "world_size": self.info.world_size,
            "best": self.best,
            "last": dict(last),
        }


def train(cfg: dict[str, Any], config_name: str, resume: str | None = None) -> dict[str, Any]:
    """Train per `cfg` (one process, or one per GPU under torchrun); return the run summary."""
    info = init_distributed(cfg["train"]["device"])
    try:
        if info.is_main:
            run_dir, resume_path = resolve_run_dir(cfg, config_name, resume)
        else:
            run_dir, resume_path = None, None
        run_dir, resume_path = broadcast_object((run_dir, resume_path))
        # read the checkpoint before writing anything: a bad one must leave the run untouched
        ckpt = load_training_checkpoint(resume_path) if resume_path else None
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            text = config_to_yaml(cfg)
            atomic_write(run_dir / "config.yaml", lambda f: f.write(text.encode()))
        barrier()
        if info.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        elif "OMP_NUM_THREADS" not in os.environ:
            # leave a core per data worker: oversubscribed CPUs slow small ops down many times
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            torch.set_num_threads(max(1, cores // info.world_size - cfg["data"]["workers"]))
        trainer = Trainer(cfg, info, run_dir, resume_path, ckpt)
        del ckpt  # the optimizer state copy is no longer needed
        summary = trainer.run()
        if info.is_main:
            print(f"run directory: {run_dir}", flush=True)
        return summary
    finally:
        shutdown()
