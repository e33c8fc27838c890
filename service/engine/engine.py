"""The engine: numpy in, numpy out, for one stored model (no HTTP, no torch).

log p(x) for the mixture or one mask, with missing values summed out (exactly where every
mask's ordering puts the missing dimensions last, else by likelihood weighting); conditionals;
full conditionals; fast exact sampling; imputation. Safe under concurrent calls: onnxruntime
sessions are thread-safe and the sampler keeps no per-call state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort

from made.core.errors import InvalidInput, ModelStoreError, format_value
from made.core.masks import exact_orders
from made.onnx_graph import dense_graph
from made.store.versions import StoredModel
from service.engine.cancel import checkpoint
from service.engine.denoise import DenoiseResult, denoise
from service.engine.jacobi import BUILD_LOCK, GraphScores, JacobiSampler, device_of
from service.engine.network import MaskWeights, load_network, mask_weights
from service.engine.runtime import make_session, requested_providers
from service.engine.sampler import FastSampler, split_draws, stream_weighted

log = logging.getLogger("made.engine")

# Rows per onnxruntime call, so that large requests do not allocate unbounded logits.
CHUNK = 4096
# Rows of random inputs on which a loaded model's own forward pass is checked against its
# stored graph, per mask, and the largest difference in logits allowed (float32 sums in
# another order differ by ~1e-5 on the 784-dimensional model).
PARITY_ROWS = 8
PARITY_ATOL = 1e-3
# Jacobi sampling (service.engine.jacobi) on a device: calls of fewer rows step in numpy, where a
# pass per dimension costs less than ~40 device round trips; to be tuned from bench/gpu_check.py
JACOBI_MIN_ROWS = 16
JACOBI_CHECK_ROWS = 64  # noise rows of the load-time check
GRAPH_SCORES_ATOL = 1e-3  # nats per row: a check that the scores graph is the model, not of its precision
# Values (draws x D) of noise in one sampler call of /impute or of /logprob's importance draws,
# at most: bounds what a call holds (8 bytes of noise, 3 of clamps and completion, the
# sampler's buffers, and for exact rows 8 of per-step probability per value: measured peaks of
# ~185 MiB at 1 << 23 on binarized-mnist, ~305 MiB for exact rows, so about half that at
# 1 << 22, within the 300 MB a request may add to the server, docs/operations.md), whatever
# n_importance, while rows and masks still step through the sampler together.
_IMPUTE_VALUES = 1 << 22


@dataclass
class LogProbResult:
    logprob: np.ndarray  # (N,) float64, nats
    exact: np.ndarray  # (N,) bool
    stderr: np.ndarray  # (N,) float64, NaN where exact


@dataclass
class ImputeResult:
    samples: np.ndarray  # (N, S, D) uint8
    marginals: np.ndarray  # (N, D) float64
    logprob_observed: np.ndarray  # (N,) float64
    exact: np.ndarray  # (N,) bool
    ess: np.ndarray  # (N,) float64
    stderr: np.ndarray  # (N,) float64 of logprob_observed, NaN where exact


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def row_loglik(logits: np.ndarray, x: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
    """(N,) float64: sum over d (observed d only, if given) of log p(x_d | x_<d).

    log p(x_d | .) = -softplus(s) with s = -logit where x_d = 1, +logit where x_d = 0, computed
    as max(s, 0) + log1p(exp(-|s|)) in the logits' float32 and summed in float64: about ten
    times faster than two float64 log-sigmoids, and its rounding (~1e-7 per term) is below that
    of the float32 logits themselves.
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
        network = load_network(model.onnx_path, self.orderings)
        if network.dims != self.dims or network.n_masks != self.n_masks:
            raise ModelStoreError(f"{model.onnx_path} does not match its manifest's dims or n_masks")
        # Each mask's network in its own coordinates, masked, float32: the one copy of the
        # weights that both the sampler and onnxruntime read (network.MaskWeights); the
        # network as stored is let go once they are built.
        self.masks: list[MaskWeights] = [mask_weights(network, k) for k in range(self.n_masks)]
        self.direct = network.direct is not None
        self.flops_per_row = network.flops_per_row()
        providers = providers or requested_providers()
        dense = dense_graph(len(network.weights), self.direct, model.activation)  # the manifest's activation
        self.session = make_session(model.onnx_path, providers, threads, dense)
        self.providers: list[str] = list(self.session.get_providers())
        self._feeds = [self._feed(m, device_of(self.providers)) for m in self.masks]
        # the device path's companions (issue 16), built on first use or by the checks below
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
        """Refuse a model whose stored graph and rearranged weights disagree: the stored graph
        (the format's contract) runs once here, on random rows, for every mask, then is let go."""
        stored = make_session(model.onnx_path, providers, threads)
        x = (np.random.default_rng(0).random((PARITY_ROWS, self.dims)) < 0.5).astype(np.float32)
        for k in range(self.n_masks):
            want = stored.run(["logits"], {"x": x, "mask_index": np.array(k, dtype=np.int64)})[0]
            got = self.logits(x, k)
            if not np.allclose(got, want, rtol=0, atol=PARITY_ATOL):
                worst = float(np.max(np.abs(got - want)))
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
        out: np.ndarray = self.session.run_with_ort_values(
            ["logits"], {"x": ort.OrtValue.ortvalue_from_numpy(x), **feed}
        )[0].numpy()
        return out

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
    ) -> LogProbResult:
        """log p(x) under the mixture of `masks`; missing values (NaN) summed out, exactly where
        every mask's ordering allows, else by likelihood weighting with n_importance draws per
        mask and row (from numpy.random.default_rng(seed), streamed through the sampler in
        calls of bounded size: memory does not grow with n_importance). checked: see check_x."""
        x = self.check_x(x, allow_missing=True, checked=checked)
        _check_count("n_importance", n_importance, 1)
        ks = self._masks(masks)
        n = len(x)
        observed = ~np.isnan(x)
        complete = observed.all(axis=1)
        logprob = np.empty(n)
        exact = np.ones(n, dtype=bool)
        stderr = np.full(n, np.nan)
        if complete.any():
            per_mask = self.mask_logliks(x if complete.all() else x[complete], ks)
            logprob[complete] = _logmeanexp(per_mask, axis=0)
        rows = np.flatnonzero(~complete)
        if len(rows):
            est = self._observed_logprob(x[rows], observed[rows], ks, seed, n_importance)
            logprob[rows], exact[rows], stderr[rows] = est.logprob, est.exact, est.stderr
        return LogProbResult(logprob, exact, stderr)

    def _observed_logprob(
        self, x: np.ndarray, observed: np.ndarray, ks: list[int], seed: int | None, n_importance: int
    ) -> LogProbResult:
        """log p(x_O) for rows with missing values: one pass where mask orderings allow it,
        likelihood weighting with n_importance draws per mask and row otherwise (_weighted_means:
        streamed through the sampler, the draws not kept)."""
        n, s = len(x), n_importance
        is_exact = exact_orders(self.orderings[ks], observed)  # (len(ks), n)
        log_means = self.mask_logliks(x, ks, observed)  # valid where is_exact
        variances = np.zeros((len(ks), n))  # of the mean weight, relative to a per-row scale
        # the (mask, row) pairs to weight, mask after mask, rows in order: the draw order
        todo_i, todo_r = np.nonzero(~is_exact)
        rng = np.random.default_rng(seed)
        top, mean, m2 = self._weighted_means(np.asarray(ks)[todo_i], todo_r, x, observed, s, rng)
        with np.errstate(divide="ignore"):  # every weight 0: log p = -inf, as before
            log_means[todo_i, todo_r] = top + np.log(mean)
        # mixture mean and delta-method standard error, computed relative to each row's maximum
        scale = log_means.max(axis=0)
        mean_rel = np.exp(log_means - scale).mean(axis=0)
        if s > 1:  # var of w / exp(scale) = exp(2 (top - scale)) var of w / exp(top)
            variances[todo_i, todo_r] = m2 / (s - 1) * np.exp(2.0 * (top - scale[todo_r])) / s
        var_mean = variances.sum(axis=0) / len(ks) ** 2
        exact = is_exact.all(axis=0)
        stderr = np.where(exact, np.nan, np.sqrt(var_mean) / mean_rel)
        return LogProbResult(scale + np.log(mean_rel), np.asarray(exact, dtype=bool), stderr)

    def _weighted_means(
        self, masks: np.ndarray, rows: np.ndarray, x: np.ndarray, observed: np.ndarray, s: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each pair i (mask masks[i], row rows[i]): s completions of the row's missing
        values under the mask, drawn pair after pair from rng, and of their weights w (the
        probability of the row's observed values) the running maximum log weight `top`, the
        mean of w / exp(top) and its sum of squared deviations m2, each (pairs,).

        All pairs' draws step through the sampler together (K masks cost about one pass, not
        K), _IMPUTE_VALUES values a call at most (a pair's draws may span calls), with a
        cancellation checkpoint before each call. The statistics are merged call by call
        (Chan et al.'s pairwise update, rescaled when the maximum grows), so what is kept is
        three numbers per pair, whatever s: rng draws the same uniforms in the same order as
        one call would, and the answers differ from one call's only by float rounding."""
        pairs, dims = len(rows), self.dims
        top = np.full(pairs, -np.inf)
        mean = np.zeros(pairs)
        m2 = np.zeros(pairs)
        count = np.zeros(pairs)
        filled = np.nan_to_num(x, nan=0.0).astype(np.uint8)  # the sampler clamps to these where observed
        for pieces in split_draws(np.arange(pairs), s, max(1, _IMPUTE_VALUES // dims)):
            checkpoint()
            piece = np.array(pieces, dtype=np.int64).reshape(-1, 3)
            pid, lens = piece[:, 0], piece[:, 2] - piece[:, 1]
            of = np.repeat(pid, lens)
            u = rng.random((int(lens.sum()), dims))
            picked = rows[of]
            _, logw, _ = self.sampler_for(len(u)).run_masks(masks[of], u, observed[picked], filled[picked])
            del u
            starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
            new_top = np.maximum(top[pid], np.maximum.reduceat(logw, starts))
            ref = np.where(np.isfinite(new_top), new_top, 0.0)
            w = np.exp(logw - np.repeat(ref, lens))
            part_mean = np.add.reduceat(w, starts) / lens
            w -= np.repeat(part_mean, lens)
            part_m2 = np.add.reduceat(w * w, starts)
            rescale = np.exp(top[pid] - ref)  # the statistics so far, relative to the new maximum
            n_a = count[pid]
            n_ab = n_a + lens
            delta = part_mean - mean[pid] * rescale
            mean[pid] = mean[pid] * rescale + delta * (lens / n_ab)
            m2[pid] = m2[pid] * rescale**2 + part_m2 + delta**2 * (n_a * lens / n_ab)
            count[pid] = n_ab
            top[pid] = new_top
        return top, mean, m2

    # --- conditionals ------------------------------------------------------------------------
    def conditionals(self, x: np.ndarray, mask: int = 0, *, checked: bool = False) -> np.ndarray:
        """(N, D): p(x_d = 1 | the dimensions before d in mask k's ordering). checked: see
        check_x."""
        x = self.check_x(x, allow_missing=False, checked=checked)
        return _sigmoid(self.logits(x, self.check_mask(mask)).astype(np.float64))

    def full_conditionals(self, x: np.ndarray) -> np.ndarray:
        """(N, D): p(x_d = 1 | every other dimension) under the mixture."""
        x = self.check_x(x, allow_missing=False)
        lp = self.flip_logprobs(x)
        # log p(x_d = 1, x_-d) - log p(x_d = 0, x_-d) = ±(log p(x) - log p(x flipped at d))
        return _sigmoid(np.where(x > 0.5, 1.0, -1.0) * (lp[:, :1] - lp[:, 1:]))

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
            out[start : start + len(block)] = _logmeanexp(self.mask_logliks(rows, ks), axis=0).reshape(-1, d + 1)
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
            p = _sigmoid(self.logits(x, mask)[:, d].astype(np.float64))
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

    def impute(
        self,
        x: np.ndarray,
        n_samples: int = 10,
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        checked: bool = False,
    ) -> ImputeResult:
        """p(x_missing | x_observed) under the mixture, per row (NaN marks a missing value):
        n_samples completions, marginals p(x_d = 1 | x_obs), log p(x_obs) and an ESS.

        Rows with nothing missing return themselves (marginals: the row; ess: K x n_importance,
        nominal: nothing is estimated).

        Exact rows (every mask's ordering puts the missing dimensions after all the observed
        ones; `exact` true): log p(x_obs) = log mean_k p_k(x_obs), one pass per mask, no
        standard error. The posterior over masks given x_obs is p_k(x_obs) / sum_j p_j(x_obs),
        so each completion draws its mask k from it, then the missing values by ancestral
        sampling under mask k with the observed entries clamped: n_samples exact, independent
        draws from p(x_missing | x_obs), nothing more (n_importance is not used). The marginals
        of the missing dimensions are not computable exactly in general (a sum over every
        configuration of the missing values before d), so they are estimated from those same
        completions, Rao-Blackwellised: the mean over completions s of p_{k_s}(x_d = 1 | the
        values before d in completion s), an unbiased estimate whose variance is at most that of
        the completions' own frequencies. `ess` is then the number of completions behind it,
        n_samples (at least 1: one completion is drawn even for n_samples = 0, so that the
        marginals are defined).

        Other rows (`exact` false): likelihood weighting, n_importance draws per mask, pooled
        as the mixture with weights w / K; log p(x_obs) is the mean weight, with a delta-method
        standard error; the marginals are the weighted mean of the draws; the completions are
        resampled from the weighted pool; `ess` = (sum w)^2 / sum w^2 of the pool. The pool is
        not held: the draws stream through the sampler, each row keeping its log weights (8
        bytes a draw) and weighted sums, and the resampled completions are drawn again from the
        generator's saved states, the same ones bit for bit (see _impute_weighted).

        Row i draws all its random numbers from numpy.random.default_rng([seed, i]) (seed None:
        a fresh one): its answer depends on the seed, its index and its own values, not on the
        other rows, nor on how rows are grouped into sampler calls (all rows' draws go through
        the sampler together, _IMPUTE_VALUES values at a time, with a cancellation checkpoint
        (service.engine.cancel) before each call). default_rng([seed, 0]) is
        default_rng(seed): a single-row request draws what it drew before rows had streams of
        their own.
        """
        x = self.check_x(x, allow_missing=True, checked=checked)
        _check_count("n_samples", n_samples, 0)
        _check_count("n_importance", n_importance, 1)
        seed = _check_seed(seed)
        n, d = x.shape
        observed = ~np.isnan(x)
        out = ImputeResult(
            samples=np.empty((n, n_samples, d), dtype=np.uint8),
            # observed entries give their own value
            marginals=np.where(observed, x, 0.0).astype(np.float64, copy=False),
            logprob_observed=np.empty(n),
            exact=self.exact_rows(observed),
            ess=np.empty(n),
            stderr=np.full(n, np.nan),
        )
        complete = observed.all(axis=1)
        if complete.any():
            rows = np.flatnonzero(complete)
            out.samples[rows] = x[rows, None, :].astype(np.uint8)
            ks = list(range(self.n_masks))
            out.logprob_observed[rows] = _logmeanexp(self.mask_logliks(x[rows], ks), axis=0)
            out.ess[rows] = float(n_importance * self.n_masks)
        exact_rows = np.flatnonzero(out.exact & ~complete)
        weighted_rows = np.flatnonzero(~out.exact)
        rngs = {int(i): np.random.default_rng([seed, int(i)]) for i in (*exact_rows, *weighted_rows)}
        if len(exact_rows):
            self._impute_exact(x, observed, exact_rows, rngs, n_samples, out)
        if len(weighted_rows):
            self._impute_weighted(x, observed, weighted_rows, rngs, n_samples, n_importance, out)
        return out

    def _impute_exact(
        self,
        x: np.ndarray,
        observed: np.ndarray,
        rows: np.ndarray,
        rngs: dict[int, np.random.Generator],
        n_samples: int,
        out: ImputeResult,
    ) -> None:
        """Exact rows: max(n_samples, 1) completions each, their masks from the posterior (all
        drawn first, then the uniforms). The completions of all rows go through the sampler in
        calls of at most _IMPUTE_VALUES values (a row's may span calls), with a cancellation
        checkpoint before each; the marginals are summed call by call."""
        ks = list(range(self.n_masks))
        draws, dims = max(n_samples, 1), self.dims
        loglik = self.mask_logliks(x[rows], ks, observed[rows])  # (K, rows): log p_k(x_obs)
        out.logprob_observed[rows] = _logmeanexp(loglik, axis=0)
        posterior = np.exp(loglik - loglik.max(axis=0))
        posterior /= posterior.sum(axis=0)
        out.ess[rows] = float(draws)
        filled = np.nan_to_num(x[rows], nan=0.0).astype(np.uint8)  # clamped where observed
        masks_of: dict[int, np.ndarray] = {}  # j: row rows[j]'s masks, while its draws go through
        sums: dict[int, np.ndarray] = {}  # j: its per-step probabilities summed over draws so far
        for pieces in split_draws(np.arange(len(rows)), draws, max(1, _IMPUTE_VALUES // dims)):
            checkpoint()
            masks, noise = [], []
            for j, first, end in pieces:
                rng = rngs[int(rows[j])]
                if first == 0:
                    masks_of[j] = rng.choice(self.n_masks, size=draws, p=posterior[:, j])
                    sums[j] = np.zeros(dims)
                masks.append(masks_of[j][first:end])
                noise.append(rng.random((end - first, dims)))
            u = np.concatenate(noise)
            del noise
            of = np.concatenate([np.full(end - first, j) for j, first, end in pieces])
            done, _, probs = self.sampler_for(len(u)).run_masks(
                np.concatenate(masks), u, observed[rows[of]], filled[of], return_probs=True
            )
            del u
            assert probs is not None
            at = 0
            for j, first, end in pieces:
                r = int(rows[j])
                if first < n_samples:
                    keep = min(end, n_samples) - first
                    out.samples[r, first : first + keep] = done[at : at + keep]
                sums[j] += probs[at : at + end - first].sum(axis=0)
                at += end - first
                if end == draws:
                    del masks_of[j]
                    out.marginals[r] = np.where(observed[r], out.marginals[r], sums.pop(j) / draws)

    def _impute_weighted(
        self,
        x: np.ndarray,
        observed: np.ndarray,
        rows: np.ndarray,
        rngs: dict[int, np.random.Generator],
        n_samples: int,
        n_importance: int,
        out: ImputeResult,
    ) -> None:
        """Rows that are not exact: n_importance likelihood-weighting draws per mask and row,
        drawn mask after mask from the row's generator, then the resampling from them. The
        draws of all rows go through the sampler in calls of at most _IMPUTE_VALUES values (a
        row's draws may span calls; sampler.stream_weighted), with a cancellation checkpoint
        before each call, and are not kept: per row, their log weights (8 bytes a draw) and
        their weighted mean (the marginals) are, and the n_samples resampled draws are drawn
        again from the saved generator states (WeightedPool.redraw), bit for bit."""
        dims = self.dims
        per_call = max(1, _IMPUTE_VALUES // dims)
        filled = np.nan_to_num(x, nan=0.0).astype(np.uint8)  # clamped where observed

        def draw(picked: np.ndarray, masks: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            done, logw, _ = self.sampler_for(len(u)).run_masks(masks, u, observed[picked], filled[picked])
            return done, logw

        for pool in stream_weighted(rows, self.n_masks * n_importance, n_importance, dims, per_call, rngs, draw):
            r = pool.row
            w_norm = self._weights(r, pool.logw, n_importance, out)
            out.marginals[r] = np.where(observed[r], x[r], pool.mean)
            picks = rngs[r].choice(len(w_norm), size=n_samples, replace=True, p=w_norm)
            out.samples[r] = pool.redraw(picks, dims, per_call, draw)

    def _weights(self, r: int, logw: np.ndarray, s: int, out: ImputeResult) -> np.ndarray:
        """Row r's log p(x_obs), its standard error and ESS from the log weights of its pooled
        draws (K x s, mask after mask); returns the normalised weights."""
        top = logw.max()
        w = np.exp(logw - top)
        w_norm = w / w.sum()
        out.logprob_observed[r] = top + math.log(w.mean())
        if s > 1:
            per_mask = w.reshape(self.n_masks, s)
            var = per_mask.var(axis=1, ddof=1) / s
            out.stderr[r] = math.sqrt(var.sum()) / per_mask.mean(axis=1).sum()
        out.ess[r] = 1.0 / float(np.sum(w_norm**2))
        return w_norm

    # --- denoising ----------------------------------------------------------------------------
    def denoise(
        self,
        y: np.ndarray,
        eps: float | np.ndarray,
        n_samples: int = 10,
        seed: int | None = None,
        n_importance: int = 1000,
        *,
        checked: bool = False,
    ) -> DenoiseResult:
        """p(clean x | noisy y) with independent bit flips of probability eps (a number, one per
        row or one per entry): see service.engine.denoise.denoise. checked: see check_x."""
        return denoise(self, y, eps, n_samples=n_samples, seed=seed, n_importance=n_importance, checked=checked)

    # --- the device path (issue 16): Jacobi sampling, log-likelihoods computed in the graph ---
    def jacobi_sampler(self) -> JacobiSampler:
        """The Jacobi fixed-point sampler (service.engine.jacobi) on this engine's providers
        and per-mask weights, built on first use; a stand-in for self.sampler (run_masks)."""
        if self._jacobi is None:
            with BUILD_LOCK:
                if self._jacobi is None:
                    model = self.model
                    self._jacobi = JacobiSampler(
                        model.onnx_path, self.masks, self._feeds, model.activation, self.providers, self._threads
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
                        self.model.onnx_path, self.masks, self.model.activation, self.providers, self._threads
                    )
        return self._graph_scores

    # None: by provider (the graph on CUDA; on the CPU the per-mask passes, which bench/engine_bench.py
    # measured as fast or faster there: the graph ran the mixture at 0.9x at batch 1000 on 2 cores);
    # True or False forces one path
    graph_scores_enabled: bool | None = None

    def use_graph_scores(self) -> bool:
        if self.graph_scores_enabled is not None:
            return self.graph_scores_enabled
        return self.providers[0] == "CUDAExecutionProvider"

    # None: by provider (Jacobi on CUDA, for calls of at least JACOBI_MIN_ROWS rows; the numpy
    # stepping sampler on the CPU, where it is 5-10x faster on the 784-dimensional model);
    # True or False forces the choice for calls of JACOBI_MIN_ROWS rows or more
    jacobi_enabled: bool | None = None

    def use_jacobi(self) -> bool:
        if self.jacobi_enabled is not None:
            return self.jacobi_enabled
        return self.providers[0] == "CUDAExecutionProvider"

    def sampler_for(self, rows: int) -> FastSampler | JacobiSampler:
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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(log_sigmoid(z))


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInput(f"{name} must be an integer of at least {minimum}, got {value!r}")


def _check_seed(seed: int | None) -> int:
    """A request's seed (a non-negative integer), or a fresh one for None."""
    if seed is None:
        entropy = np.random.SeedSequence().entropy  # 128 fresh bits
        assert isinstance(entropy, int)
        return entropy
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _logmeanexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis=axis) + np.log(np.mean(np.exp(a - top), axis=axis))
