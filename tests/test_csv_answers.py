"""One CSV, one meaning (issue 26, item 6): `Accept: text/csv` honoured by /sample and /impute
(and /logprob's explain columns), `?` for "unknown" in a column that can be absent, a table sent
to the default model of bits told so in a sentence, CSV requests labelled by their route in the
metrics, and CSV bodies with their query parameters in the OpenAPI document. On the shipped
`diamonds` and `binarized-mnist` (the default) beside 'mixed' (a nullable number, trained in
conftest)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from helpers import app_fixtures, metric, post_ok, store_of

from made.core.errors import DataError
from made.io.tables import encode_table, infer_schema
from service.testing import InProcessClient

pytestmark = pytest.mark.anyio

STORE = Path(__file__).resolve().parent.parent / "model_store"
CSV = {"Content-Type": "text/csv"}
AS_CSV = {"Accept": "text/csv"}
DIAMONDS = "carat,cut,color,clarity,depth,table,price,x,y,z\n0.3,Ideal,E,SI1,61.5,55,326,3.95,3.98,2.43\n"
# 'mixed': row 2's size empty (never absent: unknown), budget empty (absent); row 3's kind and
# score empty (unknown), budget NA (absent). `id` is no column of the model.
MIXED = "kind,size,score,budget,id\nx,2.72,0.5,2700,1\ny,,10.2,,2\n,4.1,,NA,3\nz,3.5,20.1,3500,4\n"
MEANT = [
    {"kind": "x", "size": 2.72, "score": 0.5, "budget": 2700},
    {"kind": "y", "score": 10.2, "budget": "NA"},
    {"size": 4.1, "budget": "NA"},
    {"kind": "z", "size": 3.5, "score": 20.1, "budget": 3500},
]
COLUMNS = ["kind", "size", "score", "budget"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, diamonds_store: Path, table_store: Path) -> Path:
    """'diamonds' and 'mixed' beside the default 'binarized-mnist'."""
    return store_of(
        tmp_path_factory.mktemp("csv-answers") / "store",
        diamonds_store / "diamonds",
        table_store / "mixed",
        STORE / "binarized-mnist",
    )


registry, made = app_fixtures("store", "binarized-mnist")


def read(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def cell(value: object) -> str:
    """A JSON record's value as the CSV answer writes it."""
    return "" if value is None else str(value)


async def test_sample_answers_its_records_as_csv(made: InProcessClient) -> None:
    body = {"model": "mixed", "n": 5, "seed": 3}
    answer = await made.http.post("/sample", json=body, headers=AS_CSV)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    rows = read(answer.text)
    assert rows[0] == COLUMNS  # the schema's columns, in order
    records = (await post_ok(made, "/sample", body))["records"]
    assert rows[1:] == [[cell(r[c]) for c in COLUMNS] for r in records]


async def test_impute_answers_the_csv_it_was_sent_completed(made: InProcessClient) -> None:
    answer = await made.http.post("/impute?model=mixed&seed=5", content=MIXED.encode(), headers={**CSV, **AS_CSV})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    rows = read(answer.text)
    assert rows[0] == ["kind", "size", "score", "budget", "id"]
    completed = (await post_ok(made, "/impute", {"model": "mixed", "seed": 5, "records": MEANT}))["records"]
    sent = read(MIXED)
    assert rows[1] == sent[1]  # complete: as it was sent
    assert rows[2] == ["y", cell(completed[1]["size"]), "10.2", "", "2"]  # size unknown; budget absent, kept
    assert rows[3] == [completed[2]["kind"], "4.1", cell(completed[2]["score"]), "NA", "3"]
    # A JSON request gets its records as CSV too.
    by_json = await made.http.post("/impute", json={"model": "mixed", "seed": 5, "records": MEANT}, headers=AS_CSV)
    assert by_json.status_code == 200 and read(by_json.text)[0] == COLUMNS
    assert read(by_json.text)[1:] == [[cell(r[c]) for c in COLUMNS] for r in completed]


async def test_logprob_csv_keeps_the_explain_columns(made: InProcessClient) -> None:
    complete = "kind,size,score,budget,id\nx,2.72,0.5,2700,1\nz,3.5,20.1,,4\n"  # explain needs every column
    answer = await made.http.post(
        "/logprob?model=mixed&explain=true", content=complete.encode(), headers={**CSV, **AS_CSV}
    )
    assert answer.status_code == 200, answer.text
    rows = read(answer.text)
    assert rows[0][:8] == ["kind", "size", "score", "budget", "id", "logprob", "exact", "stderr"]
    assert [f"surprisal.{c}" for c in COLUMNS] == rows[0][8:12]
    assert [f"surprisal_in_order.{c}" for c in COLUMNS] == rows[0][12:]
    explained = await made.http.post("/logprob?model=mixed&explain=true", content=complete.encode(), headers=CSV)
    surprisal = explained.json()["surprisal"]
    assert float(rows[1][8]) == pytest.approx(surprisal[0]["kind"]["given_others"])


async def test_errors_of_a_csv_answer_stay_json(made: InProcessClient) -> None:
    bad = MIXED.replace("x,2.72", "w,2.72")
    answer = await made.http.post("/impute?model=mixed", content=bad.encode(), headers={**CSV, **AS_CSV})
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/json")
    sample = await made.http.post("/sample", json={"model": "nope", "n": 1}, headers=AS_CSV)
    assert sample.status_code == 404 and sample.headers["content-type"].startswith("application/json")


async def test_a_question_mark_is_unknown_where_an_empty_cell_is_absent(made: InProcessClient) -> None:
    body = "kind,size,score,budget\nx,2.72,0.5,?\nx,2.72,0.5,\n"
    answer = await made.http.post("/logprob?model=mixed&seed=1", content=body.encode(), headers=CSV)
    assert answer.status_code == 200, answer.text
    meant = [{"kind": "x", "size": 2.72, "score": 0.5}, {"kind": "x", "size": 2.72, "score": 0.5, "budget": "NA"}]
    as_json = await post_ok(made, "/logprob", {"model": "mixed", "seed": 1, "records": meant})
    assert answer.json()["logprob"] == as_json["logprob"]  # `?` unknown, the empty cell absent


def test_training_refuses_a_question_mark() -> None:
    header = ["kind", "size"]
    rows = [["x", "1.5"], ["y", "2.5"], ["?", "3.5"], ["x", "?"]]
    schema = infer_schema(header, rows, "train.csv")
    assert "?" not in schema.columns[0].levels  # not learned as a level
    with pytest.raises(DataError, match=r"line 4, column 'kind' is '\?' \(unknown\)"):
        encode_table(schema, header, rows, [2, 3, 4, 5], "train.csv")


async def test_a_table_sent_to_the_default_model_of_bits_is_told_so_in_a_sentence(made: InProcessClient) -> None:
    answer = await made.http.post("/logprob", content=DIAMONDS.encode(), headers=CSV)
    assert answer.status_code == 422
    message = answer.json()["errors"][0]["msg"]
    assert "'binarized-mnist' (a model of 784 bits" in message and "?model=NAME" in message
    assert "x783," not in message and len(message) < 300


async def test_a_csv_body_sent_as_one_line_is_told_of_curl_d(made: InProcessClient) -> None:
    """`curl -d @rows.csv` drops the file's line breaks: whatever the run-together line breaks,
    the 422 keeps its own sentence and says how to send the file; a body of several lines gets
    no such hint."""
    one_line = MIXED.replace("\n", "")  # as curl -d @FILE sends it
    answer = await made.http.post("/logprob?model=mixed", content=one_line.encode(), headers=CSV)
    assert answer.status_code == 422
    assert "--data-binary @FILE" in answer.json()["detail"]
    assert "--data-binary @FILE" in answer.json()["errors"][0]["msg"]
    header_only = await made.http.post("/logprob?model=mixed", content=b"kind,size\n", headers=CSV)
    assert header_only.status_code == 422 and "header row but no rows" in header_only.json()["detail"]
    bad = await made.http.post("/impute?model=mixed", content=MIXED.replace("x,2.72", "w,2.72").encode(), headers=CSV)
    assert bad.status_code == 422 and "--data-binary" not in bad.json()["detail"]


async def test_metrics_label_csv_requests_by_their_route(made: InProcessClient) -> None:
    def count(text: str, status: str, model: str) -> float:
        return metric(text, "made_requests_total", endpoint="/logprob", model=model, status=status) or 0.0

    before = (await made.http.get("/metrics")).text
    ok = await made.http.post("/logprob?model=diamonds", content=DIAMONDS.encode(), headers=CSV)
    bad = await made.http.post("/logprob?model=diamonds", content=b"carat,cut\n0.3,Superb\n", headers=CSV)
    assert ok.status_code == 200 and bad.status_code == 422
    after = (await made.http.get("/metrics")).text
    assert count(after, "200", "diamonds") == count(before, "200", "diamonds") + 1
    assert count(after, "422", "diamonds") == count(before, "422", "diamonds") + 1


async def test_openapi_documents_csv_bodies_and_their_query_parameters(made: InProcessClient) -> None:
    paths = (await made.http.get("/openapi.json")).json()["paths"]
    wanted = {
        "/logprob": {"model", "seed", "first_row", "n_importance", "masks", "explain"},
        "/impute": {"model", "seed", "first_row", "n_importance", "n_samples"},  # masks was listed: a 422
        "/conditionals": {"model", "mask"},
    }
    for path, names in wanted.items():
        post = paths[path]["post"]
        assert set(post["requestBody"]["content"]) == {"application/json", "text/csv"}, path
        assert {p["name"] for p in post["parameters"] if p["in"] == "query"} == names, path
        # another route's option is named as this route's query parameter (it was "body.mask")
        other = sorted({"masks", "mask", "n_samples"} - names)[0]
        r = await made.http.post(f"{path}?model=mixed&{other}=2", content=MIXED.encode(), headers=CSV)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", other], r.text
        assert r.json()["detail"] == (
            f"query parameter '{other}' is not an option of a CSV request to {path} ({', '.join(sorted(names))})"
        )
