"""No single request can take the server down: importance draws, imputation and denoising go
through the network in chunks whose size does not depend on n_importance (their memory does not
grow with it), a chunk size that splits one row's draws over several sampler calls gives the same
answers as one large chunk, and a cancelled call stops at its next chunk by raising Abandoned.

Real computations on small models (tiny trained ones from conftest, and a random D=256 one for
the memory measurements); the sampler is only wrapped, to count its calls."""

from __future__ import annotations

import contextvars
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import write_random_model

import service.engine.missing as missing_module
import service.engine.sampler as sampler_module
import service.engine.smc as smc_module
import service.engine.smc_pass as smc_pass_module
from service.engine.cancel import Abandoned, CancelToken, running_under
from service.engine.engine import Engine
from service.engine.smc import DRAWS_PER_PARTICLE

WIDE = 256  # dimensions of the memory model: one draw of it is WIDE bytes as uint8, 8 x WIDE as noise


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A D=256, K=2 random MADE (order-agnostic, so missing values before observed ones are
    likelihood weighted), one thread, on the CPU."""
    from made.store.versions import open_model

    store = tmp_path_factory.mktemp("wide") / "store"
    write_random_model(store, "wide", WIDE, [16], 2, order_agnostic=True, direct=False, seed=3)
    engine = Engine(open_model(store, "wide"), ["CPUExecutionProvider"], threads=1)
    engine.jacobi_enabled = False
    return engine


def half_missing(engine: Engine, n: int = 1, seed: int = 0) -> np.ndarray:
    x = (np.random.default_rng(seed).random((n, engine.dims)) < 0.5).astype(np.float64)
    x[:, : engine.dims // 2] = np.nan
    return x


def peak_bytes(call: Callable[[], Any]) -> int:
    """The largest memory (numpy's arrays included) traced while `call` runs, above what was in
    use when it started."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def growth_per_draw(engine: Engine, call: Callable[[int], Any], small: int = 2000, large: int = 20000) -> float:
    """Bytes of peak memory per extra importance draw, from n_importance small to large."""
    call(small)  # warm: plans, caches
    low, high = peak_bytes(lambda: call(small)), peak_bytes(lambda: call(large))
    return (high - low) / (engine.n_masks * (large - small))


# Calls of 500 draws: far fewer than a request's 2 x 20000, so that memory is the call's, not the request's.
CALL_VALUES = 500 * WIDE


def test_logprob_with_missing_values_holds_no_more_memory_for_more_draws(
    wide: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smc_module, "_SMC_VALUES", CALL_VALUES)
    x = half_missing(wide)
    assert not wide.logprob(x, seed=0, n_importance=DRAWS_PER_PARTICLE * 2).exact[0]
    wide.logprob(x, seed=0, n_importance=DRAWS_PER_PARTICLE * 2000)
    low = peak_bytes(lambda: wide.logprob(x, seed=0, n_importance=DRAWS_PER_PARTICLE * 2000))
    high = peak_bytes(lambda: wide.logprob(x, seed=0, n_importance=DRAWS_PER_PARTICLE * 20000))
    # before: all 2 x 20000 draws' uniforms at once (82 MB here); now a pass's particles and
    # the islands' evidence
    assert high < 1.5 * low, (low, high)


def test_weighted_imputation_keeps_island_summaries_not_particles(
    wide: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smc_module, "_SMC_VALUES", CALL_VALUES)
    x = half_missing(wide)
    assert not wide.exact_rows(~np.isnan(x))[0]
    per_draw = growth_per_draw(wide, lambda s: wide.impute(x, n_samples=5, seed=1, n_importance=DRAWS_PER_PARTICLE * s))
    # before: the pool (WIDE bytes a draw) and its float64 copy in w_norm @ pool (8 x WIDE); now
    # per island of up to smc.ISLAND_MAX particles, its weighted mean
    assert per_draw < WIDE / 4, per_draw


def test_denoising_keeps_island_summaries_not_particles(wide: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smc_module, "_SMC_VALUES", CALL_VALUES)
    y = np.nan_to_num(half_missing(wide), nan=1.0)
    per_draw = growth_per_draw(wide, lambda s: wide.denoise(y, 0.1, n_samples=200, seed=2, n_importance=s))
    # per island of up to smc.ISLAND_MAX particles: its weighted mean (8 x WIDE bytes), nothing of its
    # particles; and one pick per mask and sample, not per island and sample (200 x WIDE an island)
    assert per_draw < WIDE / 4, per_draw


class Calls:
    """Counts the engine's sampler calls (the real ones, run as they are) and their sizes, and
    runs `then(count)` after each."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch, then: Callable[[int], None] | None = None):
        self.sizes: list[int] = []
        real = engine.sampler.run_masks

        def run_masks(masks: np.ndarray, u: np.ndarray, *args: Any, **kwargs: Any) -> Any:
            out = real(masks, u, *args, **kwargs)
            self.sizes.append(len(u))
            if then is not None:
                then(len(self.sizes))
            return out

        monkeypatch.setattr(engine, "jacobi_enabled", False)  # every call through engine.sampler
        monkeypatch.setattr(engine.sampler, "run_masks", run_masks)


class Passes:
    """Counts the particle filter's passes through the sampler (smc_pass.walk_plan, run as it is) and
    cancels `token` once `after` are done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, token: CancelToken | None = None, after: int = -1) -> None:
        self.count = 0
        real = smc_pass_module.walk_plan

        def counted(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            self.count += 1
            if token is not None and self.count == after:
                token.cancel("timed out")
            return out

        monkeypatch.setattr(smc_pass_module, "walk_plan", counted)


def test_logprob_particles_go_through_the_sampler_in_bounded_passes_with_the_same_answers(
    tiny_engines: dict[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engines["tiny"]
    x = half_missing(engine, 3, seed=4)
    x[1, [1, 5]] = np.nan
    x[2] = np.nan
    x[2, 3] = 1.0
    one = engine.logprob(x, seed=7, n_importance=DRAWS_PER_PARTICLE * 300)
    assert not one.exact.all()
    passes = Passes(monkeypatch)
    monkeypatch.setattr(smc_module, "_SMC_VALUES", 8 * 4 * 75)  # one island of 75 particles a mask, a pass
    got = engine.logprob(x, seed=7, n_importance=DRAWS_PER_PARTICLE * 300)
    # several passes a row (pilot, then the masks' stage-2 islands, each within the cap), same answers
    assert passes.count > 2 * int((~one.exact).sum()), passes.count
    np.testing.assert_array_equal(got.exact, one.exact)
    np.testing.assert_allclose(got.logprob, one.logprob, rtol=1e-12)
    np.testing.assert_allclose(got.stderr, one.stderr, rtol=1e-9)
    # one mask: the same particles of that mask, whatever the passes
    single = engine.logprob(x, masks=2, seed=8, n_importance=DRAWS_PER_PARTICLE * 50)
    monkeypatch.setattr(smc_module, "_SMC_VALUES", 1 << 23)
    np.testing.assert_allclose(
        engine.logprob(x, masks=2, seed=8, n_importance=DRAWS_PER_PARTICLE * 50).logprob, single.logprob, rtol=1e-12
    )


@pytest.fixture
def cancel_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Calls, CancelToken, Any]]]:
    """run(engine, call, after=n): call() in a worker thread under a fresh token (as the service
    runs engine calls, the context copied into the thread), the token cancelled by the sampler
    wrapper once n calls are done (n = 0: before the call starts); returns (calls, token,
    result or the exception raised)."""
    pool = ThreadPoolExecutor(1)

    def run(engine: Engine, call: Callable[[], Any], after: int) -> tuple[Calls, CancelToken, Any]:
        token = CancelToken()
        calls = Calls(engine, monkeypatch, lambda count: token.cancel("timed out") if count == after else None)
        if after == 0:
            token.cancel("timed out")
        with running_under(token):
            ctx = contextvars.copy_context()
        future = pool.submit(ctx.run, call)
        try:
            return calls, token, future.result(timeout=120)
        except Abandoned as exc:
            return calls, token, exc

    yield run
    pool.shutdown()


def test_a_cancelled_logprob_stops_at_its_next_pass(
    tiny_engines: dict[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engines["tiny"]
    monkeypatch.setattr(smc_module, "_SMC_VALUES", 8 * 4 * 50)  # one island of 50 particles a mask, a pass
    x = half_missing(engine, 1, seed=6)
    token = CancelToken()
    passes = Passes(monkeypatch, token, after=3)
    with running_under(token), pytest.raises(Abandoned, match="timed out"):
        engine.logprob(x, seed=1, n_importance=DRAWS_PER_PARTICLE * 200)
    assert passes.count == 3  # stopped there, of more
    with running_under(CancelToken()):  # a token never cancelled: to the end
        got = engine.logprob(x, seed=1, n_importance=DRAWS_PER_PARTICLE * 200)
    assert passes.count - 3 > 3  # the whole call takes more passes than the cancelled one ran
    assert engine.logprob(x, seed=1, n_importance=DRAWS_PER_PARTICLE * 200).logprob == pytest.approx(
        got.logprob, rel=1e-12
    )


@pytest.mark.parametrize("exact", [True, False])
def test_a_cancelled_imputation_stops_at_its_next_chunk(
    tiny_engines: dict[str, Engine], monkeypatch: pytest.MonkeyPatch, cancel_after: Any, exact: bool
) -> None:
    engine = tiny_engines["tiny"]
    monkeypatch.setattr(missing_module, "_IMPUTE_VALUES", 8 * 10)
    monkeypatch.setattr(smc_module, "_SMC_VALUES", 8 * 4 * 25)  # one island of 25 particles a mask, a pass
    x = half_missing(engine, 2, seed=7)
    if exact:  # every mask's ordering last: all missing
        x[:] = np.nan
    assert engine.exact_rows(~np.isnan(x)).all() == exact
    call = lambda: engine.impute(x, n_samples=100, seed=1, n_importance=DRAWS_PER_PARTICLE * 100)  # noqa: E731
    if exact:
        calls, _, got = cancel_after(engine, call, after=2)
        assert isinstance(got, Abandoned)
        assert calls.sizes == [10, 10]  # of 20 calls (2 x 100 completions)
    else:
        token = CancelToken()
        passes = Passes(monkeypatch, token, after=2)
        with running_under(token), pytest.raises(Abandoned):
            call()
        assert passes.count == 2  # of 2 rows x 4 islands
    calls, _, got = cancel_after(engine, call, after=0)
    assert isinstance(got, Abandoned) and calls.sizes == []


def test_a_cancelled_denoising_stops_at_its_next_pass(
    tiny_engines: dict[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engines["tiny10"]
    monkeypatch.setattr(smc_module, "_SMC_VALUES", 10 * 3 * 25)  # one island of 25 particles a pass
    y = (np.random.default_rng(8).random((2, 10)) < 0.5).astype(np.float64)
    token = CancelToken()
    passes: list[int] = []
    real = smc_pass_module.walk_plan

    def counted(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        passes.append(1)
        if len(passes) == 3:
            token.cancel("timed out")
        return out

    monkeypatch.setattr(smc_pass_module, "walk_plan", counted)
    call = lambda: engine.denoise(y, 0.1, n_samples=10, seed=1, n_importance=100)  # noqa: E731
    with running_under(token), pytest.raises(Abandoned, match="timed out"):
        call()
    assert len(passes) == 3  # stopped there, of more
    passes.clear()
    call()
    assert len(passes) > 3


def test_cancelled_explanations_and_large_sampler_calls_stop(
    tiny_engines: dict[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engines["tiny"]
    x = (np.random.default_rng(9).random((3000, engine.dims)) < 0.5).astype(np.float64)
    token = CancelToken()
    token.cancel("shutting down")
    with running_under(token), pytest.raises(Abandoned, match="shutting down"):
        engine.full_conditionals(x)
    # the sampler's own loop over passes of MAX_ROWS rows: stops between passes
    monkeypatch.setattr(sampler_module, "MAX_ROWS", 100)
    passes: list[int] = []
    real = sampler_module._run_plan
    monkeypatch.setattr(
        sampler_module, "_run_plan", lambda plan, rows, *a, **k: passes.append(len(rows)) or real(plan, rows, *a, **k)
    )
    u = np.random.default_rng(10).random((1000, engine.dims))
    with running_under(token), pytest.raises(Abandoned):
        engine.sampler.run_masks(np.zeros(1000, dtype=np.int64), u)
    assert passes == [100]
    assert engine.sampler.run_masks(np.zeros(1000, dtype=np.int64), u)[0].shape == (1000, engine.dims)
