"""The client's anomaly threshold (a held-out log p quantile at PyOD's `contamination`, from GET
/models/{name}/reference) and records as pandas DataFrames (`as_frame`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers import cpu_registry, store_of

from made.io.tables import load_table_dataset
from made.store.reference import REFERENCE
from made.store.versions import open_model
from service.client import MadeAPIError, MadeClient, threshold_of
from service.engine.registry import ModelRegistry, build_engine
from service.settings import Settings
from service.testing import InProcessClient, in_process

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, table_store: Path, tiny_store: Path) -> Path:
    """'mixed' and 'tiny' with their reference.json; 'cats' without one."""
    store = store_of(tmp_path_factory.mktemp("threshold") / "store", *table_store.iterdir(), tiny_store / "tiny")
    version = store / "cats" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["files"][REFERENCE]
    (version / "manifest.json").write_text(json.dumps(manifest))
    (version / REFERENCE).unlink()
    return store


@pytest.fixture(scope="module")
def registry(store: Path) -> ModelRegistry:
    return cpu_registry(store, "mixed")


@pytest.fixture
async def made(store: Path, registry: ModelRegistry) -> AsyncIterator[InProcessClient]:
    async with in_process(Settings(store=store, default_model="mixed"), registry) as client:
        yield client


def quantiles(store: Path, name: str) -> list[float]:
    return list(json.loads((store / name / "1" / REFERENCE).read_text())["logprob_quantiles"])


def test_threshold_interpolates_the_101_quantiles() -> None:
    q = list(np.linspace(-30.0, -10.0, 101))  # q_k at k / 100
    q[2], q[3] = -40.0, -20.0
    assert threshold_of({"logprob_quantiles": q}, 0.01) == pytest.approx(q[1])
    assert threshold_of({"logprob_quantiles": q}, 0.025) == pytest.approx(-30.0)  # halfway between q2 and q3
    assert threshold_of({"logprob_quantiles": q}, 0.5) == pytest.approx(q[50])


async def test_threshold_flags_the_contamination_share_of_held_out_rows(
    made: InProcessClient, store: Path, table_store: Path
) -> None:
    threshold = await made.anomaly_threshold("mixed", contamination=0.1)
    assert threshold == pytest.approx(quantiles(store, "mixed")[10])
    assert await made.anomaly_threshold(contamination=0.1) == threshold  # the default model, through /models
    model = open_model(store, "mixed")
    test = load_table_dataset(str(table_store.parent / "mixed_train.csv"), schema=model.schema)
    lp = build_engine(model, ["CPUExecutionProvider"], 1).logprob(test.split("test")).logprob
    for c in (0.05, 0.1, 0.2):  # the share of held-out rows below it is `contamination`
        share = float(np.mean(lp < await made.anomaly_threshold("mixed", contamination=c)))
        assert share == pytest.approx(c, abs=0.01)
    assert await made.anomaly_threshold("tiny", contamination=0.3) == pytest.approx(
        np.interp(0.3, np.linspace(0, 1, 101), quantiles(store, "tiny"))
    )


async def test_threshold_without_a_reference_names_the_model(made: InProcessClient) -> None:
    with pytest.raises(MadeAPIError) as info:
        await made.anomaly_threshold("cats")
    assert info.value.status_code == 404 and "model 'cats' version 1 has no reference.json" in info.value.detail
    with pytest.raises(MadeAPIError) as info:
        await made.anomaly_threshold("nope")
    assert info.value.status_code == 404 and "nope" in info.value.detail
    for bad in (0.0, 0.6, -0.1):
        with pytest.raises(ValueError, match="contamination"):
            await made.anomaly_threshold("mixed", contamination=bad)


def test_the_blocking_client_asks_the_same_requests() -> None:
    q = list(np.linspace(-12.0, -2.0, 101))
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/models":
            return httpx.Response(200, json={"models": [], "default": "m"})
        return httpx.Response(200, json={"logprob_quantiles": q})

    with MadeClient(http=httpx.Client(transport=httpx.MockTransport(answer), base_url="http://x")) as made:
        assert made.anomaly_threshold(contamination=0.015) == pytest.approx((q[1] + q[2]) / 2)
    assert seen == ["/models", "/models/m/reference"]


async def test_records_as_data_frames(made: InProcessClient) -> None:
    records = await made.sample_records(50, model="mixed", seed=2)
    frame = await made.sample_records(50, model="mixed", seed=2, as_frame=True)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["kind", "size", "score", "budget"]
    assert len(frame) == 50 and frame["size"].dtype == np.float64
    absent = [r["budget"] == "NA" for r in records]
    assert any(absent) and list(frame["budget"].isna()) == absent
    assert frame["kind"].tolist() == [r["kind"] for r in records]
    # impute: a DataFrame in, the filled DataFrame out with its index; the empty budget stays absent
    given = pd.DataFrame({"kind": ["x", "z"], "size": [2.5, None], "budget": [None, 2000.0]}, index=[7, 9])
    filled = await made.impute_records(given, model="mixed", seed=1, as_frame=True)
    assert list(filled.index) == [7, 9] and not filled[["kind", "size", "score"]].isna().any().any()
    assert filled.loc[7, "size"] == 2.5 and np.isnan(filled.loc[7, "budget"]) and filled.loc[9, "budget"] == 2000
    plain = await made.impute_records(given, model="mixed", seed=1)
    assert plain.records is not None and plain.records[1]["score"] == filled.loc[9, "score"]


async def test_records_holding_pandas_na_or_numpy_nan_mean_unknown(made: InProcessClient) -> None:
    """A list of dicts built from a pandas frame of nullable dtypes holds pd.NA (or numpy's NaN):
    building the request raised TypeError / ValueError, where a float NaN was sent as null."""
    plain = await made.logprob_records([{"kind": "x", "size": None, "score": 3.0}], model="mixed", seed=4)
    for missing in (pd.NA, np.float32("nan"), np.float64("nan"), float("nan")):
        got = await made.logprob_records([{"kind": "x", "size": missing, "score": 3.0}], model="mixed", seed=4)
        assert got.logprob == plain.logprob, missing
    typed = await made.logprob_records(
        [{"kind": "x", "size": np.float32(2.5), "score": np.int64(3)}], model="mixed", seed=4
    )
    assert (
        typed.logprob
        == (await made.logprob_records([{"kind": "x", "size": 2.5, "score": 3}], model="mixed", seed=4)).logprob
    )
