"""first_row: the index of a request's first row in a larger call split into requests. Row i of
a request draws from default_rng([seed, first_row + i]), so rows [k:] sent with first_row k and
the call's seed answer as rows [k:] of one request of all the rows; checked on a real
in-process app over the shipped 'diamonds' table model (records, JSON and CSV: to the bit) and
conftest's 'tiny' model of bits (/logprob and /impute of rows with missing values, /denoise:
the same draws, the estimates to float64 rounding, since the bit particle filter's passes pack
the rows' particles together and a matrix product's last bits depend on its rows)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHIPPED
from helpers import cpu_registry, post, post_ok, store_of

from made.io.csv import to_csv
from service.engine import ModelRegistry
from service.settings import Settings
from service.testing import InProcessClient, in_process

pytestmark = pytest.mark.anyio

SEED = 7


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Path:
    """The shipped 'diamonds' and conftest's 'tiny' (D=8, K=4 order-agnostic) in one store."""
    return store_of(tmp_path_factory.mktemp("first_row") / "store", SHIPPED / "diamonds", tiny_store / "tiny")


@pytest.fixture(scope="module")
def registry(store: Path) -> ModelRegistry:
    return cpu_registry(store, "tiny")


@pytest.fixture
async def made(store: Path, registry: ModelRegistry) -> AsyncIterator[InProcessClient]:
    async with in_process(Settings(store=store, default_model="tiny"), registry) as client:
        yield client


COMPLETE = {"carat": 0.7, "cut": "Ideal", "color": "E", "clarity": "VS2", "depth": 61.5, "table": 56.0}
COMPLETE |= {"price": 2800, "x": 5.7, "y": 5.72, "z": 3.52}
# records that draw (a few known cells: the particle filter; none known: exact draws, every
# ordering putting the known cells first), and complete ones between them, which draw nothing
RECORDS = [
    {"carat": 0.31, "cut": "Ideal"},
    {},
    COMPLETE,
    {"cut": "Premium", "color": "G"},
    {"carat": 1.2},
    {"price": 5000, "clarity": "SI1"},
    COMPLETE,
    {"carat": 0.5, "cut": "Good", "x": 5.1},
]
# rows of tiny (D=8) with missing values: some need the particle filter, some may be exact
ROWS = [
    [0, None, 1, None, 1, 0, 0, None],
    [None, None, None, None, 1, 1, 0, 1],
    [1, 0, 1, 1, 0, 0, 1, 0],
    [None, 1, None, 0, None, 1, None, 0],
    [1, 1, 0, 0, None, None, None, None],
    [None] * 8,
    [0, 0, 1, None, None, 1, 1, None],
]
NOISY = [[int(v or 0) for v in row] for row in ROWS]

# (path, request of every row, which of its fields the rows go in, the answer's per-row fields)
CASES = {
    "table logprob": (
        "/logprob",
        {"model": "diamonds", "records": RECORDS, "n_importance": 32},
        "records",
        ["logprob", "exact", "stderr"],
    ),
    "table impute": (
        "/impute",
        {"model": "diamonds", "records": RECORDS, "n_importance": 32, "n_samples": 3},
        "records",
        ["records", "samples", "distributions", "logprob_observed", "stderr", "exact", "ess"],
    ),
    "bit logprob": (
        "/logprob",
        {"model": "tiny", "x": ROWS, "n_importance": 64},
        "x",
        ["logprob", "exact", "stderr"],
    ),
    "bit impute": (
        "/impute",
        {"model": "tiny", "x": ROWS, "n_importance": 64, "n_samples": 3},
        "x",
        ["samples", "marginals", "logprob_observed", "stderr", "exact", "ess"],
    ),
    "denoise": (
        "/denoise",
        {"model": "tiny", "x": NOISY, "eps": 0.1, "n_particles": 8, "n_samples": 3},
        "x",
        ["samples", "marginals", "most_likely", "logprob_noisy", "stderr", "ess"],
    ),
}


DRAWN = {"samples", "most_likely", "exact"}  # what a bit model's rows draw (and their flags): to the bit


def rows_of(answer: dict[str, Any], fields: list[str], start: int = 0) -> list[list[Any]]:
    """What the answer says of each of its rows from `start` on."""
    return [answer[f][start:] for f in fields]


def same_rows(a: dict[str, Any], b: dict[str, Any], fields: list[str], start: int, model: str) -> bool:
    """Whether answer a says of its rows what b says of its rows from `start` on: a table model's
    to the bit; a bit model's draws to the bit, its estimates to float64 rounding (1e-12)."""
    if model == "diamonds":
        return rows_of(a, fields) == rows_of(b, fields, start)
    for f in fields:
        x, y = a[f], b[f][start:]
        if f in DRAWN:
            if x != y:
                return False
            continue
        x, y = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)  # null: NaN
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-12, atol=1e-12, equal_nan=True):
            return False
    return True


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("k", [1, 4])
async def test_rows_sent_with_first_row_answer_as_in_the_request_of_all_the_rows(
    made: InProcessClient, case: str, k: int
) -> None:
    path, body, rows, fields = CASES[case]
    whole = await post_ok(made, path, {**body, "seed": SEED})
    tail = {**body, rows: body[rows][k:], "seed": SEED}
    shifted = await post_ok(made, path, {**tail, "first_row": k})
    assert same_rows(shifted, whole, fields, k, body["model"]), (rows_of(shifted, fields), rows_of(whole, fields, k))
    # without it the same rows draw otherwise: the rows above do draw
    unshifted = await post_ok(made, path, tail)
    assert not same_rows(unshifted, whole, fields, k, body["model"])


@pytest.mark.parametrize("case", list(CASES))
async def test_first_row_0_is_leaving_it_out(made: InProcessClient, case: str) -> None:
    path, body, _, fields = CASES[case]
    plain = await post_ok(made, path, {**body, "seed": SEED})
    zero = await post_ok(made, path, {**body, "seed": SEED, "first_row": 0})
    assert zero == plain


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
async def test_a_first_row_that_is_not_a_non_negative_integer_is_refused_naming_it(
    made: InProcessClient, case: str, value: Any
) -> None:
    path, body, _, _ = CASES[case]
    status, answer = await post(made, path, {**body, "seed": SEED, "first_row": value})
    assert status == 422, answer
    assert answer["detail"].startswith("first_row: ") and answer["errors"][0]["loc"] == ["body", "first_row"]


def csv_of(records: list[dict[str, Any]]) -> bytes:
    """Records as a CSV body: the model's columns, an unknown cell as `?`."""
    names = list(COMPLETE)
    return to_csv(names, [[r.get(n, "?") for n in names] for r in records]).encode()


@pytest.mark.parametrize("case", ["table logprob", "table impute"])
async def test_a_csv_body_takes_first_row_from_the_query_string(made: InProcessClient, case: str) -> None:
    path, body, _, fields = CASES[case]
    whole = await post_ok(made, path, {**body, "seed": SEED})
    k = 2
    options = "".join(f"&{name}={body[name]}" for name in ("n_importance", "n_samples") if name in body)
    query = f"{path}?model=diamonds&seed={SEED}{options}"
    csv = {"Content-Type": "text/csv"}
    r = await made.http.post(f"{query}&first_row={k}", content=csv_of(RECORDS[k:]), headers=csv)
    assert r.status_code == 200, r.text
    assert rows_of(r.json(), fields) == rows_of(whole, fields, k)
    refused = await made.http.post(f"{query}&first_row=-1", content=csv_of(RECORDS[k:]), headers=csv)
    assert refused.status_code == 422 and refused.json()["detail"].startswith("first_row: "), refused.text
