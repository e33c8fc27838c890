"""The plans of the stepping sampler (service.engine.sampler): for a set of masks stepping
together, which units each step computes, where each layer's block GEMM results and fresh rows
sit in its buffer, and every step's weights, built once per set of masks and kept.

For mask k, sort each layer's units by degree. Once positions 1..t of the ordering are known,
every unit of degree <= t has all its inputs, and the output at position t+1 needs only
last-layer units of degree <= t. So step t+1 computes just the units of degree exactly t in each
layer, then one output logit. Steps come in blocks: a unit computed at a step in [t0, t1) takes
most of its input from units of degree < t0, known when the block starts, through one block
GEMM per layer and mask; each step adds only the contributions of the block's own earlier units.
Within a block each step owns a range of slots per layer, as many as the mask with the most units
of that degree has; masks with fewer leave empty slots (zero weights and bias: ReLU and tanh give
0), so every step runs the same batched matmuls for all masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.network import MaskWeights


@dataclass(frozen=True)
class Stage:
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
    # them float64 one block at a time, so a plan keeps half the bytes
    weights: np.ndarray
    # per step: (offset of its weights (G, C, m) in `weights`, (G, C, m), m, rows [lo, hi) it
    # writes in the next stage's buffer), or None where no mask has a unit of that degree
    steps: list[tuple[int, tuple[int, int, int], int, int, int] | None]
    out_rows: np.ndarray  # (G, U): each unit's row in the next stage's buffer
    dst_rows: np.ndarray  # (G, U): and in the layer's activations (H: padding)


@dataclass(frozen=True)
class Block:
    t0: int
    t1: int
    stages: list[Stage]  # the hidden layers, then the outputs
    buffer_rows: list[int]  # rows of each buffer
    x_rows: list[int]  # per step j: the row of buffer 0 that receives the input drawn at step j


@dataclass(frozen=True)
class GroupPlan:
    nets: list[MaskWeights]  # one per group
    widths: list[int]  # hidden layer widths
    blocks: list[Block]


def build_group_plan(nets: list[MaskWeights], dims: int, block: int) -> GroupPlan:
    """Blocks of `block` steps for the masks of `nets` stepping together."""
    widths = [len(d) for d in nets[0].degrees]
    blocks = [_plan_block(nets, t0, min(t0 + block, dims)) for t0 in range(0, dims, block)]
    return GroupPlan(nets, widths, blocks)


@dataclass
class _Units:
    """One stage's units in a block, per group: [lo, hi) of the layer's sorted rows, each unit's
    degree, step and rank among its step's units; and the slots of each step, the most units any
    group has then."""

    spans: list[tuple[int, int]]
    degs: list[np.ndarray]
    steps: list[np.ndarray]
    ranks: list[np.ndarray]
    per_step: np.ndarray


@dataclass
class _Layout:
    """Where each step's rows sit in the buffers: `rows` of each buffer in all, the row of the
    input drawn at each step, and per stage and step the first row of the fresh units (the layer
    below's) and of its own (block GEMM) rows."""

    buffer_of: list[int]
    rows: list[int]
    x_rows: list[int]
    fresh_at: np.ndarray
    own_at: np.ndarray


def _plan_block(nets: list[MaskWeights], t0: int, t1: int) -> Block:
    n_hidden = len(nets[0].degrees)
    units = [_stage_units(nets, l, t0, t1) for l in range(n_hidden + 1)]
    layout = _buffer_layout(units, t1 - t0)
    stages = [_plan_stage(nets, units, layout, l, t0, t1) for l in range(n_hidden + 1)]
    return Block(t0, t1, stages, layout.rows, layout.x_rows)


def _stage_units(nets: list[MaskWeights], l: int, t0: int, t1: int) -> _Units:
    """Stage l's units in the block [t0, t1). The outputs (l = the number of hidden layers) are a
    stage with one unit per step: position t0 + j, which sees degrees <= t0 + j below (strictly
    lower: an input has degree position + 1)."""
    nb, n_hidden = t1 - t0, len(nets[0].degrees)
    units = _Units([], [], [], [], np.zeros(0, dtype=np.int64))
    counts = np.zeros((len(nets), nb), dtype=np.int64)
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
        units.spans.append((lo, hi))
        units.degs.append(d)
        units.steps.append(j)
        units.ranks.append(np.arange(len(j)) - np.searchsorted(j, np.arange(nb))[j])
    units.per_step = counts.max(axis=0)
    return units


def _buffer_layout(units: list[_Units], nb: int) -> _Layout:
    """Buffer rows, step by step. Buffer 0: the input drawn at the step before, the first layer's
    own rows, then the last hidden layer's new units and the output's own row; buffer l
    (0 < l < n_hidden): layer l-1's new units, then layer l's own rows."""
    n_hidden = len(units) - 1
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
            b = buffer_of[l]
            if l > 0:  # the layer below's new units
                fresh_at[l, j] = rows[b]
                rows[b] += int(units[l - 1].per_step[j])
            own_at[l, j] = rows[b]
            rows[b] += int(units[l].per_step[j])
    return _Layout(buffer_of, rows, x_rows, fresh_at, own_at)


def _plan_stage(nets: list[MaskWeights], units: list[_Units], layout: _Layout, l: int, t0: int, t1: int) -> Stage:
    """Stage l of the block [t0, t1): its slots' weights over its buffer, bias and rows, then
    every step's weights cut from them."""
    n_groups, n_hidden, nb = len(nets), len(units) - 1, t1 - t0
    mine = units[l]
    n_units = max(hi - lo for lo, hi in mine.spans)
    slot_at = np.concatenate([[0], np.cumsum(mine.per_step)])
    n_slots = int(slot_at[-1])
    own_at = layout.own_at[l]
    src = np.full((n_groups, n_slots), n_units, dtype=np.int64)
    own_rows = np.tile(
        np.repeat(own_at, mine.per_step) + np.arange(n_slots) - np.repeat(slot_at[:-1], mine.per_step), (n_groups, 1)
    )
    bias = np.zeros((n_groups, n_slots, 1))
    full = np.zeros((n_groups, n_slots, layout.rows[layout.buffer_of[l]]))  # weights of every slot over the buffer
    out_rows = np.zeros((n_groups, n_units), dtype=np.int64)
    padding_row = len(nets[0].degrees[l]) if l < n_hidden else 0
    dst_rows = np.full((n_groups, n_units), padding_row, dtype=np.int64)
    x_cols = np.array(layout.x_rows[: nb - 1], dtype=np.int64)  # position t0 + q: row x_cols[q]
    known = []
    for g, s in enumerate(nets):
        lo, hi = mine.spans[g]
        j, r, d = mine.steps[g], mine.ranks[g], mine.degs[g]
        slot = slot_at[j] + r
        src[g, slot] = np.arange(hi - lo)
        bias[g, slot, 0] = s.biases[l][lo:hi]
        full[g, slot, own_at[j] + r] = 1.0  # the block GEMM's part enters as it is
        if l > 0:  # the block's units of the layer below
            below = units[l - 1]
            blo, bhi = below.spans[g]
            rows = layout.fresh_at[l][below.steps[g]] + below.ranks[g]
            mask = below.degs[g][None, :] <= d[:, None]
            full[g, slot[:, None], rows[None, :]] = s.weights[l][lo:hi, blo:bhi] * mask
            known.append(blo)
        else:
            known.append(t0)
        if l == 0 or l == n_hidden:  # the block's inputs, positions t0..t1-2
            full[g, slot[:, None], x_cols[None, :]] = _input_weights(s, l, n_hidden, lo, hi, t0, t1, d)
        if l < n_hidden:
            out_rows[g, : hi - lo] = layout.fresh_at[l + 1][j] + r
            dst_rows[g, : hi - lo] = np.arange(lo, hi)
    flat, steps = _step_slices(full, slot_at, mine.per_step, own_at, layout.fresh_at[l + 1] if l < n_hidden else None)
    parts = [(lo, hi, k) for (lo, hi), k in zip(mine.spans, known, strict=True)]
    return Stage(layout.buffer_of[l], parts, n_units, src, own_rows, bias, flat, steps, out_rows, dst_rows)


def _input_weights(
    s: MaskWeights, l: int, n_hidden: int, lo: int, hi: int, t0: int, t1: int, d: np.ndarray
) -> np.ndarray:
    """(hi - lo, t1 - t0 - 1): the weights of the stage's units [lo, hi) (degrees d) from the
    block's inputs at positions t0..t1-2: the first layer's, and the direct connections into the
    outputs; zero where a unit may not see the input (its degree is position + 1)."""
    sub = np.zeros((hi - lo, t1 - t0 - 1))
    if l == 0:
        sub += s.weights[0][lo:hi, t0 : t1 - 1]
    if l == n_hidden and s.direct is not None:
        sub += s.direct[t0:t1, t0 : t1 - 1]
    return sub * (np.arange(t0 + 1, t1)[None, :] <= d[:, None])


def _step_slices(
    full: np.ndarray, slot_at: np.ndarray, per_step: np.ndarray, own_at: np.ndarray, fresh_next: np.ndarray | None
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int], int, int, int] | None]]:
    """Every step's weights (G, C, m), cut from the stage's slot weights `full` and laid end to end
    in one flat array, and each step's (offset, shape, m, rows [lo, hi) in the next buffer)."""
    n_groups = full.shape[0]
    steps: list[tuple[int, tuple[int, int, int], int, int, int] | None] = []
    pieces: list[np.ndarray] = []
    offset = 0
    for j, count in enumerate(per_step.tolist()):
        if count == 0:
            steps.append(None)
            continue
        m = int(own_at[j]) + count
        wj = full[:, slot_at[j] : slot_at[j] + count, :m]
        pieces.append(wj.ravel())
        nxt = int(fresh_next[j]) if fresh_next is not None else 0
        steps.append((offset, (n_groups, count, m), m, nxt, nxt + count))
        offset += wj.size
    # float32 holds them exactly (each is a float32 weight, 0 or 1), where it does not (a sum of
    # two weights: no hidden layer), they stay float64
    flat = np.concatenate(pieces) if pieces else np.zeros(0)
    flat32 = flat.astype(np.float32)
    return (flat32 if np.array_equal(flat32, flat) else flat), steps
