"""Shared fixtures: the real data directory (skipped where absent) and tiny trained models.

Tiny models are trained here, in the test session, on a small correlated binary data set
(seeded), then exported to a temporary store: real training, real ONNX, real onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from helpers import TinyModel, cpu_registry, store_of

if TYPE_CHECKING:
    from service.engine import ModelRegistry

pytest_plugins = ["browser"]  # the playground in a real browser: tests/browser.py

# Small models on a shared 2-core machine: one thread avoids spin-waiting against other work.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "model_store"  # the models the repository ships
DATA_DIR = Path(os.environ.get("MADE_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "mushrooms.npz").exists():
        pytest.skip(f"real data sets not found in {DATA_DIR} (../shared/data is absent on this machine)")
    return DATA_DIR


def correlated_binary(n: int, dims: int, seed: int) -> np.ndarray:
    """A small binary distribution with real dependencies: a noisy Markov chain over dimensions."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dims), dtype=np.uint8)
    x[:, 0] = rng.random(n) < 0.6
    for d in range(1, dims):
        flip = rng.random(n) < (0.15 + 0.05 * (d % 3))
        x[:, d] = np.where(flip, 1 - x[:, d - 1], x[:, d - 1])
    return x


def write_npz(path: Path, dims: int, seed: int = 0, n: int = 600) -> Path:
    x = correlated_binary(n, dims, seed)
    np.savez(path, train=x[: n * 2 // 3], valid=x[n * 2 // 3 : n * 5 // 6], test=x[n * 5 // 6 :])
    return path


def train_tiny(run_dir: Path, data: Path, *, masks: int = 1, epochs: int = 15, seed: int = 0, **model: Any) -> Path:
    """A MADE trained on `data` into run_dir: `masks` masks drawn with `seed`, `model` the rest of
    its MADEConfig (hidden, order_agnostic, connectivity_agnostic, direct)."""
    from training.model import MADEConfig
    from training.train import TrainConfig, Trainer

    dims = int(np.load(data)["train"].shape[1])
    cfg = TrainConfig(
        dataset=str(data),
        model=MADEConfig(dims=dims, n_masks=masks, mask_seed=seed, **model),
        seed=seed,
        max_epochs=epochs,
        batch_size=50,
        lr=1e-2,
        patience=epochs,
    )
    Trainer(cfg, run_dir).run(progress=False)
    return run_dir


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with 'tiny' (D=8, K=4 order- and connectivity-agnostic, direct connections),
    'tiny1' (D=8, one natural-order mask) and 'tiny10' (D=10, K=3)."""
    from training.export import export_run

    base = tmp_path_factory.mktemp("tiny")
    store = base / "store"
    d8 = write_npz(base / "d8.npz", 8, seed=1)
    d10 = write_npz(base / "d10.npz", 10, seed=2)
    export_run(
        train_tiny(
            base / "run-tiny",
            d8,
            hidden=[24, 24],
            masks=4,
            order_agnostic=True,
            connectivity_agnostic=True,
            direct=True,
        ),
        store,
        "tiny",
    )
    export_run(train_tiny(base / "run-tiny1", d8, hidden=[16]), store, "tiny1")
    export_run(
        train_tiny(base / "run-tiny10", d10, hidden=[32], masks=3, order_agnostic=True, connectivity_agnostic=True),
        store,
        "tiny10",
    )
    return store


# --- engine fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_engines(tiny_store: Path) -> dict:
    """An Engine (one thread, on service.testing.providers_under_test(): the CPU unless
    MADE_TEST_PROVIDERS says otherwise) for each tiny model, keyed by name."""
    from made.store.versions import open_model
    from service.engine.engine import Engine
    from service.testing import providers_under_test

    providers = providers_under_test()
    engines = {name: Engine(open_model(tiny_store, name), providers, threads=1) for name in ("tiny", "tiny1", "tiny10")}
    for engine in engines.values():  # onnxruntime falls back to the CPU silently: not here
        assert engine.providers[0] == providers[0], engine.providers
    return engines


@pytest.fixture
def tiny_model(request: pytest.FixtureRequest, tiny_engines: dict, tiny_joint: dict) -> TinyModel:
    """The tiny model a test names by indirect parametrization, its engine beside its joint:
    `@pytest.mark.parametrize("tiny_model", ["tiny", "tiny10"], indirect=True)`."""
    name = request.param
    return TinyModel(tiny_engines[name], *tiny_joint[name])


def all_binary_vectors(dims: int) -> np.ndarray:
    """(2^D, D) float64, every binary vector; row i is i written in binary, dimension 0 first."""
    bits = (np.arange(2**dims)[:, None] >> np.arange(dims - 1, -1, -1)[None, :]) & 1
    return bits.astype(np.float64)


@pytest.fixture(scope="session")
def tiny_joint(tiny_store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each tiny model: every binary vector (2^D, D) and log p_k of each under every mask
    (K, 2^D), from a bare onnxruntime session of the stored graph, in float64: the reference
    that the engine's answers are checked against by enumeration."""
    from made.store.versions import open_model

    return {name: enumerate_joint(open_model(tiny_store, name)) for name in ("tiny", "tiny1", "tiny10")}


def enumerate_joint(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every binary vector (2^D, D) of a StoredModel and log p_k of each under every mask
    (K, 2^D), from a bare onnxruntime session of its stored graph, in float64."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    x = all_binary_vectors(model.dims)
    logp = np.empty((model.n_masks, len(x)))
    for k in range(model.n_masks):
        z = session.run(["logits"], {"x": x.astype(np.float32), "mask_index": np.array(k, dtype=np.int64)})[0]
        z = z.astype(np.float64)
        logp[k] = -np.logaddexp(0.0, np.where(x > 0.5, -z, z)).sum(axis=1)
    return x, logp


def write_random_model(
    store: Path,
    name: str,
    dims: int,
    hidden: list[int],
    n_masks: int,
    *,
    order_agnostic: bool,
    direct: bool,
    seed: int = 0,
    activation: str = "relu",
) -> Path:
    """A MADE with random weights (no training) in `store`, as `made export` writes it: enough
    for exactness checks at real size."""
    from training.export import export_random_model

    return export_random_model(
        store,
        name,
        dims,
        hidden,
        n_masks,
        order_agnostic=order_agnostic,
        direct=direct,
        seed=seed,
        activation=activation,
    )


@pytest.fixture(scope="session")
def random784_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'random784': D=784, hidden [500, 500], K=2 (mask 1 with a random ordering), direct
    connections, random weights: the size of the binarized-MNIST default model."""
    return write_random_model(
        tmp_path_factory.mktemp("random784") / "store",
        "random784",
        784,
        [500, 500],
        2,
        order_agnostic=True,
        direct=True,
    )


@pytest.fixture(scope="session")
def diamonds_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of a copy of the shipped 'diamonds' table model alone (read, never changed)."""
    return store_of(tmp_path_factory.mktemp("diamonds") / "store", SHIPPED / "diamonds")


# --- table models ---------------------------------------------------------------------------------


def write_splits(folder: Path, name: str, header: list[str], rows: list[list[str]]) -> Path:
    n = len(rows)
    cuts = {"train": rows[: n * 7 // 10], "valid": rows[n * 7 // 10 : n * 85 // 100], "test": rows[n * 85 // 100 :]}
    for split, part in cuts.items():
        text = ",".join(header) + "\n" + "\n".join(",".join(r) for r in part) + "\n"
        (folder / f"{name}_{split}.csv").write_text(text)
    return folder / f"{name}_train.csv"


def categorical_rows(n: int, seed: int) -> list[list[str]]:
    """Four dependent categorical columns: a -> b -> c, (a, c) -> d; d is empty ("NA") sometimes."""
    rng = np.random.default_rng(seed)
    a = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    b = (rng.random(n) < np.array([0.2, 0.7, 0.9])[a]).astype(int)
    c = (a + 2 * b + rng.choice(3, n, p=[0.7, 0.2, 0.1])) % 4
    d = np.where(rng.random(n) < 0.15, -1, (a + c) % 2)
    names_a, names_c, names_d = ["red", "green", "blue"], ["p", "q", "r", "s"], ["u", "v"]
    return [
        [names_a[i], ["no", "yes"][j], names_c[k], "" if m < 0 else names_d[m]]
        for i, j, k, m in zip(a, b, c, d, strict=True)
    ]


def mixed_rows(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, n)
    size = np.round(np.exp(rng.normal(1.0 + 0.5 * kind, 0.4)), 2)
    score = np.round(10 * kind + rng.normal(0, 3, n), 1)
    budget = np.where(rng.random(n) < 0.3, -1.0, np.round(size * 1000 + rng.normal(0, 50, n)))
    return [
        [["x", "y", "z"][k], f"{s:.2f}", f"{t:.1f}", "NA" if b < 0 else str(int(b))]
        for k, s, t, b in zip(kind, size, score, budget, strict=True)
    ]


@pytest.fixture(scope="session")
def table_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'cats' (4 categorical columns, K=3) and 'mixed' (a category, two numbers, a nullable number;
    K=2), trained on the CSV tables above and exported like `made export` does."""
    from made.io.tables import load_table_dataset
    from training.export import export_run
    from training.table_model import TableMADEConfig
    from training.train import TrainConfig, Trainer

    base = tmp_path_factory.mktemp("tables")
    store = base / "store"
    cats = write_splits(base, "cats", ["a", "b", "c", "d"], categorical_rows(3000, 0))
    mixed = write_splits(base, "mixed", ["kind", "size", "score", "budget"], mixed_rows(3000, 1))
    for name, path, masks in (("cats", cats, 3), ("mixed", mixed, 2)):
        data = load_table_dataset(str(path))
        cfg = TrainConfig(
            dataset=str(path),
            model=TableMADEConfig(
                columns=data.schema.to_json(),
                hidden=[32],
                n_masks=masks,
                order_agnostic=True,
                connectivity_agnostic=True,
                direct=True,
            ),
            max_epochs=12,
            batch_size=50,
            lr=1e-2,
            patience=12,
        )
        Trainer(cfg, base / f"run-{name}", data).run(progress=False)
        export_run(base / f"run-{name}", store, name)
    return store


@pytest.fixture(scope="module")
def both_store(tmp_path_factory: pytest.TempPathFactory, table_store: Path, tiny_store: Path) -> Path:
    """The table models beside a model of bits ('tiny'): a module's own copy, free to change."""
    return store_of(tmp_path_factory.mktemp("both") / "store", *table_store.iterdir(), tiny_store / "tiny")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Async tests run on asyncio (module-wide, like anyio's own default)."""
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tiny_store: Path) -> ModelRegistry:
    """The tiny store loaded on the CPU, shared by one module's apps (a module may define its own)."""
    return cpu_registry(tiny_store)
