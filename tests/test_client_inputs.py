"""What the Python clients send of the rows and options they are given (the shipped 'mushrooms',
112 bits, on a real in-process app): a value is never changed on the way (0.5 reaches the server,
which refuses it), numpy's scalars and arrays go as the numbers and lists they hold, what JSON or
packed rows cannot carry is a ValueError naming its row and column, and any error answer is a
MadeAPIError. Each test runs through MadeClient and AsyncMadeClient alike."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from anyio.from_thread import start_blocking_portal
from helpers import cpu_registry, store_of

from service.client import AsyncMadeClient, MadeAPIError, MadeClient
from service.engine import ModelRegistry
from service.http.app import create_app
from service.settings import Settings
from service.testing import in_process

SHIPPED = Path(__file__).resolve().parents[1] / "model_store"
D = 112

Ask = Callable[..., Any]  # ask("logprob", rows, model=...): the client method's answer


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return cpu_registry(store_of(tmp_path_factory.mktemp("inputs") / "store", SHIPPED / "mushrooms"), "mushrooms")


def settings(registry: ModelRegistry) -> Settings:
    return Settings(store=registry.store, default_model="mushrooms", batch_delay_ms=1)


@pytest.fixture(params=["blocking", "async"])
def ask(request: pytest.FixtureRequest, registry: ModelRegistry) -> Iterator[Ask]:
    """A method of MadeClient (over starlette's TestClient) or of AsyncMadeClient (in_process,
    on an event loop of its own), called and answered."""
    if request.param == "blocking":
        with warnings.catch_warnings():  # its import warns that it would rather run on httpx2
            warnings.simplefilter("ignore")
            from starlette.testclient import TestClient
        with TestClient(create_app(settings(registry), registry)) as http, MadeClient(http=http) as made:
            yield lambda name, *args, **kw: getattr(made, name)(*args, **kw)
        return
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(in_process(settings(registry), registry)) as client,
    ):
        yield lambda name, *args, **kw: portal.call(functools.partial(getattr(client, name), *args, **kw))


def rows(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 2, size=(n, D)).astype(np.uint8)


def refused(ask: Ask, name: str, *args: Any, **kw: Any) -> str:
    with pytest.raises(MadeAPIError) as info:
        ask(name, *args, **kw)
    assert info.value.status_code == 422
    return info.value.detail


def test_a_value_off_0_and_1_reaches_the_server_unchanged(ask: Ask) -> None:
    half = np.full((1, D), 0.5)
    assert "row 0, column 0: expected 0, 1 or null, got 0.5" in refused(ask, "logprob", half, model="mushrooms")
    assert "row 0, column 0: expected 0, 1 or null, got 0.5" in refused(ask, "impute", half, model="mushrooms")
    assert "row 0, column 0: expected 0, 1 or null, got 0.5" in refused(ask, "logprob", half.tolist())
    off = rows(4).astype(np.float64)
    off[3, 7] = 2.0
    assert "row 3, column 7: expected 0, 1 or null, got 2" in refused(ask, "logprob", off)
    off[3, 7] = -1
    assert "row 3, column 7: expected 0, 1 or null, got -1" in refused(ask, "logprob", off.astype(np.int64))
    assert "row 3, column 7: expected 0 or 1, got -1" in refused(ask, "conditionals", off)
    # 0, 1 and NaN (missing, as null) still go as they are, in any dtype and as lists
    x = rows()
    want = ask("logprob", x, seed=0).logprob
    for same in (x.astype(np.float32), x.astype(bool), x.tolist(), list(x), [list(map(float, r)) for r in x]):
        assert ask("logprob", same, seed=0).logprob == want
    gaps = x.astype(np.float64)
    gaps[:, :10] = np.nan
    with_nulls = [[None if j < 10 else int(v) for j, v in enumerate(r)] for r in x]
    want = ask("logprob", with_nulls, seed=0).logprob
    assert ask("logprob", gaps, seed=0).logprob == want
    assert ask("logprob", gaps.tolist(), seed=0).logprob == want


def test_packed_rows_refuse_what_they_cannot_carry(ask: Ask) -> None:
    x = rows(3)
    assert ask("logprob", x, packed=True, seed=0).logprob == ask("logprob", x, seed=0).logprob
    for bad, shown in ((0.7, "0.7"), (2.0, "2"), (-1.0, "-1"), (np.inf, "inf")):
        off = x.astype(np.float64)
        off[2, 5] = bad
        with pytest.raises(ValueError, match=rf"row 2, column 5 is {shown}; packed rows carry only 0 or 1"):
            ask("logprob", off, packed=True)
        with pytest.raises(ValueError, match=r"row 2, column 5"):
            ask("denoise", off.tolist(), 0.1, packed=True)
    with pytest.raises(ValueError, match="missing"):
        ask("logprob", np.where(x == 1, np.nan, 0.0), packed=True)


def test_numpy_scalars_and_arrays_go_as_their_numbers(ask: Ask) -> None:
    x = rows()
    assert ask("sample", 2, seed=np.int64(3)).samples == ask("sample", 2, seed=3).samples
    assert len(ask("sample", np.int64(2), seed=np.uint32(1)).samples) == 2
    assert ask("logprob", x, masks=np.int64(0)).logprob == ask("logprob", x, masks=0).logprob
    assert ask("logprob", list(x), seed=np.int64(0)).logprob == ask("logprob", x, seed=0).logprob
    assert ask("conditionals", x, mask=np.int8(0)).probs == ask("conditionals", x, mask=0).probs
    eps = float(np.float32(0.1))  # the number a float32 0.1 holds
    want = ask("denoise", x, eps, seed=1).marginals
    assert ask("denoise", x, np.float32(0.1), seed=np.int64(1)).marginals == want
    assert ask("denoise", x, np.full(2, 0.1, dtype=np.float32), seed=1).marginals == want
    assert ask("denoise", x, [np.float32(0.1)] * 2, seed=1).marginals == want
    assert ask("denoise", x, list(np.full((2, D), 0.1, dtype=np.float32)), seed=1).marginals == want
    imputed = ask("impute", np.where(np.arange(D) < 5, np.nan, x), n_samples=np.int64(3), seed=np.int64(2))
    assert imputed.array().shape == (2, 3, D)


def test_rows_that_json_cannot_carry_are_a_value_error(ask: Ask) -> None:
    x = rows()
    for bad in (np.full((1, D), np.inf), np.full((1, D), -np.inf, dtype=np.float32)):
        sign = "-" if bad[0, 0] < 0 else ""
        with pytest.raises(ValueError, match=rf"row 0, column 0 is {sign}inf, expected 0, 1 or NaN for missing"):
            ask("logprob", bad)
    listed = x.astype(np.float64).tolist()
    listed[1][4] = float("inf")
    with pytest.raises(ValueError, match=r"row 1, column 4 is inf"):
        ask("impute", listed)
    with pytest.raises(ValueError, match=r"row 1, column 4 is inf"):
        ask("logprob", [np.asarray(r) for r in listed])
    for flat in (x[0], x[0].astype(np.float64), x[None]):
        with pytest.raises(ValueError, match=r"rows must be 2-D: \(N, D\)"):
            ask("logprob", flat)
        with pytest.raises(ValueError, match=r"rows must be 2-D: \(N, D\)"):
            ask("logprob", flat, packed=True)
    with pytest.raises(ValueError, match=r"rows must be 2-D: \(N, D\); row 0 has shape"):
        ask("logprob", [x, x])
    # a list of numbers, not of rows, goes as it is: the server names the first
    assert "row 0 must be a list of 0, 1 or null, got 0" in refused(ask, "logprob", [0] * D)


BODIES: list[tuple[dict[str, Any], str]] = [
    ({"json": ["upstream", "down"]}, '["upstream","down"]'),
    ({"json": "bad gateway"}, '"bad gateway"'),
    ({"json": 3}, "3"),
    ({"content": b"null"}, "null"),
    ({"json": {"error": "no route"}}, '{"error":"no route"}'),
    ({"text": "<html>502 Bad Gateway</html>"}, "<html>502 Bad Gateway</html>"),
    ({"content": b""}, ""),
]


@pytest.mark.parametrize(("body", "text"), BODIES)
def test_any_error_body_is_a_made_api_error(body: dict[str, Any], text: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, **body)

    transport = httpx.MockTransport(answer)
    with (
        MadeClient(http=httpx.Client(transport=transport, base_url="http://x")) as made,
        pytest.raises(MadeAPIError) as info,
    ):
        made.logprob(rows())
    assert (info.value.status_code, info.value.detail, info.value.type) == (502, text, "")

    async def ask_async() -> MadeAPIError:
        async with AsyncMadeClient(http=httpx.AsyncClient(transport=transport, base_url="http://x")) as made:
            try:
                await made.logprob(rows())
            except MadeAPIError as exc:
                return exc
        raise AssertionError("no MadeAPIError")

    exc = anyio.run(ask_async)
    assert (exc.status_code, exc.detail, exc.type) == (502, text, "")


def test_the_services_own_errors_keep_their_fields(ask: Ask) -> None:
    with pytest.raises(MadeAPIError) as info:
        ask("logprob", rows(), model="nope")
    assert info.value.status_code == 404 and "nope" in info.value.detail and info.value.type


def test_a_model_name_is_one_path_segment(ask: Ask) -> None:
    """model('mushrooms?x=1') asked for GET /models/mushrooms?x=1 and got mushrooms' manifest; a
    name goes as one escaped path segment, so a name that is not a model's is a 404 naming it."""
    assert ask("model", "mushrooms")["name"] == "mushrooms"
    for name in ("mushrooms?x=1", "mushrooms x", "mushrooms;v=1"):
        with pytest.raises(MadeAPIError) as info:
            ask("model", name)
        assert info.value.status_code == 404, name
    with pytest.raises(MadeAPIError) as info:
        ask("anomaly_threshold", "mushrooms#x")
    assert info.value.status_code == 404


def test_a_null_logprob_is_read() -> None:
    """The API answers null where a row's probability underflows float64 (docs/api.md); the
    client's model of the answer refused it."""
    from service.core.schemas import LogProbResponse

    answer = LogProbResponse.model_validate_json(
        '{"model": "m", "version": "1", "logprob": [null, -3.5], "exact": [true, true], "stderr": [null, null]}'
    )
    assert answer.logprob == [None, -3.5]


def test_denoise_takes_n_particles_as_the_service_does(ask: Ask) -> None:
    """The client's denoise had only n_importance; n_particles is the service's other way to say
    it (n_importance 128 is 8 particles a mask), and both at once is the server's 422."""
    x = rows(1)
    by_particles = ask("denoise", x, 0.1, seed=3, n_samples=2, n_particles=8)
    by_draws = ask("denoise", x, 0.1, seed=3, n_samples=2, n_importance=128)
    assert by_particles.marginals == by_draws.marginals and by_particles.ess == by_draws.ess
    assert "send one of them" in refused(ask, "denoise", x, 0.1, n_particles=8, n_importance=128)
