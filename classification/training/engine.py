"""The training loop: DDP, AMP, gradient accumulation and clipping, EMA, per-iteration LR,
evaluation with cross-rank metrics, periodic/best checkpoints and exact resumption.

:func:`train` claims the run directory and finds the checkpoint to resume (``rundir.py``), then
:class:`Trainer` builds the run, checks a resumed checkpoint (``resume.py``), compiles the model
(``compile.py``) and trains; checkpoints are written and read by ``state.py``."""

from __future__ import annotations

import contextlib
import json
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

from ..atomic import atomic_write
from .compile import announce_compilation, compile_model
from .config import config_to_yaml
from .data import build_loaders, build_mixup, resolve_workers, usable_cores
from .distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_object,
    gather_objects,
    init_distributed,
    shutdown,
)
from .model import build_model, count_parameters
from .optim import build_optimizer, build_scheduler, describe_schedule
from .progress import Progress
from .resume import check_resumable, restore_best
from .rundir import RunLock, claim_run_dir, remove_stale_temporaries, resolve_run_dir
from .runlog import EPOCH_FIELDS, RunLogger, truncate_csv
from .state import (
    FORMAT,
    CheckpointError,
    CheckpointWriteError,
    atomic_save,
    capture_rng_state,
    checkpoint_name,
    list_checkpoints,
    load_training_checkpoint,
    prune_checkpoints,
    restore_rng_state,
)

# resolve_run_dir lives in rundir.py; it is importable from here too
__all__ = ["TrainingError", "autocast_for", "evaluate", "resolve_run_dir", "train"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_PRECISION = {
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast with loss scaling",
    "none": "float32, no autocast",
}


class TrainingError(RuntimeError):
    """The run stopped on a problem its message describes in one line (divergence, a checkpoint
    that could not be written), naming the last complete checkpoint."""


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
    progress: Progress | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 (%) and cross-entropy over the loader, summed across ranks; ``progress``
    advances by one step per batch."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for images, target in loader:
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs (reduce-overhead): new step
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
        if progress is not None:
            progress.update()
    all_reduce_sum(totals)
    count = max(totals[3].item(), 1.0)
    return {
        "loss": totals[0].item() / count,
        "top1": 100 * totals[1].item() / count,
        "top5": 100 * totals[2].item() / count,
        "count": int(totals[3].item()),
    }


def _summary_at(path: Path) -> tuple[int, int] | None:
    """(epoch, step) of a summary.json (None if missing or unreadable)."""
    try:
        summary = json.loads(path.read_text())
        return int(summary["epoch"]), int(summary["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def _batches(loader, device: torch.device, channels_last: bool) -> Iterator[tuple[Any, Any]]:
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, target.to(device, non_blocking=True)


class Trainer:
    """One training run (every rank builds one): building it checks the data, the model and the
    checkpoint without writing anything; prepare_run_dir() then sets up the directory (rank 0)
    and run() trains."""

    def __init__(
        self,
        cfg: dict[str, Any],
        info: DistInfo,
        run_dir: Path,
        resume_path: Path | None = None,
        ckpt: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        self.resume_path = resume_path
        train = cfg["train"]
        if ckpt is None and resume_path is not None:
            ckpt = load_training_checkpoint(resume_path)
        workers = resolve_workers(cfg["data"]["workers"], info.device.type, info.world_size)
        self.loaders = build_loaders(cfg, info.world_size, info.rank, workers)
        self.spe = self.loaders.steps_per_epoch
        random_seed(train["seed"], 0)  # identical initial weights on every rank and world size
        # a resumed run's weights are its checkpoint's: no pretrained / init_checkpoint load
        try:
            raw = build_model(cfg, self.loaders.num_classes, load_weights=ckpt is None)
        except ValueError as err:
            if resume_path is None:
                raise
            raise ValueError(f"--resume {resume_path}: {err}") from err
        raw = raw.to(info.device)
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
        # every finished epoch's log row (checkpoints carry them: the logs are rebuilt from them);
        # None only after resuming a checkpoint written before they were saved
        self.epoch_rows: list[dict[str, Any]] | None = []
        # the epoch in progress: sum over its steps of the loss (mean over ranks), steps, seconds
        self._epoch_loss = torch.zeros((), device=info.device, dtype=torch.float64)
        self._epoch_steps = 0
        self._epoch_seconds = 0.0
        self._epoch_started = time.perf_counter()
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
        # the note names backend and mode when the model is compiled (None: it is not)
        self.model, self._compile_note = compile_model(model, cfg, info.device, info.distributed)
        self.mixup = build_mixup(cfg, self.loaders.num_classes)
        smoothing = cfg["aug"]["smoothing"]
        if self.mixup is not None:
            self.loss_fn: torch.nn.Module = SoftTargetCrossEntropy()
        elif smoothing > 0:
            self.loss_fn = LabelSmoothingCrossEntropy(smoothing)
        else:
            self.loss_fn = torch.nn.CrossEntropyLoss()
        self.log = RunLogger(run_dir, cfg, False)  # prepare_run_dir() opens the real one

    @property
    def complete(self) -> bool:
        """Whether the schedule (or train.max_steps) is already done."""
        max_steps = self.cfg["train"]["max_steps"]
        return self.epoch >= self.total_epochs or (max_steps is not None and self.step >= max_steps)

    # ----------------------------------------------------------------- state
    def _load_state(self, ckpt: dict[str, Any], path: Path) -> None:
        loaders = self.loaders
        check_resumable(ckpt, path, self.cfg, self.raw_model, loaders.num_classes, loaders.classes)
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        # the schedule is the config's (optim.lr, sched.*), built for this run: its state in the
        # checkpoint would bring back the lr and length the run was started with
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_values):
            group["initial_lr"] = base
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.module.load_state_dict(ckpt["ema"])
            else:
                self.ema.module.load_state_dict(ckpt["model"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best = dict(ckpt.get("best") or self.best)
        self.epoch_rows = [dict(r) for r in ckpt["epoch_rows"]] if "epoch_rows" in ckpt else None
        progress = ckpt.get("epoch_progress") or {}
        if self.step > self.epoch * ckpt.get("steps_per_epoch", self.spe) and progress:
            self._epoch_loss.fill_(float(progress["loss_sum"]))
            self._epoch_steps = int(progress["steps"])
            self._epoch_seconds = float(progress["seconds"])
        if ckpt.get("steps_per_epoch") != self.spe:
            if self.step != self.epoch * ckpt.get("steps_per_epoch", self.spe):
                raise CheckpointError(
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

    def prepare_run_dir(self) -> None:
        """Rank 0, with the run directory locked and every check passed: write config.yaml,
        delete temporaries of interrupted writes, bring best.pth up to the checkpoint's best and
        make the logs what an uninterrupted run would have written up to the checkpoint."""
        if not self.info.is_main:
            return
        resumed = self.resume_path is not None
        finished = resumed and self.complete  # nothing to train: no settings to record
        config_path = self.run_dir / "config.yaml"
        if not (finished and config_path.is_file()):
            text = config_to_yaml(self.cfg)
            atomic_write(config_path, lambda f: f.write(text.encode()))
        stale = remove_stale_temporaries(self.run_dir)
        if stale:
            print(
                f"removed {len(stale)} temporary file(s) of interrupted writes: "
                f"{', '.join(p.name for p in stale)}",
                flush=True,
            )
        if resumed:
            restore_best(self.run_dir, self.best.get("epoch"), self.spe, self.resume_path)
        if resumed and self.epoch_rows is None:  # an older checkpoint: keep what the CSV has
            self.epoch_rows = truncate_csv(self.run_dir / "epochs.csv", EPOCH_FIELDS, self.step)
        self.log = RunLogger(
            self.run_dir,
            self.cfg,
            True,
            self.step if resumed else None,
            self.epoch_rows if resumed else None,
        )
        if resumed and self.epoch_rows:
            last = self.epoch_rows[-1]
            epoch, step = int(last["epoch"]), int(last["step"])
            if not (finished and _summary_at(self.log.summary_path) == (epoch, step)):
                self.log.write_summary(self._summary(last, epoch, step))

    def _last_checkpoint(self) -> str:
        ckpts = list_checkpoints(self.run_dir)
        return f"the last complete checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint yet"

    def _diverged(self, what: str) -> TrainingError:
        return TrainingError(
            f"training diverged: {what} at step {self.step} (epoch {self.epoch + 1}); "
            f"{self._last_checkpoint()}: resume from it (--resume FILE) with a lower optim.lr, "
            f"or with train.amp=bf16 / none"
        )

    def _epoch_loss_sum(self) -> float:
        """The epoch's loss sum over steps of the mean over ranks (all ranks join)."""
        total = all_reduce_sum(self._epoch_loss.clone()).item()
        return total / self.info.world_size

    def _weights_finite(self) -> bool:
        flags = [p.isfinite().all() for p in self.raw_model.parameters() if p.is_floating_point()]
        return bool(torch.stack(flags).all()) if flags else True

    def _save(self, reason: str) -> None:
        """Checkpoint the run (all ranks join: RNG states are gathered; rank 0 writes). Nothing
        non-finite is saved; a failed write stops the run with the last complete checkpoint
        named."""
        loss_sum = self._epoch_loss_sum()
        if not math.isfinite(loss_sum) or not self._weights_finite():
            raise self._diverged("non-finite loss or weights before a checkpoint")
        rng = gather_objects(capture_rng_state())
        error = None
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
                "epoch_rows": self.epoch_rows,
                "epoch_progress": {
                    "loss_sum": loss_sum,
                    "steps": self._epoch_steps,
                    "seconds": time.perf_counter() - self._epoch_started,
                },
                "rng": rng,
                "config": self.cfg,
                "reason": reason,
                "num_classes": self.loaders.num_classes,
                "classes": self.loaders.classes,
            }
            try:
                atomic_save(state, self.run_dir / checkpoint_name(self.step))
                prune_checkpoints(self.run_dir, self.cfg["checkpoint"]["keep"])
                if reason == "best":
                    atomic_save(state, self.run_dir / "best.pth")
            except CheckpointWriteError as err:
                error = TrainingError(
                    f"{err}: training stopped at step {self.step}; {self._last_checkpoint()} "
                    f"(resume with --resume auto once the problem is fixed)"
                )
        error = broadcast_object(error)  # every rank stops, not only the writer
        if error is not None:
            raise error

    # ----------------------------------------------------------------- loop
    def _first_step(self, batches: Iterator[tuple[Any, Any]]):
        """The run's first step, announced when the model is compiled (it compiles there)."""
        if self._compile_note is None or not self.info.is_main:
            return self._train_step(batches)
        with announce_compilation(self._compile_note, self.info.device):
            return self._train_step(batches)

    def _train_step(
        self, batches: Iterator[tuple[Any, Any]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        accum = self.cfg["optim"]["accum_steps"]
        amp = self.cfg["train"]["amp"]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.info.device)
        for micro in range(accum):
            # compile_mode=reduce-overhead: the previous step's graph outputs are no longer read
            torch.compiler.cudagraph_mark_step_begin()
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
                f"x {self.total_epochs} epochs\n"
                f"{describe_schedule(cfg)} | {_PRECISION[cfg['train']['amp']]} "
                f"on {info.device.type} (train.amp={cfg['train']['amp']})",
                flush=True,
            )
        evaluated = [r for r in self.epoch_rows or [] if r.get("top1") not in (None, "")]
        last_metrics: dict[str, Any] = dict(evaluated[-1]) if evaluated else {}
        stopped = False
        first_step = True
        with _StopRequest() as stop:
            while self.epoch < self.total_epochs and not stopped:
                epoch = self.epoch
                done = self.step - epoch * self.spe
                if done == 0:  # a new epoch (a resumed one carries on from its checkpoint)
                    self._epoch_loss.zero_()
                    self._epoch_steps, self._epoch_seconds = 0, 0.0
                self._epoch_started = time.perf_counter() - self._epoch_seconds
                sampler_skip = done * cfg["data"]["batch_size"] * cfg["optim"]["accum_steps"]
                self.loaders.train_sampler.set_epoch(epoch, skip=sampler_skip)
                batches = _batches(self.loaders.train, info.device, cfg["train"]["channels_last"])
                self.model.train()
                bar = Progress(
                    self.spe - done,
                    f"epoch {epoch + 1}/{self.total_epochs}",
                    enabled=info.is_main and cfg["logging"]["progress"],
                )
                t_log, steps_since_log = time.perf_counter(), 0
                for _ in range(self.spe - done):
                    if first_step:
                        loss, grad_norm = self._first_step(batches)
                        first_step = False
                    else:
                        loss, grad_norm = self._train_step(batches)
                    self._epoch_loss += loss.double()
                    self._epoch_steps += 1
                    steps_since_log += 1
                    postfix: dict[str, Any] = {}
                    if self.step % log_interval == 0:
                        mean_loss = all_reduce_sum(loss.detach().clone()).item() / info.world_size
                        now = time.perf_counter()
                        rate = steps_since_log * global_batch / max(now - t_log, 1e-9)
                        t_log, steps_since_log = now, 0
                        if not math.isfinite(mean_loss):
                            raise self._diverged(f"loss is {mean_loss}")
                        self.log.log_step(
                            {
                                "step": self.step,
                                "epoch": epoch + 1,
                                "loss": mean_loss,
                                "lr": self.step_lr,
                                "grad_norm": None if grad_norm is None else float(grad_norm),
                                "samples_per_s": rate,
                                "time": now - self._epoch_started,
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
                epoch_time = time.perf_counter() - self._epoch_started
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
                train_loss = self._epoch_loss_sum() / max(self._epoch_steps, 1)
                if not math.isfinite(train_loss):
                    raise self._diverged(f"the epoch's mean loss is {train_loss}")
                epoch_steps = self._epoch_steps
                self.epoch = epoch + 1
                self._epoch_loss.zero_()  # an epoch-end checkpoint has no epoch in progress
                self._epoch_steps = 0
                self._epoch_started = time.perf_counter()
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
                if self.epoch_rows is not None:
                    self.epoch_rows.append(row)
                self._save(reason)
                self.log.log_epoch(row, self._summary(row))
        self.log.close()
        return self._summary(last_metrics)

    def _evaluate(self) -> dict[str, Any]:
        amp, cl = self.cfg["train"]["amp"], self.cfg["train"]["channels_last"]
        show = self.info.is_main and self.cfg["logging"]["progress"]
        val = self.loaders.val
        with Progress(len(val), "validate", enabled=show) as bar:
            metrics = evaluate(self.model, val, self.info.device, amp, cl, bar)
        out = {"val_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"]}
        if self.ema is not None:
            with Progress(len(val), "validate (EMA)", enabled=show) as bar:
                ema = evaluate(self.ema.module, val, self.info.device, amp, cl, bar)
            out.update(ema_val_loss=ema["loss"], ema_top1=ema["top1"], ema_top5=ema["top5"])
        return out

    def _summary(
        self, last: Mapping[str, Any], epoch: int | None = None, step: int | None = None
    ) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "model": self.cfg["model"]["name"],
            "epoch": self.epoch if epoch is None else epoch,
            "step": self.step if step is None else step,
            "epochs": self.total_epochs,
            "steps_per_epoch": self.spe,
            "world_size": self.info.world_size,
            "best": self.best,
            "last": dict(last),
        }


def _on_main(info: DistInfo, fn, *args: Any) -> Any:
    """fn(*args) on rank 0, its result (or the exception it raised) shared with every rank."""
    outcome: tuple[Any, BaseException | None] = (None, None)
    if info.is_main:
        try:
            outcome = (fn(*args), None)
        except Exception as err:  # re-raised on every rank below
            outcome = (None, err)
    result, error = broadcast_object(outcome)
    if error is not None:
        raise error
    return result


def train(cfg: dict[str, Any], config_name: str, resume: str | None = None) -> dict[str, Any]:
    """Train per `cfg` (one process, or one per GPU under torchrun); return the run summary.

    The run directory is locked for the whole run. Everything is checked (directory, checkpoint,
    data, model) before anything is written; a run that fails those checks leaves nothing."""
    info = init_distributed(cfg["train"]["device"])
    lock: RunLock | None = None
    prepared = False

    def claim() -> tuple[Path, Path | None]:
        nonlocal lock
        run_dir, resume_path, lock = claim_run_dir(cfg, config_name, resume)
        return run_dir, resume_path

    try:
        run_dir, resume_path = _on_main(info, claim)
        ckpt = load_training_checkpoint(resume_path) if resume_path else None
        if info.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        elif "OMP_NUM_THREADS" not in os.environ:
            # leave a core per data worker: oversubscribed CPUs slow small ops down many times
            workers = resolve_workers(cfg["data"]["workers"], "cpu", info.world_size)
            torch.set_num_threads(max(1, usable_cores() // info.world_size - workers))
        trainer = Trainer(cfg, info, run_dir, resume_path, ckpt)
        del ckpt  # the optimizer state copy is no longer needed
        _on_main(info, trainer.prepare_run_dir)
        prepared = True
        if trainer.complete:
            if info.is_main:
                print(
                    f"run {run_dir} is complete: epoch {trainer.epoch} of "
                    f"{trainer.total_epochs}, step {trainer.step} ({resume_path.name}); nothing "
                    f"to resume (raise sched.epochs or train.max_steps to train further)",
                    flush=True,
                )
            trainer.log.close()
            return trainer._summary(trainer.epoch_rows[-1] if trainer.epoch_rows else {})
        if resume_path is not None and info.is_main:
            print(
                f"resumed from {resume_path} at epoch {trainer.epoch + 1}, step {trainer.step}",
                flush=True,
            )
        summary = trainer.run()
        if info.is_main:
            print(f"run directory: {run_dir}", flush=True)
        return summary
    finally:
        if lock is not None:
            lock.release(cleanup=not prepared)
        shutdown()
