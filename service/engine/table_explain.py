"""A table model's explanations, per column of complete records (no HTTP): how surprising each
value is in order and given every other column (surprisal), and each column's conditional
distribution summarised (column_summaries), with the numeric quadrature and mixture-of-logistics
helpers they share. Functions of a TablePasses (service.engine.table_engine.TableEngine).
"""

from __future__ import annotations

import numpy as np

from made.core.bounds import bounds_y
from made.core.errors import InvalidInput
from made.core.heads import (
    atom_log_weights,
    atom_shares,
    column_loglik,
    component_log_mass,
    interval_log_mass,
    level_probs,
    log_mass_in_bounds,
    mixture,
)
from made.core.numerics import log_sigmoid, logmeanexp
from made.core.schema import (
    ABSENT,
    Column,
    drawn_in_range,
    input_value,
    round_to_precision,
    standardise,
    unstandardise,
)
from service.engine.cancel import checkpoint
from service.engine.passes import TablePasses

# surprisal's given_others of a numeric column: the integral over its values (see
# _log_numeric_normaliser); docs/tables.md says how these were chosen
GIVEN_STEP = 0.01  # grid spacing, in the column's standardised units (1% of its training sd), at most...
GIVEN_NODES = 4097  # ...unless the range needs more points than this: then the spacing grows
GIVEN_TAIL = 1e-6  # the grid covers each mask's conditional from this quantile to 1 - it,
GIVEN_REACH = 50.0  # within +-50 standardised units (and the record's own value +-1)
GIVEN_LOCAL = np.linspace(-30.0, 30.0, 61)  # nodes of a component narrower than the step, in its scales
GIVEN_BATCH = 1 << 16  # network rows per pass, at most
QUANTILE_T = np.linspace(-27.631, 27.631, 1106)  # a logistic's standard units over its 1e-12..1-1e-12 range


def surprisal(engine: TablePasses, values: np.ndarray) -> dict[str, np.ndarray]:
    """Per column of complete rows: -log p(x_c | the columns before c) averaged over the masks
    ("in_order"), and -log p(x_c | every other column) under the mixture ("given_others").

    given_others = -(log p(x) - log Σ_v p(x_c = v, x_-c)), p the mixture of the masks. For a
    category the sum runs over its levels. For a number it is an integral over the column's
    values (_log_numeric_normaliser), and the answer is in the units of the column's own
    likelihood, as in_order is: -log of the probability of the value's rounding bin for a
    number recorded to `decimals` places, -log of a density per unit of the column's values
    for a continuous one, -log P(NA | the others) for a nullable number recorded as NA (its
    absence is a discrete mass beside the density of its values)."""
    values = engine.check_values(values)
    if np.isnan(values).any():
        raise InvalidInput("explain needs complete records")
    params = [engine.params(values, k) for k in range(engine.n_masks)]
    per_mask = np.stack([engine.logliks(values, p) for p in params])  # (K, N, C)
    in_order = -per_mask.mean(axis=0)
    given = np.full(values.shape, np.nan)
    base = logmeanexp(per_mask.sum(axis=2), axis=0)  # (N,) log p(x)
    for c, col in enumerate(engine.schema.columns):
        if col.kind == "numeric":
            given[:, c] = -(base - _log_numeric_normaliser(engine, values, c, params, per_mask))
            continue
        alts = []
        for level in range(len(col.levels)):
            checkpoint()
            x = values.copy()
            x[:, c] = level
            alts.append(
                logmeanexp(np.stack([engine.column_logliks(x, k).sum(axis=1) for k in range(engine.n_masks)]), axis=0)
            )
        given[:, c] = -(base - np.logaddexp.reduce(np.stack(alts), axis=0))
    # + 0.0: a column of one level (p = 1) is surprisal 0, not the -0.0 of negating a 0
    return {"in_order": in_order + 0.0, "given_others": given + 0.0}


def _log_numeric_normaliser(
    engine: TablePasses, values: np.ndarray, c: int, params: list[np.ndarray], per_mask: np.ndarray
) -> np.ndarray:
    """(N,) log of p(x_-c) with numeric column c summed out, under the mixture of the masks.

    Under mask k, p_k(x_c', x_-c) = p_k(x_<c) p_k(x_c' | x_<c) g_k(x_c'), with g_k the
    likelihood of the columns after c given x_c', so that the integral over x_c' is
    p_k(x_<c) E[g_k(X)] for X drawn from c's own conditional: a discrete mass at NA (nullable
    columns) plus a mixture of logistics over y, the column's standardised value. E is taken
    in y, where the mixture's density is known in closed form:
      - on a uniform grid over the range where any mask's conditional has its mass (its
        GIVEN_TAIL to 1 - GIVEN_TAIL quantiles, widened to the record's own value +-1, within
        +-GIVEN_REACH), with spacing GIVEN_STEP (wider only past GIVEN_NODES points): the
        trapezoidal rule on density x g, which converges geometrically for smooth integrands
        once the spacing is below the width of their peaks;
      - the mass beyond either end of the grid times g at that end;
      - a component narrower than the spacing on its own grid of GIVEN_LOCAL scales.
    g reads x_c' unrounded: for a column recorded to `decimals` places, the sum over rounding
    bins is the integral to O(bin width^2). A bounded column's conditional is truncated
    (made.core.heads): the grid, the tails and the narrow components' nodes stay within
    bounds_y, and the integral is divided by the mixture's mass inside them. A column's atoms
    (point masses) add their weight times g at their value, exactly."""
    col = engine.schema.columns[c]
    n = len(values)
    priors = [mixture(col, engine.column_params(p, c)) for p in params]
    atoms = [atom_log_weights(col, engine.column_params(p, c)) for p in params]  # (N, A) per mask
    log_mass = [log_mass_in_bounds(col, *prior[1:], a) for prior, a in zip(priors, atoms, strict=True)]
    lo, hi, nodes = _grid(col, priors, values[:, c])
    local_w = np.full(len(GIVEN_LOCAL), np.log(GIVEN_LOCAL[1] - GIVEN_LOCAL[0]))
    local_w[[0, -1]] += np.log(0.5)
    local_w += log_sigmoid(GIVEN_LOCAL) + log_sigmoid(-GIVEN_LOCAL)  # the standard logistic's density
    out = np.empty((engine.n_masks, n))
    step = max(1, GIVEN_BATCH // (nodes + 1))
    for first in range(0, n, step):
        rows = slice(first, min(first + step, n))
        x, m = values[rows], min(first + step, n) - first
        grid = lo[rows, None] + (hi - lo)[rows, None] * np.linspace(0.0, 1.0, nodes)[None, :]  # (m, G)
        h = (hi[rows] - lo[rows]) / (nodes - 1)
        trap = np.full(nodes, 0.0)
        trap[[0, -1]] = np.log(0.5)
        trap_w = trap[None, :] + np.log(h)[:, None]  # (m, G)
        for k, (absent, log_w_all, mu_all, log_s_all) in enumerate(priors):
            checkpoint()
            before = engine.positions[k] < engine.positions[k, c]
            if before.sum() == engine.dims - 1:  # c comes last: the integral is p_k(x_<c) exactly
                out[k, rows] = per_mask[k, rows][:, before].sum(axis=1)
                continue
            log_w, mu, log_s = log_w_all[rows], mu_all[rows], log_s_all[rows]
            narrow = np.exp(log_s) < h[:, None]
            wide_w = np.where(narrow, -np.inf, log_w)
            g = _log_after(engine, x, np.repeat(np.arange(m), nodes), _cells(col, grid.ravel()), c, k)
            g = g.reshape(m, nodes)
            z = (grid[:, :, None] - mu[:, None, :]) * np.exp(-log_s)[:, None, :]
            log_pdf = np.logaddexp.reduce(
                wide_w[:, None, :] + log_sigmoid(z) + log_sigmoid(-z) - log_s[:, None, :], axis=2
            )  # (m, G)
            below, above = _tail_log_masses(col, lo[rows, None], hi[rows, None], mu, log_s)
            terms = [
                np.logaddexp.reduce(log_pdf + g + trap_w, axis=1),
                np.logaddexp.reduce(wide_w + below, axis=1) + g[:, 0],
                np.logaddexp.reduce(wide_w + above, axis=1) + g[:, -1],
            ]
            if narrow.any():
                ri, mi = np.nonzero(narrow)
                ys, node_w = _local_nodes(col, mu[ri, mi], log_s[ri, mi], local_w)
                g_n = _log_after(engine, x, np.repeat(ri, len(GIVEN_LOCAL)), _cells(col, ys.ravel()), c, k)
                part = log_w[ri, mi] + np.logaddexp.reduce(g_n.reshape(len(ri), -1) + node_w, axis=1)
                narrow_term = np.full(m, -np.inf)
                np.logaddexp.at(narrow_term, ri, part)
                terms.append(narrow_term)
            terms += [
                atoms[k][rows, i] + _log_after(engine, x, np.arange(m), np.full(m, atom), c, k)
                for i, atom in enumerate(col.atoms)
            ]
            log_e = np.logaddexp.reduce(np.stack(terms), axis=0)
            if col.bounded:
                log_e = log_e - log_mass[k][rows]
            if absent is not None:
                a = absent[rows]
                g_absent = _log_after(engine, x, np.arange(m), np.full(m, ABSENT), c, k)
                log_e = np.logaddexp(log_sigmoid(-a) + log_e, log_sigmoid(a) + g_absent)
            out[k, rows] = per_mask[k, rows][:, before].sum(axis=1) + log_e
    return logmeanexp(out, axis=0)


def _tail_log_masses(
    col: Column, lo: np.ndarray, hi: np.ndarray, mu: np.ndarray, log_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(m, M) each component's log mass below the grid and above it: all of it for an unbounded
    column; between the bound and the grid's end for a bounded one."""
    if not col.bounded:
        return log_sigmoid((lo - mu) * np.exp(-log_s)), log_sigmoid(-(hi - mu) * np.exp(-log_s))
    b_lo, b_hi = bounds_y(col)
    return interval_log_mass(np.asarray(b_lo), lo, mu, log_s), interval_log_mass(hi, np.asarray(b_hi), mu, log_s)


def _local_nodes(col: Column, mu: np.ndarray, log_s: np.ndarray, local_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (n, L) in y of narrow components (mu, log_s: (n,)) and their log weights: GIVEN_LOCAL
    scales with local_w for an unbounded column; for a bounded one, as many nodes spread over
    the part of each component inside the bounds (_span), weighted by the trapezoidal rule and
    scaled to the component's exact mass there (the quadrature of a constant is exact)."""
    s = np.exp(log_s)
    if not col.bounded:
        return mu[:, None] + s[:, None] * GIVEN_LOCAL[None, :], np.broadcast_to(local_w, (len(mu), len(local_w)))
    t = _span(col, mu, log_s, GIVEN_LOCAL)
    w = _trapezoid_log_density(t)
    w = w - np.logaddexp.reduce(w, axis=1, keepdims=True) + component_log_mass(col, mu, log_s)[:, None]
    return mu[:, None] + s[:, None] * t, w


def _span(col: Column, mu: np.ndarray, log_s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(..., T) a uniform grid in each component's standard units over the part of the range of
    t (T,), as wide as t's, that lies inside the column's bounds: t's own range where the bounds
    leave it whole, else cut at the bound and, for a component whose mass lies outside them,
    moved against the bound, where its truncated density is."""
    b_lo, b_hi = bounds_y(col)
    inv_s = np.exp(-log_s)
    with np.errstate(invalid="ignore"):
        t_lo, t_hi = (b_lo - mu) * inv_s, (b_hi - mu) * inv_s
    width = t[-1] - t[0]
    a = np.fmax(t_lo, np.minimum(t[0], t_hi - width))
    b = np.fmin(t_hi, np.maximum(t[-1], t_lo + width))
    return a[..., None] + (b - a)[..., None] * np.linspace(0.0, 1.0, len(t))


def _trapezoid_log_density(t: np.ndarray) -> np.ndarray:
    """(..., T) log of the standard logistic's density at uniform nodes t times their
    trapezoidal weights (the spacing left out: it cancels once normalised)."""
    w = log_sigmoid(t) + log_sigmoid(-t)
    w[..., [0, -1]] += np.log(0.5)
    return w


def _grid(
    col: Column, priors: list[tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]], cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each row's range of the integral in y, [lo, hi) (N,) each: where any mask's conditional
    has its mass, widened to the record's own value +-1, within +-GIVEN_REACH; and the number of
    grid nodes, the same for every row, for a spacing of GIVEN_STEP at most GIVEN_NODES."""
    n = len(cells)
    present = cells != ABSENT
    y_obs = np.full(n, np.nan)
    y_obs[present] = input_value(col, cells[present])
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    for _, log_w, mu, log_s in priors:
        if col.atoms:  # the grid covers the logistics' part; the atoms are terms of their own
            log_w = log_w - np.logaddexp.reduce(log_w, axis=1, keepdims=True)
        q = column_quantiles(col, np.array([GIVEN_TAIL, 1.0 - GIVEN_TAIL]), log_w, mu, log_s)
        lo, hi = np.minimum(lo, q[:, 0]), np.maximum(hi, q[:, 1])
    lo, hi = np.fmin(lo, y_obs - 1.0), np.fmax(hi, y_obs + 1.0)
    lo = np.maximum(lo, np.fmin(-GIVEN_REACH, y_obs - 1.0))
    hi = np.minimum(hi, np.fmax(GIVEN_REACH, y_obs + 1.0))
    if col.bounded:  # the truncated conditional has no mass outside
        b_lo, b_hi = bounds_y(col)
        lo, hi = np.maximum(lo, b_lo), np.minimum(hi, b_hi)
    nodes = int(np.clip(np.ceil(np.max((hi - lo) / GIVEN_STEP)) + 1, 33, GIVEN_NODES))
    return lo, hi, nodes


def _log_after(
    engine: TablePasses, values: np.ndarray, rows: np.ndarray, cells: np.ndarray, c: int, k: int
) -> np.ndarray:
    """(len(rows),) log p_k(the columns after c | the ones before, x_c = cell) for values[rows]
    with column c set to cells; GIVEN_BATCH rows per pass."""
    after = np.flatnonzero(engine.positions[k] > engine.positions[k, c])
    out = np.zeros(len(rows))
    if not len(after):
        return out
    for first in range(0, len(rows), GIVEN_BATCH):
        checkpoint()
        part = slice(first, first + GIVEN_BATCH)
        x = values[rows[part]].copy()
        x[:, c] = cells[part]
        params = engine.params(x, k)
        for j in after.tolist():
            out[part] += column_loglik(engine.schema.columns[j], engine.column_params(params, j), x[:, j])
    return out


def column_summaries(engine: TablePasses, values: np.ndarray, k: int) -> list[dict[str, np.ndarray]]:
    params = engine.params(values, k)
    columns: list[dict[str, np.ndarray]] = []
    for c, col in enumerate(engine.schema.columns):
        p = engine.column_params(params, c)
        if col.kind != "numeric":
            columns.append({"probs": level_probs(col, p)})
            continue
        absent, log_w, mu, log_s = mixture(col, p)
        log_a = atom_log_weights(col, p)
        probs = np.array([0.05, 0.5, 0.95])
        q = column_quantiles(col, probs, log_w, mu, log_s, log_a)
        with np.errstate(over="ignore"):
            qv = drawn_in_range(col, round_to_precision(col, unstandardise(col, q)))  # inf is ABSENT
        if col.atoms:  # a quantile on an atom's point mass is the atom's value, exactly
            at = atom_quantiles(col, probs, log_w, mu, log_s, log_a)
            qv = np.where(at >= 0, np.asarray(col.atoms)[np.maximum(at, 0)], qv)
        mean, sd = mixture_moments(col, log_w, mu, log_s, log_a)
        out = {"mean": mean, "sd": sd, "q05": qv[:, 0], "q50": qv[:, 1], "q95": qv[:, 2]}
        if absent is not None:
            out["p_absent"] = np.exp(log_sigmoid(absent))
        columns.append(out)
    return columns


def _cells(col: Column, y: np.ndarray) -> np.ndarray:
    """Standardised values -> the column's cells (the network reads them back as y)."""
    with np.errstate(over="ignore"):
        return np.minimum(unstandardise(col, y), np.finfo(np.float64).max)


def column_quantiles(
    col: Column,
    probs: np.ndarray,
    log_w: np.ndarray,
    mu: np.ndarray,
    log_s: np.ndarray,
    log_a: np.ndarray | None = None,
) -> np.ndarray:
    """(N, Q) quantiles in y of a numeric column's conditional: mixture_quantiles, or for a
    bounded column those of the truncated mixture, by bisection within bounds_y on the log of
    the mass between the lower bound and y (made.core.heads.interval_log_mass), so that a
    mixture whose mass lies mostly outside the bounds keeps exact quantiles inside them. With
    atoms (log_a (N, A), made.core.heads.atom_log_weights), by bisection on the CDF that steps
    up by each atom's weight at its value (_atom_quantiles_y); atom_quantiles says which
    quantiles fall on an atom."""
    if log_a is not None and log_a.shape[1]:
        return _atom_quantiles_y(col, probs, log_w, mu, log_s, log_a)
    if not col.bounded:
        return mixture_quantiles(probs, log_w, mu, log_s)
    b_lo, b_hi = bounds_y(col)
    s = np.exp(log_s)
    reach = 40 * np.max(s, axis=1)
    lo = np.fmax(b_lo, np.minimum(np.min(mu - 40 * s, axis=1), b_hi - reach))
    hi = np.fmin(b_hi, np.maximum(np.max(mu + 40 * s, axis=1), b_lo + reach))
    lo, hi = np.repeat(lo[:, None], len(probs), axis=1), np.repeat(hi[:, None], len(probs), axis=1)
    target = np.log(probs)[None, :] + log_mass_in_bounds(col, log_w, mu, log_s)[:, None]  # (N, Q)
    b = np.asarray(b_lo)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        log_cdf = np.logaddexp.reduce(
            log_w[:, None, :] + interval_log_mass(b, mid[:, :, None], mu[:, None, :], log_s[:, None, :]), axis=2
        )
        below = log_cdf < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _log_cdf(
    col: Column,
    y: np.ndarray,
    log_w: np.ndarray,
    mu: np.ndarray,
    log_s: np.ndarray,
    log_a: np.ndarray,
    below: np.ndarray,
) -> np.ndarray:
    """(N, Q) log of the (untruncated) mass of the logistics between the lower bound (or -inf)
    and y (N, Q), plus the atoms' weights where below (N, Q, A) says an atom counts."""
    lo = np.asarray(bounds_y(col)[0])
    with np.errstate(invalid="ignore"):  # an empty interval (y at -inf, a log column's 0): no mass
        logistic = np.logaddexp.reduce(
            log_w[:, None, :] + interval_log_mass(lo, y[:, :, None], mu[:, None, :], log_s[:, None, :]), axis=2
        )
    logistic = np.where(y <= lo, -np.inf, logistic)
    return np.logaddexp(logistic, np.logaddexp.reduce(np.where(below, log_a[:, None, :], -np.inf), axis=2))


def _atom_quantiles_y(
    col: Column, probs: np.ndarray, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, log_a: np.ndarray
) -> np.ndarray:
    """(N, Q) quantiles in y of a numeric column with atoms: the least y whose CDF (the logistics'
    mass up to y plus the atoms' at or below y, over the whole mass inside the bounds) reaches
    each prob, by bisection over the logistics' range, the atoms' values and the bounds."""
    b_lo, b_hi = bounds_y(col)
    s = np.exp(log_s)
    y_atoms = standardise(col, np.asarray(col.atoms, dtype=np.float64))  # (A,) -inf: a log column's 0
    finite = y_atoms[np.isfinite(y_atoms)]
    lo = np.min(mu - 40 * s, axis=1, initial=np.min(finite, initial=np.inf))
    hi = np.max(mu + 40 * s, axis=1, initial=np.max(finite, initial=-np.inf))
    lo, hi = np.fmax(lo, b_lo), np.fmin(hi, b_hi)
    lo, hi = np.repeat(lo[:, None], len(probs), axis=1), np.repeat(hi[:, None], len(probs), axis=1)
    target = np.log(probs)[None, :] + log_mass_in_bounds(col, log_w, mu, log_s, log_a)[:, None]  # (N, Q)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        below = _log_cdf(col, mid, log_w, mu, log_s, log_a, y_atoms[None, None, :] <= mid[:, :, None]) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def atom_quantiles(
    col: Column, probs: np.ndarray, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, log_a: np.ndarray
) -> np.ndarray:
    """(N, Q) the atom each quantile falls on (-1: none): the atom at whose value the CDF steps
    from below the prob to at least it, F(y_a-) < p <= F(y_a)."""
    y_atoms = standardise(col, np.asarray(col.atoms, dtype=np.float64))
    target = np.log(probs)[None, :] + log_mass_in_bounds(col, log_w, mu, log_s, log_a)[:, None]  # (N, Q)
    out = np.full(target.shape, -1)
    for i, y_a in enumerate(y_atoms.tolist()):
        y = np.full(target.shape, y_a)
        before = _log_cdf(col, y, log_w, mu, log_s, log_a, np.broadcast_to(y_atoms < y_a, (*y.shape, len(y_atoms))))
        after = np.logaddexp(before, log_a[:, i : i + 1])
        out = np.where((before < target) & (target <= after), i, out)
    return out


def mixture_quantiles(probs: np.ndarray, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """(N, Q) quantiles in y of each row's mixture of logistics (weights exp(log_w)), by bisection."""
    s = np.exp(log_s)
    lo = np.repeat(np.min(mu - 40 * s, axis=1)[:, None], len(probs), axis=1)
    hi = np.repeat(np.max(mu + 40 * s, axis=1)[:, None], len(probs), axis=1)
    w = np.exp(log_w)[:, None, :]
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        cdf = np.sum(w * np.exp(log_sigmoid((mid[:, :, None] - mu[:, None, :]) / s[:, None, :])), axis=2)
        below = cdf < probs[None, :]
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def mixture_moments(
    col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, log_a: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) mean and sd of a numeric column's value under its mixture of logistics over y: in
    closed form for a plain column (a logistic's variance is pi^2 s^2 / 3); for a log-transformed
    one by the trapezoidal rule in each component's standard units over QUANTILE_T (its 1e-12 to
    1 - 1e-12 quantiles, as far as the sampler draws); NaN where that overflows. A bounded
    column's are those of its truncated mixture, by the same rule over the part of each
    component inside the bounds (_truncated_moments). With atoms (log_a), those of the
    logistics' part and the atoms' values mixed by their shares (law of total variance)."""
    if log_a is not None and log_a.shape[1]:
        return _atom_moments(col, log_w, mu, log_s, log_a)
    if col.bounded:
        return _truncated_moments(col, log_w, mu, log_s)
    w, s = np.exp(log_w), np.exp(log_s)
    if col.transform != "log":
        mean_y = np.sum(w * mu, axis=1)
        var_y = np.sum(w * ((mu - mean_y[:, None]) ** 2 + (np.pi * s) ** 2 / 3), axis=1)
        return col.loc + col.scale * mean_y, col.scale * np.sqrt(var_y)
    dens = np.exp(log_sigmoid(QUANTILE_T) + log_sigmoid(-QUANTILE_T))
    dens /= dens.sum()  # the uniform spacing cancels
    mean, var = np.empty(len(w)), np.empty(len(w))
    step = max(1, (1 << 20) // (w.shape[1] * len(QUANTILE_T)))
    with np.errstate(over="ignore", invalid="ignore"):
        for first in range(0, len(w), step):
            part = slice(first, first + step)
            v = unstandardise(col, mu[part, :, None] + s[part, :, None] * QUANTILE_T)  # (n, M, T)
            m = np.sum(w[part] * (v @ dens), axis=1)
            mean[part] = m
            var[part] = np.sum(w[part] * (((v - m[:, None, None]) ** 2) @ dens), axis=1)
    bad = ~(np.isfinite(mean) & np.isfinite(var))
    return np.where(bad, np.nan, mean), np.where(bad, np.nan, np.sqrt(np.where(bad, 0.0, var)))


def _atom_moments(
    col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray, log_a: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) mean and sd of a numeric column with atoms: the logistics' part's (mixture_moments of
    their weights renormalised) and each atom's value, weighted by their shares
    (made.core.heads.atom_shares); a part of share 0 adds nothing, NaN moments included."""
    log_cont, log_atoms = atom_shares(col, log_w, mu, log_s, log_a)
    cont, shares = np.exp(log_cont), np.exp(log_atoms)  # (N,), (N, A)
    with np.errstate(invalid="ignore"):
        m_c, sd_c = mixture_moments(col, log_w - np.logaddexp.reduce(log_w, axis=1, keepdims=True), mu, log_s)
    values = np.asarray(col.atoms, dtype=np.float64)[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        m_part = np.where(cont > 0, cont * m_c, 0.0)
        mean = m_part + np.sum(shares * values, axis=1)
        var_c = np.where(cont > 0, cont * (sd_c**2 + (m_c - mean) ** 2), 0.0)
        var = var_c + np.sum(shares * (values - mean[:, None]) ** 2, axis=1)
    bad = ~(np.isfinite(mean) & np.isfinite(var))
    return np.where(bad, np.nan, mean), np.where(bad, np.nan, np.sqrt(np.where(bad, 0.0, np.maximum(var, 0.0))))


def _truncated_moments(
    col: Column, log_w: np.ndarray, mu: np.ndarray, log_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) mean and sd of a bounded column's value under its truncated mixture: each component
    weighted by its weight times its mass inside the bounds, and integrated by the trapezoidal
    rule over as many nodes as QUANTILE_T spread over its part inside them (_span); NaN where
    that overflows."""
    log_wt = log_w + component_log_mass(col, mu, log_s)
    w = np.exp(log_wt - np.logaddexp.reduce(log_wt, axis=1, keepdims=True))
    mean, var = np.empty(len(w)), np.empty(len(w))
    step = max(1, (1 << 20) // (w.shape[1] * len(QUANTILE_T)))
    with np.errstate(over="ignore", invalid="ignore"):
        for first in range(0, len(w), step):
            part = slice(first, first + step)
            t = _span(col, mu[part], log_s[part], QUANTILE_T)  # (n, M, T)
            dens = _trapezoid_log_density(t)
            dens = np.exp(dens - np.logaddexp.reduce(dens, axis=2, keepdims=True))
            v = unstandardise(col, mu[part, :, None] + np.exp(log_s[part, :, None]) * t)
            m = np.sum(w[part] * np.sum(dens * v, axis=2), axis=1)
            mean[part] = m
            var[part] = np.sum(w[part] * np.sum(dens * (v - m[:, None, None]) ** 2, axis=2), axis=1)
    bad = ~(np.isfinite(mean) & np.isfinite(var))
    return np.where(bad, np.nan, mean), np.where(bad, np.nan, np.sqrt(np.where(bad, 0.0, var)))
