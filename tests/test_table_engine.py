"""The table engine (service/engine/table_engine.py) against enumeration: small tables written as
CSV files, trained, exported and served through onnxruntime; every answer checked against the
exact joint over every record of the schema."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from made.schema import ABSENT
from made.store import open_model
from made.tables import load_table_dataset
from service.engine.table_engine import SUMMARY_DRAWS, TableEngine


@pytest.fixture(scope="module")
def cats(table_store: Path) -> TableEngine:
    return TableEngine(open_model(table_store, "cats"), ["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="module")
def joint(cats: TableEngine) -> tuple[np.ndarray, np.ndarray]:
    """Every record of the 'cats' schema and its log p_k under every mask (K, R)."""
    records = np.array(list(itertools.product(*[range(len(c.levels)) for c in cats.schema.columns])), float)
    return records, np.stack([cats.column_logliks(records, k).sum(axis=1) for k in range(cats.n_masks)])


def _mixture(logp: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(logp, axis=0) - np.log(len(logp))


def test_the_schema_is_read_from_the_csv_header_and_kept_in_the_manifest(cats: TableEngine) -> None:
    assert cats.schema.names == ["a", "b", "c", "d"]
    assert [c.kind for c in cats.schema.columns] == ["categorical", "binary", "categorical", "categorical"]
    assert cats.schema.columns[3].levels == ("u", "v", "NA")  # the empty cells are a level of their own
    assert cats.manifest["dataset"]["name"] == "cats"


def test_every_mask_and_the_mixture_are_normalised(joint: tuple[np.ndarray, np.ndarray],
                                                   cats: TableEngine) -> None:
    records, logp = joint
    assert len(records) == 3 * 2 * 4 * 3
    np.testing.assert_allclose(np.logaddexp.reduce(logp, axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(cats.logprob(records).logprob, _mixture(logp), atol=1e-9)


def test_export_matches_torch_on_real_rows(table_store: Path, cats: TableEngine) -> None:
    import torch

    from training.checkpoint import load_tensors
    from training.table_model import TableMADE, TableMADEConfig

    manifest = cats.manifest
    model = TableMADE(TableMADEConfig.from_dict(manifest["training"]["model"]))
    run = Path(manifest["training"]["dataset"]).parent / "run-cats"
    model.load_state_dict(load_tensors(run / "best.safetensors")[0])
    test = load_table_dataset(manifest["training"]["dataset"], schema=cats.schema).split("test")
    with torch.no_grad():
        for k in range(cats.n_masks):
            theirs = model.log_prob(torch.from_numpy(test), k).numpy()
            np.testing.assert_allclose(cats.logprob(test, masks=k).logprob, theirs, atol=1e-4)


def test_unknown_cells_are_summed_out(joint: tuple[np.ndarray, np.ndarray], cats: TableEngine) -> None:
    records, logp = joint
    mix = _mixture(logp)
    queries = np.array([[0, np.nan, 2, np.nan], [np.nan, 1, np.nan, 2], [2, 0, 3, np.nan],
                        [np.nan, np.nan, np.nan, 1]])
    result = cats.logprob(queries, seed=0, n_importance=4000)
    for row, lp, exact, se in zip(queries, result.logprob, result.exact, result.stderr, strict=True):
        match = np.all(np.isnan(row) | (records == row), axis=1)
        truth = np.logaddexp.reduce(mix[match])
        if exact:
            assert abs(lp - truth) < 1e-9 and se == 0
        else:
            assert se > 0 and abs(lp - truth) < 4 * se + 1e-3, (row, lp, truth, se)
    assert not result.exact.all()  # the test covers both paths


def test_imputed_distributions_are_the_exact_posterior(joint: tuple[np.ndarray, np.ndarray],
                                                       cats: TableEngine) -> None:
    records, logp = joint
    mix = _mixture(logp)
    rows = np.array([[1, np.nan, np.nan, 0], [np.nan, 0, 1, np.nan]])
    result = cats.impute(rows, n_samples=5, seed=3, n_importance=3000)
    for i, row in enumerate(rows):
        match = np.all(np.isnan(row) | (records == row), axis=1)
        post = np.exp(mix[match] - np.logaddexp.reduce(mix[match]))
        assert np.all(result.samples[i][:, ~np.isnan(row)] == row[~np.isnan(row)])  # known cells kept
        for c in np.flatnonzero(np.isnan(row)):
            col = cats.schema.columns[c]
            truth = np.array([post[records[match, c] == lv].sum() for lv in range(len(col.levels))])
            got = np.array([result.distributions[i][col.name][lv] for lv in col.levels])
            tol = 0.02 if result.exact[i] else 0.05
            np.testing.assert_allclose(got, truth, atol=tol, err_msg=f"row {i} column {col.name}")
        assert result.ess[i] >= (SUMMARY_DRAWS if result.exact[i] else 10)


def test_samples_follow_the_model_and_repeat_with_their_seed(joint: tuple[np.ndarray, np.ndarray],
                                                             cats: TableEngine) -> None:
    records, logp = joint
    probs = np.exp(_mixture(logp))
    n = 20_000
    samples = cats.sample(n, seed=7)
    assert np.array_equal(samples, cats.sample(n, seed=7))
    index = {tuple(r): i for i, r in enumerate(records)}
    counts = np.bincount([index[tuple(s)] for s in samples], minlength=len(records))
    top = np.argsort(probs)[-10:]
    se = np.sqrt(probs[top] * (1 - probs[top]) / n)
    assert np.all(np.abs(counts[top] / n - probs[top]) < 5 * se), (counts[top] / n, probs[top])


def test_numbers_and_absent_numbers(table_store: Path) -> None:
    mixed = TableEngine(open_model(table_store, "mixed"), ["CPUExecutionProvider"], threads=1)
    cols = {c.name: c for c in mixed.schema.columns}
    assert cols["size"].kind == "numeric" and cols["size"].decimals == 2
    assert cols["budget"].nullable and cols["budget"].decimals == 0
    samples = mixed.sample(2000, seed=1)
    budget = samples[:, mixed.schema.index("budget")]
    assert 0.15 < np.mean(budget == ABSENT) < 0.45  # about the 30% of the data
    size = samples[:, mixed.schema.index("size")]
    assert np.all(np.round(size, 2) == size) and np.all(size >= 0)
    # the imputed score of kind "z" is about 20 (the data's mean for it), of kind "x" about 0
    rows = np.array([[0, np.nan, np.nan, np.nan], [2, np.nan, np.nan, np.nan]])
    result = mixed.impute(rows, n_samples=3, seed=0, n_importance=500)
    scores = [result.distributions[i]["score"] for i in range(2)]
    assert abs(scores[0]["mean"] - 0) < 2.5 and abs(scores[1]["mean"] - 20) < 2.5, scores
    assert scores[1]["q05"] < scores[1]["q50"] < scores[1]["q95"]
    assert 0.1 < result.distributions[0]["budget"]["p_absent"] < 0.5
