"""The NAT / DiNAT / DiNAT_s backbones shared by mmdet and mmseg: outputs, keys, frozen stages,
drop path and dilations from the config, small inputs, and loading classification checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")

from classification import NAT, DiNAT_s
from classification.checkpoint import original_to_hf
from detection.backbones import DiNATBackbone, DiNATSBackbone, NATBackbone

TINY = dict(embed_dim=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 4, 8], mlp_ratio=2.0)
TINY_DILATIONS = [[4], [1, 2], [1, 3], [1]]


def _inputs(h: int = 64, w: int = 80) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "backbone",
    [
        lambda **kw: NATBackbone(**TINY, **kw),
        lambda **kw: DiNATBackbone(**TINY, dilations=TINY_DILATIONS, **kw),
        lambda **kw: DiNATSBackbone(**TINY, dilations=TINY_DILATIONS, **kw),
    ],
    ids=["nat", "dinat", "dinat_s"],
)
def test_outputs_per_level(backbone) -> None:
    model = backbone(out_indices=(0, 1, 2, 3)).eval()
    outs = model(_inputs())
    assert [tuple(o.shape) for o in outs] == [
        (2, 16, 16, 20),
        (2, 32, 8, 10),
        (2, 64, 4, 5),
        (2, 128, 2, 3),
    ]
    assert all(o.is_contiguous() for o in outs)
    partial = backbone(out_indices=(1, 3)).eval()
    assert [o.shape[1] for o in partial(_inputs())] == [32, 128]
    assert {k.split(".")[0] for k in partial.state_dict() if k.startswith("norm")} == {
        "norm1",
        "norm3",
    }


def test_outputs_equal_classifier_intermediates_plus_norms() -> None:
    """The backbone is the classifier's trunk: same weights give the classifier's per-level maps
    (before downsampling) passed through norm0..norm3."""
    classifier = NAT(**TINY, dilations=TINY_DILATIONS, num_classes=5).eval()
    backbone = DiNATBackbone(**TINY, dilations=TINY_DILATIONS).eval()
    missing = backbone.load_state_dict(classifier.state_dict(), strict=False).missing_keys
    assert sorted({k.split(".")[0] for k in missing}) == ["norm0", "norm1", "norm2", "norm3"]
    x = _inputs()
    feats = classifier.forward_intermediates(x, norm=False, intermediates_only=True)
    for i, (ours, ref) in enumerate(zip(backbone(x), feats)):
        norm = getattr(backbone, f"norm{i}")
        expected = norm(ref.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours, expected)


def test_state_dict_keys_follow_published_layout() -> None:
    nat_keys = NATBackbone(**TINY).state_dict().keys()
    assert (
        "patch_embed.proj.0.weight" in nat_keys
        and "levels.2.downsample.reduction.weight" in nat_keys
    )
    assert "levels.0.blocks.0.attn.rpb" in nat_keys and "norm3.weight" in nat_keys
    assert not any(k.startswith(("head.", "norm.")) for k in nat_keys)
    s_keys = DiNATSBackbone(**TINY, dilations=TINY_DILATIONS).state_dict().keys()
    assert "patch_embed.proj.weight" in s_keys and "layers.0.downsample.norm.weight" in s_keys


def test_dilations_and_drop_path_come_from_the_config() -> None:
    model = DiNATBackbone(**TINY, dilations=TINY_DILATIONS, drop_path_rate=0.3)
    got = [[tuple(b.attn.dilation) for b in level.blocks] for level in model.levels]
    assert got == [[(d, d) for d in level] for level in TINY_DILATIONS]
    assert model.levels[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert model.levels[0].blocks[0].drop_path.__class__.__name__ == "Identity"


def test_small_maps_are_padded() -> None:
    """Maps smaller than kernel * dilation (here 1x1 at level 3, dilation 4 on 8x8 at level 0)
    are zero-padded inside the attention, as the detection/segmentation checkpoints expect."""
    model = DiNATBackbone(**TINY, dilations=TINY_DILATIONS).eval()
    outs = model(_inputs(32, 32))
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_frozen_stages_freeze_parameters_and_stay_in_eval() -> None:
    model = NATBackbone(**TINY, frozen_stages=2, drop_path_rate=0.1)
    model.train()
    frozen = [model.patch_embed, model.levels[0], model.levels[1], model.norm0, model.norm1]
    for module in frozen:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    for module in (model.levels[2], model.levels[3], model.norm2):
        assert module.training and all(p.requires_grad for p in module.parameters())
    outs = model(_inputs())
    sum(o.sum() for o in outs).backward()
    assert model.levels[0].blocks[0].attn.qkv.weight.grad is None
    assert model.levels[2].blocks[0].attn.qkv.weight.grad is not None


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="out_indices"):
        NATBackbone(**TINY, out_indices=(0, 4))
    with pytest.raises(ValueError, match="frozen_stages"):
        NATBackbone(**TINY, frozen_stages=7)
    with pytest.raises(TypeError):
        DiNATBackbone(**TINY)  # DiNAT needs its dilations
    with pytest.raises(ValueError, match="dilations"):
        DiNATBackbone(**TINY, dilations=[[1], [1], [1]])


def _pretrained(model_cls, tmp_path: Path, **kwargs) -> tuple[torch.nn.Module, Path]:
    classifier = model_cls(**TINY, num_classes=7, **kwargs)
    path = tmp_path / "cls.pth"
    torch.save({"model": classifier.state_dict()}, path)  # a training checkpoint, original keys
    return classifier, path


@pytest.mark.parametrize("family", ["nat", "dinat_s"])
def test_init_cfg_loads_classification_checkpoint(family: str, tmp_path: Path) -> None:
    cls, backbone_cls = (NAT, NATBackbone) if family == "nat" else (DiNAT_s, DiNATSBackbone)
    extra = {} if family == "nat" else {"dilations": TINY_DILATIONS}
    classifier, path = _pretrained(cls, tmp_path, **extra)
    backbone = backbone_cls(**TINY, **extra, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    norm0 = backbone.norm0.weight.clone()
    backbone.init_weights()
    reference = classifier.state_dict()
    for key, value in backbone.state_dict().items():
        if key.startswith("norm"):
            continue
        assert torch.equal(value, reference[key]), key
    assert torch.equal(backbone.norm0.weight, norm0)  # output norms are not in the checkpoint


def test_pretrained_resizes_rpb_and_reads_hf_and_prefixed_checkpoints(tmp_path: Path) -> None:
    classifier, _ = _pretrained(NAT, tmp_path)
    # kernel 5 backbone from a kernel 7 checkpoint: rpb 13x13 -> 9x9 (bicubic)
    hf = tmp_path / "hf.pth"
    torch.save(original_to_hf(classifier.state_dict(), prefix="nat"), hf)
    backbone = NATBackbone(
        **TINY, kernel_size=5, init_cfg=dict(type="Pretrained", checkpoint=str(hf))
    )
    backbone.init_weights()
    assert backbone.levels[0].blocks[0].attn.rpb.shape[-1] == 9
    torch.testing.assert_close(
        backbone.levels[1].blocks[1].mlp.fc1.weight, classifier.levels[1].blocks[1].mlp.fc1.weight
    )
    # a detector checkpoint: keys under "backbone."
    det = tmp_path / "det.pth"
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["neck.lateral.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "meta": {"epoch": 3}}, det)
    again = NATBackbone(
        **TINY,
        kernel_size=5,
        init_cfg=dict(type="Pretrained", checkpoint=str(det), prefix="backbone."),
    )
    again.init_weights()
    for key, value in backbone.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def _serve(directory: Path) -> tuple[str, object]:
    """An HTTP server on localhost for the files of `directory` (its base URL, the server)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def test_unreadable_init_cfg_checkpoints_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init_cfg=dict(type='Pretrained') with an empty or truncated file (or download): the error
    names it, never a bare EOFError / RuntimeError from torch."""
    from classification.checkpoint import CheckpointFileError

    _, good = _pretrained(NAT, tmp_path)
    files = {"empty.pth": b"", "truncated.pth": good.read_bytes()[:2048]}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        backbone = NATBackbone(
            **TINY, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / name))
        )
        expected = rf"{re.escape(str(tmp_path / name))} cannot be read"
        with pytest.raises(CheckpointFileError, match=expected):
            backbone.init_weights()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # the download cache
    base, server = _serve(tmp_path)
    try:
        url = f"{base}/truncated.pth"
        backbone = NATBackbone(**TINY, init_cfg=dict(type="Pretrained", checkpoint=url))
        expected = rf"{re.escape(url)} cannot be downloaded or read"
        with pytest.raises(CheckpointFileError, match=expected):
            backbone.init_weights()
    finally:
        server.shutdown()
        server.server_close()


def _log_records(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(level, message) of everything the backbone loader logs through mmengine."""
    import detection.backbones as backbones

    records: list[tuple[int, str]] = []

    def capture(msg, logger=None, level=20):
        records.append((level, str(msg)))

    monkeypatch.setattr(backbones, "print_log", capture)
    return records


def test_init_cfg_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    from classification.checkpoint import CheckpointFileError

    garbage = tmp_path / "garbage.pth"
    torch.save({"conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}, garbage)
    backbone = NATBackbone(**TINY, init_cfg=dict(type="Pretrained", checkpoint=str(garbage)))
    with pytest.raises(CheckpointFileError, match=r"garbage\.pth.*none of NATBackbone's"):
        backbone.init_weights()


def test_init_cfg_missing_stage_weights_is_an_error(tmp_path: Path) -> None:
    from classification.checkpoint import CheckpointFileError

    classifier, _ = _pretrained(NAT, tmp_path)
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("levels.3.")}
    path = tmp_path / "no_stage.pth"
    torch.save(state, path)
    backbone = NATBackbone(**TINY, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointFileError, match=r"no_stage\.pth.*missing.*levels\.3\.blocks\.0"):
        backbone.init_weights()
    # init_cfg strict=False loads what is there, explicitly
    lenient = NATBackbone(
        **TINY, init_cfg=dict(type="Pretrained", checkpoint=str(path), strict=False)
    )
    lenient.init_weights()
    assert torch.equal(lenient.levels[0].blocks[0].attn.rpb, state["levels.0.blocks.0.attn.rpb"])


def test_init_cfg_hf_classifier_loads_without_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HF-layout classifier (its final layernorm and classifier included) is what a backbone
    expects to be given: nothing to warn about, no talk of classes."""
    classifier, _ = _pretrained(NAT, tmp_path)
    hf = tmp_path / "hf.pth"
    torch.save(original_to_hf(classifier.state_dict(), prefix="nat"), hf)
    records = _log_records(monkeypatch)
    backbone = NATBackbone(**TINY, init_cfg=dict(type="Pretrained", checkpoint=str(hf)))
    with _no_python_warnings():
        backbone.init_weights()
    assert not [m for level, m in records if level >= 30], records
    assert not any("classes" in m for _, m in records), records
    assert torch.equal(
        backbone.levels[1].blocks[1].mlp.fc1.weight, classifier.levels[1].blocks[1].mlp.fc1.weight
    )


def _no_python_warnings():
    import contextlib
    import logging

    @contextlib.contextmanager
    def guard():
        seen: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.WARNING:
                    seen.append(record.getMessage())

        handler = Collect()
        logger = logging.getLogger("classification")
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
        assert not seen, seen

    return guard()
