"""The table model (training/table_model.py) and its heads (made/core/heads.py): autoregressive per
column for every mask, normalised (by enumeration over every record of a small categorical
schema, and numerically for numbers), and the numpy heads equal to the torch ones."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers import random_table_made

from made.core.heads import column_loglik, sample_column
from made.core.schema import ABSENT, Column, Schema
from training.table_model import TableMADE

CATS = Schema(
    (
        Column("a", "categorical", ("x", "y", "z")),
        Column("b", "binary", ("no", "yes")),
        Column("c", "categorical", ("p", "q", "r", "s")),
        Column("d", "categorical", ("NA", "u", "v")),
    )
)
MIXED = Schema(
    (
        Column("n", "numeric", transform="none", loc=1.0, scale=2.0, decimals=1, components=3),
        Column("k", "categorical", ("a", "b", "c")),
        Column("w", "numeric", transform="log", loc=0.5, scale=0.7, decimals=2, nullable=True, components=2),
        Column("f", "binary", ("0", "1")),
        Column("g", "numeric", transform="none", loc=0.0, scale=1.0, decimals=None, components=4),
    )
)


def _model(schema: Schema, masks: int = 4, direct: bool = True, seed: int = 0) -> TableMADE:
    return random_table_made(schema, masks, direct, seed)


def _random_values(schema: Schema, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(schema)))
    for j, col in enumerate(schema.columns):
        if col.kind == "numeric":
            v = np.exp(rng.normal(0.5, 0.7, n)) if col.transform == "log" else rng.normal(1.0, 2.0, n)
            v = np.round(v, col.decimals) if col.decimals is not None else v
            if col.nullable:
                v[rng.random(n) < 0.3] = ABSENT
            out[:, j] = v
        else:
            out[:, j] = rng.integers(0, len(col.levels), n)
    return out


@pytest.mark.parametrize("schema", [CATS, MIXED], ids=["categorical", "mixed"])
def test_no_output_of_a_column_sees_that_column_or_a_later_one(schema: Schema) -> None:
    model = _model(schema)
    values = torch.from_numpy(_random_values(schema, 5, 1))
    for k in range(model.n_masks):
        order = np.argsort(model.column_degrees[k].numpy(), kind="stable")
        x = model.inputs(values).clone().float().requires_grad_(True)
        params = model(x, k)
        for pos, col in enumerate(order):
            out = slice(int(schema.out_offsets[col]), int(schema.out_offsets[col + 1]))
            grad = torch.autograd.grad(params[:, out].sum(), x, retain_graph=True)[0]
            blind = np.isin(schema.in_columns, order[pos:])  # the column itself and every later one
            assert torch.all(grad[:, torch.from_numpy(blind)] == 0), (k, col)
            if pos > 0:  # and it does see the earlier ones (the test can fail the other way too)
                assert torch.any(grad[:, torch.from_numpy(~blind)] != 0), (k, col)


def test_every_mask_and_the_mixture_sum_to_one_over_every_record() -> None:
    model = _model(CATS, masks=3)
    records = np.array(list(itertools.product(*[range(len(c.levels)) for c in CATS.columns])), dtype=np.float64)
    assert len(records) == 3 * 2 * 4 * 3
    with torch.no_grad():
        values = torch.from_numpy(records)
        for k in range(model.n_masks):
            total = torch.logsumexp(model.log_prob(values, k), dim=0).item()
            assert abs(total) < 1e-5, (k, total)
        assert abs(torch.logsumexp(model.mixture_log_prob(values), dim=0).item()) < 1e-5


def test_a_numeric_column_sums_to_one_over_its_bins_and_integrates_to_one_as_a_density() -> None:
    rng = np.random.default_rng(0)
    for col in MIXED.columns:
        if col.kind != "numeric":
            continue
        p = rng.normal(0, 0.5, (3, col.n_out))
        p[:, col.n_out - col.components :] -= 1.0  # scales near e^-1: the tails fit in the grid below
        if col.decimals is not None:  # every bin of a wide grid, plus P(absent)
            r = col.resolution
            top = 60 if col.transform == "none" else 1000
            grid = np.round(np.arange(0 if col.transform == "log" else -60, top + r / 2, r), col.decimals)
            grid = grid[grid >= 0] if col.transform == "log" else grid
            mass = [
                np.exp(np.logaddexp.reduce(column_loglik(col, np.repeat(p[i : i + 1], len(grid), 0), grid)))
                for i in range(3)
            ]
            absent = np.exp(column_loglik(col, p, np.full(3, ABSENT))) if col.nullable else np.zeros(3)
            np.testing.assert_allclose(np.array(mass) + absent, 1.0, atol=2e-4)
        else:  # a density: trapezoid over a fine grid
            grid = np.linspace(-40, 40, 400_001)
            for i in range(3):
                dens = np.exp(column_loglik(col, np.repeat(p[i : i + 1], len(grid), 0), grid))
                assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-4


@pytest.mark.parametrize("schema", [CATS, MIXED], ids=["categorical", "mixed"])
def test_numpy_heads_equal_the_torch_heads(schema: Schema) -> None:
    model = _model(schema)
    values = _random_values(schema, 50, 2)
    with torch.no_grad():
        for k in range(model.n_masks):
            params = model(model.inputs(torch.from_numpy(values)), k).numpy()
            torch_ll = model.column_logliks(torch.from_numpy(values), k).numpy()
            for j, col in enumerate(schema.columns):
                p = params[:, int(schema.out_offsets[j]) : int(schema.out_offsets[j + 1])]
                np.testing.assert_allclose(column_loglik(col, p, values[:, j]), torch_ll[:, j], rtol=1e-4, atol=2e-4)


def test_sampled_cells_follow_the_column_distribution() -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    for col in MIXED.columns:
        p = np.repeat(rng.normal(0, 1.0, (1, col.n_out)), n, axis=0)
        cells = sample_column(col, p, rng.random((n, 3)))
        if col.kind != "numeric" or col.decimals is not None:
            levels, counts = np.unique(cells, return_counts=True)
            top = levels[np.argsort(counts)[-5:]]
            expected = np.exp(column_loglik(col, p[: len(top)], top))
            observed = np.array([np.mean(cells == v) for v in top])
            se = np.sqrt(expected * (1 - expected) / n)
            assert np.all(np.abs(observed - expected) < 5 * se + 1e-9), (col.name, observed, expected)
        else:  # a density: compare the probability of a few intervals with the integrated density
            for lo, hi in [(-1.0, 0.0), (0.0, 0.5), (0.5, 3.0)]:
                grid = np.linspace(lo, hi, 2001)
                expected = np.trapezoid(np.exp(column_loglik(col, p[:2001], grid)), grid)
                observed = np.mean((cells > lo) & (cells <= hi))
                assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-4
