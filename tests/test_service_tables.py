"""Models of a table's columns over HTTP: records in and out of /logprob, /sample and /impute,
the columns in /models, bad records as 422s naming record, column and what is allowed, a bits
model beside them unchanged; in-process and against a real `made serve`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import app_fixtures, post

from made.store.versions import open_model
from service.client import MadeAPIError, MadeClient
from service.core.records import parse_records
from service.engine import ModelRegistry
from service.engine.table_engine import TableEngine
from service.engine.table_model import TableModel
from service.settings import Settings
from service.testing import InProcessClient, in_process, made_serve

pytestmark = pytest.mark.anyio


registry, made = app_fixtures("both_store", "cats")


RECORDS = [{"a": "red", "b": "yes", "c": "q", "d": "u"}, {"a": "blue", "b": "no", "c": "s", "d": "NA"}]


async def test_models_list_the_columns_and_the_manifest_holds_the_schema(made: InProcessClient) -> None:
    listing = (await made.http.get("/models")).json()
    info = {m["name"]: m for m in listing["models"]}
    assert info["cats"]["columns"] == ["a", "b", "c", "d"] and info["tiny"].get("columns") is None
    manifest = (await made.http.get("/models/cats")).json()
    assert manifest["columns"][0] == {"name": "a", "kind": "categorical", "levels": ["blue", "green", "red"]}


async def test_logprob_of_records_equals_the_engine(made: InProcessClient, registry: ModelRegistry) -> None:
    engine = registry.get("cats")
    assert isinstance(engine, TableEngine)
    status, body = await post(made, "/logprob", {"records": RECORDS})
    assert status == 200, body
    expected = engine.logprob(parse_records(engine.schema, RECORDS)).logprob
    np.testing.assert_allclose(body["logprob"], expected, rtol=0, atol=1e-12)
    assert body["exact"] == [True, True] and body["stderr"] == [None, None]
    # an unknown cell (key left out or null) is summed out
    status, body = await post(made, "/logprob", {"records": [{"a": "red", "c": None}], "seed": 1})
    full = engine.logprob(parse_records(engine.schema, [{"a": "red"}]), seed=1)
    assert status == 200 and body["logprob"] == pytest.approx(full.logprob.tolist())


async def test_explain_gives_each_column_its_surprisal(made: InProcessClient) -> None:
    status, body = await post(made, "/logprob", {"records": RECORDS, "explain": True})
    assert status == 200
    surprisal = body["surprisal"]
    assert set(surprisal[0]) == {"a", "b", "c", "d"}
    for rec, lp in zip(surprisal, body["logprob"], strict=True):
        assert all(v["in_order"] >= 0 and v["given_others"] >= 0 for v in rec.values())
        # each column's surprisal given all the others is at most the whole record's
        assert all(v["given_others"] <= -lp + 1e-9 for v in rec.values())


async def test_sample_and_sample_given(made: InProcessClient) -> None:
    status, body = await post(made, "/sample", {"n": 50, "seed": 3})
    assert status == 200 and len(body["records"]) == 50
    assert body == (await post(made, "/sample", {"n": 50, "seed": 3}))[1]  # the seed repeats them
    assert all(set(r) == {"a", "b", "c", "d"} for r in body["records"])
    status, body = await post(made, "/sample", {"n": 40, "seed": 3, "given": {"a": "green", "d": "v"}})
    assert status == 200, body
    assert all(r["a"] == "green" and r["d"] == "v" for r in body["records"])
    assert body["ess"] > 1 and isinstance(body["exact"], bool)


async def test_impute_fills_records_with_distributions(made: InProcessClient) -> None:
    status, body = await post(made, "/impute", {"records": [{"a": "red", "b": "yes"}], "n_samples": 4, "seed": 0})
    assert status == 200, body
    assert body["records"][0]["a"] == "red" and body["records"][0]["c"] in {"p", "q", "r", "s"}
    dist = body["distributions"][0]
    assert set(dist) == {"c", "d"} and sum(dist["c"].values()) == pytest.approx(1.0)
    assert len(body["samples"][0]) == 4 and all(s["a"] == "red" for s in body["samples"][0])
    assert body.get("marginals") is None


async def test_numbers_in_records(made: InProcessClient) -> None:
    status, body = await post(
        made, "/impute", {"model": "mixed", "records": [{"kind": "z", "size": 3.5}], "seed": 0, "n_importance": 200}
    )
    assert status == 200, body
    score = body["distributions"][0]["score"]
    assert set(score) == {"mean", "sd", "q05", "q50", "q95"} and score["q05"] <= score["q50"] <= score["q95"]
    assert set(body["distributions"][0]["budget"]) >= {"p_absent", "mean"}
    status, body = await post(
        made,
        "/logprob",
        {
            "model": "mixed",
            "records": [
                {"kind": "x", "size": 2.5, "score": 1.5, "budget": "NA"},
                {"kind": "x", "size": 2.5, "score": 1.5, "budget": 2500},
            ],
        },
    )
    assert status == 200 and all(np.isfinite(body["logprob"]))
    # '?' is unknown, as in a CSV cell: in a number that can be absent (where "NA" is a value), a
    # number that cannot, and a category; it was "'?' is not a number" (a 422)
    unknown = [{"kind": "x", "size": 2.5, "score": None, "budget": None}, {"kind": None, "size": 2.5}]
    asked = [{"kind": "x", "size": 2.5, "score": "?", "budget": " ? "}, {"kind": "?", "size": 2.5}]
    for endpoint in ("/logprob", "/impute"):
        answers = [await post(made, endpoint, {"model": "mixed", "records": r, "seed": 3}) for r in (unknown, asked)]
        assert answers[0][0] == answers[1][0] == 200, answers
        assert answers[0][1] == answers[1][1]


async def test_numbers_far_outside_the_training_values_are_422_naming_the_bounds(
    made: InProcessClient,
) -> None:
    """The mixed model's inferred schema bounds its numbers (issue 26): a size or score of 1e300
    is evidence the model gives no probability, in /logprob, /impute and /sample's given alike,
    refused naming the column and its bounds (before this, a size of 1e300 got a tiny
    probability; models without bounds still do)."""
    far = {"kind": "x", "size": 1e300}
    for path, body in (
        ("/logprob", {"model": "mixed", "records": [far]}),
        ("/impute", {"model": "mixed", "records": [{"kind": "x", "size": 2.5}, far], "seed": 0}),
        ("/sample", {"model": "mixed", "n": 2, "seed": 0, "given": {"size": 1e300}}),
        ("/logprob", {"model": "mixed", "records": [{"score": 1e300}]}),
    ):
        status, answer = await post(made, path, body)
        assert status == 422, answer
        assert "is outside this column's bounds [" in answer["detail"], answer
        assert ("'size'" in answer["detail"] or "size" in answer["detail"]) or "'score'" in answer["detail"], answer


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (
            {"records": [{"a": "purple"}]},
            422,
            "records[0], column 'a': 'purple' is not a level of this column; it has 3 levels: 'blue', 'green', 'red'",
        ),
        ({"records": [{"colour": "red"}]}, 422, "records[0] has no column 'colour'; the columns are a, b, c, d"),
        ({"records": [{"a": 3}]}, 422, "records[0], column 'a': 3 is not a level"),
        ({"records": []}, 422, "records must be a non-empty list"),
        ({"records": [["red"]]}, 422, "records row 0: input should be a valid dictionary"),
        ({"model": "mixed", "records": [{"size": "big"}]}, 422, "records[0], column 'size': 'big' is not a number"),
        (
            {"model": "mixed", "records": [{"size": -2}]},
            422,
            "records[0], column 'size': -2 is outside this column's bounds",
        ),
        ({"model": "mixed", "records": [{"score": "NA"}]}, 422, "records[0], column 'score': the value is absent"),
        ({"x": [[0, 1, 0, 1]]}, 422, "model 'cats' models the columns of a table (a, b, c, d): send \"records\""),
        ({"model": "tiny", "records": RECORDS}, 422, "records[0] has no column 'a'; the columns are x0, x1, x2"),
        ({"records": RECORDS, "masks": 7}, 422, "masks 7 does not exist"),
    ],
)
async def test_bad_records_are_422_naming_record_column_and_what_is_allowed(
    made: InProcessClient, body: dict, status: int, detail: str
) -> None:
    got, answer = await post(made, "/logprob", body)
    assert got == status and answer["detail"].startswith(detail), answer
    assert answer["errors"][0]["msg"] == answer["detail"]


async def test_other_endpoints_refuse_table_models_clearly(made: InProcessClient) -> None:
    got, answer = await post(made, "/conditionals", {"x": [[0, 1, 0, 1]]})  # a table model reads records
    assert got == 422 and "models the columns of a table" in answer["detail"]
    got, answer = await post(made, "/sample", {"model": "tiny", "n": 2, "given": {"a": "red"}})
    assert got == 422 and answer["detail"].startswith("given has no column 'a'")  # bits are columns x0..x7
    r = await made.http.post("/sample", json={"n": 2}, headers={"Accept": "image/png"})
    assert r.status_code == 406
    got, answer = await post(made, "/sample", {"n": 2, "given": {"a": "red", "b": "maybe"}})
    assert got == 422 and "'maybe' is not a level" in answer["detail"]
    got, answer = await post(made, "/logprob", {"model": "tiny", "x": [[0, 1, 0, 1, 0, 1, 0, 1]]})
    assert got == 200  # the bits model beside them answers as before


async def test_explain_gives_numbers_their_surprisal_given_the_others(
    made: InProcessClient, registry: ModelRegistry
) -> None:
    records = [
        {"kind": "x", "size": 2.5, "score": 1.5, "budget": "NA"},
        {"kind": "z", "size": 0.5, "score": 25.0, "budget": 5000},
    ]  # a budget far from 1000 x size
    status, body = await post(made, "/logprob", {"model": "mixed", "records": records, "explain": True})
    assert status == 200, body
    engine = registry.get("mixed")
    assert isinstance(engine, TableEngine)
    truth = engine.surprisal(parse_records(engine.schema, records))
    for i, rec in enumerate(body["surprisal"]):
        for c, name in enumerate(engine.schema.names):
            assert rec[name]["given_others"] == pytest.approx(truth["given_others"][i, c], abs=1e-12)
            assert rec[name]["in_order"] == pytest.approx(truth["in_order"][i, c], abs=1e-12)
    assert body["surprisal"][1]["budget"]["given_others"] > 10 > body["surprisal"][0]["budget"]["given_others"]
    status, body = await post(made, "/logprob", {"model": "mixed", "records": records * 17, "explain": True})
    assert status == 422 and body["errors"][0]["loc"] == ["body", "explain"]
    assert (
        body["detail"] == "explain is for a few records at a time: at most 32 per request on a model with "
        "numeric columns, got 34"
    )


async def test_explain_names_the_records_that_max_work_pays_for(both_store: Path, registry: ModelRegistry) -> None:
    """Under a MADE_MAX_WORK that pays for fewer explained records than the model's own limit,
    the refusal names that smaller number (the shipped diamonds model: 8 records, not its cap of
    32, at the default budget), and that many are answered."""
    table = registry.get("mixed")
    assert isinstance(table, TableEngine)
    engine = TableModel(table)  # what the data plane asks the cost of
    per_record = (engine.explain_passes + 1) * engine.n_masks * engine.width  # and the record's own score
    records = [{"kind": "x", "size": 2.5, "score": 1.5, "budget": "NA"}] * 4
    settings = Settings(store=both_store, default_model="cats", max_work=3 * per_record)
    async with in_process(settings, registry) as made:
        status, body = await post(made, "/logprob", {"model": "mixed", "records": records, "explain": True})
        assert status == 422 and body["errors"][0]["loc"] == ["body", "explain"]
        assert body["detail"].startswith("explain is for a few records at a time: at most 3 per request on this model")
        cost = f"a record costs {per_record:,}: {engine.explain_passes:,} passes x {engine.n_masks} masks"
        assert cost in body["detail"]
        assert body["detail"].endswith("got 4")
        status, body = await post(made, "/logprob", {"model": "mixed", "records": records[:3], "explain": True})
        assert status == 200 and len(body["surprisal"]) == 3, body


# --- /conditionals on records -----------------------------------------------------------------------


async def test_conditionals_of_records_are_the_engines_per_column_likelihoods(
    made: InProcessClient, registry: ModelRegistry
) -> None:
    engine = registry.get("cats")
    assert isinstance(engine, TableEngine)
    values = parse_records(engine.schema, RECORDS)
    for k in range(engine.n_masks):
        status, body = await post(made, "/conditionals", {"records": RECORDS, "mask": k})
        assert status == 200, body
        assert set(body) == {"model", "version", "mask", "ordering", "column_order", "conditionals"}
        assert body["mask"] == k and body["ordering"] == engine.orderings[k].tolist()
        assert body["column_order"] == [engine.schema.names[c] for c in engine.orderings[k]]
        assert len(body["conditionals"]) == len(RECORDS)
        for c, col in enumerate(engine.schema.columns):
            for level_code, level in enumerate(col.levels):
                x = values.copy()
                x[:, c] = level_code
                expected = np.exp(engine.column_logliks(x, k)[:, c])  # exp log p_k(x_c = level | before c)
                got = [rec[col.name][level] for rec in body["conditionals"]]
                np.testing.assert_allclose(got, expected, rtol=1e-9)
            assert all(sum(rec[col.name].values()) == pytest.approx(1.0) for rec in body["conditionals"])
    # the first column of the ordering sees no other: the same distribution for every record
    first = engine.schema.names[int(engine.orderings[0][0])]
    status, body = await post(made, "/conditionals", {"records": RECORDS})
    assert body["mask"] == 0 and body["conditionals"][0][first] == pytest.approx(body["conditionals"][1][first])


async def test_conditionals_of_numbers_summarise_them_like_impute(
    made: InProcessClient, registry: ModelRegistry
) -> None:
    records = [
        {"kind": "z", "size": 3.5, "score": 20.1, "budget": 3480},
        {"kind": "x", "size": 2.5, "score": 1.5, "budget": "NA"},
    ]
    status, body = await post(made, "/conditionals", {"model": "mixed", "records": records, "mask": 1})
    assert status == 200, body
    engine = registry.get("mixed")
    assert isinstance(engine, TableEngine)
    r = engine.conditionals(parse_records(engine.schema, records), 1)
    for i, rec in enumerate(body["conditionals"]):
        assert set(rec["score"]) == {"mean", "sd", "q05", "q50", "q95"}
        assert list(rec["budget"]) == ["p_absent", "mean", "sd", "q05", "q50", "q95"]
        assert rec["budget"]["p_absent"] == pytest.approx(r.columns[3]["p_absent"][i], rel=1e-12)
        assert rec["score"]["mean"] == pytest.approx(r.columns[2]["mean"][i], rel=1e-12)
        assert rec["score"]["q05"] <= rec["score"]["q50"] <= rec["score"]["q95"]
        assert isinstance(rec["budget"]["q50"], int)  # a value of the column: budget has no decimals
        assert round(rec["size"]["q50"], 2) == rec["size"]["q50"]
        assert sum(rec["kind"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("body", "loc", "detail"),
    [
        (
            {"records": [{"a": "red", "b": "yes", "c": "q"}]},
            ["body", "records", 0, "d"],
            "records[0], column 'd' is unknown (null or left out), but /conditionals needs complete records",
        ),
        ({"records": [{**RECORDS[0], "d": None}]}, ["body", "records", 0, "d"], "records[0], column 'd' is unknown"),
        (
            {"records": [{**RECORDS[0], "a": "purple"}]},
            ["body", "records", 0, "a"],
            "records[0], column 'a': 'purple' is not a level",
        ),
        ({"records": [{**RECORDS[0], "e": 1}]}, ["body", "records", 0, "e"], "records[0] has no column 'e'"),
        ({"records": RECORDS, "mask": 3}, ["body", "mask"], "mask 3 does not exist: model 'cats' has 3 masks"),
        ({"records": RECORDS, "mask": -1}, ["body", "mask"], "mask: must be a mask index"),
        ({"records": RECORDS, "x": [[0, 1]]}, ["body"], "send the rows as x"),
        ({"x": [[0, 1, 0, 1]]}, ["body", "x"], "model 'cats' models the columns of a table"),
        ({"model": "tiny", "records": RECORDS}, ["body", "records", 0, "a"], "records[0] has no column 'a'"),
    ],
)
async def test_conditionals_refuse_bad_records_with_their_loc(
    made: InProcessClient, body: dict, loc: list, detail: str
) -> None:
    got, answer = await post(made, "/conditionals", body)
    assert got == 422 and answer["detail"].startswith(detail), answer
    assert answer["errors"][0]["loc"] == loc, answer


async def test_conditionals_of_bits_are_unchanged(made: InProcessClient) -> None:
    status, body = await post(made, "/conditionals", {"model": "tiny", "x": [[0, 1, 0, 1, 0, 1, 0, 1]], "mask": 1})
    assert status == 200, body
    assert set(body) == {"model", "version", "mask", "ordering", "probs"}
    assert len(body["probs"]) == 1 and len(body["probs"][0]) == 8


@pytest.mark.slow
def test_records_through_a_real_server_and_the_client(both_store: Path) -> None:
    with (
        made_serve(both_store, env={"MADE_DEFAULT_MODEL": "cats", "OMP_NUM_THREADS": "1"}) as server,
        MadeClient(server.url, timeout=60) as made,
    ):
        lp = made.logprob_records(RECORDS)
        engine = TableEngine(open_model(both_store, "cats"), ["CPUExecutionProvider"], threads=1)
        np.testing.assert_allclose(lp.logprob, engine.logprob(parse_records(engine.schema, RECORDS)).logprob, atol=1e-9)
        assert len(made.sample_records(5, seed=1, given={"b": "no"})) == 5
        imputed = made.impute_records([{"a": "green"}], n_samples=2, seed=1)
        assert imputed.records and imputed.records[0]["a"] == "green"
        complete = [r for r in RECORDS if None not in r.values() and len(r) == len(engine.schema.names)]
        cond = made.conditionals_records(complete[:1], mask=0)
        assert cond.conditionals is not None and cond.column_order is not None
        first = cond.column_order[0]  # nothing before it: its distribution is the model's marginal
        assert abs(sum(cond.conditionals[0][first].values()) - 1) < 1e-9
        with pytest.raises(MadeAPIError) as info:
            made.logprob_records([{"a": "grey"}])
        assert info.value.status_code == 422
        # the bits model beside them takes records too: its columns are x0..x7
        bits = [[0, 1, 1, 0, 1, 0, 0, 1]]
        as_records = made.logprob_records([{f"x{d}": v for d, v in enumerate(bits[0])}], model="tiny")
        assert as_records.logprob == made.logprob(bits, model="tiny").logprob
        given = made.sample_records(4, model="tiny", seed=2, given={"x0": 1})
        assert len(given) == 4 and all(r["x0"] == "1" for r in given)
        try:  # a DataFrame goes in as its records, where pandas is installed (it is not a dependency)
            import pandas as pd
        except ImportError:
            return
        assert made.logprob_records(pd.DataFrame(RECORDS)).logprob == lp.logprob


# --- CSV in and out ---------------------------------------------------------------------------------

CSV = "a,b,c,d,id\nred,yes,q,u,17\nblue,no,s,,18\ngreen,,p,v,19\n"  # b empty: never absent, so unknown


async def test_a_csv_file_is_scored_with_one_request(made: InProcessClient, registry: ModelRegistry) -> None:
    r = await made.http.post(
        "/logprob?model=cats&seed=4", content=CSV.encode(), headers={"Content-Type": "text/csv", "Accept": "text/csv"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv") and r.headers["x-request-id"]
    lines = r.text.splitlines()
    assert lines[0] == "a,b,c,d,id,logprob,exact,stderr"  # the columns sent, unknown ones kept
    cells = [line.split(",") for line in lines[1:]]
    assert [c[4] for c in cells] == ["17", "18", "19"]
    engine = registry.get("cats")
    assert isinstance(engine, TableEngine)
    records = [
        {"a": "red", "b": "yes", "c": "q", "d": "u"},
        {"a": "blue", "b": "no", "c": "s", "d": "NA"},
        {"a": "green", "c": "p", "d": "v"},
    ]  # the empty d is the level NA; the empty b unknown
    expected = engine.logprob(parse_records(engine.schema, records), seed=4)
    np.testing.assert_allclose([float(c[5]) for c in cells], expected.logprob, atol=1e-9)
    assert [c[6] for c in cells] == [str(e).lower() for e in expected.exact]
    # JSON out when CSV is not asked for
    r = await made.http.post("/logprob?model=cats&seed=4", content=CSV.encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["logprob"] == pytest.approx(expected.logprob.tolist())


async def test_csv_errors_are_json_and_name_the_problem(made: InProcessClient) -> None:
    bad = "a,b\nred,perhaps\n"
    r = await made.http.post(
        "/logprob", content=bad.encode(), headers={"Content-Type": "text/csv", "Accept": "text/csv"}
    )
    assert r.status_code == 422 and "CSV row 0, column 'b': 'perhaps' is not a level" in r.json()["detail"]
    r = await made.http.post("/logprob?model=tiny", content=CSV.encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 422 and "the CSV header names none of the model's columns (x0, x1," in r.json()["detail"]
    r = await made.http.post("/logprob?colour=1", content=CSV.encode(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 422 and "query parameter 'colour'" in r.json()["detail"]
    r = await made.http.post("/logprob", content=b"x,y\n1,2\n", headers={"Content-Type": "text/csv"})
    assert r.status_code == 422 and "names none of the model's columns" in r.json()["detail"]


async def test_csv_requests_need_the_api_key_like_json(both_store: Path, registry: ModelRegistry) -> None:
    async with in_process(Settings(store=both_store, default_model="cats", api_key="k"), registry) as client:
        r = await client.http.post("/logprob", content=CSV.encode(), headers={"Content-Type": "text/csv"})
        assert r.status_code == 401
        r = await client.http.post(
            "/logprob", content=CSV.encode(), headers={"Content-Type": "text/csv", "Authorization": "Bearer k"}
        )
        assert r.status_code == 200, r.text
