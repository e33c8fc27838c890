"""The table model's column heads, vectorised: columns of the same kind and shape are scored by
one tensor operation per group instead of one Python call per column, and everything a head needs
of a row that depends on the row alone (network inputs, a number's standardised value, its
rounding bin, the log-Jacobian of its transform, whether it is absent) is encoded once per data
set (`ColumnHeads.encode`) instead of per minibatch and per mask.

The math is training/table_model.py's per-column `_column_loglik`, which stays the reference:
`ColumnHeads.logliks` gives the same (N, C) log-likelihoods (to float32 rounding; the tests hold
it to 1e-6). A column this module does not know how to group (any Column field not in
`GROUPED_FIELDS` set to other than its default, e.g. a feature added to numeric heads later) is
scored by that reference, column by column, so a new head is correct before it is fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from made.core.bounds import bounds_y
from made.core.heads import LOG_SCALE_MAX, LOG_SCALE_MIN, bounded_bins, placeholder
from made.core.schema import ABSENT, Column, Schema, input_value

# The Column fields whose every value the grouped heads implement; a column with any other field
# away from its default goes to the per-column reference.
GROUPED_FIELDS = frozenset(
    {
        "name",
        "kind",
        "levels",
        "transform",
        "loc",
        "scale",
        "decimals",
        "nullable",
        "components",
        "bits",
        "none_level",
        "lower",
        "upper",
    }
)

ColumnLoglik = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def groupable(col: Column) -> bool:
    """Whether the grouped heads implement this column's head."""
    for f in fields(col):
        if f.name in GROUPED_FIELDS:
            continue
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else MISSING)
        )
        if getattr(col, f.name) != default:
            return False
    return True


@dataclass
class EncodedRows:
    """Rows encoded for the heads: every tensor's first dimension is the row. `values` are the
    (N, C) float64 cells, for the columns scored by the per-column reference."""

    tensors: dict[str, torch.Tensor]

    @property
    def values(self) -> torch.Tensor:
        return self.tensors["values"]

    @property
    def inputs(self) -> torch.Tensor:
        return self.tensors["inputs"]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def take(self, rows: torch.Tensor) -> EncodedRows:
        """The rows at these indices (a copy)."""
        return EncodedRows({k: v[rows] for k, v in self.tensors.items()})

    def slice(self, start: int, stop: int) -> EncodedRows:
        """Rows start..stop (views, no copy)."""
        return EncodedRows({k: v[start:stop] for k, v in self.tensors.items()})


@dataclass(frozen=True)
class _NumericGroup:
    key: str
    columns: np.ndarray  # (g,) column indices
    binned: bool
    nullable: bool
    bounded: bool
    mixture: torch.Tensor  # (g * 3 * m,) output indices of each column's weight logits, means, log scales
    components: int
    absent_logit: torch.Tensor  # (g,) output index of P(absent)'s logit (nullable groups)
    bounds: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (g,) lo, hi, hi - lo in y (bounded groups)


class ColumnHeads:
    """The grouped heads of one schema: binary columns in one group, categorical ones in one
    group padded to the most levels, numeric ones grouped by (components, binned, nullable, bounded)."""

    def __init__(self, schema: Schema, grouped: bool = True):
        """grouped=False: every column on the per-column reference (to compare the two)."""
        self.schema = schema
        cols = schema.columns
        out = schema.out_offsets
        self.reference = [j for j, c in enumerate(cols) if not (grouped and groupable(c))]
        kept = [j for j in range(len(cols)) if j not in set(self.reference)]
        self.binary = np.array([j for j in kept if cols[j].kind == "binary"], dtype=np.int64)
        self.binary_out = torch.from_numpy(out[self.binary].astype(np.int64))
        # (index_select, not advanced indexing: its backward is an index_add, not a sorting index_put)
        self.categorical = np.array([j for j in kept if cols[j].kind == "categorical"], dtype=np.int64)
        width = max((len(cols[j].levels) for j in self.categorical), default=0)
        pad = int(schema.n_out)  # the index of a -inf column appended to the outputs
        cat_out = np.full((len(self.categorical), width), pad, dtype=np.int64)
        for i, j in enumerate(self.categorical):
            cat_out[i, : len(cols[j].levels)] = out[j] + np.arange(len(cols[j].levels))
        self.categorical_out = torch.from_numpy(cat_out.ravel())
        self.categorical_shape = cat_out.shape
        keys: dict[tuple[int, bool, bool, bool], list[int]] = {}
        for j in kept:
            c = cols[j]
            if c.kind == "numeric":
                keys.setdefault((c.components, c.decimals is not None, c.nullable, c.bounded), []).append(j)
        self.numeric = [self._numeric_group(*key, js) for key, js in keys.items()]
        order = [*self.binary, *self.categorical, *(j for g in self.numeric for j in g.columns), *self.reference]
        self.inverse = torch.from_numpy(np.argsort(np.array(order, dtype=np.int64)))

    def _numeric_group(self, m: int, binned: bool, nullable: bool, bounded: bool, columns: list[int]) -> _NumericGroup:
        out = self.schema.out_offsets
        base = np.array([out[j] + int(nullable) for j in columns], dtype=np.int64)[:, None] + np.arange(m)
        edges = [bounds_y(self.schema.columns[j]) for j in columns]
        return _NumericGroup(
            key=f"num{m}{'b' if binned else 'c'}{'n' if nullable else ''}{'t' if bounded else ''}",
            columns=np.array(columns, dtype=np.int64),
            binned=binned,
            nullable=nullable,
            bounded=bounded,
            bounds=(
                torch.tensor([lo for lo, _ in edges], dtype=torch.float32),
                torch.tensor([hi for _, hi in edges], dtype=torch.float32),
                torch.tensor([hi - lo for lo, hi in edges], dtype=torch.float32),
            ),
            mixture=torch.from_numpy(np.stack([base, base + m, base + 2 * m], axis=1).ravel()),
            components=m,
            absent_logit=torch.from_numpy(np.array([out[j] for j in columns], dtype=np.int64)),
        )

    # --- encoding, once per data set ----------------------------------------------------------
    def encode(self, values: np.ndarray | torch.Tensor) -> EncodedRows:
        """(N, C) encoded cells -> the tensors the heads read (float32 as the reference computes
        them, so that the grouped heads reproduce it)."""
        v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        v = v.astype(np.float64, copy=False)
        t: dict[str, torch.Tensor] = {
            "values": torch.from_numpy(v),
            "inputs": torch.from_numpy(self.schema.network_inputs(v)),
            "binary": torch.from_numpy(v[:, self.binary]).float(),
            "categorical": torch.from_numpy(v[:, self.categorical]).long(),
        }
        for g in self.numeric:
            self._encode_numeric(g, v, t)
        return EncodedRows(t)

    def _encode_numeric(self, g: _NumericGroup, v: np.ndarray, t: dict[str, torch.Tensor]) -> None:
        cols = [self.schema.columns[j] for j in g.columns]
        absent = v[:, g.columns] == ABSENT
        # absent cells are scored as a present value inside the bounds, whose terms are finite
        vals = np.where(absent, np.array([placeholder(c) for c in cols]), v[:, g.columns])
        t[f"{g.key}.absent"] = torch.from_numpy(absent)
        if not g.binned:
            y = [torch.from_numpy(input_value(c, vals[:, i])).float() for i, c in enumerate(cols)]
            jac = [
                -math.log(c.scale) - (torch.from_numpy(np.log(vals[:, i])).float() if c.transform == "log" else 0.0)
                for i, c in enumerate(cols)
            ]
            t[f"{g.key}.y"] = torch.stack(y, dim=1)
            t[f"{g.key}.jac"] = torch.stack(
                [j if isinstance(j, torch.Tensor) else torch.full((len(v),), j, dtype=torch.float32) for j in jac],
                dim=1,
            )
            return
        bins = [bounded_bins(c, vals[:, i]) for i, c in enumerate(cols)]
        for n, name in enumerate(("lo", "hi", "width")):
            t[f"{g.key}.{name}"] = torch.stack([torch.from_numpy(b[n]).float() for b in bins], dim=1)

    # --- scoring, per minibatch -----------------------------------------------------------------
    def logliks(self, params: torch.Tensor, rows: EncodedRows, reference: ColumnLoglik) -> torch.Tensor:
        """(N, C) log p(x_c | ...) from the network's outputs `params` (N, U_out); `reference`
        is the per-column head, for the columns not grouped."""
        t = rows.tensors
        parts: list[torch.Tensor] = []
        if len(self.binary):
            logits = params.index_select(1, self.binary_out)
            parts.append(-F.binary_cross_entropy_with_logits(logits, t["binary"], reduction="none"))
        if len(self.categorical):
            padded = F.pad(params, (0, 1), value=-math.inf).index_select(1, self.categorical_out)
            padded = padded.view(len(params), *self.categorical_shape)  # (N, g, L)
            logp = torch.log_softmax(padded, dim=2)
            parts.append(logp.gather(2, t["categorical"][:, :, None]).squeeze(2))
        for g in self.numeric:
            parts.append(self._numeric(g, params, t))
        values = rows.values
        parts.extend(reference(j, params, values[:, j])[:, None] for j in self.reference)
        return torch.cat(parts, dim=1)[:, self.inverse]

    @staticmethod
    def _numeric(g: _NumericGroup, params: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        sel = params.index_select(1, g.mixture).view(len(params), len(g.columns), 3, g.components)
        log_w = torch.log_softmax(sel[:, :, 0], dim=2)  # (N, g, m)
        mu = sel[:, :, 1]
        log_s = sel[:, :, 2].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        if g.binned:
            lo, hi, width = (t[f"{g.key}.{k}"][:, :, None] for k in ("lo", "hi", "width"))
            terms = interval_log_mass(lo, hi, width, mu, log_s)
        else:
            z = (t[f"{g.key}.y"][:, :, None] - mu) * torch.exp(-log_s)
            terms = -z - log_s - 2.0 * F.softplus(-z)
        if g.nullable:  # the double where: an absent cell's terms are 0, whatever its placeholder
            terms = torch.where(t[f"{g.key}.absent"][:, :, None], 0.0, terms)
        ll = torch.logsumexp(log_w + terms, dim=2)
        if not g.binned:
            ll = ll + t[f"{g.key}.jac"]
        if g.bounded:  # truncated to the bounds: minus the log of the mixture's mass inside them
            b_lo, b_hi, b_width = (b[None, :, None] for b in g.bounds)
            ll = ll - torch.logsumexp(log_w + interval_log_mass(b_lo, b_hi, b_width, mu, log_s), dim=2)
        if g.nullable:
            a = params.index_select(1, g.absent_logit)
            return torch.where(t[f"{g.key}.absent"], F.logsigmoid(a), F.logsigmoid(-a) + ll)
        return ll


def interval_log_mass(
    lo: torch.Tensor, hi: torch.Tensor, width: torch.Tensor, mu: torch.Tensor, log_s: torch.Tensor
) -> torch.Tensor:
    """Each logistic component's log mass on [lo, hi] (y units; width = hi - lo kept exact where
    the edges are too close to subtract): made.core.heads' formula, broadcast over the group. An
    infinite edge or width (a one-sided bound, a log column's bin reaching 0) contributes its limit
    0 through a branch that never computes inf * 0, whose gradient would be NaN; an empty one
    (width 0) is -inf through a branch that never takes log 0, whose gradient (inf, times the 0
    that torch.where sends the branch it drops) would be NaN too."""
    inv_s = torch.exp(-log_s)
    top, bottom, wide, empty = hi == math.inf, lo == -math.inf, width == math.inf, width <= 0
    upper = torch.where(top, 0.0, F.logsigmoid((torch.where(top, 0.0, hi) - mu) * inv_s))
    lower = torch.where(bottom, 0.0, F.logsigmoid(-(torch.where(bottom, 0.0, lo) - mu) * inv_s))
    gap = torch.log(-torch.expm1(-torch.where(wide | empty, 1.0, width) * inv_s))
    gap = torch.where(wide, 0.0, torch.where(empty, -math.inf, gap))
    return upper + lower + gap
