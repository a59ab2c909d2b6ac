"""nat-visualize: pictures of what neighborhood attention attends to, and of how a run went.

    nat-visualize attention --model dinat_tiny --image img.png --level 2 --block 1 --head 0 \\
        --query 0.4,0.6 --out attention.png        # one head; --head all: a grid of every head
    nat-visualize receptive-field --model nat_tiny dinat_tiny --level all --out rf.png
    nat-visualize saliency --model nat_tiny --pretrained --image img.png --out saliency.png
    nat-visualize run runs/nat_tiny [runs/dinat_tiny ...] --out curves.png

Weights: random (the default), --pretrained (the published ones) or --checkpoint FILE (any format
the zoo loads; a nat-train checkpoint also gives the model, its kwargs and its input size).
Images are resized (shorter side) and centre-cropped to the model's input size. Points are X,Y:
fractions of the width and height. Needs matplotlib (the `plot` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointFileError
from ..training.state import CheckpointError
from .figure import MatplotlibMissing, VisualizeError, check_png_path, require_matplotlib
from .inputs import (
    LoadedModel,
    check_file,
    check_index,
    level_blocks,
    load_image,
    load_model,
    parse_point,
)

__all__ = ["build_parser", "main"]

PROG = "nat-visualize"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VisualizeError("--device cuda: CUDA is not available on this machine")
    return torch.device(name)


def _model_options(p: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        p.add_argument("--model", nargs="+", help="model name(s); one row of panels each")
    else:
        p.add_argument("--model", help="model name (default: the nat-train checkpoint's)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="weights file (any format the zoo loads)")
    src.add_argument("--pretrained", action="store_true", help="the published weights")
    p.add_argument("--model-kwargs", help="JSON of constructor kwargs, e.g. '{\"embed_dim\": 32}'")
    p.add_argument("--img-size", type=int, help="input size (default: the model's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (and noise inputs)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "attention", help="the attention weights of a query over its neighborhood", description=(
            "The image with the neighborhood of one query at a level, coloured by the weights "
            "the block's attention gives its keys (taken from the model's own forward)."
        ),
    )  # fmt: skip
    _model_options(p)
    p.add_argument("--image", required=True, help="input image file")
    p.add_argument(
        "--level", type=int, default=0,
        help="level: 0-3 of NAT/DiNAT/DiNAT_s, a layer of the isotropic models (default 0)",
    )  # fmt: skip
    p.add_argument("--block", type=int, default=0, help="block of the level (default 0)")
    p.add_argument("--head", default="all", help="head index, or 'all' for a grid (default)")
    p.add_argument("--query", default="0.5,0.5", help="the query's X,Y fractions (default centre)")
    p.add_argument("--out", default="attention.png", help="output PNG (default attention.png)")
    p.set_defaults(func=_attention)

    p = sub.add_parser(
        "receptive-field", help="gradient of one output position with respect to the input",
        description=(
            "|d output / d input| of one position of a level's output, as a heat map: one row "
            "per model, one panel per level."
        ),
    )  # fmt: skip
    _model_options(p, several=True)
    p.add_argument("--level", default="all", help="levels: 'all' (default) or e.g. 0,2")
    p.add_argument("--position", default="0.5,0.5", help="output position X,Y (default centre)")
    p.add_argument("--image", help="input image (default: Gaussian noise)")
    p.add_argument("--samples", type=int, default=1, help="noise inputs to average (default 1)")
    p.add_argument("--out", default="receptive_field.png", help="output PNG")
    p.set_defaults(func=_receptive_field)

    p = sub.add_parser(
        "saliency", help="gradient-based class saliency over the image",
        description="Vanilla-gradient or gradient x input saliency of a class, over the image.",
    )  # fmt: skip
    _model_options(p)
    p.add_argument("--image", required=True, help="input image file")
    p.add_argument("--class", dest="target", type=int, help="class index (default: top-1)")
    p.add_argument("--method", choices=("grad", "grad-x-input"), default="grad")
    p.add_argument("--out", default="saliency.png", help="output PNG (default saliency.png)")
    p.set_defaults(func=_saliency)

    p = sub.add_parser(
        "run", help="loss, learning-rate and accuracy curves of nat-train runs",
        description="Curves of one or more nat-train runs (steps.csv, epochs.csv), overlaid.",
    )  # fmt: skip
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories")
    p.add_argument("--out", type=Path, help="output PNG (default: <first run>/curves.png)")
    p.set_defaults(func=_run)
    return parser


def _weights(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return f"weights {args.checkpoint}"
    return "published weights" if args.pretrained else "random init"


def _load(args: argparse.Namespace, name: str | None) -> LoadedModel:
    if args.img_size is not None and args.img_size < 1:
        raise VisualizeError(f"--img-size must be >= 1, got {args.img_size}")
    return load_model(
        name,
        args.checkpoint,
        args.pretrained,
        args.model_kwargs,
        args.img_size,
        args.device,
        args.seed,
    )


def _attention(args: argparse.Namespace) -> str:
    from .attention import capture_attention, draw_attention, head_choices

    out = check_png_path(args.out)
    point = parse_point(args.query, "--query")
    check_file(args.image, "--image")
    args.device = _device(args.device)
    loaded = _load(args, args.model)
    image = load_image(args.image, loaded.img_size, loaded.mean, loaded.std, loaded.interpolation)
    capture = capture_attention(
        loaded.model, image.tensor.to(args.device), args.level, args.block, loaded.name
    )
    if args.head == "all":
        heads = None
    else:
        try:
            heads = [int(args.head)]
        except ValueError:
            message = f"--head must be a head index or 'all', got {args.head!r}"
            raise VisualizeError(message) from None
        if not 0 <= heads[0] < capture.num_heads:
            raise VisualizeError(
                f"--head {heads[0]} is out of range: level {args.level} of {loaded.name} has "
                f"heads {head_choices(capture.num_heads)}"
            )
    title = f"{loaded.name} ({_weights(args)}), level {args.level} block {args.block}"
    picture = draw_attention(capture, image.pixels, point, heads, out, title).picture
    return f"wrote {picture.path} ({picture.width}x{picture.height})"


def _levels(text: str, count: int, name: str) -> list[int]:
    if text == "all":
        return list(range(count))
    try:
        levels = [int(t) for t in text.split(",")]
    except ValueError:
        raise VisualizeError(f"--level must be 'all' or indices like 0,2, got {text!r}") from None
    return [check_index("--level", level, count, f"{name} has levels") for level in levels]


def _receptive_field(args: argparse.Namespace) -> str:
    from .receptive_field import draw_receptive_fields, receptive_field

    out = check_png_path(args.out)
    point = parse_point(args.position, "--position")
    names = args.model or [None]
    if len(names) > 1 and args.checkpoint:
        raise VisualizeError("--checkpoint needs a single --model")
    if args.samples < 1:
        raise VisualizeError(f"--samples must be >= 1, got {args.samples}")
    if args.image:
        check_file(args.image, "--image")
        if args.samples != 1:
            raise VisualizeError("--samples averages noise inputs: leave it out with --image")
    args.device = _device(args.device)
    fields, labels, size = [], [], args.img_size
    for name in names:
        loaded = _load(args, name)
        size = size or loaded.img_size
        if args.image:
            images = load_image(args.image, size, loaded.mean, loaded.std, loaded.interpolation)
            x = images.tensor
        else:
            gen = torch.Generator().manual_seed(args.seed)
            x = torch.randn(args.samples, 3, size, size, generator=gen)
        levels = _levels(args.level, len(level_blocks(loaded.model)), loaded.name)
        x = x.to(args.device)
        fields.append([receptive_field(loaded.model, lv, x, point) for lv in levels])
        labels.append(loaded.name)
    source = "the image" if args.image else f"{args.samples} noise input(s)"
    picture = draw_receptive_fields(fields, labels, point, out, f" ({source}, {_weights(args)})")
    return f"wrote {picture.path} ({picture.width}x{picture.height})"


def _saliency(args: argparse.Namespace) -> str:
    from .saliency import draw_saliency, saliency

    out = check_png_path(args.out)
    check_file(args.image, "--image")
    args.device = _device(args.device)
    loaded = _load(args, args.model)
    if not getattr(loaded.model, "num_classes", 0):
        raise VisualizeError(f"{loaded.name} has no classifier head (num_classes=0)")
    image = load_image(args.image, loaded.img_size, loaded.mean, loaded.std, loaded.interpolation)
    result = saliency(loaded.model, image.tensor.to(args.device), args.target, args.method)
    picture = draw_saliency(result, image.pixels, out, f"{loaded.name} ({_weights(args)})")
    return f"wrote {picture.path} ({picture.width}x{picture.height})"


def _run(args: argparse.Namespace) -> str:
    from .runs import draw_runs

    picture = draw_runs(args.runs, args.out or args.runs[0] / "curves.png")
    return f"wrote {picture.path} ({picture.width}x{picture.height})"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = f"{PROG} {args.command}"
    try:
        require_matplotlib()
        message = args.func(args)
    except MatplotlibMissing as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (
        VisualizeError, CheckpointError, CheckpointFileError, FileNotFoundError, ValueError,
        RuntimeError,
    ) as err:  # fmt: skip
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
