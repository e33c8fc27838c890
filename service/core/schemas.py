"""Request and response bodies of the HTTP API (pydantic), and the compact bit-packed encoding.

A request carries its rows as rows of bits (x, or x_b64 with shape) or as records; the fields
themselves are parsed into numpy by service.core.fields. Responses carry rows as JSON lists or
bit-packed (pack_rows), and records as JSON objects. Imports neither fastapi nor the engine, so
the typed client can share these models.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.json_schema import SkipJsonSchema

from made.core.errors import InvalidInput
from service.core.fields import (
    CompleteRows,
    Encoding,
    EpsSpec,
    MaskIndex,
    MasksSpec,
    ModelName,
    PackedShape,
    RowsWithMissing,
    SampleMask,
    Seed,
    StrictInt,
    decode_packed,
    fail,
)
from service.engine.denoise import DEFAULT_PARTICLES
from service.engine.smc import DRAWS_PER_PARTICLE, particles_for

# --- the compact encoding ---------------------------------------------------------------------


def pack_rows(a: np.ndarray) -> str:
    """Base64 of np.packbits(a, axis=-1): each row (last axis) padded to whole bytes, MSB first."""
    return base64.b64encode(np.packbits(np.asarray(a, dtype=np.uint8), axis=-1).tobytes()).decode()


def unpack_rows(data: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """Inverse of pack_rows: a uint8 array of `shape` (the last axis is the bit-packed one)."""
    *lead, d = shape
    raw = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    per_row = (d + 7) // 8
    return np.unpackbits(raw.reshape(*lead, per_row), axis=-1, count=d)


# --- requests ------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())


Record = dict[str, Any]

# Where a request sits in a larger call split into requests: row i draws its random numbers from
# default_rng([seed, first_row + i]), so the requests of a split call, sent with one seed, answer
# as one request of all its rows would. At most 2^53 - 1, as a seed: JSON-safe.
FirstRow = Annotated[
    int,
    Strict(),
    Field(
        ge=0,
        le=2**53 - 1,
        description="the index of this request's first row in a larger call split into requests: row i "
        "draws from numpy.random.default_rng([seed, first_row + i]), so the requests of a split call, sent "
        "with one seed, answer as one request of all its rows would; only rows that draw random numbers "
        "depend on it",
    ),
]


class _RowsRequest(_Request):
    """Rows as JSON lists (`x`), or bit-packed (`x_b64` + `shape`) for large complete batches; or,
    for a model of a table's columns, `records`."""

    x: np.ndarray | None = None  # (N, D) float32, NaN for null; each request types it
    x_b64: str | None = Field(
        None,
        description="compact alternative to x for complete rows: base64 of "
        "numpy.packbits(rows, axis=1) (each row padded to whole bytes, most significant bit "
        "first); needs `shape`",
    )
    shape: PackedShape | None = Field(None, description="[N, D] of the rows in x_b64", examples=[[2, 784]])
    records: list[Record] | None = Field(
        None,
        description="models of a table's columns: one object per row, keyed by column name "
        '(GET /models/{name} lists the columns); a key left out or null is unknown, "NA" a value '
        "recorded as absent",
        examples=[[{"cut": "Ideal", "carat": 0.3, "price": None}]],
    )

    @model_validator(mode="after")
    def _one_encoding(self) -> _RowsRequest:
        given = [n for n, v in (("x", self.x), ("x_b64", self.x_b64), ("records", self.records)) if v is not None]
        if len(given) != 1:
            raise fail(
                "send the rows as x (JSON lists), as x_b64 with shape, or as records (table "
                "models), " + (f"not {' and '.join(given)} together" if given else "got none of them")
            )
        if self.records is not None:
            return self
        if self.x_b64 is not None:
            self.x = decode_packed(self.x_b64, self.shape)
            self.x_b64 = None
        return self

    @property
    def rows(self) -> np.ndarray:
        """(N, D) float32, NaN where missing: from x or x_b64, whichever came."""
        if self.x is None:
            raise InvalidInput("/denoise reads rows of 0/1 (x or x_b64), not records", loc=("records",))
        return self.x


class LogProbRequest(_RowsRequest):
    model: ModelName = None
    x: RowsWithMissing | None = None
    masks: MasksSpec = "all"
    seed: Seed | None = None
    first_row: FirstRow = 0
    n_importance: StrictInt = Field(
        1000,
        ge=1,
        le=100_000,
        description="draws per mask and row for rows whose missing values need importance sampling",
    )
    explain: bool = Field(
        False, description="records: add each column's surprisal, to say which field makes a record unlikely"
    )


class ConditionalsRequest(_RowsRequest):
    model: ModelName = None
    x: CompleteRows | None = None
    mask: MaskIndex = 0


class SampleRequest(_Request):
    model: ModelName = None
    n: StrictInt = Field(..., ge=1, description="number of samples (at most MADE_MAX_SAMPLES)")
    seed: Seed | None = None
    mask: SampleMask = "mixture"
    encoding: Literal["json", "packed", "records"] = Field(
        "json",
        description='"packed": samples come as samples_b64 (bit-packed rows, base64) with shape, instead of JSON '
        'lists; "records": as records keyed by column name (a model of bits: columns x0..x{D-1}). A table model '
        "answers records either way",
    )
    given: Record | None = Field(
        None,
        description="{column: value} that every sampled record meets (records out); exact where "
        "a mask's ordering puts the given columns first, importance-weighted otherwise (see ess)",
        examples=[{"cut": "Ideal", "color": "E"}],
    )


class ImputeRequest(_RowsRequest):
    model: ModelName = None
    x: RowsWithMissing | None = None
    n_samples: StrictInt = Field(10, ge=1, description="completions per row")
    seed: Seed | None = None
    first_row: FirstRow = 0
    n_importance: StrictInt = Field(1000, ge=1, le=100_000, description="draws per mask and row")
    encoding: Encoding = Field("json", description='"packed": samples come as samples_b64')


class DenoiseRequest(_RowsRequest):
    """Noisy rows of 0/1 (null: missing) with independent bit flips of probability eps."""

    model: ModelName = None
    x: RowsWithMissing | None = None
    # rows of bits only: records are refused (the 422 says why), so the schema does not offer them
    records: SkipJsonSchema[list[Record] | None] = None
    eps: EpsSpec
    n_samples: StrictInt = Field(
        10, ge=0, description="clean rows drawn from the posterior per row (0: marginals and estimates only)"
    )
    seed: Seed | None = None
    first_row: FirstRow = 0
    n_particles: StrictInt | None = Field(
        None,
        ge=1,
        le=100_000,
        description=f"particles per mask and row of the particle filter (default {DEFAULT_PARTICLES})",
    )
    n_importance: StrictInt | None = Field(
        None,
        ge=1,
        le=100_000,
        description="instead of n_particles: the work of n_importance draws per mask, "
        f"n_importance / {DRAWS_PER_PARTICLE} particles (rounded up)",
    )
    encoding: Encoding = Field("json", description='"packed": samples come as samples_b64')

    @property
    def particles(self) -> int:
        """Particles per mask and row: n_particles, else particles_for(n_importance) (n_importance
        means the work of that many draws per mask everywhere), else the default."""
        if self.n_particles is not None:
            return self.n_particles
        if self.n_importance is not None:
            return particles_for(self.n_importance)
        return DEFAULT_PARTICLES

    @model_validator(mode="after")
    def _eps_fits_x(self) -> DenoiseRequest:
        if None not in (self.n_particles, self.n_importance):
            raise fail("n_particles and n_importance both set the particles: send one of them")
        if self.x is None:  # records: refused where the model is known
            return self
        n, d = self.x.shape
        eps = self.eps
        if eps.ndim == 1 and len(eps) != n:
            raise fail(f"eps has {len(eps)} values, one per row, but x has {n} row{'s' * (n != 1)}")
        if eps.ndim == 2 and eps.shape != (n, d):
            raise fail(
                f"eps has shape [{eps.shape[0]}, {eps.shape[1]}] but x has shape [{n}, {d}]; "
                "a per-entry eps has one value per value of x"
            )
        return self


# --- responses -----------------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(description="the model that answered")
    version: str = Field(description="its version in the store")


class _Samples:
    """The reading of an answer's samples, JSON rows or bit-packed ones with their shape."""

    if TYPE_CHECKING:  # the fields of the responses that hold samples
        samples: Any
        samples_b64: str | None
        shape: list[int] | None

    def array(self) -> np.ndarray:
        """The samples as a uint8 array, whichever the encoding: (n, D) of /sample, (N,
        n_samples, D) of /impute and /denoise."""
        if self.samples_b64 is not None and self.shape is not None:
            return unpack_rows(self.samples_b64, self.shape)
        return np.asarray(self.samples, dtype=np.uint8)


class LogProbResponse(_Response):
    logprob: list[float | None] = Field(
        description="log p(x) per row, in nats (log p(x_observed) where values are missing); null where the "
        "row's probability underflows float64 (a table model without bounds given a number far outside its "
        "data): rank it below every other"
    )
    exact: list[bool] = Field(description="false where logprob is an importance-sampling estimate")
    stderr: list[float | None] = Field(description="standard error of estimated rows, else null")
    seed: int | None = Field(
        None, description="seed of the importance draws (rows with missing values); send it back to repeat the estimate"
    )
    surprisal: list[dict[str, dict[str, float | None]]] | None = Field(
        None,
        description="explain: per record and column, in_order = -log p(x_c | the columns before c) "
        "averaged over the masks, given_others = -log p(x_c | every other column) under the mixture, in the "
        "units of in_order (a number's rounding bin, or its density where it has no decimals; NA a mass)",
    )


class ConditionalsResponse(_Response):
    mask: int
    ordering: list[int] = Field(
        description="the order in which mask k generates the dimensions (table "
        "models: the columns, by their index in the model's columns)"
    )
    probs: list[list[float]] | None = Field(
        None, description="models of bits: probs[i][d] = p(x_d = 1 | the dimensions before d in ordering), for row i"
    )
    column_order: list[str] | None = Field(
        None, description="table models: the column names in the order mask k generates them"
    )
    conditionals: list[dict[str, dict[str, int | float | None]]] | None = Field(
        None,
        description="table models: conditionals[i][column] = that column's distribution given the "
        "columns before it in mask k's ordering, for record i: {level: probability} for a category; "
        '{"mean", "sd", "q05", "q50", "q95"} of its value for a number (and "p_absent" where it can be NA)',
    )


class SampleResponse(_Samples, _Response):
    seed: int = Field(description="the seed that produced these samples (drawn when not sent)")
    mask: Literal["mixture"] | int
    samples: list[list[int]] | None = Field(None, description="n rows of 0/1 (encoding json)")
    samples_b64: str | None = Field(None, description="encoding packed: base64 of numpy.packbits(samples, axis=1)")
    shape: list[int] | None = Field(None, description="encoding packed: [n, D]")
    records: list[Record] | None = Field(None, description="table models: n sampled records")
    exact: bool | None = Field(
        None, description="given: false where the records are resampled from importance-weighted draws"
    )
    ess: float | None = Field(None, description="given: the effective sample size behind the records")


class ImputeResponse(_Samples, _Response):
    seed: int
    samples: list[list[list[int]]] | list[list[Record]] | None = Field(
        None, description="samples[i]: n_samples completions of row i (encoding json), as records for table models"
    )
    samples_b64: str | None = Field(None, description="encoding packed: base64 of numpy.packbits(samples, axis=2)")
    shape: list[int] | None = Field(None, description="encoding packed: [N, n_samples, D]")
    marginals: list[list[float]] | None = Field(None, description="p(x_d = 1 | x_observed) (bit models)")
    records: list[Record] | None = Field(
        None,
        description="table models: each record with its unknown cells filled by their most likely "
        "level, or the median of a number",
    )
    distributions: list[dict[str, dict[str, Any]]] | None = Field(
        None,
        description="table models: per record, each unknown column's distribution: {level: probability} "
        'for categories; {"mean", "sd", "q05", "q50", "q95"} for numbers (and "p_absent" where it can be NA)',
    )
    logprob_observed: list[float] = Field(description="log p(x_observed) per row, nats")
    stderr: list[float | None] = Field(description="standard error of logprob_observed where estimated, else null")
    exact: list[bool]
    ess: list[float] = Field(description="effective sample size behind each row's estimates")


class DenoiseResponse(_Samples, _Response):
    seed: int = Field(description="the seed of the draws (drawn when not sent)")
    samples: list[list[list[int]]] | None = Field(
        None,
        description="samples[i]: n_samples clean rows for noisy row i, drawn from the weighted "
        "particles with probability proportional to their weights (encoding json)",
    )
    samples_b64: str | None = Field(None, description="encoding packed: base64 of numpy.packbits(samples, axis=2)")
    shape: list[int] | None = Field(None, description="encoding packed: [N, n_samples, D]")
    marginals: list[list[float]] = Field(description="p(clean x_d = 1 | noisy row), per entry")
    most_likely: list[list[int]] = Field(
        description="the most likely clean value of each entry on its own: 1 where marginals > 0.5 "
        "(the noisy value at exactly 0.5)"
    )
    logprob_noisy: list[float] = Field(
        description="log p(noisy row) per row, nats: the model's probability of the row after the noise"
    )
    stderr: list[float | None] = Field(
        description="standard error of logprob_noisy over the particle filter's islands (0 where eps is 0 "
        "everywhere; null with one particle a mask)"
    )
    ess: list[float] = Field(
        description="effective number of particles behind each row's answer, 1 / sum of their squared weights"
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    dims: int
    n_masks: int
    default: bool
    image_shape: list[int] | None = None
    dataset: str | None = None
    test_nll: float | None = Field(None, description="nats per example on the test split")
    providers: list[str] = Field(default_factory=list, description="onnxruntime providers running")
    columns: list[str] | None = Field(default=None, description="table models: the column names records use")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    default: str | None


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
    default: str | None


class ErrorResponse(BaseModel):
    detail: str = Field(description="one sentence: what was wrong, where, what was expected")
    type: str = Field(description="invalid_input, model_not_found, unauthorized, ...")
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="422: each problem with its loc")
