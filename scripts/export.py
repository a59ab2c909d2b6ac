#!/usr/bin/env python
"""Export a zoo model to TorchScript, torch.export (.pt2) and ONNX, and check each against eager.

    python scripts/export.py MODEL [--pretrained | --checkpoint FILE] [--img-size 224 [W]]
        [--batch-size 1] [--formats torchscript,export,onnx] [--out exported] [--dynamic-batch]
        [--check] [--num-classes N] [--model-args '{"drop_path_rate": 0}']

Writes ``OUT/MODEL.torchscript.pt`` (``torch.jit.script``), ``OUT/MODEL.pt2``
(``torch.export.save``; the fused neighborhood-attention op stays one node, so PyTorch keeps the
fused kernels) and ``OUT/MODEL.onnx`` (dynamo exporter, the op decomposed into Gather/MatMul/
Softmax by ``natten_ext.export``). ``--check`` runs each artifact (ONNX in onnxruntime on CPU) on
a random input and prints the largest difference from the eager model; it fails above ``--tol``.
Spatial sizes are static (one export per resolution); ``--dynamic-batch`` frees the batch size
(exported from a batch of at least 2: ``torch.export`` specialises a batch of 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.checkpoint import CheckpointFileError
from classification.pretrained import WeightsDownloadError
from natten_ext.export import dynamic_batch_example, to_onnx

FORMATS = ("torchscript", "export", "onnx")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="a registered model name, e.g. nat_tiny")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", action="store_true", help="load the published weights")
    src.add_argument("--checkpoint", help="a local checkpoint (any format the zoo loads)")
    p.add_argument("--img-size", type=int, nargs="+", help="H [W] (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset")
    p.add_argument("--out", default="exported", help="output folder")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument("--check", action="store_true", help="compare each artifact with eager")
    p.add_argument("--tol", type=float, default=1e-3, help="--check: largest abs difference")
    p.add_argument("--num-classes", type=int, help="replace the head's class count")
    p.add_argument("--model-args", default="{}", help="JSON dict of constructor arguments")
    args = p.parse_args(argv)
    if args.model not in timm.list_models():
        p.error(f"model {args.model!r} is not registered (see timm.list_models('*nat*'))")
    args.formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(args.formats) - set(FORMATS))
    if unknown or not args.formats:
        p.error(f"--formats takes a subset of {','.join(FORMATS)}, got {args.formats}")
    if args.img_size is not None and not 1 <= len(args.img_size) <= 2:
        p.error(f"--img-size takes H or H W, got {args.img_size}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        args.model_args = json.loads(args.model_args)
    except json.JSONDecodeError as e:
        p.error(f"--model-args must be a JSON object: {e}")
    if not isinstance(args.model_args, dict):
        p.error(f"--model-args must be a JSON object, got {args.model_args!r}")
    return args


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def build(args: argparse.Namespace) -> torch.nn.Module:
    """The model to export, with the weights of --pretrained or --checkpoint."""
    kwargs = dict(args.model_args)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.checkpoint:
        kwargs["pretrained_cfg_overlay"] = dict(file=args.checkpoint)
    pretrained = args.pretrained or bool(args.checkpoint)
    return timm.create_model(args.model, pretrained=pretrained, **kwargs).eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = build(args)
    except (CheckpointFileError, FileNotFoundError, WeightsDownloadError) as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        return 2
    size = args.img_size or list(model.pretrained_cfg["input_size"][1:])
    size = (size[0], size[-1])
    x = torch.randn(args.batch_size, model.in_chans, *size)
    if args.dynamic_batch:  # a batch of 1 would be specialised to the constant 1
        (x,) = dynamic_batch_example((x,))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # with a dynamic batch, check on another batch size than the one exported with
    check_x = torch.randn(x.shape[0] + 1, *x.shape[1:]) if args.dynamic_batch else x
    with torch.no_grad():
        expected = model(check_x)
    failed = []

    def report(fmt: str, path: Path, got: torch.Tensor | None) -> None:
        print(f"{fmt}: wrote {path}")
        if got is not None:
            diff = _max_diff(got, expected)
            print(f"{fmt}: max abs diff {diff:.3g} from eager")
            if not diff <= args.tol:
                failed.append(fmt)

    if "torchscript" in args.formats:
        path = out / f"{args.model}.torchscript.pt"
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(path))
        got = None
        if args.check:
            with torch.no_grad():
                got = torch.jit.load(str(path))(check_x)
        report("torchscript", path, got)
    if "export" in args.formats:
        path = out / f"{args.model}.pt2"
        dynamic = ({0: torch.export.Dim("batch", min=1)},) if args.dynamic_batch else None
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
        torch.export.save(program, path)
        got = None
        if args.check:
            with torch.no_grad():
                got = torch.export.load(path).module()(check_x)
        report("export", path, got)
    if "onnx" in args.formats:
        path = out / f"{args.model}.onnx"
        to_onnx(model, (x,), str(path), dynamic_batch=args.dynamic_batch)
        got = None
        if args.check:
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: check_x.numpy()}
            got = torch.from_numpy(session.run(None, feed)[0])
        report("onnx", path, got)
    if failed:
        print(f"differences above --tol={args.tol}: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
