"""Each column's conditional distribution from its slice of the network's outputs (numpy only).

The serving engine's side of the table model; training/table_model.py computes the same
log-likelihoods in torch (tests/test_table_model.py checks they agree). `p` is a column's
(N, n_out) slice of the outputs of one mask; `v` the (N,) encoded cells (see made.core.schema).

Numeric columns are a mixture of logistics over the standardised value y. A value recorded to
`decimals` places has the probability of its rounding bin, written stably as
  log(σ(a_hi) - σ(a_lo)) = log σ(a_hi) + log σ(-a_lo) + log(1 - exp(-(a_hi - a_lo))),
with a = (edge - μ) / s and the bin's width taken from float64 edges, so that even bins far
below float32 resolution (a budget in dollars) keep a finite, exact-in-the-limit mass.

A column with bounds (made.core.schema.bounds_y) has a TRUNCATED mixture: its density (or its
bins, cut to the bounds) divided by the mixture's mass inside them,
  log p = log p_untruncated - log mass_in_bounds,
so that it integrates (sums over the bins) to 1 over the bounds and to nothing outside; it is
sampled by the inverse CDF within them. The same network, read this way, is a model that never
leaves the bounds. A column without bounds takes the untruncated paths exactly as before.

A column with atoms (made.core.schema.Column.atoms: values so common that each gets a point mass,
an exact 0 in 70% of rows) has one more output per atom, a logit in the same softmax as the
logistics' weights; the weights of logistics and atoms together sum to 1 (before truncation; the
atoms lie inside the bounds, so that the normaliser is the logistics' mass inside them plus the
atoms'). A value an atom holds has
  - for a column recorded to `decimals` places: its bin's probability plus the atom's weight
    (both over the normaliser): the atom's mass is in the bin that holds it;
  - for a continuous column: the atom's weight alone, a probability beside the density of the
    other values, as an absent cell's P(NA) is (the logistics' density at that one point adds
    no mass to it).
A draw picks a logistic or an atom by its weight (times its mass inside the bounds), then the
logistic's value, or the atom's. Without atoms every path is as before them.
"""

from __future__ import annotations

import numpy as np

from made.core.bounds import bounds_y, value_bounds
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
    """A numeric column's (absent logit or None, log weights, means, log scales), each (N, M).
    With atoms, the logistics' weights sum to 1 minus the atoms' (atom_log_weights)."""
    p = np.asarray(p, dtype=np.float64)
    off = int(col.nullable)
    m = col.components
    absent = p[:, 0] if col.nullable else None
    log_w = _log_weights(col, p)[:, :m]
    mu = p[:, off + m : off + 2 * m]
    log_s = np.clip(p[:, off + 2 * m : off + 3 * m], LOG_SCALE_MIN, LOG_SCALE_MAX)
    return absent, log_w, mu, log_s


def placeholder(col: Column) -> float:
    """A present value of a numeric column to stand in for its absent cells where a head is
    computed for every row and the absent ones' result thrown away (training's torch heads): the
    column's centre (y = 0) on its grid and inside its bounds, so that its bin has a width and
    its terms stay finite. (A fixed 1.0 lies outside bounds such as [7.6, 88.9]: its bin, cut to
    them, is empty, and log 0 in the branch a torch.where drops still gives a NaN gradient.)"""
    lo, hi = value_bounds(col)
    centre = float(round_to_precision(col, unstandardise(col, np.zeros(1)))[0])
    return float(np.clip(centre, lo, hi))


def _log_weights(col: Column, p: np.ndarray) -> np.ndarray:
    """(N, M + A) log weights of a numeric column's logistics, then of its atoms: one softmax."""
    off, m = int(col.nullable), col.components
    logits = p[:, off : off + m]
    if col.atoms:
        logits = np.concatenate([logits, p[:, off + 3 * m : off + 3 * m + len(col.atoms)]], axis=1)
    return log_softmax(logits)


def atom_log_weights(col: Column, p: np.ndarray) -> np.ndarray:
    """(N, A) log weights of a numeric column's atoms, its point masses (made.core.schema)."""
    return _log_weights(col, np.asarray(p, dtype=np.float64))[:, col.components :]


def atom_shares(
    col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, log_a: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) log of the logistics' share of a present value's distribution (their mass inside the
    bounds over all of it) and (N, A) log of each atom's: together 1."""
    whole = log_mass_in_bounds(col, log_w, mu, log_s, log_a)
    with np.errstate(invalid="ignore"):
        logistics = np.logaddexp.reduce(log_w + component_log_mass(col, mu, log_s), axis=1) - whole
    return logistics, log_a - whole[:, None]


def atom_loglik(col: Column, log_a: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(N,) log of the atoms' mass at present values (-inf at a value no atom holds)."""
    v = round_to_precision(col, np.asarray(values, dtype=np.float64))[:, None]
    hit = v == np.asarray(col.atoms, dtype=np.float64)[None, :]
    return np.logaddexp.reduce(np.where(hit, log_a, -np.inf), axis=1)


def bounded_bins(col: Column, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bin_edges and bin_width of values recorded to `decimals` places, each bin cut to bounds_y
    (a value at a bound whose bin reaches past it, or a value off the grid): (lo, hi, width) in
    y. Unbounded columns get bin_edges and bin_width as they are."""
    lo, hi = bin_edges(col, values)
    width = bin_width(col, values)
    if not col.bounded:
        return lo, hi, width
    b_lo, b_hi = bounds_y(col)
    cut = (lo < b_lo) | (hi > b_hi)
    lo, hi = np.maximum(lo, b_lo), np.minimum(hi, b_hi)
    with np.errstate(invalid="ignore"):
        width = np.where(cut, np.maximum(hi - lo, 0.0), width)
    return lo, hi, width


def _interval_log_mass(
    lo: np.ndarray, hi: np.ndarray, width: np.ndarray, mu: np.ndarray, inv_s: np.ndarray
) -> np.ndarray:
    """(N, M) log of each logistic component's mass on [lo, hi] (y units, width = hi - lo kept
    exact where the edges are too close to subtract): log σ(a_hi) + log σ(-a_lo) + log(1 -
    exp(-(a_hi - a_lo))), finite far in either tail; -inf for an empty interval."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        a_hi, a_lo = (hi - mu) * inv_s, (lo - mu) * inv_s
        return log_sigmoid(a_hi) + log_sigmoid(-a_lo) + np.log(-np.expm1(-width * inv_s))


def interval_log_mass(lo: np.ndarray, hi: np.ndarray, mu: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """Each logistic component's log mass on [lo, hi] (y units, broadcast against mu and log_s;
    -inf/inf ends allowed, -inf for an empty interval): the untruncated pieces that truncated
    quantiles, moments and integrals (service.engine.table_explain) are built from."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        width = hi - lo
    return _interval_log_mass(lo, hi, width, mu, np.exp(-np.asarray(log_s, dtype=np.float64)))


def component_log_mass(col: Column, mu: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """(N, M) log of each component's mass inside the column's bounds (zeros without bounds)."""
    if not col.bounded:
        return np.zeros_like(np.asarray(mu, dtype=np.float64))
    lo, hi = bounds_y(col)
    edges = np.array([lo, hi, hi - lo])
    return _interval_log_mass(edges[0:1], edges[1:2], edges[2:3], mu, np.exp(-log_s))


def log_mass_in_bounds(
    col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, log_a: np.ndarray | None = None
) -> np.ndarray:
    """(N,) log of the untruncated mixture's mass inside the column's bounds, the normaliser of
    its truncated head (zeros without bounds); atoms (log_a) lie inside them whole."""
    if not col.bounded:
        return np.zeros(len(log_w))
    terms = log_w + component_log_mass(col, mu, log_s)
    if log_a is not None and log_a.shape[1]:
        terms = np.concatenate([terms, log_a], axis=1)
    return np.logaddexp.reduce(terms, axis=1)


def value_loglik(
    col: Column,
    log_w: np.ndarray,
    mu: np.ndarray,
    log_s: np.ndarray,
    values: np.ndarray,
    log_a: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) log probability (of the rounding bin) or log density of present numeric values,
    under the truncated mixture where the column has bounds (-inf outside them). With atoms
    (log_a, (N, A)), a value an atom holds adds its weight (a density column: is its weight)."""
    if log_a is not None and log_a.shape[1]:
        # the logistics' part renormalised from their own mass in bounds to all of it, atoms too
        whole = log_mass_in_bounds(col, log_w, mu, log_s, log_a)
        plain = value_loglik(col, log_w, mu, log_s, values) + log_mass_in_bounds(col, log_w, mu, log_s) - whole
        with np.errstate(invalid="ignore"):
            at = atom_loglik(col, log_a, values) - whole
        if col.decimals is None:  # a point among densities: its probability, as an absent cell's
            return np.where(np.isfinite(at), at, plain)
        return np.logaddexp(plain, at)
    v = np.asarray(values, dtype=np.float64)[:, None]
    inv_s = np.exp(-log_s)
    if col.decimals is None:
        y = standardise(col, v)
        z = (y - mu) * inv_s
        log_pdf = -z - log_s - 2.0 * np.logaddexp(0.0, -z)
        jacobian = -np.log(col.scale) - (transformed(col, v) if col.transform == "log" else 0.0)
        out = np.logaddexp.reduce(log_w + log_pdf, axis=1) + np.ravel(jacobian)
        if not col.bounded:
            return out
        lo, hi = bounds_y(col)
        inside = (y[:, 0] >= lo) & (y[:, 0] <= hi)
        return np.where(inside, out - log_mass_in_bounds(col, log_w, mu, log_s), -np.inf)
    lo_e, hi_e, width = bounded_bins(col, v)  # width inf where the bin starts at -inf
    out = np.logaddexp.reduce(log_w + _interval_log_mass(lo_e, hi_e, width, mu, inv_s), axis=1)
    if not col.bounded:
        return out
    return out - log_mass_in_bounds(col, log_w, mu, log_s)


def column_loglik(col: Column, p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) log p(x_col = v | what the outputs saw); v holds no unknown (NaN) cells."""
    p = np.asarray(p, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if col.kind == "binary":
        return log_sigmoid(np.where(v == 1, p[:, 0], -p[:, 0]))
    if col.kind == "categorical":
        return np.take_along_axis(log_softmax(p), v.astype(np.int64)[:, None], axis=1)[:, 0]
    absent_logit, log_w, mu, log_s = mixture(col, p)
    log_a = atom_log_weights(col, p)
    is_absent = v == ABSENT
    out = np.zeros(len(v))
    present = ~is_absent
    if present.any():
        out[present] = value_loglik(col, log_w[present], mu[present], log_s[present], v[present], log_a[present])
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
    log_a = atom_log_weights(col, p)
    if col.bounded:
        values = _sample_truncated(col, log_w, mu, log_s, u, log_a)
    else:
        w = np.exp(np.concatenate([log_w, log_a], axis=1))
        comp = np.minimum((np.cumsum(w, axis=1) <= u[:, 1:2]).sum(axis=1), w.shape[1] - 1)
        rows = np.arange(len(u))
        q = np.clip(u[:, 2], 1e-12, 1 - 1e-12)
        k = np.minimum(comp, mu.shape[1] - 1)
        y = mu[rows, k] + np.exp(log_s[rows, k]) * (np.log(q) - np.log1p(-q))
        with np.errstate(over="ignore"):
            values = round_to_precision(col, unstandardise(col, y))
        if col.transform == "log":
            values = np.maximum(values, 0.0)
        values = _atom_draws(col, comp, values)
    if absent_logit is not None:
        values = np.where(u[:, 0] < 1.0 / (1.0 + np.exp(-absent_logit)), ABSENT, values)
    return values


def _atom_draws(col: Column, comp: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values with each draw whose component index is past the logistics' replaced by its atom."""
    m = col.components
    if not col.atoms:
        return values
    atoms = np.asarray(col.atoms, dtype=np.float64)
    return np.where(comp >= m, atoms[np.clip(comp - m, 0, len(atoms) - 1)], values)


def _sample_truncated(
    col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, u: np.ndarray, log_a: np.ndarray | None = None
) -> np.ndarray:
    """(N,) present values of a bounded column drawn from its truncated mixture: a component
    by its weight times its mass inside the bounds (u[:, 1]), then that component's inverse CDF
    within them (u[:, 2]), in log space on both sides,
      y = μ + s (log F - log S),  F = σ(a_lo) + q M,  S = σ(-a_hi) + (1 - q) M  (F + S = 1),
    so that a component whose mass lies far outside the bounds still gives a draw inside them;
    rounded to the column's precision and kept within its value bounds."""
    lo, hi = bounds_y(col)
    comp_mass = component_log_mass(col, mu, log_s)  # (N, M)
    n_atoms = 0 if log_a is None else log_a.shape[1]
    with np.errstate(invalid="ignore"):
        log_wt = log_w + comp_mass
        if n_atoms:
            log_wt = np.concatenate([log_wt, log_a], axis=1)
        log_wt = log_wt - np.logaddexp.reduce(log_wt, axis=1, keepdims=True)
    w = np.exp(np.where(np.isnan(log_wt), -np.inf, log_wt))
    comp = np.minimum((np.cumsum(w, axis=1) <= u[:, 1:2]).sum(axis=1), w.shape[1] - 1)
    rows = np.arange(len(u))
    drawn = comp
    comp = np.minimum(comp, mu.shape[1] - 1)
    m, ls, mass = mu[rows, comp], log_s[rows, comp], comp_mass[rows, comp]
    q = np.clip(u[:, 2], 1e-12, 1 - 1e-12)
    inv_s = np.exp(-ls)
    with np.errstate(invalid="ignore", over="ignore"):
        log_f = np.logaddexp(log_sigmoid((lo - m) * inv_s), np.log(q) + mass)
        log_surv = np.logaddexp(log_sigmoid(-(hi - m) * inv_s), np.log1p(-q) + mass)
        y = m + np.exp(ls) * (log_f - log_surv)
    y = np.where(np.isnan(y), np.clip(m, lo, hi), np.clip(y, lo, hi))  # a component with no mass inside
    b_lo, b_hi = value_bounds(col)
    with np.errstate(over="ignore"):
        values = round_to_precision(col, unstandardise(col, y))
    values = np.clip(values, max(b_lo, 0.0) if col.transform == "log" else b_lo, b_hi)
    return _atom_draws(col, drawn, values)
