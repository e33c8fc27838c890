"""The Open Inference Protocol (KServe v2) endpoints: a client nobody here wrote (tritonclient's
HTTP client) against a real `made serve`, with answers equal to /logprob's, /conditionals' and
/sample's for the same rows and seeds; then the request forms and error paths in-process."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import metric
from tritonclient.utils import InferenceServerException

from made.core.errors import Overloaded
from service.engine import ModelRegistry
from service.http.oip import error_response
from service.settings import Settings
from service.testing import InProcessClient, ServerProcess, in_process, made_serve

ROOT = Path(__file__).resolve().parent.parent
KEY = "v2-k3y"


def auth() -> dict[str, str]:
    """The key's header, a fresh dict each time: tritonclient adds its own headers to the one given."""
    return {"Authorization": f"Bearer {KEY}"}


NAN = np.nan
# tiny (D=8, K=4 order-agnostic: a missing value mostly needs importance sampling) and tiny1
# (D=8, one mask in natural order: missing values at the end are summed out exactly).
ROWS8 = np.array(
    [[0, 1, 1, 0, 1, 0, 0, 1], [1, NAN, 1, 1, 0, 0, NAN, 0], [0, 0, 0, 0, 0, 0, 0, NAN], [1, 1, 1, 1, 1, 1, 1, 1]]
)
ROWS10 = np.array([[0, 1, 1, 0, 1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]], dtype=float)


def as_json_rows(x: np.ndarray) -> list[list[int | None]]:
    """Rows as /logprob reads them: 0/1, null for NaN."""
    return [[None if v != v else int(v) for v in row] for row in x.tolist()]


# --- a real `made serve`, through tritonclient -----------------------------------------------


@pytest.fixture(scope="module")
def v2_store(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models beside the shipped table model 'diamonds' (links, nothing copied)."""
    store = tmp_path_factory.mktemp("v2") / "store"
    store.mkdir()
    for name in ("tiny", "tiny1", "tiny10"):
        (store / name).symlink_to(tiny_store / name, target_is_directory=True)
    if (ROOT / "model_store" / "diamonds").is_dir():
        (store / "diamonds").symlink_to(ROOT / "model_store" / "diamonds", target_is_directory=True)
    return store


@pytest.fixture(scope="module")
def server(v2_store: Path) -> Iterator[ServerProcess]:
    env = {"MADE_API_KEY": KEY, "MADE_DEFAULT_MODEL": "tiny10", "MADE_BATCH_DELAY_MS": "1", "OMP_NUM_THREADS": "1"}
    with made_serve(v2_store, env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60.0)
    try:
        yield c
    finally:
        c.close()


def api(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The same question through the API (POST /logprob, /conditionals, /sample)."""
    r = httpx.post(f"{server.url}{path}", json=body, headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def x_input(x: np.ndarray, binary: bool = True, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x.astype(np.float32 if datatype == "FP32" else np.float64), binary_data=binary)
    return tensor


def outputs(*names: str, binary: bool = True) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def refused(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.slow
def test_server_and_model_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    meta = client.get_server_metadata(headers=auth())
    assert meta["name"] == "made" and meta["extensions"] == ["binary_tensor_data"] and meta["version"]
    model = client.get_model_metadata("tiny10", headers=auth())
    assert (model["name"], model["versions"], model["platform"]) == ("tiny10", ["1"], "onnxruntime_onnx")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 10]}]
    assert model["outputs"][0] == {"name": "logprob", "datatype": "FP64", "shape": [-1]}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in model["outputs"][1:]} == {
        "exact": ("BOOL", [-1]),
        "stderr": ("FP64", [-1]),
        "conditionals": ("FP64", [-1, 10]),
        "samples": ("UINT8", [-1, 10]),
    }
    assert client.get_model_metadata("tiny10", "1", headers=auth()) == model
    assert client.is_model_ready("tiny", headers=auth())
    assert client.is_model_ready("tiny", "1", headers=auth())
    assert not client.is_model_ready("tiny", "2", headers=auth())
    assert not client.is_model_ready("nope", headers=auth())
    err = refused(client.get_model_metadata, "nope", headers=auth())
    assert err.status() == "404" and "unknown model 'nope'" in err.message()


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", ["tiny", "tiny1"])
def test_infer_logprob_equals_post_logprob(
    client: triton.InferenceServerClient, server: ServerProcess, name: str, binary: bool
) -> None:
    result = client.infer(
        name,
        [x_input(ROWS8, binary)],
        outputs=outputs("logprob", "exact", "stderr", binary=binary),
        parameters={"seed": 7},
        headers=auth(),
    )
    want = api(server, "/logprob", {"model": name, "x": as_json_rows(ROWS8), "seed": 7})
    logprob = result.as_numpy("logprob")
    assert logprob.dtype == np.float64 and logprob.shape == (4,)
    np.testing.assert_array_equal(logprob, want["logprob"])
    np.testing.assert_array_equal(result.as_numpy("exact"), want["exact"])
    np.testing.assert_array_equal(result.as_numpy("stderr"), [NAN if s is None else s for s in want["stderr"]])
    assert result.get_response()["model_version"] == "1"
    assert result.get_response()["parameters"] == {"seed": 7}
    if name == "tiny":
        assert not all(want["exact"])  # importance sampling, repeated by the seed
    # Without outputs: logprob alone (tritonclient then asks for binary outputs).
    plain = client.infer(name, [x_input(ROWS8[[0, 3]], binary)], headers=auth())
    np.testing.assert_array_equal(plain.as_numpy("logprob"), np.asarray(want["logprob"])[[0, 3]])
    assert plain.as_numpy("exact") is None


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_conditionals_equal_post_conditionals(
    client: triton.InferenceServerClient, server: ServerProcess, binary: bool
) -> None:
    for mask in (0, 2):
        result = client.infer(
            "tiny10",
            [x_input(ROWS10, binary, "FP64")],
            outputs=outputs("conditionals", "logprob", binary=binary),
            parameters={"mask": mask, "masks": mask},
            headers=auth(),
        )
        want = api(server, "/conditionals", {"model": "tiny10", "x": ROWS10.astype(int).tolist(), "mask": mask})
        np.testing.assert_array_equal(result.as_numpy("conditionals"), want["probs"])
        lp = api(server, "/logprob", {"model": "tiny10", "x": ROWS10.astype(int).tolist(), "masks": mask})
        np.testing.assert_array_equal(result.as_numpy("logprob"), lp["logprob"])


@pytest.mark.slow
def test_sampling_with_a_seed_is_reproducible_and_equals_post_sample(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    for params in ({"n": 6, "seed": 11}, {"n": 3, "seed": 5, "mask": 1}):
        first = client.infer("tiny10", [], outputs=outputs("samples"), parameters=params, headers=auth())
        again = client.infer("tiny10", [], outputs=outputs("samples", binary=False), parameters=params, headers=auth())
        samples = first.as_numpy("samples")
        assert samples.dtype == np.uint8 and samples.shape == (params["n"], 10)
        np.testing.assert_array_equal(samples, again.as_numpy("samples"))
        want = api(server, "/sample", {"model": "tiny10", **params})
        np.testing.assert_array_equal(samples, want["samples"])
        assert first.get_response()["parameters"] == {"seed": params["seed"]}
    # Without a seed, the answer names the one drawn, which repeats the samples.
    drawn = client.infer("tiny10", [], outputs=outputs("samples"), parameters={"n": 4}, headers=auth())
    seed = drawn.get_response()["parameters"]["seed"]
    np.testing.assert_array_equal(
        drawn.as_numpy("samples"), api(server, "/sample", {"model": "tiny10", "n": 4, "seed": seed})["samples"]
    )


@pytest.mark.slow
def test_bad_requests_are_4xx_naming_the_problem(client: triton.InferenceServerClient) -> None:
    def infer_error(model: str, tensors: list[triton.InferInput], **kwargs: Any) -> tuple[str, str]:
        err = refused(client.infer, model, tensors, headers=auth(), **kwargs)
        return err.status(), err.message()

    assert infer_error("tiny10", [x_input(np.zeros((2, 9)))]) == (
        "400",
        "x: rows have 9 values but model 'tiny10' has 10 dimensions (one value per dimension)",
    )
    assert infer_error("tiny10", [x_input(np.zeros(10))]) == (
        "400",
        "input x must have shape [N, D] (N rows of 10 values), got [10]",
    )
    bad = ROWS10.copy()
    bad[1, 3] = 2
    assert infer_error("tiny10", [x_input(bad)]) == (
        "400",
        "input x: row 1, column 3: expected 0, 1 or NaN (missing), got 2",
    )
    words = triton.InferInput("x", [1, 10], "BYTES")
    words.set_data_from_numpy(np.array([[b"0"] * 10], dtype=np.object_))
    status, message = infer_error("tiny10", [words])
    assert status == "400" and message.startswith("input x: datatype 'BYTES' is not read here")
    holes = ROWS8.copy()
    assert infer_error("tiny", [x_input(holes)], outputs=outputs("conditionals")) == (
        "400",
        "input x: row 1, column 1 is missing (NaN), but output conditionals needs complete rows (0 or 1 only)",
    )
    assert infer_error("tiny", [x_input(ROWS8)], outputs=outputs("probs")) == (
        "400",
        "unknown output 'probs'; the outputs are logprob, exact, stderr, conditionals, samples",
    )
    status, message = infer_error("tiny", [x_input(ROWS8)], parameters={"seed": -1})
    assert status == "400" and message.startswith("parameters.seed: input should be greater than or equal to 0")
    assert infer_error("tiny", [x_input(ROWS8)], parameters={"masks": 4}) == (
        "400",
        "masks 4 does not exist: model 'tiny' has 4 masks (0..3)",
    )
    assert infer_error("tiny", [], outputs=outputs("samples")) == (
        "400",
        "output samples needs parameters.n, the number of samples (and parameters.seed to repeat them)",
    )
    status, message = infer_error("nope", [x_input(ROWS8)])
    assert status == "404" and message.startswith("unknown model 'nope'")
    assert infer_error("tiny", [x_input(ROWS8)], model_version="2") == (
        "404",
        "model 'tiny' has no version '2' served (it serves version '1')",
    )


@pytest.mark.slow
def test_table_models_are_refused_with_the_way_to_score_them(
    client: triton.InferenceServerClient, v2_store: Path
) -> None:
    if not (v2_store / "diamonds").exists():
        pytest.skip("the shipped table model model_store/diamonds is absent")
    err = refused(client.infer, "diamonds", [x_input(np.zeros((1, 10)))], headers=auth())
    assert err.status() == "400"
    assert err.message() == (
        "model 'diamonds' models the columns of a table; the Open Inference Protocol "
        "(/v2) answers models of bits (a table model answers /logprob, /sample and "
        "/impute with records)"
    )
    assert not client.is_model_ready("diamonds", headers=auth())


@pytest.mark.slow
def test_the_api_key_is_required_as_for_every_other_endpoint(client: triton.InferenceServerClient) -> None:
    err = refused(client.infer, "tiny", [x_input(ROWS8)])
    assert err.status() == "401"
    assert err.message() == "this server requires an API key: send 'Authorization: Bearer <key>'"
    err = refused(client.infer, "tiny", [x_input(ROWS8)], headers={"Authorization": "Bearer nope"})
    assert (err.status(), err.message()) == ("401", "the API key in the Authorization header is wrong")
    assert refused(client.get_model_metadata, "tiny").status() == "401"
    assert refused(client.get_server_metadata).status() == "401"
    assert not client.is_model_ready("tiny")


# --- in-process: the request forms and the error paths ---------------------------------------


@pytest.fixture
async def made(tiny_store: Path, registry: ModelRegistry) -> AsyncIterator[InProcessClient]:
    settings = Settings(store=tiny_store, batch_delay_ms=1, max_rows=50, max_samples=100)
    async with in_process(settings, registry) as c:
        yield c


async def infer(
    made: InProcessClient, body: dict[str, Any] | bytes, model: str = "tiny", headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await made.http.post(f"/v2/models/{model}/infer", content=content, headers=headers)


def x_tensor(data: Any, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


async def error_of(made: InProcessClient, body: dict[str, Any] | bytes, status: int = 400, **kwargs: Any) -> str:
    r = await infer(made, body, **kwargs)
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["error"] == answer["detail"] and answer["type"] and answer["request_id"]
    message: str = answer["error"]
    return message


def _no_bare_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


@pytest.mark.anyio
async def test_json_data_flat_or_nested_with_null_or_nan_for_missing(made: InProcessClient) -> None:
    rows = as_json_rows(ROWS8)
    want = (await made.http.post("/logprob", json={"model": "tiny", "x": rows, "seed": 3})).json()
    flat_nan = ROWS8.ravel().tolist()  # json.dumps writes NaN, as tritonclient's JSON does
    for data in (rows, [v for row in rows for v in row], flat_nan):
        r = await infer(made, {**x_tensor(data, [4, 8]), "parameters": {"seed": 3}, "id": "q1"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["id"] == "q1" and answer["model_name"] == "tiny" and answer["model_version"] == "1"
        assert answer["outputs"] == [{"name": "logprob", "datatype": "FP64", "shape": [4], "data": want["logprob"]}]
    r = await infer(
        made, {**x_tensor(rows, [4, 8]), "parameters": {"seed": 3}, "outputs": [{"name": "stderr"}, {"name": "exact"}]}
    )
    answer = json.loads(r.content, parse_constant=_no_bare_constant)  # strict JSON: null where exact
    assert None in want["stderr"]
    assert answer["outputs"][0]["data"] == want["stderr"]
    assert answer["outputs"][1] == {"name": "exact", "datatype": "BOOL", "shape": [4], "data": want["exact"]}


@pytest.mark.anyio
async def test_binary_tensors_both_ways_and_a_gzip_body(made: InProcessClient) -> None:
    want = (await made.http.post("/logprob", json={"model": "tiny1", "x": as_json_rows(ROWS8), "seed": 3})).json()
    raw = ROWS8.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [4, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "logprob", "parameters": {"binary_data": True}}, {"name": "exact"}],
            "parameters": {"seed": 3},
        }
    ).encode()
    for body, headers in (
        (head + raw, {"Inference-Header-Content-Length": str(len(head))}),
        (gzip.compress(head + raw), {"Inference-Header-Content-Length": str(len(head)), "Content-Encoding": "gzip"}),
    ):
        r = await infer(made, body, model="tiny1", headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        size = int(r.headers["inference-header-content-length"])
        answer = json.loads(r.content[:size])
        logprob, exact = answer["outputs"]
        assert logprob["parameters"] == {"binary_data_size": 32} and "data" not in logprob
        assert struct.unpack("<4d", r.content[size:]) == tuple(want["logprob"])
        assert exact["data"] == want["exact"]
    # The request's binary_data_output asks it of every output; BOOL comes as one byte each.
    r = await infer(
        made,
        {
            **x_tensor(as_json_rows(ROWS8), [4, 8]),
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "exact"}],
        },
        model="tiny1",
    )
    size = int(r.headers["inference-header-content-length"])
    assert r.content[size:] == bytes(int(e) for e in want["exact"])
    # Complete rows may come as UINT8 or BOOL, binary or JSON.
    bits = (ROWS8[[0, 3]]).astype(np.uint8)
    for datatype in ("UINT8", "BOOL"):
        head = json.dumps(
            {"inputs": [{"name": "x", "shape": [2, 8], "datatype": datatype, "parameters": {"binary_data_size": 16}}]}
        ).encode()
        r = await infer(
            made, head + bits.tobytes(), model="tiny1", headers={"Inference-Header-Content-Length": str(len(head))}
        )
        assert r.json()["outputs"][0]["data"] == [want["logprob"][0], want["logprob"][3]]


@pytest.mark.anyio
async def test_malformed_requests_are_400_naming_the_problem(made: InProcessClient) -> None:
    x = x_tensor([[0] * 8], [1, 8])
    assert await error_of(made, b"{nope") == (
        "the inference request is not valid JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1))"
    )
    assert (await error_of(made, b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")).startswith(
        "the request body is not valid JSON here: its arrays or objects nest too deeply"
    )
    assert await error_of(made, {"inputs": [{"name": "x", "shape": [1, "8"], "datatype": "FP32"}]}) == (
        'inputs[0].shape[1]: input should be a valid integer, got "8"'
    )
    assert await error_of(made, {"inputs": [], "model": "tiny"}) == ("model: is not a field of the inference request")
    assert await error_of(made, {"inputs": []}) == (
        "send input x (rows to score: output logprob) or parameters.n (the number of samples: output samples)"
    )
    assert await error_of(made, x_tensor([0] * 7, [1, 8])) == "input x: shape [1, 8] needs 8 values, but data holds 7"
    assert await error_of(made, x_tensor([[0] * 8, [0] * 7], [2, 8])) == (
        "input x: the nested lists of data are ragged; nest them as the shape [2, 8] or send them flat"
    )
    assert await error_of(made, x_tensor(["0"] * 8, [1, 8])) == (
        'input x: data must hold numbers (NaN or null for a missing value), got "0"'
    )
    assert await error_of(made, x_tensor([0, None] * 4, [1, 8], "INT32")) == (
        "input x: a missing value (NaN or null) needs FP32 or FP64 data, not INT32"
    )
    assert await error_of(made, x_tensor([0.5] * 8, [1, 8])) == (
        "input x: row 0, column 0: expected 0, 1 or NaN (missing), got 0.5"
    )
    assert await error_of(made, x_tensor([], [0, 8])) == "input x holds no rows; send at least one"
    assert await error_of(made, {"inputs": [*x["inputs"], *x["inputs"]]}) == "input x is sent twice"
    assert await error_of(made, {"inputs": [{**x["inputs"][0], "name": "y"}]}) == (
        "unknown input 'y': model 'tiny' takes one input, x ([N, 8], FP32, NaN for a missing value)"
    )
    assert await error_of(made, {**x, "parameters": {"temperature": 1}}) == (
        "unknown parameter 'temperature'; the parameters are n, seed, mask, masks, n_importance, binary_data_output"
    )
    assert await error_of(made, {**x, "outputs": [{"name": "logprob", "parameters": {"classification": 2}}]}) == (
        "output logprob: parameter classification is not supported (of the extensions only binary_tensor_data "
        "is: no classification, no shared memory)"
    )
    assert await error_of(made, {**x, "outputs": []}) == (
        "outputs is empty; ask for at least one of logprob, exact, stderr, conditionals, samples"
    )
    head = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]}
    ).encode()
    length = {"Inference-Header-Content-Length": str(len(head))}
    assert await error_of(made, head + bytes(31), headers=length) == (
        "input x: the body ends before its 32 bytes of binary data (is Inference-Header-Content-Length set to "
        "the JSON part's length?)"
    )
    assert await error_of(made, head + bytes(33), headers=length) == (
        "the body has 1 bytes of binary data that no input's binary_data_size accounts for"
    )
    assert await error_of(made, head + bytes(32), headers={"Inference-Header-Content-Length": "999"}) == (
        f"Inference-Header-Content-Length is '999', but it must be the byte length of the JSON part of the "
        f"body ({len(head) + 32} bytes in all)"
    )
    wrong_size = head.replace(b'"binary_data_size": 32', b'"binary_data_size": 16')
    assert await error_of(
        made, wrong_size + bytes(16), headers={"Inference-Header-Content-Length": str(len(wrong_size))}
    ) == ("input x: binary_data_size is 16 bytes, but shape [1, 8] of FP32 needs 32")
    assert (await error_of(made, b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"})).startswith(
        "the request body is not valid gzip data"
    )


@pytest.mark.anyio
async def test_limits_and_checks_are_the_apis(made: InProcessClient) -> None:
    assert await error_of(made, x_tensor([[0] * 8] * 51, [51, 8])) == (
        "x has 51 rows; the limit is 50 per request (MADE_MAX_ROWS)"
    )
    assert await error_of(made, {"inputs": [], "parameters": {"n": 101}}) == (
        "n is 101; the limit is 100 samples per request (MADE_MAX_SAMPLES)"
    )
    assert await error_of(made, {"inputs": [], "parameters": {"n": "5"}}) == (
        'parameters.n: input should be a valid integer, got "5"'
    )
    assert await error_of(
        made, {**x_tensor([[0] * 8], [1, 8]), "outputs": [{"name": "conditionals"}], "parameters": {"mask": "mixture"}}
    ) == ('parameters.mask: must be a mask index (an integer from 0), got "mixture"')
    assert await error_of(made, {"inputs": []}, model="tiny/versions/2", status=404) == (
        "model 'tiny' has no version '2' served (it serves version '1')"
    )
    r = await infer(made, {"inputs": [], "parameters": {"n": 2, "seed": 1}}, model="tiny/versions/1")
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 8]
    metrics = await made.metrics()
    infer_route = "/v2/models/{name}/versions/{model_version}/infer"
    assert metric(metrics, "made_requests_total", endpoint=infer_route, model="tiny", status="200") == 1.0
    assert metric(metrics, "made_request_rows_count", endpoint="/sample", model="tiny") == 1.0


@pytest.mark.anyio
async def test_readiness_before_the_models_load_and_the_key(tiny_store: Path) -> None:
    async with in_process(Settings(store=tiny_store), lifespan=False) as made:  # never loads
        assert (await made.http.get("/v2/health/live")).json() == {"live": True}
        r = await made.http.get("/v2/health/ready")
        assert r.status_code == 503 and r.json()["error"] == "models are still loading"
        r = await made.http.get("/v2/models/tiny/ready")
        assert r.status_code == 503
    async with in_process(Settings(store=tiny_store, api_key=KEY)) as made:
        await made.wait_ready()
        assert (await made.http.get("/v2/health/ready")).status_code == 200  # probes need no key
        r = await made.http.get("/v2")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == "this server requires an API key: send 'Authorization: Bearer <key>'"
        r = await made.http.get("/v2", headers=auth())
        assert r.json()["extensions"] == ["binary_tensor_data"]


@pytest.mark.anyio
async def test_errors_outside_the_routes_keep_the_protocols_error_field(
    tiny_store: Path, registry: ModelRegistry
) -> None:
    """A 503 overloaded says when to retry, as the API's does; a string among the numbers is
    named as sent; 404, 405 and 413 under /v2 carry {"error"} (tritonclient reads nothing else)."""
    answer = error_response(Overloaded("/logprob has 1 requests in progress", retry_after=3))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "3"
    settings = Settings(store=tiny_store, batch_delay_ms=1, max_body_bytes=2000)
    async with in_process(settings, registry) as made:
        assert await error_of(made, x_tensor([0, 1, "a", 0, 0, 0, 0, 0], [1, 8])) == (
            'input x: data must hold numbers (NaN or null for a missing value), got "a"'
        )
        example = (await made.http.get("/openapi.json")).json()["paths"]["/v2/models/{name}/infer"]
        body = example["post"]["requestBody"]["content"]["application/json"]["example"]
        assert (
            await error_of(made, body)
            == "x: rows have 4 values but model 'tiny' has 8 dimensions (one value per dimension)"
        )
        for r in (
            await made.http.get("/v2/models/tiny/config"),
            await made.http.get("/v2/models/tiny/infer"),
            await made.http.post("/v2/models/tiny/infer", content=b"{" + b" " * 3000 + b"}"),
        ):
            assert r.status_code in (404, 405, 413) and r.json()["error"] == r.json()["detail"], r.text
        r = await made.http.get("/models/tiny/config")
        assert r.status_code == 404 and "error" not in r.json()
