"""`made score`: a CSV or Parquet file in, the same rows with a `logprob` column out (with
--stderr, `exact` and `stderr` too, as POST /logprob's CSV answer has them).

Locally the file is read, scored and written in blocks of `batch_size` rows (service.batch.inputs,
service.batch.scorer, service.batch.outputs), a few blocks in memory at a time whatever the file's
size: blocks are read and written in the main thread and scored by one thread per core, each
engine call on one onnxruntime thread. With `ray` (an address, or "local" for an in-process Ray)
service.batch.ray_score scores the blocks in a pool of Ray actors and streams them back, in order,
to the same writers. A row's score depends on nothing but the row, so the output is the same file
either way, whatever the batch size. Nothing here imports torch or any HTTP library, and Ray only
inside score_on_ray.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from made.core.errors import ConfigError, DataError
from made.io.atomic import check_output_path
from made.store.versions import open_model
from service.batch.inputs import Block, file_kind, inspect_input, need_pyarrow, read_csv_blocks, read_parquet_blocks
from service.batch.outputs import CsvSink, ScoreResult, Tally, open_output, score_progress
from service.batch.ray_score import score_on_ray
from service.batch.scorer import IMPOSSIBLE_CHOICES, SCORE_COLUMN, Scorer, check_columns, lacking_columns

DEFAULT_BATCH_SIZE = 4096


def score_file(
    store: str | Path,
    name: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    version: str | None = None,
    conditionals: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ray: str | None = None,
    progress: bool = True,
    threads: int | None = None,
    escape_formulas: bool = True,
    warn: Callable[[str], None] | None = None,
    impossible: str = "error",
    stderr: bool = False,
) -> ScoreResult:
    """Score every row of input_path with model `name` of `store`; write output_path atomically.
    threads: blocks scored at once (default: the CPU cores this process may use). escape_formulas:
    text cells of a CSV output that a spreadsheet would run as formulas get a leading '. warn:
    told what is scored but may not be what was meant (a table model's columns the input lacks;
    rows scored -inf). impossible: "error" stops at the first cell a table model gives no
    probability (outside its column's bounds, not a level; an empty or NA cell of a column never
    absent is unknown, table_cell), naming it; "inf" scores its row -inf (p = 0) and goes on,
    and warn is told how many rows and the first such cell. stderr: `exact` and `stderr` columns
    after logprob, POST /logprob's (an estimate's standard error, empty or null where exact; a row
    scored -inf is exact). Everything that can be checked before scoring (the files, the columns)
    is checked first."""
    start = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    source, output = Path(input_path), Path(output_path)
    out_kind = file_kind(output, "output file")
    check_output_path(output)
    if source.exists() and output.exists() and source.resolve() == output.resolve():
        raise DataError(f"--output {output} is the input file; write the scores to another file")
    if out_kind == "parquet":
        need_pyarrow(output)
    if impossible not in IMPOSSIBLE_CHOICES:
        raise ConfigError(f"--impossible must be one of {', '.join(IMPOSSIBLE_CHOICES)}, got {impossible!r}")
    model = open_model(Path(store), name, version)
    plan = inspect_input(source, table=model.is_table)
    check_columns(model, plan.names, str(source), conditionals, stderr)
    lacking = lacking_columns(model, plan.names)
    if lacking and warn is not None:
        warn(lacking)
    if ray is not None:
        result = score_on_ray(
            model,
            plan,
            output,
            out_kind,
            address=ray,
            conditionals=conditionals,
            batch_size=batch_size,
            progress=progress,
            start=start,
            escape_formulas=escape_formulas,
            impossible=impossible,
            stderr=stderr,
        )
        _tell_impossible(result, model.name, None, warn)
        return result
    scorer = Scorer(model, plan.names, str(source), conditionals, impossible, stderr)
    delimiter = "\t" if output.suffix.lower() == ".tsv" else (plan.delimiter if plan.kind == "csv" else ",")
    unit, total = ("B", plan.size) if plan.kind == "csv" else ("rows", plan.rows)
    bar = score_progress(total, unit, progress)
    tally = Tally(start, impossible == "inf")
    try:
        with open_output(output, out_kind, delimiter, escape_formulas) as sink:
            blocks_in = (
                read_csv_blocks(plan, batch_size, bar)
                if plan.kind == "csv"
                else read_parquet_blocks(plan, batch_size, bar)
            )
            for block, x, scores in _scored_blocks(scorer, blocks_in, threads or _cores()):
                if isinstance(sink, CsvSink) and block.rows is not None:
                    sink.write_rows(block.names, block.rows, scores)
                else:
                    sink.write_arrow(scorer.to_arrow(block, scores, x, out_kind), len(scores))
                tally.add(len(block), scores[SCORE_COLUMN])
            if tally.rows == 0:
                raise DataError(f"{source} holds a header row but no rows")
    finally:
        bar.close()
    result = tally.result(output, model.name, model.version, None)
    _tell_impossible(result, model.name, scorer.first_impossible, warn)
    return result


def _tell_impossible(result: ScoreResult, model: str, first: str | None, warn: Callable[[str], None] | None) -> None:
    if result.impossible_rows and warn is not None:
        rows = f"{result.impossible_rows:,} row" + ("s" if result.impossible_rows > 1 else "")
        where = f" (the first: {first})" if first else ""
        warn(f"{rows} hold a value model {model} gives no probability{where}: logprob -inf")


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _scored_blocks(
    scorer: Scorer, blocks: Iterator[Block], threads: int
) -> Iterator[tuple[Block, np.ndarray, dict[str, np.ndarray]]]:
    """(block, its encoded rows, its scores) in the input's order. Blocks are read and encoded
    here and scored by `threads` threads (onnxruntime lets go of the GIL), at most threads + 1
    blocks in memory at once. While `threads` blocks are scored at once, numpy's BLAS (the particle
    filters' matrix products, for rows with unknown cells) gets one thread each, as the server's
    Settings.blas_threads does: two blocks each on OpenBLAS's thread per core would oversubscribe
    the cores."""
    if threads <= 1:
        for block in blocks:
            x = scorer.encode(block)
            yield block, x, scorer.score(x)
        return
    pending: collections.deque[tuple[Block, np.ndarray, concurrent.futures.Future[dict[str, np.ndarray]]]]
    pending = collections.deque()
    with (
        threadpool_limits(limits=1, user_api="blas"),
        concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="made-score") as pool,
    ):
        try:
            for block in blocks:
                x = scorer.encode(block)
                pending.append((block, x, pool.submit(scorer.score, x)))
                while pending and (len(pending) > threads or pending[0][2].done()):
                    done, x_done, future = pending.popleft()
                    yield done, x_done, future.result()
            while pending:
                done, x_done, future = pending.popleft()
                yield done, x_done, future.result()
        finally:
            for _, _, future in pending:
                future.cancel()
