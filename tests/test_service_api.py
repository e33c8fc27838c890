"""The HTTP API in-process (httpx ASGITransport, real tiny models, real onnxruntime): answers
agree with the engine, errors are 4xx with one sentence naming what was wrong, never a 500."""

from __future__ import annotations

import gzip
import hmac
import io
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from helpers import metric, metric_samples, post
from PIL import Image

from made.store.manifest import public_manifest
from service.client import MadeAPIError
from service.engine import ModelRegistry
from service.settings import Settings
from service.testing import InProcessClient, in_process

pytestmark = pytest.mark.anyio

X8 = [[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]


def settings(store: Path, **overrides: Any) -> Settings:
    return Settings(store=store, batch_delay_ms=1, **overrides)


@pytest.fixture
async def made(tiny_store: Path, registry: ModelRegistry) -> AsyncIterator[InProcessClient]:
    async with in_process(settings(tiny_store), registry) as client:
        yield client


# --- answers ----------------------------------------------------------------------------------


async def test_models_lists_every_model_and_the_default(made: InProcessClient) -> None:
    models = await made.models()
    assert [m.name for m in models.models] == ["tiny", "tiny1", "tiny10"]
    assert models.default == "tiny" and [m.default for m in models.models] == [True, False, False]
    tiny = models.models[0]
    assert (tiny.dims, tiny.n_masks, tiny.version) == (8, 4, "1")
    assert tiny.providers == ["CPUExecutionProvider"] and tiny.test_nll is not None


async def test_model_endpoint_returns_the_manifest(made: InProcessClient, registry: ModelRegistry) -> None:
    manifest = await made.model("tiny10")
    assert manifest == json.loads(json.dumps(public_manifest(registry.get("tiny10").manifest)))
    with pytest.raises(MadeAPIError) as info:
        await made.model("nope")
    assert info.value.status_code == 404 and "unknown model 'nope'" in info.value.detail


async def test_logprob_matches_the_engine_for_the_mixture_and_one_mask(
    made: InProcessClient, registry: ModelRegistry
) -> None:
    engine = registry.get("tiny")
    for masks in ("all", 2):
        r = await made.logprob(X8, masks=masks)  # type: ignore[arg-type]
        expected = engine.logprob(np.array(X8, dtype=float), masks=masks)  # type: ignore[arg-type]
        np.testing.assert_allclose(r.logprob, expected.logprob, rtol=1e-12)
        assert r.exact == [True] * 3 and r.stderr == [None] * 3
        assert (r.model, r.version) == ("tiny", "1")


async def test_logprob_with_missing_values_is_reproducible_from_the_returned_seed(
    made: InProcessClient, registry: ModelRegistry
) -> None:
    x: list[list[int | None]] = [[0, None, 1, None, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0]]
    first = await made.logprob(x, n_importance=200)
    assert first.seed is not None
    again = await made.logprob(x, n_importance=200, seed=first.seed)
    assert again.logprob == first.logprob
    assert first.exact[1] and first.stderr[1] is None
    xs = np.array(x, dtype=float)
    expected = registry.get("tiny").logprob(xs, seed=first.seed, n_importance=200)
    np.testing.assert_allclose(first.logprob, expected.logprob, rtol=1e-12)


async def test_model_is_chosen_per_request(made: InProcessClient) -> None:
    r = await made.logprob([[0] * 10], model="tiny10")
    assert r.model == "tiny10" and len(r.logprob) == 1


async def test_packed_rows_give_the_same_answer_as_json_rows(made: InProcessClient) -> None:
    as_json = await made.conditionals(X8, mask=1)
    packed = await made.conditionals(np.array(X8), mask=1, packed=True)
    assert packed.probs == as_json.probs


async def test_conditionals_give_the_ordering_and_probabilities(made: InProcessClient, registry: ModelRegistry) -> None:
    r = await made.conditionals(X8, mask=3)
    engine = registry.get("tiny")
    assert r.ordering == engine.orderings[3].tolist() and r.mask == 3
    np.testing.assert_allclose(r.probs, engine.conditionals(np.array(X8, float), mask=3))


async def test_sample_is_reproducible_by_seed_and_matches_the_engine(
    made: InProcessClient, registry: ModelRegistry
) -> None:
    a = await made.sample(50, seed=7)
    b = await made.sample(50, seed=7)
    assert a.samples == b.samples and a.seed == 7 and a.mask == "mixture"
    np.testing.assert_array_equal(a.array(), registry.get("tiny").sample(50, 7))
    one = await made.sample(20, seed=7, mask=1, model="tiny10")
    np.testing.assert_array_equal(one.array(), registry.get("tiny10").sample(20, 7, 1))


async def test_sample_without_seed_returns_the_seed_it_drew(made: InProcessClient) -> None:
    first = await made.sample(30)
    again = await made.sample(30, seed=first.seed)
    assert again.samples == first.samples


async def test_packed_samples_decode_to_the_json_samples(made: InProcessClient) -> None:
    packed = await made.sample(33, seed=3, packed=True, model="tiny10")
    plain = await made.sample(33, seed=3, model="tiny10")
    assert packed.samples is None and packed.shape == [33, 10]
    np.testing.assert_array_equal(packed.array(), plain.array())


async def test_impute_keeps_observed_values_and_reports_marginals(made: InProcessClient) -> None:
    x: list[list[int | None]] = [[0, None, 1, None, 1, 0, 0, None], [1, 1, 1, 1, 0, 0, 0, 0]]
    r = await made.impute(x, n_samples=5, seed=1, n_importance=100)
    samples = r.array()
    assert samples.shape == (2, 5, 8)
    observed = ~np.isnan(np.array(x, dtype=float))
    np.testing.assert_array_equal(samples[0][:, observed[0]], np.broadcast_to(np.array(x[0])[observed[0]], (5, 5)))
    assert r.marginals[1] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert all(0 <= p <= 1 for p in r.marginals[0]) and r.ess[0] > 1
    packed = await made.impute(x, n_samples=5, seed=1, n_importance=100, packed_output=True)
    np.testing.assert_array_equal(packed.array(), samples)
    assert packed.logprob_observed == r.logprob_observed


async def test_png_grid_of_samples_for_an_image_model(tmp_path: Path, tiny_store: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "tiny", store / "tiny")
    manifest_path = store / "tiny" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["image_shape"] = [2, 4]
    manifest_path.write_text(json.dumps(manifest))
    async with in_process(settings(store)) as made:
        await made.wait_ready()
        png = await made.sample_png(4, seed=5, scale=1)
        samples = (await made.sample(4, seed=5)).array().reshape(4, 2, 4)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (2 * 3 + 1, 2 * 5 + 1)  # 2 x 2 cells of 2 x 4, 1-pixel gaps
    np.testing.assert_array_equal(image[1:3, 1:5], samples[0] * 255)
    np.testing.assert_array_equal(image[4:6, 6:10], samples[3] * 255)


async def test_png_for_a_model_without_image_shape_is_406(made: InProcessClient) -> None:
    status, body = await post(made, "/sample", {"n": 2}, headers={"Accept": "image/png"})
    assert status == 406 and "has no image_shape" in body["detail"]
    r = await made.http.post("/sample", json={"n": 2}, headers={"Accept": "*/*"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/logprob", {"x": [[0, 1, 1, 0, 1, 0, 0, 3]]}, 422, "x: row 0, column 7: expected 0, 1 or null, got 3"),
        ("/logprob", {"x": [[0, 1, 1, 0, 1, 0, 0]]}, 422, "x: rows have 7 values but model 'tiny' has 8 dimensions"),
        ("/logprob", {"x": X8, "masks": 4}, 422, "masks 4 does not exist: model 'tiny' has 4 masks (0..3)"),
        (
            "/logprob",
            {"x": X8, "model": "tiny1", "masks": 1},
            422,
            "masks 1 does not exist: model 'tiny1' has 1 mask (0..0)",
        ),
        ("/logprob", {"x": X8, "model": "missing"}, 404, "unknown model 'missing'"),
        (
            "/conditionals",
            {"x": [[0, 1, 1, 0, 1, 0, None, 1]]},
            422,
            "x: row 0, column 6 is null, but this endpoint needs complete rows",
        ),
        ("/conditionals", {"x": X8, "mask": 9}, 422, "mask 9 does not exist"),
        ("/sample", {"n": 10_001}, 422, "n is 10001; the limit is 10000 samples per request (MADE_MAX_SAMPLES)"),
        ("/sample", {"n": 1, "mask": 4}, 422, "mask 4 does not exist"),
        ("/sample", {"n": 1, "model": "x"}, 404, "unknown model 'x'"),
        (
            "/impute",
            {"x": [[0, None, 1, 0, 1, 0, 0, 1]] * 2, "n_samples": 6000},
            422,
            "2 rows x n_samples 6000 = 12000 samples; the limit is 10000",
        ),
        ("/impute", {"x": [[0, None, 1, 0, 1, 0, 0, "a"]]}, 422, "x: row 0, column 7"),
        (
            "/logprob",
            {"x": [[0, 1, 0, 1e300, 0, 0, 0, 0]]},
            422,
            "x: row 0, column 3: expected 0, 1 or null, got 1e+300",
        ),
    ],
)
async def test_bad_requests_get_4xx_naming_the_problem(
    made: InProcessClient, path: str, body: dict, status: int, detail: str
) -> None:
    got, answer = await post(made, path, body)
    assert got == status, answer
    assert answer["detail"].startswith(detail), answer["detail"]
    assert answer["type"] in {"invalid_input", "model_not_found"} and answer["request_id"]
    if status == 422:  # one error shape for every 422: the problems listed under "errors"
        assert answer["errors"] and answer["errors"][0]["loc"][0] == "body", answer
        assert all(detail.startswith(e["msg"]) or e["msg"] in answer["detail"] for e in answer["errors"])


async def test_a_body_sent_as_another_media_type_is_415(made: InProcessClient) -> None:
    body = json.dumps({"x": X8}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):  # the second is curl -d's
        r = await made.http.post("/logprob", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 415, r.text
        assert r.json()["type"] == "unsupported_media_type"
        assert r.json()["detail"] == (
            f"the request body must be JSON, sent with 'Content-Type: application/json' (got '{content_type}')"
        )
    r = await made.http.post("/logprob", content=body)  # no Content-Type at all
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body"]
    assert "Content-Type: application/json" in r.json()["detail"]


async def test_bodies_that_cannot_be_read_as_json_say_why(made: InProcessClient) -> None:
    """FastAPI says only "There was an error parsing the body" (400) for these; we say what."""
    json_headers = {"Content-Type": "application/json"}
    r = await made.http.post("/logprob", content=b'{"x": "\xff\xfe"}', headers=json_headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "the request body is not valid JSON (not UTF-8: byte 0xff at position 7)"
    assert r.json()["errors"] == [{"loc": ["body"], "msg": r.json()["detail"], "type": "json_invalid"}]
    deep = b'{"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for path in ("/logprob", "/sample"):
        r = await made.http.post(path, content=deep, headers=json_headers)
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(
            "the request body is not valid JSON here: its arrays or objects nest too deeply"
        )
    r = await made.http.post("/sample", content=b"[" * 100_000, headers=json_headers)  # refused before routing
    assert r.status_code == 422, r.text
    # labelled by the route the path and method match, not "unmatched" (refused before routing)
    labels = {s.labels["endpoint"] for s in metric_samples((await made.http.get("/metrics")).text, "made_errors_total")}
    assert {"/logprob", "/sample"} <= labels and "unmatched" not in labels, labels
    # a compressed body: we do not decode Content-Encoding, and say so (415, as RFC 9110 asks)
    body = gzip.compress(json.dumps({"n": 1, "seed": 0}).encode())
    r = await made.http.post("/sample", content=body, headers={**json_headers, "Content-Encoding": "gzip"})
    assert r.status_code == 415, r.text
    assert r.json()["type"] == "unsupported_media_type" and r.headers["x-request-id"] == r.json()["request_id"]
    assert r.json()["detail"] == (
        "Content-Encoding 'gzip' is not supported here: send the request body uncompressed (the /v2 inference "
        "endpoints take gzip and deflate)"
    )
    r = await made.http.post(
        "/sample", content=b'{"n": 1, "seed": 0}', headers={**json_headers, "Content-Encoding": "identity"}
    )
    assert r.status_code == 200 and len(r.json()["samples"]) == 1


async def test_a_packed_shape_other_than_two_integers_says_what_it_must_be(made: InProcessClient) -> None:
    # [3] was "shape row 1 is required", as if shape were rows
    for shape in ([3], [3, 8, 1], "3x8", [3, 8.0], [True, 8]):
        got, answer = await post(made, "/conditionals", {"x_b64": "AAAA", "shape": shape})
        assert got == 422 and answer["detail"].startswith("shape: shape must be [N, D], the number of rows"), answer
    got, answer = await post(made, "/conditionals", {"x_b64": "AAA=", "shape": [2, 8]})
    assert got == 200, answer


async def test_a_wrong_width_names_its_field_in_errors(made: InProcessClient) -> None:
    got, answer = await post(made, "/logprob", {"x": [[0, 1, 1]]})
    assert got == 422 and answer["errors"] == [{"loc": ["body", "x"], "msg": answer["detail"], "type": "invalid_input"}]
    # a bit other than 0/1 (a field's own check) is typed as every other refused value; it was
    # "made_invalid" while a record's or a CSV cell's was "invalid_input"
    got, answer = await post(made, "/logprob", {"x": [[0, 2, 1, 0, 1, 0, 1, 0]]})
    assert got == 422 and answer["errors"] == [{"loc": ["body", "x"], "msg": answer["detail"], "type": "invalid_input"}]
    assert answer["detail"] == "x: row 0, column 1: expected 0, 1 or null, got 2"


async def test_rows_over_max_rows_are_refused(tiny_store: Path, registry: ModelRegistry) -> None:
    async with in_process(settings(tiny_store, max_rows=2), registry) as made:
        with pytest.raises(MadeAPIError) as info:
            await made.logprob(X8)
    assert info.value.status_code == 422
    assert info.value.detail == "x has 3 rows; the limit is 2 per request (MADE_MAX_ROWS)"


async def test_importance_draws_over_max_draws_are_refused(tiny_store: Path, registry: ModelRegistry) -> None:
    x = [[0, None, 1, 0, 1, 0, 0, 1]] * 3 + [[0, 1, 1, 0, 1, 0, 0, 1]]
    async with in_process(settings(tiny_store, max_draws=2000), registry) as made:
        assert (await made.logprob(x[:2], n_importance=1000)).exact == [False, False]
        rows = "rows that need importance sampling (a missing value before an observed one in some mask's ordering)"
        for call in (made.logprob, made.impute):
            with pytest.raises(MadeAPIError) as info:
                await call(x, n_importance=1000)
            assert info.value.status_code == 422 and info.value.detail.startswith(
                f"3 {rows} x n_importance 1000 = 3000 importance draws; the limit is 2000 per request (MADE_MAX_DRAWS)"
            )
        # exact rows (missing values after every observed one in every ordering) need no
        # importance draws: /logprob sums them out in one pass per mask, /impute draws n_samples
        exact = [[0, 1, 1, 0, 1, 0, None, None]] * 3
        r = await made.impute(exact, model="tiny1", n_importance=1000, n_samples=2, seed=0)
        assert r.exact == [True] * 3 and r.ess == [2.0] * 3
        lp = await made.logprob(exact, model="tiny1", n_importance=1000)
        assert lp.exact == [True] * 3


async def test_no_500_for_malformed_bodies(made: InProcessClient) -> None:
    """ASGITransport re-raises server errors, so a 500 would fail here loudly."""
    bad: list[tuple[str, bytes]] = [
        ("/logprob", b""),
        ("/logprob", b"{"),
        ("/logprob", b"[]"),
        ("/logprob", b"null"),
        ("/logprob", b'{"x": null}'),
        ("/logprob", b'{"x": [[]]}'),
        ("/logprob", b'{"x": [null]}'),
        ("/logprob", b'{"x": [[NaN, 1, 0, 1, 0, 1, 0, 1]]}'),
        ("/logprob", b'{"x": {"a": 1}}'),
        ("/logprob", b'{"x": [[1e400, 1, 0, 1, 0, 1, 0, 1]]}'),
        ("/logprob", b'"x"'),
        ("/logprob", b'{"x": [[0,1,0,1,0,1,0,1]], "n_importance": 10000000}'),
        ("/logprob", b'{"x": [[0,1,0,1,0,1,0,1]], "seed": 1e30}'),
        ("/logprob", b'{"x": [[0,1,0,1,0,1,0,1]], "masks": 99999999999999999999999}'),
        ("/conditionals", b'{"x_b64": "AAAA", "shape": [4, 8]}'),
        ("/conditionals", b'{"x_b64": "AAAA", "shape": [3]}'),
        ("/conditionals", b'{"x_b64": 5, "shape": [3, 8]}'),
        ("/sample", b'{"n": -1}'),
        ("/sample", b'{"n": 1, "seed": -1}'),
        ("/sample", b'{"n": 1, "seed": 99999999999999999999999}'),
        ("/sample", b'{"n": 1, "model": 5}'),
        ("/sample", b'{"n": 1, "model": ""}'),
        ("/impute", b'{"x": [[0,1,0,1,0,1,0,1]], "n_samples": 0}'),
        ("/impute", b'{"x": [[0,1,0,1,0,1,0,1]], "model": "tiny10"}'),
        ("/models/..%2F..", b""),
    ]
    for path, body in bad:
        r = await made.http.post(path, content=body, headers={"Content-Type": "application/json"})
        if path.startswith("/models"):
            r = await made.http.get(path)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "Traceback" not in detail, (path, body, detail)


async def test_a_bug_answers_500_with_the_request_id_and_no_traceback(
    tiny_store: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from service.core.dataplane import DataPlane
    from service.http.app import create_app

    def broken(self: DataPlane) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(DataPlane, "models", broken)
    app = create_app(settings(tiny_store), registry)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.get("/models", headers={"X-Request-ID": "bug-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "bug-1"
    assert r.json() == {
        "detail": "internal error; the server log has the details under this request id",
        "type": "internal_error",
        "request_id": "bug-1",
    }
    logged = [rec for rec in caplog.records if rec.levelname == "ERROR" and rec.exc_info]
    assert logged and "secret internals" in str(logged[0].exc_info[1])  # type: ignore[index]


async def test_unknown_path_and_wrong_method_are_json_errors(made: InProcessClient) -> None:
    r = await made.http.get("/nowhere")
    assert r.status_code == 404 and r.json()["detail"] == "no endpoint at /nowhere (see /docs)"
    r = await made.http.get("/logprob")
    assert r.status_code == 405 and r.json()["detail"] == "GET is not allowed on /logprob"


async def test_body_over_the_limit_is_413(tiny_store: Path, registry: ModelRegistry) -> None:
    async with in_process(settings(tiny_store, max_body_bytes=1024), registry) as made:
        body = json.dumps({"x": X8 * 30}).encode()
        assert len(body) > 1024
        r = await made.http.post("/logprob", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert "over 1024 bytes (MADE_MAX_BODY_BYTES)" in r.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for i in range(0, len(body), 100):
                yield body[i : i + 100]

        r = await made.http.post("/logprob", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["type"] == "payload_too_large"
        assert (await made.logprob(X8)).model == "tiny"  # a small body still passes


async def test_request_timeout_answers_504(tiny_store: Path, registry: ModelRegistry) -> None:
    async with in_process(settings(tiny_store, request_timeout=0.001), registry) as made:
        with pytest.raises(MadeAPIError) as info:
            await made.impute([[0, None, 1, None, 1, 0, 0, None]], n_importance=5000)
    assert info.value.status_code == 504 and "MADE_REQUEST_TIMEOUT" in info.value.detail


# --- auth -------------------------------------------------------------------------------------


async def test_api_key_guards_everything_but_health_readiness_and_metrics(
    tiny_store: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("service.http.auth.hmac.compare_digest", spy)
    async with in_process(settings(tiny_store, api_key="s3cret"), registry) as made:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await made.http.get(path)).status_code == 200, path
        for method, path, body in [
            ("GET", "/models", None),
            ("GET", "/models/tiny", None),
            ("POST", "/logprob", {"x": X8}),
            ("POST", "/sample", {"n": 1}),
            ("POST", "/conditionals", {"x": X8}),
            ("POST", "/impute", {"x": X8}),
        ]:
            r = await made.http.request(method, path, json=body)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
            assert "requires an API key" in r.json()["detail"]
            r = await made.http.request(method, path, json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["detail"] == ("the API key in the Authorization header is wrong")
            r = await made.http.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200, (path, r.text)
    assert (b"wrong", b"s3cret") in compared and (b"s3cret", b"s3cret") in compared


async def test_typed_client_sends_the_api_key(tiny_store: Path, registry: ModelRegistry) -> None:
    async with in_process(settings(tiny_store, api_key="k"), registry, api_key="k") as made:
        assert (await made.sample(2, seed=0)).shape is None


# --- readiness, metrics, request ids, docs --------------------------------------------------------


async def test_readyz_is_503_until_models_load(tiny_store: Path) -> None:
    cfg = settings(tiny_store, providers=["cpu"])
    async with in_process(cfg, lifespan=False) as made:  # startup never ran
        r = await made.http.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"] == "models are still loading"
        assert (await made.http.get("/healthz")).json() == {"status": "ok"}
        status, body = await post(made, "/sample", {"n": 1})
        assert status == 503 and body["type"] == "not_ready"
    async with in_process(cfg) as made:
        await made.wait_ready()
        ready = await made.readyz()
        assert ready.models == ["tiny", "tiny1", "tiny10"] and ready.default == "tiny"


async def test_folders_that_are_not_models_do_not_keep_the_store_from_loading(tmp_path: Path, tiny_store: Path) -> None:
    """A fresh ext4 volume mounted as the store (Kubernetes' PVC) has lost+found at its root, and
    a model being copied in is an empty folder for a while: neither is a model. Both made
    /readyz 503 for good ("model 'lost+found' ... has no versions"), the real model unserved."""
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "tiny", store / "tiny")
    (store / "lost+found").mkdir()
    (store / "lost+found" / "#12345").mkdir()  # what fsck may leave there
    (store / "arriving").mkdir()
    async with in_process(settings(store)) as made:
        await made.wait_ready()
        ready = await made.readyz()
        assert ready.models == ["tiny"] and ready.default == "tiny"


async def test_readyz_explains_a_store_that_cannot_load(tmp_path: Path) -> None:
    async with in_process(settings(tmp_path)) as made:
        for _ in range(500):
            r = await made.http.get("/readyz")
            if "failed" in r.json()["detail"]:
                break
            await anyio.sleep(0.01)
        assert r.status_code == 503
        assert r.json()["detail"] == (f"models failed to load: model store {tmp_path} holds no models")


async def test_default_model_setting_picks_the_default(tiny_store: Path) -> None:
    async with in_process(settings(tiny_store, default_model="tiny10")) as made:
        await made.wait_ready()
        assert (await made.sample(1, seed=0)).model == "tiny10"


async def test_metrics_count_requests_errors_latency_and_rows_per_endpoint_and_model(made: InProcessClient) -> None:
    await made.logprob(X8, model="tiny1")
    await post(made, "/logprob", {"x": [[2] * 8], "model": "tiny1"})
    text = await made.metrics()
    assert metric(text, "made_requests_total", endpoint="/logprob", model="tiny1", status="200") == 1.0
    assert metric(text, "made_requests_total", endpoint="/logprob", model="", status="422") == 1.0
    assert metric(text, "made_errors_total", endpoint="/logprob", model="", type="invalid_input") == 1.0
    assert metric(text, "made_request_duration_seconds_count", endpoint="/logprob", model="tiny1") == 1.0
    assert metric(text, "made_request_rows_sum", endpoint="/logprob", model="tiny1") == 3.0
    assert metric(text, "made_batch_rows_sum", endpoint="/logprob", model="tiny1") == 3.0
    assert metric(text, "made_models_loaded") == 3.0


async def test_request_id_is_echoed_and_logged(made: InProcessClient, caplog: pytest.LogCaptureFixture) -> None:
    from service.core.log_config import JsonFormatter

    with caplog.at_level("INFO", logger="made.service.access"):
        r = await made.http.post("/sample", json={"n": 1, "mask": 99}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["request_id"] == "abc-123"
    access = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records if rec.name == "made.service.access"]
    assert access[-1]["request_id"] == "abc-123" and access[-1]["status"] == 422
    assert access[-1]["path"] == "/sample" and access[-1]["model"] == "tiny"
    r = await made.http.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert len(r.headers["x-request-id"]) == 32  # replaced by a fresh one


async def test_openapi_documents_every_endpoint(made: InProcessClient) -> None:
    spec = (await made.http.get("/openapi.json")).json()
    assert {
        "/logprob",
        "/conditionals",
        "/sample",
        "/impute",
        "/models",
        "/models/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    sample = spec["paths"]["/sample"]["post"]
    assert "image/png" in sample["responses"]["200"]["content"]
    assert (await made.http.get("/docs")).status_code == 200
