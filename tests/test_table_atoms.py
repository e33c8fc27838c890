"""Point masses ("atoms") of numeric columns: a value that holds a clear share of a column's cells
(an exact 0 in 70% of rows) gets a weight of its own beside the logistics (made.core.schema,
made.core.heads, made.io.tables.numeric_atoms). Inferred from a zero-inflated column and refused
where a schema's atom is not one the column can hold; numpy (serving) and torch (training) heads
agree; a column's bins, atoms and absence sum to 1; draws hit an atom as often as its probability;
a trained model's samples, log p, quantiles and mean match the share of zeros in its data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_splits
from helpers import random_table_made

from made.cli.schema_cmd import schema_table
from made.core.errors import DataError
from made.core.heads import column_loglik, sample_column
from made.core.schema import ABSENT, Column, Schema
from made.io.tables import infer_column, load_table_dataset, numeric_atoms
from made.store.versions import open_model
from service.engine.table_engine import TableEngine
from service.testing import providers_under_test
from training.table_heads import groupable
from training.table_model import TableMADE, TableMADEConfig

ZERO_SHARE = 0.7


def _zero_inflated(n: int, seed: int) -> list[str]:
    """The reported column: 70% exact zeros, the rest exponential (scale 5000) to two decimals."""
    rng = np.random.default_rng(seed)
    debt = np.where(rng.random(n) < ZERO_SHARE, 0.0, np.round(rng.exponential(5000.0, n), 2))
    return [f"{d:.2f}" for d in debt]


# --- inference ------------------------------------------------------------------------------------
def test_a_zero_inflated_column_gets_an_atom_at_zero_and_a_log_scale_for_the_rest() -> None:
    col = infer_column("debt", _zero_inflated(2000, 0), "t.csv")
    assert col.atoms == (0.0,)
    assert col.decimals == 2 and col.lower == 0.0
    assert col.transform == "log"  # the amounts' scale: the zeros are the atom's
    assert col.n_out == 3 * col.components + 1


def test_smooth_columns_and_counts_get_no_atoms() -> None:
    rng = np.random.default_rng(1)
    smooth = [f"{v:.2f}" for v in rng.normal(50.0, 10.0, 3000)]
    assert infer_column("x", smooth, "t.csv").atoms == ()
    # counts 0..40 with 0 the busiest value (Poisson-like): the logistics' bins model it
    counts = rng.poisson(6.0, 3000).astype(float)
    counts[:30] = 40.0  # more than MAX_INT_LEVELS values: numeric
    assert numeric_atoms(counts, 0) == ()
    # a value at 3% is no atom, however spiky
    spiky = np.concatenate([np.full(30, 1.0), rng.normal(5.0, 1.0, 970).round(2)])
    assert numeric_atoms(spiky, 2) == ()


def test_at_most_three_atoms_largest_first() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(100.0, 20.0, 1000).round(2)
    v[:100], v[100:400], v[400:600], v[600:680] = 1.0, 0.0, 5.0, 7.0  # 10%, 30%, 20%, 8%
    assert numeric_atoms(v, 2) == (0.0, 5.0, 1.0)


def test_a_schema_file_sets_clears_or_leaves_out_atoms(tmp_path: Path) -> None:
    rows = [[g, d] for g, d in zip(["a", "b"] * 500, _zero_inflated(1000, 3), strict=True)]
    train = write_splits(tmp_path, "zi", ["g", "debt"], rows)
    inferred = load_table_dataset(str(train)).schema
    assert inferred.columns[1].atoms == (0.0,)
    base = inferred.to_json()
    for given, expected in (([], ()), ([0.0, 12.5], (0.0, 12.5)), (None, (0.0,))):
        cols = json.loads(json.dumps(base))
        cols[1].pop("atoms")
        if given is not None:
            cols[1]["atoms"] = given
        path = tmp_path / "schema.json"
        path.write_text(json.dumps({"columns": cols}))
        data = load_table_dataset(str(train), schema=Schema.read(path))
        assert data.schema.columns[1].atoms == expected, given
        assert data.schema.columns[1].n_out == 3 * 5 + len(expected)
    assert any("leaves out atoms: 0 inferred" in n for n in data.notes)


# --- the schema -----------------------------------------------------------------------------------
DEBT = {"name": "debt", "kind": "numeric", "transform": "none", "loc": 1.0, "scale": 2.0, "decimals": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"atoms": [0.005]}, "atom 0.005 is not a value recorded to 2 decimals"),
        ({"atoms": [0.0, 0.0]}, "its atoms repeat"),
        ({"atoms": [1.0, 2.0, 3.0, 4.0]}, "at most 3 atoms"),
        ({"atoms": [-1.0], "lower": 0.0, "upper": 10.0}, "atom -1 is not a value this column can hold"),
        ({"atoms": [0.0], "transform": "log", "decimals": None}, "atom 0 is not a value this column can hold"),
        ({"atoms": "0"}, "atoms must be a list of numbers"),
        ({"atoms": [True]}, "atoms must be a list of numbers"),
        ({"kind": "categorical", "levels": ["a", "b"], "atoms": [0.0]}, "only a numeric column has atoms"),
    ],
)
def test_a_schema_with_a_bad_atom_is_refused_naming_the_column(change: dict, message: str) -> None:
    with pytest.raises(DataError, match="column 'debt'") as err:
        Column.from_json({**DEBT, **change})
    assert message in str(err.value)


def test_the_schema_table_shows_atoms_only_where_a_column_has_some() -> None:
    plain = Schema((Column("g", "binary", ("0", "1")), Column.from_json(DEBT)))
    assert "atoms" not in schema_table(plain)
    with_atoms = Schema((plain.columns[0], Column.from_json({**DEBT, "atoms": [0.0, 12.5]})))
    assert schema_table(with_atoms).splitlines()[0].endswith("atoms")
    assert schema_table(with_atoms).splitlines()[2].endswith("0, 12.5")


def test_a_column_with_atoms_is_scored_by_the_per_column_reference_head() -> None:
    assert groupable(Column.from_json(DEBT)) and not groupable(Column.from_json({**DEBT, "atoms": [0.0]}))


def test_a_column_without_atoms_writes_its_json_as_before() -> None:
    col = Column.from_json(DEBT)
    assert "atoms" not in col.to_json()
    assert Column.from_json({**DEBT, "atoms": [0.0]}).to_json()["atoms"] == [0.0]
    assert Column.from_json({**DEBT, "atoms": None}) == col


# --- the heads ------------------------------------------------------------------------------------
ATOMS = Schema(
    (
        Column("k", "categorical", ("a", "b", "c")),
        # binned, bounded, two atoms (one at the lower bound)
        Column("n", "numeric", loc=1.0, scale=2.0, decimals=1, components=3, lower=0.0, upper=9.0, atoms=(0.0, 2.5)),
        # log-transformed, binned, nullable: an atom at 0 (a bin reaching -inf in y)
        Column(
            "w", "numeric", transform="log", loc=0.5, scale=0.7, decimals=2, nullable=True, components=2, atoms=(0.0,)
        ),
        # continuous, unbounded
        Column("g", "numeric", loc=0.0, scale=1.0, components=4, atoms=(1.0,)),
        # continuous, bounded, nullable
        Column(
            "h", "numeric", loc=0.0, scale=1.0, components=2, nullable=True, lower=-3.0, upper=4.0, atoms=(-1.5, 0.0)
        ),
    )
)


def _model(schema: Schema, seed: int = 0) -> TableMADE:
    return random_table_made(schema, masks=3, seed=seed)


def _values(schema: Schema, n: int, seed: int) -> np.ndarray:
    """Random cells, a third of each numeric column's at one of its atoms."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(schema)))
    for j, col in enumerate(schema.columns):
        if col.kind != "numeric":
            out[:, j] = rng.integers(0, len(col.levels), n)
            continue
        v = np.exp(rng.normal(0.5, 0.7, n)) if col.transform == "log" else rng.uniform(-2.5, 3.5, n)
        if col.lower is not None:
            v = np.clip(v, col.lower, col.upper)
        v = np.round(v, col.decimals) if col.decimals is not None else v
        at = rng.random(n) < 1 / 3
        v[at] = rng.choice(np.array(col.atoms), at.sum())
        if col.nullable:
            v[rng.random(n) < 0.2] = ABSENT
        out[:, j] = v
    return out


def test_numpy_heads_equal_the_torch_heads_with_atoms() -> None:
    model = _model(ATOMS)
    values = _values(ATOMS, 200, 1)
    with torch.no_grad():
        for k in range(model.n_masks):
            params = model(model.inputs(torch.from_numpy(values)), k).numpy()
            torch_ll = model.column_logliks(torch.from_numpy(values), k).numpy()
            assert np.isfinite(torch_ll).all()
            for j, col in enumerate(ATOMS.columns):
                p = params[:, int(ATOMS.out_offsets[j]) : int(ATOMS.out_offsets[j + 1])]
                np.testing.assert_allclose(column_loglik(col, p, values[:, j]), torch_ll[:, j], rtol=1e-4, atol=2e-4)


def test_a_gradient_step_with_atoms_stays_finite() -> None:
    model = _model(ATOMS).train()
    values = torch.from_numpy(_values(ATOMS, 64, 2))
    loss = -model.log_prob(values).mean()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def _params(col: Column, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).normal(0, 0.7, (1, col.n_out))
    off, m = int(col.nullable), col.components
    p[:, off + 2 * m : off + 3 * m] -= 0.5  # scales near e^-0.5: the tails fit in the grids below
    return p


@pytest.mark.parametrize("name", ["n", "w"])
def test_a_binned_column_s_bins_atoms_and_absence_sum_to_one(name: str) -> None:
    col = ATOMS.columns[ATOMS.index(name)]
    p = _params(col, 3)
    top = 9.0 if col.bounded else 2000.0
    grid = np.round(np.arange(0.0, top + col.resolution / 2, col.resolution), col.decimals)
    ll = column_loglik(col, np.repeat(p, len(grid), 0), grid)
    absent = math.exp(column_loglik(col, p, np.array([ABSENT]))[0]) if col.nullable else 0.0
    assert abs(np.exp(ll).sum() + absent - 1.0) < (1e-9 if col.bounded else 1e-4)
    # an atom's value holds its bin's mass and the atom's weight: more than the bins beside it
    for a in col.atoms:
        i = int(np.flatnonzero(grid == a)[0])
        assert ll[i] > ll[i + 1] + 0.5


@pytest.mark.parametrize("name", ["g", "h"])
def test_a_continuous_column_s_density_atoms_and_absence_integrate_to_one(name: str) -> None:
    col = ATOMS.columns[ATOMS.index(name)]
    p = _params(col, 4)
    lo, hi = (col.lower, col.upper) if col.bounded else (-40.0, 40.0)
    grid = np.linspace(lo, hi, 400_001)
    grid = grid[~np.isin(grid, col.atoms)]  # the density's integral; the atoms' points are masses
    density = np.trapezoid(np.exp(column_loglik(col, np.repeat(p, len(grid), 0), grid)), grid)
    atoms = np.exp(column_loglik(col, np.repeat(p, len(col.atoms), 0), np.array(col.atoms))).sum()
    absent = math.exp(column_loglik(col, p, np.array([ABSENT]))[0]) if col.nullable else 0.0
    assert 0.05 < atoms < 0.95  # the test holds mass on both sides
    assert abs(density + atoms + absent - 1.0) < 1e-4


@pytest.mark.parametrize("name", ["n", "w", "g", "h"])
def test_draws_hit_each_atom_as_often_as_its_probability(name: str) -> None:
    col = ATOMS.columns[ATOMS.index(name)]
    n = 40_000
    p = np.repeat(_params(col, 5), n, axis=0)
    cells = sample_column(col, p, np.random.default_rng(6).random((n, 3)))
    for a in col.atoms:
        expected = math.exp(column_loglik(col, p[:1], np.array([a]))[0])  # a binned one: its bin
        observed = float(np.mean(cells == a))
        assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n), (a, observed, expected)
    present = cells[cells != ABSENT]
    if col.bounded:
        assert present.min() >= col.lower and present.max() <= col.upper


# --- a trained model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def debts(tmp_path_factory: pytest.TempPathFactory) -> TableEngine:
    """'debts': the reported zero-inflated amount (an atom at 0 inferred) and a group that leans on
    whether it is 0, trained and exported like `made export` does; one mask, the amount first."""
    from training.export import export_run
    from training.train import TrainConfig, Trainer

    base = tmp_path_factory.mktemp("debts")
    debt = _zero_inflated(2000, 4)
    rng = np.random.default_rng(5)
    group = ["a" if rng.random() < (0.8 if d == "0.00" else 0.3) else "b" for d in debt]
    path = write_splits(base, "debts", ["debt", "g"], [list(r) for r in zip(debt, group, strict=True)])
    data = load_table_dataset(str(path))
    assert data.schema.columns[0].atoms == (0.0,)
    cfg = TrainConfig(
        dataset=str(path),
        model=TableMADEConfig(columns=data.schema.to_json(), hidden=[16]),
        max_epochs=10,
        batch_size=50,
        lr=1e-2,
        patience=10,
    )
    Trainer(cfg, base / "run", data).run(progress=False)
    export_run(base / "run", base / "store", "debts")
    return TableEngine(open_model(base / "store", "debts"), providers_under_test(), threads=1)


def test_a_trained_model_samples_zeros_at_their_share_and_scores_a_zero_at_it(debts: TableEngine) -> None:
    n = 20_000
    samples = debts.sample(n, seed=0)
    share = float(np.mean(samples[:, 0] == 0.0))
    # the amount comes first: log p(0) is its marginal, exact
    p_zero = math.exp(debts.logprob(np.array([[0.0, np.nan]])).logprob[0])
    assert abs(p_zero - ZERO_SHARE) < 0.05  # 0.36 nats a zero, not 5.6 (training noise of 1,400 rows)
    assert abs(share - p_zero) < 5 * math.sqrt(p_zero * (1 - p_zero) / n)


def test_a_trained_model_s_conditionals_count_the_atom(debts: TableEngine) -> None:
    rows = np.array([[0.0, 0.0], [10.0, 1.0]])
    out = debts.conditionals(rows, 0).columns[0]
    assert out["q05"][0] == 0.0 and out["q50"][0] == 0.0  # on the point mass, exactly
    assert out["q95"][0] > 1000.0  # past it: the amounts'
    draws = debts.sample(20_000, seed=1)[:, 0]
    assert abs(out["mean"][0] - draws.mean()) < 5 * draws.std() / math.sqrt(len(draws))
    assert abs(out["sd"][0] / draws.std() - 1.0) < 0.1


def test_a_trained_model_s_surprisal_given_the_others_counts_the_atom(debts: TableEngine) -> None:
    """-log p(amount | group) = -(log p(amount, group) - log p(group)): p(group) sums the amount out,
    the engine's integral with the atom's term against likelihood weighting of the amount's draws."""
    rows = np.array([[0.0, 0.0], [0.0, 1.0], [1234.56, 0.0], [1234.56, 1.0]])
    given = debts.surprisal(rows)["given_others"][:, 0]
    unknown = rows.copy()
    unknown[:, 0] = np.nan
    evidence = debts.logprob(unknown, seed=0, n_importance=20_000)
    expected = -(debts.logprob(rows).logprob - evidence.logprob)
    np.testing.assert_allclose(given, expected, atol=5 * evidence.stderr.max() + 2e-3)
    # and without the atom's term the zeros would be off by far more than that
    assert np.all(np.abs(given[:2] - expected[:2]) < 0.02)


def test_a_schema_file_leaving_out_loc_scale_and_atoms_standardises_as_inference_does(tmp_path: Path) -> None:
    """complete_schema took loc and scale from every value, the atoms' too, while inference takes
    them from the values no atom holds: the same column standardised two ways."""
    rng = np.random.default_rng(2)
    rows = [
        ["01"[int(rng.random() < 0.5)], "0" if rng.random() < 0.7 else f"{rng.exponential(50):.2f}"] for _ in range(600)
    ]
    train = write_splits(tmp_path, "debts", ["g", "debt"], rows)
    inferred = load_table_dataset(str(train)).schema.columns[1]
    assert inferred.atoms == (0.0,)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(
        json.dumps(
            {"columns": [{"name": "g", "kind": "binary", "levels": ["0", "1"]}, {"name": "debt", "kind": "numeric"}]}
        )
    )
    completed = load_table_dataset(str(train), schema=Schema.read(schema_file)).schema.columns[1]
    assert completed.atoms == inferred.atoms and completed.transform == inferred.transform
    assert (completed.loc, completed.scale) == pytest.approx((inferred.loc, inferred.scale))


def test_a_schema_number_too_large_for_a_float_is_refused_not_a_traceback() -> None:
    """JSON holds integers of any size: an atom or a bound of 400 digits raised OverflowError from
    float() (a traceback from made train or made sample), where 1e999 got a refusal."""
    huge = 10**400
    for field, value in (("atoms", [huge]), ("upper", huge), ("loc", huge)):
        column = {"name": "hours", "kind": "numeric", "decimals": 0, field: value}
        with pytest.raises(DataError, match="column 'hours' is malformed"):
            Column.from_json(column, "schema.json")
