"""MADE weights and degrees read back from an exported ONNX graph (numpy only).

The fast sampler steps through a network in numpy; it takes its weights from the very graph
that onnxruntime runs, by the initializer names the exporter writes, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from made.errors import ModelStoreError
from made.masks import orderings_to_degrees


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

    @property
    def orderings(self) -> np.ndarray:
        return np.argsort(self.input_degrees, axis=1, kind="stable")

    def flops_per_row(self) -> int:
        """Dense multiply-adds x 2 of one log p(x) pass (the roofline's numerator)."""
        total = sum(w.shape[0] * w.shape[1] for w in self.weights)
        if self.direct is not None:
            total += self.direct.size
        return 2 * int(total)


def load_network(onnx_path: Path, orderings: np.ndarray | None = None) -> Network:
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf decode errors of a damaged file
        raise ModelStoreError(f"{onnx_path} is not a readable ONNX model: {exc}") from None
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    try:
        n_layers = sum(1 for name in inits if name.startswith("W") and name[1:].isdigit())
        weights = [inits[f"W{i}"].astype(np.float32) for i in range(n_layers)]
        biases = [inits[f"b{i}"].astype(np.float32) for i in range(n_layers)]
        hidden = [inits[f"hidden_degrees_{i}"].astype(np.int64) for i in range(n_layers - 1)]
        degrees = inits["input_degrees"].astype(np.int64)
    except KeyError as exc:
        raise ModelStoreError(f"{onnx_path} lacks the initializer {exc}; was it written by made export?") from None
    direct = inits["direct_W"].astype(np.float32) if "direct_W" in inits else None
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
