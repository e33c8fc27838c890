"""The engine: numpy in, numpy out, for one stored model (no HTTP, no torch).

log p(x) for the mixture or one mask, with missing values summed out (exactly where every
mask's ordering puts the missing dimensions last, else by likelihood weighting); conditionals;
full conditionals; fast exact sampling; imputation. Safe under concurrent calls: onnxruntime
sessions are thread-safe and the sampler keeps no per-call state.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import onnxruntime as ort

from made.core.errors import InvalidInput, ModelStoreError, format_value
from made.core.numerics import logmeanexp, sigmoid
from made.store.files import DENSE_GRAPH, JACOBI_GRAPH, SCORES_GRAPH, SCORES_OBSERVED_GRAPH, WEIGHTS
from made.store.versions import StoredModel
from service.engine.cancel import checkpoint
from service.engine.checks import check_count, check_first_row
from service.engine.denoise import denoise
from service.engine.jacobi import BUILD_LOCK, GraphScores, JacobiSampler, device_of
from service.engine.missing import LogProbResult, impute, observed_logprob
from service.engine.network import MaskWeights, load_network, mask_logits, mask_weights
from service.engine.runtime import make_session, requested_providers, rows_alike, trim_heap
from service.engine.sampler import FastSampler, Sampler

log = logging.getLogger("made.engine")

# Rows per onnxruntime call, so that large requests do not allocate unbounded logits.
CHUNK = 4096
# Rows of random inputs on which a loaded model's own forward pass is checked against its
# stored graph, per mask, and the largest difference in logits allowed (float32 sums in
# another order differ in their last bits: docs/engine.md gives the figure).
PARITY_ROWS = 8
PARITY_ATOL = 1e-3
# Jacobi sampling (service.engine.jacobi) on a device: calls of fewer rows step in numpy, where a
# pass per dimension costs less than the device's round trips (docs/engine.md; bench/gpu_check.py)
JACOBI_MIN_ROWS = 16
JACOBI_CHECK_ROWS = 64  # noise rows of the load-time check
GRAPH_SCORES_ATOL = 1e-3  # nats per row: a check that the scores graph is the model, not of its precision


def row_loglik(logits: np.ndarray, x: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
    """(N,) float64: sum over d (observed d only, if given) of log p(x_d | x_<d).

    log p(x_d | .) = -softplus(s) with s = -logit where x_d = 1, +logit where x_d = 0, computed
    as max(s, 0) + log1p(exp(-|s|)) in the logits' float32 and summed in float64: much faster
    than two float64 log-sigmoids (docs/engine.md), and its rounding is below that of
    the float32 logits themselves.
    """
    s = np.where(x > 0.5, -logits, logits)  # (N, D) float32
    tail = np.abs(s)
    np.negative(tail, out=tail)
    np.exp(tail, out=tail)
    np.log1p(tail, out=tail)
    np.maximum(s, 0, out=s)
    s += tail  # softplus(s) = -log p(x_d | x_<d)
    if observed is not None:
        s *= observed
    return -s.sum(axis=1, dtype=np.float64)


class Engine:
    def __init__(self, model: StoredModel, providers: list[str] | None = None, threads: int | None = None):
        self.model = model
        self.name = model.name
        self.version = model.version
        self.manifest = model.manifest
        self.dims = model.dims
        self.n_masks = model.n_masks
        self.orderings = model.orderings
        self.image_shape = model.image_shape
        network = load_network(model)  # weights.safetensors, read once
        if network.dims != self.dims or network.n_masks != self.n_masks:
            raise ModelStoreError(f"{model.file(WEIGHTS)} does not match its manifest's dims or n_masks")
        # Each mask's network in its own coordinates, masked, float32: the one copy of the
        # weights that both the sampler and onnxruntime read (network.MaskWeights); the
        # network as stored is let go once they are built.
        self.masks: list[MaskWeights] = [mask_weights(network, k) for k in range(self.n_masks)]
        self.direct = network.direct is not None
        self.flops_per_row = network.flops_per_row()
        providers = providers or requested_providers()
        self.session = make_session(model.file(DENSE_GRAPH), providers, threads)
        self.providers: list[str] = list(self.session.get_providers())
        self._feeds = [self._feed(m, device_of(self.providers)) for m in self.masks]
        # the device path's companions, built on first use or by the checks below
        self._threads = self.session.get_session_options().intra_op_num_threads
        self._jacobi: JacobiSampler | None = None
        self._graph_scores: GraphScores | None = None
        self._check_parity(model, providers, threads)
        if self.use_graph_scores():
            self._check_graph_scores()
        self.sampler = FastSampler(self.masks, activation=model.activation)
        self.sampler.warm()  # the plans now, not on the first request that needs them
        if self.use_jacobi():
            self._check_jacobi()
        # (D, K) float64: the position of dimension d in mask k's ordering (see exact_rows)
        self._positions = np.argsort(self.orderings, axis=1).T.astype(np.float64)
        del network
        trim_heap()  # what loading freed (files read, graphs built, the network as stored) leaves the process
        log.info(
            "loaded model %s version %s (D=%d, K=%d) on %s",
            self.name,
            self.version,
            self.dims,
            self.n_masks,
            ",".join(self.providers),
        )

    # --- validation -------------------------------------------------------------------------
    def check_mask(self, mask: int) -> int:
        if isinstance(mask, bool) or not isinstance(mask, int | np.integer) or not 0 <= mask < self.n_masks:
            raise InvalidInput(
                f"mask {mask!r} is out of range: model {self.name} has {self.n_masks} masks (0..{self.n_masks - 1})"
            )
        return int(mask)

    def check_x(self, x: np.ndarray, allow_missing: bool, checked: bool = False) -> np.ndarray:
        """x as (N, D) floats of 0, 1 and, where allowed, NaN (missing), or InvalidInput naming
        the first row and column that is not. float32 rows stay float32 (what onnxruntime runs
        on), others become float64. checked: x was made so upstream (the service's request
        schema parsed its values, its data plane checked its width), so it is taken as it is:
        a request is validated once."""
        if checked:
            return x
        x = np.asarray(x)
        if x.dtype != np.float32:
            x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise InvalidInput(f"x must be a 2-D array of rows (N, {self.dims}), got shape {x.shape}")
        if x.shape[1] != self.dims:
            raise InvalidInput(f"x has {x.shape[1]} columns, model {self.name} has {self.dims} dimensions")
        missing = np.isnan(x)
        if missing.any() and not allow_missing:
            r, c = (int(i) for i in np.argwhere(missing)[0])
            raise InvalidInput(f"row {r} column {c} is missing; this call needs complete rows")
        bad = ~missing & (x != 0) & (x != 1)
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            raise InvalidInput(f"row {r} column {c} holds {format_value(x[r, c])}, expected 0 or 1")
        return x

    # --- one forward pass -------------------------------------------------------------------
    @staticmethod
    def _feed(m: MaskWeights, device: str) -> dict[str, ort.OrtValue]:
        """Mask m's arrays as onnxruntime values: on the CPU they share the numpy memory (no
        copy); on a GPU they are copied to it once, here."""
        arrays = {
            "order": np.ascontiguousarray(m.ordering, dtype=np.int64),
            "inverse": np.argsort(m.ordering).astype(np.int64),
            **{f"W{l}": w for l, w in enumerate(m.weights)},
            **{f"b{l}": b for l, b in enumerate(m.biases)},
        }
        if m.direct is not None:
            arrays["direct_W"] = m.direct
        return {name: ort.OrtValue.ortvalue_from_numpy(a, device, 0) for name, a in arrays.items()}

    def _check_parity(self, model: StoredModel, providers: list[str], threads: int | None) -> None:
        """Refuse a model whose stored graph of one mask (the format's contract: masks rebuilt from
        the stored degrees) and the rearranged weights run through the dense graph disagree: it
        runs once here, on random rows, for every mask, then is let go. onnxruntime reads its
        initializers from weights.safetensors itself (open_model has checked that file)."""
        stored = make_session(model.onnx_path, providers, threads)
        x = (np.random.default_rng(0).random((PARITY_ROWS, self.dims)) < 0.5).astype(np.float32)
        for k in range(self.n_masks):
            try:
                want = stored.run(["logits"], {"x": x, "mask_index": np.array(k, dtype=np.int64)})[0]
                got = self.logits(x, k)
            except Exception as exc:  # a graph onnxruntime loads but cannot run (its errors have no common base)
                why = " ".join(str(exc).split())
                raise ModelStoreError(
                    f"{model.onnx_path} or {model.file(DENSE_GRAPH)} does not run on the stored weights: {why}"
                ) from None
            reference = mask_logits(self.masks[k], x, model.activation)  # the manifest's activation
            if got.shape == reference.shape and not np.allclose(got, reference, rtol=0, atol=PARITY_ATOL):
                worst = float(np.max(np.abs(got - reference)))
                raise ModelStoreError(
                    f"{model.file(DENSE_GRAPH)}: mask {k} under the manifest's activation {model.activation!r} "
                    f"gives other logits than the stored graph (by up to {worst:.3g}); the manifest is not "
                    "the one made export wrote for these files"
                )
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=PARITY_ATOL):
                worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf
                raise ModelStoreError(
                    f"{model.onnx_path}: mask {k}'s weights give other logits than the "
                    f"stored graph (by up to {worst:.3g}); the file is not what made export "
                    "writes"
                )

    def logits(self, x: np.ndarray, mask: int) -> np.ndarray:
        """(N, D) float32 logits of mask k; missing (NaN) inputs must be replaced beforehand."""
        xf = np.ascontiguousarray(x, dtype=np.float32)
        feed = self._feeds[mask]
        if len(xf) <= CHUNK:
            return self._run(xf, feed)
        return np.concatenate([self._run(xf[i : i + CHUNK], feed) for i in range(0, len(xf), CHUNK)])

    def _run(self, x: np.ndarray, feed: dict[str, ort.OrtValue]) -> np.ndarray:
        """One call of the graph (a single row as two: runtime.rows_alike)."""

        def run(rows: np.ndarray) -> np.ndarray:
            out: np.ndarray = self.session.run_with_ort_values(
                ["logits"], {"x": ort.OrtValue.ortvalue_from_numpy(rows), **feed}
            )[0].numpy()
            return out

        return rows_alike(run, x)

    def mask_logliks(self, x: np.ndarray, masks: list[int], observed: np.ndarray | None = None) -> np.ndarray:
        """(len(masks), N): log p_k of the observed entries (all entries when observed is None)."""
        # converted to float32 once for all masks; NaN can only be where observed is False
        filled = np.ascontiguousarray(x if observed is None else np.nan_to_num(x, nan=0.0), dtype=np.float32)
        if self.use_graph_scores():  # on a GPU: every mask in one call, O(N) numbers back
            return self.graph_scores().scores(filled, masks, observed)[0]
        return self._pass_logliks(filled, masks, observed)

    def _pass_logliks(self, filled: np.ndarray, masks: list[int], observed: np.ndarray | None) -> np.ndarray:
        """mask_logliks by one pass per mask, the logits back on the host."""
        out = np.empty((len(masks), len(filled)))
        for i, k in enumerate(masks):
            out[i] = row_loglik(self.logits(filled, k), filled, observed)
        return out

    def _check_graph_scores(self) -> None:
        """Where the scores graph is to answer mask_logliks (a GPU), build it at load and check it
        against the per-mask passes on random rows; if it fails or disagrees, serve with the
        passes (a warning in the log), never with wrong numbers or a first request that fails."""
        x = (np.random.default_rng(1).random((PARITY_ROWS, self.dims)) < 0.5).astype(np.float32)
        ks = list(range(self.n_masks))
        want = self._pass_logliks(x, ks, None)
        try:
            got = self.graph_scores().scores(x, ks, None)[0]
            worst = float(np.max(np.abs(got - want)))
        except Exception as exc:  # onnxruntime's errors have no common base class
            worst, why = math.inf, f"{type(exc).__name__}: {exc}"
        else:
            why = f"it differs from the per-mask passes by up to {worst:.3g} nats"
        if not worst <= GRAPH_SCORES_ATOL:
            log.warning("model %s: not using the scores graph on %s (%s)", self.name, self.providers[0], why)
            self.graph_scores_enabled = False

    def _masks(self, masks: Literal["all"] | int) -> list[int]:
        if isinstance(masks, str):
            if masks != "all":
                raise InvalidInput(f"masks must be 'all' or a mask index, got {masks!r}")
            return list(range(self.n_masks))
        return [self.check_mask(masks)]

    # --- log-likelihood -----------------------------------------------------------------------
    def logprob(
        self,
        x: np.ndarray,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        checked: bool = False,
        first_row: int = 0,
    ) -> LogProbResult:
        """log p(x) under the mixture of `masks`; missing values (NaN) summed out, exactly where
        every mask's ordering allows, else by the particle filter with n_importance particles per
        mask (service.engine.missing.observed_logprob: row i from default_rng([seed, first_row +
        i]), first_row the index of this request's first row in a call split into requests,
        through the sampler in passes of bounded size: memory does not grow with n_importance).
        checked: see check_x."""
        x = self.check_x(x, allow_missing=True, checked=checked)
        check_count("n_importance", n_importance, 1)
        first_row = check_first_row(first_row)
        ks = self._masks(masks)
        n = len(x)
        observed = ~np.isnan(x)
        complete = observed.all(axis=1)
        logprob = np.empty(n)
        exact = np.ones(n, dtype=bool)
        stderr = np.full(n, np.nan)
        if complete.any():
            per_mask = self.mask_logliks(x if complete.all() else x[complete], ks)
            logprob[complete] = logmeanexp(per_mask, axis=0)
        rows = np.flatnonzero(~complete)
        if len(rows):
            est = observed_logprob(self, x[rows], observed[rows], ks, seed, n_importance, row_ids=first_row + rows)
            logprob[rows], exact[rows], stderr[rows] = est.logprob, est.exact, est.stderr
        return LogProbResult(logprob, exact, stderr)

    # --- conditionals ------------------------------------------------------------------------
    def conditionals(self, x: np.ndarray, mask: int = 0, *, checked: bool = False) -> np.ndarray:
        """(N, D): p(x_d = 1 | the dimensions before d in mask k's ordering). checked: see
        check_x."""
        x = self.check_x(x, allow_missing=False, checked=checked)
        return sigmoid(self.logits(x, self.check_mask(mask)).astype(np.float64))

    def full_conditionals(self, x: np.ndarray) -> np.ndarray:
        """(N, D): p(x_d = 1 | every other dimension) under the mixture."""
        x = self.check_x(x, allow_missing=False)
        lp = self.flip_logprobs(x)
        # log p(x_d = 1, x_-d) - log p(x_d = 0, x_-d) = ±(log p(x) - log p(x flipped at d))
        return sigmoid(np.where(x > 0.5, 1.0, -1.0) * (lp[:, :1] - lp[:, 1:]))

    def flip_logprobs(self, x: np.ndarray) -> np.ndarray:
        """(N, D + 1): log p(x) under the mixture, then log p(x with dimension d flipped) for
        each d: D + 1 rows per row of complete x, CHUNK rows per network call at most, with a
        cancellation checkpoint before each."""
        x = self.check_x(x, allow_missing=False)
        n, d = x.shape
        out = np.empty((n, d + 1))
        rows_per_chunk = max(1, CHUNK // (d + 1))
        eye = np.eye(d, dtype=bool)
        ks = list(range(self.n_masks))
        for start in range(0, n, rows_per_chunk):
            checkpoint()  # a cancelled caller stops here (service.engine.cancel)
            block = x[start : start + rows_per_chunk]  # (b, D)
            flipped = np.repeat(block[:, None, :], d, axis=1)  # (b, D, D): row j has x_j flipped
            flipped[:, eye] = 1.0 - block
            rows = np.concatenate([block[:, None, :], flipped], axis=1).reshape(-1, d)
            out[start : start + len(block)] = logmeanexp(self.mask_logliks(rows, ks), axis=0).reshape(-1, d + 1)
        return out

    # --- sampling ----------------------------------------------------------------------------
    def noise(self, n: int, seed: int, mask: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Uniforms (n, D) and mask ids (n,) for n samples; mask None draws each row's uniformly."""
        if n < 0:
            raise InvalidInput(f"n must be at least 0, got {n}")
        rng = np.random.default_rng(seed)
        if mask is None:
            ks = rng.integers(0, self.n_masks, size=n).astype(np.int64)
        else:
            ks = np.full(n, self.check_mask(mask), dtype=np.int64)
        return rng.random((n, self.dims)), ks

    def sample_from_noise(self, u: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(n, D) uint8 samples: row i under mask masks[i], x_d = 1 where u_d < p_d."""
        for k in np.unique(masks):
            self.check_mask(int(k))
        # all masks step through one loop: a merged batch of mixture samples costs about one
        # loop, not one per mask
        return self.sampler_for(len(u)).run_masks(np.asarray(masks, dtype=np.int64), u)[0]

    def sample(self, n: int, seed: int, mask: int | None = None) -> np.ndarray:
        return self.sample_from_noise(*self.noise(n, seed, mask))

    def naive_sample(self, u: np.ndarray, mask: int) -> np.ndarray:
        """Reference sampler: reruns the whole graph once per dimension (D passes)."""
        x = np.zeros(u.shape, dtype=np.float32)
        for d in self.orderings[self.check_mask(mask)]:
            p = sigmoid(self.logits(x, mask)[:, d].astype(np.float64))
            x[:, d] = u[:, d] < p
        return x.astype(np.uint8)

    # --- imputation ---------------------------------------------------------------------------
    def exact_rows(self, observed: np.ndarray) -> np.ndarray:
        """(N,) bool: rows whose missing dimensions every mask's ordering puts after all the
        observed ones (rows with nothing missing included). For such a row p_k(x_obs) is one
        pass per mask and ancestral sampling of the missing values given x_obs is exact.

        m observed dimensions come first in an ordering when their positions in it are 0..m-1,
        i.e. (being distinct) when they sum to m (m - 1) / 2: one (N, D) x (D, K) product, exact
        in float64, instead of comparing every row's flags along every ordering."""
        observed = np.asarray(observed, dtype=bool)
        m = observed.sum(axis=1, dtype=np.float64)
        sums = observed.astype(np.float64) @ self._positions  # (N, K)
        return np.asarray((sums == (m * (m - 1) / 2)[:, None]).all(axis=1))

    # p(x_missing | x_observed) under the mixture, per row (NaN marks a missing value): exact where
    # every mask's ordering puts the missing dimensions last, else likelihood weighting
    impute = impute

    # --- denoising ----------------------------------------------------------------------------
    # p(clean x | noisy y) with independent bit flips of probability eps (a number, one per row or
    # one per entry)
    denoise = denoise

    # --- the device path: Jacobi sampling, log-likelihoods computed in the graph ---
    def jacobi_sampler(self) -> JacobiSampler:
        """The Jacobi fixed-point sampler (service.engine.jacobi) on this engine's providers
        and per-mask weights, built on first use; a stand-in for self.sampler (run_masks)."""
        if self._jacobi is None:
            with BUILD_LOCK:
                if self._jacobi is None:
                    model = self.model
                    self._jacobi = JacobiSampler(
                        model.file(JACOBI_GRAPH), self.masks, self._feeds, self.providers, self._threads
                    )
        return self._jacobi

    def sample_jacobi(self, u: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """As sample_from_noise, by Jacobi iteration (one batched forward pass per iteration,
        at most D + 1): the same samples except where |u - p| is below float32 resolution."""
        for k in np.unique(masks):
            self.check_mask(int(k))
        return self.jacobi_sampler().run_masks(np.asarray(masks, dtype=np.int64), u)[0]

    def graph_scores(self) -> GraphScores:
        """log p_k(x) of all K masks in one graph (service.engine.jacobi.GraphScores), built on
        first use (it stacks a copy of the K masks' weights)."""
        if self._graph_scores is None:
            with BUILD_LOCK:
                if self._graph_scores is None:
                    self._graph_scores = GraphScores(
                        (self.model.file(SCORES_GRAPH), self.model.file(SCORES_OBSERVED_GRAPH)),
                        self.masks,
                        self.providers,
                        self._threads,
                    )
        return self._graph_scores

    # None: by provider (the graph on CUDA; on the CPU the per-mask passes, which bench/engine_bench.py
    # measured as fast or faster there, docs/engine.md); True or False forces one path
    graph_scores_enabled: bool | None = None

    def use_graph_scores(self) -> bool:
        if self.graph_scores_enabled is not None:
            return self.graph_scores_enabled
        return self.providers[0] == "CUDAExecutionProvider"

    # None: by provider (Jacobi on CUDA, for calls of at least JACOBI_MIN_ROWS rows; the numpy
    # stepping sampler on the CPU, where it is faster, docs/engine.md);
    # True or False forces the choice for calls of JACOBI_MIN_ROWS rows or more
    jacobi_enabled: bool | None = None

    def use_jacobi(self) -> bool:
        if self.jacobi_enabled is not None:
            return self.jacobi_enabled
        return self.providers[0] == "CUDAExecutionProvider"

    def sampler_for(self, rows: int) -> Sampler:
        """The sampler of a call of `rows` rows (sample, impute, denoise): Jacobi on the device
        where use_jacobi() and the call is large enough to fill it, else the stepping sampler.
        Both draw the same samples from the same noise (up to float32 ties)."""
        if rows >= JACOBI_MIN_ROWS and self.use_jacobi():
            return self.jacobi_sampler()
        return self.sampler

    def _check_jacobi(self) -> None:
        """Where Jacobi is to sample (a GPU), build it at load and check its samples against the
        stepping sampler's on the same noise, every mask; if it fails or disagrees on more than
        a near-tie's row, sample with the stepping sampler (a warning in the log)."""
        u, ks = self.noise(JACOBI_CHECK_ROWS, seed=2)
        ks[: self.n_masks] = np.arange(min(self.n_masks, len(ks)))
        want = self.sampler.run_masks(ks, u)[0]
        try:
            differ = int((self.jacobi_sampler().run_masks(ks, u)[0] != want).any(axis=1).sum())
            why = f"{differ} of {len(u)} samples differ from the stepping sampler's"
        except Exception as exc:  # onnxruntime's errors have no common base class
            differ, why = len(u), f"{type(exc).__name__}: {exc}"
        if differ > 1:
            log.warning("model %s: not sampling by Jacobi iteration on %s (%s)", self.name, self.providers[0], why)
            self.jacobi_enabled = False
