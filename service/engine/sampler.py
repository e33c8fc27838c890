"""Exact ancestral sampling in about one forward pass, with optional clamped (observed) values.

For mask k, sort each layer's units by degree. Once positions 1..t of the ordering are known,
every unit of degree <= t has all its inputs, and the output at position t+1 needs only
last-layer units of degree <= t. So step t+1 computes just the units of degree exactly t in each
layer, from the sorted prefix of the layer below, then one output logit. Restricting a matmul to
the sorted prefix *is* the mask, so no mask is multiplied in. Each hidden unit is computed once.

Clamping turns the same loop into likelihood weighting: at an observed dimension keep its value
and add log p(x_d | x_<d) to the row's log weight; at a missing one draw it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.network import Network


@dataclass(frozen=True)
class _Plan:
    """Mask k's network rearranged for stepping: inputs in ordering, units sorted by degree."""

    ordering: np.ndarray  # (D,) dimension generated at each position
    # Layer l transposed, (fan_out sorted, fan_in sorted), the first layer's columns and the last
    # layer's rows in ordering: a step reads the rows of its new units (or its one output) and a
    # prefix of each, contiguous; slicing columns of (fan_in, fan_out) strides through memory.
    weights_t: list[np.ndarray]
    biases: list[np.ndarray]
    bounds: list[list[int]]  # layer l: bounds[l][t] = number of units of degree <= t, t = 0..D
    direct_t: np.ndarray | None  # (D_out, D_in), rows and columns in ordering


def _plan(net: Network, k: int) -> _Plan:
    dims = net.dims
    ordering = np.argsort(net.input_degrees[k], kind="stable")
    weights, biases, bounds = [], [], []
    prev_perm = ordering
    for l, degrees in enumerate(net.hidden_degrees):
        deg = degrees[k]
        perm = np.argsort(deg, kind="stable")
        weights.append(np.ascontiguousarray(net.weights[l][prev_perm][:, perm].T, dtype=np.float64))
        biases.append(net.biases[l][perm].astype(np.float64))
        bounds.append(np.searchsorted(deg[perm], np.arange(dims + 1), side="right").tolist())
        prev_perm = perm
    weights.append(np.ascontiguousarray(net.weights[-1][prev_perm][:, ordering].T, dtype=np.float64))
    biases.append(net.biases[-1][ordering].astype(np.float64))
    direct = None
    if net.direct is not None:
        direct = np.ascontiguousarray(net.direct[ordering][:, ordering].T, dtype=np.float64)
    return _Plan(ordering, weights, biases, bounds, direct)


class FastSampler:
    """Stepping sampler for one network; plans are built once per mask and cached."""

    def __init__(self, net: Network):
        self.net = net
        self._plans: dict[int, _Plan] = {}

    def plan(self, k: int) -> _Plan:
        plan = self._plans.get(k)
        if plan is None:
            plan = self._plans[k] = _plan(self.net, k)
        return plan

    def run(
        self,
        k: int,
        u: np.ndarray,
        observed: np.ndarray | None = None,
        values: np.ndarray | None = None,
        return_probs: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Sample N rows under mask k from uniforms u (N, D): x_d = 1 where u_d < p_d.

        observed (N, D) bool and values (N, D) clamp entries; returns (x (N, D) uint8,
        log weights (N,) = sum of log p(x_d | x_<d) over clamped d, and, if asked, the
        per-step probabilities (N, D) in dimension order).
        """
        plan = self.plan(k)
        n, dims = u.shape
        n_hidden = len(plan.bounds)
        # float64 throughout: float32 sums differ in the last bits with the batch size (BLAS picks
        # other kernels), which could flip a draw when dynamic batching merges requests; in float64
        # such a flip needs |u - p| < ~1e-15, so a seed gives the same samples in any batch.
        xs = np.zeros((n, dims), dtype=np.float64)  # inputs in ordering positions
        acts = [np.zeros((n, w.shape[0]), dtype=np.float64) for w in plan.weights_t[:-1]]
        logw = np.zeros(n, dtype=np.float64)
        probs = np.zeros((n, dims), dtype=np.float64) if return_probs else None
        u_pos = u[:, plan.ordering]
        obs_pos = None if observed is None else observed[:, plan.ordering]
        val_pos = None if values is None else values[:, plan.ordering].astype(np.float64)
        w_out, b_out = plan.weights_t[-1], plan.biases[-1]  # (D, H_L), (D,)
        for t in range(dims):  # generate position t; positions < t are known (degrees 1..t)
            # units of degree exactly t become computable in every layer, lowest layer first
            below, known_below = xs, t
            for l in range(n_hidden):
                lo, hi = plan.bounds[l][t - 1] if t > 0 else 0, plan.bounds[l][t]
                if hi > lo:
                    pre = below[:, :known_below] @ plan.weights_t[l][lo:hi, :known_below].T
                    np.maximum(pre + plan.biases[l][lo:hi], 0.0, out=acts[l][:, lo:hi])
                below, known_below = acts[l], hi
            logit = below[:, :known_below] @ w_out[t, :known_below] + b_out[t]
            if plan.direct_t is not None and t > 0:
                logit = logit + xs[:, :t] @ plan.direct_t[t, :t]
            p1 = _sigmoid(logit.astype(np.float64))
            if probs is not None:
                probs[:, plan.ordering[t]] = p1
            draw = (u_pos[:, t] < p1).astype(np.float64)
            if obs_pos is not None and val_pos is not None and obs_pos[:, t].any():
                clamp = obs_pos[:, t]
                val = val_pos[:, t]
                draw = np.where(clamp, val, draw)
                ll = np.where(val > 0.5, _log_sigmoid(logit), _log_sigmoid(-logit))
                logw += np.where(clamp, ll, 0.0)
            xs[:, t] = draw
        x = np.empty((n, dims), dtype=np.uint8)
        x[:, plan.ordering] = xs.astype(np.uint8)
        return x, logw, probs


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))
