"""MADE over the columns of a table (torch): one degree per column, every unit of a column sharing
it, and each column's conditional (Bernoulli, softmax or a mixture of logistics) from its slice of
the outputs. The math of the heads mirrors made/core/heads.py, which serves the exported model.

`values` are (N, C) float64 encoded cells (made.core.schema): level codes, numbers, ABSENT for a
number recorded as NA. Training data hold no unknown cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from made.core.bounds import bounds_y
from made.core.heads import LOG_SCALE_MAX, LOG_SCALE_MIN, bounded_bins, placeholder
from made.core.masks import build_direct_mask, build_masks
from made.core.schema import ABSENT, Column, Schema, input_value, round_to_precision
from training.model import MaskedConfig, MaskedNetwork
from training.table_heads import ColumnHeads, EncodedRows, interval_log_mass


@dataclass
class TableMADEConfig(MaskedConfig):
    columns: list[dict[str, Any]]  # the schema's JSON form (made.core.schema)
    hidden: list[int] = field(default_factory=lambda: [500])
    n_masks: int = 1
    order_agnostic: bool = False
    connectivity_agnostic: bool = False
    random_ordering: bool = False
    direct: bool = False
    mask_seed: int = 0

    @property
    def schema(self) -> Schema:
        return Schema.from_json(self.columns)

    @property
    def dims(self) -> int:  # type: ignore[override]
        """C: the number of columns, the unit of autoregression."""
        return len(self.columns)


class TableMADE(MaskedNetwork):
    input_dtype = torch.float64  # numbers keep their precision until their bins are computed

    def __init__(self, config: TableMADEConfig):
        super().__init__()
        self.config = config
        self.schema = config.schema
        masks = config.mask_set()
        col_degrees = masks.input_degrees()  # (K, C)
        self.register_buffer("input_degrees", torch.from_numpy(col_degrees[:, self.schema.in_columns]))
        self.register_buffer("output_degrees", torch.from_numpy(col_degrees[:, self.schema.out_columns]))
        self.register_buffer("column_degrees", torch.from_numpy(col_degrees))
        for i, degrees in enumerate(masks.hidden_degrees):
            self.register_buffer(f"hidden_degrees_{i}", torch.from_numpy(degrees))
        widths = [self.schema.n_in, *config.hidden, self.schema.n_out]
        self.layers: list[nn.Linear] = nn.ModuleList(  # type: ignore[assignment]
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.direct = nn.Linear(self.schema.n_in, self.schema.n_out, bias=False) if config.direct else None
        self._mask_cache: dict[int, list[torch.Tensor]] = {}
        self.heads = ColumnHeads(self.schema)  # the columns' heads, grouped (training/table_heads.py)

    output_degrees: torch.Tensor
    column_degrees: torch.Tensor

    def masks(self, k: int) -> list[torch.Tensor]:
        cached = self._mask_cache.get(k)
        if cached is None:
            inp = self.input_degrees[k].numpy()
            out = self.output_degrees[k].numpy()
            hidden = [getattr(self, f"hidden_degrees_{i}")[k].numpy() for i in range(len(self.config.hidden))]
            dense = build_masks(inp, hidden, out)
            if self.direct is not None:
                dense.append(build_direct_mask(inp, out))
            cached = [torch.from_numpy(m) for m in dense]
            self._mask_cache[k] = cached
        return cached

    def inputs(self, values: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.schema.network_inputs(values.detach().cpu().numpy()))

    # forward (network inputs (N, U_in) -> every column's parameters (N, U_out)), mixture_log_prob
    # and the mask cache come from MaskedNetwork

    def encode(self, values: torch.Tensor | np.ndarray) -> EncodedRows:
        """Rows encoded once for the heads (network inputs, bins, ...): pass them to log_prob in
        place of the values to skip that work per minibatch and per mask."""
        return self.heads.encode(values)

    def column_logliks(self, values: torch.Tensor | EncodedRows, mask_index: int = 0) -> torch.Tensor:
        """(N, C) log p_k(x_c | the columns before c in ordering k), by the grouped heads."""
        rows = values if isinstance(values, EncodedRows) else self.encode(values)
        params = self(rows.inputs, mask_index)
        return self.heads.logliks(params, rows, self._column_loglik)

    def column_logliks_per_column(self, values: torch.Tensor, mask_index: int = 0) -> torch.Tensor:
        """column_logliks by the per-column reference heads, one column at a time."""
        params = self(self.inputs(values), mask_index)
        return torch.stack([self._column_loglik(j, params, values[:, j]) for j in range(len(self.schema))], dim=1)

    def log_prob(self, values: torch.Tensor | EncodedRows, mask_index: int = 0) -> torch.Tensor:
        return self.column_logliks(values, mask_index).sum(dim=1)

    def _column_loglik(self, j: int, params: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        col = self.schema.columns[j]
        p = params[:, int(self.schema.out_offsets[j]) : int(self.schema.out_offsets[j + 1])]
        if col.kind == "binary":
            return -F.binary_cross_entropy_with_logits(p[:, 0], v.float(), reduction="none")
        if col.kind == "categorical":
            return -F.cross_entropy(p, v.long(), reduction="none")
        off, m = int(col.nullable), col.components
        n_atoms = len(col.atoms)
        log_all = torch.log_softmax(torch.cat([p[:, off : off + m], p[:, off + 3 * m : off + 3 * m + n_atoms]], 1), 1)
        log_w, log_a = log_all[:, :m], log_all[:, m:]  # the logistics' weights, the atoms' (made.core.heads)
        mu = p[:, off + m : off + 2 * m]
        log_s = p[:, off + 2 * m : off + 3 * m].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        absent = v == ABSENT
        # absent cells are scored as a present value inside the bounds (finite terms), and then
        # their terms are set to 0 before they meet the weights (table_heads' double where)
        vals = torch.where(absent, placeholder(col), v).numpy()
        if col.decimals is None:
            y = torch.from_numpy(input_value(col, vals)).float()[:, None]
            z = (y - mu) * torch.exp(-log_s)
            terms = -z - log_s - 2.0 * F.softplus(-z)
            jac = -math.log(col.scale) - (torch.from_numpy(np.log(vals)).float() if col.transform == "log" else 0.0)
        else:
            lo, hi, width_np = bounded_bins(col, vals)
            width = torch.from_numpy(width_np).float()[:, None]
            lo_t, hi_t = torch.from_numpy(lo).float()[:, None], torch.from_numpy(hi).float()[:, None]
            terms = interval_log_mass(lo_t, hi_t, width, mu, log_s)
            jac = 0.0
        ll = torch.logsumexp(log_w + torch.where(absent[:, None], 0.0, terms), dim=1) + jac
        if n_atoms:
            hit_np = round_to_precision(col, vals)[:, None] == np.asarray(col.atoms)[None, :]
            hit = torch.from_numpy(hit_np) & ~absent[:, None]
            any_hit = hit.any(dim=1, keepdim=True)
            # (a double where: a row no atom holds sums all its atoms, never only -infs)
            at = torch.logsumexp(torch.where(any_hit, torch.where(hit, log_a, -math.inf), log_a), dim=1)
            if col.decimals is None:  # a point among densities: its probability, as an absent cell's
                ll = torch.where(any_hit[:, 0], at, ll)
            else:
                ll = torch.where(any_hit[:, 0], torch.logaddexp(ll, at), ll)
        if col.bounded:
            ll = ll - _log_mass_in_bounds(col, log_w, mu, log_s, log_a)
        if col.nullable:
            a = p[:, 0]
            return torch.where(absent, F.logsigmoid(a), F.logsigmoid(-a) + ll)
        return ll

    @torch.no_grad()
    def init_from_data(self, train: np.ndarray) -> None:
        """Start each categorical and binary column's output biases at its training marginal (a
        numeric column's: its share of absent cells, and its atoms' shares)."""
        bias = self.layers[-1].bias
        for j, col in enumerate(self.schema.columns):
            start = int(self.schema.out_offsets[j])
            codes = train[:, j]
            if col.kind == "binary":
                p = float(np.clip(codes.mean(), 1e-3, 1 - 1e-3))
                bias[start] = math.log(p / (1 - p))
            elif col.kind == "categorical":
                freq = np.bincount(codes.astype(np.int64), minlength=len(col.levels)) + 0.5
                bias[start : start + len(col.levels)] = torch.from_numpy(np.log(freq / freq.sum())).float()
            else:
                if col.nullable:
                    p = float(np.clip((codes == ABSENT).mean(), 1e-3, 1 - 1e-3))
                    bias[start] = math.log(p / (1 - p))
                if col.atoms:
                    _init_atoms(col, codes, bias[start : start + col.n_out])


def _init_atoms(col: Column, codes: np.ndarray, bias: torch.Tensor) -> None:
    """A numeric column's atom logits (bias: its slice of the output biases) started at the
    atoms' shares of its present training cells: with the M weight logits near 0, exp(b_a) =
    M s_a / (1 - S) gives atom a the share s_a of the softmax (S: the atoms' total)."""
    present = codes[codes != ABSENT]
    held = round_to_precision(col, present)
    shares = np.array([np.mean(held == a) if len(held) else 0.0 for a in col.atoms])
    shares = np.clip(shares, 1e-3, None)
    rest = max(1.0 - float(shares.sum()), 1e-3)
    start = int(col.nullable) + 3 * col.components
    bias[start : start + len(col.atoms)] = torch.from_numpy(np.log(col.components * shares / rest)).to(bias.dtype)


def _log_mass_in_bounds(
    col: Column, log_w: torch.Tensor, mu: torch.Tensor, log_s: torch.Tensor, log_a: torch.Tensor
) -> torch.Tensor:
    """(N,) log of the mixture's mass inside a bounded column's bounds: the normaliser of its
    truncated head (made.core.heads.log_mass_in_bounds), so that training fits the model that
    serving reads."""
    lo, hi = bounds_y(col)
    full = torch.full((1, 1), 1.0, dtype=mu.dtype)
    mass = interval_log_mass(full * lo, full * hi, full * (hi - lo), mu, log_s)
    return torch.logsumexp(torch.cat([log_w + mass, log_a], dim=1), dim=1)
