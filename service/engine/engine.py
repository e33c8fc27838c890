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
import onnx
import onnxruntime as ort

from made.errors import InvalidInput, ModelStoreError
from made.masks import exact_orders
from made.store import StoredModel
from service.engine.network import Network, load_network
from service.engine.runtime import fix_mask_index, make_session, requested_providers
from service.engine.sampler import FastSampler

log = logging.getLogger("made.engine")

# Rows per onnxruntime call, so that large requests do not allocate unbounded logits.
CHUNK = 4096
# One session per mask with its masks folded into the weights costs K copies of the weights
# (about 3x their bytes in RSS, with onnxruntime's prepacked copies: ~150 MB for the K=8 MNIST
# model); above this many weight bytes times K, the engine runs only the stored graph.
MAX_FOLDED_BYTES = 256 << 20


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
    def __init__(self, model: StoredModel, providers: list[str] | None = None,
                 threads: int | None = None):
        self.model = model
        self.name = model.name
        self.version = model.version
        self.manifest = model.manifest
        self.dims = model.dims
        self.n_masks = model.n_masks
        self.orderings = model.orderings
        self.image_shape = model.image_shape
        self.network: Network = load_network(model.onnx_path, self.orderings)
        if self.network.dims != self.dims or self.network.n_masks != self.n_masks:
            raise ModelStoreError(f"{model.onnx_path} does not match its manifest's dims or n_masks")
        providers = providers or requested_providers()
        self.session = make_session(model.onnx_path, providers, threads)
        self.providers: list[str] = list(self.session.get_providers())
        # Per-mask sessions with mask_index fixed, so onnxruntime folds the masks into the
        # weights once instead of on every call (the stored graph and its contract unchanged).
        self.mask_sessions: list[ort.InferenceSession] = []
        weight_bytes = sum(w.nbytes for w in self.network.weights)
        if self.network.direct is not None:
            weight_bytes += self.network.direct.nbytes
        if weight_bytes * self.n_masks <= MAX_FOLDED_BYTES:
            graph = onnx.load(str(model.onnx_path))
            self.mask_sessions = [
                make_session(model.onnx_path, providers, threads, fix_mask_index(graph, k))
                for k in range(self.n_masks)
            ]
        self.sampler = FastSampler(self.network)
        log.info("loaded model %s version %s (D=%d, K=%d) on %s", self.name, self.version,
                 self.dims, self.n_masks, ",".join(self.providers))

    # --- validation -------------------------------------------------------------------------
    def check_mask(self, mask: int) -> int:
        if (isinstance(mask, bool) or not isinstance(mask, int | np.integer)
                or not 0 <= mask < self.n_masks):
            raise InvalidInput(
                f"mask {mask!r} is out of range: model {self.name} has {self.n_masks} masks "
                f"(0..{self.n_masks - 1})"
            )
        return int(mask)

    def check_x(self, x: np.ndarray, allow_missing: bool) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise InvalidInput(
                f"x must be a 2-D array of rows (N, {self.dims}), got shape {x.shape}"
            )
        if x.shape[1] != self.dims:
            raise InvalidInput(
                f"x has {x.shape[1]} columns, model {self.name} has {self.dims} dimensions"
            )
        missing = np.isnan(x)
        if missing.any() and not allow_missing:
            r, c = (int(i) for i in np.argwhere(missing)[0])
            raise InvalidInput(f"row {r} column {c} is missing; this call needs complete rows")
        bad = ~missing & (x != 0) & (x != 1)
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            raise InvalidInput(f"row {r} column {c} holds {x[r, c]!r}, expected 0 or 1")
        return x

    # --- one forward pass -------------------------------------------------------------------
    def logits(self, x: np.ndarray, mask: int) -> np.ndarray:
        """(N, D) float32 logits of mask k; missing (NaN) inputs must be replaced beforehand."""
        xf = np.ascontiguousarray(x, dtype=np.float32)
        if self.mask_sessions:
            session, feed = self.mask_sessions[mask], {}
        else:
            session, feed = self.session, {"mask_index": np.array(mask, dtype=np.int64)}
        if len(xf) <= CHUNK:
            return session.run(["logits"], {"x": xf, **feed})[0]
        return np.concatenate([session.run(["logits"], {"x": xf[i : i + CHUNK], **feed})[0]
                               for i in range(0, len(xf), CHUNK)])

    def mask_logliks(self, x: np.ndarray, masks: list[int],
                     observed: np.ndarray | None = None) -> np.ndarray:
        """(len(masks), N): log p_k of the observed entries (all entries when observed is None)."""
        # converted to float32 once for all masks; NaN can only be where observed is False
        filled = np.ascontiguousarray(x if observed is None else np.nan_to_num(x, nan=0.0),
                                      dtype=np.float32)
        out = np.empty((len(masks), len(x)))
        for i, k in enumerate(masks):
            out[i] = row_loglik(self.logits(filled, k), filled, observed)
        return out

    def _masks(self, masks: Literal["all"] | int) -> list[int]:
        if isinstance(masks, str):
            if masks != "all":
                raise InvalidInput(f"masks must be 'all' or a mask index, got {masks!r}")
            return list(range(self.n_masks))
        return [self.check_mask(masks)]

    # --- log-likelihood -----------------------------------------------------------------------
    def logprob(self, x: np.ndarray, masks: Literal["all"] | int = "all", seed: int | None = None,
                n_importance: int = 1000) -> LogProbResult:
        """log p(x) under the mixture of `masks`; missing values (NaN) summed out."""
        x = self.check_x(x, allow_missing=True)
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

    def _observed_logprob(self, x: np.ndarray, observed: np.ndarray, ks: list[int], seed: int | None,
                          n_importance: int) -> LogProbResult:
        """log p(x_O) for rows with missing values: one pass where mask orderings allow it,
        likelihood weighting with n_importance draws per mask and row otherwise."""
        n = len(x)
        is_exact = exact_orders(self.orderings[ks], observed)  # (len(ks), n)
        exact_ll = self.mask_logliks(x, ks, observed)  # valid where is_exact
        rng = np.random.default_rng(seed)
        log_means = np.empty((len(ks), n))
        variances = np.zeros((len(ks), n))  # of the mean weight, relative to a per-row scale
        draws: dict[int, np.ndarray] = {}
        log_means[:] = exact_ll
        jobs = [(k, np.flatnonzero(~is_exact[i])) for i, k in enumerate(ks)]
        for i, (_, logw, _) in enumerate(self._weighted_draws(jobs, x, observed, n_importance, rng)):
            if logw.size:
                todo = jobs[i][1]
                draws[i] = logw
                log_means[i, todo] = _logmeanexp(logw, axis=1)
        # mixture mean and delta-method standard error, computed relative to each row's maximum
        scale = log_means.max(axis=0)
        mean_rel = np.exp(log_means - scale).mean(axis=0)
        for i, logw in draws.items():
            todo = np.flatnonzero(~is_exact[i])
            w_rel = np.exp(logw - scale[todo, None])
            variances[i, todo] = w_rel.var(axis=1, ddof=1) / logw.shape[1] if logw.shape[1] > 1 else 0.0
        var_mean = variances.sum(axis=0) / len(ks) ** 2
        exact = is_exact.all(axis=0)
        stderr = np.where(exact, np.nan, np.sqrt(var_mean) / mean_rel)
        return LogProbResult(scale + np.log(mean_rel), np.asarray(exact, dtype=bool), stderr)

    def _weighted_draws(self, jobs: list[tuple[int, np.ndarray]], x: np.ndarray, observed: np.ndarray,
                        s: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """For each job (mask k, row indices): S completions per row under mask k with their log
        weights, ((n, S, D), (n, S), per-step probabilities (n, S, D)). All jobs' draws step
        through the sampler in one loop, so K masks cost about one pass, not K."""
        masks = np.concatenate([np.full(len(rows) * s, k, dtype=np.int64) for k, rows in jobs])
        picked = np.concatenate([np.repeat(rows, s) for _, rows in jobs]).astype(np.int64)
        values = np.nan_to_num(x[picked], nan=0.0)
        u = rng.random((len(picked), self.dims))
        samples, logw, probs = self.sampler.run_masks(masks, u, observed[picked], values, return_probs=True)
        assert probs is not None
        out, start = [], 0
        for _, rows in jobs:
            n = len(rows)
            part = slice(start, start + n * s)
            d = self.dims
            out.append((samples[part].reshape(n, s, d), logw[part].reshape(n, s), probs[part].reshape(n, s, d)))
            start += n * s
        return out

    # --- conditionals ------------------------------------------------------------------------
    def conditionals(self, x: np.ndarray, mask: int = 0) -> np.ndarray:
        """(N, D): p(x_d = 1 | the dimensions before d in mask k's ordering)."""
        x = self.check_x(x, allow_missing=False)
        return _sigmoid(self.logits(x, self.check_mask(mask)).astype(np.float64))

    def full_conditionals(self, x: np.ndarray) -> np.ndarray:
        """(N, D): p(x_d = 1 | every other dimension) under the mixture, from D + 1 rows per row:
        x itself and x with each dimension flipped."""
        x = self.check_x(x, allow_missing=False)
        n, d = x.shape
        out = np.empty((n, d))
        rows_per_chunk = max(1, CHUNK // (d + 1))
        eye = np.eye(d, dtype=bool)
        ks = list(range(self.n_masks))
        for start in range(0, n, rows_per_chunk):
            block = x[start : start + rows_per_chunk]  # (b, D)
            flipped = np.repeat(block[:, None, :], d, axis=1)  # (b, D, D): row j has x_j flipped
            flipped[:, eye] = 1.0 - block
            rows = np.concatenate([block[:, None, :], flipped], axis=1).reshape(-1, d)
            lp = _logmeanexp(self.mask_logliks(rows, ks), axis=0).reshape(len(block), d + 1)
            # log p(x_d = 1, x_-d) - log p(x_d = 0, x_-d) = ±(log p(x) - log p(x flipped at d))
            sign = np.where(block > 0.5, 1.0, -1.0)
            out[start : start + len(block)] = _sigmoid(sign * (lp[:, :1] - lp[:, 1:]))
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
        return self.sampler.run_masks(np.asarray(masks, dtype=np.int64), u)[0]

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
    def impute(self, x: np.ndarray, n_samples: int = 10, seed: int | None = None,
               n_importance: int = 1000) -> ImputeResult:
        """p(x_missing | x_observed) per row: completions, marginals, log p(x_obs), ESS."""
        x = self.check_x(x, allow_missing=True)
        _check_count("n_samples", n_samples, 0)
        _check_count("n_importance", n_importance, 1)
        n, d = x.shape
        ks = list(range(self.n_masks))
        rng = np.random.default_rng(seed)
        observed = ~np.isnan(x)
        samples = np.empty((n, n_samples, d), dtype=np.uint8)
        marginals = np.empty((n, d))
        logp = np.empty(n)
        exact = np.ones(n, dtype=bool)
        ess = np.empty(n)
        stderr = np.full(n, np.nan)
        for r in range(n):
            xr, obs = x[r : r + 1], observed[r : r + 1]
            if obs.all():
                samples[r] = xr.astype(np.uint8)
                marginals[r] = xr[0]
                logp[r] = _logmeanexp(self.mask_logliks(xr, ks), axis=0)[0]
                ess[r] = float(n_importance * len(ks))
                continue
            # S weighted completions per mask, pooled as the mixture with weights w / K
            pooled_x, pooled_logw, pooled_p = [], [], []
            for sx, lw, pr in self._weighted_draws([(k, np.zeros(1, dtype=np.int64)) for k in ks], xr, obs,
                                                   n_importance, rng):
                pooled_x.append(sx[0])
                pooled_logw.append(lw[0])
                pooled_p.append(pr[0])
            all_x = np.concatenate(pooled_x)  # (K*S, D)
            all_logw = np.concatenate(pooled_logw)  # (K*S,)
            all_p = np.concatenate(pooled_p)  # (K*S, D): p(x_d = 1 | x_<d) along each draw
            top = all_logw.max()
            w = np.exp(all_logw - top)
            w_norm = w / w.sum()
            row_is_exact = bool(exact_orders(self.orderings, obs).all())
            exact[r] = row_is_exact
            est = self._observed_logprob(xr, obs, ks, seed, n_importance) if row_is_exact else None
            if est is not None:
                logp[r] = est.logprob[0]
            else:
                logp[r] = top + math.log(w.mean())
                per_mask_mean = np.array([np.exp(lw - top).mean() for lw in pooled_logw])
                per_mask_var = np.array([np.exp(lw - top).var(ddof=1) / len(lw) for lw in pooled_logw])
                stderr[r] = math.sqrt(per_mask_var.sum()) / per_mask_mean.sum()
            ess[r] = 1.0 / float(np.sum(w_norm**2))
            # Where the weights cannot depend on the missing values (exact rows), average the
            # conditional probabilities (Rao-Blackwellised); else the drawn values themselves.
            marginals[r] = np.where(obs[0], xr[0], w_norm @ (all_p if row_is_exact else all_x))
            picks = rng.choice(len(all_x), size=n_samples, replace=True, p=w_norm)
            samples[r] = all_x[picks]
        return ImputeResult(samples, marginals, logp, exact, ess, stderr)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(log_sigmoid(z))


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInput(f"{name} must be an integer of at least {minimum}, got {value!r}")


def _logmeanexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis=axis) + np.log(np.mean(np.exp(a - top), axis=axis))
