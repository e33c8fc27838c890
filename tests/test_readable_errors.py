"""Errors a person can read (issue 26, item 8): a resumed run with another config names the keys
that differ, `given` errors name given.COLUMN, and a 413 suggests what fits the body's type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_npz
from helpers import app_fixtures, post

from made.core.errors import CheckpointError
from service.engine import ModelRegistry
from service.settings import Settings
from service.testing import InProcessClient, in_process

registry, made = app_fixtures("both_store", "cats")


def _config(data: Path, hidden: list[int], **train: object) -> object:
    from training.model import MADEConfig
    from training.train import TrainConfig

    return TrainConfig(
        dataset=str(data),
        model=MADEConfig(dims=8, hidden=hidden),
        max_epochs=1,
        batch_size=50,
        **train,  # type: ignore[arg-type]
    )


def test_resume_with_another_hidden_names_only_the_keys_that_differ(tmp_path: Path) -> None:
    from training.train import Trainer

    data = write_npz(tmp_path / "bits.npz", dims=8)
    Trainer(_config(data, [500]), tmp_path / "run").prepare_run_dir()  # type: ignore[arg-type]
    with pytest.raises(CheckpointError) as info:
        Trainer(_config(data, [256, 256], lr=0.5), tmp_path / "run").prepare_run_dir()  # type: ignore[arg-type]
    message = str(info.value)
    assert "hidden: [500] in the run, [256, 256] asked" in message
    assert "lr: " in message and "0.5 asked" in message
    assert "another --out" in message
    assert "dims" not in message and "activation" not in message  # what is the same is not shown
    assert len(message) < 400


def test_config_differences_walk_into_lists_of_objects_and_stop_at_a_limit() -> None:
    from training.resume import config_differences

    stored = {"columns": [{"name": "a", "levels": ["x", "y"]}, {"name": "b"}], "seed": 1}
    mine = {"columns": [{"name": "a", "levels": ["x", "z"]}, {"name": "b"}], "seed": 1}
    assert config_differences(stored, mine) == ['columns[0].levels: ["x", "y"] in the run, ["x", "z"] asked']
    many = config_differences({f"k{i}": i for i in range(20)}, {f"k{i}": -i - 1 for i in range(20)}, limit=3)
    assert len(many) == 4 and many[-1] == "and 17 more"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("given", "detail", "loc"),
    [
        ({"a": "purple"}, "given.a: 'purple' is not a level of this column", ["body", "given", "a"]),
        ({"zz": "red"}, "given has no column 'zz'; the columns are a, b, c, d", ["body", "given", "zz"]),
    ],
)
async def test_given_errors_name_given_dot_column(made: InProcessClient, given: dict, detail: str, loc: list) -> None:
    got, answer = await post(made, "/sample", {"n": 2, "given": given})
    assert got == 422 and answer["detail"].startswith(detail), answer
    assert "given[0]" not in answer["detail"] and answer["errors"][0]["loc"] == loc


@pytest.mark.anyio
async def test_413_hint_fits_the_body_type(both_store: Path, registry: ModelRegistry) -> None:
    settings = Settings(store=both_store, default_model="cats", max_body_bytes=1024)
    async with in_process(settings, registry) as client:
        csv = ("a,b,c,d\n" + "red,yes,q,u\n" * 200).encode()
        r = await client.http.post("/logprob", content=csv, headers={"Content-Type": "text/csv"})
        assert r.status_code == 413
        detail = r.json()["detail"]
        assert "over 1024 bytes (MADE_MAX_BODY_BYTES)" in detail
        assert "split the CSV into smaller files" in detail and "raise MADE_MAX_BODY_BYTES" in detail
        assert "x_b64" not in detail
        body = json.dumps({"model": "tiny", "x": [[0, 1, 1, 0, 1, 0, 0, 1]] * 100}).encode()
        r = await client.http.post("/logprob", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        detail = r.json()["detail"]
        assert "x_b64" in detail and "smaller batches" in detail and "CSV" not in detail


def test_a_record_naming_no_column_of_a_wide_model_is_answered_in_one_short_sentence() -> None:
    """A model of 784 bits: the 422 says how many columns there are and where to find them, instead
    of listing every one; a table model still lists its columns."""
    store = Path(__file__).resolve().parent.parent / "model_store"

    async def ask() -> tuple[int, dict[str, object], int, dict[str, object]]:
        async with in_process(Settings(store=store)) as client:
            await client.wait_ready()
            bits = await client.http.post("/logprob", json={"model": "binarized-mnist", "records": [{"zz": 1}]})
            table = await client.http.post("/logprob", json={"model": "diamonds", "records": [{"zz": 1}]})
            return bits.status_code, bits.json(), table.status_code, table.json()

    import anyio

    status, body, table_status, table_body = anyio.run(ask)
    detail = str(body["detail"])
    assert status == 422 and "has no column 'zz'" in detail
    assert "784 columns (x0, x1, x2, ..., x783; GET /models/NAME lists them)" in detail and len(detail) < 200
    assert table_status == 422 and "the columns are carat, cut" in str(table_body["detail"])
