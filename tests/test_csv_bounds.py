"""A text/csv body to /logprob is bounded before it is parsed: its lines against MADE_MAX_ROWS,
the cells of each line against MADE_MAX_WIDTH, counted on the bytes, so that a refused body
builds no record; a cell over the longest the service reads is a 422 naming its line and column,
never a 500; a large admitted body is parsed off the event loop; a gzip body is the JSON
routes' 415. On the shipped `diamonds` table model."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import app_fixtures, metric

import service.http.csv_records
from made.core.errors import InvalidInput
from service.core.records import MAX_CSV_CELL, check_csv_bounds
from service.engine import ModelRegistry
from service.settings import Settings
from service.testing import InProcessClient, in_process

pytestmark = pytest.mark.anyio

CSV_HEADERS = {"Content-Type": "text/csv"}
ROW_HEAD = "carat,cut,color,clarity,depth,table,price,x,y\n"  # z left out: unknown, summed out exactly
ROW = "0.3,Ideal,E,SI1,61.5,55,326,3.95,3.98\n"


registry, made = app_fixtures("diamonds_store", "diamonds")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread ids of the middleware's calls of parse_csv (the real one, which builds the rows)."""
    calls: list[int] = []
    real: Callable[..., Any] = service.http.csv_records.parse_csv

    def spy(*args: Any) -> Any:
        calls.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(service.http.csv_records, "parse_csv", spy)
    return calls


async def test_a_million_rows_are_refused_before_any_is_parsed(made: InProcessClient, parses: list[int]) -> None:
    body = b"carat\n" + b"0.3\n" * 1_000_000  # 4 MB
    r = await made.http.post("/logprob?model=diamonds", content=body, headers=CSV_HEADERS)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "1000000 lines" in detail and "the limit is 10000 rows" in detail and "MADE_MAX_ROWS" in detail
    assert parses == []  # refused on the byte count: no row read, no record built


async def test_too_many_columns_are_refused_before_any_is_parsed(made: InProcessClient, parses: list[int]) -> None:
    wide_header = ("carat," + ",".join(f"c{j}" for j in range(20_000)) + "\n0.3" + "," * 20_000 + "\n").encode()
    wide_row = b"carat\n0.3\n0.4" + b"," * (1 << 24) + b"\n"  # 16M empty cells on line 3
    for body, line in ((wide_header, 1), (wide_row, 3)):
        r = await made.http.post("/logprob", content=body, headers=CSV_HEADERS)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert f"CSV line {line} has" in detail and "the limit is 16384" in detail and "MADE_MAX_WIDTH" in detail
    assert parses == []


async def test_the_limits_are_the_settings(diamonds_store: Path, registry: ModelRegistry) -> None:
    settings = Settings(store=diamonds_store, default_model="diamonds", max_rows=3, max_width=9)
    async with in_process(settings, registry) as client:
        ok = await client.http.post("/logprob", content=(ROW_HEAD + ROW * 3 + "\n\n").encode(), headers=CSV_HEADERS)
        assert ok.status_code == 200 and len(ok.json()["logprob"]) == 3  # trailing blank lines are no rows
        r = await client.http.post("/logprob", content=b"carat\n0.3\n0.4\n0.5\n0.6\n", headers=CSV_HEADERS)
        assert r.status_code == 422 and "the limit is 3 rows per request (MADE_MAX_ROWS)" in r.json()["detail"]
        r = await client.http.post(
            "/logprob", content=(ROW_HEAD + ROW.replace("\n", ",1,2\n")).encode(), headers=CSV_HEADERS
        )
        assert r.status_code == 422 and "CSV line 2 has 11 columns; the limit is 9" in r.json()["detail"]


async def test_a_long_cell_is_a_422_naming_its_line_and_column(made: InProcessClient) -> None:
    long = "x" * (MAX_CSV_CELL + 1)
    huge = "y" * 200_000  # past the csv module's own limit (131072): its error was a 500
    bodies = {
        f"carat,note\n0.3,a\n0.4,{long}\n": "CSV line 3, column 2",
        f"carat,note,id\n0.3,{huge},1\n": "CSV line 2, column 2",
        f'carat,id,note\n0.3,1,a\n0.4,2,"q,\n{huge}"\n': "CSV line 4, column 3",  # a quoted cell over two lines
        f"{long},carat\n0.3,1\n": "CSV line 1, column 1",
    }
    for body, where in bodies.items():
        r = await made.http.post("/logprob", content=body.encode(), headers=CSV_HEADERS)
        assert r.status_code == 422, (where, r.text)
        detail = r.json()["detail"]
        assert detail.startswith(where) and str(MAX_CSV_CELL) in detail, detail
        assert "xxxx" not in detail and "yyyy" not in detail  # the cell is not echoed
        assert r.json()["errors"] == [{"loc": ["body"], "msg": detail, "type": "invalid_input"}]  # as every 422
    metrics = (await made.http.get("/metrics")).text
    # labelled by the route (issue 26: CSV requests by their route, not "unmatched")
    assert metric(metrics, "made_errors_total", endpoint="/logprob", model="diamonds", type="invalid_input") == 4.0


async def test_a_large_body_is_parsed_off_the_event_loop(made: InProcessClient, parses: list[int]) -> None:
    head = "carat,cut,color,clarity,depth,table,price,x,y,z,id\n"
    body = (
        head + "".join(f"0.{i % 8 + 2},Ideal,E,SI1,61.5,55,{300 + i},3.95,3.98,2.43,{i}\n" for i in range(1500))
    ).encode()
    assert len(body) > 64 * 1024
    r = await made.http.post("/logprob", content=body, headers={**CSV_HEADERS, "Accept": "text/csv"})
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    assert len(lines) == 1501 and lines[1].startswith("0.2,Ideal,E,SI1,61.5,55,300,3.95,3.98,2.43,0,-")
    assert parses and all(ident != threading.get_ident() for ident in parses)  # a worker thread's


async def test_a_gzip_csv_body_is_the_json_routes_415(made: InProcessClient) -> None:
    gz = {"Content-Encoding": "gzip"}
    r = await made.http.post("/logprob", content=gzip.compress(b"carat\n0.3\n"), headers={**CSV_HEADERS, **gz})
    as_json = await made.http.post(
        "/logprob",
        content=gzip.compress(b'{"records": [{"carat": 0.3}]}'),
        headers={"Content-Type": "application/json", **gz},
    )
    assert as_json.status_code == 415
    assert r.status_code == 415, r.text
    assert r.json()["detail"] == as_json.json()["detail"] and "Content-Encoding 'gzip'" in r.json()["detail"]
    assert r.json()["type"] == "unsupported_media_type"


def test_the_counts_are_upper_bounds_of_rows_and_cells() -> None:
    check_csv_bounds(b"a,b\r\n1,2\r\n3,4\r\n\r\n", max_rows=2, max_width=2)  # CRLF is one line break
    check_csv_bounds(b"a\n" + b"1\n" * 5 + b"\n \n\t\n", max_rows=5, max_width=1)
    with pytest.raises(InvalidInput, match="has 3 lines after its header row"):
        check_csv_bounds(b"a\r1\n2\r\n3", max_rows=2, max_width=1)  # lone CR, lone LF, CRLF
    with pytest.raises(InvalidInput, match="CSV line 3 has 3 columns"):
        check_csv_bounds(b"a,b\n1,2\n1,2,3\n", max_rows=10, max_width=2)
