"""The bit rows codec of the data plane: rows of 0/1 (JSON lists, bit-packed, or the Open
Inference Protocol's tensors, all parsed into float32 before they arrive here) to a bit engine
and back, with the engine's fast paths.

Concurrent /logprob of complete rows, /conditionals and /sample requests for one model merge into
one engine call (service.core.batching) and large ones go in pieces of MADE_MAX_BATCH rows, so
that the engine runs cache-sized batches and other requests get their turns in between. A
/sample request's noise is drawn from its own seed by the first of its pieces to run, so that
merging or splitting requests changes no one's samples. Everything else (rows with missing
values, /impute, /denoise) runs as one engine call in a worker thread under the request's
timeout. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from made.core.errors import RequestTimeout
from service.core import budget
from service.core.batching import Batcher
from service.core.codec import Codec
from service.core.imaging import samples_png
from service.core.metrics import Metrics
from service.core.request_checks import RowChecks, new_seed
from service.core.scheduling import FairScheduler
from service.core.schemas import (
    ConditionalsResponse,
    DenoiseRequest,
    DenoiseResponse,
    ImputeRequest,
    ImputeResponse,
    LogProbResponse,
    SampleRequest,
    SampleResponse,
    pack_rows,
)
from service.engine.engine import Engine
from service.engine.missing import LogProbResult
from service.settings import Settings

T = TypeVar("T")


def _drawn_fields(engine: Engine, seed: int, samples: np.ndarray, encoding: str) -> dict[str, Any]:
    """What every answer of draws (/sample, /impute, /denoise) holds: the model, the seed that
    repeats it, and the samples as the request's encoding asks (JSON rows, or bit-packed rows
    and their shape)."""
    fields: dict[str, Any] = {"model": engine.name, "version": engine.version, "seed": seed}
    if encoding == "packed":
        return {**fields, "samples": None, "samples_b64": pack_rows(samples), "shape": list(samples.shape)}
    return {**fields, "samples": samples.tolist(), "samples_b64": None, "shape": None}


def _floats(a: np.ndarray) -> list[float | None]:
    """NaN -> None (JSON null)."""
    return [None if v != v else v for v in a.tolist()]


class _Noise:
    """One /sample request's noise, from its own seed: drawn in an engine thread by the first of
    the request's pieces to run (Engine.noise), so that merging or splitting requests changes no
    one's samples and the event loop draws nothing."""

    def __init__(self, engine: Engine, n: int, seed: int, mask: int | None) -> None:
        self._args = (engine, n, seed, mask)
        self._lock = threading.Lock()
        self._drawn: tuple[np.ndarray, np.ndarray] | None = None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        """(uniforms (n, D), mask ids (n,))."""
        with self._lock:
            if self._drawn is None:
                engine, n, seed, mask = self._args
                self._drawn = engine.noise(n, seed, mask)
            return self._drawn


@dataclass(frozen=True)
class _SampleWork:
    noise: _Noise
    rows: slice  # the request's rows this piece samples

    @property
    def n(self) -> int:
        return int(self.rows.stop - self.rows.start)


class BitPlane(Codec):
    """Rows of bits in, rows and numbers out, for one DataPlane (see Codec): requests for one
    model merged in its scheduler's turns, a reload's engines told apart by is_served."""

    def __init__(
        self,
        settings: Settings,
        in_thread: Callable[..., Awaitable[Any]],
        timed: Callable[[Awaitable[Any]], Awaitable[Any]],
        metrics: Metrics,
        scheduler: FairScheduler,
        is_served: Callable[[Engine], bool],
        timeout_error: Callable[[], RequestTimeout],
    ) -> None:
        super().__init__(settings, in_thread, timed)
        self.metrics = metrics
        self.scheduler = scheduler
        self.check = RowChecks(settings, metrics)
        self._is_served = is_served
        self._timeout_error = timeout_error
        self._batchers: dict[tuple[Any, ...], Batcher[Any, Any]] = {}
        # Batchers of versions a reload replaced: they finish their queues, then are collected
        # (with the old Engine they hold); shutdown still waits for them.
        self._retired: weakref.WeakSet[Batcher[Any, Any]] = weakref.WeakSet()

    # --- merging requests ------------------------------------------------------------------------
    def _batcher(
        self, endpoint: str, engine: Engine, key: object, run: Callable[[list[Any]], list[Any]]
    ) -> Batcher[Any, Any]:
        ident = (endpoint, engine.name, id(engine), key)  # id: a reload may reuse a version
        batcher = self._batchers.get(ident)
        if batcher is None:
            observe = functools.partial(self.metrics.observe_batch, endpoint, engine.name)
            batcher = Batcher(
                run,
                delay_s=self.settings.batch_delay_ms / 1000,
                max_rows=self.settings.max_batch,
                execute=functools.partial(self.scheduler.run, endpoint),
                observe=observe,
                timeout_s=self.settings.request_timeout,
                expired=self._timeout_error,
            )
            if self._is_served(engine):
                self._batchers[ident] = batcher
            else:  # the request took its engine just before a reload replaced it
                self._retired.add(batcher)
        return batcher

    def retire(self, served: set[int]) -> None:
        """Retire the batchers of engines whose ids are not in `served` (a reload replaced them)."""
        for ident in [i for i in self._batchers if i[2] not in served]:
            self._retired.add(self._batchers.pop(ident))

    async def aclose(self) -> None:

        batchers = [*self._batchers.values(), *self._retired]
        await asyncio.gather(*(b.aclose() for b in batchers))

    def _pieces(self, n: int) -> list[slice]:
        """A large request goes in pieces of at most MADE_MAX_BATCH rows: the engine is fastest
        on cache-sized batches, and other requests get their turns in between."""
        step = self.settings.max_batch
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _row_pieces(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        if len(x) <= self.settings.max_batch:
            return [(x, len(x))]
        return [(x[rows], rows.stop - rows.start) for rows in self._pieces(len(x))]

    async def _batched(self, batcher: Batcher[Any, T], pieces: list[tuple[Any, int]]) -> list[T]:
        """The results of a request's pieces (item, rows) from their batcher. The batcher
        answers a piece RequestTimeout at MADE_REQUEST_TIMEOUT (no cancel scope or task per
        request: on one-row requests their cost rivals the model's); then the pieces not run
        yet are dropped, those running finish unobserved. The work the request's budget check
        allowed goes with them: a merged call is not sized by one request's units, and a later
        call of this request (a PNG of its samples) is not charged them."""
        budget.take_checked()
        futures = [batcher.enqueue(item, rows) for item, rows in pieces]
        try:
            return [await future for future in futures]
        finally:
            for future in futures:
                if not future.cancel() and not future.cancelled():
                    future.exception()  # retrieved: a failed piece after the one that raised

    # --- /logprob --------------------------------------------------------------------------------
    async def logprob(
        self,
        engine: Engine,
        x: np.ndarray,
        masks: Literal["all"] | int,
        seed: int | None,
        n_importance: int,
        first_row: int = 0,
    ) -> LogProbResponse:
        """Complete rows draw nothing (first_row unused): merged with other requests' into one
        exact pass; rows with missing values go to the engine whole, row i drawing from
        default_rng([seed, first_row + i])."""
        self.check.rows(engine, x, "/logprob")
        if masks != "all":
            self.check.mask(engine, int(masks), "masks")
        complete = not np.isnan(x).any()
        seed = None if complete else (seed if seed is not None else new_seed())
        if complete:
            k = engine.n_masks if masks == "all" else 1
            budget.check_work(
                self.settings.max_work, budget.passes(len(x), k, engine.dims), f"{len(x)} rows x {k} masks"
            )
            # Exact, one pass: merge with other requests for the same model and masks.
            run = functools.partial(_logprob_batch, engine, masks)
            result = await self._logprob_pieces(self._batcher("/logprob", engine, masks, run), x)
        else:
            self.check.draws(x, n_importance, engine, engine.n_masks if masks == "all" else 1)
            result = await self._timed(
                self._in_thread(
                    engine.logprob,
                    x,
                    masks=masks,
                    seed=seed,
                    n_importance=n_importance,
                    checked=True,
                    first_row=first_row,
                )
            )
        return LogProbResponse.model_construct(
            model=engine.name,
            version=engine.version,
            logprob=result.logprob.tolist(),
            exact=result.exact.tolist(),
            stderr=_floats(result.stderr),
            seed=seed,
        )

    async def _logprob_pieces(self, batcher: Batcher[np.ndarray, LogProbResult], x: np.ndarray) -> LogProbResult:
        parts = await self._batched(batcher, self._row_pieces(x))
        if len(parts) == 1:
            return parts[0]
        return LogProbResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("logprob", "exact", "stderr")))

    # --- /conditionals ---------------------------------------------------------------------------
    async def conditionals(self, engine: Engine, x: np.ndarray, mask: int) -> ConditionalsResponse:
        self.check.rows(engine, x, "/conditionals")
        mask = self.check.mask(engine, mask)
        budget.check_work(self.settings.max_work, budget.passes(len(x), 1, engine.dims), f"{len(x)} rows")
        run = functools.partial(_conditionals_batch, engine, mask)
        parts = await self._batched(self._batcher("/conditionals", engine, mask, run), self._row_pieces(x))
        probs = np.concatenate(parts)
        return ConditionalsResponse.model_construct(
            model=engine.name,
            version=engine.version,
            mask=mask,
            ordering=engine.orderings[mask].tolist(),
            probs=probs.tolist(),
        )

    # --- /sample ---------------------------------------------------------------------------------
    async def _samples(self, engine: Engine, n: int, seed: int, mask: int | None) -> np.ndarray:
        noise = _Noise(engine, n, seed, mask)
        run = functools.partial(_sample_batch, engine)
        batcher = self._batcher("/sample", engine, None, run)
        parts = await self._batched(
            batcher, [(_SampleWork(noise, rows), rows.stop - rows.start) for rows in self._pieces(n)]
        )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def sample(self, engine: Engine, req: SampleRequest) -> SampleResponse:
        mask = self.check.sample(engine, req)
        seed = req.seed if req.seed is not None else new_seed()
        samples = await self._samples(engine, req.n, seed, mask)
        return SampleResponse.model_construct(mask=req.mask, **_drawn_fields(engine, seed, samples, req.encoding))

    async def sample_png(self, engine: Engine, shape: list[int], req: SampleRequest, scale: int) -> tuple[bytes, int]:
        """A grid of the samples as PNG (each of `shape`), and the seed used."""
        mask = self.check.sample(engine, req)
        seed = req.seed if req.seed is not None else new_seed()
        samples = await self._samples(engine, req.n, seed, mask)
        png = await self._in_thread(samples_png, samples, shape, scale)
        return png, seed

    async def _draw(
        self, method: Callable[..., T], req: ImputeRequest | DenoiseRequest, seed: int, n_importance: int, *args: Any
    ) -> T:
        """An engine's impute or denoise of the request, in a worker thread under its timeout."""
        return await self._timed(
            self._in_thread(
                method,
                *args,
                n_samples=req.n_samples,
                seed=seed,
                n_importance=n_importance,
                checked=True,
                first_row=req.first_row,
            )
        )

    # --- /impute ---------------------------------------------------------------------------------
    async def impute(self, engine: Engine, req: ImputeRequest) -> ImputeResponse:
        x = req.rows
        self.check.rows(engine, x, "/impute")
        self.check.completions(len(x), req.n_samples)
        # an exact row draws max(n_samples, 1) completions
        self.check.draws(x, req.n_importance, engine, engine.n_masks, per_exact_row=max(req.n_samples, 1))
        seed = req.seed if req.seed is not None else new_seed()
        r = await self._draw(engine.impute, req, seed, req.n_importance, x)
        return ImputeResponse.model_construct(
            **_drawn_fields(engine, seed, r.samples, req.encoding),
            marginals=r.marginals.tolist(),
            logprob_observed=r.logprob_observed.tolist(),
            stderr=_floats(getattr(r, "stderr", np.full(len(x), np.nan))),
            exact=r.exact.tolist(),
            ess=r.ess.tolist(),
        )

    # --- /denoise --------------------------------------------------------------------------------
    async def denoise(self, engine: Engine, req: DenoiseRequest) -> DenoiseResponse:
        """Every row that is not exact (eps 0 everywhere) runs a particle filter of
        req.particles particles per mask (service.engine.smc) in a worker thread; no merging
        with other requests (each row's work is already a large batch of particles)."""
        x = req.rows
        self.check.denoise(engine, x, req.eps, req.n_samples, req.particles)
        seed = req.seed if req.seed is not None else new_seed()
        r = await self._draw(engine.denoise, req, seed, req.particles, x, req.eps)
        return DenoiseResponse.model_construct(
            **_drawn_fields(engine, seed, r.samples, req.encoding),
            marginals=r.marginals.tolist(),
            most_likely=r.most_likely.tolist(),
            logprob_noisy=r.logprob_noisy.tolist(),
            stderr=_floats(r.stderr),
            ess=r.ess.tolist(),
        )


# --- batch functions (run in a worker thread) ---------------------------------------------


def _split(total: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """total's rows in consecutive pieces of `sizes`: views, as np.split gives them, without
    its overhead, which one-row batches would pay on every request."""
    return [total[start:end] for start, end in itertools.pairwise([0, *itertools.accumulate(sizes)])]


def _rows(xs: list[np.ndarray]) -> np.ndarray:
    """The merged requests' rows (a lone request's as they are, no copy)."""
    return xs[0] if len(xs) == 1 else np.concatenate(xs)


def _logprob_batch(engine: Engine, masks: Literal["all"] | int, xs: list[np.ndarray]) -> list[LogProbResult]:
    r = engine.logprob(_rows(xs), masks=masks, checked=True)
    sizes = [len(x) for x in xs]
    return [
        LogProbResult(lp, ex, se)
        for lp, ex, se in zip(_split(r.logprob, sizes), _split(r.exact, sizes), _split(r.stderr, sizes), strict=True)
    ]


def _conditionals_batch(engine: Engine, mask: int, xs: list[np.ndarray]) -> list[np.ndarray]:
    return _split(engine.conditionals(_rows(xs), mask=mask, checked=True), [len(x) for x in xs])


def _sample_batch(engine: Engine, works: list[_SampleWork]) -> list[np.ndarray]:
    noise = [w.noise.get() for w in works]
    u = np.concatenate([u[w.rows] for (u, _), w in zip(noise, works, strict=True)])
    masks = np.concatenate([ks[w.rows] for (_, ks), w in zip(noise, works, strict=True)])
    return _split(engine.sample_from_noise(u, masks), [w.n for w in works])
