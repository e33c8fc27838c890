"""`made export`: a finished run -> STORE/NAME/VERSION/{model.onnx, manifest.json}, atomically.

The version directory is assembled under a hidden temporary name and renamed into place, so a
reader never sees half a version. Reads the run's safetensors with numpy (no torch needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from safetensors import SafetensorError
from safetensors.numpy import load_file

from made.core.errors import CheckpointError, ModelStoreError
from made.core.masks import MaskSet, make_mask_set, orderings_to_degrees
from made.core.schema import Schema
from made.io.data import check_image_shape, dataset_name, load_dataset
from made.onnx_graph import WEIGHT_DTYPES, build_graph
from made.store.versions import TABLE_OUTPUT, table_graph_signature, write_version
from training.run_files import BEST, CONFIG, METRICS


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: is {path.parent} a finished training run?") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """(training config, best weights, metrics) of a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    config = _read_json(run_dir / CONFIG)
    metrics = _read_json(run_dir / METRICS)
    try:
        tensors = load_file(str(run_dir / BEST))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir / BEST} not found: the run has not finished an epoch") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{run_dir / BEST} is unreadable or truncated: {exc}") from None
    return config, tensors, metrics


def graph_from_tensors(
    tensors: dict[str, np.ndarray],
    n_hidden: int,
    direct: bool,
    weight_dtype: str = "float32",
    activation: str = "relu",
) -> onnx.ModelProto:
    weights = [tensors[f"layers.{i}.weight"] for i in range(n_hidden + 1)]
    biases = [tensors[f"layers.{i}.bias"] for i in range(n_hidden + 1)]
    hidden_degrees = [tensors[f"hidden_degrees_{i}"] for i in range(n_hidden)]
    return build_graph(
        weights,
        biases,
        tensors["input_degrees"],
        hidden_degrees,
        tensors["direct.weight"] if direct else None,
        weight_dtype=weight_dtype,
        activation=activation,
    )


def _dataset_image_shape(config: dict[str, Any]) -> list[int] | None:
    """The image shape of a run that predates --image-shape, found from its data as training does."""
    try:
        return load_dataset(config["dataset"], splits=("valid",)).image_shape
    except Exception:  # the data may have moved since training; the name still tells
        if "mnist" in str(config["dataset"]).lower() and config["model"]["dims"] == 784:
            return [28, 28]
    return None


def _export_table_run(
    config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    metrics: dict[str, Any],
    store: Path,
    name: str,
    version: str | None,
    weight_dtype: str,
) -> Path:
    """A table model: the graph maps network inputs (N, U_in) to every column's parameters
    (N, U_out); the manifest holds the column schema and the K orderings of the columns."""
    model_cfg = config["model"]
    schema = Schema.from_json(model_cfg["columns"])
    n_hidden = len(model_cfg["hidden"])
    weights = [tensors[f"layers.{i}.weight"] for i in range(n_hidden + 1)]
    biases = [tensors[f"layers.{i}.bias"] for i in range(n_hidden + 1)]
    hidden_degrees = [tensors[f"hidden_degrees_{i}"] for i in range(n_hidden)]
    direct = tensors["direct.weight"] if model_cfg.get("direct") else None
    graph = build_graph(
        weights,
        biases,
        tensors["input_degrees"],
        hidden_degrees,
        direct,
        weight_dtype=weight_dtype,
        output_degrees=tensors["output_degrees"],
        output_name=TABLE_OUTPUT,
    )
    orderings = np.argsort(tensors["column_degrees"], axis=1, kind="stable")
    fields = {
        "dims": len(schema),
        "hidden": list(model_cfg["hidden"]),
        "n_masks": int(orderings.shape[0]),
        "orderings": orderings.tolist(),
        "direct": bool(model_cfg.get("direct")),
        "weight_dtype": weight_dtype,
        "columns": schema.to_json(),
        "dataset": {
            "name": dataset_name(str(config["dataset"])),
            "source": str(config["dataset"]),
            **({"groups": config["groups"]} if config.get("groups") else {}),
        },
        "metrics": metrics,
        "training": config,
        "image_shape": None,
        "graph": table_graph_signature(schema),
    }
    return write_version(store, name, graph.SerializeToString(), fields, version)


def export_run(
    run_dir: str | Path,
    store: str | Path,
    name: str,
    version: str | None = None,
    weight_dtype: str = "float32",
    image_shape: list[int] | None = None,
) -> Path:
    """Export a finished run; weight_dtype 'float16' stores the weight matrices in half the bytes
    (the served model is then the float32 network with float16-rounded weights). image_shape
    [H, W] overrides the run's own (from `made train --image-shape`, or found for MNIST)."""
    run_dir, store = Path(run_dir), Path(store)
    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelStoreError(f"unknown weight type '{weight_dtype}', expected one of {', '.join(WEIGHT_DTYPES)}")
    for kind, value in (("model name", name), ("version", version)):
        # a '/' would write outside the store; a leading '.' would hide the version from readers
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ModelStoreError(f"invalid {kind} '{value}': use letters, digits, '-' or '_'")
    config, tensors, metrics = load_run(run_dir)
    model_cfg = config["model"]
    if "columns" in model_cfg:
        return _export_table_run(config, tensors, metrics, store, name, version, weight_dtype)
    n_hidden = len(model_cfg["hidden"])
    degrees = tensors["input_degrees"]
    masks = MaskSet(
        orderings=np.argsort(degrees, axis=1),
        hidden_degrees=tuple(tensors[f"hidden_degrees_{i}"] for i in range(n_hidden)),
    )
    assert np.array_equal(orderings_to_degrees(masks.orderings), degrees)
    activation = str(model_cfg.get("activation", "relu"))  # runs from before the option: ReLU
    graph = graph_from_tensors(tensors, n_hidden, bool(model_cfg.get("direct")), weight_dtype, activation)

    image_shape = check_image_shape(
        image_shape or config.get("image_shape") or _dataset_image_shape(config), int(model_cfg["dims"])
    )

    fields = {
        "dims": int(model_cfg["dims"]),
        "hidden": list(model_cfg["hidden"]),
        "n_masks": int(masks.n_masks),
        "orderings": masks.orderings.tolist(),
        "direct": bool(model_cfg.get("direct")),
        "activation": activation,
        "weight_dtype": weight_dtype,
        "dataset": {"name": dataset_name(str(config["dataset"])), "source": str(config["dataset"])},
        "metrics": metrics,
        "training": config,
        "image_shape": image_shape,
    }
    return write_version(store, name, graph.SerializeToString(), fields, version)


def export_random_model(
    store: Path,
    name: str,
    dims: int,
    hidden: list[int],
    n_masks: int,
    *,
    order_agnostic: bool = False,
    connectivity_agnostic: bool = True,
    direct: bool = False,
    seed: int = 0,
    activation: str = "relu",
) -> Path:
    """A MADE of the given shape with random (untrained) weights, written to the store like
    `made export` writes: what exactness tests and benchmarks need at real size. Returns store."""
    masks = make_mask_set(
        dims, hidden, n_masks, order_agnostic=order_agnostic, connectivity_agnostic=connectivity_agnostic, seed=seed
    )
    rng = np.random.default_rng(seed)
    widths = [dims, *hidden, dims]
    # (fan_out, fan_in) like torch; about half of each matrix is masked, hence the factor 2
    weights = [
        (rng.standard_normal((b, a)) * np.sqrt(2.0 / a)).astype(np.float32)
        for a, b in zip(widths[:-1], widths[1:], strict=True)
    ]
    biases = [(0.1 * rng.standard_normal(b)).astype(np.float32) for b in widths[1:]]
    direct_w = (rng.standard_normal((dims, dims)) / np.sqrt(dims)).astype(np.float32) if direct else None
    graph = build_graph(
        weights, biases, masks.input_degrees(), list(masks.hidden_degrees), direct_w, activation=activation
    )
    fields = {
        "dims": dims,
        "hidden": list(hidden),
        "n_masks": n_masks,
        "orderings": masks.orderings.tolist(),
        "direct": direct,
        "activation": activation,
        "dataset": {"name": "random-weights"},
        "metrics": {},
    }
    write_version(Path(store), name, graph.SerializeToString(), fields, "1")
    return Path(store)
