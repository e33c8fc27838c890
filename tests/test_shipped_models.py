"""The default models committed in model_store/: intact, small enough to commit, of the promised
shape, as good as their manifest says on the real test set, and rebuilt by the Makefile command
that documents them (the same settings as the shipped model's training configuration)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from made.cli import build_parser, train_config
from made.core.schema import Schema
from made.store.versions import list_names, open_model
from service.engine.evaluate import evaluate_store_model
from service.engine.registry import PREFERRED_DEFAULT
from training.recipe import SMALL_TABLE, adapt_to_rows
from training.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model_store"
MAX_FILE_BYTES = 10 * 1000 * 1000
BMNIST_TARGET = 88.0  # mixture test NLL in nats promised for the default model


def _make_variables() -> dict[str, str]:
    variables = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Z_]+)\s*[:?]?=\s*(.*)$", line)
        if match:
            variables[match.group(1)] = match.group(2).strip()
    return variables


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Z_]+)\)", lambda m: _expand(variables[m.group(1)], variables), text)


def test_every_shipped_model_is_intact_and_each_file_under_10_mb() -> None:
    names = list_names(STORE)
    assert {PREFERRED_DEFAULT, "mushrooms", "diamonds", "health-insurance"} <= set(names)
    for name in names:
        model = open_model(STORE, name)  # verifies every file's sha256 against the manifest
        for f in model.path.iterdir():
            assert f.stat().st_size < MAX_FILE_BYTES, f"{f} is {f.stat().st_size} bytes"


def test_the_default_binarized_mnist_model_has_the_promised_shape() -> None:
    manifest = open_model(STORE, PREFERRED_DEFAULT).manifest
    assert manifest.dims == 784 and manifest.image_shape == [28, 28]
    assert len(manifest.hidden) == 2 and manifest.weight_dtype == "float16"
    assert manifest.n_masks >= 8 and len(manifest.orderings) == manifest.n_masks
    assert manifest.test_nll is not None and manifest.test_nll <= BMNIST_TARGET
    assert manifest.metrics.model_extra is not None
    assert len(manifest.metrics.model_extra["test_nll_per_mask"]) == manifest.n_masks


@pytest.mark.parametrize(
    ("name", "variable", "run_variable"),
    [
        (PREFERRED_DEFAULT, "BMNIST_ARGS", "BMNIST_RUN"),
        ("mushrooms", "MUSHROOMS_ARGS", None),
        ("diamonds", "TABLE_ARGS", None),
        ("health-insurance", "TABLE_ARGS", None),
    ],
)
def test_the_makefile_command_trains_what_was_shipped(name: str, variable: str, run_variable: str | None) -> None:
    """`make model-NAME` passes these arguments to `made train`: they describe exactly the
    training configuration recorded in the shipped manifest (data paths aside)."""
    variables = _make_variables()
    args = shlex.split(_expand(variables[variable], variables))
    manifest = open_model(STORE, name).manifest
    assert manifest.training is not None
    shipped = dict(manifest.training)
    parsed = build_parser().parse_args(["train", "--dataset", shipped["dataset"], "--out", "unused", *args])
    # bounds were added to the shipped table models after training (made export --bounds)
    trained = [{k: v for k, v in c.items() if k not in ("lower", "upper")} for c in manifest.columns or []]
    schema = Schema.from_json(trained) if manifest.columns is not None else None
    cfg = train_config(parsed, manifest.dims, schema)
    # every shipped data set has well over SMALL_TABLE training rows: the recipe keeps the defaults
    adapt_to_rows(cfg, SMALL_TABLE)
    expected = cfg.to_dict()
    for key in ("image_shape", "groups"):  # options added after a model shipped, left at their default
        if key not in shipped and expected.get(key) is None:
            expected.pop(key, None)
    # later options (activation, init, eps, rho, resample_masks), at their defaults where the
    # shipped model predates them: what resuming such a run reads them as (TrainConfig.from_dict)
    defaults = TrainConfig.from_dict({"dataset": "", "model": {"dims": 2}}).to_dict()
    for key in [k for k in expected if k not in shipped and expected[k] == defaults.get(k)]:
        expected.pop(key)
    if "columns" not in shipped["model"]:
        for key in [k for k in expected["model"] if k not in shipped["model"]]:
            if expected["model"][key] == defaults["model"].get(key):
                expected["model"].pop(key)
    for key in ("dataset", "rebinarize"):  # where the files were on the training machine
        assert (shipped.get(key) is None) == (expected.get(key) is None), key
        if shipped.get(key):
            assert Path(shipped[key]).name == Path(expected[key]).name, key
        shipped.pop(key, None)
        expected.pop(key, None)
    shipped.pop("extra", None)
    expected.pop("extra", None)
    assert shipped == expected
    if variable == "TABLE_ARGS":  # the table benches' copies of these settings say the same
        sys.path.insert(0, str(ROOT))
        try:
            from bench.common import TABLE_MODEL_ARGS
            from bench.tables import TABLE_ARGS
        finally:
            sys.path.remove(str(ROOT))
        assert args == [*TABLE_ARGS, "--seed", "0", "--threads", "1"]
        epochs = {i + k for i, a in enumerate(args) if a in ("--max-epochs", "--patience") for k in (0, 1)}
        assert [a for i, a in enumerate(args) if i not in epochs] == TABLE_MODEL_ARGS
    if run_variable is not None:  # the run directory the results table reads is the same one
        sys.path.insert(0, str(ROOT / "bench"))
        try:
            import results
        finally:
            sys.path.remove(str(ROOT / "bench"))
        run_name = Path(variables[run_variable]).name
        assert run_name in results.EXPERIMENTS
        table_args = [Path(a).name if a.endswith(".npz") else a for a in results.EXPERIMENTS[run_name][1]]
        make_args = [Path(a).name if a.endswith(".npz") else a for a in args]
        assert make_args == [*table_args, "--seed", "0"]


def test_shipped_binarized_mnist_scores_its_recorded_test_nll(data_dir: Path) -> None:
    """The exported graph (float16-stored weights, onnxruntime) on the 10,000 test images: the
    mixture NLL meets the target and agrees with the training run's float32 figure."""
    manifest = open_model(STORE, PREFERRED_DEFAULT).manifest
    result = evaluate_store_model(STORE, PREFERRED_DEFAULT, str(data_dir / "binarized_mnist.npz"))
    assert result["n"] == 10000
    assert result["nll"] <= BMNIST_TARGET
    assert manifest.test_nll is not None and abs(result["nll"] - manifest.test_nll) < 0.05


@pytest.mark.parametrize(("name", "table"), [("diamonds", "diamonds"), ("health-insurance", "health_insurance")])
def test_shipped_table_models_score_their_recorded_test_nll(data_dir: Path, name: str, table: str) -> None:
    """The exported table graph (onnxruntime, numpy heads) scores the real test rows as the
    training run (torch) did."""
    manifest = open_model(STORE, name).manifest
    result = evaluate_store_model(STORE, name, str(data_dir / "tables" / f"{table}_test.csv"))
    assert manifest.metrics.model_extra is not None and result["n"] == manifest.metrics.model_extra["test_n"]
    assert manifest.test_nll is not None and abs(result["nll"] - manifest.test_nll) < 1e-3
