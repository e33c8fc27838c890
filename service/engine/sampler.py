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
  once per step, which costs far more per row in large batches.
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
  holds the inputs, so a drawn input is written once. The earlier steps' block-GEMM rows inside
  the prefix cost zero-weight work, a price paid for fewer calls (docs/engine.md gives the
  figures behind this and the constants below).

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
float64 such a flip needs |u - p| below float64 resolution, so a seed gives the same samples in
any batch.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from made.core.numerics import log_sigmoid, sigmoid
from service.engine.cancel import checkpoint
from service.engine.network import MaskWeights
from service.engine.sampler_plan import Block, GroupPlan, Stage, build_group_plan

# Steps per block: longer blocks mean fewer, larger block GEMMs but more work per step (the
# block's own units grow with it, and so do the zero-weight rows of its earlier steps). Masks
# stepping together have several times the slots per step of one mask, so shorter blocks, which
# also keep the mixture plan's per-step weights small.
BLOCK = 32  # one mask
GROUP_BLOCK = 16  # several masks
# Rows per pass: bounds the memory; the cost per row is flat well below it.
MAX_ROWS = 2048
# What a pass through the stepping loop costs, in rows of one mask's work: PASS_ROWS plus
# GROUP_ROWS per group, and a row of several masks stepping together costs MIXED_ROW rows (their
# slots are padded). Several masks go through one pass of all K masks (absent ones as empty
# groups, every group padded to the largest) when that costs less than one pass per mask.
PASS_ROWS = 65
GROUP_ROWS = 13
MIXED_ROW = 1.6


@dataclass(frozen=True)
class Given:
    """What the draws of a call are conditioned on: clamped entries (observed (N, D) bool, their
    values (N, D)) and soft evidence (l0, l1), each (N, D) float64, the log-likelihoods
    log p(y_d | x_d = 0) and log p(y_d | x_d = 1) of soft observations (never both -inf).
    Nothing given: free draws."""

    observed: np.ndarray | None = None
    values: np.ndarray | None = None
    evidence: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def weighs(self) -> bool:
        """Whether the draws carry log weights (so the logits of every step are needed)."""
        return self.observed is not None or self.evidence is not None

    def thresholds(self, u: np.ndarray, rows: np.ndarray, ordering: np.ndarray) -> np.ndarray:
        """(len(rows), D) float64 thresholds on the logits of rows `rows`, in the positions of
        `ordering`: x = 1 where z > logit(u), i.e. u < p; a clamped entry's threshold is -inf
        (value 1) or +inf (value 0), and evidence moves it by its log-odds (tilt)."""
        cells = np.ix_(rows, ordering)
        um = u[cells]
        with np.errstate(divide="ignore"):  # u = 0 gives -inf: x = 1, as u < p
            t = np.log(um / (1.0 - um))
        if self.observed is not None and self.values is not None:
            t = np.where(self.observed[cells], np.where(self.values[cells] > 0.5, -np.inf, np.inf), t)
        if self.evidence is not None:
            t = tilt(t, self.evidence[1][cells] - self.evidence[0][cells])
        return t


FREE = Given()


@dataclass
class Draws:
    samples: np.ndarray  # (N, D) uint8, dimension order
    logw: np.ndarray  # (N,) float64 log weights (0 for free draws)
    probs: np.ndarray | None  # (N, D) float64 p(x_d = 1 | x_<d) of the sample, if asked

    def put(
        self, rows: np.ndarray, ordering: np.ndarray, xs: np.ndarray, logits: np.ndarray | None, given: Given
    ) -> None:
        """Rows `rows` from their draws under the mask of `ordering`: xs and logits (len(rows), D)
        in its positions (logits None: neither probabilities nor weights are wanted). The log
        weight is the sum of log p(x_d | x_<d) over the clamped d, plus, with evidence,
        log sum_x p(x_d = x | x_<d) p(y_d | x) over every d."""
        dims = xs.shape[1]
        xg = np.empty((len(rows), dims), dtype=np.uint8)
        xg[:, ordering] = xs
        self.samples[rows] = xg
        if logits is None or (self.probs is None and not given.weighs):
            return
        zg = np.empty((len(rows), dims))
        zg[:, ordering] = logits
        if self.probs is not None:
            self.probs[rows] = sigmoid(zg)
        if given.observed is not None and given.values is not None:
            ll = log_sigmoid(np.where(given.values[rows] > 0.5, zg, -zg))
            self.logw[rows] = np.where(given.observed[rows], ll, 0.0).sum(axis=1)
        if given.evidence is not None:
            l0, l1 = given.evidence
            # log sum_x p(x_d = x | x_<d) p(y_d | x): log p(x_d = 1 | .) = log_sigmoid(z)
            norm = np.logaddexp(log_sigmoid(zg) + l1[rows], log_sigmoid(-zg) + l0[rows])
            self.logw[rows] += norm.sum(axis=1)


class Sampler(ABC):
    """Exact sampling of rows, each under a mask of its own, from noise drawn beforehand: the
    stepping sampler here, Jacobi iteration on a device (service.engine.jacobi), interchangeable."""

    def run_masks(
        self,
        masks: np.ndarray | int,
        u: np.ndarray,
        observed: np.ndarray | None = None,
        values: np.ndarray | None = None,
        return_probs: bool = False,
        evidence: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Sample row i under mask masks[i] (valid mask indices; one index: every row under it)
        from uniforms u (N, D): x_d = 1 where u_d < p_d. Row i's result does not depend on the
        other rows beyond float64 rounding.

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
        per_row = np.broadcast_to(np.asarray(masks, dtype=np.int64), (len(u),))
        draws = self.draw(per_row, u, Given(observed, values, evidence), return_probs)
        return draws.samples, draws.logw, draws.probs

    @abstractmethod
    def draw(self, masks: np.ndarray, u: np.ndarray, given: Given, return_probs: bool) -> Draws:
        """run_masks' draws: row i under mask masks[i] (N,) from u[i], conditioned on `given`."""


_Pass = tuple[tuple[int, ...], np.ndarray, np.ndarray]  # a plan's masks, its rows, each row's group


class FastSampler(Sampler):
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
        self._plans: dict[tuple[tuple[int, ...], int], GroupPlan] = {}
        self._lock = threading.Lock()

    def group_plan(self, masks: tuple[int, ...], block: int | None = None) -> GroupPlan:
        """The plan of `masks` stepping together, in blocks of `block` steps (None: BLOCK for
        one mask, GROUP_BLOCK for several), built once and kept."""
        if block is None:
            block = self.block if len(masks) == 1 else self.group_block
        key = (masks, block)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:  # one build per plan even when concurrent requests need it
                plan = self._plans.get(key)
                if plan is None:
                    nets = [self.masks[k] for k in masks]
                    plan = self._plans[key] = build_group_plan(nets, self.dims, block)
        return plan

    def warm(self) -> None:
        """Build every plan now, at load, rather than on the first request that needs it (a plan
        takes a noticeable time and memory to build on a large model)."""
        for k in range(self.n_masks):
            self.group_plan((k,))
        if self.n_masks > 1:
            self.group_plan(tuple(range(self.n_masks)))

    # run(k, u, ...): every row under mask k, as run_masks(k, u, ...)
    run = Sampler.run_masks

    def draw(self, masks: np.ndarray, u: np.ndarray, given: Given, return_probs: bool) -> Draws:
        """Every mask in one loop; large calls go through the loop MAX_ROWS rows at a time, with a
        cancellation checkpoint between passes."""
        n, dims = u.shape
        draws = Draws(np.empty((n, dims), dtype=np.uint8), np.zeros(n), np.empty((n, dims)) if return_probs else None)
        first = True
        for plan_masks, rows, grp in self._passes(masks) if n else []:
            plan = self.group_plan(plan_masks)
            for start in range(0, len(rows), MAX_ROWS):
                if not first:  # between passes: a cancelled caller stops here (service.engine.cancel)
                    checkpoint()
                first = False
                part = slice(start, start + MAX_ROWS)
                _run_plan(plan, rows[part], grp[part], u, given, draws, self.activation)
        return draws

    def _passes(self, masks: np.ndarray) -> list[_Pass]:
        """The passes of a call: (the masks of a plan, the rows, each row's group in the plan)."""
        n = len(masks)
        present, group = np.unique(masks, return_inverse=True)
        if len(present) == 1:
            return [((int(present[0]),), np.arange(n), np.zeros(n, dtype=np.int64))]
        if _pass_rows(self.n_masks, int(np.bincount(group).max())) <= (len(present) * _pass_rows(1, 0) + n):
            # one pass of every mask: the usual mixture batch
            return [(tuple(range(self.n_masks)), np.arange(n), masks)]
        # a few masks, or many rows under a few masks: one pass each costs less
        passes: list[_Pass] = []
        for i, k in enumerate(present):
            rows = np.flatnonzero(group == i)
            passes.append(((int(k),), rows, np.zeros(len(rows), dtype=np.int64)))
        return passes


def _pass_rows(groups: int, rows: int) -> float:
    """What a pass of `groups` groups of `rows` rows costs, in rows of one mask's work."""
    return PASS_ROWS + groups * (GROUP_ROWS + (MIXED_ROW if groups > 1 else 1.0) * rows)


def _run_plan(
    plan: GroupPlan, rows: np.ndarray, group: np.ndarray, u: np.ndarray, given: Given, draws: Draws, activation: str
) -> None:
    """Sample u[rows] (row i under plan.nets[group[i]]) into draws at rows; the hidden units are
    `activation` units (relu or tanh)."""
    nets = plan.nets
    n_groups, dims = len(nets), u.shape[1]
    members = [rows[group == g] for g in range(n_groups)]
    sizes = [len(m) for m in members]
    n_rows = max(sizes)
    # thresholds on the logits, (G, D, R) in positions: x = 1 where z > logit(u), i.e. u < p
    thr = np.full((n_groups, dims, n_rows), np.inf)  # padding rows draw 0s
    for g, m in enumerate(members):
        if len(m):
            thr[g, :, : len(m)] = given.thresholds(u, m, nets[g].ordering).T
    xs, logits = walk_plan(plan, sizes, thr, activation)
    for g, m in enumerate(members):
        if len(m):
            draws.put(m, nets[g].ordering, xs[g, :, : len(m)].T, logits[g, :, : len(m)].T, given)


# Called after each block but the last with the block's end t1, the particles' state (xs, logits:
# (G, D, R) in positions, filled up to t1; acts: per hidden layer (G, H + 1, R), each group's
# units in degree order) and per layer how many leading units of acts are known; it may permute
# the R axis of those arrays (service.engine.smc resamples there).
BlockHook = Callable[[int, np.ndarray, np.ndarray, list[np.ndarray], list[int]], None]


def walk_plan(
    plan: GroupPlan, sizes: list[int], thr: np.ndarray, activation: str, between: BlockHook | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Step every group's rows along its ordering: group g's first sizes[g] rows, thresholds thr
    (G, D, R) in positions (x = 1 where the logit z > thr). Returns (xs, logits), each (G, D, R)
    in positions. `between` (None: nothing) sees and may permute the rows' state after every
    block but the last (BlockHook)."""
    nets = plan.nets
    n_groups, dims, n_rows = thr.shape
    xs = np.zeros((n_groups, dims, n_rows))
    logits = np.zeros((n_groups, dims, n_rows))
    acts = [np.zeros((n_groups, h + 1, n_rows)) for h in plan.widths]  # + 1: a row for padding
    gi = np.arange(n_groups)[:, None]
    for block in plan.blocks:
        bufs = _block_gemms(block, nets, sizes, xs, acts)
        _step_block(block, bufs, xs, logits, thr, activation == "tanh")
        for act, st, nxt in zip(acts, block.stages, block.stages[1:], strict=False):
            act[gi, st.dst_rows] = bufs[nxt.buffer][gi, st.out_rows]
        if between is not None and block.t1 < dims:
            known = [max(hi for _, hi, _ in st.parts) for st in block.stages[:-1]]
            between(block.t1, xs, logits, acts, known)
    return xs, logits


def _block_gemms(
    block: Block, nets: list[MaskWeights], sizes: list[int], xs: np.ndarray, acts: list[np.ndarray]
) -> list[np.ndarray]:
    """The block's buffers, holding what each unit of the block gets from the units known before
    it: one matmul per mask without padding (they are most of the work)."""
    n_groups, n_rows, n_hidden = xs.shape[0], xs.shape[2], len(acts)
    t0, t1 = block.t0, block.t1
    gi = np.arange(n_groups)[:, None]
    bufs = [np.zeros((n_groups, m, n_rows)) for m in block.buffer_rows]
    for l, st in enumerate(block.stages):
        below = xs if l == 0 else acts[l - 1]
        part = np.zeros((n_groups, st.units + 1, n_rows))  # + 1: a row of 0s for padding
        for g, (lo, hi, known) in enumerate(st.parts):
            r = sizes[g]
            if hi > lo and known and r:
                np.matmul(nets[g].weights[l][lo:hi, :known], below[g, :known, :r], out=part[g, : hi - lo, :r])
            direct = nets[g].direct
            if l == n_hidden and direct is not None and t0 > 0 and r:
                part[g, : t1 - t0, :r] += direct[t0:t1, :t0] @ xs[g, :t0, :r]
        own = part[gi, st.src]
        own += st.bias
        bufs[st.buffer][gi, st.own_rows] = own
    return bufs


def _step_block(
    block: Block, bufs: list[np.ndarray], xs: np.ndarray, logits: np.ndarray, thr: np.ndarray, tanh: bool
) -> None:
    """The block's steps: per step, each hidden layer's new units into the next stage's buffer,
    then the output's logit and the drawn input, where the next steps read it; the block's
    inputs then into xs."""
    t0, t1 = block.t0, block.t1
    nb = t1 - t0
    hidden = [
        (bufs[st.buffer], bufs[nxt.buffer], _step_weights(st))
        for st, nxt in zip(block.stages[:-1], block.stages[1:], strict=True)
    ]
    inputs, out_steps, x_rows = bufs[0], _step_weights(block.stages[-1]), block.x_rows
    matmul, maximum, greater, tanh_ = np.matmul, np.maximum, np.greater, np.tanh
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


def _step_weights(stage: Stage) -> list[tuple[np.ndarray, int, int, int] | None]:
    """A stage's steps for one pass of its block: (weights (G, C, m) float64, m, lo, hi), the
    weights views of one float64 copy of the stage's float32 weights."""
    flat = np.asarray(stage.weights, dtype=np.float64)
    return [
        None if s is None else (flat[s[0] : s[0] + s[1][0] * s[1][1] * s[1][2]].reshape(s[1]), s[2], s[3], s[4])
        for s in stage.steps
    ]


def tilt(t: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Thresholds t on the logits moved by the evidence's log-odds: x = 1 where z + shift > t.
    An infinite shift clamps (+inf: 1, -inf: 0) whatever t is, even t = -inf (u = 0)."""
    with np.errstate(invalid="ignore"):  # -inf - -inf: replaced below
        moved = t - shift
    return np.where(shift == np.inf, -np.inf, np.where(shift == -np.inf, np.inf, moved))
