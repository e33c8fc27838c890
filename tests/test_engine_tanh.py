"""Models with tanh hidden units (the official MADE code's ADULT setting) through the engine:
the manifest's activation reaches every computation of hidden units (the dense onnxruntime graph
and the numpy stepping sampler), so log p(x) equals PyTorch's, the conditionals are
autoregressive, the fast sampler equals the naive one and samples the model's distribution, and
a manifest that misstates the activation is refused at load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import enumerate_joint, write_npz, write_random_model
from test_engine_sampling import assert_fast_equals_naive, chi_square_pvalue

from made.core.errors import ModelStoreError
from made.store.versions import open_model
from service.engine.engine import Engine
from training.checkpoint import BEST, load_tensors
from training.export import export_run
from training.model import MADE, MADEConfig
from training.train import TrainConfig, Trainer


def _train_tanh(run_dir: Path, data: Path, hidden: list[int], masks: int, **settings: object) -> MADE:
    dims = int(np.load(data)["train"].shape[1])
    config = MADEConfig(
        dims=dims,
        hidden=hidden,
        n_masks=masks,
        order_agnostic=masks > 1,
        connectivity_agnostic=masks > 1,
        direct=True,
        activation="tanh",
        init="orthogonal",
        mask_seed=3,
    )
    cfg = TrainConfig(dataset=str(data), model=config, max_epochs=12, batch_size=50, lr=1e-2, patience=12, **settings)  # type: ignore[arg-type]
    Trainer(cfg, run_dir).run(progress=False)
    model = MADE(config)
    model.load_state_dict(load_tensors(run_dir / BEST)[0])
    return model.eval()


@pytest.fixture(scope="module")
def tanh_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[MADE, Engine]]:
    """'tanh8': D=8, one hidden layer, K=3 agnostic masks, trained with a new mask per update;
    'tanh10': D=10, two hidden layers, K=2; both tanh, orthogonal, direct; exported and loaded."""
    base = tmp_path_factory.mktemp("tanh")
    store = base / "store"
    out = {}
    for name, dims, hidden, masks, settings in (
        ("tanh8", 8, [24], 3, {"resample_masks": True}),
        ("tanh10", 10, [20, 20], 2, {}),
    ):
        data = write_npz(base / f"{name}.npz", dims, seed=dims)
        model = _train_tanh(base / f"run-{name}", data, hidden, masks, **settings)
        export_run(base / f"run-{name}", store, name)
        out[name] = (model, Engine(open_model(store, name), ["CPUExecutionProvider"], threads=1))
    return out


@pytest.mark.parametrize("name", ["tanh8", "tanh10"])
def test_a_tanh_model_loads_and_scores_as_pytorch_does(name: str, tanh_models: dict) -> None:
    model, engine = tanh_models[name]
    assert engine.model.activation == "tanh" and engine.sampler.activation == "tanh"
    x = (np.random.default_rng(0).random((500, engine.dims)) < 0.5).astype(np.float64)
    with torch.no_grad():
        xt = torch.from_numpy(x).float()
        mixture = model.mixture_log_prob(xt).double().numpy()
        per_mask = [model.log_prob(xt, k).double().numpy() for k in range(engine.n_masks)]
    np.testing.assert_allclose(engine.logprob(x).logprob, mixture, rtol=0, atol=1e-4)
    for k in range(engine.n_masks):
        np.testing.assert_allclose(engine.logprob(x, masks=k).logprob, per_mask[k], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["tanh8", "tanh10"])
def test_a_tanh_models_conditionals_are_autoregressive(name: str, tanh_models: dict) -> None:
    _, engine = tanh_models[name]
    rng = np.random.default_rng(1)
    x = (rng.random((64, engine.dims)) < 0.5).astype(np.float64)
    for k, order in enumerate(engine.orderings):
        base = engine.conditionals(x, k)
        moved = 0
        for position, d in enumerate(order):
            x2 = x.copy()
            later = order[position:]  # d itself and every dimension after it
            x2[:, later] = rng.random((len(x), len(later))) < 0.5
            out = engine.conditionals(x2, k)
            np.testing.assert_array_equal(out[:, d], base[:, d])
            moved += int(not np.array_equal(out[:, order[position + 1 :]], base[:, order[position + 1 :]]))
        assert moved >= len(order) // 2  # the outputs after them do move: not vacuous


@pytest.mark.parametrize("name", ["tanh8", "tanh10"])
def test_a_tanh_models_fast_samples_equal_its_naive_samples(name: str, tanh_models: dict) -> None:
    _, engine = tanh_models[name]
    for k in range(engine.n_masks):
        assert_fast_equals_naive(engine, k, np.random.default_rng(k).random((2000, engine.dims)))


def test_a_tanh_models_samples_follow_its_distribution(tanh_models: dict) -> None:
    _, engine = tanh_models["tanh8"]
    _, logp = enumerate_joint(engine.model)
    samples = engine.sample(20000, seed=4)
    assert chi_square_pvalue(samples, np.exp(logp).mean(axis=0)) > 1e-3
    one = engine.sample(20000, seed=5, mask=1)
    assert chi_square_pvalue(one, np.exp(logp[1])) > 1e-3
    assert chi_square_pvalue(one, np.exp(logp[0])) < 1e-6  # the test has power


def test_fast_samples_equal_naive_samples_of_a_larger_tanh_network(tmp_path: Path) -> None:
    """Random weights (no training), D=120, two layers of 80, direct, K=3 each with its own
    ordering: alone and stepping together in one loop."""
    store = write_random_model(
        tmp_path, "wide", 120, [80, 80], 3, order_agnostic=True, direct=True, seed=2, activation="tanh"
    )
    engine = Engine(open_model(store, "wide"), ["CPUExecutionProvider"], threads=1)
    assert engine.model.activation == "tanh"
    u = np.random.default_rng(0).random((300, engine.dims))
    masks = np.random.default_rng(1).integers(0, 3, len(u))
    mixed, _, mixed_p = engine.sampler.run_masks(masks, u, return_probs=True)
    assert mixed_p is not None
    assert ((mixed_p > 0.05) & (mixed_p < 0.95)).mean() > 0.3  # draws that could go either way
    for k in range(3):
        rows = masks == k
        naive = engine.naive_sample(u[rows], k)
        assert_fast_equals_naive(engine, k, u[rows], naive=naive)
        assert_fast_equals_naive(engine, k, u[rows], (mixed[rows], mixed_p[rows]), naive=naive)


@pytest.mark.parametrize(("graph", "claimed"), [("tanh", "relu"), ("relu", "tanh")])
def test_a_manifest_that_misstates_the_activation_is_refused_at_load(graph: str, claimed: str, tmp_path: Path) -> None:
    """The engine computes hidden units with the manifest's activation: when that is not the
    stored graph's, its load-time parity check against the stored graph refuses the model."""
    store = write_random_model(tmp_path, "m", 12, [16], 2, order_agnostic=True, direct=False, activation=graph)
    Engine(open_model(store, "m"), ["CPUExecutionProvider"], threads=1)  # as written: loads
    path = store / "m" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["activation"] = claimed
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="other logits than the stored graph"):
        Engine(open_model(store, "m"), ["CPUExecutionProvider"], threads=1)
