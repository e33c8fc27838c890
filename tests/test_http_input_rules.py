"""Input rules of the HTTP layer, through the real app on the conftest table models ('cats',
'mixed') and 'tiny' (bits): a CSV request's boolean query parameter takes the usual spellings and
refuses the rest; the Accept header's q-values choose the answer's type, and an Accept that takes
none of the route's types is a 406 naming them; a JSON key named twice is a 422 naming it; a CSV
answer never names a column twice (a column the answer adds, sent in the CSV, is a 422)."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest
from helpers import app_fixtures

from service.testing import InProcessClient

pytestmark = pytest.mark.anyio

registry, made = app_fixtures("both_store", "cats")

CSV = {"Content-Type": "text/csv"}
AS_CSV = {"Accept": "text/csv"}
JSON = {"Content-Type": "application/json"}
CATS = "a,b,c,d\nred,yes,q,u\nblue,no,s,\n"


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def refused(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """The error body of a refusal with this status, whose detail holds each of `words`."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# --- 1. a CSV request's boolean query parameters --------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "meant"),
    [("true", True), ("True", True), ("1", True), ("yes", True), ("ON", True)]
    + [("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False)],
)
async def test_csv_explain_takes_the_usual_boolean_spellings(made: InProcessClient, spelling: str, meant: bool) -> None:
    r = await made.http.post(f"/logprob?model=cats&explain={spelling}", content=CATS, headers=CSV)
    assert r.status_code == 200, r.text
    assert ("surprisal" in r.json()) is meant


@pytest.mark.parametrize("spelling", ["maybe", "2", "truthy", "-1"])
async def test_csv_explain_refuses_anything_else_naming_the_parameter(made: InProcessClient, spelling: str) -> None:
    r = await made.http.post(f"/logprob?model=cats&explain={spelling}", content=CATS, headers=CSV)
    refused(r, 422, "explain", repr(spelling))


@pytest.mark.parametrize(
    ("query", "named"),
    [("explain=1&explain=0", "'explain' is given twice"), ("seed=1&seed=2", "'seed' is given twice")],
)
async def test_a_query_parameter_given_twice_or_empty_is_refused(made: InProcessClient, query: str, named: str) -> None:
    """?explain=1&explain=0 was last-wins, and ?explain= was as if absent."""
    r = await made.http.post(f"/logprob?model=cats&{query}", content=CATS, headers=CSV)
    refused(r, 422, named)
    r = await made.http.post("/logprob?model=cats&explain=", content=CATS, headers=CSV)
    refused(r, 422, "explain", "''")


@pytest.mark.parametrize("spelling", ["1_0", "+1", "%201", "%EF%BC%91", "1.0", "0x10"])
async def test_a_csv_integer_parameter_is_written_as_json_writes_one(made: InProcessClient, spelling: str) -> None:
    """Python's int() took ?seed=1_0 (10), +1, ' 1' and a full-width 1: answers under a seed the
    client did not write. The refusal names the parameter where it is, in the query."""
    r = await made.http.post(f"/logprob?model=cats&seed={spelling}", content=CATS, headers=CSV)
    refused(r, 422, "query parameter seed must be an integer")
    assert r.json()["errors"][0]["loc"] == ["query", "seed"]


async def test_csv_query_errors_name_the_query_and_do_not_echo_a_long_value(made: InProcessClient) -> None:
    r = await made.http.post(f"/logprob?model=cats&seed={'9' * 5000}x", content=CATS, headers=CSV)
    refused(r, 422, "5001 characters")
    for option in ("seed", "masks", "first_row"):  # 5000 digits: int() raised, a 500
        r = await made.http.post(f"/logprob?model=cats&{option}={'9' * 5000}", content=CATS, headers=CSV)
        assert r.status_code == 422 and len(r.json()["detail"]) < 300, r.text
    r = await made.http.post(f"/logprob?model=cats&{'k' * 300}=1", content=CATS, headers=CSV)
    refused(r, 422, "(300 characters)")
    r = await made.http.post("/logprob?model=cats&a%0Ab=1&a%0Ab=2", content=CATS, headers=CSV)
    assert "\n" not in refused(r, 422, "'a\\nb' is given twice")["detail"]  # one line
    assert len(r.json()["detail"]) < 200
    r = await made.http.post("/logprob?model=&seed=1", content=CATS, headers=CSV)  # was: the default model
    refused(r, 422, "query parameter model is empty")
    assert r.json()["errors"][0]["loc"] == ["query", "model"]
    r = await made.http.post("/logprob?model=cats&seed=-3", content=CATS, headers=CSV)
    assert "must be an integer" not in r.text  # -3 is one: the route decides what a seed may be


async def test_csv_masks_of_a_unicode_digit_is_a_422_not_a_500(made: InProcessClient) -> None:
    r = await made.http.post("/logprob?model=cats&masks=%C2%B2", content=CATS, headers=CSV)  # masks=²
    refused(r, 422, "masks")


# --- 2. the Accept header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("text/csv;q=0, application/json", "application/json"),  # q=0: not acceptable
        ("text/csv; q=0.4, application/json; q=0.8", "application/json"),
        ("application/json;q=0.5, text/csv", "text/csv"),
        ("application/json, text/csv", "application/json"),  # a tie: the order given
        ("text/csv, application/json", "text/csv"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),  # a browser's
        (None, "application/json"),
    ],
)
async def test_accept_q_values_choose_the_answer_of_a_csv_body(
    made: InProcessClient, accept: str | None, media: str
) -> None:
    headers = {**CSV, **({"Accept": accept} if accept is not None else {})}
    r = await made.http.post("/logprob?model=cats&seed=0", content=CATS, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == media


async def test_accept_q_values_choose_the_answer_of_a_json_body(made: InProcessClient) -> None:
    body = {"model": "cats", "n": 3, "seed": 1}
    r = await made.http.post("/sample", json=body, headers={"Accept": "text/csv;q=0, application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    r = await made.http.post("/sample", json=body, headers={"Accept": "application/json;q=0.1, text/csv;q=0.2"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    assert rows(r.text)[0] == ["a", "b", "c", "d"]


async def test_an_accept_of_no_type_the_route_answers_is_a_406_naming_them(made: InProcessClient) -> None:
    r = await made.http.post("/logprob?model=cats", content=CATS, headers={**CSV, "Accept": "image/png"})
    body = refused(r, 406, "application/json", "text/csv", "image/png")
    assert body["type"] == "not_acceptable" and body["request_id"] == r.headers["x-request-id"]
    # a JSON body of records, and the express handler's rows of bits: JSON only
    r = await made.http.post("/logprob", json={"records": [{"a": "red"}]}, headers={"Accept": "image/png"})
    refused(r, 406, "application/json")
    r = await made.http.post("/logprob", json={"model": "tiny", "x": [[0, 1, 0, 1, 0, 1, 0, 1]]}, headers=AS_CSV)
    refused(r, 406, "application/json", "'text/csv'")
    r = await made.http.post("/conditionals?model=cats", content=CATS, headers={**CSV, "Accept": "text/csv;q=1"})
    refused(r, 406, "POST /conditionals answers application/json")
    r = await made.http.post("/impute", json={"records": [{"a": "red"}]}, headers={"Accept": "application/json;q=0"})
    refused(r, 406, "application/json or text/csv")
    # what a client sends by default still gets JSON
    for accept in ("*/*", "application/json", "application/*", "*/*;q=0.1"):
        r = await made.http.post(
            "/logprob", json={"model": "tiny", "x": [[0, 1, 0, 1, 0, 1, 0, 1]]}, headers={"Accept": accept}
        )
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", (accept, r.text)


async def test_an_answer_without_a_csv_form_is_a_406_where_only_csv_is_accepted(made: InProcessClient) -> None:
    """Packed samples and a model of bits' imputations have no CSV form: with `Accept: text/csv`
    alone they came back as JSON with a 200; now a 406 that says why. Where the header takes
    JSON too, JSON; samples of bits, which have a CSV form, are CSV."""
    packed = {"model": "tiny", "n": 2, "seed": 0, "encoding": "packed"}
    refused(await made.http.post("/sample", json=packed, headers=AS_CSV), 406, "has no CSV form", "packed")
    imputed = {"model": "tiny", "x": [[0, 1, None, 1, 0, 1, 0, 1]], "n_samples": 2, "seed": 0}
    refused(await made.http.post("/impute", json=imputed, headers=AS_CSV), 406, "has no CSV form")
    r = await made.http.post("/impute", json=imputed, headers={"Accept": "text/csv, application/json;q=0.5"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    r = await made.http.post("/sample", json={"model": "tiny", "n": 2, "seed": 0}, headers=AS_CSV)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == ",".join(f"x{j}" for j in range(8))


# --- 3. a JSON key named twice --------------------------------------------------------------------


async def test_a_key_named_twice_in_a_json_body_is_a_422_naming_it(made: InProcessClient) -> None:
    top = b'{"model": "cats", "model": "mixed", "records": [{"a": "red"}]}'
    body = refused(await made.http.post("/logprob", content=top, headers=JSON), 422, "'model' twice")
    assert body["errors"][0]["loc"] == ["body", "model"]
    inner = b'{"records": [{"a": "red"}, {"a": "red", "b": "yes", "b": "no"}]}'
    body = refused(await made.http.post("/logprob", content=inner, headers=JSON), 422, "records[1]", "'b' twice")
    assert body["errors"][0]["loc"] == ["body", "records", 1, "b"]
    given = b'{"n": 2, "given": {"a": "red", "a": "blue"}}'
    refused(await made.http.post("/sample", content=given, headers=JSON), 422, "given", "'a' twice")
    # a large body (scanned by the bounds before it is parsed): the same
    many = b'{"records": [' + b",".join([b'{"a": "red", "b": "yes"}'] * 2000) + b', {"c": "q", "c": "s"}]}'
    refused(await made.http.post("/impute", content=many, headers=JSON), 422, "records[2000]", "'c' twice")


async def test_the_express_logprob_refuses_a_key_named_twice_as_the_route_does(made: InProcessClient) -> None:
    row = [0, 1, 0, 1, 0, 1, 0, 1]
    ok = await made.http.post("/logprob", json={"model": "tiny", "x": [row], "seed": 0})
    assert ok.status_code == 200, ok.text
    for body in (
        b'{"model": "tiny", "x": [[0, 1, 0, 1, 0, 1, 0, 1]], "x": [[1, 1, 1, 1, 1, 1, 1, 1]]}',
        b'{"model": "cats", "x": [[0, 1, 0, 1, 0, 1, 0, 1]], "model" : "tiny"}',
        b'{"model": "tiny", "x": [[0, 1, 0, 1, 0, 1, 0, 1]], "\\u0078": [[1, 1, 1, 1, 1, 1, 1, 1]]}',
    ):
        refused(await made.http.post("/logprob", content=body, headers=JSON), 422, "twice")
    # the same body through the route (a +json type, which the express handler leaves to it)
    body = b'{"model": "tiny", "seed": 0, "x": [[0, 1, 0, 1, 0, 1, 0, 1]], "seed": 1}'
    via_route = await made.http.post("/logprob", content=body, headers={"Content-Type": "application/vnd.made+json"})
    refused(via_route, 422, "'seed' twice")


async def test_the_v2_inference_request_refuses_a_key_named_twice(made: InProcessClient) -> None:
    tensor = '{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0, 1, 0, 1, 0, 1, 0, 1]}'
    body = f'{{"inputs": [{tensor}], "outputs": [{{"name": "logprob", "name": "samples"}}]}}'.encode()
    r = await made.http.post("/v2/models/tiny/infer", content=body, headers=JSON)
    assert r.status_code == 400, r.text
    assert "'name' twice" in r.json()["error"] and "outputs[0]" in r.json()["error"]


# --- 4. a CSV answer's columns --------------------------------------------------------------------


async def test_a_csv_with_a_column_the_csv_answer_adds_is_a_422_naming_it(made: InProcessClient) -> None:
    scored = "a,b,c,d,logprob\nred,yes,q,u,5\n"
    r = await made.http.post("/logprob?model=cats", content=scored, headers={**CSV, **AS_CSV})
    refused(r, 422, "'logprob'", "rename or drop it")
    both = "a,b,c,d,exact,stderr\nred,yes,q,u,true,\n"
    r = await made.http.post("/logprob?model=cats", content=both, headers={**CSV, **AS_CSV})
    refused(r, 422, "'exact', 'stderr'", "rename or drop them")
    explained = "a,b,c,d,surprisal.a\nred,yes,q,u,1\n"
    r = await made.http.post("/logprob?model=cats&explain=1", content=explained, headers={**CSV, **AS_CSV})
    refused(r, 422, "'surprisal.a'")


async def test_columns_the_answer_does_not_add_stay_as_they_were(made: InProcessClient) -> None:
    scored = "a,b,c,d,logprob\nred,yes,q,u,5\n"
    # a JSON answer has no such column to clash with; /impute's CSV answer adds none of them
    r = await made.http.post("/logprob?model=cats&seed=0", content=scored, headers=CSV)
    assert r.status_code == 200 and len(r.json()["logprob"]) == 1, r.text
    r = await made.http.post("/impute?model=cats&seed=0", content=scored, headers={**CSV, **AS_CSV})
    assert r.status_code == 200, r.text
    assert rows(r.text)[0] == ["a", "b", "c", "d", "logprob"]
    # surprisal.a without explain is kept; the answer's header names each column once
    explained = "a,b,c,d,surprisal.a\nred,yes,q,u,1\n"
    r = await made.http.post("/logprob?model=cats&seed=0", content=explained, headers={**CSV, **AS_CSV})
    assert r.status_code == 200, r.text
    header = rows(r.text)[0]
    assert header == ["a", "b", "c", "d", "surprisal.a", "logprob", "exact", "stderr"]
