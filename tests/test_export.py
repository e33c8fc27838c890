"""`made export` (training/export.py, training/graphs.py): the store layout (format 2) and
versions, the manifest, ONNX-vs-PyTorch parity on real data for every mask, the autoregressive
property of the stored graph itself, its size, that a failed export leaves no version behind, and
`made export --upgrade`, which rewrites a format-1 version in place with the same answers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import train_tiny, write_npz
from helpers import MANIFEST_FIELDS

from made.core.errors import ModelStoreError
from made.core.masks import make_mask_set
from made.store.files import BIT_FILES, DENSE_GRAPH, JACOBI_GRAPH, SCORES_GRAPH, SCORES_OBSERVED_GRAPH, WEIGHTS
from made.store.manifest import REQUIRED
from made.store.reference import REFERENCE
from made.store.versions import list_names, list_versions, open_model
from service.engine.runtime import provider_options
from service.testing import providers_under_test
from training.checkpoint import BEST, load_tensors, save_tensors
from training.export import export_run
from training.graphs import dense_graph, version_files, weight_arrays
from training.model import MADE, MADEConfig
from training.train import CONFIG, METRICS, TrainConfig, Trainer

MADE_BIN = Path(sys.executable).with_name("made")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'image': mnist-like 4x4 data, K=4 agnostic masks with direct connections;
    'plain': one natural-order mask on 9 dimensions."""
    base = tmp_path_factory.mktemp("export-runs")
    mnist_like = write_npz(base / "binarized_mnist_tiny.npz", 16, seed=1)
    plain = write_npz(base / "chain9.npz", 9, seed=2)
    return {
        "image": train_tiny(
            base / "run-image",
            mnist_like,
            hidden=[24, 24],
            masks=4,
            epochs=3,
            order_agnostic=True,
            connectivity_agnostic=True,
            direct=True,
        ),
        "plain": train_tiny(base / "run-plain", plain, hidden=[12], epochs=2),
    }


# The parity and autoregressive tests run on the CPU provider; on a GPU machine with
# onnxruntime-gpu, MADE_TEST_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider runs them on CUDA.
PROVIDERS = providers_under_test()


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=provider_options(PROVIDERS))
    # onnxruntime falls back to the CPU silently when CUDA is missing: refuse to test the wrong one
    assert session.get_providers()[0] == PROVIDERS[0], session.get_providers()
    return session


def _logits(session: ort.InferenceSession, x: np.ndarray, k: int) -> np.ndarray:
    feeds = {"x": x.astype(np.float32), "mask_index": np.array(k, dtype=np.int64)}
    return session.run(["logits"], feeds)[0]


def _bernoulli_log_prob(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(N,) sum_d log p(x_d | logit_d), stable: -softplus(-logit) for 1, -softplus(logit) for 0."""
    signed = np.where(x == 1, logits, -logits).astype(np.float64)
    return -np.logaddexp(0.0, -signed).sum(axis=1)


def _model_of(run_dir: Path) -> MADE:
    config = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
    model = MADE(config.model)
    model.load_state_dict(load_tensors(run_dir / BEST)[0])
    return model.eval()


def test_made_export_writes_the_version_directory(runs: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = subprocess.run(
        [str(MADE_BIN), "export", str(runs["plain"]), "--store", str(store), "--name", "chain"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(store / "chain" / "1")
    # the run's data set has a test split: reference.json too (made.store.reference)
    assert sorted(p.name for p in (store / "chain" / "1").iterdir()) == sorted(["manifest.json", REFERENCE, *BIT_FILES])
    assert sorted(p.name for p in (store / "chain").iterdir()) == ["1"]
    assert open_model(store, "chain").manifest.name == "chain"


def test_versions_increment_and_an_existing_one_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert export_run(runs["plain"], store, "m") == store / "m" / "1"
    assert export_run(runs["plain"], store, "m") == store / "m" / "2"
    assert export_run(runs["plain"], store, "m", "9") == store / "m" / "9"
    assert export_run(runs["plain"], store, "m") == store / "m" / "10"  # numeric, not text, order
    assert list_versions(store, "m") == ["1", "2", "9", "10"]
    assert open_model(store, "m").version == "10"

    manifest_before = (store / "m" / "2" / "manifest.json").read_bytes()
    with pytest.raises(ModelStoreError) as info:
        export_run(runs["image"], store, "m", "2")
    assert str(store / "m" / "2") in str(info.value)
    assert (store / "m" / "2" / "manifest.json").read_bytes() == manifest_before
    assert list_versions(store, "m") == ["1", "2", "9", "10"]
    assert sorted(p.name for p in (store / "m").iterdir()) == ["1", "10", "2", "9"]


@pytest.mark.parametrize(
    ("name", "version"),
    [("", None), ("a/b", None), (".hidden", None), ("m", "../escape"), ("m", ".3"), ("m", "")],
)
def test_names_and_versions_that_would_escape_or_hide_are_refused(
    runs: dict[str, Path], tmp_path: Path, name: str, version: str | None
) -> None:
    store = tmp_path / "store"
    with pytest.raises(ModelStoreError, match="invalid"):
        export_run(runs["plain"], store, name, version)
    assert not tmp_path.joinpath("escape").exists()
    assert list_names(store) == [] and list_versions(store, "m") == []


def test_manifest_describes_the_model_its_data_and_its_metrics(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = runs["image"]
    version_dir = export_run(run_dir, tmp_path / "store", "digits")
    written = json.loads((version_dir / "manifest.json").read_text())  # the file as written
    assert {*MANIFEST_FIELDS, *REQUIRED, "image_shape"} <= set(written)
    config = json.loads((run_dir / CONFIG).read_text())
    metrics = json.loads((run_dir / METRICS).read_text())
    manifest = open_model(tmp_path / "store", "digits").manifest
    assert manifest.format_version == 2 and manifest.weight_dtype == "float32"
    assert manifest.name == "digits" and manifest.version == "1"
    assert manifest.dims == 16 and manifest.hidden == [24, 24] and manifest.n_masks == 4
    assert manifest.training == config
    assert manifest.image_shape == [4, 4]
    assert manifest.dataset.name == "binarized_mnist_tiny"
    assert written["metrics"] == metrics
    for key in ("test_nll", "test_nll_stderr", "valid_nll"):
        assert getattr(manifest.metrics, key) == metrics[key]
    assert manifest.metrics.model_extra is not None and len(manifest.metrics.model_extra["test_nll_per_mask"]) == 4
    listed = (*BIT_FILES, REFERENCE)
    assert manifest.files == {f: hashlib.sha256((version_dir / f).read_bytes()).hexdigest() for f in listed}
    assert datetime.fromisoformat(manifest.created_at).tzinfo is not None
    # orderings[k] lists the dimensions in mask k's order: ranks of the model's degrees
    degrees = _model_of(run_dir).input_degrees.numpy()
    for k, order in enumerate(manifest.orderings):
        assert sorted(order) == list(range(16))
        assert [int(degrees[k, d]) for d in order] == list(range(1, 17))
    assert len({tuple(o) for o in manifest.orderings}) == 4

    export_run(runs["plain"], tmp_path / "store", "chain")
    plain = open_model(tmp_path / "store", "chain").manifest
    assert plain.image_shape is None and "image_shape" in plain.as_json()
    assert plain.orderings == [list(range(9))]


def _assert_graph_matches(model: MADE, session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    """log p(x) from the graph against PyTorch for every mask; returns PyTorch's, per mask."""
    xt = torch.from_numpy(x).float()
    expected_per_mask = []
    for k in range(model.n_masks):
        with torch.no_grad():
            expected = model.log_prob(xt, k).double().numpy()
        got = _bernoulli_log_prob(_logits(session, x, k), x)
        assert np.abs(got - expected).max() <= 1e-4, f"mask {k}"
        assert np.isfinite(got).all()
        expected_per_mask.append(expected)
    return expected_per_mask


def _check_parity(run_dir: Path, store: Path, x: np.ndarray) -> None:
    session = _session(export_run(run_dir, store, run_dir.name) / "model.onnx")
    _assert_graph_matches(_model_of(run_dir), session, x)


def _train_real(data_dir: Path, tmp_path: Path, name: str, model: dict[str, Any], **settings: Any) -> Path:
    """Two epochs of a MADE (`model`: MADEConfig's fields but dims) on the real data set `name`,
    with TrainConfig `settings`; the run directory."""
    data = data_dir / f"{name}.npz"
    dims = int(np.load(data)["test"].shape[1])
    cfg = TrainConfig(
        dataset=str(data),
        model=MADEConfig(dims=dims, **model),
        seed=0,
        max_epochs=2,
        batch_size=100,
        lr=3e-3,
        **settings,
    )
    run_dir = tmp_path / f"run-{name}"
    metrics = Trainer(cfg, run_dir).run(progress=False)
    assert metrics["test_nll"] < dims * np.log(2)  # trained: better than fair coins
    return run_dir


def test_onnx_matches_pytorch_for_every_mask_on_real_test_data(data_dir: Path, tmp_path: Path) -> None:
    agnostic = _train_real(
        data_dir,
        tmp_path,
        "mushrooms",
        dict(hidden=[64], n_masks=3, order_agnostic=True, connectivity_agnostic=True, mask_seed=1),
    )
    direct = _train_real(
        data_dir, tmp_path, "dna", dict(hidden=[48, 48], n_masks=3, order_agnostic=True, direct=True, mask_seed=2)
    )
    _check_parity(agnostic, tmp_path / "store", np.load(data_dir / "mushrooms.npz")["test"])
    _check_parity(direct, tmp_path / "store", np.load(data_dir / "dna.npz")["test"])


def test_onnx_matches_pytorch_on_tiny_models(runs: dict[str, Path], tmp_path: Path) -> None:
    x = np.array(np.random.default_rng(0).random((300, 16)) < 0.5, dtype=np.uint8)
    _check_parity(runs["image"], tmp_path / "store", x)
    _check_parity(runs["plain"], tmp_path / "store", x[:, :9])


def test_onnx_output_d_ignores_inputs_at_or_after_d_for_every_mask(runs: dict[str, Path], tmp_path: Path) -> None:
    version_dir = export_run(runs["image"], tmp_path / "store", "ar")
    session = _session(version_dir / "model.onnx")
    orderings = np.array(open_model(tmp_path / "store", "ar").orderings)
    rng = np.random.default_rng(1)
    x = (rng.random((64, 16)) < 0.5).astype(np.float32)
    for k, order in enumerate(orderings):
        base = _logits(session, x, k)
        moved = 0
        for position, d in enumerate(order):
            later = order[position:]  # d itself and every dimension after it
            x2 = x.copy()
            x2[:, later] = rng.random((len(x), len(later))) < 0.5
            out = _logits(session, x2, k)
            assert np.array_equal(out[:, d], base[:, d]), f"mask {k}: output {d} moved"
            moved += int(not np.array_equal(out[:, order[position + 1 :]], base[:, order[position + 1 :]]))
        # outputs after the perturbed inputs do move: the comparisons above are not vacuous
        assert moved >= len(order) // 2


def _random_version_bytes(dims: int, hidden: list[int], n_masks: int) -> dict[str, int]:
    masks = make_mask_set(dims, hidden, n_masks, order_agnostic=True, connectivity_agnostic=True)
    rng = np.random.default_rng(0)
    widths = [dims, *hidden, dims]
    weights = [rng.standard_normal((b, a)).astype(np.float32) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    biases = [rng.standard_normal(b).astype(np.float32) for b in widths[1:]]
    arrays = weight_arrays(weights, biases, masks.input_degrees(), list(masks.hidden_degrees))
    return {name: len(data) for name, data in version_files(arrays).items()}


def test_32_masks_cost_little_more_than_one_and_the_weights_are_stored_once() -> None:
    one = _random_version_bytes(100, [500], 1)
    many = _random_version_bytes(100, [500], 32)
    assert one[WEIGHTS] > 100 * 500 * 4 * 2  # the weights are all there
    assert sum(many.values()) <= 1.2 * sum(one.values())
    assert sum(one.values()) - one[WEIGHTS] < 10_000  # every graph without weights of its own


def _write_random_run(run_dir: Path, data: Path, dims: int, hidden: list[int]) -> None:
    """A finished run as far as export is concerned: config, metrics, best weights."""
    cfg = TrainConfig(dataset=str(data), model=MADEConfig(dims=dims, hidden=hidden))
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG).write_text(json.dumps(cfg.to_dict()))
    (run_dir / METRICS).write_text(json.dumps({"test_nll": 1.0, "valid_nll": 1.0}))
    torch.manual_seed(0)
    save_tensors(run_dir / BEST, MADE(cfg.model).state_dict(), {"epoch": 1})


def test_a_failed_export_leaves_no_version_behind(tmp_path: Path) -> None:
    """The file size limit makes writing the ~400 kB weights.safetensors fail mid-export (EFBIG): the
    command fails cleanly, nothing is listed, no temporary directory stays, and the next export
    takes version 1 as if nothing had happened."""
    data = write_npz(tmp_path / "d100.npz", 100, n=60)
    run_dir = tmp_path / "run"
    _write_random_run(run_dir, data, 100, [500])
    store = tmp_path / "store"
    (store / "big").mkdir(parents=True)
    script = f'ulimit -f 64; trap "" XFSZ; exec "{MADE_BIN}" export "$1" --store "$2" --name big'
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(run_dir), str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("made export: error:")
    assert len(result.stderr.splitlines()) == 1
    assert list_versions(store, "big") == []
    assert list((store / "big").iterdir()) == []
    assert export_run(run_dir, store, "big") == store / "big" / "1"
    assert open_model(store, "big").n_masks == 1


def test_hidden_temporary_directories_are_not_versions(runs: dict[str, Path], tmp_path: Path) -> None:
    """A kill mid-export leaves `.V.xxxx.tmp/` (possibly complete inside): never listed or served."""
    store = tmp_path / "store"
    export_run(runs["plain"], store, "m")
    leftover = store / "m" / ".2.abcd.tmp"
    leftover.mkdir()
    for f in ("manifest.json", *BIT_FILES):
        (leftover / f).write_bytes((store / "m" / "1" / f).read_bytes())
    (store / ".hidden-name").mkdir()
    assert list_versions(store, "m") == ["1"]
    assert list_names(store) == ["m"]
    assert open_model(store, "m").version == "1"
    assert export_run(runs["plain"], store, "m") == store / "m" / "2"


def test_float16_weights_halve_the_file_and_are_the_exact_model_served(runs: dict[str, Path], tmp_path: Path) -> None:
    """`made export --weights float16`: the graph is the float32 network whose weight matrices are
    the float16-rounded ones; onnxruntime matches PyTorch with those weights to 1e-4 per row, for
    every mask, and the serving engine reads back exactly those weights."""
    from service.engine.engine import Engine
    from service.engine.network import load_network

    data = write_npz(tmp_path / "d100.npz", 100, n=60)
    big = tmp_path / "big-run"
    _write_random_run(big, data, 100, [300])
    full = export_run(big, tmp_path / "store", "full")
    half = export_run(big, tmp_path / "store", "half", weight_dtype="float16")
    ratio = (half / WEIGHTS).stat().st_size / (full / WEIGHTS).stat().st_size
    assert 0.45 < ratio < 0.55
    assert open_model(tmp_path / "store", "half").manifest.weight_dtype == "float16"
    assert open_model(tmp_path / "store", "full").manifest.weight_dtype == "float32"

    run_dir = runs["image"]  # K=4 order-agnostic masks, two hidden layers, direct connections
    version = export_run(run_dir, tmp_path / "store", "image", weight_dtype="float16")
    model = _model_of(run_dir)
    rounded = MADE(model.config)
    rounded.load_state_dict({k: v.half().float() if k.endswith("weight") else v for k, v in model.state_dict().items()})
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), rounded.parameters(), strict=True))
    session = _session(version / "model.onnx")
    engine = Engine(open_model(tmp_path / "store", "image"), providers_under_test(), threads=1)
    x = np.array(np.random.default_rng(3).random((300, 16)) < 0.5, dtype=np.uint8)
    for k, expected in enumerate(_assert_graph_matches(rounded, session, x)):
        # the serving engine (per-mask sessions with the mask folded in, float64 sampler) agrees
        engine_lp = engine.logprob(x.astype(np.float32), masks=k).logprob
        assert np.abs(engine_lp - expected).max() <= 1e-4, f"engine, mask {k}"
    u, ks = engine.noise(50, seed=1, mask=0)
    assert np.array_equal(engine.sample_from_noise(u, ks), engine.naive_sample(u, 0))
    net = load_network(open_model(tmp_path / "store", "image"))
    assert net.weights[0].dtype == np.float32
    assert np.array_equal(net.weights[1], rounded.layers[1].weight.detach().numpy().T)
    assert net.direct is not None and np.array_equal(net.direct, rounded.direct.weight.detach().numpy().T)


def test_an_unknown_weight_type_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="unknown weight type 'int8'"):
        export_run(runs["plain"], tmp_path / "store", "m", weight_dtype="int8")
    result = subprocess.run(
        [
            str(MADE_BIN),
            "export",
            str(runs["plain"]),
            "--store",
            str(tmp_path / "s"),
            "--name",
            "m",
            "--weights",
            "bf16",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "invalid choice: 'bf16'" in result.stderr


def _op_types(graph: bytes | onnx.ModelProto) -> list[str]:
    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else graph
    return [node.op_type for node in model.graph.node]


def test_tanh_models_export_tanh_graphs_that_match_pytorch_on_real_test_data(data_dir: Path, tmp_path: Path) -> None:
    """A tanh model's stored graph and the engine's dense graph both apply Tanh (and no Relu);
    the stored graph gives PyTorch's log p(x) on every real test row, for every mask."""
    tanh = dict(activation="tanh", n_masks=3, order_agnostic=True, connectivity_agnostic=True)
    runs = {
        "mushrooms": _train_real(data_dir, tmp_path, "mushrooms", dict(tanh, hidden=[64], init="orthogonal")),
        "dna": _train_real(data_dir, tmp_path, "dna", dict(tanh, hidden=[48, 48], direct=True), resample_masks=True),
    }
    for name, run_dir in runs.items():
        version = export_run(run_dir, tmp_path / "store", name)
        manifest = open_model(tmp_path / "store", name).manifest
        assert manifest.activation == "tanh"
        assert manifest.training is not None and manifest.training["model"]["activation"] == "tanh"
        n_hidden = len(manifest.hidden)
        for graph in ("model.onnx", DENSE_GRAPH, JACOBI_GRAPH, SCORES_GRAPH, SCORES_OBSERVED_GRAPH):
            ops = _op_types((version / graph).read_bytes())
            assert ops.count("Tanh") == n_hidden and "Relu" not in ops, graph
        _assert_graph_matches(
            _model_of(run_dir), _session(version / "model.onnx"), np.load(data_dir / f"{name}.npz")["test"]
        )
    # a ReLU model's graphs keep Relu, and no graph is built for an unknown nonlinearity
    assert "Tanh" not in _op_types(dense_graph(2, False)) and "Relu" in _op_types(dense_graph(2, False))
    with pytest.raises(ValueError, match="activation"):
        dense_graph(2, False, "sigmoid")


def _as_format_1(version_dir: Path) -> None:
    """Rewrite a format-2 version as made export wrote format 1: one model.onnx holding its
    weights (the stored graph with its initializers inline), the manifest listing it alone."""
    graph = onnx.load(str(version_dir / "model.onnx"))  # reads the external initializers
    raw = json.loads((version_dir / "manifest.json").read_text())
    for f in raw["files"]:
        (version_dir / f).unlink()
    onnx.save(graph, str(version_dir / "model.onnx"))
    raw["format_version"] = 1
    raw["files"] = {"model.onnx": hashlib.sha256((version_dir / "model.onnx").read_bytes()).hexdigest()}
    (version_dir / "manifest.json").write_text(json.dumps(raw))


def test_upgrade_rewrites_a_format_1_version_in_place_with_the_same_answers(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from service.engine.engine import Engine

    store = tmp_path / "store"
    export_run(runs["image"], store, "m", weight_dtype="float16")
    export_run(runs["plain"], store, "plain")
    engine = Engine(open_model(store, "m"), ["CPUExecutionProvider"], threads=1)
    x = (np.random.default_rng(5).random((40, 16)) < 0.5).astype(np.float32)
    x[::3, 4:9] = np.nan
    before = engine.logprob(x, seed=2, n_importance=50).logprob
    u, ks = engine.noise(30, seed=3)
    samples = engine.sample_from_noise(u, ks)
    weights = open_model(store, "m").weights()
    created = open_model(store, "m").manifest.created_at
    _as_format_1(store / "m" / "1")
    with pytest.raises(ModelStoreError, match=r"store format 1; rewrite it as format 2 with `made export --upgrade "):
        open_model(store, "m")

    result = subprocess.run(
        [str(MADE_BIN), "export", "--upgrade", str(store)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(store / "m" / "1")]  # the format-2 version 'plain' is left alone
    assert sorted(p.name for p in (store / "m").iterdir()) == ["1"]  # swapped in place, nothing left over
    upgraded = open_model(store, "m")
    assert upgraded.manifest.format_version == 2 and upgraded.manifest.created_at == created
    assert upgraded.manifest.weight_dtype == "float16" and sorted(upgraded.manifest.files) == sorted(BIT_FILES)
    assert all(
        np.array_equal(a, weights[name]) and a.dtype == weights[name].dtype for name, a in upgraded.weights().items()
    )
    engine = Engine(upgraded, ["CPUExecutionProvider"], threads=1)
    assert np.array_equal(engine.logprob(x, seed=2, n_importance=50).logprob, before)
    assert np.array_equal(engine.sample_from_noise(u, ks), samples)
    again = subprocess.run(
        [str(MADE_BIN), "export", "--upgrade", str(store / "m" / "1")], capture_output=True, text=True
    )
    assert again.returncode == 0 and again.stdout == ""  # already format 2: nothing to do


def test_upgrade_refuses_a_damaged_format_1_version_and_leaves_it(runs: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    export_run(runs["plain"], store, "m")
    _as_format_1(store / "m" / "1")
    graph = store / "m" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    result = subprocess.run(
        [str(MADE_BIN), "export", "--upgrade", str(store / "m" / "1")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert f"{graph} is missing or does not match its manifest checksum" in result.stderr
    assert json.loads((store / "m" / "1" / "manifest.json").read_text())["format_version"] == 1
    assert sorted(p.name for p in (store / "m" / "1").iterdir()) == ["manifest.json", "model.onnx"]


def test_a_folder_that_is_not_a_run_or_holds_another_runs_weights_is_one_line_exit_2(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """made export of a folder whose config.json is not a training run's, or whose
    best.safetensors is another run's (other widths, other masks, a tensor missing): one line
    naming the file and exit status 2, not a KeyError or torch's size mismatch traceback, and
    nothing written to the store."""
    import shutil

    from made.cli import main

    store = tmp_path / "store"
    cases: dict[str, tuple[str, str]] = {}
    other = tmp_path / "other"
    shutil.copytree(runs["plain"], other)
    (other / CONFIG).write_text(json.dumps({"architectures": ["Bert"], "hidden_size": 12}))
    cases["other"] = (CONFIG, "does not describe a made training run")
    listed = tmp_path / "listed"
    shutil.copytree(runs["plain"], listed)
    (listed / CONFIG).write_text("[]")
    cases["listed"] = (CONFIG, "does not describe a made training run")
    swapped = tmp_path / "swapped"
    shutil.copytree(runs["plain"], swapped)
    (swapped / BEST).write_bytes((runs["image"] / BEST).read_bytes())
    cases["swapped"] = (BEST, "does not hold the weights of the model")
    lacking = tmp_path / "lacking"
    shutil.copytree(runs["plain"], lacking)
    tensors, meta = load_tensors(runs["plain"] / BEST)
    del tensors["input_degrees"]
    save_tensors(lacking / BEST, tensors, meta)
    cases["lacking"] = (BEST, "does not hold the weights of the model")
    for folder, (file, problem) in cases.items():
        capsys.readouterr()
        assert main(["export", str(tmp_path / folder), "--store", str(store), "--name", "m"]) == 2, folder
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"made export: error: {tmp_path / folder / file} {problem}"), err
    assert list_versions(store, "m") == []
    assert export_run(runs["plain"], store, "m") == store / "m" / "1"


def test_two_exports_of_one_name_at_once_take_two_versions(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another export that takes the number this one picked while it writes (both saw version 1
    free) makes this one take the next number, not fail with 'pick another --version', an option
    never given; with --version given, the refusal stands."""
    import training.export as export_module
    from made.store import versions

    store = tmp_path / "store"
    real = versions.write_version
    raced = []

    def another_export_first(store_: Path, name: str, files: Any, fields: Any, version: Any = None, **kw: Any) -> Path:
        if not raced:  # the other export renames its version 1 into place just before this one
            raced.append(real(store_, name, files, fields, version, **kw))
        return real(store_, name, files, fields, version, **kw)

    monkeypatch.setattr(export_module, "write_version", another_export_first)
    assert export_run(runs["plain"], store, "m") == store / "m" / "2"
    assert raced == [store / "m" / "1"]
    assert list_versions(store, "m") == ["1", "2"]
    assert open_model(store, "m").manifest.version == "2"
    assert json.loads((store / "m" / "2" / REFERENCE).read_text())["version"] == "2"
    raced.clear()
    with pytest.raises(ModelStoreError, match="m/3 already exists; pick another --version"):
        export_run(runs["plain"], store, "m", version="3")
    assert list_versions(store, "m") == ["1", "2", "3"]
    assert not [p for p in (store / "m").iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_version_renamed_into_place_by_another_export_meanwhile_is_version_taken(tmp_path: Path) -> None:
    """The race inside write_version: the number was free when checked, taken at the rename."""
    from made.store import versions

    target = tmp_path / "m" / "1"
    target.mkdir(parents=True)
    (target / "manifest.json").write_text("{}")
    tmp = tmp_path / "m" / ".1.x.tmp"
    tmp.mkdir()
    (tmp / "f").write_text("x")
    with pytest.raises(versions.VersionTaken, match="already exists"):
        versions._publish(tmp, target)
    assert (target / "manifest.json").read_text() == "{}"
