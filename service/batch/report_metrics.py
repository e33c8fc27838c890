"""sdmetrics' quality scores of sampled rows against real ones, by sdmetrics' own definitions
(sdmetrics 0.32's QualityReport), in numpy: `made report` runs where the bench extra is absent.

A column is either numeric (float, NaN where absent) or categorical (text; an absent cell is the
level "NA"). The scores, each in [0, 1], higher is better:

- column shape: KSComplement (1 - the two-sample Kolmogorov-Smirnov statistic of the present
  values) for a numeric column, TVComplement (1 - total variation distance of the level
  frequencies) for a categorical one; Column Shapes is their mean.
- column pair: CorrelationSimilarity (1 - |Pearson r_real - r_sampled| / 2, rows where both are
  present) for two numeric columns; ContingencySimilarity (1 - total variation distance of the
  joint frequencies) otherwise, a numeric column binned into 10 equal-width bins between ITS
  OWN data's min and max (np.histogram_bin_edges, separately for the real and the sampled rows;
  absent cells in an 11th bin). As in sdmetrics' report, Column Pair Trends averages only the
  pairs whose real rows show a relationship: |r_real| > 0.5, Cramér's V > 0.3.
- overall: the mean of Column Shapes and Column Pair Trends.

tests/test_report.py checks these against sdmetrics itself where the bench extra is installed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

CORRELATION_THRESHOLD = 0.5  # sdmetrics.reports.utils.DEFAULT_REAL_CORRELATION_THRESHOLD
ASSOCIATION_THRESHOLD = 0.3  # sdmetrics.reports.utils.DEFAULT_REAL_ASSOCIATION_THRESHOLD
BINS = 10  # ContingencySimilarity's num_discrete_bins


@dataclass(frozen=True)
class PairScore:
    a: str
    b: str
    metric: str  # "CorrelationSimilarity" or "ContingencySimilarity"
    score: float  # NaN where it cannot be computed (a constant column)
    real: float  # the real rows' Pearson r, or Cramér's V
    sampled: float  # the sampled rows' Pearson r (NaN for a contingency pair)
    counts: bool  # whether it enters Column Pair Trends (the real rows' relationship is strong enough)


def ks_complement(real: np.ndarray, sampled: np.ndarray) -> float:
    """1 - max |F_real - F_sampled| over the present (non-NaN) values."""
    r, s = np.sort(real[~np.isnan(real)]), np.sort(sampled[~np.isnan(sampled)])
    if not len(r) or not len(s):
        return float("nan")
    points = np.concatenate([r, s])
    gap = np.abs(np.searchsorted(r, points, side="right") / len(r) - np.searchsorted(s, points, side="right") / len(s))
    return float(1.0 - gap.max())


def frequencies(*columns: np.ndarray) -> dict[tuple[object, ...], float]:
    """Joint relative frequency of each combination of the columns' cells."""
    keys, counts = np.unique(np.stack([np.asarray(c, dtype=str) for c in columns], axis=1), axis=0, return_counts=True)
    total = counts.sum()
    return {tuple(k): c / total for k, c in zip(keys.tolist(), counts.tolist(), strict=True)}


def tv_complement(*pairs: tuple[np.ndarray, np.ndarray]) -> float:
    """1 - total variation distance between the real and sampled joint frequencies of the
    columns: pairs is ((real_1, sampled_1), (real_2, sampled_2), ...)."""
    fr = frequencies(*(r for r, _ in pairs))
    fs = frequencies(*(s for _, s in pairs))
    return float(1.0 - 0.5 * sum(abs(fr.get(k, 0.0) - fs.get(k, 0.0)) for k in set(fr) | set(fs)))


def discretize(values: np.ndarray) -> np.ndarray:
    """A numeric column's bin (1..10, 11 absent) on 10 equal-width bins of its own range."""
    present = values[~np.isnan(values)]
    if not len(present):
        return np.full(len(values), BINS + 1)
    return np.digitize(values, np.histogram_bin_edges(present, bins=BINS))


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramér's V of the contingency table of a and b (no continuity correction, as
    scipy.stats.contingency.association); NaN where a column has a single value."""
    _, ia = np.unique(np.asarray(a, dtype=str), return_inverse=True)
    _, ib = np.unique(np.asarray(b, dtype=str), return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1.0)
    if min(table.shape) < 2:
        return float("nan")
    n = table.sum()
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    both = ~(np.isnan(a) | np.isnan(b))
    x, y = a[both], b[both]
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def pair_score(a: str, b: str, real: dict[str, np.ndarray], sampled: dict[str, np.ndarray]) -> PairScore:
    """One pair's score as sdmetrics' ColumnPairTrends computes it (module docstring)."""
    numeric = [real[c].dtype.kind == "f" for c in (a, b)]
    if all(numeric):
        r, s = pearson(real[a], real[b]), pearson(sampled[a], sampled[b])
        score = 1.0 - abs(r - s) / 2.0
        return PairScore(a, b, "CorrelationSimilarity", score, r, s, bool(abs(r) > CORRELATION_THRESHOLD))
    cols = [
        (discretize(real[c]), discretize(sampled[c])) if is_num else (real[c], sampled[c])
        for c, is_num in zip((a, b), numeric, strict=True)
    ]
    v = cramers_v(cols[0][0], cols[1][0])
    score = tv_complement(*cols) if not np.isnan(v) else float("nan")
    return PairScore(a, b, "ContingencySimilarity", score, v, float("nan"), bool(v > ASSOCIATION_THRESHOLD))


@dataclass(frozen=True)
class Quality:
    shapes: dict[str, float]  # column -> KSComplement or TVComplement
    pairs: list[PairScore]

    @property
    def column_shapes(self) -> float:
        return float(np.nanmean(list(self.shapes.values())))

    @property
    def column_pair_trends(self) -> float:
        """Mean of the pairs that count (NaN for a table with none)."""
        counted = [p.score for p in self.pairs if p.counts and not np.isnan(p.score)]
        return float(np.mean(counted)) if counted else float("nan")

    @property
    def overall(self) -> float:
        return float(np.nanmean([self.column_shapes, self.column_pair_trends]))


def quality(real: dict[str, np.ndarray], sampled: dict[str, np.ndarray]) -> Quality:
    """Scores of sampled against real: both map each column to its cells (float64 for a numeric
    column, text for a categorical one), in the same column order."""
    shapes = {
        c: ks_complement(real[c], sampled[c]) if real[c].dtype.kind == "f" else tv_complement((real[c], sampled[c]))
        for c in real
    }
    pairs = [pair_score(a, b, real, sampled) for a, b in itertools.combinations(list(real), 2)]
    return Quality(shapes, pairs)
