"""Each column's conditional distribution from its slice of the network's outputs (numpy only).

The serving engine's side of the table model; training/table_model.py computes the same
log-likelihoods in torch (tests/test_table_model.py checks they agree). `p` is a column's
(N, n_out) slice of the outputs of one mask; `v` the (N,) encoded cells (see made.core.schema).

Numeric columns are a mixture of logistics over the standardised value y. A value recorded to
`decimals` places has the probability of its rounding bin, written stably as
  log(σ(a_hi) - σ(a_lo)) = log σ(a_hi) + log σ(-a_lo) + log(1 - exp(-(a_hi - a_lo))),
with a = (edge - μ) / s and the bin's width taken from float64 edges, so that even bins far
below float32 resolution (a budget in dollars) keep a finite, exact-in-the-limit mass.
"""

from __future__ import annotations

import numpy as np

from made.core.numerics import log_sigmoid
from made.core.schema import (
    ABSENT,
    Column,
    bin_edges,
    bin_width,
    round_to_precision,
    standardise,
    transformed,
    unstandardise,
)

LOG_SCALE_MIN, LOG_SCALE_MAX = -9.0, 7.0
NOISE_PER_COLUMN = 3  # uniforms a sampled cell uses: absence or level, mixture component, value


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mixture(col: Column, p: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """A numeric column's (absent logit or None, log weights, means, log scales), each (N, M)."""
    p = np.asarray(p, dtype=np.float64)
    off = int(col.nullable)
    m = col.components
    absent = p[:, 0] if col.nullable else None
    log_w = log_softmax(p[:, off : off + m])
    mu = p[:, off + m : off + 2 * m]
    log_s = np.clip(p[:, off + 2 * m : off + 3 * m], LOG_SCALE_MIN, LOG_SCALE_MAX)
    return absent, log_w, mu, log_s


def value_loglik(col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(N,) log probability (of the rounding bin) or log density of present numeric values."""
    v = np.asarray(values, dtype=np.float64)[:, None]
    inv_s = np.exp(-log_s)
    if col.decimals is None:
        z = (standardise(col, v) - mu) * inv_s
        log_pdf = -z - log_s - 2.0 * np.logaddexp(0.0, -z)
        jacobian = -np.log(col.scale) - (transformed(col, v) if col.transform == "log" else 0.0)
        return np.logaddexp.reduce(log_w + log_pdf, axis=1) + np.ravel(jacobian)
    lo, hi = bin_edges(col, v)
    width = bin_width(col, v)  # inf where the bin starts at -inf
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        a_hi, a_lo = (hi - mu) * inv_s, (lo - mu) * inv_s
        log_mass = log_sigmoid(a_hi) + log_sigmoid(-a_lo) + np.log(-np.expm1(-width * inv_s))
    return np.logaddexp.reduce(log_w + log_mass, axis=1)


def column_loglik(col: Column, p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) log p(x_col = v | what the outputs saw); v holds no unknown (NaN) cells."""
    p = np.asarray(p, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if col.kind == "binary":
        return log_sigmoid(np.where(v == 1, p[:, 0], -p[:, 0]))
    if col.kind == "categorical":
        return np.take_along_axis(log_softmax(p), v.astype(np.int64)[:, None], axis=1)[:, 0]
    absent_logit, log_w, mu, log_s = mixture(col, p)
    is_absent = v == ABSENT
    out = np.zeros(len(v))
    present = ~is_absent
    if present.any():
        out[present] = value_loglik(col, log_w[present], mu[present], log_s[present], v[present])
    if absent_logit is not None:
        out += log_sigmoid(np.where(is_absent, absent_logit, -absent_logit))
    elif is_absent.any():
        out[is_absent] = -np.inf
    return out


def level_probs(col: Column, p: np.ndarray) -> np.ndarray:
    """(N, L) probabilities of each level of a binary or categorical column."""
    p = np.asarray(p, dtype=np.float64)
    if col.kind == "binary":
        p1 = 1.0 / (1.0 + np.exp(-p[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    return np.exp(log_softmax(p))


def sample_column(col: Column, p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(N,) cells drawn from the column's conditional with the (N, NOISE_PER_COLUMN) uniforms u:
    the same u gives the same cell, whatever batch the row is in."""
    u = np.asarray(u, dtype=np.float64)
    if col.kind != "numeric":
        probs = level_probs(col, p)
        code = (np.cumsum(probs, axis=1) <= u[:, :1]).sum(axis=1)
        return np.minimum(code, probs.shape[1] - 1).astype(np.float64)
    absent_logit, log_w, mu, log_s = mixture(col, p)
    w = np.exp(log_w)
    comp = np.minimum((np.cumsum(w, axis=1) <= u[:, 1:2]).sum(axis=1), w.shape[1] - 1)
    rows = np.arange(len(u))
    q = np.clip(u[:, 2], 1e-12, 1 - 1e-12)
    y = mu[rows, comp] + np.exp(log_s[rows, comp]) * (np.log(q) - np.log1p(-q))
    with np.errstate(over="ignore"):
        values = round_to_precision(col, unstandardise(col, y))
    if col.transform == "log":
        values = np.maximum(values, 0.0)
    if absent_logit is not None:
        values = np.where(u[:, 0] < 1.0 / (1.0 + np.exp(-absent_logit)), ABSENT, values)
    return values
