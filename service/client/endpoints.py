"""What each call of the API sends and how its answer reads, defined once for both clients
(service.client.clients turns each into a method): the requests of rows (models of bits), of
records (models of a table's columns: a list of dicts as JSON, a pandas DataFrame as the CSV it
stands for) and of the server's state."""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import numpy as np

from made.core.schema import ABSENT_LEVEL
from made.io.csv import to_csv, value_text
from service.client.calls import Call, M, Records, is_frame, json_body, parsed, splittable
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

Rows = np.ndarray | Sequence[Sequence[int | float | None]]


def _rows_payload(x: Rows, packed: bool) -> dict[str, Any]:
    """Rows as the request carries them, each value as it is (the server refuses what is not 0,
    1 or null, naming its row and column): NaN is null (missing), numpy's bools are 0/1, and
    what JSON cannot carry (inf) or packed rows cannot (anything but 0 and 1) is a ValueError
    naming its row and column."""
    if packed:
        a = np.asarray(x, dtype=np.float64)
        _check_2d(a)
        if np.isnan(a).any():
            raise ValueError("packed rows cannot carry missing values; send them as lists")
        bad = (a != 0) & (a != 1)
        if bad.any():
            i, j = (int(t) for t in np.argwhere(bad)[0])
            raise ValueError(f"row {i}, column {j} is {a[i, j]:g}; packed rows carry only 0 or 1")
        return {"x_b64": pack_rows(a.astype(np.uint8)), "shape": list(a.shape)}
    if isinstance(x, np.ndarray):
        _check_2d(x)
        if x.dtype.kind == "b":
            x = x.astype(np.uint8)
        if x.dtype.kind == "f":
            inf = np.isinf(x)
            if inf.any():
                i, j = (int(t) for t in np.argwhere(inf)[0])
                _cell(float(x[i, j]), i, j)  # raises, naming it
            return {"x": [[None if v != v else v for v in row] for row in x.tolist()]}
        if x.dtype.kind in "iu":
            return {"x": x.tolist()}
    return {"x": [_row(row, i) for i, row in enumerate(x)]}


def _check_2d(a: np.ndarray) -> None:
    if a.ndim != 2:
        raise ValueError(f"rows must be 2-D: (N, D), got shape {a.shape}")


def _row(row: Any, i: int) -> Any:
    """One row's values (NaN as null); a row that is not a list of values goes as it is, for
    the server to refuse by its number."""
    if isinstance(row, np.ndarray):
        if row.ndim != 1:
            raise ValueError(f"rows must be 2-D: (N, D); row {i} has shape {row.shape}")
        row = row.astype(np.uint8) if row.dtype.kind == "b" else row
        return [_cell(v, i, j) for j, v in enumerate(row.tolist())]
    if isinstance(row, list | tuple):
        return [_cell(v, i, j) for j, v in enumerate(row)]
    return row


def _cell(v: Any, i: int, j: int) -> Any:
    """A value as JSON carries it: NaN as null (missing), numpy's scalars as Python's, the rest
    unchanged; inf, which JSON cannot carry, a ValueError naming its row and column."""
    if isinstance(v, np.bool_):
        v = int(v)
    elif isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        if v != v:
            return None
        raise ValueError(f"row {i}, column {j} is {v}, expected 0, 1 or NaN for missing")
    return v


def readyz() -> Call[ReadyResponse]:
    return Call("GET", "/readyz", parsed(ReadyResponse))


def models() -> Call[ModelsResponse]:
    return Call("GET", "/models", parsed(ModelsResponse))


def model(name: str) -> Call[dict[str, Any]]:
    """The manifest of one model."""
    return Call("GET", f"/models/{_segment(name)}", json_body)


def _default_model(response: httpx.Response) -> Any:
    default = parsed(ModelsResponse)(response).default
    if default is None:
        raise ValueError("the server has no default model; name the model")
    return default


def anomaly_threshold(model: str | None = None, contamination: float = 0.01) -> Call[float]:
    """The log p (nats) below which a share `contamination` of the held-out rows fall, as
    PyOD's contamination means (the share of rows flagged): the served version's held-out log p
    quantiles (GET /models/{name}/reference, q = 0, 0.01, ..., 1) interpolated linearly at
    `contamination`. Flag a record as an anomaly when its log p is below it. Without `model`,
    the default model's; a version without reference.json raises MadeAPIError (404) naming it."""
    if not 0 < contamination <= 0.5:
        raise ValueError(f"contamination is {contamination}; as in PyOD, a share of rows in (0, 0.5]")
    if model is None:
        return Call("GET", "/models", _default_model, then=lambda name: anomaly_threshold(name, contamination))
    return Call("GET", f"/models/{_segment(model)}/reference", lambda r: threshold_of(json_body(r), contamination))


def _segment(name: str) -> str:
    """A model's name as one path segment: 'a?b' or 'a/b' is asked for as that name, not as
    another path or a query."""
    return urllib.parse.quote(name, safe="")


def threshold_of(reference: dict[str, Any], contamination: float) -> float:
    """The log p quantile at `contamination` of a reference.json's 101 held-out quantiles."""
    quantiles = np.asarray(reference["logprob_quantiles"], dtype=np.float64)
    return float(np.interp(contamination, np.linspace(0.0, 1.0, len(quantiles)), quantiles))


def metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda response: response.text)


def logprob(
    x: Rows,
    *,
    model: str | None = None,
    masks: Literal["all"] | int = "all",
    seed: int | None = None,
    n_importance: int | None = None,
    packed: bool = False,
) -> Call[LogProbResponse]:
    options = {"model": model, "masks": masks, "seed": seed, "n_importance": n_importance}
    return Call("POST", "/logprob", parsed(LogProbResponse), {**options, **_rows_payload(x, packed)})


def conditionals(
    x: Rows, *, model: str | None = None, mask: int = 0, packed: bool = False
) -> Call[ConditionalsResponse]:
    payload = {"model": model, "mask": mask, **_rows_payload(x, packed)}
    return Call("POST", "/conditionals", parsed(ConditionalsResponse), payload)


def sample(
    n: int,
    *,
    model: str | None = None,
    seed: int | None = None,
    mask: Literal["mixture"] | int = "mixture",
    packed: bool = False,
) -> Call[SampleResponse]:
    payload = {"model": model, "n": n, "seed": seed, "mask": mask, "encoding": "packed" if packed else None}
    return Call("POST", "/sample", parsed(SampleResponse), payload)


def sample_png(
    n: int,
    *,
    model: str | None = None,
    seed: int | None = None,
    mask: Literal["mixture"] | int = "mixture",
    scale: int = 2,
) -> Call[bytes]:
    """A grid of n samples as PNG (models with an image_shape)."""
    payload = {"model": model, "n": n, "seed": seed, "mask": mask}
    return Call("POST", f"/sample?scale={scale}", lambda response: response.content, payload, {"Accept": "image/png"})


def impute(
    x: Rows,
    *,
    model: str | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    n_importance: int | None = None,
    packed_output: bool = False,
) -> Call[ImputeResponse]:
    options = {"model": model, "n_samples": n_samples, "seed": seed, "n_importance": n_importance}
    payload = {**options, "encoding": "packed" if packed_output else None, **_rows_payload(x, False)}
    return Call("POST", "/impute", parsed(ImputeResponse), payload)


Eps = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def denoise(
    x: Rows,
    eps: Eps,
    *,
    model: str | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    n_importance: int | None = None,
    packed: bool = False,
    packed_output: bool = False,
    n_particles: int | None = None,
) -> Call[DenoiseResponse]:
    """The clean rows behind noisy rows x, each bit flipped with probability eps (a number, one
    per row or one per entry): .marginals, .most_likely, .array() (clean samples),
    .logprob_noisy with .stderr, and .ess. n_particles (per mask) or n_importance (the work of
    that many draws per mask) sets the particles, not both."""
    options = {
        "model": model,
        "eps": eps,
        "n_samples": n_samples,
        "seed": seed,
        "n_importance": n_importance,
        "n_particles": n_particles,
    }
    payload = {**options, "encoding": "packed" if packed_output else None, **_rows_payload(x, packed)}
    return Call("POST", "/denoise", parsed(DenoiseResponse), payload)


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


def _records_call(path: str, parse: type[M], options: dict[str, Any], records: Records) -> Call[M]:
    """A request of records: plain records as JSON (a key left out or None unknown, "NA" or ""
    absent), a DataFrame as a CSV body with the options in the query string."""
    if not is_frame(records):
        rows = [{k: _record_value(v) for k, v in dict(r).items()} for r in records]
        return Call("POST", path, parsed(parse), {**options, "records": rows})
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items() if v is not None}
    return Call(
        "POST", path, parsed(parse), None, {"Content-Type": "text/csv"}, content=_frame_csv(records), params=params
    )


def _record_value(v: Any) -> Any:
    """A record's value as JSON carries it: a numpy scalar as Python's; NaN (a float's or numpy's)
    and pandas' NA and NaT as None, unknown, as a plain NaN already was (they raised building the
    request)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    if type(v).__name__ in ("NAType", "NaTType"):  # pandas.NA, pandas.NaT (pandas not imported)
        return None
    return v


def logprob_records(
    records: Records,
    *,
    model: str | None = None,
    masks: Literal["all"] | int = "all",
    seed: int | None = None,
    n_importance: int | None = None,
    explain: bool = False,
) -> Call[LogProbResponse]:
    """log p(record) per record; unknown (missing or None) cells summed out; `explain` adds
    each column's surprisal. `records`: a list of dicts, or a pandas DataFrame."""

    def build(chunk: Records, call_seed: int | None, first_row: int = 0) -> Call[LogProbResponse]:
        options = {"model": model, "masks": masks, "seed": call_seed, "n_importance": n_importance}
        options["first_row"] = first_row or None  # a batch after the first: where its records start
        return _records_call("/logprob", LogProbResponse, {**options, "explain": explain or None}, chunk)

    return splittable(build(records, seed), len(records), build, records, seed)


def sample_records(
    n: int,
    *,
    model: str | None = None,
    seed: int | None = None,
    given: dict[str, Any] | None = None,
    mask: Literal["mixture"] | int = "mixture",
    as_frame: bool = False,
) -> Call[Any]:
    """n sampled records (meeting `given`, {column: value}, when sent): a list of dicts, or with
    `as_frame` a pandas DataFrame (absent cells, "NA", as empty cells)."""
    payload = {"model": model, "n": n, "seed": seed, "given": given, "mask": mask, "encoding": "records"}

    def finish(response: httpx.Response) -> Any:
        records = list(parsed(SampleResponse)(response).records or [])
        return _records_frame(records) if as_frame else records

    return Call("POST", "/sample", finish, payload)


def _records_frame(records: Sequence[dict[str, Any]], index: Any = None) -> Any:
    """Records as a pandas DataFrame, an absent cell ("NA") as an empty one (NaN or None), which
    is what a DataFrame sent back means by it (absent where the column can be absent)."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("as_frame=True needs pandas: pip install pandas") from None
    rows = [{k: (None if v == ABSENT_LEVEL else v) for k, v in r.items()} for r in records]
    return pd.DataFrame(rows, index=index)


def impute_records(
    records: Records,
    *,
    model: str | None = None,
    n_samples: int | None = None,
    seed: int | None = None,
    n_importance: int | None = None,
    as_frame: bool = False,
) -> Call[Any]:
    """The records filled in (.records), each unknown column's distribution (.distributions)
    and n_samples completions per record (.samples); with `as_frame`, only the filled records,
    as a pandas DataFrame (with a sent DataFrame's index)."""

    def build(chunk: Records, call_seed: int | None, first_row: int = 0) -> Call[Any]:
        options = {"model": model, "n_samples": n_samples, "seed": call_seed, "n_importance": n_importance}
        options["first_row"] = first_row or None  # a batch after the first: where its records start
        call: Call[Any] = _records_call("/impute", ImputeResponse, options, chunk)
        if as_frame:
            index = chunk.index if is_frame(chunk) else None
            parse = call.finish
            call.finish = lambda response: _records_frame(parse(response).records or [], index)
        return call

    return splittable(build(records, seed), len(records), build, records, seed)


def conditionals_records(records: Records, *, model: str | None = None, mask: int = 0) -> Call[ConditionalsResponse]:
    """Per complete record, each column's distribution given the columns before it in mask
    `mask`'s ordering (.conditionals; the ordering in .column_order)."""
    return _records_call("/conditionals", ConditionalsResponse, {"model": model, "mask": mask}, records)
