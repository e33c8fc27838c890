"""Build MADE's ONNX graph directly from weights and degrees (no torch exporter involved).

Inputs `x` (float32 [N, D]) and `mask_index` (int64 scalar); output `logits` (float32 [N, D]).
The K masks are stored as degrees (int32, K x width per layer) and rebuilt inside the graph by
Gather + broadcast comparison, so a K = 32 graph is barely larger than a K = 1 graph.
Initializer names (W{l}, b{l}, input_degrees, hidden_degrees_{l}, direct_W) are part of the
format: this module writes them (build_graph) and reads them back (read_arrays), for the serving
engine, which also runs the graph of one dense pass built here (dense_graph) under the same names.

Serving reads and builds graphs through made.onnx_wire, without the onnx package (~10 MB of
memory per worker); build_graph, for export, uses onnx and its checker.

Weight matrices may be stored as float16 (half the file): the graph then casts each to float32
once (onnxruntime folds the Cast at session creation), so all arithmetic stays float32 and the
model is exactly the float32 network whose weights are the float16 values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from made import onnx_wire as wire
from made.core.errors import ModelStoreError

if TYPE_CHECKING:
    import onnx

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime releases from 1.14 on
WEIGHT_DTYPES = {"float32": np.float32, "float16": np.float16}
# The hidden units' nonlinearity (the manifest's "activation") -> its ONNX operator.
ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh"}


def _activation_op(activation: str) -> str:
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}") from None


def build_graph(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    input_degrees: np.ndarray,
    hidden_degrees: list[np.ndarray],
    direct: np.ndarray | None = None,
    name: str = "made",
    weight_dtype: str = "float32",
    output_degrees: np.ndarray | None = None,
    output_name: str = "logits",
    activation: str = "relu",
) -> onnx.ModelProto:
    """weights[l] is (fan_out, fan_in) like torch; degrees are (K, width) per layer;
    weight_dtype ('float32' or 'float16') is how the weight matrices are stored; activation
    ('relu' or 'tanh') is the hidden units' nonlinearity. A table model passes the degrees of its
    input units and of its output units (`output_degrees`, stored as the initializer
    output_degrees) and names its output `params`."""
    import onnx  # export only: serving never imports it (see the module's docstring)
    from onnx import TensorProto, helper, numpy_helper

    act_op = _activation_op(activation)
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {sorted(WEIGHT_DTYPES)}, not {weight_dtype!r}")
    dims = int(input_degrees.shape[1])
    out_dims = dims if output_degrees is None else int(output_degrees.shape[1])
    inits = [
        numpy_helper.from_array(input_degrees.astype(np.int32), "input_degrees"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = []

    def weight(matrix: np.ndarray, init_name: str) -> str:
        """Store a (fan_in, fan_out) matrix; return the name of its float32 value in the graph."""
        inits.append(
            numpy_helper.from_array(np.ascontiguousarray(matrix).astype(WEIGHT_DTYPES[weight_dtype]), init_name)
        )
        if weight_dtype == "float32":
            return init_name
        nodes.append(helper.make_node("Cast", [init_name], [init_name + "_f32"], to=TensorProto.FLOAT))
        return init_name + "_f32"

    def degrees_of(source: str, out: str) -> tuple[str, str]:
        """Gather mask k's degrees of a layer; return names shaped (1, W) and (W, 1)."""
        nodes.append(helper.make_node("Gather", [source, "mask_index"], [out], axis=0))
        nodes.append(helper.make_node("Unsqueeze", [out, "axis0"], [out + "_row"]))
        nodes.append(helper.make_node("Unsqueeze", [out, "axis1"], [out + "_col"]))
        return out + "_row", out + "_col"

    in_row, in_col = degrees_of("input_degrees", "deg_in")
    out_row = in_row
    if output_degrees is not None:
        inits.append(numpy_helper.from_array(output_degrees.astype(np.int32), "output_degrees"))
        out_row, _ = degrees_of("output_degrees", "deg_out")
    prev_col, h = in_col, "x"
    for l, (w, b) in enumerate(zip(weights, biases, strict=True)):
        last = l == len(weights) - 1
        w_name = weight(w.T, f"W{l}")
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"b{l}"))
        if last:
            # output d keeps last-layer unit k when deg(d) > m(k): (H_L, D)
            nodes.append(helper.make_node("Greater", [out_row, prev_col], [f"keep{l}"]))
        else:
            inits.append(numpy_helper.from_array(hidden_degrees[l].astype(np.int32), f"hidden_degrees_{l}"))
            row, col = degrees_of(f"hidden_degrees_{l}", f"deg_h{l}")
            # unit k keeps unit j of the layer below when m_l(k) >= m_{l-1}(j): (fan_in, fan_out)
            nodes.append(helper.make_node("GreaterOrEqual", [row, prev_col], [f"keep{l}"]))
            prev_col = col
        nodes.append(helper.make_node("Cast", [f"keep{l}"], [f"mask{l}"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [w_name, f"mask{l}"], [f"Wm{l}"]))
        nodes.append(helper.make_node("MatMul", [h, f"Wm{l}"], [f"mm{l}"]))
        out = "pre_logits" if (last and direct is not None) else (output_name if last else f"pre{l}")
        nodes.append(helper.make_node("Add", [f"mm{l}", f"b{l}"], [out]))
        if not last:
            nodes.append(helper.make_node(act_op, [out], [f"h{l}"]))
            h = f"h{l}"
    if direct is not None:
        direct_name = weight(direct.T, "direct_W")
        nodes.append(helper.make_node("Greater", [out_row, in_col], ["keep_direct"]))  # (D_in, D_out)
        nodes.append(helper.make_node("Cast", ["keep_direct"], ["mask_direct"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [direct_name, "mask_direct"], ["direct_Wm"]))
        nodes.append(helper.make_node("MatMul", ["x", "direct_Wm"], ["direct_out"]))
        nodes.append(helper.make_node("Add", ["pre_logits", "direct_out"], [output_name]))
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims]),
            helper.make_tensor_value_info("mask_index", TensorProto.INT64, []),
        ],
        outputs=[helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", out_dims])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="made")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class GraphArrays:
    """What build_graph stored, read back as float32 weights and int64 degrees."""

    weights: list[np.ndarray]  # (fan_in, fan_out) per layer, the last one into the outputs
    biases: list[np.ndarray]
    input_degrees: np.ndarray  # (K, D)
    hidden_degrees: list[np.ndarray]  # (K, H_l) per hidden layer
    direct: np.ndarray | None  # (D_in, D_out) or None


def read_arrays(path: Path) -> GraphArrays:
    """The initializers of a graph build_graph wrote; a file that is not one is a ModelStoreError."""
    try:
        inits = wire.initializers(path.read_bytes())
    except (OSError, wire.WireError) as exc:  # an unreadable or damaged file
        raise ModelStoreError(f"{path} is not a readable ONNX model: {exc}") from None
    try:
        n_layers = sum(1 for name in inits if name.startswith("W") and name[1:].isdigit())
        weights = [inits[f"W{i}"].astype(np.float32) for i in range(n_layers)]
        biases = [inits[f"b{i}"].astype(np.float32) for i in range(n_layers)]
        hidden = [inits[f"hidden_degrees_{i}"].astype(np.int64) for i in range(n_layers - 1)]
        degrees = inits["input_degrees"].astype(np.int64)
    except KeyError as exc:
        raise ModelStoreError(f"{path} lacks the initializer {exc}; was it written by made export?") from None
    direct = inits["direct_W"].astype(np.float32) if "direct_W" in inits else None
    return GraphArrays(weights, biases, degrees, hidden, direct)


def dense_graph(n_layers: int, direct: bool, activation: str = "relu") -> bytes:
    """One dense pass of a MADE whose (masked) weights are inputs, serialized: `x` (N, D) in
    dimension order; `order` (D,) int64, the mask's ordering, and `inverse` (D,), its inverse
    permutation; W{l} (fan_out, fan_in) and b{l} (fan_out,) for each layer and `direct_W` (D, D)
    when `direct`, in the mask's coordinates, float32; output `logits` (N, D) in dimension order.
    The engine feeds it each mask's network in that mask's coordinates (network.MaskWeights), so
    one session with no weights of its own serves all K masks from the arrays the sampler steps
    through (the stored graph, by contrast, rebuilds the mask from degrees on every call).
    `activation` is the hidden units' nonlinearity, as in build_graph."""
    inputs = [
        _tensor("x", ["N", "D"]),
        _tensor("order", ["D"], wire.INT64),
        _tensor("inverse", ["D"], wire.INT64),
    ]
    nodes = [wire.node("Gather", ["x", "order"], ["xs"], axis=1)]
    layer_inputs, layer_nodes = _masked_layers("xs", n_layers, direct, activation, "positioned")
    nodes += [*layer_nodes, wire.node("Gather", ["positioned", "inverse"], ["logits"], axis=1)]
    return _serialized(wire.graph(nodes, "made_dense", inputs + layer_inputs, [_tensor("logits", ["N", "D"])]))


def _tensor(name: str, shape: list[str | int], kind: int = wire.FLOAT) -> bytes:
    return wire.value_info(name, kind, shape)


def _masked_layers(x: str, n_layers: int, direct: bool, activation: str, out: str) -> tuple[list[bytes], list[bytes]]:
    """The inputs and nodes of a MADE's layers whose masked weights are inputs, in the mask's
    coordinates (network.MaskWeights: W{l} (fan_out, fan_in), b{l}, direct_W (D, D)): from the
    positioned input `x` to the positioned logits `out`."""
    act_op = _activation_op(activation)
    inputs: list[bytes] = []
    nodes: list[bytes] = []
    h = x
    for l in range(n_layers):
        inputs += [_tensor(f"W{l}", [f"out{l}", f"in{l}"]), _tensor(f"b{l}", [f"out{l}"])]
        last = l == n_layers - 1
        result = ("pre_logits" if direct else out) if last else f"a{l}"
        nodes.append(wire.node("Gemm", [h, f"W{l}", f"b{l}"], [result], transB=1))
        if not last:
            nodes.append(wire.node(act_op, [result], [f"h{l}"]))
            h = f"h{l}"
    if direct:
        inputs.append(_tensor("direct_W", ["D", "D"]))
        nodes.append(wire.node("Gemm", [x, "direct_W", "pre_logits"], [out], transB=1))
    return inputs, nodes


def _serialized(graph: bytes) -> bytes:
    """A graph built at load time (never stored), as a serialized model for a session
    (tests/test_onnx_wire.py runs onnx's checker on every one)."""
    return wire.model(graph, OPSET, IR_VERSION)


# --- companion graphs of the device path (issue 16): built at load time, never stored ------------


def jacobi_step_graph(n_layers: int, direct: bool, activation: str = "relu") -> bytes:
    """One Jacobi fixed-point step of a MADE (Song et al. 2020), everything in the mask's
    coordinates (position t: the t-th dimension of its ordering): inputs `xs` (N, D) float32,
    the current guess; `thr` (N, D) float32, the draw's thresholds on the logits; W{l}, b{l}
    and `direct_W` as in dense_graph (the engine's per-mask arrays, network.MaskWeights).
    Outputs `x_next` = 1[logits(xs) > thr] (N, D) float32, `changed` (N,) bool (x_next differs
    from xs: false means xs is the fixed point, i.e. the exact sample) and `logits` (N, D) of xs.
    A threshold of -inf draws 1, +inf draws 0 (clamped entries)."""
    layer_inputs, nodes = _masked_layers("xs", n_layers, direct, activation, "logits")
    inputs = [_tensor("xs", ["N", "D"]), _tensor("thr", ["N", "D"]), *layer_inputs]
    nodes += [
        wire.node("Greater", ["logits", "thr"], ["drawn"]),
        wire.node("Cast", ["drawn"], ["x_next"], to=wire.FLOAT),
        wire.node("Sub", ["x_next", "xs"], ["diff"]),
        wire.node("Abs", ["diff"], ["absdiff"]),
        wire.node("ReduceMax", ["absdiff"], ["most"], axes=[1], keepdims=0),
        wire.node("Cast", ["most"], ["changed"], to=wire.BOOL),
    ]
    outputs = [
        _tensor("x_next", ["N", "D"]),
        _tensor("changed", ["N"], wire.BOOL),
        _tensor("logits", ["N", "D"]),
    ]
    return _serialized(wire.graph(nodes, "made_jacobi_step", inputs, outputs))


def scores_graph(n_layers: int, direct: bool, activation: str = "relu", observed: bool = False) -> bytes:
    """log p_k(x) of every row under K masks in one call, all K masks in each batched MatMul.

    Inputs: `x` (N, D) float32 of 0/1 in dimension order; `observed` (N, D) float32 of 0/1
    when built with observed=True (only those entries' terms are summed: log p_k(x_obs) where
    every mask puts the missing dimensions last); `orders` (K, D) int64, each mask's ordering;
    the masked weights stacked over the masks, each mask in its own coordinates: W{l}
    (K, fan_in, fan_out), b{l} (K, 1, fan_out) and, when `direct`, direct_W (K, D, D) (input
    position, output position). Outputs: `logliks` (K, N) float64, sum over d of
    log p_k(x_d | x_<d), each term softplus'd in float32 and summed in float64 (as the engine's
    row_loglik), and `mixture` (N,) float64, log (1/K) sum_k p_k(x). The host receives O(N K)
    numbers, not the (N, D) logits of every mask."""
    act_op = _activation_op(activation)

    inputs = [_tensor("x", ["N", "D"])]
    if observed:
        inputs.append(_tensor("observed", ["N", "D"]))
    inputs.append(_tensor("orders", ["K", "D"], wire.INT64))
    inits = [
        wire.tensor("axis0", np.array([0], dtype=np.int64)),
        wire.tensor("axis2", np.array([2], dtype=np.int64)),
        wire.tensor("one", np.array(1.0, dtype=np.float32)),
        wire.tensor("two", np.array(2.0, dtype=np.float32)),
    ]
    nodes = [
        # (N, K, D) -> (K, N, D): each mask's copy of x in its positions
        wire.node("Gather", ["x", "orders"], ["x_nkd"], axis=1),
        wire.node("Transpose", ["x_nkd"], ["xk"], perm=[1, 0, 2]),
    ]
    h = "xk"
    for l in range(n_layers):
        inputs += [_tensor(f"W{l}", ["K", f"in{l}", f"out{l}"]), _tensor(f"b{l}", ["K", 1, f"out{l}"])]
        last = l == n_layers - 1
        nodes.append(wire.node("MatMul", [h, f"W{l}"], [f"mm{l}"]))
        out = ("pre_logits" if direct else "logits") if last else f"a{l}"
        nodes.append(wire.node("Add", [f"mm{l}", f"b{l}"], [out]))
        if not last:
            nodes.append(wire.node(act_op, [out], [f"h{l}"]))
            h = f"h{l}"
    if direct:
        inputs.append(_tensor("direct_W", ["K", "D", "D"]))
        nodes.append(wire.node("MatMul", ["xk", "direct_W"], ["direct_out"]))
        nodes.append(wire.node("Add", ["pre_logits", "direct_out"], ["logits"]))
    # -log p(x_d | x_<d) = softplus(s), s = logit where x_d = 0, -logit where x_d = 1: s = z (1 - 2x)
    nodes += [
        wire.node("Mul", ["xk", "two"], ["x2"]),
        wire.node("Sub", ["one", "x2"], ["sign"]),
        wire.node("Mul", ["logits", "sign"], ["s"]),
        wire.node("Softplus", ["s"], ["nll_terms"]),
    ]
    terms = "nll_terms"
    if observed:
        nodes += [
            wire.node("Gather", ["observed", "orders"], ["obs_nkd"], axis=1),
            wire.node("Transpose", ["obs_nkd"], ["obsk"], perm=[1, 0, 2]),
            wire.node("Mul", [terms, "obsk"], ["nll_observed"]),
        ]
        terms = "nll_observed"
    nodes += [
        wire.node("Cast", [terms], ["nll64"], to=wire.DOUBLE),
        wire.node("ReduceSum", ["nll64", "axis2"], ["nll"], keepdims=0),
        wire.node("Neg", ["nll"], ["logliks"]),
        # log mean_k exp(l_k), shifted by the largest l_k of each row
        wire.node("ReduceMax", ["logliks"], ["top"], axes=[0], keepdims=1),
        wire.node("Sub", ["logliks", "top"], ["shifted"]),
        wire.node("Exp", ["shifted"], ["ratios"]),
        wire.node("ReduceMean", ["ratios"], ["mean_ratio"], axes=[0], keepdims=0),
        wire.node("Log", ["mean_ratio"], ["log_mean"]),
        wire.node("Squeeze", ["top", "axis0"], ["top_n"]),
        wire.node("Add", ["log_mean", "top_n"], ["mixture"]),
    ]
    outputs = [_tensor("logliks", ["K", "N"], wire.DOUBLE), _tensor("mixture", ["N"], wire.DOUBLE)]
    return _serialized(wire.graph(nodes, "made_scores", inputs, outputs, inits))
