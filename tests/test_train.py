"""The training loop (training/train.py): seeded reproducibility, the run directory's files,
early stopping, Adagrad, a mask drawn per minibatch, and resume after a real SIGKILL that ends
exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_npz
from helpers import (
    MADE_BIN,
    STEADY_RUN,
    assert_same_tensors,
    checkpoint_epoch,
    made_train_args,
    retrain_in_one_thread,
    run_made,
)
from PIL import Image

from made.core.errors import CheckpointError
from made.io.data import load_dataset
from training.checkpoint import BEST, CHECKPOINT, load_tensors
from training.model import MADE, MADEConfig
from training.train import CONFIG, CURVE, HISTORY, METRICS, TrainConfig, Trainer

NLL_FIELDS = (
    "best_epoch",
    "epochs",
    "valid_nll",
    "valid_nll_stderr",
    "valid_nll_per_mask",
    "test_nll",
    "test_nll_stderr",
    "test_nll_per_mask",
    "valid_n",
    "test_n",
)


def _config(data: Path, **overrides: Any) -> TrainConfig:
    model = overrides.pop("model", {})
    dims = int(np.load(data)["train"].shape[1])
    base: dict[str, Any] = dict(dataset=str(data), seed=0, max_epochs=4, batch_size=50, lr=1e-2, patience=50)
    base.update(overrides)
    return TrainConfig(model=MADEConfig(dims=dims, **{"hidden": [16], **model}), **base)


def _train(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    return Trainer(cfg, run_dir).run(progress=False)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def _history(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run_dir / HISTORY).read_text().splitlines()]
    return [(r["epoch"], r["train_nll"], r["valid_nll"]) for r in rows]


def _nll_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / METRICS).read_text())
    return {k: metrics[k] for k in NLL_FIELDS}


@pytest.fixture(scope="module")
def data10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data") / "chain10.npz", 10, seed=3, n=600)


@pytest.fixture(scope="module")
def finished_run(data10: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    """K=3 order- and connectivity-agnostic masks, two hidden layers, 6 epochs."""
    cfg = _config(
        data10,
        max_epochs=6,
        model=dict(hidden=[16, 16], n_masks=3, order_agnostic=True, connectivity_agnostic=True, mask_seed=4),
    )
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    _train(cfg, run_dir)
    return cfg, run_dir


def test_same_seed_reproduces_weights_and_metrics_exactly(data10: Path, tmp_path: Path) -> None:
    cfg = _config(data10, model=dict(n_masks=2, order_agnostic=True, direct=True))
    _train(cfg, tmp_path / "a")
    _train(cfg, tmp_path / "b")
    assert_same_tensors(tmp_path / "a" / BEST, tmp_path / "b" / BEST)
    assert_same_tensors(tmp_path / "a" / CHECKPOINT, tmp_path / "b" / CHECKPOINT)
    assert _nll_metrics(tmp_path / "a") == _nll_metrics(tmp_path / "b")
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    # another seed is another run (weights, shuffling and mask draws all differ)
    _train(_config(data10, seed=1, model=dict(n_masks=2, order_agnostic=True, direct=True)), tmp_path / "c")
    a, c = _tensors(tmp_path / "a" / BEST), _tensors(tmp_path / "c" / BEST)
    assert not torch.equal(a["layers.0.weight"], c["layers.0.weight"])
    assert _history(tmp_path / "a") != _history(tmp_path / "c")


def test_run_directory_holds_config_log_curve_and_metrics(
    finished_run: tuple[TrainConfig, Path],
) -> None:
    cfg, run_dir = finished_run
    assert json.loads((run_dir / CONFIG).read_text()) == json.loads(json.dumps(cfg.to_dict()))
    history = _history(run_dir)
    assert [e for e, _, _ in history] == list(range(1, 7))
    assert all(math.isfinite(t) and math.isfinite(v) for _, t, v in history)
    png = (run_dir / CURVE).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(run_dir / CURVE) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100

    metrics = json.loads((run_dir / METRICS).read_text())
    valids = [v for _, _, v in history]
    assert metrics["epochs"] == 6
    # the epochs' CPU seconds beside their wall time: real work, at most all threads' worth of it
    assert 0 < metrics["train_cpu_seconds"] <= metrics["train_seconds"] * metrics["torch_threads"] + 1
    assert metrics["best_epoch"] == int(np.argmin(valids)) + 1
    assert math.isclose(metrics["valid_nll"], min(valids), rel_tol=1e-9)
    for split in ("valid", "test"):
        assert len(metrics[f"{split}_nll_per_mask"]) == 3
        assert metrics[f"{split}_nll_stderr"] > 0

    # recompute the test numbers from best.safetensors, independently of the trainer
    model = MADE(cfg.model)
    model.load_state_dict(_tensors(run_dir / BEST))
    test = torch.from_numpy(load_dataset(cfg.dataset).split("test")).float()
    with torch.no_grad():
        nll = -model.mixture_log_prob(test).double().numpy()
        per_mask = [float(-model.log_prob(test, k).double().mean()) for k in range(3)]
    assert math.isclose(metrics["test_nll"], float(nll.mean()), rel_tol=1e-6)
    stderr = float(nll.std(ddof=1) / math.sqrt(len(nll)))
    assert math.isclose(metrics["test_nll_stderr"], stderr, rel_tol=1e-5)
    np.testing.assert_allclose(metrics["test_nll_per_mask"], per_mask, rtol=1e-6)
    assert metrics["test_n"] == len(test)


def test_every_mask_is_drawn_and_trained(finished_run: tuple[TrainConfig, Path]) -> None:
    """A mask is drawn per minibatch: for every k, weights that only mask k uses moved (they
    get a gradient only when k is drawn), while weights no mask uses kept their initial values."""
    cfg, run_dir = finished_run
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    initial = MADE(cfg.model)
    final = MADE(cfg.model)
    checkpoint = _tensors(run_dir / CHECKPOINT)  # the weights after the last epoch
    final.load_state_dict({k[6:]: v for k, v in checkpoint.items() if k.startswith("model.")})
    masks = [[m.bool() for m in initial.masks(k)] for k in range(3)]
    for layer_index, layer in enumerate(initial.layers):
        used = torch.stack([masks[k][layer_index] for k in range(3)])  # (K, out, in)
        before = layer.weight.detach()
        after = final.layers[layer_index].weight.detach()
        assert torch.equal(after[~used.any(0)], before[~used.any(0)])
        for k in range(3):
            only_k = used[k] & (used.sum(0) == 1)
            assert only_k.any(), f"layer {layer_index}: no weight unique to mask {k}"
            # (some may stay: a ReLU unit that never fires passes no gradient back)
            assert torch.any(after[only_k] != before[only_k]), f"mask {k} never trained"
    metrics = json.loads((run_dir / METRICS).read_text())
    per_mask = metrics["test_nll_per_mask"]
    assert len(set(per_mask)) == 3
    # the mixture beats the mean of its members (Jensen), as a true mixture must
    assert metrics["test_nll"] < float(np.mean(per_mask))


def test_early_stopping_ends_the_run_when_validation_stops_improving(tmp_path: Path) -> None:
    """Twenty training rows, a wide network and a high rate overfit at once; validation rows
    are independent fair coins, so the validation NLL soon rises and patience runs out."""
    rng = np.random.default_rng(0)
    coins = lambda n: (rng.random((n, 10)) < 0.5).astype(np.uint8)  # noqa: E731
    np.savez(tmp_path / "overfit.npz", train=coins(20), valid=coins(200), test=coins(50))
    cfg = _config(tmp_path / "overfit.npz", max_epochs=300, patience=3, batch_size=10, lr=3e-2, model=dict(hidden=[64]))
    metrics = _train(cfg, tmp_path / "run")
    valids = [v for _, _, v in _history(tmp_path / "run")]
    assert metrics["epochs"] < 300
    assert metrics["epochs"] == metrics["best_epoch"] + 3 == len(valids)
    best = valids[metrics["best_epoch"] - 1]
    assert best == min(valids)
    assert all(v >= best for v in valids[metrics["best_epoch"] :])


def test_adagrad_learns_and_a_longer_resumed_run_matches_one_run(data10: Path, tmp_path: Path) -> None:
    """Resume restores the optimizer's accumulators, the random stream and the stepped rate."""
    kwargs: dict[str, Any] = dict(
        optimizer="adagrad", lr=0.05, lr_step=2, lr_gamma=0.5, model=dict(n_masks=2, connectivity_agnostic=True)
    )
    whole = _train(_config(data10, max_epochs=6, **kwargs), tmp_path / "whole")
    _train(_config(data10, max_epochs=3, **kwargs), tmp_path / "split")
    split = _train(_config(data10, max_epochs=6, **kwargs), tmp_path / "split")
    assert_same_tensors(tmp_path / "whole" / CHECKPOINT, tmp_path / "split" / CHECKPOINT)
    assert_same_tensors(tmp_path / "whole" / BEST, tmp_path / "split" / BEST)
    assert {k: split[k] for k in NLL_FIELDS} == {k: whole[k] for k in NLL_FIELDS}
    assert _history(tmp_path / "whole") == _history(tmp_path / "split")

    tensors, meta = load_tensors(tmp_path / "whole" / CHECKPOINT)
    assert any(name.endswith(".sum") for name in tensors)  # Adagrad's accumulators
    assert meta["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5**2)
    valids = [v for _, _, v in _history(tmp_path / "whole")]
    assert min(valids[1:]) < valids[0] - 0.05


def test_a_run_resumes_on_its_own_data_wherever_it_moved_and_on_no_other(data10: Path, tmp_path: Path) -> None:
    """--dataset may move (the path is resumable), but a run interrupted and rerun on another
    file of the same width trained on on the new rows and rewrote the recorded path: now the
    data's sha256 (data.json) must match, and a run without data.json (from before) resumes."""
    import shutil

    _train(_config(data10, max_epochs=2), tmp_path / "run")
    moved = tmp_path / "moved.npz"
    shutil.copy(data10, moved)
    assert _train(_config(moved, max_epochs=3), tmp_path / "run")["epochs"] == 3  # the same rows, moved
    other = write_npz(tmp_path / "other.npz", 10, seed=9, n=600)
    with pytest.raises(CheckpointError, match=r"holds a run on other data: --dataset .*other.npz holds other rows"):
        _train(_config(other, max_epochs=4), tmp_path / "run")
    assert json.loads((tmp_path / "run" / CONFIG).read_text())["dataset"] == str(moved)  # not rewritten
    (tmp_path / "run" / "data.json").unlink()  # a run recorded before the check
    assert _train(_config(moved, max_epochs=4), tmp_path / "run")["epochs"] == 4


def test_a_run_resumed_with_other_groups_says_so(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same bits read through other --groups (or none) hash as other rows: the refusal said
    only that the file "holds other rows than the run trained on", which it does not."""
    from made.cli import main

    groups = data_dir / "groups" / "mushrooms.json"
    args = ["train", "--dataset", str(data_dir / "mushrooms.npz"), "--hidden", "8", "--max-epochs", "1"]
    args += ["--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--groups", str(groups)]) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"or groups them otherwise (--groups: {groups} in the run, none asked)" in err, err


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(data10: Path, tmp_path: Path) -> None:
    """A kill after the first epoch was logged but before its checkpoint leaves a log row and
    no checkpoint: the new start must not log that epoch twice."""
    cfg = _config(data10, max_epochs=3)
    _train(cfg, tmp_path / "reference")
    trainer = Trainer(cfg, tmp_path / "killed")
    trainer.prepare_run_dir()
    first_row = (tmp_path / "reference" / HISTORY).read_text().splitlines()[0]
    (tmp_path / "killed" / HISTORY).write_text(first_row + "\n")
    trainer.run(progress=False)
    assert _history(tmp_path / "killed") == _history(tmp_path / "reference")
    assert_same_tensors(tmp_path / "killed" / BEST, tmp_path / "reference" / BEST)


def test_a_finished_run_is_not_trained_again(finished_run: tuple[TrainConfig, Path]) -> None:
    cfg, run_dir = finished_run
    before = (run_dir / HISTORY).read_text(), _tensors(run_dir / CHECKPOINT)
    metrics = _train(cfg, run_dir)
    assert (run_dir / HISTORY).read_text() == before[0]
    for name, value in _tensors(run_dir / CHECKPOINT).items():
        assert torch.equal(value, before[1][name])
    assert metrics["epochs"] == 6


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_result(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "chain20.npz", 20, seed=5, n=3000)
    run_dir = tmp_path / "killed"
    options = dict(hidden=32, masks=2, order_agnostic=True, seed=3, max_epochs=14, **STEADY_RUN)
    args = made_train_args(data, run_dir, **options)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(MADE_BIN), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while checkpoint_epoch(run_dir / CHECKPOINT) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint_epoch(run_dir / CHECKPOINT)
    assert 2 <= killed_at < 14
    # whatever the kill interrupted, both checkpoint files are whole
    load_tensors(run_dir / CHECKPOINT)
    load_tensors(run_dir / BEST)
    # as if the kill had also cut a write short: its temporary file is left behind
    (run_dir / f".{CHECKPOINT}.k1ll3d.tmp").write_bytes(b"half a checkpoint")

    resumed = subprocess.run([str(MADE_BIN), *args], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after epoch {killed_at}" in resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])["test_nll"] > 0

    # the same run, never interrupted, in this process
    reference = tmp_path / "reference"
    cfg = retrain_in_one_thread(run_dir, reference)
    assert cfg.model.n_masks == 2 and cfg.model.order_agnostic and cfg.max_epochs == 14

    assert_same_tensors(run_dir / BEST, reference / BEST)
    assert_same_tensors(run_dir / CHECKPOINT, reference / CHECKPOINT)
    assert _nll_metrics(run_dir) == _nll_metrics(reference)
    assert _history(run_dir) == _history(reference)
    assert list(run_dir.glob(".*.tmp")) == []
    assert list(run_dir.glob("*.tmp")) == []


WRITER = """
import sys
from made.io.atomic import atomic_write_bytes
path, versions = sys.argv[1], [bytes([65 + i]) * (4 << 20) for i in range(2)]
atomic_write_bytes(path, versions[0])
print("ready", flush=True)
i = 0
while True:
    i += 1
    atomic_write_bytes(path, versions[i % 2])
"""


def test_a_file_killed_mid_rewrite_is_always_whole(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites a 4 MiB file in a loop: the file is always one whole
    version (the kill lands in a write most of the time)."""
    target = tmp_path / "state.bin"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        content = target.read_bytes()
        assert len(content) == 4 << 20
        assert content in (b"A" * (4 << 20), b"B" * (4 << 20))


def _gray_data(tmp_path: Path, n: int = 300, d: int = 10) -> tuple[Path, Path, np.ndarray]:
    """Binary splits drawn from grayscale 'images' (d pixels), and the .npz of those images."""
    rng = np.random.default_rng(9)
    images = (rng.random((n + 100, d)) ** 2 * 255).astype(np.uint8)
    x = (rng.random(images.shape) < images / 255.0).astype(np.uint8)
    data = tmp_path / "gray_binary.npz"
    np.savez(data, train=x[:n], valid=x[n : n + 50], test=x[n + 50 :])
    gray = tmp_path / "gray.npz"
    np.savez(gray, train_images=images)
    return data, gray, images[:n] / 255.0


def test_rebinarize_trains_each_epoch_on_a_fresh_draw_of_the_images(tmp_path: Path) -> None:
    data, gray, p = _gray_data(tmp_path)
    cfg = _config(data, rebinarize=str(gray), max_epochs=3)
    trainer = Trainer(cfg, tmp_path / "run")
    gen = torch.Generator().manual_seed(0)
    draws = np.stack([trainer.epoch_rows(gen).numpy() for _ in range(200)])
    assert set(np.unique(draws)) == {0.0, 1.0}
    assert not np.array_equal(draws[0], draws[1])  # a new draw each epoch
    # of Bernoulli(intensity/255): every cell's frequency within 5.5 standard errors (3000 cells)
    se = np.sqrt(p * (1 - p) / len(draws))
    assert (np.abs(draws.mean(axis=0) - p) <= 5.5 * se + 1e-12).all()
    static = Trainer(_config(data), tmp_path / "static").epoch_rows(gen).numpy()
    assert np.array_equal(static, np.load(data)["train"])  # without it: the split as given

    metrics = _train(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / CONFIG).read_text())["rebinarize"] == str(gray)
    # the random stream that draws the rows is checkpointed: a resumed run ends where one run ends
    _train(_config(data, rebinarize=str(gray), max_epochs=1), tmp_path / "split")
    split = _train(cfg, tmp_path / "split")
    assert_same_tensors(tmp_path / "run" / BEST, tmp_path / "split" / BEST)
    assert {k: split[k] for k in NLL_FIELDS} == {k: metrics[k] for k in NLL_FIELDS}
    # the images may have moved; rebinarization cannot be switched off in a resumed run
    moved = tmp_path / "moved.npz"
    moved.write_bytes(gray.read_bytes())
    _train(_config(data, rebinarize=str(moved), max_epochs=4), tmp_path / "split")
    with pytest.raises(CheckpointError, match="rebinarize: .* in the run, null asked"):
        _train(_config(data, max_epochs=5), tmp_path / "split")


def test_rebinarize_with_images_of_another_split_is_one_line_exit_2(tmp_path: Path) -> None:
    data, gray, _ = _gray_data(tmp_path)
    images = np.load(gray)["train_images"]
    np.savez(tmp_path / "shuffled.npz", train_images=images[::-1].copy())
    result = run_made(
        *made_train_args(
            data,
            tmp_path / "run",
            rebinarize=tmp_path / "shuffled.npz",
            hidden=8,
            max_epochs=1,
            no_progress=True,
        ),
        env=os.environ,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not the images it was drawn from" in result.stderr
    assert not (tmp_path / "run").exists()


# --- the official MADE code's settings (issue 13) ---------------------------------------------------


OFFICIAL: dict[str, Any] = dict(
    optimizer="adadelta",
    lr=1.0,
    rho=0.95,
    eps=1e-5,
    resample_masks=True,
    valid_masks=2,
    model=dict(
        hidden=[16],
        n_masks=3,
        order_agnostic=True,
        connectivity_agnostic=True,
        direct=True,
        activation="tanh",
        init="orthogonal",
    ),
)


def test_official_settings_are_recorded_and_a_resumed_run_matches_one_run(data10: Path, tmp_path: Path) -> None:
    """tanh, orthogonal, adadelta, a fresh mask per update: recorded in config.json, and the mask
    draws come from the checkpointed random stream, so a resumed run is the uninterrupted one."""
    whole = _train(_config(data10, max_epochs=6, **OFFICIAL), tmp_path / "whole")
    _train(_config(data10, max_epochs=3, **OFFICIAL), tmp_path / "split")
    split = _train(_config(data10, max_epochs=6, **OFFICIAL), tmp_path / "split")
    assert_same_tensors(tmp_path / "whole" / CHECKPOINT, tmp_path / "split" / CHECKPOINT)
    assert {k: split[k] for k in NLL_FIELDS} == {k: whole[k] for k in NLL_FIELDS}
    assert _history(tmp_path / "whole") == _history(tmp_path / "split")

    config = json.loads((tmp_path / "whole" / CONFIG).read_text())
    assert (config["model"]["activation"], config["model"]["init"]) == ("tanh", "orthogonal")
    assert (config["optimizer"], config["lr"], config["rho"], config["eps"]) == ("adadelta", 1.0, 0.95, 1e-5)
    assert (config["resample_masks"], config["valid_masks"]) == (True, 2)
    tensors, meta = load_tensors(tmp_path / "whole" / CHECKPOINT)
    assert any(name.endswith(".acc_delta") for name in tensors)  # Adadelta's accumulators
    assert meta["optimizer"]["param_groups"][0]["rho"] == 0.95
    valids = [v for _, _, v in _history(tmp_path / "whole")]
    assert min(valids[1:]) < valids[0] - 0.05  # it learns


def test_each_epoch_validates_on_the_first_masks_and_the_final_scores_on_all(data10: Path, tmp_path: Path) -> None:
    from training.train import build_model, nll_per_example

    cfg = _config(data10, max_epochs=1, **OFFICIAL)
    metrics = _train(cfg, tmp_path / "run")
    model = build_model(cfg.model)
    model.load_state_dict(_tensors(tmp_path / "run" / BEST))
    valid = load_dataset(str(data10)).split("valid")
    first_two = float(nll_per_example(model, valid, None, first_masks=2).mean())
    every = float(nll_per_example(model, valid, None).mean())
    assert _history(tmp_path / "run")[0][2] == pytest.approx(first_two, abs=1e-9)
    assert metrics["valid_nll"] == pytest.approx(every, abs=1e-9)
    assert abs(first_two - every) > 1e-6  # the two differ: the test tells them apart


def test_a_fresh_mask_per_update_trains_the_network_for_masks_it_never_stored(data10: Path, tmp_path: Path) -> None:
    """Scored under 16 masks drawn afresh, a model trained with a new mask per update is close
    to its stored masks; one trained on its 2 stored masks only is far worse under new ones."""
    from training.train import build_model

    x = torch.from_numpy(load_dataset(str(data10)).split("valid")).float()
    gaps = {}
    for resample in (False, True):
        cfg = _config(
            data10,
            max_epochs=12,
            resample_masks=resample,
            model=dict(hidden=[32], n_masks=2, order_agnostic=True, connectivity_agnostic=True),
        )
        _train(cfg, tmp_path / str(resample))
        model = build_model(cfg.model)
        model.load_state_dict(_tensors(tmp_path / str(resample) / BEST))
        assert isinstance(model, MADE)
        with torch.no_grad():
            stored = np.mean([-model.log_prob(x, k).mean().item() for k in range(2)])
            fresh = np.mean([-model.log_prob(x, masks=model.draw_masks(10_000 + s)).mean().item() for s in range(16)])
        gaps[resample] = fresh - stored
    assert gaps[True] < 0.5 * gaps[False], gaps


def test_a_run_recorded_before_the_new_options_resumes(data10: Path, tmp_path: Path) -> None:
    """A config.json without activation, init, eps, rho, resample_masks or valid_masks (written
    before they existed) reads as their defaults, which that run trained with: it resumes."""
    _train(_config(data10, max_epochs=4), tmp_path / "whole")
    _train(_config(data10, max_epochs=2), tmp_path / "old")
    path = tmp_path / "old" / CONFIG
    old = json.loads(path.read_text())
    for key in ("eps", "rho", "resample_masks", "valid_masks"):
        del old[key]
    for key in ("activation", "init"):
        del old["model"][key]
    path.write_text(json.dumps(old, indent=2))
    _train(_config(data10, max_epochs=4), tmp_path / "old")
    assert_same_tensors(tmp_path / "whole" / CHECKPOINT, tmp_path / "old" / CHECKPOINT)
    # another activation is another run, refused as every other change of configuration is
    with pytest.raises(CheckpointError, match="another --out"):
        _train(_config(data10, max_epochs=4, model=dict(hidden=[16], activation="tanh")), tmp_path / "old")


def test_plain_sgd_takes_steps_of_lr_times_the_gradient(data10: Path, tmp_path: Path) -> None:
    from training.train import build_model, build_optimizer

    cfg = _config(data10, optimizer="sgd", lr=0.01)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0
    x = torch.from_numpy(load_dataset(str(data10)).split("train")[:50]).float()
    before = [p.detach().clone() for p in model.parameters()]
    loss = -model.log_prob(x).mean()
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    optimizer.step()
    for b, g, p in zip(before, grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), b - 0.01 * g)
    _train(_config(data10, optimizer="sgd", lr=0.5, max_epochs=6), tmp_path / "sgd")
    valids = [v for _, _, v in _history(tmp_path / "sgd")]
    assert valids[-1] < valids[0] - 0.1  # it learns


def test_a_finished_run_trained_on_and_killed_keeps_no_stale_metrics(
    data10: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run rerun with a longer --max-epochs is unfinished until it ends: a kill
    during it must not leave the first finish's metrics.json beside newer best weights, which
    made export would ship as that version's metrics (test_nll of other weights)."""
    from training import train as train_module
    from training.export import load_run

    run_dir = tmp_path / "run"
    _train(_config(data10, max_epochs=2), run_dir)
    assert (run_dir / METRICS).exists()

    def killed_at_epoch_4(bars: Any, max_epochs: int, epoch: int, *rest: Any) -> None:
        if epoch == 4:  # after epoch 4's checkpoint, as a kill then
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "log_epoch", killed_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        _train(_config(data10, max_epochs=6), run_dir)
    monkeypatch.undo()
    _, meta = load_tensors(run_dir / CHECKPOINT)
    assert meta["progress"]["finished"] is False and meta["progress"]["epoch"] == 4
    assert not (run_dir / METRICS).exists()
    with pytest.raises(CheckpointError, match="metrics.json not found"):
        load_run(run_dir)  # made export refuses the unfinished run
    # the same command again finishes the run, and its metrics are the finished run's
    assert _train(_config(data10, max_epochs=6), run_dir)["epochs"] == 6
    assert json.loads((run_dir / METRICS).read_text())["epochs"] == 6
