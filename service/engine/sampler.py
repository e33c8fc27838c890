"""Exact ancestral sampling in about one forward pass, with optional clamped (observed) values.

For mask k, sort each layer's units by degree. Once positions 1..t of the ordering are known,
every unit of degree <= t has all its inputs, and the output at position t+1 needs only
last-layer units of degree <= t. So step t+1 computes just the units of degree exactly t in each
layer, then one output logit. Each hidden unit is computed once.

What makes that fast in numpy:
- Blocks of steps. A unit computed at a step in [t0, t1) takes most of its input from units of
  degree < t0, all known when the block starts: one matmul per layer and mask at the start of the
  block computes that part for every unit of the block (a real GEMM over the known prefix), and
  each step adds only the contributions of the block's own earlier units. A step then touches
  (rows x a few dozen) numbers instead of streaming every layer's known prefix through the cache
  once per step, which tripled the cost per row above ~1000 rows.
- All masks in one loop. Rows are grouped by mask, G groups padded to R rows, arrays kept
  transposed, (G, units, R), so that a step's new units are contiguous rows. Within a block each
  step owns a range of slots per layer, as many as the mask with the most units of that degree
  has; masks with fewer leave empty slots (zero weights and bias: ReLU and tanh give 0). Every step
  runs the same batched matmuls for all groups: the number of numpy calls per step does not grow
  with the number of masks in the batch (a merged batch of 64 mixture samples costs about one
  loop, not K).
- Few numpy calls per step: their overhead, not arithmetic, is what a small batch costs. Each
  layer of a block reads one buffer in which every step's fresh rows (the units just computed
  below, or the input just drawn) are followed by the layer's block-GEMM results for that
  step's units, which enter its matmul with weight 1. A step is then, per layer, one matmul over
  a prefix of that buffer and one ReLU written straight into the next layer's buffer, and for
  the outputs one matmul and one compare; the first layer and the outputs share the buffer that
  holds the inputs, so a drawn input is written once. With 2 hidden layers that is 6 calls a
  step (the per-mask stepping loop made ~16). The earlier steps' block-GEMM rows inside the
  prefix cost zero-weight work, which makes batches of many hundred rows ~10% slower than
  adding the block-GEMM results separately would.

The draw x_d = 1 where u_d < sigmoid(z_d) is taken as z_d > logit(u_d), with logit(u) computed for
all the noise at once. Clamping turns the same loop into likelihood weighting: an observed entry's
threshold is -inf (value 1) or +inf (value 0), and its log p(x_d | x_<d) is summed from the stored
logits at the end.

Soft evidence (denoising) generalises clamping: with log-likelihoods l0 = log p(y_d | x_d = 0) and
l1 = log p(y_d | x_d = 1) of an observation y_d, each step draws from the tilted Bernoulli
q(x_d | x_<d) ∝ p(x_d | x_<d) p(y_d | x_d), whose logit is z_d + l1 - l0: the threshold moves by
l1 - l0 (±inf is clamping, 0 no evidence), and the log weight gains the normaliser
log Σ_x p(x | x_<d) p(y_d | x), again from the stored logits at the end.

Everything is float64: float32 sums differ in the last bits with the batch size and the padding
(BLAS picks other kernels), which could flip a draw when dynamic batching merges requests; in
float64 such a flip needs |u - p| < ~1e-15, so a seed gives the same samples in any batch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine.cancel import checkpoint
from service.engine.network import MaskWeights

# Steps per block: longer blocks mean fewer, larger block GEMMs but more work per step (the
# block's own units grow with it, and so do the zero-weight rows of its earlier steps). Masks
# stepping together have ~3x the slots per step of one mask (8 masks, D=784, [500, 500]), so
# shorter blocks: 24 was fastest measured, from 1 to 1000 rows; 16 keeps the mixture plan's
# per-step weights at 20 MB instead of 29 (8 masks, D=784, [1000, 1000]).
BLOCK = 32  # one mask
GROUP_BLOCK = 16  # several masks
# Rows per pass: bounds the memory (~30 KB a row at D=784, [500, 500]); the cost per row is
# flat from ~500 rows of one mask on.
MAX_ROWS = 2048
# What a pass through the stepping loop costs, in rows of one mask's work (~0.075 ms at D=784,
# [500, 500]): PASS_ROWS plus GROUP_ROWS per group (~6 ms for one mask, ~13 ms for 8), and a row
# of several masks stepping together costs MIXED_ROW rows (their slots are padded). Several
# masks go through one pass of all K masks (absent ones as empty groups, every group padded to
# the largest) when that costs less than one pass per mask: measured, up to ~500 rows of 8.
PASS_ROWS = 65
GROUP_ROWS = 13
MIXED_ROW = 1.6


@dataclass(frozen=True)
class _Stage:
    """One layer's part of a block for G masks: a hidden layer, or the outputs (the last stage).

    A stage reads one buffer (G, M, R) whose rows come step by step: for step j, the rows that
    step writes (the units of degree t0 + j of the layer below; the input drawn at step j - 1),
    and the stage's own rows: what the block GEMM gave its units of step j. A step of the stage
    is one matmul over a prefix of the buffer, its own rows entering with weight 1, then one ReLU
    into the next stage's buffer (one compare into buffer 0, for the outputs). The first hidden
    layer and the outputs share buffer 0, which holds the inputs: a drawn input is written once.
    """

    buffer: int  # the buffer it reads: 0 for the first stage and the outputs, else its index
    parts: list[tuple[int, int, int]]  # per group: block GEMM rows [lo, hi), known prefix below
    units: int  # U: most block GEMM rows of any group
    src: np.ndarray  # (G, S): for each slot (unit, padded per step), its block GEMM row (U: none)
    own_rows: np.ndarray  # (G, S): and its row in the buffer
    bias: np.ndarray  # (G, S, 1)
    # every step's weights, flat, float32 (the masks' own float32 values: exact); a pass makes
    # them float64 one block at a time, so a plan keeps half the bytes (~15 MB less at D=784,
    # [1000, 1000], K=8)
    weights: np.ndarray
    # per step: (offset of its weights (G, C, m) in `weights`, (G, C, m), m, rows [lo, hi) it
    # writes in the next stage's buffer), or None where no mask has a unit of that degree
    steps: list[tuple[int, tuple[int, int, int], int, int, int] | None]
    out_rows: np.ndarray  # (G, U): each unit's row in the next stage's buffer
    dst_rows: np.ndarray  # (G, U): and in the layer's activations (H: padding)


@dataclass(frozen=True)
class _Block:
    t0: int
    t1: int
    stages: list[_Stage]  # the hidden layers, then the outputs
    buffer_rows: list[int]  # rows of each buffer
    x_rows: list[int]  # per step j: the row of buffer 0 that receives the input drawn at step j


@dataclass(frozen=True)
class _GroupPlan:
    nets: list[MaskWeights]  # one per group
    widths: list[int]  # hidden layer widths
    blocks: list[_Block]


def _group_plan(nets: list[MaskWeights], dims: int, block: int) -> _GroupPlan:
    """Blocks of `block` steps for the masks of `nets` stepping together."""
    widths = [len(d) for d in nets[0].degrees]
    blocks = [_plan_block(nets, t0, min(t0 + block, dims)) for t0 in range(0, dims, block)]
    return _GroupPlan(nets, widths, blocks)


def _plan_block(nets: list[MaskWeights], t0: int, t1: int) -> _Block:
    n_groups, nb, n_hidden = len(nets), t1 - t0, len(nets[0].degrees)
    # Each stage's units in the block, per group: [lo, hi) of its sorted rows, each unit's
    # degree and step. The outputs are a stage with one unit per step: position t0 + j, which
    # sees degrees <= t0 + j below (strictly lower: an input has degree position + 1).
    spans: list[list[tuple[int, int]]] = []
    degs: list[list[np.ndarray]] = []
    steps_of: list[list[np.ndarray]] = []
    ranks: list[list[np.ndarray]] = []  # each unit's rank among its step's units
    per_step: list[np.ndarray] = []  # slots per step: the most units any group has then
    for l in range(n_hidden + 1):
        span, deg, step, rank = [], [], [], []
        counts = np.zeros((n_groups, nb), dtype=np.int64)
        for g, s in enumerate(nets):
            if l < n_hidden:
                d = s.degrees[l]
                # units of degree < t0 were computed in earlier blocks (degree <= 0: at step 0)
                lo = int(np.searchsorted(d, t0, side="left")) if t0 > 0 else 0
                hi = int(np.searchsorted(d, t1 - 1, side="right"))
                d = d[lo:hi]
            else:
                lo, hi, d = t0, t1, np.arange(t0, t1)
            j = np.maximum(d, 0) - t0  # sorted by degree, so by step
            counts[g] = np.bincount(j, minlength=nb)
            span.append((lo, hi))
            deg.append(d)
            step.append(j)
            rank.append(np.arange(len(j)) - np.searchsorted(j, np.arange(nb))[j])
        spans.append(span)
        degs.append(deg)
        steps_of.append(step)
        ranks.append(rank)
        per_step.append(counts.max(axis=0))

    # Buffer rows, step by step. Buffer 0: the input drawn at the step before, the first
    # layer's own rows, then the last hidden layer's new units and the output's own row;
    # buffer l (0 < l < n_hidden): layer l-1's new units, then layer l's own rows.
    buffer_of = [0 if l in (0, n_hidden) else l for l in range(n_hidden + 1)]
    rows = [0] * max(n_hidden, 1)
    x_rows = [-1] * nb  # x_rows[j]: row of the input drawn at step j (read from step j + 1)
    fresh_at = np.zeros((n_hidden + 1, nb), dtype=np.int64)
    own_at = np.zeros((n_hidden + 1, nb), dtype=np.int64)
    for j in range(nb):
        if j > 0:
            x_rows[j - 1] = rows[0]
            rows[0] += 1
        for l in range(n_hidden + 1):
            if l > 0:  # the layer below's new units
                b = buffer_of[l]
                fresh_at[l, j] = rows[b]
                rows[b] += int(per_step[l - 1][j])
            own_at[l, j] = rows[buffer_of[l]]
            rows[buffer_of[l]] += int(per_step[l][j])
    x_cols = np.array(x_rows[: nb - 1], dtype=np.int64)  # position t0 + q: row x_cols[q]

    stages = []
    for l in range(n_hidden + 1):
        n_cols = rows[buffer_of[l]]
        n_units = max(hi - lo for lo, hi in spans[l])
        slot_at = np.concatenate([[0], np.cumsum(per_step[l])])
        n_slots = int(slot_at[-1])
        src = np.full((n_groups, n_slots), n_units, dtype=np.int64)
        own_rows = np.tile(
            np.repeat(own_at[l], per_step[l]) + np.arange(n_slots) - np.repeat(slot_at[:-1], per_step[l]), (n_groups, 1)
        )
        bias = np.zeros((n_groups, n_slots, 1))
        full = np.zeros((n_groups, n_slots, n_cols))  # weights of every slot over the buffer
        out_rows = np.zeros((n_groups, n_units), dtype=np.int64)
        padding_row = len(nets[0].degrees[l]) if l < n_hidden else 0
        dst_rows = np.full((n_groups, n_units), padding_row, dtype=np.int64)
        known = []
        for g, s in enumerate(nets):
            lo, hi = spans[l][g]
            j, r, d = steps_of[l][g], ranks[l][g], degs[l][g]
            slot = slot_at[j] + r
            own = own_at[l][j] + r
            src[g, slot] = np.arange(hi - lo)
            bias[g, slot, 0] = s.biases[l][lo:hi]
            full[g, slot, own] = 1.0  # the block GEMM's part enters as it is
            if l > 0:  # the block's units of the layer below
                blo, bhi = spans[l - 1][g]
                below = fresh_at[l][steps_of[l - 1][g]] + ranks[l - 1][g]
                mask = degs[l - 1][g][None, :] <= d[:, None]
                full[g, slot[:, None], below[None, :]] = s.weights[l][lo:hi, blo:bhi] * mask
                known.append(blo)
            else:
                known.append(t0)
            if l == 0 or l == n_hidden:  # the block's inputs, positions t0..t1-2
                sub = np.zeros((hi - lo, nb - 1))
                if l == 0:
                    sub += s.weights[0][lo:hi, t0 : t1 - 1]
                if l == n_hidden and s.direct is not None:
                    sub += s.direct[t0:t1, t0 : t1 - 1]
                mask = np.arange(t0 + 1, t1)[None, :] <= d[:, None]  # input degree: position + 1
                full[g, slot[:, None], x_cols[None, :]] = sub * mask
            if l < n_hidden:
                out_rows[g, : hi - lo] = fresh_at[l + 1][j] + r
                dst_rows[g, : hi - lo] = np.arange(lo, hi)
        steps: list[tuple[int, tuple[int, int, int], int, int, int] | None] = []
        pieces: list[np.ndarray] = []
        offset = 0
        for j in range(nb):
            c = int(per_step[l][j])
            if c == 0:
                steps.append(None)
                continue
            m = int(own_at[l][j]) + c
            wj = full[:, slot_at[j] : slot_at[j] + c, :m]
            pieces.append(wj.ravel())
            nxt = int(fresh_at[l + 1][j]) if l < n_hidden else 0
            steps.append((offset, (n_groups, c, m), m, nxt, nxt + c))
            offset += wj.size
        # float32 holds them exactly (each is a float32 weight, 0 or 1), where it does not (a
        # sum of two weights: no hidden layer), they stay float64
        flat = np.concatenate(pieces) if pieces else np.zeros(0)
        flat32 = flat.astype(np.float32)
        if np.array_equal(flat32, flat):
            flat = flat32
        parts = [(lo, hi, k) for (lo, hi), k in zip(spans[l], known, strict=True)]
        stages.append(_Stage(buffer_of[l], parts, n_units, src, own_rows, bias, flat, steps, out_rows, dst_rows))
    return _Block(t0, t1, stages, rows, x_rows)


class FastSampler:
    """Stepping sampler over each mask's network in its own coordinates (network.MaskWeights,
    shared with the engine's onnxruntime session). The plans for one mask and for all masks
    stepping together are built on first use, or all at once by warm(), and kept."""

    def __init__(
        self, masks: list[MaskWeights], block: int = BLOCK, group_block: int = GROUP_BLOCK, activation: str = "relu"
    ):
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', not {activation!r}")
        self.masks = masks
        self.activation = activation  # the hidden units' nonlinearity (the manifest's)
        self.dims = len(masks[0].ordering)
        self.n_masks = len(masks)
        self.block = block
        self.group_block = group_block
        self._plans: dict[tuple[int, ...], _GroupPlan] = {}
        self._lock = threading.Lock()

    def group_plan(self, masks: tuple[int, ...]) -> _GroupPlan:
        plan = self._plans.get(masks)
        if plan is None:
            with self._lock:  # one build per plan even when concurrent requests need it
                plan = self._plans.get(masks)
                if plan is None:
                    block = self.block if len(masks) == 1 else self.group_block
                    nets = [self.masks[k] for k in masks]
                    plan = self._plans[masks] = _group_plan(nets, self.dims, block)
        return plan

    def warm(self) -> None:
        """Build every plan now (~0.7 s and ~45 MB at D=784, [1000, 1000], K=8) rather than on the
        first request that needs it."""
        for k in range(self.n_masks):
            self.group_plan((k,))
        if self.n_masks > 1:
            self.group_plan(tuple(range(self.n_masks)))

    def run(
        self,
        k: int,
        u: np.ndarray,
        observed: np.ndarray | None = None,
        values: np.ndarray | None = None,
        return_probs: bool = False,
        evidence: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Sample N rows under mask k from uniforms u (N, D): x_d = 1 where u_d < p_d.

        observed (N, D) bool and values (N, D) clamp entries; returns (x (N, D) uint8,
        log weights (N,) = sum of log p(x_d | x_<d) over clamped d, and, if asked, the
        per-step probabilities (N, D) in dimension order).

        evidence (l0, l1), each (N, D) float64, are the log-likelihoods log p(y_d | x_d = 0)
        and log p(y_d | x_d = 1) of soft observations (never both -inf): each step draws from
        p(x_d | x_<d) p(y_d | x_d), normalised (x_d = 1 where u_d < that probability), and the
        log weight adds log sum_x p(x_d = x | x_<d) p(y_d | x) over d: E[w] = sum_x p_k(x) p(y | x).
        (l0, l1) = (-inf, 0) clamps to 1, (0, -inf) to 0, (0, 0) leaves d free. The per-step
        probabilities stay the model's, p(x_d = 1 | x_<d).
        """
        return self.run_masks(np.full(len(u), k, dtype=np.int64), u, observed, values, return_probs, evidence)

    def run_masks(
        self,
        masks: np.ndarray,
        u: np.ndarray,
        observed: np.ndarray | None = None,
        values: np.ndarray | None = None,
        return_probs: bool = False,
        evidence: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Like run, with row i under mask masks[i] (valid mask indices): every mask in one loop.
        Row i's result does not depend on the other rows beyond float64 rounding. Large calls
        go through the loop MAX_ROWS rows at a time, with a cancellation checkpoint between
        passes."""
        n, dims = u.shape
        x = np.empty((n, dims), dtype=np.uint8)
        logw = np.zeros(n)
        probs = np.empty((n, dims)) if return_probs else None
        if n == 0:
            return x, logw, probs
        masks = np.asarray(masks, dtype=np.int64)
        present, group = np.unique(masks, return_inverse=True)
        passes: list[tuple[tuple[int, ...], np.ndarray, np.ndarray]] = []  # (masks, rows, group)
        if len(present) == 1:
            passes.append(((int(present[0]),), np.arange(n), np.zeros(n, dtype=np.int64)))
        elif _pass_rows(self.n_masks, int(np.bincount(group).max())) <= (len(present) * _pass_rows(1, 0) + n):
            # one pass of every mask: the usual mixture batch
            passes.append((tuple(range(self.n_masks)), np.arange(n), masks))
        else:  # a few masks, or many rows under a few masks: one pass each costs less
            for i, k in enumerate(present):
                rows = np.flatnonzero(group == i)
                passes.append(((int(k),), rows, np.zeros(len(rows), dtype=np.int64)))
        first = True
        for plan_masks, rows, grp in passes:
            plan = self.group_plan(plan_masks)
            for start in range(0, len(rows), MAX_ROWS):
                if not first:  # between passes: a cancelled caller stops here (service.engine.cancel)
                    checkpoint()
                first = False
                part = slice(start, start + MAX_ROWS)
                _run_plan(plan, rows[part], grp[part], u, observed, values, x, logw, probs, evidence, self.activation)
        return x, logw, probs


def _pass_rows(groups: int, rows: int) -> float:
    """What a pass of `groups` groups of `rows` rows costs, in rows of one mask's work."""
    return PASS_ROWS + groups * (GROUP_ROWS + (MIXED_ROW if groups > 1 else 1.0) * rows)


def _run_plan(
    plan: _GroupPlan,
    rows: np.ndarray,
    group: np.ndarray,
    u: np.ndarray,
    observed: np.ndarray | None,
    values: np.ndarray | None,
    x: np.ndarray,
    logw: np.ndarray,
    probs: np.ndarray | None,
    evidence: tuple[np.ndarray, np.ndarray] | None = None,
    activation: str = "relu",
) -> None:
    """Sample u[rows] (row i under plan.nets[group[i]]) into x, logw and probs at rows; the
    hidden units are `activation` units (relu or tanh)."""
    tanh = activation == "tanh"
    nets = plan.nets
    n_groups, dims = len(nets), u.shape[1]
    members = [rows[group == g] for g in range(n_groups)]
    sizes = [len(m) for m in members]
    n_rows = max(sizes)
    # thresholds on the logits, (G, D, R) in positions: x = 1 where z > logit(u), i.e. u < p
    thr = np.full((n_groups, dims, n_rows), np.inf)  # padding rows draw 0s
    for g, m in enumerate(members):
        if not len(m):
            continue
        cells = np.ix_(m, nets[g].ordering)
        um = u[cells]
        with np.errstate(divide="ignore"):  # u = 0 gives -inf: x = 1, as u < p
            t = np.log(um / (1.0 - um))
        if observed is not None and values is not None:
            t = np.where(observed[cells], np.where(values[cells] > 0.5, -np.inf, np.inf), t)
        if evidence is not None:
            t = _tilt(t, evidence[1][cells] - evidence[0][cells])
        thr[g, :, : len(m)] = t.T
    xs = np.zeros((n_groups, dims, n_rows))
    logits = np.zeros((n_groups, dims, n_rows))
    acts = [np.zeros((n_groups, h + 1, n_rows)) for h in plan.widths]  # + 1: a row for padding
    n_hidden = len(plan.widths)
    gi = np.arange(n_groups)[:, None]
    matmul, maximum, greater, tanh_ = np.matmul, np.maximum, np.greater, np.tanh
    for block in plan.blocks:
        t0, t1 = block.t0, block.t1
        nb = t1 - t0
        # block GEMMs: what each unit of the block gets from the units known before it, one
        # matmul per mask without padding (they are most of the work), then into the buffers
        bufs = [np.zeros((n_groups, m, n_rows)) for m in block.buffer_rows]
        for l, st in enumerate(block.stages):
            below = xs if l == 0 else acts[l - 1]
            part = np.zeros((n_groups, st.units + 1, n_rows))  # + 1: a row of 0s for padding
            for g, (lo, hi, known) in enumerate(st.parts):
                r = sizes[g]
                if hi > lo and known and r:
                    matmul(nets[g].weights[l][lo:hi, :known], below[g, :known, :r], out=part[g, : hi - lo, :r])
                direct = nets[g].direct
                if l == n_hidden and direct is not None and t0 > 0 and r:
                    part[g, :nb, :r] += direct[t0:t1, :t0] @ xs[g, :t0, :r]
            own = part[gi, st.src]
            own += st.bias
            bufs[st.buffer][gi, st.own_rows] = own
        hidden = [
            (bufs[st.buffer], bufs[nxt.buffer], _step_weights(st))
            for st, nxt in zip(block.stages[:-1], block.stages[1:], strict=True)
        ]
        inputs, out_steps, x_rows = bufs[0], _step_weights(block.stages[-1]), block.x_rows
        for j in range(nb):
            # hidden units of degree t0 + j, lowest layer first, into the next stage's buffer
            for buf, nxt_buf, steps in hidden:
                step = steps[j]
                if step is not None:
                    w, m, lo, hi = step
                    if tanh:
                        tanh_(matmul(w, buf[:, :m, :]), out=nxt_buf[:, lo:hi, :])
                    else:
                        maximum(matmul(w, buf[:, :m, :]), 0.0, out=nxt_buf[:, lo:hi, :])
            out_step = out_steps[j]
            assert out_step is not None  # one output per step
            w, m = out_step[0], out_step[1]
            z = logits[:, t0 + j : t0 + j + 1, :]
            matmul(w, inputs[:, :m, :], out=z)
            # the input of position t0 + j, where the next steps read it
            greater(z[:, 0, :], thr[:, t0 + j, :], out=inputs[:, x_rows[j], :] if j + 1 < nb else xs[:, t1 - 1, :])
        xs[:, t0 : t1 - 1, :] = inputs[:, x_rows[: nb - 1], :]
        for act, st, nxt in zip(acts, block.stages, block.stages[1:], strict=False):
            act[gi, st.dst_rows] = bufs[nxt.buffer][gi, st.out_rows]
    for g, m in enumerate(members):
        if not len(m):
            continue
        order = nets[g].ordering
        xg = np.empty((len(m), dims), dtype=np.uint8)
        xg[:, order] = xs[g, :, : len(m)].T
        x[m] = xg
        if probs is None and observed is None and evidence is None:
            continue
        zg = np.empty((len(m), dims))
        zg[:, order] = logits[g, :, : len(m)].T
        if probs is not None:
            probs[m] = _sigmoid(zg)
        if observed is not None and values is not None:
            ll = _log_sigmoid(np.where(values[m] > 0.5, zg, -zg))
            logw[m] = np.where(observed[m], ll, 0.0).sum(axis=1)
        if evidence is not None:
            # log sum_x p(x_d = x | x_<d) p(y_d | x): log p(x_d = 1 | .) = log_sigmoid(z)
            norm = np.logaddexp(_log_sigmoid(zg) + evidence[1][m], _log_sigmoid(-zg) + evidence[0][m])
            logw[m] += norm.sum(axis=1)


def _step_weights(stage: _Stage) -> list[tuple[np.ndarray, int, int, int] | None]:
    """A stage's steps for one pass of its block: (weights (G, C, m) float64, m, lo, hi), the
    weights views of one float64 copy of the stage's float32 weights."""
    flat = np.asarray(stage.weights, dtype=np.float64)
    return [
        None if s is None else (flat[s[0] : s[0] + s[1][0] * s[1][1] * s[1][2]].reshape(s[1]), s[2], s[3], s[4])
        for s in stage.steps
    ]


def _tilt(t: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Thresholds t on the logits moved by the evidence's log-odds: x = 1 where z + shift > t.
    An infinite shift clamps (+inf: 1, -inf: 0) whatever t is, even t = -inf (u = 0)."""
    with np.errstate(invalid="ignore"):  # -inf - -inf: replaced below
        moved = t - shift
    return np.where(shift == np.inf, -np.inf, np.where(shift == -np.inf, np.inf, moved))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))


def split_draws(rows: np.ndarray, total: int, per_call: int) -> list[list[tuple[int, int, int]]]:
    """`total` draws for each row, cut into sampler calls of at most `per_call` draws: per call,
    (row, first draw, end) pieces; a row's draws may span calls, in order."""
    calls: list[list[tuple[int, int, int]]] = [[]]
    room = per_call
    for r in rows:
        first = 0
        while first < total:
            if room == 0:
                calls.append([])
                room = per_call
            end = min(total, first + room)
            calls[-1].append((int(r), first, end))
            room -= end - first
            first = end
    return [c for c in calls if c]


# A sampler call as likelihood weighting makes it: (row of each draw, mask of each draw,
# uniforms (n, D)) -> (draws (n, D) uint8, log weights (n,)); the row says what is clamped.
DrawFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class WeightedPool:
    """One row's pool of `total` likelihood-weighting draws (draw j under mask j // s), kept
    without the draws: their log weights (8 bytes a draw), their weighted mean, and the state
    of the row's generator before each run of draws that went through the sampler together, so
    that any draws can be made again, bit for bit, by redraw()."""

    row: int
    s: int  # draws per mask
    logw: np.ndarray  # (total,) float64
    mean: np.ndarray  # (D,) float64: sum_j w_j x_j / sum_j w_j (NaN where every weight is 0)
    runs: list[tuple[int, int, Mapping[str, Any]]]  # (first draw, end, bit generator state before it)

    def redraw(self, picks: np.ndarray, dims: int, per_call: int, draw: DrawFn) -> np.ndarray:
        """(len(picks), D) uint8: draws picks[i] of the pool again: each distinct draw's
        uniforms regenerated from its run's saved state (advanced past the draws before it),
        through the sampler per_call draws at a time, the picked draws only."""
        wanted, inverse = np.unique(np.asarray(picks, dtype=np.int64), return_inverse=True)
        out = np.empty((len(wanted), dims), dtype=np.uint8)
        starts = np.array([first for first, _, _ in self.runs])
        run_of = np.searchsorted(starts, wanted, side="right") - 1
        for lo in range(0, len(wanted), per_call):
            checkpoint()
            part = wanted[lo : lo + per_call]
            u = np.empty((len(part), dims))
            bits: Any = None  # the run's bit generator (PCG64 for default_rng), from its state
            gen, pos, at_run = np.random.default_rng(0), 0, -1
            for i, (j, r) in enumerate(zip(part.tolist(), run_of[lo : lo + per_call].tolist(), strict=True)):
                first, end, state = self.runs[r]
                assert first <= j < end
                if r != at_run:
                    bits = getattr(np.random, state["bit_generator"])()
                    bits.state = state
                    gen, pos, at_run = np.random.Generator(bits), first, r
                if j > pos:  # each float64 uniform is one 64-bit step of the bit generator
                    bits.advance((j - pos) * dims)
                u[i] = gen.random(dims)
                pos = j + 1
            out[lo : lo + len(part)] = draw(np.full(len(part), self.row), part // self.s, u)[0]
        return out[inverse.reshape(-1)]


class _Streaming:
    """A row's pool while its draws go through the sampler: the log weights so far and the
    weighted sum of the draws relative to the running maximum log weight (rescaled when it
    grows), so that nothing of size draws x D is kept."""

    def __init__(self, total: int, dims: int) -> None:
        self.logw = np.empty(total)
        self.top = -np.inf
        self.acc = np.zeros(dims)  # sum_j exp(logw_j - top) x_j
        self.wsum = 0.0  # sum_j exp(logw_j - top)
        self.runs: list[tuple[int, int, Mapping[str, Any]]] = []

    def add(self, first: int, logw: np.ndarray, x: np.ndarray) -> None:
        self.logw[first : first + len(logw)] = logw
        top = max(self.top, float(logw.max()))
        if top == -np.inf:  # every weight so far is 0
            return
        rescale = math.exp(self.top - top)  # 0 while self.top is -inf
        w = np.exp(logw - top)
        self.acc *= rescale
        self.acc += w @ x
        self.wsum = self.wsum * rescale + float(w.sum())
        self.top = top


def stream_weighted(
    rows: np.ndarray,
    total: int,
    s: int,
    dims: int,
    per_call: int,
    rngs: dict[int, np.random.Generator],
    draw: DrawFn,
) -> Iterator[WeightedPool]:
    """Likelihood weighting of `total` draws per row (draw j under mask j // s), each row's
    uniforms from rngs[row] in draw order, all rows' draws through `draw` in calls of at most
    per_call draws (split_draws: a row's draws may span calls), with a cancellation checkpoint
    before each call. Yields each row's WeightedPool once its last draw is in: what it keeps
    is O(total) numbers plus O(D), never the draws, so memory is bounded by the call size and
    not by total x D. The generators end where drawing every uniform at once leaves them."""
    pending: dict[int, _Streaming] = {}
    for pieces in split_draws(rows, total, per_call):
        checkpoint()
        noise = []
        for r, first, end in pieces:
            if first == 0:
                pending[r] = _Streaming(total, dims)
            pending[r].runs.append((first, end, rngs[r].bit_generator.state))
            noise.append(rngs[r].random((end - first, dims)))
        u = np.concatenate(noise)
        del noise
        picked = np.concatenate([np.full(end - first, r) for r, first, end in pieces])
        masks = np.concatenate([np.arange(first, end) // s for _, first, end in pieces])
        done, logw = draw(picked, masks, u)
        del u
        at = 0
        for r, first, end in pieces:
            pending[r].add(first, logw[at : at + end - first], done[at : at + end - first])
            at += end - first
            if end == total:
                p = pending.pop(r)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = p.acc / p.wsum
                yield WeightedPool(r, s, p.logw, mean, p.runs)
