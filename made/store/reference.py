"""reference.json: an optional file of a version, what the playground sets a model's answers
beside: the held-out rows' log p (their quantiles), a few held-out rows, and the training split's
marginals. This module is the file's only reader (parse_reference, read_reference) and writer
(build_reference, reference_bytes); numpy/JSON only.

The file is listed in the manifest's `files` with its sha256 like every other file of a version,
so open_model verifies it before reading it, and checks it against the model: one marginal per
schema column of the column's kind, examples of its columns (a model of bits: rows of D 0/1
values); its `model` and `version` are served as the version's own. A version without it loads
as before; one whose reference.json does not read or does not match is refused with one sentence.

    {"model", "version", "split", "n_rows",
     "logprob_quantiles": [101 floats, q = 0, 0.01, ..., 1, ascending],
     "examples": [<= 16 held-out rows: lists of 0/1 (bits) or records {column: value} (tables)],
     "marginals": {column: {"kind": "category", "levels": {level: frequency}}
                          | {"kind": "number", "edges": [21], "counts": [20], "p_absent": float}}}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from made.core.errors import DataError, ModelStoreError
from made.core.schema import ABSENT, Column, Schema

REFERENCE = "reference.json"
N_QUANTILES = 101  # q = 0, 0.01, ..., 1
MAX_EXAMPLES = 16
N_BINS = 20  # a number's histogram
MAX_REFERENCE_BYTES = 8 << 20  # below the store's 10 MB a file; a model of 1e6 bits' 16 rows fit
WRITE_COMMAND = "made export --reference DATASET"


_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CategoryMarginal(_Strict):
    kind: Literal["category"]
    levels: dict[str, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]]


class NumberMarginal(_Strict):
    kind: Literal["number"]
    edges: Annotated[list[_Finite], Field(min_length=N_BINS + 1, max_length=N_BINS + 1)]
    counts: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=N_BINS, max_length=N_BINS)]
    p_absent: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


Marginal = Annotated[CategoryMarginal | NumberMarginal, Field(discriminator="kind")]
Example = list[Literal[0, 1]] | dict[str, str | int | float]


class Reference(_Strict):
    """reference.json, typed; its sizes bounded (101 quantiles, <= 16 examples)."""

    model: str
    version: str
    split: str
    n_rows: Annotated[int, Field(ge=1)]
    logprob_quantiles: Annotated[list[_Finite], Field(min_length=N_QUANTILES, max_length=N_QUANTILES)]
    examples: Annotated[list[Example], Field(max_length=MAX_EXAMPLES)]
    marginals: dict[str, Marginal]


def reference_bytes(reference: Reference) -> bytes:
    """The file's bytes: compact JSON (what GET /models/{name}/reference answers, as it is)."""
    return json.dumps(reference.model_dump(mode="json"), separators=(",", ":")).encode()


# --- building ---------------------------------------------------------------------------------------


def _category(col: Column, codes: np.ndarray) -> CategoryMarginal:
    counts = np.bincount(codes.astype(np.int64), minlength=len(col.levels))
    freq = counts / max(1, len(codes))
    return CategoryMarginal(kind="category", levels={lv: float(f) for lv, f in zip(col.levels, freq, strict=True)})


def _number(col: Column, values: np.ndarray) -> NumberMarginal:
    absent = values == ABSENT
    present = values[~absent]
    lo, hi = (float(present.min()), float(present.max())) if len(present) else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    spaced = np.geomspace if col.transform == "log" and lo > 0 else np.linspace  # skewed: bins of equal ratio
    edges = spaced(lo, hi, N_BINS + 1)
    edges[0], edges[-1] = lo, hi
    counts, _ = np.histogram(present, bins=edges)
    return NumberMarginal(
        kind="number",
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        p_absent=float(absent.mean()) if len(values) else 0.0,
    )


def marginals(schema: Schema, train: np.ndarray) -> dict[str, CategoryMarginal | NumberMarginal]:
    """Every column's training marginal: level frequencies, or a number's 20-bin histogram."""
    return {
        col.name: _number(col, train[:, j]) if col.kind == "numeric" else _category(col, train[:, j])
        for j, col in enumerate(schema.columns)
    }


def build_reference(
    model: str,
    version: str,
    schema: Schema,
    heldout: np.ndarray,
    train: np.ndarray,
    logprob: Callable[[np.ndarray], np.ndarray],
    *,
    split: str = "test",
    bits: bool = False,
    seed: int = 0,
) -> Reference:
    """The reference of a model from a held-out split and the training split, encoded as the io
    readers return them ((N, C) codes and values; a model of bits: (N, D) 0/1), and `logprob`,
    the mixture log p (nats) of a block of those rows. Examples: up to 16 held-out rows drawn
    with `seed`, in their order in the split."""
    heldout, train = np.asarray(heldout), np.asarray(train)
    if len(heldout) == 0 or len(train) == 0:
        raise DataError("a reference needs held-out and training rows; a split is empty")
    blocks = [heldout[i : i + 4096] for i in range(0, len(heldout), 4096)]
    lp = np.concatenate([np.asarray(logprob(block), dtype=np.float64) for block in blocks])
    if lp.shape != (len(heldout),) or not np.isfinite(lp).all():
        raise DataError(f"the log p of the {split} rows is not one finite number per row")
    picked = np.sort(np.random.default_rng(seed).choice(len(heldout), min(MAX_EXAMPLES, len(heldout)), replace=False))
    rows = heldout[picked]
    examples: list[Any] = (
        [[int(v) for v in row] for row in rows] if bits else schema.decode_rows(rows.astype(np.float64))
    )
    return Reference(
        model=model,
        version=version,
        split=split,
        n_rows=len(heldout),
        logprob_quantiles=[float(v) for v in np.quantile(lp, np.linspace(0, 1, N_QUANTILES))],
        examples=examples,
        marginals=marginals(schema, np.asarray(train, dtype=np.float64)),
    )


# --- reading ----------------------------------------------------------------------------------------


def _check_marginal(col: Column, marginal: CategoryMarginal | NumberMarginal) -> str | None:
    if col.kind == "numeric":
        if not isinstance(marginal, NumberMarginal):
            return f"the marginal of '{col.name}' must be of kind number"
        if any(b <= a for a, b in zip(marginal.edges, marginal.edges[1:], strict=False)):
            return f"the edges of '{col.name}' must ascend"
        return None
    if not isinstance(marginal, CategoryMarginal):
        return f"the marginal of '{col.name}' must be of kind category"
    unknown = sorted(set(marginal.levels) - set(col.levels))
    if unknown:
        return f"'{col.name}' has no level {unknown[0]!r}"
    if abs(sum(marginal.levels.values()) - 1) > 1e-6:
        return f"the level frequencies of '{col.name}' do not sum to 1"
    return None


def _check_example(schema: Schema, example: Any, i: int, bits: bool) -> str | None:
    if bits:
        return (
            None
            if isinstance(example, list) and len(example) == len(schema)
            else (f"examples[{i}] must be a row of {len(schema)} 0/1 values")
        )
    if not isinstance(example, dict) or list(example) != schema.names:
        return f"examples[{i}] must be a record of the model's columns, in their order"
    try:
        for col in schema.columns:
            col.encode_cell(example[col.name], f"examples[{i}]")
    except DataError as exc:
        return str(exc)
    return None


def check_reference(reference: Reference, schema: Schema, bits: bool) -> str | None:
    """What does not match the model, or None."""
    q = reference.logprob_quantiles
    if any(b < a for a, b in zip(q, q[1:], strict=False)):
        return "logprob_quantiles must ascend"
    if list(reference.marginals) != schema.names:
        return f"its marginals must be of the model's {len(schema)} columns, in their order"
    for col in schema.columns:
        problem = _check_marginal(col, reference.marginals[col.name])
        if problem:
            return problem
    for i, example in enumerate(reference.examples):
        problem = _check_example(schema, example, i, bits)
        if problem:
            return problem
    return None


def parse_reference(raw: Any, where: Path | str, name: str, version: str, schema: Schema, bits: bool) -> Reference:
    """The typed reference of a model, or ModelStoreError in one sentence naming the file."""
    try:
        reference = Reference.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        parts = [p for p in error["loc"] if isinstance(p, int) or "[" not in p]  # not a union's member tags
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
        raise ModelStoreError(f"{where} is not a valid reference: {loc or 'the file'}: {error['msg']}") from None
    problem = check_reference(reference, schema, bits)
    if problem:
        raise ModelStoreError(f"{where} does not match model {name} version {version}: {problem}")
    # a version copied under another number or name describes the same network: served as itself
    return reference.model_copy(update={"model": name, "version": version})


def read_reference(version_dir: Path, name: str, version: str, schema: Schema, bits: bool) -> Reference:
    """reference.json of a version (open_model has checked its sha256), parsed and checked."""
    path = Path(version_dir) / REFERENCE
    try:
        size = path.stat().st_size
        if size > MAX_REFERENCE_BYTES:
            raise ModelStoreError(f"{path} holds {size} bytes, more than a reference may ({MAX_REFERENCE_BYTES})")
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ModelStoreError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ModelStoreError(f"{path} is not valid JSON: nested too deeply") from None
    except OSError as exc:
        raise ModelStoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_reference(raw, path, name, version, schema, bits)


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def missing_reference(name: str, version: str) -> str:
    """The sentence of a version without reference.json (the server's paths are not named)."""
    return (
        f"model '{name}' version {version} has no reference.json (held-out log p quantiles, examples and "
        f"training marginals); write it with `{WRITE_COMMAND} STORE/{name}/{version}`"
    )
