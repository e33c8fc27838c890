"""Physical bounds (issue 26 item 1): a numeric column's inferred bounds truncate its mixture, so
that the model gives no probability outside them: evidence outside is refused (422 naming the
column and the bounds), the truncated head sums (integrates) to 1 over them, draws, imputations
and conditional samples stay inside, and training's torch likelihood is the serving one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from conftest import write_splits

from made.core.bounds import value_bounds
from made.core.errors import DataError
from made.core.heads import column_loglik, log_mass_in_bounds, mixture, sample_column
from made.core.schema import ABSENT, Column, Schema
from made.store.versions import open_model
from service.core.records import parse_records
from service.engine.table_engine import TableEngine
from service.settings import Settings
from service.testing import in_process, providers_under_test


def _rows(n: int, seed: int) -> list[list[str]]:
    """A category, a positive skewed amount (2 decimals), a score that goes negative (1 decimal)
    and a continuous rate, each depending on the category."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, n)
    amount = np.exp(rng.normal(1.0 + 0.6 * kind, 0.8))
    score = 8 * kind + rng.normal(0, 3, n)
    rate = rng.beta(2 + kind, 5, n)
    return [
        [["a", "b", "c"][k], f"{m:.2f}", f"{s:.1f}", f"{r:.9f}"]
        for k, m, s, r in zip(kind, amount, score, rate, strict=True)
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny table model trained here on the table above (with its inferred, bounded schema)."""
    from made.io.tables import load_table_dataset
    from training.export import export_run
    from training.table_model import TableMADEConfig
    from training.train import TrainConfig, Trainer

    base = tmp_path_factory.mktemp("bounds")
    path = write_splits(base, "shop", ["kind", "amount", "score", "rate"], _rows(1500, 3))
    data = load_table_dataset(str(path))
    cfg = TrainConfig(
        dataset=str(path),
        model=TableMADEConfig(columns=data.schema.to_json(), hidden=[24], n_masks=2, order_agnostic=True, direct=True),
        max_epochs=4,
        batch_size=50,
        lr=1e-2,
        patience=4,
    )
    Trainer(cfg, base / "run", data).run(progress=False)
    export_run(base / "run", base / "store", "shop")
    return base / "store"


@pytest.fixture(scope="module")
def engine(store: Path) -> TableEngine:
    return TableEngine(open_model(store, "shop"), providers_under_test(), threads=1)


def _inside(schema: Schema, values: np.ndarray) -> None:
    for j, col in enumerate(schema.columns):
        if col.kind != "numeric":
            continue
        lo, hi = value_bounds(col)
        v = values[:, j]
        assert not np.isnan(v).any() and not (v == ABSENT).any(), col.name  # never absent, never unknown
        assert (v >= lo).all() and (v <= hi).all(), (col.name, lo, hi, v.min(), v.max())


def test_every_inferred_numeric_column_is_bounded_and_non_negative_where_the_data_are(engine: TableEngine) -> None:
    cols = {c.name: c for c in engine.schema.columns}
    assert all(c.bounded for c in cols.values() if c.kind == "numeric")
    assert cols["amount"].lower == 0.0 and cols["amount"].transform == "log"
    assert cols["rate"].lower == 0.0 and cols["rate"].decimals is None
    assert cols["score"].lower is not None and cols["score"].lower < 0
    assert cols["amount"].upper is not None and cols["amount"].upper > 0


def test_evidence_outside_the_bounds_is_refused_naming_the_column_and_the_bounds(store: Path) -> None:
    schema = open_model(store, "shop").schema
    col = schema.columns[schema.index("score")]
    with pytest.raises(DataError, match=r"given\.score: 1000000 is outside this column's bounds \[-"):
        col.encode_cell(1e6, "given", label="given.score")

    async def ask() -> list[Any]:
        async with in_process(Settings(store=store)) as client:
            await client.wait_ready()
            out = []
            for path, body in (
                ("/logprob", {"model": "shop", "records": [{"kind": "a", "amount": -3.0, "score": 1.0, "rate": 0.2}]}),
                ("/sample", {"model": "shop", "n": 2, "given": {"score": 1e10}}),
                ("/impute", {"model": "shop", "records": [{"rate": 7.5}]}),
            ):
                r = await client.http.post(path, json=body)
                out.append((r.status_code, r.text))
            return out

    answers = anyio.run(ask)
    for (status, text), name in zip(answers, ("amount", "score", "rate"), strict=True):
        assert status == 422, text
        assert name in text and "outside this column's bounds [" in text, text


def _column(transform: str, decimals: int | None, lower: float | None, upper: float | None) -> Column:
    return Column(
        "x",
        "numeric",
        transform=transform,
        loc=0.8,
        scale=0.7,
        decimals=decimals,
        components=3,
        lower=lower,
        upper=upper,
    )


@pytest.mark.parametrize(
    "transform,decimals,lower,upper",
    [
        ("none", 1, -0.5, 2.5),
        ("log", 0, 0.0, 40.0),
        ("log", 2, 0.55, 3.0),
        ("none", None, -1.0, 2.0),
        ("log", None, 0.1, 9.0),
    ],
)
def test_the_truncated_head_sums_to_one_over_the_bounds(
    transform: str, decimals: int | None, lower: float, upper: float
) -> None:
    """Over the bins of every value inside the bounds (or by quadrature for a density), for
    mixtures with much of their mass outside, and equal to the untruncated head over its mass."""
    col = _column(transform, decimals, lower, upper)
    free = replace(col, lower=None, upper=None)
    rng = np.random.default_rng(4)
    p = rng.normal(0.0, 2.0, (5, col.n_out))
    lo, hi = value_bounds(col)
    for i in range(len(p)):
        if decimals is not None:
            grid = np.round(np.arange(lo, hi + 1e-9, 10.0**-decimals), decimals)
            total = np.exp(column_loglik(col, np.repeat(p[i : i + 1], len(grid), 0), grid)).sum()
        else:
            grid = np.linspace(lo, hi, 200_001)
            total = np.trapezoid(np.exp(column_loglik(col, np.repeat(p[i : i + 1], len(grid), 0), grid)), grid)
        assert total == pytest.approx(1.0, abs=1e-6)
        _, log_w, mu, log_s = mixture(col, np.repeat(p[i : i + 1], len(grid), 0))
        inner = grid[1:-1]  # bins cut by the bounds differ; the others are the untruncated ones, rescaled
        want = column_loglik(free, np.repeat(p[i : i + 1], len(inner), 0), inner) - log_mass_in_bounds(
            col, log_w[: len(inner)], mu[: len(inner)], log_s[: len(inner)]
        )
        np.testing.assert_allclose(column_loglik(col, np.repeat(p[i : i + 1], len(inner), 0), inner), want, rtol=1e-9)


def test_draws_follow_the_truncated_head_even_with_the_mass_far_outside() -> None:
    col = _column("none", 1, 0.0, 2.0)
    p = np.zeros((20_000, col.n_out))
    p[:, 3:6] = 6.0  # every component's mean far above the upper bound (y = 6: value 5)
    cells = sample_column(col, p, np.random.default_rng(0).random((len(p), 3)))
    assert cells.min() >= 0.0 and cells.max() <= 2.0
    levels, counts = np.unique(cells, return_counts=True)
    expected = np.exp(column_loglik(col, p[: len(levels)], levels))
    np.testing.assert_allclose(counts / len(cells), expected, atol=0.01)


def test_samples_imputations_and_given_stay_inside_the_bounds(engine: TableEngine) -> None:
    schema = engine.schema
    _inside(schema, engine.sample(2000, seed=1))
    cols = {c.name: c for c in schema.columns}
    top = value_bounds(cols["score"])[1]
    for record in ({"kind": "c"}, {"score": top}, {"amount": value_bounds(cols["amount"])[1], "kind": "a"}):
        values = parse_records(schema, [record])
        result = engine.impute(values, n_samples=200, seed=2, n_importance=300)
        _inside(schema, result.samples[0])


def test_the_torch_likelihood_is_the_numpy_one_with_bounds(store: Path, engine: TableEngine) -> None:
    """The trained network's torch log-likelihoods (what training minimised) equal the serving
    heads' on its own outputs, bounded columns included, for every mask."""
    import json

    from made.io.tables import load_table_dataset
    from training.train import TrainConfig, build_model

    run = store.parent / "run"
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    model = build_model(cfg.model)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run / "best.safetensors")))
    schema = engine.schema
    assert any(c.bounded for c in schema.columns)
    values = load_table_dataset(cfg.dataset, schema=schema).split("test")
    with torch.no_grad():
        for k in range(model.n_masks):
            params = model(model.inputs(torch.from_numpy(values)), k).double().numpy()
            torch_ll = model.column_logliks(torch.from_numpy(values), k).numpy()
            for j, col in enumerate(schema.columns):
                p = params[:, int(schema.out_offsets[j]) : int(schema.out_offsets[j + 1])]
                np.testing.assert_allclose(column_loglik(col, p, values[:, j]), torch_ll[:, j], rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize(("n", "share"), [(36, 0.5), (900, 0.1), (40_000, 0.015)])
def test_the_inferred_margin_is_3_over_sqrt_n_of_the_range_at_every_size(n: int, share: float) -> None:
    """One rule at every size (made.io.tables.numeric_bounds): the training range widened by
    3/sqrt(n) of it on either side, 50% at 36 rows, 10% at 900, 1.5% at 40,000."""
    from made.io.tables import BOUND_MARGIN, numeric_bounds

    assert BOUND_MARGIN / np.sqrt(n) == pytest.approx(share)
    values = np.linspace(-100.0, 100.0, n)  # range 200
    lower, upper = numeric_bounds(values, None)
    assert (lower, upper) == pytest.approx((-100.0 - 200 * share, 100.0 + 200 * share))


def test_inferred_bounds_stay_non_negative_and_move_out_to_the_resolution() -> None:
    from made.io.tables import numeric_bounds

    # 40,000 values in [1, 101]: a margin of 1.5 -> [-0.5, 102.5], but no value is negative
    values = np.linspace(1.0, 101.0, 40_000)
    assert numeric_bounds(values, 0) == (0.0, 103.0)  # 102.5 outwards to a whole number
    assert numeric_bounds(values - 1.0, 1) == (0.0, 101.5)
    assert numeric_bounds(values - 2.0, 1) == (-2.5, 100.5)  # a negative value: no floor at 0


def test_a_held_out_value_beyond_the_inferred_bounds_moves_them_with_a_note(tmp_path: Path) -> None:
    """A large table's tight margin (3/sqrt(n)) can leave a held-out value outside: the bound
    moves to it, and a note says so (made.io.tables.cover_splits), so the model reads its test rows."""
    from made.io.tables import load_table_dataset

    rng = np.random.default_rng(0)
    rows = [[f"{v:.1f}", "a" if v > 0 else "b"] for v in rng.uniform(0.0, 100.0, 10_000)]
    rows[-1][0] = "110.0"  # in the test split (the last rows): past 100 + 3% of the range
    source = write_splits(tmp_path, "far", ["x", "k"], rows)
    data = load_table_dataset(str(source))
    x = data.schema.columns[0]
    assert x.upper == 110.0
    assert any("column x: the test split holds 110, above the training bounds: now its bound" in n for n in data.notes)
