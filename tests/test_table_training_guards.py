"""Training a table model never ends in NaN: a nullable numeric column whose bounds exclude the
placeholder its absent cells used to be scored at trains to a finite NLL (training/table_heads.py,
training/table_model.py), and a run whose loss does become non-finite stops with one line, exit 2,
leaving the checkpoint of its last finite epoch as it was (training/train.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_splits
from helpers import checkpoint_epoch, made_train_args, run_made

from made.core.errors import ConfigError
from made.core.schema import ABSENT
from made.io.tables import load_table_dataset
from training.checkpoint import BEST, CHECKPOINT, load_tensors
from training.table_heads import interval_log_mass
from training.table_model import TableMADE, TableMADEConfig
from training.train import HISTORY, METRICS, TrainConfig, Trainer


def _blanks_table(folder: Path, cell: str = "normal") -> Path:
    """'a' a coin, 'b' a number with 1 decimal and 5% empty cells: N(50, 10) (bounds about
    [7.6, 88.9], far from 1.0), or the constant 5.5 (bounds [5.5, 5.5])."""
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(300):
        value = f"{rng.normal(50, 10):.1f}" if cell == "normal" else "5.5"
        rows.append([str(int(rng.random() < 0.5)), "" if rng.random() < 0.05 else value])
    return write_splits(folder, "blanks", ["a", "b"], rows)


def _config(path: Path, **overrides: object) -> TrainConfig:
    data = load_table_dataset(str(path))
    base: dict[str, object] = dict(max_epochs=3, batch_size=24, lr=1e-2, patience=10)
    base.update(overrides)
    return TrainConfig(
        dataset=str(path),
        model=TableMADEConfig(columns=data.schema.to_json(), hidden=[16]),
        **base,  # type: ignore[arg-type]
    )


def _train(path: Path, run_dir: Path, **overrides: object) -> dict[str, object]:
    return Trainer(_config(path, **overrides), run_dir).run(progress=False)


def test_an_empty_bin_has_mass_zero_and_no_nan_gradient_in_the_branch_a_where_drops() -> None:
    """A bin cut to nothing by the bounds (width 0) is log 0 = -inf; dropped by torch.where, it
    must send back a gradient of 0, not inf * 0 = NaN into the weights."""
    mu = torch.zeros(3, 2, requires_grad=True)
    log_s = torch.zeros(3, 2, requires_grad=True)
    lo = torch.tensor([[0.0], [0.5], [-math.inf]])
    hi = torch.tensor([[1.0], [0.5], [0.0]])
    width = torch.tensor([[1.0], [0.0], [math.inf]])
    mass = interval_log_mass(lo, hi, width, mu, log_s)
    assert torch.isfinite(mass[0]).all() and (mass[1] == -math.inf).all() and torch.isfinite(mass[2]).all()
    dropped = torch.tensor([[False], [True], [False]])
    torch.where(dropped, 0.0, mass).sum().backward()
    assert mu.grad is not None and log_s.grad is not None
    assert torch.isfinite(mu.grad).all() and torch.isfinite(log_s.grad).all()
    assert (mu.grad[1] == 0).all() and (log_s.grad[1] == 0).all()


def test_a_nullable_column_whose_bounds_exclude_1_trains_to_a_finite_nll(tmp_path: Path) -> None:
    """The reported run: 'b' N(50, 10), 5% empty, bounds about [7.6, 88.9]; every epoch logged
    `train nan valid nan` and metrics.json held NaN, exit 0."""
    path = _blanks_table(tmp_path)
    metrics = _train(path, tmp_path / "run")
    for key in ("valid_nll", "test_nll"):
        assert math.isfinite(float(metrics[key])), metrics  # type: ignore[arg-type]
    history = (tmp_path / "run" / HISTORY).read_text()
    assert "NaN" not in history and len(history.splitlines()) == 3


def test_a_constant_column_with_blanks_trains_and_its_one_value_has_probability_1_when_present(
    tmp_path: Path,
) -> None:
    """'b' is 5.5 or empty (bounds [5.5, 5.5]): its one bin is the whole truncation interval,
    so a present 5.5 costs only the log-odds of being present."""
    path = _blanks_table(tmp_path, cell="constant")
    data = load_table_dataset(str(path))
    b = data.schema.columns[1]
    assert (b.lower, b.upper, b.nullable) == (5.5, 5.5, True)
    metrics = _train(path, tmp_path / "run")
    assert math.isfinite(float(metrics["test_nll"])), metrics  # type: ignore[arg-type]

    config = _config(path).model
    assert isinstance(config, TableMADEConfig)
    model = TableMADE(config)
    model.load_state_dict(load_tensors(tmp_path / "run" / BEST)[0])
    rows = torch.tensor([[0.0, 5.5], [1.0, 5.5], [0.0, ABSENT], [1.0, ABSENT]], dtype=torch.float64)
    with torch.no_grad():
        ll = model.column_logliks(rows)[:, 1]
    present, absent = ll[:2].exp(), ll[2:].exp()
    assert torch.allclose(present + absent, torch.ones(2), atol=1e-5)
    assert (present > 0.8).all()  # 95% of the training cells are present


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path: Path) -> None:
    """Epoch 1 at lr 1e-2, epoch 2 at 1e28 (lr_gamma): its first steps blow the weights up and
    the loss becomes NaN. The run stops there with one ConfigError naming the epoch and step;
    checkpoint and best weights stay those of epoch 1, the same as a run of 1 epoch."""
    path = _blanks_table(tmp_path)
    _train(path, tmp_path / "one", max_epochs=1)
    with pytest.raises(ConfigError, match=r"training loss became (nan|inf|-inf) at epoch 2, step \d+") as err:
        _train(path, tmp_path / "run", lr_step=1, lr_gamma=1e30)
    assert "\n" not in str(err.value) and "keeps the checkpoint of epoch 1" in str(err.value)
    assert checkpoint_epoch(tmp_path / "run" / CHECKPOINT) == 1
    assert not (tmp_path / "run" / METRICS).exists()
    for name in (CHECKPOINT, BEST):
        mine, one = load_tensors(tmp_path / "run" / name)[0], load_tensors(tmp_path / "one" / name)[0]
        for key, value in one.items():
            if key.startswith("model.") or name == BEST:
                assert torch.equal(mine[key], value), (name, key)
                assert torch.isfinite(value).all()


def test_made_train_that_diverges_exits_2_with_one_line(tmp_path: Path) -> None:
    """--lr 1e30 through the CLI: exit 2 and one line saying where, not NaN metrics and exit 0."""
    path = _blanks_table(tmp_path)
    out = tmp_path / "run"
    done = run_made(*made_train_args(path, out, hidden=16, max_epochs=2, lr=1e30, no_progress=True))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("made train: error: training diverged: the training loss became") and "at epoch 1" in last
    assert not (out / METRICS).exists()


def test_absent_cells_are_scored_at_a_value_inside_the_bounds(tmp_path: Path) -> None:
    """The placeholder of an absent cell (a present value whose result torch.where drops) has a
    bin of positive width inside the bounds, so its terms are finite before any where."""
    path = _blanks_table(tmp_path)
    config = _config(path).model
    assert isinstance(config, TableMADEConfig)
    model = TableMADE(config)
    (group,) = model.heads.numeric
    rows = model.encode(np.array([[0.0, ABSENT], [1.0, 50.0]]))
    lo, hi, width = (rows.tensors[f"{group.key}.{k}"][:, 0] for k in ("lo", "hi", "width"))
    b_lo, b_hi, _ = group.bounds
    assert (width > 0).all() and (lo >= b_lo).all() and (hi <= b_hi).all()


def test_image_shape_of_a_table_is_refused_by_train_and_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--image-shape 1,2 on a table of two columns was kept in config.json by made train and
    dropped by made export (the manifest's image_shape stayed null), without a word: refused."""
    from made.cli import main

    path = _blanks_table(tmp_path)
    args = [*made_train_args(path, tmp_path / "run", hidden=8, max_epochs=1, threads=1, no_progress=True)]
    assert main([*args, "--image-shape", "1,2"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "made train: error: --image-shape is for bit data (pixels); a model of a table's columns has no image"
    )
    assert not (tmp_path / "run").exists()
    assert main(args) == 0
    capsys.readouterr()
    export = ["export", str(tmp_path / "run"), "--store", str(tmp_path / "store"), "--name", "t"]
    assert main([*export, "--image-shape", "1,2"]) == 2
    assert "--image-shape is for models of bits" in capsys.readouterr().err
    assert not (tmp_path / "store" / "t").exists()
