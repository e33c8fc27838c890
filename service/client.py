"""Typed Python clients of the HTTP API (httpx), returning the service's own response models.

    from service.client import MadeClient

    with MadeClient("http://127.0.0.1:8000") as made:
        print(made.models().default)
        lp = made.logprob([[0, 1, None, 1]], model="tiny")
        samples = made.sample(16, seed=0).array()  # (16, D) uint8

`AsyncMadeClient` has the same methods, awaitable. Rows may be lists or numpy arrays (NaN for
missing); `packed=True` sends complete rows bit-packed (x_b64), much smaller for large batches.
Records of a table model are a list of dicts (JSON: a key left out or None is unknown, "NA" is
absent) or a pandas DataFrame, which goes as the CSV it stands for, so that its empty cells mean
what an empty cell of a CSV file means (absent where the column can be absent, else unknown).
Errors raise MadeAPIError with the server's status, type and one-sentence detail. Pass `http=`
an httpx client of your own, e.g. `httpx.AsyncClient(transport=httpx.ASGITransport(app))` to
talk to an app in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

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


@dataclass
class _Call(Generic[M]):
    """One request, built the same way by both clients."""

    method: str
    path: str
    parse: type[M] | None  # None: the raw response is wanted
    payload: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None  # a body that is not JSON (a DataFrame's CSV)
    params: dict[str, str] | None = None  # the options of a CSV body, in the query string

    @property
    def json(self) -> dict[str, Any] | None:
        if self.payload is None:
            return None
        return {k: v for k, v in self.payload.items() if v is not None}

    def send(self) -> dict[str, Any]:
        """The arguments of httpx's request() for this call."""
        return {"json": self.json, "content": self.content, "params": self.params, "headers": self.headers}


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


def _logprob(
    x: Rows, model: str | None, masks: Literal["all"] | int, seed: int | None, n_importance: int | None, packed: bool
) -> _Call[LogProbResponse]:
    return _Call(
        "POST",
        "/logprob",
        LogProbResponse,
        {"model": model, "masks": masks, "seed": seed, "n_importance": n_importance, **_rows_payload(x, packed)},
    )


def _conditionals(x: Rows, model: str | None, mask: int, packed: bool) -> _Call[ConditionalsResponse]:
    return _Call(
        "POST", "/conditionals", ConditionalsResponse, {"model": model, "mask": mask, **_rows_payload(x, packed)}
    )


def _sample(
    n: int, model: str | None, seed: int | None, mask: Literal["mixture"] | int, packed: bool
) -> _Call[SampleResponse]:
    return _Call(
        "POST",
        "/sample",
        SampleResponse,
        {"model": model, "n": n, "seed": seed, "mask": mask, "encoding": "packed" if packed else None},
    )


def _sample_png(
    n: int, model: str | None, seed: int | None, mask: Literal["mixture"] | int, scale: int
) -> _Call[BaseModel]:
    return _Call(
        "POST",
        f"/sample?scale={scale}",
        None,
        {"model": model, "n": n, "seed": seed, "mask": mask},
        {"Accept": "image/png"},
    )


def _impute(
    x: Rows, model: str | None, n_samples: int | None, seed: int | None, n_importance: int | None, packed_output: bool
) -> _Call[ImputeResponse]:
    return _Call(
        "POST",
        "/impute",
        ImputeResponse,
        {
            "model": model,
            "n_samples": n_samples,
            "seed": seed,
            "n_importance": n_importance,
            "encoding": "packed" if packed_output else None,
            **_rows_payload(x, False),
        },
    )


Eps = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def _denoise(
    x: Rows,
    eps: Eps,
    model: str | None,
    n_samples: int | None,
    seed: int | None,
    n_importance: int | None,
    packed: bool,
    packed_output: bool,
) -> _Call[DenoiseResponse]:
    e: Any = np.asarray(eps, dtype=np.float64).tolist() if isinstance(eps, np.ndarray) else eps
    return _Call(
        "POST",
        "/denoise",
        DenoiseResponse,
        {
            "model": model,
            "eps": e,
            "n_samples": n_samples,
            "seed": seed,
            "n_importance": n_importance,
            "encoding": "packed" if packed_output else None,
            **_rows_payload(x, packed),
        },
    )


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
        return _Call("POST", path, parse, {**options, "records": rows})
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items() if v is not None}
    return _Call("POST", path, parse, None, {"Content-Type": "text/csv"}, content=_frame_csv(records), params=params)


def _logprob_records(
    records: Records,
    model: str | None,
    masks: Literal["all"] | int,
    seed: int | None,
    n_importance: int | None,
    explain: bool,
) -> _Call[LogProbResponse]:
    options = {"model": model, "masks": masks, "seed": seed, "n_importance": n_importance, "explain": explain or None}
    return _records_call("/logprob", LogProbResponse, options, records)


def _sample_records(
    n: int, model: str | None, seed: int | None, given: dict[str, Any] | None, mask: Literal["mixture"] | int
) -> _Call[SampleResponse]:
    return _Call(
        "POST",
        "/sample",
        SampleResponse,
        {"model": model, "n": n, "seed": seed, "given": given, "mask": mask, "encoding": "records"},
    )


def _impute_records(
    records: Records, model: str | None, n_samples: int | None, seed: int | None, n_importance: int | None
) -> _Call[ImputeResponse]:
    options = {"model": model, "n_samples": n_samples, "seed": seed, "n_importance": n_importance}
    return _records_call("/impute", ImputeResponse, options, records)


def _conditionals_records(records: Records, model: str | None, mask: int) -> _Call[ConditionalsResponse]:
    return _records_call("/conditionals", ConditionalsResponse, {"model": model, "mask": mask}, records)


# --- the clients ----------------------------------------------------------------------------------


class MadeClient:
    """Blocking client."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.http.headers.update(_headers(api_key))

    def __enter__(self) -> MadeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def _raw(self, call: _Call[Any]) -> httpx.Response:
        return _check(self.http.request(call.method, call.path, **call.send()))

    def _run(self, call: _Call[M]) -> M:
        assert call.parse is not None
        return call.parse.model_validate(self._raw(call).json())

    def healthz(self) -> bool:
        """True when the server answers /healthz with 200."""
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def readyz(self) -> ReadyResponse:
        return self._run(_Call("GET", "/readyz", ReadyResponse))

    def models(self) -> ModelsResponse:
        return self._run(_Call("GET", "/models", ModelsResponse))

    def model(self, name: str) -> dict[str, Any]:
        """The manifest of one model."""
        manifest: dict[str, Any] = self._raw(_Call("GET", f"/models/{name}", None)).json()
        return manifest

    def metrics(self) -> str:
        return self._raw(_Call("GET", "/metrics", None)).text

    def logprob(
        self,
        x: Rows,
        *,
        model: str | None = None,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int | None = None,
        packed: bool = False,
    ) -> LogProbResponse:
        return self._run(_logprob(x, model, masks, seed, n_importance, packed))

    def conditionals(
        self, x: Rows, *, model: str | None = None, mask: int = 0, packed: bool = False
    ) -> ConditionalsResponse:
        return self._run(_conditionals(x, model, mask, packed))

    def sample(
        self,
        n: int,
        *,
        model: str | None = None,
        seed: int | None = None,
        mask: Literal["mixture"] | int = "mixture",
        packed: bool = False,
    ) -> SampleResponse:
        return self._run(_sample(n, model, seed, mask, packed))

    def sample_png(
        self,
        n: int,
        *,
        model: str | None = None,
        seed: int | None = None,
        mask: Literal["mixture"] | int = "mixture",
        scale: int = 2,
    ) -> bytes:
        """A grid of n samples as PNG (models with an image_shape)."""
        return self._raw(_sample_png(n, model, seed, mask, scale)).content

    def impute(
        self,
        x: Rows,
        *,
        model: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        n_importance: int | None = None,
        packed_output: bool = False,
    ) -> ImputeResponse:
        return self._run(_impute(x, model, n_samples, seed, n_importance, packed_output))

    def denoise(
        self,
        x: Rows,
        eps: Eps,
        *,
        model: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        n_importance: int | None = None,
        packed: bool = False,
        packed_output: bool = False,
    ) -> DenoiseResponse:
        """The clean rows behind noisy rows x, each bit flipped with probability eps (a number, one
        per row or one per entry): .marginals, .most_likely, .array() (clean samples),
        .logprob_noisy with .stderr, and .ess."""
        return self._run(_denoise(x, eps, model, n_samples, seed, n_importance, packed, packed_output))

    # --- models of a table's columns: records keyed by column name ------------------------------
    def logprob_records(
        self,
        records: Records,
        *,
        model: str | None = None,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int | None = None,
        explain: bool = False,
    ) -> LogProbResponse:
        """log p(record) per record; unknown (missing or None) cells summed out; `explain` adds
        each column's surprisal. `records`: a list of dicts, or a pandas DataFrame."""
        return self._run(_logprob_records(records, model, masks, seed, n_importance, explain))

    def sample_records(
        self,
        n: int,
        *,
        model: str | None = None,
        seed: int | None = None,
        given: dict[str, Any] | None = None,
        mask: Literal["mixture"] | int = "mixture",
    ) -> list[dict[str, Any]]:
        """n sampled records (meeting `given`, {column: value}, when sent)."""
        return list(self._run(_sample_records(n, model, seed, given, mask)).records or [])

    def impute_records(
        self,
        records: Records,
        *,
        model: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        n_importance: int | None = None,
    ) -> ImputeResponse:
        """The records filled in (.records), each unknown column's distribution (.distributions)
        and n_samples completions per record (.samples)."""
        return self._run(_impute_records(records, model, n_samples, seed, n_importance))

    def conditionals_records(
        self, records: Records, *, model: str | None = None, mask: int = 0
    ) -> ConditionalsResponse:
        """Per complete record, each column's distribution given the columns before it in mask
        `mask`'s ordering (.conditionals; the ordering in .column_order)."""
        return self._run(_conditionals_records(records, model, mask))


class AsyncMadeClient:
    """The same methods as MadeClient, awaitable (concurrent requests from one task group)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.http.headers.update(_headers(api_key))

    async def __aenter__(self) -> AsyncMadeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def _raw(self, call: _Call[Any]) -> httpx.Response:
        return _check(await self.http.request(call.method, call.path, **call.send()))

    async def _run(self, call: _Call[M]) -> M:
        assert call.parse is not None
        return call.parse.model_validate((await self._raw(call)).json())

    async def healthz(self) -> bool:
        try:
            return (await self.http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def readyz(self) -> ReadyResponse:
        return await self._run(_Call("GET", "/readyz", ReadyResponse))

    async def models(self) -> ModelsResponse:
        return await self._run(_Call("GET", "/models", ModelsResponse))

    async def model(self, name: str) -> dict[str, Any]:
        manifest: dict[str, Any] = (await self._raw(_Call("GET", f"/models/{name}", None))).json()
        return manifest

    async def metrics(self) -> str:
        return (await self._raw(_Call("GET", "/metrics", None))).text

    async def logprob(
        self,
        x: Rows,
        *,
        model: str | None = None,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int | None = None,
        packed: bool = False,
    ) -> LogProbResponse:
        return await self._run(_logprob(x, model, masks, seed, n_importance, packed))

    async def conditionals(
        self, x: Rows, *, model: str | None = None, mask: int = 0, packed: bool = False
    ) -> ConditionalsResponse:
        return await self._run(_conditionals(x, model, mask, packed))

    async def sample(
        self,
        n: int,
        *,
        model: str | None = None,
        seed: int | None = None,
        mask: Literal["mixture"] | int = "mixture",
        packed: bool = False,
    ) -> SampleResponse:
        return await self._run(_sample(n, model, seed, mask, packed))

    async def sample_png(
        self,
        n: int,
        *,
        model: str | None = None,
        seed: int | None = None,
        mask: Literal["mixture"] | int = "mixture",
        scale: int = 2,
    ) -> bytes:
        return (await self._raw(_sample_png(n, model, seed, mask, scale))).content

    async def impute(
        self,
        x: Rows,
        *,
        model: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        n_importance: int | None = None,
        packed_output: bool = False,
    ) -> ImputeResponse:
        return await self._run(_impute(x, model, n_samples, seed, n_importance, packed_output))

    async def denoise(
        self,
        x: Rows,
        eps: Eps,
        *,
        model: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        n_importance: int | None = None,
        packed: bool = False,
        packed_output: bool = False,
    ) -> DenoiseResponse:
        return await self._run(_denoise(x, eps, model, n_samples, seed, n_importance, packed, packed_output))

    async def logprob_records(
        self,
        records: Records,
        *,
        model: str | None = None,
        masks: Literal["all"] | int = "all",
        seed: int | None = None,
        n_importance: int | None = None,
        explain: bool = False,
    ) -> LogProbResponse:
        return await self._run(_logprob_records(records, model, masks, seed, n_importance, explain))

    async def sample_records(
        self,
        n: int,
        *,
        model: str | None = None,
        seed: int | None = None,
        given: dict[str, Any] | None = None,
        mask: Literal["mixture"] | int = "mixture",
    ) -> list[dict[str, Any]]:
        return list((await self._run(_sample_records(n, model, seed, given, mask))).records or [])

    async def impute_records(
        self,
        records: Records,
        *,
        model: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        n_importance: int | None = None,
    ) -> ImputeResponse:
        return await self._run(_impute_records(records, model, n_samples, seed, n_importance))

    async def conditionals_records(
        self, records: Records, *, model: str | None = None, mask: int = 0
    ) -> ConditionalsResponse:
        return await self._run(_conditionals_records(records, model, mask))
