"""The classification zoo: registry, sizes, forward passes, timm API, dilation schedules."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.optim import param_groups_weight_decay

import classification
from classification.dilation import D224, D384, dilation_schedule, feature_map_sizes

torch.set_num_threads(2)

# Hyper-parameters transcribed from model_zoo.md §2 (independent of the model code).
_NAT = dict(
    mini=((3, 4, 6, 5), (2, 4, 8, 16), 64, 3, None),
    tiny=((3, 4, 18, 5), (2, 4, 8, 16), 64, 3, None),
    small=((3, 4, 18, 5), (3, 6, 12, 24), 96, 2, 1e-5),
    base=((3, 4, 18, 5), (4, 8, 16, 32), 128, 2, 1e-5),
)
_LARGE = ((3, 4, 18, 5), (6, 12, 24, 48), 192, 2, None)
SPEC = {
    **{f"nat_{k}": ("nat", *v, 7) for k, v in _NAT.items()},
    "dinat_mini": ("nat", *_NAT["mini"], 7),
    "dinat_tiny": ("nat", *_NAT["tiny"], 7),
    "dinat_small": ("nat", *_NAT["small"][:4], None, 7),
    "dinat_base": ("nat", *_NAT["base"], 7),
    "dinat_large": ("nat", *_LARGE, 7),
    "dinat_large_384": ("nat", *_LARGE, 7),
    "dinat_large_384_11x11": ("nat", *_LARGE, 11),
    "dinat_s_tiny": ("dinat_s", (2, 2, 6, 2), (3, 6, 12, 24), 96, 4, None, 7),
    "dinat_s_small": ("dinat_s", (2, 2, 18, 2), (3, 6, 12, 24), 96, 4, None, 7),
    "dinat_s_base": ("dinat_s", (2, 2, 18, 2), (4, 8, 16, 32), 128, 4, None, 7),
    "dinat_s_large": ("dinat_s", (2, 2, 18, 2), (6, 12, 24, 48), 192, 4, None, 7),
    "dinat_s_large_384": ("dinat_s", (2, 2, 18, 2), (6, 12, 24, 48), 192, 4, None, 7),
    **{
        f"{a}_{s}": ("iso_" + a, (12,), (h,), c, 4, None, 7)
        for a in ("nat_isotropic", "dinat_isotropic", "vitrpb")
        for s, h, c in (("small", 12, 384), ("base", 24, 768))
    },
}
ALL_MODELS = sorted(SPEC)

# model_zoo.md §3 "exact counts": params (M) and GMACs at the model's resolution.
EXACT = {
    "nat_tiny": (27.90, 4.32, 224),
    "nat_mini": (19.98, 2.71, 224),
    "nat_small": (50.74, 7.81, 224),
    "nat_base": (89.77, 13.73, 224),
    "dinat_large": (200.94, 30.53, 224),
    "dinat_large_384": (200.94, 89.73, 384),
    "dinat_large_384_11x11": (201.14, 92.35, 384),
    "dinat_s_tiny": (28.29, 4.51, 224),
    "vitrpb_small": (22.08, 4.58, 224),
}
FAST_MACS = ("nat_tiny", "nat_mini", "dinat_s_tiny", "vitrpb_small")


def spec_param_count(name: str, num_classes: int = 1000) -> int:
    """Parameter count from the architecture description of model_zoo.md §1."""
    family, depths, heads, c, mlp, ls, k = SPEC[name]

    def block(d: int, h: int, table: int) -> int:
        hidden = int(d * mlp)
        n = 2 * d + (3 * d * d + 3 * d) + h * table**2 + (d * d + d) + 2 * d
        n += d * hidden + hidden + hidden * d + d
        return n + (2 * d if ls else 0)

    if family.startswith("iso_"):
        table = 27 if family == "iso_vitrpb" else 2 * k - 1
        n = 3 * c * 16 * 16 + c + 2 * c + 12 * block(c, heads[0], table)
        return n + 2 * c + c * num_classes + num_classes
    if family == "nat":
        n = 3 * (c // 2) * 9 + c // 2 + (c // 2) * c * 9 + c + 2 * c
    else:
        n = 3 * c * 16 + c + 2 * c
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = c * 2**i
        n += depth * block(d, h, 2 * k - 1)
        if i < 3:
            n += d * 2 * d * 9 + 2 * 2 * d if family == "nat" else 2 * 4 * d + 4 * d * 2 * d
    return n + 2 * 8 * c + 8 * c * num_classes + num_classes


def meta_model(name: str, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ registry


def test_registry_lists_every_model():
    listed = set(timm.list_models("*nat*")) | set(timm.list_models("vitrpb*"))
    assert set(ALL_MODELS) <= listed
    assert "dinat_large.in22k" in timm.list_pretrained("dinat_large*")
    assert "dinat_s_large.in22k" in timm.list_pretrained("dinat_s_large*")


def test_pretrained_cfgs():
    cfg = timm.get_pretrained_cfg("dinat_large_384.in22k_ft_in1k").to_dict()
    assert cfg["url"].endswith("imagenet1k/dinat_large_in22k_in1k_384.pth")
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0
    cfg = timm.get_pretrained_cfg("dinat_large.in22k").to_dict()
    assert cfg["num_classes"] == 21841
    assert timm.get_pretrained_cfg("nat_tiny").url.endswith("/CLS/nat_tiny.pth")
    assert timm.get_pretrained_cfg("nat_tiny").paper_ids == "arXiv:2204.07143"  # NAT
    assert timm.get_pretrained_cfg("dinat_tiny").paper_ids == "arXiv:2209.15001"  # DiNAT
    assert timm.get_pretrained_cfg("vitrpb_small").paper_ids == "arXiv:2209.15001"
    assert meta_model("dinat_large.in22k").num_classes == 21841


# --------------------------------------------------------------------------------- param counts


def test_spec_formula_reproduces_spec_numbers():
    for name, (params, _, _) in EXACT.items():
        assert abs(spec_param_count(name) / 1e6 - params) < 0.01, name


@pytest.mark.parametrize("name", ALL_MODELS)
def test_param_count(name):
    model = meta_model(name)
    assert n_params(model) == spec_param_count(name)
    if name in EXACT:
        assert abs(n_params(model) / 1e6 - EXACT[name][0]) < 0.01


def test_hyper_parameters():
    m = meta_model("dinat_large_384_11x11")
    blk = m.levels[2].blocks[1]
    assert blk.attn.kernel_size == (11, 11) and blk.attn.dilation == (2, 2)
    assert blk.attn.num_heads == 24 and blk.attn.head_dim == 32
    assert m.levels[3].blocks[4].drop_path.drop_prob == pytest.approx(0.35)
    # the 22K pre-training runs used drop path 0.2 (their 1K fine-tunes 0.35); callers still win
    assert meta_model("dinat_large.in22k").levels[3].blocks[4].drop_path.drop_prob == pytest.approx(
        0.2
    )
    assert meta_model("dinat_s_large.in22k").layers[3].blocks[
        1
    ].drop_path.drop_prob == pytest.approx(0.2)
    m = meta_model("dinat_large.in22k", drop_path_rate=0.1)
    assert m.levels[3].blocks[4].drop_path.drop_prob == pytest.approx(0.1)
    m = meta_model("dinat_large_384")
    assert [[b.attn.dilation[0] for b in lvl.blocks] for lvl in m.levels] == D384((3, 4, 18, 5))
    m = meta_model("nat_small")
    assert m.levels[0].blocks[0].gamma1 is not None
    assert meta_model("dinat_small").levels[0].blocks[0].gamma1 is None
    m = meta_model("dinat_isotropic_base")
    assert [b.attn.dilation[0] for b in m.layers] == [1, 2] * 6
    assert m.layers[-1].drop_path.drop_prob == pytest.approx(0.4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dilations"):
        timm.create_model("nat_mini", dilations=[[1, 2]])
    with pytest.raises(ValueError, match="num_heads"):
        timm.create_model("nat_mini", num_heads=(2, 4))
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("nat_mini", global_pool="max")


# ---------------------------------------------------------------------------------------- MACs


def _macs(name: str) -> None:
    from natten_ext.flops import get_flops

    _, gmacs, res = EXACT[name]
    model = timm.create_model(name).eval()
    macs = get_flops(model, torch.randn(1, 3, res, res))
    assert abs(macs / 1e9 - gmacs) / gmacs < 0.005, (name, macs / 1e9, gmacs)


@pytest.mark.parametrize("name", FAST_MACS)
def test_macs(name):
    _macs(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(EXACT) - set(FAST_MACS)))
def test_macs_large(name):
    _macs(name)


# ------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize(
    "name, sizes",
    [
        # nat_tiny/nat_mini/dinat_s_tiny/vitrpb_small also run at 224 px in test_macs
        ("nat_mini", [(96, 128)]),
        ("dinat_mini", [(224, 224), (72, 56)]),
        ("vitrpb_small", [(96, 112)]),
        ("dinat_isotropic_small", [(224, 224), (80, 80)]),
    ],
)
def test_forward_resolutions(name, sizes):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        for size in sizes:
            y = model(torch.randn(1, 3, *size))
            assert y.shape == (1, 10) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["dinat_s_tiny", "nat_isotropic_small", "dinat_tiny"])
def test_forward_small_input(name):
    model = timm.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 40, 48))
    assert y.shape == (1, 5) and torch.isfinite(y).all()


def _tiny(name: str = "dinat_mini", **kwargs):
    torch.manual_seed(0)
    args = dict(depths=(1, 2, 2, 1), embed_dim=32, num_heads=(1, 2, 4, 8), num_classes=7)
    if name.startswith("dinat_s"):
        args["embed_dim"] = 32
    return timm.create_model(name, **dict(args, **kwargs))


def test_forward_features_and_head():
    model = _tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2, 2, 256)
        pre = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(pre, feats.mean((1, 2)))
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-6)


@pytest.mark.parametrize("name", ["dinat_mini", "dinat_s_tiny"])
def test_intermediates_are_taken_before_downsampling(name):
    model = _tiny(name).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        h = model.patch_embed(x)
        for i, stage in enumerate(model.stages):
            h = stage.forward_blocks(h)
            assert torch.equal(inter[i], h.permute(0, 3, 1, 2))
            if stage.downsample is not None:
                h = stage.downsample(h)
        assert torch.allclose(final, model.forward_features(x))
    assert [t.shape[1] for t in inter] == [32, 64, 128, 256]
    assert [64 // t.shape[2] for t in inter] == [4, 8, 16, 32]


@pytest.mark.parametrize(
    "name, kwargs, chans, stride",
    [
        ("dinat_mini", {}, [32, 64, 128, 256], [4, 8, 16, 32]),
        ("dinat_s_tiny", {}, [32, 64, 128, 256], [4, 8, 16, 32]),
        ("nat_isotropic_small", dict(depth=4, embed_dim=64, num_heads=2), [64] * 2, [16] * 2),
    ],
)
def test_features_only(name, kwargs, chans, stride):
    if name.startswith("nat_iso"):
        torch.manual_seed(0)
        model = timm.create_model(name, features_only=True, out_indices=(1, 3), **kwargs)
    else:
        model = _tiny(name, features_only=True)
    assert model.feature_info.channels() == chans
    assert model.feature_info.reduction() == stride
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == chans
    assert [(64 // o.shape[2], 96 // o.shape[3]) for o in outs] == [(s, s) for s in stride]


def test_prune_intermediate_layers():
    model = _tiny().eval()
    kept = model.prune_intermediate_layers(indices=(0, 1), prune_head=True)
    assert kept == [0, 1] and len(model.levels) == 2
    assert model.levels[1].downsample is None and isinstance(model.head, torch.nn.Identity)
    with torch.no_grad():
        outs = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert [o.shape[1] for o in outs] == [32, 64]
    assert not any(k.startswith("levels.2") for k in model.state_dict())


def test_reset_classifier_and_no_weight_decay():
    model = _tiny()
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model.get_classifier() is model.head
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 256)
    nwd = model.no_weight_decay()
    rpbs = {n for n, _ in model.named_parameters() if n.endswith("attn.rpb")}
    assert rpbs and nwd == rpbs
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=nwd)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    params = dict(model.named_parameters())
    assert not any(id(params[n]) in decayed for n in rpbs)
    assert meta_model("vitrpb_small").no_weight_decay() == {
        f"layers.{i}.attn.rpb" for i in range(12)
    }


@pytest.mark.parametrize("name", ["dinat_mini", "dinat_s_tiny", "vitrpb_small"])
def test_grad_checkpointing_same_grads_less_memory(name):
    kwargs = dict(depth=3, embed_dim=64, num_heads=2, num_classes=7) if "vitrpb" in name else {}
    model = timm.create_model(name, **kwargs) if kwargs else _tiny(name)
    model.train()
    x = torch.randn(2, 3, 64, 64)

    def run(enable: bool):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        torch.manual_seed(1)  # same drop-path draws
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).square().mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return sum(saved), grads

    mem_plain, g_plain = run(False)
    mem_ckpt, g_ckpt = run(True)
    assert mem_ckpt < 0.5 * mem_plain
    for n in g_plain:
        torch.testing.assert_close(g_ckpt[n], g_plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_set_dilations():
    model = _tiny(dilations=[[1], [1, 4], [1, 2], [1]])
    model.set_dilations(dilation_schedule((1, 2, 2, 1), 128))
    assert [[b.attn.dilation[0] for b in s.blocks] for s in model.levels] == [
        [1],
        [1, 2],
        [1, 1],
        [1],
    ]
    with pytest.raises(ValueError, match="dilations"):
        model.set_dilations([[1], [1], [1], [1]])


# ------------------------------------------------------------------------------------ dilation


def test_dilation_rule_reproduces_published_schedules():
    for depths in ((3, 4, 18, 5), (3, 4, 6, 5), (2, 2, 18, 2), (2, 2, 6, 2)):
        assert dilation_schedule(depths, 224) == D224(depths)
        assert dilation_schedule(depths, 384) == D384(depths)
        assert dilation_schedule(depths, 384, kernel_size=11) == D224(depths)
    assert D224((3, 4, 18, 5)) == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert D384((2, 2, 18, 2)) == [[1, 13], [1, 6], [1, 3] * 9, [1, 1]]
    # the dense-prediction schedules stay within the per-level bound of the rule
    dense = {
        (800, 1333): [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        (512, 512): [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
    }
    for size, sched in dense.items():
        bound = dilation_schedule([len(s) for s in sched], size)
        assert all(d <= max(b) for s, b in zip(sched, bound) for d in s)
        assert [max(s) for s in sched][2:] == [max(b) for b in bound][2:]
    assert feature_map_sizes((800, 1333)) == [(200, 334), (100, 167), (50, 84), (25, 42)]
    assert dilation_schedule((3, 4), 224, max_dilation=2) == [[1, 2, 1], [1, 2, 1, 2]]
    with pytest.raises(ValueError, match="img_size"):
        dilation_schedule((3,), 0)


def test_package_exports():
    assert classification.NAT is classification.DiNAT
    assert callable(classification.dilation_schedule)


def test_cpu_convolutions_get_the_layout_of_the_smaller_copy(monkeypatch):
    from classification.layers import conv

    stem = torch.randn(1, 3, 64, 64)
    assert conv.cpu_conv_layout(stem, torch.empty(32, 3, 3, 3)).is_contiguous(
        memory_format=torch.channels_last
    )
    small = torch.randn(1, 7, 7, 256).permute(0, 3, 1, 2)  # a channels-last view, 12.5k values
    assert conv.cpu_conv_layout(small, torch.empty(512, 256, 3, 3)).is_contiguous()
    if torch.cuda.is_available():
        on_gpu = stem.cuda()
        assert conv.cpu_conv_layout(on_gpu, torch.empty(32, 3, 3, 3)) is on_gpu
    # the model's output is the one it gives with the layouts left as they come
    torch.manual_seed(0)
    model = timm.create_model("nat_mini", num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        got = model(x)
        monkeypatch.setattr(conv, "cpu_conv_layout", lambda x, weight: x)
        want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
