"""The device path of issue 16 on the providers under test (the CPU here): Jacobi fixed-point
sampling against the stepping sampler on the same noise (plain, clamped, soft evidence, host
state and IOBinding state), and log p_k(x) of all masks computed in one graph against the
engine's per-mask passes, on tiny trained models, random tanh models and the shipped models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_random_model

from made.core.numerics import logmeanexp
from made.store.versions import open_model
from service.engine.engine import Engine
from service.engine.jacobi import JacobiSampler, float32_floor
from service.testing import providers_under_test

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model_store"
# A draw may flip where u is this close to p: the Jacobi logits are float32, the stepping
# sampler's float64 (design notes, "Exact sampling").
ROUNDING = 1e-6


def jacobi(engine: Engine, bind: bool) -> JacobiSampler:
    """A Jacobi sampler over the engine's weights, with host state (bind False) or state bound
    through IOBinding (bind True: the CUDA code path, on whatever provider runs)."""
    threads = engine.session.get_session_options().intra_op_num_threads
    return JacobiSampler(
        engine.model.path / "jacobi_step.onnx", engine.masks, engine._feeds, engine.providers, threads, bind
    )


def assert_same_samples(engine: Engine, masks: np.ndarray, u: np.ndarray, got: np.ndarray, want: np.ndarray) -> None:
    """Identical rows, except rows whose first difference (in their mask's order) is a draw
    with |u - p| < ROUNDING, p from the fast sampler's sample; at most 1% of the rows."""
    differ = np.flatnonzero((got != want).any(axis=1))
    for i in differ:
        order = engine.orderings[masks[i]]
        d = order[int(np.argmax(got[i, order] != want[i, order]))]
        p = engine.conditionals(want[i : i + 1].astype(np.float64), int(masks[i]))[0, d]
        assert abs(u[i, d] - p) < ROUNDING, f"row {i} (mask {masks[i]}) differs at {d}: u {u[i, d]}, p {p}"
    assert len(differ) <= max(1, len(u) // 100)


def check_against_fast(engine: Engine, n: int, seed: int, bind: bool) -> np.ndarray:
    """Mixture samples (every mask present) by Jacobi vs the stepping sampler; the passes."""
    u, masks = engine.noise(n, seed)
    masks[: engine.n_masks] = np.arange(engine.n_masks)  # every mask, whatever the draw
    run = jacobi(engine, bind).run(masks, u)
    assert_same_samples(engine, masks, u, run.samples, engine.sample_from_noise(u, masks))
    assert (run.passes >= 1).all() and (run.passes <= engine.dims + 1).all()
    return run.passes


@pytest.mark.parametrize("bind", [False, True])
@pytest.mark.parametrize("name", ["tiny", "tiny1", "tiny10"])
def test_jacobi_samples_equal_the_fast_samplers_on_tiny_models(
    name: str, bind: bool, tiny_engines: dict[str, Engine]
) -> None:
    engine = tiny_engines[name]
    for k in range(engine.n_masks):  # each mask alone, then all in one call
        u = np.random.default_rng(k).random((1500, engine.dims))
        masks = np.full(len(u), k)
        run = jacobi(engine, bind).run(masks, u)
        assert_same_samples(engine, masks, u, run.samples, engine.sampler.run(k, u)[0])
        assert run.passes.min() >= 1 and run.passes.max() <= engine.dims + 1  # D passes, + 1 to confirm
    check_against_fast(engine, 3000, seed=11, bind=bind)


def test_engine_sample_jacobi_is_sample_from_noise(tiny_engines: dict[str, Engine]) -> None:
    engine = tiny_engines["tiny"]
    u, masks = engine.noise(500, seed=3)
    np.testing.assert_array_equal(engine.sample_jacobi(u, masks), engine.sample_from_noise(u, masks))
    assert engine.jacobi_sampler() is engine.jacobi_sampler()  # built once


@pytest.mark.parametrize("bind", [False, True])
def test_jacobi_clamps_and_weights_as_the_fast_sampler(bind: bool, tiny_engines: dict[str, Engine]) -> None:
    """Clamped entries (imputation's likelihood weighting) and soft evidence (denoising): same
    samples, log weights and per-step probabilities as FastSampler.run_masks."""
    engine = tiny_engines["tiny10"]
    rng = np.random.default_rng(5)
    n, d = 2000, engine.dims
    u = rng.random((n, d))
    masks = rng.integers(0, engine.n_masks, n)
    observed = rng.random((n, d)) < 0.4
    values = (rng.random((n, d)) < 0.5).astype(np.float64)
    sampler = jacobi(engine, bind)
    got = sampler.run_masks(masks, u, observed, values, return_probs=True)
    want = engine.sampler.run_masks(masks, u, observed, values, return_probs=True)
    np.testing.assert_array_equal(got[0], want[0])
    assert ((got[0] == values) | ~observed).all()  # clamped entries kept
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5)
    assert got[2] is not None and want[2] is not None
    np.testing.assert_allclose(got[2], want[2], rtol=0, atol=1e-6)
    flips = np.where(rng.random((n, d)) < 0.5, 0.1, 0.3)
    l_same, l_flip = np.log1p(-flips), np.log(flips)
    y = rng.random((n, d)) < 0.5
    evidence = (np.where(y, l_flip, l_same), np.where(y, l_same, l_flip))
    got = sampler.run_masks(masks, u, evidence=evidence)
    want = engine.sampler.run_masks(masks, u, evidence=evidence)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5)


def test_jacobi_stands_in_for_the_sampler_in_imputation(tiny_store: Path) -> None:
    """Jacobi draws the exact rows' completions (here every sampler call), the same as the
    stepping sampler's; the other rows' particle filter walks the stepping sampler whatever
    sampler_for gives, so their answers are the stepping sampler's too."""
    engine = Engine(open_model(tiny_store, "tiny"), providers_under_test(), threads=1)
    x = (np.random.default_rng(2).random((40, engine.dims)) < 0.5).astype(np.float64)
    x[np.random.default_rng(3).random(x.shape) < 0.3] = np.nan
    x[:6] = np.nan  # nothing observed: exact under every mask
    want = engine.impute(x, n_samples=5, seed=9, n_importance=50)
    drawn = want.exact & np.isnan(x).any(axis=1)  # exact rows with completions to draw
    assert drawn[:6].all() and (~want.exact).sum() > 20
    jacobi = engine.jacobi_sampler()
    calls: list[int] = []
    run_masks = jacobi.run_masks

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        return run_masks(*args, **kwargs)

    jacobi.run_masks = counted  # type: ignore[method-assign]
    engine.sampler_for = lambda rows: jacobi  # type: ignore[method-assign]
    got = engine.impute(x, n_samples=5, seed=9, n_importance=50)
    assert sum(calls) == drawn.sum() * 5  # the exact rows' completions, and only them, by Jacobi
    np.testing.assert_array_equal(got.samples, want.samples)
    np.testing.assert_allclose(got.logprob_observed, want.logprob_observed, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.marginals, want.marginals, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.ess, want.ess)


@pytest.mark.parametrize("hidden", [[16], [12, 12]])
def test_jacobi_and_graph_scores_on_tanh_models(hidden: list[int], tmp_path: Path) -> None:
    store = write_random_model(tmp_path, "t", 9, hidden, 3, order_agnostic=True, direct=True, activation="tanh")
    engine = Engine(open_model(store, "t"), providers_under_test(), threads=1)
    for bind in (False, True):
        check_against_fast(engine, 2000, seed=1, bind=bind)
    x = (np.random.default_rng(0).random((300, engine.dims)) < 0.5).astype(np.float64)
    ll, mix = engine.graph_scores().scores(x)
    want = engine.mask_logliks(x, list(range(engine.n_masks)))
    np.testing.assert_allclose(ll, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mix, logmeanexp(want, axis=0), rtol=0, atol=1e-5)


def test_jacobi_on_the_shipped_models(data_dir: Path) -> None:
    """binarized-mnist (D=784, K=8: a sample per mask and more) and mushrooms (D=112, K=1)."""
    for name, n in (("binarized-mnist", 96), ("mushrooms", 600)):
        engine = Engine(open_model(STORE, name), providers_under_test(), threads=1)
        passes = check_against_fast(engine, n, seed=0, bind=False)
        assert passes.max() < engine.dims // 4  # far fewer passes than dimensions
        if name == "mushrooms":
            check_against_fast(engine, n, seed=1, bind=True)


def test_float32_floor_keeps_the_float64_comparison() -> None:
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.standard_normal(100_000) * 10, [np.inf, -np.inf, 0.0, 1e-45, -1e-45]])
    z = np.concatenate([t[:50_000].astype(np.float32), rng.standard_normal(50_005).astype(np.float32) * 10])
    # half of the z are t rounded to float32: the ties the rule is about
    floor = float32_floor(t)
    assert floor.dtype == np.float32
    np.testing.assert_array_equal(z > floor, z.astype(np.float64) > t)
    assert (floor.astype(np.float64) <= t).all()


# --- log p_k(x) of every mask in one graph ------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "tiny1", "tiny10"])
def test_graph_scores_equal_the_per_mask_passes(
    name: str, tiny_engines: dict[str, Engine], tiny_joint: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    engine = tiny_engines[name]
    x, logp = tiny_joint[name]  # every binary vector and its log p_k, by enumeration
    scores = engine.graph_scores()
    ks = list(range(engine.n_masks))
    ll, mix = scores.scores(x)
    np.testing.assert_allclose(ll, engine.mask_logliks(x, ks), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ll, logp, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mix, logmeanexp(logp, axis=0), rtol=0, atol=1e-5)
    assert abs(np.logaddexp.reduce(mix)) < 1e-4  # the mixture sums to one over all 2^D rows
    for k in ks:  # one mask alone, and a subset in another order
        np.testing.assert_allclose(scores.scores(x, [k])[0][0], logp[k], rtol=0, atol=1e-5)
    sub = ks[::-1][:2]
    np.testing.assert_allclose(scores.scores(x, sub)[0], logp[sub], rtol=0, atol=1e-5)
    observed = np.random.default_rng(0).random(x.shape) < 0.6
    got = scores.scores(x, observed=observed)[0]
    np.testing.assert_allclose(got, engine.mask_logliks(x, ks, observed), rtol=0, atol=1e-5)


def test_the_engine_routes_log_likelihoods_through_the_graph_when_told(tiny_store: Path) -> None:
    engine = Engine(open_model(tiny_store, "tiny"), providers_under_test(), threads=1)
    assert engine.use_graph_scores() == (engine.providers[0] == "CUDAExecutionProvider")
    x = (np.random.default_rng(1).random((200, engine.dims)) < 0.5).astype(np.float64)
    x[:50, -3:] = np.nan  # missing values: exact rows or likelihood weighting
    engine.graph_scores_enabled = False
    want = engine.logprob(x, seed=0, n_importance=30)
    engine.graph_scores_enabled = True
    got = engine.logprob(x, seed=0, n_importance=30)
    np.testing.assert_array_equal(got.exact, want.exact)
    np.testing.assert_allclose(got.logprob, want.logprob, rtol=0, atol=1e-5)


def test_graph_scores_on_the_shipped_models(data_dir: Path) -> None:
    for name, data in (("binarized-mnist", "binarized_mnist.npz"), ("mushrooms", "mushrooms.npz")):
        engine = Engine(open_model(STORE, name), providers_under_test(), threads=1)
        with np.load(data_dir / data) as npz:
            x = npz["test"][:300].astype(np.float64)
        ks = list(range(engine.n_masks))
        want = engine.mask_logliks(x, ks)
        ll, mix = engine.graph_scores().scores(x)
        np.testing.assert_allclose(ll, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(mix, logmeanexp(want, axis=0), rtol=0, atol=1e-5)
        observed = np.random.default_rng(0).random(x.shape) < 0.7
        got = engine.graph_scores().scores(x, observed=observed)[0]
        np.testing.assert_allclose(got, engine.mask_logliks(x, ks, observed), rtol=0, atol=1e-5)


def test_the_scores_graph_is_checked_at_load_and_let_go_if_wrong(
    tiny_store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the engine would answer log p through the graph (CUDA; forced here), it builds and
    checks it at load; a graph that disagrees with the per-mask passes is not used."""
    from service.engine import jacobi

    monkeypatch.setattr(Engine, "graph_scores_enabled", True)
    good = Engine(open_model(tiny_store, "tiny"), providers_under_test(), threads=1)
    assert good.use_graph_scores() and good._graph_scores is not None  # built at load
    x = (np.random.default_rng(2).random((20, good.dims)) < 0.5).astype(np.float64)
    want = good.logprob(x).logprob

    real = jacobi.GraphScores.scores

    def off_by_one(self: jacobi.GraphScores, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        ll, mix = real(self, *args, **kwargs)  # type: ignore[arg-type]
        return ll + 1.0, mix + 1.0  # a graph that is not the model's

    monkeypatch.setattr(jacobi.GraphScores, "scores", off_by_one)
    with caplog.at_level("WARNING", logger="made.engine"):
        bad = Engine(open_model(tiny_store, "tiny"), providers_under_test(), threads=1)
    assert not bad.use_graph_scores()
    assert "not using the scores graph" in caplog.text and "differs from the per-mask passes by up to 1" in caplog.text
    np.testing.assert_allclose(bad.logprob(x).logprob, want, rtol=0, atol=1e-5)


def test_jacobi_samples_for_the_engine_where_told_and_is_checked_at_load(
    tiny_store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the engine samples by Jacobi (CUDA; forced here), calls of JACOBI_MIN_ROWS rows or
    more go through it, with the same samples; one whose samples disagree at load is not used."""
    from service.engine import engine as engine_module
    from service.engine import jacobi

    model = open_model(tiny_store, "tiny")
    plain = Engine(model, providers_under_test(), threads=1)
    assert plain.use_jacobi() == (plain.providers[0] == "CUDAExecutionProvider")
    n = engine_module.JACOBI_MIN_ROWS * 4
    u, masks = plain.noise(n, seed=8)
    want = plain.sampler.run_masks(masks, u)[0]

    monkeypatch.setattr(Engine, "jacobi_enabled", True)
    told = Engine(model, providers_under_test(), threads=1)
    assert told._jacobi is not None  # built and checked at load
    assert told.sampler_for(n) is told._jacobi and told.sampler_for(1) is told.sampler
    calls = []
    real = jacobi.JacobiSampler.run

    def counted(self: jacobi.JacobiSampler, *args: object, **kwargs: object) -> jacobi.JacobiRun:
        calls.append(len(args[1]))  # type: ignore[arg-type]
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jacobi.JacobiSampler, "run", counted)
    np.testing.assert_array_equal(told.sample_from_noise(u, masks), want)
    x = np.where(np.random.default_rng(3).random((3, told.dims)) < 0.5, 1.0, 0.0)
    x[:, 5:] = np.nan
    x[0] = np.nan  # exact (nothing observed): its 20 completions by Jacobi; the others by SMC on the CPU
    imputed = told.impute(x, n_samples=20, seed=1, n_importance=40)
    assert imputed.exact.tolist() == [True, False, False]
    assert calls == [n, 20]  # the samples, then the exact row's completions; never the particles
    np.testing.assert_array_equal(imputed.samples, plain.impute(x, n_samples=20, seed=1, n_importance=40).samples)

    def wrong(self: jacobi.JacobiSampler, *args: object, **kwargs: object) -> jacobi.JacobiRun:
        run = real(self, *args, **kwargs)  # type: ignore[arg-type]
        run.samples[:] = 1 - run.samples  # not the model's samples
        return run

    monkeypatch.setattr(jacobi.JacobiSampler, "run", wrong)
    with caplog.at_level("WARNING", logger="made.engine"):
        bad = Engine(model, providers_under_test(), threads=1)
    assert not bad.use_jacobi() and bad.sampler_for(n) is bad.sampler
    assert "not sampling by Jacobi iteration" in caplog.text and "64 of 64 samples differ" in caplog.text
    np.testing.assert_array_equal(bad.sample_from_noise(u, masks), want)
