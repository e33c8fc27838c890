"""Sampling: the fast stepping sampler against the naive one (one graph run per dimension) on
the same noise, sample frequencies against the model's probabilities, and the seed contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_random_model
from scipy.stats import chisquare

from made.core.errors import InvalidInput
from made.store.versions import open_model
from service.engine import sampler as sampler_module
from service.engine.engine import Engine
from service.testing import providers_under_test

Joint = dict[str, tuple[np.ndarray, np.ndarray]]  # see the tiny_joint fixture
# A draw may legitimately flip when u is this close to p: a sliced matmul and a full one round
# the last bits of p differently (design notes, "Exact sampling").
ROUNDING = 1e-6


def assert_fast_equals_naive(
    engine: Engine,
    k: int,
    u: np.ndarray,
    fast_run: tuple[np.ndarray, np.ndarray | None] | None = None,
    naive: np.ndarray | None = None,
) -> None:
    """Samples bit-identical except at draws within ROUNDING of their probability, and the
    per-step probabilities equal to 1e-5 wherever both samplers saw the same prefix.
    fast_run: the fast sampler's (samples, probabilities) of u if already drawn (in a batch with
    other masks); naive: the naive samples of u if already drawn."""
    if fast_run is None:
        fast, _, fast_p = engine.sampler.run(k, u, return_probs=True)
    else:
        fast, fast_p = fast_run
    assert fast_p is not None
    if naive is None:
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
def test_fast_samples_equal_naive_samples_for_every_mask(name: str, tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines[name]
    for k in range(engine.n_masks):
        u = np.random.default_rng(k).random((2000, engine.dims))
        assert_fast_equals_naive(engine, k, u)


def test_fast_samples_equal_naive_samples_on_a_784_dimensional_network(
    random784_store: Path,
) -> None:
    engine = Engine(open_model(random784_store, "random784"), providers_under_test(), threads=1)
    assert engine.direct
    # mask 0 in natural order, mask 1 in a random one; each alone, and both in one batch (the
    # masks step through one loop), against the same naive samples
    us = [np.random.default_rng(100 + k).random((150, engine.dims)) for k in range(2)]
    masks = np.random.default_rng(7).permutation(np.repeat([0, 1], 150))
    u_mixed = np.empty((300, engine.dims))
    for k in range(2):
        u_mixed[masks == k] = us[k]
    mixed, _, mixed_p = engine.sampler.run_masks(masks, u_mixed, return_probs=True)
    assert mixed_p is not None
    for k in range(2):
        naive = engine.naive_sample(us[k], k)
        assert_fast_equals_naive(engine, k, us[k], naive=naive)
        assert_fast_equals_naive(engine, k, us[k], (mixed[masks == k], mixed_p[masks == k]), naive=naive)


@pytest.mark.parametrize("direct", [False, True])
def test_fast_samples_equal_naive_samples_without_hidden_layers(direct: bool, tmp_path: Path) -> None:
    # the outputs then read the inputs alone: the stepping loop's degenerate case
    store = write_random_model(tmp_path, "flat", 7, [], 3, order_agnostic=True, direct=direct)
    engine = Engine(open_model(store, "flat"), providers_under_test(), threads=1)
    u = np.random.default_rng(0).random((3000, engine.dims))
    masks = np.random.default_rng(1).integers(0, 3, len(u))
    mixed, _, mixed_p = engine.sampler.run_masks(masks, u, return_probs=True)
    assert mixed_p is not None
    for k in range(3):
        rows = masks == k
        naive = engine.naive_sample(u[rows], k)
        assert_fast_equals_naive(engine, k, u[rows], naive=naive)
        assert_fast_equals_naive(engine, k, u[rows], (mixed[rows], mixed_p[rows]), naive=naive)


def test_random_weights_give_a_784_dimensional_model_uncertain_draws(
    random784_store: Path,
) -> None:
    # the exactness test above means something only if most draws are not foregone conclusions
    engine = Engine(open_model(random784_store, "random784"), providers_under_test(), threads=1)
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


@pytest.fixture(scope="module")
def k8_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The default model's shape (D=784, hidden [500, 500], K=8, direct), random weights, each
    mask with its own ordering."""
    store = write_random_model(
        tmp_path_factory.mktemp("k8"), "k8", 784, [500, 500], 8, order_agnostic=True, direct=True
    )
    return Engine(open_model(store, "k8"), providers_under_test(), threads=1)


def test_a_seeds_sample_is_the_same_alone_and_merged_into_a_batch_of_other_masks(
    k8_engine: Engine,
) -> None:
    """Dynamic batching merges requests for different masks into one stepping loop (padded,
    other block shapes, other matmul sizes); in float64 no draw may change."""
    engine = k8_engine
    for round_ in range(3):
        requests: list[tuple[int, int, int | None]] = [(1, 1000 * round_ + i, None) for i in range(60)]
        requests += [(3, 1000 * round_ + 60, None), (2, 1000 * round_ + 61, 5), (1, 1000 * round_ + 62, 0)]
        noises = [engine.noise(n, seed, mask) for n, seed, mask in requests]
        u = np.concatenate([u for u, _ in noises])
        ks = np.concatenate([k for _, k in noises])
        assert len(np.unique(ks)) == engine.n_masks
        merged = engine.sample_from_noise(u, ks)
        bounds = np.cumsum([0] + [n for n, _, _ in requests])
        for (n, seed, mask), lo, hi in zip(requests, bounds[:-1], bounds[1:], strict=True):
            np.testing.assert_array_equal(merged[lo:hi], engine.sample(n, seed, mask), err_msg=f"seed {seed}")
    # the probabilities agree to float64 rounding: far below any |u - p| that could flip a draw
    _, _, p_merged = engine.sampler.run_masks(ks, u, return_probs=True)
    assert p_merged is not None
    for i in range(0, 60, 6):
        _, _, p_alone = engine.sampler.run_masks(ks[i : i + 1], u[i : i + 1], return_probs=True)
        assert p_alone is not None
        np.testing.assert_allclose(p_alone[0], p_merged[i], rtol=0, atol=1e-13)


def test_every_way_of_splitting_a_batch_gives_the_same_samples(
    tiny_engines: dict[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass of all masks, one pass per mask, and chunks of a few rows: the same samples,
    log weights and probabilities, clamped or not."""
    engine = tiny_engines["tiny"]
    rng = np.random.default_rng(5)
    n = 500
    u = rng.random((n, engine.dims))
    masks = rng.choice([0, 2, 3], size=n, p=[0.6, 0.3, 0.1])  # mask 1 absent
    observed = rng.random((n, engine.dims)) < 0.4
    values = (rng.random((n, engine.dims)) < 0.5).astype(np.float64)
    runs = []
    for pass_rows, max_rows in ((10**9, 10**9), (0, 10**9), (10**9, 7), (0, 7)):
        # a huge fixed cost per pass: all masks in one; none: one pass per mask
        monkeypatch.setattr(sampler_module, "PASS_ROWS", pass_rows)
        monkeypatch.setattr(sampler_module, "GROUP_ROWS", 0)
        monkeypatch.setattr(sampler_module, "MAX_ROWS", max_rows)
        runs.append(
            (
                engine.sampler.run_masks(masks, u, return_probs=True),
                engine.sampler.run_masks(masks, u, observed, values),
            )
        )
    per_mask = [engine.sampler.run(int(k), u[masks == k], observed[masks == k], values[masks == k]) for k in (0, 2, 3)]
    (x0, _, p0), (c0, w0, _) = runs[0]
    assert p0 is not None
    for (x, _, p), (c, w, _) in runs[1:]:
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(c, c0)
        assert p is not None
        np.testing.assert_allclose(p, p0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(w, w0, rtol=1e-12)
    for k, (c, w, _) in zip((0, 2, 3), per_mask, strict=True):
        np.testing.assert_array_equal(c, c0[masks == k])
        np.testing.assert_allclose(w, w0[masks == k], rtol=1e-12)
    assert (c0[observed] == values[observed]).all()  # clamped entries keep their values


def test_warming_the_sampler_changes_no_sample(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny10"]
    before = [engine.sample(40, seed=8), engine.sample(40, seed=8, mask=1)]
    engine.sampler.warm()
    np.testing.assert_array_equal(engine.sample(40, seed=8), before[0])
    np.testing.assert_array_equal(engine.sample(40, seed=8, mask=1), before[1])
