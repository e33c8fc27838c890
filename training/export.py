"""`made export`: a finished run -> STORE/NAME/VERSION (store format 2: manifest.json,
weights.safetensors and every graph the engine runs, made.store.files), atomically; and
`made export --upgrade`, which rewrites a format-1 version (one model.onnx holding its weights)
as format 2 in place, keeping its number and its answers.

The version directory is assembled under a hidden temporary name and renamed into place, so a
reader never sees half a version. Reads the run's safetensors with numpy; where the run's data set
has a test split, the version also gets reference.json (made.store.reference: the test rows' log
p quantiles, a few test rows, the training marginals), the log p from the run's torch model with
the weights as stored (float16-rounded for --weights float16).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors import SafetensorError
from safetensors.numpy import load_file

from made.core.errors import CheckpointError, ConfigError, DataError, ModelStoreError
from made.core.masks import MaskSet, make_mask_set, orderings_to_degrees
from made.core.schema import Schema
from made.io.data import check_image_shape, dataset_name, load_dataset
from made.store.files import MODEL_GRAPH, sha256_file
from made.store.manifest import table_graph_signature
from made.store.reference import REFERENCE, build_reference, reference_bytes
from made.store.versions import (
    VersionTaken,
    check_name,
    list_names,
    list_versions,
    next_version,
    read_manifest,
    write_version,
)
from training.graphs import WEIGHT_DTYPES, version_files, weight_arrays
from training.run_files import BEST, CONFIG, METRICS

# The graph entry of a bit model's manifest (model.onnx's signature).
BIT_GRAPH_SIGNATURE = {
    "inputs": {"x": "float32 [N, D]", "mask_index": "int64 []"},
    "outputs": {"logits": "float32 [N, D]"},
    "opset": 17,
}


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


def check_run(run_dir: Path, config: Any, tensors: dict[str, np.ndarray]) -> None:
    """The run's config.json describes a training run and best.safetensors holds exactly the
    weights of the model it describes (a directory of another tool, or best weights copied
    from another run, is one CheckpointError naming the file, not a KeyError or torch's
    size mismatch)."""
    import torch

    from training.train import TrainConfig, build_model

    try:
        cfg = TrainConfig.from_dict(config)
        model = build_model(cfg.model)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        why = f"it has no entry {exc.args[0]!r}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{Path(run_dir) / CONFIG} does not describe a made training run ({why})") from None
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    except RuntimeError as exc:  # missing, unexpected or other-shaped tensors
        why = " ".join(str(exc).split("\n")[1:2]).strip() or str(exc).splitlines()[0]
        raise CheckpointError(
            f"{Path(run_dir) / BEST} does not hold the weights of the model {CONFIG} describes ({why})"
        ) from None


def arrays_from_tensors(
    tensors: dict[str, np.ndarray],
    n_hidden: int,
    direct: bool,
    weight_dtype: str = "float32",
    output_degrees: bool = False,
) -> dict[str, np.ndarray]:
    """A run's best weights (torch's names and layout) as the arrays of weights.safetensors."""
    return weight_arrays(
        [tensors[f"layers.{i}.weight"] for i in range(n_hidden + 1)],
        [tensors[f"layers.{i}.bias"] for i in range(n_hidden + 1)],
        tensors["input_degrees"],
        [tensors[f"hidden_degrees_{i}"] for i in range(n_hidden)],
        tensors["direct.weight"] if direct else None,
        weight_dtype=weight_dtype,
        output_degrees=tensors["output_degrees"] if output_degrees else None,
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
    arrays = arrays_from_tensors(tensors, n_hidden, bool(model_cfg.get("direct")), weight_dtype, output_degrees=True)
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
        "graph": table_graph_signature(
            schema.n_in, schema.n_out, schema.in_offsets.tolist(), schema.out_offsets.tolist()
        ),
    }
    return _write_new_version(
        store,
        name,
        version,
        fields,
        version_files(arrays),
        lambda chosen: run_reference(config, tensors, weight_dtype, name, chosen),
    )


def run_reference(
    config: dict[str, Any], tensors: dict[str, np.ndarray], weight_dtype: str, name: str, version: str
) -> dict[str, bytes]:
    """{reference.json: its bytes} of a run whose data set has a train and a test split (read as
    training reads them), else {}. Log p is the run's mixture from its torch model, with the
    weight matrices rounded as they are stored."""
    import torch

    from made.io.training_data import load_training_data
    from training.train import TrainConfig, build_model, nll_per_example

    cfg = TrainConfig.from_dict(config)
    schema = Schema.from_json(config["model"]["columns"]) if "columns" in config["model"] else None
    try:
        data = load_training_data(cfg.dataset, schema=schema, groups=cfg.groups if schema is not None else None)
        train, test = data.split("train"), data.split("test")
    except DataError:  # no test split, or the data have moved since training: no reference
        return {}
    model = build_model(cfg.model)
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    if weight_dtype == "float16":
        state = {k: v.half().float() if k.endswith("weight") else v for k, v in state.items()}
    model.load_state_dict(state)
    reference = build_reference(
        name,
        version,
        schema if schema is not None else Schema.bits(data.dims),
        test,
        train,
        lambda rows: -nll_per_example(model, rows, None),
        bits=schema is None,
    )
    return {REFERENCE: reference_bytes(reference)}


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
    check_name(name)  # the store's one rule: no '/' out of the store, no hidden '.name', ...
    if version is not None:
        check_name(version, "version")
    config, tensors, metrics = load_run(run_dir)
    check_run(run_dir, config, tensors)
    model_cfg = config["model"]
    if "columns" in model_cfg:
        if image_shape is not None:  # was dropped without a word: the manifest's image_shape stayed null
            raise ConfigError("--image-shape is for models of bits (pixels); this run is a model of a table's columns")
        return _export_table_run(config, tensors, metrics, store, name, version, weight_dtype)
    n_hidden = len(model_cfg["hidden"])
    degrees = tensors["input_degrees"]
    masks = MaskSet(
        orderings=np.argsort(degrees, axis=1),
        hidden_degrees=tuple(tensors[f"hidden_degrees_{i}"] for i in range(n_hidden)),
    )
    assert np.array_equal(orderings_to_degrees(masks.orderings), degrees)
    activation = str(model_cfg.get("activation", "relu"))  # runs from before the option: ReLU
    arrays = arrays_from_tensors(tensors, n_hidden, bool(model_cfg.get("direct")), weight_dtype)

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
        "graph": BIT_GRAPH_SIGNATURE,
    }
    return _write_new_version(
        store,
        name,
        version,
        fields,
        version_files(arrays, activation),
        lambda chosen: run_reference(config, tensors, weight_dtype, name, chosen),
    )


def _write_new_version(
    store: Path,
    name: str,
    version: str | None,
    fields: dict[str, Any],
    graph_files: dict[str, bytes],
    reference: Callable[[str], dict[str, bytes]],
) -> Path:
    """Write the version (its files: the graphs and `reference(version)`, which names it). With
    no --version its number is the next free one: where another export takes that number while
    this one writes (two exports of one name at once), this one takes the next, as if it had run
    after the other, instead of failing with 'pick another --version', an option never given."""
    for _ in range(100):
        chosen = version or next_version(store, name)
        try:
            return write_version(store, name, {**graph_files, **reference(chosen)}, fields, chosen)
        except VersionTaken:
            if version is not None:
                raise
    raise ModelStoreError(f"cannot find a free version of {store / name}: other exports keep taking them")


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
    arrays = weight_arrays(weights, biases, masks.input_degrees(), list(masks.hidden_degrees), direct_w)
    fields = {
        "dims": dims,
        "hidden": list(hidden),
        "n_masks": n_masks,
        "orderings": masks.orderings.tolist(),
        "direct": direct,
        "activation": activation,
        "weight_dtype": "float32",
        "dataset": {"name": "random-weights"},
        "metrics": {},
        "graph": BIT_GRAPH_SIGNATURE,
    }
    write_version(Path(store), name, version_files(arrays, activation), fields, "1")
    return Path(store)


def upgrade(target: str | Path) -> list[Path]:
    """Rewrite format-1 versions as format 2 in place: `target` is a version directory
    (STORE/NAME/VERSION) or a store (every format-1 version in it). The weights are read from
    the format-1 model.onnx's initializers, unchanged (float16 stays float16), the graphs built
    from them as export builds them, and the new version swapped in for the old one atomically
    (made.store.versions.write_version), keeping its number, manifest fields and creation time.
    Returns the versions rewritten; a version already of format 2 is left as it is."""
    target = Path(target)
    if (target / "manifest.json").is_file():
        dirs = [target]
    elif target.is_dir():
        dirs = [target / name / v for name in list_names(target) for v in list_versions(target, name)]
    else:
        raise ModelStoreError(f"{target} is neither a store nor a version directory")
    done = []
    for version_dir in dirs:
        old = read_manifest(version_dir, upgrading=True)
        if old.format_version != 1:
            continue
        path = version_dir / MODEL_GRAPH
        if MODEL_GRAPH not in old.files or not path.is_file() or sha256_file(path) != old.files[MODEL_GRAPH]:
            raise ModelStoreError(f"{path} is missing or does not match its manifest checksum; not upgrading it")
        try:
            graph = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and others with no common base
            raise ModelStoreError(f"{path} is not a readable ONNX model: {exc}") from None
        arrays = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer if t.name not in ("axis0", "axis1")}
        weight_dtype = str(arrays["W0"].dtype)
        if weight_dtype not in WEIGHT_DTYPES:
            raise ModelStoreError(f"{path}: W0 is {weight_dtype}, expected float32 or float16")
        fields = old.as_json()
        fields["weight_dtype"] = weight_dtype
        for key in ("format_version", "name", "version", "files"):
            del fields[key]
        done.append(
            write_version(
                version_dir.parent.parent,
                version_dir.parent.name,
                version_files(arrays, old.activation),
                fields,
                version_dir.name,
                replace=True,
            )
        )
    return done
