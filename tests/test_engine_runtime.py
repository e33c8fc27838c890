"""onnxruntime providers, the engine's one session fed each mask's weights, and the engine under
concurrent calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from made.core.errors import ConfigError, ModelStoreError
from made.store.versions import open_model
from service.engine import engine as engine_module
from service.engine.engine import Engine
from service.engine.network import MaskWeights, Network
from service.engine.runtime import make_session, provider_options, requested_providers
from service.settings import Settings
from service.testing import providers_under_test


def test_the_cpu_alias_asks_for_the_cpu_provider() -> None:
    assert requested_providers(["cpu"]) == ["CPUExecutionProvider"]


def test_an_unknown_provider_name_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'quantum'.*cpu"):
        requested_providers(["quantum", "cpu"])


def test_made_providers_reaches_the_engines_through_settings(tiny_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.http.app import build_registry

    monkeypatch.setenv("MADE_PROVIDERS", "cpu")
    registry = build_registry(Settings(store=tiny_store))
    assert registry.providers == ["CPUExecutionProvider"]
    monkeypatch.setenv("MADE_PROVIDERS", "nonsense")  # refused by the settings themselves
    with pytest.raises(ValidationError, match="unknown provider 'nonsense'"):
        build_registry(Settings(store=tiny_store))


def test_the_cpu_provider_is_always_the_last_resort() -> None:
    providers = requested_providers(["cuda"])  # dropped with a warning where this build lacks it
    assert providers[-1] == "CPUExecutionProvider"
    assert set(providers) <= set(ort.get_available_providers())


def test_the_cuda_provider_is_asked_to_keep_float32_matmuls_out_of_tf32(
    tiny_engines: dict[str, Engine],
) -> None:
    """TF32 would move log p(x) by hundredths of a nat on a GPU; the engine turns it off. Here
    (no CUDA) the request still yields a working CPU session; on a GPU it must show the option."""
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    assert provider_options([cuda, cpu]) == [(cuda, {"use_tf32": "0"}), cpu]
    session = make_session(tiny_engines["tiny"].model.onnx_path, requested_providers(["cuda", "cpu"]))
    if session.get_providers()[0] == cuda:
        assert session.get_provider_options()[cuda]["use_tf32"] == "0"
    else:
        assert session.get_providers() == [cpu]
        x = np.zeros((2, tiny_engines["tiny"].model.dims), np.float32)
        assert session.run(["logits"], {"x": x, "mask_index": np.array(0, np.int64)})[0].shape == x.shape


def test_the_engine_reports_the_providers_onnxruntime_actually_runs(
    tiny_engines: dict[str, Engine],
) -> None:
    engine = tiny_engines["tiny"]
    assert engine.providers == engine.session.get_providers()
    assert engine.providers[0] == providers_under_test()[0]


def _stored_logits(engine: Engine, x: np.ndarray, k: int) -> np.ndarray:
    stored = make_session(engine.model.onnx_path, ["CPUExecutionProvider"], threads=1)
    out: np.ndarray = stored.run(["logits"], {"x": x, "mask_index": np.array(k, dtype=np.int64)})[0]
    return out


def test_each_masks_rearranged_weights_give_the_stored_graphs_logits(tiny_engines: dict[str, Engine]) -> None:
    """The engine runs one dense graph fed mask k's weights in k's ordering (network.MaskWeights);
    the graph as stored, mask_index an input, must give the same logits for every mask."""
    engine = tiny_engines["tiny"]
    x = np.random.default_rng(0).integers(0, 2, (64, 8)).astype(np.float32)
    for k in range(engine.n_masks):
        np.testing.assert_allclose(engine.logits(x, k), _stored_logits(engine, x, k), rtol=0, atol=1e-5)


def test_the_shipped_model_runs_its_stored_graphs_logits_on_every_mask() -> None:
    """The default model (D=784, two hidden layers, direct connections, float16 storage)."""
    store = Path(__file__).resolve().parent.parent / "model_store"
    engine = Engine(open_model(store, "binarized-mnist"), ["CPUExecutionProvider"], threads=1)
    x = (np.random.default_rng(1).random((16, engine.dims)) < 0.3).astype(np.float32)
    for k in range(engine.n_masks):
        np.testing.assert_allclose(engine.logits(x, k), _stored_logits(engine, x, k), rtol=0, atol=2e-4)


def test_a_model_whose_weights_disagree_with_its_graph_is_refused_at_load(
    tiny_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load-time check compares the engine's own pass with the stored graph on every mask:
    weights rearranged without the masks must not be served."""
    real = engine_module.mask_weights

    def unmasked(net: Network, k: int) -> MaskWeights:
        m = real(net, k)
        order = m.ordering
        first = np.ascontiguousarray(net.weights[0][order].T, dtype=np.float32)  # mask 0 forgotten
        perm = np.argsort(net.hidden_degrees[0][k], kind="stable")
        return replace(m, weights=[np.ascontiguousarray(first[perm]), *m.weights[1:]])

    monkeypatch.setattr(engine_module, "mask_weights", unmasked)
    with pytest.raises(ModelStoreError, match="other logits than the stored graph"):
        Engine(open_model(tiny_store, "tiny"), ["CPUExecutionProvider"], threads=1)


def test_a_store_model_loads_with_the_providers_asked_for(tiny_store: Path) -> None:
    engine = Engine(open_model(tiny_store, "tiny1"), requested_providers(["cpu"]), threads=1)
    assert engine.providers == ["CPUExecutionProvider"]


def test_sessions_do_not_spin_waiting_for_work(tiny_engines: dict[str, Engine]) -> None:
    """Spinning intra-op threads take the cores the sampler and the HTTP loop need (runtime.py)."""
    options = next(iter(tiny_engines.values())).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_concurrent_calls_give_the_same_results_as_sequential_calls(
    tiny_engines: dict[str, Engine],
) -> None:
    engine = tiny_engines["tiny"]
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 2, (int(rng.integers(1, 300)), 8)).astype(np.float64) for _ in range(160)]
    missing = batches[0].copy()
    missing[:, [0, 3]] = np.nan

    def call(i: int) -> np.ndarray:
        match i % 5:
            case 0:
                return engine.logprob(batches[i]).logprob
            case 1:
                return engine.sample(int(len(batches[i])), seed=i).astype(np.float64)
            case 2:
                return engine.logprob(batches[i], masks=i % 4).logprob
            case 3:
                return engine.conditionals(batches[i], mask=i % 4)
            case _:
                return engine.logprob(missing, seed=i, n_importance=20).logprob

    sequential = [call(i) for i in range(160)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(call, range(160)))  # 8 threads x 20 calls
    for i, (a, b) in enumerate(zip(sequential, concurrent, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {i}")
