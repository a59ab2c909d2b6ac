"""nat-train's optional features on CPU, with the tiny NAT and images of tests/test_train.py:
model EMA (saved, restored on resume, evaluated by nat-validate --ema), bf16 / fp16 autocast with
the gradient scaler, channels-last, torch.compile, offline Weights & Biases logging, and
the curves nat-visualize draws from the run logs."""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest
import test_train
import torch
from test_train import _train

from classification import train as train_cli
from classification import validate as validate_cli
from classification.training.runlog import read_csv
from classification.training.state import (
    atomic_save,
    list_checkpoints,
    load_training_checkpoint,
)

# the fixtures of tests/test_train.py: its tiny config and generated images
config = test_train.config
data_dir = test_train.data_dir

# one epoch of 3 steps of 8 images, the lr constant but for the cosine decay
ONE_EPOCH = ["sched.epochs=1", "sched.warmup_epochs=0"]


def _run(tmp: Path, config: Path, data: Path, *settings: str, resume: bool = False) -> Path:
    extra = ["--resume", "auto"] if resume else []
    assert _train(config, data, tmp, *extra, "--set", *ONE_EPOCH, *settings) == 0
    return tmp


def _column(run_dir: Path, name: str, csv: str = "steps.csv") -> list[float]:
    return [float(r[name]) for r in read_csv(run_dir / csv)]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory, config: Path, data_dir: Path) -> Path:
    """The reference: fp32, eager, contiguous."""
    return _run(tmp_path_factory.mktemp("runs") / "plain", config, data_dir)


# ----------------------------------------------------------------------------------------- EMA
EMA = ["train.ema=true", "train.ema_decay=0.5", "checkpoint.every_steps=1"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory, config: Path, data_dir: Path) -> Path:
    return _run(tmp_path_factory.mktemp("runs") / "ema", config, data_dir, *EMA)


def test_ema_weights_are_the_moving_average_of_the_saved_models(ema_run: Path) -> None:
    """A checkpoint every step: ema_1 = model_1 (timm applies no decay on the first update),
    then ema_k = 0.5 ema_(k-1) + 0.5 model_k."""
    ckpts = [load_training_checkpoint(p) for p in list_checkpoints(ema_run)]
    assert [c["step"] for c in ckpts] == [1, 2, 3]
    assert all(isinstance(c["ema"], dict) and c["ema"].keys() == c["model"].keys() for c in ckpts)
    expected = {k: v.clone() for k, v in ckpts[0]["model"].items()}
    for ckpt in ckpts:
        if ckpt["step"] > 1:
            for key, value in ckpt["model"].items():
                if value.is_floating_point():
                    expected[key] = 0.5 * expected[key] + 0.5 * value
        for key, value in ckpt["ema"].items():
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
    last = ckpts[-1]
    differs = [
        k
        for k, v in last["ema"].items()
        if v.is_floating_point() and not torch.allclose(v, last["model"][k])
    ]
    assert any(k.startswith("levels.") for k in differs)
    assert last["best"]["metric"] == "ema_top1"
    row = read_csv(ema_run / "epochs.csv")[-1]
    assert row["ema_top1"] and row["ema_val_loss"] and row["ema_val_loss"] != row["val_loss"]


def test_validate_ema_evaluates_the_ema_weights(ema_run: Path, data_dir: Path, tmp_path: Path):
    ckpt = ema_run / "checkpoint-00000003.pth"
    results = {}
    for flag in ([], ["--ema"]):
        out = tmp_path / f"result{len(flag)}.json"
        args = ["--checkpoint", str(ckpt), "--data", str(data_dir), "--workers", "0", *flag]
        assert validate_cli.main([*args, "--results-file", str(out)]) == 0
        results[bool(flag)] = json.loads(out.read_text())
    row = read_csv(ema_run / "epochs.csv")[-1]
    assert results[False]["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-4)
    assert results[True]["loss"] == pytest.approx(float(row["ema_val_loss"]), rel=1e-4)
    assert results[True]["top1"] == pytest.approx(float(row["ema_top1"]), abs=1e-3)
    assert results[True]["loss"] != results[False]["loss"]


def test_ema_is_restored_on_resume(ema_run: Path, config: Path, data_dir: Path, tmp_path: Path):
    _run(tmp_path, config, data_dir, *EMA, "train.max_steps=2")  # ema_2 != model_2
    _run(tmp_path, config, data_dir, *EMA, resume=True)
    a = load_training_checkpoint(ema_run / "checkpoint-00000003.pth")["ema"]
    b = load_training_checkpoint(tmp_path / "checkpoint-00000003.pth")["ema"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


# ----------------------------------------------------------------------------------------- AMP
def test_bf16_autocast_trains_close_to_fp32(plain_run: Path, config, data_dir, tmp_path: Path):
    # torch 2.14's oneDNN bf16 Conv2d weight gradient on CPU reads uninitialised memory when the
    # input map is 1x1 (the tiny model's last downsampler): NaN or not depending on what the heap
    # held, i.e. on the tests that ran before. PyTorch's native CPU kernels are exact.
    previous, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
    try:
        run = _run(tmp_path, config, data_dir, "train.amp=bf16")
    finally:
        torch.backends.mkldnn.enabled = previous
    ref, bf16 = _column(plain_run, "loss"), _column(run, "loss")
    assert len(bf16) == 3 and all(math.isfinite(x) for x in bf16)
    assert bf16 == pytest.approx(ref, rel=2e-2)
    assert bf16 != ref  # autocast really ran the matmuls in bfloat16
    assert load_training_checkpoint(run / "checkpoint-00000003.pth")["scaler"] is None


def test_fp16_uses_the_grad_scaler_and_resumes_its_state(
    plain_run: Path, config: Path, data_dir: Path, tmp_path: Path
) -> None:
    fp16 = ["train.amp=fp16"]
    _run(tmp_path, config, data_dir, *fp16, "train.max_steps=2")
    scaler = load_training_checkpoint(tmp_path / "checkpoint-00000002.pth")["scaler"]
    assert scaler["scale"] == 2.0**16 and scaler["_growth_tracker"] == 2
    _run(tmp_path, config, data_dir, *fp16, resume=True)
    scaler = load_training_checkpoint(tmp_path / "checkpoint-00000003.pth")["scaler"]
    assert scaler["_growth_tracker"] == 3  # a fresh scaler would be at 1
    loss, ref = _column(tmp_path, "loss"), _column(plain_run, "loss")
    assert len(loss) == 3 and all(math.isfinite(x) for x in loss)
    assert loss == pytest.approx(ref, rel=2e-2) and loss != ref
    # clipping and the logged norm see unscaled gradients (scaled ones are 65536x larger)
    assert _column(tmp_path, "grad_norm") == pytest.approx(
        _column(plain_run, "grad_norm"), rel=2e-2
    )


# -------------------------------------------------------------------- channels-last, compile
def test_channels_last_matches_the_contiguous_run(
    plain_run: Path, config: Path, data_dir: Path, tmp_path: Path
) -> None:
    run = _run(tmp_path, config, data_dir, "train.channels_last=true")
    loss = _column(run, "loss")
    assert all(math.isfinite(x) for x in loss)
    assert loss == pytest.approx(_column(plain_run, "loss"), rel=1e-4)
    weight = load_training_checkpoint(run / "checkpoint-00000003.pth")["model"][
        "patch_embed.proj.0.weight"
    ]
    assert weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()


def test_compile_aot_eager_matches_eager(
    plain_run: Path, config: Path, data_dir: Path, tmp_path: Path, capsys
) -> None:
    """train.compile with train.compile_backend=aot_eager (traces forward and backward through
    dynamo and AOTAutograd, without inductor's C++ code generation, which takes minutes). The
    run says when compilation starts and how long the first step took, and names the cache."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    capsys.readouterr()
    run = _run(tmp_path, config, data_dir, "train.compile=true", "train.compile_backend=aot_eager")
    out = capsys.readouterr().out
    assert counters["stats"]["unique_graphs"] >= 1  # the model really went through dynamo
    assert out.count("compiling the model (torch.compile, backend aot_eager") == 1
    assert "TORCHINDUCTOR_CACHE_DIR" in out
    assert re.search(r"compiled: the first step took \d+\.\d s", out)
    assert out.index("compiling the model") < out.index("compiled: the first step")
    assert _column(run, "loss") == pytest.approx(_column(plain_run, "loss"), rel=1e-4)
    top1 = _column(run, "top1", "epochs.csv")
    assert top1 == pytest.approx(_column(plain_run, "top1", "epochs.csv"), abs=1e-3)


@pytest.mark.slow  # inductor's C++ code generation: ~20 s on 2 cores
def test_compile_inductor_trains(config: Path, data_dir: Path, tmp_path: Path) -> None:
    torch._dynamo.reset()
    run = _run(tmp_path, config, data_dir, "train.compile=true", "train.max_steps=1")
    assert all(math.isfinite(x) for x in _column(run, "loss"))


@pytest.mark.gpu
def test_cuda_training_with_cuda_graphs_matches_eager(
    config: Path, data_dir: Path, tmp_path: Path
) -> None:
    """On CUDA, train.compile=auto compiles with CUDA graphs (compile_mode auto ->
    reduce-overhead) and the fused AdamW (optim.fused auto): the same losses and accuracy as the
    eager run, within bf16 rounding."""
    cuda = ["train.device=cuda", "train.amp=bf16"]
    eager = _run(tmp_path / "eager", config, data_dir, *cuda, "train.compile=false")
    torch._dynamo.reset()
    graphs = _run(tmp_path / "graphs", config, data_dir, *cuda, "train.compile=auto")
    want, got = _column(eager, "loss"), _column(graphs, "loss")
    assert all(math.isfinite(x) for x in got)
    assert got == pytest.approx(want, rel=2e-2)
    top1 = _column(graphs, "top1", "epochs.csv")
    assert top1 == pytest.approx(_column(eager, "top1", "epochs.csv"), abs=20.0)
    ckpt = load_training_checkpoint(graphs / "checkpoint-00000003.pth")
    assert ckpt["config"]["train"]["compile_mode"] == "auto"


def test_old_checkpoint_config_gets_the_new_compile_backend_default(
    plain_run: Path, tmp_path: Path, capsys
) -> None:
    """A checkpoint written before train.compile_backend existed still resumes by file."""
    ckpt = load_training_checkpoint(plain_run / "checkpoint-00000003.pth")
    del ckpt["config"]["train"]["compile_backend"]
    old = tmp_path / "checkpoint-00000003.pth"
    atomic_save(ckpt, old)
    assert train_cli.main(["--resume", str(old), "--print-config"]) == 0
    assert "compile_backend: inductor" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- wandb
def _wandb_records(path: Path):
    """The records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB-log
    chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) in 32 KiB
    blocks."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


class _Listener:
    """A TCP server on localhost that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def test_wandb_offline_logs_the_metrics_without_network(
    config: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    listener = _Listener()
    url = f"http://127.0.0.1:{listener.port}"
    # W&B's API and any HTTP(S) traffic of its service process would land on the listener
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_BASE_URL": url,
        "WANDB_SILENT": "true",
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("NO_PROXY", "no_proxy", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "wandb_dir").mkdir()
    inet: list = []
    connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            inet.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)

    run = _run(tmp_path / "run", config, data_dir, "logging.wandb=true")
    assert listener.connections == 0 and inet == []
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = (run / "wandb_id.txt").read_text().strip()
    logs = list(offline[0].glob("*.wandb"))
    assert [p.name for p in logs] == [f"run-{run_id}.wandb"]
    history: dict[int, dict[str, float]] = {}
    for record in _wandb_records(logs[0]):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item  # the key is in `key` or (newer wandb) `nested_key`
            row = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}
            history.setdefault(int(row["_step"]), {}).update(row)
    assert sorted(history) == [1, 2, 3]
    steps = read_csv(run / "steps.csv")
    for row in steps:
        logged = history[int(row["step"])]
        assert logged["train/loss"] == pytest.approx(float(row["loss"]), rel=1e-5)
        assert logged["train/lr"] == pytest.approx(float(row["lr"]), rel=1e-5)
    epoch = read_csv(run / "epochs.csv")[-1]
    assert history[3]["epoch/top1"] == pytest.approx(float(epoch["top1"]), abs=1e-3)
    assert history[3]["epoch/val_loss"] == pytest.approx(float(epoch["val_loss"]), rel=1e-5)


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_training_without_wandb_installed(
    config: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """`import wandb` fails (None in sys.modules): enabled, a warning and training goes on;
    disabled, wandb is never imported."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = [f"logging.wandb={str(enabled).lower()}", "train.max_steps=1"]
    if enabled:
        with pytest.warns(UserWarning, match="wandb is not installed"):
            run = _run(tmp_path, config, data_dir, *settings)
    else:
        run = _run(tmp_path, config, data_dir, *settings)
    assert len(_column(run, "loss")) == 1
    assert (run / "checkpoint-00000001.pth").is_file()
    assert not (run / "wandb").exists() and not (run / "wandb_id.txt").exists()


# ------------------------------------------------------------------------------ nat-visualize run
def test_run_curves_of_real_runs(ema_run: Path, plain_run: Path, tmp_path: Path, capsys) -> None:
    """nat-visualize run on two nat-train runs: a PNG beside nothing else, each run's curves in
    each panel in its colour, the EMA run's EMA top-1 too."""
    pytest.importorskip("matplotlib")
    import numpy as np
    from PIL import Image

    from classification.visualize import cli, runs

    out = tmp_path / "plots" / "curves.png"
    assert cli.main(["run", str(ema_run), str(plain_run), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary left
    pic = np.asarray(Image.open(out).convert("RGB"))
    result = runs.draw_runs([ema_run, plain_run], tmp_path / "again.png")
    assert np.array_equal(pic, np.asarray(Image.open(result.path).convert("RGB")))
    assert pic.shape == (runs.HEIGHT, runs.WIDTH, 3) and list(result.colours) == ["ema", "plain"]
    for title, box in result.panels.items():
        panel = box.crop(pic).astype(int)
        for colour in result.colours.values():
            rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
            assert (np.abs(panel - rgb) <= 12).all(-1).sum() > 20, (title, colour)
    assert cli.main(["run", str(tmp_path / "plots")]) == 2
    assert "no steps.csv" in capsys.readouterr().err
