"""The blocking and the awaitable client: each sends the calls of service.client.endpoints its own
way (one request after another, or batches of a splittable call)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

import httpx

from service.client import endpoints as e
from service.client.calls import Batches, Call, MadeAPIError, auth_headers, check

T = TypeVar("T")
P = ParamSpec("P")


class _Endpoint(Generic[P, T]):
    """A method of both clients, defined once by its request builder (signature, docstring,
    request, reading of the response): on MadeClient it returns the result, on AsyncMadeClient
    an awaitable of it; each client's _send does the I/O its own way."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
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
        # at most this many, halved while the server refuses a batch as too large (_too_large),
        # all of one seed, returned, each with its first record's index (first_row): the answer
        # is what one request of all the records with that seed gives (Batches)
        self.max_rows = max(1, int(max_rows))
        self.http: H = http or self._http_class(base_url=base_url, timeout=timeout)
        self.http.headers.update(auth_headers(api_key))

    readyz = _Endpoint(e.readyz)
    models = _Endpoint(e.models)
    model = _Endpoint(e.model)
    anomaly_threshold = _Endpoint(e.anomaly_threshold)
    metrics = _Endpoint(e.metrics)
    logprob = _Endpoint(e.logprob)
    conditionals = _Endpoint(e.conditionals)
    sample = _Endpoint(e.sample)
    sample_png = _Endpoint(e.sample_png)
    impute = _Endpoint(e.impute)
    denoise = _Endpoint(e.denoise)
    # models of a table's columns: records keyed by column name
    logprob_records = _Endpoint(e.logprob_records)
    sample_records = _Endpoint(e.sample_records)
    impute_records = _Endpoint(e.impute_records)
    conditionals_records = _Endpoint(e.conditionals_records)


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

    def _send(self, call: Call[T]) -> T:
        if call.part is not None:
            return self._send_batches(call)
        result = call.finish(check(self.http.request(call.method, call.path, **call.send())))
        follow = call.next(result)
        return self._send(follow) if follow is not None else result

    def _send_batches(self, call: Call[T]) -> T:
        batches = Batches(call, self.max_rows)
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

    async def _send(self, call: Call[T]) -> T:
        if call.part is not None:
            return await self._send_batches(call)
        result = call.finish(check(await self.http.request(call.method, call.path, **call.send())))
        follow = call.next(result)
        return await self._send(follow) if follow is not None else result

    async def _send_batches(self, call: Call[T]) -> T:
        """MadeClient._send_batches, awaited: the batches one after another."""
        batches = Batches(call, self.max_rows)
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
