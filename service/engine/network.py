"""MADE weights and degrees read back from an exported ONNX graph (numpy only), and each
mask's network rearranged once: the one copy of the weights that the engine serves from.

The engine takes its weights from the very graph the exporter wrote, by its initializer names,
so the two cannot drift (and at load it checks its own forward pass against that graph's).
For mask k, `MaskWeights` holds the network in k's coordinates: inputs and outputs in k's
ordering, each hidden layer's units sorted by degree, and every weight the mask cuts set to
zero. The fast sampler steps through it (sorted units are contiguous rows), and onnxruntime
runs one dense pass of it (a graph whose weights are inputs, fed these arrays without a copy),
so the K masks cost K float32 copies of the weights in all, not one per consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from made.core.errors import ModelStoreError
from made.core.masks import orderings_to_degrees
from made.onnx_graph import read_arrays


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


def load_network(onnx_path: Path, orderings: np.ndarray | None = None) -> Network:
    arrays = read_arrays(onnx_path)
    weights, biases, hidden, degrees = arrays.weights, arrays.biases, arrays.hidden_degrees, arrays.input_degrees
    direct, n_layers = arrays.direct, len(arrays.weights)
    net = Network(weights, biases, degrees, hidden, direct)
    dims = net.dims
    shapes_ok = (
        n_layers >= 1
        and weights[0].shape[0] == dims
        and weights[-1].shape[1] == dims
        and all(a.shape[1] == b.shape[0] for a, b in zip(weights[:-1], weights[1:], strict=True))
        and all(h.shape == (net.n_masks, w.shape[1]) for h, w in zip(hidden, weights[:-1], strict=True))
    )
    if not shapes_ok:
        raise ModelStoreError(f"{onnx_path} has inconsistent layer shapes")
    if orderings is not None and not np.array_equal(orderings_to_degrees(orderings), degrees):
        raise ModelStoreError(f"{onnx_path} does not match the orderings in its manifest")
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
    (direct connections): MADE's masks, as made/onnx_graph.py builds them."""
    ordering = np.argsort(net.input_degrees[k], kind="stable")
    in_deg = net.input_degrees[k][ordering]
    weights, biases, degrees = [], [], []
    prev, prev_deg = ordering, in_deg
    for l, hidden in enumerate(net.hidden_degrees):
        perm = np.argsort(hidden[k], kind="stable")
        deg = hidden[k][perm]
        w = net.weights[l][prev][:, perm].T * (prev_deg[None, :] <= deg[:, None])
        weights.append(np.ascontiguousarray(w, dtype=np.float32))
        biases.append(np.ascontiguousarray(net.biases[l][perm], dtype=np.float32))
        degrees.append(deg)
        prev, prev_deg = perm, deg
    w = net.weights[-1][prev][:, ordering].T * (prev_deg[None, :] < in_deg[:, None])
    weights.append(np.ascontiguousarray(w, dtype=np.float32))
    biases.append(np.ascontiguousarray(net.biases[-1][ordering], dtype=np.float32))
    direct = None
    if net.direct is not None:
        d = net.direct[ordering][:, ordering].T * (in_deg[None, :] < in_deg[:, None])
        direct = np.ascontiguousarray(d, dtype=np.float32)
    return MaskWeights(ordering, weights, biases, degrees, direct)
