"""`made score --ray`: the blocks scored by a pool of Ray actors, written by the local writers.

Ray Data reads the file, scores its blocks in actors that each load the engine once (the model
travels as its files' bytes, so the cluster's nodes need not see the store), and streams the
scored blocks back in the input's order to service.batch.outputs' writers. Ray is imported only
when this runs (an optional extra: made[ray]).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from made.core.errors import ConfigError, DataError, MadeError
from made.store.manifest import MANIFEST
from made.store.versions import StoredModel, open_model
from service.batch.inputs import Block, InputPlan, first_line
from service.batch.outputs import ScoreResult, Tally, open_output, score_progress
from service.batch.scorer import SCORE_COLUMN, Scorer, score_names

RAY_LOCAL_CPUS = 2  # an in-process Ray ("local") gets this many CPUs
_BLOCK_BYTES = 4 << 20  # the input is cut into blocks of at most this many bytes (or more blocks)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--ray needs Ray, which is not installed: pip install made[ray] (or pip install 'ray[data]')"
        ) from None
    return ray


class RayScorer:
    """A Ray actor's scorer: the model arrives as its files' bytes (the cluster's nodes need not
    see the store), is verified and loaded once, then scores every batch the actor is given."""

    def __init__(
        self,
        files: dict[str, bytes],
        name: str,
        version: str,
        names: list[str],
        source: str,
        text: bool,
        conditionals: bool,
        out_kind: str,
        impossible: str = "error",
        stderr: bool = False,
    ):
        tmp = Path(tempfile.mkdtemp(prefix="made-score-"))
        try:
            folder = tmp / name / version
            folder.mkdir(parents=True)
            for fname, data in files.items():
                (folder / fname).write_bytes(data)
            self.scorer = Scorer(open_model(tmp, name, version), names, source, conditionals, impossible, stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.names, self.source, self.text, self.out_kind = names, source, text, out_kind

    def __call__(self, table: Any) -> Any:
        source = self.source
        block = Block(self.names, table=table, text=self.text, where=lambda i: f"{source}: a row")
        x = self.scorer.encode(block)
        return self.scorer.to_arrow(block, self.scorer.score(x), x, self.out_kind)


def _model_files(model: StoredModel) -> dict[str, bytes]:
    names = [MANIFEST, *model.manifest.files]
    return {fname: (model.path / fname).read_bytes() for fname in names}


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Ray, connected: an in-process one with RAY_LOCAL_CPUS CPUs for "local", else the cluster
    at `address` (e.g. ray://head:10001 or auto). One already initialised (tests) is reused."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address == "local":
            ray.init(num_cpus=RAY_LOCAL_CPUS, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as exc:
        raise ConfigError(f"cannot start Ray ({address}): {first_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def score_on_ray(
    model: StoredModel,
    plan: InputPlan,
    output: Path,
    out_kind: str,
    *,
    address: str,
    conditionals: bool,
    batch_size: int,
    progress: bool,
    start: float,
    escape_formulas: bool = True,
    impossible: str = "error",
    stderr: bool = False,
) -> ScoreResult:
    """Ray Data: read the file, map_batches over a pool of RayScorer actors (each loads the engine
    once, with one onnxruntime thread like the local path's), then stream the scored blocks back
    in order and write them with the local path's writers, atomically. With a remote cluster the
    input path must be readable from its nodes (a shared folder, s3://...), and made must be
    installed there."""
    ray = _import_ray()
    n_scores = len(score_names(len(model.schema), conditionals, stderr))
    tally = Tally(start, impossible == "inf")
    with ray_session(address), _data_context(ray):
        # every CPU of the cluster scores, in actors of at most one CPU each, except what one read
        # task takes (an actor pool holding every CPU would starve the reads feeding it)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        actors = max(1, int(cpus))
        read_cpus = min(1.0, cpus / 2)
        actor_cpus = min(1.0, (cpus - read_cpus) / actors)
        # blocks to spread over the actors: at least four per actor, at most _BLOCK_BYTES each
        n_blocks = max(4 * actors, math.ceil(plan.size / _BLOCK_BYTES))
        ds = _read(ray, plan, read_cpus, n_blocks).map_batches(
            RayScorer,
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=actor_cpus,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            fn_constructor_kwargs=dict(
                files=_model_files(model),
                name=model.name,
                version=model.version,
                names=plan.names,
                source=str(plan.path),
                text=plan.kind == "csv",
                conditionals=conditionals,
                out_kind=out_kind,
                impossible=impossible,
                stderr=stderr,
            ),
        )
        bar = score_progress(plan.rows, "rows", progress)
        delimiter = "\t" if output.suffix.lower() == ".tsv" else plan.delimiter
        try:
            with open_output(output, out_kind, delimiter, escape_formulas) as sink:
                for table in _ray_batches(ds, plan):
                    sink.write_arrow(table, n_scores)
                    tally.add(table.num_rows, table.column(SCORE_COLUMN).to_numpy(zero_copy_only=False))
                    bar.update(table.num_rows, tally.rows)
                if tally.rows == 0:
                    raise DataError(f"{plan.path} holds a header row but no rows")
        finally:
            bar.close()
    return tally.result(output, model.name, model.version, address)


@contextlib.contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data's settings for scoring, restored afterwards (a Ray session may outlive the call)."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    saved = (
        ctx.execution_options.preserve_order,
        ctx.enable_progress_bars,
        ctx.print_on_execution_start,
        ctx.raise_original_map_exception,
        ctx.target_max_block_size,
    )
    ctx.execution_options.preserve_order = True  # the output's rows in the input's order
    ctx.enable_progress_bars = False  # ours instead
    ctx.print_on_execution_start = False
    ctx.raise_original_map_exception = True  # a bad cell's DataError, not a wrapper
    ctx.target_max_block_size = _BLOCK_BYTES  # reads stream out blocks of this size for the actors
    try:
        yield
    finally:
        (
            ctx.execution_options.preserve_order,
            ctx.enable_progress_bars,
            ctx.print_on_execution_start,
            ctx.raise_original_map_exception,
            ctx.target_max_block_size,
        ) = saved


def _read(ray: Any, plan: InputPlan, read_cpus: float, n_blocks: int) -> Any:
    """The input as a Ray dataset: a CSV's cells as strings (never nulls, like the csv module's),
    a Parquet file's columns with their types."""
    source = str(plan.path.resolve())
    if plan.kind != "csv":
        return ray.data.read_parquet(source, num_cpus=read_cpus, override_num_blocks=n_blocks)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return ray.data.read_csv(
        source,
        num_cpus=read_cpus,
        override_num_blocks=n_blocks,
        read_options=pacsv.ReadOptions(column_names=plan.names, skip_rows=int(plan.header)),
        parse_options=pacsv.ParseOptions(delimiter=plan.delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in plan.names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _ray_batches(ds: Any, plan: InputPlan) -> Iterator[Any]:
    """The scored blocks in order; a MadeError raised in an actor comes back as itself, a file
    Ray's reader cannot parse as a one-line DataError."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    except MadeError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        seen = 0
        while cause is not None and seen < 10:
            if isinstance(cause, MadeError):
                raise cause from None
            cause = getattr(cause, "cause", None) or cause.__cause__
            seen += 1
        text = str(exc)
        if "ArrowInvalid" in text or "CSV parse error" in text or "Parquet" in text:
            line = next((ln for ln in text.splitlines() if "Error" in ln or "error" in ln), first_line(exc))
            raise DataError(f"cannot read {plan.path}: {line.strip()}") from None
        raise
