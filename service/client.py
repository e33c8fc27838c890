"""Typed Python clients of the HTTP API (httpx), returning the service's own response models.

    from service.client import MadeClient

    with MadeClient("http://127.0.0.1:8000") as made:
        print(made.models().default)
        lp = made.logprob([[0, 1, None, 1]], model="tiny")
        samples = made.sample(16, seed=0).array()  # (16, D) uint8

`AsyncMadeClient` has the same methods, awaitable: each call is defined once (its signature,
its request and how its response reads) and each client only sends it its own way. Rows may be
lists or numpy arrays (NaN for missing); `packed=True` sends complete rows bit-packed (x_b64),
much smaller for large batches.
Records of a table model are a list of dicts (JSON: a key left out or None is unknown, "NA" is
absent) or a pandas DataFrame, which goes as the CSV it stands for, so that its empty cells mean
what an empty cell of a CSV file means (absent where the column can be absent, else unknown).
`sample_records`/`impute_records(..., as_frame=True)` answer pandas DataFrames, and
`anomaly_threshold(model, contamination)` is a held-out log p quantile (PyOD's contamination).
Errors raise MadeAPIError with the server's status, type and one-sentence detail. Pass `http=`
an httpx client of your own, e.g. `httpx.AsyncClient(transport=httpx.ASGITransport(app))` to
talk to an app in-process.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

import httpx
import numpy as np
from pydantic import BaseModel

from made.core.schema import ABSENT_LEVEL
from made.io.csv import to_csv, value_text
from service.core.schemas import (
    ConditionalsResponse,
    DenoiseResponse,
    ImputeResponse,
    LogProbResponse,
    ModelsResponse,
    ReadyResponse,
    SampleResponse,
    pack_rows,
)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
P = ParamSpec("P")
Rows = np.ndarray | Sequence[Sequence[int | float | None]]


class MadeAPIError(Exception):
    """The server answered with an error status."""

    def __init__(self, status_code: int, detail: str, type: str = "", request_id: str | None = None) -> None:
        super().__init__(f"{status_code} {type}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.type = type
        self.request_id = request_id


def _rows_payload(x: Rows, packed: bool) -> dict[str, Any]:
    if packed:
        a = np.asarray(x, dtype=np.float64)
        if np.isnan(a).any():
            raise ValueError("packed rows cannot carry missing values; send them as lists")
        return {"x_b64": pack_rows(a.astype(np.uint8)), "shape": list(a.shape)}
    if isinstance(x, np.ndarray):
        a = x.astype(np.float64)
        return {"x": [[None if v != v else int(v) for v in row] for row in a.tolist()]}
    return {"x": [list(row) for row in x]}


def _parsed(model: type[M]) -> Callable[[httpx.Response], M]:
    """A response read as the service's response model `model`."""
    return lambda response: model.model_validate(response.json())


def _json(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


@dataclass
class _Call(Generic[T]):
    """One request, and how its response reads: what both clients send, each its own way."""

    method: str
    path: str
    finish: Callable[[httpx.Response], T]  # the checked response -> the call's result
    payload: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None  # a body that is not JSON (a DataFrame's CSV)
    params: dict[str, str] | None = None  # the options of a CSV body, in the query string
    # a request whose answer is only a step (finish's Any): the call it leads to, given that answer
    then: Callable[[Any], _Call[T]] | None = None
    # a request of `rows` records that may go as several: the call of records [start, stop) as
    # batch b (split_call), whose answers merge into one (merge_answers)
    rows: int = 0
    part: Callable[[int, int, int], _Call[T]] | None = None

    def next(self, result: Any) -> _Call[T] | None:
        """The call to send after this one (given this one's result), if any."""
        return self.then(result) if self.then is not None else None

    @property
    def json(self) -> dict[str, Any] | None:
        if self.payload is None:
            return None
        return {k: v for k, v in self.payload.items() if v is not None}

    def send(self) -> dict[str, Any]:
        """The arguments of httpx's request() for this call."""
        return {"json": self.json, "content": self.content, "params": self.params, "headers": self.headers}


def _too_large(exc: MadeAPIError) -> bool:
    """A refusal that a smaller batch may pass: a body over the size limit, a request over one
    of the per-request limits (MADE_MAX_ROWS, _DRAWS, _WORK, _SAMPLES), or past the timeout."""
    return exc.status_code in (413, 504) or (exc.status_code == 422 and "(MADE_MAX_" in exc.detail)


def _batch_seed(seed: int | None, b: int) -> int | None:
    """Batch b's seed: the request's for the first batch, then one derived from it and b (the
    answer of a split request is reproducible for the same batches)."""
    if seed is None or b == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{b}".encode()).digest()[:8], "big") >> 11  # JSON-safe: below 2**53


def _splittable(
    call: _Call[T], rows: int, build: Callable[[Records, int | None], _Call[T]], records: Records, seed: int | None
) -> _Call[T]:
    """`call` (of all `rows` records) able to go as batches: records [start, stop) as batch b."""

    def part(start: int, stop: int, b: int) -> _Call[T]:
        chunk: Records = records.iloc[start:stop] if _is_frame(records) else list(records)[start:stop]  # type: ignore[union-attr]
        return build(chunk, _batch_seed(seed, b))

    call.rows, call.part = rows, part
    return call


class _Batches(Generic[T]):
    """The batches of a splittable call, one after another: records [start, stop) as batch b, at
    most `max_rows` a batch, halved while the server refuses one as too large (_too_large); the
    two clients send what next() gives and report each answer or refusal."""

    def __init__(self, call: _Call[T], max_rows: int):
        assert call.part is not None
        self.call, self.part = call, call.part
        self.answers: list[Any] = []
        self.start, self.b, self.size, self.stop = 0, 0, min(max_rows, max(call.rows, 1)), 0

    def next(self) -> _Call[T] | None:
        """The next batch's call (the whole call, unsplit, where one batch holds every record)."""
        if self.start >= self.call.rows and self.answers:
            return None
        self.stop = min(self.call.rows, self.start + self.size)
        if (self.start, self.stop) == (0, self.call.rows):
            return replace(self.call, part=None)
        return self.part(self.start, self.stop, self.b)

    def answered(self, answer: T) -> None:
        self.answers.append(answer)
        self.start, self.b = self.stop, self.b + 1

    def refused(self, exc: MadeAPIError) -> None:
        """A refusal: the batch halved where a smaller one may pass, else raised."""
        if not _too_large(exc) or self.stop - self.start <= 1:
            raise exc
        self.size = (self.stop - self.start) // 2

    def result(self) -> T:
        return merge_answers(self.answers)  # type: ignore[no-any-return]


def merge_answers(answers: list[Any]) -> Any:
    """The answers of a request's batches as one: DataFrames concatenated, a response's lists
    (one entry per record) concatenated, its other fields the first batch's."""
    first = answers[0]
    if len(answers) == 1:
        return first
    if not isinstance(first, BaseModel):
        import pandas as pd

        return pd.concat(answers)
    update = {name: [v for a in answers for v in getattr(a, name)] for name, value in first if isinstance(value, list)}
    return first.model_copy(update=update)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        raise MadeAPIError(
            response.status_code, str(body.get("detail", "")), str(body.get("type", "")), body.get("request_id")
        )
    return response


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --- the requests ---------------------------------------------------------------------------------


def _readyz() -> _Call[ReadyResponse]:
    return _Call("GET", "/readyz", _parsed(ReadyResponse))


def _models() -> _Call[ModelsResponse]:
    return _Call("GET", "/models", _parsed(ModelsResponse))


def _model(name: str) -> _Call[dict[str, Any]]:
    """The manifest of one model."""
    return _Call("GET", f"/models/{name}", _json)


def _default_model(response: httpx.Response) -> Any:
    default = _parsed(ModelsResponse)(response).default
    if default is None:
        raise ValueError("the server has no default model; name the model")
    return default


def _anomaly_threshold(model: str | None = None, contamination: float = 0.01) -> _Call[float]:
    """The log p (nats) below which a share `contamination` of the held-out rows fall, as
    PyOD's contamination means (the share of rows flagged): the served version's held-out log p
    quantiles (GET /models/{name}/reference, q = 0, 0.01, ..., 1) interpolated linearly at
    `contamination`. Flag a record as an anomaly when its log p is below it. Without `model`,
    the default model's; a version without reference.json raises MadeAPIError (404) naming it."""
    if not 0 < contamination <= 0.5:
        raise ValueError(f"contamination is {contamination}; as in PyOD, a share of rows in (0, 0.5]")
    if model is None:
        return _Call("GET", "/models", _default_model, then=lambda name: _anomaly_threshold(name, contamination))
    return _Call("GET", f"/models/{model}/reference", lambda r: threshold_of(_json(r), contamination))


def threshold_of(reference: dict[str, Any], contamination: float) -> float:
    """The log p quantile at `contamination` of a reference.json's 101 held-out quantiles."""
    quantiles = np.asarray(reference["logprob_quantiles"], dtype=np.float64)
    return float(np.interp(contamination, np.linspace(0.0, 1.0, len(quantiles)), quantiles))


def _metrics() -> _Call[str]:
    return _Call("GET", "/metrics", lambda response: response.text)


def _logprob(
    x: Rows,
    *,
    model: str | None = None,
    masks: Literal["all"] | int = "all",
    seed: int | None = None,
    n_importance: int | None = None,
    packed: bool = False,
) -> _Call[LogProbResponse]:
    options = {"model": model, "masks": masks, "seed": seed, "n_importance": n_importance}
    return _Call("POST", "/logprob", _parsed(LogProbResponse), {**options, **_rows_payload(x, packed)})


def _conditionals(
    x: Rows, *, model: str | None = None, mask: int = 0, packed: bool = False
) -> _Call[ConditionalsResponse]:
    payload = {"model": model, "mask": mask, **_rows_payload(x, packed)}
    return _Call("POST", "/conditionals", _parsed(ConditionalsResponse), payload)


def _sample(
    n: int,
    *,
    model: str | None = None,
    seed: int | None = None,
    mask: Literal["mixture"] | int = "mixture",
    packed: bool = False,
) -> _Call[SampleResponse]:
    payload = {"model": model, "n": n, "seed": seed, "mask": mask, "encoding": "packed" if packed else None}
    return _Call("POST", "/sample", _parsed(SampleResponse), payload)


def _sample_png(
    n: int,
    *,
    model: str | None = None,
    seed: int | None = None,
    mask: Literal["mixture"] | int = "mixture",
    scale: int = 2,
) -> _Call[bytes]:
    """A grid of n samples as PNG (models with an image_shape)."""
    payload = {"model": model, "n": n, "seed": seed, "mask": mask}
    return _Call("POST", f"/sample?scale={scale}", lambda response: response.content, payload, {"Accept": "image/png"})


def _impute(
    x: Rows,
    *,
    model: str | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    n_importance: int | None = None,
    packed_output: bool = False,
) -> _Call[ImputeResponse]:
    options = {"model": model, "n_samples": n_samples, "seed": seed, "n_importance": n_importance}
    payload = {**options, "encoding": "packed" if packed_output else None, **_rows_payload(x, False)}
    return _Call("POST", "/impute", _parsed(ImputeResponse), payload)


Eps = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def _denoise(
    x: Rows,
    eps: Eps,
    *,
    model: str | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    n_importance: int | None = None,
    packed: bool = False,
    packed_output: bool = False,
) -> _Call[DenoiseResponse]:
    """The clean rows behind noisy rows x, each bit flipped with probability eps (a number, one
    per row or one per entry): .marginals, .most_likely, .array() (clean samples),
    .logprob_noisy with .stderr, and .ess."""
    e: Any = np.asarray(eps, dtype=np.float64).tolist() if isinstance(eps, np.ndarray) else eps
    options = {"model": model, "eps": e, "n_samples": n_samples, "seed": seed, "n_importance": n_importance}
    payload = {**options, "encoding": "packed" if packed_output else None, **_rows_payload(x, packed)}
    return _Call("POST", "/denoise", _parsed(DenoiseResponse), payload)


Records = Sequence[dict[str, Any]] | Any  # a list of {column: value}, or a pandas DataFrame


def _is_frame(records: Records) -> bool:
    return hasattr(records, "to_dict") and hasattr(records, "columns") and hasattr(records, "isna")


def _frame_csv(frame: Any) -> bytes:
    """A DataFrame as the CSV file it stands for: its empty cells (NaN, None, pandas' NA) are
    empty CSV cells, which the service reads as it reads a CSV body or file (absent where the
    column can be absent, else unknown), so that a table read with pandas.read_csv and sent
    here gets the log p the file itself gets; other cells as their JSON values would read."""
    missing = frame.isna().to_numpy()
    rows = [
        ["" if gap else value_text(v) for v, gap in zip(record.values(), gaps, strict=True)]
        for record, gaps in zip(frame.to_dict(orient="records"), missing, strict=True)
    ]
    return to_csv([str(c) for c in frame.columns], rows, escape=False).encode()


def _records_call(path: str, parse: type[M], options: dict[str, Any], records: Records) -> _Call[M]:
    """A request of records: plain records as JSON (a key left out or None unknown, "NA" or ""
    absent), a DataFrame as a CSV body with the options in the query string."""
    if not _is_frame(records):
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in dict(r).items()} for r in records]
        return _Call("POST", path, _parsed(parse), {**options, "records": rows})
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items() if v is not None}
    return _Call(
        "POST", path, _parsed(parse), None, {"Content-Type": "text/csv"}, content=_frame_csv(records), params=params
    )


def _logprob_records(
    records: Records,
    *,
    model: str | None = None,
    masks: Literal["all"] | int = "all",
    seed: int | None = None,
    n_importance: int | None = None,
    explain: bool = False,
) -> _Call[LogProbResponse]:
    """log p(record) per record; unknown (missing or None) cells summed out; `explain` adds
    each column's surprisal. `records`: a list of dicts, or a pandas DataFrame."""

    def build(chunk: Records, chunk_seed: int | None) -> _Call[LogProbResponse]:
        options = {"model": model, "masks": masks, "seed": chunk_seed, "n_importance": n_importance}
        return _records_call("/logprob", LogProbResponse, {**options, "explain": explain or None}, chunk)

    return _splittable(build(records, seed), len(records), build, records, seed)


def _sample_records(
    n: int,
    *,
    model: str | None = None,
    seed: int | None = None,
    given: dict[str, Any] | None = None,
    mask: Literal["mixture"] | int = "mixture",
    as_frame: bool = False,
) -> _Call[Any]:
    """n sampled records (meeting `given`, {column: value}, when sent): a list of dicts, or with
    `as_frame` a pandas DataFrame (absent cells, "NA", as empty cells)."""
    payload = {"model": model, "n": n, "seed": seed, "given": given, "mask": mask, "encoding": "records"}

    def finish(response: httpx.Response) -> Any:
        records = list(_parsed(SampleResponse)(response).records or [])
        return _records_frame(records) if as_frame else records

    return _Call("POST", "/sample", finish, payload)


def _records_frame(records: Sequence[dict[str, Any]], index: Any = None) -> Any:
    """Records as a pandas DataFrame, an absent cell ("NA") as an empty one (NaN or None), which
    is what a DataFrame sent back means by it (absent where the column can be absent)."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("as_frame=True needs pandas: pip install pandas") from None
    rows = [{k: (None if v == ABSENT_LEVEL else v) for k, v in r.items()} for r in records]
    return pd.DataFrame(rows, index=index)


def _impute_records(
    records: Records,
    *,
    model: str | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    n_importance: int | None = None,
    as_frame: bool = False,
) -> _Call[Any]:
    """The records filled in (.records), each unknown column's distribution (.distributions)
    and n_samples completions per record (.samples); with `as_frame`, only the filled records,
    as a pandas DataFrame (with a sent DataFrame's index)."""

    def build(chunk: Records, chunk_seed: int | None) -> _Call[Any]:
        options = {"model": model, "n_samples": n_samples, "seed": chunk_seed, "n_importance": n_importance}
        call: _Call[Any] = _records_call("/impute", ImputeResponse, options, chunk)
        if as_frame:
            index = chunk.index if _is_frame(chunk) else None
            parse = call.finish
            call.finish = lambda response: _records_frame(parse(response).records or [], index)
        return call

    return _splittable(build(records, seed), len(records), build, records, seed)


def _conditionals_records(records: Records, *, model: str | None = None, mask: int = 0) -> _Call[ConditionalsResponse]:
    """Per complete record, each column's distribution given the columns before it in mask
    `mask`'s ordering (.conditionals; the ordering in .column_order)."""
    return _records_call("/conditionals", ConditionalsResponse, {"model": model, "mask": mask}, records)


# --- the clients ----------------------------------------------------------------------------------


class _Endpoint(Generic[P, T]):
    """A method of both clients, defined once by its request builder (signature, docstring,
    request, reading of the response): on MadeClient it returns the result, on AsyncMadeClient
    an awaitable of it; each client's _send does the I/O its own way."""

    def __init__(self, build: Callable[P, _Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: None, owner: type) -> _Endpoint[P, T]: ...
    @overload
    def __get__(self, client: MadeClient, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncMadeClient, owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        build, send = self.build, client._send

        @functools.wraps(build)
        def call(*args: Any, **kwargs: Any) -> Any:
            return send(build(*args, **kwargs))

        return call


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class _Endpoints(Generic[H]):
    """The API's calls and the HTTP client they go through, shared by both clients: an httpx
    client of the caller's (`http`, left open), or one made here (closed with this one)."""

    _http_class: type[H]

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: H | None = None,
        max_rows: int = 1000,
    ) -> None:
        self._owns_http = http is None
        # records per request of logprob_records / impute_records: larger calls go as batches of
        # at most this many, halved while the server refuses a batch as too large (_too_large)
        self.max_rows = max(1, int(max_rows))
        self.http: H = http or self._http_class(base_url=base_url, timeout=timeout)
        self.http.headers.update(_headers(api_key))

    readyz = _Endpoint(_readyz)
    models = _Endpoint(_models)
    model = _Endpoint(_model)
    anomaly_threshold = _Endpoint(_anomaly_threshold)
    metrics = _Endpoint(_metrics)
    logprob = _Endpoint(_logprob)
    conditionals = _Endpoint(_conditionals)
    sample = _Endpoint(_sample)
    sample_png = _Endpoint(_sample_png)
    impute = _Endpoint(_impute)
    denoise = _Endpoint(_denoise)
    # models of a table's columns: records keyed by column name
    logprob_records = _Endpoint(_logprob_records)
    sample_records = _Endpoint(_sample_records)
    impute_records = _Endpoint(_impute_records)
    conditionals_records = _Endpoint(_conditionals_records)


class MadeClient(_Endpoints[httpx.Client]):
    """Blocking client."""

    _http_class = httpx.Client

    def __enter__(self) -> MadeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def _send(self, call: _Call[T]) -> T:
        if call.part is not None:
            return self._send_batches(call)
        result = call.finish(_check(self.http.request(call.method, call.path, **call.send())))
        follow = call.next(result)
        return self._send(follow) if follow is not None else result

    def _send_batches(self, call: _Call[T]) -> T:
        batches = _Batches(call, self.max_rows)
        while (part := batches.next()) is not None:
            try:
                batches.answered(self._send(part))
            except MadeAPIError as exc:
                batches.refused(exc)
        return batches.result()

    def healthz(self) -> bool:
        """True when the server answers /healthz with 200."""
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncMadeClient(_Endpoints[httpx.AsyncClient]):
    """The same methods as MadeClient, awaitable (concurrent requests from one task group)."""

    _http_class = httpx.AsyncClient

    async def __aenter__(self) -> AsyncMadeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        if call.part is not None:
            return await self._send_batches(call)
        result = call.finish(_check(await self.http.request(call.method, call.path, **call.send())))
        follow = call.next(result)
        return await self._send(follow) if follow is not None else result

    async def _send_batches(self, call: _Call[T]) -> T:
        """MadeClient._send_batches, awaited: the batches one after another."""
        batches = _Batches(call, self.max_rows)
        while (part := batches.next()) is not None:
            try:
                batches.answered(await self._send(part))
            except MadeAPIError as exc:
                batches.refused(exc)
        return batches.result()

    async def healthz(self) -> bool:
        """True when the server answers /healthz with 200."""
        try:
            return (await self.http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False
