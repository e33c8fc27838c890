"""Training cost (issue 26): the grouped column heads (training/table_heads.py) score what the
per-column reference does, gradients included; small tables get a recipe that makes enough
updates; a run still improving at its last epoch says so."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_table_made

from made.core.schema import ABSENT, Column, Schema
from made.io.tables import TableDataset
from training.recipe import small_data_recipe, still_improving
from training.table_model import TableMADE, TableMADEConfig
from training.train import TrainConfig, Trainer, nll_per_example

# every kind of head: binary, categoricals of different sizes, numbers continuous and binned,
# log-transformed, nullable, bounded on both sides, on one side (a log column's lower edge is
# -inf in y) and unbounded
MIXED = Schema(
    (
        Column("b", "binary", ("no", "yes")),
        Column("k3", "categorical", ("a", "b", "c")),
        Column("n", "numeric", transform="none", loc=1.0, scale=2.0, decimals=1, components=3, lower=-5.0, upper=8.0),
        Column("k5", "categorical", ("p", "q", "r", "s", "t")),
        Column("w", "numeric", transform="log", loc=0.5, scale=0.7, decimals=2, nullable=True, components=2, lower=0.0),
        Column("g", "numeric", transform="none", loc=0.0, scale=1.0, decimals=None, components=4),
        Column("h", "numeric", transform="none", loc=0.0, scale=1.0, decimals=None, components=4, upper=6.0),
        Column("m", "numeric", transform="none", loc=0.0, scale=3.0, decimals=0, components=3),
    )
)


def _values(schema: Schema, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(schema)))
    for j, col in enumerate(schema.columns):
        if col.kind == "numeric":
            v = np.exp(rng.normal(0.5, 0.7, n)) if col.transform == "log" else rng.uniform(-4.0, 5.0, n)
            if col.decimals is not None:
                v = np.round(v, col.decimals)
            if col.nullable:
                v[rng.random(n) < 0.3] = ABSENT
            out[:, j] = v
        else:
            out[:, j] = rng.integers(0, len(col.levels), n)
    return out


def _model(schema: Schema, seed: int = 0) -> TableMADE:
    return random_table_made(schema, masks=3, seed=seed)


def test_grouped_heads_give_the_per_column_loss_and_gradients() -> None:
    model = _model(MIXED)
    assert model.heads.reference == []  # every column of MIXED is grouped
    values = torch.from_numpy(_values(MIXED, 300, seed=1))
    for k in range(model.n_masks):
        grads = []
        for score in (model.column_logliks, model.column_logliks_per_column):
            model.zero_grad()
            ll = score(values, k)
            (-ll.sum(dim=1).mean()).backward()
            grads.append((ll.detach(), [p.grad.clone() for p in model.parameters()]))
        (grouped, g_grads), (loop, l_grads) = grads
        assert torch.isfinite(loop).all()
        np.testing.assert_allclose(grouped.numpy(), loop.numpy(), rtol=0, atol=1e-6)
        for a, b in zip(g_grads, l_grads, strict=True):
            assert torch.isfinite(a).all()
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_rows_encoded_once_score_as_the_values_do() -> None:
    model = _model(MIXED)
    values = _values(MIXED, 250, seed=2)
    encoded = model.encode(values)
    order = torch.randperm(250, generator=torch.Generator().manual_seed(0))
    batch = encoded.take(order).slice(100, 200)
    direct = model.log_prob(torch.from_numpy(values)[order[100:200]], 1)
    np.testing.assert_allclose(model.log_prob(batch, 1).detach().numpy(), direct.detach().numpy(), atol=1e-6)
    # the mixture over masks, chunked, from values or from encoded rows
    np.testing.assert_allclose(
        nll_per_example(model, values, None, batch=64), nll_per_example(model, encoded, None, batch=64), atol=1e-6
    )


def test_a_column_the_groups_do_not_know_is_scored_by_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import table_heads

    monkeypatch.setattr(table_heads, "groupable", lambda col: col.kind != "numeric")
    model = _model(MIXED)
    assert model.heads.reference == [j for j, c in enumerate(MIXED.columns) if c.kind == "numeric"]
    values = torch.from_numpy(_values(MIXED, 120, seed=3))
    with torch.no_grad():
        np.testing.assert_allclose(
            model.column_logliks(values, 0).numpy(), model.column_logliks_per_column(values, 0).numpy(), atol=1e-6
        )


def test_the_recipe_gives_a_small_table_enough_updates_and_leaves_large_ones_as_they_were() -> None:
    bs, epochs, patience = small_data_recipe(124)
    per_epoch = math.ceil(124 / bs)
    assert per_epoch >= 10  # not the 2 updates an epoch of batches of 100
    assert per_epoch * epochs >= 10_000
    assert per_epoch * patience >= 1_000
    assert small_data_recipe(43152) == (100, 200, 20)
    assert small_data_recipe(124, batch_size=31, max_epochs=7, patience=3) == (31, 7, 3)  # given: kept


def _small_table(n: int, seed: int = 0) -> TableDataset:
    schema = Schema(
        (
            Column("k", "categorical", ("a", "b", "c")),
            Column("x", "numeric", transform="none", loc=0.0, scale=1.0, decimals=1, components=2),
        )
    )
    rng = np.random.default_rng(seed)

    def rows(m: int) -> np.ndarray:
        k = rng.integers(0, 3, m)
        return np.stack([k, np.round(k * 2.0 + rng.normal(0, 0.3, m), 1)], axis=1)

    return TableDataset("small", "small", schema, {"train": rows(n), "valid": rows(40), "test": rows(40)})


def _config(data: TableDataset, **kw: int) -> TrainConfig:
    model = TableMADEConfig(columns=data.schema.to_json(), hidden=[8], n_masks=1)
    return TrainConfig(dataset="small", model=model, **kw)  # type: ignore[arg-type]


def test_a_small_table_left_to_the_recipe_trains_in_small_batches(tmp_path: Path) -> None:
    data = _small_table(124)
    trainer = Trainer(_config(data, batch_size=0, max_epochs=2, patience=0), tmp_path / "run", data)
    assert (trainer.cfg.batch_size, trainer.cfg.max_epochs, trainer.cfg.patience) == (12, 2, 91)
    trainer.run(progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["batch_size"] == 12  # the run records what it trained with


def test_a_run_still_improving_at_its_last_epoch_warns_and_records_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _small_table(124)
    with caplog.at_level(logging.WARNING, logger="made.train"):
        metrics = Trainer(_config(data, batch_size=12, max_epochs=3, lr=1e-2), tmp_path / "run", data).run(False)
    assert metrics["best_epoch"] == metrics["epochs"] == 3  # a fresh model on learnable data improves
    assert metrics["still_improving"] is True
    assert "train longer with --max-epochs 6" in metrics["warning"]
    assert any("still improving" in r.getMessage() for r in caplog.records)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["warning"] == metrics["warning"]


def test_no_warning_when_the_best_epoch_came_before_the_last() -> None:
    assert still_improving(best_epoch=4, epochs=10) is None
    assert still_improving(best_epoch=10, epochs=10) is not None
