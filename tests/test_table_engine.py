"""The table engine (service/engine/table_engine.py) against enumeration: small tables written as
CSV files, trained, exported and served through onnxruntime; every answer checked against the
exact joint over every record of the schema."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from made.core.masks import exact_orders
from made.core.schema import ABSENT
from made.io.tables import load_table_dataset
from made.store.versions import open_model
from service.engine.table_engine import TableEngine
from service.engine.table_impute import SUMMARY_DRAWS, ImpossibleEvidence
from service.testing import providers_under_test


@pytest.fixture(scope="module")
def cats(table_store: Path) -> TableEngine:
    return TableEngine(open_model(table_store, "cats"), providers_under_test(), threads=1)


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
    assert cats.manifest.dataset.name == "cats"


def test_every_mask_and_the_mixture_are_normalised(joint: tuple[np.ndarray, np.ndarray], cats: TableEngine) -> None:
    records, logp = joint
    assert len(records) == 3 * 2 * 4 * 3
    np.testing.assert_allclose(np.logaddexp.reduce(logp, axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(cats.logprob(records).logprob, _mixture(logp), atol=1e-9)


def test_export_matches_torch_on_real_rows(table_store: Path, cats: TableEngine) -> None:
    import torch

    from training.checkpoint import load_tensors
    from training.table_model import TableMADE, TableMADEConfig

    training = cats.manifest.training
    assert training is not None
    model = TableMADE(TableMADEConfig.from_dict(training["model"]))
    run = Path(training["dataset"]).parent / "run-cats"
    model.load_state_dict(load_tensors(run / "best.safetensors")[0])
    test = load_table_dataset(training["dataset"], schema=cats.schema).split("test")
    with torch.no_grad():
        for k in range(cats.n_masks):
            theirs = model.log_prob(torch.from_numpy(test), k).numpy()
            np.testing.assert_allclose(cats.logprob(test, masks=k).logprob, theirs, atol=1e-4)


def test_unknown_cells_are_summed_out(joint: tuple[np.ndarray, np.ndarray], cats: TableEngine) -> None:
    records, logp = joint
    mix = _mixture(logp)
    queries = np.array([[0, np.nan, 2, np.nan], [np.nan, 1, np.nan, 2], [2, 0, 3, np.nan], [np.nan, np.nan, np.nan, 1]])
    result = cats.logprob(queries, seed=0, n_importance=4000)
    for row, lp, exact, se in zip(queries, result.logprob, result.exact, result.stderr, strict=True):
        match = np.all(np.isnan(row) | (records == row), axis=1)
        truth = np.logaddexp.reduce(mix[match])
        if exact:
            assert abs(lp - truth) < 1e-9 and se == 0
        else:
            assert se > 0 and abs(lp - truth) < 4 * se + 1e-3, (row, lp, truth, se)
    assert not result.exact.all()  # the test covers both paths


def test_imputed_distributions_are_the_exact_posterior(joint: tuple[np.ndarray, np.ndarray], cats: TableEngine) -> None:
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


def test_samples_follow_the_model_and_repeat_with_their_seed(
    joint: tuple[np.ndarray, np.ndarray], cats: TableEngine
) -> None:
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
    mixed = TableEngine(open_model(table_store, "mixed"), providers_under_test(), threads=1)
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


# --- explain: each column's surprisal given every other ---------------------------------------------


@pytest.fixture(scope="module")
def mixed(table_store: Path) -> TableEngine:
    return TableEngine(open_model(table_store, "mixed"), providers_under_test(), threads=1)


def _mixed_rows(mixed: TableEngine) -> np.ndarray:
    """Test rows (a budget NA among them) and two odd ones: a budget far from 1000 x size, a size
    far from what its kind and budget say."""
    assert mixed.manifest.training is not None
    test = load_table_dataset(mixed.manifest.training["dataset"], schema=mixed.schema).split("test")
    rows = np.concatenate([test[:3], [[2, 0.5, 25.0, 5000.0], [0, 9.0, -3.0, ABSENT]]])
    assert (rows[:, 3] == ABSENT).any() and (rows[:, 3] != ABSENT).any()
    return rows


def test_given_others_of_a_category_is_the_enumerated_posterior(
    joint: tuple[np.ndarray, np.ndarray], cats: TableEngine
) -> None:
    records, logp = joint
    mix = _mixture(logp)
    rows = records[[0, 17, 40, 71]]
    given = cats.surprisal(rows)["given_others"]
    for i, row in enumerate(rows):
        r = int(np.flatnonzero(np.all(records == row, axis=1))[0])
        for c in range(cats.dims):
            others = np.all(np.delete(records, c, axis=1) == np.delete(row, c), axis=1)
            assert given[i, c] == pytest.approx(-(mix[r] - np.logaddexp.reduce(mix[others])), abs=1e-9)


def test_given_others_of_a_number_sums_over_every_rounding_bin(mixed: TableEngine) -> None:
    """A number recorded to `decimals` places: -log P(its bin | the other columns), P the mixture,
    against the sum of the joint over every bin (and NA) of the column, term by term."""
    rows = _mixed_rows(mixed)
    got = mixed.surprisal(rows)["given_others"]
    base = _mixture(np.stack([mixed.column_logliks(rows, k).sum(axis=1) for k in range(mixed.n_masks)]))
    for c, top in ((1, 200.0), (2, 80.0), (3, 40_000.0)):
        col = mixed.schema.columns[c]
        bins = np.round(np.arange(0.0 if col.transform == "log" else -top, top, col.resolution), col.decimals)
        if col.nullable:
            bins = np.append(bins, ABSENT)
        for i, row in enumerate(rows):
            x = np.repeat(row[None, :], len(bins), axis=0)
            x[:, c] = bins
            terms = np.stack([mixed.column_logliks(x, k) for k in range(mixed.n_masks)])  # (K, bins, C)
            assert np.all(np.exp(np.logaddexp.reduce(terms[:, :, c], axis=1)) > 1 - 1e-3)  # the bins cover it
            truth = -(base[i] - np.logaddexp.reduce(_mixture(terms.sum(axis=2))))
            assert got[i, c] == pytest.approx(truth, abs=2e-3), (col.name, i)
    assert got[3, 3] > 10 and got[4, 1] > 10  # the odd cells stand out
    assert np.all(np.isfinite(got)) and np.all(got[:, 0] >= 0)


def test_given_others_of_a_number_converges_on_a_finer_grid(
    mixed: TableEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.engine.table_explain as te

    rows = _mixed_rows(mixed)
    got = mixed.surprisal(rows)["given_others"]
    monkeypatch.setattr(te, "GIVEN_STEP", te.GIVEN_STEP / 20)
    monkeypatch.setattr(te, "GIVEN_NODES", 400_001)
    monkeypatch.setattr(te, "GIVEN_TAIL", 1e-10)
    monkeypatch.setattr(te, "GIVEN_LOCAL", np.linspace(-40.0, 40.0, 801))
    fine = mixed.surprisal(rows)["given_others"]
    # row 3's budget pins size to a peak of the later columns' likelihood about as narrow as
    # GIVEN_STEP: its trapezoidal sum is off by a few 1e-4 (by where the nodes fall); the rest by far less
    np.testing.assert_allclose(np.delete(got, 3, axis=0), np.delete(fine, 3, axis=0), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got[3], fine[3], rtol=0, atol=5e-4)


def test_given_others_of_a_continuous_number_is_a_density(table_store: Path) -> None:
    """The same network read with 'score' continuous (no decimals): its given_others is -log of a
    density per unit of score, whose integral over score (a fine Riemann sum) is 1. 'score' has
    bounds: its density is the truncated one (nothing outside them), scored at values inside."""
    import dataclasses

    from made.core.bounds import value_bounds
    from made.core.schema import Schema

    engine = TableEngine(open_model(table_store, "mixed"), providers_under_test(), threads=1)
    engine.schema = Schema(
        tuple(dataclasses.replace(col, decimals=None) if col.name == "score" else col for col in engine.schema.columns)
    )
    rows = _mixed_rows(engine)[[0, 3]]
    c, step = 2, 0.002
    grid = np.arange(-80.0, 80.0, step)
    for i, row in enumerate(rows):
        x = np.repeat(row[None, :], len(grid), axis=0)
        x[:, c] = grid
        lo, hi = value_bounds(engine.schema.columns[c])
        assert engine.schema.columns[c].bounded and lo > -80.0 and hi < 80.0  # the grid reaches past them
        some = np.flatnonzero((grid > lo) & (grid < hi))[:: int(0.7 / step) * 7]  # a few values of score
        got = engine.surprisal(x[some])["given_others"][:, c]
        joint = _mixture(np.stack([engine.column_logliks(x, k).sum(axis=1) for k in range(engine.n_masks)]))
        log_norm = np.logaddexp.reduce(joint) + np.log(step)  # log ∫ p(score, the others) d score
        np.testing.assert_allclose(got, -(joint[some] - log_norm), rtol=0, atol=1e-3, err_msg=f"row {i}")


# --- per-column conditionals ------------------------------------------------------------------------


def test_conditionals_are_the_engines_own_column_likelihoods(cats: TableEngine) -> None:
    rows = np.array([[0, 1, 2, 0], [2, 0, 3, 2], [1, 1, 0, 1]], dtype=float)
    for k in range(cats.n_masks):
        r = cats.conditionals(rows, k)
        assert r.mask == k and r.ordering.tolist() == cats.orderings[k].tolist()
        for c, col in enumerate(cats.schema.columns):
            probs = r.columns[c]["probs"]
            for level in range(len(col.levels)):
                x = rows.copy()
                x[:, c] = level
                np.testing.assert_allclose(probs[:, level], np.exp(cats.column_logliks(x, k)[:, c]), rtol=1e-12)
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)


def test_conditionals_of_numbers_summarise_their_rounding_bins(mixed: TableEngine) -> None:
    """Mean, sd and quantiles of a number's conditional against its bins' probabilities (the
    engine's own log-likelihoods, bin by bin); p_absent against the likelihood of NA."""
    rows = _mixed_rows(mixed)[[0, 3, 4]]
    for k in range(mixed.n_masks):
        r = mixed.conditionals(rows, k)
        for c, top in ((1, 1000.0), (2, 80.0), (3, 40_000.0)):  # size's tail is long: its sd needs all of it
            col, dist = mixed.schema.columns[c], r.columns[c]
            bins = np.round(np.arange(0.0 if col.transform == "log" else -top, top, col.resolution), col.decimals)
            for i, row in enumerate(rows):
                x = np.repeat(row[None, :], len(bins), axis=0)
                x[:, c] = bins
                mass = np.exp(mixed.column_logliks(x, k)[:, c])
                present = 1.0
                if col.nullable:
                    absent = row.copy()
                    absent[c] = ABSENT
                    p_absent = np.exp(mixed.column_logliks(absent[None, :], k)[0, c])
                    assert dist["p_absent"][i] == pytest.approx(p_absent, rel=1e-6)  # float32 passes of 1 row or 5
                    present = 1 - p_absent
                assert mass.sum() == pytest.approx(present, abs=1e-4)
                mass /= mass.sum()
                mean = mass @ bins
                assert dist["mean"][i] == pytest.approx(mean, rel=1e-3, abs=1e-3)
                assert dist["sd"][i] == pytest.approx(np.sqrt(mass @ (bins - mean) ** 2), rel=5e-3)
                cdf = np.cumsum(mass)
                for q, p in (("q05", 0.05), ("q50", 0.5), ("q95", 0.95)):
                    j = int(np.flatnonzero(bins == dist[q][i])[0])  # a value of the column: on a bin
                    assert cdf[j] >= p - 1e-6 and (j == 0 or cdf[j - 1] <= p + 1e-6), (col.name, q, i)


def test_conditionals_need_complete_rows_and_a_mask(cats: TableEngine) -> None:
    from made.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="complete records"):
        cats.conditionals(np.array([[0, np.nan, 1, 1]]), 0)
    with pytest.raises(InvalidInput, match="out of range"):
        cats.conditionals(np.array([[0, 1, 1, 1]]), cats.n_masks)


def test_imputing_given_cells_of_probability_zero_names_them(mixed: TableEngine) -> None:
    """A size recorded as absent, in a column that never is: probability 0 under every mask, so
    there is nothing to condition on (the HTTP schema refuses such a cell before; the engine says
    so itself rather than drawing from NaN weights). Both paths: exact (a complete row) and
    weighted (size and budget known)."""
    nan = np.nan
    for row, exact in (([1.0, ABSENT, 5.0, 1000.0], True), ([nan, ABSENT, nan, 1000.0], False)):
        values = np.array([[0.0, 2.5, nan, nan], row])
        unknown = np.isnan(values[1:])
        assert bool(exact_orders(mixed.orderings, ~unknown).all() or not unknown.any()) is exact
        assert mixed.logprob(values[1:]).logprob[0] == -np.inf
        with pytest.raises(ImpossibleEvidence) as info:
            mixed.impute(values, n_samples=2, seed=0, n_importance=20)
        assert (info.value.row, info.value.columns) == (1, ["size"]), exact
        assert str(info.value).startswith(
            "row 1: the known values have probability zero under the model (column 'size')"
        )


def test_a_served_table_models_row_scores_the_same_in_any_batch() -> None:
    """The server builds its engines with Settings.threads (0: onnxruntime's choice): on 2
    threads the shipped diamonds network's float32 sums for a row moved with the batch's size
    (1e-7 of log p in batches of 8, 15, 22, ...), so the same record scored otherwise alone and
    in a request of 50. The registry now gives a table model one intra-op thread."""
    from made.store.versions import open_model
    from service.core.records import parse_records
    from service.engine.registry import build_engine

    store = Path(__file__).resolve().parent.parent / "model_store"
    engine = build_engine(open_model(store, "diamonds"), ["CPUExecutionProvider"], 2)
    rng = np.random.default_rng(0)
    records = [
        {"carat": round(float(c), 2), "cut": "Ideal", "depth": 61.5, "table": 55.0, "price": int(p)}
        for c, p in zip(rng.uniform(0.3, 1.5, 64), rng.uniform(400, 9000, 64), strict=True)
    ]
    values = parse_records(engine.schema, records)
    alone = engine.logprob(values[:1], seed=0).logprob[0]
    assert all(engine.logprob(values[:n], seed=0).logprob[0] == alone for n in range(2, 65, 3))


def test_a_column_of_one_level_has_surprisal_zero_not_minus_zero(tmp_path: Path) -> None:
    """A constant column (one level, p = 1) was explained as -0.0 nats, which JSON and the
    playground show as "-0"."""
    from conftest import write_splits

    from training.export import export_run
    from training.table_model import TableMADEConfig
    from training.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    rows = [["x", str(int(v)), f"{w:.1f}"] for v, w in zip(rng.integers(0, 3, 300), rng.normal(5, 1, 300), strict=True)]
    path = write_splits(tmp_path, "const", ["site", "kind", "size"], rows)
    data = load_table_dataset(str(path))
    assert data.schema.columns[0].levels == ("x",)
    model = TableMADEConfig(columns=data.schema.to_json(), hidden=[8], n_masks=2, direct=True)
    Trainer(TrainConfig(dataset=str(path), model=model, max_epochs=1), tmp_path / "run", data).run(progress=False)
    export_run(tmp_path / "run", tmp_path / "store", "const")
    engine = TableEngine(open_model(tmp_path / "store", "const"), providers=providers_under_test())
    explained = engine.surprisal(engine.schema.encode_rows([["x", "1", 5.0]]))
    for kind in ("in_order", "given_others"):
        assert explained[kind][0, 0] == 0.0 and not np.signbit(explained[kind][0, 0]), kind
