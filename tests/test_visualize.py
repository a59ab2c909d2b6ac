"""nat-visualize: attention weights taken from the model's own forward (checked against
natten_ext's reference QK + softmax and against the module's output), and the content of each
picture: the attention picture colours exactly the query's neighborhood, DiNAT's receptive field
is wider and sparser than NAT's, saliency is zero where gradient x input must be, run curves go
where the logs put them, and the command line's one-line errors."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from na_oracle import axis_neighbors
from PIL import Image

import natten_ext
from classification.dilation import dilation_schedule
from classification.training.runlog import EPOCH_FIELDS, STEP_FIELDS
from classification.visualize import cli
from classification.visualize.attention import (
    ATTENTION_CMAP,
    BASE_DIM,
    OVERLAY_ALPHA,
    capture_attention,
    draw_attention,
)
from classification.visualize.inputs import load_image, load_model
from classification.visualize.receptive_field import draw_receptive_fields, receptive_field
from classification.visualize.saliency import SALIENCY_CMAP, draw_saliency, saliency

matplotlib = pytest.importorskip("matplotlib")

SIZE = 64  # input pixels: level maps 16, 8, 4, 2
SMALL = dict(
    embed_dim=32,
    depths=[2, 2, 2, 1],
    num_heads=[1, 2, 4, 8],
    mlp_ratio=1.0,
    kernel_size=3,
    num_classes=5,
)
DILATED = dilation_schedule(SMALL["depths"], SIZE, kernel_size=3)  # [[1, 5], [1, 2], [1, 1], [1]]


def small(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, **{**SMALL, **overrides}).eval()


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64 picture with structure: a bright disc on a gradient, plus noise."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rng = np.random.default_rng(0)
    rgb = np.stack([xx * 4, yy * 4, 255 - xx * 2], axis=-1).astype(np.float64)
    rgb[(yy - 40) ** 2 + (xx - 24) ** 2 < 150] = (250, 240, 40)
    rgb += rng.normal(0, 12, rgb.shape)
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------ attention weights
def _reference_weights(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's weights recomputed from its input: padding (spec §4), the qkv projection,
    natten_ext's reference na2d_qk with the rpb, softmax, then the map's queries."""
    h, w = x.shape[1:3]
    (kh, kw), (dh, dw) = attn.kernel_size, attn.dilation
    padded = F.pad(x, (0, 0, 0, max(0, kw * dw - w), 0, max(0, kh * dh - h)))
    qkv = F.linear(padded, attn.qkv.weight, attn.qkv.bias)
    q, k, _ = qkv.reshape(*qkv.shape[:3], 3, attn.num_heads, -1).permute(3, 0, 4, 1, 2, 5)
    with natten_ext.use_backend("reference"):
        logits = natten_ext.na2d_qk(q * attn.head_dim**-0.5, k, (kh, kw), (dh, dw), rpb=attn.rpb)
    return logits.softmax(-1)[:, :, :h, :w]


CASES = {  # model, kwargs, level, block
    "dinat-level0-dilation5": ("dinat_mini", dict(SMALL, dilations=DILATED), 0, 1),
    "dinat-level1-dilation2": ("dinat_mini", dict(SMALL, dilations=DILATED), 1, 1),
    "nat-level2": ("nat_mini", SMALL, 2, 0),
    # a 4x4 map under dilation 2: the module pads it to 6x6 (keys outside the map)
    "dinat-level2-padded": (
        "dinat_mini",
        dict(SMALL, dilations=[[1, 5], [1, 2], [1, 2], [1]]),
        2,
        1,
    ),
    "dinat_s": ("dinat_s_tiny", dict(SMALL, dilations=DILATED), 0, 1),
    # isotropic: 8x8 tokens, layer 1 dilated 2 (a level of one block)
    "isotropic": (
        "dinat_isotropic_small",
        dict(
            embed_dim=32,
            depth=2,
            num_heads=2,
            patch_size=8,
            kernel_size=3,
            mlp_ratio=1.0,
            num_classes=5,
        ),
        1,
        0,
    ),
}


def _build_case(case: str) -> tuple[torch.nn.Module, torch.nn.Module, int, int]:
    """(model, the block, level, block index)."""
    name, kwargs, level, block = CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    blk = model.layers[level] if "isotropic" in name else model.stages[level].blocks[block]
    return model, blk, level, block


@pytest.mark.parametrize("case", list(CASES))
def test_captured_weights_are_the_reference_qk_softmax_of_the_forward(case: str) -> None:
    model, blk, level, block = _build_case(case)
    seen: dict[str, torch.Tensor] = {}
    blk.attn.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    blk.attn.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out.detach()))
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    capture = capture_attention(model, x, level, block, case)
    with torch.no_grad():
        expected = _reference_weights(blk.attn, seen["x"])
    assert capture.weights.shape == expected.shape
    assert capture.map_size == tuple(seen["x"].shape[1:3])
    torch.testing.assert_close(capture.weights, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the capture's forward is the model's plain inference forward
        assert torch.equal(capture.logits, model(x))

    # The weights, on the keys the spec gives each query, reproduce the module's own output:
    # they are the weights its fused forward used.
    (kh, kw), (dh, dw) = capture.kernel_size, capture.dilation
    hp, wp = capture.padded_size
    rows = [sorted(axis_neighbors(hp, kh, dh, False)[i]) for i in range(hp)]
    cols = [sorted(axis_neighbors(wp, kw, dw, False)[j]) for j in range(wp)]
    v = capture.qkv.unflatten(-1, (3, blk.attn.num_heads, -1))[..., 2, :, :]  # [B, Hp, Wp, h, D]
    h, w = capture.map_size
    out = torch.empty(2, h, w, blk.attn.num_heads, v.shape[-1])
    for r in range(h):
        for c in range(w):
            keys = [(a, b) for a in rows[r] for b in cols[c]]
            assert capture.keys(r, c).tolist() == [list(k) for k in keys]
            values = torch.stack([v[:, a, b] for a, b in keys], dim=1)  # [B, K, h, D]
            out[:, r, c] = torch.einsum("bhk,bkhd->bhd", capture.weights[:, :, r, c], values)
    with torch.no_grad():
        projected = blk.attn.proj(out.flatten(-2))
    torch.testing.assert_close(projected, seen["out"], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ attention picture
def _cell_centres(box, cells: tuple[int, int]) -> np.ndarray:
    """Pixel (row, col) of the centre of each grid cell of a panel."""
    ch, cw = box.height / cells[0], box.width / cells[1]
    rr = (box.top + (np.arange(cells[0]) + 0.5) * ch).astype(int)
    cc = (box.left + (np.arange(cells[1]) + 0.5) * cw).astype(int)
    return rr, cc


def test_attention_picture_colours_exactly_the_dilated_neighborhood(
    image_file: Path, tmp_path: Path
) -> None:
    model = small("dinat_mini", dilations=DILATED)
    image = load_image(image_file, SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    capture = capture_attention(model, image.tensor, 0, 1, "dinat_mini")  # k=3, dilation 5
    query = (0.4, 0.6)  # x, y -> row int(0.6 * 16) = 9, col int(0.4 * 16) = 6
    result = draw_attention(capture, image.pixels, query, [0], tmp_path / "a.png", "test")
    assert result.query == (9, 6)
    # spec §1 for L=16, k=3, d=5: row 9 (group 4, position 1) -> {4, 9, 14}; col 6 -> {1, 6, 11}
    rows, cols = (
        sorted(axis_neighbors(16, 3, 5, False)[9]),
        sorted(axis_neighbors(16, 3, 5, False)[6]),
    )
    assert (rows, cols) == ([4, 9, 14], [1, 6, 11])
    expected = np.zeros((16, 16), dtype=bool)
    expected[np.ix_(rows, cols)] = True
    weights = result.weights[0]
    assert np.array_equal(weights > 0, expected) and np.array_equal(result.mask, expected)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)

    pic = png(result.picture.path)
    assert pic.shape == (result.picture.height, result.picture.width, 3)
    (box,) = result.picture.panels
    assert box.height == box.width == SIZE * result.scale >= 192  # enlarged to be seen
    cell = 4 * result.scale  # a level-0 token is 4 input pixels
    # outside the neighborhood the panel is the image, dimmed, pixel for pixel; inside, the
    # cells are recoloured
    dimmed = np.round(image.pixels * BASE_DIM).astype(np.uint8).repeat(cell // 4, 0)
    dimmed = dimmed.repeat(cell // 4, 1)
    changed = (box.crop(pic) != dimmed).any(-1).reshape(16, cell, 16, cell).mean(axis=(1, 3))
    assert np.array_equal(changed > 0, expected) and (changed[expected] > 0.5).all()
    # each recoloured cell shows its weight: undo the blend with the dimmed image and look the
    # colour up in the colour map
    lut = matplotlib.colormaps[ATTENTION_CMAP](np.linspace(0, 1, 256))[:, :3] * 255
    rr, cc = _cell_centres(box, (16, 16))
    centres = pic[np.ix_(rr, cc)].astype(float)  # [16, 16, 3]
    for r, c in zip(*np.nonzero(expected)):
        base = dimmed[rr[r] - box.top, cc[c] - box.left]
        colour = (centres[r, c] - (1 - OVERLAY_ALPHA) * base) / OVERLAY_ALPHA
        nearest = np.argmin(((lut - colour) ** 2).sum(-1))
        assert abs(nearest / 255 - weights[r, c] / weights.max()) < 0.02
    # the query's cell is outlined in white
    top, left = box.top + 9 * cell, box.left + 6 * cell
    assert (pic[top, left : left + cell] == 255).all() and (
        pic[top : top + cell, left] == 255
    ).all()


def test_attention_picture_leaves_out_keys_on_the_padding(tmp_path: Path) -> None:
    """A 4x4 map under dilation 2 is padded to 6x6: keys there are not drawn and their share of
    the weight is named in the panel's title."""
    model, _, level, block = _build_case("dinat-level2-padded")
    capture = capture_attention(model, torch.randn(1, 3, SIZE, SIZE), level, block)
    assert capture.padded_size == (6, 6) and capture.map_size == (4, 4)
    pixels = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    result = draw_attention(capture, pixels, (0.9, 0.9), None, tmp_path / "p.png", "padded")
    # query (3, 3): rows {1, 3, 5} (5 is padding) and the same columns
    expected = np.zeros((4, 4), dtype=bool)
    expected[np.ix_([1, 3], [1, 3])] = True
    assert result.heads == (0, 1, 2, 3) and len(result.picture.panels) == 4
    for head in range(4):
        assert np.array_equal(result.weights[head] > 0, expected)
        drawn = result.weights[head].sum()
        on_padding = capture.weights[0, head, 3, 3].sum().item() - drawn
        assert 0 < drawn < 1 and on_padding == pytest.approx(1 - drawn, abs=1e-6)


def test_attention_command_writes_the_picture_of_the_library(
    image_file: Path, tmp_path: Path, capsys
) -> None:
    model = small("dinat_mini", dilations=DILATED)
    ckpt = tmp_path / "w.pth"
    torch.save(model.state_dict(), ckpt)
    kwargs = json.dumps({**SMALL, "dilations": DILATED})
    common = ["--model", "dinat_mini", "--checkpoint", str(ckpt), "--model-kwargs", kwargs]
    out = tmp_path / "grid.png"
    argv = ["attention", *common, "--img-size", str(SIZE), "--image", str(image_file)]
    assert (
        cli.main([*argv, "--level", "1", "--block", "1", "--query", "0.2,0.7", "--out", str(out)])
        == 0
    )
    assert f"wrote {out}" in capsys.readouterr().out
    loaded = load_model("dinat_mini", str(ckpt), model_kwargs=kwargs, img_size=SIZE)
    image = load_image(image_file, SIZE, loaded.mean, loaded.std, loaded.interpolation)
    capture = capture_attention(loaded.model, image.tensor, 1, 1)
    lib = draw_attention(capture, image.pixels, (0.2, 0.7), None, tmp_path / "lib.png", "x")
    assert len(lib.picture.panels) == 2  # level 1 has two heads: the default grid of all
    grid = png(out)
    for box in lib.picture.panels:
        assert np.array_equal(box.crop(grid), box.crop(png(lib.picture.path)))
    single = tmp_path / "one.png"
    assert (
        cli.main([*argv, "--level", "1", "--block", "1", "--head", "1", "--out", str(single)]) == 0
    )
    one = draw_attention(capture, image.pixels, (0.5, 0.5), [1], tmp_path / "lib1.png", "x")
    (box,) = one.picture.panels
    assert np.array_equal(box.crop(png(single)), box.crop(png(one.picture.path)))


# ------------------------------------------------------------------------------ receptive field
def _axis_support(token_offsets: set[int], centre: int, size: int) -> set[int]:
    """Pixels seen by the tokens ``centre + offsets`` of a level-0 map through the stem (two
    3x3 stride-2 convolutions: token t sees pixels 4t-3 .. 4t+3)."""
    pixels = set()
    for t in token_offsets:
        pixels |= {p for p in range(4 * (centre + t) - 3, 4 * (centre + t) + 4) if 0 <= p < size}
    return pixels


def test_dinat_receptive_field_is_wider_and_sparser_than_nat(tmp_path: Path) -> None:
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    nat = [receptive_field(small("nat_mini"), level, x) for level in range(4)]
    dinat = [receptive_field(small("dinat_mini", dilations=DILATED), lv, x) for lv in range(4)]
    # level 0, output token 8: NAT's two blocks see offsets -2..2; DiNAT's second block is
    # dilated 5: offsets {-1, 0, 1} + {-5, 0, 5}
    nat_axis = _axis_support(set(range(-2, 3)), 8, SIZE)
    dinat_axis = _axis_support({a + b for a in (-1, 0, 1) for b in (-5, 0, 5)}, 8, SIZE)
    for field, axis in ((nat[0], nat_axis), (dinat[0], dinat_axis)):
        expected = np.zeros((SIZE, SIZE), dtype=bool)
        expected[np.ix_(sorted(axis), sorted(axis))] = True
        assert field.position == (8, 8)
        assert np.array_equal(field.support, expected)
    assert nat[0].extent() == (23, 23) and nat[0].fill() == 1.0
    assert dinat[0].extent() == (55, 55) and dinat[0].fill() == pytest.approx((45 / 55) ** 2)
    for a, b in zip(nat, dinat):  # never narrower, at any level
        assert b.extent()[1] >= a.extent()[1]

    result = draw_receptive_fields([nat, dinat], ["nat", "dinat"], (0.5, 0.5), tmp_path / "rf.png")
    pic = png(result.path)
    assert pic.shape == (result.height, result.width, 3) and len(result.panels) == 8
    scale = result.panels[0].height // SIZE
    assert scale * SIZE == result.panels[0].height == 192
    for box, field in zip(result.panels, [*nat, *dinat]):
        drawn = (box.crop(pic) != 255).any(-1)[::scale, ::scale]  # white: zero gradient
        assert np.array_equal(drawn, field.support)
    nat0, dinat0 = ((box.crop(pic) != 255).any(-1) for box in result.panels[::4])
    wide = [np.ptp(np.nonzero(m.any(0))[0]) + 1 for m in (nat0, dinat0)]
    assert wide[1] > 2 * wide[0]  # wider ...
    fill = [m.sum() / (w * w) for m, w in zip((nat0, dinat0), wide)]
    assert fill[0] == 1.0 and fill[1] < 0.7  # ... and sparser


def test_receptive_field_command_draws_the_fields_of_the_library(tmp_path: Path, capsys) -> None:
    out = tmp_path / "rf.png"
    kwargs = json.dumps(SMALL)
    argv = [
        "receptive-field",
        "--model",
        "nat_mini",
        "dinat_mini",
        "--model-kwargs",
        kwargs,
        "--img-size",
        str(SIZE),
        "--level",
        "0,1",
        "--samples",
        "2",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))  # --seed 0
    fields = []
    for name in ("nat_mini", "dinat_mini"):  # dinat_mini's own schedule: level 0 dilated 8
        model = load_model(name, model_kwargs=kwargs, img_size=SIZE).model
        fields.append([receptive_field(model, level, x) for level in (0, 1)])
    lib = draw_receptive_fields(fields, ["nat_mini", "dinat_mini"], (0.5, 0.5), tmp_path / "l.png")
    pic = png(out)
    assert pic.shape[0] == lib.height  # (the heading's width differs)
    for box, field in zip(lib.panels, [f for row in fields for f in row]):
        assert np.array_equal(box.crop(pic), box.crop(png(lib.path)))
        assert np.array_equal((box.crop(pic) != 255).any(-1)[::3, ::3], field.support)
    assert fields[1][0].extent()[1] > fields[0][0].extent()[1]


# ------------------------------------------------------------------------------------- saliency
def test_gradient_x_input_is_zero_where_the_input_is(tmp_path: Path) -> None:
    model = small("nat_mini")
    x = torch.zeros(1, 3, SIZE, SIZE)
    x[:, :, 16:40, 20:44] = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    result = saliency(model, x, method="grad-x-input")
    assert result.target == int(model(x).argmax())
    inside = np.zeros((SIZE, SIZE), dtype=bool)
    inside[16:40, 20:44] = True
    assert (result.map[~inside] == 0).all() and (result.map[inside] > 0).mean() > 0.99
    pixels = np.full((SIZE, SIZE, 3), 100, dtype=np.uint8)
    picture = draw_saliency(result, pixels, tmp_path / "s.png", "test")
    pic = png(picture.path)
    assert pic.shape == (picture.height, picture.width, 3) and len(picture.panels) == 3
    panel = picture.panels[1].crop(pic)
    scale = panel.shape[0] // SIZE
    zero = np.round(np.array(matplotlib.colormaps[SALIENCY_CMAP](0.0)[:3]) * 255)
    at_zero = (panel[::scale, ::scale] == zero.astype(np.uint8)).all(-1)
    assert at_zero[~inside].all() and at_zero[inside].mean() < 0.05
    assert np.array_equal(picture.panels[0].crop(pic)[::scale, ::scale], pixels)


def test_vanilla_gradient_matches_finite_differences() -> None:
    model = small("nat_mini").double()
    x = torch.randn(
        1, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    with natten_ext.use_backend("reference"):
        result = saliency(model, x, target=2)
        top = np.unravel_index(np.argmax(result.map), result.map.shape)
        for r, c in (top, (5, 60), (33, 17)):
            diffs = []
            for ch in range(3):
                step = torch.zeros_like(x)
                step[0, ch, r, c] = 1e-5
                with torch.no_grad():
                    diffs.append((model(x + step)[0, 2] - model(x - step)[0, 2]).item() / 2e-5)
            assert result.map[r, c] == pytest.approx(max(abs(d) for d in diffs), rel=1e-5)
    assert result.target == 2 and 0 < result.probability < 1


def test_saliency_command(image_file: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "w.pth"
    torch.save(small("nat_mini").state_dict(), ckpt)
    argv = [
        "saliency",
        "--model",
        "nat_mini",
        "--checkpoint",
        str(ckpt),
        "--model-kwargs",
        json.dumps(SMALL),
        "--img-size",
        str(SIZE),
        "--image",
        str(image_file),
    ]
    out = tmp_path / "s.png"
    assert cli.main([*argv, "--method", "grad-x-input", "--class", "4", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    pic = png(out)
    assert pic.shape[1] > 3 * 192 and pic.shape[0] > 192  # three enlarged panels
    assert cli.main([*argv, "--class", "5", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "nat-visualize saliency: error: --class 5 is out of range: the model has classes 0-4"
    )


# ----------------------------------------------------------------------------------------- runs
def _write_run(run: Path, loss: list[float], top1: list[float], lr: float) -> Path:
    run.mkdir(parents=True)
    with open(run / "steps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, STEP_FIELDS)
        writer.writeheader()
        for step, value in enumerate(loss, 1):
            writer.writerow(
                {
                    "step": step,
                    "epoch": 1 + (step - 1) // 10,
                    "loss": value,
                    "lr": lr * (1 + math.cos(math.pi * step / len(loss))) / 2,
                }
            )
    with open(run / "epochs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, EPOCH_FIELDS)
        writer.writeheader()
        for epoch, value in enumerate(top1, 1):
            writer.writerow(
                {
                    "epoch": epoch,
                    "step": 10 * epoch,
                    "train_loss": loss[10 * epoch - 1],
                    "val_loss": loss[10 * epoch - 1],
                    "top1": value,
                    "top5": 99.0,
                }
            )
    return run


def _colour_pixels(pic: np.ndarray, box, legend, colour: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) in the panel ``box`` of the pixels of ``colour``, the legend left out."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    mask = (np.abs(pic.astype(int) - rgb) <= 12).all(-1)
    mask[legend.top : legend.top + legend.height, legend.left : legend.left + legend.width] = False
    rows, cols = np.nonzero(box.crop(mask))
    return rows, cols


def test_runs_picture_draws_each_run_where_its_logs_put_it(tmp_path: Path, capsys) -> None:
    from classification.visualize.runs import draw_runs

    falling = _write_run(
        tmp_path / "a" / "run", list(np.linspace(2.0, 0.5, 50)), [10, 30, 50, 60, 80], 1e-3
    )
    flat = _write_run(tmp_path / "b" / "run", [1.25] * 50, [40] * 5, 5e-4)
    out = tmp_path / "cmp.png"
    assert cli.main(["run", str(falling), str(flat), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    result = draw_runs([falling, flat], tmp_path / "lib.png")
    pic = png(out)
    assert np.array_equal(pic, png(result.path))
    assert pic.shape == (result.height, result.width, 3) == (700, 1100, 3)
    assert list(result.colours) == ["a/run", "b/run"]  # same names: their parents tell them apart
    a, b = result.colours["a/run"], result.colours["b/run"]
    name = "training loss"
    box, legend = result.panels[name], result.legends[name]
    rows, cols = _colour_pixels(pic, box, legend, a)
    assert np.ptp(cols) > 0.9 * box.width  # over all the steps
    assert np.corrcoef(cols, rows)[0, 1] > 0.99  # a falling straight line: down to the right
    rows, cols = _colour_pixels(pic, box, legend, b)
    assert np.ptp(cols) > 0.9 * box.width and np.ptp(rows) <= 3  # flat: a horizontal line
    name = "validation accuracy (%)"
    box, legend = result.panels[name], result.legends[name]
    rows_a, cols_a = _colour_pixels(pic, box, legend, a)
    rows_b, cols_b = _colour_pixels(pic, box, legend, b)
    # rising top-1 (10 -> 80) against a constant 40: below it at first, above it at the end
    first, last = cols_a < 0.05 * box.width, cols_a > 0.95 * box.width
    level_b = np.median(rows_b[(cols_b > 0.3 * box.width) & (cols_b < 0.7 * box.width)])
    assert rows_a[first].max() > level_b > rows_a[last].min()
    for name in ("learning rate", "loss per epoch"):
        for colour in (a, b):
            assert _colour_pixels(pic, result.panels[name], result.legends[name], colour)[0].size


def test_runs_command_errors(tmp_path: Path, capsys) -> None:
    assert cli.main(["run", str(tmp_path / "none")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nat-visualize run: error: {tmp_path}: no steps.csv (is it a nat-train run directory?)"
    )


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--level", "4"], "--level 4 is out of range: dinat_mini has levels 0-3"),
        (["--block", "2"], "--block 2 is out of range: level 0 of dinat_mini has blocks 0-1"),
        (["--level", "2", "--head", "4"], "level 2 of dinat_mini has heads 0-3 or 'all'"),
        (["--head", "first"], "--head must be a head index or 'all', got 'first'"),
        (["--query", "0.4"], "in [0, 1] (e.g. 0.4,0.6), got '0.4'"),
        (["--query", "1.2,0.5"], "--query must be X,Y"),
        (["--out", "a.jpg"], "--out must name a .png file, got 'a.jpg'"),
        (["--model-kwargs", "{bad"], "--model-kwargs is not JSON"),
    ],
)
def test_attention_arguments_fail_in_one_line(
    extra: list[str], message: str, image_file: Path, tmp_path: Path, capsys
) -> None:
    kwargs = json.dumps({k: v for k, v in SMALL.items()})
    argv = [
        "attention",
        "--model",
        "dinat_mini",
        "--model-kwargs",
        kwargs,
        "--img-size",
        "64",
        "--image",
        str(image_file),
        "--out",
        str(tmp_path / "a.png"),
        *extra,
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nat-visualize attention: error: ")
    assert message in err[0]
    assert not (tmp_path / "a.png").exists()


def test_missing_inputs_and_usage_errors_fail_in_one_line(
    image_file: Path, tmp_path: Path, capsys
) -> None:
    assert cli.main(["saliency", "--model", "nat_mini", "--image", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nat-visualize saliency: error: --image: file not found: {tmp_path / 'x.png'}"
    )
    (tmp_path / "bad.png").write_text("not an image")
    argv = ["saliency", "--model", "nat_mini", "--model-kwargs", json.dumps(SMALL)]
    assert (
        cli.main([*argv, "--image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "o.png")])
        == 2
    )
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attention", "--model", "nat_mini", "--image", "x.png", "--levl", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "nat-visualize: error: unrecognized arguments: --levl 1 (--help for usage)"
    ]
    argv = ["receptive-field", "--model", "nat_mini", "dinat_mini", "--checkpoint", "w.pth"]
    assert cli.main(argv) == 2
    assert "--checkpoint needs a single --model" in capsys.readouterr().err
    argv = ["attention", "--model", "vitrpb_small", "--image", str(image_file)]
    assert cli.main([*argv, "--out", str(tmp_path / "v.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "nat-visualize attention: error: level 0 block 0 of vitrpb_small uses "
        "GlobalAttentionRPB, not neighborhood attention"
    )


def test_without_matplotlib_one_line_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert cli.main(["run", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "nat-visualize: error: drawing pictures needs matplotlib, which is not installed: "
        "pip install -e '.[plot]' (or: pip install matplotlib)"
    ]
