"""Plain functions that many test files share (fixtures live in conftest.py).

- `post`, `post_ok`: a JSON request to an in-process app, its status and JSON answer;
  `reload_result`: an entry of /admin/reload's answer.
- `store_of`, `cpu_registry`: a store of copied model directories, loaded on the CPU;
  `app_fixtures`: a module's `registry` and `made` fixtures over one of the stores in conftest.
- `MANIFEST_FIELDS`: the fields every manifest must hold, written down here apart from the store's
  own list, so that a field dropped from it fails a test.
- `json_lines`: the JSON records of a log (a server's log file, a stream, a string).
- `metric`, `metric_samples`: Prometheus text read by prometheus_client's own parser, so that a
  check compares a sample's value under exactly its labels, not a substring of the page.
- `made_train_args`, `run_made`, `run_made_calls`: the real `made` command; `checkpoint_epoch`,
  `retrain_in_one_thread`, `assert_same_tensors`: a training run's files.
- `likely_rows`: rows an engine finds likely, ready to blank out; `TinyModel`: a tiny model's
  engine and its joint by enumeration (conftest's `tiny_model` fixture).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from safetensors import safe_open

if TYPE_CHECKING:
    from made.core.schema import Schema
    from service.engine import ModelRegistry
    from service.engine.engine import Engine
    from service.testing import InProcessClient
    from training.table_model import TableMADE

MADE_BIN = Path(sys.executable).with_name("made")  # the console script of this environment

# --- HTTP -----------------------------------------------------------------------------------------


async def post(made: InProcessClient, path: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    """POST `body` as JSON (further httpx arguments in `kw`): the status and the JSON answer."""
    r = await made.http.post(path, json=body, **kw)
    answer: dict[str, Any] = r.json()
    return r.status_code, answer


async def post_ok(made: InProcessClient, path: str, body: Any, **kw: Any) -> dict[str, Any]:
    """The JSON answer of a POST that must succeed (the test fails with the body of any other status)."""
    r = await made.http.post(path, json=body, **kw)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def reload_result(
    name: str,
    version: str,
    status: str,
    *,
    reason: str | None = None,
    previous: str | None = None,
    cached: bool = False,
) -> dict[str, Any]:
    """One entry of POST /admin/reload's `results`, every field of it."""
    return {
        "name": name,
        "version": version,
        "status": status,
        "reason": reason,
        "previous": previous,
        "cached": cached,
    }


# --- stores and registries ------------------------------------------------------------------------


def store_of(dest: Path, *models: Path) -> Path:
    """A store at dest holding copies of these model directories (STORE/NAME, all its versions)."""
    for model in models:
        shutil.copytree(model, dest / model.name)
    return dest


def cpu_registry(store: Path, default_model: str | None = None) -> ModelRegistry:
    """The store loaded on the CPU with one thread, as the service tests share it."""
    from service.engine import ModelRegistry

    reg = ModelRegistry(store, default_model=default_model, providers=["CPUExecutionProvider"], threads=1)
    reg.load()
    return reg


def app_fixtures(store: str, default_model: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A test module's two fixtures over the store fixture named `store`, as
    `registry, made = app_fixtures("tiny_store", "tiny")`: `registry`, the store loaded on the CPU
    once a module, and `made`, a client of a fresh in-process app over it for each test, with
    `default_model` the default of both."""

    @pytest.fixture(scope="module", name="registry")
    def registry_fixture(request: pytest.FixtureRequest) -> ModelRegistry:
        return cpu_registry(request.getfixturevalue(store), default_model)

    @pytest.fixture(name="made")
    async def made_fixture(request: pytest.FixtureRequest, registry: ModelRegistry) -> AsyncIterator[InProcessClient]:
        from service.settings import Settings
        from service.testing import in_process

        settings = Settings(store=request.getfixturevalue(store), default_model=default_model)
        async with in_process(settings, registry) as client:
            yield client

    return registry_fixture, made_fixture


# The fields every version's manifest.json holds (made.store.manifest.REQUIRED must name them all).
MANIFEST_FIELDS = frozenset(
    ("format_version", "name", "version", "created_at")  # which version it is
    + ("dims", "hidden", "n_masks", "orderings")  # its network
    + ("files", "dataset", "metrics")  # what it holds, what it learned from, how well
)


# --- logs -----------------------------------------------------------------------------------------


def json_lines(log: str | Path | io.StringIO, *, every: bool = False) -> list[dict[str, Any]]:
    """The JSON records of a log, one a line, in order. Lines that do not start with '{' (a
    library that writes before logging is configured) are passed over, unless `every`: then each
    line must be a JSON record, and the test fails naming the first that is not."""
    if isinstance(log, Path):
        text = log.read_text(errors="replace")
    elif isinstance(log, io.StringIO):
        text = log.getvalue()
    else:
        text = log
    lines = text.splitlines()
    if every:
        plain = [line for line in lines if not line.startswith("{")]
        assert not plain, f"a log line is not JSON: {plain[0]!r}"
    return [json.loads(line) for line in lines if line.startswith("{")]


# --- metrics --------------------------------------------------------------------------------------


def metric_samples(text: str, name: str) -> list[Sample]:
    """Every sample called `name` (e.g. made_requests_total, made_request_rows_sum) in Prometheus
    text, whatever its labels."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels are exactly `labels` in Prometheus text; None
    where there is no such sample (so that `assert metric(...) == 1.0` says what it found)."""
    found = [s.value for s in metric_samples(text, name) if s.labels == labels]
    assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
    return found[0] if found else None


# --- the `made` command ---------------------------------------------------------------------------


# `made train` options of a scripted run: no early stop, small batches, one thread, no progress bar.
STEADY_RUN: dict[str, object] = {"patience": 100, "batch_size": 50, "lr": 0.005, "threads": 1, "no_progress": True}


def made_train_args(data: Path, out: Path, **options: object) -> list[str]:
    """Arguments of `made train --dataset DATA ... --out OUT`: each option as --its-name VALUE
    (underscores as dashes), a True one as a bare flag."""
    args = ["train", "--dataset", str(data)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return [*args, "--out", str(out)]


def made_env(**extra: str) -> dict[str, str]:
    """This environment for a `made` child: one OpenMP thread (a shared 2-core machine), plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run_made(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 180, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """`made ARGS...` run to its end, its output captured as text (`kw`: e.g. cwd)."""
    return subprocess.run(
        [str(MADE_BIN), *args],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else made_env(),
        timeout=timeout,
        **kw,
    )


def run_made_calls(
    calls: Mapping[str, list[str]], env: Mapping[str, str], cwd: Path | None = None
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every `made` call at once (each pays for starting Python, some for importing torch), by name."""
    procs = {
        name: subprocess.Popen(
            [str(MADE_BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env), cwd=cwd
        )
        for name, args in calls.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def retrain_in_one_thread(run_dir: Path, reference: Path) -> Any:
    """The run recorded in run_dir's config.json trained afresh, uninterrupted, into `reference`
    in this process on one thread (as `--threads 1`: the same kernels sum in the same order, so
    the result is bit for bit the command's); returns its TrainConfig."""
    import torch

    from training.train import CONFIG, TrainConfig, Trainer

    cfg = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, reference).run(progress=False)
    finally:
        torch.set_num_threads(threads)
    return cfg


def assert_same_tensors(a: Path, b: Path) -> None:
    """Two safetensors files of a run hold the same names and bit-identical tensors."""
    import torch

    from training.checkpoint import load_tensors

    ta, tb = load_tensors(a)[0], load_tensors(b)[0]
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def checkpoint_epoch(path: Path) -> int:
    """The epoch a training checkpoint file holds; 0 where there is none (yet) or it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (FileNotFoundError, OSError):
        return 0
    return int(json.loads(meta["progress"])["epoch"])


# --- engines --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModel:
    """A tiny model's engine beside its joint by enumeration: x_all, every binary vector (2^D, D),
    row i being i in binary with dimension 0 first, and logp, log p_k of each under every mask
    (K, 2^D), from a bare onnxruntime session of the stored graph in float64."""

    engine: Engine
    x_all: np.ndarray
    logp: np.ndarray


def likely_rows(engine: Engine, n: int, seed: int) -> np.ndarray:
    """Rows the model finds likely (its own samples), as float64 ready to blank out."""
    return engine.sample(n, seed=seed).astype(np.float64)


# --- a table model's torch network -----------------------------------------------------------------


def random_table_made(schema: Schema, masks: int = 4, direct: bool = True, seed: int = 0) -> TableMADE:
    """A TableMADE of `schema` (hidden [16, 12], order- and connectivity-agnostic) with large
    random weights (normal, sd 0.7): a model far from uniform, so that errors show; in eval mode."""
    import torch

    from training.table_model import TableMADE, TableMADEConfig

    torch.manual_seed(seed)
    cfg = TableMADEConfig(
        columns=schema.to_json(),
        hidden=[16, 12],
        n_masks=masks,
        order_agnostic=True,
        connectivity_agnostic=True,
        direct=direct,
        mask_seed=seed,
    )
    model = TableMADE(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.7)
    return model.eval()


def write_csv_file(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    """Rows (and a header) as a CSV file, written by the csv module."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv_file(path: Path) -> list[list[str]]:
    """A CSV file's rows (the header among them), read by the csv module."""
    with open(path, newline="") as fh:
        return list(csv.reader(fh))
