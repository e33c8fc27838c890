"""MADE weights and degrees read from a version's weights.safetensors (numpy only), and each
mask's network rearranged once: the one copy of the weights that the engine serves from.

The stored graph of one mask (made.store.files.MODEL_GRAPH) reads the same arrays by the same
names, so the two cannot drift (and at load the engine checks its own forward pass against
that graph's). For mask k, `MaskWeights` holds the network in k's coordinates: inputs and outputs in k's
ordering, each hidden layer's units sorted by degree, and every weight the mask cuts set to
zero. The fast sampler steps through it (sorted units are contiguous rows), and onnxruntime
runs one dense pass of it (a graph whose weights are inputs, fed these arrays without a copy),
so the K masks cost K float32 copies of the weights in all, not one per consumer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from made.core.errors import ModelStoreError
from made.core.masks import build_direct_mask, build_masks, orderings_to_degrees
from made.store.files import WEIGHTS
from made.store.versions import StoredModel


@dataclass(frozen=True)
class Network:
    weights: list[np.ndarray]  # (fan_in, fan_out) float32, the last one into the D outputs
    biases: list[np.ndarray]  # (fan_out,) float32
    input_degrees: np.ndarray  # (K, D) int64
    hidden_degrees: list[np.ndarray]  # (K, H_l) int64 per hidden layer
    direct: np.ndarray | None  # (D_in, D_out) float32 or None

    @property
    def dims(self) -> int:
        return int(self.input_degrees.shape[1])

    @property
    def n_masks(self) -> int:
        return int(self.input_degrees.shape[0])

    def flops_per_row(self) -> int:
        """Dense multiply-adds x 2 of one log p(x) pass (the roofline's numerator)."""
        total = sum(w.shape[0] * w.shape[1] for w in self.weights)
        if self.direct is not None:
            total += self.direct.size
        return 2 * int(total)


def network_from_arrays(arrays: Mapping[str, np.ndarray], where: Path | str) -> Network:
    """The network of weights.safetensors' arrays (made.store.files names them), weights as
    float32 (float16 ones widened exactly; float32 ones are the arrays read, not copies) and
    degrees as int64."""
    try:
        n_layers = sum(1 for name in arrays if name.startswith("W") and name[1:].isdigit())
        weights = [arrays[f"W{i}"].astype(np.float32, copy=False) for i in range(n_layers)]
        biases = [arrays[f"b{i}"].astype(np.float32, copy=False) for i in range(n_layers)]
        hidden = [arrays[f"hidden_degrees_{i}"].astype(np.int64) for i in range(n_layers - 1)]
        degrees = arrays["input_degrees"].astype(np.int64)
    except KeyError as exc:
        raise ModelStoreError(f"{where} lacks the array {exc}; was it written by made export?") from None
    direct = arrays["direct_W"].astype(np.float32, copy=False) if "direct_W" in arrays else None
    return Network(weights, biases, degrees, hidden, direct)


def load_network(model: StoredModel) -> Network:
    """A bit model's network, read from its weights.safetensors; open_model has checked the
    arrays' shapes against the manifest."""
    where = model.file(WEIGHTS)
    net = network_from_arrays(model.weights(), where)
    weights, dims = net.weights, net.dims
    shapes_ok = (
        len(weights) >= 1
        and weights[0].shape[0] == dims
        and weights[-1].shape[1] == dims
        and all(a.shape[1] == b.shape[0] for a, b in zip(weights[:-1], weights[1:], strict=True))
        and all(h.shape == (net.n_masks, w.shape[1]) for h, w in zip(net.hidden_degrees, weights[:-1], strict=True))
    )
    if not shapes_ok:
        raise ModelStoreError(f"{where} has inconsistent layer shapes")
    if not np.array_equal(orderings_to_degrees(model.orderings), net.input_degrees):
        raise ModelStoreError(f"{where} does not match the orderings in its manifest")
    return net


@dataclass(frozen=True)
class MaskWeights:
    """Mask k's network in its own coordinates, float32, masked: position t of `ordering` is
    the t-th dimension generated; weights[l] is (fan_out, fan_in) with rows and columns sorted
    (layer 0's columns and the last layer's rows in positions), zero where the mask cuts."""

    ordering: np.ndarray  # (D,) int64
    weights: list[np.ndarray]  # layer l: (fan_out, fan_in) float32, C-contiguous
    biases: list[np.ndarray]  # (fan_out,) float32
    degrees: list[np.ndarray]  # each hidden layer's degrees, sorted (int64)
    direct: np.ndarray | None  # (D, D) float32 in positions: output t from input s < t


def mask_weights(net: Network, k: int) -> MaskWeights:
    """Mask k's network in its coordinates (see MaskWeights). A unit of degree m sees the
    inputs of degree <= m and the hidden units below of degree <= m; the output of degree m
    (its input's degree) sees the last layer's units of degree < m and the inputs of degree < m
    (direct connections): MADE's masks, as the stored graph builds them (training/graphs.py)."""
    ordering = np.argsort(net.input_degrees[k], kind="stable")
    in_deg = net.input_degrees[k][ordering]
    weights, biases, degrees = [], [], []
    perms = [np.argsort(hidden[k], kind="stable") for hidden in net.hidden_degrees]
    # MADE's rule (made.core.masks, its one owner), in k's coordinates: (fan_out, fan_in) 0/1
    masks = build_masks(in_deg, [hidden[k][perm] for hidden, perm in zip(net.hidden_degrees, perms, strict=True)])
    prev = ordering
    for l, (hidden, perm) in enumerate(zip(net.hidden_degrees, perms, strict=True)):
        deg = hidden[k][perm]
        w = net.weights[l][prev][:, perm].T * masks[l]
        weights.append(np.ascontiguousarray(w, dtype=np.float32))
        biases.append(np.ascontiguousarray(net.biases[l][perm], dtype=np.float32))
        degrees.append(deg)
        prev = perm
    w = net.weights[-1][prev][:, ordering].T * masks[-1]
    weights.append(np.ascontiguousarray(w, dtype=np.float32))
    biases.append(np.ascontiguousarray(net.biases[-1][ordering], dtype=np.float32))
    direct = None
    if net.direct is not None:
        d = net.direct[ordering][:, ordering].T * build_direct_mask(in_deg)
        direct = np.ascontiguousarray(d, dtype=np.float32)
    return MaskWeights(ordering, weights, biases, degrees, direct)


def mask_logits(m: MaskWeights, x: np.ndarray, activation: str) -> np.ndarray:
    """(N, D) float32 logits of mask m for rows x (N, D) in dimension order, by numpy with the
    hidden units' nonlinearity `activation` ('relu' or 'tanh'): the reference the engine checks
    its stored graphs against at load (so a manifest whose activation is not the graphs' is
    refused, not served with a sampler that disagrees with onnxruntime). Reads the weights in
    place (no copy of them is made)."""
    xs = np.ascontiguousarray(np.asarray(x, dtype=np.float32)[:, m.ordering])
    h = xs
    for l, (w, b) in enumerate(zip(m.weights, m.biases, strict=True)):
        h = np.stack([w @ row for row in h]) + b  # matrix-vector products: no BLAS buffers kept for good
        if l < len(m.weights) - 1:
            h = np.tanh(h) if activation == "tanh" else np.maximum(h, 0.0)
    if m.direct is not None:
        h = h + np.stack([m.direct @ row for row in xs])
    out = np.empty_like(h)
    out[:, m.ordering] = h
    return out
