"""timm's model contract: device/dtype, meta build and materialisation, in_chans, output_fmt, head,
FX (symbolic tracing, both feature extractors) and TorchScript, on tiny configs of each family."""

from __future__ import annotations

import io

import pytest
import timm
import torch
from timm.models import FeatureGraphNet, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor

import classification  # noqa: F401
import natten_ext
from classification.isotropic import relative_position_index

torch.set_num_threads(2)

# one tiny configuration per family (all code paths of the full models, a fraction of the cost)
TINY = {
    "dinat_mini": dict(depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), embed_dim=16),
    "nat_small": dict(depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), embed_dim=16),  # layer scale
    "dinat_s_tiny": dict(depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), embed_dim=16),
    "dinat_isotropic_small": dict(depth=2, embed_dim=32, num_heads=2),
    "vitrpb_small": dict(depth=2, embed_dim=32, num_heads=2, img_size=64),
}


def tiny(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **dict(TINY[name], **kwargs))


@pytest.mark.parametrize("name", sorted(TINY))
def test_device_dtype_and_meta_build(name):
    meta = tiny(name, device="meta", dtype=torch.float64)
    tensors = [*meta.parameters(), *meta.buffers()]
    assert all(t.is_meta for t in tensors)
    assert all(t.dtype == torch.float64 for t in meta.parameters())
    with torch.device("meta"):  # the default device decides when no device is given
        assert next(tiny(name).parameters()).is_meta
    model = tiny(name, dtype=torch.float64)
    assert all(p.device.type == "cpu" and p.dtype == torch.float64 for p in model.parameters())
    assert model.in_chans == 3 and model.output_fmt == "NHWC"
    # shapes on the meta device (the op's fake implementation): timm's config test does this
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model.forward_features(x)
    out = meta.forward_features(x.to("meta"))
    assert out.is_meta and out.shape == expected.shape and out.dtype == torch.float64


@pytest.mark.parametrize("name", sorted(TINY))
def test_to_empty_then_init_weights(name):
    """Materialising a meta model re-creates every parameter and buffer (NaN-poisoned first)."""
    reference = tiny(name).eval()
    model = tiny(name, device="meta").to_empty(device="cpu").eval()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(float("nan") if t.is_floating_point() else -1)
    model.init_weights()
    params = dict(model.named_parameters())
    for key, t in [*params.items(), *model.named_buffers()]:
        assert torch.isfinite(t).all(), key
    # the spec init: LayerNorm 1/0, Linear bias 0 and std 0.02, rpb std 0.02, layer scale 1e-5
    for key, t in params.items():
        if key.endswith("norm.weight") or key.endswith("norm1.weight"):
            assert torch.equal(t, torch.ones_like(t)), key
        if ("qkv" in key or "fc1" in key) and key.endswith("bias"):
            assert torch.equal(t, torch.zeros_like(t)), key
        if key.endswith("rpb") or ("qkv" in key and key.endswith("weight")):
            assert 0.01 < t.std() < 0.03, key
        if "gamma" in key:
            assert torch.equal(t, torch.full_like(t, 1e-5)), key
    for key, buf in model.named_buffers():
        assert torch.equal(buf, dict(reference.named_buffers())[key]), key
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_relative_position_index_on_meta_and_after_init():
    model = tiny("vitrpb_small", device="meta")
    assert model.layers[0].attn.relative_position_index.is_meta
    model = model.to_empty(device="cpu")
    model.init_weights()
    assert torch.equal(model.layers[1].attn.relative_position_index, relative_position_index(4))


def test_in_chans_head_mode_and_pruned_width():
    model = tiny("dinat_mini", in_chans=1).eval()
    assert model.in_chans == 1 and model(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    model.reset_classifier(7)
    assert not model.head.training  # follows the model's mode
    model.train().reset_classifier(3)
    assert model.head.training
    model = tiny("dinat_s_tiny")
    model.prune_intermediate_layers([1])
    assert model.num_features == model.head_hidden_size == 32
    with pytest.raises(TypeError, match="not_an_arg"):
        tiny("nat_small", not_an_arg=1)
    with pytest.raises(ValueError, match="dtype"):
        tiny("nat_small", dtype=torch.int64)


def _trace_kwargs():
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


@pytest.mark.parametrize("name", sorted(TINY))
def test_fx_symbolic_trace_and_extractors(name):
    model = tiny(name).eval()
    x = torch.randn(1, 3, 64, 64)
    assert natten_ext.NeighborhoodAttention2D in get_notrace_modules()
    with torch.no_grad():
        expected = model(x)
        graph = create_feature_extractor(model, ["head"], tracer_kwargs=_trace_kwargs())
        torch.testing.assert_close(graph(x)["head"], expected)
        # the FX extractor takes the nodes feature_info names: the same maps as the getter
        fx = FeatureGraphNet(model, out_indices=(0, 1))
        want = model.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
        got = fx(x)
        built = timm.create_model(
            name, features_only=True, feature_cls="fx", out_indices=(0, 1), **TINY[name]
        )
        assert [o.shape[-1] for o in built(x)] == built.feature_info.channels()
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):  # FX returns the modules' NHWC maps, the getter NCHW
        torch.testing.assert_close(g.permute(0, 3, 1, 2), w)


@pytest.mark.parametrize("name", sorted(TINY))
def test_torchscript_matches_eager_and_saves(name):
    model = tiny(name).eval()
    x = torch.randn(2, 3, 64, 48)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected)
        torch.testing.assert_close(loaded(x), expected)


def test_scripted_attention_gradients_and_errors():
    """The scripted module calls the op with backend "auto": same values and gradients."""
    torch.manual_seed(0)
    m = natten_ext.NeighborhoodAttention2D(16, 2, 3, dilation=2).double()
    s = torch.jit.script(m)
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64, requires_grad=True)
    y_eager, y_script = m(x), s(x)
    torch.testing.assert_close(y_script, y_eager)
    g_eager = torch.autograd.grad(y_eager.square().sum(), [x, m.rpb])
    g_script = torch.autograd.grad(y_script.square().sum(), [x, m.rpb])
    for a, b in zip(g_script, g_eager):
        torch.testing.assert_close(a, b)
    dropout = torch.jit.script(natten_ext.NeighborhoodAttention2D(16, 2, 3, attn_drop=0.1))
    with pytest.raises(torch.jit.Error, match="attn_drop"):
        dropout(torch.randn(1, 5, 5, 16))
    with pytest.raises(torch.jit.Error, match="channels-last"):
        s(torch.randn(1, 5, 5, 8, dtype=torch.float64))
