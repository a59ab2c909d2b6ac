"""Datasets, samplers and loaders: ImageNet-style folders through timm's readers and transforms,
or a learnable synthetic set for benchmarks. Training samples are augmented with random state
derived from (seed, epoch, index), so a run resumed mid-epoch sees exactly the same batches.

An image that cannot be decoded is never replaced by another one (timm's ImageDataset would
substitute its neighbour): iterating the loader raises CorruptImageError naming the file, or, for
evaluation with skipping on, leaves the image out and lists it in the loader's `skipped`. Images of
every PIL mode are decoded to 8-bit RGB by value (16-bit and float images scaled, not clipped).

Folders are scanned without entering symlinked folders (listed instead), or, when asked to follow
them, without entering one that leads back into the dataset (a loop, or a second copy)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import ImageDataset, Mixup, auto_augment, create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader_image_folder import ReaderImageFolder
from timm.utils.misc import natural_key
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..checkpoint import describe_error

__all__ = [
    "CheckedImageDataset",
    "CheckedLoader",
    "CorruptImageError",
    "EpochSampler",
    "FolderScan",
    "Loaders",
    "ShardSampler",
    "SyntheticDataset",
    "UnreadableImage",
    "build_loaders",
    "build_mixup",
    "checked_loader",
    "eval_transform",
    "find_split",
    "ignore_stop_signals",
    "image_folder",
    "resolve_workers",
    "scan_image_folder",
    "to_rgb",
]

SYNTHETIC = "synthetic"
_SPLIT_ALIASES = {"val": ("val", "validation", "valid"), "train": ("train", "training")}


def find_split(root: str | Path, split: str) -> Path:
    """The folder of `split` under `root` (accepting the usual aliases), or a clear error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data: dataset folder not found: {root}")
    for name in _SPLIT_ALIASES.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise FileNotFoundError(
        f"--data: no '{split}' folder in {root} (expected {root}/{split}/<class>/<image>; "
        f"sub-folders found: {found or 'none'})"
    )


class CorruptImageError(ValueError):
    """An image of the dataset cannot be read or decoded; the message names the file."""


@dataclass(frozen=True)
class UnreadableImage:
    """What CheckedImageDataset returns in place of a sample whose image cannot be decoded."""

    path: str
    reason: str


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB, decoding every pixel. Modes of more than 8 bits are scaled by value:
    I;16 from [0, 65535]; I from the smallest of [0, 255], [0, 65535] or [0, its maximum] that
    holds its values; F from [0, 1] when its values lie there, else [0, 255] (NaN is 0). PIL's
    own convert("RGB") clips such images to white. Palette images with transparency, LA, PA and
    RGBA lose their alpha channel; 1, L, P, CMYK and the rest convert as PIL converts them."""
    if img.mode in (*_SIXTEEN_BIT, "I", "F"):
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if img.mode in _SIXTEEN_BIT:
            scale = 255 / 65535
        elif img.mode == "F":
            scale = 255.0 if low >= 0 and high <= 1 else 1.0
        elif low >= 0 and high <= 255:
            scale = 1.0
        elif low >= 0 and high <= 65535:
            scale = 255 / 65535
        else:
            scale = 255 / high if high > 0 else 1.0
        gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette with transparency goes to RGB
    return img.convert("RGB")


class CheckedImageDataset(ImageDataset):
    """timm's ImageDataset (its readers, class maps and transforms) without the silent
    substitution of a neighbouring image for one that fails to load: such a sample comes back as
    an UnreadableImage for CheckedLoader to fail on or skip. Images are decoded by to_rgb."""

    missing_classes: tuple[str, ...] | list[str] = ()  # classes of the class map without images
    scan: FolderScan | None = None

    def __getitem__(self, index: int):
        try:
            file, target, *_ = self.reader[index]
            with file:
                img = Image.open(file)
                mode = self.input_img_mode or "RGB"
                img = to_rgb(img) if mode == "RGB" else img.convert(mode)  # decodes every pixel
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, bomb errors...
            return UnreadableImage(str(self.filename(index, absolute=True)), describe_error(err))
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def collate_readable(batch: list[Any]) -> tuple[Any, list[UnreadableImage]]:
    """default_collate of the readable samples (None if there is none), and the unreadable."""
    bad = [s for s in batch if isinstance(s, UnreadableImage)]
    good = [s for s in batch if not isinstance(s, UnreadableImage)]
    return (default_collate(good) if good else None), bad


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def ignore_stop_signals(worker_id: int = 0) -> None:
    """In a loader worker: ignore SIGINT/SIGTERM, which reach the whole process group (Ctrl-C,
    timeout, Slurm, systemd), so that the main process alone decides how to stop; then unblock
    them (CheckedLoader forks its workers with them blocked, so none arrives before this)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """SIGINT/SIGTERM held back in this thread (and in the processes it forks) meanwhile; one
    that arrives is delivered when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class CheckedLoader:
    """Iterates a DataLoader built with collate_readable and yields (images, target) batches.

    An unreadable image raises CorruptImageError naming it; with `skip`, it is left out instead
    and listed in `skipped` (reset at the start of every pass). With `shield_workers`, the
    loader's workers are started with SIGINT/SIGTERM blocked; its worker_init_fn must call
    ignore_stop_signals (build_loaders' does)."""

    loader: DataLoader
    skip: bool = False
    skipped: list[UnreadableImage] = field(default_factory=list)
    shield_workers: bool = False

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        self.skipped = []
        shield = self.shield_workers and self.loader.num_workers > 0
        with _stop_signals_blocked() if shield else contextlib.nullcontext():
            batches = iter(self.loader)  # starts (or, persistent, wakes) the workers
        for batch, bad in batches:
            if bad and not self.skip:
                raise CorruptImageError(
                    f"cannot read image {bad[0].path} ({bad[0].reason}): remove or replace it "
                    f"(no other image is substituted for it)"
                )
            self.skipped.extend(bad)
            if batch is not None:
                yield batch

    def __len__(self) -> int:
        return len(self.loader)


def checked_loader(
    dataset: Dataset, skip: bool = False, shield_workers: bool = False, **kwargs: Any
) -> CheckedLoader:
    """A CheckedLoader over DataLoader(dataset, collate_fn=collate_readable, **kwargs)."""
    loader = DataLoader(dataset, collate_fn=collate_readable, **kwargs)
    return CheckedLoader(loader, skip, shield_workers=shield_workers)


@dataclass
class FolderScan:
    """What scan_image_folder found: (file, class name) pairs in natural order, and the
    symlinked folders it did not enter."""

    root: Path
    samples: list[tuple[str, str]]
    unfollowed: list[str] = field(default_factory=list)  # not followed (following is off)
    looping: list[str] = field(default_factory=list)  # lead back into the dataset

    def skipped(self, follow: str = "data.follow_symlinks=true") -> str | None:
        """What was left out, in words (None: nothing); `follow` is the option following
        symlinked folders."""
        parts = []
        for paths, why in (
            (self.unfollowed, f"not followed; {follow} follows them"),
            (self.looping, "they lead back into the dataset: a loop or a second copy"),
        ):
            if paths:
                shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
                parts.append(f"{len(paths)} symlinked folder(s) skipped ({why}): {shown}")
        return "; ".join(parts) or None

    def skipped_message(self, follow: str = "data.follow_symlinks=true") -> str | None:
        """One line naming the folder and the symlinked folders left out, or None."""
        skipped = self.skipped(follow)
        return f"--data: {self.root}: {skipped}" if skipped else None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def scan_image_folder(root: str | Path, follow_symlinks: bool = False) -> FolderScan:
    """The image files under `root`, each labelled by the name of the folder it is in (timm's
    folder reader's convention). Symlinked folders are entered only with `follow_symlinks`, and
    never one whose target is inside the dataset or an already entered target (a loop, or images
    counted twice) or encloses the folder it is in; symlinked files are read."""
    root = Path(root)
    extensions = get_img_extensions(as_set=True)
    scan = FolderScan(root, [])
    entered = [os.path.realpath(root)]  # real folders whose trees are being scanned
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, str, str]] = [(str(root), "", entered[0])]  # path, label, real path
    while stack:
        folder, label, real = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise OSError(f"--data: cannot read folder {folder}: {err.strerror or err}") from err
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:  # a dangling or unreadable link: not a folder
                is_dir = False
            if is_dir:
                target = real + os.sep + entry.name
                if entry.is_symlink():
                    if not follow_symlinks:
                        scan.unfollowed.append(entry.path)
                        continue
                    target = os.path.realpath(entry.path)
                    if any(_inside(target, e) for e in entered) or _inside(real, target):
                        scan.looping.append(entry.path)
                        continue
                    entered.append(target)
                stack.append((entry.path, entry.name, target))
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                found.append((os.path.join(folder, entry.name), label))
    scan.samples = sorted(found, key=lambda item: natural_key(item[0]))
    return scan


class _ScannedReader(ReaderImageFolder):
    """timm's folder reader over the files of a FolderScan."""

    def __init__(self, root: str, samples: list[tuple[str, int]], class_to_idx: dict[str, int]):
        super(ReaderImageFolder, self).__init__()  # the base Reader: no scan of its own
        self.root, self.samples, self.class_to_idx = root, samples, class_to_idx


def image_folder(
    split_dir: Path,
    transform: Any,
    class_to_idx: Mapping[str, int] | None = None,
    follow_symlinks: bool = False,
    classes_of: str = "the class map",
    follow_option: str = "data.follow_symlinks=true",
) -> CheckedImageDataset:
    """An ImageNet-style folder (one sub-folder per class) as a CheckedImageDataset, labelled by
    `class_to_idx` (default: the folder's own classes in natural order). A class with images
    here that `class_to_idx` lacks (`classes_of` says whose it is) is an error naming it; the
    classes without images are in the dataset's `missing_classes`, the scan in its `scan`
    (`follow_option`: the option that follows symlinked folders, for messages)."""
    scan = scan_image_folder(split_dir, follow_symlinks)
    if not scan.samples:
        skipped = scan.skipped(follow_option)
        raise FileNotFoundError(
            f"--data: no images found under {split_dir} (expected {split_dir}/<class>/<image>)"
            + (f"; {skipped}" if skipped else "")
        )
    found = sorted({label for _, label in scan.samples}, key=natural_key)
    if class_to_idx is None:
        class_to_idx = {name: i for i, name in enumerate(found)}
    unknown = [name for name in found if name not in class_to_idx]
    if unknown:
        names = [name or f"(images directly in {split_dir})" for name in unknown]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(
            f"--data: {split_dir} holds images of {len(unknown)} class(es) unknown to "
            f"{classes_of} ({len(class_to_idx)} classes): {shown} (their images would be left "
            f"out or mislabelled)"
        )
    mapping = dict(class_to_idx)
    samples = [(path, mapping[label]) for path, label in scan.samples]
    reader = _ScannedReader(str(split_dir), samples, mapping)
    dataset = CheckedImageDataset(str(split_dir), reader=reader)
    dataset.transform = transform
    present = set(found)
    dataset.missing_classes = [name for name in mapping if name not in present]
    dataset.scan = scan
    return dataset


def class_mapping(dataset: ImageDataset) -> dict[str, int]:
    return dict(dataset.reader.class_to_idx)


class SyntheticDataset(Dataset):
    """Learnable random images: a fixed low-frequency pattern per class plus per-sample noise.

    Samples are normalised tensors generated from their index, so no decoding or augmentation
    cost enters a throughput measurement and every process sees the same sample for an index."""

    def __init__(self, size: int, num_classes: int, img_size: int, seed: int = 0) -> None:
        self.size, self.num_classes, self.img_size, self.seed = size, num_classes, img_size, seed
        gen = torch.Generator().manual_seed(seed)
        self.templates = torch.randn(num_classes, 3, 8, 8, generator=gen)
        self.labels = torch.randint(num_classes, (size,), generator=gen)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.labels[index])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pattern = torch.nn.functional.interpolate(
            self.templates[label][None], size=(self.img_size,) * 2, mode="nearest"
        )[0]
        noise = torch.randn(3, self.img_size, self.img_size, generator=gen)
        return pattern + noise, label


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919_993 + index * 2_654_435_761) % (2**31 - 1)


class SeededDataset(Dataset):
    """Wraps a dataset so that `dataset[(index, epoch)]` runs its transform under RNG state
    derived from (seed, epoch, index), whichever worker loads it and whatever came before."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        if torch.utils.data.get_worker_info() is not None:
            return self._load(index, epoch)
        # loading in the main process: leave the training RNG streams as they were
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                return self._load(index, epoch)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def _load(self, index: int, epoch: int):
        sample_seed = _sample_seed(self.seed, epoch, index)
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.default_generator.manual_seed(sample_seed)  # CPU stream only (transforms)
        return self.dataset[index]


class EpochSampler(Sampler):
    """Shuffled, rank-sharded indices for one epoch, paired with the epoch for SeededDataset.

    Equivalent to DistributedSampler(drop_last=False, shuffle=True) plus `skip`: the first
    `skip` samples of this rank's share are left out, to resume in the middle of an epoch."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.size, self.num_replicas, self.rank, self.seed = size, num_replicas, rank, seed
        self.num_samples = math.ceil(size / num_replicas)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip must be in [0, {self.num_samples}], got {skip}")
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=gen).tolist()
        total = self.num_samples * self.num_replicas
        order += order[: total - len(order)]  # pad so every rank gets as many samples
        mine = order[self.rank : total : self.num_replicas]
        return ((index, self.epoch) for index in mine[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ShardSampler(Sampler):
    """One rank's evaluation indices, unpadded (rank, rank + world, ...): none counts twice."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_transform(img_size: int, crop_pct: float, interpolation: str, mean, std):
    """Resize to img_size / crop_pct, centre crop img_size, normalise (timm's eval pipeline)."""
    return create_transform(
        img_size,
        is_training=False,
        interpolation=interpolation,
        crop_pct=crop_pct,
        mean=tuple(mean),
        std=tuple(std),
    )


def _posterize_zero_safe(img, bits_to_keep, **_):
    """timm's posterize with the pre-Pillow-11 meaning of 0 bits (a black image): RandAugment's
    `inc1` posterize reaches 0 bits at magnitude 10 (m9 with mstd0.5 gets there), which current
    Pillow rejects with a ValueError in the middle of an epoch."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_timm_posterize() -> None:
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = _posterize_zero_safe


def train_transform(cfg: Mapping[str, Any]):
    data, aug = cfg["data"], cfg["aug"]
    _patch_timm_posterize()
    return create_transform(
        data["img_size"],
        is_training=True,
        scale=tuple(aug["scale"]),
        ratio=tuple(aug["ratio"]),
        hflip=aug["hflip"],
        vflip=aug["vflip"],
        color_jitter=aug["color_jitter"],
        auto_augment=aug["auto_augment"],
        interpolation=data["train_interpolation"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        re_prob=aug["reprob"],
        re_mode=aug["remode"],
        re_count=aug["recount"],
    )


@dataclass
class Loaders:
    train: CheckedLoader
    val: CheckedLoader
    train_sampler: EpochSampler
    num_classes: int
    steps_per_epoch: int  # optimizer steps per epoch (after gradient accumulation)
    classes: list[str] | None = None  # class names by index (None: synthetic data)


def _seed_worker(worker_id: int) -> None:
    """Samples reseed themselves; this covers the rest. Stops are the main process's."""
    ignore_stop_signals(worker_id)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS reports one (Linux), else
    every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(workers: int | str, device_type: str, world_size: int = 1) -> int:
    """``data.workers``: an int, or auto. Auto on CUDA gives each process its share of the node's
    cores less two (its main thread and the pin-memory thread): decoding and augmenting one
    ImageNet JPEG takes about 3 ms of a core, so an H200 training NAT-Tiny at ~3,200 images/s
    needs about 11 workers (docs/benchmarks.md). On the CPU, where the workers compete with the
    model for the same cores, auto is a quarter of the process's share."""
    if workers != "auto":
        return int(workers)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    share = max(1, usable_cores() // max(1, per_node))
    return max(1, share - 2) if device_type == "cuda" else max(1, share // 4)


def build_loaders(cfg: Mapping[str, Any], world_size: int, rank: int, workers: int) -> Loaders:
    """Train/val loaders for `cfg['data']['path']` (an ImageNet-style folder or "synthetic"),
    with ``workers`` loader processes each (:func:`resolve_workers` of ``data.workers``)."""
    data = cfg["data"]
    path = data["path"]
    if path is None:
        raise ValueError("--data: no dataset given (a folder with train/ and val/, or 'synthetic')")
    seed = cfg["train"]["seed"]
    classes = None
    if path == SYNTHETIC:
        num_classes = cfg["model"]["num_classes"] or 1000
        train_set: Dataset = SyntheticDataset(
            data["synthetic_train_size"], num_classes, data["img_size"], seed
        )
        val_set: Dataset = SyntheticDataset(
            data["synthetic_val_size"], num_classes, data["img_size"], seed + 1
        )
    else:
        follow = data["follow_symlinks"]
        train_dir = find_split(path, data["train_split"])
        train_set = image_folder(train_dir, train_transform(cfg), follow_symlinks=follow)
        mapping = class_mapping(train_set)  # type: ignore[arg-type]
        if len(mapping) < 2:
            raise ValueError(
                f"--data: {train_dir} has {len(mapping)} class folder ({', '.join(mapping)}): "
                f"classification needs at least 2 classes (one sub-folder per class)"
            )
        val_set = image_folder(
            find_split(path, data["val_split"]),
            eval_transform(
                data["img_size"], data["crop_pct"], data["interpolation"], data["mean"], data["std"]
            ),
            mapping,
            follow_symlinks=follow,
            classes_of=f"the training split {train_dir}",
        )
        for dataset in (train_set, val_set):
            message = dataset.scan.skipped_message()  # type: ignore[union-attr]
            if message and rank == 0:
                print(message, flush=True)
        classes = list(mapping)
        num_classes = cfg["model"]["num_classes"] or len(mapping)
        if len(mapping) > num_classes:
            raise ValueError(
                f"model.num_classes={num_classes} but {path} has {len(mapping)} classes"
            )
    if num_classes < 2:
        raise ValueError(
            f"model.num_classes={num_classes}: classification needs at least 2 classes"
        )
    batch_size, accum = data["batch_size"], cfg["optim"]["accum_steps"]
    sampler = EpochSampler(len(train_set), world_size, rank, seed)  # type: ignore[arg-type]
    steps_per_epoch = sampler.num_samples // (batch_size * accum)
    if steps_per_epoch == 0:
        raise ValueError(
            f"data.batch_size={batch_size} x optim.accum_steps={accum} exceeds the "
            f"{sampler.num_samples} training samples per process: nothing to train on"
        )
    common = dict(
        num_workers=workers,
        pin_memory=data["pin_memory"] and torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
        # a private generator: creating an iterator must not consume the global RNG stream
        generator=torch.Generator().manual_seed(seed),
    )
    train = checked_loader(
        SeededDataset(train_set, seed),
        shield_workers=True,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        **common,
    )
    val = checked_loader(
        val_set,
        shield_workers=True,
        batch_size=data["val_batch_size"] or 2 * batch_size,
        sampler=ShardSampler(len(val_set), world_size, rank),  # type: ignore[arg-type]
        **common,
    )
    return Loaders(train, val, sampler, num_classes, steps_per_epoch, classes)


def build_mixup(cfg: Mapping[str, Any], num_classes: int) -> Mixup | None:
    """timm's batch Mixup/CutMix (with label smoothing folded into its targets), or None."""
    aug = cfg["aug"]
    if aug["mixup"] <= 0 and aug["cutmix"] <= 0:
        return None
    return Mixup(
        mixup_alpha=aug["mixup"],
        cutmix_alpha=aug["cutmix"],
        prob=aug["mixup_prob"],
        switch_prob=aug["mixup_switch_prob"],
        mode=aug["mixup_mode"],
        label_smoothing=aug["smoothing"],
        num_classes=num_classes,
    )
