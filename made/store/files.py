"""The files of a format-2 version, checked: every listed file against its sha256, the weights'
tensor shapes against the manifest (read from the safetensors header, before any array is
built), then the arrays themselves, read with safetensors.numpy.

A version holds its weights once, in weights.safetensors, under the names below, and every
graph the engine runs (written by training/graphs.py, none built at load):

- model.onnx: x (N, U_in) and mask_index () -> logits (bits) or params (tables): the network
  of one mask, rebuilt from the degrees inside the graph. Its initializers are declared as
  external data in weights.safetensors (each at its offset in the file), which onnxruntime
  reads itself once open_model has checked the file. A table model is served by it; a bit
  model's engine runs it once at load to check its own arrangement of the weights.
- dense.onnx, jacobi_step.onnx, scores.onnx, scores_observed.onnx (bit models): graphs whose
  weights are inputs, fed each mask's rearranged arrays (service.engine.network.MaskWeights).

Weight names: W{l} (fan_in, fan_out) float32 or float16 (the manifest's weight_dtype), b{l}
(fan_out,) float32, input_degrees (K, U_in) int32, hidden_degrees_{l} (K, H_l) int32,
direct_W (U_in, U_out) when the model has direct connections, output_degrees (K, U_out) int32
(table models).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from made.core.errors import ModelStoreError
from made.store.manifest import MANIFEST, Manifest, check_weight_budget

WEIGHTS = "weights.safetensors"
MODEL_GRAPH = "model.onnx"
DENSE_GRAPH = "dense.onnx"
JACOBI_GRAPH = "jacobi_step.onnx"
SCORES_GRAPH = "scores.onnx"
SCORES_OBSERVED_GRAPH = "scores_observed.onnx"
BIT_FILES = (WEIGHTS, MODEL_GRAPH, DENSE_GRAPH, JACOBI_GRAPH, SCORES_GRAPH, SCORES_OBSERVED_GRAPH)
TABLE_FILES = (WEIGHTS, MODEL_GRAPH)
WEIGHT_ARRAYS = ("W", "direct_W")  # stored in the manifest's weight_dtype; every other array is exact


def required_files(manifest: Manifest) -> tuple[str, ...]:
    return TABLE_FILES if manifest.is_table else BIT_FILES


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(version_dir: Path, manifest: Manifest) -> None:
    """Every file the version needs is listed, and every listed file exists and matches its
    sha256."""
    for needed in required_files(manifest):
        if needed not in manifest.files:
            raise ModelStoreError(f"{version_dir / MANIFEST} does not list {needed} in 'files'")
    for fname, expected in manifest.files.items():
        path = Path(version_dir) / fname
        if not path.is_file():
            raise ModelStoreError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelStoreError(
                f"{path} does not match its manifest checksum (truncated or altered): "
                f"sha256 {actual[:12]}..., expected {str(expected)[:12]}..."
            )


def expected_shapes(manifest: Manifest, n_in: int, n_out: int, direct: bool) -> dict[str, tuple[int, ...]]:
    """The shape of every array of weights.safetensors, by the manifest (n_in, n_out: the
    network's input and output units: dims for a bit model, the schema's units for a table)."""
    k = manifest.n_masks
    widths = [n_in, *manifest.hidden, n_out]
    shapes: dict[str, tuple[int, ...]] = {"input_degrees": (k, n_in)}
    for l, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes[f"W{l}"], shapes[f"b{l}"] = (fan_in, fan_out), (fan_out,)
        if l < len(widths) - 2:
            shapes[f"hidden_degrees_{l}"] = (k, fan_out)
    if manifest.is_table:
        shapes["output_degrees"] = (k, n_out)
    if direct:
        shapes["direct_W"] = (n_in, n_out)
    return shapes


def _dtype_of(name: str, weight_dtype: str) -> str:
    if name.startswith("W") and name[1:].isdigit() or name == "direct_W":
        return weight_dtype
    return "float32" if name.startswith("b") else "int32"


def check_weights(version_dir: Path, manifest: Manifest, n_in: int, n_out: int) -> None:
    """weights.safetensors holds exactly the arrays the manifest implies, of its shapes and
    types, read from the file's header without building any array: a loader builds arrays
    from this file, and the engine a copy of them per mask, only once they agree."""
    path = Path(version_dir) / WEIGHTS
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    try:
        with safe_open(str(path), framework="numpy") as fh:
            for name in fh.keys():  # noqa: SIM118 (a safetensors file, not a dict)
                array = fh.get_slice(name)
                found[name] = (tuple(array.get_shape()), array.get_dtype())
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelStoreError(f"{path} is not a readable safetensors file: {exc}") from None
    direct = bool(manifest.direct) or "direct_W" in found
    if "direct_W" in found and manifest.direct is False:
        raise ModelStoreError(f"{path} has direct connections (direct_W), its manifest says direct: false")
    if direct:
        check_weight_budget(manifest, True, path)
    expected = expected_shapes(manifest, n_in, n_out, direct)
    weight_dtype = manifest.weight_dtype or "float32"
    dtypes = {"float32": "F32", "float16": "F16", "int32": "I32"}
    for name, want in expected.items():
        if name not in found:
            raise ModelStoreError(f"{path} lacks the array '{name}'; was it written by made export?")
        shape, dtype = found[name]
        if shape != want:
            raise ModelStoreError(
                f"{path} does not match its manifest's dims {manifest.dims}, hidden {manifest.hidden} and "
                f"n_masks {manifest.n_masks}: {name} is {'x'.join(map(str, shape))} in the file, "
                f"{'x'.join(map(str, want))} by the manifest"
            )
        if dtype != dtypes[_dtype_of(name, weight_dtype)]:
            raise ModelStoreError(f"{path}: {name} is {dtype}, the manifest's weights are {weight_dtype}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ModelStoreError(f"{path} holds the array '{extra[0]}', which its manifest does not describe")


def load_weights(version_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of weights.safetensors as stored (check_weights has checked their shapes)."""
    path = Path(version_dir) / WEIGHTS
    try:
        with safe_open(str(path), framework="numpy") as fh:  # one array at a time, not the whole file's bytes
            return {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (a safetensors file)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelStoreError(f"{path} is not a readable safetensors file: {exc}") from None
