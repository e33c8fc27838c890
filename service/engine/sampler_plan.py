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


def _plan_block(nets: list[MaskWeights], t0: int, t1: int) -> Block:
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
        stages.append(Stage(buffer_of[l], parts, n_units, src, own_rows, bias, flat, steps, out_rows, dst_rows))
    return Block(t0, t1, stages, rows, x_rows)
