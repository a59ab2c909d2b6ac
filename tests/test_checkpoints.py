"""Checkpoints: original key schema, strict pretrained loading through timm, the HF layout,
rpb resizing, head dropping, file formats and the command-line converter."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest
import timm
import torch
from scripts_loader import load_script
from test_models import SPEC, meta_model

from classification.checkpoint import (
    CheckpointFileError,
    hf_to_original,
    is_hf_layout,
    load_checkpoint_file,
    original_to_hf,
    resize_rpb,
    save_state_dict,
)


def original_schema(
    name: str, depths=None, embed_dim=None, num_heads=None, num_classes: int = 1000
) -> dict[str, tuple]:
    """Key -> shape of the original checkpoints, from model_zoo.md §1/§4 (the size arguments
    shrink a variant for fast tests)."""
    family, spec_depths, heads, c, mlp, ls, k = SPEC[name]
    depths, heads, c = depths or spec_depths, num_heads or heads, embed_dim or c
    s: dict[str, tuple] = {}

    def ln(prefix: str, d: int) -> None:
        s[prefix + ".weight"], s[prefix + ".bias"] = (d,), (d,)

    def linear(prefix: str, dout: int, din: int, bias: bool = True) -> None:
        s[prefix + ".weight"] = (dout, din)
        if bias:
            s[prefix + ".bias"] = (dout,)

    def block(p: str, d: int, h: int, table: int) -> None:
        hid = int(d * mlp)
        ln(p + "norm1", d)
        linear(p + "attn.qkv", 3 * d, d)
        s[p + "attn.rpb"] = (h, table, table)
        linear(p + "attn.proj", d, d)
        ln(p + "norm2", d)
        linear(p + "mlp.fc1", hid, d)
        linear(p + "mlp.fc2", d, hid)
        if ls:
            s[p + "gamma1"] = s[p + "gamma2"] = (d,)

    if family.startswith("iso_"):
        s["patch_embed.proj.weight"], s["patch_embed.proj.bias"] = (c, 3, 16, 16), (c,)
        ln("patch_embed.norm", c)
        for j in range(depths[0]):
            vit = family == "iso_vitrpb"
            block(f"layers.{j}.", c, heads[0], 27 if vit else 2 * k - 1)
            if vit:
                s[f"layers.{j}.attn.relative_position_index"] = (196, 196)
        ln("norm", c)
        linear("head", num_classes, c)
        return s
    if family == "nat":
        s["patch_embed.proj.0.weight"], s["patch_embed.proj.0.bias"] = (c // 2, 3, 3, 3), (c // 2,)
        s["patch_embed.proj.1.weight"], s["patch_embed.proj.1.bias"] = (c, c // 2, 3, 3), (c,)
    else:
        s["patch_embed.proj.weight"], s["patch_embed.proj.bias"] = (c, 3, 4, 4), (c,)
    ln("patch_embed.norm", c)
    stage = "levels" if family == "nat" else "layers"
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = c * 2**i
        for j in range(depth):
            block(f"{stage}.{i}.blocks.{j}.", d, h, 2 * k - 1)
        if i < 3 and family == "nat":
            s[f"levels.{i}.downsample.reduction.weight"] = (2 * d, d, 3, 3)
            ln(f"levels.{i}.downsample.norm", 2 * d)
        elif i < 3:
            ln(f"layers.{i}.downsample.norm", 4 * d)
            linear(f"layers.{i}.downsample.reduction", 2 * d, 4 * d, bias=False)
    ln("norm", 8 * c)
    linear("head", num_classes, 8 * c)
    return s


def spec_relative_position_index(g: int = 14) -> torch.Tensor:
    """ViT-rpb index, key minus query, row-major over a (2g-1)^2 table."""
    out = torch.empty(g * g, g * g, dtype=torch.long)
    for q in range(g * g):
        for k in range(g * g):
            dh, dw = k // g - q // g, k % g - q % g
            out[q, k] = (dh + g - 1) * (2 * g - 1) + (dw + g - 1)
    return out


def random_state_dict(name: str, seed: int = 0, **size) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in original_schema(name, **size).items():
        if key.endswith("relative_position_index"):
            sd[key] = spec_relative_position_index()
        else:
            sd[key] = 0.02 * torch.randn(shape, generator=gen)
            if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                sd[key] += 1.0
    return sd


def load_via_timm(name: str, path: Path, **kwargs) -> torch.nn.Module:
    return timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
    ).eval()


def assert_same_state(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


# ------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize("name", sorted(SPEC))
def test_state_dict_keys_and_shapes_match_spec(name):
    got = {k: tuple(v.shape) for k, v in meta_model(name).state_dict().items()}
    assert got == original_schema(name)


def test_relative_position_index_matches_spec():
    model = timm.create_model("vitrpb_small", depth=1)
    assert torch.equal(model.layers[0].attn.relative_position_index, spec_relative_position_index())


# ------------------------------------------------------------------------ formats, round trips

_SHRINK = dict(embed_dim=32, num_heads=(1, 2, 4, 8))
CASES = {  # schema sizes; the model kwargs are the same with ``depths`` -> ``depth`` for ViT-rpb
    "nat_mini": dict(depths=(1, 1, 2, 1), **_SHRINK),
    "nat_small": dict(depths=(1, 1, 2, 1), **_SHRINK),  # layer scale (gamma1/gamma2)
    "dinat_tiny": dict(depths=(1, 2, 2, 1), **_SHRINK),
    "dinat_s_tiny": dict(depths=(1, 1, 2, 1), **_SHRINK),
    "vitrpb_small": dict(depths=(2,), embed_dim=64, num_heads=(2,)),
}


def _model_kwargs(name: str) -> dict:
    size = dict(CASES[name])
    if name.startswith("vitrpb"):
        return dict(depth=size["depths"][0], embed_dim=size["embed_dim"], num_heads=2)
    return size


@pytest.mark.parametrize("name", sorted(CASES))
def test_strict_load_and_round_trip_formats(name, tmp_path):
    sd = random_state_dict(name, **CASES[name])
    kwargs = _model_kwargs(name)
    reference = timm.create_model(name, **kwargs).eval()
    reference.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
    files = {
        "plain.pth": sd,
        "wrapped.pth": {"model": sd},
        "plain.safetensors": sd,
    }
    if SPEC[name][0] == "nat":
        prefix = "nat" if name.startswith("nat") else "dinat"
        files["hf.bin"] = original_to_hf(sd, prefix)
        files["hf.safetensors"] = original_to_hf(sd, prefix)
    for fname, content in files.items():
        path = tmp_path / fname
        if fname.endswith(".safetensors"):
            save_state_dict(content, path)
        else:
            torch.save(content, path)
        model = load_via_timm(name, path, **kwargs)
        assert_same_state(model, sd)
        with torch.no_grad():
            assert torch.equal(model(x), expected), fname
    # and back out through our own writer
    out = tmp_path / "resaved.pth"
    save_state_dict(model.state_dict(), out)
    assert_same_state(load_via_timm(name, out, **kwargs), sd)


def test_strict_loading_rejects_missing_keys(tmp_path):
    sd = random_state_dict("nat_mini", **CASES["nat_mini"])
    del sd["levels.0.blocks.0.attn.rpb"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointFileError, match=r"1 of the model's \d+ tensors.*attn\.rpb"):
        load_via_timm("nat_mini", tmp_path / "broken.pth", **_model_kwargs("nat_mini"))


def test_weights_only_refuses_pickled_objects(tmp_path):
    sd = random_state_dict("nat_mini", depths=(1, 1, 1, 1))
    torch.save({"model": sd, "args": argparse.Namespace(a=1)}, tmp_path / "ckpt.pth")
    with pytest.raises(Exception, match=r"[Ww]eights only|weights_only"):
        load_checkpoint_file(tmp_path / "ckpt.pth")


@pytest.mark.parametrize("name", ["nat_mini", "dinat_s_tiny", "vitrpb_small"])
def test_unreadable_weight_files_name_the_file(name, tmp_path):
    """timm's pretrained_cfg_overlay=dict(file=...) (and so model.init_checkpoint and
    nat-validate) reports a bad file by name and reason, never a bare torch error."""
    sd = random_state_dict(name, **CASES[name])
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    objects = tmp_path / "objects.pth"
    torch.save({"model": sd, "args": argparse.Namespace(a=1)}, objects)
    files = {
        "empty.pth": (b"", "it is empty"),
        "truncated.pth": (good.read_bytes()[:4096], "truncated or corrupt"),
        "truncated.safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{", "safetensors"),
        "no_tensors.pth": (None, "holds no state dict"),
    }
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pth")
    for fname, (content, _) in files.items():
        if content is not None:
            (tmp_path / fname).write_bytes(content)
    cases = {tmp_path / f: reason for f, (_, reason) in files.items()}
    cases[objects] = r"pickled objects \(argparse\.Namespace\)"
    for path, reason in cases.items():
        with pytest.raises(CheckpointFileError, match=rf"{re.escape(str(path))}.*{reason}"):
            load_via_timm(name, path, **_model_kwargs(name))
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_via_timm(name, tmp_path / "missing.pth", **_model_kwargs(name))
    # the state dict read from the file is not kept in the model's pretrained_cfg
    model = load_via_timm(name, good, **_model_kwargs(name))
    assert model.pretrained_cfg["file"] == str(good) and model.pretrained_cfg["state_dict"] is None


# -------------------------------------------------------------------------------------- HF


def test_hf_layout_names_and_round_trip():
    sd = random_state_dict("nat_small", depths=(1, 1, 2, 1))
    sd["norm0.weight"] = torch.ones(96)  # a backbone's per-level norm
    hf = original_to_hf(sd, "nat")
    assert is_hf_layout(hf) and not is_hf_layout(sd)
    p = "nat.encoder.levels.2.layers.1."
    for key in [
        "nat.embeddings.patch_embeddings.projection.0.weight",
        "nat.embeddings.patch_embeddings.projection.1.bias",
        "nat.embeddings.norm.weight",
        p + "layernorm_before.weight",
        p + "attention.self.query.weight",
        p + "attention.self.key.bias",
        p + "attention.self.value.weight",
        p + "attention.self.rpb",
        p + "attention.output.dense.weight",
        p + "layernorm_after.bias",
        p + "intermediate.dense.weight",
        p + "output.dense.bias",
        p + "layer_scale_parameters",
        "nat.encoder.levels.0.downsample.reduction.weight",
        "nat.encoder.levels.2.downsample.norm.bias",
        "nat.layernorm.weight",
        "classifier.weight",
        "hidden_states_norms.stage1.weight",
    ]:
        assert key in hf, key
    blk = "levels.2.blocks.1."
    q, k, v = (hf[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value"))
    assert torch.equal(torch.cat([q, k, v]), sd[blk + "attn.qkv.weight"])
    assert hf[p + "intermediate.dense.weight"].shape == (384 * 2, 384)
    assert torch.equal(hf[p + "layer_scale_parameters"][1], sd[blk + "gamma2"])
    back = hf_to_original(hf)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert set(hf_to_original(original_to_hf(sd, "dinat"))) == set(sd)


def test_hf_conversion_errors_are_clear():
    with pytest.raises(KeyError, match="HF"):
        original_to_hf({"layers.0.blocks.0.norm1.weight": torch.ones(2)}, "dinat")
    with pytest.raises(KeyError, match="query/key/value"):
        hf_to_original(
            {"dinat.encoder.levels.0.layers.0.attention.self.query.weight": torch.ones(1)}
        )
    with pytest.raises(ValueError, match="prefix"):
        original_to_hf({}, "swin")


# --------------------------------------------------------------------------- adaptation on load


def test_rpb_resize_on_load(tmp_path, caplog):
    size = dict(depths=(2, 1, 1, 1), embed_dim=32, num_heads=(2, 2, 4, 8))
    sd = random_state_dict("nat_mini", **size)
    sd["levels.0.blocks.0.attn.rpb"] = torch.full((2, 13, 13), 0.5)
    ramp = torch.arange(13.0)[:, None].expand(13, 13)
    sd["levels.0.blocks.1.attn.rpb"] = ramp.expand(2, 13, 13).clone()
    torch.save(sd, tmp_path / "k7.pth")
    with caplog.at_level(logging.INFO, logger="classification.checkpoint"):
        model = load_via_timm("nat_mini", tmp_path / "k7.pth", kernel_size=11, **size)
    assert "Resizing levels.0.blocks.0.attn.rpb bicubically" in caplog.text
    rpb0 = model.levels[0].blocks[0].attn.rpb
    assert rpb0.shape == (2, 21, 21)
    torch.testing.assert_close(rpb0, torch.full((2, 21, 21), 0.5))
    rows = model.levels[0].blocks[1].attn.rpb[0, :, 0]
    assert (rows.diff() > 0).all() and rows[0] < 0.5 and rows[-1] > 11.5
    # everything else is untouched
    assert torch.equal(
        model.levels[0].blocks[0].attn.qkv.weight, sd["levels.0.blocks.0.attn.qkv.weight"]
    )
    with pytest.raises(ValueError, match="rpb"):
        resize_rpb(torch.zeros(13, 13), 11)


def test_head_of_other_class_count_is_dropped(tmp_path, caplog):
    sd = random_state_dict("nat_mini", **CASES["nat_mini"])
    torch.save(sd, tmp_path / "in1k.pth")
    kwargs = _model_kwargs("nat_mini")
    with caplog.at_level(logging.WARNING, logger="classification.checkpoint"):
        model = load_via_timm("nat_mini", tmp_path / "in1k.pth", num_classes=10, **kwargs)
    assert "Dropping the checkpoint's classifier head (1000 classes)" in caplog.text
    assert "10 classes" in caplog.text
    assert model.head.weight.shape == (10, 256)
    body = {k: v for k, v in sd.items() if not k.startswith("head.")}
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in body.items())
    features = timm.create_model(
        "nat_mini",
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "in1k.pth")),
        **kwargs,
    )
    assert torch.equal(
        features.model.levels[3].blocks[0].attn.rpb, sd["levels.3.blocks.0.attn.rpb"]
    )


def test_vitrpb_other_resolution_keeps_its_index(tmp_path):
    sd = random_state_dict("vitrpb_small", depths=(1,), embed_dim=64, num_heads=(2,))
    torch.save(sd, tmp_path / "v.pth")
    kwargs = dict(depth=1, embed_dim=64, num_heads=2)
    model = load_via_timm("vitrpb_small", tmp_path / "v.pth", img_size=160, **kwargs)
    attn = model.layers[0].attn  # a 10x10 grid: its own index, the table resized 27 -> 19
    assert torch.equal(attn.relative_position_index, spec_relative_position_index(10))
    torch.testing.assert_close(attn.rpb, resize_rpb(sd["layers.0.attn.rpb"], 10))
    # the 224-px model runs at 160 px with the original table (offsets clamped at its border)
    model = load_via_timm("vitrpb_small", tmp_path / "v.pth", **kwargs)
    assert torch.equal(model.layers[0].attn.rpb, sd["layers.0.attn.rpb"])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 160)).shape == (1, 1000)


# ------------------------------------------------------------------------------------- scripts


def test_convert_checkpoint_cli(tmp_path, capsys):
    cli = load_script("convert_checkpoint")
    sd = random_state_dict("nat_mini")
    torch.save({"state_dict": sd}, tmp_path / "orig.pth")
    assert cli.main([str(tmp_path / "orig.pth"), str(tmp_path / "hf.safetensors"), "--to", "hf",
                     "--model", "nat_mini"]) == 0  # fmt: skip
    hf = load_checkpoint_file(tmp_path / "hf.safetensors")
    assert "nat.encoder.levels.0.layers.0.attention.self.query.weight" in hf
    assert cli.main([str(tmp_path / "hf.safetensors"), str(tmp_path / "back.pth")]) == 0
    back = load_checkpoint_file(tmp_path / "back.pth")
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert "wrote" in capsys.readouterr().out


def test_convert_checkpoint_errors_are_one_line(tmp_path, capsys):
    """Every bad input: exit status 2 and one line naming it; no output file."""
    cli = load_script("convert_checkpoint")
    sd = random_state_dict("nat_mini")
    orig = tmp_path / "orig.pth"
    torch.save({"state_dict": sd}, orig)
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "truncated.pth").write_bytes(orig.read_bytes()[:4096])
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02not a pickle at all")
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pth")
    torch.save({"model": sd, "args": argparse.Namespace(a=1)}, tmp_path / "objects.pth")
    torch.save({"foo.bar": torch.ones(1), "nat.embeddings.x": torch.ones(1)}, tmp_path / "hf.pth")
    small = random_state_dict("nat_mini", depths=(1, 1, 1, 1))
    torch.save(small, tmp_path / "small.pth")
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "out.pth"
    cases = [
        ([tmp_path / "missing.pth", out], "missing.pth"),
        ([tmp_path / "empty.pth", out], "empty.pth"),
        ([tmp_path / "truncated.pth", out], "truncated.pth"),
        ([tmp_path / "garbage.pth", out], "garbage.pth"),
        ([tmp_path / "no_tensors.pth", out], "no_tensors.pth"),
        ([tmp_path / "objects.pth", out], "argparse.Namespace"),
        ([tmp_path / "hf.pth", out], "hf.pth"),
        ([tmp_path / "small.pth", out, "--model", "nat_mini"], "--model nat_mini"),
        ([orig, out, "--to", "hf"], "--hf-prefix"),
        ([orig, out, "--model", "resnet9000"], "unknown model"),
        ([orig, tmp_path], "is a folder"),
        ([orig, tmp_path / "a_file" / "out.pth"], "cannot write"),
    ]
    for argv, needle in cases:
        assert cli.main([str(a) for a in argv]) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("convert_checkpoint.py: error: ") and needle in lines[0], err
        assert not out.exists()


def test_model_info_cli(capsys):
    cli = load_script("model_info")
    args = ["nat_mini", "--img-size", "64", "--batch-size", "1", "--iters", "1", "--warmup", "0",
            "--device", "cpu", "--no-macs"]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "model=nat_mini" in out and "params_M=19.98" in out and "img_per_s=" in out
    with pytest.raises(SystemExit):
        cli.main(["no_such_model_*"])


# ------------------------------------------------------------------ what a load keeps and drops


def test_a_head_that_fits_is_loaded(tmp_path, caplog):
    """A file whose head has the requested class count loads whole, with or without
    num_classes given (the pretrained cfg's 1000 classes do not make it drop the head)."""
    sd = random_state_dict("nat_mini", num_classes=3, **CASES["nat_mini"])
    torch.save({"model": sd}, tmp_path / "best.pth")
    kwargs = _model_kwargs("nat_mini")
    with caplog.at_level(logging.WARNING):
        model = load_via_timm("nat_mini", tmp_path / "best.pth", num_classes=3, **kwargs)
        assert_same_state(model, sd)
        assert_same_state(load_via_timm("nat_mini", tmp_path / "best.pth", **kwargs), sd)
    assert "Dropping" not in caplog.text


def test_every_dropped_head_is_a_warning_naming_both_sizes(tmp_path, caplog):
    sd = random_state_dict("nat_mini", **CASES["nat_mini"])
    torch.save(sd, tmp_path / "in1k.pth")
    kwargs = _model_kwargs("nat_mini")
    with caplog.at_level(logging.WARNING):
        load_via_timm("nat_mini", tmp_path / "in1k.pth", num_classes=10, **kwargs)
    drops = [r for r in caplog.records if "classifier head" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.WARNING
    assert re.search(r"1000 classes.*the model.* 10 classes", drops[0].getMessage())
    # the same class count but another width: both widths named, not "10 ... 10"
    caplog.clear()
    sd10 = random_state_dict("nat_mini", num_classes=10, **CASES["nat_mini"])
    sd10["head.weight"] = torch.zeros(10, 128)
    torch.save(sd10, tmp_path / "narrow.pth")
    with caplog.at_level(logging.WARNING):
        load_via_timm(
            "nat_mini", tmp_path / "narrow.pth", num_classes=10, pretrained_strict=False, **kwargs
        )
    text = " ".join(r.getMessage() for r in caplog.records if "classifier head" in r.getMessage())
    assert "128" in text and "256" in text
    # a file without a head: the model's head is fresh, and that is said too
    caplog.clear()
    headless = {k: v for k, v in sd.items() if not k.startswith("head.")}
    torch.save(headless, tmp_path / "headless.pth")
    with caplog.at_level(logging.WARNING):
        load_via_timm("nat_mini", tmp_path / "headless.pth", num_classes=10, **kwargs)
    assert "no classifier head" in caplog.text


def test_missing_backbone_weights_are_an_error(tmp_path):
    """A smaller model's file in a bigger model (here also with another class count, which made
    timm load non-strictly), or a file missing a whole stage: one line naming the first missing
    keys and how many; pretrained_strict=False loads the rest explicitly."""
    small = random_state_dict("nat_mini", **CASES["nat_mini"])  # depths (1, 1, 2, 1)
    torch.save(small, tmp_path / "small.pth")
    deeper = dict(_model_kwargs("nat_mini"), depths=(1, 1, 3, 1))
    with pytest.raises(CheckpointFileError) as info:
        load_via_timm("nat_mini", tmp_path / "small.pth", num_classes=10, **deeper)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert str(tmp_path / "small.pth") in message
    assert re.search(r"\b13 of the model's \d+ tensors are missing", message)
    assert "levels.2.blocks.2." in message
    no_stage = {k: v for k, v in small.items() if not k.startswith("levels.3.")}
    torch.save(no_stage, tmp_path / "no_stage.pth")
    with pytest.raises(CheckpointFileError, match=r"levels\.3\.blocks\.0\."):
        load_via_timm("nat_mini", tmp_path / "no_stage.pth", **_model_kwargs("nat_mini"))
    model = load_via_timm(
        "nat_mini", tmp_path / "small.pth", num_classes=10, pretrained_strict=False, **deeper
    )
    got = model.levels[2].blocks[1].attn.qkv.weight
    assert torch.equal(got, small["levels.2.blocks.1.attn.qkv.weight"])
