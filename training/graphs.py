"""Every graph a format-2 version stores (made.store.files), built with the onnx package's
helper API from weights and degrees (no torch exporter involved), and the weights file they read.

- `weight_arrays`: the arrays of weights.safetensors, under the names the graphs use.
- `model_graph`: x (N, U_in) and mask_index () -> one mask's logits (or a table's params), the
  mask rebuilt inside the graph from the stored degrees by Gather + broadcast comparison (so a
  K = 32 model is barely larger than a K = 1 model). Its initializers are external data: each
  names its bytes in weights.safetensors (offset and length), so the file holds the weights
  once and onnx tools can still open the graph beside it; serving feeds the arrays it read.
  Weights stored as float16 are cast to float32 once in the graph (onnxruntime folds the Cast at
  session creation): all arithmetic stays float32, the model is exactly the float32 network
  whose weights are the float16 values.
- `dense_graph`, `jacobi_step_graph`, `scores_graph`: graphs whose (masked) weights are inputs,
  fed each mask's network in its own coordinates by the engine (service.engine.network.MaskWeights).

Only training/ imports onnx: serving opens these files with onnxruntime alone.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save

from made.store.files import (
    DENSE_GRAPH,
    JACOBI_GRAPH,
    MODEL_GRAPH,
    SCORES_GRAPH,
    SCORES_OBSERVED_GRAPH,
    WEIGHTS,
)
from made.store.manifest import TABLE_OUTPUT

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime releases from 1.14 on
WEIGHT_DTYPES = {"float32": np.float32, "float16": np.float16}
# The hidden units' nonlinearity (the manifest's "activation") -> its ONNX operator.
ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh"}


def _activation_op(activation: str) -> str:
    try:
        return ACTIVATION_OPS[activation]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_OPS)}, not {activation!r}") from None


def weight_arrays(
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    input_degrees: np.ndarray,
    hidden_degrees: list[np.ndarray],
    direct: np.ndarray | None = None,
    weight_dtype: str = "float32",
    output_degrees: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of weights.safetensors (made.store.files names them): weights[l] is
    (fan_out, fan_in) like torch, stored (fan_in, fan_out) as `weight_dtype`; degrees are (K,
    width) per layer, stored int32; a table model gives the degrees of its output units."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {sorted(WEIGHT_DTYPES)}, not {weight_dtype!r}")
    dtype = WEIGHT_DTYPES[weight_dtype]
    arrays = {"input_degrees": np.ascontiguousarray(input_degrees, dtype=np.int32)}
    if output_degrees is not None:
        arrays["output_degrees"] = np.ascontiguousarray(output_degrees, dtype=np.int32)
    for l, (w, b) in enumerate(zip(weights, biases, strict=True)):
        arrays[f"W{l}"] = np.ascontiguousarray(np.asarray(w).T).astype(dtype)
        arrays[f"b{l}"] = np.ascontiguousarray(b, dtype=np.float32)
        if l < len(weights) - 1:
            arrays[f"hidden_degrees_{l}"] = np.ascontiguousarray(hidden_degrees[l], dtype=np.int32)
    if direct is not None:
        arrays["direct_W"] = np.ascontiguousarray(np.asarray(direct).T).astype(dtype)
    return arrays


def _external(name: str, array: np.ndarray, where: dict[str, tuple[int, int]]) -> TensorProto:
    """An initializer whose bytes are those of `name` in weights.safetensors."""
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    offset, length = where[name]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def safetensors_offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """(offset in the file, length) of every array of a safetensors file's bytes."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    start = 8 + header_len
    return {
        name: (start + entry["data_offsets"][0], entry["data_offsets"][1] - entry["data_offsets"][0])
        for name, entry in header.items()
        if name != "__metadata__"
    }


def model_graph(
    arrays: dict[str, np.ndarray], where: dict[str, tuple[int, int]], activation: str = "relu", name: str = "made"
) -> bytes:
    """One mask's network (see the module's docstring) over weight_arrays' arrays, whose bytes
    lie in weights.safetensors at `where` (safetensors_offsets); output `params` when the arrays
    hold output_degrees (a table model), else `logits`."""
    act_op = _activation_op(activation)
    n_layers = sum(1 for key in arrays if key.startswith("W") and key[1:].isdigit())
    table = "output_degrees" in arrays
    output_name = TABLE_OUTPUT if table else "logits"
    dims = int(arrays["input_degrees"].shape[1])
    out_dims = int(arrays["output_degrees"].shape[1]) if table else dims
    inits = [
        _external("input_degrees", arrays["input_degrees"], where),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = []

    def weight(init_name: str) -> str:
        """A stored (fan_in, fan_out) matrix: the name of its float32 value in the graph."""
        inits.append(_external(init_name, arrays[init_name], where))
        if arrays[init_name].dtype == np.float32:
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
    if table:
        inits.append(_external("output_degrees", arrays["output_degrees"], where))
        out_row, _ = degrees_of("output_degrees", "deg_out")
    direct = "direct_W" in arrays
    prev_col, h = in_col, "x"
    for l in range(n_layers):
        last = l == n_layers - 1
        w_name = weight(f"W{l}")
        inits.append(_external(f"b{l}", arrays[f"b{l}"], where))
        if last:
            # output d keeps last-layer unit k when deg(d) > m(k): (H_L, D)
            nodes.append(helper.make_node("Greater", [out_row, prev_col], [f"keep{l}"]))
        else:
            inits.append(_external(f"hidden_degrees_{l}", arrays[f"hidden_degrees_{l}"], where))
            row, col = degrees_of(f"hidden_degrees_{l}", f"deg_h{l}")
            # unit k keeps unit j of the layer below when m_l(k) >= m_{l-1}(j): (fan_in, fan_out)
            nodes.append(helper.make_node("GreaterOrEqual", [row, prev_col], [f"keep{l}"]))
            prev_col = col
        nodes.append(helper.make_node("Cast", [f"keep{l}"], [f"mask{l}"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [w_name, f"mask{l}"], [f"Wm{l}"]))
        nodes.append(helper.make_node("MatMul", [h, f"Wm{l}"], [f"mm{l}"]))
        out = "pre_logits" if (last and direct) else (output_name if last else f"pre{l}")
        nodes.append(helper.make_node("Add", [f"mm{l}", f"b{l}"], [out]))
        if not last:
            nodes.append(helper.make_node(act_op, [out], [f"h{l}"]))
            h = f"h{l}"
    if direct:
        direct_name = weight("direct_W")
        nodes += _direct_nodes(direct_name, out_row, in_col, output_name)
    inputs = [_value("x", ["N", dims]), _value("mask_index", [], TensorProto.INT64)]
    return _model(nodes, name, inputs, [_value(output_name, ["N", out_dims])], inits, arrays)


def _direct_nodes(direct_name: str, out_row: str, in_col: str, output_name: str) -> list[onnx.NodeProto]:
    """The direct connections: x times the masked direct weights (output d reads input i when
    deg(d) > deg(i)), added to the last layer's pre_logits as the graph's output."""
    return [
        helper.make_node("Greater", [out_row, in_col], ["keep_direct"]),  # (D_in, D_out)
        helper.make_node("Cast", ["keep_direct"], ["mask_direct"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [direct_name, "mask_direct"], ["direct_Wm"]),
        helper.make_node("MatMul", ["x", "direct_Wm"], ["direct_out"]),
        helper.make_node("Add", ["pre_logits", "direct_out"], [output_name]),
    ]


def _value(name: str, shape: list[str | int], kind: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, shape)


def _model(
    nodes: list[onnx.NodeProto],
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[TensorProto] | None = None,
    external: dict[str, np.ndarray] | None = None,
) -> bytes:
    """A model of opset OPSET, serialized, once onnx's checker passes it (with the values of
    its `external` initializers in place: the checker cannot read them from a file not yet
    written)."""

    def build(initializers: list[TensorProto]) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="made")
        model.ir_version = IR_VERSION
        return model

    inits = inits or []
    external = external or {}
    inline = [numpy_helper.from_array(external[t.name], t.name) if t.name in external else t for t in inits]
    onnx.checker.check_model(build(inline))
    return build(inits).SerializeToString()


def _masked_layers(
    x: str, n_layers: int, direct: bool, activation: str, out: str
) -> tuple[list[onnx.ValueInfoProto], list[onnx.NodeProto]]:
    """The inputs and nodes of a MADE's layers whose masked weights are inputs, in the mask's
    coordinates (network.MaskWeights: W{l} (fan_out, fan_in), b{l}, direct_W (D, D)): from the
    positioned input `x` to the positioned logits `out`."""
    act_op = _activation_op(activation)
    inputs: list[onnx.ValueInfoProto] = []
    nodes: list[onnx.NodeProto] = []
    h = x
    for l in range(n_layers):
        inputs += [_value(f"W{l}", [f"out{l}", f"in{l}"]), _value(f"b{l}", [f"out{l}"])]
        last = l == n_layers - 1
        result = ("pre_logits" if direct else out) if last else f"a{l}"
        nodes.append(helper.make_node("Gemm", [h, f"W{l}", f"b{l}"], [result], transB=1))
        if not last:
            nodes.append(helper.make_node(act_op, [result], [f"h{l}"]))
            h = f"h{l}"
    if direct:
        inputs.append(_value("direct_W", ["D", "D"]))
        nodes.append(helper.make_node("Gemm", [x, "direct_W", "pre_logits"], [out], transB=1))
    return inputs, nodes


def dense_graph(n_layers: int, direct: bool, activation: str = "relu") -> bytes:
    """One dense pass of a MADE whose (masked) weights are inputs: `x` (N, D) in dimension
    order; `order` (D,) int64, the mask's ordering, and `inverse` (D,), its inverse permutation;
    W{l} (fan_out, fan_in) and b{l} (fan_out,) for each layer and `direct_W` (D, D) when
    `direct`, in the mask's coordinates, float32; output `logits` (N, D) in dimension order.
    The engine feeds it each mask's network in that mask's coordinates, so one session with no
    weights of its own serves all K masks from the arrays the sampler steps through."""
    inputs = [
        _value("x", ["N", "D"]),
        _value("order", ["D"], TensorProto.INT64),
        _value("inverse", ["D"], TensorProto.INT64),
    ]
    nodes = [helper.make_node("Gather", ["x", "order"], ["xs"], axis=1)]
    layer_inputs, layer_nodes = _masked_layers("xs", n_layers, direct, activation, "positioned")
    nodes += [*layer_nodes, helper.make_node("Gather", ["positioned", "inverse"], ["logits"], axis=1)]
    return _model(nodes, "made_dense", inputs + layer_inputs, [_value("logits", ["N", "D"])])


def jacobi_step_graph(n_layers: int, direct: bool, activation: str = "relu") -> bytes:
    """One Jacobi fixed-point step of a MADE (Song et al. 2020), everything in the mask's
    coordinates (position t: the t-th dimension of its ordering): inputs `xs` (N, D) float32,
    the current guess; `thr` (N, D) float32, the draw's thresholds on the logits; W{l}, b{l}
    and `direct_W` as in dense_graph. Outputs `x_next` = 1[logits(xs) > thr] (N, D) float32,
    `changed` (N,) bool (x_next differs from xs: false means xs is the fixed point, i.e. the
    exact sample) and `logits` (N, D) of xs. A threshold of -inf draws 1, +inf draws 0."""
    layer_inputs, nodes = _masked_layers("xs", n_layers, direct, activation, "logits")
    inputs = [_value("xs", ["N", "D"]), _value("thr", ["N", "D"]), *layer_inputs]
    nodes += [
        helper.make_node("Greater", ["logits", "thr"], ["drawn"]),
        helper.make_node("Cast", ["drawn"], ["x_next"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["x_next", "xs"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["absdiff"]),
        helper.make_node("ReduceMax", ["absdiff"], ["most"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["most"], ["changed"], to=TensorProto.BOOL),
    ]
    outputs = [_value("x_next", ["N", "D"]), _value("changed", ["N"], TensorProto.BOOL), _value("logits", ["N", "D"])]
    return _model(nodes, "made_jacobi_step", inputs, outputs)


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
    inputs = [_value("x", ["N", "D"])]
    if observed:
        inputs.append(_value("observed", ["N", "D"]))
    inputs.append(_value("orders", ["K", "D"], TensorProto.INT64))
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
    ]
    node = helper.make_node
    nodes = [
        # (N, K, D) -> (K, N, D): each mask's copy of x in its positions
        node("Gather", ["x", "orders"], ["x_nkd"], axis=1),
        node("Transpose", ["x_nkd"], ["xk"], perm=[1, 0, 2]),
    ]
    h = "xk"
    for l in range(n_layers):
        inputs += [_value(f"W{l}", ["K", f"in{l}", f"out{l}"]), _value(f"b{l}", ["K", 1, f"out{l}"])]
        last = l == n_layers - 1
        nodes.append(node("MatMul", [h, f"W{l}"], [f"mm{l}"]))
        out = ("pre_logits" if direct else "logits") if last else f"a{l}"
        nodes.append(node("Add", [f"mm{l}", f"b{l}"], [out]))
        if not last:
            nodes.append(node(act_op, [out], [f"h{l}"]))
            h = f"h{l}"
    if direct:
        inputs.append(_value("direct_W", ["K", "D", "D"]))
        nodes.append(node("MatMul", ["xk", "direct_W"], ["direct_out"]))
        nodes.append(node("Add", ["pre_logits", "direct_out"], ["logits"]))
    # -log p(x_d | x_<d) = softplus(s), s = logit where x_d = 0, -logit where x_d = 1: s = z (1 - 2x)
    nodes += [
        node("Mul", ["xk", "two"], ["x2"]),
        node("Sub", ["one", "x2"], ["sign"]),
        node("Mul", ["logits", "sign"], ["s"]),
        node("Softplus", ["s"], ["nll_terms"]),
    ]
    terms = "nll_terms"
    if observed:
        nodes += [
            node("Gather", ["observed", "orders"], ["obs_nkd"], axis=1),
            node("Transpose", ["obs_nkd"], ["obsk"], perm=[1, 0, 2]),
            node("Mul", [terms, "obsk"], ["nll_observed"]),
        ]
        terms = "nll_observed"
    nodes += [
        node("Cast", [terms], ["nll64"], to=TensorProto.DOUBLE),
        node("ReduceSum", ["nll64", "axis2"], ["nll"], keepdims=0),
        node("Neg", ["nll"], ["logliks"]),
        # log mean_k exp(l_k), shifted by the largest l_k of each row
        node("ReduceMax", ["logliks"], ["top"], axes=[0], keepdims=1),
        node("Sub", ["logliks", "top"], ["shifted"]),
        node("Exp", ["shifted"], ["ratios"]),
        node("ReduceMean", ["ratios"], ["mean_ratio"], axes=[0], keepdims=0),
        node("Log", ["mean_ratio"], ["log_mean"]),
        node("Squeeze", ["top", "axis0"], ["top_n"]),
        node("Add", ["log_mean", "top_n"], ["mixture"]),
    ]
    outputs = [_value("logliks", ["K", "N"], TensorProto.DOUBLE), _value("mixture", ["N"], TensorProto.DOUBLE)]
    return _model(nodes, "made_scores", inputs, outputs, inits)


def version_files(arrays: dict[str, np.ndarray], activation: str = "relu") -> dict[str, bytes]:
    """Every file of a format-2 version but its manifest, from weight_arrays' arrays: the
    weights, the graph of one mask and, for a bit model (no output_degrees), the graphs its
    engine runs with the weights as inputs."""
    weights = save(arrays)
    files = {WEIGHTS: weights, MODEL_GRAPH: model_graph(arrays, safetensors_offsets(weights), activation)}
    if "output_degrees" in arrays:
        return files
    n_layers = sum(1 for key in arrays if key.startswith("W") and key[1:].isdigit())
    direct = "direct_W" in arrays
    files[DENSE_GRAPH] = dense_graph(n_layers, direct, activation)
    files[JACOBI_GRAPH] = jacobi_step_graph(n_layers, direct, activation)
    files[SCORES_GRAPH] = scores_graph(n_layers, direct, activation, observed=False)
    files[SCORES_OBSERVED_GRAPH] = scores_graph(n_layers, direct, activation, observed=True)
    return files
