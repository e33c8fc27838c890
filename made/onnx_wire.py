"""ONNX's protobuf messages on the wire, without the onnx package: what serving needs of them.

The serving process reads the initializers of a stored graph and builds a few small graphs at
load time (made.onnx_graph). The onnx package costs ~10 MB of resident memory in every worker
(its operator schemas are built at import) and is needed for neither, so serving encodes and
decodes these messages here, in protobuf's wire format, field by field as onnx.proto numbers
them. Writing follows protobuf's own serialization (fields in number order, repeated scalars of
proto2 unpacked), so a graph built here is byte for byte what onnx.helper would serialize
(tests/test_onnx_wire.py checks both ways). made.onnx_graph owns the format (names, structure);
export and its checker still use the onnx package.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# TensorProto.DataType
FLOAT, INT32, INT64, BOOL, FLOAT16, DOUBLE = 1, 6, 7, 9, 10, 11
_NUMPY: dict[int, np.dtype[Any]] = {
    FLOAT: np.dtype("<f4"),
    INT32: np.dtype("<i4"),
    INT64: np.dtype("<i8"),
    BOOL: np.dtype("bool"),
    FLOAT16: np.dtype("<f2"),
    DOUBLE: np.dtype("<f8"),
}
_DATA_TYPE = {dtype: code for code, dtype in _NUMPY.items()}

# AttributeProto.AttributeType
_ATTR_INT, _ATTR_INTS = 2, 7

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not the protobuf message they should be."""


# --- writing ------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3 | _VARINT) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | _LEN) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode())


def attribute(name: str, value: int | Sequence[int]) -> bytes:
    """AttributeProto as onnx.helper.make_attribute writes an int or a list of ints (the only
    attributes the graphs built at load time have)."""
    if isinstance(value, bool) or not isinstance(value, int | list | tuple):
        raise TypeError(f"attribute {name}: {value!r} is not an int or a list of ints")
    if isinstance(value, int):
        return _str(1, name) + _int(3, value) + _int(20, _ATTR_INT)
    return _str(1, name) + b"".join(_int(8, int(v)) for v in value) + _int(20, _ATTR_INTS)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attributes: int | Sequence[int]) -> bytes:
    """NodeProto, as onnx.helper.make_node(op_type, inputs, outputs, **attributes) (attributes
    sorted by name, as it sorts them)."""
    return (
        b"".join(_str(1, i) for i in inputs)
        + b"".join(_str(2, o) for o in outputs)
        + _str(4, op_type)
        + b"".join(_bytes(5, attribute(k, v)) for k, v in sorted(attributes.items()))
    )


def value_info(name: str, elem_type: int, shape: Sequence[int | str]) -> bytes:
    """ValueInfoProto of a tensor, as onnx.helper.make_tensor_value_info: each dimension a
    number (dim_value) or a name (dim_param)."""
    dims = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _str(2, d)) for d in shape)
    tensor_type = _int(1, elem_type) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto of an array, as onnx.numpy_helper.from_array writes it (raw little-endian)."""
    array = np.asarray(array)
    code = _DATA_TYPE.get(array.dtype.newbyteorder("<"))
    if code is None:
        raise TypeError(f"tensor {name}: no ONNX type here for {array.dtype}")
    raw = np.ascontiguousarray(array, dtype=_NUMPY[code]).tobytes()
    return b"".join(_int(1, d) for d in array.shape) + _int(2, code) + _str(8, name) + _bytes(9, raw)


def graph(
    nodes: Sequence[bytes],
    name: str,
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializers: Sequence[bytes] = (),
) -> bytes:
    """GraphProto, as onnx.helper.make_graph(nodes, name, inputs, outputs, initializers)."""
    return (
        b"".join(_bytes(1, n) for n in nodes)
        + _str(2, name)
        + b"".join(_bytes(5, t) for t in initializers)
        + b"".join(_bytes(11, i) for i in inputs)
        + b"".join(_bytes(12, o) for o in outputs)
    )


def model(graph_bytes: bytes, opset: int, ir_version: int) -> bytes:
    """ModelProto of a graph in the default domain at `opset`, serialized (what
    onnx.helper.make_model(graph, opset_imports=[make_opsetid("", opset)]) with that ir_version
    serializes to)."""
    return _int(1, ir_version) + _bytes(7, graph_bytes) + _bytes(8, _str(1, "") + _int(2, opset))


# --- reading ------------------------------------------------------------------------------------


def _read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each field of a message: an int for varints and fixed widths
    (their little-endian bits), the bytes for length-delimited fields."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _read_varint(view, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _read_varint(view, pos)
        elif wire == _LEN:
            size, pos = _read_varint(view, pos)
            if pos + size > end:
                raise WireError(f"field {number} runs past the end of its message")
            value, pos = view[pos : pos + size], pos + size
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if pos + width > end:
                raise WireError(f"field {number} runs past the end of its message")
            value, pos = int.from_bytes(view[pos : pos + width], "little"), pos + width
        else:
            raise WireError(f"field {number} has wire type {wire}, which ONNX does not use")
        if number == 0:
            raise WireError("field number 0")
        yield number, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(value: int | memoryview) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _read_varint(value, pos)
        out.append(item)
    return out


def _tensor_array(data: memoryview) -> tuple[str, np.ndarray]:
    """(name, values) of a TensorProto: raw_data, or the typed repeated field of its type."""
    name, code, dims = "", 0, []
    raw: memoryview | None = None
    typed: list[int | memoryview] = []
    for number, value in fields(data):
        if number == 1:
            dims += [_signed(v) for v in _packed_varints(value)]
        elif number == 2 and isinstance(value, int):
            code = value
        elif number == 8 and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == 9 and isinstance(value, memoryview):
            raw = value
        elif number in (4, 5, 7, 10):  # float_data, int32_data, int64_data, double_data
            typed.append(value)
        elif number == 14 and value == 1:  # data_location EXTERNAL
            raise WireError(f"tensor {name or '?'} keeps its values in an external file")
    dtype = _NUMPY.get(code)
    if dtype is None:
        raise WireError(f"tensor {name or '?'} has data type {code}, which made does not write")
    count = int(np.prod(dims))  # 1 for a scalar (no dims)
    if raw is not None:
        values = np.frombuffer(raw, dtype=dtype)
    elif code in (FLOAT, DOUBLE):
        width = 4 if code == FLOAT else 8
        # packed, or one fixed-width value per field
        chunks = [v if isinstance(v, memoryview) else v.to_bytes(width, "little") for v in typed]
        values = np.frombuffer(b"".join(chunks), dtype=dtype)
    else:  # int32_data (int32, bool, float16 as its bits) or int64_data, varints
        ints = [_signed(v) for chunk in typed for v in _packed_varints(chunk)]
        if code == FLOAT16:
            values = np.array(ints, dtype=np.uint16).view(np.float16)
        else:
            values = np.array(ints, dtype=np.int64).astype(dtype)
    if values.size != count:
        raise WireError(f"tensor {name or '?'} holds {values.size} values for shape {dims}")
    return name, values.reshape(dims).astype(dtype.newbyteorder("="))


def initializers(model_bytes: bytes) -> dict[str, np.ndarray]:
    """The initializers of a serialized ModelProto's graph, by name; WireError for bytes that
    are not one."""
    try:
        return _initializers(model_bytes)
    except WireError:
        raise
    except (ValueError, OverflowError, TypeError) as exc:  # a name not UTF-8, sizes that disagree, ...
        raise WireError(str(exc)) from None


def _initializers(model_bytes: bytes) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for number, value in fields(model_bytes):
        if number == 7 and isinstance(value, memoryview):  # graph
            for g_number, g_value in fields(value):
                if g_number == 5 and isinstance(g_value, memoryview):  # initializer
                    name, array = _tensor_array(g_value)
                    found[name] = array
    return found


def initializer_shapes(model_bytes: bytes) -> dict[str, tuple[int, ...]]:
    """The shape of each initializer of a serialized ModelProto's graph, by name, read without
    building the values (no copy of their bytes): what a loader checks before it allocates
    arrays from them. WireError for bytes that are not a ModelProto."""
    try:
        shapes: dict[str, tuple[int, ...]] = {}
        for number, value in fields(model_bytes):
            if number == 7 and isinstance(value, memoryview):  # graph
                for g_number, g_value in fields(value):
                    if g_number == 5 and isinstance(g_value, memoryview):  # initializer
                        name, dims = "", []
                        for t_number, t_value in fields(g_value):
                            if t_number == 1:
                                dims += [_signed(v) for v in _packed_varints(t_value)]
                            elif t_number == 8 and isinstance(t_value, memoryview):
                                name = bytes(t_value).decode()
                        shapes[name] = tuple(dims)
        return shapes
    except WireError:
        raise
    except (ValueError, OverflowError, TypeError) as exc:  # a name not UTF-8, ...
        raise WireError(str(exc)) from None
