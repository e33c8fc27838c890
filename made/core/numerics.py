"""The numerics every engine shares, written once (numpy only).

Log-space helpers and the estimates that importance sampling reports. One errstate policy:
a probability of zero is an answer, not an error, so log 0 gives -inf silently (the test suite
turns every numpy warning into an error, and a row whose every weight is 0 must still answer).
"""

from __future__ import annotations

import numpy as np


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    """log sigmoid(z) = -log(1 + exp(-z)) in float64, stable for every z (no overflow)."""
    return -np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """sigmoid(z) in float64, as exp(log_sigmoid(z)): the same rounding as the log-space form."""
    return np.exp(log_sigmoid(z))


def logmeanexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log mean exp(a) along axis, relative to the largest term (no overflow); -inf where every
    term is -inf (probability zero)."""
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis=axis) + np.log(np.mean(np.exp(a - top), axis=axis))


def log_mean_stderr(mean: np.ndarray | float, var_of_mean: np.ndarray | float) -> np.ndarray:
    """Standard error of log(m) for an estimate m of a mean with variance var_of_mean, by the
    delta method: sd(log m) ~ sd(m) / m. Both may be on any common scale (a mean weight taken
    relative to the largest weight, say): the ratio does not depend on it. NaN where m is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.sqrt(var_of_mean) / mean)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of normalised weights (sum w = 1): how
    many equally weighted draws the weighted pool is worth."""
    return 1.0 / float(np.sum(weights**2))
