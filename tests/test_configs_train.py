"""Training configs: every YAML parses and builds its model and optimizer; the recipe values
match the spec (model_zoo.md section 5); the config system rejects bad keys and values."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
import timm
import torch

from classification.training.config import (
    DEFAULTS,
    ConfigError,
    apply_overrides,
    load_config,
    validate_config,
)
from classification.training.model import build_model, register_zoo
from classification.training.optim import build_optimizer, build_scheduler

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "classification"
ALL = sorted(p for p in CONFIG_DIR.glob("*.yaml"))
FINETUNES = {
    "dinat_large",
    "dinat_large_384",
    "dinat_large_384_11x11",
    "dinat_s_large",
    "dinat_s_large_384",
}
ISO_BASE = {"nat_isotropic_base", "dinat_isotropic_base", "vitrpb_base"}
DROP_PATH = {  # spec section 2
    "nat_mini": 0.2,
    "nat_tiny": 0.2,
    "nat_small": 0.3,
    "nat_base": 0.5,
    "dinat_mini": 0.2,
    "dinat_tiny": 0.2,
    "dinat_small": 0.3,
    "dinat_base": 0.5,
    "dinat_large": 0.35,
    "dinat_large_384": 0.35,
    "dinat_large_384_11x11": 0.35,
    "dinat_s_tiny": 0.2,
    "dinat_s_small": 0.3,
    "dinat_s_base": 0.5,
    "dinat_s_large": 0.35,
    "dinat_s_large_384": 0.35,
    "nat_isotropic_small": 0.1,
    "dinat_isotropic_small": 0.1,
    "vitrpb_small": 0.1,
    "nat_isotropic_base": 0.4,
    "dinat_isotropic_base": 0.4,
    "vitrpb_base": 0.4,
}
IMAGENET = sorted(set(DROP_PATH) - FINETUNES)


def test_one_config_per_zoo_model() -> None:
    names = {p.stem for p in ALL}
    assert set(DROP_PATH) <= names, set(DROP_PATH) - names
    assert "demo" in names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_config_parses_and_builds_model_and_optimizer(path: Path) -> None:
    cfg = load_config(path)
    if path.stem not in ("demo", "demo_dinat"):  # the demos' small models
        assert cfg["model"]["name"] == path.stem
    register_zoo()
    assert timm.is_model(cfg["model"]["name"])
    cfg["model"]["init_checkpoint"] = None  # no downloads here; see test_finetune_init_*
    with torch.device("meta"):  # full-size models without allocating their weights
        model = build_model(cfg, 1000)
        optimizer = build_optimizer(model, cfg)
    _, epochs = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    assert epochs == cfg["sched"]["epochs"] + cfg["sched"]["cooldown_epochs"]
    n_opt = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_opt == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_recipe_matches_spec(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    o, s, a, d, t = cfg["optim"], cfg["sched"], cfg["aug"], cfg["data"], cfg["train"]
    assert (o["opt"], o["lr"], o["weight_decay"], o["eps"], o["clip_grad"]) == (
        "adamw",
        1e-3,
        0.05,
        1e-8,
        5.0,
    )
    assert (s["name"], s["epochs"], s["cooldown_epochs"], s["warmup_lr"], s["min_lr"]) == (
        "cosine",
        300,
        10,
        1e-6,
        5e-6,
    )
    assert s["warmup_epochs"] == (50 if name in ISO_BASE else 20)
    assert t["ema"] == (name in ISO_BASE)
    assert (a["auto_augment"], a["reprob"], a["mixup"], a["cutmix"], a["smoothing"]) == (
        "rand-m9-mstd0.5-inc1",
        0.25,
        0.8,
        1.0,
        0.1,
    )
    assert (d["batch_size"], d["img_size"], d["crop_pct"], d["interpolation"]) == (
        128,
        224,
        0.875,
        "bicubic",
    )
    assert t["amp"] != "none"
    assert cfg["model"]["drop_path_rate"] == DROP_PATH[name]


@pytest.mark.parametrize("name", sorted(FINETUNES))
def test_finetune_recipe_matches_spec(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    o, s, a = cfg["optim"], cfg["sched"], cfg["aug"]
    # weight decay of the original fine-tune configs: 1e-4, but 1e-10 / 1e-5 for the 384 Larges
    wd = {"dinat_large_384": 1e-10, "dinat_s_large_384": 1e-5}.get(name, 1e-4)
    assert (o["lr"], o["weight_decay"], s["epochs"], s["name"]) == (5e-5, wd, 30, "constant")
    assert (a["mixup"], a["cutmix"], cfg["data"]["batch_size"]) == (0.0, 0.0, 64)
    assert cfg["model"]["drop_path_rate"] == DROP_PATH[name]
    assert cfg["data"]["img_size"] == (384 if "384" in name else 224)
    assert cfg["data"]["crop_pct"] == (1.0 if "384" in name else 0.875)
    assert cfg["model"]["init_num_classes"] == 21841
    assert "imagenet22k" in cfg["model"]["init_checkpoint"]


def test_finetune_init_checkpoints_are_the_zoos_22k_weights() -> None:
    register_zoo()
    urls = {
        timm.models.get_pretrained_cfg(n).url
        for n in timm.list_pretrained("*in22k")
        if timm.models.get_pretrained_cfg(n).num_classes == 21841
    }
    for name in FINETUNES:
        assert load_config(CONFIG_DIR / f"{name}.yaml")["model"]["init_checkpoint"] in urls


def _lrs(cfg: dict, steps: range) -> list[float]:
    optimizer = build_optimizer(torch.nn.Linear(4, 4), cfg)
    scheduler, _ = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    out = []
    for step in steps:
        scheduler.step_update(num_updates=step)
        out.append(optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("name", sorted(FINETUNES))
def test_finetunes_keep_the_published_constant_lr(name: str) -> None:
    """The original fine-tune configs asked for `linear`, which the original scheduler did not
    implement: the lr stayed at 5e-5 for all 30 epochs. That is the published default here."""
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg["sched"]["name"] == "constant"
    assert _lrs(cfg, range(0, 301, 50)) == [pytest.approx(5e-5)] * 7


def test_linear_schedule_switch_really_decays() -> None:
    cfg = load_config(CONFIG_DIR / "dinat_large.yaml", ["sched.name=linear"])
    lrs = _lrs(cfg, range(0, 301, 50))
    assert lrs[0] == pytest.approx(5e-5)
    assert lrs[3] == pytest.approx(2.5e-5)  # half-way: half the lr
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in itertools.pairwise(lrs))


def _decay_of(cfg: dict) -> tuple[dict[str, float], dict[str, torch.nn.Parameter]]:
    with torch.device("meta"):
        model = build_model(cfg, 10)
        optimizer = build_optimizer(model, cfg)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    return {n: decay[id(p)] for n, p in names.items()}, names


@pytest.mark.parametrize("name", ["nat_mini", "dinat_s_tiny", "vitrpb_small", "dinat_large"])
def test_published_configs_decay_rpb_as_the_original(name: str) -> None:
    """The original code listed rpb in no_weight_decay_keywords(), which timm's optimizer factory
    never read: the published models were trained with every rpb table decayed (nat_mini: 18),
    and only 1-D parameters (norms, biases, layer scale) exempt."""
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    cfg["model"]["init_checkpoint"] = None  # no downloads here
    assert cfg["optim"]["rpb_weight_decay"] is True
    decay, names = _decay_of(cfg)
    wd = cfg["optim"]["weight_decay"]
    rpb = [n for n in names if n.endswith("rpb")]
    assert rpb and all(decay[n] == wd for n in rpb)
    if name == "nat_mini":
        assert len(rpb) == 18
    for n, p in names.items():
        assert decay[n] == (0.0 if p.ndim <= 1 else wd), n


def test_rpb_weight_decay_switch_exempts_every_rpb() -> None:
    cfg = load_config(CONFIG_DIR / "nat_mini.yaml", ["optim.rpb_weight_decay=false"])
    decay, names = _decay_of(cfg)
    rpb = [n for n in names if n.endswith("rpb")]
    norms = [n for n in names if ".norm" in n or n.startswith("norm.")]
    assert rpb and norms
    for n in rpb + norms + [n for n in names if n.endswith(".bias")]:
        assert decay[n] == 0.0, n
    for n in (
        "levels.0.blocks.0.attn.qkv.weight",
        "levels.0.blocks.0.mlp.fc1.weight",
        "head.weight",
    ):
        assert decay[n] == 0.05, n
    with pytest.raises(ConfigError, match=r"optim\.rpb_weight_decay"):
        load_config(CONFIG_DIR / "nat_mini.yaml", ["optim.no_decay_keywords=[rpb]"])


def test_published_configs_name_the_original_precision() -> None:
    """bf16 autocast by default; the original precision is named one switch away."""
    base = (CONFIG_DIR / "_base_" / "imagenet_300ep.yaml").read_text()
    finetune = (CONFIG_DIR / "_base_" / "in22k_ft_in1k.yaml").read_text()
    assert "train.amp=fp16" in base and "float16" in base
    assert "train.amp=none" in finetune and "float32" in finetune
    assert load_config(CONFIG_DIR / "dinat_large.yaml")["train"]["amp"] == "bf16"


def test_warmup_that_does_not_fit_is_refused() -> None:
    """sched.epochs counts the epochs before the cooldown (as in timm); a warmup as long as
    that never lets the lr reach optim.lr."""
    with pytest.raises(ConfigError, match=r"sched\.warmup_epochs.*sched\.epochs"):
        load_config(CONFIG_DIR / "nat_mini.yaml", ["sched.epochs=2"])
    cfg = load_config(CONFIG_DIR / "nat_mini.yaml", ["sched.epochs=30"])
    _, total = build_scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg, 10)
    assert total == 40


def test_fused_optimizer_switch() -> None:
    """optim.fused: auto keeps the default (foreach) implementation off CUDA; true asks torch
    for the fused kernel; an optimizer without one is refused with the key named."""
    cfg = load_config(CONFIG_DIR / "nat_mini.yaml")
    model = torch.nn.Linear(4, 4)
    assert not build_optimizer(model, cfg).defaults.get("fused")
    fused_cfg = apply_overrides(copy.deepcopy(cfg), ["optim.fused=true"])
    optimizer = build_optimizer(model, fused_cfg)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    before = model.weight.detach().clone()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # the fused CPU kernel runs
    assert not torch.equal(before, model.weight)
    sgd = apply_overrides(copy.deepcopy(cfg), ["optim.fused=true", "optim.opt=sgd"])
    with pytest.raises(ValueError, match=r"optim\.fused=true needs optim\.opt"):
        build_optimizer(model, sgd)
    with pytest.raises(ConfigError, match=r"optim\.fused"):
        validate_config(apply_overrides(copy.deepcopy(cfg), ["optim.fused=maybe"]))


def test_usable_cores_affinity_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's CPU affinity where the OS reports it, else the machine's core count (the
    CPU trainer's thread count and data.workers: auto both use it)."""
    from classification.training import data as data_mod

    monkeypatch.setattr(data_mod.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert data_mod.usable_cores() == 3
    monkeypatch.delattr(data_mod.os, "sched_getaffinity")
    monkeypatch.setattr(data_mod.os, "cpu_count", lambda: 12)
    assert data_mod.usable_cores() == 12
    monkeypatch.setattr(data_mod.os, "cpu_count", lambda: None)
    assert data_mod.usable_cores() == 1


def test_data_workers_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """data.workers: auto gives a CUDA process its share of the cores less two, a CPU process a
    quarter of its share; explicit counts pass through; anything else is refused."""
    from classification.training import data as data_mod

    monkeypatch.setattr(data_mod, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data_mod.resolve_workers("auto", "cuda", 1) == 14
    assert data_mod.resolve_workers("auto", "cuda", 8) == 1  # 2 cores each: at least one
    assert data_mod.resolve_workers("auto", "cpu", 1) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 processes on this node of a larger job
    assert data_mod.resolve_workers("auto", "cuda", 16) == 6
    assert data_mod.resolve_workers(0, "cuda", 1) == 0
    cfg = load_config(CONFIG_DIR / "nat_tiny.yaml")
    assert cfg["data"]["workers"] == "auto"
    for bad in ("-1", "many", "true", "2.5"):
        with pytest.raises(ConfigError, match=r"data\.workers"):
            validate_config(apply_overrides(copy.deepcopy(cfg), [f"data.workers={bad}"]))
    validate_config(apply_overrides(copy.deepcopy(cfg), ["data.workers=3"]))


# --------------------------------------------------------------------------- config system


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    base = "optim: {lr: 0.5, weight_decay: 0.1}\nsched: {epochs: 7, warmup_epochs: 1}\n"
    _write(tmp_path / "base.yaml", base)
    child = _write(
        tmp_path / "child.yaml",
        "_base_: base.yaml\noptim: {lr: 0.25}\nmodel: {kwargs: {depths: [1, 1]}}\n",
    )
    cfg = load_config(child, ["sched.epochs=9", "model.kwargs.embed_dim=16", "aug.mixup=0"])
    assert cfg["optim"]["lr"] == 0.25 and cfg["optim"]["weight_decay"] == 0.1
    assert cfg["sched"]["epochs"] == 9 and cfg["aug"]["mixup"] == 0
    assert cfg["model"]["kwargs"] == {"depths": [1, 1], "embed_dim": 16}
    assert cfg["optim"]["eps"] == DEFAULTS["optim"]["eps"]


def test_every_key_can_be_overridden() -> None:
    def leaves(node, prefix=()):
        for k, v in node.items():
            if isinstance(v, dict) and (*prefix, k) != ("model", "kwargs"):
                yield from leaves(v, (*prefix, k))
            else:
                yield (*prefix, k), v

    count = 0
    for path, default in leaves(DEFAULTS):
        text = default if isinstance(default, str) else json.dumps(default)
        cfg = apply_overrides(copy.deepcopy(DEFAULTS), [f"{'.'.join(path)}={text}"])
        validate_config(cfg)
        node = cfg
        for part in path:
            node = node[part]
        assert node == default, path
        count += 1
    assert count > 60


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("optim: {lrr: 0.1}\n", [], "optim.lrr"),
        ("", ["optim.lrr=0.1"], "optim.lrr"),
        ("", ["nosuch.key=1"], "nosuch"),
        ("foo: 1\n", [], "'foo'"),
        ("", ["optim.lr=abc"], "optim.lr"),
        ("", ["optim.lr=-1"], "optim.lr"),
        ("", ["train.amp=fp8"], "train.amp"),
        ("", ["data.batch_size=7"], "data.batch_size"),  # odd batch with mixup
        ("", ["sched.epochs=true"], "sched.epochs"),
        ("", ["optim=3"], "optim"),
        ("", ["train.compile=maybe"], "train.compile"),
        ("", ["train.compile=1"], "train.compile"),
        ("", ["train.compile_mode=fast"], "train.compile_mode"),
    ],
)
def test_bad_keys_and_values_name_the_key(
    tmp_path: Path, text: str, overrides: list[str], needle: str
) -> None:
    path = _write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(path, overrides)


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean optim\.lr"):
        load_config(_write(tmp_path / "c.yaml", "optim: {lrr: 1}\n"))


def test_base_loop_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("value", ["true", "false", "auto"])
def test_compile_takes_true_false_or_auto(tmp_path: Path, value: str) -> None:
    cfg = load_config(_write(tmp_path / "c.yaml", ""), [f"train.compile={value}"])
    assert cfg["train"]["compile"] == {"true": True, "false": False}.get(value, value)
    assert DEFAULTS["train"]["compile"] == "auto"
