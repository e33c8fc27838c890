"""made.onnx_wire against the onnx package: the graphs serving builds are the bytes onnx would
serialize and pass its checker, the initializers it reads are numpy_helper's, and a serving
process never imports onnx."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from made import onnx_graph, onnx_wire
from made.core.errors import ModelStoreError

REPO = Path(__file__).resolve().parents[1]

GRAPHS = {
    "dense": onnx_graph.dense_graph,
    "jacobi": onnx_graph.jacobi_step_graph,
    "scores": lambda n, d, a: onnx_graph.scores_graph(n, d, a, observed=False),
    "scores_observed": lambda n, d, a: onnx_graph.scores_graph(n, d, a, observed=True),
}


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_graphs_built_without_onnx_are_valid_and_canonical(kind: str) -> None:
    for n_layers, direct, activation in itertools.product([1, 2, 3], [False, True], ["relu", "tanh"]):
        built = GRAPHS[kind](n_layers, direct, activation)
        model = onnx.load_from_string(built)
        onnx.checker.check_model(model, full_check=True)  # shapes and types inferred, too
        # onnx re-serializes it to the same bytes: fields, order and encoding as protobuf writes them
        assert model.SerializeToString() == built, (kind, n_layers, direct, activation)
        assert model.ir_version == onnx_graph.IR_VERSION
        assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_graph.OPSET)]


def test_a_node_and_a_value_info_are_what_onnx_helper_writes() -> None:
    ours = onnx_wire.node("ReduceMax", ["a", "b"], ["c"], keepdims=0, axes=[1, 0, 2])
    theirs = helper.make_node("ReduceMax", ["a", "b"], ["c"], keepdims=0, axes=[1, 0, 2])
    assert ours == theirs.SerializeToString()
    ours = onnx_wire.value_info("x", onnx_wire.FLOAT, ["N", 784, "D"])
    assert ours == helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784, "D"]).SerializeToString()
    with pytest.raises(TypeError, match="not an int"):
        onnx_wire.attribute("alpha", 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "array",
    [
        np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 7,
        np.array([1.5, -2.25, 65504.0], dtype=np.float16),
        np.array([[-(2**40), 3]], dtype=np.int64),
        np.array([-7, 0, 2**31 - 1], dtype=np.int32),
        np.array(2.0, dtype=np.float32),  # a scalar: no dims
        np.array([[0.1, -1e300]], dtype=np.float64),
        np.array([True, False]),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_tensors_read_back_as_numpy_helper_reads_them_raw_or_typed(array: np.ndarray) -> None:
    raw = numpy_helper.from_array(array, "t")
    assert onnx_wire.tensor("t", array) == raw.SerializeToString()
    typed = helper.make_tensor("t", raw.data_type, array.shape, array.ravel().tolist(), raw=False)
    for proto in (raw, typed):  # raw_data, and the typed repeated fields (float_data, int32_data, ...)
        model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[proto]))
        (name, got), *_ = onnx_wire.initializers(model.SerializeToString()).items()
        want = numpy_helper.to_array(proto)
        assert name == "t" and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("weight_dtype", ["float32", "float16"])
@pytest.mark.parametrize("direct", [False, True])
def test_read_arrays_gives_the_initializers_onnx_gives(tmp_path: Path, weight_dtype: str, direct: bool) -> None:
    rng = np.random.default_rng(0)
    dims, hidden, k = 6, [5, 4], 3
    sizes = [dims, *hidden, dims]
    weights = [rng.normal(size=(b, a)).astype(np.float32) for a, b in itertools.pairwise(sizes)]
    biases = [rng.normal(size=b).astype(np.float32) for b in sizes[1:]]
    degrees = np.stack([rng.permutation(dims) + 1 for _ in range(k)])
    hidden_degrees = [rng.integers(1, dims, size=(k, h)) for h in hidden]
    model = onnx_graph.build_graph(
        weights,
        biases,
        degrees,
        hidden_degrees,
        direct=rng.normal(size=(dims, dims)).astype(np.float32) if direct else None,
        weight_dtype=weight_dtype,
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    ours = onnx_wire.initializers(path.read_bytes())
    theirs = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert ours.keys() == theirs.keys()
    for name, want in theirs.items():
        assert ours[name].dtype == want.dtype, name
        np.testing.assert_array_equal(ours[name], want)
    arrays = onnx_graph.read_arrays(path)
    np.testing.assert_array_equal(arrays.input_degrees, degrees)
    for got, want in zip(arrays.weights, weights, strict=True):  # stored (fan_in, fan_out)
        np.testing.assert_array_equal(got, want.T.astype(weight_dtype).astype(np.float32))
    assert (arrays.direct is not None) == direct


def test_a_damaged_or_foreign_file_is_refused(tmp_path: Path, tiny_store: Path) -> None:
    good = next(tiny_store.glob("tiny/*/model.onnx")).read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelStoreError, match="not a readable ONNX model"):
        onnx_graph.read_arrays(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelStoreError, match="not a readable ONNX model"):
        onnx_graph.read_arrays(garbage)
    other = tmp_path / "other.onnx"  # valid ONNX, not a MADE export
    other.write_bytes(
        helper.make_model(
            helper.make_graph([], "g", [], [], initializer=[numpy_helper.from_array(np.zeros(2), "w")])
        ).SerializeToString()
    )
    with pytest.raises(ModelStoreError, match="lacks the initializer"):
        onnx_graph.read_arrays(other)
    # any damage is refused with that message, or (in weight bytes) read: never another error
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(300):
        damaged = bytearray(good)
        for at in rng.integers(0, len(good), size=int(rng.integers(1, 4))):
            damaged[at] = int(rng.integers(0, 256))
        path = tmp_path / f"damaged{trial}.onnx"
        path.write_bytes(bytes(damaged))
        try:
            onnx_graph.read_arrays(path)
        except ModelStoreError as exc:
            assert "ONNX model" in str(exc) or "initializer" in str(exc), exc
            refused += 1
    assert refused > 0
    external = helper.make_tensor("W0", TensorProto.FLOAT, [2], [1.0, 2.0])
    external.data_location = TensorProto.EXTERNAL
    data = helper.make_model(helper.make_graph([], "g", [], [], initializer=[external])).SerializeToString()
    with pytest.raises(onnx_wire.WireError, match="external file"):
        onnx_wire.initializers(data)


def test_serving_loads_models_without_importing_onnx(tiny_store: Path) -> None:
    code = (
        "import sys\n"
        "from service.http.app import create_app\n"
        "from service.settings import Settings\n"
        "from service.engine import ModelRegistry\n"
        f"r = ModelRegistry({str(tiny_store)!r}); r.load()\n"
        "create_app(Settings(store=r.store), registry=r)\n"
        "e = r.get('tiny')\n"
        "e.logprob(e.sample(4, seed=0))\n"
        "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
