"""Sampling: the fast stepping sampler against the naive one (one graph run per dimension) on
the same noise, sample frequencies against the model's probabilities, and the seed contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from made.errors import InvalidInput
from made.store import open_model
from service.engine.engine import Engine

Joint = dict[str, tuple[np.ndarray, np.ndarray]]  # see the tiny_joint fixture
# A draw may legitimately flip when u is this close to p: a sliced matmul and a full one round
# the last bits of p differently (design notes, "Exact sampling").
ROUNDING = 1e-6


def assert_fast_equals_naive(engine: Engine, k: int, u: np.ndarray) -> None:
    """Samples bit-identical except at draws within ROUNDING of their probability, and the
    per-step probabilities equal to 1e-5 wherever both samplers saw the same prefix."""
    fast, _, fast_p = engine.sampler.run(k, u, return_probs=True)
    assert fast_p is not None
    naive = engine.naive_sample(u, k)
    # the naive sampler's step-d probability is p(x_d = 1 | x_<d) of its own final sample
    naive_p = engine.conditionals(naive, k)
    order = engine.orderings[k]
    dims = len(order)
    differ = fast[:, order] != naive[:, order]  # (N, D) in generation order
    first = np.where(differ.any(axis=1), differ.argmax(axis=1), dims)  # first disagreement
    same_prefix = np.arange(dims)[None, :] <= first[:, None]
    step_error = np.abs(fast_p[:, order] - naive_p[:, order])[same_prefix]
    assert step_error.max() < 1e-5, f"mask {k}: per-step probabilities differ by {step_error.max()}"
    flipped = np.flatnonzero(first < dims)
    d = order[first[flipped]]
    margin = np.abs(u[flipped, d] - naive_p[flipped, d])
    assert (margin < ROUNDING).all(), f"mask {k}: draws flipped {margin.max()} away from p"
    assert len(flipped) <= max(1, len(u) // 100)


@pytest.mark.parametrize("name", ["tiny", "tiny1", "tiny10"])
def test_fast_samples_equal_naive_samples_for_every_mask(
    name: str, tiny_engines: dict[str, Engine]
) -> None:
    engine = tiny_engines[name]
    for k in range(engine.n_masks):
        u = np.random.default_rng(k).random((2000, engine.dims))
        assert_fast_equals_naive(engine, k, u)


def test_fast_samples_equal_naive_samples_on_a_784_dimensional_network(
    random784_store: Path,
) -> None:
    engine = Engine(open_model(random784_store, "random784"), ["CPUExecutionProvider"], threads=1)
    assert engine.network.direct is not None
    for k in range(engine.n_masks):  # mask 0 in natural order, mask 1 in a random one
        u = np.random.default_rng(100 + k).random((150, engine.dims))
        assert_fast_equals_naive(engine, k, u)


def test_random_weights_give_a_784_dimensional_model_uncertain_draws(
    random784_store: Path,
) -> None:
    # the exactness test above means something only if most draws are not foregone conclusions
    engine = Engine(open_model(random784_store, "random784"), ["CPUExecutionProvider"], threads=1)
    _, _, p = engine.sampler.run(1, np.random.default_rng(0).random((20, 784)), return_probs=True)
    assert p is not None and ((p > 0.05) & (p < 0.95)).mean() > 0.5


def chi_square_pvalue(samples: np.ndarray, probs: np.ndarray) -> float:
    """Goodness of fit of samples (n, D) to probabilities (2^D,) over all 2^D cells; cells
    expecting fewer than 5 are pooled into one."""
    dims = samples.shape[1]
    cells = samples.astype(np.int64) @ (1 << np.arange(dims - 1, -1, -1))  # row index in x_all
    observed = np.bincount(cells, minlength=2**dims)
    expected = len(samples) * probs / probs.sum()
    rare = expected < 5
    f_obs, f_exp = observed[~rare], expected[~rare]
    if rare.any():
        f_obs = np.append(f_obs, observed[rare].sum())
        f_exp = np.append(f_exp, expected[rare].sum())
    return float(chisquare(f_obs, f_exp).pvalue)


@pytest.mark.parametrize(("name", "mask"), [("tiny", 2), ("tiny1", 0), ("tiny10", 1)])
def test_sample_frequencies_of_one_mask_match_its_probabilities(
    name: str, mask: int, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    _, logp = tiny_joint[name]
    samples = tiny_engines[name].sample(20000, seed=1, mask=mask)
    assert chi_square_pvalue(samples, np.exp(logp[mask])) > 1e-3
    if len(logp) > 1:  # the test has power: another mask's distribution is rejected
        assert chi_square_pvalue(samples, np.exp(logp[mask - 1])) < 1e-6


@pytest.mark.parametrize("name", ["tiny", "tiny10"])
def test_mixture_sample_frequencies_match_the_mixture_probabilities(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: Joint
) -> None:
    _, logp = tiny_joint[name]
    samples = tiny_engines[name].sample(20000, seed=2)
    assert chi_square_pvalue(samples, np.exp(logp).mean(axis=0)) > 1e-3
    assert chi_square_pvalue(samples, np.exp(logp[0])) < 1e-6


def test_mixture_noise_draws_every_mask_equally_often(tiny_engines: dict[str, Engine]) -> None:
    _, ks = tiny_engines["tiny"].noise(8000, seed=3)
    counts = np.bincount(ks, minlength=4)
    assert len(counts) == 4
    assert chisquare(counts).pvalue > 1e-3


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(
    tiny_engines: dict[str, Engine],
) -> None:
    engine = tiny_engines["tiny"]
    for mask in (None, 1):
        a = engine.sample(200, seed=42, mask=mask)
        np.testing.assert_array_equal(a, engine.sample(200, seed=42, mask=mask))
        assert not np.array_equal(a, engine.sample(200, seed=43, mask=mask))
        assert a.dtype == np.uint8 and a.shape == (200, 8) and set(np.unique(a)) <= {0, 1}


def test_sample_is_sample_from_noise_of_the_seeds_noise(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny10"]
    for mask in (None, 2):
        expected = engine.sample_from_noise(*engine.noise(300, seed=9, mask=mask))
        np.testing.assert_array_equal(engine.sample(300, seed=9, mask=mask), expected)


def test_samples_of_concatenated_requests_split_into_each_requests_own_samples(
    tiny_engines: dict[str, Engine],
) -> None:
    """Dynamic batching: noise drawn per request, sampled in one call, split back."""
    engine = tiny_engines["tiny"]
    requests = [(5, 1, None), (1, 2, 3), (40, 3, None), (0, 4, None), (17, 5, 0)]
    noises = [engine.noise(n, seed, mask) for n, seed, mask in requests]
    u = np.concatenate([u for u, _ in noises])
    ks = np.concatenate([k for _, k in noises])
    merged = engine.sample_from_noise(u, ks)
    bounds = np.cumsum([0] + [n for n, _, _ in requests])
    for (n, seed, mask), lo, hi in zip(requests, bounds[:-1], bounds[1:], strict=True):
        np.testing.assert_array_equal(merged[lo:hi], engine.sample(n, seed, mask))


def test_noise_refuses_a_negative_count_and_a_mask_out_of_range(
    tiny_engines: dict[str, Engine],
) -> None:
    with pytest.raises(InvalidInput, match="n must be at least 0"):
        tiny_engines["tiny"].noise(-1, seed=0)
    with pytest.raises(InvalidInput, match="mask 4 is out of range"):
        tiny_engines["tiny"].sample(3, seed=0, mask=4)
