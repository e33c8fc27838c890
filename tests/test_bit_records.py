"""A bit model is a model of D binary columns: made.core.schema's Schema.bits is its column schema,
TableMADE over it is MADE, and over HTTP its rows can come and go as records keyed x0..x{D-1}
(explain, given, per-column distributions), answered by the bit engine and checked here against
its x answers and against enumeration of every binary vector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import all_binary_vectors
from helpers import app_fixtures, post_ok

from made.core.schema import Column, Schema
from made.store.versions import open_model
from service.testing import InProcessClient

pytestmark = pytest.mark.anyio


def test_the_schema_of_bits_is_d_binary_columns_whose_encoding_is_the_row_itself() -> None:
    schema = Schema.bits(5)
    assert schema.names == ["x0", "x1", "x2", "x3", "x4"]
    assert all(c.kind == "binary" and c.levels == ("0", "1") for c in schema.columns)
    assert schema.n_in == schema.n_out == 5 and Schema.bits(5) is schema
    values = schema.encode_rows([[1, 0, "1", None, 0], ["0", 1, 1, 1, None]])
    np.testing.assert_array_equal(values, [[1, 0, 1, np.nan, 0], [0, 1, 1, 1, np.nan]])
    np.testing.assert_array_equal(schema.network_inputs(values), np.nan_to_num(values).astype(np.float32))
    assert schema.decode_rows(values[:1]) == [{"x0": "1", "x1": "0", "x2": "1", "x3": None, "x4": "0"}]
    assert Schema.from_json(schema.to_json()) == schema  # the manifest's form, were it written out


def test_every_stored_model_has_a_column_schema(tiny_store: Path, table_store: Path) -> None:
    bits = open_model(tiny_store, "tiny")
    assert not bits.is_table and bits.schema == Schema.bits(bits.dims)
    table = open_model(table_store, "cats")
    assert table.is_table and table.schema.names == ["a", "b", "c", "d"]
    assert isinstance(table.schema.columns[0], Column)


def test_a_table_made_over_the_bit_schema_is_made() -> None:
    """The same masks from the same settings, and with MADE's weights the same log p_k of every
    binary vector: a bit model is the table model of Schema.bits, specialised."""
    import torch

    from training.model import MADE, MADEConfig
    from training.table_model import TableMADE, TableMADEConfig

    dims = 6
    flags: dict[str, Any] = {"hidden": [12, 10], "n_masks": 3, "direct": True, "mask_seed": 5}
    flags.update(order_agnostic=True, connectivity_agnostic=True)
    made = MADE(MADEConfig(dims=dims, **flags))
    table = TableMADE(TableMADEConfig(columns=Schema.bits(dims).to_json(), **flags))
    missing, unexpected = table.load_state_dict(made.state_dict(), strict=False)
    assert set(missing) == {"output_degrees", "column_degrees"} and not unexpected  # every weight taken
    x = torch.from_numpy(all_binary_vectors(dims))
    with torch.no_grad():
        for k in range(3):
            for a, b in zip(made.masks(k), table.masks(k), strict=True):
                assert torch.equal(a, b)
            got = table.log_prob(x, k)
            np.testing.assert_allclose(got.numpy(), made.log_prob(x.float(), k).numpy(), atol=1e-5)
            assert torch.logsumexp(got, 0).item() == pytest.approx(0.0, abs=1e-5)  # normalised


# --- over HTTP ------------------------------------------------------------------------------------


registry, made = app_fixtures("tiny_store", "tiny")


def records_of(x: np.ndarray) -> list[dict[str, int]]:
    """Rows of 0/1/NaN as records: an unknown cell is left out."""
    return [{f"x{d}": int(v) for d, v in enumerate(row) if v == v} for row in x]


ROWS = all_binary_vectors(8)[::17]  # 16 rows of 8 bits


async def test_records_score_as_the_rows_they_are(made: InProcessClient) -> None:
    x = ROWS.copy()
    want = await post_ok(made, "/logprob", {"x": x.astype(int).tolist()})
    got = await post_ok(made, "/logprob", {"records": records_of(x)})
    assert got["logprob"] == want["logprob"] and got["exact"] == want["exact"]
    x[::2, 5:] = np.nan  # unknown cells: summed out exactly or by likelihood weighting, same seed
    x[1::4, 0] = np.nan
    xs = [[None if v != v else int(v) for v in row] for row in x]
    want = await post_ok(made, "/logprob", {"x": xs, "seed": 3})
    got = await post_ok(made, "/logprob", {"records": records_of(x), "seed": 3})
    assert got["logprob"] == want["logprob"] and got["exact"] == want["exact"] and got["stderr"] == want["stderr"]
    assert not all(got["exact"])


async def test_a_csv_of_bits_with_a_header_scores_as_its_rows(made: InProcessClient) -> None:
    want = await post_ok(made, "/logprob", {"x": ROWS[:5].astype(int).tolist()})
    lines = ["id," + ",".join(f"x{d}" for d in range(8))]
    lines += [f"r{i}," + ",".join(str(int(v)) for v in row) for i, row in enumerate(ROWS[:5])]
    csv = "\n".join(lines) + "\n"
    headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    r = await made.http.post("/logprob?model=tiny", content=csv.encode(), headers=headers)
    assert r.status_code == 200, r.text
    out = [line.split(",") for line in r.text.strip().splitlines()]
    assert out[0][:2] == ["id", "x0"] and out[0][-3:] == ["logprob", "exact", "stderr"]
    assert [float(row[-3]) for row in out[1:]] == pytest.approx(want["logprob"], abs=1e-9)


async def test_a_csv_of_bits_without_a_header_is_a_422_asking_for_one(made: InProcessClient) -> None:
    """A header-less file of 0/1 rows (as `made score` reads one) was a 422 saying that the header
    row names column '0' twice: its first row read as names."""
    csv = "\n".join(",".join(str(int(v)) for v in row) for row in ROWS[:3]) + "\n"
    for path in ("/logprob?model=tiny", "/impute?model=tiny", "/conditionals?model=tiny"):
        r = await made.http.post(path, content=csv.encode(), headers={"Content-Type": "text/csv"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "twice" not in detail
        assert detail.startswith("CSV: the first line holds numbers (0,0,0,0,...), not column names"), detail
        assert "x0,x1,...,x7 (8 columns; made score reads a file without one)" in detail


async def test_explain_on_bits_checked_by_enumeration(
    made: InProcessClient, tiny_joint: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    vectors, logp = tiny_joint["tiny"]  # (256, 8), (K, 256)
    mixture = np.logaddexp.reduce(logp, axis=0) - np.log(len(logp))
    index = {tuple(v): i for i, v in enumerate(vectors.astype(int))}
    body = await post_ok(made, "/logprob", {"records": records_of(ROWS), "explain": True})
    for r, (row, s) in enumerate(zip(ROWS.astype(int), body["surprisal"], strict=True)):
        i = index[tuple(row)]
        in_order = [s[f"x{d}"]["in_order"] for d in range(8)]
        # each mask's per-column terms add up to log p_k(x): their mask average to the average
        assert sum(in_order) == pytest.approx(-logp[:, i].mean(), abs=1e-4)
        for d in range(8):
            flipped = row.copy()
            flipped[d] ^= 1
            j = index[tuple(flipped)]
            truth = -(mixture[i] - np.logaddexp(mixture[i], mixture[j]))  # -log p(x_d | the rest)
            assert s[f"x{d}"]["given_others"] == pytest.approx(truth, abs=1e-4), (r, d)
    got = await made.http.post("/logprob", json={"records": records_of(ROWS[:1]) * 8000, "explain": True})
    assert got.status_code == 422
    assert got.json()["detail"].startswith(
        "explain is for a few records at a time: at most 7281 per request on a model of 8 bits"
    )


async def test_conditionals_and_impute_of_records_are_those_of_the_rows(made: InProcessClient) -> None:
    x = ROWS[:4]
    want = await post_ok(made, "/conditionals", {"x": x.astype(int).tolist(), "mask": 2})
    got = await post_ok(made, "/conditionals", {"records": records_of(x), "mask": 2})
    assert got["ordering"] == want["ordering"] and got["column_order"] == [f"x{d}" for d in want["ordering"]]
    for rec, probs in zip(got["conditionals"], want["probs"], strict=True):
        assert [rec[f"x{d}"]["1"] for d in range(8)] == pytest.approx(probs, abs=1e-12)
        assert all(rec[f"x{d}"]["0"] + rec[f"x{d}"]["1"] == pytest.approx(1.0) for d in range(8))

    holes = ROWS[:6].copy()
    holes[:, [1, 4, 6]] = np.nan
    xs = [[None if v != v else int(v) for v in row] for row in holes]
    want = await post_ok(made, "/impute", {"x": xs, "seed": 11, "n_samples": 5, "n_importance": 200})
    got = await post_ok(
        made, "/impute", {"records": records_of(holes), "seed": 11, "n_samples": 5, "n_importance": 200}
    )
    assert got["exact"] == want["exact"] and got["ess"] == want["ess"]
    assert got["logprob_observed"] == want["logprob_observed"]
    for i, row in enumerate(holes):
        assert [[int(r[f"x{d}"]) for d in range(8)] for r in got["samples"][i]] == want["samples"][i]
        assert set(got["distributions"][i]) == {"x1", "x4", "x6"}
        for d in (1, 4, 6):
            assert got["distributions"][i][f"x{d}"]["1"] == pytest.approx(want["marginals"][i][d], abs=1e-12)
        filled = got["records"][i]
        assert all(filled[f"x{d}"] == str(int(row[d])) for d in range(8) if row[d] == row[d])


async def test_sample_given_bits_meets_the_condition_with_the_right_frequencies(
    made: InProcessClient, tiny_joint: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """tiny1 generates x0 first (one natural-order mask): given x0 = 1 is exact, and x1's frequency
    among the records matches p(x1 = 1 | x0 = 1) from enumeration."""
    vectors, logp = tiny_joint["tiny1"]
    p = np.exp(logp[0])
    on = vectors[:, 0] == 1
    truth = p[on & (vectors[:, 1] == 1)].sum() / p[on].sum()
    n = 4000
    body = await post_ok(made, "/sample", {"model": "tiny1", "n": n, "seed": 4, "given": {"x0": 1}})
    assert body["exact"] is True and len(body["records"]) == n
    assert all(r["x0"] == "1" for r in body["records"])
    freq = np.mean([r["x1"] == "1" for r in body["records"]])
    assert abs(freq - truth) < 4 * np.sqrt(truth * (1 - truth) / n)
    # not exact under 'tiny' (orderings disagree): importance-weighted, with its ESS
    body = await post_ok(made, "/sample", {"model": "tiny", "n": 50, "seed": 4, "given": {"x3": 0, "x5": 1}})
    assert all(r["x3"] == "0" and r["x5"] == "1" for r in body["records"])
    assert body["exact"] is False and 1 <= body["ess"] <= 4 * 1000


async def test_samples_as_records_are_the_samples(made: InProcessClient) -> None:
    want = await post_ok(made, "/sample", {"n": 40, "seed": 9})
    got = await post_ok(made, "/sample", {"n": 40, "seed": 9, "encoding": "records"})
    assert [[int(r[f"x{d}"]) for d in range(8)] for r in got["records"]] == want["samples"]
    assert got.get("samples") is None and got["seed"] == 9


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/logprob", {"records": [{"a": 1}]}, "records[0] has no column 'a'; the columns are x0, x1, x2"),
        ("/logprob", {"records": [{"x2": 2}]}, "records[0], column 'x2': 2 is not a level of this column"),
        ("/impute", {"records": [{"x2": "yes"}]}, "records[0], column 'x2': 'yes' is not a level"),
        ("/sample", {"n": 2, "given": {"x9": 1}}, "given has no column 'x9'"),
        ("/conditionals", {"records": [{"x0": 1}]}, "records[0], column 'x1' is unknown"),
        ("/logprob", {"x": [[0, 1, 0, 1, 0, 1, 0, 1]], "explain": True}, "explain is for records"),
    ],
)
async def test_bad_bit_records_are_422_naming_record_and_column(
    made: InProcessClient, path: str, body: dict[str, Any], detail: str
) -> None:
    r = await made.http.post(path, json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text


async def test_bit_models_answers_to_x_are_unchanged(made: InProcessClient) -> None:
    body = await post_ok(made, "/logprob", {"x": ROWS[:2].astype(int).tolist()})
    assert set(body) == {"model", "version", "logprob", "exact", "stderr"}
    body = await post_ok(made, "/sample", {"n": 3, "seed": 1})
    assert body["samples"] and "records" not in body or body.get("records") is None
    models = (await made.http.get("/models")).json()["models"]
    assert all(m.get("columns") is None for m in models)


def test_a_manifest_whose_columns_are_not_a_schema_is_refused(table_store: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from made.core.errors import ModelStoreError
    from service.engine.table_engine import TableEngine

    store = tmp_path / "store"
    shutil.copytree(table_store / "cats", store / "cats")
    manifest_path = next((store / "cats").glob("*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["columns"][1]["kind"] = "ordinal"
    manifest_path.write_text(json.dumps(manifest))
    model = open_model(store, "cats")
    with pytest.raises(ModelStoreError, match=r"manifest's columns are not a valid schema: .*unknown kind 'ordinal'"):
        _ = model.schema
    with pytest.raises(ModelStoreError, match="not a valid schema"):
        TableEngine(model, ["CPUExecutionProvider"], threads=1)
