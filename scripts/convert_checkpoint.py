#!/usr/bin/env python
"""Convert NAT/DiNAT checkpoints between the original layout and the Hugging Face one.

    python scripts/convert_checkpoint.py SRC DST [--to original|hf] [--model NAME] [--hf-prefix P]

SRC may be an original checkpoint (plain or wrapped in ``model``/``state_dict``), or an HF
``transformers`` state dict (``pytorch_model.bin`` / ``model.safetensors``); it is read with
``weights_only=True``. DST is written atomically, as safetensors when it ends in ``.safetensors``
and with ``torch.save`` otherwise. With ``--model``, the weights are loaded strictly into that timm
model first (rpb tables resized to its kernel, a head of another class count dropped), which
validates them and yields exactly the model's keys. Any bad input ends the command with one line
naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm

import classification  # noqa: F401  (registers the models)
from classification.checkpoint import (
    CheckpointMismatchError,
    checkpoint_filter_fn,
    describe_error,
    hf_to_original,
    is_hf_layout,
    load_checkpoint_file,
    original_to_hf,
    save_state_dict,
)

PROG = "convert_checkpoint.py"


class ConvertError(ValueError):
    """An input the conversion cannot use; the message names it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", type=Path, help="input checkpoint (.pth/.bin/.safetensors)")
    p.add_argument("dst", type=Path, help="output file (.safetensors or a torch file)")
    p.add_argument("--to", choices=("original", "hf"), default="original", help="output layout")
    p.add_argument("--model", help="timm model name to validate against (e.g. dinat_tiny)")
    p.add_argument(
        "--hf-prefix",
        choices=("nat", "dinat", "none"),
        help="HF key prefix for --to hf (default from --model: nat for nat_*, else dinat)",
    )
    return p.parse_args(argv)


def _first_line(err: BaseException) -> str:
    """A load_state_dict error's first listed problem (its first line is only a heading)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    problems = [line for line in lines if not line.startswith("Error(s) in loading")]
    return (problems or lines or [type(err).__name__])[0][:300]


def convert(args: argparse.Namespace) -> dict[str, int]:
    if args.to == "hf" and args.hf_prefix is None and not args.model:
        raise ConvertError("--to hf needs --hf-prefix (nat, dinat or none) or --model")
    if args.model and args.model not in timm.list_models():
        raise ConvertError(f"--model: unknown model {args.model!r}; see timm.list_models('*nat*')")
    if args.dst.is_dir():
        raise ConvertError(f"DST {args.dst} is a folder, not a file")
    sd = load_checkpoint_file(args.src)
    source_hf = is_hf_layout(sd)
    try:
        if args.model:
            head = sd.get("head.weight", sd.get("classifier.weight"))
            classes = {} if head is None else {"num_classes": head.shape[0]}  # the file's head
            model = timm.create_model(args.model, pretrained=False, **classes)
            model.load_state_dict(checkpoint_filter_fn(sd, model, source=args.src), strict=True)
            sd = model.state_dict()
        elif source_hf:
            sd = hf_to_original(sd)
        if args.to == "hf":
            prefix = args.hf_prefix
            if prefix is None:
                prefix = "nat" if args.model.startswith("nat_") else "dinat"
            sd = original_to_hf(sd, "" if prefix == "none" else prefix)
    except CheckpointMismatchError as err:  # the file's tensors do not fit --model
        raise ConvertError(f"{args.src} does not fit --model {args.model}: {err.problem}") from err
    except (KeyError, ValueError) as err:  # keys of no known layout
        raise ConvertError(f"{args.src}: {describe_error(err)}") from err
    except RuntimeError as err:  # load_state_dict: the weights do not fit --model
        raise ConvertError(
            f"{args.src} does not fit --model {args.model}: {_first_line(err)}"
        ) from err
    try:
        save_state_dict(sd, args.dst)
    except OSError as err:
        raise ConvertError(f"cannot write {args.dst}: {err.strerror or err}") from err
    return {"tensors": len(sd), "from_hf": int(source_hf)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        info = convert(args)
    except (ValueError, OSError) as err:  # CheckpointFileError, ConvertError, file not found
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({info['tensors']} tensors, layout {args.to})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
